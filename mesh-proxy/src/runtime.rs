//! What a connection handler needs, cheap to clone: the config store, the cluster
//! manager, the stats and the drain watch of the listener that accepted it.

use std::sync::Arc;

use crate::{config::Store, drain, stats::Stats, upstream::ClusterManager};

#[derive(Clone, Debug)]
pub struct Runtime {
    pub store: Arc<Store>,
    pub clusters: Arc<ClusterManager>,
    pub stats: Arc<Stats>,
    /// Signaled when the connection's listener is removed or the proxy shuts down;
    /// holders finish their work (graceful close) and then drop it.
    pub drain: drain::Watch,
}

impl Runtime {
    /// A runtime around fresh state and the given drain watch.
    pub fn new(drain: drain::Watch) -> Self {
        let stats = Arc::new(Stats::new());
        Runtime {
            store: Arc::new(Store::new()),
            clusters: Arc::new(ClusterManager::new(stats.clone())),
            stats,
            drain,
        }
    }

    /// A runtime for tests: fresh state and a drain watch that never fires.
    pub fn for_tests() -> Self {
        Runtime::new(drain::Watch::never())
    }

    /// The same state with another drain watch (a listener's).
    pub fn with_drain(&self, drain: drain::Watch) -> Self {
        Runtime {
            drain,
            ..self.clone()
        }
    }
}
