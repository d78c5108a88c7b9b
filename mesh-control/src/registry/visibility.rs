//! `exportTo`: which namespaces may see a service or a routing rule.

use std::collections::BTreeSet;

use serde::Serialize;

/// The namespaces a resource is exported to. `.` is resolved to the owner's namespace
/// when parsed; `~` exports to nobody; `*` to everyone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Visibility {
    pub all: bool,
    pub namespaces: BTreeSet<String>,
}

impl Visibility {
    pub fn public() -> Visibility {
        Visibility {
            all: true,
            namespaces: BTreeSet::new(),
        }
    }

    /// Parses `exportTo` for a resource in `namespace`; an empty list means `defaults`
    /// (the mesh config's `default*ExportTo`, `*` unless changed).
    pub fn parse(export_to: &[String], namespace: &str, defaults: &[String]) -> Visibility {
        let list = if export_to.is_empty() {
            defaults
        } else {
            export_to
        };
        if list.is_empty() {
            return Visibility::public();
        }
        let mut out = Visibility {
            all: false,
            namespaces: BTreeSet::new(),
        };
        for entry in list {
            match entry.as_str() {
                "*" => out.all = true,
                "." => {
                    out.namespaces.insert(namespace.to_string());
                }
                "~" => {}
                ns => {
                    out.namespaces.insert(ns.to_string());
                }
            }
        }
        out
    }

    pub fn visible_to(&self, namespace: &str) -> bool {
        self.all || self.namespaces.contains(namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(list: &[&str]) -> Visibility {
        let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        Visibility::parse(&list, "shop", &["*".to_string()])
    }

    #[test]
    fn export_to_values() {
        assert!(v(&[]).visible_to("anything"));
        assert!(v(&["*"]).visible_to("anything"));
        assert!(v(&["."]).visible_to("shop"));
        assert!(!v(&["."]).visible_to("other"));
        assert!(!v(&["~"]).visible_to("shop"));
        assert!(v(&[".", "istio-system"]).visible_to("istio-system"));
        let private_default = Visibility::parse(&[], "shop", &[".".to_string()]);
        assert!(!private_default.visible_to("other"));
    }
}
