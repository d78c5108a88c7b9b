//! The kinds the mesh reads: every Istio kind it implements, and the Kubernetes kinds the
//! control plane takes from files. A kind knows its group, its served versions and its
//! scope.

use std::fmt;

use crate::{networking, security, telemetry};

/// A kind the mesh understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    VirtualService,
    DestinationRule,
    Gateway,
    ServiceEntry,
    WorkloadEntry,
    Sidecar,
    EnvoyFilter,
    PeerAuthentication,
    AuthorizationPolicy,
    RequestAuthentication,
    Telemetry,
    Service,
    EndpointSlice,
    Pod,
    Namespace,
    Secret,
    ConfigMap,
}

// === impl Kind ===

impl Kind {
    /// Every kind, Istio kinds first.
    pub const ALL: [Kind; 17] = [
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::Gateway,
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::Sidecar,
        Kind::EnvoyFilter,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
        Kind::RequestAuthentication,
        Kind::Telemetry,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Pod,
        Kind::Namespace,
        Kind::Secret,
        Kind::ConfigMap,
    ];

    /// The Istio kinds (those with a CRD).
    pub fn istio() -> impl Iterator<Item = Kind> {
        Kind::ALL.into_iter().filter(|k| k.is_istio())
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::Gateway => "Gateway",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::Sidecar => "Sidecar",
            Kind::EnvoyFilter => "EnvoyFilter",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::Telemetry => "Telemetry",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Pod => "Pod",
            Kind::Namespace => "Namespace",
            Kind::Secret => "Secret",
            Kind::ConfigMap => "ConfigMap",
        }
    }

    /// The API group (`""` for the Kubernetes core group).
    pub fn group(self) -> &'static str {
        match self {
            Kind::VirtualService
            | Kind::DestinationRule
            | Kind::Gateway
            | Kind::ServiceEntry
            | Kind::WorkloadEntry
            | Kind::Sidecar
            | Kind::EnvoyFilter => networking::GROUP,
            Kind::PeerAuthentication | Kind::AuthorizationPolicy | Kind::RequestAuthentication => {
                security::GROUP
            }
            Kind::Telemetry => telemetry::GROUP,
            Kind::EndpointSlice => "discovery.k8s.io",
            Kind::Service | Kind::Pod | Kind::Namespace | Kind::Secret | Kind::ConfigMap => "",
        }
    }

    /// The versions accepted in documents.
    pub fn versions(self) -> &'static [&'static str] {
        if self == Kind::EnvoyFilter {
            return networking::ENVOY_FILTER_VERSIONS;
        }
        match self.group() {
            networking::GROUP => networking::VERSIONS,
            security::GROUP => security::VERSIONS,
            telemetry::GROUP => telemetry::VERSIONS,
            // v1beta1 is what Kubernetes 1.20 serves; the fields we read are the same.
            "discovery.k8s.io" => &["v1", "v1beta1"],
            _ => &["v1"],
        }
    }

    /// Istio kinds have CRDs and are validated by this crate.
    pub fn is_istio(self) -> bool {
        self.group().ends_with(".istio.io")
    }

    /// Every kind but Namespace lives in a namespace.
    pub fn is_namespaced(self) -> bool {
        self != Kind::Namespace
    }

    /// Looks a kind up by its group (from `apiVersion`) and name; `None` for kinds the mesh
    /// does not read.
    pub fn find(group: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.group() == group && k.as_str() == kind)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Splits `apiVersion` into group and version (`v1` is the core group).
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    api_version.rsplit_once('/').unwrap_or(("", api_version))
}
