//! ClusterLoadAssignments: the endpoints of every EDS cluster, grouped by locality, filtered
//! by subset labels for subset clusters (as Istio does, rather than Envoy's subset LB), with
//! locality load balancing applied relative to the proxy ([`super::locality`]).

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Locality};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
    lb_endpoint::HostIdentifier,
};
use mesh_api::networking::TrafficPolicy;

use super::cluster::outbound_name;
use super::locality::{self, LocalityCtx};
use super::policy::lb_and_outlier;
use super::util::{socket_address, u32v};
use super::{Ctx, Named};
use crate::registry::{Endpoint, Resolution, selects};

/// The endpoints of a cluster by locality (sorted), keeping only those whose labels carry
/// every `subset` label.
pub fn group<'a>(
    endpoints: &'a [Endpoint],
    subset: Option<&BTreeMap<String, String>>,
) -> Vec<(String, Vec<&'a Endpoint>)> {
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
    groups.into_iter().collect()
}

/// A load assignment for `cluster` from grouped registry endpoints, with `locality` load
/// balancing applied when given.
pub fn load_assignment(
    cluster: String,
    groups: &[(String, Vec<&Endpoint>)],
    locality: Option<&LocalityCtx<'_>>,
) -> ClusterLoadAssignment {
    let endpoints = groups
        .iter()
        .map(|(locality, eps)| {
            let (region, zone, sub_zone) = crate::model::split_locality(locality);
            let locality = Locality {
                region: region.to_string(),
                zone: zone.to_string(),
                sub_zone: sub_zone.to_string(),
            };
            let weight: u32 = eps.iter().map(|e| e.weight.max(1)).sum();
            LocalityLbEndpoints {
                locality: (locality != Locality::default()).then_some(locality),
                lb_endpoints: eps
                    .iter()
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
    let mut cla = ClusterLoadAssignment {
        cluster_name: cluster,
        endpoints,
        ..Default::default()
    };
    if let Some(l) = locality {
        let eps: Vec<Vec<&Endpoint>> = groups.iter().map(|(_, e)| e.clone()).collect();
        l.apply(&mut cla, Some(&eps));
    }
    cla
}

/// The locality context of one cluster (port, maybe subset) for this proxy, when locality
/// load balancing is in force for it.
pub fn locality_ctx<'a>(
    ctx: &'a Ctx<'_>,
    top: Option<&'a TrafficPolicy>,
    subset: Option<&'a TrafficPolicy>,
    port: u16,
) -> Option<LocalityCtx<'a>> {
    let (lb, outlier) = lb_and_outlier(top, subset, port);
    let setting = locality::setting(
        ctx.snapshot.mesh(),
        lb.and_then(|l| l.locality_lb_setting.as_ref()),
    )?;
    Some(LocalityCtx {
        proxy_locality: ctx.proxy.locality.as_deref().unwrap_or(""),
        proxy_labels: &ctx.proxy.labels,
        setting,
        enable_failover: outlier,
    })
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
        let top = dr.as_ref().and_then(|d| d.spec.traffic_policy.as_ref());
        for port in &svc.ports {
            if port.protocol == mesh_api::naming::Protocol::Udp {
                continue;
            }
            let eps = registry.endpoints(svc, port.port);
            if !passthrough(top, None, port.port) {
                let groups = group(eps, None);
                out.push(named(load_assignment(
                    outbound_name(port.port, "", &svc.hostname),
                    &groups,
                    locality_ctx(ctx, top, None, port.port).as_ref(),
                )));
            }
            for subset in dr.iter().flat_map(|d| d.spec.subsets.iter()) {
                if passthrough(top, subset.traffic_policy.as_ref(), port.port) {
                    continue;
                }
                let groups = group(eps, Some(&subset.labels));
                out.push(named(load_assignment(
                    outbound_name(port.port, &subset.name, &svc.hostname),
                    &groups,
                    locality_ctx(ctx, top, subset.traffic_policy.as_ref(), port.port).as_ref(),
                )));
            }
        }
    }
}

/// A `PASSTHROUGH` load balancer makes the cluster ORIGINAL_DST: it has no endpoints to
/// send (Envoy never asks for them).
fn passthrough(top: Option<&TrafficPolicy>, subset: Option<&TrafficPolicy>, port: u16) -> bool {
    let (lb, _) = lb_and_outlier(top, subset, port);
    lb.and_then(|l| l.simple) == Some(mesh_api::networking::SimpleLb::Passthrough)
}

fn named(cla: ClusterLoadAssignment) -> Named {
    Named {
        resource: super::util::any(&cla),
        name: cla.cluster_name,
    }
}
