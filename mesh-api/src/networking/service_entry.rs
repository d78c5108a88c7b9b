//! `ServiceEntry` (networking.istio.io): services outside the platform's registry (or
//! extra hosts for workloads inside it). Follows Istio's `networking/v1alpha3/service_entry.proto`.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::WorkloadLabelSelector;
use super::workload_entry::WorkloadEntrySpec;
use crate::status::IstioStatus;

/// The spec of a ServiceEntry.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "ServiceEntry",
    plural = "serviceentries",
    shortname = "se",
    category = "istio-io",
    category = "networking-istio-io",
    namespaced,
    status = "IstioStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "Configuration affecting service registry.",
    printcolumn = r#"{"name":"Hosts","type":"string","description":"The hosts associated with the ServiceEntry","jsonPath":".spec.hosts"}"#,
    printcolumn = r#"{"name":"Location","type":"string","description":"Whether the service is external to the mesh or part of the mesh (MESH_EXTERNAL or MESH_INTERNAL)","jsonPath":".spec.location"}"#,
    printcolumn = r#"{"name":"Resolution","type":"string","description":"Service resolution mode for the hosts (NONE, STATIC, or DNS)","jsonPath":".spec.resolution"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ServiceEntrySpec {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Virtual IPs or CIDRs of the service.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<WorkloadEntrySpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadLabelSelector>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

/// Istio `ServicePort`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ServicePort {
    pub number: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

/// Istio `ServiceEntry.Location`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    #[default]
    MeshExternal,
    MeshInternal,
}

/// Istio `ServiceEntry.Resolution`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    #[default]
    None,
    Static,
    Dns,
    DnsRoundRobin,
}
