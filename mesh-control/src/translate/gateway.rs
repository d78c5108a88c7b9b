//! Router (gateway) proxies: listeners for the servers of every Gateway that selects the
//! proxy, and `http.<port>` route configurations from the VirtualServices bound to those
//! Gateways. Plaintext HTTP and TCP servers are translated; TLS modes come with the
//! security work and are reported as not yet supported.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration, VirtualHost};
use mesh_api::naming::Protocol;
use mesh_api::networking::Server;

use super::Ctx;
use super::filters::{
    HCM, Routes, TCP_PROXY, http_connection_manager, network_filter, tcp_proxy, tcp_proxy_weighted,
};
use super::hosts::{host_matches, hosts_intersect, with_port};
use super::index::EffectiveVs;
use super::route::{RouteCtx, dedupe_vhosts, not_found_vhost, routes_for_vs};
use super::util::{boolv, socket_address, u32v};
use crate::registry::selects;

/// One Gateway server as this proxy serves it.
#[derive(Debug, Clone)]
struct BoundServer {
    /// `namespace/name` of the Gateway.
    gateway: String,
    gateway_ns: String,
    server: Server,
}

/// For EnvoyFilter route matches: the Service ports that reach each port the gateway
/// workload listens on.
pub fn service_ports(ctx: &Ctx<'_>) -> super::envoy_filter::GatewayPorts {
    let mut out = super::envoy_filter::GatewayPorts::default();
    if let Some(w) = &ctx.workload {
        for (_, ports) in ctx.snapshot.registry().services_for_workload(w) {
            for (sp, target) in ports {
                out.0.entry(target).or_default().insert(sp.port);
            }
        }
    }
    out
}

/// The servers of every Gateway selecting the proxy, by the port the proxy listens on.
fn servers(ctx: &Ctx<'_>) -> BTreeMap<u16, Vec<BoundServer>> {
    // A Gateway's port is the Service port; the proxy listens on the target port.
    let mut target: BTreeMap<u16, u16> = BTreeMap::new();
    if let Some(w) = &ctx.workload {
        for (_, ports) in ctx.snapshot.registry().services_for_workload(w) {
            for (sp, t) in ports {
                target.entry(sp.port).or_insert(t);
            }
        }
    }
    let mut out: BTreeMap<u16, Vec<BoundServer>> = BTreeMap::new();
    for gw in &ctx.snapshot.config().gateways {
        if gw.spec.selector.is_empty() || !selects(&gw.spec.selector, &ctx.proxy.labels) {
            continue;
        }
        for server in &gw.spec.servers {
            let Ok(number) = u16::try_from(server.port.number) else {
                continue;
            };
            let port = target.get(&number).copied().unwrap_or(number);
            out.entry(port).or_default().push(BoundServer {
                gateway: format!("{}/{}", gw.meta.namespace, gw.meta.name),
                gateway_ns: gw.meta.namespace.clone(),
                server: server.clone(),
            });
        }
    }
    out
}

fn is_http_server(s: &Server) -> bool {
    let p = Protocol::parse(&s.port.protocol);
    p.is_http() && s.tls.is_none()
}

/// `ns/host` (or `*/host`, `./host`, `host`) of a server: the namespace filter and the host.
fn split_server_host<'a>(h: &'a str, gw_ns: &'a str) -> (Option<&'a str>, &'a str) {
    match h.split_once('/') {
        Some(("*", host)) => (None, host),
        Some((".", host)) => (Some(gw_ns), host),
        Some((ns, host)) => (Some(ns), host),
        None => (None, h),
    }
}

/// Listeners and route configurations of a router proxy.
pub fn generate(
    ctx: &Ctx<'_>,
    listeners: &mut Vec<Listener>,
    routes: &mut Vec<RouteConfiguration>,
) {
    let mesh = ctx.snapshot.mesh();
    for (port, bound) in servers(ctx) {
        let name = format!("0.0.0.0_{port}");
        let http: Vec<&BoundServer> = bound.iter().filter(|b| is_http_server(&b.server)).collect();
        let mut l = Listener {
            name: name.clone(),
            address: Some(socket_address("0.0.0.0", port)),
            ..Default::default()
        };
        if !http.is_empty() {
            let route_name = format!("http.{port}");
            let hcm = http_connection_manager(
                format!("outbound_{name}"),
                Routes::Rds(route_name.clone()),
                mesh,
                true,
            );
            l.filter_chains.push(FilterChain {
                filters: vec![network_filter(HCM, &hcm)],
                ..Default::default()
            });
            routes.push(route_config(ctx, route_name, &http));
        } else if let Some(tcp) = bound
            .iter()
            .find(|b| Protocol::parse(&b.server.port.protocol) == Protocol::Tcp)
        {
            match tcp_route(ctx, tcp) {
                Some(f) => l.filter_chains.push(FilterChain {
                    filters: vec![f],
                    ..Default::default()
                }),
                None => continue,
            }
        } else {
            for b in &bound {
                tracing::debug!(
                    component = "translate",
                    gateway = %b.gateway,
                    port = b.server.port.number,
                    protocol = %b.server.port.protocol,
                    "gateway server with TLS is not translated yet"
                );
            }
            continue;
        }
        listeners.push(l);
    }
}

/// The VirtualServices bound to a gateway that cover a server host, with the host each
/// virtual host is built for (the more specific of the two).
fn bound_hosts<'a>(ctx: &'a Ctx<'_>, b: &BoundServer) -> Vec<(String, &'a EffectiveVs)> {
    let mut out = Vec::new();
    for vs in &ctx.snapshot.index().virtual_services {
        if !vs.binds(&b.gateway) || !vs.visibility.visible_to(&ctx.proxy.namespace) {
            continue;
        }
        for server_host in &b.server.hosts {
            let (ns, shost) = split_server_host(server_host, &b.gateway_ns);
            if ns.is_some_and(|ns| ns != vs.meta.namespace) {
                continue;
            }
            for vhost in &vs.spec.hosts {
                if !hosts_intersect(shost, vhost) {
                    continue;
                }
                let host = if host_matches(shost, vhost) {
                    vhost.clone()
                } else {
                    shost.to_string()
                };
                if !out
                    .iter()
                    .any(|(h, v): &(String, &EffectiveVs)| *h == host && std::ptr::eq(*v, &**vs))
                {
                    out.push((host, &**vs));
                }
            }
        }
    }
    out
}

fn gateway_domains(host: &str, port: u32) -> Vec<String> {
    if host == "*" {
        vec![host.to_string()]
    } else if host.starts_with('*') {
        vec![host.to_string(), format!("{host}:{port}")]
    } else {
        vec![host.to_string(), format!("{host}:*")]
    }
}

fn route_config(ctx: &Ctx<'_>, name: String, servers: &[&BoundServer]) -> RouteConfiguration {
    // Routes of every VirtualService for a host are merged, oldest first, catch-alls last.
    let mut per_host: BTreeMap<String, (u32, Vec<Route>)> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for b in servers {
        let gateways = [b.gateway.clone()];
        let rc = RouteCtx {
            ctx,
            port: b.server.port.number as u16,
            gateways: &gateways,
            is_tls: false,
        };
        for (host, vs) in bound_hosts(ctx, b) {
            let routes = routes_for_vs(&rc, vs);
            if routes.is_empty() {
                continue;
            }
            if !per_host.contains_key(&host) {
                order.push(host.clone());
            }
            per_host
                .entry(host)
                .or_insert_with(|| (b.server.port.number, Vec::new()))
                .1
                .extend(routes);
        }
    }
    let mut vhosts: Vec<VirtualHost> = Vec::new();
    let mut seen = BTreeSet::new();
    for host in order {
        if !seen.insert(host.clone()) {
            continue;
        }
        let Some((port, routes)) = per_host.remove(&host) else {
            continue;
        };
        let (catch_all, mut specific): (Vec<Route>, Vec<Route>) =
            routes.into_iter().partition(is_catch_all_route);
        specific.extend(catch_all);
        vhosts.push(VirtualHost {
            name: with_port(&host, port as u16),
            domains: gateway_domains(&host, port),
            routes: specific,
            include_request_attempt_count: true,
            ..Default::default()
        });
    }
    dedupe_vhosts(&mut vhosts);
    if vhosts.is_empty() {
        let port = servers
            .first()
            .map(|b| b.server.port.number as u16)
            .unwrap_or(0);
        vhosts.push(not_found_vhost(port));
    }
    RouteConfiguration {
        name,
        virtual_hosts: vhosts,
        validate_clusters: Some(boolv(false)),
        max_direct_response_body_size_bytes: Some(u32v(1024 * 1024)),
        ..Default::default()
    }
}

fn is_catch_all_route(r: &Route) -> bool {
    use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
    r.r#match.as_ref().is_some_and(|m| {
        matches!(&m.path_specifier, Some(PathSpecifier::Prefix(p)) if p == "/")
            && m.headers.is_empty()
            && m.query_parameters.is_empty()
    })
}

/// A TCP server: the first VirtualService `tcp` rule bound to the gateway.
fn tcp_route(
    ctx: &Ctx<'_>,
    b: &BoundServer,
) -> Option<envoy_types::pb::envoy::config::listener::v3::Filter> {
    let mesh = ctx.snapshot.mesh();
    for (_, vs) in bound_hosts(ctx, b) {
        for rule in &vs.spec.tcp {
            let applies = rule.r#match.is_empty()
                || rule.r#match.iter().any(|m| {
                    m.port.is_none_or(|p| p == b.server.port.number)
                        && (m.gateways.is_empty() || m.gateways.contains(&b.gateway))
                });
            if !applies {
                continue;
            }
            let cluster = |d: &mesh_api::networking::Destination| {
                let port = d
                    .port
                    .as_ref()
                    .map(|p| p.number)
                    .unwrap_or(b.server.port.number) as u16;
                super::cluster::outbound_name(port, d.subset.as_deref().unwrap_or(""), &d.host)
            };
            let dests: Vec<(String, u32)> = if rule.route.len() == 1 {
                vec![(cluster(&rule.route[0].destination), 100)]
            } else {
                rule.route
                    .iter()
                    .filter(|r| r.weight.unwrap_or(0) > 0)
                    .map(|r| (cluster(&r.destination), r.weight.unwrap_or(0) as u32))
                    .collect()
            };
            return match dests.len() {
                0 => None,
                1 => Some(network_filter(TCP_PROXY, &tcp_proxy(&dests[0].0, mesh))),
                _ => Some(network_filter(
                    TCP_PROXY,
                    &tcp_proxy_weighted(&b.gateway, dests, mesh),
                )),
            };
        }
    }
    None
}
