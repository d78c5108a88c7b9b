//! Clusters: `outbound|<port>|<subset>|<host>` per visible service port and subset, the
//! special `BlackHoleCluster`, `PassthroughCluster` and `InboundPassthroughClusterIpv4`,
//! and `inbound|<port>||` per workload port.

use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster,
    cluster::{ClusterDiscoveryType, DiscoveryType, DnsLookupFamily, EdsClusterConfig, LbPolicy},
};
use envoy_types::pb::envoy::config::core::v3::{BindConfig, SocketAddress, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use mesh_api::naming::{
    BLACKHOLE_CLUSTER, INBOUND_PASSTHROUGH_CLUSTER_IPV4, PASSTHROUGH_CLUSTER, Protocol,
};

use super::endpoint;
use super::metadata;
use super::policy::{ApplyEnv, Effective, default_thresholds};
use super::util::{ads, duration};
use super::{Ctx, Named};
use crate::registry::{Resolution, Service, ServicePort};

/// The source address of inbound connections to the application (Istio's choice, excluded
/// from capture by the iptables rules).
pub const INBOUND_PASSTHROUGH_BIND: &str = "127.0.0.6";

/// `outbound|<port>|<subset>|<host>`.
pub fn outbound_name(port: u16, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// `inbound|<port>||`.
pub fn inbound_name(port: u16) -> String {
    format!("inbound|{port}||")
}

fn base(ctx: &Ctx<'_>, name: String, kind: DiscoveryType) -> Cluster {
    Cluster {
        name,
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(kind as i32)),
        connect_timeout: ctx.snapshot.mesh().connect_timeout.get().map(duration),
        circuit_breakers: Some(CircuitBreakers {
            thresholds: vec![default_thresholds()],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Every outbound cluster of the proxy's scope, plus the special clusters.
pub fn outbound(ctx: &Ctx<'_>, out: &mut Vec<Named>) {
    for svc in &ctx.scope.services {
        for port in &svc.ports {
            if port.protocol == Protocol::Udp {
                continue;
            }
            service_port_clusters(ctx, svc, port, out);
        }
    }
    out.push(named(blackhole(ctx)));
    out.push(named(passthrough(ctx)));
}

fn service_port_clusters(ctx: &Ctx<'_>, svc: &Service, port: &ServicePort, out: &mut Vec<Named>) {
    let dr = ctx.destination_rule(&svc.hostname, Some(&svc.namespace));
    let top = dr.as_ref().and_then(|d| d.spec.traffic_policy.as_ref());
    let env = ApplyEnv {
        mesh: ctx.snapshot.mesh(),
        proxy_locality: ctx.proxy.locality.as_deref().unwrap_or(""),
        proxy_labels: &ctx.proxy.labels,
    };
    // Istio's telemetry metadata: the service the cluster is for.
    let service_meta = metadata::list(vec![metadata::object(vec![
        ("host".to_string(), metadata::string(svc.hostname.as_str())),
        ("name".to_string(), metadata::string(svc.name.as_str())),
        (
            "namespace".to_string(),
            metadata::string(svc.namespace.as_str()),
        ),
    ])]);
    let cluster_metadata = |subset: Option<&str>| {
        let mut fields = vec![("services".to_string(), service_meta.clone())];
        if let Some(dr) = &dr {
            fields.push((
                "config".to_string(),
                metadata::string(metadata::config_path(&dr.meta)),
            ));
            if let Some(s) = subset {
                fields.push(("subset".to_string(), metadata::string(s)));
            }
        }
        metadata::istio(fields)
    };

    let name = outbound_name(port.port, "", &svc.hostname);
    let mut c = service_cluster(ctx, svc, port, name.clone(), None);
    Effective::resolve(top, None, port.port).apply(&mut c, port.protocol, &env, &svc.hostname);
    c.metadata = Some(cluster_metadata(None));
    out.push(named(c));

    for subset in dr.iter().flat_map(|d| d.spec.subsets.iter()) {
        let name = outbound_name(port.port, &subset.name, &svc.hostname);
        let mut c = service_cluster(ctx, svc, port, name, Some(&subset.labels));
        Effective::resolve(top, subset.traffic_policy.as_ref(), port.port).apply(
            &mut c,
            port.protocol,
            &env,
            &svc.hostname,
        );
        c.metadata = Some(cluster_metadata(Some(&subset.name)));
        out.push(named(c));
    }
}

fn service_cluster(
    ctx: &Ctx<'_>,
    svc: &Service,
    port: &ServicePort,
    name: String,
    subset_labels: Option<&std::collections::BTreeMap<String, String>>,
) -> Cluster {
    match svc.resolution {
        Resolution::ClientSideLb => {
            let mut c = base(ctx, name.clone(), DiscoveryType::Eds);
            c.eds_cluster_config = Some(EdsClusterConfig {
                eds_config: Some(ads()),
                service_name: name,
            });
            c
        }
        Resolution::DnsLb | Resolution::DnsRoundRobinLb => {
            let kind = if svc.resolution == Resolution::DnsLb {
                DiscoveryType::StrictDns
            } else {
                DiscoveryType::LogicalDns
            };
            let mut c = base(ctx, name.clone(), kind);
            c.dns_lookup_family = DnsLookupFamily::V4Only as i32;
            let groups = endpoint::group(
                ctx.snapshot.registry().endpoints(svc, port.port),
                subset_labels,
            );
            // Locality settings are applied with the rest of the policy (Effective::apply).
            let mut cla: ClusterLoadAssignment = endpoint::load_assignment(name, &groups, None);
            if kind == DiscoveryType::LogicalDns {
                // LOGICAL_DNS takes exactly one host.
                for group in &mut cla.endpoints {
                    group.lb_endpoints.truncate(1);
                }
                cla.endpoints.retain(|g| !g.lb_endpoints.is_empty());
                cla.endpoints.truncate(1);
            }
            c.load_assignment = Some(cla);
            c
        }
        Resolution::Passthrough => {
            let mut c = base(ctx, name, DiscoveryType::OriginalDst);
            c.lb_policy = LbPolicy::ClusterProvided as i32;
            c
        }
    }
}

fn blackhole(ctx: &Ctx<'_>) -> Cluster {
    let mut c = base(ctx, BLACKHOLE_CLUSTER.to_string(), DiscoveryType::Static);
    c.circuit_breakers = None;
    c
}

fn passthrough(ctx: &Ctx<'_>) -> Cluster {
    let mut c = base(
        ctx,
        PASSTHROUGH_CLUSTER.to_string(),
        DiscoveryType::OriginalDst,
    );
    c.lb_policy = LbPolicy::ClusterProvided as i32;
    c
}

fn bound_original_dst(ctx: &Ctx<'_>, name: String) -> Cluster {
    let mut c = base(ctx, name, DiscoveryType::OriginalDst);
    c.lb_policy = LbPolicy::ClusterProvided as i32;
    c.upstream_bind_config = Some(BindConfig {
        source_address: Some(SocketAddress {
            address: INBOUND_PASSTHROUGH_BIND.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(0)),
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

/// `inbound|<port>||` for every port the proxy's workload serves, and the inbound
/// passthrough cluster. They forward to the original destination (the pod's own address),
/// bound to 127.0.0.6 so the capture rules let the connection through.
pub fn inbound(ctx: &Ctx<'_>, ports: &[(u16, Protocol)], out: &mut Vec<Named>) {
    for (port, protocol) in ports {
        let mut c = bound_original_dst(ctx, inbound_name(*port));
        if protocol.is_http2() {
            Effective::default().apply_pool(&mut c, *protocol, None);
        }
        out.push(named(c));
    }
    out.push(named(bound_original_dst(
        ctx,
        INBOUND_PASSTHROUGH_CLUSTER_IPV4.to_string(),
    )));
}

/// Encodes a cluster right away: the lists stay small (no large structs moved around).
fn named(c: Cluster) -> Named {
    Named {
        resource: super::util::any(&c),
        name: c.name,
    }
}
