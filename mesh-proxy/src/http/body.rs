//! Body types of the proxy, as enums rather than boxed trait objects so that a proxied
//! request costs no extra allocation for its bodies.
//!
//! - [`UpstreamBody`]: what we send upstream (the downstream body, or bytes for retries
//!   and mirrors).
//! - [`ResponseBody`]: what we send downstream (the upstream body, or a local reply),
//!   with the stream idle timeout / route deadline and a completion hook that records
//!   bytes sent and writes the access log when the stream ends.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::request_body::{BodyReader, RequestProgress};

/// Errors surfaced on a proxied body.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error("stream idle timeout")]
    IdleTimeout,
    #[error("upstream request timeout")]
    RouteTimeout,
    #[error("stream duration timeout")]
    DurationTimeout,
}

/// Errors of a body sent upstream (hyper's, or a replay that cannot continue).
pub type UpstreamBodyError = Box<dyn std::error::Error + Send + Sync>;

pin_project_lite::pin_project! {
    /// A request body sent upstream.
    #[project = UpstreamBodyProj]
    pub enum UpstreamBody {
        /// The downstream body itself (no retry or mirror can need it again); reports
        /// progress for the stream timers.
        Incoming { #[pin] body: Incoming, progress: Option<Arc<RequestProgress>> },
        /// A reader of the shared, replayable body.
        Replay { #[pin] body: BodyReader },
        Bytes { data: Option<Bytes> },
    }
}

impl UpstreamBody {
    pub fn empty() -> Self {
        UpstreamBody::Bytes { data: None }
    }

    pub fn bytes(b: Bytes) -> Self {
        UpstreamBody::Bytes {
            data: (!b.is_empty()).then_some(b),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        match self.project() {
            UpstreamBodyProj::Incoming { mut body, progress } => {
                let r = body.as_mut().poll_frame(cx);
                if let Some(p) = progress {
                    match &r {
                        Poll::Ready(None) => p.finish(),
                        Poll::Ready(Some(Ok(_))) => {
                            p.touch();
                            if body.is_end_stream() {
                                p.finish();
                            }
                        }
                        _ => {}
                    }
                }
                r.map(|o| o.map(|r| r.map_err(Into::into)))
            }
            UpstreamBodyProj::Replay { body } => body
                .poll_frame(cx)
                .map(|o| o.map(|r| r.map_err(Into::into))),
            UpstreamBodyProj::Bytes { data } => {
                Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Incoming { body, .. } => body.is_end_stream(),
            UpstreamBody::Replay { body } => body.is_end_stream(),
            UpstreamBody::Bytes { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Incoming { body, .. } => body.size_hint(),
            UpstreamBody::Replay { body } => body.size_hint(),
            UpstreamBody::Bytes { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// How a response stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Complete,
    /// The upstream body failed (reset, protocol error).
    UpstreamError,
    IdleTimeout,
    RouteTimeout,
    /// The stream's maximum duration (`max_stream_duration`, `grpc-timeout`) passed.
    DurationTimeout,
    /// The downstream went away before the end.
    DownstreamGone,
}

/// Called once when a response stream ends (fully sent, failed, or dropped).
pub trait OnComplete: Send + 'static {
    /// `bytes_sent`: body bytes handed to the downstream codec.
    fn complete(self: Box<Self>, bytes_sent: u64, outcome: Outcome);
}

/// A source of response body frames: the upstream body (with the pool's return hook) or
/// a local reply.
pub enum Source {
    Upstream(super::pool::PooledBody),
    Full(Option<Bytes>),
}

/// The timers of a response stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamTimers {
    /// Stream idle timeout (`SI`).
    pub idle: Option<Duration>,
    /// The router's per-try idle timeout, still running after the headers (`UT`).
    pub upstream_idle: Option<Duration>,
    /// The route timeout's deadline (`UT`).
    pub deadline: Option<Instant>,
    /// The stream's maximum duration.
    pub stream_deadline: Option<Instant>,
}

/// Timers on a response stream. The idle timers are re-armed lazily: frames only record
/// their time, and the sleep, when it fires early, is pushed to the new deadline.
struct Timers {
    sleep: Pin<Box<Sleep>>,
    t: StreamTimers,
    last_activity: Instant,
}

impl Timers {
    fn new(t: StreamTimers) -> Option<Self> {
        if t.idle.is_none()
            && t.upstream_idle.is_none()
            && t.deadline.is_none()
            && t.stream_deadline.is_none()
        {
            return None;
        }
        let now = Instant::now();
        let mut timers = Timers {
            sleep: Box::pin(tokio::time::sleep_until(now)),
            t,
            last_activity: now,
        };
        let next = timers.next_deadline();
        timers.sleep.as_mut().reset(next);
        Some(timers)
    }

    fn next_deadline(&self) -> Instant {
        [
            self.t.idle.map(|d| self.last_activity + d),
            self.t.upstream_idle.map(|d| self.last_activity + d),
            self.t.deadline,
            self.t.stream_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
        // Not constructed without a timer.
        .unwrap_or(self.last_activity + Duration::from_secs(86_400 * 365))
    }

    /// `Some(err)` when a timer expired.
    fn poll(&mut self, cx: &mut Context<'_>) -> Option<BodyError> {
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return None;
            }
            let now = Instant::now();
            if self.t.stream_deadline.is_some_and(|d| now >= d) {
                return Some(BodyError::DurationTimeout);
            }
            if self.t.deadline.is_some_and(|d| now >= d) {
                return Some(BodyError::RouteTimeout);
            }
            if self
                .t
                .upstream_idle
                .is_some_and(|i| now >= self.last_activity + i)
            {
                return Some(BodyError::RouteTimeout);
            }
            if self.t.idle.is_some_and(|i| now >= self.last_activity + i) {
                return Some(BodyError::IdleTimeout);
            }
            let next = self.next_deadline();
            self.sleep.as_mut().reset(next);
        }
    }
}

/// The body of a response sent downstream.
pub struct ResponseBody {
    source: Source,
    timers: Option<Timers>,
    bytes_sent: u64,
    on_complete: Option<Box<dyn OnComplete>>,
    /// Released when hyper drops the body (the stream is over).
    _hold: Option<Box<dyn Send + Sync>>,
}

impl ResponseBody {
    pub fn full(b: Bytes) -> Self {
        Self::new(Source::Full((!b.is_empty()).then_some(b)))
    }

    pub fn empty() -> Self {
        Self::new(Source::Full(None))
    }

    pub fn new(source: Source) -> Self {
        ResponseBody {
            source,
            timers: None,
            bytes_sent: 0,
            on_complete: None,
            _hold: None,
        }
    }

    /// Applies the stream idle timeout and an absolute deadline (route timeout).
    pub fn with_timers(self, idle: Option<Duration>, deadline: Option<Instant>) -> Self {
        self.with_stream_timers(StreamTimers {
            idle,
            deadline,
            ..StreamTimers::default()
        })
    }

    pub fn with_stream_timers(mut self, t: StreamTimers) -> Self {
        if !matches!(self.source, Source::Full(_)) {
            self.timers = Timers::new(t);
        }
        self
    }

    /// Keeps `h` alive until the stream is over.
    pub fn hold(mut self, h: Box<dyn Send + Sync>) -> Self {
        self._hold = Some(h);
        self
    }

    pub fn on_complete(mut self, f: Box<dyn OnComplete>) -> Self {
        self.on_complete = Some(f);
        self
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(f) = self.on_complete.take() {
            f.complete(self.bytes_sent, outcome);
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // Dropped before the end: the downstream went away (or hyper never polled us,
        // e.g. a HEAD response).
        if self.on_complete.is_some() {
            let done = match &self.source {
                Source::Full(d) => d.is_none(),
                Source::Upstream(b) => b.is_end_stream(),
            };
            self.finish(if done {
                Outcome::Complete
            } else {
                Outcome::DownstreamGone
            });
        }
    }
}

fn outcome_of(e: &BodyError) -> Outcome {
    match e {
        BodyError::Hyper(_) => Outcome::UpstreamError,
        BodyError::IdleTimeout => Outcome::IdleTimeout,
        BodyError::RouteTimeout => Outcome::RouteTimeout,
        BodyError::DurationTimeout => Outcome::DurationTimeout,
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = match &mut this.source {
            Source::Full(d) => Poll::Ready(d.take().map(|d| Ok(Frame::data(d)))),
            Source::Upstream(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|o| o.map(|r| r.map_err(BodyError::from))),
        };
        match polled {
            Poll::Pending => {
                if let Some(err) = this.timers.as_mut().and_then(|t| t.poll(cx)) {
                    this.finish(outcome_of(&err));
                    return Poll::Ready(Some(Err(err)));
                }
                Poll::Pending
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes_sent += d.len() as u64;
                }
                if let Some(t) = this.timers.as_mut() {
                    t.last_activity = Instant::now();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish(outcome_of(&e));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.finish(Outcome::Complete);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Full(d) => d.is_none(),
            Source::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Full(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            Source::Upstream(b) => b.size_hint(),
        }
    }
}
