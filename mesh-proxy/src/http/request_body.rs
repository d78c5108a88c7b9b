//! The downstream request body, read once and shared by the attempts that may replay it
//! (retries) and the copies that follow it (mirrors), as Envoy's router buffers a
//! request for retries and shadows.
//!
//! The body is pulled from the downstream by whichever reader needs the next chunk;
//! chunks (`Bytes`, reference counted, never copied) are kept so a later reader can
//! replay them. Only up to `limit` bytes are kept: past it the buffer *overflows*, after
//! which no new attempt or mirror may start (retries stop, mirrors are abandoned, as in
//! Envoy) and chunks are dropped once the current attempt has read them. A mirror never
//! holds the primary back: it only reads what is there or pulls more itself.
//!
//! [`RequestProgress`] records when the request ended (the route timeout starts then)
//! and when a chunk last arrived (the stream idle timeout).

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use parking_lot::Mutex;
use tokio::{sync::Notify, time::Instant};

/// Envoy's default buffer limit (the listener's `per_connection_buffer_limit_bytes`).
pub const DEFAULT_BUFFER_LIMIT: u64 = 1024 * 1024;

/// When the request ended and when it last made progress.
#[derive(Debug)]
pub struct RequestProgress {
    base: Instant,
    /// Milliseconds since `base` + 1 when the request ended; 0 while it has not.
    done_at: AtomicU64,
    /// Milliseconds since `base` of the last chunk received.
    last_activity: AtomicU64,
    done: Notify,
}

impl RequestProgress {
    pub fn new() -> Arc<Self> {
        Arc::new(RequestProgress {
            base: Instant::now(),
            done_at: AtomicU64::new(0),
            last_activity: AtomicU64::new(0),
            done: Notify::new(),
        })
    }

    fn ms(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.base)
            .as_millis() as u64
    }

    /// The request is complete (idempotent).
    pub fn finish(&self) {
        if self
            .done_at
            .compare_exchange(0, self.ms() + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.done.notify_waiters();
        }
    }

    pub fn touch(&self) {
        self.last_activity.store(self.ms(), Ordering::Relaxed);
    }

    /// When the request ended, if it has.
    pub fn done_at(&self) -> Option<Instant> {
        match self.done_at.load(Ordering::Acquire) {
            0 => None,
            n => Some(self.base + std::time::Duration::from_millis(n - 1)),
        }
    }

    pub fn last_activity(&self) -> Instant {
        self.base + std::time::Duration::from_millis(self.last_activity.load(Ordering::Relaxed))
    }

    /// Waits for the end of the request and returns when it was.
    pub async fn wait_done(&self) -> Instant {
        loop {
            let notified = self.done.notified();
            if let Some(t) = self.done_at() {
                return t;
            }
            notified.await;
        }
    }
}

/// A chunk of the request: data or the trailers.
#[derive(Debug, Clone)]
enum Chunk {
    Data(Bytes),
    Trailers(HeaderMap),
}

struct Inner {
    source: Incoming,
    /// Kept chunks; `chunks[0]` is chunk number `first`.
    chunks: Vec<Chunk>,
    first: usize,
    kept: u64,
    limit: u64,
    overflowed: bool,
    ended: bool,
    failed: bool,
}

/// Wakes every reader waiting for the downstream (hyper keeps one waker per body).
#[derive(Default)]
struct WakeAll(Mutex<Vec<Waker>>);

impl Wake for WakeAll {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        for w in std::mem::take(&mut *self.0.lock()) {
            w.wake();
        }
    }
}

impl WakeAll {
    fn register(&self, w: &Waker) {
        let mut list = self.0.lock();
        if !list.iter().any(|x| x.will_wake(w)) {
            list.push(w.clone());
        }
    }
}

/// The shared request body.
pub struct BufferedBody {
    inner: Mutex<Inner>,
    wake: Arc<WakeAll>,
    waker: Waker,
    progress: Arc<RequestProgress>,
    exact: Option<u64>,
}

/// Bytes of request bodies kept for replay, process wide (for the memory figure).
pub static KEPT_BYTES: AtomicU64 = AtomicU64::new(0);

impl Drop for BufferedBody {
    fn drop(&mut self) {
        KEPT_BYTES.fetch_sub(self.inner.get_mut().kept, Ordering::Relaxed);
    }
}

impl BufferedBody {
    pub fn new(source: Incoming, limit: u64, progress: Arc<RequestProgress>) -> Arc<Self> {
        let exact = source.size_hint().exact();
        let wake = Arc::new(WakeAll::default());
        Arc::new(BufferedBody {
            inner: Mutex::new(Inner {
                source,
                chunks: Vec::new(),
                first: 0,
                kept: 0,
                limit,
                overflowed: false,
                ended: false,
                failed: false,
            }),
            waker: Waker::from(wake.clone()),
            wake,
            progress,
            exact,
        })
    }

    /// A reader from the start. `primary`: the attempt that may go on after an overflow.
    pub fn reader(self: &Arc<Self>, primary: bool) -> BodyReader {
        BodyReader {
            buf: self.clone(),
            pos: 0,
            primary,
        }
    }

    /// Past the limit: no new attempt or mirror may start.
    pub fn overflowed(&self) -> bool {
        self.inner.lock().overflowed
    }

    /// Bytes kept for replay now.
    pub fn kept(&self) -> u64 {
        self.inner.lock().kept
    }

    fn poll_chunk(
        &self,
        pos: &mut usize,
        primary: bool,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Chunk, ReplayError>>> {
        let mut inner = self.inner.lock();
        loop {
            if *pos < inner.first {
                return Poll::Ready(Some(Err(ReplayError::Dropped)));
            }
            let idx = *pos - inner.first;
            if let Some(c) = inner.chunks.get(idx).cloned() {
                *pos += 1;
                if inner.overflowed && primary {
                    // Nobody replays any more: drop what the current attempt has read.
                    let freed: u64 = inner.chunks[..=idx].iter().map(chunk_len).sum();
                    inner.chunks.drain(..=idx);
                    inner.first = *pos;
                    inner.kept -= freed;
                    KEPT_BYTES.fetch_sub(freed, Ordering::Relaxed);
                }
                return Poll::Ready(Some(Ok(c)));
            }
            if inner.ended {
                return Poll::Ready(None);
            }
            if inner.failed {
                return Poll::Ready(Some(Err(ReplayError::Downstream)));
            }
            if inner.overflowed && !primary {
                return Poll::Ready(Some(Err(ReplayError::Dropped)));
            }
            self.wake.register(cx.waker());
            let mut wcx = Context::from_waker(&self.waker);
            match Pin::new(&mut inner.source).poll_frame(&mut wcx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    inner.ended = true;
                    self.progress.finish();
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::debug!(error = %e, "downstream request body failed");
                    inner.failed = true;
                }
                Poll::Ready(Some(Ok(frame))) => {
                    self.progress.touch();
                    let chunk = match frame.into_data() {
                        Ok(d) => Chunk::Data(d),
                        Err(f) => match f.into_trailers() {
                            Ok(t) => Chunk::Trailers(t),
                            Err(_) => continue,
                        },
                    };
                    let len = chunk_len(&chunk);
                    if !inner.overflowed && inner.kept + len > inner.limit {
                        inner.overflowed = true;
                    }
                    inner.kept += len;
                    KEPT_BYTES.fetch_add(len, Ordering::Relaxed);
                    inner.chunks.push(chunk);
                    if inner.source.is_end_stream() {
                        inner.ended = true;
                        self.progress.finish();
                    }
                }
            }
            // Others may be waiting for what was just read.
            self.wake.wake_by_ref();
        }
    }
}

fn chunk_len(c: &Chunk) -> u64 {
    match c {
        Chunk::Data(d) => d.len() as u64,
        Chunk::Trailers(_) => 0,
    }
}

/// Why a reader cannot continue.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("the request body was larger than the buffer limit and is no longer kept")]
    Dropped,
    #[error("the downstream request body failed")]
    Downstream,
}

/// One reader of a [`BufferedBody`] (an attempt or a mirror).
pub struct BodyReader {
    buf: Arc<BufferedBody>,
    pos: usize,
    primary: bool,
}

impl Body for BodyReader {
    type Data = Bytes;
    type Error = ReplayError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ReplayError>>> {
        let this = &mut *self;
        this.buf
            .poll_chunk(&mut this.pos, this.primary, cx)
            .map(|o| {
                o.map(|r| {
                    r.map(|c| match c {
                        Chunk::Data(d) => Frame::data(d),
                        Chunk::Trailers(t) => Frame::trailers(t),
                    })
                })
            })
    }

    fn is_end_stream(&self) -> bool {
        let inner = self.buf.inner.lock();
        inner.ended && self.pos >= inner.first + inner.chunks.len()
    }

    fn size_hint(&self) -> SizeHint {
        match self.buf.exact {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A real hyper `Incoming` body fed by a client connection over a duplex pipe.
    async fn incoming(
        chunks: Vec<&'static [u8]>,
    ) -> (
        Incoming,
        (tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>),
    ) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let srv = tokio::spawn(async move {
            let tx = std::sync::Mutex::new(Some(tx));
            let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                if let Some(tx) = tx.lock().expect("lock").take() {
                    let _ = tx.send(req.into_body());
                }
                async {
                    // Keep the connection (and so the body) alive for the test.
                    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                    Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(server), svc)
                .await;
        });
        let client_task = tokio::spawn(async move {
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(client))
                    .await
                    .expect("handshake");
            tokio::spawn(conn);
            let stream =
                futures::stream::iter(chunks.into_iter().map(|c| {
                    Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(c)))
                }));
            let body = http_body_util::StreamBody::new(stream);
            let _ = sender
                .send_request(
                    http::Request::post("/")
                        .header("host", "x")
                        .body(body)
                        .expect("request"),
                )
                .await;
        });
        let body = rx.await.expect("server got the request");
        (body, (srv, client_task))
    }

    #[tokio::test]
    async fn replays_and_mirrors_see_the_whole_body() {
        let (src, _c) = incoming(vec![b"hello ", b"big ", b"world"]).await;
        let progress = RequestProgress::new();
        let buf = BufferedBody::new(src, 1024, progress.clone());
        let mirror = buf.reader(false);
        let first = buf.reader(true).collect().await.expect("body").to_bytes();
        assert_eq!(&first[..], b"hello big world");
        assert!(progress.done_at().is_some());
        let retry = buf.reader(true).collect().await.expect("body").to_bytes();
        assert_eq!(retry, first, "a retry replays the same bytes");
        let m = mirror.collect().await.expect("body").to_bytes();
        assert_eq!(m, first);
        assert_eq!(buf.kept(), 15);
        assert!(!buf.overflowed());
    }

    #[tokio::test]
    async fn overflow_stops_replays_but_not_the_primary() {
        let (src, _c) = incoming(vec![b"0123456789", b"0123456789", b"0123456789"]).await;
        let buf = BufferedBody::new(src, 15, RequestProgress::new());
        let mirror = buf.reader(false);
        let first = buf
            .reader(true)
            .collect()
            .await
            .expect("primary")
            .to_bytes();
        assert_eq!(first.len(), 30, "the attempt in flight gets everything");
        assert!(buf.overflowed());
        assert_eq!(buf.kept(), 0, "nothing is kept past the limit");
        assert!(
            buf.reader(true).collect().await.is_err(),
            "a replay after an overflow fails"
        );
        assert!(mirror.collect().await.is_err(), "the mirror is abandoned");
    }
}
