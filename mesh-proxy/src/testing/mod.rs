//! Test helpers (feature `testing`): an in-process ADS server, an Envoy launcher for
//! differential tests, resource builders from Envoy JSON, and the root/strict rules.

pub mod envoy;
pub mod xds_server;

use envoy_types::pb::google::protobuf::Any;

pub use envoy::{Envoy, find_envoy, http_get};
pub use xds_server::XdsServer;

/// An `Any` from Envoy JSON with an `@type` (what you would write in an Envoy config).
pub fn any(v: serde_json::Value) -> Any {
    mesh_api::envoy_json::any_from_json(&v)
        .unwrap_or_else(|e| panic!("invalid Envoy JSON {v}: {e}"))
}

/// `MESH_CI_STRICT=1`: a missing prerequisite (root, Envoy) is a failure, not a skip.
pub fn strict() -> bool {
    std::env::var("MESH_CI_STRICT").is_ok_and(|v| v == "1")
}

/// Skips (returns `false` after printing why) unless the prerequisite holds; in strict
/// mode a missing prerequisite panics.
pub fn require(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    if strict() {
        panic!("MESH_CI_STRICT=1 and {what} is missing");
    }
    eprintln!("skipping: {what} is missing (set MESH_CI_STRICT=1 to make this a failure)");
    false
}

/// Whether the test runs as root (network namespaces, iptables).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
