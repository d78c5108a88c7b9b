use std::collections::HashMap;

use super::*;
use crate::config::cluster::{CircuitBreakerThresholds, Discovery, UpstreamHttpOptions};

fn cluster(lb: LbPolicy, locality_weighted: bool) -> ClusterConfig {
    ClusterConfig {
        name: "c".into(),
        stat_name: "c".into(),
        discovery: Discovery::Eds {
            service_name: String::new(),
        },
        connect_timeout: std::time::Duration::from_secs(1),
        lb,
        locality_weighted,
        healthy_panic_threshold: 50.0,
        circuit_breakers: CircuitBreakerThresholds::default(),
        load_assignment: None,
        http: UpstreamHttpOptions::default(),
        per_connection_buffer_limit_bytes: 1 << 20,
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

fn counts(set: &HostSet, n: usize) -> HashMap<SocketAddr, usize> {
    let mut m = HashMap::new();
    for _ in 0..n {
        *m.entry(set.pick(&LbContext::default()).unwrap().addr)
            .or_insert(0) += 1;
    }
    m
}

#[test]
fn priority_load_follows_envoy() {
    assert_eq!(priority_load(&[100, 100]), vec![100, 100]);
    assert_eq!(priority_load(&[70, 100]), vec![70, 100]);
    // Total health 60 < 100: normalised (P0 gets 50/60, P1 10/60).
    assert_eq!(priority_load(&[50, 10]), vec![84, 100]);
    assert_eq!(priority_load(&[0, 0]), vec![100, 100]);
}

#[test]
fn round_robin_rotates_evenly() {
    let c = cluster(LbPolicy::RoundRobin, false);
    let set = HostSet::build(
        &c,
        vec![vec![group(
            "a",
            None,
            vec![
                host("10.0.0.1", HealthStatus::Healthy),
                host("10.0.0.2", HealthStatus::Healthy),
            ],
        )]],
        140,
    );
    let m = counts(&set, 100);
    assert_eq!(m.values().copied().collect::<Vec<_>>(), vec![50, 50]);
}

#[test]
fn unhealthy_hosts_are_skipped_unless_panic() {
    let c = cluster(LbPolicy::RoundRobin, false);
    let hs = vec![
        host("10.0.0.1", HealthStatus::Healthy),
        host("10.0.0.2", HealthStatus::Healthy),
        host("10.0.0.3", HealthStatus::Unhealthy),
    ];
    let set = HostSet::build(&c, vec![vec![group("a", None, hs.clone())]], 140);
    assert!(!set.in_panic(0));
    assert!(!counts(&set, 60).contains_key(&hs[2].addr));
    // 1 of 3 healthy (33% < 50%): panic, all hosts used.
    hs[1].set_health(HealthStatus::Unhealthy);
    let set = HostSet::build(&c, vec![vec![group("a", None, hs.clone())]], 140);
    assert!(set.in_panic(0));
    assert_eq!(counts(&set, 60).len(), 3);
}

#[test]
fn failover_to_next_priority() {
    let c = cluster(LbPolicy::RoundRobin, false);
    let p0 = vec![
        host("10.0.0.1", HealthStatus::Unhealthy),
        host("10.0.0.2", HealthStatus::Unhealthy),
    ];
    let p1 = vec![host("10.0.1.1", HealthStatus::Healthy)];
    let set = HostSet::build(
        &c,
        vec![
            vec![group("a", None, p0)],
            vec![group("b", None, p1.clone())],
        ],
        140,
    );
    let m = counts(&set, 50);
    assert_eq!(m.get(&p1[0].addr), Some(&50));
}

#[test]
fn locality_weights_split_traffic() {
    let c = cluster(LbPolicy::RoundRobin, true);
    let a = vec![host("10.0.0.1", HealthStatus::Healthy)];
    let b = vec![host("10.0.1.1", HealthStatus::Healthy)];
    let set = HostSet::build(
        &c,
        vec![vec![
            group("a", Some(3), a.clone()),
            group("b", Some(1), b.clone()),
        ]],
        140,
    );
    let m = counts(&set, 400);
    assert_eq!((m[&a[0].addr], m[&b[0].addr]), (300, 100));
}

#[test]
fn avoid_prefers_other_hosts() {
    let c = cluster(LbPolicy::Random, false);
    let hs = vec![
        host("10.0.0.1", HealthStatus::Healthy),
        host("10.0.0.2", HealthStatus::Healthy),
    ];
    let set = HostSet::build(&c, vec![vec![group("a", None, hs.clone())]], 140);
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
fn ring_hash_is_deterministic_per_key() {
    let c = cluster(
        LbPolicy::RingHash {
            min_ring_size: 1024,
            max_ring_size: 8 << 20,
            use_hostname: false,
        },
        false,
    );
    let hs: Vec<_> = (1..=4)
        .map(|i| host(&format!("10.0.0.{i}"), HealthStatus::Healthy))
        .collect();
    let set = HostSet::build(&c, vec![vec![group("a", None, hs)]], 140);
    let key = xxhash64(b"user-42", 0);
    let ctx = LbContext {
        hash: Some(key),
        ..Default::default()
    };
    let first = set.pick(&ctx).unwrap().addr;
    assert!((0..20).all(|_| set.pick(&ctx).unwrap().addr == first));
}
