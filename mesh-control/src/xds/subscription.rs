//! Which resources of one type a client has asked for, with the xDS rules for wildcards.
//!
//! Listeners and clusters may be subscribed to as a wildcard: explicitly with the name `*`,
//! or (legacy) by a client that has never named a resource of that type on the stream. Once
//! a client names a resource the legacy form is over; after that an empty SotW name list
//! means "nothing" (Envoy's xDS doc, "How the client specifies what resources to return").

use std::collections::BTreeSet;
use std::sync::Arc;

use super::types::XdsType;

/// The explicit wildcard name.
pub const WILDCARD: &str = "*";

/// One type's subscription on one stream.
#[derive(Debug, Clone, Default)]
pub struct Subscription {
    wildcard: bool,
    /// True while the client has never named a resource of this type on this stream.
    legacy: bool,
    /// Shared with the resources' names where they exist (see `apply_*`'s `intern`).
    names: BTreeSet<Arc<str>>,
    /// A hash of the last SotW `resource_names` list applied, in order: every ACK repeats
    /// the list, and comparing a hash is much cheaper than looking up thousands of names.
    /// (A 64-bit collision between two different lists is the accepted risk.)
    sotw_list: Option<u64>,
}

impl PartialEq for Subscription {
    fn eq(&self, other: &Self) -> bool {
        self.wildcard == other.wildcard && self.legacy == other.legacy && self.names == other.names
    }
}

impl Eq for Subscription {}

impl Subscription {
    /// A wildcard subscription (tests, and the legacy first request).
    pub fn wildcard() -> Subscription {
        Subscription {
            wildcard: true,
            legacy: true,
            names: BTreeSet::new(),
            sotw_list: None,
        }
    }

    /// A subscription to exactly these names.
    pub fn names_of<I, S>(names: I) -> Subscription
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Subscription {
            wildcard: false,
            legacy: false,
            names: names.into_iter().map(|n| Arc::from(n.into())).collect(),
            sotw_list: None,
        }
    }

    /// A fresh subscription before any request: legacy wildcard still possible.
    pub fn initial() -> Subscription {
        Subscription {
            wildcard: false,
            legacy: true,
            names: BTreeSet::new(),
            sotw_list: None,
        }
    }

    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// The explicitly named resources (without `*`).
    pub fn names(&self) -> &BTreeSet<Arc<str>> {
        &self.names
    }

    pub fn selects(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// Whether the client wants nothing of this type.
    pub fn is_empty(&self) -> bool {
        !self.wildcard && self.names.is_empty()
    }

    /// Applies a SotW request's full `resource_names`. Returns the names newly selected
    /// (which the server must send even if unchanged), or `None` when the subscription did
    /// not change. `intern` turns a name into the `Arc` it is kept as (the resource's own
    /// where there is one: thousands of EDS names per proxy are then not copied).
    pub fn apply_sotw<N: AsRef<[u8]>>(
        &mut self,
        ty: XdsType,
        resource_names: &[N],
        intern: &dyn Fn(&str) -> Arc<str>,
    ) -> Option<Change> {
        let was_wildcard = self.wildcard;
        let list = list_hash(resource_names);
        if self.sotw_list == Some(list) {
            return None;
        }
        self.sotw_list = Some(list);
        if resource_names.is_empty() {
            self.wildcard = self.legacy && ty.supports_wildcard();
            let removed = std::mem::take(&mut self.names)
                .into_iter()
                .map(|n| n.to_string())
                .collect();
            return self.change(was_wildcard, Vec::new(), removed);
        }
        self.legacy = false;
        let bytes = resource_names.iter().map(AsRef::as_ref);
        self.wildcard = bytes.clone().any(|n| n == WILDCARD.as_bytes());
        // Every ACK repeats the whole list (thousands of EDS names): compare in place and
        // build a new set only when it differs. A name that is not UTF-8 (protobuf strings
        // must be) is kept lossily converted: it matches no resource either way.
        let named = bytes.filter(|n| *n != WILDCARD.as_bytes());
        let same = named.clone().count() == self.names.len()
            && named
                .clone()
                .all(|n| std::str::from_utf8(n).is_ok_and(|n| self.names.contains(n)));
        if same {
            return self.change(was_wildcard, Vec::new(), Vec::new());
        }
        let new = named
            .map(|n| match std::str::from_utf8(n) {
                Ok(n) => intern(n),
                Err(_) => String::from_utf8_lossy(n).into(),
            })
            .collect();
        let before = std::mem::replace(&mut self.names, new);
        let added = self
            .names
            .difference(&before)
            .map(|n| n.to_string())
            .collect();
        let removed = before
            .difference(&self.names)
            .map(|n| n.to_string())
            .collect();
        self.change(was_wildcard, added, removed)
    }

    /// Applies a delta request's subscribe and unsubscribe lists (`intern`: as in
    /// [`Subscription::apply_sotw`]).
    pub fn apply_delta(
        &mut self,
        ty: XdsType,
        first: bool,
        subscribe: &[String],
        unsubscribe: &[String],
        intern: &dyn Fn(&str) -> Arc<str>,
    ) -> Option<Change> {
        let was_wildcard = self.wildcard;
        self.sotw_list = None;
        if first && subscribe.is_empty() && unsubscribe.is_empty() && ty.supports_wildcard() {
            // Legacy wildcard: the first request names nothing.
            self.wildcard = true;
        }
        if !subscribe.is_empty() {
            self.legacy = false;
        }
        // Track what this request changes instead of copying the set (an ACK names
        // nothing and must stay cheap however many resources the client holds).
        let mut inserted = Vec::new();
        for name in subscribe {
            if name == WILDCARD {
                self.wildcard = true;
            } else if self.names.insert(intern(name)) {
                inserted.push(name.clone());
            }
        }
        let mut deleted = Vec::new();
        for name in unsubscribe {
            if name == WILDCARD {
                self.wildcard = false;
            } else if self.names.remove(name.as_str()) {
                deleted.push(name.clone());
            }
        }
        // A name both subscribed and unsubscribed in one request nets out.
        let removed = deleted
            .into_iter()
            .filter(|n| !inserted.contains(n))
            .collect();
        let added = inserted
            .into_iter()
            .filter(|n| self.names.contains(n.as_str()))
            .collect();
        self.change(was_wildcard, added, removed)
    }

    fn change(
        &self,
        was_wildcard: bool,
        added: Vec<String>,
        removed: Vec<String>,
    ) -> Option<Change> {
        if self.wildcard == was_wildcard && added.is_empty() && removed.is_empty() {
            return None;
        }
        Some(Change {
            became_wildcard: self.wildcard && !was_wildcard,
            added,
            removed,
            lost_wildcard: was_wildcard && !self.wildcard,
        })
    }

    /// A short description for debug output: `*`, `* +2`, or `3 names`.
    pub fn describe(&self) -> String {
        match (self.wildcard, self.names.len()) {
            (true, 0) => WILDCARD.to_string(),
            (true, n) => format!("* +{n}"),
            (false, 1) => "1 name".to_string(),
            (false, n) => format!("{n} names"),
        }
    }
}

fn list_hash<N: AsRef<[u8]>>(names: &[N]) -> u64 {
    let mut h = xxhash_rust::xxh64::Xxh64::new(0);
    for n in names {
        h.update(n.as_ref());
        h.update(&[0]);
    }
    h.digest()
}

/// How a subscription changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    pub became_wildcard: bool,
    pub lost_wildcard: bool,
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(name: &str) -> Arc<str> {
        name.into()
    }

    fn v(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// The SotW sequence from Envoy's xDS doc.
    #[test]
    fn sotw_legacy_wildcard_sequence() {
        let mut s = Subscription::initial();
        assert!(
            s.apply_sotw::<String>(XdsType::Listener, &[], &own)
                .is_some()
        );
        assert!(s.is_wildcard());
        // Same empty list again: still the legacy wildcard, no change.
        assert!(
            s.apply_sotw::<String>(XdsType::Listener, &[], &own)
                .is_none()
        );
        let c = s
            .apply_sotw(XdsType::Listener, &v(&["*", "A"]), &own)
            .unwrap();
        assert_eq!(c.added, v(&["A"]));
        assert!(s.is_wildcard());
        let c = s.apply_sotw(XdsType::Listener, &v(&["A"]), &own).unwrap();
        assert!(c.lost_wildcard);
        assert!(!s.is_wildcard());
        // Empty now means nothing, not the wildcard.
        let c = s
            .apply_sotw::<String>(XdsType::Listener, &[], &own)
            .unwrap();
        assert_eq!(c.removed, v(&["A"]));
        assert!(s.is_empty());
    }

    #[test]
    fn sotw_named_types_have_no_legacy_wildcard() {
        let mut s = Subscription::initial();
        assert!(
            s.apply_sotw::<String>(XdsType::Endpoint, &[], &own)
                .is_none()
        );
        assert!(s.is_empty());
        s.apply_sotw(XdsType::Endpoint, &v(&["a", "b"]), &own)
            .unwrap();
        assert!(s.selects("a") && !s.selects("c"));
    }

    /// The incremental sequence from Envoy's xDS doc.
    #[test]
    fn delta_legacy_wildcard_sequence() {
        let mut s = Subscription::initial();
        s.apply_delta(XdsType::Cluster, true, &[], &[], &own)
            .unwrap();
        assert!(s.is_wildcard());
        let c = s
            .apply_delta(XdsType::Cluster, false, &v(&["A"]), &[], &own)
            .unwrap();
        assert_eq!(c.added, v(&["A"]));
        assert!(s.is_wildcard(), "naming A keeps the wildcard in delta");
        let c = s
            .apply_delta(XdsType::Cluster, false, &[], &v(&["*"]), &own)
            .unwrap();
        assert!(c.lost_wildcard);
        assert!(s.selects("A") && !s.selects("B"));
        s.apply_delta(XdsType::Cluster, false, &[], &v(&["A"]), &own)
            .unwrap();
        assert!(s.is_empty());
        // Phantom unsubscribes are fine.
        assert!(
            s.apply_delta(XdsType::Cluster, false, &[], &v(&["zzz"]), &own)
                .is_none()
        );
    }

    #[test]
    fn delta_explicit_wildcard() {
        let mut s = Subscription::initial();
        s.apply_delta(XdsType::Listener, true, &v(&["*"]), &[], &own)
            .unwrap();
        assert!(s.is_wildcard());
        assert_eq!(s.describe(), "*");
    }
    /// Every SotW ACK repeats the list: the same list in any order changes nothing, a
    /// different one reports exactly what it adds and drops.
    #[test]
    fn sotw_repeated_and_changed_lists() {
        let mut s = Subscription::initial();
        let c = s
            .apply_sotw(XdsType::Endpoint, &v(&["b", "a"]), &own)
            .unwrap();
        assert_eq!(c.added, v(&["a", "b"]));
        assert!(
            s.apply_sotw(XdsType::Endpoint, &v(&["b", "a"]), &own)
                .is_none()
        );
        assert!(
            s.apply_sotw(XdsType::Endpoint, &v(&["a", "b"]), &own)
                .is_none()
        );
        let c = s
            .apply_sotw(XdsType::Endpoint, &v(&["a", "c"]), &own)
            .unwrap();
        assert_eq!((c.added, c.removed), (v(&["c"]), v(&["b"])));
        assert!(
            s.apply_sotw(XdsType::Endpoint, &v(&["a", "c"]), &own)
                .is_none()
        );
    }

    /// A delta request that names a resource and drops it again nets out; an ACK (no
    /// names) changes nothing.
    #[test]
    fn delta_subscribe_and_unsubscribe_in_one_request() {
        let mut s = Subscription::names_of(["a"]);
        let c = s
            .apply_delta(
                XdsType::Endpoint,
                false,
                &v(&["b", "c"]),
                &v(&["b", "a"]),
                &own,
            )
            .unwrap();
        assert_eq!((c.added, c.removed), (v(&["c"]), v(&["a"])));
        assert!(s.selects("c") && !s.selects("a") && !s.selects("b"));
        assert!(
            s.apply_delta(XdsType::Endpoint, false, &[], &[], &own)
                .is_none()
        );
    }
}
