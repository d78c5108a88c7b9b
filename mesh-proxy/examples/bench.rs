//! Side-by-side measurement on loopback: one upstream (1 KiB HTTP responses, and a TCP
//! echo), the mesh-proxy binary and Envoy (same xDS config from one in-process ADS
//! server, same `--concurrency`), and `wrk` for HTTP/1.1 (max rate, 64 connections) plus
//! a TCP echo round-trip loop. Prints requests/s, p50/p99 and proxy RSS idle and loaded.
//!
//! Run: `cargo build --release -p mesh-proxy --bin mesh-proxy --example bench &&
//! target/release/examples/bench` (needs `wrk`; Envoy via `$MESH_ENVOY` or tools/envoy.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use mesh_proxy::testing::{Envoy, XdsServer, any, find_envoy, http_get};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const CONCURRENCY: &str = "2";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs wrk and returns (rps, p50 ms, p99 ms).
fn wrk(addr: SocketAddr, conns: u32, secs: u32) -> (f64, f64, f64) {
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--latency",
            &format!("http://{addr}/x"),
        ])
        .output()
        .expect("wrk runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let ms = |tag: &str| -> f64 {
        text.lines()
            .find(|l| l.trim_start().starts_with(tag))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(|v| {
                if let Some(x) = v.strip_suffix("us") {
                    x.parse::<f64>().unwrap_or(0.0) / 1000.0
                } else if let Some(x) = v.strip_suffix("ms") {
                    x.parse().unwrap_or(0.0)
                } else if let Some(x) = v.strip_suffix('s') {
                    x.parse::<f64>().unwrap_or(0.0) * 1000.0
                } else {
                    0.0
                }
            })
            .unwrap_or(0.0)
    };
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0);
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        eprintln!("wrk reported errors for {addr}:\n{text}");
    }
    (rps, ms("50%"), ms("99%"))
}

/// TCP echo: `n` sequential 64-byte round trips on one connection; returns (rt/s, p50 us, p99 us).
async fn tcp_rtt(addr: SocketAddr, n: usize) -> (f64, f64, f64) {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.set_nodelay(true).unwrap();
    let msg = [7u8; 64];
    let mut buf = [0u8; 64];
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        c.write_all(&msg).await.unwrap();
        c.read_exact(&mut buf).await.unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let total = start.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    (n as f64 / total, lat[n / 2], lat[n * 99 / 100])
}

/// TCP bulk: 256 MiB through one connection; returns MiB/s.
async fn tcp_bulk(addr: SocketAddr) -> f64 {
    let c = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = c.into_split();
    const TOTAL: usize = 256 << 20;
    let writer = tokio::spawn(async move {
        let chunk = vec![1u8; 64 << 10];
        let mut sent = 0;
        while sent < TOTAL {
            w.write_all(&chunk).await.unwrap();
            sent += chunk.len();
        }
        w.shutdown().await.unwrap();
    });
    let start = Instant::now();
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0;
    while got < TOTAL {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    writer.await.unwrap();
    (got as f64 / (1 << 20) as f64) / start.elapsed().as_secs_f64()
}

async fn upstreams() -> (SocketAddr, SocketAddr) {
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = http.local_addr().unwrap();
    let body = Bytes::from(vec![b'x'; 1024]);
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = http.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_r: Request<Incoming>| {
                    let body = body.clone();
                    async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = tcp.accept().await else {
                return;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (http_addr, tcp_addr)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mesh_bin = root.join("target/release/mesh-proxy");
    assert!(
        mesh_bin.is_file(),
        "build it first: cargo build --release -p mesh-proxy --bin mesh-proxy"
    );
    let envoy_bin = find_envoy().expect("envoy binary");
    let (http_up, tcp_up) = upstreams().await;
    let xds = XdsServer::start().await;
    let cluster = |name: &str, a: SocketAddr| {
        any(
            json!({"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": name, "type": "STATIC",
            "connectTimeout": "1s",
            "circuitBreakers": {"thresholds": [{"maxConnections": 100000, "maxPendingRequests": 100000, "maxRequests": 100000}]},
            "loadAssignment": {"clusterName": name, "endpoints": [{"lbEndpoints": [{"endpoint": {"address": {"socketAddress": {
                "address": a.ip().to_string(), "portValue": a.port()}}}}]}]}}),
        )
    };
    xds.set(
        "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        vec![cluster("http", http_up), cluster("tcp", tcp_up)],
    );
    let listener = |name: &str, port: u16, filter: serde_json::Value| {
        any(
            json!({"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", "name": name,
            "address": {"socketAddress": {"address": "127.0.0.1", "portValue": port}},
            "filterChains": [{"filters": [filter]}]}),
        )
    };
    let hcm = json!({"name": "envoy.filters.network.http_connection_manager", "typedConfig": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "statPrefix": "http",
        "routeConfig": {"name": "r", "virtualHosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "http"}}]}]},
        "httpFilters": [{"name": "envoy.filters.http.router", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}});
    let tcp = json!({"name": "envoy.filters.network.tcp_proxy", "typedConfig": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "statPrefix": "tcp", "cluster": "tcp"}});
    // Different ports per proxy: both get the same resources except the ports.
    let (m_http, m_tcp, e_http, e_tcp) = (free_port(), free_port(), free_port(), free_port());
    xds.set(
        "type.googleapis.com/envoy.config.listener.v3.Listener",
        vec![
            listener("mesh_http", m_http, hcm.clone()),
            listener("mesh_tcp", m_tcp, tcp.clone()),
            listener("envoy_http", e_http, hcm),
            listener("envoy_tcp", e_tcp, tcp),
        ],
    );
    let mesh = Killed(
        Command::new(&mesh_bin)
            .args([
                "--xds-address",
                &xds.address(),
                "--concurrency",
                CONCURRENCY,
                "--log-level",
                "warn",
            ])
            .args([
                "--admin-addr",
                &format!("127.0.0.1:{}", free_port()),
                "--health-addr",
                "",
                "--prometheus-addr",
                "",
                "--merged-metrics-addr",
                "",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("mesh-proxy starts"),
    );
    let xds_addr = xds.addr();
    let envoy =
        tokio::task::spawn_blocking(move || Envoy::start(&envoy_bin, xds_addr, "bench", true))
            .await
            .unwrap()
            .unwrap();
    let envoy_pid = envoy_pid(&envoy);
    // Wait for all four listeners.
    for port in [m_http, m_tcp, e_http, e_tcp] {
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "listener on {port} never came up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mesh_pid = mesh.0.id();
    println!(
        "idle RSS: mesh-proxy {} KiB, envoy {} KiB",
        rss_kib(mesh_pid),
        rss_kib(envoy_pid)
    );
    let a = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    println!("\nHTTP/1.1, 1 KiB responses, wrk -t2 -c64 -d10s (max rate):");
    for (name, addr) in [
        ("direct", http_up),
        ("mesh-proxy", a(m_http)),
        ("envoy", a(e_http)),
    ] {
        let addr_c = addr;
        let (rps, p50, p99) = tokio::task::spawn_blocking(move || wrk(addr_c, 64, 10))
            .await
            .unwrap();
        println!("  {name:<11} {rps:>10.0} req/s   p50 {p50:>6.2} ms   p99 {p99:>6.2} ms");
    }
    println!(
        "loaded RSS: mesh-proxy {} KiB, envoy {} KiB",
        rss_kib(mesh_pid),
        rss_kib(envoy_pid)
    );
    println!("\nTCP echo, 64-byte round trips on one connection (20000):");
    for (name, addr) in [
        ("direct", tcp_up),
        ("mesh-proxy", a(m_tcp)),
        ("envoy", a(e_tcp)),
    ] {
        let (rate, p50, p99) = tcp_rtt(addr, 20_000).await;
        println!("  {name:<11} {rate:>10.0} rt/s    p50 {p50:>6.1} us   p99 {p99:>6.1} us");
    }
    println!("\nTCP bulk, 256 MiB through one connection:");
    for (name, addr) in [
        ("direct", tcp_up),
        ("mesh-proxy", a(m_tcp)),
        ("envoy", a(e_tcp)),
    ] {
        println!("  {name:<11} {:>8.0} MiB/s", tcp_bulk(addr).await);
    }
    let _ = http_get(envoy.admin, "/ready");
    drop(mesh);
    drop(envoy);
}

fn envoy_pid(e: &Envoy) -> u32 {
    e.pid()
}
