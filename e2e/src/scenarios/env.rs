//! What a scenario works with: a cluster, plus the steps every scenario repeats
//! (deploy the test app, apply YAML and wait for the mesh to converge, send traffic from a
//! pod, read what a pod saw, read a proxy's access log).

use std::fmt::Display;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::access_log::{self, Entry};
use crate::cluster::{Caller, ClientArgs, Cluster, PodInfo};
use crate::local::manifest::{PodKind, PodSpec, ServicePort, ServiceSpec};
use crate::testapp::client::Report;

/// How long a change may take to reach every proxy.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(20);

/// The client pod every scenario sends from, as in Istio's samples.
pub const SLEEP: &str = "sleep";

/// The pod `sleep` and its traffic, as scenarios see them.
pub struct Env<'a> {
    cluster: &'a dyn Cluster,
    scenario: &'static str,
    seq: AtomicU32,
    started: Instant,
}

impl<'a> Env<'a> {
    pub fn new(cluster: &'a dyn Cluster, scenario: &'static str) -> Self {
        Env {
            cluster,
            scenario,
            seq: AtomicU32::new(0),
            started: Instant::now(),
        }
    }

    pub fn cluster(&self) -> &dyn Cluster {
        self.cluster
    }

    /// Prints a step of the scenario (with the time since it started).
    pub fn step(&self, what: impl Display) {
        eprintln!(
            "    [{:>5.1}s] {what}",
            self.started.elapsed().as_secs_f64()
        );
    }

    /// A key unique to this run, for `key=` counting and access log lookups.
    pub fn key(&self, tag: &str) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        format!("{}-{tag}-{n}-{nanos:x}", self.scenario)
    }

    /// Applies Istio YAML as a user would, then waits for every proxy to run it.
    pub fn apply(&self, yaml: &str) -> Result<()> {
        self.cluster.apply(yaml).context("apply")?;
        self.synced()
    }

    pub fn delete(&self, yaml: &str) -> Result<()> {
        self.cluster.delete(yaml).context("delete")?;
        self.synced()
    }

    pub fn synced(&self) -> Result<()> {
        let t = Instant::now();
        self.cluster.wait_synced(SYNC_TIMEOUT)?;
        self.step(format!(
            "mesh converged in {:.0} ms",
            t.elapsed().as_secs_f64() * 1e3
        ));
        Ok(())
    }

    /// A Service `name` in `default` selecting `app: name`, one port.
    pub fn service(&self, name: &str, port_name: &str, port: u16) -> Result<()> {
        self.cluster.add_service(ServiceSpec {
            name: name.to_string(),
            namespace: "default".into(),
            selector: [("app".to_string(), name.to_string())].into(),
            ports: vec![ServicePort {
                name: port_name.to_string(),
                port,
                target_port: port,
            }],
        })?;
        Ok(())
    }

    /// A test-app pod with a sidecar serving HTTP (and gRPC, WebSocket) on `port`.
    pub fn app(&self, pod: &str, app: &str, version: &str, port: u16) -> Result<PodInfo> {
        self.cluster
            .add_pod(PodSpec::app(pod, "default", app, version, &[port]))
    }

    /// A test-app pod with a sidecar serving TCP echo on `port`.
    pub fn tcp_app(&self, pod: &str, app: &str, version: &str, port: u16) -> Result<PodInfo> {
        let mut spec = PodSpec::app(pod, "default", app, version, &[]);
        spec.tcp_ports = vec![port];
        self.cluster.add_pod(spec)
    }

    pub fn pod(&self, spec: PodSpec) -> Result<PodInfo> {
        self.cluster.add_pod(spec)
    }

    /// The `sleep` client pod (with a sidecar; no Service).
    pub fn sleep(&self) -> Result<PodInfo> {
        self.app(SLEEP, SLEEP, "v1", 80)
    }

    /// The ingress gateway: `istio-ingressgateway` in `istio-system`, labelled
    /// `istio: ingressgateway`, with its Service (80).
    pub fn ingress_gateway(&self) -> Result<PodInfo> {
        self.cluster.add_service(ServiceSpec {
            name: "istio-ingressgateway".into(),
            namespace: "istio-system".into(),
            selector: [("istio".to_string(), "ingressgateway".to_string())].into(),
            ports: vec![ServicePort {
                name: "http2".into(),
                port: 80,
                target_port: 80,
            }],
        })?;
        let mut gw = PodSpec::app(
            "istio-ingressgateway",
            "istio-system",
            "istio-ingressgateway",
            "v1",
            &[],
        );
        gw.labels.insert("istio".into(), "ingressgateway".into());
        gw.service_account = "istio-ingressgateway-service-account".into();
        gw.kind = PodKind::Gateway;
        self.cluster.add_pod(gw)
    }

    /// Sends from the `sleep` pod (through its sidecar).
    pub fn from_sleep(&self, args: ClientArgs) -> Result<Report> {
        self.client(Caller::pod(SLEEP), args)
    }

    pub fn client(&self, from: Caller<'_>, args: ClientArgs) -> Result<Report> {
        let r = self.cluster.client(from, &args)?;
        self.step(format!("{} x{}: {}", args.url, args.requests, brief(&r)));
        Ok(r)
    }

    /// How many requests carrying `key=KEY` the app in `pod` received, asked on its own
    /// loopback (not captured, so not through any proxy).
    pub fn requests_seen(&self, pod: &str, port: u16, key: &str) -> Result<u64> {
        let args = ClientArgs::get(format!("http://127.0.0.1:{port}/stats?key={key}")).keep(1);
        let r = self.cluster.client(Caller::pod(pod), &args)?;
        r.answers
            .first()
            .and_then(|a| a["count"].as_u64())
            .with_context(|| format!("no /stats answer from pod {pod}: {}", brief(&r)))
    }

    /// Waits until `pod` has seen `want` requests with `key` (for fire-and-forget copies
    /// such as mirrors); returns the count seen when it stopped waiting.
    pub fn eventually_seen(
        &self,
        pod: &str,
        port: u16,
        key: &str,
        want: u64,
        timeout: Duration,
    ) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.requests_seen(pod, port, key)?;
            if n >= want || Instant::now() >= deadline {
                return Ok(n);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The access log lines of `pod`'s proxy whose path contains `needle`.
    pub fn access_log(&self, pod: &str, namespace: &str, needle: &str) -> Result<Vec<Entry>> {
        Ok(access_log::entries(
            &self.cluster.proxy_log(pod, namespace)?,
            needle,
        ))
    }

    /// Waits until `pod`'s proxy has logged `want` lines containing `needle` (access logs
    /// are written when a request completes, and may be buffered briefly).
    pub fn access_log_lines(&self, pod: &str, needle: &str, want: usize) -> Result<Vec<Entry>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got = self.access_log(pod, "default", needle)?;
            if got.len() >= want {
                return Ok(got);
            }
            if Instant::now() >= deadline {
                bail!(
                    "proxy of {pod} logged {} access log lines for {needle}, want {want} (is accessLogFile honoured?)",
                    got.len()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A report in one line, without the kept answers.
pub fn brief(r: &Report) -> String {
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        m.remove("answers");
        m.remove("by_service");
    }
    v.to_string()
}

/// The pod that produced a kept answer.
pub fn answer_pod(a: &Value) -> &str {
    a["pod"].as_str().unwrap_or("")
}
