//! What one load run measured, in the same shape whichever generator produced it (oha,
//! h2load, or the bench's own TCP and gRPC clients), and percentiles over raw samples.

use serde::{Deserialize, Serialize};

/// One load run. Latencies in milliseconds; `None` where the generator does not report
/// them (h2load's maximum-throughput runs report only the rate).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Requests (or TCP round trips) that completed successfully.
    pub ok: u64,
    /// Requests that failed (connection errors, non-2xx, gRPC status other than OK).
    pub errors: u64,
    /// Wall time of the run.
    pub seconds: f64,
    /// Successful requests per second.
    pub rps: f64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
}

/// Latency samples in microseconds, measured from the moment a request was due (open
/// loop: a late send counts against the system, not the generator).
#[derive(Debug, Default)]
pub struct Samples {
    us: Vec<u64>,
    pub errors: u64,
}

impl Samples {
    pub fn with_capacity(n: usize) -> Self {
        Samples {
            us: Vec::with_capacity(n),
            errors: 0,
        }
    }

    pub fn record(&mut self, us: u64) {
        self.us.push(us);
    }

    pub fn merge(&mut self, other: Samples) {
        self.us.extend(other.us);
        self.errors += other.errors;
    }

    /// The summary over a run of `seconds`; `latencies` false for closed-loop runs, whose
    /// latencies say nothing about the proxies (they only measure the queue the
    /// generator itself keeps full).
    pub fn summary(mut self, seconds: f64, latencies: bool) -> Summary {
        self.us.sort_unstable();
        let ok = self.us.len() as u64;
        let pct = |p: f64| latencies.then(|| percentile(&self.us, p)).flatten();
        Summary {
            ok,
            errors: self.errors,
            seconds,
            rps: if seconds > 0.0 {
                ok as f64 / seconds
            } else {
                0.0
            },
            p50_ms: pct(50.0),
            p90_ms: pct(90.0),
            p99_ms: pct(99.0),
            p999_ms: pct(99.9),
        }
    }
}

/// Nearest-rank percentile of sorted samples (µs), in ms.
fn percentile(sorted_us: &[u64], p: f64) -> Option<f64> {
    if sorted_us.is_empty() {
        return None;
    }
    // The epsilon keeps float error (0.999 * 1000 = 999.0000000000001) off the next rank.
    let rank = ((p / 100.0) * sorted_us.len() as f64 - 1e-9).ceil() as usize;
    let i = rank.clamp(1, sorted_us.len()) - 1;
    Some(sorted_us[i] as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut s = Samples::with_capacity(1000);
        for us in 1..=1000 {
            s.record(us * 10);
        }
        s.errors = 2;
        let sum = s.summary(2.0, true);
        assert_eq!(sum.ok, 1000);
        assert_eq!(sum.errors, 2);
        assert_eq!(sum.rps, 500.0);
        assert_eq!(sum.p50_ms, Some(5.0));
        assert_eq!(sum.p90_ms, Some(9.0));
        assert_eq!(sum.p99_ms, Some(9.9));
        assert_eq!(sum.p999_ms, Some(9.99));
        let closed = Samples::default().summary(1.0, false);
        assert_eq!(closed.p50_ms, None);
    }
}
