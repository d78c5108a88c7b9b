//! The `Cluster` trait: what an end-to-end scenario needs from a cluster, so the same
//! scenario code runs on the local backend (network namespaces) and, later, on a real
//! Kubernetes cluster.

use std::process::Output;
use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::local::manifest::{PodSpec, ServiceSpec};
use crate::testapp::client::{Protocol, Report};

/// A running pod as scenarios see it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodInfo {
    pub name: String,
    pub namespace: String,
    pub ip: String,
    /// The `app` label (what `exec` accepts instead of a pod name).
    pub app: String,
    /// The proxy's admin address as reachable through the pod (`127.0.0.1:15000`), when
    /// the pod has a proxy.
    pub admin: Option<String>,
}

/// A Service as scenarios see it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServiceInfo {
    pub name: String,
    pub namespace: String,
    pub vip: String,
    pub ports: Vec<u16>,
}

/// Where the test app's client runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller<'a> {
    /// Inside a pod (name or `app` label) as its app: the traffic goes through the pod's
    /// sidecar, like `kubectl exec deploy/sleep -- curl ...`.
    Pod { pod: &'a str, namespace: &'a str },
    /// Where the scenarios run (outside the mesh), e.g. for the ingress gateway.
    Outside,
}

impl<'a> Caller<'a> {
    /// A pod in namespace `default`.
    pub fn pod(pod: &'a str) -> Self {
        Caller::Pod {
            pod,
            namespace: "default",
        }
    }
}

/// What the test app's client sends: rendered to `testapp client` arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientArgs {
    pub url: String,
    pub requests: u64,
    pub concurrency: usize,
    pub rate: Option<f64>,
    pub headers: Vec<(String, String)>,
    pub method: Option<String>,
    pub protocol: Protocol,
    pub timeout: Duration,
    pub connect_to: Option<String>,
    pub grpc_query: Option<String>,
    pub keep: usize,
    pub vary_header: Option<(String, u64)>,
    /// Stop after this many requests got no answer (default 5, so a broken path fails a
    /// scenario in seconds rather than a timeout per request); `None` sends them all.
    pub stop_after_errors: Option<u64>,
}

impl ClientArgs {
    /// One HTTP/1.1 GET of `url`.
    pub fn get(url: impl Into<String>) -> Self {
        ClientArgs {
            url: url.into(),
            requests: 1,
            concurrency: 1,
            rate: None,
            headers: Vec::new(),
            method: None,
            protocol: Protocol::Http1,
            timeout: Duration::from_secs(5),
            connect_to: None,
            grpc_query: None,
            keep: 0,
            vary_header: None,
            stop_after_errors: Some(5),
        }
    }

    pub fn protocol(mut self, p: Protocol) -> Self {
        self.protocol = p;
        self
    }

    pub fn requests(mut self, n: u64) -> Self {
        self.requests = n;
        self
    }

    pub fn concurrency(mut self, c: usize) -> Self {
        self.concurrency = c;
        self
    }

    pub fn rate(mut self, rps: f64) -> Self {
        self.rate = Some(rps);
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    pub fn connect_to(mut self, addr: impl Into<String>) -> Self {
        self.connect_to = Some(addr.into());
        self
    }

    pub fn grpc_query(mut self, q: impl Into<String>) -> Self {
        self.grpc_query = Some(q.into());
        self
    }

    /// Keep the first `n` answers in the report.
    pub fn keep(mut self, n: usize) -> Self {
        self.keep = n;
        self
    }

    /// Every request is sent even when requests fail without an answer (for scenarios
    /// that expect connections to be refused or reset).
    pub fn errors_expected(mut self) -> Self {
        self.stop_after_errors = None;
        self
    }

    /// Header `name` set to `k<i mod count>` on request `i`.
    pub fn vary_header(mut self, name: &str, count: u64) -> Self {
        self.vary_header = Some((name.to_string(), count));
        self
    }

    /// The `testapp client` command line after the binary name.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = vec![
            "client".to_string(),
            self.url.clone(),
            "-n".into(),
            self.requests.to_string(),
            "-c".into(),
            self.concurrency.to_string(),
            "--timeout".into(),
            format!("{}ms", self.timeout.as_millis()),
            "--protocol".into(),
            match self.protocol {
                Protocol::Http1 => "http1",
                Protocol::H2 => "h2",
                Protocol::Grpc => "grpc",
                Protocol::Tcp => "tcp",
                Protocol::Ws => "ws",
            }
            .into(),
        ];
        if let Some(r) = self.rate {
            a.extend(["--rate".into(), r.to_string()]);
        }
        for (k, v) in &self.headers {
            a.extend(["-H".into(), format!("{k}: {v}")]);
        }
        if let Some(m) = &self.method {
            a.extend(["-X".into(), m.clone()]);
        }
        if let Some(c) = &self.connect_to {
            a.extend(["--connect-to".into(), c.clone()]);
        }
        if let Some(q) = &self.grpc_query {
            a.extend(["--grpc-query".into(), q.clone()]);
        }
        if self.keep > 0 {
            a.extend(["--keep".into(), self.keep.to_string()]);
        }
        if let Some((name, count)) = &self.vary_header {
            a.extend(["--vary-header".into(), format!("{name}:{count}")]);
        }
        if let Some(n) = self.stop_after_errors {
            a.extend(["--stop-after-errors".into(), n.to_string()]);
        }
        a
    }
}

pub trait Cluster: Send + Sync {
    /// Creates or replaces the resources in a YAML stream (Istio config, Services, ...).
    fn apply(&self, yaml: &str) -> Result<()>;
    /// Removes the resources named in a YAML stream.
    fn delete(&self, yaml: &str) -> Result<()>;
    /// Runs a command inside a pod (its network namespace, as the app's user), like
    /// `kubectl exec`. `pod` may be a pod name or an `app` label value.
    fn exec(&self, pod: &str, namespace: &str, cmd: &[&str]) -> Result<Output>;
    fn pods(&self) -> Result<Vec<PodInfo>>;
    fn services(&self) -> Result<Vec<ServiceInfo>>;
    /// The ingress gateway's base URL as reachable from where the scenarios run.
    fn ingress_url(&self) -> Option<String>;

    /// Starts a workload (the test app with a sidecar, or a gateway) and waits until it is
    /// ready, like a Deployment of one replica.
    fn add_pod(&self, spec: PodSpec) -> Result<PodInfo>;
    /// Deletes a pod; its endpoints go first.
    fn remove_pod(&self, name: &str, namespace: &str) -> Result<()>;
    fn add_service(&self, spec: ServiceSpec) -> Result<ServiceInfo>;

    /// Waits until the control plane holds everything applied so far and every proxy runs
    /// exactly the config the control plane would send it now (all of it ACKed), so a
    /// scenario never sleeps blindly after a change. Fails at once, with the proxy's
    /// message, when a proxy NACKs, and with the control plane's message when it reports a
    /// problem with applied config.
    fn wait_synced(&self, timeout: Duration) -> Result<()>;
    /// Runs the test app's client and returns its totals.
    fn client(&self, from: Caller<'_>, args: &ClientArgs) -> Result<Report>;
    /// A GET on a proxy's admin port (`/stats`, `/config_dump`, `/clusters`, ...).
    fn proxy_admin(&self, pod: &str, namespace: &str, path: &str) -> Result<String>;
    /// A proxy's output so far (its access log when the mesh config enables it), like
    /// `kubectl logs POD -c istio-proxy`.
    fn proxy_log(&self, pod: &str, namespace: &str) -> Result<String>;
}
