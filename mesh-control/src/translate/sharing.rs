//! Which proxies get the same generated config, so that a push translates once per class
//! of proxies instead of once per proxy (what istiod's XDS cache achieves per resource).
//!
//! A sidecar's outbound config (its outbound clusters, endpoints, outbound listeners and
//! route configurations) depends on the snapshot and on a few things about the proxy: its
//! namespace (visibility, Sidecar scope), DNS domain (short host names in route domains),
//! interception mode, locality (locality load balancing), cluster and labels. Labels are the
//! part that varies most between proxies (every Deployment has its own), and the translator
//! reads them only through selectors: Sidecar and DestinationRule workload selectors,
//! VirtualService `sourceLabels`, and `failoverPriority` label keys. Two proxies that agree
//! on every label key some selector names cannot be told apart by any of those, so the class
//! holds the proxy's labels projected on those keys ([`label_keys_read`]): in a typical
//! mesh none, and every sidecar of a namespace shares one translation.
//!
//! What a proxy has of its own (its inbound clusters and the virtual inbound listener, from
//! its Pod's Services) is generated per proxy. Proxies that EnvoyFilters patch are not
//! shared at all: patches can add and remove resources across both parts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use mesh_api::mesh_config::MeshConfig;
use mesh_api::networking::{LocalityLbSetting, TrafficPolicy};

use super::resolve_proxy;
use crate::model::{Proxy, ProxyKind};
use crate::store::Snapshot;
use crate::store::config::ConfigSet;

/// Every label key the translator may read from a proxy's labels, for this config: the
/// keys of every Sidecar and DestinationRule workload selector, of every VirtualService
/// match's `sourceLabels`, and every `failoverPriority` label.
pub fn label_keys_read(config: &ConfigSet, mesh: &MeshConfig) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut add = |labels: &BTreeMap<String, String>| keys.extend(labels.keys().cloned());
    for sc in &config.sidecars {
        if let Some(s) = &sc.spec.workload_selector {
            add(&s.match_labels);
        }
    }
    for vs in &config.virtual_services {
        for m in vs.spec.http.iter().flat_map(|r| &r.r#match) {
            add(&m.source_labels);
        }
        for m in vs.spec.tcp.iter().flat_map(|r| &r.r#match) {
            add(&m.source_labels);
        }
        for m in vs.spec.tls.iter().flat_map(|r| &r.r#match) {
            add(&m.source_labels);
        }
    }
    let mut priorities: Vec<&LocalityLbSetting> = mesh.locality_lb_setting.iter().collect();
    for dr in &config.destination_rules {
        if let Some(s) = &dr.spec.workload_selector {
            add(&s.match_labels);
        }
        let policies = dr.spec.traffic_policy.iter().chain(
            dr.spec
                .subsets
                .iter()
                .filter_map(|s| s.traffic_policy.as_ref()),
        );
        for p in policies {
            locality_settings(p, &mut priorities);
        }
    }
    for l in priorities {
        for entry in &l.failover_priority {
            // `key` or `key=value`: either way only that key's value is read.
            let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
            keys.insert(key.to_string());
        }
    }
    keys
}

fn locality_settings<'a>(p: &'a TrafficPolicy, out: &mut Vec<&'a LocalityLbSetting>) {
    let top = p.load_balancer.as_ref();
    let ports = p
        .port_level_settings
        .iter()
        .filter_map(|s| s.load_balancer.as_ref());
    out.extend(
        top.into_iter()
            .chain(ports)
            .filter_map(|lb| lb.locality_lb_setting.as_ref()),
    );
}

/// The class of `proxy` for its outbound config: sidecars with equal classes get equal
/// outbound config from the same snapshot. `None` when the proxy's config is not shared:
/// gateways (their config comes from their own Pod's Gateways) and proxies that
/// EnvoyFilters patch.
pub fn generation_class(snapshot: &Snapshot, proxy: &Proxy) -> Option<String> {
    let (proxy, _) = resolve_proxy(snapshot, proxy);
    if proxy.kind != ProxyKind::Sidecar {
        return None;
    }
    let patched = !super::envoy_filter::for_proxy(
        &snapshot.index().envoy_filters,
        &proxy,
        &snapshot.mesh().root_namespace,
    )
    .is_empty();
    if patched {
        return None;
    }
    // NUL cannot occur in namespaces, DNS names, label keys or values, localities or
    // cluster ids.
    let mut key = format!(
        "{}\0{}\0{:?}\0{}\0{}",
        proxy.namespace,
        proxy.dns_domain,
        proxy.interception_mode,
        proxy.locality.as_deref().unwrap_or(""),
        proxy.cluster_id,
    );
    push_read_labels(snapshot, &proxy, &mut key);
    Some(key)
}

/// Appends the proxy's labels whose keys the config reads (see [`label_keys_read`]).
pub(super) fn push_read_labels(snapshot: &Snapshot, proxy: &Proxy, key: &mut String) {
    let read = &snapshot.index().label_keys_read;
    for (k, v) in proxy.labels.iter().filter(|(k, _)| read.contains(*k)) {
        let _ = write!(key, "\0{k}\0{v}");
    }
}
