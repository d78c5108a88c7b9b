//! What one proxy should have, indexed for the protocol: per type, every resource by name
//! with a version that is a hash of its encoded bytes.
//!
//! Versions are content hashes rather than counters so that they are stable across pushes
//! (an unchanged resource keeps its version, which is what lets delta send only what changed
//! and SotW skip a type that did not change) and across control-plane restarts (a delta
//! client reconnecting with `initial_resource_versions` is not resent what it has).
//!
//! Thousands of proxies mostly hold the same resources (every sidecar of a namespace has the
//! same outbound clusters, endpoints and routes), so resources and whole per-type sets go
//! through an [`Interner`]: equal content is stored once and shared by `Arc`, which is what
//! keeps the control plane's memory proportional to the distinct config rather than to the
//! number of proxies, and lets a push compare sets by pointer.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Weak};

use envoy_types::pb::google::protobuf::Any;
use parking_lot::Mutex;
use xxhash_rust::xxh64::{Xxh64, xxh64};

use super::ConfigToken;
use super::subscription::Subscription;
use super::types::XdsType;
use crate::translate::{Generated, Named};

/// One resource, its name and its version.
#[derive(Debug, PartialEq)]
pub struct Versioned {
    pub name: Arc<str>,
    pub version: Arc<str>,
    pub resource: Any,
}

/// Every resource of one type, sorted by name.
#[derive(Debug, Default, PartialEq)]
pub struct TypeResources {
    items: BTreeMap<Arc<str>, Arc<Versioned>>,
    /// The version of the whole set (what a wildcard subscriber has).
    version: String,
}

impl TypeResources {
    /// Indexes `named` without sharing (tests and one-off uses).
    pub fn new(ty: XdsType, named: Vec<Named>) -> (TypeResources, Vec<String>) {
        let (set, problems) = Interner::default().type_resources(ty, named);
        (Arc::unwrap_or_clone(set), problems)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Versioned>> {
        self.items.get(name)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<Versioned>)> {
        self.items.iter()
    }

    /// The version of the whole set.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// `name` as the `Arc` of the resource of that name when there is one, so that
    /// per-stream state naming it shares the string instead of copying it.
    pub fn intern(&self, name: &str) -> Arc<str> {
        self.items
            .get_key_value(name)
            .map_or_else(|| Arc::from(name), |(k, _)| k.clone())
    }

    /// The resources a subscription selects, in name order.
    pub fn selected<'a>(
        &'a self,
        sub: &'a Subscription,
    ) -> Box<dyn Iterator<Item = (&'a Arc<str>, &'a Arc<Versioned>)> + 'a> {
        if sub.is_wildcard() {
            Box::new(self.items.iter())
        } else {
            Box::new(
                sub.names()
                    .iter()
                    .filter_map(|n| self.items.get_key_value(&**n)),
            )
        }
    }

    /// The SotW `version_info` of what `sub` selects: changes whenever any selected
    /// resource changes, appears or disappears.
    pub fn version_for(&self, sub: &Subscription) -> String {
        if sub.is_wildcard() {
            return self.version.clone();
        }
        set_version(self.selected(sub).map(|(_, v)| &**v))
    }
}

impl Clone for TypeResources {
    fn clone(&self) -> Self {
        TypeResources {
            items: self.items.clone(),
            version: self.version.clone(),
        }
    }
}

/// Everything generated for one proxy, by type, and the config it was generated from.
#[derive(Clone, Default)]
pub struct ProxyResources {
    types: [Arc<TypeResources>; XdsType::COUNT],
    token: Option<ConfigToken>,
}

impl std::fmt::Debug for ProxyResources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyResources")
            .field("types", &self.types)
            .field("token", &self.token.is_some())
            .finish()
    }
}

impl ProxyResources {
    /// Indexes a full generation without sharing (tests). Problems (duplicates, wrong types)
    /// are returned for logging.
    pub fn from_generated(generated: Generated) -> (ProxyResources, Vec<String>) {
        Interner::default().proxy_resources(generated)
    }

    /// The same resources with the endpoints replaced (an EDS-only push): the other types are
    /// shared, not copied.
    pub fn with_endpoint_set(&self, endpoints: Arc<TypeResources>) -> ProxyResources {
        let mut types = self.types.clone();
        types[XdsType::Endpoint.index()] = endpoints;
        ProxyResources {
            types,
            token: self.token.clone(),
        }
    }

    /// Records the config these resources were generated from.
    pub fn with_token(mut self, token: Option<ConfigToken>) -> ProxyResources {
        self.token = token;
        self
    }

    /// The config these resources were generated from, when the generator said.
    pub fn token(&self) -> Option<&ConfigToken> {
        self.token.as_ref()
    }

    /// [`Self::with_endpoint_set`] from a generation, without sharing (tests).
    pub fn with_endpoints(&self, endpoints: Vec<Named>) -> (ProxyResources, Vec<String>) {
        let (eds, problems) = Interner::default().type_resources(XdsType::Endpoint, endpoints);
        (self.with_endpoint_set(eds), problems)
    }

    pub fn get(&self, ty: XdsType) -> &TypeResources {
        &self.types[ty.index()]
    }

    /// The shared set of `ty`.
    pub fn get_arc(&self, ty: XdsType) -> &Arc<TypeResources> {
        &self.types[ty.index()]
    }

    /// Whether `ty` is the very same set (same allocation) in both: cheap change detection.
    pub fn shares(&self, other: &ProxyResources, ty: XdsType) -> bool {
        Arc::ptr_eq(&self.types[ty.index()], &other.types[ty.index()])
    }
}

/// Deduplicates resources and per-type sets by content across every proxy. Holds only weak
/// references: what no proxy holds any more is freed (and swept from the tables).
#[derive(Debug, Default)]
pub struct Interner {
    resources: Mutex<Table<Versioned>>,
    sets: Mutex<Table<TypeResources>>,
    /// Recent [`Interner::replace`] results: an endpoints push makes the same replacement
    /// in the same set for every proxy that shares it, and the copy is the costly part.
    replaced: Mutex<VecDeque<Replaced>>,
    /// Recent [`Interner::with_own`] merges: proxies of one class whose own parts are equal
    /// (replicas, or workloads serving the same ports) get the same merged set.
    merged: Mutex<VecDeque<Merged>>,
}

/// One merge, holding its inputs so their addresses cannot be reused while cached.
#[derive(Debug)]
struct Merged {
    shared: Arc<TypeResources>,
    own: Arc<TypeResources>,
    result: Arc<TypeResources>,
}

/// Merges remembered (a push has about one per class and distinct set of own ports).
const MERGED_KEPT: usize = 64;

/// One replacement, holding its inputs so their addresses cannot be reused while cached.
#[derive(Debug)]
struct Replaced {
    set: Arc<TypeResources>,
    changed: Vec<Arc<Versioned>>,
    result: Arc<TypeResources>,
}

/// Replacements remembered (a push of one change touches a handful of distinct sets).
const REPLACED_KEPT: usize = 16;

/// Weak entries by a 64-bit key; collisions are resolved by comparing content.
#[derive(Debug)]
struct Table<T> {
    entries: HashMap<(XdsType, u64), Weak<T>>,
    /// Inserts since the last sweep of dead entries.
    inserts: usize,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            entries: HashMap::new(),
            inserts: 0,
        }
    }
}

impl<T> Table<T> {
    fn live(&self) -> usize {
        self.entries
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }

    /// The live entry for `key` that `same` accepts.
    fn get(&self, key: (XdsType, u64), same: impl FnOnce(&T) -> bool) -> Option<Arc<T>> {
        self.entries
            .get(&key)
            .and_then(Weak::upgrade)
            .filter(|existing| same(existing))
    }

    /// Stores `value` under `key` (unless a different live value holds the key: a 64-bit
    /// collision, correct but unshared).
    fn insert(&mut self, key: (XdsType, u64), value: T) -> Arc<T> {
        let fresh = Arc::new(value);
        if self.entries.get(&key).is_some_and(|w| w.strong_count() > 0) {
            return fresh;
        }
        self.entries.insert(key, Arc::downgrade(&fresh));
        self.inserts += 1;
        if self.inserts > self.entries.len().max(4096) {
            self.entries.retain(|_, w| w.strong_count() > 0);
            self.inserts = 0;
        }
        fresh
    }
}

impl Interner {
    /// Indexes `named` as the shared set of `ty`. A resource of the wrong type or a duplicate
    /// name is dropped and reported, since Envoy would reject the whole response for it.
    pub fn type_resources(
        &self,
        ty: XdsType,
        named: Vec<Named>,
    ) -> (Arc<TypeResources>, Vec<String>) {
        let mut problems = Vec::new();
        // Hash outside the lock: it is the expensive part.
        let hashed: Vec<(Named, u64)> = named
            .into_iter()
            .filter(|n| {
                let ok = n.resource.type_url == ty.type_url();
                if !ok {
                    problems.push(format!(
                        "{ty} resource {:?} has type {:?}, dropped",
                        n.name, n.resource.type_url
                    ));
                }
                ok
            })
            .map(|n| {
                let content = xxh64(&n.resource.value, 0);
                (n, content)
            })
            .collect();
        let mut items: BTreeMap<Arc<str>, Arc<Versioned>> = BTreeMap::new();
        {
            let mut table = self.resources.lock();
            for (Named { name, resource }, content) in hashed {
                if items.contains_key(name.as_str()) {
                    problems.push(format!(
                        "{ty} resource {name:?} generated twice, kept the first"
                    ));
                    continue;
                }
                let key = (ty, content ^ xxh64(name.as_bytes(), 1));
                let v = match table.get(key, |v| {
                    *v.name == *name && v.resource.value == resource.value
                }) {
                    Some(v) => v,
                    None => table.insert(
                        key,
                        Versioned {
                            name: name.as_str().into(),
                            version: hex(content).into(),
                            resource,
                        },
                    ),
                };
                items.insert(v.name.clone(), v);
            }
        }
        (self.intern_set(ty, items), problems)
    }

    /// Interns resources of `ty` without making a set (for replacing some of a set's).
    pub fn versioned(&self, ty: XdsType, named: Vec<Named>) -> Vec<Arc<Versioned>> {
        let (set, _) = self.type_resources(ty, named);
        set.items.values().cloned().collect()
    }

    /// `set` with `changed` put in (by name): the shared set with those contents.
    pub fn replace(
        &self,
        ty: XdsType,
        set: &Arc<TypeResources>,
        changed: &[Arc<Versioned>],
    ) -> Arc<TypeResources> {
        if changed.iter().all(|v| {
            set.items
                .get(&v.name)
                .is_some_and(|old| Arc::ptr_eq(old, v))
        }) {
            return set.clone();
        }
        let same_inputs = |r: &Replaced| {
            Arc::ptr_eq(&r.set, set)
                && r.changed.len() == changed.len()
                && r.changed
                    .iter()
                    .zip(changed)
                    .all(|(a, b)| Arc::ptr_eq(a, b))
        };
        if let Some(r) = self.replaced.lock().iter().find(|r| same_inputs(r)) {
            return r.result.clone();
        }
        let mut items = set.items.clone();
        for v in changed {
            items.insert(v.name.clone(), v.clone());
        }
        let result = self.intern_set(ty, items);
        remember(
            &self.replaced,
            REPLACED_KEPT,
            Replaced {
                set: set.clone(),
                changed: changed.to_vec(),
                result: result.clone(),
            },
        );
        result
    }

    fn intern_set(
        &self,
        ty: XdsType,
        items: BTreeMap<Arc<str>, Arc<Versioned>>,
    ) -> Arc<TypeResources> {
        let version = set_version(items.values().map(|v| &**v));
        let key = (ty, u64::from_str_radix(&version, 16).unwrap_or_default());
        let mut sets = self.sets.lock();
        let same = |s: &TypeResources| {
            s.items.len() == items.len()
                && s.items
                    .values()
                    .zip(items.values())
                    .all(|(a, b)| Arc::ptr_eq(a, b))
        };
        match sets.get(key, same) {
            Some(set) => set,
            None => sets.insert(key, TypeResources { items, version }),
        }
    }

    /// Indexes a full generation.
    pub fn proxy_resources(&self, generated: Generated) -> (ProxyResources, Vec<String>) {
        let mut problems = Vec::new();
        let types = by_type(generated).map(|(ty, named)| {
            let (res, mut p) = self.type_resources(ty, named);
            problems.append(&mut p);
            res
        });
        (ProxyResources { types, token: None }, problems)
    }

    /// A proxy's resources from the part its class shares and its own part. Types the own
    /// part has nothing of are the shared sets themselves (no copy); the others are merged
    /// by name, the shared resource winning a clash (reported).
    pub fn with_own(
        &self,
        shared: &ProxyResources,
        own: Generated,
    ) -> (ProxyResources, Vec<String>) {
        let mut problems = Vec::new();
        let mut types = shared.types.clone();
        for (ty, named) in by_type(own) {
            if named.is_empty() {
                continue;
            }
            let (own_set, mut p) = self.type_resources(ty, named);
            problems.append(&mut p);
            let base = &shared.types[ty.index()];
            let same = |m: &&Merged| Arc::ptr_eq(&m.shared, base) && Arc::ptr_eq(&m.own, &own_set);
            if let Some(m) = self.merged.lock().iter().find(same) {
                types[ty.index()] = m.result.clone();
                continue;
            }
            let mut items = base.items.clone();
            for (name, v) in &own_set.items {
                if items.contains_key(name) {
                    problems.push(format!(
                        "{ty} resource {name:?} generated twice, kept the first"
                    ));
                    continue;
                }
                items.insert(name.clone(), v.clone());
            }
            let result = self.intern_set(ty, items);
            remember(
                &self.merged,
                MERGED_KEPT,
                Merged {
                    shared: base.clone(),
                    own: own_set,
                    result: result.clone(),
                },
            );
            types[ty.index()] = result;
        }
        (ProxyResources { types, token: None }, problems)
    }

    /// Live shared resources and sets (for metrics and tests).
    pub fn len(&self) -> (usize, usize) {
        (self.resources.lock().live(), self.sets.lock().live())
    }
}

/// A generation's lists by type, in the order of [`XdsType::index`].
fn by_type(g: Generated) -> [(XdsType, Vec<Named>); XdsType::COUNT] {
    [
        (XdsType::Cluster, g.clusters),
        (XdsType::Endpoint, g.endpoints),
        (XdsType::Listener, g.listeners),
        (XdsType::Route, g.routes),
        (XdsType::Secret, g.secrets),
    ]
}

/// Keeps `item` among the `kept` most recent results, dropping the oldest.
fn remember<T>(recent: &Mutex<VecDeque<T>>, kept: usize, item: T) {
    let mut recent = recent.lock();
    if recent.len() >= kept {
        recent.pop_front();
    }
    recent.push_back(item);
}

fn hex(v: u64) -> String {
    format!("{v:016x}")
}

/// The version of a set: a hash over every (name, version) in name order. xxHash64:
/// stable across processes and Rust versions (unlike `DefaultHasher`), which matters because
/// delta clients send versions back after a control-plane restart.
fn set_version<'a>(items: impl Iterator<Item = &'a Versioned>) -> String {
    let mut h = Xxh64::new(0);
    for v in items {
        h.update(v.name.as_bytes());
        h.update(&[0]);
        h.update(v.version.as_bytes());
        h.update(&[0]);
    }
    hex(h.digest())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn named(ty: XdsType, name: &str, body: &str) -> Named {
        Named {
            name: name.to_string(),
            resource: Any {
                type_url: ty.type_url().to_string(),
                value: body.as_bytes().to_vec(),
            },
        }
    }

    #[test]
    fn versions_are_content_hashes() {
        let (a, p) = TypeResources::new(
            XdsType::Cluster,
            vec![
                named(XdsType::Cluster, "a", "x"),
                named(XdsType::Cluster, "b", "x"),
            ],
        );
        assert!(p.is_empty());
        assert_eq!(a.get("a").unwrap().version, a.get("b").unwrap().version);
        let (b, _) = TypeResources::new(XdsType::Cluster, vec![named(XdsType::Cluster, "a", "y")]);
        assert_ne!(a.get("a").unwrap().version, b.get("a").unwrap().version);
        // Known values: stable across runs and builds (clients send them back).
        assert_eq!(hex(xxh64(b"", 0)), "ef46db3751d8e999");
        assert_eq!(&*a.get("a").unwrap().version, hex(xxh64(b"x", 0)));
    }

    #[test]
    fn set_version_tracks_membership_and_content() {
        let all = Subscription::wildcard();
        let (one, _) =
            TypeResources::new(XdsType::Cluster, vec![named(XdsType::Cluster, "a", "x")]);
        let (two, _) = TypeResources::new(
            XdsType::Cluster,
            vec![
                named(XdsType::Cluster, "a", "x"),
                named(XdsType::Cluster, "b", "x"),
            ],
        );
        assert_ne!(one.version_for(&all), two.version_for(&all));
        let only_a = Subscription::names_of(["a"]);
        assert_eq!(one.version_for(&only_a), two.version_for(&only_a));
        assert_eq!(one.version_for(&all), one.version_for(&only_a));
    }

    #[test]
    fn duplicates_and_wrong_types_are_dropped() {
        let (r, p) = TypeResources::new(
            XdsType::Cluster,
            vec![
                named(XdsType::Cluster, "a", "1"),
                named(XdsType::Cluster, "a", "2"),
                named(XdsType::Listener, "l", "3"),
            ],
        );
        assert_eq!(r.len(), 1);
        assert_eq!(r.get("a").unwrap().resource.value, b"1");
        assert_eq!(p.len(), 2, "{p:?}");
    }

    #[test]
    fn eds_only_update_shares_other_types() {
        let g = Generated {
            clusters: vec![named(XdsType::Cluster, "c", "1")],
            endpoints: vec![named(XdsType::Endpoint, "c", "e1")],
            ..Default::default()
        };
        let (full, _) = ProxyResources::from_generated(g);
        let (eds, _) = full.with_endpoints(vec![named(XdsType::Endpoint, "c", "e2")]);
        assert!(eds.shares(&full, XdsType::Cluster));
        assert!(!eds.shares(&full, XdsType::Endpoint));
        assert_ne!(
            full.get(XdsType::Endpoint).get("c").unwrap().version,
            eds.get(XdsType::Endpoint).get("c").unwrap().version
        );
    }

    #[test]
    fn replacing_some_resources_shares_the_rest() {
        let interner = Interner::default();
        let (set, _) = interner.type_resources(
            XdsType::Endpoint,
            vec![
                named(XdsType::Endpoint, "a", "1"),
                named(XdsType::Endpoint, "b", "1"),
            ],
        );
        // Replacing with the same content is the same set.
        let same = interner.versioned(XdsType::Endpoint, vec![named(XdsType::Endpoint, "b", "1")]);
        assert!(Arc::ptr_eq(
            &interner.replace(XdsType::Endpoint, &set, &same),
            &set
        ));
        let changed =
            interner.versioned(XdsType::Endpoint, vec![named(XdsType::Endpoint, "b", "2")]);
        let next = interner.replace(XdsType::Endpoint, &set, &changed);
        assert_eq!(next.len(), 2);
        assert!(Arc::ptr_eq(next.get("a").unwrap(), set.get("a").unwrap()));
        assert_eq!(next.get("b").unwrap().resource.value, b"2");
        assert_ne!(next.version(), set.version());
        // The same as generating the whole new set.
        let (whole, _) = interner.type_resources(
            XdsType::Endpoint,
            vec![
                named(XdsType::Endpoint, "a", "1"),
                named(XdsType::Endpoint, "b", "2"),
            ],
        );
        assert!(Arc::ptr_eq(&whole, &next));
    }

    #[test]
    fn equal_content_is_shared_and_freed() {
        let interner = Interner::default();
        let gen_for = |route: &str| Generated {
            clusters: vec![
                named(XdsType::Cluster, "outbound|80||a", "shared"),
                named(XdsType::Cluster, "inbound|80||", route),
            ],
            routes: vec![named(XdsType::Route, "80", "routes")],
            ..Default::default()
        };
        let (p1, _) = interner.proxy_resources(gen_for("one"));
        let (p2, _) = interner.proxy_resources(gen_for("two"));
        let (p3, _) = interner.proxy_resources(gen_for("one"));
        // Same resource in different sets: one allocation.
        assert!(Arc::ptr_eq(
            p1.get(XdsType::Cluster).get("outbound|80||a").unwrap(),
            p2.get(XdsType::Cluster).get("outbound|80||a").unwrap()
        ));
        // Equal sets are one set; different ones are not.
        assert!(p1.shares(&p2, XdsType::Route));
        assert!(p1.shares(&p3, XdsType::Cluster));
        assert!(!p1.shares(&p2, XdsType::Cluster));
        // Same name, other content: not confused.
        assert_ne!(
            p1.get(XdsType::Cluster)
                .get("inbound|80||")
                .unwrap()
                .resource
                .value,
            p2.get(XdsType::Cluster)
                .get("inbound|80||")
                .unwrap()
                .resource
                .value
        );
        let (resources, sets) = interner.len();
        assert_eq!(resources, 4, "shared, inbound one, inbound two, route");
        assert!(sets >= 4, "{sets}");
        drop((p1, p2, p3));
        assert_eq!(interner.len(), (0, 0), "nothing outlives its proxies");
    }
}
