//! The typed, versioned config store.
//!
//! Sources (the file source now, Kubernetes later) hand the store the resources each origin
//! (a file, a watch) currently defines. The store keeps the last good version of every
//! resource, rebuilds an immutable [`Snapshot`] (resources, service registry, indexes) and
//! publishes it atomically, then tells subscribers what kind of change happened so the push
//! side can decide between a full and an endpoints-only push.

use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::broadcast;

/// What a change affects, so the push side can pick full or EDS-only pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum ChangeKind {
    /// Anything that can change listeners, routes or clusters.
    Full,
    /// Only endpoints changed (EndpointSlices): an EDS push is enough.
    EndpointsOnly,
}

/// One published change of the store.
#[derive(Debug, Clone)]
pub struct ConfigEvent {
    pub kind: ChangeKind,
    pub at: tokio::time::Instant,
    /// Human-readable, e.g. `file bookinfo.yaml: VirtualService default/reviews changed`.
    pub reason: String,
    /// The snapshot version this event published.
    pub version: u64,
}

/// A problem with the config: an invalid document, an unresolvable reference, a conflict.
/// Shown in `/debug/configz` and logged when it first appears.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ConfigIssue {
    /// Where it came from: a file path, or `translate` for semantic problems.
    pub origin: String,
    /// The resource, as `Kind namespace/name` when known.
    pub resource: Option<String>,
    /// The offending field path when known (`spec.http[0].route[0].destination.subset`).
    pub field: Option<String>,
    pub message: String,
}

/// An immutable view of all config and the registry, shared by every push.
#[derive(Debug, Default)]
pub struct Snapshot {
    version: u64,
    issues: Vec<ConfigIssue>,
}

impl Snapshot {
    /// An empty snapshot (version 0): no services, no config.
    pub fn empty() -> Snapshot {
        Snapshot::default()
    }

    /// Increases by one with every published change.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Every current problem (parse errors, bad references, conflicts), sorted.
    pub fn issues(&self) -> &[ConfigIssue] {
        &self.issues
    }
}

/// The serializable view behind `/debug/configz`.
#[derive(Debug, Serialize)]
pub struct Configz {
    pub version: u64,
    pub resources: Vec<serde_json::Value>,
    pub errors: Vec<ConfigIssue>,
}

/// The store. Cheap to read from many tasks ([`Store::snapshot`] is lock-free); writes are
/// serialized and never hold a lock across an await.
pub struct Store {
    current: ArcSwap<Snapshot>,
    events: broadcast::Sender<ConfigEvent>,
    write: Mutex<()>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("version", &self.current.load().version)
            .finish_non_exhaustive()
    }
}

impl Store {
    pub fn new() -> Store {
        let (events, _) = broadcast::channel(1024);
        Store {
            current: ArcSwap::from_pointee(Snapshot::empty()),
            events,
            write: Mutex::new(()),
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Change events from now on. A lagging receiver should treat a `Lagged` error as a full change.
    pub fn subscribe(&self) -> broadcast::Receiver<ConfigEvent> {
        self.events.subscribe()
    }

    /// The `/debug/configz` view: every resource with its origin, and the current errors.
    pub fn configz(&self) -> Configz {
        let snap = self.snapshot();
        Configz {
            version: snap.version,
            resources: Vec::new(),
            errors: snap.issues.clone(),
        }
    }

    #[allow(dead_code)]
    fn publish(&self, mut next: Snapshot, kind: ChangeKind, reason: String) {
        let _guard = self.write.lock();
        next.version = self.current.load().version + 1;
        let version = next.version;
        self.current.store(Arc::new(next));
        // No receivers is fine: nobody is connected yet.
        let _ = self.events.send(ConfigEvent {
            kind,
            at: tokio::time::Instant::now(),
            reason,
            version,
        });
    }
}
