//! Load balancing over a cluster's hosts, as Envoy does it: pick a priority level by
//! health (overprovisioning factor, panic threshold), then a locality by weight when
//! locality-weighted balancing is on, then a host with the cluster's policy.
//!
//! Everything that depends on host membership and health is computed once per update
//! into an immutable [`HostSet`] (tables, rings, schedules); picking is lock-free and
//! allocation-free: an atomic cursor or a random number plus an index.

mod hash;
mod picker;

use std::{net::SocketAddr, sync::Arc};

pub use hash::{ring_hash_key, xxhash64};
pub use picker::Picker;

use super::Host;
use crate::config::{
    cluster::{Cluster as ClusterConfig, LbPolicy},
    endpoint::{HealthStatus, Locality},
};

/// What the caller knows about the request that the load balancer may use.
#[derive(Debug, Default, Clone, Copy)]
pub struct LbContext<'a> {
    /// The request's hash (route hash policy) for RING_HASH and MAGLEV; random when `None`.
    pub hash: Option<u64>,
    /// Hosts already tried by this request (retries); avoided when possible.
    pub avoid: &'a [SocketAddr],
    /// ORIGINAL_DST clusters: the destination to connect to (the connection's original
    /// destination, or the `x-envoy-original-dst-host` header when the cluster says so).
    pub original_dst: Option<SocketAddr>,
}

/// How many extra picks are made to avoid hosts a request already tried (Envoy's
/// `host_selection_retry_max_attempts` default is 1; we try a little harder).
const AVOID_ATTEMPTS: u32 = 3;

/// A snapshot of a cluster's hosts with the load-balancing tables built for them.
#[derive(Debug, Default)]
pub struct HostSet {
    /// All hosts, in priority order.
    pub hosts: Vec<Arc<Host>>,
    levels: Vec<Level>,
    /// Cumulative priority load in percent, per level (last = 100).
    priority_load: Vec<u32>,
    /// RING_HASH / MAGLEV: the request hash also selects the priority (as Envoy does).
    hashing: bool,
}

#[derive(Debug)]
struct Level {
    /// Whether the level is in panic (too few healthy hosts: all hosts are used).
    panic: bool,
    picker: Picker,
    /// Locality-weighted: a picker per locality and a weighted schedule over them.
    localities: Vec<Picker>,
    locality_schedule: Option<picker::Schedule>,
}

/// The hosts of one priority grouped by locality (with the locality's EDS weight).
pub struct LocalityGroup {
    pub locality: Arc<Locality>,
    pub weight: Option<u32>,
    pub hosts: Vec<Arc<Host>>,
}

impl HostSet {
    /// Builds the tables for `priorities[p]` = localities of priority `p`.
    pub fn build(
        cluster: &ClusterConfig,
        priorities: Vec<Vec<LocalityGroup>>,
        overprovisioning_factor: u32,
    ) -> HostSet {
        let mut hosts = Vec::new();
        let mut levels = Vec::with_capacity(priorities.len());
        let mut health = Vec::with_capacity(priorities.len());
        for groups in &priorities {
            let total: usize = groups.iter().map(|g| g.hosts.len()).sum();
            let healthy: usize = groups
                .iter()
                .map(|g| g.hosts.iter().filter(|h| h.is_healthy()).count())
                .sum();
            let degraded: usize = groups
                .iter()
                .map(|g| {
                    g.hosts
                        .iter()
                        .filter(|h| h.health() == HealthStatus::Degraded)
                        .count()
                })
                .sum();
            // Envoy: health = min(100, healthy% * overprovisioning factor).
            let pct = (healthy * overprovisioning_factor as usize)
                .checked_div(total)
                .unwrap_or(0);
            health.push(pct.min(100) as u32);
            let panic = total == 0
                || ((healthy + degraded) as f64 * 100.0 / total as f64)
                    < cluster.healthy_panic_threshold;
            levels.push(Level::build(
                cluster,
                groups,
                panic,
                overprovisioning_factor,
            ));
            hosts.extend(groups.iter().flat_map(|g| g.hosts.iter().cloned()));
        }
        let priority_load = priority_load(&health);
        let hashing = matches!(
            cluster.lb,
            LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. }
        );
        HostSet {
            hosts,
            levels,
            priority_load,
            hashing,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    pub fn healthy_count(&self) -> usize {
        self.hosts.iter().filter(|h| h.is_healthy()).count()
    }

    /// Picks a host, avoiding `ctx.avoid` when another host is available.
    pub fn pick(&self, ctx: &LbContext<'_>) -> Option<Arc<Host>> {
        let mut last = None;
        for attempt in 0..=AVOID_ATTEMPTS {
            let host = self.pick_once(ctx, attempt)?;
            if !ctx.avoid.contains(&host.addr) {
                return Some(host);
            }
            last = Some(host);
        }
        last
    }

    fn pick_once(&self, ctx: &LbContext<'_>, attempt: u32) -> Option<Arc<Host>> {
        let level = match self.levels.len() {
            0 => return None,
            1 => &self.levels[0],
            _ => {
                let hash = if self.hashing {
                    ctx.hash.unwrap_or_else(rand::random)
                } else {
                    rand::random()
                };
                let point = (hash % 100) as u32;
                let p = self
                    .priority_load
                    .iter()
                    .position(|&c| point < c)
                    .unwrap_or(0);
                &self.levels[p]
            }
        };
        if let Some(schedule) = &level.locality_schedule {
            let i = schedule.next();
            return level.localities.get(i)?.pick(ctx, attempt);
        }
        level.picker.pick(ctx, attempt)
    }

    /// Whether priority `p` is in panic mode (for `/clusters` and tests).
    pub fn in_panic(&self, p: usize) -> bool {
        self.levels.get(p).is_some_and(|l| l.panic)
    }
}

impl Level {
    fn build(
        cluster: &ClusterConfig,
        groups: &[LocalityGroup],
        panic: bool,
        overprovisioning_factor: u32,
    ) -> Level {
        let usable = |g: &LocalityGroup| -> Vec<Arc<Host>> {
            if panic {
                g.hosts.clone()
            } else {
                g.hosts
                    .iter()
                    .filter(|h| h.health() != HealthStatus::Unhealthy)
                    .cloned()
                    .collect()
            }
        };
        let hashing = matches!(
            cluster.lb,
            LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. }
        );
        if cluster.locality_weighted && !hashing {
            // Effective locality weight: EDS weight scaled by the locality's availability.
            let mut localities = Vec::new();
            let mut weights = Vec::new();
            for g in groups {
                let Some(w) = g.weight else { continue };
                let hosts = usable(g);
                let healthy = g.hosts.iter().filter(|h| h.is_healthy()).count();
                let avail = if g.hosts.is_empty() {
                    0.0
                } else {
                    (healthy as f64 / g.hosts.len() as f64 * overprovisioning_factor as f64 / 100.0)
                        .min(1.0)
                };
                let eff = (f64::from(w) * if panic { 1.0 } else { avail }).round() as u64;
                if hosts.is_empty() || eff == 0 {
                    continue;
                }
                localities.push(Picker::build(&cluster.lb, hosts, None));
                weights.push(eff);
            }
            if !localities.is_empty() {
                let schedule = picker::Schedule::new(&weights);
                let all: Vec<Arc<Host>> = groups.iter().flat_map(usable).collect();
                return Level {
                    panic,
                    picker: Picker::build(&cluster.lb, all, None),
                    localities,
                    locality_schedule: Some(schedule),
                };
            }
        }
        let hosts: Vec<Arc<Host>> = groups.iter().flat_map(usable).collect();
        // Hash-based policies fold locality weights into the host weights, as Envoy does.
        let locality_weights = (cluster.locality_weighted && hashing).then(|| {
            let total: u64 = groups
                .iter()
                .filter(|g| !usable(g).is_empty())
                .filter_map(|g| g.weight.map(u64::from))
                .sum();
            groups
                .iter()
                .flat_map(|g| {
                    let n = usable(g).len();
                    let w = g
                        .weight
                        .map(|w| w as f64 / total.max(1) as f64)
                        .unwrap_or(0.0);
                    std::iter::repeat_n(w, n)
                })
                .collect::<Vec<f64>>()
        });
        Level {
            panic,
            picker: Picker::build(&cluster.lb, hosts, locality_weights.as_deref()),
            localities: Vec::new(),
            locality_schedule: None,
        }
    }
}

/// Envoy's priority load: each level takes up to its health, in order, normalised so the
/// total is 100 when the sum of health is below 100. Returned cumulative.
fn priority_load(health: &[u32]) -> Vec<u32> {
    let total: u32 = health.iter().sum::<u32>().min(100);
    let mut cumulative = Vec::with_capacity(health.len());
    if total == 0 {
        // Nothing healthy anywhere: everything to P0 (which is then in panic).
        cumulative.extend(std::iter::repeat_n(100, health.len()));
        return cumulative;
    }
    let mut remaining = 100u32;
    let mut acc = 0;
    for &h in health {
        let load = (h * 100 / total).min(remaining);
        remaining -= load;
        acc += load;
        cumulative.push(acc);
    }
    // Rounding leftovers go to the first level with load, like Envoy.
    if remaining > 0
        && let Some(first) = health.iter().position(|&h| h > 0)
    {
        for c in &mut cumulative[first..] {
            *c += remaining;
        }
    }
    cumulative
}

#[cfg(test)]
mod tests;
