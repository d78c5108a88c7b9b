//! The immutable snapshot: every resource in force, typed; the registry; the routing index;
//! every current problem.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use parking_lot::Mutex;

use mesh_api::document::{Kind, Resource};
use mesh_api::mesh_config::{CONFIG_MAP_NAME, MeshConfig};
use mesh_api::naming::DEFAULT_DOMAIN_SUFFIX;
use mesh_api::networking::{
    DestinationRuleSpec, EnvoyFilterSpec, GatewaySpec, ServiceEntrySpec, SidecarSpec,
    VirtualServiceSpec, WorkloadEntrySpec,
};
use serde::Serialize;

use super::config::{Age, Config, ConfigSet, Meta, Shared};
use super::state::{Doc, State};
use super::{ConfigIssue, default_mesh_config, parse_docs};
use crate::registry::Registry;
use crate::translate::index::MeshIndex;

/// A resource in force and where it came from, for `/debug/configz`.
#[derive(Debug, Clone, Serialize)]
pub struct StoredResource {
    pub origin: String,
    pub resource: String,
    #[serde(skip)]
    pub value: Arc<Resource>,
    /// Its first-seen order and its typed view, kept so that the next snapshot can reuse
    /// the typed view of every resource that did not change.
    #[serde(skip)]
    seq: u64,
    #[serde(skip)]
    typed: Option<Typed>,
}

/// The typed view of one resource, as it sits in a [`ConfigSet`] list.
#[derive(Debug, Clone)]
enum Typed {
    VirtualService(Shared<VirtualServiceSpec>),
    DestinationRule(Shared<DestinationRuleSpec>),
    Gateway(Shared<GatewaySpec>),
    ServiceEntry(Shared<ServiceEntrySpec>),
    WorkloadEntry(Shared<WorkloadEntrySpec>),
    Sidecar(Shared<SidecarSpec>),
    EnvoyFilter(Shared<EnvoyFilterSpec>),
    Service(Shared<Service>),
    EndpointSlice(Shared<EndpointSlice>),
    Pod(Shared<Pod>),
    Namespace(Shared<Namespace>),
    Secret(Shared<Secret>),
    ConfigMap(Shared<ConfigMap>),
}

impl Typed {
    fn add_to(&self, set: &mut ConfigSet) {
        match self {
            Typed::VirtualService(c) => set.virtual_services.push(c.clone()),
            Typed::DestinationRule(c) => set.destination_rules.push(c.clone()),
            Typed::Gateway(c) => set.gateways.push(c.clone()),
            Typed::ServiceEntry(c) => set.service_entries.push(c.clone()),
            Typed::WorkloadEntry(c) => set.workload_entries.push(c.clone()),
            Typed::Sidecar(c) => set.sidecars.push(c.clone()),
            Typed::EnvoyFilter(c) => set.envoy_filters.push(c.clone()),
            Typed::Service(c) => set.services.push(c.clone()),
            Typed::EndpointSlice(c) => set.endpoint_slices.push(c.clone()),
            Typed::Pod(c) => set.pods.push(c.clone()),
            Typed::Namespace(c) => set.namespaces.push(c.clone()),
            Typed::Secret(c) => set.secrets.push(c.clone()),
            Typed::ConfigMap(c) => set.config_maps.push(c.clone()),
        }
    }
}

/// An immutable view of all config and the registry, shared by every push.
#[derive(Debug)]
pub struct Snapshot {
    version: u64,
    config: Arc<ConfigSet>,
    registry: Arc<Registry>,
    mesh: Arc<MeshConfig>,
    index: Arc<MeshIndex>,
    stored: Vec<StoredResource>,
    issues: Vec<ConfigIssue>,
    /// What [`Snapshot::endpoint_changes_since`] found, by the older version: every proxy
    /// of an endpoints-only push asks the same question of the same pair of snapshots.
    endpoint_changes: Mutex<Vec<(u64, EndpointChanges)>>,
}

/// The hostnames whose endpoints changed between two snapshots, or `None` when more than
/// endpoints changed.
pub type EndpointChanges = Option<Arc<HashSet<String>>>;

/// Older versions remembered per snapshot: pushes in flight start from a few at most.
const ENDPOINT_CHANGES_KEPT: usize = 4;

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot::empty()
    }
}

impl Snapshot {
    /// An empty snapshot (version 0): no services, no config, Istio's default mesh config.
    pub fn empty() -> Snapshot {
        Snapshot::assemble(0, Vec::new(), Vec::new(), None)
    }

    /// Builds a snapshot straight from YAML text (one origin), without a store: for
    /// golden tests, benchmarks and offline tools. Documents that fail to parse are issues.
    pub fn from_yaml(origin: &str, text: &str) -> Snapshot {
        let mut state = State::default();
        state.apply(origin, parse_docs(origin, text));
        Snapshot::build(&state, 1, None)
    }

    /// Builds a snapshot from already-parsed resources (oldest first), e.g. generated meshes.
    pub fn from_resources(origin: &str, resources: Vec<Resource>) -> Snapshot {
        let mut state = State::default();
        state.apply(origin, resources.into_iter().map(Doc::Good).collect());
        Snapshot::build(&state, 1, None)
    }

    /// The snapshot of `state`. With the `previous` snapshot, resources that did not
    /// change (the same `Arc` from the same origin, in the same place) keep their typed
    /// view: a change to one file then costs the index rebuild, not a copy of every
    /// resource in the mesh.
    pub(crate) fn build(state: &State, version: u64, previous: Option<&Snapshot>) -> Snapshot {
        let mut entries = Vec::new();
        for (key, def, seq) in state.winners() {
            entries.push((key.kind, def.origin.clone(), def.resource.clone(), seq));
        }
        Snapshot::assemble(version, entries, state.issues(), previous)
    }

    fn assemble(
        version: u64,
        entries: Vec<(Kind, String, Arc<Resource>, u64)>,
        mut issues: Vec<ConfigIssue>,
        previous: Option<&Snapshot>,
    ) -> Snapshot {
        // Keyed by address: the previous snapshot holds each `Arc`, so an address cannot
        // have been reused by another resource while it is alive.
        let reusable: HashMap<*const Resource, &StoredResource> = previous
            .map(|p| {
                p.stored
                    .iter()
                    .map(|s| (Arc::as_ptr(&s.value), s))
                    .collect()
            })
            .unwrap_or_default();
        let mut set = ConfigSet::default();
        let mut stored = Vec::with_capacity(entries.len());
        let mut mesh_map = None;
        for (_, origin, resource, seq) in entries {
            let kept = reusable
                .get(&Arc::as_ptr(&resource))
                .filter(|s| s.seq == seq && s.origin == origin);
            let entry = match kept {
                Some(s) => (*s).clone(),
                None => StoredResource {
                    resource: resource.describe(),
                    typed: typed(&origin, &resource, seq),
                    origin,
                    value: resource,
                    seq,
                },
            };
            if let Some(t) = &entry.typed {
                t.add_to(&mut set);
            }
            stored.push(entry);
        }
        set.sort();

        // The mesh config: Istio's `istio` ConfigMap in the root namespace.
        for cm in &set.config_maps {
            if cm.meta.name == CONFIG_MAP_NAME && cm.meta.namespace == "istio-system" {
                mesh_map = Some(cm.clone());
            }
        }
        let mesh = match mesh_map {
            None => default_mesh_config(),
            Some(cm) => match MeshConfig::from_config_map(&cm.spec) {
                Ok(m) => Arc::new(m),
                Err(e) => {
                    issues.push(ConfigIssue {
                        origin: cm.meta.origin.clone(),
                        resource: Some(cm.meta.display()),
                        field: Some("data.mesh".to_string()),
                        message: format!("{e} (the previous mesh config stays in force)"),
                    });
                    previous.map_or_else(default_mesh_config, |p| p.mesh.clone())
                }
            },
        };

        let registry = Registry::build(&set, &mesh);
        issues.extend(registry.issues().iter().cloned());
        let (index, index_issues) = MeshIndex::build(&set, &registry, &mesh, DEFAULT_DOMAIN_SUFFIX);
        issues.extend(index_issues);
        issues.sort();
        issues.dedup();
        stored.sort_by(|a, b| a.resource.cmp(&b.resource));
        Snapshot {
            version,
            config: Arc::new(set),
            registry: Arc::new(registry),
            mesh,
            index: Arc::new(index),
            stored,
            issues,
            endpoint_changes: Mutex::new(Vec::new()),
        }
    }

    /// The endpoint changes from `older` to this snapshot, computed by `compute` once per
    /// pair (it compares every service's endpoints, which is far more work than one proxy's
    /// share of a push).
    pub fn endpoint_changes_since(
        &self,
        older: u64,
        compute: impl FnOnce() -> EndpointChanges,
    ) -> EndpointChanges {
        if let Some((_, c)) = self
            .endpoint_changes
            .lock()
            .iter()
            .find(|(v, _)| *v == older)
        {
            return c.clone();
        }
        // Computed outside the lock; two racing pushes may both compute it, harmlessly.
        let changes = compute();
        let mut memo = self.endpoint_changes.lock();
        if !memo.iter().any(|(v, _)| *v == older) {
            if memo.len() >= ENDPOINT_CHANGES_KEPT {
                memo.remove(0);
            }
            memo.push((older, changes.clone()));
        }
        changes
    }

    /// Increases by one with every published change.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Every current problem (parse errors, bad references, conflicts), sorted.
    pub fn issues(&self) -> &[ConfigIssue] {
        &self.issues
    }

    pub fn config(&self) -> &ConfigSet {
        &self.config
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn mesh(&self) -> &MeshConfig {
        &self.mesh
    }

    pub(crate) fn index(&self) -> &MeshIndex {
        &self.index
    }

    /// Every resource in force with its origin, sorted by kind/namespace/name.
    pub fn stored(&self) -> &[StoredResource] {
        &self.stored
    }
}

fn meta_of(kind: Kind, origin: &str, resource: &Resource, seq: u64) -> Option<Meta> {
    let key = resource.key()?;
    let m = resource.metadata()?;
    Some(Meta {
        kind: kind.as_str(),
        name: key.name,
        namespace: key.namespace,
        labels: m.labels.clone().unwrap_or_default(),
        annotations: m.annotations.clone().unwrap_or_default(),
        age: Age {
            created: resource.creation_timestamp().map(|t| t.0),
            seq,
        },
        origin: origin.to_string(),
    })
}

fn typed(origin: &str, resource: &Resource, seq: u64) -> Option<Typed> {
    let kind = resource.kind()?;
    let meta = meta_of(kind, origin, resource, seq)?;
    macro_rules! typed {
        ($variant:ident, $spec:expr) => {
            Some(Typed::$variant(Arc::new(Config { meta, spec: $spec })))
        };
    }
    match resource {
        Resource::VirtualService(r) => typed!(VirtualService, r.spec.clone()),
        Resource::DestinationRule(r) => typed!(DestinationRule, r.spec.clone()),
        Resource::Gateway(r) => typed!(Gateway, r.spec.clone()),
        Resource::ServiceEntry(r) => typed!(ServiceEntry, r.spec.clone()),
        Resource::WorkloadEntry(r) => typed!(WorkloadEntry, r.spec.clone()),
        Resource::Sidecar(r) => typed!(Sidecar, r.spec.clone()),
        Resource::EnvoyFilter(r) => typed!(EnvoyFilter, r.spec.clone()),
        Resource::Service(r) => typed!(Service, (**r).clone()),
        Resource::EndpointSlice(r) => typed!(EndpointSlice, (**r).clone()),
        Resource::Pod(r) => typed!(Pod, (**r).clone()),
        Resource::Namespace(r) => typed!(Namespace, (**r).clone()),
        Resource::Secret(r) => typed!(Secret, (**r).clone()),
        Resource::ConfigMap(r) => typed!(ConfigMap, (**r).clone()),
        // Security and telemetry kinds are stored (configz) and translated elsewhere.
        _ => None,
    }
}
