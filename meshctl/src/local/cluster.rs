//! The local cluster's directory and the parts of its `state.json` these verbs read
//! (read leniently: the harness may add fields).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

pub struct Dir(pub PathBuf);

impl Dir {
    pub fn from_env() -> Dir {
        Dir(std::env::var_os("MESH_LOCAL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(crate::pods::local_cluster::DEFAULT_DIR)))
    }

    pub fn user_dir(&self) -> PathBuf {
        self.0.join("config/user")
    }

    pub fn state(&self) -> Result<State> {
        let path = self.0.join("state.json");
        if !path.is_file() {
            bail!(
                "no local cluster at {} ({} is missing; start one with `cargo xtask demo up` or point MESH_LOCAL_DIR at it)",
                self.0.display(),
                path.display()
            );
        }
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a local cluster state file", path.display()))
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct State {
    #[serde(default)]
    pub pods: Vec<PodState>,
    #[serde(default)]
    pub services: Vec<ServiceState>,
}

#[derive(Debug, Deserialize)]
pub struct PodState {
    pub spec: PodSpec,
    pub netns: String,
    #[serde(default)]
    pub ip: String,
    #[serde(default)]
    pub ready: bool,
}

#[derive(Debug, Deserialize)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// `{"App": {"sidecar": bool}}` or `"Gateway"`.
    #[serde(default)]
    pub kind: serde_json::Value,
}

impl PodState {
    pub fn app(&self) -> &str {
        self.spec
            .labels
            .get("app")
            .map(String::as_str)
            .unwrap_or(&self.spec.name)
    }

    pub fn is_gateway(&self) -> bool {
        self.spec.kind == serde_json::Value::String("Gateway".into())
    }

    pub fn has_sidecar(&self) -> bool {
        self.spec.kind["App"]["sidecar"].as_bool().unwrap_or(false)
    }
}

#[derive(Debug, Deserialize)]
pub struct ServiceState {
    pub spec: ServiceSpec,
    pub vip: String,
}

#[derive(Debug, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
}

#[derive(Debug, Deserialize)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    pub target_port: u16,
}

/// `<kind>.<namespace>.<name>.yaml` under the user directory.
pub fn resource_file(user_dir: &Path, kind: &str, namespace: &str, name: &str) -> PathBuf {
    user_dir.join(format!("{}.{namespace}.{name}.yaml", kind.to_lowercase()))
}
