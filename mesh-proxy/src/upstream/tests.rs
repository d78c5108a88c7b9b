//! Cluster manager behaviour: discovery types, host reuse across updates, warming hooks.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use super::*;
use crate::config::{
    address::HostPort,
    cluster::{Cluster as ClusterConfig, Discovery, DnsFamily, LbPolicy},
    endpoint::{ClusterLoadAssignment, Endpoint, HealthStatus, LocalityEndpoints},
};

fn config(name: &str, discovery: Discovery, lb: LbPolicy, endpoints: &[HostPort]) -> ClusterConfig {
    let load_assignment = (!endpoints.is_empty()).then(|| assignment(name, endpoints));
    ClusterConfig {
        name: name.into(),
        stat_name: name.into(),
        discovery,
        connect_timeout: Duration::from_secs(1),
        lb,
        load_assignment,
        ..ClusterConfig::default()
    }
}

fn assignment(name: &str, endpoints: &[HostPort]) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.into(),
        localities: vec![LocalityEndpoints {
            locality: Default::default(),
            weight: None,
            priority: 0,
            endpoints: endpoints
                .iter()
                .map(|a| Endpoint {
                    address: a.clone(),
                    hostname: String::new(),
                    health: HealthStatus::Healthy,
                    weight: 1,
                    tls_mode: None,
                })
                .collect(),
        }],
        overprovisioning_factor: 140,
        weighted_priority_health: false,
    }
}

fn ip(s: &str) -> HostPort {
    HostPort::Ip(s.parse().unwrap())
}

#[tokio::test]
async fn strict_dns_resolves_and_keeps_the_name() {
    let cm = ClusterManager::new(Arc::new(crate::stats::Stats::new()));
    let c = cm.add_or_update(config(
        "dns",
        Discovery::StrictDns {
            refresh_rate: Duration::from_millis(50),
            respect_dns_ttl: false,
            family: DnsFamily::V4Only,
        },
        LbPolicy::RoundRobin,
        &[HostPort::Dns {
            host: "localhost".into(),
            port: 8080,
        }],
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while c.hosts().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "localhost never resolved"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let h = c.pick(&LbContext::default()).unwrap();
    assert_eq!(h.addr, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
    assert_eq!(&*h.hostname, "localhost");
    // Re-resolution keeps the same host object (pools survive).
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(Arc::ptr_eq(&h, &c.pick(&LbContext::default()).unwrap()));
}

#[tokio::test]
async fn original_dst_uses_the_destination_and_port_override() {
    let cm = ClusterManager::new(Arc::new(crate::stats::Stats::new()));
    let c = cm.add_or_update(config(
        "passthrough",
        Discovery::OriginalDst {
            use_http_header: false,
            http_header_name: String::new(),
            upstream_port_override: None,
        },
        LbPolicy::ClusterProvided,
        &[],
    ));
    let dst: SocketAddr = "10.250.0.9:9000".parse().unwrap();
    let ctx = LbContext {
        original_dst: Some(dst),
        ..Default::default()
    };
    let h = c.pick(&ctx).unwrap();
    assert_eq!(h.addr, dst);
    assert!(
        Arc::ptr_eq(&h, &c.pick(&ctx).unwrap()),
        "hosts are reused per destination"
    );
    assert!(
        c.pick(&LbContext::default()).is_none(),
        "no destination, no host"
    );
    let c = cm.add_or_update(config(
        "override",
        Discovery::OriginalDst {
            use_http_header: false,
            http_header_name: String::new(),
            upstream_port_override: Some(15008),
        },
        LbPolicy::ClusterProvided,
        &[],
    ));
    assert_eq!(
        c.pick(&ctx).unwrap().addr,
        "10.250.0.9:15008".parse::<SocketAddr>().unwrap()
    );
}

#[tokio::test]
async fn eds_update_reuses_unchanged_hosts_and_config_update_keeps_endpoints() {
    let cm = ClusterManager::new(Arc::new(crate::stats::Stats::new()));
    let eds = Discovery::Eds {
        service_name: String::new(),
    };
    let c = cm.add_or_update(config("e", eds.clone(), LbPolicy::RoundRobin, &[]));
    assert!(!c.has_assignment());
    assert_eq!(
        cm.set_endpoints(
            "e",
            &assignment("e", &[ip("10.250.0.1:80"), ip("10.250.0.2:80")])
        ),
        1
    );
    let before: Vec<_> = c.hosts().hosts.clone();
    cm.set_endpoints(
        "e",
        &assignment("e", &[ip("10.250.0.1:80"), ip("10.250.0.3:80")]),
    );
    let after = c.hosts().hosts.clone();
    assert!(Arc::ptr_eq(&before[0], &after[0]), "unchanged host kept");
    assert_eq!(
        after[1].addr,
        "10.250.0.3:80".parse::<SocketAddr>().unwrap()
    );
    // A CDS update (new lb policy) keeps the endpoints and host objects.
    let c2 = cm.add_or_update(config("e", eds, LbPolicy::Random, &[]));
    assert!(c2.has_assignment());
    assert!(Arc::ptr_eq(&c2.hosts().hosts[0], &after[0]));
    assert!(Arc::ptr_eq(&cm.get("e").unwrap(), &c2));
}
