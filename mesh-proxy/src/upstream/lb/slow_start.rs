//! Slow start (Envoy's `slow_start_config`) for round robin and least request: a host that
//! joined an initialized cluster less than `window` ago gets
//! `weight x max(min_weight, (t / window) ^ (1 / aggression))`.
//!
//! While any host of a [`super::HostSet`] is warming, picks draw a random host in
//! proportion to these weights (least request: divided by `(active + 1) ^ bias`, Envoy's
//! weighted least-request formula), computed at pick time because they change with every
//! millisecond. Once the last window ends the precomputed tables take over again.

use std::sync::Arc;

use tokio::time::Instant;

use super::Picker;
use crate::{
    config::cluster::{Cluster as ClusterConfig, LbPolicy, SlowStart},
    upstream::Host,
};

/// Slow start state of a host set with hosts still warming.
#[derive(Debug)]
pub(super) struct Warmup {
    config: SlowStart,
    /// When the last host's window ends.
    until: Instant,
}

impl Warmup {
    /// `Some` when the cluster has slow start and a host of `hosts` is inside its window.
    pub fn new(cluster: &ClusterConfig, hosts: &[Arc<Host>], now: Instant) -> Option<Warmup> {
        let config = cluster.slow_start?;
        if !matches!(
            cluster.lb,
            LbPolicy::RoundRobin | LbPolicy::LeastRequest { .. }
        ) {
            return None;
        }
        let until = hosts
            .iter()
            .filter_map(|h| h.warming_since)
            .map(|t| t + config.window)
            .max()
            .filter(|&u| u > now)?;
        Some(Warmup { config, until })
    }

    pub fn active(&self, now: Instant) -> bool {
        now < self.until
    }

    /// The slow start factor of `host` at `now` (1 outside its window).
    pub fn factor(&self, host: &Host, now: Instant) -> f64 {
        let Some(since) = host.warming_since else {
            return 1.0;
        };
        let elapsed = now.saturating_duration_since(since);
        if elapsed >= self.config.window {
            return 1.0;
        }
        // Envoy counts at least 1 ms so a brand-new host is not at zero.
        let t = elapsed.as_millis().max(1) as f64 / self.config.window.as_millis().max(1) as f64;
        let curve = if self.config.aggression == 1.0 {
            t
        } else {
            t.powf(1.0 / self.config.aggression)
        };
        curve.max(self.config.min_weight)
    }

    /// A weighted random pick over `picker`'s hosts (`None` for other policies, which do
    /// not warm up).
    pub fn pick(&self, picker: &Picker) -> Option<Arc<Host>> {
        let now = Instant::now();
        let (hosts, bias) = match picker {
            Picker::RoundRobin { hosts, .. } => (hosts, None),
            Picker::LeastRequest { hosts, bias, .. } => (hosts, Some(*bias)),
            _ => return None,
        };
        let weight = |h: &Host| {
            let w = f64::from(h.weight) * self.factor(h, now);
            match bias {
                Some(b) => w / (h.active_requests() as f64 + 1.0).powf(b),
                None => w,
            }
        };
        let total: f64 = hosts.iter().map(|h| weight(h)).sum();
        if total <= 0.0 || hosts.is_empty() {
            return None;
        }
        let mut point = rand::random::<f64>() * total;
        for h in hosts {
            point -= weight(h);
            if point < 0.0 {
                return Some(h.clone());
            }
        }
        hosts.last().cloned()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config(aggression: f64) -> ClusterConfig {
        ClusterConfig {
            lb: LbPolicy::RoundRobin,
            slow_start: Some(SlowStart {
                window: Duration::from_secs(10),
                aggression,
                min_weight: 0.1,
            }),
            ..ClusterConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn factor_ramps_linearly_with_a_floor() {
        let now = Instant::now();
        let new = Arc::new(Host::new("10.0.0.1:80".parse().unwrap()).warming_from(now));
        let old = Arc::new(Host::new("10.0.0.2:80".parse().unwrap()));
        let w = Warmup::new(&config(1.0), &[new.clone(), old.clone()], now).unwrap();
        assert_eq!(w.factor(&old, now), 1.0);
        assert_eq!(w.factor(&new, now), 0.1, "min_weight floor");
        assert!((w.factor(&new, now + Duration::from_secs(5)) - 0.5).abs() < 1e-9);
        assert_eq!(w.factor(&new, now + Duration::from_secs(10)), 1.0);
        assert!(!w.active(now + Duration::from_secs(10)));
        // aggression 2: sqrt curve, faster at first.
        let w2 = Warmup::new(&config(2.0), std::slice::from_ref(&new), now).unwrap();
        assert!((w2.factor(&new, now + Duration::from_millis(2500)) - 0.5).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn no_warmup_without_new_hosts_or_for_hash_policies() {
        let now = Instant::now();
        let old = Arc::new(Host::new("10.0.0.2:80".parse().unwrap()));
        assert!(Warmup::new(&config(1.0), &[old], now).is_none());
        let new = Arc::new(Host::new("10.0.0.1:80".parse().unwrap()).warming_from(now));
        let maglev = ClusterConfig {
            lb: LbPolicy::Maglev {
                table_size: 65537,
                use_hostname: false,
            },
            ..config(1.0)
        };
        assert!(Warmup::new(&maglev, &[new], now).is_none());
    }
}
