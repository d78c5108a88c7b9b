//! Shared helpers for the integration tests: a whole proxy in-process against the test
//! ADS server, tagged TCP echo upstreams, and Envoy-JSON resource builders.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{net::SocketAddr, time::Duration};

use mesh_proxy::{
    app::{Proxy, ProxyOptions},
    testing::{XdsServer, any},
    xds::{NodeInfo, XdsConfig},
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

pub const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const WAIT: Duration = Duration::from_secs(10);

pub fn node() -> NodeInfo {
    NodeInfo {
        id: "sidecar~127.0.0.1~test.default~default.svc.cluster.local".into(),
        cluster: "test.default".into(),
        ..Default::default()
    }
}

pub async fn start_proxy(xds: &XdsServer, sotw: bool) -> Proxy {
    let mut cfg = XdsConfig::new(xds.address(), node());
    cfg.sotw = sotw;
    cfg.initial_backoff = Duration::from_millis(50);
    cfg.max_backoff = Duration::from_millis(500);
    let mut opts = ProxyOptions::for_tests(cfg);
    opts.drain_duration = Duration::from_millis(800);
    Proxy::start(opts).await.expect("proxy starts")
}

/// A TCP upstream that greets with `<tag>\n` and then echoes until EOF, then closes.
pub struct Echo {
    pub addr: SocketAddr,
    pub tag: String,
    task: JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn echo(tag: &str) -> Echo {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let name = tag.to_string();
    let tag = format!("{tag}\n");
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let tag = tag.clone();
            tokio::spawn(async move {
                if s.write_all(tag.as_bytes()).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    Echo {
        addr,
        tag: name,
        task,
    }
}

/// Connects and reads the upstream's greeting line (which upstream we reached).
pub async fn greet(addr: SocketAddr) -> std::io::Result<(TcpStream, String)> {
    let mut c = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .map_err(std::io::Error::other)??;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let n = tokio::time::timeout(WAIT, c.read(&mut b))
            .await
            .map_err(std::io::Error::other)??;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before greeting",
            ));
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
    }
    Ok((c, String::from_utf8_lossy(&line).into_owned()))
}

/// Writes `msg` and reads the echo back.
pub async fn roundtrip(c: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    c.write_all(msg).await?;
    let mut out = vec![0u8; msg.len()];
    tokio::time::timeout(WAIT, c.read_exact(&mut out))
        .await
        .map_err(std::io::Error::other)??;
    Ok(out)
}

pub fn static_cluster(name: &str, addrs: &[SocketAddr]) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": name,
        "type": "STATIC",
        "connectTimeout": "1s",
        "loadAssignment": {"clusterName": name, "endpoints": [{"lbEndpoints": addrs.iter().map(|a| json!(
            {"endpoint": {"address": {"socketAddress": {"address": a.ip().to_string(), "portValue": a.port()}}}})).collect::<Vec<_>>()}]}
    })
}

pub fn eds_cluster(name: &str) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": name,
        "type": "EDS",
        "connectTimeout": "1s",
        "edsClusterConfig": {"edsConfig": {"ads": {}, "resourceApiVersion": "V3"}}
    })
}

pub fn cla(name: &str, addrs: &[SocketAddr]) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        "clusterName": name,
        "endpoints": [{"lbEndpoints": addrs.iter().map(|a| json!(
            {"endpoint": {"address": {"socketAddress": {"address": a.ip().to_string(), "portValue": a.port()}}}})).collect::<Vec<_>>()}]
    })
}

pub fn tcp_proxy_filter(cluster: &str) -> Value {
    json!({"name": "envoy.filters.network.tcp_proxy", "typedConfig": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "statPrefix": cluster, "cluster": cluster}})
}

/// A listener on `127.0.0.1:port` with one tcp_proxy chain to `cluster`.
pub fn tcp_listener(name: &str, port: u16, cluster: &str) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": name,
        "address": {"socketAddress": {"address": "127.0.0.1", "portValue": port}},
        "filterChains": [{"filters": [tcp_proxy_filter(cluster)]}]
    })
}

pub fn set(xds: &XdsServer, type_url: &str, resources: Vec<Value>) {
    xds.set(type_url, resources.into_iter().map(any).collect());
}

/// A free localhost port (bound then released; the tests bind it right after).
/// A port for a listener the proxy will bind later. Drawn below the kernel's ephemeral
/// range (32768-60999 by default): a port from `bind(0)` is free only until the next
/// `bind(0)` or `connect` of another test process takes it, which once handed a proxy's
/// listen port to another test's upstream (CI: `delta_tcp_proxy` greeted by "b").
pub fn free_port() -> u16 {
    loop {
        let port = rand::random_range(10_000..30_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Waits until `f` returns `Some` (polling), or panics after `WAIT` with `what`.
pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Number of open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}
