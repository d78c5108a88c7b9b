//! `Sidecar` (networking.istio.io): the ingress and egress a sidecar proxy accepts and the
//! hosts it needs to know about. Follows Istio's `networking/v1alpha3/sidecar.proto`.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Destination, WorkloadLabelSelector};
use super::destination_rule::ConnectionPoolSettings;
use super::gateway::ServerTlsSettings;
use crate::status::IstioStatus;

/// The spec of a Sidecar.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "Sidecar",
    plural = "sidecars",
    category = "istio-io",
    category = "networking-istio-io",
    namespaced,
    status = "IstioStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "Configuration affecting network reachability of a sidecar."
)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct SidecarSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadLabelSelector>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IstioIngressListener>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<IstioEgressListener>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound_connection_pool: Option<ConnectionPoolSettings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

/// Istio `SidecarPort`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct SidecarPort {
    pub number: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

/// Istio `IstioIngressListener`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct IstioIngressListener {
    pub port: SidecarPort,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture_mode: Option<CaptureMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsSettings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
}

/// Istio `IstioEgressListener`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct IstioEgressListener {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<SidecarPort>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture_mode: Option<CaptureMode>,
    /// `namespace/dnsName` entries (`*/`, `./`, `~/` namespace forms).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

/// Istio `CaptureMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CaptureMode {
    #[default]
    Default,
    Iptables,
    None,
}

/// Istio `OutboundTrafficPolicy` (Sidecar and MeshConfig).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct OutboundTrafficPolicy {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<OutboundTrafficMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_proxy: Option<Destination>,
}

/// Istio `OutboundTrafficPolicy.Mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundTrafficMode {
    #[default]
    RegistryOnly,
    AllowAny,
}
