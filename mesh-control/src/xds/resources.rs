//! What one proxy should have, indexed for the protocol: per type, every resource by name
//! with a version that is a hash of its encoded bytes.
//!
//! Versions are content hashes rather than counters so that they are stable across pushes
//! (an unchanged resource keeps its version, which is what lets delta send only what changed
//! and SotW skip a type that did not change) and across control-plane restarts (a delta
//! client reconnecting with `initial_resource_versions` is not resent what it has).

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;

use super::subscription::Subscription;
use super::types::XdsType;
use crate::translate::{Generated, Named};

/// One resource and its version.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    pub version: Arc<str>,
    pub resource: Any,
}

/// Every resource of one type, sorted by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TypeResources {
    items: BTreeMap<String, Versioned>,
    /// The version of the whole set (what a wildcard subscriber has).
    version: String,
}

impl TypeResources {
    /// Indexes `named`; a resource of the wrong type or a duplicate name is dropped and
    /// reported, since Envoy would reject the whole response for it.
    pub fn new(ty: XdsType, named: Vec<Named>) -> (TypeResources, Vec<String>) {
        let mut problems = Vec::new();
        let mut items = BTreeMap::new();
        for Named { name, resource } in named {
            if resource.type_url != ty.type_url() {
                problems.push(format!(
                    "{ty} resource {name:?} has type {:?}, dropped",
                    resource.type_url
                ));
                continue;
            }
            if items.contains_key(&name) {
                problems.push(format!(
                    "{ty} resource {name:?} generated twice, kept the first"
                ));
                continue;
            }
            let version: Arc<str> = hex(fnv1a(FNV_OFFSET, &resource.value)).into();
            items.insert(name, Versioned { version, resource });
        }
        let version = set_version(items.iter());
        (TypeResources { items, version }, problems)
    }

    pub fn get(&self, name: &str) -> Option<&Versioned> {
        self.items.get(name)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Versioned)> {
        self.items.iter()
    }

    /// The resources a subscription selects, in name order.
    pub fn selected<'a>(
        &'a self,
        sub: &'a Subscription,
    ) -> Box<dyn Iterator<Item = (&'a String, &'a Versioned)> + 'a> {
        if sub.is_wildcard() {
            Box::new(self.items.iter())
        } else {
            Box::new(
                sub.names()
                    .iter()
                    .filter_map(|n| self.items.get_key_value(n.as_str())),
            )
        }
    }

    /// The SotW `version_info` of what `sub` selects: changes whenever any selected
    /// resource changes, appears or disappears.
    pub fn version_for(&self, sub: &Subscription) -> String {
        if sub.is_wildcard() {
            return self.version.clone();
        }
        set_version(self.selected(sub))
    }
}

/// Everything generated for one proxy, by type.
#[derive(Debug, Clone, Default)]
pub struct ProxyResources {
    types: [Arc<TypeResources>; XdsType::COUNT],
}

impl ProxyResources {
    /// Indexes a full generation. Problems (duplicates, wrong types) are returned for logging.
    pub fn from_generated(generated: Generated) -> (ProxyResources, Vec<String>) {
        let Generated {
            listeners,
            routes,
            clusters,
            endpoints,
            secrets,
        } = generated;
        let mut problems = Vec::new();
        let mut index = |ty, named| {
            let (res, mut p) = TypeResources::new(ty, named);
            problems.append(&mut p);
            Arc::new(res)
        };
        let types = [
            index(XdsType::Cluster, clusters),
            index(XdsType::Endpoint, endpoints),
            index(XdsType::Listener, listeners),
            index(XdsType::Route, routes),
            index(XdsType::Secret, secrets),
        ];
        (ProxyResources { types }, problems)
    }

    /// The same resources with the endpoints replaced (an EDS-only push): the other types are
    /// shared, not copied.
    pub fn with_endpoints(&self, endpoints: Vec<Named>) -> (ProxyResources, Vec<String>) {
        let (eds, problems) = TypeResources::new(XdsType::Endpoint, endpoints);
        let mut types = self.types.clone();
        types[XdsType::Endpoint.index()] = Arc::new(eds);
        (ProxyResources { types }, problems)
    }

    pub fn get(&self, ty: XdsType) -> &TypeResources {
        &self.types[ty.index()]
    }

    /// Whether `ty` is the very same set (same allocation) in both: cheap change detection
    /// after an EDS-only push.
    pub fn shares(&self, other: &ProxyResources, ty: XdsType) -> bool {
        Arc::ptr_eq(&self.types[ty.index()], &other.types[ty.index()])
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64 bit: stable across processes and Rust versions (unlike `DefaultHasher`),
/// which matters because delta clients send versions back after a control-plane restart.
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

fn hex(v: u64) -> String {
    format!("{v:016x}")
}

fn set_version<'a>(items: impl Iterator<Item = (&'a String, &'a Versioned)>) -> String {
    let mut hash = FNV_OFFSET;
    for (name, v) in items {
        hash = fnv1a(hash, name.as_bytes());
        hash = fnv1a(hash, &[0]);
        hash = fnv1a(hash, v.version.as_bytes());
        hash = fnv1a(hash, &[0]);
    }
    hex(hash)
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
        // Known value: stable across runs and builds.
        assert_eq!(hex(fnv1a(FNV_OFFSET, b"")), "cbf29ce484222325");
        assert_eq!(hex(fnv1a(FNV_OFFSET, b"a")), "af63dc4c8601ec8c");
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
}
