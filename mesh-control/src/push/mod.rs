//! Pushing config changes to connected proxies.
//!
//! ```text
//! Store events --> debounce (100 ms quiet, 10 s max) --> fan out: every connection into the
//! PushQueue (merged per connection) --> dispatcher: one push at a time per connection, at
//! most `push_concurrency` generating at once --> generate on the blocking pool --> the
//! stream task diffs and sends (delta: changed resources; SotW: changed types)
//! ```

pub mod debounce;
pub mod queue;

use std::sync::Arc;

use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span};

pub use debounce::DebounceConfig;
pub use queue::PushQueue;

use crate::store::ConfigEvent;
use crate::xds::connection::{Connection, PushCommand};
use crate::xds::{TypeSet, XdsServer};

/// Reasons kept per merged push, for logs (the count is always exact).
const MAX_REASONS: usize = 8;

/// A (possibly merged) push.
#[derive(Debug, Clone)]
pub struct PushRequest {
    /// Full push (every type regenerated) or EDS-only.
    pub full: bool,
    /// When the first merged change happened.
    pub triggered_at: Instant,
    /// How many changes were merged.
    pub events: u32,
    pub reasons: Vec<String>,
}

impl PushRequest {
    pub fn new(full: bool, triggered_at: Instant, reason: impl Into<String>) -> PushRequest {
        PushRequest {
            full,
            triggered_at,
            events: 1,
            reasons: vec![reason.into()],
        }
    }

    pub fn merge(&mut self, other: PushRequest) {
        self.full |= other.full;
        self.triggered_at = self.triggered_at.min(other.triggered_at);
        self.events = self.events.saturating_add(other.events);
        for reason in other.reasons {
            if self.reasons.len() < MAX_REASONS {
                self.reasons.push(reason);
            }
        }
    }

    /// The types this push may change.
    pub fn types(&self) -> TypeSet {
        if self.full {
            TypeSet::ALL
        } else {
            TypeSet::ENDPOINTS
        }
    }
}

/// The push pipeline: fan-out into the queue and the dispatcher that drains it.
#[derive(Debug, Clone)]
pub struct Pusher {
    server: Arc<XdsServer>,
    queue: Arc<PushQueue>,
}

impl Pusher {
    /// Starts the dispatcher; call [`Pusher::run_debouncer`] (or [`Pusher::push_all`]
    /// directly) to feed it.
    pub fn start(server: Arc<XdsServer>, shutdown: CancellationToken) -> (Pusher, JoinHandle<()>) {
        let pusher = Pusher {
            server,
            queue: PushQueue::new(),
        };
        let task = tokio::spawn(
            pusher
                .clone()
                .dispatch(shutdown)
                .instrument(info_span!("push")),
        );
        (pusher, task)
    }

    /// Debounces store events into pushes until `shutdown`.
    pub fn run_debouncer(
        &self,
        events: broadcast::Receiver<ConfigEvent>,
        config: DebounceConfig,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        let pusher = self.clone();
        tokio::spawn(
            async move {
                let metrics = pusher.server.metrics().clone();
                debounce::debounce(events, config, &metrics, shutdown, |req| {
                    pusher.push_all(req)
                })
                .await
            }
            .instrument(info_span!("debounce")),
        )
    }

    /// Queues `req` for every connected proxy.
    pub fn push_all(&self, req: PushRequest) {
        let ids = self.server.registry().ids();
        debug!(
            proxies = ids.len(),
            full = req.full,
            events = req.events,
            reasons = ?req.reasons,
            "push"
        );
        for id in ids {
            self.queue.enqueue(id, req.clone());
        }
    }

    pub fn queue(&self) -> &Arc<PushQueue> {
        &self.queue
    }

    async fn dispatch(self, shutdown: CancellationToken) {
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => return,
                permit = self.server.permits().clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let (id, req, done) = tokio::select! {
                _ = shutdown.cancelled() => return,
                next = self.queue.dequeue() => next,
            };
            let Some(conn) = self.server.registry().get(id) else {
                continue;
            };
            let server = self.server.clone();
            tokio::spawn(async move {
                let started_at = Instant::now();
                let command = push_command(&server, &conn, &req, started_at).await;
                // The permit bounds generation only. Holding it until the stream task has
                // written the push would deadlock a connect storm: streams waiting for a
                // permit for their initial generation while every permit sits in a push
                // queued for one of them.
                drop(permit);
                conn.push(PushCommand {
                    done: Some(Box::new(done)),
                    ..command
                })
                .await;
            });
        }
    }
}

async fn push_command(
    server: &XdsServer,
    conn: &Connection,
    req: &PushRequest,
    started_at: Instant,
) -> PushCommand {
    let previous = conn.resources.load_full();
    let resources = server
        .generate(conn.proxy.clone(), previous, !req.full)
        .await;
    PushCommand {
        resources,
        types: req.types(),
        triggered_at: req.triggered_at,
        started_at,
        generation_time: started_at.elapsed(),
        done: None,
    }
}
