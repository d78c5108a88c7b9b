//! One upstream endpoint with its live counters, its outlier-detection monitor and a
//! per-host slot for the HTTP pool.

use std::{
    any::Any,
    fmt,
    net::SocketAddr,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
};

use tokio::time::Instant;

use super::outlier::{Monitor, Outcome};
use crate::config::endpoint::{HealthStatus, Locality};

/// An upstream host. Shared (`Arc`) between the load balancer, connections and pools;
/// kept across EDS updates when its address and attributes do not change, so pools,
/// counters and outlier state survive endpoint churn elsewhere in the cluster.
pub struct Host {
    pub addr: SocketAddr,
    /// EDS `hostname`, or the DNS name a STRICT_DNS host was resolved from.
    pub hostname: Arc<str>,
    pub locality: Arc<Locality>,
    pub weight: u32,
    pub priority: u32,
    /// Istio's `tlsMode` endpoint metadata (for transport-socket matching, later).
    pub tls_mode: Option<Arc<str>>,
    /// When the host joined a cluster that already had endpoints: the start of its slow
    /// start window (hosts of a cluster's first assignment do not warm up, as in Envoy).
    pub(crate) warming_since: Option<Instant>,
    /// EDS health.
    eds_health: AtomicU8,
    /// Live counters, shared with the guards. Guards never hold the `Host` itself: a
    /// pooled connection's guard lives inside the host's own pool (the `ext` slot), and
    /// a strong reference there would keep host, pool and connection alive forever.
    counters: Arc<Counters>,
    pub(crate) outlier: Monitor,
    ext: OnceLock<Arc<dyn Any + Send + Sync>>,
}

#[derive(Debug, Default)]
struct Counters {
    /// Requests in flight to this host (least-request LB reads it).
    active_requests: AtomicU64,
    active_connections: AtomicU64,
    total_connections: AtomicU64,
    total_requests: AtomicU64,
    connect_failures: AtomicU64,
}

const HEALTHY: u8 = 0;
const DEGRADED: u8 = 1;
const UNHEALTHY: u8 = 2;

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("addr", &self.addr)
            .field("hostname", &self.hostname)
            .field("locality", &self.locality)
            .field("weight", &self.weight)
            .field("priority", &self.priority)
            .field("health", &self.health())
            .field("ejected", &self.is_ejected())
            .finish_non_exhaustive()
    }
}

impl Host {
    pub fn new(addr: SocketAddr) -> Self {
        Host {
            addr,
            hostname: "".into(),
            locality: Arc::default(),
            weight: 1,
            priority: 0,
            tls_mode: None,
            warming_since: None,
            eds_health: AtomicU8::new(HEALTHY),
            counters: Arc::default(),
            outlier: Monitor::default(),
            ext: OnceLock::new(),
        }
    }

    pub fn with_attributes(
        addr: SocketAddr,
        hostname: Arc<str>,
        locality: Arc<Locality>,
        weight: u32,
        priority: u32,
        health: HealthStatus,
        tls_mode: Option<Arc<str>>,
    ) -> Self {
        let h = Host {
            hostname,
            locality,
            weight: weight.max(1),
            priority,
            tls_mode,
            ..Host::new(addr)
        };
        h.set_health(health);
        h
    }

    /// Marks the host as new to its cluster now: slow start ramps its weight up.
    #[must_use]
    pub fn warming_from(mut self, since: Instant) -> Self {
        self.warming_since = Some(since);
        self
    }

    /// Whether two hosts describe the same endpoint (then the old `Arc` is kept).
    pub(crate) fn same_attributes(&self, other: &Host) -> bool {
        self.addr == other.addr
            && self.hostname == other.hostname
            && self.locality == other.locality
            && self.weight == other.weight
            && self.priority == other.priority
            && self.tls_mode == other.tls_mode
    }

    /// The health EDS gave the host.
    pub fn health(&self) -> HealthStatus {
        match self.eds_health.load(Ordering::Relaxed) {
            HEALTHY => HealthStatus::Healthy,
            DEGRADED => HealthStatus::Degraded,
            _ => HealthStatus::Unhealthy,
        }
    }

    pub fn set_health(&self, h: HealthStatus) {
        let v = match h {
            HealthStatus::Healthy => HEALTHY,
            HealthStatus::Degraded => DEGRADED,
            HealthStatus::Unhealthy => UNHEALTHY,
        };
        self.eds_health.store(v, Ordering::Relaxed);
    }

    /// Whether outlier detection has ejected the host (Envoy's `FAILED_OUTLIER_CHECK`).
    pub fn is_ejected(&self) -> bool {
        self.outlier.is_ejected()
    }

    /// The health the load balancer uses: EDS health, unhealthy while ejected.
    pub fn lb_health(&self) -> HealthStatus {
        if self.is_ejected() {
            HealthStatus::Unhealthy
        } else {
            self.health()
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.lb_health() == HealthStatus::Healthy
    }

    /// Reports the result of a request or connection to this host's outlier detector
    /// (a no-op when the cluster has no `outlier_detection`). The cluster reports
    /// connection results itself ([`super::Cluster::connect`]); the HTTP router reports
    /// each response status (gRPC: the status mapped to HTTP), a reset after connect as
    /// [`Outcome::ConnectFailed`] and a per-try or route timeout as [`Outcome::Timeout`].
    // used by http (router)
    pub fn report(&self, outcome: Outcome) {
        self.outlier.report(self, outcome);
    }

    /// Success rates (percent) of the last outlier-detection interval, external and
    /// local origin; -1 when not computed (too few requests, or no detection).
    pub fn success_rates(&self) -> [f64; 2] {
        self.outlier.success_rates()
    }

    pub fn active_requests(&self) -> u64 {
        self.counters.active_requests.load(Ordering::Relaxed)
    }

    pub fn active_connections(&self) -> u64 {
        self.counters.active_connections.load(Ordering::Relaxed)
    }

    pub fn total_connections(&self) -> u64 {
        self.counters.total_connections.load(Ordering::Relaxed)
    }

    pub fn total_requests(&self) -> u64 {
        self.counters.total_requests.load(Ordering::Relaxed)
    }

    pub fn connect_failures(&self) -> u64 {
        self.counters.connect_failures.load(Ordering::Relaxed)
    }

    pub(crate) fn record_connect_failure(&self) {
        self.counters
            .connect_failures
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request in flight until the guard drops (least-request reads this).
    pub fn request_guard(&self) -> HostRequestGuard {
        self.counters
            .active_requests
            .fetch_add(1, Ordering::Relaxed);
        self.counters.total_requests.fetch_add(1, Ordering::Relaxed);
        HostRequestGuard(self.counters.clone())
    }

    /// Counts an open connection until the guard drops.
    pub fn connection_guard(&self) -> HostConnectionGuard {
        self.counters
            .active_connections
            .fetch_add(1, Ordering::Relaxed);
        self.counters
            .total_connections
            .fetch_add(1, Ordering::Relaxed);
        HostConnectionGuard(self.counters.clone())
    }

    /// The per-host extension slot (the HTTP connection pool lives here), created on
    /// first use. `None` if the slot already holds a different type.
    pub fn ext<T: Any + Send + Sync>(&self, init: impl FnOnce() -> T) -> Option<Arc<T>> {
        self.ext
            .get_or_init(|| Arc::new(init()))
            .clone()
            .downcast::<T>()
            .ok()
    }
}

/// See [`Host::request_guard`].
#[derive(Debug)]
pub struct HostRequestGuard(Arc<Counters>);

impl Drop for HostRequestGuard {
    fn drop(&mut self) {
        self.0.active_requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// See [`Host::connection_guard`].
#[derive(Debug)]
pub struct HostConnectionGuard(Arc<Counters>);

impl Drop for HostConnectionGuard {
    fn drop(&mut self) {
        self.0.active_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count() {
        let h = Arc::new(Host::new("127.0.0.1:1".parse().unwrap()));
        let g = h.request_guard();
        let g2 = h.request_guard();
        assert_eq!(h.active_requests(), 2);
        drop(g);
        drop(g2);
        assert_eq!(h.active_requests(), 0);
        assert_eq!(h.total_requests(), 2);
    }

    #[test]
    fn guards_do_not_keep_the_host_alive() {
        let h = Arc::new(Host::new("127.0.0.1:1".parse().unwrap()));
        let weak = Arc::downgrade(&h);
        let g = h.connection_guard();
        // A pooled connection (holding its guard) stored in the host's own ext slot.
        let _ = h.ext(move || std::sync::Mutex::new(Some(g)));
        drop(h);
        assert!(
            weak.upgrade().is_none(),
            "no reference cycle through the ext slot"
        );
    }

    #[test]
    fn ext_slot_is_typed() {
        let h = Host::new("127.0.0.1:1".parse().unwrap());
        let a = h.ext(|| 5u32).unwrap();
        assert_eq!(*a, 5);
        assert_eq!(*h.ext(|| 7u32).unwrap(), 5);
        assert!(h.ext(|| "other").is_none());
    }

    #[test]
    fn reports_without_a_detector_are_ignored() {
        let h = Host::new("127.0.0.1:1".parse().unwrap());
        for _ in 0..100 {
            h.report(Outcome::Status(503));
        }
        assert!(!h.is_ejected());
        assert_eq!(h.lb_health(), HealthStatus::Healthy);
    }
}
