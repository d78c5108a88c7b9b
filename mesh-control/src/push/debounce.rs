//! Debouncing config changes into pushes, as istiod does: a push goes out once changes have
//! been quiet for `after` (100 ms) or, under a steady stream of changes, once the first
//! pending change is `max` (10 s) old. Merged changes make a full push if any of them needs
//! one, an EDS-only push otherwise.

use std::time::Duration;

use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::PushRequest;
use crate::monitoring::metrics::{Metrics, TypeLabel};
use crate::store::{ChangeKind, ConfigEvent};

/// Debounce timing (`--debounce-after`, `--debounce-max`; Istio's `PILOT_DEBOUNCE_AFTER`
/// and `PILOT_DEBOUNCE_MAX`).
#[derive(Debug, Clone, Copy)]
pub struct DebounceConfig {
    pub after: Duration,
    pub max: Duration,
}

impl Default for DebounceConfig {
    fn default() -> Self {
        DebounceConfig {
            after: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

/// Reads store events until `shutdown` (or the store goes away) and calls `push` with each
/// debounced request.
pub async fn debounce(
    mut events: broadcast::Receiver<ConfigEvent>,
    config: DebounceConfig,
    metrics: &Metrics,
    shutdown: CancellationToken,
    mut push: impl FnMut(PushRequest),
) {
    // (request, first received, last received)
    let mut pending: Option<(PushRequest, Instant, Instant)> = None;
    loop {
        let deadline = pending
            .as_ref()
            .map(|(_, first, last)| (*last + config.after).min(*first + config.max));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.recv() => {
                let now = Instant::now();
                let req = match event {
                    Ok(ev) => {
                        let kind = match ev.kind {
                            ChangeKind::Full => "config",
                            ChangeKind::EndpointsOnly => "endpoint",
                        };
                        metrics.push_triggers.get_or_create(&TypeLabel { r#type: kind }).inc();
                        PushRequest::new(ev.kind == ChangeKind::Full, ev.at, ev.reason)
                    }
                    Err(RecvError::Lagged(n)) => {
                        warn!("push debouncer missed {n} config events, pushing everything");
                        PushRequest::new(true, now, "missed config events")
                    }
                    Err(RecvError::Closed) => {
                        if let Some((req, first, _)) = pending.take() {
                            metrics.debounce_time.observe(first.elapsed().as_secs_f64());
                            push(req);
                        }
                        return;
                    }
                };
                pending = Some(match pending.take() {
                    Some((mut merged, first, _)) => {
                        merged.merge(req);
                        (merged, first, now)
                    }
                    None => (req, now, now),
                });
                if config.after.is_zero()
                    && let Some((req, _, _)) = pending.take()
                {
                    push(req);
                }
            }
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                if let Some((req, first, _)) = pending.take() {
                    metrics.debounce_time.observe(first.elapsed().as_secs_f64());
                    debug!(full = req.full, events = req.events, "debounced push");
                    push(req);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parking_lot::Mutex;

    use super::*;

    fn event(kind: ChangeKind) -> ConfigEvent {
        ConfigEvent {
            kind,
            at: Instant::now(),
            reason: "test".into(),
            version: 0,
        }
    }

    type Pushes = Arc<Mutex<Vec<(Duration, PushRequest)>>>;

    /// Runs the debouncer and returns (elapsed since start, request) for each push.
    fn start(
        config: DebounceConfig,
    ) -> (broadcast::Sender<ConfigEvent>, Pushes, CancellationToken) {
        let (tx, rx) = broadcast::channel(64);
        let pushes = Arc::new(Mutex::new(Vec::new()));
        let out = pushes.clone();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let t0 = Instant::now();
        tokio::spawn(async move {
            let metrics = Metrics::unregistered();
            debounce(rx, config, &metrics, stop, |req| {
                out.lock().push((t0.elapsed(), req));
            })
            .await;
        });
        (tx, pushes, shutdown)
    }

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn one_change_is_pushed_after_the_quiet_period() {
        let (tx, pushes, stop) = start(DebounceConfig::default());
        tx.send(event(ChangeKind::EndpointsOnly)).unwrap();
        tokio::time::sleep(99 * MS).await;
        assert!(pushes.lock().is_empty());
        tokio::time::sleep(2 * MS).await;
        let p = pushes.lock();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, 100 * MS);
        assert!(!p[0].1.full, "endpoint-only change gives an EDS push");
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_merged_into_one_push() {
        let (tx, pushes, stop) = start(DebounceConfig::default());
        tx.send(event(ChangeKind::EndpointsOnly)).unwrap();
        tokio::time::sleep(60 * MS).await;
        tx.send(event(ChangeKind::Full)).unwrap();
        tokio::time::sleep(60 * MS).await;
        tx.send(event(ChangeKind::EndpointsOnly)).unwrap();
        tokio::time::sleep(500 * MS).await;
        let p = pushes.lock();
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, 220 * MS, "100 ms after the last change");
        assert!(p[0].1.full, "any full change makes the merged push full");
        assert_eq!(p[0].1.events, 3);
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn steady_changes_are_pushed_at_the_max_delay() {
        let (tx, pushes, stop) = start(DebounceConfig::default());
        // A change every 50 ms for 25 s: never quiet for 100 ms.
        for _ in 0..500 {
            tx.send(event(ChangeKind::EndpointsOnly)).unwrap();
            tokio::time::sleep(50 * MS).await;
        }
        let times: Vec<_> = pushes.lock().iter().map(|(t, _)| *t).collect();
        assert_eq!(times.len(), 2, "{times:?}");
        assert_eq!(times[0], Duration::from_secs(10));
        assert!(
            times[1] >= Duration::from_secs(20) && times[1] <= Duration::from_millis(20_050),
            "{times:?}"
        );
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn zero_debounce_pushes_immediately() {
        let (tx, pushes, stop) = start(DebounceConfig {
            after: Duration::ZERO,
            max: Duration::from_secs(10),
        });
        tx.send(event(ChangeKind::Full)).unwrap();
        tokio::time::sleep(MS).await;
        assert_eq!(pushes.lock().len(), 1);
        assert_eq!(pushes.lock()[0].0, Duration::ZERO);
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_lagging_receiver_pushes_everything() {
        let (tx, rx) = broadcast::channel(2);
        for _ in 0..5 {
            tx.send(event(ChangeKind::EndpointsOnly)).unwrap();
        }
        let pushes = Arc::new(Mutex::new(Vec::new()));
        let out = pushes.clone();
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            let metrics = Metrics::unregistered();
            debounce(rx, DebounceConfig::default(), &metrics, s, |r| {
                out.lock().push(r)
            })
            .await;
        });
        tokio::time::sleep(200 * MS).await;
        let p = pushes.lock();
        assert_eq!(p.len(), 1);
        assert!(p[0].full);
        stop.cancel();
    }
}
