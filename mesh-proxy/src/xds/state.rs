//! Applying decoded xDS resources, independent of the wire protocol (delta or SotW).
//!
//! Envoy's rules, which we follow:
//! - every resource is converted on its own: a bad one is NACKed by name and field and
//!   keeps its previous version, the good ones in the same response are applied;
//! - warming: a new EDS cluster becomes active only once its endpoints arrive (an
//!   updated cluster keeps serving until then); a new or changed listener becomes active
//!   only once every RDS route configuration it references has arrived. Warming gives
//!   up after the initial fetch timeout and activates what it has, as Envoy does;
//! - RDS and EDS subscriptions follow what the listeners and clusters reference.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use envoy_types::pb::{
    envoy::config::{
        cluster::v3 as cpb, endpoint::v3 as epb, listener::v3 as lpb, route::v3 as rpb,
    },
    google::protobuf::Any,
};
use prost::Message;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{
    TypeUrl,
    dump::{DumpState, Stored},
};
use crate::{
    config::{
        ConfigError, Store, cluster::Cluster as ClusterConfig, endpoint::ClusterLoadAssignment,
        listener::Listener, route::RouteConfiguration,
    },
    listener::Manager,
    stats::{Stats, XdsLabels},
    upstream::{Cluster, ClusterManager},
};

/// How long a cluster waits for its endpoints, or a listener for its routes, before it is
/// activated anyway (Envoy's default `initial_fetch_timeout`).
pub const WARMING_TIMEOUT: Duration = Duration::from_secs(15);

/// One resource of a response: its name, version (delta) and payload.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub name: String,
    pub version: String,
    pub resource: Any,
}

/// What a response did: errors become the NACK.
#[derive(Debug, Default)]
pub struct Outcome {
    pub errors: Vec<String>,
}

impl Outcome {
    pub fn nack_message(&self) -> Option<String> {
        (!self.errors.is_empty()).then(|| self.errors.join("; "))
    }
}

struct Warming<T> {
    value: T,
    since: Instant,
}

/// The applied xDS state and the sinks it feeds (store, clusters, listeners).
pub struct Applier {
    store: Arc<Store>,
    clusters: Arc<ClusterManager>,
    listeners: Manager,
    stats: Arc<Stats>,
    pub(crate) dump: Arc<DumpState>,
    ready: watch::Sender<bool>,
    /// Names of the accepted clusters (active or warming).
    cluster_names: BTreeSet<String>,
    warming_clusters: HashMap<String, Warming<Arc<Cluster>>>,
    /// EDS assignments by service name (kept for clusters that arrive later).
    endpoints: HashMap<String, Arc<ClusterLoadAssignment>>,
    active_listeners: HashMap<String, Arc<Listener>>,
    warming_listeners: HashMap<String, Warming<Arc<Listener>>>,
    routes: HashMap<String, Arc<RouteConfiguration>>,
    /// Whether the first CDS / LDS response has been applied (for readiness).
    pub(crate) cds_initialized: bool,
    pub(crate) lds_initialized: bool,
    started: Instant,
}

impl Applier {
    pub fn new(
        store: Arc<Store>,
        clusters: Arc<ClusterManager>,
        listeners: Manager,
        stats: Arc<Stats>,
        dump: Arc<DumpState>,
        ready: watch::Sender<bool>,
    ) -> Self {
        Applier {
            store,
            clusters,
            listeners,
            stats,
            dump,
            ready,
            cluster_names: BTreeSet::new(),
            warming_clusters: HashMap::new(),
            endpoints: HashMap::new(),
            active_listeners: HashMap::new(),
            warming_listeners: HashMap::new(),
            routes: HashMap::new(),
            cds_initialized: false,
            lds_initialized: false,
            started: Instant::now(),
        }
    }

    /// Applies one response. `removed` are resources to delete (delta removals, or SotW
    /// CDS/LDS resources absent from the full state).
    pub fn apply(
        &mut self,
        type_url: TypeUrl,
        version: &str,
        updates: Vec<Incoming>,
        removed: Vec<String>,
    ) -> Outcome {
        let labels = XdsLabels {
            type_url: type_url.as_str().to_string(),
        };
        let stats = self.stats.xds.handles(&labels);
        stats.update_attempt.inc();
        let outcome = match type_url {
            TypeUrl::Cluster => self.apply_clusters(version, updates, removed),
            TypeUrl::ClusterLoadAssignment => self.apply_endpoints(version, updates, removed),
            TypeUrl::Listener => self.apply_listeners(version, updates, removed),
            TypeUrl::RouteConfiguration => self.apply_routes(version, updates, removed),
        };
        if outcome.errors.is_empty() {
            stats.update_success.inc();
        } else {
            stats.update_rejected.inc();
            warn!(type_url = type_url.as_str(), errors = ?outcome.errors, "rejecting xDS update (NACK); keeping the last good config");
        }
        self.dump
            .set_version(type_url, version, outcome.nack_message());
        self.update_readiness();
        outcome
    }

    /// The resource names to subscribe to for RDS and EDS (wildcard types: `None`).
    pub fn subscriptions(&self, type_url: TypeUrl) -> Option<BTreeSet<String>> {
        match type_url {
            TypeUrl::Cluster | TypeUrl::Listener => None,
            TypeUrl::ClusterLoadAssignment => {
                let mut names = BTreeSet::new();
                for c in self.clusters.all().values() {
                    if let Some(s) = c.config().eds_service_name() {
                        names.insert(s.to_string());
                    }
                }
                for w in self.warming_clusters.values() {
                    if let Some(s) = w.value.config().eds_service_name() {
                        names.insert(s.to_string());
                    }
                }
                Some(names)
            }
            TypeUrl::RouteConfiguration => {
                let mut names = BTreeSet::new();
                for l in self
                    .active_listeners
                    .values()
                    .chain(self.warming_listeners.values().map(|w| &w.value))
                {
                    names.extend(l.rds_names.iter().map(|n| n.to_string()));
                }
                Some(names)
            }
        }
    }

    /// Whether the initial cluster warming is over (LDS may be requested).
    pub fn clusters_warm(&self) -> bool {
        self.cds_initialized && self.warming_clusters.is_empty()
    }

    /// Activates what has waited longer than the warming timeout; returns whether
    /// anything changed.
    pub fn tick(&mut self, now: Instant) -> bool {
        let stale: Vec<String> = self
            .warming_clusters
            .iter()
            .filter(|(_, w)| now.duration_since(w.since) >= WARMING_TIMEOUT)
            .map(|(n, _)| n.clone())
            .collect();
        let stale_l: Vec<String> = self
            .warming_listeners
            .iter()
            .filter(|(_, w)| now.duration_since(w.since) >= WARMING_TIMEOUT)
            .map(|(n, _)| n.clone())
            .collect();
        for n in &stale {
            if let Some(w) = self.warming_clusters.remove(n) {
                warn!(cluster = %n, "no endpoints after {WARMING_TIMEOUT:?}; activating the cluster without them");
                self.clusters.activate(w.value);
            }
        }
        if !stale_l.is_empty() {
            let mut next = self.active_listeners.clone();
            for n in &stale_l {
                if let Some(w) = self.warming_listeners.remove(n) {
                    warn!(listener = %n, "routes missing after {WARMING_TIMEOUT:?}; activating the listener anyway");
                    next.insert(n.clone(), w.value);
                }
            }
            self.commit_listeners(next);
        }
        self.update_stats();
        self.update_readiness();
        !stale.is_empty() || !stale_l.is_empty()
    }

    fn update_stats(&self) {
        self.stats
            .server
            .warming_clusters
            .set(self.warming_clusters.len() as i64);
        self.stats
            .server
            .total_listeners_warming
            .set(self.warming_listeners.len() as i64);
    }

    fn update_readiness(&self) {
        let ready = self.cds_initialized
            && self.lds_initialized
            && self.warming_clusters.is_empty()
            && self.warming_listeners.is_empty();
        if ready && !*self.ready.borrow() {
            info!(after = ?self.started.elapsed(), "initial configuration applied; ready");
            self.stats.server.state.set(0);
            self.stats.server.live.set(1);
        }
        self.ready.send_if_modified(|r| {
            let changed = *r != ready && ready;
            // Readiness is latched: later warming does not make the proxy unready.
            *r |= ready;
            changed
        });
    }

    // === clusters ===

    fn apply_clusters(
        &mut self,
        version: &str,
        updates: Vec<Incoming>,
        removed: Vec<String>,
    ) -> Outcome {
        let mut out = Outcome::default();
        for name in removed {
            if self.cluster_names.remove(&name) {
                info!(cluster = %name, "cluster removed");
            }
            self.warming_clusters.remove(&name);
            self.clusters.remove(&name);
            self.dump.remove(TypeUrl::Cluster, &name);
        }
        for inc in updates {
            let decoded = cpb::Cluster::decode(inc.resource.value.as_slice())
                .map_err(|e| ConfigError::field("", format!("cannot decode Cluster: {e}")))
                .and_then(|pb| {
                    check_name(&inc.name, &pb.name)?;
                    ClusterConfig::try_from(&pb)
                });
            let cfg = match decoded {
                Ok(c) => c,
                Err(e) => {
                    out.errors
                        .push(format!("Cluster {}", describe(&inc.name, &e)));
                    self.dump.reject(
                        TypeUrl::Cluster,
                        &inc.name,
                        &inc.resource,
                        version,
                        &e.to_string(),
                    );
                    continue;
                }
            };
            self.dump.accept(
                TypeUrl::Cluster,
                &inc.name,
                Stored::new(inc.resource.clone(), &inc.version, version),
            );
            if self
                .clusters
                .get(&cfg.name)
                .is_some_and(|c| c.config() == &cfg)
            {
                // Unchanged (SotW resends everything): keep the live cluster and its state.
                self.cluster_names.insert(cfg.name.clone());
                continue;
            }
            let name = cfg.name.clone();
            let cluster = self.clusters.prepare(cfg);
            if let Some(service) = cluster.config().eds_service_name()
                && !cluster.has_assignment()
                && let Some(la) = self.endpoints.get(service)
            {
                cluster.set_assignment(ClusterLoadAssignment::clone(la), None);
            }
            self.cluster_names.insert(name.clone());
            if cluster.has_assignment() {
                self.warming_clusters.remove(&name);
                self.clusters.activate(cluster);
                debug!(cluster = %name, "cluster active");
            } else {
                debug!(cluster = %name, "cluster warming (waiting for endpoints)");
                self.warming_clusters.insert(
                    name,
                    Warming {
                        value: cluster,
                        since: Instant::now(),
                    },
                );
            }
        }
        self.cds_initialized = true;
        self.prune_endpoints();
        self.update_stats();
        out
    }

    fn prune_endpoints(&mut self) {
        if let Some(subs) = self.subscriptions(TypeUrl::ClusterLoadAssignment) {
            self.endpoints.retain(|name, _| subs.contains(name));
        }
    }

    fn apply_endpoints(
        &mut self,
        version: &str,
        updates: Vec<Incoming>,
        removed: Vec<String>,
    ) -> Outcome {
        let mut out = Outcome::default();
        for name in removed {
            self.endpoints.remove(&name);
            self.dump.remove(TypeUrl::ClusterLoadAssignment, &name);
            // Envoy keeps the last endpoints of a cluster whose EDS resource is removed
            // until the cluster itself goes; so do we.
        }
        for inc in updates {
            let decoded = epb::ClusterLoadAssignment::decode(inc.resource.value.as_slice())
                .map_err(|e| {
                    ConfigError::field("", format!("cannot decode ClusterLoadAssignment: {e}"))
                })
                .and_then(|pb| {
                    check_name(&inc.name, &pb.cluster_name)?;
                    ClusterLoadAssignment::try_from(&pb)
                });
            let la = match decoded {
                Ok(la) => Arc::new(la),
                Err(e) => {
                    out.errors
                        .push(format!("ClusterLoadAssignment {}", describe(&inc.name, &e)));
                    self.dump.reject(
                        TypeUrl::ClusterLoadAssignment,
                        &inc.name,
                        &inc.resource,
                        version,
                        &e.to_string(),
                    );
                    continue;
                }
            };
            self.dump.accept(
                TypeUrl::ClusterLoadAssignment,
                &inc.name,
                Stored::new(inc.resource.clone(), &inc.version, version),
            );
            let name = inc.name.clone();
            self.clusters.set_endpoints(&name, &la);
            let promote: Vec<String> = self
                .warming_clusters
                .iter()
                .filter(|(_, w)| w.value.config().eds_service_name() == Some(name.as_str()))
                .map(|(n, _)| n.clone())
                .collect();
            for n in promote {
                if let Some(w) = self.warming_clusters.remove(&n) {
                    w.value
                        .set_assignment(ClusterLoadAssignment::clone(&la), None);
                    self.clusters.activate(w.value);
                    debug!(cluster = %n, "cluster warmed");
                }
            }
            self.endpoints.insert(name, la);
        }
        self.update_stats();
        out
    }

    // === listeners ===

    fn apply_listeners(
        &mut self,
        version: &str,
        updates: Vec<Incoming>,
        removed: Vec<String>,
    ) -> Outcome {
        let mut out = Outcome::default();
        let mut next = self.active_listeners.clone();
        for name in &removed {
            next.remove(name);
            self.warming_listeners.remove(name);
            self.dump.remove(TypeUrl::Listener, name);
        }
        let mut raw: HashMap<String, (Any, String)> = HashMap::new();
        for inc in updates {
            let decoded = lpb::Listener::decode(inc.resource.value.as_slice())
                .map_err(|e| ConfigError::field("", format!("cannot decode Listener: {e}")))
                .and_then(|pb| {
                    check_name(&inc.name, &pb.name)?;
                    let mut l = Listener::try_from(&pb)?;
                    l.fingerprint_chains(&inc.resource.value)?;
                    Ok(l)
                });
            let l = match decoded {
                Ok(l) => Arc::new(l),
                Err(e) => {
                    out.errors
                        .push(format!("Listener {}", describe(&inc.name, &e)));
                    self.dump.reject(
                        TypeUrl::Listener,
                        &inc.name,
                        &inc.resource,
                        version,
                        &e.to_string(),
                    );
                    continue;
                }
            };
            if self.dump.same(TypeUrl::Listener, &inc.name, &inc.resource)
                && next.contains_key(&inc.name)
            {
                continue; // unchanged (SotW resend)
            }
            raw.insert(inc.name.clone(), (inc.resource, inc.version));
            if l.rds_names.iter().all(|r| self.routes.contains_key(&**r)) {
                self.warming_listeners.remove(&inc.name);
                next.insert(inc.name.clone(), l);
            } else {
                debug!(listener = %inc.name, "listener warming (waiting for routes)");
                self.warming_listeners.insert(
                    inc.name.clone(),
                    Warming {
                        value: l,
                        since: Instant::now(),
                    },
                );
            }
        }
        let bind_errors = self.commit_listeners(next);
        for e in &bind_errors {
            raw.remove(&e.resource);
            out.errors
                .push(format!("Listener {}", describe(&e.resource, e)));
        }
        for (name, (any, v)) in raw {
            self.dump
                .accept(TypeUrl::Listener, &name, Stored::new(any, &v, version));
        }
        self.lds_initialized = true;
        self.prune_routes();
        self.update_stats();
        out
    }

    /// Starts/updates/stops listeners to match `next` and publishes the snapshot. A
    /// listener that cannot bind keeps its previous version (if any).
    fn commit_listeners(&mut self, mut next: HashMap<String, Arc<Listener>>) -> Vec<ConfigError> {
        let errors = self.listeners.apply(&next);
        if !errors.is_empty() {
            for e in &errors {
                match self.active_listeners.get(&e.resource) {
                    Some(old) => next.insert(e.resource.clone(), old.clone()),
                    None => next.remove(&e.resource),
                };
            }
            let again = self.listeners.apply(&next);
            if !again.is_empty() {
                warn!(errors = ?again, "previous listener versions could not be restored");
                for e in again {
                    next.remove(&e.resource);
                }
            }
        }
        self.active_listeners = next.clone();
        self.store.update(|s| s.listeners = next);
        errors
    }

    fn prune_routes(&mut self) {
        if let Some(subs) = self.subscriptions(TypeUrl::RouteConfiguration) {
            let before = self.routes.len();
            self.routes.retain(|name, _| subs.contains(name));
            if self.routes.len() != before {
                let routes = self.routes.clone();
                self.store.update(|s| s.routes = routes);
            }
        }
    }

    fn apply_routes(
        &mut self,
        version: &str,
        updates: Vec<Incoming>,
        removed: Vec<String>,
    ) -> Outcome {
        let mut out = Outcome::default();
        for name in &removed {
            self.routes.remove(name);
            self.dump.remove(TypeUrl::RouteConfiguration, name);
        }
        for inc in updates {
            let decoded = rpb::RouteConfiguration::decode(inc.resource.value.as_slice())
                .map_err(|e| {
                    ConfigError::field("", format!("cannot decode RouteConfiguration: {e}"))
                })
                .and_then(|pb| {
                    check_name(&inc.name, &pb.name)?;
                    RouteConfiguration::try_from(&pb)
                });
            match decoded {
                Ok(r) => {
                    self.dump.accept(
                        TypeUrl::RouteConfiguration,
                        &inc.name,
                        Stored::new(inc.resource.clone(), &inc.version, version),
                    );
                    self.routes.insert(inc.name.clone(), Arc::new(r));
                }
                Err(e) => {
                    out.errors
                        .push(format!("RouteConfiguration {}", describe(&inc.name, &e)));
                    self.dump.reject(
                        TypeUrl::RouteConfiguration,
                        &inc.name,
                        &inc.resource,
                        version,
                        &e.to_string(),
                    );
                }
            }
        }
        let routes = self.routes.clone();
        self.store.update(|s| s.routes = routes);
        // Listeners whose routes are now all here become active.
        let ready: Vec<String> = self
            .warming_listeners
            .iter()
            .filter(|(_, w)| {
                w.value
                    .rds_names
                    .iter()
                    .all(|r| self.routes.contains_key(&**r))
            })
            .map(|(n, _)| n.clone())
            .collect();
        if !ready.is_empty() {
            let mut next = self.active_listeners.clone();
            for n in ready {
                if let Some(w) = self.warming_listeners.remove(&n) {
                    debug!(listener = %n, "listener warmed");
                    next.insert(n, w.value);
                }
            }
            for e in self.commit_listeners(next) {
                out.errors
                    .push(format!("Listener {}", describe(&e.resource, &e)));
            }
        }
        self.update_stats();
        out
    }

    pub(crate) fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Names of the active and warming listeners / clusters (for the config dump).
    pub fn warming_names(&self) -> (Vec<String>, Vec<String>) {
        (
            self.warming_clusters.keys().cloned().collect(),
            self.warming_listeners.keys().cloned().collect(),
        )
    }
}

/// The resource name in the response wrapper must match the one inside.
fn check_name(outer: &str, inner: &str) -> Result<(), ConfigError> {
    if !outer.is_empty() && outer != inner {
        return Err(ConfigError::field(
            "name",
            format!("resource is named {inner:?} but was sent as {outer:?}"),
        ));
    }
    Ok(())
}

/// `"name": field: message` for the NACK detail (Envoy's form is similar).
fn describe(name: &str, e: &ConfigError) -> String {
    let resource = if e.resource.is_empty() {
        name
    } else {
        &e.resource
    };
    if e.field.is_empty() {
        format!("{resource:?}: {}", e.message)
    } else {
        format!("{resource:?}: {}: {}", e.field, e.message)
    }
}
