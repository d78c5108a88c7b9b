//! The HTTP/1.1 + h2c + gRPC + WebSocket server and the TCP echo ports.
//!
//! Answer (one JSON line): `service`, `version`, `pod`, `namespace`, `ip`, `protocol`,
//! `method`, `path`, `query`, `authority`, `headers`, `peer`, `status`, `body_bytes`, and
//! when asked, `key`/`count` (fail_first bookkeeping) and `upstream` (the `call=` result).
//! `GET /stats?key=K` answers `{"key":K,"count":N,...}` without counting itself.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::controls::Controls;
use super::{Identity, TRACE_HEADERS, grpc, tcp, ws};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Returned by the handler to make hyper drop the request without an answer: the
/// connection is closed (HTTP/1.1) or the stream reset (HTTP/2).
#[derive(Debug, thiserror::Error)]
#[error("reset requested by the reset=1 control")]
pub struct Reset;

/// Shared state of one testapp process.
pub struct App {
    identity: Arc<Identity>,
    /// Requests seen per `key`, for `fail_first` and `/stats`. A std mutex: held for one
    /// map update, never across an await.
    counts: Mutex<HashMap<String, u64>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A running server; dropping it stops every listener.
pub struct Server {
    pub http: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Binds every port (0 picks a free one) and starts serving.
pub async fn start(
    identity: Identity,
    bind: IpAddr,
    http_ports: &[u16],
    tcp_ports: &[u16],
) -> std::io::Result<Server> {
    let identity = Arc::new(identity);
    let app = Arc::new(App {
        identity: identity.clone(),
        counts: Mutex::new(HashMap::new()),
        client: Client::builder(TokioExecutor::new()).build_http(),
    });
    let mut server = Server {
        http: Vec::new(),
        tcp: Vec::new(),
        tasks: Vec::new(),
    };
    for &port in http_ports {
        let listener = TcpListener::bind((bind, port)).await?;
        server.http.push(listener.local_addr()?);
        server
            .tasks
            .push(tokio::spawn(serve_http(listener, app.clone())));
    }
    for &port in tcp_ports {
        let listener = TcpListener::bind((bind, port)).await?;
        server.tcp.push(listener.local_addr()?);
        server
            .tasks
            .push(tokio::spawn(tcp::serve(listener, identity.clone())));
    }
    Ok(server)
}

async fn serve_http(listener: TcpListener, app: Arc<App>) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(app.clone(), peer, req));
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn full(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn json_line(v: &Value) -> String {
    let mut s = v.to_string();
    s.push('\n');
    s
}

fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in headers {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        out.entry(k.as_str().to_string())
            .and_modify(|e| {
                e.push(',');
                e.push_str(&v);
            })
            .or_insert(v);
    }
    out
}

async fn handle(
    app: Arc<App>,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Reset> {
    let path = req.uri().path().to_string();
    let is_grpc = grpc::is_grpc(req.headers());
    let query = if is_grpc {
        req.headers()
            .get(grpc::CONTROLS_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    } else {
        req.uri().query().unwrap_or_default().to_string()
    };
    let id = &app.identity;

    if !is_grpc && path == "/stats" {
        let key = Controls::parse(&query).ok().and_then(|c| c.key);
        let count = key.as_ref().map_or(0, |k| {
            app.counts
                .lock()
                .map(|m| m.get(k).copied().unwrap_or(0))
                .unwrap_or(0)
        });
        let body = json!({"key": key, "count": count, "pod": id.pod, "version": id.version, "service": id.service});
        return Ok(full(StatusCode::OK, json_line(&body)));
    }
    // `/healthz` and `/healthz/ready` (the proxy's readiness path, so the test app can
    // stand in for a proxy in harness tests).
    if !is_grpc && (path == "/healthz" || path == "/healthz/ready") {
        return Ok(full(StatusCode::OK, "{\"ok\":true}\n".into()));
    }
    if !is_grpc && path == "/ws" && ws::is_upgrade(req.headers()) {
        let Some(accept) = ws::accept_key(req.headers()) else {
            return Ok(full(
                StatusCode::BAD_REQUEST,
                "{\"error\":\"missing sec-websocket-key\"}\n".into(),
            ));
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(ws::echo(on_upgrade, app.identity.clone()));
        let mut resp = Response::new(Empty::new().map_err(|e| match e {}).boxed_unsync());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(
            header::UPGRADE,
            header::HeaderValue::from_static("websocket"),
        );
        h.insert(
            header::CONNECTION,
            header::HeaderValue::from_static("upgrade"),
        );
        if let Ok(v) = accept.parse() {
            h.insert("sec-websocket-accept", v);
        }
        return Ok(resp);
    }

    let controls = match Controls::parse(&query) {
        Ok(c) => c.for_pod(&id.pod),
        Err(e) if is_grpc => {
            return Ok(grpc_status(tonic::Status::invalid_argument(e.to_string())));
        }
        Err(e) => {
            return Ok(full(
                StatusCode::BAD_REQUEST,
                json_line(&json!({"error": e.to_string()})),
            ));
        }
    };
    let count = controls.key.as_ref().map(|k| {
        let mut m = app.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(k.clone()).or_insert(0);
        *n += 1;
        *n
    });
    if let Some(d) = controls.delay {
        tokio::time::sleep(d).await;
    }
    if controls.reset {
        return Err(Reset);
    }
    let status = match (controls.fail_first, count) {
        (Some(n), Some(c)) if c <= n => controls.status.unwrap_or(503),
        (Some(_), _) => 200,
        _ => controls.status.unwrap_or(200),
    };
    let upstream = match &controls.call {
        Some(url) => Some(call_downstream(&app, url, req.headers()).await),
        None => None,
    };
    let protocol = match req.version() {
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    let authority = req
        .uri()
        .authority()
        .map(ToString::to_string)
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(String::from)
        })
        .unwrap_or_default();
    let mut info = json!({
        "service": id.service, "version": id.version, "pod": id.pod,
        "namespace": id.namespace, "ip": id.ip,
        "protocol": if is_grpc { "gRPC" } else { protocol },
        "method": req.method().as_str(), "path": path, "query": query,
        "authority": authority, "peer": peer.to_string(),
        "headers": header_map(req.headers()), "status": status,
    });
    if let (Some(k), Some(c)) = (&controls.key, count) {
        info["key"] = json!(k);
        info["count"] = json!(c);
    }
    if let Some(u) = upstream {
        info["upstream"] = u;
    }

    if is_grpc {
        if status != 200 {
            return Ok(grpc_status(grpc::status_for_http(
                status,
                format!("testapp {} answered status={status}", id.pod),
            )));
        }
        let mut service = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
        let resp = service.unary(grpc::Answer(info.to_string()), req).await;
        return Ok(resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()));
    }

    let body_bytes = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(_) => return Err(Reset),
    };
    info["body_bytes"] = json!(body_bytes);
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = full(code, json_line(&info));
    for (k, v) in [
        ("x-testapp-pod", &id.pod),
        ("x-testapp-version", &id.version),
    ] {
        if let Ok(v) = v.parse() {
            resp.headers_mut().insert(k, v);
        }
    }
    Ok(resp)
}

fn grpc_status(status: tonic::Status) -> Response<Body> {
    status
        .into_http::<Empty<Bytes>>()
        .map(|b| b.map_err(|e: Infallible| match e {}).boxed_unsync())
}

/// `call=URL`: one downstream HTTP/1.1 GET carrying this request's trace headers.
async fn call_downstream(app: &App, url: &str, inbound: &HeaderMap) -> Value {
    let mut req = match Request::get(url).body(Full::new(Bytes::new())) {
        Ok(r) => r,
        Err(e) => return json!({"error": format!("call={url}: {e}")}),
    };
    for name in TRACE_HEADERS {
        for v in inbound.get_all(*name) {
            req.headers_mut().append(*name, v.clone());
        }
    }
    let res = tokio::time::timeout(Duration::from_secs(10), async {
        let resp = app.client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let body = serde_json::from_slice::<Value>(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        Ok::<_, String>(json!({"status": status, "body": body}))
    })
    .await;
    match res {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => json!({"error": e}),
        Err(_) => json!({"error": "timed out after 10s"}),
    }
}
