//! The per-host half of outlier detection (Envoy's `DetectorHostMonitorImpl`): lock-free
//! counters the data path bumps on every result, and the ejection state the detector
//! reads and writes on its sweeps (behind a mutex that is never held across an await).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{Detector, Kind};
use crate::upstream::Host;

/// The result of one request or connection attempt, as Envoy's outlier detector takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered with this HTTP status (gRPC: `grpc-status` mapped to HTTP).
    Status(u16),
    /// A connection (or, for HTTP, a stream on one) was established; the protocol's
    /// result follows (`LOCAL_ORIGIN_CONNECT_SUCCESS`).
    ConnectSuccess,
    /// Connected and nothing else will be reported (tcp_proxy,
    /// `LOCAL_ORIGIN_CONNECT_SUCCESS_FINAL`).
    ConnectSuccessFinal,
    /// The connection failed, or was reset before a response (`LOCAL_ORIGIN_CONNECT_FAILED`).
    ConnectFailed,
    /// A connect timeout or a request timeout (`LOCAL_ORIGIN_TIMEOUT`).
    Timeout,
    /// Connected, but the transaction failed at the upstream (`EXT_ORIGIN_REQUEST_FAILED`).
    RequestFailed,
}

/// Success and total counts of the interval being filled.
#[derive(Debug, Default)]
struct Bucket {
    success: AtomicU64,
    total: AtomicU64,
}

impl Bucket {
    fn add(&self, success: bool) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if success {
            self.success.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes the counts and starts a new interval.
    fn take(&self) -> (u64, u64) {
        (
            self.success.swap(0, Ordering::Relaxed),
            self.total.swap(0, Ordering::Relaxed),
        )
    }
}

/// Ejection bookkeeping, changed only by the detector.
#[derive(Debug, Default)]
pub(super) struct EjectionState {
    pub num_ejections: u32,
    /// Multiplier of `base_ejection_time`: up by one per ejection (bounded), down by one
    /// per sweep the host spends healthy after its return.
    pub backoff: u32,
    pub last_ejection: Option<Instant>,
    pub last_unejection: Option<Instant>,
    pub jitter: Duration,
    /// `(success, total)` of the last complete interval: external, local origin.
    pub last_interval: [(u64, u64); 2],
    /// Success rates computed on the last sweep (-1 when not computed), for `/clusters`.
    pub success_rate: [f64; 2],
}

/// Outlier state of one host.
#[derive(Debug)]
pub struct Monitor {
    /// The detector of the newest cluster the host belongs to (`None`: no detection).
    detector: ArcSwapOption<Detector>,
    /// Generation of the cluster that attached the detector, so an older cluster still
    /// alive for its in-flight connections never takes the host back.
    generation: AtomicU64,
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    external: Bucket,
    local: Bucket,
    ejected: AtomicBool,
    pub(super) state: Mutex<EjectionState>,
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor {
            detector: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            consecutive_local: AtomicU32::new(0),
            external: Bucket::default(),
            local: Bucket::default(),
            ejected: AtomicBool::new(false),
            state: Mutex::new(EjectionState {
                success_rate: [-1.0, -1.0],
                ..EjectionState::default()
            }),
        }
    }
}

/// Clears a counter without dirtying the cache line when it is already zero (the common
/// case: every successful response resets the counters).
fn reset(c: &AtomicU32) {
    if c.load(Ordering::Relaxed) != 0 {
        c.store(0, Ordering::Relaxed);
    }
}

/// Adds one and says whether the count just reached `threshold` (fires once per run).
fn bump(c: &AtomicU32, threshold: u32) -> bool {
    c.fetch_add(1, Ordering::Relaxed).wrapping_add(1) == threshold
}

impl Monitor {
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Attaches the detector of a cluster of generation `generation` (or detaches, with
    /// `None`, clearing any ejection), unless a newer cluster already owns the host.
    pub(crate) fn attach(&self, detector: Option<&Arc<Detector>>, generation: u64) -> bool {
        if self.generation.fetch_max(generation, Ordering::AcqRel) > generation {
            return false;
        }
        let same = match (self.detector.load().as_ref(), detector) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.detector.store(detector.cloned());
            if detector.is_none() {
                self.ejected.store(false, Ordering::Relaxed);
            }
        }
        true
    }

    pub(crate) fn success_rates(&self) -> [f64; 2] {
        self.state.lock().success_rate
    }

    /// Whether `detector` is the one this host reports to.
    pub(super) fn belongs_to(&self, detector: &Detector) -> bool {
        self.detector
            .load()
            .as_ref()
            .is_some_and(|d| std::ptr::eq(Arc::as_ptr(d), detector))
    }

    pub(crate) fn set_ejected(&self, ejected: bool) {
        self.ejected.store(ejected, Ordering::Relaxed);
    }

    pub(super) fn reset_consecutive(&self, kind: Kind) {
        match kind {
            Kind::Consecutive5xx => reset(&self.consecutive_5xx),
            Kind::ConsecutiveGatewayFailure => reset(&self.consecutive_gateway),
            Kind::ConsecutiveLocalOriginFailure => reset(&self.consecutive_local),
            _ => {}
        }
    }

    /// Starts a new success-rate interval; the finished one is kept for the sweep.
    pub(super) fn rotate_buckets(&self, state: &mut EjectionState) {
        state.last_interval = [self.external.take(), self.local.take()];
        state.success_rate = [-1.0, -1.0];
    }

    pub(crate) fn report(&self, host: &Host, outcome: Outcome) {
        let guard = self.detector.load();
        let Some(detector) = guard.as_ref() else {
            return;
        };
        if detector.config.split_external_local_origin_errors {
            match outcome {
                Outcome::ConnectSuccess | Outcome::ConnectSuccessFinal => {
                    self.local.add(true);
                    reset(&self.consecutive_local);
                }
                Outcome::ConnectFailed | Outcome::Timeout => {
                    self.local.add(false);
                    if bump(
                        &self.consecutive_local,
                        detector.config.consecutive_local_origin_failure,
                    ) {
                        detector.on_consecutive(host, Kind::ConsecutiveLocalOriginFailure);
                    }
                }
                Outcome::RequestFailed => self.http_status(host, detector, 503),
                Outcome::Status(code) => self.http_status(host, detector, code),
            }
        } else {
            // Everything counts as an HTTP status (Envoy's resultToHttpCode); a connect
            // success is not a result of its own: the protocol's status follows.
            let code = match outcome {
                Outcome::Status(code) => code,
                Outcome::ConnectSuccess => return,
                Outcome::ConnectSuccessFinal => 200,
                Outcome::ConnectFailed => 503,
                Outcome::Timeout => 504,
                Outcome::RequestFailed => 500,
            };
            self.http_status(host, detector, code);
        }
    }

    fn http_status(&self, host: &Host, detector: &Detector, code: u16) {
        let cfg = &detector.config;
        if (500..600).contains(&code) {
            self.external.add(false);
            if matches!(code, 502..=504) {
                if bump(&self.consecutive_gateway, cfg.consecutive_gateway_failure) {
                    detector.on_consecutive(host, Kind::ConsecutiveGatewayFailure);
                }
            } else {
                reset(&self.consecutive_gateway);
            }
            if bump(&self.consecutive_5xx, cfg.consecutive_5xx) {
                detector.on_consecutive(host, Kind::Consecutive5xx);
            }
        } else {
            self.external.add(true);
            reset(&self.consecutive_5xx);
            reset(&self.consecutive_gateway);
        }
    }
}
