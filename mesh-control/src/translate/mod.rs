//! Istio config to Envoy xDS: the pure function `generate(snapshot, proxy)`.
//!
//! The output follows what istiod generates for the same input (listener, route and cluster
//! names, filter chains, defaults), so users' muscle memory from `istioctl proxy-config`
//! carries over. Output is sorted by name, so the same input always gives the same bytes.

mod cluster;
mod endpoint;
pub mod endpoints_only;
pub mod envoy_filter;
mod filters;
mod gateway;
pub mod hosts;
pub mod index;
mod listener;
mod locality;
mod metadata;
mod policy;
mod route;
mod scope;
pub mod sharing;
mod util;

#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use crate::model::{InterceptionMode, Proxy, ProxyKind};
use crate::registry::Workload;
use crate::store::Snapshot;

pub use scope::Scope;

/// Envoy v3 type URLs of the resources [`Generated`] carries.
pub mod type_url {
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
}

/// One named xDS resource, already packed.
#[derive(Debug, Clone, PartialEq)]
pub struct Named {
    pub name: String,
    pub resource: Any,
}

/// Everything one proxy should have, each list sorted by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Generated {
    pub listeners: Vec<Named>,
    pub routes: Vec<Named>,
    pub clusters: Vec<Named>,
    pub endpoints: Vec<Named>,
    pub secrets: Vec<Named>,
}

impl Generated {
    /// The resources of one xDS type, by its type URL (empty for unknown types).
    pub fn by_type(&self, type_url: &str) -> &[Named] {
        match type_url {
            type_url::LISTENER => &self.listeners,
            type_url::ROUTE => &self.routes,
            type_url::CLUSTER => &self.clusters,
            type_url::ENDPOINT => &self.endpoints,
            type_url::SECRET => &self.secrets,
            _ => &[],
        }
    }
}

/// Everything one translation needs about the proxy and the mesh.
pub(crate) struct Ctx<'a> {
    pub snapshot: &'a Snapshot,
    /// The proxy, with what the registry knows about its Pod merged in.
    pub proxy: Proxy,
    /// The proxy's Pod, when the registry has it.
    pub workload: Option<Arc<Workload>>,
    pub scope: Scope,
    /// DestinationRule lookups by host, done once per generation.
    dr_cache: RefCell<HashMap<String, Option<Arc<index::NormalizedDr>>>>,
}

impl Ctx<'_> {
    /// The DestinationRule that applies to a host for this proxy.
    pub fn destination_rule(
        &self,
        host: &str,
        service_ns: Option<&str>,
    ) -> Option<Arc<index::NormalizedDr>> {
        if let Some(hit) = self.dr_cache.borrow().get(host) {
            return hit.clone();
        }
        let found = self.snapshot.index().destination_rule(
            host,
            service_ns,
            &self.proxy.namespace,
            &self.proxy.labels,
        );
        self.dr_cache
            .borrow_mut()
            .insert(host.to_string(), found.clone());
        found
    }
}

/// Prefers the registry's Pod (by name and namespace, else by IP) over what the proxy says
/// about itself, as istiod does.
pub fn resolve_proxy(snapshot: &Snapshot, proxy: &Proxy) -> (Proxy, Option<Arc<Workload>>) {
    let registry = snapshot.registry();
    let pod = registry
        .pod(&proxy.namespace, &proxy.pod_name)
        .or_else(|| {
            proxy
                .ip_addresses
                .iter()
                .flat_map(|ip| registry.pods_by_ip(ip))
                .find(|w| w.namespace == proxy.namespace)
        })
        .cloned();
    let mut resolved = proxy.clone();
    if let Some(w) = &pod {
        resolved.merge_registry_pod(
            &w.labels,
            w.service_account.as_deref(),
            &w.ips,
            w.locality.as_deref(),
        );
    }
    resolved.add_topology_labels();
    (resolved, pod)
}

fn pack<M: Message + Name>(name: String, m: &M) -> Named {
    Named {
        name,
        resource: util::any(m),
    }
}

fn sorted(mut v: Vec<Named>) -> Vec<Named> {
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v.dedup_by(|a, b| a.name == b.name);
    v
}

/// Generates every resource for `proxy` from `snapshot`.
pub fn generate(snapshot: &Snapshot, proxy: &Proxy) -> Generated {
    generate_part(snapshot, proxy, Part::All)
}

/// The part of a sidecar's config that every proxy of its
/// [`sharing::generation_class`] gets: outbound clusters, endpoints, outbound listeners and
/// route configurations. With [`generate_own`] it makes [`generate`]'s output, for proxies
/// that have a class.
pub fn generate_shared(snapshot: &Snapshot, proxy: &Proxy) -> Generated {
    generate_part(snapshot, proxy, Part::Shared)
}

/// The part of a sidecar's config that is its own: inbound clusters and the virtual
/// inbound listener, from its Pod's Services.
pub fn generate_own(snapshot: &Snapshot, proxy: &Proxy) -> Generated {
    generate_part(snapshot, proxy, Part::Own)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    All,
    Shared,
    Own,
}

fn generate_part(snapshot: &Snapshot, proxy: &Proxy, part: Part) -> Generated {
    let (proxy, workload) = resolve_proxy(snapshot, proxy);
    let scope = match part {
        Part::Own => Scope::for_inbound(snapshot, &proxy),
        Part::All | Part::Shared => Scope::build(snapshot, &proxy),
    };
    let ctx = Ctx {
        snapshot,
        proxy,
        workload,
        scope,
        dr_cache: Default::default(),
    };
    let (shared, own) = (part != Part::Own, part != Part::Shared);

    let mut clusters = Vec::new();
    let mut endpoints = Vec::new();
    let mut listeners = Vec::new();
    let mut routes = Vec::new();
    if shared {
        clusters.reserve(ctx.scope.services.len() * 2 + 8);
        endpoints.reserve(ctx.scope.services.len() * 2);
        cluster::outbound(&ctx, &mut clusters);
        endpoint::all(&ctx, &mut endpoints);
    }

    match ctx.proxy.kind {
        ProxyKind::Sidecar => {
            if shared {
                outbound_sidecar(&ctx, &mut listeners, &mut routes);
            }
            if own {
                let ports = inbound_ports(&ctx);
                let cluster_ports: Vec<_> = ports.iter().map(|p| (p.port, p.protocol)).collect();
                cluster::inbound(&ctx, &cluster_ports, &mut clusters);
                if ctx.proxy.interception_mode != InterceptionMode::None {
                    listeners.push(listener::virtual_inbound(&ctx, &ports));
                }
            }
        }
        ProxyKind::Router if shared => gateway::generate(&ctx, &mut listeners, &mut routes),
        ProxyKind::Router => {}
    }
    // Patches may add or remove resources of either part: patched proxies have no class,
    // so they are only ever generated whole.
    if part == Part::All {
        apply_envoy_filters(&ctx, &mut listeners, &mut routes);
    }

    Generated {
        listeners: sorted(listeners.iter().map(|l| pack(l.name.clone(), l)).collect()),
        routes: sorted(routes.iter().map(|r| pack(r.name.clone(), r)).collect()),
        clusters: sorted(clusters),
        endpoints: sorted(endpoints),
        secrets: Vec::new(),
    }
}

/// A sidecar's outbound listeners and their route configurations.
fn outbound_sidecar(
    ctx: &Ctx<'_>,
    listeners: &mut Vec<envoy_types::pb::envoy::config::listener::v3::Listener>,
    routes: &mut Vec<envoy_types::pb::envoy::config::route::v3::RouteConfiguration>,
) {
    let mut needs = listener::RdsNeeds::default();
    listener::outbound(ctx, listeners, &mut needs);
    if ctx.proxy.interception_mode != InterceptionMode::None {
        listeners.push(listener::virtual_outbound(ctx));
    }
    // Virtual hosts per port, built once: the port's route configuration and the
    // `host:port` ones of undeclared-protocol services on it share them.
    let mut vhosts: std::collections::BTreeMap<u16, Vec<_>> = Default::default();
    for port in needs
        .ports
        .iter()
        .chain(needs.sniffed.iter().map(|(_, p)| p))
    {
        vhosts
            .entry(*port)
            .or_insert_with(|| route::outbound_virtual_hosts(ctx, *port));
    }
    for (svc, port) in &needs.sniffed {
        routes.push(route::sniffed_route_config(svc, *port, &vhosts[port]));
    }
    for port in &needs.ports {
        let port_vhosts = vhosts.remove(port).unwrap_or_default();
        routes.push(route::outbound_route_config(ctx, *port, port_vhosts));
    }
}

/// The EnvoyFilter patches for this proxy, applied to its listeners and route
/// configurations (clusters and endpoints are never patched).
fn apply_envoy_filters(
    ctx: &Ctx<'_>,
    listeners: &mut [envoy_types::pb::envoy::config::listener::v3::Listener],
    routes: &mut [envoy_types::pb::envoy::config::route::v3::RouteConfiguration],
) {
    let patches = envoy_filter::for_proxy(
        &ctx.snapshot.index().envoy_filters,
        &ctx.proxy,
        &ctx.snapshot.mesh().root_namespace,
    );
    if patches.is_empty() {
        return;
    }
    envoy_filter::apply_listeners(&patches, listeners, ctx.proxy.kind);
    let (context, ports) = match ctx.proxy.kind {
        ProxyKind::Sidecar => (
            mesh_api::networking::PatchContext::SidecarOutbound,
            envoy_filter::GatewayPorts::default(),
        ),
        ProxyKind::Router => (
            mesh_api::networking::PatchContext::Gateway,
            gateway::service_ports(ctx),
        ),
    };
    for rc in routes.iter_mut() {
        envoy_filter::apply_route_configuration(&patches, rc, context, &ports);
    }
}

/// The ports the proxy's workload serves (from the Services selecting its Pod), one per
/// target port, in port order.
fn inbound_ports(ctx: &Ctx<'_>) -> Vec<listener::InboundPort> {
    let Some(w) = &ctx.workload else {
        return Vec::new();
    };
    let mut out: std::collections::BTreeMap<u16, listener::InboundPort> = Default::default();
    for (svc, ports) in ctx.snapshot.registry().services_for_workload(w) {
        for (sp, target) in ports {
            if sp.protocol == mesh_api::naming::Protocol::Udp {
                continue;
            }
            out.entry(target).or_insert_with(|| listener::InboundPort {
                port: target,
                protocol: sp.protocol,
                host: svc.hostname.clone(),
            });
        }
    }
    out.into_values().collect()
}
