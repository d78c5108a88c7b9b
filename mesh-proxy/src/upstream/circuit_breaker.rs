//! Circuit-breaker counters (Envoy's per-cluster resource limits) with RAII guards:
//! a guard holds one unit of a resource and gives it back when dropped, so limits stay
//! exact even when requests are cancelled. Nothing waits on a full resource: the caller
//! gets `None` at once and answers 503 `UO`.
//!
//! With a retry budget the retry limit is not fixed: concurrent retries may be
//! `budget_percent` of the requests active and pending at that moment, never fewer than
//! `min_retry_concurrency` (Envoy's `RetryBudget`).

use std::sync::{
    Arc,
    atomic::{AtomicU32, AtomicU64, Ordering},
};

use parking_lot::Mutex;

use crate::config::cluster::{RetryBudget, Thresholds};

/// The four limits of one priority (DEFAULT or HIGH).
#[derive(Debug)]
pub struct CircuitBreakers {
    connections: Arc<Resource>,
    pending: Arc<Resource>,
    requests: Arc<Resource>,
    retries: Arc<Resource>,
    /// `f64` bits of the budget percent (`u64::MAX`: no budget) and the minimum.
    budget_percent: AtomicU64,
    budget_min: AtomicU32,
    /// Serializes CDS updates of the limits (readers never lock).
    update: Mutex<()>,
}

const NO_BUDGET: u64 = u64::MAX;

/// Which limit a guard holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    Connections,
    PendingRequests,
    Requests,
    Retries,
}

#[derive(Debug)]
struct Resource {
    max: AtomicU32,
    current: AtomicU32,
}

impl Resource {
    fn new(max: u32) -> Arc<Self> {
        Arc::new(Resource {
            max: AtomicU32::new(max),
            current: AtomicU32::new(0),
        })
    }

    fn try_acquire(self: &Arc<Self>) -> Option<Guard> {
        self.try_acquire_within(self.max.load(Ordering::Relaxed))
    }

    fn try_acquire_within(self: &Arc<Self>, max: u32) -> Option<Guard> {
        self.current
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c < max).then_some(c + 1)
            })
            .ok()
            .map(|_| Guard(self.clone()))
    }
}

/// One unit of a circuit-breaker resource; released on drop.
#[derive(Debug)]
#[must_use = "the resource is released when the guard is dropped"]
pub struct Guard(Arc<Resource>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::AcqRel);
    }
}

impl CircuitBreakers {
    pub fn new(t: &Thresholds) -> Self {
        let cb = CircuitBreakers {
            connections: Resource::new(t.max_connections),
            pending: Resource::new(t.max_pending_requests),
            requests: Resource::new(t.max_requests),
            retries: Resource::new(t.max_retries),
            budget_percent: AtomicU64::new(NO_BUDGET),
            budget_min: AtomicU32::new(0),
            update: Mutex::new(()),
        };
        cb.set_budget(t.retry_budget);
        cb
    }

    fn set_budget(&self, b: Option<RetryBudget>) {
        match b {
            Some(b) => {
                self.budget_min
                    .store(b.min_retry_concurrency, Ordering::Relaxed);
                self.budget_percent
                    .store(b.budget_percent.to_bits(), Ordering::Relaxed);
            }
            None => self.budget_percent.store(NO_BUDGET, Ordering::Relaxed),
        }
    }

    /// The retry limit now: `max_retries`, or the retry budget over the requests active
    /// and pending at this moment.
    pub fn max_retries(&self) -> u32 {
        let bits = self.budget_percent.load(Ordering::Relaxed);
        if bits == NO_BUDGET {
            return self.retries.max.load(Ordering::Relaxed);
        }
        let active = self.requests.current.load(Ordering::Relaxed)
            + self.pending.current.load(Ordering::Relaxed);
        let budget = (f64::from_bits(bits) / 100.0 * f64::from(active)) as u32;
        budget.max(self.budget_min.load(Ordering::Relaxed))
    }

    /// Applies new limits (a CDS update) without resetting what is in use.
    pub fn update(&self, t: &Thresholds) {
        let _one_writer = self.update.lock();
        self.set_budget(t.retry_budget);
        self.connections
            .max
            .store(t.max_connections, Ordering::Relaxed);
        self.pending
            .max
            .store(t.max_pending_requests, Ordering::Relaxed);
        self.requests.max.store(t.max_requests, Ordering::Relaxed);
        self.retries.max.store(t.max_retries, Ordering::Relaxed);
    }

    pub fn try_acquire_connection(&self) -> Option<Guard> {
        self.connections.try_acquire()
    }

    pub fn try_acquire_pending(&self) -> Option<Guard> {
        self.pending.try_acquire()
    }

    pub fn try_acquire_request(&self) -> Option<Guard> {
        self.requests.try_acquire()
    }

    /// A retry slot (`max_retries`, or the retry budget when configured).
    pub fn try_acquire_retry(&self) -> Option<Guard> {
        self.retries.try_acquire_within(self.max_retries())
    }

    /// `(in use, max)` of a resource, for `/clusters` (Envoy's `remaining_*`).
    pub fn usage(&self, kind: ResourceKind) -> (u32, u32) {
        let r = match kind {
            ResourceKind::Connections => &self.connections,
            ResourceKind::PendingRequests => &self.pending,
            ResourceKind::Requests => &self.requests,
            ResourceKind::Retries => {
                return (
                    self.retries.current.load(Ordering::Relaxed),
                    self.max_retries(),
                );
            }
        };
        (
            r.current.load(Ordering::Relaxed),
            r.max.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_release() {
        let cb = CircuitBreakers::new(&Thresholds {
            max_connections: 2,
            max_pending_requests: 0,
            max_requests: 1,
            max_retries: 3,
            retry_budget: None,
        });
        let a = cb.try_acquire_connection().unwrap();
        let _b = cb.try_acquire_connection().unwrap();
        assert!(cb.try_acquire_connection().is_none());
        drop(a);
        assert!(cb.try_acquire_connection().is_some());
        assert!(cb.try_acquire_pending().is_none());
        assert_eq!(cb.usage(ResourceKind::Connections), (1, 2));
    }

    #[test]
    fn update_keeps_usage() {
        let cb = CircuitBreakers::new(&Thresholds {
            max_connections: 1,
            ..Thresholds::default()
        });
        let _g = cb.try_acquire_connection().unwrap();
        cb.update(&Thresholds {
            max_connections: 2,
            ..Thresholds::default()
        });
        assert!(cb.try_acquire_connection().is_some());
        assert_eq!(cb.usage(ResourceKind::Connections).1, 2);
    }

    #[test]
    fn retry_budget_scales_with_active_and_pending_requests() {
        let cb = CircuitBreakers::new(&Thresholds {
            max_retries: 1,
            retry_budget: Some(RetryBudget {
                budget_percent: 25.0,
                min_retry_concurrency: 2,
            }),
            ..Thresholds::default()
        });
        // Nothing active: the minimum applies (not max_retries, which the budget replaces).
        assert_eq!(cb.max_retries(), 2);
        let held: Vec<_> = (0..2).map(|_| cb.try_acquire_retry().unwrap()).collect();
        assert!(cb.try_acquire_retry().is_none());
        // 16 active + 4 pending requests: 25% of 20 = 5 concurrent retries.
        let rq: Vec<_> = (0..16).map(|_| cb.try_acquire_request().unwrap()).collect();
        let pending: Vec<_> = (0..4).map(|_| cb.try_acquire_pending().unwrap()).collect();
        assert_eq!(cb.max_retries(), 5);
        let more: Vec<_> = (0..3).map(|_| cb.try_acquire_retry().unwrap()).collect();
        assert!(cb.try_acquire_retry().is_none());
        assert_eq!(cb.usage(ResourceKind::Retries), (5, 5));
        drop((held, rq, pending, more));
        // Back to the budget's floor; a CDS update can remove the budget.
        cb.update(&Thresholds {
            max_retries: 1,
            ..Thresholds::default()
        });
        assert_eq!(cb.max_retries(), 1);
    }

    #[test]
    fn concurrent_acquire_never_exceeds_max() {
        let cb = Arc::new(CircuitBreakers::new(&Thresholds {
            max_requests: 10,
            ..Thresholds::default()
        }));
        let held: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| {
                    let cb = cb.clone();
                    s.spawn(move || {
                        (0..10)
                            .filter_map(|_| cb.try_acquire_request())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(held.len(), 10);
    }
}
