//! The real `mesh-proxy` binary: flags and env, readiness on the health port, runtime
//! log level changes, SIGTERM drains open connections and exits, `/quitquitquit` exits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use mesh_proxy::testing::{XdsServer, http_get};
use nix::{sys::signal::Signal, unistd::Pid};
use support::*;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(xds: &XdsServer, admin: u16, health: u16, drain: &str) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_mesh-proxy"))
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .args([
                "--health-addr",
                &format!("127.0.0.1:{health}"),
                "--prometheus-addr",
                "",
                "--merged-metrics-addr",
                "",
            ])
            .args(["--drain-duration", drain, "--concurrency", "1"])
            // Flags also come from the environment.
            .env("XDS_ADDRESS", xds.address())
            .env("POD_NAME", "bin-test")
            .env("POD_NAMESPACE", "ns1")
            .env("INSTANCE_IP", "10.250.0.42")
            .env("MESH_LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the mesh-proxy binary starts"),
    )
}

async fn get(port: u16, path: &'static str) -> Option<String> {
    tokio::task::spawn_blocking(move || {
        http_get(format!("127.0.0.1:{port}").parse().unwrap(), path).ok()
    })
    .await
    .unwrap()
}

async fn post(port: u16, path: &str) -> String {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap()
}

async fn ready(health: u16) {
    eventually("readiness on /healthz/ready", || async move {
        let out = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", health)).ok()?;
            write!(
                s,
                "GET /healthz/ready HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            )
            .ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            Some(out)
        })
        .await
        .unwrap()?;
        out.starts_with("HTTP/1.1 200").then_some(())
    })
    .await;
}

#[tokio::test]
async fn sigterm_drains_then_exits() {
    let xds = XdsServer::start().await;
    let up = echo("a").await;
    let port = free_port();
    set(&xds, CDS, vec![static_cluster("a", &[up.addr])]);
    set(&xds, LDS, vec![tcp_listener("tcp", port, "a")]);
    let (admin, health) = (free_port(), free_port());
    let mut p = spawn(&xds, admin, health, "2s");
    ready(health).await;
    // The node identity came from the environment, as Istio's agent builds it.
    let node = xds.requests().into_iter().find_map(|r| r.node_id).unwrap();
    assert_eq!(
        node,
        "sidecar~10.250.0.42~bin-test.ns1~ns1.svc.cluster.local"
    );
    // Runtime log level change.
    assert!(
        post(admin, "/logging?level=debug")
            .await
            .contains("active log filter: debug")
    );
    assert!(
        post(admin, "/logging?level=bogus")
            .await
            .starts_with("HTTP/1.1 400")
    );
    assert!(
        get(admin, "/quitquitquit")
            .await
            .unwrap()
            .contains("requires POST")
    );

    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let (mut c, _) = greet(addr).await.unwrap();
    nix::sys::signal::kill(Pid::from_raw(p.0.id() as i32), Signal::SIGTERM).unwrap();
    // Draining: unready, no new connections, but the open one still works.
    eventually("listener closed", || async {
        tokio::net::TcpStream::connect(addr).await.err().map(|_| ())
    })
    .await;
    assert_eq!(
        roundtrip(&mut c, b"during drain").await.unwrap(),
        b"during drain"
    );
    let started = Instant::now();
    let status = loop {
        if let Some(s) = p.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "did not exit after the drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    // It waited for the open connection until the drain deadline (2s), not less.
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn quitquitquit_exits_promptly_without_connections() {
    let xds = XdsServer::start().await;
    let up = echo("a").await;
    set(&xds, CDS, vec![static_cluster("a", &[up.addr])]);
    set(&xds, LDS, vec![tcp_listener("tcp", free_port(), "a")]);
    let (admin, health) = (free_port(), free_port());
    let mut p = spawn(&xds, admin, health, "10s");
    ready(health).await;
    assert!(post(admin, "/quitquitquit").await.contains("OK"));
    let started = Instant::now();
    loop {
        if let Some(s) = p.0.try_wait().unwrap() {
            assert!(s.success());
            break;
        }
        // No connections to wait for: far sooner than the 10s drain duration.
        assert!(started.elapsed() < Duration::from_secs(5), "did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
