//! Circuit-breaker counters (Envoy's per-cluster resource limits) with RAII guards:
//! a guard holds one unit of a resource and gives it back when dropped, so limits stay
//! exact even when requests are cancelled.

use std::sync::{
    Arc,
    atomic::{AtomicU32, Ordering},
};

use crate::config::cluster::Thresholds;

/// The four limits of one priority (DEFAULT or HIGH).
#[derive(Debug)]
pub struct CircuitBreakers {
    connections: Arc<Resource>,
    pending: Arc<Resource>,
    requests: Arc<Resource>,
    retries: Arc<Resource>,
}

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
        let max = self.max.load(Ordering::Relaxed);
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
        CircuitBreakers {
            connections: Resource::new(t.max_connections),
            pending: Resource::new(t.max_pending_requests),
            requests: Resource::new(t.max_requests),
            retries: Resource::new(t.max_retries),
        }
    }

    /// Applies new limits (a CDS update) without resetting what is in use.
    pub fn update(&self, t: &Thresholds) {
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

    pub fn try_acquire_retry(&self) -> Option<Guard> {
        self.retries.try_acquire()
    }

    /// `(in use, max)` of a resource, for `/clusters` (Envoy's `remaining_*`).
    pub fn usage(&self, kind: ResourceKind) -> (u32, u32) {
        let r = match kind {
            ResourceKind::Connections => &self.connections,
            ResourceKind::PendingRequests => &self.pending,
            ResourceKind::Requests => &self.requests,
            ResourceKind::Retries => &self.retries,
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
