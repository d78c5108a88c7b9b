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
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use tokio::{net::TcpStream, sync::Notify, time::Instant};

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

/// Settings for new connections and their lifetime (the cluster's
/// `common_http_protocol_options`).
#[derive(Debug, Clone, Default)]
pub struct ConnectSettings {
    pub h2_initial_stream_window: Option<u32>,
    pub h2_initial_connection_window: Option<u32>,
    pub h2_keepalive_interval: Option<Duration>,
    pub max_response_headers_kb: Option<u32>,
    /// Close a connection with no request for this long.
    pub idle_timeout: Option<Duration>,
    /// Close a connection (once its requests are done) after this many requests.
    pub max_requests_per_connection: Option<u32>,
    /// Close a connection (once its requests are done) this long after it opened.
    pub max_connection_duration: Option<Duration>,
}

/// Envoy's default upstream connection idle timeout.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

impl ConnectSettings {
    /// Envoy's rules: idle timeout 1 h by default and 0 disables; 0 requests means
    /// unlimited; a zero duration disables.
    pub fn lifetimes(
        idle: Option<Duration>,
        max_requests: Option<u32>,
        max_duration: Option<Duration>,
    ) -> (Option<Duration>, Option<u32>, Option<Duration>) {
        (
            match idle {
                None => Some(DEFAULT_IDLE_TIMEOUT),
                Some(d) if d.is_zero() => None,
                Some(d) => Some(d),
            },
            max_requests.filter(|n| *n > 0),
            max_duration.filter(|d| !d.is_zero()),
        )
    }
}

enum Got {
    New(Idle),
    Reused(Idle),
}

struct Idle {
    sender: http1::SendRequest<UpstreamBody>,
    local: Option<SocketAddr>,
    /// Requests sent on this connection.
    requests: u32,
    opened: Instant,
    idle_since: Instant,
}

impl Idle {
    fn new(sender: http1::SendRequest<UpstreamBody>, local: Option<SocketAddr>) -> Self {
        let now = Instant::now();
        Idle {
            sender,
            local,
            requests: 0,
            opened: now,
            idle_since: now,
        }
    }

    /// Whether the connection may carry another request.
    fn usable(&self, s: &ConnectSettings, now: Instant) -> bool {
        !self.sender.is_closed()
            && s.max_requests_per_connection
                .is_none_or(|m| self.requests < m)
            && s.max_connection_duration
                .is_none_or(|d| now < self.opened + d)
            && s.idle_timeout.is_none_or(|d| now < self.idle_since + d)
    }
}

#[derive(Clone)]
struct H2Conn {
    sender: http2::SendRequest<UpstreamBody>,
    local: Option<SocketAddr>,
    /// Streams opened on this connection.
    requests: Arc<AtomicU32>,
    activity: Arc<StreamActivity>,
    opened: Instant,
}

/// Streams in flight on an HTTP/2 connection and when the last one ended (the idle
/// timeout counts from then).
#[derive(Debug)]
struct StreamActivity {
    base: Instant,
    active: AtomicU32,
    /// Milliseconds since `base` when the last stream ended.
    last_done_ms: AtomicU64,
}

impl StreamActivity {
    fn idle_for(&self, now: Instant) -> Option<Duration> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = self.base + Duration::from_millis(self.last_done_ms.load(Ordering::Acquire));
        Some(now.saturating_duration_since(last))
    }
}

/// One HTTP/2 stream in flight; ends with the response body.
struct StreamGuard(Arc<StreamActivity>);

impl StreamGuard {
    fn new(a: &Arc<StreamActivity>) -> Self {
        a.active.fetch_add(1, Ordering::AcqRel);
        StreamGuard(a.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let ms = Instant::now()
            .saturating_duration_since(self.0.base)
            .as_millis() as u64;
        self.0.last_done_ms.store(ms, Ordering::Release);
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl H2Conn {
    fn usable(&self, s: &ConnectSettings, now: Instant) -> bool {
        !self.sender.is_closed()
            && s.max_requests_per_connection
                .is_none_or(|m| self.requests.load(Ordering::Relaxed) < m)
            && s.max_connection_duration
                .is_none_or(|d| now < self.opened + d)
    }
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
    /// A task closes idle connections past the idle timeout (started on first need).
    sweeper: AtomicBool,
    /// The settings of the last request (connection lifetimes for the sweeper).
    settings: Mutex<ConnectSettings>,
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
            sweeper: AtomicBool::new(false),
            settings: Mutex::new(ConnectSettings::default()),
        })
    }

    /// Starts the idle sweeper once: it closes idle HTTP/1.1 connections past the idle
    /// timeout (and HTTP/2 ones with no stream), and ends with the pool.
    fn ensure_sweeper(self: &Arc<Self>, settings: &ConnectSettings) {
        let Some(idle) = settings.idle_timeout else {
            return;
        };
        *self.settings.lock() = settings.clone();
        if self.sweeper.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        let period = (idle / 2).clamp(Duration::from_millis(10), Duration::from_secs(60));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(pool) = weak.upgrade() else { return };
                let s = pool.settings.lock().clone();
                let now = Instant::now();
                pool.idle.lock().retain(|c| c.usable(&s, now));
                let mut h2 = pool.h2.lock();
                if h2.as_ref().is_some_and(|c| {
                    c.sender.is_closed()
                        || c.activity
                            .idle_for(now)
                            .is_some_and(|i| s.idle_timeout.is_some_and(|d| i >= d))
                }) {
                    // Dropping the pool's sender closes the connection.
                    *h2 = None;
                }
            }
        });
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
        self.ensure_sweeper(settings);
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

    /// The most recently returned usable idle connection; unusable ones (closed, idle
    /// too long, too old, too many requests) are dropped, which closes them.
    fn pop_idle(&self, settings: &ConnectSettings) -> Option<Idle> {
        let now = Instant::now();
        let mut idle = self.idle.lock();
        while let Some(c) = idle.pop() {
            if c.usable(settings, now) {
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
            let (mut conn, reused) = match self.pop_idle(settings) {
                Some(c) => (c, true),
                // Boxed, as the rest of this rare path: see send_h2.
                None => match Box::pin(self.connect_or_reuse(connector, settings)).await {
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
                        if let Some(c) = self.pop_idle(settings) {
                            (c, true)
                        } else {
                            // A connection closing (not returned) frees its slot a moment
                            // later: look again even without a notification.
                            let wait = tokio::time::timeout(Duration::from_millis(20), notified);
                            let _ = Box::pin(wait).await;
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
                    conn.requests += 1;
                    let ret = ReturnToPool {
                        pool: self.clone(),
                        conn: Some(conn),
                        settings: settings.clone(),
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
                r = &mut connect => return r.map(|(sender, local)| Got::New(Idle::new(sender, local))),
                _ = notified => {
                    if let Some(c) = self.pop_idle(settings) {
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

    /// The pool's HTTP/2 connection, if it may take another stream.
    fn usable_h2(&self, settings: &ConnectSettings) -> Option<H2Conn> {
        let usable = |c: &&H2Conn| c.usable(settings, Instant::now());
        self.h2.lock().as_ref().filter(usable).cloned()
    }

    async fn h2_conn(
        &self,
        connector: &dyn Connector,
        settings: &ConnectSettings,
    ) -> Result<H2Conn, UpstreamError> {
        let usable = |c: &&H2Conn| c.usable(settings, Instant::now());
        let _connecting = self.h2_connecting.lock().await;
        if let Some(c) = self.h2.lock().as_ref().filter(usable) {
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
        let now = Instant::now();
        let c = H2Conn {
            sender,
            local,
            requests: Arc::new(AtomicU32::new(0)),
            activity: Arc::new(StreamActivity {
                base: now,
                active: AtomicU32::new(0),
                last_done_ms: AtomicU64::new(0),
            }),
            opened: now,
        };
        // A replaced connection (too old, too many streams) finishes its streams and
        // closes when its last sender is dropped.
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
            let mut conn = match self.usable_h2(settings) {
                Some(c) => c,
                // Boxed: connecting is rare, and its state would otherwise size every
                // request's future (which every async layer above copies).
                None => Box::pin(self.h2_conn(connector, settings)).await?,
            };
            if conn.sender.ready().await.is_err() {
                self.forget_h2(&conn);
                continue;
            }
            conn.requests.fetch_add(1, Ordering::Relaxed);
            let stream = StreamGuard::new(&conn.activity);
            match conn.sender.try_send_request(req).await {
                Ok(resp) => {
                    return Ok(PoolResponse {
                        response: resp.map(|b| {
                            let mut body = PooledBody::new(b, None);
                            if !body.body.is_end_stream() {
                                body.stream = Some(stream);
                            }
                            body
                        }),
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
    settings: ConnectSettings,
}

impl ReturnToPool {
    fn give_back(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            let now = Instant::now();
            conn.idle_since = now;
            if conn.usable(&self.settings, now) {
                self.pool.idle.lock().push(conn);
            }
            // Either way a waiting request can go on (reuse it, or connect anew once the
            // closed connection's slot is free).
            self.pool.returned.notify_one();
        }
    }
}

/// An upstream response body; returns its HTTP/1.1 connection to the pool at the end.
pub struct PooledBody {
    body: Incoming,
    ret: Option<ReturnToPool>,
    /// HTTP/2: the stream in flight (the connection's idle timeout waits for it).
    stream: Option<StreamGuard>,
}

impl PooledBody {
    fn new(body: Incoming, ret: Option<ReturnToPool>) -> Self {
        let mut b = PooledBody {
            body,
            ret,
            stream: None,
        };
        if b.body.is_end_stream() {
            b.release();
        }
        b
    }

    /// A body whose connection does not go back to a pool (dedicated connections).
    pub fn detached(body: Incoming) -> Self {
        PooledBody {
            body,
            ret: None,
            stream: None,
        }
    }

    fn release(&mut self) {
        if let Some(mut r) = self.ret.take() {
            r.give_back();
        }
        self.stream = None;
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
            Poll::Ready(Some(Err(_))) => {
                this.ret = None;
                this.stream = None;
            }
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
