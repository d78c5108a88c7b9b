//! Everything the control plane emits, the proxy accepts: every resource of every golden
//! scenario of mesh-control (`mesh-control/tests/golden/*/expected/*.json`, Envoy's
//! canonical JSON) is parsed with `mesh_api::envoy_json` and converted with the proxy's
//! own domain conversion (the code an xDS update runs). A NACK here is a NACK a real
//! sidecar would send to a real control plane, so the whole list of failures is printed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::config::{
    cluster::v3::Cluster as PbCluster, endpoint::v3::ClusterLoadAssignment as PbCla,
    listener::v3::Listener as PbListener, route::v3::RouteConfiguration as PbRoute,
};
use mesh_proxy::config::{
    cluster::Cluster, endpoint::ClusterLoadAssignment, listener::Listener,
    route::RouteConfiguration,
};
use prost::Message;
use serde_json::Value;

fn golden_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../mesh-control/tests/golden")
}

/// Every `expected/*.json` file, sorted.
fn expected_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for scenario in std::fs::read_dir(golden_root()).expect("golden dir") {
        let dir = scenario.unwrap().path().join("expected");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "json") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn decode<M: Message + Default>(any: &envoy_types::pb::google::protobuf::Any) -> M {
    M::decode(any.value.as_slice()).expect("decodes")
}

/// Converts one resource as the proxy would on an xDS update; `Err` is the NACK text.
fn convert(json: &Value) -> Result<(&'static str, String), String> {
    let any = mesh_api::envoy_json::any_from_json(json).map_err(|e| e.to_string())?;
    match any.type_url.rsplit('/').next().unwrap_or("") {
        "envoy.config.listener.v3.Listener" => {
            let p: PbListener = decode(&any);
            Listener::try_from(&p)
                .map(|_| ("listener", p.name.clone()))
                .map_err(|e| e.to_string())
        }
        "envoy.config.route.v3.RouteConfiguration" => {
            let p: PbRoute = decode(&any);
            RouteConfiguration::try_from(&p)
                .map(|_| ("route", p.name.clone()))
                .map_err(|e| e.to_string())
        }
        "envoy.config.cluster.v3.Cluster" => {
            let p: PbCluster = decode(&any);
            Cluster::try_from(&p)
                .map(|_| ("cluster", p.name.clone()))
                .map_err(|e| e.to_string())
        }
        "envoy.config.endpoint.v3.ClusterLoadAssignment" => {
            let p: PbCla = decode(&any);
            ClusterLoadAssignment::try_from(&p)
                .map(|_| ("endpoints", p.cluster_name.clone()))
                .map_err(|e| e.to_string())
        }
        other => Err(format!("unexpected resource type {other}")),
    }
}

/// Cluster fields the core half does not implement yet (mesh-proxy/SUPPORTED.md). A
/// ratchet: the test fails when a new gap appears *and* when one of these is fixed, so
/// the list only shrinks.
const KNOWN_CLUSTER_GAPS: &[&str] = &[];

struct Results {
    files: usize,
    accepted: std::collections::BTreeMap<&'static str, usize>,
    failures: Vec<(String, String)>,
}

fn convert_all(kinds: &[&str]) -> Results {
    let files = expected_files();
    assert!(
        files.len() >= 10,
        "expected the golden scenarios of mesh-control under {}",
        golden_root().display()
    );
    let mut r = Results {
        files: files.len(),
        accepted: Default::default(),
        failures: Vec::new(),
    };
    for f in &files {
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let rel = f.strip_prefix(golden_root()).unwrap_or(f).display();
        for kind in kinds {
            for (i, res) in doc[*kind].as_array().into_iter().flatten().enumerate() {
                match convert(res) {
                    Ok((k, _)) => *r.accepted.entry(k).or_default() += 1,
                    Err(e) => r.failures.push((format!("{rel} {kind}[{i}]"), e)),
                }
            }
        }
    }
    r
}

#[test]
fn every_golden_listener_and_route_is_accepted() {
    let r = convert_all(&["listeners", "routes"]);
    let total: usize = r.accepted.values().sum::<usize>() + r.failures.len();
    assert!(
        r.failures.is_empty(),
        "{} of {total} golden listeners/routes are NACKed:\n{}",
        r.failures.len(),
        r.failures
            .iter()
            .map(|(w, e)| format!("{w}: {e}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for k in ["listener", "route"] {
        assert!(
            r.accepted.get(k).copied().unwrap_or(0) > 0,
            "no {k} in the golden files"
        );
    }
    eprintln!(
        "accepted {total} listeners and routes from {} files",
        r.files
    );
}

#[test]
fn every_golden_cluster_and_endpoint_is_accepted_but_known_gaps() {
    let r = convert_all(&["clusters", "endpoints"]);
    let mut unexpected = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (w, e) in &r.failures {
        match KNOWN_CLUSTER_GAPS.iter().find(|g| e.contains(*g)) {
            Some(g) => {
                seen.insert(*g);
            }
            None => unexpected.push(format!("{w}: {e}")),
        }
    }
    assert!(
        unexpected.is_empty(),
        "golden clusters/endpoints NACKed for a new reason:\n{}",
        unexpected.join("\n")
    );
    let fixed: Vec<_> = KNOWN_CLUSTER_GAPS
        .iter()
        .filter(|g| !seen.contains(*g))
        .collect();
    assert!(
        fixed.is_empty(),
        "these gaps are fixed: remove them from KNOWN_CLUSTER_GAPS: {fixed:?}"
    );
    assert!(r.accepted.get("endpoints").copied().unwrap_or(0) > 0);
    assert!(r.accepted.get("cluster").copied().unwrap_or(0) > 0);
    eprintln!(
        "clusters/endpoints: {:?} accepted, {} NACKed for known gaps",
        r.accepted,
        r.failures.len()
    );
}
