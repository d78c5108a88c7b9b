//! ClusterLoadAssignments: the endpoints of every EDS cluster, grouped by locality, filtered
//! by subset labels for subset clusters (as Istio does, rather than Envoy's subset LB).

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Locality};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
    lb_endpoint::HostIdentifier,
};

use super::cluster::outbound_name;
use super::util::{socket_address, u32v};
use super::{Ctx, Named};
use crate::registry::{Endpoint, Resolution, selects};

/// A load assignment for `cluster` from registry endpoints, keeping only those whose labels
/// carry every `subset` label.
pub fn load_assignment(
    cluster: String,
    endpoints: &[Endpoint],
    subset: Option<&BTreeMap<String, String>>,
) -> ClusterLoadAssignment {
    let mut groups: BTreeMap<String, Vec<&Endpoint>> = BTreeMap::new();
    for ep in endpoints {
        if subset.is_some_and(|s| !selects(s, &ep.labels)) {
            continue;
        }
        groups
            .entry(ep.locality.clone().unwrap_or_default())
            .or_default()
            .push(ep);
    }
    let endpoints = groups
        .into_iter()
        .map(|(locality, eps)| {
            let mut parts = locality.splitn(3, '/');
            let locality = Locality {
                region: parts.next().unwrap_or_default().to_string(),
                zone: parts.next().unwrap_or_default().to_string(),
                sub_zone: parts.next().unwrap_or_default().to_string(),
            };
            let weight: u32 = eps.iter().map(|e| e.weight.max(1)).sum();
            LocalityLbEndpoints {
                locality: (locality != Locality::default()).then_some(locality),
                lb_endpoints: eps
                    .into_iter()
                    .map(|e| LbEndpoint {
                        host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
                            address: Some(socket_address(&e.address, e.port)),
                            ..Default::default()
                        })),
                        health_status: HealthStatus::Healthy as i32,
                        load_balancing_weight: Some(u32v(e.weight.max(1))),
                        ..Default::default()
                    })
                    .collect(),
                load_balancing_weight: Some(u32v(weight)),
                ..Default::default()
            }
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: cluster,
        endpoints,
        ..Default::default()
    }
}

/// A load assignment for every EDS cluster of the proxy's scope (empty ones included, so a
/// proxy never waits on a cluster that has no endpoints yet).
pub fn all(ctx: &Ctx<'_>, out: &mut Vec<Named>) {
    let registry = ctx.snapshot.registry();
    for svc in &ctx.scope.services {
        if svc.resolution != Resolution::ClientSideLb {
            continue;
        }
        let dr = ctx.destination_rule(&svc.hostname, Some(&svc.namespace));
        for port in &svc.ports {
            if port.protocol == mesh_api::naming::Protocol::Udp {
                continue;
            }
            let eps = registry.endpoints(svc, port.port);
            out.push(named(load_assignment(
                outbound_name(port.port, "", &svc.hostname),
                eps,
                None,
            )));
            for subset in dr.iter().flat_map(|d| d.spec.subsets.iter()) {
                out.push(named(load_assignment(
                    outbound_name(port.port, &subset.name, &svc.hostname),
                    eps,
                    Some(&subset.labels),
                )));
            }
        }
    }
}

fn named(cla: ClusterLoadAssignment) -> Named {
    Named {
        resource: super::util::any(&cla),
        name: cla.cluster_name,
    }
}
