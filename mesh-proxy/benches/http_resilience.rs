//! Issue 6's figures: the latency overhead of the retry/timeout path against a plain
//! route at a fixed 1,000 requests per second, and the memory a buffered (replayable)
//! request body costs.
//!
//! Everything is real sockets on 127.0.0.1: an HTTP/1.1 upstream, `mesh_proxy::http::serve`
//! on its own runtime (2 worker threads), and an open-loop load generator on a third:
//! request `i` is due at `start + i ms` and its latency is counted from that due time,
//! so a stall shows up in the tail instead of slowing the sender down (no coordinated
//! omission). Routes compared (same cluster, same upstream):
//! - `plain`: `timeout: 0s`, no retry policy;
//! - `resilient`: `timeout: 5s` and a retry policy (`5xx,gateway-error,connect-failure,
//!   refused-stream`, 2 retries, per-try and per-try idle timeouts, previous-hosts
//!   predicate), which also makes POST bodies buffered for replay.
//!
//! Memory: a counting global allocator; 100 POSTs of 16 KiB held in flight against an
//! upstream that reads the body then waits, for each route; the difference of live heap
//! per request is what keeping a body for retries costs.
//!
//! Run: `cargo bench -p mesh-proxy --bench http_resilience` (`-- --secs N --rounds R`:
//! R alternating rounds of N seconds per route and request kind; default 6 x 5 s).
#![allow(clippy::unwrap_used, clippy::expect_used)]
// The one unsafe item: a global allocator that counts and forwards to `System` (the
// memory figure); no product code is involved.
#![allow(unsafe_code)]

mod support;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    convert::Infallible,
    net::SocketAddr,
    sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering},
    time::Duration,
};

use bytes::Bytes;
use envoy_types::pb::envoy::{
    config::cluster::v3::Cluster as PbCluster,
    extensions::filters::network::http_connection_manager::v3::HttpConnectionManager as PbHcm,
};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use mesh_api::envoy_json::message_from_json;
use mesh_proxy::config::{cluster::Cluster, http::HttpConnectionManager};
use serde_json::json;
use tokio::{net::TcpListener, time::Instant};

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded to the system allocator with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded to the system allocator with the caller's layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Requests the upstream is holding (the memory phase waits for all of them).
static HELD: AtomicUsize = AtomicUsize::new(0);

async fn upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let hold = req.uri().path().ends_with("/hold");
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    if hold {
                        HELD.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        HELD.fetch_sub(1, Ordering::SeqCst);
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                        body.len().to_string(),
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn proxy_config(upstream: SocketAddr) -> (HttpConnectionManager, Cluster) {
    let previous_hosts = json!([{"name": "envoy.retry_host_predicates.previous_hosts",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}]);
    let hcm = json!({
        "stat_prefix": "bench",
        "route_config": {"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
            {"match": {"prefix": "/plain"}, "route": {"cluster": "u", "timeout": "0s"}},
            {"match": {"prefix": "/resilient"}, "route": {"cluster": "u", "timeout": "5s",
                "retry_policy": {"retry_on": "5xx,gateway-error,connect-failure,refused-stream",
                    "num_retries": 2, "per_try_timeout": "4s", "per_try_idle_timeout": "4s",
                    "host_selection_retry_max_attempts": "5", "retry_host_predicate": previous_hosts}}},
        ]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    });
    let cluster = json!({"name": "u", "type": "STATIC", "connect_timeout": "5s",
        "circuit_breakers": {"thresholds": [{"max_connections": 100000, "max_pending_requests": 100000, "max_requests": 100000, "max_retries": 100000}]},
        "load_assignment": {"cluster_name": "u", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream.port()}}}}]}]}});
    let hcm: PbHcm = message_from_json(&hcm).unwrap();
    let cluster: PbCluster = message_from_json(&cluster).unwrap();
    (
        HttpConnectionManager::try_from(&hcm).unwrap(),
        Cluster::try_from(&cluster).unwrap(),
    )
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Sender {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

fn request(path: &str, body: &Bytes) -> Request<Full<Bytes>> {
    let method = if body.is_empty() { "GET" } else { "POST" };
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "svc")
        .body(Full::new(body.clone()))
        .unwrap()
}

struct Run {
    latencies_us: Vec<u64>,
    errors: usize,
    allocs_per_request: f64,
}

/// Open loop: `rps` requests per second for `secs`, spread over `conns` connections.
async fn run(proxy: SocketAddr, path: &str, body: Bytes, rps: u64, secs: u64, conns: usize) -> Run {
    let total = rps * secs;
    let interval = Duration::from_nanos(1_000_000_000 / rps);
    let start = Instant::now() + Duration::from_millis(50);
    let allocs0 = ALLOCS.load(Ordering::Relaxed);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let path = path.to_string();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(proxy).await;
            let mut lat = Vec::with_capacity((total as usize) / conns + 1);
            let mut errors = 0;
            let mut i = c as u64;
            while i < total {
                let due = start + interval * i as u32;
                tokio::time::sleep_until(due).await;
                let ok = async {
                    sender.ready().await.ok()?;
                    let resp = sender.send_request(request(&path, &body)).await.ok()?;
                    let ok = resp.status().is_success();
                    resp.into_body().collect().await.ok()?;
                    ok.then_some(())
                }
                .await;
                lat.push(due.elapsed().as_micros() as u64);
                if ok.is_none() {
                    errors += 1;
                }
                i += conns as u64;
            }
            (lat, errors)
        }));
    }
    let mut latencies_us = Vec::with_capacity(total as usize);
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        latencies_us.extend(l);
        errors += e;
    }
    latencies_us.sort_unstable();
    Run {
        allocs_per_request: (ALLOCS.load(Ordering::Relaxed) - allocs0) as f64 / total as f64,
        latencies_us,
        errors,
    }
}

fn pct(v: &[u64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i] as f64 / 1000.0
}

/// Live heap per request with `n` POSTs of `size` bytes held at the upstream.
async fn held_memory(proxy: SocketAddr, path: &str, n: usize, size: usize) -> (f64, u64) {
    let body = Bytes::from(vec![b'x'; size]);
    let mut senders = Vec::with_capacity(n);
    for _ in 0..n {
        senders.push(connect(proxy).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = LIVE.load(Ordering::SeqCst);
    let mut tasks = Vec::new();
    for mut s in senders {
        let req = request(path, &body);
        tasks.push(tokio::spawn(async move {
            s.ready().await.unwrap();
            let r = s.send_request(req).await.unwrap();
            let status = r.status();
            let body = r.into_body().collect().await.unwrap().to_bytes();
            assert!(status.is_success(), "{status} {body:?}");
        }));
    }
    let waited = Instant::now();
    while HELD.load(Ordering::SeqCst) < n {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "only {} of {n} requests reached the upstream ({} finished)",
            HELD.load(Ordering::SeqCst),
            tasks.iter().filter(|t| t.is_finished()).count(),
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let during = LIVE.load(Ordering::SeqCst);
    let kept = mesh_proxy::http::request_body::KEPT_BYTES.load(Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    ((during - before) as f64 / n as f64, kept)
}

fn main() {
    let arg = |name: &str, default: u64| -> u64 {
        std::env::args()
            .skip_while(|a| a != name)
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let secs = arg("--secs", 5);
    let rounds = arg("--rounds", 6);
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let proxy = servers.block_on(async {
        let up = upstream().await;
        let (hcm, cluster) = proxy_config(up);
        support::serve_proxy(hcm, cluster).await
    });
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    client.block_on(async {
        if std::env::args().any(|a| a == "--memory-only") {
            memory(proxy).await;
            return;
        }
        // Warm up pools and code paths.
        for path in ["/plain", "/resilient"] {
            run(proxy, path, Bytes::new(), 1000, 1, 16).await;
        }
        let small = Bytes::from(vec![b'b'; 1024]);
        println!(
            "| round | route | request | requests | errors | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | allocs/req |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        // (request, route) -> per round (p50, p99, allocations per request)
        type Rounds = Vec<(f64, f64, f64)>;
        let mut by: std::collections::HashMap<(&str, &str), Rounds> = Default::default();
        // Alternate the routes, round after round, so drift on a shared machine hits
        // both alike; the summary takes the median over rounds.
        for round in 1..=rounds {
            for (label, body) in [("GET", Bytes::new()), ("POST 1 KiB", small.clone())] {
                for path in ["/plain", "/resilient"] {
                    let r = run(proxy, path, body.clone(), 1000, secs, 16).await;
                    let l = &r.latencies_us;
                    println!(
                        "| {round} | {} | {label} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.1} |",
                        &path[1..],
                        l.len(),
                        r.errors,
                        pct(l, 0.5),
                        pct(l, 0.9),
                        pct(l, 0.99),
                        pct(l, 0.999),
                        pct(l, 1.0),
                        r.allocs_per_request,
                    );
                    by.entry((label, path)).or_default().push((
                        pct(l, 0.5),
                        pct(l, 0.99),
                        r.allocs_per_request,
                    ));
                }
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        for label in ["GET", "POST 1 KiB"] {
            let stat = |path: &str, i: usize| {
                let mut v: Vec<f64> = by[&(label, path)]
                    .iter()
                    .map(|t| [t.0, t.1, t.2][i])
                    .collect();
                median(&mut v)
            };
            let (a50, a99, aal) = (stat("/plain", 0), stat("/plain", 1), stat("/plain", 2));
            let (b50, b99, bal) = (
                stat("/resilient", 0),
                stat("/resilient", 1),
                stat("/resilient", 2),
            );
            println!(
                "{label} (median of {rounds} rounds): plain p50 {a50:.3} ms p99 {a99:.3} ms; resilient p50 {b50:.3} ms p99 {b99:.3} ms; ratio p50 {:.3}, p99 {:.3}; allocations per request +{:.1}",
                b50 / a50,
                b99 / a99,
                bal - aal
            );
        }
        memory(proxy).await;
    });
}

async fn memory(proxy: SocketAddr) {
    // Below the default listen backlog (128), so connects are not dropped.
    let n = 100;
    let size = 16 * 1024;
    // A first pass fills the upstream pool, so both measured passes reuse pooled
    // upstream connections and differ only in what the route keeps.
    held_memory(proxy, "/plain/hold", n, size).await;
    held_memory(proxy, "/resilient/hold", n, size).await;
    let (plain, _) = held_memory(proxy, "/plain/hold", n, size).await;
    let (resilient, kept) = held_memory(proxy, "/resilient/hold", n, size).await;
    println!(
        "memory with {n} POSTs of {size} B in flight: plain {plain:.0} B/request, resilient {resilient:.0} B/request; a buffered retry body costs {:.0} B ({:.0} B over the body itself); bytes kept for replay at peak: {kept} ({} per request)",
        resilient - plain,
        resilient - plain - size as f64,
        kept / n as u64,
    );
}
