//! HTTP through a whole proxy fed by xDS: RDS warming (a listener waits for its
//! routes), route updates applied to open keep-alive connections, and a bounded load
//! test (10,000 requests over 64 connections) that must see zero errors and leave no
//! connections or file descriptors behind once the config is removed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use mesh_proxy::testing::XdsServer;
use serde_json::{Value, json};
use support::*;
use tokio::net::TcpListener;

/// An HTTP/1.1 upstream answering `<tag>` with `x-upstream: <tag>`.
async fn http_upstream(
    tag: &'static str,
) -> (SocketAddr, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let h = h.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    h.fetch_add(1, Ordering::Relaxed);
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("x-upstream", tag)
                                .body(Full::new(Bytes::from(tag)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, hits, task)
}

fn hcm_listener(name: &str, port: u16, rds: &str) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": name,
        "address": {"socketAddress": {"address": "127.0.0.1", "portValue": port}},
        "filterChains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "statPrefix": name,
            "rds": {"routeConfigName": rds, "configSource": {"ads": {}, "resourceApiVersion": "V3"}},
            "httpFilters": [{"name": "envoy.filters.http.router", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
        }}]}]
    })
}

fn route(name: &str, cluster: &str) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        "name": name,
        "virtualHosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]
    })
}

type Client = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn client(addr: SocketAddr) -> Client {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn get(c: &mut Client) -> Result<(u16, String), String> {
    c.ready().await.map_err(|e| e.to_string())?;
    let req = Request::get("/x")
        .header("host", "svc")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let up = resp
        .headers()
        .get("x-upstream")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    let _ = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, up))
}

#[tokio::test]
async fn listener_waits_for_routes_and_follows_rds_updates() {
    let xds = XdsServer::start().await;
    let (a, _, _ta) = http_upstream("a").await;
    let (b, _, _tb) = http_upstream("b").await;
    let port = free_port();
    set(
        &xds,
        CDS,
        vec![static_cluster("a", &[a]), static_cluster("b", &[b])],
    );
    set(&xds, LDS, vec![hcm_listener("http", port, "r")]);
    let proxy = start_proxy(&xds, false).await;
    // RDS is subscribed by the name the listener references, and the listener warms.
    xds.wait_for(WAIT, |r| r.type_url == RDS && r.resource_names == ["r"])
        .await
        .expect("RDS subscription");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !*proxy.ready.borrow(),
        "not ready while the listener waits for its routes"
    );
    assert!(
        proxy.listeners.bound_addresses("http").is_none(),
        "warming listener is not bound"
    );
    set(&xds, RDS, vec![route("r", "a")]);
    assert!(proxy.wait_ready(WAIT).await);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut c = client(addr).await;
    assert_eq!(get(&mut c).await.unwrap(), (200, "a".into()));
    // A route update reaches the open keep-alive connection on its next request.
    set(&xds, RDS, vec![route("r", "b")]);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, up) = get(&mut c).await.unwrap();
        assert_eq!(status, 200);
        if up == "b" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the route update never reached the open connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn load_10k_requests_64_connections_no_leaks() {
    let xds = XdsServer::start().await;
    let (up, hits, _t) = http_upstream("a").await;
    let port = free_port();
    let baseline_fds = open_fds();
    set(&xds, CDS, vec![static_cluster("a", &[up])]);
    set(&xds, RDS, vec![route("r", "a")]);
    set(&xds, LDS, vec![hcm_listener("http", port, "r")]);
    let proxy = start_proxy(&xds, false).await;
    assert!(proxy.wait_ready(WAIT).await);
    let with_proxy_fds = open_fds();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    const CONNS: usize = 64;
    const TOTAL: usize = 10_000;
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..CONNS {
        let errors = errors.clone();
        let n = TOTAL / CONNS + usize::from(i < TOTAL % CONNS);
        tasks.push(tokio::spawn(async move {
            let mut c = client(addr).await;
            for _ in 0..n {
                match get(&mut c).await {
                    Ok((200, _)) => {}
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let started = std::time::Instant::now();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("bounded load test")
            .unwrap();
    }
    let elapsed = started.elapsed();
    eprintln!(
        "10000 requests over 64 connections in {elapsed:?} ({:.0} req/s, debug build)",
        TOTAL as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(errors.load(Ordering::Relaxed), 0);
    assert_eq!(hits.load(Ordering::Relaxed), TOTAL as u64);
    // Clients are gone: the listener has no connections left.
    eventually("downstream connections closed", || async {
        proxy.rt.stats.encode_prometheus().contains(&format!("envoy_listener_downstream_cx_active{{envoy_listener_address=\"127.0.0.1_{port}\"}} 0")).then_some(())
    })
    .await;
    // Remove everything: pooled upstream connections close with their cluster.
    set(&xds, LDS, vec![]);
    set(&xds, RDS, vec![]);
    set(&xds, CDS, vec![]);
    eventually("file descriptors back to the idle level", || async {
        let now = open_fds();
        (now <= with_proxy_fds + 2).then_some(now)
    })
    .await;
    proxy.shutdown().await;
    drop(xds);
    eventually("file descriptors back to baseline", || async {
        (open_fds() <= baseline_fds + 4).then_some(())
    })
    .await;
}
