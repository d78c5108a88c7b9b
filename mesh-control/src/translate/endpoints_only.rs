//! Endpoints alone, for EDS-only pushes (an EndpointSlice changed): the same
//! ClusterLoadAssignments [`super::generate`] produces, without building listeners, routes
//! and clusters, and the class under which proxies share them.
//!
//! A proxy's endpoints depend on the snapshot and on two things about the proxy: its
//! namespace and its (registry-resolved) labels, which select its Sidecar scope (the visible
//! services) and its DestinationRules (the subsets). Every sidecar of one Deployment, and
//! without Sidecar resources or workload-selecting DestinationRules every sidecar of a
//! namespace, gets the same endpoints: the push generates them once per class
//! ([`endpoints_class`]) instead of once per proxy, as istiod caches EDS per cluster.

use super::{Ctx, Named, Scope, endpoint, resolve_proxy, sorted};
use crate::model::Proxy;
use crate::store::Snapshot;

/// The endpoints of `proxy`: equal to `generate(snapshot, proxy).endpoints`.
pub fn generate_endpoints(snapshot: &Snapshot, proxy: &Proxy) -> Vec<Named> {
    let (proxy, workload) = resolve_proxy(snapshot, proxy);
    let scope = Scope::build(snapshot, &proxy);
    let ctx = Ctx {
        snapshot,
        proxy,
        workload,
        scope,
        dr_cache: Default::default(),
    };
    let mut out = Vec::with_capacity(ctx.scope.services.len() * 2);
    endpoint::all(&ctx, &mut out);
    sorted(out)
}

/// What a proxy's endpoints depend on besides the snapshot, as a key: proxies with equal
/// classes get equal [`generate_endpoints`] from the same snapshot. (Keep it in step with
/// what `Scope::build` and `Ctx::destination_rule` read about the proxy.)
pub fn endpoints_class(snapshot: &Snapshot, proxy: &Proxy) -> String {
    let (proxy, _) = resolve_proxy(snapshot, proxy);
    // NUL cannot occur in namespaces, label keys or label values.
    let mut key = proxy.namespace;
    for (k, v) in &proxy.labels {
        key.push('\0');
        key.push_str(k);
        key.push('\0');
        key.push_str(v);
    }
    key
}
