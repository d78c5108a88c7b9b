//! "Envoy accepts it": every golden scenario is served by a real mesh-control xDS server
//! (the store, the translator and the ADS server of this crate) to a real Envoy 1.40
//! bootstrapped as each of the scenario's proxies. Envoy must ACK everything: its
//! `/config_dump` holds exactly the generated listeners, clusters, route configurations and
//! endpoint assignments, each listener, cluster and route configuration field for field as
//! generated, and every `*.update_rejected` counter stays 0. The scenarios cover every
//! resilience setting (connection pools, outlier detection, load balancers, locality
//! failover and weights, retries, timeouts, faults, mirrors, CORS, EnvoyFilter local rate
//! limits).
//!
//! Envoy runs in its own network namespace (`unshare --net`), so the listeners it binds
//! (15001, 15006, gateway ports) touch nothing on the host; it reaches the control plane
//! and serves its admin API over Unix sockets. Needs root and Envoy (`$MESH_ENVOY`, or
//! `tools/envoy.sh`); without them the test prints why and passes, unless
//! `MESH_CI_STRICT=1`, where a missing prerequisite fails it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "golden/support.rs"]
mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use mesh_control::monitoring::Metrics;
use mesh_control::translate::generate;
use mesh_control::xds::{StoreGenerator, XdsServer, XdsServerConfig};
use serde_json::{Value, json};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

fn strict() -> bool {
    std::env::var("MESH_CI_STRICT").is_ok_and(|v| v == "1")
}

fn skip(reason: &str) {
    assert!(!strict(), "MESH_CI_STRICT=1 and {reason}");
    eprintln!("skipping the Envoy test: {reason}");
}

fn envoy_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MESH_ENVOY") {
        return Some(PathBuf::from(p));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/envoy.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&out.stdout)
        .trim()
        .lines()
        .last()?
        .to_string();
    let path = PathBuf::from(path);
    path.exists().then_some(path)
}

/// Forwards connections on a Unix socket to the xDS server's TCP port (Envoy, in its own
/// network namespace, cannot reach the host's loopback).
async fn forward(
    listener: UnixListener,
    target: std::net::SocketAddr,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => {
                let Ok((mut unix, _)) = accepted else { return };
                tokio::spawn(async move {
                    if let Ok(mut tcp) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut unix, &mut tcp).await;
                    }
                });
            }
        }
    }
}

/// GET on Envoy's admin API over its Unix socket.
async fn admin_get(sock: &Path, path: &str) -> Option<String> {
    let stream = UnixStream::connect(sock).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", "envoy-admin")
        .body(Empty::<bytes::Bytes>::new())
        .ok()?;
    let resp = sender.send_request(req).await.ok()?;
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some(String::from_utf8_lossy(&body).into_owned())
}

fn bootstrap(spec: &support::ProxySpec, xds_sock: &Path, admin_sock: &Path) -> Value {
    json!({
        "node": spec.node_json(),
        "admin": {"address": {"pipe": {"path": admin_sock}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
                "set_node_on_first_message_only": true
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"}
        },
        "static_resources": {
            "clusters": [{
                "name": "xds-grpc",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}
                    }
                },
                "load_assignment": {
                    "cluster_name": "xds-grpc",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": xds_sock}}}}]}]
                }
            }]
        }
    })
}

/// What Envoy holds, from its config dump.
#[derive(Debug, Default, PartialEq)]
struct Held {
    listeners: BTreeSet<String>,
    clusters: BTreeSet<String>,
    routes: BTreeSet<String>,
    endpoints: BTreeSet<String>,
}

fn held(dump: &Value) -> Held {
    let mut h = Held::default();
    for config in dump["configs"].as_array().into_iter().flatten() {
        let t = config["@type"].as_str().unwrap_or_default();
        if t.ends_with("ListenersConfigDump") {
            for l in config["dynamic_listeners"].as_array().into_iter().flatten() {
                if l.get("active_state").is_some() {
                    h.listeners
                        .insert(l["name"].as_str().unwrap_or_default().to_string());
                }
            }
        } else if t.ends_with("ClustersConfigDump") {
            for c in config["dynamic_active_clusters"]
                .as_array()
                .into_iter()
                .flatten()
            {
                h.clusters.insert(
                    c["cluster"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
        } else if t.ends_with("RoutesConfigDump") {
            for r in config["dynamic_route_configs"]
                .as_array()
                .into_iter()
                .flatten()
            {
                h.routes.insert(
                    r["route_config"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
        } else if t.ends_with("EndpointsConfigDump") {
            for e in config["dynamic_endpoint_configs"]
                .as_array()
                .into_iter()
                .flatten()
            {
                h.endpoints.insert(
                    e["endpoint_config"]["cluster_name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
        }
    }
    h
}

/// Envoy dumps each resource as it received it: every cluster, route configuration and
/// listener it holds must be the one generated, field for field (so nothing was dropped or
/// reinterpreted on the way, e.g. the typed configs EnvoyFilter patches carry).
fn same_content(dump: &Value, g: &mesh_control::translate::Generated) -> Result<(), String> {
    use mesh_api::envoy_json::{FieldNames, any_to_json_with};
    let ours =
        |list: &[mesh_control::translate::Named]| -> std::collections::BTreeMap<String, Value> {
            list.iter()
                .map(|n| {
                    let mut v = any_to_json_with(&n.resource, FieldNames::Proto).unwrap();
                    v.as_object_mut().unwrap().remove("@type");
                    (n.name.clone(), numbers_as_f64(support::sort_keys(v)))
                })
                .collect()
        };
    let (clusters, routes, listeners) = (ours(&g.clusters), ours(&g.routes), ours(&g.listeners));
    let mut diffs = Vec::new();
    let mut check = |kind: &str, held: &Value, want: &std::collections::BTreeMap<String, Value>| {
        let mut held = held.clone();
        if let Some(o) = held.as_object_mut() {
            o.remove("@type");
        }
        let held = numbers_as_f64(support::sort_keys(held));
        let name = held["name"].as_str().unwrap_or_default().to_string();
        match want.get(&name) {
            Some(w) if *w == held => {}
            Some(w) => diffs.push(format!(
                "{kind} {name}:
 ours:  {w}
 envoy: {held}"
            )),
            None => {}
        }
    };
    for config in dump["configs"].as_array().into_iter().flatten() {
        let t = config["@type"].as_str().unwrap_or_default();
        if t.ends_with("ClustersConfigDump") {
            for c in config["dynamic_active_clusters"]
                .as_array()
                .into_iter()
                .flatten()
            {
                check("cluster", &c["cluster"], &clusters);
            }
        } else if t.ends_with("RoutesConfigDump") {
            for r in config["dynamic_route_configs"]
                .as_array()
                .into_iter()
                .flatten()
            {
                check("route", &r["route_config"], &routes);
            }
        } else if t.ends_with("ListenersConfigDump") {
            for l in config["dynamic_listeners"].as_array().into_iter().flatten() {
                check("listener", &l["active_state"]["listener"], &listeners);
            }
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "envoy holds other content than generated:\n{}",
            diffs.join("\n")
        ))
    }
}

/// Envoy prints `10` where the proto JSON mapping of a double gives `10.0`.
fn numbers_as_f64(v: Value) -> Value {
    match v {
        Value::Number(n) => n
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or(Value::Number(n)),
        Value::Array(a) => Value::Array(a.into_iter().map(numbers_as_f64).collect()),
        Value::Object(o) => {
            Value::Object(o.into_iter().map(|(k, v)| (k, numbers_as_f64(v))).collect())
        }
        other => other,
    }
}

fn names(list: &[mesh_control::translate::Named]) -> BTreeSet<String> {
    list.iter().map(|n| n.name.clone()).collect()
}

/// Runs one proxy of one scenario against Envoy; returns a failure description.
async fn run_one(
    envoy: &Path,
    scenario: &support::Scenario,
    spec: &support::ProxySpec,
) -> Result<(), String> {
    let tmp = tempfile::tempdir().unwrap();
    let xds_sock = tmp.path().join("xds.sock");
    let admin_sock = tmp.path().join("admin.sock");
    let shutdown = CancellationToken::new();

    let store = Arc::new(scenario.store());
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let server = XdsServer::new(
        Arc::new(StoreGenerator(store.clone())),
        metrics,
        XdsServerConfig::default(),
        shutdown.clone(),
    );
    let listener = XdsServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.clone().serve(listener));
    tokio::spawn(forward(
        UnixListener::bind(&xds_sock).unwrap(),
        addr,
        shutdown.clone(),
    ));

    let config = tmp.path().join("bootstrap.json");
    std::fs::write(
        &config,
        serde_json::to_vec(&bootstrap(spec, &xds_sock, &admin_sock)).unwrap(),
    )
    .unwrap();
    let log = tmp.path().join("envoy.log");
    let mut child = tokio::process::Command::new("unshare")
        .arg("--net")
        .arg(envoy)
        .arg("-c")
        .arg(&config)
        .args([
            "--base-id-path",
            &tmp.path().join("base-id").display().to_string(),
            "--use-dynamic-base-id",
        ])
        .args([
            "--log-level",
            "warning",
            "--log-path",
            &log.display().to_string(),
        ])
        .args(["--concurrency", "1", "--disable-hot-restart"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start envoy: {e}"))?;

    let expected = generate(&store.snapshot(), &spec.proxy());
    let want = Held {
        listeners: names(&expected.listeners),
        clusters: names(&expected.clusters),
        routes: names(&expected.routes),
        endpoints: names(&expected.endpoints),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last = Held::default();
    let mut result = Err(String::new());
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            result = Err(format!("envoy exited with {status}:\n{log}"));
            break;
        }
        let Some(stats) = admin_get(&admin_sock, "/stats?filter=update_rejected").await else {
            continue;
        };
        let rejected: Vec<&str> = stats
            .lines()
            .filter(|l| l.contains("update_rejected") && !l.trim_end().ends_with(": 0"))
            .collect();
        if !rejected.is_empty() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            let warnings: String = log
                .lines()
                .filter(|l| {
                    l.contains("rejected") || l.contains("[warning]") || l.contains("[error]")
                })
                .take(20)
                .map(|l| format!("{l}\n"))
                .collect();
            result = Err(format!("envoy rejected config: {rejected:?}\n{warnings}"));
            break;
        }
        let Some(dump) = admin_get(&admin_sock, "/config_dump?include_eds").await else {
            continue;
        };
        let Ok(dump) = serde_json::from_str::<Value>(&dump) else {
            continue;
        };
        last = held(&dump);
        last.clusters.remove("xds-grpc");
        // The dump also shows the load assignments of static and original-dst clusters.
        last.endpoints
            .retain(|e| want.endpoints.contains(e) || !last.clusters.contains(e));
        if last == want {
            result = same_content(&dump, &expected);
            break;
        }
    }
    if result == Err(String::new()) {
        result = Err(format!(
            "envoy did not converge in 30s:\n want {want:?}\n held {last:?}"
        ));
    }
    child.start_kill().ok();
    let _ = child.wait().await;
    shutdown.cancel();
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_acks_every_golden_scenario() {
    if !nix_is_root() {
        return skip("not root (Envoy runs in its own network namespace)");
    }
    let Some(envoy) = envoy_binary() else {
        return skip("no Envoy binary ($MESH_ENVOY or tools/envoy.sh)");
    };
    let mut failures = Vec::new();
    let mut count = 0;
    for scenario in support::scenarios() {
        for spec in &scenario.proxies {
            count += 1;
            if let Err(e) = run_one(&envoy, &scenario, spec).await {
                failures.push(format!("{}/{}: {e}", scenario.name, spec.name));
            }
        }
    }
    assert!(count >= 10, "expected the golden scenarios, ran {count}");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
