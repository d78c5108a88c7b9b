//! The state file: everything the local cluster created, written after every step, so
//! that teardown works after a crash (CNI DEL with the cached result, kill by recorded
//! PID and start time, delete namespaces and files).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::manifest::{PodSpec, ServiceSpec};

pub const STATE_FILE: &str = "state.json";

/// A process the cluster started. `start_time` (from /proc/PID/stat) guards against
/// killing an unrelated process that reused the PID after a crash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Proc {
    pub what: String,
    pub pid: i32,
    pub start_time: u64,
    pub log: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodState {
    pub spec: PodSpec,
    pub netns: String,
    pub container_id: String,
    /// Empty until CNI ADD assigned one.
    pub ip: String,
    pub ready: bool,
    /// The CNI chain's final result, passed back as prevResult on DEL.
    pub cni_result: Option<serde_json::Value>,
    pub procs: Vec<Proc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServiceState {
    pub spec: ServiceSpec,
    pub vip: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    pub prefix: String,
    pub node_netns: String,
    /// Host side of the host<->node link, when there is one.
    pub host_link: Option<String>,
    pub control: Option<Proc>,
    pub pods: Vec<PodState>,
    pub services: Vec<ServiceState>,
    /// The CNI conflist used for every pod (kept for DEL after a crash).
    pub conflist: serde_json::Value,
    /// Directories searched for CNI plugins besides the system ones (mesh-cni's).
    pub cni_dirs: Vec<PathBuf>,
}

impl State {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    pub fn load(dir: &Path) -> Result<Option<State>> {
        let path = Self::path(dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("state file {} is corrupt", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Written to a temporary file and renamed, so a crash never leaves half a file.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = Self::path(dir);
        let tmp = dir.join(".state.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }
}
