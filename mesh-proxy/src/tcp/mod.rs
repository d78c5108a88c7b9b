//! `tcp_proxy`: connect to a host of the configured cluster and copy bytes both ways.
//!
//! Half-close is honoured in both directions: when one side sends FIN, the other side's
//! write half is shut down and the opposite direction keeps flowing until it ends too.
//! The idle timeout closes connections with no traffic in either direction; bytes are
//! counted per direction and an access log line is written when the connection ends
//! (also when it is cancelled: the record lives in a `Drop`).

use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::tcp::{OwnedReadHalf, OwnedWriteHalf},
};
use tracing::{Instrument, debug, info_span};

use crate::{
    Runtime,
    config::tcp_proxy::TcpProxy,
    http::stream_info::{ResponseFlags, StreamInfo},
    listener::{ConnInfo, Io},
    stats::{TcpLabels, TcpStats},
    upstream::{ConnectError, LbContext},
};

/// Per-direction copy buffer (Envoy moves 16 KiB slices).
const BUF_SIZE: usize = 16 * 1024;

/// Proxies one downstream connection to the cluster chosen by `cfg`.
pub async fn proxy(io: Io, conn: ConnInfo, cfg: Arc<TcpProxy>, rt: Runtime) {
    let span = info_span!("tcp_proxy", id = conn.id, peer = %conn.peer, dst = %conn.destination());
    proxy_inner(io, conn, cfg, rt).instrument(span).await
}

async fn proxy_inner(io: Io, conn: ConnInfo, cfg: Arc<TcpProxy>, rt: Runtime) {
    let stats = rt.stats.tcp.handles(&TcpLabels {
        envoy_tcp_prefix: cfg.stat_prefix.clone(),
    });
    stats.downstream_cx_total.inc();
    let mut record = Record::new(&conn, cfg.clone(), stats);

    let cluster_name = cfg.cluster.pick(rand::random()).clone();
    record.info.upstream_cluster = Some(cluster_name.clone());
    let Some(cluster) = rt.clusters.get(&cluster_name) else {
        debug!(cluster = %cluster_name, "no such cluster");
        record.stats.downstream_cx_no_route.inc();
        record
            .info
            .response_flags
            .insert(ResponseFlags::NO_CLUSTER_FOUND);
        return;
    };
    let ctx = LbContext {
        original_dst: Some(conn.destination()),
        ..Default::default()
    };
    let upstream = match cluster.connect_any(&ctx, cfg.max_connect_attempts).await {
        Ok(u) => u,
        Err(e) => {
            debug!(error = %e, "upstream connect failed");
            record.info.response_flags.insert(match e {
                ConnectError::Overflow { .. } => ResponseFlags::UPSTREAM_OVERFLOW,
                ConnectError::NoHealthyHost { .. } => ResponseFlags::NO_HEALTHY_UPSTREAM,
                ConnectError::Timeout { .. } | ConnectError::Io { .. } => {
                    ResponseFlags::UPSTREAM_CONNECTION_FAILURE
                }
            });
            record.info.upstream_transport_failure_reason = Some(e.to_string());
            return;
        }
    };
    record.info.upstream_host = Some(upstream.host.addr);
    record.info.upstream_local = upstream.stream.local_addr().ok();
    let (prefix, downstream) = io.into_parts();
    let _ = downstream.set_nodelay(true);
    let (d_read, d_write) = downstream.into_split();
    let (u_read, u_write) = upstream.stream.into_split();
    let guard = upstream.guard;

    let counters = Counters::default();
    let outcome = {
        let copy = copy_both(prefix, d_read, d_write, u_read, u_write, &counters);
        let start = tokio::time::Instant::now();
        let limit = cfg.max_downstream_connection_duration.map(|d| start + d);
        let idle = watch_idle(&counters, cfg.idle_timeout, start);
        tokio::select! {
            r = copy => match r {
                Ok(()) => Outcome::Done,
                Err(e) => Outcome::Error(e),
            },
            _ = idle => Outcome::Idle,
            _ = async { tokio::time::sleep_until(limit.unwrap_or(start)).await }, if limit.is_some() => Outcome::MaxDuration,
        }
    };
    drop(guard);
    let (rx, tx) = (
        counters.from_downstream.load(Ordering::Relaxed),
        counters.from_upstream.load(Ordering::Relaxed),
    );
    record.info.bytes_received = rx;
    record.info.bytes_sent = tx;
    let cs = cluster.stats();
    cs.upstream_cx_tx_bytes_total.inc_by(rx);
    cs.upstream_cx_rx_bytes_total.inc_by(tx);
    match outcome {
        Outcome::Done => {}
        Outcome::Idle => {
            record.stats.idle_timeout.inc();
            record
                .info
                .response_flags
                .insert(ResponseFlags::STREAM_IDLE_TIMEOUT);
        }
        Outcome::MaxDuration => {
            record.stats.max_downstream_connection_duration.inc();
            record
                .info
                .response_flags
                .insert(ResponseFlags::DURATION_TIMEOUT);
        }
        Outcome::Error(e) => {
            debug!(error = %e, "connection reset");
            record.info.response_flags.insert(match e.side {
                Side::Downstream => ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION,
                Side::Upstream => ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
            });
        }
    }
}

enum Outcome {
    Done,
    Idle,
    MaxDuration,
    Error(CopyError),
}

#[derive(Debug, Clone, Copy)]
enum Side {
    Downstream,
    Upstream,
}

#[derive(Debug)]
struct CopyError {
    side: Side,
    #[allow(dead_code)]
    source: io::Error,
}

impl std::fmt::Display for CopyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} side: {}", self.side, self.source)
    }
}

/// Byte counts and the last time any byte moved (millis since the proxy started).
#[derive(Default)]
struct Counters {
    from_downstream: AtomicU64,
    from_upstream: AtomicU64,
    last_activity_ms: AtomicU64,
}

fn now_ms(start: tokio::time::Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

async fn watch_idle(c: &Counters, idle: Option<Duration>, start: tokio::time::Instant) {
    let Some(idle) = idle else {
        return std::future::pending().await;
    };
    loop {
        let last = Duration::from_millis(c.last_activity_ms.load(Ordering::Relaxed));
        let deadline = start + last + idle;
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// Copies both directions until both have ended (FIN each way) or one fails.
async fn copy_both(
    prefix: Bytes,
    d_read: OwnedReadHalf,
    d_write: OwnedWriteHalf,
    u_read: OwnedReadHalf,
    mut u_write: OwnedWriteHalf,
    c: &Counters,
) -> Result<(), CopyError> {
    let start = tokio::time::Instant::now();
    if !prefix.is_empty() {
        // Bytes the listener filters read while sniffing go first.
        u_write
            .write_all(&prefix)
            .await
            .map_err(|source| CopyError {
                side: Side::Upstream,
                source,
            })?;
        c.from_downstream
            .fetch_add(prefix.len() as u64, Ordering::Relaxed);
    }
    let up = copy_one(
        d_read,
        u_write,
        &c.from_downstream,
        &c.last_activity_ms,
        start,
        Side::Downstream,
        Side::Upstream,
    );
    let down = copy_one(
        u_read,
        d_write,
        &c.from_upstream,
        &c.last_activity_ms,
        start,
        Side::Upstream,
        Side::Downstream,
    );
    tokio::try_join!(up, down).map(|_| ())
}

/// One direction: read until EOF, then half-close the writer (FIN) so the peer sees
/// the end while the other direction keeps going.
async fn copy_one<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut r: R,
    mut w: W,
    count: &AtomicU64,
    activity: &AtomicU64,
    start: tokio::time::Instant,
    read_side: Side,
    write_side: Side,
) -> Result<(), CopyError> {
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = r.read(&mut buf).await.map_err(|source| CopyError {
            side: read_side,
            source,
        })?;
        if n == 0 {
            // Shutdown of an already-closed peer is not an error worth reporting.
            let _ = w.shutdown().await;
            return Ok(());
        }
        w.write_all(&buf[..n]).await.map_err(|source| CopyError {
            side: write_side,
            source,
        })?;
        count.fetch_add(n as u64, Ordering::Relaxed);
        activity.store(now_ms(start), Ordering::Relaxed);
    }
}

/// The connection's stream info, logged and counted when dropped (even on cancel).
struct Record {
    info: StreamInfo,
    cfg: Arc<TcpProxy>,
    stats: TcpStats,
    start: Instant,
}

impl Record {
    fn new(conn: &ConnInfo, cfg: Arc<TcpProxy>, stats: TcpStats) -> Self {
        let mut info = StreamInfo::new(conn.peer, conn.destination());
        info.start_time = conn.start_time;
        info.requested_server_name = conn.server_name.clone();
        Record {
            info,
            cfg,
            stats,
            start: conn.start,
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        self.info.duration = Some(self.start.elapsed());
        self.stats
            .downstream_cx_rx_bytes_total
            .inc_by(self.info.bytes_received);
        self.stats
            .downstream_cx_tx_bytes_total
            .inc_by(self.info.bytes_sent);
        if self.cfg.access_log.is_empty() {
            return;
        }
        let (method, uri, headers) = tcp_request();
        let ctx = crate::http::format::FormatCtx {
            method,
            uri,
            req_headers: headers,
            resp_headers: None,
            resp_trailers: None,
            info: &self.info,
        };
        for log in &self.cfg.access_log {
            log.log(&ctx);
        }
    }
}

/// The request fields of a TCP access-log line: Envoy prints `"- - -"` for them.
fn tcp_request() -> (
    &'static http::Method,
    &'static http::Uri,
    &'static http::HeaderMap,
) {
    use std::sync::OnceLock;
    static REQ: OnceLock<(http::Method, http::Uri, http::HeaderMap)> = OnceLock::new();
    let r = REQ.get_or_init(|| {
        let method = http::Method::from_bytes(b"-").unwrap_or_default();
        // No scheme, authority or path: %REQ(:AUTHORITY)% prints "-". (The path prints
        // empty; a TCP-aware FormatCtx in the http half would print "-" as Envoy does.)
        let uri = http::Uri::from_parts(http::uri::Parts::default()).unwrap_or_default();
        (method, uri, http::HeaderMap::new())
    });
    (&r.0, &r.1, &r.2)
}

/// Exposed for the listener: the stats handles of a tcp_proxy stat prefix.
pub fn stats(rt: &Runtime, stat_prefix: &str) -> TcpStats {
    rt.stats.tcp.handles(&TcpLabels {
        envoy_tcp_prefix: stat_prefix.to_string(),
    })
}

#[cfg(test)]
mod tests;
