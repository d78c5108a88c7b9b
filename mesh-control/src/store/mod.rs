//! The typed, versioned config store.
//!
//! Sources (the file source now, Kubernetes later) hand the store the documents each origin
//! (a file, a watch) currently defines. The store keeps the last good version of every
//! resource, rebuilds an immutable [`Snapshot`] (resources, service registry, routing
//! indexes, every current problem) and publishes it atomically, then tells subscribers what
//! kind of change happened so the push side can choose between a full and an
//! endpoints-only push.

pub mod config;
mod snapshot;
pub(crate) mod state;

use std::collections::BTreeSet;
use std::sync::Arc;

use arc_swap::ArcSwap;
use mesh_api::document::{self, Kind, Resource};
use mesh_api::mesh_config::MeshConfig;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::broadcast;

pub use snapshot::{Snapshot, StoredResource};
use state::{Changes, Doc, State};

#[cfg(test)]
mod tests;

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
    /// Human-readable, e.g. `reviews.yaml: VirtualService default/reviews (+1 more)`.
    pub reason: String,
    /// The snapshot version this event published.
    pub version: u64,
}

/// A problem with the config: an invalid document, an unresolvable reference, a conflict.
/// Shown in `/debug/configz` and logged when it first appears.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ConfigIssue {
    /// Where it came from: `file:line` for documents, the resource's file for semantic problems.
    pub origin: String,
    /// The resource, as `Kind namespace/name` when known.
    pub resource: Option<String>,
    /// The offending field path when known (`spec.http[0].route[0].destination.subset`).
    pub field: Option<String>,
    pub message: String,
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: ", self.origin)?;
        if let Some(r) = &self.resource {
            write!(f, "{r}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// The serializable view behind `/debug/configz`.
#[derive(Debug, Serialize)]
pub struct Configz {
    pub version: u64,
    /// Every resource in force, with the origin it came from.
    pub resources: Vec<StoredResource>,
    /// Every current problem: parse errors, bad references, conflicts.
    pub errors: Vec<ConfigIssue>,
    /// The service registry (services and their endpoints).
    pub registry: serde_json::Value,
}

/// The store. Reading is lock-free ([`Store::snapshot`]); writes are serialized by one mutex
/// that is never held across an await.
pub struct Store {
    current: ArcSwap<Snapshot>,
    events: broadcast::Sender<ConfigEvent>,
    state: Mutex<State>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("version", &self.current.load().version())
            .finish_non_exhaustive()
    }
}

impl Store {
    pub fn new() -> Store {
        let (events, _) = broadcast::channel(1024);
        Store {
            current: ArcSwap::from_pointee(Snapshot::empty()),
            events,
            state: Mutex::new(State::default()),
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Change events from now on. A lagging receiver should treat `Lagged` as a full change.
    pub fn subscribe(&self) -> broadcast::Receiver<ConfigEvent> {
        self.events.subscribe()
    }

    /// The `/debug/configz` view.
    pub fn configz(&self) -> Configz {
        let snap = self.snapshot();
        Configz {
            version: snap.version(),
            resources: snap.stored().to_vec(),
            errors: snap.issues().to_vec(),
            registry: snap.registry().view(),
        }
    }

    /// Replaces what `origin` (a file path) defines with the documents in `text`. Returns
    /// the problems found in this text (also kept in the snapshot's issues).
    pub fn apply_text(&self, origin: &str, text: &str) -> Vec<ConfigIssue> {
        self.apply_batch(&[(origin.to_string(), text.to_string())], &[])
    }

    /// Forgets everything `origin` defined (its file was deleted or renamed away).
    pub fn remove_origin(&self, origin: &str) {
        self.apply_batch(&[], &[origin.to_string()]);
    }

    /// Applies several origins' changes as one snapshot: a directory rescan that finds
    /// ten changed files publishes one version with all ten, never a version holding some
    /// of them (a reader of that version would see a config nobody wrote), and rebuilds
    /// the snapshot once instead of ten times. `texts` replace what their origins define,
    /// `removed` origins are forgotten. Returns the problems found in `texts`.
    pub fn apply_batch(&self, texts: &[(String, String)], removed: &[String]) -> Vec<ConfigIssue> {
        if texts.is_empty() && removed.is_empty() {
            return Vec::new();
        }
        let parsed: Vec<(&str, Vec<Doc>)> = texts
            .iter()
            .map(|(origin, text)| (origin.as_str(), parse_docs(origin, text)))
            .collect();
        let mut state = self.state.lock();
        let mut changes = Changes::default();
        for (origin, docs) in parsed {
            changes.keys.extend(state.apply(origin, docs).keys);
        }
        for origin in removed {
            changes.keys.extend(state.remove(origin).keys);
        }
        let issues: Vec<ConfigIssue> = state
            .issues()
            .into_iter()
            .filter(|i| {
                texts.iter().any(|(o, _)| {
                    i.origin == *o
                        || i.origin
                            .strip_prefix(o.as_str())
                            .is_some_and(|rest| rest.starts_with(':'))
                })
            })
            .collect();
        let reason = match (texts.first(), removed.first()) {
            _ if texts.len() + removed.len() > 1 => {
                format!("{} files changed, {} removed", texts.len(), removed.len())
            }
            (Some((o, _)), _) => o.clone(),
            (None, Some(o)) => o.clone(),
            (None, None) => unreachable!("checked above"),
        };
        self.publish(&state, changes, &reason);
        issues
    }

    /// Every origin the store has documents from.
    pub fn origins(&self) -> Vec<String> {
        self.state.lock().origins().map(str::to_string).collect()
    }

    /// Rebuilds and publishes the snapshot when something changed. Called with the state
    /// lock held, so versions are published in order.
    fn publish(&self, state: &State, changes: Changes, origin: &str) {
        let previous = self.current.load_full();
        let issues_before: BTreeSet<ConfigIssue> = previous.issues().iter().cloned().collect();
        let next = Snapshot::build(state, previous.version() + 1, Some(&previous));
        let issues_changed = next.issues().len() != issues_before.len()
            || next.issues().iter().any(|i| !issues_before.contains(i));
        for issue in next.issues() {
            if !issues_before.contains(issue) {
                tracing::warn!(component = "config", "{issue}");
            }
        }
        if changes.keys.is_empty() && !issues_changed {
            return;
        }
        let kind = if !changes.keys.is_empty()
            && changes.keys.iter().all(|k| k.kind == Kind::EndpointSlice)
        {
            ChangeKind::EndpointsOnly
        } else {
            ChangeKind::Full
        };
        let mut reason = origin.to_string();
        if let Some(first) = changes.keys.iter().next() {
            reason.push_str(&format!(": {first}"));
            if changes.keys.len() > 1 {
                reason.push_str(&format!(" (+{} more)", changes.keys.len() - 1));
            }
        } else {
            reason.push_str(": errors changed");
        }
        let version = next.version();
        tracing::info!(component = "config", version, ?kind, %reason, "config changed");
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

/// Parses one origin's text into the store's document outcomes.
pub(crate) fn parse_docs(origin: &str, text: &str) -> Vec<Doc> {
    document::split_documents(text, origin)
        .into_iter()
        .map(|raw| match raw {
            Err(error) => Doc::Bad { key: None, error },
            Ok(raw) => {
                let key = state::raw_key(&raw.value);
                let described = key.as_ref().map(|k| k.to_string());
                // Schema and Istio's semantic checks, as the validating webhook would apply.
                match mesh_api::validation::validate_value(raw.value) {
                    Ok(Resource::Unowned(u)) => {
                        tracing::debug!(component = "config", origin, kind = %u.kind, "skipping a kind the mesh does not read");
                        Doc::Good(Resource::Unowned(u))
                    }
                    Ok(resource) => Doc::Good(resource),
                    Err(errors) => Doc::Bad {
                        key,
                        error: document::DocumentError {
                            file: origin.to_string(),
                            index: raw.index,
                            line: Some(raw.line),
                            column: None,
                            resource: described,
                            errors,
                        },
                    },
                }
            }
        })
        .collect()
}

/// The mesh config used when no `istio` ConfigMap is given: Istio's defaults.
pub fn default_mesh_config() -> Arc<MeshConfig> {
    Arc::new(MeshConfig::default())
}
