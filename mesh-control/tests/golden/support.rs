//! Shared by the golden and Envoy tests: loading a scenario directory (the Bookinfo base
//! plus the scenario's own YAML) into a store, the proxies it names, and the canonical
//! JSON of generated resources.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::config::core::v3::Node;
use mesh_control::model::{Proxy, json_to_struct};
use mesh_control::store::Store;
use mesh_control::translate::{Generated, Named};
use serde::Deserialize;
use serde_json::Value;

pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// A proxy of a scenario, as written in its `proxies.yaml`.
#[derive(Debug, Clone, Deserialize)]
pub struct ProxySpec {
    /// Names the expected output file (`<name>.json`).
    pub name: String,
    pub id: String,
    #[serde(default)]
    pub metadata: Value,
    /// The Envoy node's locality, `region/zone/subzone`.
    #[serde(default)]
    pub locality: Option<String>,
}

impl ProxySpec {
    pub fn node(&self) -> Node {
        Node {
            id: self.id.clone(),
            cluster: self.name.clone(),
            metadata: Some(json_to_struct(&self.metadata)),
            locality: self.locality.as_deref().map(|l| {
                let mut parts = l.splitn(3, '/');
                envoy_types::pb::envoy::config::core::v3::Locality {
                    region: parts.next().unwrap_or_default().to_string(),
                    zone: parts.next().unwrap_or_default().to_string(),
                    sub_zone: parts.next().unwrap_or_default().to_string(),
                }
            }),
            ..Default::default()
        }
    }

    /// The node as Envoy bootstrap JSON.
    pub fn node_json(&self) -> Value {
        let mut node =
            serde_json::json!({"id": self.id, "cluster": self.name, "metadata": self.metadata});
        if let Some(l) = self.node().locality {
            node["locality"] =
                serde_json::json!({"region": l.region, "zone": l.zone, "sub_zone": l.sub_zone});
        }
        node
    }

    pub fn proxy(&self) -> Proxy {
        Proxy::from_node(&self.node()).expect("valid proxy in proxies.yaml")
    }
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub dir: PathBuf,
    /// (origin, text) of every input file, the base first.
    pub inputs: Vec<(String, String)>,
    pub proxies: Vec<ProxySpec>,
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml" || e == "yml")
                && p.file_name().is_some_and(|n| n != "proxies.yaml")
        })
        .collect();
    files.sort();
    files
}

pub fn scenarios() -> Vec<Scenario> {
    let root = golden_dir();
    let mut base = Vec::new();
    for f in yaml_files(&root.join("base")) {
        base.push((
            format!("base/{}", f.file_name().unwrap().to_string_lossy()),
            std::fs::read_to_string(&f).unwrap(),
        ));
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n != "base"))
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|dir| {
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            let mut inputs = base.clone();
            for f in yaml_files(&dir) {
                inputs.push((
                    format!("{name}/{}", f.file_name().unwrap().to_string_lossy()),
                    std::fs::read_to_string(&f).unwrap(),
                ));
            }
            let proxies: Vec<ProxySpec> = serde_yaml::from_str(
                &std::fs::read_to_string(dir.join("proxies.yaml")).expect("proxies.yaml"),
            )
            .expect("proxies.yaml is a list of {name, id, metadata}");
            Scenario {
                name,
                dir,
                inputs,
                proxies,
            }
        })
        .collect()
}

impl Scenario {
    /// A store with every input file applied, in order (base first).
    pub fn store(&self) -> Store {
        let store = Store::new();
        for (origin, text) in &self.inputs {
            store.apply_text(origin, text);
        }
        store
    }
}

/// Recursively sorts object keys, so JSON from maps (filter configs, metadata) is stable.
pub fn sort_keys(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_keys(v)))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

fn named_json(list: &[Named]) -> Value {
    Value::Array(
        list.iter()
            .map(|n| {
                sort_keys(
                    mesh_api::envoy_json::any_to_json(&n.resource)
                        .unwrap_or_else(|e| panic!("{} does not print as Envoy JSON: {e}", n.name)),
                )
            })
            .collect(),
    )
}

/// All resources of one proxy as Envoy's canonical JSON, by type.
pub fn generated_json(g: &Generated) -> Value {
    serde_json::json!({
        "listeners": named_json(&g.listeners),
        "routes": named_json(&g.routes),
        "clusters": named_json(&g.clusters),
        "endpoints": named_json(&g.endpoints),
    })
}
