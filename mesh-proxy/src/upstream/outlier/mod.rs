//! Outlier detection (passive health checking) with Envoy's semantics.
//!
//! Hosts count results as they happen ([`Monitor`], lock-free); reaching a consecutive
//! threshold (5xx, gateway failure, local-origin failure) ejects the host at once, and a
//! sweep every `interval` returns hosts whose ejection time
//! (`min(base_ejection_time x backoff, max_ejection_time) + jitter`) has passed and ejects
//! success-rate and failure-percentage outliers of the last interval. An ejected host is
//! unhealthy to the load balancer: it gets no traffic unless its priority level is in
//! panic, and its level's lost health fails traffic over to the next priority.
//! `max_ejection_percent` bounds how many hosts may be out at once, and each
//! `enforcing_*` percentage is the chance a detection is acted on.

mod monitor;

use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::{task::AbortHandle, time::Instant};
use tracing::info;

pub use monitor::{Monitor, Outcome};

use super::{Cluster, Host};
use crate::{config::cluster::OutlierDetection, stats::ClusterStats};

/// Why a host was (or would have been) ejected: Envoy's `OutlierEjectionType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Consecutive5xx,
    ConsecutiveGatewayFailure,
    ConsecutiveLocalOriginFailure,
    SuccessRate,
    LocalOriginSuccessRate,
    FailurePercentage,
    LocalOriginFailurePercentage,
}

/// Which results a success-rate computation looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    External = 0,
    Local = 1,
}

/// The cluster half of outlier detection (Envoy's `DetectorImpl`).
pub struct Detector {
    pub(super) config: OutlierDetection,
    cluster: Weak<Cluster>,
    stats: ClusterStats,
    /// Serializes ejections, returns and sweeps (never held across an await).
    lock: Mutex<SweepState>,
    sweeper: Mutex<Option<AbortHandle>>,
}

#[derive(Debug)]
struct SweepState {
    /// Mean and ejection threshold of the last success-rate computation, per origin
    /// (-1 when not computed), for `/clusters`.
    success_rate: [(f64, f64); 2],
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Drop for Detector {
    fn drop(&mut self) {
        if let Some(task) = self.sweeper.lock().take() {
            task.abort();
        }
    }
}

impl Detector {
    pub(super) fn new(
        config: OutlierDetection,
        cluster: Weak<Cluster>,
        stats: ClusterStats,
    ) -> Arc<Detector> {
        Arc::new(Detector {
            config,
            cluster,
            stats,
            lock: Mutex::new(SweepState {
                success_rate: [(-1.0, -1.0); 2],
            }),
            sweeper: Mutex::new(None),
        })
    }

    /// Starts the interval sweeps (needs a tokio runtime; without one, hosts are still
    /// ejected but never return, so the caller logs it).
    pub(super) fn start(self: &Arc<Self>) -> bool {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let weak = Arc::downgrade(self);
        let interval = self.config.interval;
        // The first sweep is an interval after the cluster was made, then an interval
        // after each sweep (Envoy re-arms its timer when a sweep is done).
        let first = Instant::now() + interval;
        let task = rt.spawn(async move {
            tokio::time::sleep_until(first).await;
            loop {
                let Some(detector) = weak.upgrade() else {
                    return;
                };
                detector.sweep();
                drop(detector);
                tokio::time::sleep(interval).await;
            }
        });
        *self.sweeper.lock() = Some(task.abort_handle());
        true
    }

    /// `(mean, ejection threshold)` of the last success-rate sweep; external origin first.
    pub fn success_rate_numbers(&self) -> [(f64, f64); 2] {
        self.lock.lock().success_rate
    }

    /// A consecutive threshold was reached on the data path.
    pub(super) fn on_consecutive(&self, host: &Host, kind: Kind) {
        let Some(cluster) = self.cluster.upgrade() else {
            return;
        };
        let _sweep = self.lock.lock();
        let set = cluster.hosts();
        if !set.hosts.iter().any(|h| std::ptr::eq(Arc::as_ptr(h), host)) || host.is_ejected() {
            return;
        }
        self.detected(kind);
        let ejected = self.eject(&set.hosts, host, kind, Instant::now());
        // Reset so that a new run of errors is needed, even with no success in between.
        host.outlier.reset_consecutive(kind);
        if ejected {
            cluster.rebuild();
        }
    }

    /// Ejects `host` if `max_ejection_percent` allows it and the enforcement roll says
    /// so. Returns whether it was ejected.
    fn eject(&self, all: &[Arc<Host>], host: &Host, kind: Kind, now: Instant) -> bool {
        let total = all.len().max(1);
        let active = all.iter().filter(|h| h.is_ejected()).count();
        let percent = 100.0 * (active + 1) as f64 / total as f64;
        let allowed = percent <= f64::from(self.config.max_ejection_percent)
            || (self.config.always_eject_one_host && active == 0);
        if !allowed {
            self.stats.outlier_detection_ejections_overflow.inc();
            return false;
        }
        if !self.enforced(kind) {
            return false;
        }
        self.stats.outlier_detection_ejections_enforced_total.inc();
        self.enforced_counter(kind).inc();
        let cfg = &self.config;
        let mut st = host.outlier.state.lock();
        host.outlier.set_ejected(true);
        st.num_ejections += 1;
        st.last_ejection = Some(now);
        let jitter_ms = cfg.max_ejection_time_jitter.as_millis() as u64;
        st.jitter = std::time::Duration::from_millis(if jitter_ms == 0 {
            0
        } else {
            rand::random::<u64>() % (jitter_ms + 1)
        });
        // Envoy: grow the multiplier while base x backoff < max + base.
        if cfg.base_ejection_time * st.backoff < cfg.max_ejection_time + cfg.base_ejection_time {
            st.backoff += 1;
        }
        info!(host = %host.addr, ?kind, ejections = st.num_ejections, "outlier detection: host ejected");
        true
    }

    fn enforced(&self, kind: Kind) -> bool {
        let e = &self.config.enforcing;
        let pct = match kind {
            Kind::Consecutive5xx => e.consecutive_5xx,
            Kind::ConsecutiveGatewayFailure => e.consecutive_gateway_failure,
            Kind::ConsecutiveLocalOriginFailure => e.consecutive_local_origin_failure,
            Kind::SuccessRate => e.success_rate,
            Kind::LocalOriginSuccessRate => e.local_origin_success_rate,
            Kind::FailurePercentage => e.failure_percentage,
            Kind::LocalOriginFailurePercentage => e.failure_percentage_local_origin,
        };
        pct >= 100 || (pct > 0 && rand::random::<u32>() % 100 < pct)
    }

    fn detected(&self, kind: Kind) {
        let s = &self.stats;
        match kind {
            Kind::Consecutive5xx => &s.outlier_detection_ejections_detected_consecutive_5xx,
            Kind::ConsecutiveGatewayFailure => {
                &s.outlier_detection_ejections_detected_consecutive_gateway_failure
            }
            Kind::ConsecutiveLocalOriginFailure => {
                &s.outlier_detection_ejections_detected_consecutive_local_origin_failure
            }
            Kind::SuccessRate => &s.outlier_detection_ejections_detected_success_rate,
            Kind::LocalOriginSuccessRate => {
                &s.outlier_detection_ejections_detected_local_origin_success_rate
            }
            Kind::FailurePercentage => &s.outlier_detection_ejections_detected_failure_percentage,
            Kind::LocalOriginFailurePercentage => {
                &s.outlier_detection_ejections_detected_local_origin_failure_percentage
            }
        }
        .inc();
    }

    fn enforced_counter(&self, kind: Kind) -> &crate::stats::StatCounter {
        let s = &self.stats;
        match kind {
            Kind::Consecutive5xx => &s.outlier_detection_ejections_enforced_consecutive_5xx,
            Kind::ConsecutiveGatewayFailure => {
                &s.outlier_detection_ejections_enforced_consecutive_gateway_failure
            }
            Kind::ConsecutiveLocalOriginFailure => {
                &s.outlier_detection_ejections_enforced_consecutive_local_origin_failure
            }
            Kind::SuccessRate => &s.outlier_detection_ejections_enforced_success_rate,
            Kind::LocalOriginSuccessRate => {
                &s.outlier_detection_ejections_enforced_local_origin_success_rate
            }
            Kind::FailurePercentage => &s.outlier_detection_ejections_enforced_failure_percentage,
            Kind::LocalOriginFailurePercentage => {
                &s.outlier_detection_ejections_enforced_local_origin_failure_percentage
            }
        }
    }

    /// One interval: return hosts whose time is up, start new success-rate buckets, eject
    /// success-rate and failure-percentage outliers, and lower the backoff of hosts that
    /// have stayed healthy.
    pub(crate) fn sweep(&self) {
        let Some(cluster) = self.cluster.upgrade() else {
            return;
        };
        let mut sweep = self.lock.lock();
        let now = Instant::now();
        let set = cluster.hosts();
        let hosts: Vec<&Arc<Host>> = set
            .hosts
            .iter()
            .filter(|h| h.outlier.belongs_to(self))
            .collect();
        let cfg = &self.config;
        let mut changed = false;
        for h in &hosts {
            let mut st = h.outlier.state.lock();
            if h.is_ejected()
                && let Some(at) = st.last_ejection
            {
                let out_for = (cfg.base_ejection_time * st.backoff).min(cfg.max_ejection_time);
                if now.saturating_duration_since(at) >= out_for + st.jitter {
                    h.outlier.set_ejected(false);
                    for k in [
                        Kind::Consecutive5xx,
                        Kind::ConsecutiveGatewayFailure,
                        Kind::ConsecutiveLocalOriginFailure,
                    ] {
                        h.outlier.reset_consecutive(k);
                    }
                    st.last_unejection = Some(now);
                    changed = true;
                    info!(host = %h.addr, "outlier detection: host returned");
                }
            }
            h.outlier.rotate_buckets(&mut st);
        }
        for origin in [Origin::External, Origin::Local] {
            let (numbers, ejected) = self.success_rate_ejections(&set.hosts, &hosts, origin, now);
            sweep.success_rate[origin as usize] = numbers;
            changed |= ejected;
        }
        for h in &hosts {
            if h.is_ejected() {
                continue;
            }
            let mut st = h.outlier.state.lock();
            if st
                .last_unejection
                .is_some_and(|t| now.saturating_duration_since(t) >= cfg.interval)
            {
                st.backoff = st.backoff.saturating_sub(1);
            }
        }
        drop(sweep);
        if changed {
            cluster.rebuild();
        } else {
            cluster.refresh_outlier_gauge();
        }
    }

    /// Envoy's `processSuccessRateEjections` for one origin. Returns the (mean, threshold)
    /// numbers and whether anything was ejected.
    fn success_rate_ejections(
        &self,
        all: &[Arc<Host>],
        hosts: &[&Arc<Host>],
        origin: Origin,
        now: Instant,
    ) -> ((f64, f64), bool) {
        let cfg = &self.config;
        let none = ((-1.0, -1.0), false);
        if (hosts.len() as u64) < u64::from(cfg.success_rate_minimum_hosts)
            && (hosts.len() as u64) < u64::from(cfg.failure_percentage_minimum_hosts)
        {
            return none;
        }
        let mut sr_hosts: Vec<(&Arc<Host>, f64)> = Vec::new();
        let mut fp_hosts: Vec<(&Arc<Host>, f64)> = Vec::new();
        for h in hosts.iter().filter(|h| !h.is_ejected()) {
            let mut st = h.outlier.state.lock();
            let (success, total) = st.last_interval[origin as usize];
            if total == 0 {
                continue;
            }
            let rate = success as f64 * 100.0 / total as f64;
            let volume_sr = u64::from(cfg.success_rate_request_volume);
            let volume_fp = u64::from(cfg.failure_percentage_request_volume);
            if total >= volume_sr.min(volume_fp) {
                st.success_rate[origin as usize] = rate;
            }
            if total >= volume_sr {
                sr_hosts.push((h, rate));
            }
            if total >= volume_fp {
                fp_hosts.push((h, rate));
            }
        }
        let mut numbers = (-1.0, -1.0);
        let mut ejected = false;
        if !sr_hosts.is_empty() && sr_hosts.len() >= cfg.success_rate_minimum_hosts as usize {
            let n = sr_hosts.len() as f64;
            let mean = sr_hosts.iter().map(|(_, r)| r).sum::<f64>() / n;
            let variance = sr_hosts
                .iter()
                .map(|(_, r)| (r - mean).powi(2))
                .sum::<f64>()
                / n;
            let threshold =
                mean - f64::from(cfg.success_rate_stdev_factor) / 1000.0 * variance.sqrt();
            numbers = (mean, threshold);
            let kind = match origin {
                Origin::External => Kind::SuccessRate,
                Origin::Local => Kind::LocalOriginSuccessRate,
            };
            for (h, rate) in &sr_hosts {
                if *rate < threshold && !h.is_ejected() {
                    self.detected(kind);
                    ejected |= self.eject(all, h, kind, now);
                }
            }
        }
        if !fp_hosts.is_empty() && fp_hosts.len() >= cfg.failure_percentage_minimum_hosts as usize {
            let kind = match origin {
                Origin::External => Kind::FailurePercentage,
                Origin::Local => Kind::LocalOriginFailurePercentage,
            };
            for (h, rate) in &fp_hosts {
                if 100.0 - rate >= f64::from(cfg.failure_percentage_threshold) && !h.is_ejected() {
                    self.detected(kind);
                    ejected |= self.eject(all, h, kind, now);
                }
            }
        }
        (numbers, ejected)
    }
}

#[cfg(test)]
mod tests;
