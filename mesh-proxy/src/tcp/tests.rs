//! tcp_proxy over real sockets: bytes both ways, half-close both ways, idle timeout,
//! connect failure, stats.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::*;
use crate::config::{
    address::HostPort,
    cluster::{Cluster as ClusterConfig, Discovery, LbPolicy},
    endpoint::{ClusterLoadAssignment, Endpoint, HealthStatus, LocalityEndpoints},
    tcp_proxy::ClusterChoice,
};

fn static_cluster(name: &str, addr: SocketAddr) -> ClusterConfig {
    ClusterConfig {
        name: name.into(),
        stat_name: name.into(),
        discovery: Discovery::Static,
        connect_timeout: Duration::from_secs(1),
        lb: LbPolicy::RoundRobin,
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.into(),
            localities: vec![LocalityEndpoints {
                locality: Default::default(),
                weight: None,
                priority: 0,
                endpoints: vec![Endpoint {
                    address: HostPort::Ip(addr),
                    hostname: String::new(),
                    health: HealthStatus::Healthy,
                    weight: 1,
                    tls_mode: None,
                }],
            }],
            overprovisioning_factor: 140,
            weighted_priority_health: false,
        }),
        ..ClusterConfig::default()
    }
}

fn tcp_cfg(cluster: &str, idle: Option<Duration>) -> Arc<TcpProxy> {
    Arc::new(TcpProxy {
        stat_prefix: "test".into(),
        cluster: ClusterChoice::Single(cluster.into()),
        idle_timeout: idle,
        max_downstream_connection_duration: None,
        max_connect_attempts: 1,
        access_log: vec![],
    })
}

/// A proxy "listener": accepts one connection and runs tcp_proxy on it.
async fn proxy_once(rt: Runtime, cfg: Arc<TcpProxy>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (s, peer) = l.accept().await.unwrap();
        let conn = ConnInfo::new("test", s.local_addr().unwrap(), peer);
        proxy(Io::new(s), conn, cfg, rt).await;
    });
    (addr, task)
}

#[tokio::test]
async fn half_close_from_client_still_gets_response() {
    // Upstream reads everything until FIN, then answers and closes: only works if the
    // proxy forwards the client's FIN and keeps the other direction open.
    let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = up.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = up.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        s.write_all(format!("got {} bytes", got.len()).as_bytes())
            .await
            .unwrap();
        s.shutdown().await.unwrap();
    });
    let rt = Runtime::for_tests();
    rt.clusters.add_or_update(static_cluster("up", up_addr));
    let (addr, task) = proxy_once(rt.clone(), tcp_cfg("up", None)).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let payload = vec![7u8; 100_000];
    c.write_all(&payload).await.unwrap();
    c.shutdown().await.unwrap();
    let mut reply = String::new();
    c.read_to_string(&mut reply).await.unwrap();
    assert_eq!(reply, "got 100000 bytes");
    task.await.unwrap();
    server.await.unwrap();
    let stats = rt.stats.encode_prometheus();
    assert!(
        stats.contains(r#"envoy_tcp_downstream_cx_rx_bytes_total{envoy_tcp_prefix="test"} 100000"#),
        "{stats}"
    );
    assert!(
        stats.contains(r#"envoy_tcp_downstream_cx_tx_bytes_total{envoy_tcp_prefix="test"} 16"#)
    );
    assert!(stats.contains(r#"envoy_cluster_upstream_cx_active{envoy_cluster_name="up"} 0"#));
}

#[tokio::test]
async fn half_close_from_server_keeps_client_direction() {
    // Upstream greets and half-closes at once, then echoes what it still receives.
    let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = up.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (s, _) = up.accept().await.unwrap();
        let (mut r, mut w) = s.into_split();
        w.write_all(b"hello").await.unwrap();
        w.shutdown().await.unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        got
    });
    let rt = Runtime::for_tests();
    rt.clusters.add_or_update(static_cluster("up", up_addr));
    let (addr, task) = proxy_once(rt, tcp_cfg("up", None)).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut greet = String::new();
    c.read_to_string(&mut greet).await.unwrap();
    assert_eq!(greet, "hello");
    // The server's FIN reached us, yet we can still send.
    c.write_all(b"after fin").await.unwrap();
    c.shutdown().await.unwrap();
    assert_eq!(server.await.unwrap(), b"after fin");
    task.await.unwrap();
}

#[tokio::test]
async fn idle_timeout_closes_both_sides() {
    let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = up.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = up.accept().await.unwrap();
        let mut b = [0u8; 8];
        // Returns 0 once the proxy closes the idle connection.
        s.read(&mut b).await.unwrap()
    });
    let rt = Runtime::for_tests();
    rt.clusters.add_or_update(static_cluster("up", up_addr));
    let (addr, task) =
        proxy_once(rt.clone(), tcp_cfg("up", Some(Duration::from_millis(100)))).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut b = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(server.await.unwrap(), 0);
    task.await.unwrap();
    assert!(
        rt.stats
            .encode_prometheus()
            .contains(r#"envoy_tcp_idle_timeout_total{envoy_tcp_prefix="test"} 1"#)
    );
}

#[tokio::test]
async fn connect_failure_closes_downstream() {
    // A port with nothing listening.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let rt = Runtime::for_tests();
    rt.clusters.add_or_update(static_cluster("dead", dead_addr));
    let (addr, task) = proxy_once(rt.clone(), tcp_cfg("dead", None)).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut b = Vec::new();
    let _ = c.read_to_end(&mut b).await;
    assert!(b.is_empty());
    task.await.unwrap();
    assert!(
        rt.stats.encode_prometheus().contains(
            r#"envoy_cluster_upstream_cx_connect_fail_total{envoy_cluster_name="dead"} 1"#
        )
    );
}

#[tokio::test]
async fn unknown_cluster_closes_downstream() {
    let rt = Runtime::for_tests();
    let (addr, task) = proxy_once(rt.clone(), tcp_cfg("nope", None)).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut b = Vec::new();
    let _ = c.read_to_end(&mut b).await;
    task.await.unwrap();
    assert!(
        rt.stats
            .encode_prometheus()
            .contains(r#"envoy_tcp_downstream_cx_no_route_total{envoy_tcp_prefix="test"} 1"#)
    );
}

#[tokio::test]
async fn circuit_breaker_overflow() {
    let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = up.local_addr().unwrap();
    let rt = Runtime::for_tests();
    let mut cfg = static_cluster("cb", up_addr);
    cfg.circuit_breakers.default.max_connections = 0;
    rt.clusters.add_or_update(cfg);
    let (addr, task) = proxy_once(rt.clone(), tcp_cfg("cb", None)).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut b = Vec::new();
    let _ = c.read_to_end(&mut b).await;
    task.await.unwrap();
    assert!(
        rt.stats
            .encode_prometheus()
            .contains(r#"envoy_cluster_upstream_cx_overflow_total{envoy_cluster_name="cb"} 1"#)
    );
}
