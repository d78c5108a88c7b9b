//! Host pickers for one list of hosts: round robin (weighted by a precomputed smooth
//! schedule), least request (power of N choices), random, ring hash and maglev (built
//! exactly as Envoy builds them, so a hash key picks the same host).

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use super::{
    LbContext,
    hash::{ring_hash_key, xxhash64},
};
use crate::{config::cluster::LbPolicy, upstream::Host};

/// Schedules longer than this are scaled down (weights keep their proportions roughly).
const MAX_SCHEDULE: u64 = 16 * 1024;

/// A deterministic weighted rotation: a smooth weighted round-robin sequence of indexes
/// computed once, walked by an atomic cursor.
#[derive(Debug)]
pub struct Schedule {
    seq: Vec<u32>,
    cursor: AtomicUsize,
}

impl Schedule {
    pub fn new(weights: &[u64]) -> Schedule {
        let g = weights
            .iter()
            .copied()
            .filter(|w| *w > 0)
            .fold(0, gcd)
            .max(1);
        let mut w: Vec<u64> = weights.iter().map(|x| x / g).collect();
        let total: u64 = w.iter().sum();
        if total > MAX_SCHEDULE {
            for x in &mut w {
                if *x > 0 {
                    *x = (*x * MAX_SCHEDULE / total).max(1);
                }
            }
        }
        let total: u64 = w.iter().sum();
        let mut current = vec![0i64; w.len()];
        let mut seq = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for i in 0..w.len() {
                current[i] += w[i] as i64;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total as i64;
            seq.push(best as u32);
        }
        let start = if seq.is_empty() {
            0
        } else {
            rand::random::<u64>() as usize % seq.len()
        };
        Schedule {
            seq,
            cursor: AtomicUsize::new(start),
        }
    }

    pub fn next(&self) -> usize {
        if self.seq.is_empty() {
            return 0;
        }
        let i = self.cursor.fetch_add(1, Ordering::Relaxed);
        self.seq[i % self.seq.len()] as usize
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[derive(Debug, Default)]
pub enum Picker {
    #[default]
    Empty,
    RoundRobin {
        hosts: Vec<Arc<Host>>,
        weighted: Option<Schedule>,
        cursor: AtomicUsize,
    },
    LeastRequest {
        hosts: Vec<Arc<Host>>,
        choice_count: u32,
        bias: f64,
        cumulative: Option<Vec<u64>>,
    },
    Random {
        hosts: Vec<Arc<Host>>,
    },
    Ring {
        ring: Vec<(u64, u32)>,
        hosts: Vec<Arc<Host>>,
    },
    Maglev {
        table: Vec<u32>,
        hosts: Vec<Arc<Host>>,
    },
}

impl Picker {
    /// `locality_weights`: per host, its locality's normalised weight (hash policies with
    /// locality-weighted balancing); `None` = 1.0 for all.
    pub fn build(
        policy: &LbPolicy,
        hosts: Vec<Arc<Host>>,
        locality_weights: Option<&[f64]>,
    ) -> Picker {
        if hosts.is_empty() {
            return Picker::Empty;
        }
        let equal = hosts.iter().all(|h| h.weight == hosts[0].weight);
        match policy {
            LbPolicy::RoundRobin | LbPolicy::ClusterProvided => {
                let weighted = (!equal).then(|| {
                    Schedule::new(
                        &hosts
                            .iter()
                            .map(|h| u64::from(h.weight))
                            .collect::<Vec<_>>(),
                    )
                });
                let start = rand::random::<u64>() as usize % hosts.len();
                Picker::RoundRobin {
                    hosts,
                    weighted,
                    cursor: AtomicUsize::new(start),
                }
            }
            LbPolicy::LeastRequest {
                choice_count,
                active_request_bias,
            } => {
                let cumulative = (!equal).then(|| {
                    let mut acc = 0;
                    hosts
                        .iter()
                        .map(|h| {
                            acc += u64::from(h.weight);
                            acc
                        })
                        .collect()
                });
                Picker::LeastRequest {
                    hosts,
                    choice_count: *choice_count,
                    bias: *active_request_bias,
                    cumulative,
                }
            }
            LbPolicy::Random => Picker::Random { hosts },
            LbPolicy::RingHash {
                min_ring_size,
                max_ring_size,
                use_hostname,
            } => {
                let weights = normalized_weights(&hosts, locality_weights);
                let ring = build_ring(
                    &hosts,
                    &weights,
                    *min_ring_size,
                    *max_ring_size,
                    *use_hostname,
                );
                Picker::Ring { ring, hosts }
            }
            LbPolicy::Maglev {
                table_size,
                use_hostname,
            } => {
                let weights = normalized_weights(&hosts, locality_weights);
                let table = build_maglev(&hosts, &weights, *table_size, *use_hostname);
                Picker::Maglev { table, hosts }
            }
        }
    }

    pub fn hosts(&self) -> &[Arc<Host>] {
        match self {
            Picker::Empty => &[],
            Picker::RoundRobin { hosts, .. }
            | Picker::LeastRequest { hosts, .. }
            | Picker::Random { hosts }
            | Picker::Ring { hosts, .. }
            | Picker::Maglev { hosts, .. } => hosts,
        }
    }

    pub fn pick(&self, ctx: &LbContext<'_>, attempt: u32) -> Option<Arc<Host>> {
        match self {
            Picker::Empty => None,
            Picker::RoundRobin {
                hosts,
                weighted,
                cursor,
            } => {
                let i = match weighted {
                    Some(s) => s.next(),
                    None => cursor.fetch_add(1, Ordering::Relaxed) % hosts.len(),
                };
                hosts.get(i).cloned()
            }
            Picker::LeastRequest {
                hosts,
                choice_count,
                bias,
                cumulative,
            } => {
                let sample = |r: u64| -> usize {
                    match cumulative {
                        None => (r % hosts.len() as u64) as usize,
                        Some(c) => {
                            let total = c.last().copied().unwrap_or(1);
                            c.partition_point(|&x| x <= r % total)
                        }
                    }
                };
                let mut best: Option<(f64, usize)> = None;
                for _ in 0..*choice_count {
                    let i = sample(rand::random());
                    let h = &hosts[i];
                    // Envoy: weight / (active + 1)^bias; more is better. With equal weights
                    // this is just "fewest active requests".
                    let active = h.active_requests() as f64 + 1.0;
                    let score = if cumulative.is_some() {
                        f64::from(h.weight) / active.powf(*bias)
                    } else {
                        -active
                    };
                    if best.is_none_or(|(s, _)| score > s) {
                        best = Some((score, i));
                    }
                }
                best.map(|(_, i)| hosts[i].clone())
            }
            Picker::Random { hosts } => hosts
                .get((rand::random::<u64>() % hosts.len() as u64) as usize)
                .cloned(),
            Picker::Ring { ring, hosts } => {
                let h = ctx.hash.unwrap_or_else(rand::random);
                let mut i = ring_lookup(ring, h)?;
                if attempt > 0 {
                    i = (i + attempt as usize) % ring.len();
                }
                hosts.get(ring[i].1 as usize).cloned()
            }
            Picker::Maglev { table, hosts } => {
                if table.is_empty() {
                    return None;
                }
                let mut h = ctx.hash.unwrap_or_else(rand::random);
                if attempt > 0 {
                    h ^= u64::from(attempt).wrapping_neg();
                }
                hosts
                    .get(table[(h % table.len() as u64) as usize] as usize)
                    .cloned()
            }
        }
    }
}

/// Host weight / total weight, times the host's locality weight when given.
fn normalized_weights(hosts: &[Arc<Host>], locality: Option<&[f64]>) -> Vec<f64> {
    let total: f64 = hosts.iter().map(|h| f64::from(h.weight)).sum();
    hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            f64::from(h.weight) / total * locality.and_then(|l| l.get(i)).copied().unwrap_or(1.0)
        })
        .collect()
}

/// Envoy's ring: enough hashes that the lightest host gets a whole number (at least
/// `min_ring_size` in total, at most `max_ring_size`), host keys `"<addr>_<i>"`.
fn build_ring(
    hosts: &[Arc<Host>],
    weights: &[f64],
    min_ring: u64,
    max_ring: u64,
    use_hostname: bool,
) -> Vec<(u64, u32)> {
    let min_w = weights
        .iter()
        .copied()
        .filter(|w| *w > 0.0)
        .fold(f64::INFINITY, f64::min);
    if !min_w.is_finite() {
        return Vec::new();
    }
    let scale = ((min_w * min_ring as f64).ceil() / min_w).min(max_ring as f64);
    let mut ring = Vec::with_capacity(scale.ceil() as usize);
    let (mut current, mut target) = (0.0f64, 0.0f64);
    let mut key = String::with_capacity(64);
    for (idx, (h, w)) in hosts.iter().zip(weights).enumerate() {
        let base = ring_hash_key(h, use_hostname);
        target += scale * w;
        let mut i = 0u64;
        while current < target {
            key.clear();
            key.push_str(&base);
            key.push('_');
            key.push_str(&i.to_string());
            ring.push((xxhash64(key.as_bytes(), 0), idx as u32));
            i += 1;
            current += 1.0;
        }
    }
    ring.sort_by_key(|(hash, _)| *hash);
    ring
}

/// Envoy's ring lookup (ketama's binary search, including its wrap-around quirks).
fn ring_lookup(ring: &[(u64, u32)], h: u64) -> Option<usize> {
    if ring.is_empty() {
        return None;
    }
    let (mut low, mut high) = (0i64, ring.len() as i64);
    loop {
        let mid = (low + high) / 2;
        if mid == ring.len() as i64 {
            return Some(0);
        }
        let midval = ring[mid as usize].0;
        let midval1 = if mid == 0 {
            0
        } else {
            ring[mid as usize - 1].0
        };
        if h <= midval && h > midval1 {
            return Some(mid as usize);
        }
        if midval < h {
            low = mid + 1;
        } else {
            high = mid - 1;
        }
        if low > high {
            return Some(0);
        }
    }
}

/// Maglev (Eisenbud et al., NSDI 2016) with Envoy's weighting: hosts sorted by their
/// hash key; each fills its next preferred slot every `max_weight / weight` iterations.
fn build_maglev(hosts: &[Arc<Host>], weights: &[f64], size: u64, use_hostname: bool) -> Vec<u32> {
    struct Entry {
        host: u32,
        offset: u64,
        skip: u64,
        weight: f64,
        target: f64,
        next: u64,
    }
    let max_w = weights.iter().copied().fold(0.0f64, f64::max);
    if max_w <= 0.0 || size < 2 {
        return Vec::new();
    }
    // Duplicate keys would make the order unstable; a map keeps the first per key.
    let mut keyed: Vec<(String, usize)> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (ring_hash_key(h, use_hostname), i))
        .collect();
    keyed.sort();
    let mut seen = HashMap::new();
    keyed.retain(|(k, i)| *seen.entry(k.clone()).or_insert(*i) == *i);
    let mut entries: Vec<Entry> = keyed
        .iter()
        .filter(|(_, i)| weights[*i] > 0.0)
        .map(|(k, i)| Entry {
            host: *i as u32,
            offset: xxhash64(k.as_bytes(), 0) % size,
            skip: xxhash64(k.as_bytes(), 1) % (size - 1) + 1,
            weight: weights[*i],
            target: 0.0,
            next: 0,
        })
        .collect();
    const EMPTY: u32 = u32::MAX;
    let mut table = vec![EMPTY; size as usize];
    let mut filled = 0u64;
    let mut iteration = 1u64;
    while filled < size {
        for e in entries.iter_mut() {
            if filled >= size {
                break;
            }
            if (iteration as f64) * e.weight < e.target {
                continue;
            }
            e.target += max_w;
            let mut c = (e.offset + e.skip * e.next) % size;
            while table[c as usize] != EMPTY {
                e.next += 1;
                c = (e.offset + e.skip * e.next) % size;
            }
            table[c as usize] = e.host;
            e.next += 1;
            filled += 1;
        }
        iteration += 1;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(n: usize) -> Vec<Arc<Host>> {
        (0..n)
            .map(|i| Arc::new(Host::new(format!("10.0.0.{}:80", i + 1).parse().unwrap())))
            .collect()
    }

    #[test]
    fn smooth_schedule_interleaves() {
        let s = Schedule::new(&[5, 1, 1]);
        let mut seq: Vec<usize> = (0..7).map(|_| s.next()).collect();
        let counts = |v: &Vec<usize>, x| v.iter().filter(|&&i| i == x).count();
        assert_eq!(
            (counts(&seq, 0), counts(&seq, 1), counts(&seq, 2)),
            (5, 1, 1)
        );
        seq.sort();
        assert_eq!(
            Schedule::new(&[4, 2]).seq.len(),
            3,
            "weights are divided by their gcd"
        );
    }

    #[test]
    fn ring_lookup_wraps_and_finds_successor() {
        let ring = vec![(10, 0), (20, 1), (30, 2)];
        assert_eq!(ring_lookup(&ring, 5), Some(0));
        assert_eq!(ring_lookup(&ring, 10), Some(0));
        assert_eq!(ring_lookup(&ring, 11), Some(1));
        assert_eq!(ring_lookup(&ring, 30), Some(2));
        assert_eq!(ring_lookup(&ring, 31), Some(0));
    }

    #[test]
    fn ring_has_min_size_and_equal_shares() {
        let hs = hosts(3);
        let w = normalized_weights(&hs, None);
        let ring = build_ring(&hs, &w, 1024, 8 << 20, false);
        assert_eq!(ring.len(), 1026, "ceil(1/3 * 1024) * 3 entries");
        for i in 0..3u32 {
            assert_eq!(ring.iter().filter(|(_, h)| *h == i).count(), 342);
        }
    }

    #[test]
    fn maglev_fills_table_by_weight() {
        let mut hs = hosts(2);
        hs[1] = Arc::new(Host::with_attributes(
            "10.0.0.2:80".parse().unwrap(),
            "".into(),
            Arc::default(),
            3,
            0,
            crate::config::endpoint::HealthStatus::Healthy,
            None,
        ));
        let w = normalized_weights(&hs, None);
        let t = build_maglev(&hs, &w, 65537, false);
        assert!(t.iter().all(|&h| h < 2));
        let heavy = t.iter().filter(|&&h| h == 1).count() as f64 / t.len() as f64;
        assert!((heavy - 0.75).abs() < 0.01, "{heavy}");
    }

    #[test]
    fn consistent_hashing_is_stable_when_another_host_leaves() {
        let hs = hosts(5);
        let policy = LbPolicy::Maglev {
            table_size: 65537,
            use_hostname: false,
        };
        let before = Picker::build(&policy, hs.clone(), None);
        let after = Picker::build(&policy, hs[..4].to_vec(), None);
        let (mut moved, mut collateral) = (0, 0);
        for k in 0..1000u64 {
            let ctx = LbContext {
                hash: Some(xxhash64(&k.to_le_bytes(), 0)),
                ..Default::default()
            };
            let a = before.pick(&ctx, 0).unwrap();
            let b = after.pick(&ctx, 0).unwrap();
            if a.addr != b.addr {
                moved += 1;
                if a.addr != hs[4].addr {
                    collateral += 1;
                }
            }
        }
        // About a fifth of the keys belonged to the removed host; maglev promises only
        // minimal disruption for the others.
        assert!(moved > 150 && moved < 260, "{moved}");
        assert!(collateral < 30, "{collateral}");
    }

    #[test]
    fn least_request_prefers_idle_host() {
        let hs = hosts(2);
        let _busy: Vec<_> = (0..10).map(|_| hs[0].request_guard()).collect();
        let p = Picker::build(
            &LbPolicy::LeastRequest {
                choice_count: 2,
                active_request_bias: 1.0,
            },
            hs.clone(),
            None,
        );
        let picks = (0..200)
            .filter(|_| p.pick(&LbContext::default(), 0).unwrap().addr == hs[1].addr)
            .count();
        // P2C picks the idle host unless both samples land on the busy one (~25%).
        assert!(picks > 120, "{picks}");
    }
}
