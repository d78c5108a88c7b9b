//! Load balancing over a cluster's hosts, as Envoy does it: pick a priority level and
//! whether to use its healthy or its degraded hosts from the per-priority loads (health
//! scaled by the overprovisioning factor, spilling to the next priority as a level loses
//! hosts; panic mode uses every host of a level), then a locality by effective weight when
//! locality-weighted balancing is on, then a host with the cluster's policy.
//!
//! Health here is the load-balancing health: EDS health, and unhealthy while outlier
//! detection has the host ejected. Everything that depends on membership and health is
//! computed once per change into an immutable [`HostSet`] (tables, rings, schedules);
//! picking is lock-free and allocation-free: an atomic cursor or a random number plus an
//! index. Slow start is the exception: while a new host warms up, round robin and least
//! request pick by weights computed at pick time.

mod hash;
mod picker;
mod slow_start;

use std::{net::SocketAddr, sync::Arc};

use tokio::time::Instant;

pub use hash::{ring_hash_key, xxhash64};
pub use picker::Picker;
use slow_start::Warmup;

use super::Host;
use crate::config::{
    cluster::{Cluster as ClusterConfig, LbPolicy},
    endpoint::{DEFAULT_OVERPROVISIONING_FACTOR, HealthStatus, Locality},
};
use crate::stats::ClusterStats;

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

/// The hosts of one priority grouped by locality (with the locality's EDS weight).
#[derive(Debug, Clone)]
pub struct LocalityGroup {
    pub locality: Arc<Locality>,
    pub weight: Option<u32>,
    pub hosts: Vec<Arc<Host>>,
}

/// A cluster's endpoints as the last assignment grouped them: `priorities[p]` are the
/// localities of priority `p`.
#[derive(Debug, Clone)]
pub struct Membership {
    pub priorities: Vec<Vec<LocalityGroup>>,
    /// Percent (140 = Envoy's 1.4).
    pub overprovisioning_factor: u32,
    /// Level health from host weights rather than host counts.
    pub weighted_priority_health: bool,
}

impl Default for Membership {
    fn default() -> Self {
        Membership {
            priorities: Vec::new(),
            overprovisioning_factor: DEFAULT_OVERPROVISIONING_FACTOR,
            weighted_priority_health: false,
        }
    }
}

impl Membership {
    pub fn new(priorities: Vec<Vec<LocalityGroup>>, overprovisioning_factor: u32) -> Self {
        Membership {
            priorities,
            overprovisioning_factor,
            weighted_priority_health: false,
        }
    }

    pub fn hosts(&self) -> impl Iterator<Item = &Arc<Host>> {
        self.priorities
            .iter()
            .flatten()
            .flat_map(|g| g.hosts.iter())
    }
}

/// Which hosts of a level a pick draws from (Envoy's `HostAvailability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Availability {
    Healthy,
    Degraded,
}

/// A snapshot of a cluster's hosts with the load-balancing tables built for them.
#[derive(Debug, Default)]
pub struct HostSet {
    /// All hosts, in priority order.
    pub hosts: Vec<Arc<Host>>,
    levels: Vec<Level>,
    /// Percent of traffic per level to its healthy hosts, then to its degraded hosts;
    /// together they sum to 100.
    healthy_load: Vec<u32>,
    degraded_load: Vec<u32>,
    /// RING_HASH / MAGLEV: the request hash also selects the priority (as Envoy does).
    hashing: bool,
    /// Round robin and least request with hosts still in their slow start window.
    warmup: Option<Warmup>,
    /// The cluster's stats: `lb_healthy_panic` counts picks made in a level in panic.
    stats: ClusterStats,
}

#[derive(Debug, Default)]
struct Level {
    /// Too few healthy hosts: every host of the level is used.
    panic: bool,
    /// Every host (built only for a level in panic).
    all: Source,
    healthy: Source,
    /// Degraded hosts (not used by the hash-based policies, as in Envoy).
    degraded: Source,
}

/// Hosts to pick from, optionally split by locality with a weighted locality schedule.
#[derive(Debug, Default)]
struct Source {
    picker: Picker,
    localities: Option<(Vec<Picker>, picker::Schedule)>,
}

impl Source {
    fn pick(
        &self,
        ctx: &LbContext<'_>,
        attempt: u32,
        warmup: Option<&Warmup>,
    ) -> Option<Arc<Host>> {
        let picker = match &self.localities {
            Some((pickers, schedule)) => pickers.get(schedule.next())?,
            None => &self.picker,
        };
        if let Some(w) = warmup
            && let Some(h) = w.pick(picker)
        {
            return Some(h);
        }
        picker.pick(ctx, attempt)
    }
}

/// Per-level counts (or weights) of healthy and degraded hosts.
struct LevelHealth {
    total: u64,
    healthy: u64,
    degraded: u64,
}

impl HostSet {
    /// Builds the tables for `m`.
    pub fn build(cluster: &ClusterConfig, m: &Membership) -> HostSet {
        let opf = u64::from(m.overprovisioning_factor);
        let threshold = cluster.healthy_panic_threshold.min(100.0);
        let hashing = matches!(
            cluster.lb,
            LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. }
        );
        // Availability per level: min(100, factor x healthy / total), by counts or weights.
        let mut health = Vec::with_capacity(m.priorities.len());
        let mut degraded = Vec::with_capacity(m.priorities.len());
        let mut counts = Vec::with_capacity(m.priorities.len());
        for groups in &m.priorities {
            let by_count = level_health(groups, |_| 1);
            let by_weight = if m.weighted_priority_health {
                level_health(groups, |h| u64::from(h.weight))
            } else {
                level_health(groups, |_| 1)
            };
            let pct = |n: u64| (opf * n).checked_div(by_weight.total).unwrap_or(0).min(100) as u32;
            health.push(pct(by_weight.healthy));
            degraded.push(pct(by_weight.degraded));
            counts.push(by_count);
        }
        let total_availability: u32 = health
            .iter()
            .zip(&degraded)
            .map(|(h, d)| h + d)
            .sum::<u32>()
            .min(100);
        let (mut healthy_load, mut degraded_load) =
            distribute(&health, &degraded, total_availability);

        // Panic: a level whose healthy + degraded share is under the threshold uses all of
        // its hosts; never when the whole cluster is fully available.
        let mut panic: Vec<bool> = counts
            .iter()
            .map(|c| {
                total_availability < 100
                    && (c.total == 0
                        || ((c.healthy + c.degraded) as f64 * 100.0 / c.total as f64) < threshold)
            })
            .collect();
        if threshold <= 0.0 && total_availability == 0 {
            // Panic disabled and nothing available: all load to P0, which has no host.
            panic.iter_mut().for_each(|p| *p = false);
            healthy_load.iter_mut().for_each(|l| *l = 0);
            degraded_load.iter_mut().for_each(|l| *l = 0);
            if let Some(first) = healthy_load.first_mut() {
                *first = 100;
            }
        } else if !panic.is_empty() && panic.iter().all(|p| *p) {
            // Total panic: load by host count, health ignored.
            healthy_load = total_panic_load(&counts);
            degraded_load.iter_mut().for_each(|l| *l = 0);
        }

        let mut levels = Vec::with_capacity(m.priorities.len());
        let mut hosts = Vec::new();
        for (groups, &panic) in m.priorities.iter().zip(&panic) {
            levels.push(Level::build(
                cluster,
                groups,
                panic,
                m.overprovisioning_factor,
                hashing,
            ));
            hosts.extend(groups.iter().flat_map(|g| g.hosts.iter().cloned()));
        }
        let warmup = Warmup::new(cluster, &hosts, Instant::now());
        HostSet {
            hosts,
            levels,
            healthy_load,
            degraded_load,
            hashing,
            warmup,
            stats: ClusterStats::default(),
        }
    }

    /// Counts picks made in panic mode in the cluster's `lb_healthy_panic`.
    #[must_use]
    pub fn with_stats(mut self, stats: ClusterStats) -> Self {
        self.stats = stats;
        self
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Hosts the load balancer considers healthy (EDS healthy and not ejected).
    pub fn healthy_count(&self) -> usize {
        self.hosts.iter().filter(|h| h.is_healthy()).count()
    }

    /// Hosts ejected by outlier detection.
    pub fn ejected_count(&self) -> usize {
        self.hosts.iter().filter(|h| h.is_ejected()).count()
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
        let (level, availability) = self.choose_level(ctx)?;
        let warmup = self.warmup.as_ref().filter(|w| w.active(Instant::now()));
        if level.panic {
            self.stats.lb_healthy_panic.inc();
            return level.all.pick(ctx, attempt, warmup);
        }
        match availability {
            Availability::Healthy => level.healthy.pick(ctx, attempt, warmup),
            Availability::Degraded => level.degraded.pick(ctx, attempt, warmup),
        }
    }

    /// Envoy's `choosePriority`: a point in 1..=100 walks the healthy loads, then the
    /// degraded loads.
    fn choose_level(&self, ctx: &LbContext<'_>) -> Option<(&Level, Availability)> {
        if self.levels.len() == 1 && self.healthy_load[0] == 100 {
            return Some((&self.levels[0], Availability::Healthy));
        }
        let first = self.levels.first()?;
        let hash = if self.hashing {
            ctx.hash.unwrap_or_else(rand::random)
        } else {
            rand::random()
        };
        let point = (hash % 100) as u32 + 1;
        let mut acc = 0;
        for (level, load) in self.levels.iter().zip(&self.healthy_load) {
            acc += load;
            if point <= acc {
                return Some((level, Availability::Healthy));
            }
        }
        for (level, load) in self.levels.iter().zip(&self.degraded_load) {
            acc += load;
            if point <= acc {
                // The hash-based policies only ever build rings of healthy hosts.
                let a = if self.hashing {
                    Availability::Healthy
                } else {
                    Availability::Degraded
                };
                return Some((level, a));
            }
        }
        Some((first, Availability::Healthy))
    }

    /// Whether priority `p` is in panic mode (for `/clusters` and tests).
    pub fn in_panic(&self, p: usize) -> bool {
        self.levels.get(p).is_some_and(|l| l.panic)
    }

    /// Percent of traffic to the healthy and to the degraded hosts of priority `p`.
    pub fn priority_load(&self, p: usize) -> (u32, u32) {
        (
            self.healthy_load.get(p).copied().unwrap_or(0),
            self.degraded_load.get(p).copied().unwrap_or(0),
        )
    }
}

fn level_health(groups: &[LocalityGroup], weight: impl Fn(&Host) -> u64) -> LevelHealth {
    let mut out = LevelHealth {
        total: 0,
        healthy: 0,
        degraded: 0,
    };
    for h in groups.iter().flat_map(|g| g.hosts.iter()) {
        let w = weight(h);
        out.total += w;
        match h.lb_health() {
            HealthStatus::Healthy => out.healthy += w,
            HealthStatus::Degraded => out.degraded += w,
            HealthStatus::Unhealthy => {}
        }
    }
    out
}

/// Envoy's `recalculatePerPriorityState`: 100% shared out by healthy availability, what is
/// left by degraded availability, rounding leftovers to the first available level.
fn distribute(health: &[u32], degraded: &[u32], total: u32) -> (Vec<u32>, Vec<u32>) {
    let mut healthy_load = vec![0; health.len()];
    let mut degraded_load = vec![0; health.len()];
    if total == 0 {
        return (healthy_load, degraded_load);
    }
    let share = |load: &mut [u32], avail: &[u32], mut remaining: u32| {
        let mut first = None;
        for (i, &a) in avail.iter().enumerate() {
            if first.is_none() && a > 0 {
                first = Some(i);
            }
            load[i] = remaining.min(a * 100 / total);
            remaining -= load[i];
        }
        (first, remaining)
    };
    let (first_healthy, left) = share(&mut healthy_load, health, 100);
    let (first_degraded, left) = share(&mut degraded_load, degraded, left);
    if left > 0 {
        if let Some(i) = first_healthy {
            healthy_load[i] += left;
        } else if let Some(i) = first_degraded {
            degraded_load[i] += left;
        }
    }
    (healthy_load, degraded_load)
}

/// Envoy's `recalculateLoadInTotalPanic`: load by host count, leftovers to the first
/// non-empty level.
fn total_panic_load(counts: &[LevelHealth]) -> Vec<u32> {
    let total: u64 = counts.iter().map(|c| c.total).sum();
    let mut load = vec![0u32; counts.len()];
    if total == 0 {
        if let Some(first) = load.first_mut() {
            *first = 100;
        }
        return load;
    }
    let mut left = 100;
    for (l, c) in load.iter_mut().zip(counts) {
        *l = (100 * c.total / total) as u32;
        left -= *l;
    }
    if let Some(i) = counts.iter().position(|c| c.total > 0) {
        load[i] += left;
    }
    load
}

impl Level {
    fn build(
        cluster: &ClusterConfig,
        groups: &[LocalityGroup],
        panic: bool,
        overprovisioning_factor: u32,
        hashing: bool,
    ) -> Level {
        let select = |want: Option<HealthStatus>| -> Vec<Vec<Arc<Host>>> {
            groups
                .iter()
                .map(|g| {
                    g.hosts
                        .iter()
                        .filter(|h| want.is_none_or(|w| h.lb_health() == w))
                        .cloned()
                        .collect()
                })
                .collect()
        };
        if panic {
            // Panic ignores localities (Envoy: all hosts of the level).
            let all: Vec<Arc<Host>> = groups
                .iter()
                .flat_map(|g| g.hosts.iter().cloned())
                .collect();
            return Level {
                panic,
                all: Source {
                    picker: Picker::build(&cluster.lb, all, None),
                    localities: None,
                },
                ..Level::default()
            };
        }
        let healthy = select(Some(HealthStatus::Healthy));
        let degraded = if hashing {
            Vec::new()
        } else {
            select(Some(HealthStatus::Degraded))
        };
        Level {
            panic,
            all: Source::default(),
            healthy: Source::build(cluster, groups, healthy, overprovisioning_factor, hashing),
            degraded: Source::build(cluster, groups, degraded, overprovisioning_factor, hashing),
        }
    }
}

impl Source {
    /// `eligible[i]`: the hosts of `groups[i]` this source may use.
    fn build(
        cluster: &ClusterConfig,
        groups: &[LocalityGroup],
        eligible: Vec<Vec<Arc<Host>>>,
        overprovisioning_factor: u32,
        hashing: bool,
    ) -> Source {
        if eligible.iter().all(Vec::is_empty) {
            return Source::default();
        }
        if cluster.locality_weighted && !hashing {
            // Envoy's effective locality weight: EDS weight x min(1, factor x eligible /
            // all hosts of the locality). Scaled to keep fractions in the integer schedule.
            let mut pickers = Vec::new();
            let mut weights = Vec::new();
            for (g, hosts) in groups.iter().zip(&eligible) {
                let Some(w) = g.weight else { continue };
                if hosts.is_empty() || g.hosts.is_empty() {
                    continue;
                }
                let avail = (hosts.len() as f64 / g.hosts.len() as f64
                    * f64::from(overprovisioning_factor)
                    / 100.0)
                    .min(1.0);
                let eff = (f64::from(w) * avail * 1000.0).round() as u64;
                if eff == 0 {
                    continue;
                }
                pickers.push(Picker::build(&cluster.lb, hosts.clone(), None));
                weights.push(eff);
            }
            let all: Vec<Arc<Host>> = eligible.into_iter().flatten().collect();
            let picker = Picker::build(&cluster.lb, all, None);
            if pickers.is_empty() {
                // No locality has weight: Envoy falls back to all eligible hosts.
                return Source {
                    picker,
                    localities: None,
                };
            }
            return Source {
                picker,
                localities: Some((pickers, picker::Schedule::new(&weights))),
            };
        }
        // Hash-based policies fold locality weights into the host weights, as Envoy does.
        let locality_weights = (cluster.locality_weighted && hashing).then(|| {
            let total: u64 = groups
                .iter()
                .zip(&eligible)
                .filter(|(_, e)| !e.is_empty())
                .filter_map(|(g, _)| g.weight.map(u64::from))
                .sum();
            groups
                .iter()
                .zip(&eligible)
                .flat_map(|(g, e)| {
                    let w = g
                        .weight
                        .map(|w| w as f64 / total.max(1) as f64)
                        .unwrap_or(0.0);
                    std::iter::repeat_n(w, e.len())
                })
                .collect::<Vec<f64>>()
        });
        let hosts: Vec<Arc<Host>> = eligible.into_iter().flatten().collect();
        Source {
            picker: Picker::build(&cluster.lb, hosts, locality_weights.as_deref()),
            localities: None,
        }
    }
}

#[cfg(test)]
mod tests;
