//! Endpoints alone, for EDS-only pushes (an EndpointSlice changed): the same
//! ClusterLoadAssignments [`super::generate`] produces, without building listeners, routes
//! and clusters, and the class under which proxies share them.
//!
//! A proxy's endpoints depend on the snapshot and on a few things about the proxy: its
//! namespace and (registry-resolved) labels, which select its Sidecar scope (the visible
//! services) and its DestinationRules (the subsets), and its locality (locality load
//! balancing). Every sidecar of one Deployment in one zone gets the same endpoints: the push
//! generates them once per class ([`endpoints_class`]) instead of once per proxy.
//!
//! When only some services' endpoints changed (one EndpointSlice), a push regenerates only
//! their load assignments ([`changed_endpoint_hosts`], [`generate_endpoints_for`]) and keeps
//! the rest, as istiod's incremental EDS push does.

use std::{collections::HashSet, sync::Arc};

use super::{Ctx, Named, Scope, endpoint, resolve_proxy, sorted};
use crate::model::Proxy;
use crate::store::Snapshot;

/// The endpoints of `proxy`: equal to `generate(snapshot, proxy).endpoints`.
pub fn generate_endpoints(snapshot: &Snapshot, proxy: &Proxy) -> Vec<Named> {
    generate_endpoints_for(snapshot, proxy, None)
}

/// The endpoints of `proxy` for the services whose hostname is in `hosts` only (all when
/// `None`): the load assignments an incremental EDS push replaces.
pub fn generate_endpoints_for(
    snapshot: &Snapshot,
    proxy: &Proxy,
    hosts: Option<&HashSet<String>>,
) -> Vec<Named> {
    let (proxy, workload) = resolve_proxy(snapshot, proxy);
    // Endpoint generation reads only `scope.services` (it never looks services up by
    // host), so narrowing the list to `hosts` narrows the output and nothing else.
    let scope = Scope::for_endpoints(snapshot, &proxy, hosts);
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
/// classes get equal [`generate_endpoints`] from the same snapshot. Labels count only where
/// a selector of the config reads them (see [`super::sharing`]).
pub fn endpoints_class(snapshot: &Snapshot, proxy: &Proxy) -> String {
    let (proxy, _) = resolve_proxy(snapshot, proxy);
    // NUL cannot occur in namespaces, label keys or values, localities or cluster ids.
    let mut key = format!(
        "{}\0{:?}\0{}\0{}",
        proxy.namespace,
        proxy.kind,
        proxy.locality.as_deref().unwrap_or(""),
        proxy.cluster_id
    );
    super::sharing::push_read_labels(snapshot, &proxy, &mut key);
    key
}

/// The hostnames whose endpoints differ between `old` and `new`, or `None` when the
/// services themselves differ (then any proxy's endpoints may have changed). Computed once
/// per pair of snapshots and shared by every proxy of the push.
pub fn changed_endpoint_hosts(old: &Snapshot, new: &Snapshot) -> Option<Arc<HashSet<String>>> {
    new.endpoint_changes_since(old.version(), || compare_endpoints(old, new).map(Arc::new))
}

fn compare_endpoints(old: &Snapshot, new: &Snapshot) -> Option<HashSet<String>> {
    let (before, after) = (old.registry(), new.registry());
    if before.services().len() != after.services().len() {
        return None;
    }
    let mut changed = HashSet::new();
    for (a, b) in before.services().iter().zip(after.services()) {
        if a != b {
            return None;
        }
        if a.ports
            .iter()
            .any(|p| before.endpoints(a, p.port) != after.endpoints(b, p.port))
        {
            changed.insert(b.hostname.clone());
        }
    }
    Some(changed)
}
