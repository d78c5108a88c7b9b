//! Route-side patches (`rc_patch.go`): `ROUTE_CONFIGURATION` merges, `VIRTUAL_HOST` and
//! `HTTP_ROUTE` operations, matched on the route configuration's port (from its name: the
//! port for sidecars, `inbound|<port>||` inbound, `http.<port>` on gateways, where a
//! Service port of the gateway matches too), name, virtual host name or domain, and route
//! name and action.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration, VirtualHost, route};
use mesh_api::networking::{ApplyTo, Operation, PatchContext, RouteAction};
use prost::Message;

use super::CompiledPatch;

/// For gateways: the Service ports that map to each port the gateway listens on.
#[derive(Debug, Default)]
pub struct GatewayPorts(pub BTreeMap<u16, BTreeSet<u16>>);

/// The port a route configuration serves, from its name.
fn route_port(context: PatchContext, name: &str) -> u32 {
    if context == PatchContext::Gateway {
        return name
            .strip_prefix("http.")
            .or_else(|| name.strip_prefix("https."))
            .and_then(|rest| rest.split('.').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
    }
    if let Some(rest) = name.strip_prefix("inbound|") {
        return rest
            .split('|')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
    }
    name.parse().unwrap_or(0)
}

/// Istio's `routeConfigurationMatch`.
fn route_configuration_match(
    rc: &RouteConfiguration,
    p: &CompiledPatch,
    context: PatchContext,
    ports: &GatewayPorts,
) -> bool {
    let Some(m) = &p.route else { return true };
    let port = route_port(context, &rc.name);
    if let Some(want) = m.port_number.filter(|p| *p != 0) {
        let matches = if context == PatchContext::Gateway {
            match u16::try_from(port).ok().and_then(|p| ports.0.get(&p)) {
                Some(service_ports) => {
                    u16::try_from(want).is_ok_and(|w| service_ports.contains(&w))
                }
                None => port == want,
            }
        } else {
            port == want
        };
        if !matches {
            return false;
        }
    }
    if context == PatchContext::Gateway {
        // Plaintext gateway routes (`http.<port>`) carry neither a port name nor a gateway.
        if m.port_name.as_deref().is_some_and(|n| !n.is_empty())
            || m.gateway.as_deref().is_some_and(|g| !g.is_empty())
        {
            return false;
        }
    }
    m.name
        .as_deref()
        .is_none_or(|n| n.is_empty() || n == rc.name)
}

fn virtual_host_match(vh: &VirtualHost, p: &CompiledPatch) -> bool {
    let Some(m) = p.route.as_ref().and_then(|r| r.vhost.as_ref()) else {
        return true;
    };
    if let Some(domain) = m.domain_name.as_deref().filter(|d| !d.is_empty())
        && !vh.domains.iter().any(|d| d == domain)
    {
        return false;
    }
    m.name
        .as_deref()
        .is_none_or(|n| n.is_empty() || n == vh.name)
}

fn has_route_match(p: &CompiledPatch) -> bool {
    p.route
        .as_ref()
        .and_then(|r| r.vhost.as_ref())
        .is_some_and(|v| v.route.is_some())
}

fn route_match(r: &Route, p: &CompiledPatch) -> bool {
    let Some(m) = p
        .route
        .as_ref()
        .and_then(|r| r.vhost.as_ref())
        .and_then(|v| v.route.as_ref())
    else {
        return true;
    };
    if m.name
        .as_deref()
        .is_some_and(|n| !n.is_empty() && n != r.name)
    {
        return false;
    }
    match m.action.unwrap_or_default() {
        RouteAction::Any => true,
        RouteAction::Route => matches!(r.action, Some(route::Action::Route(_))),
        RouteAction::Redirect => matches!(r.action, Some(route::Action::Redirect(_))),
        RouteAction::DirectResponse => {
            matches!(r.action, Some(route::Action::DirectResponse(_)))
        }
    }
}

/// Applies route patches of `context` to one route configuration; returns whether any
/// applied.
pub fn apply_route_configuration(
    patches: &[&CompiledPatch],
    rc: &mut RouteConfiguration,
    context: PatchContext,
    ports: &GatewayPorts,
) -> bool {
    let patches: Vec<&CompiledPatch> = patches
        .iter()
        .copied()
        .filter(|p| {
            p.apply_to.is_route_object()
                && p.context_matches(context)
                && route_configuration_match(rc, p, context, ports)
        })
        .collect();
    if patches.is_empty() {
        return false;
    }
    for p in patches
        .iter()
        .filter(|p| p.apply_to == ApplyTo::RouteConfiguration && p.operation == Operation::Merge)
    {
        merge_into(rc, &p.value.encoded);
    }
    let vhost_patches: Vec<&CompiledPatch> = patches
        .iter()
        .copied()
        .filter(|p| p.apply_to == ApplyTo::VirtualHost)
        .collect();
    let route_patches: Vec<&CompiledPatch> = patches
        .iter()
        .copied()
        .filter(|p| p.apply_to == ApplyTo::HttpRoute)
        .collect();
    let vhosts = std::mem::take(&mut rc.virtual_hosts);
    for mut vh in vhosts {
        let mut removed = false;
        for p in &vhost_patches {
            if !virtual_host_match(&vh, p) {
                continue;
            }
            match p.operation {
                Operation::Remove => {
                    removed = true;
                    break;
                }
                Operation::Merge => merge_into(&mut vh, &p.value.encoded),
                Operation::Replace => {
                    if let Some(v) = &p.value.virtual_host {
                        vh = v.clone();
                    }
                }
                _ => {}
            }
        }
        if removed {
            continue;
        }
        patch_routes(&mut vh, &route_patches);
        rc.virtual_hosts.push(vh);
    }
    for p in vhost_patches
        .iter()
        .filter(|p| p.operation == Operation::Add)
    {
        if let Some(v) = &p.value.virtual_host {
            rc.virtual_hosts.push(v.clone());
        }
    }
    true
}

fn merge_into<M: Message>(target: &mut M, encoded: &[u8]) {
    // The value parsed as this message type when the EnvoyFilter was compiled.
    if let Err(e) = target.merge(encoded) {
        tracing::warn!(component = "envoy_filter", error = %e, "merge patch does not decode; skipped");
    }
}

fn patch_routes(vh: &mut VirtualHost, patches: &[&CompiledPatch]) {
    let patches: Vec<&CompiledPatch> = patches
        .iter()
        .copied()
        .filter(|p| virtual_host_match(vh, p))
        .collect();
    if patches.is_empty() {
        return;
    }
    let routes = std::mem::take(&mut vh.routes);
    for mut r in routes {
        let mut removed = false;
        for p in &patches {
            if !route_match(&r, p) {
                continue;
            }
            match p.operation {
                Operation::Remove => {
                    removed = true;
                    break;
                }
                Operation::Merge => merge_into(&mut r, &p.value.encoded),
                _ => {}
            }
        }
        if !removed {
            vh.routes.push(r);
        }
    }
    for p in &patches {
        let Some(value) = &p.value.route else {
            continue;
        };
        let position = vh.routes.iter().position(|r| route_match(r, p));
        match p.operation {
            Operation::Add => vh.routes.push(value.clone()),
            Operation::InsertAfter if !has_route_match(p) => vh.routes.push(value.clone()),
            Operation::InsertAfter => {
                if let Some(i) = position {
                    vh.routes.insert(i + 1, value.clone());
                }
            }
            Operation::InsertBefore | Operation::InsertFirst if !has_route_match(p) => {
                vh.routes.insert(0, value.clone())
            }
            Operation::InsertBefore => {
                if let Some(i) = position {
                    vh.routes.insert(i, value.clone());
                }
            }
            // Istio inserts at the top once a matching route exists.
            Operation::InsertFirst if position.is_some() => vh.routes.insert(0, value.clone()),
            _ => {}
        }
    }
}
