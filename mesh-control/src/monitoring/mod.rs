//! The monitoring port (15014): `/metrics`, `/ready` and the `/debug/*` endpoints.
//!
//! | path | what |
//! | --- | --- |
//! | `/metrics` | Prometheus text: Istio's `pilot_*` metrics |
//! | `/ready` | 200 once the config is loaded and xDS is serving, else 503 |
//! | `/debug/syncz` | per proxy and type: sent/ACKed version, nonce and time, last NACK; `?format=text` for a table |
//! | `/debug/config_dump?proxyID=<id>` | what the proxy would be sent now, as Envoy's ConfigDump JSON |
//! | `/debug/configz` | the config store: resources and current config errors |
//! | `/debug/connections` | connected proxies: peer, protocol, subscriptions |

pub mod config_dump;
pub mod metrics;
pub mod syncz;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::registry::Registry as PromRegistry;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::xds::{XdsServer, XdsType};

pub use metrics::Metrics;

/// Errors of the monitoring server.
#[derive(Debug, thiserror::Error)]
pub enum MonitoringError {
    #[error("monitoring server: cannot bind {addr}: {source} (hint: --monitoring-addr)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Produces the `/debug/configz` document.
pub type ConfigzFn = dyn Fn() -> serde_json::Value + Send + Sync;

/// What the endpoints read.
pub struct Monitoring {
    registry: PromRegistry,
    xds: Arc<XdsServer>,
    configz: Box<ConfigzFn>,
    ready: AtomicBool,
}

impl std::fmt::Debug for Monitoring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitoring")
            .field("ready", &self.ready)
            .finish_non_exhaustive()
    }
}

impl Monitoring {
    pub fn new(
        registry: PromRegistry,
        xds: Arc<XdsServer>,
        configz: Box<ConfigzFn>,
    ) -> Arc<Monitoring> {
        Arc::new(Monitoring {
            registry,
            xds,
            configz,
            ready: AtomicBool::new(false),
        })
    }

    /// Marks the control plane ready (config loaded, xDS serving).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MonitoringError> {
        TcpListener::bind(addr)
            .await
            .map_err(|source| MonitoringError::Bind { addr, source })
    }

    /// Serves until `shutdown`, then lets in-flight requests finish.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        let graceful = GracefulShutdown::new();
        let builder = auto::Builder::new(TokioExecutor::new());
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(err) => {
                        warn!("monitoring accept: {err}");
                        continue;
                    }
                },
            };
            let this = self.clone();
            let service = service_fn(move |req| {
                let this = this.clone();
                async move { Ok::<_, Infallible>(this.handle(req).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let conn = graceful.watch(conn.into_owned());
            tokio::spawn(async move {
                if let Err(err) = conn.await {
                    debug!(%peer, "monitoring connection: {err}");
                }
            });
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown()).await;
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
        }
        let query: BTreeMap<String, String> = req
            .uri()
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        match req.uri().path() {
            "/metrics" | "/stats/prometheus" => self.metrics(),
            "/ready" | "/healthz/ready" => {
                if self.ready.load(Ordering::Acquire) {
                    text(StatusCode::OK, "ready\n".into())
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: loading config\n".into(),
                    )
                }
            }
            "/debug/syncz" => {
                let entries = syncz::collect(self.xds.registry());
                if query.get("format").map(String::as_str) == Some("text") {
                    text(StatusCode::OK, syncz::render_text(&entries))
                } else {
                    json(StatusCode::OK, &entries)
                }
            }
            "/debug/config_dump" => self.config_dump(&query).await,
            "/debug/configz" => json(StatusCode::OK, &(self.configz)()),
            "/debug/connections" => json(StatusCode::OK, &self.connections()),
            "/" | "/debug" => text(StatusCode::OK, INDEX.into()),
            other => text(
                StatusCode::NOT_FOUND,
                format!("no endpoint {other}\n\n{INDEX}"),
            ),
        }
    }

    fn metrics(&self) -> Response<Full<Bytes>> {
        match metrics::encode_text(&self.registry) {
            Ok(body) => Response::builder()
                .status(StatusCode::OK)
                .header(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )
                .body(Full::new(Bytes::from(body)))
                .unwrap_or_default(),
            Err(err) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("encoding metrics: {err}\n"),
            ),
        }
    }

    async fn config_dump(&self, query: &BTreeMap<String, String>) -> Response<Full<Bytes>> {
        let Some(id) = query.get("proxyID").filter(|s| !s.is_empty()) else {
            return text(
                StatusCode::BAD_REQUEST,
                "config_dump needs ?proxyID=<node id or pod.namespace> (see /debug/syncz)\n".into(),
            );
        };
        let Some(conn) = self.xds.registry().find(id) else {
            return text(
                StatusCode::NOT_FOUND,
                format!("proxy {id:?} is not connected (see /debug/syncz for connected proxies)\n"),
            );
        };
        let resources = self.xds.generate(conn.proxy.clone(), None, false).await;
        match config_dump::config_dump_json(&resources, SystemTime::now()) {
            Ok(body) => json(StatusCode::OK, &body),
            Err(err) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("config_dump for {id}: {err}\n"),
            ),
        }
    }

    fn connections(&self) -> Vec<ConnectionInfo> {
        self.xds
            .registry()
            .all()
            .iter()
            .map(|c| {
                let status = c.status.lock();
                ConnectionInfo {
                    connection: c.name.clone(),
                    proxy: c.proxy.id.clone(),
                    peer: c.peer.map(|p| p.to_string()),
                    protocol: format!("{:?}", c.protocol).to_lowercase(),
                    connected_at: c.connected_at.to_string(),
                    subscriptions: XdsType::PUSH_ORDER
                        .into_iter()
                        .filter(|t| !status.get(*t).subscription.is_empty())
                        .map(|t| (t.column(), status.get(t).subscription.clone()))
                        .collect(),
                    labels: c.proxy.labels.clone(),
                }
            })
            .collect()
    }
}

#[derive(Debug, Serialize)]
struct ConnectionInfo {
    connection: String,
    proxy: String,
    peer: Option<String>,
    protocol: String,
    connected_at: String,
    subscriptions: BTreeMap<&'static str, String>,
    labels: BTreeMap<String, String>,
}

const INDEX: &str = "endpoints:
  /metrics                           Prometheus metrics (pilot_*)
  /ready                             readiness
  /debug/syncz[?format=text]         per-proxy xDS sync state
  /debug/config_dump?proxyID=<id>    what a proxy would be sent, as Envoy ConfigDump JSON
  /debug/configz                     the config store and its errors
  /debug/connections                 connected proxies
";

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            Response::builder()
                .status(status)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap_or_default()
        }
        Err(err) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding json: {err}\n"),
        ),
    }
}
