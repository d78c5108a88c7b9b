//! Load-balancer behaviour against Envoy's documented arithmetic: priority loads with the
//! overprovisioning factor, degraded spill-over, panic and total panic, effective
//! locality weights, ejected hosts, slow start.

use std::{collections::HashMap, time::Duration};

use super::*;
use crate::config::cluster::{Discovery, SlowStart};

fn cluster(lb: LbPolicy, locality_weighted: bool) -> ClusterConfig {
    ClusterConfig {
        name: "c".into(),
        stat_name: "c".into(),
        discovery: Discovery::Eds {
            service_name: String::new(),
        },
        lb,
        locality_weighted,
        ..ClusterConfig::default()
    }
}

fn host(ip: &str, health: HealthStatus) -> Arc<Host> {
    Arc::new(Host::with_attributes(
        format!("{ip}:80").parse().unwrap(),
        "".into(),
        Arc::default(),
        1,
        0,
        health,
        None,
    ))
}

fn hosts(prefix: &str, healthy: usize, degraded: usize, unhealthy: usize) -> Vec<Arc<Host>> {
    let mut out = Vec::new();
    let mut n = 0;
    for (count, health) in [
        (healthy, HealthStatus::Healthy),
        (degraded, HealthStatus::Degraded),
        (unhealthy, HealthStatus::Unhealthy),
    ] {
        for _ in 0..count {
            n += 1;
            out.push(host(&format!("{prefix}.{n}"), health));
        }
    }
    out
}

fn group(zone: &str, weight: Option<u32>, hosts: Vec<Arc<Host>>) -> LocalityGroup {
    LocalityGroup {
        locality: Arc::new(Locality {
            zone: zone.into(),
            ..Default::default()
        }),
        weight,
        hosts,
    }
}

fn levels(c: &ClusterConfig, priorities: Vec<Vec<Arc<Host>>>) -> HostSet {
    HostSet::build(
        c,
        &Membership::new(
            priorities
                .into_iter()
                .map(|hs| vec![group("a", None, hs)])
                .collect(),
            140,
        ),
    )
}

fn counts(set: &HostSet, n: usize) -> HashMap<SocketAddr, usize> {
    let mut m = HashMap::new();
    for _ in 0..n {
        *m.entry(set.pick(&LbContext::default()).unwrap().addr)
            .or_insert(0) += 1;
    }
    m
}

fn share(m: &HashMap<SocketAddr, usize>, hs: &[Arc<Host>]) -> usize {
    hs.iter().filter_map(|h| m.get(&h.addr)).sum()
}

#[test]
fn load_distribution_follows_envoys_example() {
    // Envoy's comment: health 10/20/10 and degraded 20/10/0 give 16/28/14 to healthy
    // hosts and 28/14/0 to degraded hosts (the first healthy level takes the rounding).
    let (h, d) = distribute(&[10, 20, 10], &[20, 10, 0], 70);
    assert_eq!(h, vec![16, 28, 14]);
    assert_eq!(d, vec![28, 14, 0]);
    assert_eq!(distribute(&[100, 100], &[0, 0], 100).0, vec![100, 0]);
    assert_eq!(distribute(&[70, 100], &[0, 0], 100).0, vec![70, 30]);
}

#[test]
fn overprovisioning_keeps_traffic_until_71_percent_healthy() {
    let c = cluster(LbPolicy::RoundRobin, false);
    // 3 of 4 healthy: 75% x 1.4 = 105% -> P0 keeps all traffic.
    let set = levels(&c, vec![hosts("10.0.0", 3, 0, 1), hosts("10.0.1", 2, 0, 0)]);
    assert_eq!(set.priority_load(0), (100, 0));
    assert_eq!(set.priority_load(1), (0, 0));
    // 2 of 4: 70% to P0, the rest fails over to P1.
    let set = levels(&c, vec![hosts("10.0.0", 2, 0, 2), hosts("10.0.1", 2, 0, 0)]);
    assert_eq!(set.priority_load(0), (70, 0));
    assert_eq!(set.priority_load(1), (30, 0));
    assert!(
        !set.in_panic(0),
        "the cluster as a whole is fully available"
    );
}

#[test]
fn failover_to_next_priority() {
    let c = cluster(LbPolicy::RoundRobin, false);
    let p1 = hosts("10.0.1", 1, 0, 0);
    let set = levels(&c, vec![hosts("10.0.0", 0, 0, 2), p1.clone()]);
    let m = counts(&set, 50);
    assert_eq!(m.get(&p1[0].addr), Some(&50));
}

#[test]
fn degraded_hosts_take_what_healthy_hosts_cannot() {
    let c = cluster(LbPolicy::RoundRobin, false);
    // 2 healthy, 2 degraded: healthy availability 70, degraded 70 -> 70% / 30%.
    let hs = hosts("10.0.0", 2, 2, 0);
    let set = levels(&c, vec![hs.clone()]);
    assert_eq!(set.priority_load(0), (70, 30));
    let m = counts(&set, 2000);
    let degraded = share(&m, &hs[2..]);
    // Binomial(2000, 0.3): mean 600, sd 20.5.
    assert!((500..700).contains(&degraded), "{degraded}");
    // All healthy enough: degraded hosts get nothing.
    let hs = hosts("10.0.0", 3, 1, 0);
    let set = levels(&c, vec![hs.clone()]);
    assert_eq!(set.priority_load(0), (100, 0));
    assert_eq!(share(&counts(&set, 200), &hs[3..]), 0);
}

#[test]
fn panic_uses_every_host_of_the_level() {
    let c = cluster(LbPolicy::RoundRobin, false);
    let hs = hosts("10.0.0", 2, 0, 1);
    let set = levels(&c, vec![hs.clone()]);
    assert!(!set.in_panic(0));
    assert!(!counts(&set, 60).contains_key(&hs[2].addr));
    // 1 of 3 healthy (33% < 50%): panic, all hosts used.
    hs[1].set_health(HealthStatus::Unhealthy);
    let set = levels(&c, vec![hs.clone()]);
    assert!(set.in_panic(0));
    assert_eq!(counts(&set, 60).len(), 3);
}

#[test]
fn total_panic_splits_by_host_count() {
    let c = cluster(LbPolicy::RoundRobin, false);
    // Every level under the threshold: load by host count (1 : 3), health ignored.
    let set = levels(&c, vec![hosts("10.0.0", 0, 0, 1), hosts("10.0.1", 1, 0, 2)]);
    assert!(set.in_panic(0) && set.in_panic(1));
    assert_eq!(set.priority_load(0), (25, 0));
    assert_eq!(set.priority_load(1), (75, 0));
}

#[test]
fn panic_threshold_zero_means_no_host_rather_than_an_unhealthy_one() {
    let c = ClusterConfig {
        healthy_panic_threshold: 0.0,
        ..cluster(LbPolicy::RoundRobin, false)
    };
    let set = levels(&c, vec![hosts("10.0.0", 0, 0, 3)]);
    assert!(!set.in_panic(0));
    assert!(set.pick(&LbContext::default()).is_none());
}

#[test]
fn weighted_priority_health_counts_weights() {
    let c = cluster(LbPolicy::RoundRobin, false);
    let heavy = Arc::new(Host::with_attributes(
        "10.0.0.1:80".parse().unwrap(),
        "".into(),
        Arc::default(),
        9,
        0,
        HealthStatus::Unhealthy,
        None,
    ));
    let light = host("10.0.0.2", HealthStatus::Healthy);
    let p1 = hosts("10.0.1", 1, 0, 0);
    let mut m = Membership::new(
        vec![
            vec![group("a", None, vec![heavy, light])],
            vec![group("b", None, p1)],
        ],
        140,
    );
    // By count: 1 of 2 healthy = 70%. By weight: 1 of 10 = 14%.
    assert_eq!(HostSet::build(&c, &m).priority_load(0).0, 70);
    m.weighted_priority_health = true;
    assert_eq!(HostSet::build(&c, &m).priority_load(0).0, 14);
}

#[test]
fn locality_weights_split_traffic() {
    let c = cluster(LbPolicy::RoundRobin, true);
    let a = hosts("10.0.0", 1, 0, 0);
    let b = hosts("10.0.1", 1, 0, 0);
    let set = HostSet::build(
        &c,
        &Membership::new(
            vec![vec![
                group("a", Some(3), a.clone()),
                group("b", Some(1), b.clone()),
            ]],
            140,
        ),
    );
    let m = counts(&set, 400);
    assert_eq!((m[&a[0].addr], m[&b[0].addr]), (300, 100));
}

#[test]
fn effective_locality_weight_scales_with_availability() {
    let c = cluster(LbPolicy::RoundRobin, true);
    // Zone a: 1 of 2 hosts healthy -> weight 1 x min(1, 0.5 x 1.4) = 0.7; zone b: 1.
    let a = hosts("10.0.0", 1, 0, 1);
    let b = hosts("10.0.1", 2, 0, 0);
    let set = HostSet::build(
        &c,
        &Membership::new(
            vec![vec![
                group("a", Some(1), a.clone()),
                group("b", Some(1), b.clone()),
            ]],
            140,
        ),
    );
    // The locality schedule is deterministic: exactly 7 of every 17 picks go to zone a.
    let m = counts(&set, 1700);
    assert_eq!(share(&m, &a), 700);
    assert_eq!(share(&m, &b), 1000);
}

#[test]
fn ejected_hosts_are_unhealthy_to_the_balancer() {
    let c = cluster(LbPolicy::RoundRobin, false);
    let p0 = hosts("10.0.0", 2, 0, 0);
    let p1 = hosts("10.0.1", 2, 0, 0);
    p0[0].outlier.set_ejected(true);
    let set = levels(&c, vec![p0.clone(), p1.clone()]);
    // 1 of 2 healthy in P0: 70% stays, 30% fails over; the ejected host gets nothing.
    assert_eq!(set.priority_load(0), (70, 0));
    let m = counts(&set, 1000);
    assert!(!m.contains_key(&p0[0].addr));
    let failover = share(&m, &p1);
    assert!((230..370).contains(&failover), "{failover}");
    assert_eq!(set.ejected_count(), 1);
}

#[test]
fn avoid_prefers_other_hosts() {
    let c = cluster(LbPolicy::Random, false);
    let hs = hosts("10.0.0", 2, 0, 0);
    let set = levels(&c, vec![hs.clone()]);
    let avoid = [hs[0].addr];
    let ctx = LbContext {
        avoid: &avoid,
        ..Default::default()
    };
    // Four tries at a 1/2 chance each: 15/16 of picks avoid the host (937 of 1000
    // expected; 900 is five standard deviations below).
    let other = (0..1000)
        .filter(|_| set.pick(&ctx).unwrap().addr == hs[1].addr)
        .count();
    assert!(other >= 900, "{other}");
}

#[test]
fn ring_hash_is_deterministic_per_key_and_ignores_degraded_hosts() {
    let c = cluster(
        LbPolicy::RingHash {
            min_ring_size: 1024,
            max_ring_size: 8 << 20,
            use_hostname: false,
        },
        false,
    );
    let hs = hosts("10.0.0", 4, 1, 0);
    let set = levels(&c, vec![hs.clone()]);
    let key = xxhash64(b"user-42", 0);
    let ctx = LbContext {
        hash: Some(key),
        ..Default::default()
    };
    let first = set.pick(&ctx).unwrap().addr;
    assert!((0..20).all(|_| set.pick(&ctx).unwrap().addr == first));
    let any = (0..500u64)
        .map(|k| {
            set.pick(&LbContext {
                hash: Some(xxhash64(&k.to_le_bytes(), 0)),
                ..Default::default()
            })
            .unwrap()
            .addr
        })
        .any(|a| a == hs[4].addr);
    assert!(!any, "the ring holds healthy hosts only");
}

#[tokio::test(start_paused = true)]
async fn slow_start_ramps_a_new_host_up() {
    let c = ClusterConfig {
        slow_start: Some(SlowStart {
            window: Duration::from_secs(10),
            aggression: 1.0,
            min_weight: 0.1,
        }),
        ..cluster(LbPolicy::RoundRobin, false)
    };
    let old = hosts("10.0.0", 2, 0, 0);
    let new = Arc::new(
        Host::with_attributes(
            "10.0.0.9:80".parse().unwrap(),
            "".into(),
            Arc::default(),
            1,
            0,
            HealthStatus::Healthy,
            None,
        )
        .warming_from(Instant::now()),
    );
    let mut all = old.clone();
    all.push(new.clone());
    let set = levels(&c, vec![all]);
    // Half way through the window: weights 1, 1, 0.5 -> the new host gets 1/5.
    tokio::time::advance(Duration::from_secs(5)).await;
    let m = counts(&set, 5000);
    let got = m.get(&new.addr).copied().unwrap_or(0);
    // Binomial(5000, 0.2): mean 1000, sd 28.
    assert!((880..1120).contains(&got), "{got}");
    // After the window: plain round robin, an exact third.
    tokio::time::advance(Duration::from_secs(6)).await;
    let m = counts(&set, 300);
    assert_eq!(m[&new.addr], 100);
}
