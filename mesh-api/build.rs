//! With the `envoy` feature, compiles the Envoy `.proto` files that ship inside the
//! `envoy-types` crate into a `FileDescriptorSet` (pure Rust, `protox`), embedded by
//! `envoy_json` so that Envoy messages can be printed as Envoy's canonical JSON
//! (`/config_dump`, `meshctl proxy-config -o json`) without hand-written serializers.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The entry points we need; `protox` follows their imports. Listed (not globbed) to keep
/// the embedded descriptor set, and so every binary, small: these are the messages that
/// appear in config dumps, in xDS responses and inside their `Any`-typed configs.
const ENTRY_PROTOS: &[&str] = &[
    "envoy/admin/v3/config_dump.proto",
    "envoy/admin/v3/clusters.proto",
    "envoy/admin/v3/listeners.proto",
    "envoy/admin/v3/server_info.proto",
    "envoy/config/bootstrap/v3/bootstrap.proto",
    "envoy/service/discovery/v3/ads.proto",
    "envoy/service/discovery/v3/discovery.proto",
    "envoy/config/listener/v3/listener.proto",
    "envoy/config/cluster/v3/cluster.proto",
    "envoy/config/endpoint/v3/endpoint.proto",
    "envoy/config/route/v3/route.proto",
    "envoy/config/rbac/v3/rbac.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
    "envoy/extensions/transport_sockets/tls/v3/cert.proto",
    "envoy/extensions/transport_sockets/raw_buffer/v3/raw_buffer.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
    "envoy/extensions/filters/network/rbac/v3/rbac.proto",
    "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto",
    "envoy/extensions/filters/listener/http_inspector/v3/http_inspector.proto",
    "envoy/extensions/filters/listener/original_dst/v3/original_dst.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/filters/http/fault/v3/fault.proto",
    "envoy/extensions/filters/http/cors/v3/cors.proto",
    "envoy/extensions/filters/http/rbac/v3/rbac.proto",
    "envoy/extensions/filters/http/local_ratelimit/v3/local_rate_limit.proto",
    "envoy/extensions/filters/http/jwt_authn/v3/config.proto",
    "envoy/extensions/filters/http/grpc_stats/v3/config.proto",
    "envoy/extensions/access_loggers/file/v3/file.proto",
    "envoy/extensions/access_loggers/stream/v3/stream.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
    "envoy/extensions/clusters/original_dst/v3/original_dst.proto",
    "envoy/extensions/load_balancing_policies/round_robin/v3/round_robin.proto",
    "envoy/extensions/load_balancing_policies/least_request/v3/least_request.proto",
    "envoy/extensions/load_balancing_policies/random/v3/random.proto",
    "envoy/extensions/load_balancing_policies/ring_hash/v3/ring_hash.proto",
    "envoy/extensions/load_balancing_policies/maglev/v3/maglev.proto",
    "envoy/extensions/load_balancing_policies/client_side_weighted_round_robin/v3/client_side_weighted_round_robin.proto",
    "envoy/extensions/load_balancing_policies/wrr_locality/v3/wrr_locality.proto",
    "envoy/extensions/retry/host/previous_hosts/v3/previous_hosts.proto",
    "envoy/extensions/retry/priority/previous_priorities/v3/previous_priorities_config.proto",
];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_ENVOY").is_none() {
        return;
    }
    let proto_root = envoy_types_proto_dir();
    let includes: Vec<PathBuf> = [
        "data-plane-api",
        "xds",
        "googleapis",
        "protoc-gen-validate",
        "cel-spec",
        "opentelemetry-proto",
        "client_model",
    ]
    .iter()
    .map(|d| proto_root.join(d))
    .filter(|p| p.is_dir())
    .collect();
    // One compiler per entry file: protox resolves relative names against every file it
    // has loaded, while protoc only sees a file's imports, and Envoy's protos rely on that
    // (`common.ratelimit.v3.X` inside `filters.http.local_ratelimit` must not find the
    // unrelated `envoy.extensions.filters.common` package). The sets are merged by file name.
    let mut files = std::collections::BTreeMap::new();
    for file in ENTRY_PROTOS {
        let mut compiler = protox::Compiler::new(&includes).expect("protox include paths");
        compiler.include_imports(true).include_source_info(false);
        compiler
            .open_file(file)
            .unwrap_or_else(|e| panic!("compiling {file}: {e:?}"));
        for fd in compiler.file_descriptor_set().file {
            files.entry(fd.name().to_string()).or_insert(fd);
        }
    }
    let set = prost_types::FileDescriptorSet {
        file: files.into_values().collect(),
    };
    let set = prost::Message::encode_to_vec(&set);
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("envoy_descriptors.bin");
    std::fs::write(&out, set).expect("writing descriptor set");
}

/// Finds `<envoy-types>/proto` through `cargo metadata`, which works for registry,
/// vendored and git sources alike.
fn envoy_types_proto_dir() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let target = std::env::var("TARGET").expect("TARGET");
    // Only this platform's packages: a fresh CARGO_HOME holds nothing else (cargo fetches
    // a build's packages, not Windows-only ones), and offline metadata of the whole graph
    // fails there. Offline first so that a populated cache needs no network; then online,
    // which fetches only what the first attempt lacked (dev-dependencies of a build that
    // did not need them).
    let metadata = |offline: bool| {
        let mut args = vec!["metadata", "--format-version", "1", "--filter-platform"];
        args.push(&target);
        if offline {
            args.push("--offline");
        }
        Command::new(&cargo)
            .args(&args)
            .current_dir(&manifest_dir)
            .output()
            .expect("running cargo metadata")
    };
    let mut output = metadata(true);
    if !output.status.success() {
        output = metadata(false);
    }
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let packages = meta["packages"]
        .as_array()
        .expect("cargo metadata lists packages");
    for package in packages {
        if package["name"] == "envoy-types" {
            let manifest = package["manifest_path"].as_str().expect("manifest_path");
            let dir = Path::new(manifest)
                .parent()
                .expect("manifest has a parent")
                .join("proto");
            println!("cargo::rerun-if-changed={}", dir.display());
            return dir;
        }
    }
    panic!("envoy-types not found in cargo metadata; the `envoy` feature needs it")
}
