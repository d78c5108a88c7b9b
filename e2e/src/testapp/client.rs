//! Client mode: sends N requests (bounded concurrency, optional rate) over HTTP/1.1,
//! HTTP/2 (h2c), gRPC, raw TCP or WebSocket, and reports totals per responding service,
//! version and pod, per status, per error kind, with latency percentiles; on request, the
//! first answers themselves (for assertions on echoed headers and paths).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::grpc;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("header {0:?}: expected NAME:VALUE")]
    Header(String),
    #[error("requests must be at least 1 and concurrency at least 1")]
    Bounds,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http1,
    H2,
    Grpc,
    Tcp,
    Ws,
}

/// What to send.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub url: String,
    pub requests: u64,
    pub concurrency: usize,
    /// Requests per second over all workers; `None` is as fast as possible.
    pub rate: Option<f64>,
    pub headers: Vec<(String, String)>,
    pub method: Method,
    pub body: Option<String>,
    pub protocol: Protocol,
    pub timeout: Duration,
    /// Dial this address instead of the URL's host (like curl --connect-to); the URL's
    /// host still goes into Host/:authority.
    pub connect_to: Option<SocketAddr>,
    /// gRPC controls (sent as x-testapp-query).
    pub grpc_query: Option<String>,
    /// Keep this many answers (in request order) in the report.
    pub keep: usize,
    /// Set this header to `k<i mod count>` on request `i` (spreads requests over `count`
    /// keys, e.g. for consistent-hash routing).
    pub vary_header: Option<(String, u64)>,
    /// Stop sending once this many requests got no answer at all (a broken path would
    /// otherwise cost a timeout per request).
    pub stop_after_errors: Option<u64>,
}

impl ClientConfig {
    pub fn new(url: impl Into<String>, protocol: Protocol) -> Self {
        Self {
            url: url.into(),
            requests: 1,
            concurrency: 1,
            rate: None,
            headers: Vec::new(),
            method: Method::GET,
            body: None,
            protocol,
            timeout: Duration::from_secs(10),
            connect_to: None,
            grpc_query: None,
            keep: 0,
            vary_header: None,
            stop_after_errors: None,
        }
    }
}

/// Parses `Name: value`.
pub fn parse_header(s: &str) -> Result<(String, String), ClientError> {
    let (k, v) = s
        .split_once(':')
        .ok_or_else(|| ClientError::Header(s.to_string()))?;
    let k = k.trim();
    if k.is_empty() || http::HeaderName::from_str(k).is_err() {
        return Err(ClientError::Header(s.to_string()));
    }
    Ok((k.to_string(), v.trim().to_string()))
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// The totals, printed as one JSON document.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub total: u64,
    /// Answers with a 2xx status (HTTP) or OK (gRPC, TCP, WebSocket).
    pub ok: u64,
    pub by_status: BTreeMap<String, u64>,
    pub by_version: BTreeMap<String, u64>,
    pub by_pod: BTreeMap<String, u64>,
    pub by_service: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub latency_ms: Latency,
    pub duration_ms: f64,
    /// Requests not sent because `stop_after_errors` was reached.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub not_sent: u64,
    /// The first `keep` answers in request order: the test app's JSON, or
    /// `{"status": N, "body": TEXT}` for anything else (a proxy's local reply), or
    /// `{"error": KIND}` when there was no answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<Value>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Report {
    /// Answers with this HTTP status (as a string key of `by_status`).
    pub fn status(&self, code: &str) -> u64 {
        self.by_status.get(code).copied().unwrap_or(0)
    }

    pub fn version(&self, v: &str) -> u64 {
        self.by_version.get(v).copied().unwrap_or(0)
    }

    pub fn pod(&self, p: &str) -> u64 {
        self.by_pod.get(p).copied().unwrap_or(0)
    }

    /// Requests that got no answer at all, of any error kind.
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// One request's outcome.
#[derive(Debug, Default)]
struct Sample {
    index: u64,
    status: Option<String>,
    ok: bool,
    answer: Option<Value>,
    /// A body that is not the test app's JSON (kept only when answers are kept).
    other_body: Option<String>,
    error: Option<String>,
    micros: u64,
}

enum Transport {
    Http(Box<Client<ConnectTo, Full<Bytes>>>, Uri),
    Grpc(tonic::transport::Channel),
    Tcp(String),
    Ws(String),
}

/// A connector that dials a fixed address when asked to (for --connect-to).
#[derive(Clone)]
struct ConnectTo {
    inner: HttpConnector,
    target: Option<SocketAddr>,
}

impl tower::Service<Uri> for ConnectTo {
    type Response = <HttpConnector as tower::Service<Uri>>::Response;
    type Error = <HttpConnector as tower::Service<Uri>>::Error;
    type Future = <HttpConnector as tower::Service<Uri>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let uri = match self.target {
            Some(t) => Uri::try_from(format!("http://{t}")).unwrap_or(uri),
            None => uri,
        };
        self.inner.call(uri)
    }
}

async fn transport(cfg: &ClientConfig) -> Result<Transport, ClientError> {
    let url_err = |reason: String| ClientError::Url {
        url: cfg.url.clone(),
        reason,
    };
    match cfg.protocol {
        Protocol::Http1 | Protocol::H2 => {
            let uri: Uri = cfg
                .url
                .parse()
                .map_err(|e: http::uri::InvalidUri| url_err(e.to_string()))?;
            if uri.scheme_str() != Some("http") {
                return Err(url_err(
                    "only http:// URLs (plaintext; the mesh does the TLS)".into(),
                ));
            }
            let mut inner = HttpConnector::new();
            inner.set_nodelay(true);
            let connector = ConnectTo {
                inner,
                target: cfg.connect_to,
            };
            let mut builder = Client::builder(TokioExecutor::new());
            builder.http2_only(cfg.protocol == Protocol::H2);
            Ok(Transport::Http(Box::new(builder.build(connector)), uri))
        }
        Protocol::Grpc => {
            let endpoint = tonic::transport::Endpoint::from_shared(cfg.url.clone())
                .map_err(|e| url_err(e.to_string()))?
                .timeout(cfg.timeout);
            let channel = match cfg.connect_to {
                Some(target) => {
                    let mut inner = HttpConnector::new();
                    inner.set_nodelay(true);
                    endpoint.connect_with_connector_lazy(ConnectTo {
                        inner,
                        target: Some(target),
                    })
                }
                None => endpoint.connect_lazy(),
            };
            Ok(Transport::Grpc(channel))
        }
        Protocol::Tcp => {
            let addr = cfg
                .url
                .strip_prefix("tcp://")
                .ok_or_else(|| url_err("expected tcp://HOST:PORT".into()))?;
            Ok(Transport::Tcp(
                cfg.connect_to
                    .map_or_else(|| addr.to_string(), |a| a.to_string()),
            ))
        }
        Protocol::Ws => {
            if !cfg.url.starts_with("ws://") {
                return Err(url_err("expected ws://HOST:PORT/PATH".into()));
            }
            Ok(Transport::Ws(cfg.url.clone()))
        }
    }
}

/// Sends the requests and adds up the answers.
pub async fn run(cfg: ClientConfig) -> Result<Report, ClientError> {
    if cfg.requests == 0 || cfg.concurrency == 0 {
        return Err(ClientError::Bounds);
    }
    let transport = Arc::new(transport(&cfg).await?);
    let cfg = Arc::new(cfg);
    let next = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers = cfg.concurrency.min(cfg.requests as usize);
    let mut tasks = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (cfg, transport, next) = (cfg.clone(), transport.clone(), next.clone());
        let failures = failures.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                if cfg
                    .stop_after_errors
                    .is_some_and(|max| failures.load(Ordering::Relaxed) >= max)
                {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= cfg.requests {
                    break;
                }
                if let Some(rate) = cfg.rate.filter(|r| *r > 0.0) {
                    tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate))
                        .await;
                }
                let t0 = Instant::now();
                let mut s = match tokio::time::timeout(cfg.timeout, one(&cfg, &transport, i)).await
                {
                    Ok(s) => s,
                    Err(_) => Sample {
                        error: Some("timeout".into()),
                        ..Default::default()
                    },
                };
                s.micros = t0.elapsed().as_micros() as u64;
                s.index = i;
                if s.error.is_some() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                samples.push(s);
            }
            samples
        }));
    }
    let mut report = Report::default();
    let mut lat = Vec::with_capacity(cfg.requests as usize);
    let mut kept: Vec<(u64, Value)> = Vec::new();
    for t in tasks {
        for s in t.await.unwrap_or_default() {
            if s.index < cfg.keep as u64 {
                kept.push((s.index, kept_answer(&s)));
            }
            report.total += 1;
            lat.push(s.micros);
            if s.ok {
                report.ok += 1;
            }
            if let Some(st) = s.status {
                *report.by_status.entry(st).or_default() += 1;
            }
            if let Some(e) = s.error {
                *report.errors.entry(e).or_default() += 1;
            }
            if let Some(a) = &s.answer {
                for (field, map) in [
                    ("version", &mut report.by_version),
                    ("pod", &mut report.by_pod),
                    ("service", &mut report.by_service),
                ] {
                    if let Some(v) = a.get(field).and_then(Value::as_str) {
                        *map.entry(v.to_string()).or_default() += 1;
                    }
                }
            }
        }
    }
    report.not_sent = cfg.requests - report.total;
    kept.sort_by_key(|(i, _)| *i);
    report.answers = kept.into_iter().map(|(_, a)| a).collect();
    report.duration_ms = start.elapsed().as_secs_f64() * 1e3;
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |&us| us as f64 / 1e3)
    };
    report.latency_ms = Latency {
        p50: pct(0.5),
        p90: pct(0.9),
        p99: pct(0.99),
        max: lat.last().map_or(0.0, |&us| us as f64 / 1e3),
    };
    Ok(report)
}

fn kept_answer(s: &Sample) -> Value {
    if let Some(a) = &s.answer {
        return a.clone();
    }
    if let Some(e) = &s.error {
        return json!({"status": s.status, "error": e});
    }
    json!({"status": s.status.as_deref().and_then(|c| c.parse::<u16>().ok()), "body": s.other_body})
}

/// Error kinds, coarse enough to add up: connect, reset, timeout, protocol, other.
fn classify(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    let t = text.to_lowercase();
    // Order matters: "connection reset" also contains "connect".
    if t.contains("connection refused")
        || t.contains("no route to host")
        || t.contains("network is unreachable")
    {
        "connect".into()
    } else if t.contains("reset")
        || t.contains("closed")
        || t.contains("incomplete")
        || t.contains("eof")
        || t.contains("broken pipe")
    {
        "reset".into()
    } else if t.contains("timed out") || t.contains("timeout") {
        "timeout".into()
    } else if t.contains("error trying to connect") || t.contains("connect error") {
        "connect".into()
    } else {
        format!("other: {text}")
    }
}

async fn one(cfg: &ClientConfig, transport: &Transport, i: u64) -> Sample {
    match transport {
        Transport::Http(client, uri) => {
            let mut req = Request::builder()
                .method(cfg.method.clone())
                .uri(uri.clone());
            for (k, v) in &cfg.headers {
                req = req.header(k.as_str(), v.as_str());
            }
            if let Some((name, count)) = &cfg.vary_header {
                req = req.header(name.as_str(), format!("k{}", i % (*count).max(1)));
            }
            let body = Full::new(Bytes::from(cfg.body.clone().unwrap_or_default()));
            let req = match req.body(body) {
                Ok(r) => r,
                Err(e) => {
                    return Sample {
                        error: Some(format!("other: {e}")),
                        ..Default::default()
                    };
                }
            };
            match client.request(req).await {
                Ok(resp) => {
                    let status = resp.status();
                    let body = resp.into_body().collect().await.map(|b| b.to_bytes());
                    match body {
                        Ok(b) => {
                            let answer: Option<Value> = serde_json::from_slice(&b).ok();
                            let other_body = (answer.is_none() && cfg.keep > 0).then(|| {
                                String::from_utf8_lossy(&b[..b.len().min(512)]).into_owned()
                            });
                            Sample {
                                status: Some(status.as_u16().to_string()),
                                ok: status.is_success(),
                                answer,
                                other_body,
                                ..Default::default()
                            }
                        }
                        Err(e) => Sample {
                            status: Some(status.as_u16().to_string()),
                            error: Some(classify(&e)),
                            ..Default::default()
                        },
                    }
                }
                Err(e) => Sample {
                    error: Some(classify(&e)),
                    ..Default::default()
                },
            }
        }
        Transport::Grpc(channel) => {
            match grpc::call(channel.clone(), cfg.grpc_query.as_deref(), "hello".into()).await {
                Ok(r) => Sample {
                    status: Some(format!("{:?}", tonic::Code::Ok)),
                    ok: true,
                    answer: serde_json::from_str(&r.json).ok(),
                    ..Default::default()
                },
                Err(s) => Sample {
                    status: Some(format!("{:?}", s.code())),
                    ..Default::default()
                },
            }
        }
        Transport::Tcp(addr) => match tcp_whoami(addr).await {
            Ok(answer) => Sample {
                status: Some("connected".into()),
                ok: true,
                answer: Some(answer),
                ..Default::default()
            },
            Err(e) => Sample {
                error: Some(classify(&e)),
                ..Default::default()
            },
        },
        Transport::Ws(url) => match ws_whoami(url, cfg.connect_to).await {
            Ok(answer) => Sample {
                status: Some("101".into()),
                ok: true,
                answer: Some(answer),
                ..Default::default()
            },
            Err(e) => Sample {
                error: Some(e),
                ..Default::default()
            },
        },
    }
}

async fn tcp_whoami(addr: &str) -> std::io::Result<Value> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(b"whoami\n").await?;
    let mut line = String::new();
    BufReader::new(&mut stream).read_line(&mut line).await?;
    serde_json::from_str(&line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

async fn ws_whoami(url: &str, connect_to: Option<SocketAddr>) -> Result<Value, String> {
    let uri: Uri = url.parse().map_err(|e| format!("other: {e}"))?;
    let addr = match connect_to {
        Some(a) => a.to_string(),
        None => {
            let host = uri.host().unwrap_or("localhost");
            format!("{host}:{}", uri.port_u16().unwrap_or(80))
        }
    };
    let stream = TcpStream::connect(addr).await.map_err(|e| classify(&e))?;
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .map_err(|e| classify(&e))?;
    ws.send(Message::text("whoami"))
        .await
        .map_err(|e| classify(&e))?;
    let answer = loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => break t.to_string(),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(classify(&e)),
            None => return Err("reset".into()),
        }
    };
    let _ = ws.close(None).await;
    serde_json::from_str(&answer).map_err(|e| format!("other: {e}"))
}
