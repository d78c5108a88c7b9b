//! Upstream clusters: the [`ClusterManager`] holds the live [`Cluster`]s (hosts, load
//! balancers, circuit breakers, outlier detection, stats); the data path asks it for a
//! cluster by name, the cluster for a host ([`Cluster::pick`]) or a TCP connection
//! ([`Cluster::connect`]), and tells the host how each request went ([`Host::report`]).

pub mod circuit_breaker;
mod cluster;
mod dns;
mod host;
pub mod lb;
pub mod outlier;
mod socket;

use std::{collections::HashMap, sync::Arc};

use arc_swap::ArcSwap;

pub use circuit_breaker::{CircuitBreakers, Guard as CircuitBreakerGuard, ResourceKind};
pub use cluster::{Cluster, ConnectError, ConnectionGuard, UpstreamConnection, host_health};
pub use host::{Host, HostConnectionGuard, HostRequestGuard};
pub use lb::{HostSet, LbContext, Membership};
pub use outlier::{Detector, Outcome};

use crate::{
    config::{cluster::Cluster as ClusterConfig, endpoint::ClusterLoadAssignment},
    stats::{ClusterLabels, Stats},
};

/// All active clusters by name. Reads are lock-free (`ArcSwap`); the xDS task is the
/// only writer.
#[derive(Debug)]
pub struct ClusterManager {
    clusters: ArcSwap<HashMap<String, Arc<Cluster>>>,
    stats: Arc<Stats>,
}

impl ClusterManager {
    pub fn new(stats: Arc<Stats>) -> Self {
        ClusterManager {
            clusters: ArcSwap::from_pointee(HashMap::new()),
            stats,
        }
    }

    /// The active cluster called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Cluster>> {
        self.clusters.load().get(name).cloned()
    }

    /// Every active cluster (admin, config dump).
    pub fn all(&self) -> Arc<HashMap<String, Arc<Cluster>>> {
        self.clusters.load_full()
    }

    /// Builds (but does not activate) a cluster for `config`, reusing the hosts and
    /// endpoints of the active cluster of the same name. The xDS layer activates it once
    /// it is warm (its EDS assignment arrived).
    pub fn prepare(&self, config: ClusterConfig) -> Arc<Cluster> {
        let previous = self.get(&config.name);
        Cluster::new(config, &self.stats, previous.as_deref())
    }

    /// Makes `cluster` the active cluster of its name (replacing the previous one, whose
    /// in-flight connections keep it alive until they finish).
    pub fn activate(&self, cluster: Arc<Cluster>) {
        self.modify(|m| {
            m.insert(cluster.name().to_string(), cluster);
        });
    }

    /// Convenience: prepare and activate at once (static config, tests).
    pub fn add_or_update(&self, config: ClusterConfig) -> Arc<Cluster> {
        let c = self.prepare(config);
        self.activate(c.clone());
        c
    }

    pub fn remove(&self, name: &str) -> Option<Arc<Cluster>> {
        let mut removed = None;
        self.modify(|m| removed = m.remove(name));
        if let Some(c) = &removed {
            self.stats.cluster.remove(&ClusterLabels {
                envoy_cluster_name: c.config().stat_name.clone(),
            });
        }
        removed
    }

    /// Applies an EDS assignment to every active cluster whose EDS service name it is.
    /// Returns how many clusters took it.
    pub fn set_endpoints(&self, service_name: &str, la: &ClusterLoadAssignment) -> usize {
        let clusters = self.clusters.load();
        let mut n = 0;
        for c in clusters.values() {
            if c.config().eds_service_name() == Some(service_name) {
                c.set_assignment(la.clone(), None);
                n += 1;
            }
        }
        n
    }

    fn modify(&self, f: impl FnOnce(&mut HashMap<String, Arc<Cluster>>)) {
        let mut next = HashMap::clone(&self.clusters.load());
        f(&mut next);
        self.stats.server.active_clusters.set(next.len() as i64);
        self.clusters.store(Arc::new(next));
    }
}

#[cfg(test)]
mod tests;
