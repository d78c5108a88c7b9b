//! The xDS resource types the server knows, their type URLs and the order a push sends them in.

use std::fmt;

use crate::translate::type_url;

/// One xDS resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum XdsType {
    Cluster,
    Endpoint,
    Listener,
    Route,
    Secret,
}

impl XdsType {
    /// Every type, in the order a push sends them: make before break, as Envoy's xDS doc asks
    /// (CDS first, then the EDS that warms those clusters, then LDS, then the RDS that warms
    /// those listeners), then secrets.
    pub const PUSH_ORDER: [XdsType; 5] = [
        XdsType::Cluster,
        XdsType::Endpoint,
        XdsType::Listener,
        XdsType::Route,
        XdsType::Secret,
    ];

    pub const COUNT: usize = 5;

    pub fn type_url(self) -> &'static str {
        match self {
            XdsType::Cluster => type_url::CLUSTER,
            XdsType::Endpoint => type_url::ENDPOINT,
            XdsType::Listener => type_url::LISTENER,
            XdsType::Route => type_url::ROUTE,
            XdsType::Secret => type_url::SECRET,
        }
    }

    pub fn from_type_url(url: &str) -> Option<XdsType> {
        XdsType::PUSH_ORDER
            .into_iter()
            .find(|t| t.type_url() == url)
    }

    /// Istio's short name, used as the `type` label of the `pilot_*` metrics.
    pub fn short(self) -> &'static str {
        match self {
            XdsType::Cluster => "cds",
            XdsType::Endpoint => "eds",
            XdsType::Listener => "lds",
            XdsType::Route => "rds",
            XdsType::Secret => "sds",
        }
    }

    /// The upper-case name `istioctl proxy-status` shows as a column header.
    pub fn column(self) -> &'static str {
        match self {
            XdsType::Cluster => "CDS",
            XdsType::Endpoint => "EDS",
            XdsType::Listener => "LDS",
            XdsType::Route => "RDS",
            XdsType::Secret => "SDS",
        }
    }

    /// Listeners and clusters support wildcard subscriptions (including the legacy form: an
    /// empty name list on a stream that never named a resource); the other types are always
    /// requested by name.
    pub fn supports_wildcard(self) -> bool {
        matches!(self, XdsType::Cluster | XdsType::Listener)
    }

    /// A dense index for per-type arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for XdsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short())
    }
}

/// A set of xDS types, e.g. the types a push must consider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TypeSet(u8);

impl TypeSet {
    pub const ALL: TypeSet = TypeSet(0b1_1111);
    pub const ENDPOINTS: TypeSet = TypeSet(1 << XdsType::Endpoint as u8);

    pub fn contains(self, t: XdsType) -> bool {
        self.0 & (1 << t as u8) != 0
    }

    pub fn union(self, other: TypeSet) -> TypeSet {
        TypeSet(self.0 | other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_urls_round_trip() {
        for t in XdsType::PUSH_ORDER {
            assert_eq!(XdsType::from_type_url(t.type_url()), Some(t));
        }
        assert_eq!(XdsType::from_type_url("type.googleapis.com/unknown"), None);
    }

    #[test]
    fn push_order_is_make_before_break() {
        let order: Vec<_> = XdsType::PUSH_ORDER.iter().map(|t| t.short()).collect();
        assert_eq!(order, ["cds", "eds", "lds", "rds", "sds"]);
        for (i, t) in XdsType::PUSH_ORDER.iter().enumerate() {
            assert_eq!(t.index(), i);
        }
    }

    #[test]
    fn type_sets() {
        assert!(TypeSet::ALL.contains(XdsType::Secret));
        assert!(TypeSet::ENDPOINTS.contains(XdsType::Endpoint));
        assert!(!TypeSet::ENDPOINTS.contains(XdsType::Cluster));
        assert_eq!(TypeSet::ENDPOINTS.union(TypeSet::ALL), TypeSet::ALL);
    }
}
