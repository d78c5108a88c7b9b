//! Shared harness for the `http_*` integration tests: real upstream servers (an echo
//! server speaking HTTP/1.1 and h2c), real proxy listeners running `http::serve`, and
//! config written as Envoy JSON (decoded through Envoy's descriptors), so the same
//! config can be given to Envoy in the differential tests.
#![allow(dead_code, clippy::unwrap_used)]

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
use envoy_types::pb::envoy::{
    config::{cluster::v3::Cluster as PbCluster, route::v3::RouteConfiguration as PbRoute},
    extensions::filters::network::http_connection_manager::v3::HttpConnectionManager as PbHcm,
};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use mesh_api::envoy_json::message_from_json;
use mesh_proxy::{
    Runtime,
    config::{cluster::Cluster, http::HttpConnectionManager, route::RouteConfiguration},
    listener::ConnInfo,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// An echo upstream: answers every request with JSON describing it, and header
/// `x-upstream: <name>`. Paths: `/status/<code>`, `/delay/<ms>`, `/bytes/<n>`.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    pub hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn upstream(name: &str) -> Upstream {
    upstream_with(name, None).await
}

/// An echo upstream that answers every request with `status`.
pub async fn failing_upstream(name: &str, status: u16) -> Upstream {
    upstream_with(name, Some(status)).await
}

async fn upstream_with(name: &str, fixed: Option<u16>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let (n, h) = (name.to_string(), hits.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, peer)) = listener.accept().await else {
                return;
            };
            let (n, h) = (n.clone(), h.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (n, h) = (n.clone(), h.clone());
                    async move {
                        let mut resp = echo(req, &n, &h, peer).await;
                        if let Some(code) = fixed {
                            *resp.status_mut() = StatusCode::from_u16(code).unwrap();
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        name: name.to_string(),
        hits,
        task,
    }
}

async fn echo(
    req: Request<Incoming>,
    name: &str,
    hits: &AtomicU64,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    hits.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_string();
    let mut headers = serde_json::Map::new();
    for (k, v) in req.headers() {
        let v = v.to_str().unwrap_or("").to_string();
        match headers.get_mut(k.as_str()) {
            Some(Value::String(s)) => {
                s.push(',');
                s.push_str(&v);
            }
            _ => {
                headers.insert(k.as_str().to_string(), Value::String(v));
            }
        }
    }
    let info = json!({
        "upstream": name,
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "version": format!("{:?}", req.version()),
        "authority": req.uri().authority().map(|a| a.as_str().to_string()),
        "peer": peer.to_string(),
        "headers": headers,
    });
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut status = StatusCode::OK;
    let mut out =
        Bytes::from(serde_json::to_vec(&json!({"request": info, "body_len": body.len()})).unwrap());
    if let Some(code) = path.strip_prefix("/status/") {
        status = StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap();
    }
    if let Some(ms) = path.strip_prefix("/delay/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        out = Bytes::from(vec![b'x'; n.parse().unwrap_or(0)]);
    }
    let mut resp = Response::new(Full::new(out));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("x-upstream", name.parse().unwrap());
    resp.headers_mut().insert("server", "echo".parse().unwrap());
    resp
}

/// An Envoy STATIC cluster over `addrs`, as JSON; `h2`: speak HTTP/2 upstream.
pub fn cluster_json(name: &str, addrs: &[SocketAddr], h2: bool) -> Value {
    let endpoints: Vec<Value> = addrs
        .iter()
        .map(|a| json!({"endpoint": {"address": {"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}}}}))
        .collect();
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
    });
    if h2 {
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        });
    }
    c
}

/// An HCM with an inline route config and the router, as JSON.
pub fn hcm_json(route_config: Value) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "test",
        "route_config": route_config,
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    })
}

pub fn hcm_from_json(v: &Value) -> HttpConnectionManager {
    let mut v = v.clone();
    v.as_object_mut().unwrap().remove("@type");
    let p: PbHcm = message_from_json(&v).unwrap();
    HttpConnectionManager::try_from(&p).unwrap()
}

pub fn route_from_json(v: &Value) -> RouteConfiguration {
    let p: PbRoute = message_from_json(v).unwrap();
    RouteConfiguration::try_from(&p).unwrap()
}

pub fn route_err(v: &Value) -> mesh_proxy::config::ConfigError {
    let p: PbRoute = message_from_json(v).unwrap();
    RouteConfiguration::try_from(&p).unwrap_err()
}

/// A proxy listener on 127.0.0.1 serving `hcm` with the given clusters.
pub struct Proxy {
    pub addr: SocketAddr,
    pub rt: Runtime,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn proxy(hcm: Value, clusters: &[Value]) -> Proxy {
    let rt = Runtime::for_tests();
    for c in clusters {
        let p: PbCluster = message_from_json(c).unwrap();
        rt.clusters.add_or_update(Cluster::try_from(&p).unwrap());
    }
    proxy_with(hcm_from_json(&hcm), rt).await
}

pub async fn proxy_with(hcm: HttpConnectionManager, rt: Runtime) -> Proxy {
    let hcm = Arc::new(hcm);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rt2 = rt.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, peer)) = listener.accept().await else {
                return;
            };
            let local = s.local_addr().unwrap();
            let conn = ConnInfo::new("test", local, peer);
            tokio::spawn(mesh_proxy::http::serve(s, conn, hcm.clone(), rt2.clone()));
        }
    });
    Proxy { addr, rt, task }
}

/// A response as the tests read it.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Got {
    /// The echo upstream's JSON view of the request it received.
    pub fn echo(&self) -> Value {
        serde_json::from_slice::<Value>(&self.body).unwrap_or(Value::Null)["request"].clone()
    }

    pub fn upstream(&self) -> String {
        self.headers
            .get("x-upstream")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
}

/// One HTTP/1.1 request on a fresh connection.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Got {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Got {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// GET `path` with `Host: host` and extra headers.
pub async fn get(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Got {
    let mut b = Request::builder().uri(path).header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(addr, b.body(Full::new(Bytes::new())).unwrap()).await
}

/// Runs curl with `args` (plus `-s`), returning stdout; `None` when curl is missing.
pub fn curl(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("curl")
        .arg("-s")
        .args(args)
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether a test that needs an external tool must fail instead of skipping.
pub fn strict() -> bool {
    std::env::var("MESH_CI_STRICT").is_ok_and(|v| v == "1")
}

/// Skips (returns true) when `tool` is absent, unless strict.
pub fn skip_without(tool: &str) -> bool {
    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(!strict(), "{tool} is required (MESH_CI_STRICT=1)");
        eprintln!("skipping: {tool} not installed");
    }
    !found
}

/// What a scripted upstream does with one request.
#[derive(Debug, Clone)]
pub enum Act {
    /// Answer with this status (body: the request body's length as text).
    Status(u16),
    /// Wait, then answer with this status.
    Delay(Duration, u16),
    /// A trailers-only gRPC answer with this `grpc-status`.
    Grpc(u32),
    /// Drop the connection without answering.
    Close,
}

/// A request a scripted upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: http::Method,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// An upstream whose answers come from `script(n, request)`, `n` counting requests
/// from 0 over every upstream sharing `counter`.
pub struct Scripted {
    pub addr: SocketAddr,
    pub seen: Arc<std::sync::Mutex<Vec<Seen>>>,
    /// Requests being handled now.
    pub in_progress: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    pub fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

pub type Script = Arc<dyn Fn(u64, &Seen) -> Act + Send + Sync>;

pub async fn scripted(counter: Arc<AtomicU64>, script: Script) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<std::sync::Mutex<Vec<Seen>>> = Arc::default();
    let in_progress = Arc::new(AtomicU64::new(0));
    let (seen2, inp2) = (seen.clone(), in_progress.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let (seen, inp, counter, script) =
                (seen2.clone(), inp2.clone(), counter.clone(), script.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (seen, inp, counter, script) =
                        (seen.clone(), inp.clone(), counter.clone(), script.clone());
                    async move {
                        inp.fetch_add(1, Ordering::SeqCst);
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        let s = Seen {
                            method: parts.method.clone(),
                            path: parts
                                .uri
                                .path_and_query()
                                .map_or("/".into(), |p| p.as_str().into()),
                            headers: parts.headers.clone(),
                            body,
                        };
                        let n = counter.fetch_add(1, Ordering::SeqCst);
                        let act = script(n, &s);
                        let len = s.body.len();
                        seen.lock().unwrap().push(s);
                        let status = match act {
                            Act::Status(st) => st,
                            Act::Delay(d, st) => {
                                tokio::time::sleep(d).await;
                                st
                            }
                            Act::Grpc(code) => {
                                inp.fetch_sub(1, Ordering::SeqCst);
                                let mut r = Response::new(Full::new(Bytes::new()));
                                r.headers_mut()
                                    .insert("content-type", "application/grpc".parse().unwrap());
                                r.headers_mut()
                                    .insert("grpc-status", code.to_string().parse().unwrap());
                                return Ok(r);
                            }
                            Act::Close => {
                                inp.fetch_sub(1, Ordering::SeqCst);
                                return Err(std::io::Error::other("scripted close"));
                            }
                        };
                        inp.fetch_sub(1, Ordering::SeqCst);
                        let mut r = Response::new(Full::new(Bytes::from(len.to_string())));
                        *r.status_mut() = StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::io::Error>(r)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Scripted {
        addr,
        seen,
        in_progress,
        task,
    }
}

/// A keep-alive HTTP/1.1 client connection to the proxy.
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Conn {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(conn);
        Conn { sender }
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Got {
        self.sender.ready().await.unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Got {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

/// An HCM JSON with an access log in `path` written with `format`, and `filters`
/// (JSON http filters) before the router.
pub fn hcm_with(route_config: Value, filters: Vec<Value>, log: Option<(&str, &str)>) -> Value {
    let mut f = filters;
    f.push(json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
    let mut h = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "test",
        "route_config": route_config,
        "http_filters": f,
    });
    if let Some((path, format)) = log {
        h["access_log"] = json!([{
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": path,
                "log_format": {"text_format_source": {"inline_string": format}},
            },
        }]);
    }
    h
}

/// Waits until `path` has at least `n` lines (access logs are written off the request
/// path) and returns them.
pub async fn log_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    for _ in 0..200 {
        let lines: Vec<String> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        if lines.len() >= n {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} has fewer than {n} lines", path.display());
}
