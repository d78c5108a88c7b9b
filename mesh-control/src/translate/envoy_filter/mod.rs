//! EnvoyFilter patches applied to a proxy's generated listeners and route configurations,
//! the way istiod's `envoyfilter` package applies them, for the shapes Istio users rely on
//! (local rate limiting and similar HTTP filters, route and virtual host tweaks):
//!
//! - `HTTP_FILTER` (every operation) inside HTTP connection managers;
//! - `NETWORK_FILTER` `MERGE` and `REMOVE`;
//! - `ROUTE_CONFIGURATION` `MERGE`, `VIRTUAL_HOST` `MERGE`/`REMOVE`/`REPLACE`/`ADD`,
//!   `HTTP_ROUTE` `MERGE`/`REMOVE`/`ADD`/`INSERT_*`, for RDS route configurations and the
//!   inline inbound ones.
//!
//! Every other shape (clusters, listeners, filter chains, listener filters, bootstrap,
//! extension configs, `filterClass`, `targetRefs`) is reported as a config issue naming the
//! field, and skipped. Patches are compiled once per snapshot ([`compile`]); a proxy gets
//! those of the EnvoyFilters in the root namespace, then of its own namespace, each group
//! by priority then age ([`for_proxy`]).

mod listener;
mod route;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::listener::v3::Filter;
use envoy_types::pb::envoy::config::route::v3::{Route, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::google::protobuf::Any;
use mesh_api::networking::{
    ApplyTo, EnvoyConfigObjectPatch, EnvoyFilterSpec, FilterClass, ListenerMatch, Operation,
    PatchContext, RouteConfigurationMatch,
};
use prost::Message;

pub use listener::apply_listeners;
pub use route::{GatewayPorts, apply_route_configuration};

use crate::model::{Proxy, ProxyKind};
use crate::store::ConfigIssue;
use crate::store::config::{Meta, Shared};

/// One EnvoyFilter, ready to apply.
#[derive(Debug)]
pub struct CompiledFilter {
    pub meta: Meta,
    /// `workloadSelector.labels`; `None` selects every workload in scope.
    pub selector: Option<BTreeMap<String, String>>,
    pub priority: i32,
    pub patches: Vec<CompiledPatch>,
}

/// One applicable patch of an EnvoyFilter.
#[derive(Debug)]
pub struct CompiledPatch {
    /// `Kind ns/name spec.configPatches[i]`, for logs.
    pub origin: String,
    pub apply_to: ApplyTo,
    pub context: PatchContext,
    pub proxy_version: Option<regex::Regex>,
    pub proxy_metadata: BTreeMap<String, String>,
    pub listener: Option<ListenerMatch>,
    pub route: Option<RouteConfigurationMatch>,
    pub operation: Operation,
    pub value: PatchValue,
}

/// A patch's value: the encoded message (merged into targets as protobuf merges do) and,
/// for operations that insert or replace, the message itself.
#[derive(Debug, Default)]
pub struct PatchValue {
    pub encoded: Vec<u8>,
    pub http_filter: Option<HttpFilter>,
    pub network_filter: Option<Filter>,
    pub route: Option<Route>,
    pub virtual_host: Option<VirtualHost>,
}

/// The patch context of a listener of a proxy.
pub fn listener_context(kind: ProxyKind, listener_name: &str) -> PatchContext {
    match kind {
        ProxyKind::Router => PatchContext::Gateway,
        ProxyKind::Sidecar if listener_name == super::listener::VIRTUAL_INBOUND => {
            PatchContext::SidecarInbound
        }
        ProxyKind::Sidecar => PatchContext::SidecarOutbound,
    }
}

impl CompiledPatch {
    fn context_matches(&self, context: PatchContext) -> bool {
        self.context == PatchContext::Any || self.context == context
    }

    /// Istio's `proxyMatch`: a version regex needs the proxy's `ISTIO_VERSION`.
    fn proxy_matches(&self, proxy: &Proxy) -> bool {
        if let Some(re) = &self.proxy_version {
            match proxy.metadata.get("ISTIO_VERSION").and_then(|v| v.as_str()) {
                Some(v) if re.is_match(v) => {}
                _ => return false,
            }
        }
        self.proxy_metadata
            .iter()
            .all(|(k, v)| proxy.metadata.get(k).and_then(|m| m.as_str()) == Some(v.as_str()))
    }
}

/// Merges `patch` into an `Any` of the same message the way protobuf merges: the patch's
/// fields replace scalars, append to lists and merge into messages. Like Istio, the
/// target's type is kept (a patch written against another version of the type merges
/// field by field).
pub fn merge_any(target: &Any, patch: &Any) -> Any {
    let mut value = Vec::with_capacity(target.value.len() + patch.value.len());
    // Two encodings of one message type concatenated decode as their merge.
    value.extend_from_slice(&target.value);
    value.extend_from_slice(&patch.value);
    Any {
        type_url: target.type_url.clone(),
        value,
    }
}

/// Why a patch is not applied, or `None` when this mesh applies it.
fn unsupported(cp: &EnvoyConfigObjectPatch, apply_to: ApplyTo, op: Operation) -> Option<String> {
    use Operation::*;
    let ok = match apply_to {
        ApplyTo::HttpFilter => matches!(
            op,
            Merge | Add | Remove | InsertBefore | InsertAfter | InsertFirst | Replace
        ),
        ApplyTo::NetworkFilter => matches!(op, Merge | Remove),
        ApplyTo::RouteConfiguration => op == Merge,
        ApplyTo::VirtualHost => matches!(op, Merge | Remove | Replace | Add),
        ApplyTo::HttpRoute => matches!(
            op,
            Merge | Remove | Add | InsertBefore | InsertAfter | InsertFirst
        ),
        _ => {
            return Some(format!(
                "applyTo {} is not applied by this mesh (supported: HTTP_FILTER, NETWORK_FILTER, ROUTE_CONFIGURATION, VIRTUAL_HOST, HTTP_ROUTE); the patch is skipped",
                apply_to.as_str()
            ));
        }
    };
    if !ok {
        return Some(format!(
            "operation {} on {} is not applied by this mesh; the patch is skipped",
            op.as_str(),
            apply_to.as_str()
        ));
    }
    if cp
        .patch
        .as_ref()
        .and_then(|p| p.filter_class)
        .is_some_and(|c| c != FilterClass::Unspecified)
    {
        return Some(
            "filterClass is not applied by this mesh (use INSERT_BEFORE/INSERT_AFTER with a subFilter); the patch is skipped"
                .to_string(),
        );
    }
    None
}

fn decode_value(apply_to: ApplyTo, op: Operation, encoded: Vec<u8>) -> Result<PatchValue, String> {
    let mut value = PatchValue::default();
    if op == Operation::Remove {
        // Removals carry no value (Istio ignores one if given).
        return Ok(value);
    }
    let inserts = op != Operation::Merge;
    let err = |e: prost::DecodeError| e.to_string();
    if inserts {
        match apply_to {
            ApplyTo::HttpFilter => {
                value.http_filter = Some(HttpFilter::decode(encoded.as_slice()).map_err(err)?)
            }
            ApplyTo::NetworkFilter => {
                value.network_filter = Some(Filter::decode(encoded.as_slice()).map_err(err)?)
            }
            ApplyTo::HttpRoute => {
                value.route = Some(Route::decode(encoded.as_slice()).map_err(err)?)
            }
            ApplyTo::VirtualHost => {
                value.virtual_host = Some(VirtualHost::decode(encoded.as_slice()).map_err(err)?)
            }
            _ => {}
        }
    } else if apply_to == ApplyTo::HttpFilter || apply_to == ApplyTo::NetworkFilter {
        // MERGE of a filter reads the patch's name and typed config.
        if apply_to == ApplyTo::HttpFilter {
            value.http_filter = Some(HttpFilter::decode(encoded.as_slice()).map_err(err)?);
        } else {
            value.network_filter = Some(Filter::decode(encoded.as_slice()).map_err(err)?);
        }
    }
    value.encoded = encoded;
    Ok(value)
}

/// Compiles every EnvoyFilter once per snapshot, oldest first within a priority, and
/// reports what cannot be applied.
pub fn compile(
    filters: &[Shared<EnvoyFilterSpec>],
    issues: &mut Vec<ConfigIssue>,
) -> Vec<Arc<CompiledFilter>> {
    let mut out: Vec<Arc<CompiledFilter>> = Vec::with_capacity(filters.len());
    for f in filters {
        let issue = |field: String, message: String| ConfigIssue {
            origin: f.meta.origin.clone(),
            resource: Some(f.meta.display()),
            field: Some(field),
            message,
        };
        if !f.spec.target_refs.is_empty() {
            issues.push(issue(
                "spec.targetRefs".to_string(),
                "targetRefs (Gateway API attachment) is not applied by this mesh; use workloadSelector. The EnvoyFilter is skipped".to_string(),
            ));
            continue;
        }
        let mut patches = Vec::with_capacity(f.spec.config_patches.len());
        for (i, cp) in f.spec.config_patches.iter().enumerate() {
            let field = format!("spec.configPatches[{i}]");
            let apply_to = cp.apply_to.unwrap_or_default();
            let Some(patch) = &cp.patch else { continue };
            let op = patch.operation.unwrap_or_default();
            if apply_to == ApplyTo::Invalid || op == Operation::Invalid {
                // Validation rejects these; nothing to apply.
                continue;
            }
            if let Some(why) = unsupported(cp, apply_to, op) {
                let at = if why.starts_with("applyTo") {
                    format!("{field}.applyTo")
                } else if why.starts_with("filterClass") {
                    format!("{field}.patch.filterClass")
                } else {
                    format!("{field}.patch.operation")
                };
                issues.push(issue(at, why));
                continue;
            }
            let encoded = match &patch.value {
                Some(v) => match mesh_api::networking::envoy_filter_value::parse(apply_to, v) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        issues.push(issue(
                            format!("{field}.patch.value"),
                            format!("{e}; the patch is skipped"),
                        ));
                        continue;
                    }
                },
                None => Vec::new(),
            };
            let value = match decode_value(apply_to, op, encoded) {
                Ok(v) => v,
                Err(e) => {
                    issues.push(issue(
                        format!("{field}.patch.value"),
                        format!("{e}; the patch is skipped"),
                    ));
                    continue;
                }
            };
            let m = cp.r#match.clone().unwrap_or_default();
            let proxy_version = match m.proxy.as_ref().and_then(|p| p.proxy_version.as_ref()) {
                Some(re) => match regex::Regex::new(re) {
                    Ok(re) => Some(re),
                    Err(e) => {
                        issues.push(issue(
                            format!("{field}.match.proxy.proxyVersion"),
                            format!("invalid regex: {e}; the patch is skipped"),
                        ));
                        continue;
                    }
                },
                None => None,
            };
            patches.push(CompiledPatch {
                origin: format!("{} {field}", f.meta.display()),
                apply_to,
                context: m.context.unwrap_or_default(),
                proxy_version,
                proxy_metadata: m.proxy.map(|p| p.metadata).unwrap_or_default(),
                listener: m.listener,
                route: m.route_configuration,
                operation: op,
                value,
            });
        }
        out.push(Arc::new(CompiledFilter {
            meta: f.meta.clone(),
            selector: f
                .spec
                .workload_selector
                .as_ref()
                .map(|s| s.match_labels.clone()),
            priority: f.spec.priority.unwrap_or(0),
            patches,
        }));
    }
    // Istio's order: priority, then age (the input is oldest first; the sort is stable).
    out.sort_by_key(|f| f.priority);
    out
}

/// The patches that apply to `proxy`, in order: EnvoyFilters of the root namespace, then
/// of the proxy's namespace; those with a workload selector only for workloads it selects.
pub fn for_proxy<'a>(
    filters: &'a [Arc<CompiledFilter>],
    proxy: &Proxy,
    root_namespace: &str,
) -> Vec<&'a CompiledPatch> {
    let selected = |f: &&Arc<CompiledFilter>| {
        f.selector
            .as_ref()
            .is_none_or(|s| crate::registry::selects(s, &proxy.labels))
    };
    let root = filters
        .iter()
        .filter(|f| f.meta.namespace == root_namespace)
        .filter(selected);
    let own = filters
        .iter()
        .filter(|f| f.meta.namespace == proxy.namespace && proxy.namespace != root_namespace)
        .filter(selected);
    root.chain(own)
        .flat_map(|f| f.patches.iter())
        .filter(|p| p.proxy_matches(proxy))
        .collect()
}
