//! Listener-side patches: `HTTP_FILTER` operations inside HTTP connection managers and
//! `NETWORK_FILTER` merges and removals, with Istio's listener, filter chain, filter and
//! sub-filter matching (`listener_patch.go`). The inline route configurations of inbound
//! connection managers get the route patches of the `SIDECAR_INBOUND` context.

use envoy_types::pb::envoy::config::core::v3::address;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager::RouteSpecifier, http_filter,
};
use mesh_api::networking::{ApplyTo, Operation, PatchContext};
use prost::Message;

use super::route::{GatewayPorts, apply_route_configuration};
use super::{CompiledPatch, listener_context, merge_any};
use crate::model::ProxyKind;
use crate::translate::filters::HCM;
use crate::translate::listener::{VIRTUAL_INBOUND, VIRTUAL_OUTBOUND};
use crate::translate::util::any;

fn is_virtual(l: &Listener) -> bool {
    l.name == VIRTUAL_INBOUND || l.name == VIRTUAL_OUTBOUND
}

fn port_of(l: &Listener) -> Option<u32> {
    match l.address.as_ref()?.address.as_ref()? {
        address::Address::SocketAddress(s) => match s.port_specifier {
            Some(
                envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(
                    p,
                ),
            ) => Some(p),
            _ => None,
        },
        _ => None,
    }
}

/// Istio's `listenerMatch` (the port is checked on the filter chain for the virtual
/// listeners, where it is the chain's destination port).
fn listener_match(l: &Listener, p: &CompiledPatch) -> bool {
    let Some(m) = &p.listener else { return true };
    if m.name
        .as_deref()
        .is_some_and(|n| !n.is_empty() && n != l.name)
    {
        return false;
    }
    if is_virtual(l) {
        return true;
    }
    match m.port_number.filter(|p| *p != 0) {
        Some(port) => port_of(l) == Some(port),
        None => true,
    }
}

/// Istio's `filterChainMatch`.
fn filter_chain_match(l: &Listener, fc: &FilterChain, p: &CompiledPatch) -> bool {
    let Some(m) = &p.listener else { return true };
    let fcm = fc.filter_chain_match.as_ref();
    if is_virtual(l)
        && let Some(port) = m.port_number.filter(|p| *p != 0)
        && fcm
            .and_then(|f| f.destination_port.as_ref())
            .map(|d| d.value)
            != Some(port)
    {
        return false;
    }
    let Some(want) = &m.filter_chain else {
        return true;
    };
    if let Some(name) = want.name.as_deref().filter(|n| !n.is_empty())
        && name != fc.name
    {
        return false;
    }
    if let Some(sni) = want.sni.as_deref().filter(|s| !s.is_empty())
        && !fcm.is_some_and(|f| f.server_names.iter().any(|s| s == sni))
    {
        return false;
    }
    if let Some(tp) = want.transport_protocol.as_deref().filter(|s| !s.is_empty())
        && fcm.map(|f| f.transport_protocol.as_str()) != Some(tp)
    {
        return false;
    }
    if let Some(protocols) = want
        .application_protocols
        .as_deref()
        .filter(|s| !s.is_empty())
    {
        let Some(f) = fcm else { return false };
        if !protocols
            .split(',')
            .all(|p| f.application_protocols.iter().any(|a| a == p))
        {
            return false;
        }
    }
    if let Some(port) = want.destination_port.filter(|p| *p > 0)
        && fcm
            .and_then(|f| f.destination_port.as_ref())
            .map(|d| d.value)
            != Some(port)
    {
        return false;
    }
    true
}

fn network_filter_name(p: &CompiledPatch) -> Option<&str> {
    p.listener
        .as_ref()?
        .filter_chain
        .as_ref()?
        .filter
        .as_ref()?
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
}

/// Istio's `networkFilterMatch`: the filter's name when the patch names one.
fn network_filter_match(f: &Filter, p: &CompiledPatch) -> bool {
    network_filter_name(p).is_none_or(|n| n == f.name)
}

fn sub_filter_name(p: &CompiledPatch) -> Option<&str> {
    network_filter_name(p)?;
    p.listener
        .as_ref()?
        .filter_chain
        .as_ref()?
        .filter
        .as_ref()?
        .sub_filter
        .as_ref()?
        .name
        .as_deref()
}

fn http_filter_match(f: &HttpFilter, p: &CompiledPatch) -> bool {
    sub_filter_name(p).is_none_or(|n| n == f.name)
}

/// Applies listener patches (and, in inbound connection managers, route patches) to every
/// listener of a proxy.
pub fn apply_listeners(patches: &[&CompiledPatch], listeners: &mut [Listener], kind: ProxyKind) {
    let relevant: Vec<&CompiledPatch> = patches
        .iter()
        .copied()
        .filter(|p| matches!(p.apply_to, ApplyTo::HttpFilter | ApplyTo::NetworkFilter))
        .collect();
    let route_patches: Vec<&CompiledPatch> = patches
        .iter()
        .copied()
        .filter(|p| p.apply_to.is_route_object())
        .collect();
    if relevant.is_empty() && route_patches.is_empty() {
        return;
    }
    for l in listeners.iter_mut() {
        let context = listener_context(kind, &l.name);
        let for_listener: Vec<&CompiledPatch> = relevant
            .iter()
            .copied()
            .filter(|p| p.context_matches(context) && listener_match(l, p))
            .collect();
        let inbound_routes: Vec<&CompiledPatch> = if context == PatchContext::SidecarInbound {
            route_patches
                .iter()
                .copied()
                .filter(|p| p.context_matches(context))
                .collect()
        } else {
            Vec::new()
        };
        if for_listener.is_empty() && inbound_routes.is_empty() {
            continue;
        }
        let name = l.name.clone();
        let mut chains = std::mem::take(&mut l.filter_chains);
        for fc in chains.iter_mut() {
            let for_chain: Vec<&CompiledPatch> = for_listener
                .iter()
                .copied()
                .filter(|p| filter_chain_match(l, fc, p))
                .collect();
            patch_chain(&name, fc, &for_chain, &inbound_routes);
        }
        l.filter_chains = chains;
        if let Some(mut fc) = l.default_filter_chain.take() {
            let for_chain: Vec<&CompiledPatch> = for_listener
                .iter()
                .copied()
                .filter(|p| filter_chain_match(l, &fc, p))
                .collect();
            patch_chain(&name, &mut fc, &for_chain, &inbound_routes);
            l.default_filter_chain = Some(fc);
        }
    }
}

fn patch_chain(
    listener: &str,
    fc: &mut FilterChain,
    patches: &[&CompiledPatch],
    inbound_routes: &[&CompiledPatch],
) {
    for p in patches
        .iter()
        .filter(|p| p.apply_to == ApplyTo::NetworkFilter)
    {
        match p.operation {
            Operation::Remove if network_filter_name(p).is_some() => {
                fc.filters.retain(|f| !network_filter_match(f, p));
            }
            Operation::Merge => {
                for f in fc.filters.iter_mut().filter(|f| network_filter_match(f, p)) {
                    merge_network_filter(f, p);
                }
            }
            _ => {}
        }
    }
    let http: Vec<&CompiledPatch> = patches
        .iter()
        .copied()
        .filter(|p| p.apply_to == ApplyTo::HttpFilter)
        .collect();
    if http.is_empty() && inbound_routes.is_empty() {
        return;
    }
    for f in fc.filters.iter_mut().filter(|f| f.name == HCM) {
        let Some(filter::ConfigType::TypedConfig(config)) = &f.config_type else {
            continue;
        };
        let Ok(mut hcm) = HttpConnectionManager::decode(config.value.as_slice()) else {
            tracing::warn!(component = "envoy_filter", %listener, "connection manager config does not decode; patches skipped");
            continue;
        };
        let mut changed = false;
        let for_filter: Vec<&CompiledPatch> = http
            .iter()
            .copied()
            .filter(|p| network_filter_match(f, p))
            .collect();
        if !for_filter.is_empty() {
            patch_http_filters(&mut hcm.http_filters, &for_filter);
            changed = true;
        }
        if let Some(RouteSpecifier::RouteConfig(rc)) = hcm.route_specifier.as_mut()
            && !inbound_routes.is_empty()
        {
            changed |= apply_route_configuration(
                inbound_routes,
                rc,
                PatchContext::SidecarInbound,
                &GatewayPorts::default(),
            );
        }
        if changed {
            f.config_type = Some(filter::ConfigType::TypedConfig(any(&hcm)));
        }
    }
}

fn merge_network_filter(f: &mut Filter, p: &CompiledPatch) {
    let Some(patch) = &p.value.network_filter else {
        return;
    };
    let Some(filter::ConfigType::TypedConfig(target)) = &f.config_type else {
        // Istio skips merges into filters without a typed config.
        return;
    };
    let merged = match &patch.config_type {
        Some(filter::ConfigType::TypedConfig(src)) => Some(merge_any(target, src)),
        _ => None,
    };
    if !patch.name.is_empty() {
        f.name = patch.name.clone();
    }
    if let Some(m) = merged {
        f.config_type = Some(filter::ConfigType::TypedConfig(m));
    }
}

/// Istio's `patchHTTPFilters`: inserts, additions, replacements and removals in patch
/// order, then merges into the filters they match.
fn patch_http_filters(filters: &mut Vec<HttpFilter>, patches: &[&CompiledPatch]) {
    for p in patches {
        if p.operation == Operation::Remove {
            // Without a sub-filter match a removal matches nothing (as in Istio).
            if sub_filter_name(p).is_some() {
                filters.retain(|f| !http_filter_match(f, p));
            }
            continue;
        }
        let Some(value) = p.value.http_filter.as_ref() else {
            continue;
        };
        let has_match = sub_filter_name(p).is_some();
        let position = filters.iter().position(|f| http_filter_match(f, p));
        match p.operation {
            Operation::Add => filters.push(value.clone()),
            Operation::InsertFirst => filters.insert(0, value.clone()),
            Operation::InsertBefore if !has_match => filters.insert(0, value.clone()),
            Operation::InsertBefore => {
                if let Some(i) = position {
                    filters.insert(i, value.clone());
                }
            }
            Operation::InsertAfter if !has_match => filters.push(value.clone()),
            Operation::InsertAfter => {
                if let Some(i) = position {
                    filters.insert(i + 1, value.clone());
                }
            }
            Operation::Replace if has_match => {
                if let Some(i) = position {
                    filters[i] = value.clone();
                }
            }
            _ => {}
        }
    }
    for p in patches.iter().filter(|p| p.operation == Operation::Merge) {
        let Some(patch) = &p.value.http_filter else {
            continue;
        };
        for f in filters.iter_mut().filter(|f| http_filter_match(f, p)) {
            let Some(http_filter::ConfigType::TypedConfig(target)) = &f.config_type else {
                continue;
            };
            let merged = match &patch.config_type {
                Some(http_filter::ConfigType::TypedConfig(src)) => Some(merge_any(target, src)),
                _ => None,
            };
            if !patch.name.is_empty() {
                f.name = patch.name.clone();
            }
            if let Some(m) = merged {
                f.config_type = Some(http_filter::ConfigType::TypedConfig(m));
            }
        }
    }
}
