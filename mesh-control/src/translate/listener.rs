//! Sidecar listeners: `virtualOutbound` (15001, hands connections to the listener of their
//! original destination), one outbound listener per service port (`0.0.0.0_<port>` for
//! HTTP, `<vip>_<port>` for TCP, TLS and undeclared protocols), and `virtualInbound`
//! (15006) with a filter chain per workload port.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{CidrRange, TrafficDirection};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener,
};
use envoy_types::pb::envoy::config::route::v3::{
    Decorator, Route, RouteAction, RouteConfiguration, VirtualHost,
    route::Action,
    route_action::{ClusterSpecifier, MaxStreamDuration},
};
use mesh_api::naming::{
    BLACKHOLE_CLUSTER, INBOUND_PASSTHROUGH_CLUSTER_IPV4, PASSTHROUGH_CLUSTER, Protocol,
};
use mesh_api::networking::{Destination, RouteDestination};

use super::Ctx;
use super::cluster::{inbound_name, outbound_name};
use super::filters::{
    HCM, PLAINTEXT_HTTP_ALPNS, Routes, TCP_PROXY, http_connection_manager, http_inspector,
    network_filter, original_dst, tcp_proxy, tcp_proxy_weighted, tls_inspector,
};
use super::hosts::host_matches;
use super::index::MESH_GATEWAY;
use super::route::route_match;
use super::util::{boolv, socket_address, u32v, zero};
use crate::registry::{Service, ServicePort};

pub const VIRTUAL_OUTBOUND: &str = "virtualOutbound";
pub const VIRTUAL_INBOUND: &str = "virtualInbound";
pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PORT: u16 = 15006;

/// The route configurations the outbound listeners refer to.
#[derive(Debug, Default)]
pub struct RdsNeeds {
    /// Ports with an HTTP listener (route configuration named by the port).
    pub ports: BTreeSet<u16>,
    /// Undeclared-protocol service ports (route configuration `host:port`).
    pub sniffed: Vec<(Arc<Service>, u16)>,
}

fn chain(name: &str, m: Option<FilterChainMatch>, filters: Vec<Filter>) -> FilterChain {
    FilterChain {
        name: name.to_string(),
        filter_chain_match: m,
        filters,
        ..Default::default()
    }
}

fn http_alpn_match() -> FilterChainMatch {
    FilterChainMatch {
        transport_protocol: "raw_buffer".to_string(),
        application_protocols: PLAINTEXT_HTTP_ALPNS.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn listener(
    name: String,
    ip: &str,
    port: u16,
    bind: bool,
    direction: TrafficDirection,
) -> Listener {
    Listener {
        name,
        address: Some(socket_address(ip, port)),
        bind_to_port: (!bind).then(|| boolv(false)),
        traffic_direction: direction as i32,
        ..Default::default()
    }
}

/// The cluster unknown traffic goes to: `PassthroughCluster` for ALLOW_ANY, else
/// `BlackHoleCluster`.
fn unknown_cluster(ctx: &Ctx<'_>) -> &'static str {
    if ctx.scope.allow_any() {
        PASSTHROUGH_CLUSTER
    } else {
        BLACKHOLE_CLUSTER
    }
}

/// Every outbound listener of a sidecar.
pub fn outbound(ctx: &Ctx<'_>, out: &mut Vec<Listener>, needs: &mut RdsNeeds) {
    let mesh = ctx.snapshot.mesh();
    let mut http_ports: BTreeSet<u16> = BTreeSet::new();
    let mut by_name: BTreeMap<String, Listener> = BTreeMap::new();

    for svc in &ctx.scope.services {
        for port in &svc.ports {
            let p = port.port;
            if p == OUTBOUND_PORT || p == INBOUND_PORT {
                continue;
            }
            match port.protocol {
                Protocol::Udp => {}
                proto if proto.is_http() => {
                    http_ports.insert(p);
                }
                proto => {
                    let addr = svc.vip().unwrap_or("0.0.0.0").to_string();
                    let name = format!("{addr}_{p}");
                    if by_name.contains_key(&name) {
                        continue;
                    }
                    let mut l = listener(name.clone(), &addr, p, false, TrafficDirection::Outbound);
                    let cluster = outbound_name(p, "", &svc.hostname);
                    if proto.is_tls() {
                        l.listener_filters.push(tls_inspector());
                        l.filter_chains = tls_chains(ctx, svc, port);
                    } else {
                        let tcp = tcp_filter(ctx, svc, port).unwrap_or_else(|| {
                            network_filter(TCP_PROXY, &tcp_proxy(&cluster, mesh))
                        });
                        if proto == Protocol::Unsupported {
                            // Undeclared protocol: sniff HTTP, otherwise plain TCP.
                            l.listener_filters.push(tls_inspector());
                            l.listener_filters.push(http_inspector());
                            let route_name = super::hosts::with_port(&svc.hostname, p);
                            let hcm = http_connection_manager(
                                format!("outbound_{name}"),
                                Routes::Rds(route_name),
                                mesh,
                                false,
                            );
                            l.filter_chains.push(chain(
                                &format!("{name}-http"),
                                Some(http_alpn_match()),
                                vec![network_filter(HCM, &hcm)],
                            ));
                            needs.sniffed.push((svc.clone(), p));
                        }
                        l.filter_chains
                            .push(chain(&format!("{name}-tcp"), None, vec![tcp]));
                    }
                    by_name.insert(name, l);
                }
            }
        }
    }

    for p in http_ports {
        let name = format!("0.0.0.0_{p}");
        if by_name.contains_key(&name) {
            // A TCP service without VIP took this port; Istio would also keep one of them.
            tracing::debug!(component = "translate", listener = %name, "HTTP and headless TCP services share a port; keeping the TCP listener");
            continue;
        }
        let mut l = listener(
            name.clone(),
            "0.0.0.0",
            p,
            false,
            TrafficDirection::Outbound,
        );
        l.listener_filters = vec![tls_inspector(), http_inspector()];
        let hcm = http_connection_manager(
            format!("outbound_{name}"),
            Routes::Rds(p.to_string()),
            mesh,
            false,
        );
        l.filter_chains.push(chain(
            &format!("{name}-http"),
            Some(http_alpn_match()),
            vec![network_filter(HCM, &hcm)],
        ));
        // Anything that is not plaintext HTTP (say, TLS the app originates) passes through.
        let other = unknown_cluster(ctx);
        l.filter_chains.push(chain(
            &format!("{name}-passthrough"),
            None,
            vec![network_filter(TCP_PROXY, &tcp_proxy(other, mesh))],
        ));
        needs.ports.insert(p);
        by_name.insert(name, l);
    }
    out.extend(by_name.into_values());
}

/// The cluster(s) of a TCP/TLS route destination list.
fn destinations(
    ctx: &Ctx<'_>,
    route: &[RouteDestination],
    listener_port: u16,
) -> Vec<(String, u32)> {
    let cluster = |d: &Destination| {
        let port = match (&d.port, ctx.scope.service(&d.host)) {
            (Some(p), _) => p.number as u16,
            (None, Some(s)) if s.ports.len() == 1 => s.ports[0].port,
            _ => listener_port,
        };
        outbound_name(port, d.subset.as_deref().unwrap_or(""), &d.host)
    };
    if route.len() == 1 {
        return vec![(cluster(&route[0].destination), 100)];
    }
    route
        .iter()
        .filter(|r| r.weight.unwrap_or(0) > 0)
        .map(|r| (cluster(&r.destination), r.weight.unwrap_or(0) as u32))
        .collect()
}

fn tcp_from(ctx: &Ctx<'_>, stat: &str, dests: Vec<(String, u32)>) -> Option<Filter> {
    let mesh = ctx.snapshot.mesh();
    match dests.len() {
        0 => None,
        1 => Some(network_filter(TCP_PROXY, &tcp_proxy(&dests[0].0, mesh))),
        _ => Some(network_filter(
            TCP_PROXY,
            &tcp_proxy_weighted(stat, dests, mesh),
        )),
    }
}

/// The VirtualServices (bound to `mesh`) that claim this service's host.
fn vs_for<'a>(
    ctx: &'a Ctx<'_>,
    svc: &'a Service,
) -> impl Iterator<Item = &'a super::index::EffectiveVs> + 'a {
    ctx.scope
        .mesh_virtual_services
        .iter()
        .filter(move |(_, hosts)| hosts.iter().any(|h| host_matches(h, &svc.hostname)))
        .map(|(vs, _)| &**vs)
}

/// The tcp_proxy of a VirtualService `tcp` rule for this service port, if one applies.
fn tcp_filter(ctx: &Ctx<'_>, svc: &Service, port: &ServicePort) -> Option<Filter> {
    for vs in vs_for(ctx, svc) {
        for rule in &vs.spec.tcp {
            let applies = rule.r#match.is_empty()
                || rule.r#match.iter().any(|m| {
                    m.port.is_none_or(|p| p == u32::from(port.port))
                        && (m.gateways.is_empty() || m.gateways.iter().any(|g| g == MESH_GATEWAY))
                        && crate::registry::selects(&m.source_labels, &ctx.proxy.labels)
                        && m.source_namespace
                            .as_deref()
                            .is_none_or(|ns| ns == ctx.proxy.namespace)
                });
            if applies {
                let stat = outbound_name(port.port, "", &svc.hostname);
                return tcp_from(ctx, &stat, destinations(ctx, &rule.route, port.port));
            }
        }
    }
    None
}

/// TLS service port: a chain per VirtualService `tls` rule, matched by SNI, then the
/// service's own cluster for everything else.
fn tls_chains(ctx: &Ctx<'_>, svc: &Service, port: &ServicePort) -> Vec<FilterChain> {
    let mesh = ctx.snapshot.mesh();
    let mut chains = Vec::new();
    let mut seen_sni: BTreeSet<Vec<String>> = BTreeSet::new();
    for vs in vs_for(ctx, svc) {
        for (i, rule) in vs.spec.tls.iter().enumerate() {
            for m in &rule.r#match {
                if m.port.is_some_and(|p| p != u32::from(port.port))
                    || !(m.gateways.is_empty() || m.gateways.iter().any(|g| g == MESH_GATEWAY))
                    || !crate::registry::selects(&m.source_labels, &ctx.proxy.labels)
                {
                    continue;
                }
                let mut sni = m.sni_hosts.clone();
                sni.sort();
                if !seen_sni.insert(sni.clone()) {
                    continue;
                }
                let stat = outbound_name(port.port, "", &svc.hostname);
                if let Some(f) = tcp_from(ctx, &stat, destinations(ctx, &rule.route, port.port)) {
                    chains.push(chain(
                        &format!("{}/{}-tls-{i}", vs.meta.namespace, vs.meta.name),
                        Some(FilterChainMatch {
                            server_names: sni,
                            ..Default::default()
                        }),
                        vec![f],
                    ));
                }
            }
        }
    }
    let cluster = outbound_name(port.port, "", &svc.hostname);
    chains.push(chain(
        "tls-default",
        None,
        vec![network_filter(TCP_PROXY, &tcp_proxy(&cluster, mesh))],
    ));
    chains
}

/// `virtualOutbound`: every captured outbound connection lands here and is handed to the
/// listener of its original destination; what no listener takes goes to the passthrough
/// (or black hole) cluster. Connections to 15001 itself are dropped to prevent loops.
pub fn virtual_outbound(ctx: &Ctx<'_>) -> Listener {
    let mesh = ctx.snapshot.mesh();
    let mut l = listener(
        VIRTUAL_OUTBOUND.to_string(),
        "0.0.0.0",
        OUTBOUND_PORT,
        true,
        TrafficDirection::Outbound,
    );
    l.use_original_dst = Some(boolv(true));
    l.filter_chains = vec![
        chain(
            "virtualOutbound-blackhole",
            Some(FilterChainMatch {
                destination_port: Some(u32v(u32::from(OUTBOUND_PORT))),
                ..Default::default()
            }),
            vec![network_filter(
                TCP_PROXY,
                &tcp_proxy(BLACKHOLE_CLUSTER, mesh),
            )],
        ),
        chain(
            "virtualOutbound-catchall-tcp",
            None,
            vec![network_filter(
                TCP_PROXY,
                &tcp_proxy(unknown_cluster(ctx), mesh),
            )],
        ),
    ];
    l
}

/// One port the workload serves, from the Services selecting it.
#[derive(Debug, Clone)]
pub struct InboundPort {
    pub port: u16,
    pub protocol: Protocol,
    /// The service host it is served under (for trace operation names).
    pub host: String,
}

fn inbound_route_config(port: &InboundPort) -> RouteConfiguration {
    let cluster = inbound_name(port.port);
    RouteConfiguration {
        name: cluster.clone(),
        virtual_hosts: vec![VirtualHost {
            name: format!("inbound|http|{}", port.port),
            domains: vec!["*".to_string()],
            routes: vec![Route {
                name: "default".to_string(),
                r#match: Some(route_match(None)),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(cluster)),
                    timeout: Some(zero()),
                    max_stream_duration: Some(MaxStreamDuration {
                        max_stream_duration: Some(zero()),
                        grpc_timeout_header_max: Some(zero()),
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
                decorator: Some(Decorator {
                    operation: format!("{}:{}/*", port.host, port.port),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }],
        validate_clusters: Some(boolv(false)),
        ..Default::default()
    }
}

fn inbound_passthrough_route() -> RouteConfiguration {
    RouteConfiguration {
        name: INBOUND_PASSTHROUGH_CLUSTER_IPV4.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: "inbound|http|0".to_string(),
            domains: vec!["*".to_string()],
            routes: vec![Route {
                name: "default".to_string(),
                r#match: Some(route_match(None)),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(
                        INBOUND_PASSTHROUGH_CLUSTER_IPV4.to_string(),
                    )),
                    timeout: Some(zero()),
                    max_stream_duration: Some(MaxStreamDuration {
                        max_stream_duration: Some(zero()),
                        grpc_timeout_header_max: Some(zero()),
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        validate_clusters: Some(boolv(false)),
        ..Default::default()
    }
}

/// `virtualInbound`: a filter chain per workload port (HTTP through a connection manager
/// with an inline route, others through tcp_proxy), everything else passed through to the
/// original destination.
pub fn virtual_inbound(ctx: &Ctx<'_>, ports: &[InboundPort]) -> Listener {
    let mesh = ctx.snapshot.mesh();
    let mut l = listener(
        VIRTUAL_INBOUND.to_string(),
        "0.0.0.0",
        INBOUND_PORT,
        true,
        TrafficDirection::Inbound,
    );
    l.listener_filters = vec![original_dst(), tls_inspector(), http_inspector()];
    l.continue_on_listener_filters_timeout = true;
    l.listener_filters_timeout = ctx
        .snapshot
        .mesh()
        .protocol_detection_timeout
        .get()
        .map(super::util::duration);
    l.filter_chains.push(chain(
        "virtualInbound-blackhole",
        Some(FilterChainMatch {
            destination_port: Some(u32v(u32::from(INBOUND_PORT))),
            ..Default::default()
        }),
        vec![network_filter(
            TCP_PROXY,
            &tcp_proxy(BLACKHOLE_CLUSTER, mesh),
        )],
    ));
    for p in ports {
        let name = format!("0.0.0.0_{}", p.port);
        let port_match = |http: bool| FilterChainMatch {
            destination_port: Some(u32v(u32::from(p.port))),
            ..if http {
                http_alpn_match()
            } else {
                FilterChainMatch::default()
            }
        };
        let http_chain = || {
            let hcm = http_connection_manager(
                format!("inbound_{name}"),
                Routes::Inline(Box::new(inbound_route_config(p))),
                mesh,
                false,
            );
            vec![network_filter(HCM, &hcm)]
        };
        let tcp_chain = || {
            vec![network_filter(
                TCP_PROXY,
                &tcp_proxy(&inbound_name(p.port), mesh),
            )]
        };
        if p.protocol.is_http() {
            l.filter_chains
                .push(chain(&name, Some(port_match(false)), http_chain()));
        } else if p.protocol == Protocol::Unsupported {
            l.filter_chains.push(chain(
                &format!("{name}-http"),
                Some(port_match(true)),
                http_chain(),
            ));
            l.filter_chains
                .push(chain(&name, Some(port_match(false)), tcp_chain()));
        } else {
            l.filter_chains
                .push(chain(&name, Some(port_match(false)), tcp_chain()));
        }
    }
    let all_v4 = || {
        vec![CidrRange {
            address_prefix: "0.0.0.0".to_string(),
            prefix_len: Some(u32v(0)),
        }]
    };
    let hcm = http_connection_manager(
        "inbound_0.0.0.0_0".to_string(),
        Routes::Inline(Box::new(inbound_passthrough_route())),
        mesh,
        false,
    );
    l.filter_chains.push(chain(
        "virtualInbound-catchall-http",
        Some(FilterChainMatch {
            prefix_ranges: all_v4(),
            ..http_alpn_match()
        }),
        vec![network_filter(HCM, &hcm)],
    ));
    l.filter_chains.push(chain(
        VIRTUAL_INBOUND,
        Some(FilterChainMatch {
            prefix_ranges: all_v4(),
            ..Default::default()
        }),
        vec![network_filter(
            TCP_PROXY,
            &tcp_proxy(INBOUND_PASSTHROUGH_CLUSTER_IPV4, mesh),
        )],
    ));
    l
}
