//! Load-balancer picks on a 50-host cluster (Envoy's policies: round robin, weighted round
//! robin, least request with two choices, random, ring hash and Maglev with a request hash,
//! locality-weighted over three zones) and a pick that must avoid the host a retry already
//! tried. The tables are built once per cluster update; these are the per-request costs.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use envoy_types::pb::envoy::config::cluster::v3::Cluster as PbCluster;
use mesh_proxy::config::cluster::Cluster;
use mesh_proxy::config::endpoint::{HealthStatus, Locality};
use mesh_proxy::upstream::lb::LocalityGroup;
use mesh_proxy::upstream::{Host, HostSet, LbContext, Membership};
use serde_json::json;

const HOSTS: usize = 50;

fn cluster(extra: serde_json::Value) -> Cluster {
    let mut c = json!({
        "name": "outbound|8080||svc.ns.svc.cluster.local",
        "type": "EDS",
        "eds_cluster_config": {"eds_config": {"ads": {}}},
        "connect_timeout": "1s",
    });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    let pb: PbCluster = mesh_api::envoy_json::message_from_json(&c).unwrap();
    Cluster::try_from(&pb).unwrap()
}

fn host(i: usize, zone: &Arc<Locality>, weight: u32) -> Arc<Host> {
    let addr: SocketAddr = format!("10.250.{}.{}:8080", i / 250, i % 250 + 1)
        .parse()
        .unwrap();
    Arc::new(Host::with_attributes(
        addr,
        format!("pod-{i}").into(),
        zone.clone(),
        weight,
        0,
        HealthStatus::Healthy,
        None,
    ))
}

/// 50 hosts in three zones (weights 1..=3 when `weighted`).
fn host_set(c: &Cluster, weighted: bool) -> HostSet {
    let zones: Vec<Arc<Locality>> = ["a", "b", "c"]
        .iter()
        .map(|z| {
            Arc::new(Locality {
                region: "region".into(),
                zone: (*z).into(),
                sub_zone: String::new(),
            })
        })
        .collect();
    let groups = zones
        .iter()
        .enumerate()
        .map(|(z, zone)| LocalityGroup {
            locality: zone.clone(),
            weight: Some(1 + z as u32),
            hosts: (0..HOSTS)
                .filter(|i| i % 3 == z)
                .map(|i| host(i, zone, if weighted { 1 + (i % 3) as u32 } else { 1 }))
                .collect(),
        })
        .collect();
    HostSet::build(c, &Membership::new(vec![groups], 140))
}

fn bench(c: &mut Criterion) {
    let cases: Vec<(&str, serde_json::Value, bool)> = vec![
        ("round_robin", json!({}), false),
        ("weighted_round_robin", json!({}), true),
        (
            "least_request_2_choices",
            json!({"lb_policy": "LEAST_REQUEST"}),
            false,
        ),
        ("random", json!({"lb_policy": "RANDOM"}), false),
        ("ring_hash", json!({"lb_policy": "RING_HASH"}), false),
        ("maglev", json!({"lb_policy": "MAGLEV"}), false),
        (
            "locality_weighted_round_robin",
            json!({"common_lb_config": {"locality_weighted_lb_config": {}}}),
            false,
        ),
    ];
    let mut group = c.benchmark_group("lb_pick_50_hosts");
    for (name, extra, weighted) in cases {
        let cl = cluster(extra);
        let set = host_set(&cl, weighted);
        assert_eq!(set.hosts.len(), HOSTS);
        let mut hash = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                hash = hash.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let ctx = LbContext {
                    hash: Some(hash),
                    ..Default::default()
                };
                black_box(set.pick(black_box(&ctx)))
            })
        });
    }
    // A retry: the host tried first must be avoided.
    let cl = cluster(json!({}));
    let set = host_set(&cl, false);
    let tried = [set.hosts[0].addr];
    group.bench_function("round_robin_avoiding_previous_host", |b| {
        b.iter(|| {
            let ctx = LbContext {
                avoid: &tried,
                ..Default::default()
            };
            black_box(set.pick(black_box(&ctx)))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
