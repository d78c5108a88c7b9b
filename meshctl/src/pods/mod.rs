//! Finding a pod and reaching its proxy: the [`Backend`] seam between `meshctl` and the
//! place the mesh runs. The local cluster (network namespaces on this machine) is the
//! backend today; a Kubernetes backend (port-forward to the pod's admin port, the
//! control plane through its Service) implements the same trait later.

pub mod local_cluster;
pub mod netns;

use std::fmt;
use std::path::PathBuf;

use crate::http::Endpoint;

/// `NAME[.NAMESPACE]` as typed by the user (istioctl's form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub name: String,
    pub namespace: String,
}

impl PodRef {
    /// Splits at the last `.`: pod names may not contain dots in the local cluster and
    /// namespaces never do.
    pub fn parse(input: &str, default_namespace: &str) -> Result<PodRef, PodError> {
        let bad = |reason: &str| PodError::BadRef {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let (name, namespace) = match input.rsplit_once('.') {
            Some((n, ns)) => (n, ns),
            None => (input, default_namespace),
        };
        if name.is_empty() {
            return Err(bad("the pod name is empty"));
        }
        if namespace.is_empty() {
            return Err(bad("the namespace after '.' is empty"));
        }
        Ok(PodRef {
            name: name.to_string(),
            namespace: namespace.to_string(),
        })
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.name, self.namespace)
    }
}

/// A pod as a backend knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub ip: String,
    /// The `app` label (accepted in place of the pod name, like `kubectl exec deploy/x`).
    pub app: String,
    /// The proxy's admin API, reachable from here; `None` for a pod without a proxy.
    pub admin: Option<Endpoint>,
    /// The proxy's log file, when the backend knows it (named in error hints).
    pub proxy_log: Option<PathBuf>,
}

impl Pod {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }
}

/// Errors finding pods.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("{input:?} is not a pod reference: {reason} (expected NAME[.NAMESPACE])")]
    BadRef { input: String, reason: String },
    #[error(
        "no local cluster at {dir} ({missing} is missing). Start one with `cargo xtask demo up`, point MESH_LOCAL_DIR at another, or read a proxy directly with --admin http://HOST:PORT or -f CONFIG_DUMP.json (a Kubernetes backend is not implemented yet)"
    )]
    NoCluster { dir: PathBuf, missing: PathBuf },
    #[error(
        "cannot read {path}: {reason} (hint: is the local cluster being created or torn down?)"
    )]
    State { path: PathBuf, reason: String },
    #[error("pod {pod} not found in {backend}; {}", list_hint(.known))]
    NotFound {
        pod: PodRef,
        backend: String,
        known: Vec<String>,
    },
    #[error("pod {pod} has no sidecar proxy to inspect; {}", list_hint(.with_proxy))]
    NoProxy {
        pod: String,
        with_proxy: Vec<String>,
    },
    #[error(
        "the local cluster state does not say which network namespace pod {pod} runs in (hint: is {dir}/state.json from an older harness? recreate the cluster)"
    )]
    NoNetns { pod: String, dir: PathBuf },
    #[error("pod {pod}: admin address {admin:?} is invalid: {reason}")]
    BadAdmin {
        pod: String,
        admin: String,
        reason: String,
    },
}

fn list_hint(pods: &[String]) -> String {
    if pods.is_empty() {
        "the cluster has no pods with a proxy".to_string()
    } else {
        format!("pods with a proxy: {}", pods.join(", "))
    }
}

/// Where pods live and how to reach them.
pub trait Backend {
    /// What this backend is, for messages ("local cluster at /run/mesh-local").
    fn describe(&self) -> String;
    /// Every pod, sorted by namespace and name.
    fn pods(&self) -> Result<Vec<Pod>, PodError>;
    /// The control plane's monitoring endpoint (`/debug/syncz`, `/debug/config_dump`).
    fn control_plane(&self) -> Option<Endpoint>;

    /// A pod by name, else by `app` label, in the namespace.
    fn find(&self, pod: &PodRef) -> Result<Pod, PodError> {
        let pods = self.pods()?;
        let in_ns = || pods.iter().filter(|p| p.namespace == pod.namespace);
        let found = in_ns()
            .find(|p| p.name == pod.name)
            .or_else(|| in_ns().find(|p| p.app == pod.name));
        match found {
            Some(p) => Ok(p.clone()),
            None => Err(PodError::NotFound {
                pod: pod.clone(),
                backend: self.describe(),
                known: with_proxy(&pods),
            }),
        }
    }

    /// A pod that has a proxy, with the proxy's admin endpoint.
    fn find_proxy(&self, pod: &PodRef) -> Result<(Pod, Endpoint), PodError> {
        let found = self.find(pod)?;
        match found.admin.clone() {
            Some(admin) => Ok((found, admin)),
            None => Err(PodError::NoProxy {
                pod: found.qualified(),
                with_proxy: with_proxy(&self.pods()?),
            }),
        }
    }
}

fn with_proxy(pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .filter(|p| p.admin.is_some())
        .map(Pod::qualified)
        .collect()
}

/// The backend for this machine: the local cluster in `$MESH_LOCAL_DIR` (default
/// `/run/mesh-local`). Kubernetes (current kubeconfig context) comes later.
pub fn detect() -> Result<Box<dyn Backend>, PodError> {
    let dir = std::env::var_os("MESH_LOCAL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(local_cluster::DEFAULT_DIR));
    Ok(Box::new(local_cluster::LocalCluster::open(&dir)?))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn pod_refs_round_trip(name in "[a-z0-9][a-z0-9-]{0,20}", ns in "[a-z0-9][a-z0-9-]{0,20}") {
            let r = PodRef::parse(&format!("{name}.{ns}"), "default").unwrap();
            prop_assert_eq!((&r.name, &r.namespace), (&name, &ns));
            prop_assert_eq!(r.to_string(), format!("{name}.{ns}"));
            let r = PodRef::parse(&name, &ns).unwrap();
            prop_assert_eq!((r.name, r.namespace), (name, ns));
        }
    }

    #[test]
    fn pod_refs() {
        let r = PodRef::parse("sleep", "default").unwrap();
        assert_eq!(
            (r.name.as_str(), r.namespace.as_str()),
            ("sleep", "default")
        );
        let r = PodRef::parse("ingress.istio-system", "default").unwrap();
        assert_eq!(r.to_string(), "ingress.istio-system");
        assert!(PodRef::parse(".default", "default").is_err());
        assert!(PodRef::parse("sleep.", "default").is_err());
    }
}
