//! Commands that replace a pod's standard processes: the data-plane benchmark runs its own
//! upstream as the app and Envoy, nginx or HAProxy as the sidecar, in pods that are
//! otherwise made (CNI chain, capture rules, Pod YAML, endpoints) exactly like any other.
//!
//! A replacement sidecar runs as the proxy UID, so the capture rules exclude its own
//! traffic as they exclude mesh-proxy's; its argv may contain `{ip}` (the pod IP, known
//! only after CNI ADD), `{pod}` and `{namespace}`.

use std::time::Duration;

use super::LocalCluster;
use super::manifest::PodSpec;

/// When a started process counts as ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// A TCP connect to this address (in the pod's namespace) succeeds.
    Tcp(String),
    /// `GET path` on this address answers 200.
    Http { addr: String, path: String },
    /// Ready as soon as it started.
    Started,
}

/// One process to start in a pod instead of the standard one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCommand {
    /// Names the process in the state file and in errors (`envoy`, `nginx`, ...).
    pub what: String,
    pub argv: Vec<String>,
    pub ready: Readiness,
    pub ready_timeout: Duration,
}

impl PodCommand {
    pub fn new(what: &str, argv: Vec<String>, ready: Readiness) -> Self {
        PodCommand {
            what: what.to_string(),
            argv,
            ready,
            ready_timeout: Duration::from_secs(30),
        }
    }

    /// The argv with the pod's placeholders filled in.
    pub fn argv_for(&self, spec: &PodSpec, ip: &str) -> Vec<String> {
        self.argv
            .iter()
            .map(|a| {
                a.replace("{ip}", ip)
                    .replace("{pod}", &spec.name)
                    .replace("{namespace}", &spec.namespace)
            })
            .collect()
    }
}

/// What runs in a pod; `None` keeps the standard process (the test app, mesh-proxy).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodCommands {
    pub app: Option<PodCommand>,
    /// Only used for pods that have a sidecar (capture is set up for them).
    pub sidecar: Option<PodCommand>,
}

impl LocalCluster {
    /// mesh-proxy's argv for a pod, as the harness starts it (mode, xDS address, workload
    /// name, cluster id, labels); callers may append flags (`--concurrency`).
    pub fn mesh_proxy_argv(&self, spec: &PodSpec) -> Vec<String> {
        let mode = if spec.kind == super::manifest::PodKind::Gateway {
            "router"
        } else {
            "sidecar"
        };
        let mut argv = vec![
            self.bins.mesh_proxy.display().to_string(),
            "--mode".into(),
            mode.into(),
            "--xds-address".into(),
            format!("http://{}", self.xds_address()),
            "--workload-name".into(),
            spec.app_label(),
            "--cluster-id".into(),
            "Kubernetes".into(),
        ];
        for (k, v) in &spec.labels {
            argv.extend(["--label".to_string(), format!("{k}={v}")]);
        }
        argv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled() {
        let spec = PodSpec::app("server-0", "bench", "server", "v1", &[8080]);
        let c = PodCommand::new(
            "envoy",
            vec![
                "envoy".into(),
                "--config-yaml".into(),
                r#"{"node":{"id":"sidecar~{ip}~{pod}.{namespace}"}}"#.into(),
            ],
            Readiness::Started,
        );
        assert_eq!(
            c.argv_for(&spec, "10.250.0.9")[2],
            r#"{"node":{"id":"sidecar~10.250.0.9~server-0.bench"}}"#
        );
    }
}
