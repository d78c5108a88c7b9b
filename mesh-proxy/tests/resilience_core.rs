//! The upstream half of resilience through a whole proxy (in-process, real xDS over gRPC,
//! real TCP upstreams): outlier detection ejecting an endpoint that refuses connections
//! and taking it back once it listens again, priority failover when ejections drain a
//! priority level, the `max_connections` circuit breaker refusing at once, and an
//! `upstream_bind_config` source address as Istio sets on inbound clusters.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use mesh_proxy::testing::http_get;
use serde_json::{Value, json};
use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// A port nothing listens on (bound, then released).
fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

/// Opens `n` connections through the proxy; returns the greeting tag counts ("" for a
/// connection the proxy closed because the upstream connect failed).
async fn tally(addr: SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for _ in 0..n {
        let tag = greet(addr).await.map(|(_, t)| t).unwrap_or_default();
        *m.entry(tag).or_insert(0) += 1;
    }
    m
}

/// An admin page (the blocking client runs off the runtime the proxy serves on).
async fn admin(proxy: &mesh_proxy::app::Proxy, path: &str) -> String {
    let (addr, path) = (proxy.admin_addr.unwrap(), path.to_string());
    tokio::task::spawn_blocking(move || http_get(addr, &path).unwrap())
        .await
        .unwrap()
}

fn stat(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no stat {name} in:\n{text}"))
}

#[tokio::test]
async fn outlier_detection_ejects_a_refusing_endpoint_and_takes_it_back() {
    let xds = mesh_proxy::testing::XdsServer::start().await;
    let a = echo("a").await;
    let b = echo("b").await;
    let dead = dead_addr();
    let port = free_port();
    let cluster = with(
        static_cluster("c", &[a.addr, b.addr, dead]),
        "outlierDetection",
        json!({"consecutive5xx": 2, "interval": "0.2s", "baseEjectionTime": "3s",
               "maxEjectionPercent": 100, "enforcingSuccessRate": 0}),
    );
    set(&xds, CDS, vec![cluster]);
    set(&xds, LDS, vec![tcp_listener("tcp", port, "c")]);
    let proxy = start_proxy(&xds, false).await;
    assert!(proxy.wait_ready(WAIT).await);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // Round robin reaches the dead endpoint every third connection; its second refused
    // connect (a 503 to outlier detection) ejects it.
    let first = tally(addr, 9).await;
    assert!(first.get("").copied().unwrap_or(0) >= 2, "{first:?}");
    let clusters = admin(&proxy, "/clusters").await;
    assert!(
        clusters.contains(&format!("c::{dead}::health_flags::/failed_outlier_check")),
        "{clusters}"
    );
    // Ejected: every connection reaches a live endpoint.
    let after = tally(addr, 30).await;
    assert_eq!(after.get(""), None, "{after:?}");
    let stats = admin(&proxy, "/stats").await;
    assert_eq!(
        stat(&stats, "cluster.c.outlier_detection.ejections_active"),
        1
    );
    assert!(
        stat(
            &stats,
            "cluster.c.outlier_detection.ejections_enforced_consecutive_5xx"
        ) >= 1
    );
    assert_eq!(stat(&stats, "cluster.c.membership_healthy"), 2);

    // The endpoint comes back to life; after the ejection time a sweep returns it.
    let revived = TcpListener::bind(dead).await.unwrap();
    let serve = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = revived.accept().await else {
                return;
            };
            let _ = s.write_all(b"revived\n").await;
        }
    });
    eventually("the host to return", || async {
        admin(&proxy, "/clusters")
            .await
            .contains(&format!("c::{dead}::health_flags::healthy"))
            .then_some(())
    })
    .await;
    let back = tally(addr, 30).await;
    assert_eq!(back.get("revived"), Some(&10), "{back:?}");
    serve.abort();
    proxy.shutdown().await;
}

#[tokio::test]
async fn ejections_fail_over_to_the_next_priority() {
    let xds = mesh_proxy::testing::XdsServer::start().await;
    let p0 = echo("p0").await;
    let p1 = echo("p1").await;
    let dead = dead_addr();
    let port = free_port();
    let ep = |a: SocketAddr| json!({"endpoint": {"address": {"socketAddress": {"address": a.ip().to_string(), "portValue": a.port()}}}});
    let cla = json!({
        "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        "clusterName": "c",
        "endpoints": [
            {"priority": 0, "lbEndpoints": [ep(p0.addr), ep(dead)]},
            {"priority": 1, "lbEndpoints": [ep(p1.addr)]}
        ]
    });
    let cluster = with(
        eds_cluster("c"),
        "outlierDetection",
        json!({"consecutive5xx": 1, "interval": "10s", "baseEjectionTime": "60s",
               "maxEjectionPercent": 100}),
    );
    set(&xds, CDS, vec![cluster]);
    set(&xds, EDS, vec![cla]);
    set(&xds, LDS, vec![tcp_listener("tcp", port, "c")]);
    let proxy = start_proxy(&xds, false).await;
    assert!(proxy.wait_ready(WAIT).await);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // P0 fully available: nothing goes to P1 until the dead host is ejected.
    let mut failed = 0;
    while !admin(&proxy, "/clusters")
        .await
        .contains("/failed_outlier_check")
    {
        let (tag, _) = (greet(addr).await.map(|(_, t)| t).unwrap_or_default(), ());
        assert_ne!(tag, "p1", "P1 got traffic while P0 was healthy");
        failed += usize::from(tag.is_empty());
        assert!(failed <= 1, "ejected on the first refused connect");
    }
    // 1 of 2 hosts healthy in P0: 70% stays (1.4 x 50%), 30% fails over to P1.
    let m = tally(addr, 300).await;
    let to_p1 = m.get("p1").copied().unwrap_or(0);
    assert_eq!(m.get(""), None, "{m:?}");
    // Binomial(300, 0.3): mean 90, sd 7.9.
    assert!((55..=125).contains(&to_p1), "{m:?}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn max_connections_overflow_is_refused_at_once() {
    let xds = mesh_proxy::testing::XdsServer::start().await;
    let a = echo("a").await;
    let port = free_port();
    let cluster = with(
        static_cluster("c", &[a.addr]),
        "circuitBreakers",
        json!({"thresholds": [{"maxConnections": 1}]}),
    );
    set(&xds, CDS, vec![cluster]);
    set(&xds, LDS, vec![tcp_listener("tcp", port, "c")]);
    let proxy = start_proxy(&xds, false).await;
    assert!(proxy.wait_ready(WAIT).await);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let (mut held, tag) = greet(addr).await.unwrap();
    assert_eq!(tag, "a");
    // The second connection is closed without waiting (UO), while the first still works.
    let started = std::time::Instant::now();
    let mut second = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(WAIT, second.read(&mut buf))
        .await
        .expect("closed, not queued")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(roundtrip(&mut held, b"still").await.unwrap(), b"still");
    let stats = admin(&proxy, "/stats").await;
    assert_eq!(stat(&stats, "cluster.c.upstream_cx_overflow"), 1);
    assert!(
        admin(&proxy, "/clusters")
            .await
            .contains("c::default_priority::max_connections::1")
    );
    // Released when the first connection ends.
    drop(held);
    let (_c, tag) = eventually("a free slot", || async {
        greet(addr).await.ok().filter(|(_, t)| t == "a")
    })
    .await;
    assert_eq!(tag, "a");
    proxy.shutdown().await;
}

#[tokio::test]
async fn upstream_bind_config_sets_the_source_address() {
    let xds = mesh_proxy::testing::XdsServer::start().await;
    // An upstream that answers with the peer address it sees.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let serve = tokio::spawn(async move {
        loop {
            let Ok((mut s, peer)) = l.accept().await else {
                return;
            };
            let _ = s.write_all(format!("{}\n", peer.ip()).as_bytes()).await;
        }
    });
    let port = free_port();
    let cluster = with(
        static_cluster("inbound|8080||", &[up]),
        "upstreamBindConfig",
        json!({"sourceAddress": {"address": "127.0.0.6", "portValue": 0}}),
    );
    let cluster = with(
        cluster,
        "upstreamConnectionOptions",
        json!({"tcpKeepalive": {"keepaliveTime": 300}}),
    );
    set(&xds, CDS, vec![cluster]);
    set(&xds, LDS, vec![tcp_listener("tcp", port, "inbound|8080||")]);
    let proxy = start_proxy(&xds, false).await;
    assert!(proxy.wait_ready(WAIT).await);
    let (_c, peer) = greet(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(peer, "127.0.0.6");
    serve.abort();
    proxy.shutdown().await;
}
