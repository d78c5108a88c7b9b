//! The store's mutable state: what each origin (file) defines, and which definition of
//! each resource is in force.
//!
//! Rules:
//! - An origin's documents replace what that origin defined before.
//! - A document that fails to parse keeps the last good version of the resource it
//!   defined (when its kind/namespace/name can still be read). When a document is so broken
//!   that its resource cannot be named (a YAML syntax error), every resource the origin
//!   defined before and does not define now is kept: we cannot tell "deleted" from "broken".
//! - Two origins defining the same resource: the first one seen wins, the other is reported.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use mesh_api::document::{DocumentError, Kind, Resource, ResourceKey, split_api_version};
use serde_json::Value;

use super::ConfigIssue;

/// One definition of a resource by one origin.
#[derive(Debug, Clone)]
pub(crate) struct Definition {
    pub origin: String,
    pub resource: Arc<Resource>,
    /// When this origin first defined this key (first definition wins on duplicates).
    pub defined_at: u64,
}

#[derive(Debug, Default)]
struct Origin {
    keys: BTreeSet<ResourceKey>,
    issues: Vec<ConfigIssue>,
}

/// A document's outcome as the store sees it.
pub(crate) enum Doc {
    Good(Resource),
    /// Could not be applied; `key` when the resource can still be named.
    Bad {
        key: Option<ResourceKey>,
        error: DocumentError,
    },
}

#[derive(Debug, Default)]
pub(crate) struct State {
    origins: BTreeMap<String, Origin>,
    definitions: BTreeMap<ResourceKey, Vec<Definition>>,
    /// First-seen order of every key, stable across updates (Istio's "oldest" for files).
    first_seen: HashMap<ResourceKey, u64>,
    clock: u64,
}

/// What an update changed.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub keys: BTreeSet<ResourceKey>,
}

impl State {
    /// Replaces what `origin` defines with `docs`.
    pub fn apply(&mut self, origin: &str, docs: Vec<Doc>) -> Changes {
        let mut changes = Changes::default();
        let before = self.winners_of(origin);
        let previous = self.origins.remove(origin).unwrap_or_default();

        let mut good: BTreeMap<ResourceKey, Resource> = BTreeMap::new();
        let mut broken: BTreeSet<ResourceKey> = BTreeSet::new();
        let mut unnamed_broken = false;
        let mut issues = Vec::new();
        for doc in docs {
            match doc {
                Doc::Good(resource) => {
                    let Some(key) = resource.key() else { continue };
                    if good.contains_key(&key) {
                        issues.push(ConfigIssue {
                            origin: origin.to_string(),
                            resource: Some(key.to_string()),
                            field: None,
                            message: "defined twice in this file; the first definition is used"
                                .to_string(),
                        });
                        continue;
                    }
                    good.insert(key, resource);
                }
                Doc::Bad { key, error } => {
                    let kept = match &key {
                        Some(k) if previous.keys.contains(k) => {
                            " (the last good version stays in force)"
                        }
                        None if !previous.keys.is_empty() => {
                            " (the resources this file defined before stay in force)"
                        }
                        _ => "",
                    };
                    for e in &error.errors {
                        issues.push(ConfigIssue {
                            origin: error.location(),
                            resource: error
                                .resource
                                .clone()
                                .or_else(|| key.as_ref().map(|k| k.to_string())),
                            field: (!e.path.is_empty()).then(|| e.path.clone()),
                            message: format!("{}{kept}", e.message),
                        });
                    }
                    match key {
                        Some(k) => {
                            broken.insert(k);
                        }
                        None => unnamed_broken = true,
                    }
                }
            }
        }

        let mut keys = BTreeSet::new();
        for key in &previous.keys {
            if good.contains_key(key) {
                continue;
            }
            if broken.contains(key) || unnamed_broken {
                // Keep the last good definition.
                keys.insert(key.clone());
                continue;
            }
            self.remove_definition(key, origin);
        }
        for (key, resource) in good {
            self.upsert(&key, origin, resource);
            keys.insert(key);
        }
        self.origins
            .insert(origin.to_string(), Origin { keys, issues });

        let after = self.winners_of(origin);
        diff(&before, &after, &mut changes);
        changes
    }

    /// Forgets everything `origin` defined (its file was deleted).
    pub fn remove(&mut self, origin: &str) -> Changes {
        let mut changes = Changes::default();
        let before = self.winners_of(origin);
        if let Some(o) = self.origins.remove(origin) {
            for key in &o.keys {
                self.remove_definition(key, origin);
            }
        }
        let after = self.winners_of(origin);
        diff(&before, &after, &mut changes);
        changes
    }

    pub fn origins(&self) -> impl Iterator<Item = &str> {
        self.origins.keys().map(String::as_str)
    }

    /// The definition in force for every key, with its first-seen order.
    pub fn winners(&self) -> impl Iterator<Item = (&ResourceKey, &Definition, u64)> {
        self.definitions.iter().filter_map(|(k, defs)| {
            let winner = defs.iter().min_by_key(|d| d.defined_at)?;
            Some((
                k,
                winner,
                self.first_seen.get(k).copied().unwrap_or(u64::MAX),
            ))
        })
    }

    /// Parse issues of every origin, plus duplicate definitions across origins.
    pub fn issues(&self) -> Vec<ConfigIssue> {
        let mut out: Vec<ConfigIssue> = self
            .origins
            .values()
            .flat_map(|o| o.issues.clone())
            .collect();
        for (key, defs) in &self.definitions {
            if defs.len() < 2 {
                continue;
            }
            let mut sorted: Vec<&Definition> = defs.iter().collect();
            sorted.sort_by_key(|d| d.defined_at);
            for loser in &sorted[1..] {
                out.push(ConfigIssue {
                    origin: loser.origin.clone(),
                    resource: Some(key.to_string()),
                    field: None,
                    message: format!(
                        "also defined in {}, which was loaded first and stays in force; this definition is ignored",
                        sorted[0].origin
                    ),
                });
            }
        }
        out
    }

    fn upsert(&mut self, key: &ResourceKey, origin: &str, resource: Resource) {
        self.clock += 1;
        let clock = self.clock;
        self.first_seen.entry(key.clone()).or_insert(clock);
        let defs = self.definitions.entry(key.clone()).or_default();
        match defs.iter_mut().find(|d| d.origin == origin) {
            Some(d) => {
                if *d.resource != resource {
                    d.resource = Arc::new(resource);
                }
            }
            None => defs.push(Definition {
                origin: origin.to_string(),
                resource: Arc::new(resource),
                defined_at: clock,
            }),
        }
    }

    fn remove_definition(&mut self, key: &ResourceKey, origin: &str) {
        if let Some(defs) = self.definitions.get_mut(key) {
            defs.retain(|d| d.origin != origin);
            if defs.is_empty() {
                self.definitions.remove(key);
            }
        }
    }

    /// The winning resource of each key that `origin` defines or defined.
    fn winners_of(&self, origin: &str) -> BTreeMap<ResourceKey, Arc<Resource>> {
        let Some(o) = self.origins.get(origin) else {
            return BTreeMap::new();
        };
        o.keys
            .iter()
            .filter_map(|k| {
                let defs = self.definitions.get(k)?;
                let w = defs.iter().min_by_key(|d| d.defined_at)?;
                Some((k.clone(), w.resource.clone()))
            })
            .collect()
    }
}

fn diff(
    before: &BTreeMap<ResourceKey, Arc<Resource>>,
    after: &BTreeMap<ResourceKey, Arc<Resource>>,
    changes: &mut Changes,
) {
    for (k, v) in before {
        match after.get(k) {
            Some(w) if Arc::ptr_eq(v, w) || **v == **w => {}
            _ => {
                changes.keys.insert(k.clone());
            }
        }
    }
    for k in after.keys() {
        if !before.contains_key(k) {
            changes.keys.insert(k.clone());
        }
    }
}

/// The key of a raw document that failed to parse, when its kind and name can be read.
pub(crate) fn raw_key(value: &Value) -> Option<ResourceKey> {
    let api_version = value.get("apiVersion")?.as_str()?;
    let kind = value.get("kind")?.as_str()?;
    let (group, _) = split_api_version(api_version);
    let kind = Kind::find(group, kind)?;
    let meta = value.get("metadata")?;
    let name = meta.get("name")?.as_str()?.to_string();
    let namespace = if kind.is_namespaced() {
        meta.get("namespace")
            .and_then(Value::as_str)
            .unwrap_or(mesh_api::document::DEFAULT_NAMESPACE)
            .to_string()
    } else {
        String::new()
    };
    Some(ResourceKey::new(kind, namespace, name))
}
