//! networking.istio.io: VirtualService, DestinationRule, Gateway, ServiceEntry,
//! WorkloadEntry, Sidecar and EnvoyFilter (the last served as v1alpha3 only, as in Istio). One Rust type per kind serves every API version Istio
//! serves (v1alpha3, v1beta1, v1): their schemas are identical.

mod common;
mod destination_rule;
mod envoy_filter;
#[cfg(feature = "envoy")]
pub mod envoy_filter_value;
mod gateway;
mod service_entry;
mod sidecar;
mod virtual_service;
mod workload_entry;

pub use common::*;
pub use destination_rule::*;
pub use envoy_filter::*;
pub use gateway::*;
pub use service_entry::*;
pub use sidecar::*;
pub use virtual_service::*;
pub use workload_entry::*;

/// The API group.
pub const GROUP: &str = "networking.istio.io";
/// Every version Istio serves for this group, the storage version first.
pub const VERSIONS: &[&str] = &["v1alpha3", "v1beta1", "v1"];
/// The version Istio stores (kept at v1alpha3 so that downgrades keep working).
pub const STORAGE_VERSION: &str = "v1alpha3";
/// EnvoyFilter is only served as v1alpha3.
pub const ENVOY_FILTER_VERSIONS: &[&str] = &["v1alpha3"];
