//! Which resources of one type a client has asked for, with the xDS rules for wildcards.
//!
//! Listeners and clusters may be subscribed to as a wildcard: explicitly with the name `*`,
//! or (legacy) by a client that has never named a resource of that type on the stream. Once
//! a client names a resource the legacy form is over; after that an empty SotW name list
//! means "nothing" (Envoy's xDS doc, "How the client specifies what resources to return").

use std::collections::BTreeSet;

use super::types::XdsType;

/// The explicit wildcard name.
pub const WILDCARD: &str = "*";

/// One type's subscription on one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    wildcard: bool,
    /// True while the client has never named a resource of this type on this stream.
    legacy: bool,
    names: BTreeSet<String>,
}

impl Subscription {
    /// A wildcard subscription (tests, and the legacy first request).
    pub fn wildcard() -> Subscription {
        Subscription {
            wildcard: true,
            legacy: true,
            names: BTreeSet::new(),
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
            names: names.into_iter().map(Into::into).collect(),
        }
    }

    /// A fresh subscription before any request: legacy wildcard still possible.
    pub fn initial() -> Subscription {
        Subscription {
            wildcard: false,
            legacy: true,
            names: BTreeSet::new(),
        }
    }

    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// The explicitly named resources (without `*`).
    pub fn names(&self) -> &BTreeSet<String> {
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
    /// not change.
    pub fn apply_sotw(&mut self, ty: XdsType, resource_names: &[String]) -> Option<Change> {
        let before = self.clone();
        if resource_names.is_empty() {
            self.wildcard = self.legacy && ty.supports_wildcard();
            self.names.clear();
        } else {
            self.legacy = false;
            self.wildcard = resource_names.iter().any(|n| n == WILDCARD);
            self.names = resource_names
                .iter()
                .filter(|n| *n != WILDCARD)
                .cloned()
                .collect();
        }
        self.change_from(&before)
    }

    /// Applies a delta request's subscribe and unsubscribe lists.
    pub fn apply_delta(
        &mut self,
        ty: XdsType,
        first: bool,
        subscribe: &[String],
        unsubscribe: &[String],
    ) -> Option<Change> {
        let before = self.clone();
        if first && subscribe.is_empty() && unsubscribe.is_empty() && ty.supports_wildcard() {
            // Legacy wildcard: the first request names nothing.
            self.wildcard = true;
        }
        if !subscribe.is_empty() {
            self.legacy = false;
        }
        for name in subscribe {
            if name == WILDCARD {
                self.wildcard = true;
            } else {
                self.names.insert(name.clone());
            }
        }
        for name in unsubscribe {
            if name == WILDCARD {
                self.wildcard = false;
            } else {
                self.names.remove(name);
            }
        }
        self.change_from(&before)
    }

    fn change_from(&self, before: &Subscription) -> Option<Change> {
        if self.wildcard == before.wildcard && self.names == before.names {
            return None;
        }
        Some(Change {
            became_wildcard: self.wildcard && !before.wildcard,
            added: self.names.difference(&before.names).cloned().collect(),
            removed: before.names.difference(&self.names).cloned().collect(),
            lost_wildcard: before.wildcard && !self.wildcard,
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

    fn v(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// The SotW sequence from Envoy's xDS doc.
    #[test]
    fn sotw_legacy_wildcard_sequence() {
        let mut s = Subscription::initial();
        assert!(s.apply_sotw(XdsType::Listener, &[]).is_some());
        assert!(s.is_wildcard());
        // Same empty list again: still the legacy wildcard, no change.
        assert!(s.apply_sotw(XdsType::Listener, &[]).is_none());
        let c = s.apply_sotw(XdsType::Listener, &v(&["*", "A"])).unwrap();
        assert_eq!(c.added, v(&["A"]));
        assert!(s.is_wildcard());
        let c = s.apply_sotw(XdsType::Listener, &v(&["A"])).unwrap();
        assert!(c.lost_wildcard);
        assert!(!s.is_wildcard());
        // Empty now means nothing, not the wildcard.
        let c = s.apply_sotw(XdsType::Listener, &[]).unwrap();
        assert_eq!(c.removed, v(&["A"]));
        assert!(s.is_empty());
    }

    #[test]
    fn sotw_named_types_have_no_legacy_wildcard() {
        let mut s = Subscription::initial();
        assert!(s.apply_sotw(XdsType::Endpoint, &[]).is_none());
        assert!(s.is_empty());
        s.apply_sotw(XdsType::Endpoint, &v(&["a", "b"])).unwrap();
        assert!(s.selects("a") && !s.selects("c"));
    }

    /// The incremental sequence from Envoy's xDS doc.
    #[test]
    fn delta_legacy_wildcard_sequence() {
        let mut s = Subscription::initial();
        s.apply_delta(XdsType::Cluster, true, &[], &[]).unwrap();
        assert!(s.is_wildcard());
        let c = s
            .apply_delta(XdsType::Cluster, false, &v(&["A"]), &[])
            .unwrap();
        assert_eq!(c.added, v(&["A"]));
        assert!(s.is_wildcard(), "naming A keeps the wildcard in delta");
        let c = s
            .apply_delta(XdsType::Cluster, false, &[], &v(&["*"]))
            .unwrap();
        assert!(c.lost_wildcard);
        assert!(s.selects("A") && !s.selects("B"));
        s.apply_delta(XdsType::Cluster, false, &[], &v(&["A"]))
            .unwrap();
        assert!(s.is_empty());
        // Phantom unsubscribes are fine.
        assert!(
            s.apply_delta(XdsType::Cluster, false, &[], &v(&["zzz"]))
                .is_none()
        );
    }

    #[test]
    fn delta_explicit_wildcard() {
        let mut s = Subscription::initial();
        s.apply_delta(XdsType::Listener, true, &v(&["*"]), &[])
            .unwrap();
        assert!(s.is_wildcard());
        assert_eq!(s.describe(), "*");
    }
}
