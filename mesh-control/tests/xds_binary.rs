//! The `mesh-control` binary end to end: a config directory of Kubernetes YAML, a delta ADS
//! client, an endpoint change written to a file and seen by the client within a second,
//! readiness and metrics on the monitoring port, and a clean exit on SIGTERM.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod xds_support;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::address;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use prost::Message;
use tokio::time::Instant;
use xds_support::*;

const CLUSTER: &str = "outbound|80||backend.default.svc.cluster.local";

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn write_mesh(dir: &Path, endpoint_ip: &str) {
    let yaml = format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: backend
  namespace: default
spec:
  clusterIP: 10.251.0.10
  selector:
    app: backend
  ports:
  - name: http
    port: 80
    targetPort: 8080
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: backend-abcde
  namespace: default
  labels:
    kubernetes.io/service-name: backend
addressType: IPv4
ports:
- name: http
  port: 8080
  protocol: TCP
endpoints:
- addresses: ["{endpoint_ip}"]
  conditions:
    ready: true
"#
    );
    // Write then rename, as editors and kubectl-style tools do, so the watcher never sees
    // half a file.
    let tmp = dir.join(".backend.yaml.tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, dir.join("backend.yaml")).unwrap();
}

/// The endpoint IPs the client holds for the backend cluster.
fn endpoint_ips(h: &Holdings) -> Vec<String> {
    let Some(bytes) = h.endpoints.get(CLUSTER) else {
        return vec![];
    };
    let cla = ClusterLoadAssignment::decode(bytes.as_slice()).unwrap();
    cla.endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .filter_map(|e| match &e.host_identifier {
            Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => ep.address.clone(),
            _ => None,
        })
        .filter_map(|a| match a.address {
            Some(address::Address::SocketAddress(s)) => Some(s.address),
            _ => None,
        })
        .collect()
}

struct Binary(Child);

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_change_reaches_a_connected_proxy_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    write_mesh(dir.path(), "10.250.1.1");
    let (xds, mon) = (free_port(), free_port());
    let mut bin = Binary(
        Command::new(env!("CARGO_BIN_EXE_mesh-control"))
            .arg("--config-dir")
            .arg(dir.path())
            .arg("--xds-addr")
            .arg(xds.to_string())
            .arg("--monitoring-addr")
            .arg(mon.to_string())
            .args(["--log-level", "info"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if tokio::net::TcpStream::connect(mon).await.is_ok()
            && http_get(mon, "/ready").await.0 == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "mesh-control never became ready");
        assert!(
            bin.0.try_wait().unwrap().is_none(),
            "mesh-control exited early"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let client = delta_client(xds, ClientOptions::default(), None).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while endpoint_ips(&client.holdings()) != ["10.250.1.1"] {
        assert!(
            Instant::now() < deadline,
            "client never got {CLUSTER} with endpoint 10.250.1.1; it holds clusters {:?}",
            client.holdings().clusters.keys().collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The change: one endpoint IP. Seen by the proxy within a second (file watch, store,
    // 100 ms debounce, generation, delta push).
    let changed_at = Instant::now();
    write_mesh(dir.path(), "10.250.1.2");
    while endpoint_ips(&client.holdings()) != ["10.250.1.2"] {
        assert!(
            changed_at.elapsed() < Duration::from_secs(1),
            "endpoint change not pushed within 1 s: client holds {:?}",
            endpoint_ips(&client.holdings())
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("file change to proxy: {:?}", changed_at.elapsed());

    let (_, metrics) = http_get(mon, "/metrics").await;
    assert!(metrics.contains("pilot_push_triggers{type="), "{metrics}");
    assert!(metrics.contains("pilot_xds 1\n"), "{metrics}");
    let (_, syncz) = http_get(mon, "/debug/syncz").await;
    assert!(syncz.contains(NODE_ID), "{syncz}");
    let (status, configz) = http_get(mon, "/debug/configz").await;
    assert_eq!(status, 200);
    assert!(configz.contains("backend"), "{configz}");

    // SIGTERM: a clean exit, and the client sees its stream end.
    let pid = bin.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = bin.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "mesh-control did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}");
}

#[test]
fn a_missing_config_dir_is_a_clear_startup_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-control"))
        .args(["--config-dir", "/nonexistent/mesh-config"])
        .args(["--xds-addr", &free_port().to_string()])
        .args(["--monitoring-addr", &free_port().to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/mesh-config"), "{stderr}");
}
