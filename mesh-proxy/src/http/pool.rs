//! Upstream HTTP connection pools, one per upstream host: a stack of idle HTTP/1.1
//! keep-alive connections, or one multiplexed HTTP/2 connection. Built on hyper's
//! client connection API (not the legacy pooled client) so that circuit breakers,
//! connect timeouts and stats are ours.
//!
//! A request checks out an idle HTTP/1.1 connection (or opens one, within the cluster's
//! `max_connections`); the connection returns to the stack when the response body has
//! been read to the end. When the limit is reached the request waits as a pending
//! request (within `max_pending_requests`) for a connection to come back. A request that
//! fails on a reused connection before it was written (the server had closed it) is
//! replayed once on a fresh connection, as the request was never sent.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::{net::TcpStream, sync::Notify};

use super::body::UpstreamBody;

/// The HTTP protocol spoken to an upstream host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http1,
    Http2,
}

/// Why an upstream request failed, classified as Envoy's response flags need.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connection failure: {0}")]
    Connect(std::io::Error),
    #[error("connection timeout")]
    ConnectTimeout,
    /// `max_connections` reached (HTTP/2: no connection can be opened).
    #[error("overflow")]
    Overflow,
    /// `max_pending_requests` reached while waiting for a connection.
    #[error("pending overflow")]
    PendingOverflow,
    /// The connection or stream was reset before response headers arrived.
    #[error("{0}")]
    Reset(hyper::Error),
    #[error("protocol error: {0}")]
    Protocol(hyper::Error),
}

impl UpstreamError {
    /// True when nothing reached the upstream (safe to retry on another host).
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect(_) | UpstreamError::ConnectTimeout
        )
    }

    /// An HTTP/2 `REFUSED_STREAM` reset (the request was not processed).
    pub fn is_refused_stream(&self) -> bool {
        match self {
            UpstreamError::Reset(err) => std::error::Error::source(err)
                .and_then(|s| s.downcast_ref::<h2::Error>())
                .is_some_and(|h| h.reason() == Some(h2::Reason::REFUSED_STREAM)),
            _ => false,
        }
    }

    /// Envoy's reset reason text (with the transport failure reason for connects).
    pub fn reason(&self) -> String {
        match self {
            UpstreamError::Connect(e) => format!(
                "remote connection failure, transport failure reason: delayed connect error: {}",
                os_message(e)
            ),
            UpstreamError::ConnectTimeout => "connection timeout".to_string(),
            UpstreamError::Overflow | UpstreamError::PendingOverflow => "overflow".to_string(),
            UpstreamError::Reset(_) if self.is_refused_stream() => {
                "remote refused stream reset".to_string()
            }
            UpstreamError::Reset(err) => {
                let h2_reset = std::error::Error::source(err)
                    .and_then(|s| s.downcast_ref::<h2::Error>())
                    .is_some_and(|h| h.is_reset());
                if h2_reset {
                    "remote reset".to_string()
                } else {
                    "connection termination".to_string()
                }
            }
            UpstreamError::Protocol(_) => "protocol error".to_string(),
        }
    }
}

/// An opaque resource guard (circuit-breaker slot, host counters); released on drop.
pub type Guard = Box<dyn Send + Sync>;

/// A connection attempt: the stream and the guard that holds its circuit-breaker slot.
pub type ConnectFuture<'a> =
    Pin<Box<dyn Future<Output = Result<(TcpStream, Guard), UpstreamError>> + Send + 'a>>;

/// Opens upstream TCP connections for a pool (the cluster's `connect`, which applies the
/// connect timeout, `max_connections` and the connection stats) and hands out pending
/// request slots (`max_pending_requests`).
pub trait Connector: Send + Sync {
    fn connect(&self) -> ConnectFuture<'_>;
    fn acquire_pending(&self) -> Option<Guard>;
}

/// Plain TCP connects without limits (tests, benches).
pub struct Direct {
    pub addr: SocketAddr,
    pub connect_timeout: Duration,
}

impl Connector for Direct {
    fn connect(&self) -> ConnectFuture<'_> {
        Box::pin(async move {
            let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr))
                .await
                .map_err(|_| UpstreamError::ConnectTimeout)?
                .map_err(UpstreamError::Connect)?;
            let _ = stream.set_nodelay(true);
            Ok((stream, Box::new(()) as Guard))
        })
    }

    fn acquire_pending(&self) -> Option<Guard> {
        Some(Box::new(()))
    }
}

/// Settings for new connections.
#[derive(Debug, Clone, Default)]
pub struct ConnectSettings {
    pub h2_initial_stream_window: Option<u32>,
    pub h2_initial_connection_window: Option<u32>,
    pub h2_keepalive_interval: Option<Duration>,
    pub max_response_headers_kb: Option<u32>,
}

enum Got {
    New(Idle),
    Reused(Idle),
}

struct Idle {
    sender: http1::SendRequest<UpstreamBody>,
    local: Option<SocketAddr>,
}

#[derive(Clone)]
struct H2Conn {
    sender: http2::SendRequest<UpstreamBody>,
    local: Option<SocketAddr>,
}

/// Connection pool for one upstream host and protocol.
pub struct HostPool {
    addr: SocketAddr,
    protocol: Protocol,
    idle: Mutex<Vec<Idle>>,
    returned: Notify,
    h2: Mutex<Option<H2Conn>>,
    /// Serializes HTTP/2 connection setup so a burst opens one connection, not many.
    h2_connecting: tokio::sync::Mutex<()>,
}

/// A response from the pool plus where it came from.
pub struct PoolResponse {
    pub response: Response<PooledBody>,
    pub upstream_local: Option<SocketAddr>,
}

impl HostPool {
    pub fn new(addr: SocketAddr, protocol: Protocol) -> Arc<Self> {
        Arc::new(HostPool {
            addr,
            protocol,
            idle: Mutex::new(Vec::new()),
            returned: Notify::new(),
            h2: Mutex::new(None),
            h2_connecting: tokio::sync::Mutex::new(()),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Idle HTTP/1.1 connections (for tests and `/clusters`).
    pub fn idle_count(&self) -> usize {
        self.idle.lock().len()
    }

    /// Sends one request. The URI must be in the form the protocol needs (origin-form
    /// for HTTP/1.1, absolute for HTTP/2).
    pub async fn send(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
        connector: &dyn Connector,
        settings: &ConnectSettings,
    ) -> Result<PoolResponse, UpstreamError> {
        match self.protocol {
            Protocol::Http1 => self.send_h1(req, connector, settings).await,
            Protocol::Http2 => self.send_h2(req, connector, settings).await,
        }
    }

    /// Opens a dedicated HTTP/1.1 connection (upgrades: the connection leaves the pool).
    pub async fn send_dedicated_h1(
        &self,
        req: Request<UpstreamBody>,
        connector: &dyn Connector,
        settings: &ConnectSettings,
    ) -> Result<(Response<Incoming>, Option<SocketAddr>), UpstreamError> {
        let (mut sender, local) = self.connect_h1(connector, settings).await?;
        let resp = sender.send_request(req).await.map_err(classify)?;
        Ok((resp, local))
    }

    fn pop_idle(&self) -> Option<Idle> {
        let mut idle = self.idle.lock();
        while let Some(c) = idle.pop() {
            if !c.sender.is_closed() {
                return Some(c);
            }
        }
        None
    }

    async fn send_h1(
        self: &Arc<Self>,
        mut req: Request<UpstreamBody>,
        connector: &dyn Connector,
        settings: &ConnectSettings,
    ) -> Result<PoolResponse, UpstreamError> {
        let mut pending: Option<Guard> = None;
        loop {
            let (mut conn, reused) = match self.pop_idle() {
                Some(c) => (c, true),
                None => match self.connect_or_reuse(connector, settings).await {
                    Ok(Got::Reused(c)) => (c, true),
                    Ok(Got::New(c)) => (c, false),
                    Err(UpstreamError::Overflow) => {
                        // At max_connections: wait as a pending request for one to return.
                        if pending.is_none() {
                            pending = Some(
                                connector
                                    .acquire_pending()
                                    .ok_or(UpstreamError::PendingOverflow)?,
                            );
                        }
                        let notified = self.returned.notified();
                        if let Some(c) = self.pop_idle() {
                            (c, true)
                        } else {
                            notified.await;
                            continue;
                        }
                    }
                    Err(e) => return Err(e),
                },
            };
            if conn.sender.ready().await.is_err() {
                continue;
            }
            match conn.sender.try_send_request(req).await {
                Ok(resp) => {
                    let local = conn.local;
                    let ret = ReturnToPool {
                        pool: self.clone(),
                        conn: Some(conn),
                    };
                    return Ok(PoolResponse {
                        response: resp.map(|b| PooledBody::new(b, Some(ret))),
                        upstream_local: local,
                    });
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the server closed the idle connection. Replay.
                    Some(r) if reused => {
                        req = r;
                        continue;
                    }
                    _ => return Err(classify(e.into_error())),
                },
            }
        }
    }

    /// Connects, unless a connection comes back to the pool first (then the connect is
    /// abandoned): a burst does not wait on its own connects when earlier requests
    /// finish sooner, as Envoy's pending-request queue behaves.
    async fn connect_or_reuse(
        &self,
        connector: &dyn Connector,
        settings: &ConnectSettings,
    ) -> Result<Got, UpstreamError> {
        let connect = self.connect_h1(connector, settings);
        tokio::pin!(connect);
        loop {
            let notified = self.returned.notified();
            tokio::select! {
                biased;
                r = &mut connect => return r.map(|(sender, local)| Got::New(Idle { sender, local })),
                _ = notified => {
                    if let Some(c) = self.pop_idle() {
                        return Ok(Got::Reused(c));
                    }
                }
            }
        }
    }

    async fn connect_h1(
        &self,
        connector: &dyn Connector,
        settings: &ConnectSettings,
    ) -> Result<(http1::SendRequest<UpstreamBody>, Option<SocketAddr>), UpstreamError> {
        let (stream, guard) = connector.connect().await?;
        let local = stream.local_addr().ok();
        let mut b = http1::Builder::new();
        if let Some(kb) = settings.max_response_headers_kb {
            b.max_buf_size((kb as usize * 1024).max(8192));
        }
        let (sender, conn) = b
            .handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Protocol)?;
        tokio::spawn(async move {
            // The circuit-breaker slot is held for the connection's lifetime.
            let _guard = guard;
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream http/1.1 connection closed with error");
            }
        });
        Ok((sender, local))
    }

    async fn h2_conn(
        &self,
        connector: &dyn Connector,
        settings: &ConnectSettings,
    ) -> Result<H2Conn, UpstreamError> {
        if let Some(c) = self.h2.lock().as_ref().filter(|c| !c.sender.is_closed()) {
            return Ok(c.clone());
        }
        let _connecting = self.h2_connecting.lock().await;
        if let Some(c) = self.h2.lock().as_ref().filter(|c| !c.sender.is_closed()) {
            return Ok(c.clone());
        }
        let (stream, guard) = connector.connect().await?;
        let local = stream.local_addr().ok();
        let mut b = http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .initial_stream_window_size(settings.h2_initial_stream_window)
            .initial_connection_window_size(settings.h2_initial_connection_window)
            .keep_alive_interval(settings.h2_keepalive_interval);
        let (sender, conn) = b
            .handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Protocol)?;
        tokio::spawn(async move {
            let _guard = guard;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream http/2 connection closed with error");
            }
        });
        let c = H2Conn { sender, local };
        *self.h2.lock() = Some(c.clone());
        Ok(c)
    }

    async fn send_h2(
        self: &Arc<Self>,
        mut req: Request<UpstreamBody>,
        connector: &dyn Connector,
        settings: &ConnectSettings,
    ) -> Result<PoolResponse, UpstreamError> {
        for attempt in 0..2 {
            let mut conn = self.h2_conn(connector, settings).await?;
            if conn.sender.ready().await.is_err() {
                self.forget_h2(&conn);
                continue;
            }
            match conn.sender.try_send_request(req).await {
                Ok(resp) => {
                    return Ok(PoolResponse {
                        response: resp.map(|b| PooledBody::new(b, None)),
                        upstream_local: conn.local,
                    });
                }
                Err(mut e) => match e.take_message() {
                    Some(r) if attempt == 0 => {
                        self.forget_h2(&conn);
                        req = r;
                    }
                    _ => return Err(classify(e.into_error())),
                },
            }
        }
        Err(UpstreamError::Connect(std::io::Error::other(
            "http/2 connection closed before the request was sent",
        )))
    }

    fn forget_h2(&self, conn: &H2Conn) {
        let mut h2 = self.h2.lock();
        if h2
            .as_ref()
            .is_some_and(|c| c.sender.is_closed() || c.local == conn.local)
        {
            *h2 = None;
        }
    }
}

/// The OS's text for an I/O error, without Rust's ` (os error N)` suffix (Envoy prints
/// `strerror`).
fn os_message(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn classify(e: hyper::Error) -> UpstreamError {
    if e.is_parse() || e.is_user() {
        UpstreamError::Protocol(e)
    } else {
        UpstreamError::Reset(e)
    }
}

struct ReturnToPool {
    pool: Arc<HostPool>,
    conn: Option<Idle>,
}

impl ReturnToPool {
    fn give_back(&mut self) {
        if let Some(conn) = self.conn.take()
            && !conn.sender.is_closed()
        {
            self.pool.idle.lock().push(conn);
            self.pool.returned.notify_one();
        }
    }
}

/// An upstream response body; returns its HTTP/1.1 connection to the pool at the end.
pub struct PooledBody {
    body: Incoming,
    ret: Option<ReturnToPool>,
}

impl PooledBody {
    fn new(body: Incoming, ret: Option<ReturnToPool>) -> Self {
        let mut b = PooledBody { body, ret };
        if b.body.is_end_stream() {
            b.release();
        }
        b
    }

    /// A body whose connection does not go back to a pool (dedicated connections).
    pub fn detached(body: Incoming) -> Self {
        PooledBody { body, ret: None }
    }

    fn release(&mut self) {
        if let Some(mut r) = self.ret.take() {
            r.give_back();
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.body).poll_frame(cx);
        match &r {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.ret = None,
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
