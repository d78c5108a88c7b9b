//! The local cluster backend: pods are network namespaces on this machine, described by
//! the harness's files in `$MESH_LOCAL_DIR` (default `/run/mesh-local`):
//!
//! - `demo.json` (written by `demo up`): the control plane's URLs and each pod's name,
//!   namespace, IP, `app` label and admin address (as seen from inside the pod), and the
//!   pod's network namespace when the harness writes it;
//! - `state.json` (the harness's crash-safe record): each pod's network namespace and
//!   process logs, the node namespace, and whether the host is linked to the node.
//!
//! Both are read leniently (unknown fields ignored) so the harness can grow them.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Backend, Pod, PodError, netns};
use crate::http::{Endpoint, Route};

/// The harness's default directory.
pub const DEFAULT_DIR: &str = "/run/mesh-local";

#[derive(Debug, Deserialize)]
struct Demo {
    #[serde(default)]
    monitoring_url: Option<String>,
    #[serde(default)]
    pods: Vec<DemoPod>,
}

#[derive(Debug, Deserialize)]
struct DemoPod {
    name: String,
    namespace: String,
    #[serde(default)]
    ip: String,
    #[serde(default)]
    app: String,
    /// `127.0.0.1:15000`, reachable from inside the pod; absent without a proxy.
    #[serde(default)]
    admin: Option<String>,
    #[serde(default)]
    netns: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct State {
    #[serde(default)]
    node_netns: Option<String>,
    #[serde(default)]
    host_link: Option<String>,
    #[serde(default)]
    pods: Vec<StatePod>,
}

#[derive(Debug, Deserialize)]
struct StatePod {
    spec: StateSpec,
    netns: String,
    #[serde(default)]
    procs: Vec<StateProc>,
}

#[derive(Debug, Deserialize)]
struct StateSpec {
    name: String,
    namespace: String,
}

#[derive(Debug, Deserialize)]
struct StateProc {
    what: String,
    log: PathBuf,
}

/// A running local cluster, as its files describe it.
#[derive(Debug)]
pub struct LocalCluster {
    dir: PathBuf,
    demo: Demo,
    state: State,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, PodError> {
    let bytes = std::fs::read(path).map_err(|e| PodError::State {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| PodError::State {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

impl LocalCluster {
    /// Reads the cluster in `dir`; `demo.json` must exist, `state.json` is optional.
    pub fn open(dir: &Path) -> Result<LocalCluster, PodError> {
        let demo_path = dir.join("demo.json");
        if !demo_path.is_file() {
            return Err(PodError::NoCluster {
                dir: dir.to_path_buf(),
                missing: demo_path,
            });
        }
        let demo: Demo = read_json(&demo_path)?;
        let state_path = dir.join("state.json");
        let state = if state_path.is_file() {
            read_json(&state_path)?
        } else {
            State::default()
        };
        Ok(LocalCluster {
            dir: dir.to_path_buf(),
            demo,
            state,
        })
    }

    fn state_pod(&self, name: &str, namespace: &str) -> Option<&StatePod> {
        self.state
            .pods
            .iter()
            .find(|p| p.spec.name == name && p.spec.namespace == namespace)
    }

    fn pod(&self, p: &DemoPod) -> Result<Pod, PodError> {
        let qualified = format!("{}.{}", p.name, p.namespace);
        let from_state = self.state_pod(&p.name, &p.namespace);
        let admin = match &p.admin {
            None => None,
            Some(admin) => {
                let ns = p
                    .netns
                    .clone()
                    .or_else(|| from_state.map(|s| s.netns.clone()))
                    .ok_or_else(|| PodError::NoNetns {
                        pod: qualified.clone(),
                        dir: self.dir.clone(),
                    })?;
                let endpoint =
                    Endpoint::parse(admin, Route::netns(&ns)).map_err(|e| PodError::BadAdmin {
                        pod: qualified.clone(),
                        admin: admin.clone(),
                        reason: e.to_string(),
                    })?;
                Some(endpoint)
            }
        };
        let proxy_log = from_state.and_then(|s| {
            s.procs
                .iter()
                .find(|p| p.what.contains("proxy"))
                .map(|p| p.log.clone())
        });
        Ok(Pod {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            ip: p.ip.clone(),
            app: p.app.clone(),
            admin,
            proxy_log,
        })
    }
}

impl Backend for LocalCluster {
    fn describe(&self) -> String {
        format!("the local cluster at {}", self.dir.display())
    }

    fn pods(&self) -> Result<Vec<Pod>, PodError> {
        let mut pods = self
            .demo
            .pods
            .iter()
            .map(|p| self.pod(p))
            .collect::<Result<Vec<_>, _>>()?;
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Ok(pods)
    }

    fn control_plane(&self) -> Option<Endpoint> {
        let url = self.demo.monitoring_url.as_deref()?;
        // Without a host link the node's addresses are only reachable from inside the
        // node namespace, where the control plane runs.
        let route = match (&self.state.host_link, &self.state.node_netns) {
            (None, Some(node)) if netns::path_of(node).exists() => Route::netns(node),
            _ => Route::Direct,
        };
        Endpoint::parse(url, route).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::PodRef;

    fn write(dir: &Path, name: &str, v: serde_json::Value) {
        std::fs::write(dir.join(name), serde_json::to_vec(&v).unwrap()).unwrap();
    }

    fn cluster() -> (tempfile::TempDir, LocalCluster) {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "demo.json",
            serde_json::json!({
                "ingress_url": "http://10.250.0.9:80",
                "monitoring_url": "http://10.250.0.1:15014",
                "pods": [
                    {"name": "sleep", "namespace": "default", "ip": "10.250.0.5", "app": "sleep", "admin": "127.0.0.1:15000"},
                    {"name": "reviews-v1", "namespace": "default", "ip": "10.250.0.6", "app": "reviews", "admin": "127.0.0.1:15000", "netns": "given-ns"},
                    {"name": "plain", "namespace": "default", "ip": "10.250.0.7", "app": "plain", "admin": null},
                ],
                "services": []
            }),
        );
        write(
            dir.path(),
            "state.json",
            serde_json::json!({
                "prefix": "mesh", "node_netns": "mesh-node", "host_link": "mesh-h",
                "pods": [{"spec": {"name": "sleep", "namespace": "default", "kind": "App"}, "netns": "mesh-default-sleep",
                          "container_id": "x", "ip": "10.250.0.5", "ready": true,
                          "procs": [{"what": "app", "pid": 1, "start_time": 1, "log": "/l/app.log"},
                                    {"what": "mesh-proxy", "pid": 2, "start_time": 2, "log": "/l/proxy.log"}]}]
            }),
        );
        let c = LocalCluster::open(dir.path()).unwrap();
        (dir, c)
    }

    #[test]
    fn pods_with_their_namespaces_and_admin() {
        let (_dir, c) = cluster();
        let sleep = c.find(&PodRef::parse("sleep", "default").unwrap()).unwrap();
        let admin = sleep.admin.unwrap();
        assert_eq!(admin.route, Route::netns("mesh-default-sleep"));
        assert_eq!(admin.addr, "127.0.0.1:15000".parse().unwrap());
        assert_eq!(sleep.proxy_log, Some(PathBuf::from("/l/proxy.log")));
        // By app label, and with the namespace demo.json gives.
        let (rev, admin) = c
            .find_proxy(&PodRef::parse("reviews.default", "x").unwrap())
            .unwrap();
        assert_eq!(rev.name, "reviews-v1");
        assert_eq!(admin.route, Route::netns("given-ns"));
        assert_eq!(
            c.control_plane().unwrap().addr,
            "10.250.0.1:15014".parse().unwrap()
        );
    }

    #[test]
    fn errors_list_the_pods() {
        let (_dir, c) = cluster();
        let err = c
            .find(&PodRef::parse("nope.default", "default").unwrap())
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("pod nope.default not found"), "{msg}");
        assert!(msg.contains("reviews-v1.default, sleep.default"), "{msg}");
        let err = c
            .find_proxy(&PodRef::parse("plain", "default").unwrap())
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("plain.default has no sidecar proxy"),
            "{err}"
        );
        let err = LocalCluster::open(Path::new("/nonexistent/mesh")).unwrap_err();
        assert!(err.to_string().contains("cargo xtask demo up"), "{err}");
    }
}
