//! What one proxy can see: the Sidecar resource that applies to it (if any), the services
//! and VirtualServices it imports (exportTo + Sidecar egress hosts), and its outbound
//! traffic policy.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use mesh_api::networking::{Destination, OutboundTrafficMode, SidecarSpec};

use super::hosts::host_matches;
use super::index::{EffectiveVs, MESH_GATEWAY};
use crate::model::Proxy;
use crate::registry::{Service, selects};
use crate::store::Snapshot;
use crate::store::config::Shared;

/// The root namespace: a Sidecar without selector there is the mesh-wide default.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// One `namespace/host` import of a Sidecar egress listener.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Import {
    /// `None` = any namespace.
    namespace: Option<String>,
    host: String,
}

impl Import {
    fn parse(entry: &str, proxy_ns: &str) -> Option<Import> {
        let (ns, host) = entry.split_once('/')?;
        let namespace = match ns {
            "*" => None,
            "." => Some(proxy_ns.to_string()),
            "~" => return None,
            other => Some(other.to_string()),
        };
        Some(Import {
            namespace,
            host: host.to_string(),
        })
    }

    fn covers(&self, namespace: &str, host: &str) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == namespace) && host_matches(&self.host, host)
    }
}

/// The proxy's view of the mesh.
#[derive(Debug)]
pub struct Scope {
    /// The Sidecar resource that applies, if any.
    pub sidecar: Option<Shared<SidecarSpec>>,
    /// Visible services, one per hostname (the proxy's namespace wins, else the oldest),
    /// sorted by hostname.
    pub services: Vec<Arc<Service>>,
    by_host: HashMap<String, usize>,
    /// VirtualServices bound to `mesh` that this proxy imports, each host claimed by the
    /// oldest VirtualService only.
    pub mesh_virtual_services: Vec<(Arc<EffectiveVs>, Vec<String>)>,
    pub outbound_mode: OutboundTrafficMode,
    pub egress_proxy: Option<Destination>,
}

impl Scope {
    pub fn build(snapshot: &Snapshot, proxy: &Proxy) -> Scope {
        Scope::build_with(snapshot, proxy, None, true)
    }

    /// The scope endpoint generation needs: the visible services (only those named in
    /// `hosts`, when given) without the VirtualServices, which endpoints never read. An
    /// endpoints push builds this for every proxy, so it skips what it can.
    pub fn for_endpoints(
        snapshot: &Snapshot,
        proxy: &Proxy,
        hosts: Option<&HashSet<String>>,
    ) -> Scope {
        Scope::build_with(snapshot, proxy, hosts, false)
    }

    /// The scope a proxy's own (inbound) part needs: the Sidecar's settings without the
    /// visible services and VirtualServices, which inbound generation never reads. Every
    /// proxy of a push builds this one, so it skips what it can.
    pub fn for_inbound(snapshot: &Snapshot, proxy: &Proxy) -> Scope {
        Scope::build_with(snapshot, proxy, Some(&HashSet::new()), false)
    }

    fn build_with(
        snapshot: &Snapshot,
        proxy: &Proxy,
        hosts: Option<&HashSet<String>>,
        with_virtual_services: bool,
    ) -> Scope {
        let sidecar = select_sidecar(snapshot, &proxy.namespace, &proxy.labels);
        let imports: Vec<Import> = match &sidecar {
            Some(sc) if !sc.spec.egress.is_empty() => sc
                .spec
                .egress
                .iter()
                .flat_map(|e| e.hosts.iter())
                .filter_map(|h| Import::parse(h, &proxy.namespace))
                .collect(),
            _ => vec![Import {
                namespace: None,
                host: "*".to_string(),
            }],
        };

        let mut services: Vec<Arc<Service>> = Vec::new();
        let mut by_host: HashMap<String, usize> = HashMap::new();
        for svc in snapshot.registry().services() {
            if hosts.is_some_and(|h| !h.contains(&svc.hostname)) {
                continue;
            }
            if !svc.visibility.visible_to(&proxy.namespace) {
                continue;
            }
            if !imports
                .iter()
                .any(|i| i.covers(&svc.namespace, &svc.hostname))
            {
                continue;
            }
            match by_host.get(&svc.hostname) {
                Some(&i) => {
                    // Registry order is oldest first; the proxy's own namespace beats that.
                    if svc.namespace == proxy.namespace && services[i].namespace != proxy.namespace
                    {
                        services[i] = svc.clone();
                    }
                }
                None => {
                    by_host.insert(svc.hostname.clone(), services.len());
                    services.push(svc.clone());
                }
            }
        }

        let mut claimed: HashSet<String> = HashSet::new();
        let mut mesh_virtual_services = Vec::new();
        let virtual_services = if with_virtual_services {
            &snapshot.index().virtual_services[..]
        } else {
            &[]
        };
        for vs in virtual_services {
            if !vs.binds(MESH_GATEWAY) || !vs.visibility.visible_to(&proxy.namespace) {
                continue;
            }
            let imported = vs
                .spec
                .hosts
                .iter()
                .any(|h| imports.iter().any(|i| i.covers(&vs.meta.namespace, h)));
            if !imported {
                continue;
            }
            let hosts: Vec<String> = vs
                .spec
                .hosts
                .iter()
                .filter(|h| claimed.insert((*h).clone()))
                .cloned()
                .collect();
            if !hosts.is_empty() {
                mesh_virtual_services.push((vs.clone(), hosts));
            }
        }

        let sidecar_policy = sidecar
            .as_ref()
            .and_then(|s| s.spec.outbound_traffic_policy.clone());
        let outbound_mode = sidecar_policy
            .as_ref()
            .and_then(|p| p.mode)
            .unwrap_or(snapshot.mesh().outbound_traffic_policy.mode);
        let egress_proxy = sidecar_policy.and_then(|p| p.egress_proxy);

        Scope {
            sidecar,
            services,
            by_host,
            mesh_virtual_services,
            outbound_mode,
            egress_proxy,
        }
    }

    /// The visible service for an exact hostname.
    pub fn service(&self, hostname: &str) -> Option<&Arc<Service>> {
        self.by_host.get(hostname).map(|i| &self.services[*i])
    }

    pub fn allow_any(&self) -> bool {
        self.outbound_mode == OutboundTrafficMode::AllowAny
    }
}

/// Istio's Sidecar selection: a Sidecar in the proxy's namespace whose workloadSelector
/// matches, else the namespace's Sidecar without selector, else the root namespace's.
fn select_sidecar(
    snapshot: &Snapshot,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Option<Shared<SidecarSpec>> {
    let sidecars = &snapshot.config().sidecars;
    let selected = sidecars.iter().find(|s| {
        s.meta.namespace == namespace
            && s.spec
                .workload_selector
                .as_ref()
                .is_some_and(|w| !w.match_labels.is_empty() && selects(&w.match_labels, labels))
    });
    let ns_default = || {
        sidecars.iter().find(|s| {
            s.meta.namespace == namespace
                && s.spec
                    .workload_selector
                    .as_ref()
                    .is_none_or(|w| w.match_labels.is_empty())
        })
    };
    let root_default = || {
        sidecars.iter().find(|s| {
            s.meta.namespace == ROOT_NAMESPACE
                && s.spec
                    .workload_selector
                    .as_ref()
                    .is_none_or(|w| w.match_labels.is_empty())
        })
    };
    selected.or_else(ns_default).or_else(root_default).cloned()
}
