//! The admin API (Envoy's, on 127.0.0.1:15000) and the health / metrics ports:
//! 15021 `/healthz/ready`, 15090 `/stats/prometheus`, 15020 merged metrics and health.
//!
//! Admin work runs on its own tasks and reads the same state the data path uses
//! (snapshots, cluster manager, raw xDS resources); nothing here blocks a data-path lock.

pub mod config_dump;
mod views;

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::watch};
use tracing::{debug, info, warn};

use crate::{
    Runtime, drain,
    listener::Manager,
    xds::{NodeInfo, dump::DumpState},
};

/// Applies a log filter directive (`info`, `mesh_proxy::xds=debug`) at runtime.
pub type LogReload = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Everything the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub rt: Runtime,
    pub listeners: Manager,
    pub dump: Arc<DumpState>,
    pub ready: watch::Receiver<bool>,
    pub node: NodeInfo,
    pub xds_address: String,
    pub delta: bool,
    pub started: SystemTime,
    pub command_line: Vec<String>,
    pub log: Option<LogReload>,
    /// The current log filter, shown by `/logging`.
    pub log_level: Arc<parking_lot::Mutex<String>>,
    /// Sent on `/quitquitquit`.
    pub quit: Arc<tokio::sync::Notify>,
    /// Whether a drain (SIGTERM, `/drain_listeners`, `/quitquitquit`) has started.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState").finish_non_exhaustive()
    }
}

/// Which endpoint set a port serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// 15000: the full admin API (bind to localhost only).
    Admin,
    /// 15021: `/healthz/ready`.
    Health,
    /// 15090: `/stats/prometheus`.
    Prometheus,
    /// 15020: merged metrics and agent endpoints (`/stats/prometheus`, `/healthz/ready`).
    Merged,
}

type Body = Full<Bytes>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache, max-age=0")
        .header("x-content-type-options", "nosniff")
        .body(Full::new(body.into()))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    reply(status, "text/plain; charset=UTF-8", body)
}

fn json(v: &serde_json::Value) -> Response<Body> {
    reply(
        StatusCode::OK,
        "application/json",
        serde_json::to_vec_pretty(v).unwrap_or_default(),
    )
}

/// Binds `addr` and serves `port`'s endpoints until `shutdown` fires. Returns the bound
/// address (port 0 resolved) once listening.
pub async fn serve(
    addr: SocketAddr,
    port: Port,
    state: AdminState,
    shutdown: drain::Watch,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    info!(%bound, ?port, "admin listening");
    tokio::spawn(async move {
        let stop = shutdown.signaled();
        tokio::pin!(stop);
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut stop => return,
            };
            let state = state.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(route(port, &state, req).await) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    debug!(error = %e, "admin connection ended");
                }
            });
        }
    });
    Ok(bound)
}

fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn param<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

fn is_ready(state: &AdminState) -> bool {
    *state.ready.borrow() && !state.draining.load(std::sync::atomic::Ordering::Relaxed)
}

async fn route(port: Port, state: &AdminState, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let q = query(&req);
    let method = req.method().clone();
    // Drain the request body (admin requests carry none worth reading).
    let _ = req.into_body().collect().await;
    match (port, path.as_str()) {
        (Port::Health | Port::Merged, "/healthz/ready") => {
            if is_ready(state) {
                text(StatusCode::OK, "")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (Port::Prometheus | Port::Merged, "/stats/prometheus")
        | (Port::Admin, "/stats/prometheus") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.rt.stats.encode_prometheus(),
        ),
        (Port::Admin, _) => admin(state, &method, &path, &q).await,
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

async fn admin(
    state: &AdminState,
    method: &Method,
    path: &str,
    q: &[(String, String)],
) -> Response<Body> {
    let post_only = |f: &dyn Fn() -> Response<Body>| {
        if method == Method::POST {
            f()
        } else {
            text(
                StatusCode::METHOD_NOT_ALLOWED,
                "This endpoint requires POST\n",
            )
        }
    };
    match path {
        "/" => text(StatusCode::OK, views::help()),
        "/ready" => {
            let (code, s) = if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
                (StatusCode::SERVICE_UNAVAILABLE, "DRAINING\n")
            } else if *state.ready.borrow() {
                (StatusCode::OK, "LIVE\n")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "PRE_INITIALIZING\n")
            };
            text(code, s)
        }
        "/config_dump" => {
            let include_eds = q.iter().any(|(k, _)| k == "include_eds");
            let dump = config_dump::build(
                &state.dump,
                &state.node,
                &state.xds_address,
                state.delta,
                include_eds,
                state.started,
            );
            let rendered = config_dump::to_json(&dump)
                .and_then(|v| config_dump::filter(v, param(q, "resource"), param(q, "mask")));
            match rendered {
                Ok(v) => json(&v),
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        "/clusters" => match param(q, "format") {
            Some("json") => match views::clusters_json(state) {
                Ok(v) => json(&v),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            },
            _ => text(StatusCode::OK, views::clusters_text(state)),
        },
        "/listeners" => match param(q, "format") {
            Some("json") => match views::listeners_json(state) {
                Ok(v) => json(&v),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            },
            _ => text(StatusCode::OK, views::listeners_text(state)),
        },
        "/stats" => {
            let filter = match param(q, "filter").map(regex::Regex::new).transpose() {
                Ok(f) => f,
                Err(e) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("invalid filter regex: {e}\n"),
                    );
                }
            };
            let stats = views::stats(
                state,
                filter.as_ref(),
                q.iter().any(|(k, _)| k == "usedonly"),
            );
            match param(q, "format") {
                Some("json") => json(&serde_json::json!({
                    "stats": stats.iter().map(|(n, v)| serde_json::json!({"name": n, "value": v})).collect::<Vec<_>>()
                })),
                Some("prometheus") => reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    state.rt.stats.encode_prometheus(),
                ),
                _ => text(
                    StatusCode::OK,
                    stats
                        .iter()
                        .map(|(n, v)| format!("{n}: {v}\n"))
                        .collect::<String>(),
                ),
            }
        }
        "/server_info" => match views::server_info(state) {
            Ok(v) => json(&v),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        },
        "/logging" => {
            if method != Method::POST && !q.is_empty() {
                return text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "This endpoint requires POST\n",
                );
            }
            if let Some(level) = param(q, "level") {
                return set_log(state, level.to_string());
            }
            // `?mesh_proxy::xds=debug` style: per-module directives.
            if !q.is_empty() {
                let current = state.log_level.lock().clone();
                let mut d = current;
                for (k, v) in q {
                    d.push_str(&format!(",{k}={v}"));
                }
                return set_log(state, d);
            }
            text(
                StatusCode::OK,
                format!("active log filter: {}\n", state.log_level.lock()),
            )
        }
        "/quitquitquit" => post_only(&|| {
            state
                .draining
                .store(true, std::sync::atomic::Ordering::Relaxed);
            state.quit.notify_one();
            text(StatusCode::OK, "OK\n")
        }),
        "/drain_listeners" => post_only(&|| {
            let inbound_only = q.iter().any(|(k, _)| k == "inboundonly");
            drop(state.listeners.drain_listeners(inbound_only));
            if !inbound_only {
                state
                    .draining
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            text(StatusCode::OK, "OK\n")
        }),
        _ => text(
            StatusCode::NOT_FOUND,
            format!("invalid path: {path}\n{}", views::help()),
        ),
    }
}

fn set_log(state: &AdminState, directive: String) -> Response<Body> {
    let Some(reload) = &state.log else {
        return text(
            StatusCode::NOT_IMPLEMENTED,
            "runtime log level changes are not available\n",
        );
    };
    let valid = [
        "trace", "debug", "info", "warn", "warning", "error", "critical", "off",
    ];
    // Envoy's level names map onto tracing's.
    let directive = directive
        .replace("warning", "warn")
        .replace("critical", "error");
    if !directive.contains('=') && !valid.contains(&directive.as_str()) {
        return text(
            StatusCode::BAD_REQUEST,
            format!("unknown log level {directive:?}\n"),
        );
    }
    match reload(&directive) {
        Ok(()) => {
            *state.log_level.lock() = directive.clone();
            text(StatusCode::OK, format!("active log filter: {directive}\n"))
        }
        Err(e) => text(
            StatusCode::BAD_REQUEST,
            format!("invalid log filter: {e}\n"),
        ),
    }
}
