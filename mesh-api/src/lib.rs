//! Istio's resource types (networking, security, telemetry), their validation, the mesh
//! config, and the naming conventions the proxy and the control plane share. No I/O.
//!
//! - [`networking`], [`security`], [`telemetry`]: one Rust type per Istio kind, with
//!   Istio's exact field names, a JSON schema and `kube::CustomResource`.
//! - [`document`]: multi-document YAML/JSON text to typed resources (Istio kinds and the
//!   Kubernetes kinds the control plane reads from files).
//! - [`validation`]: schema and semantic checks with field paths (webhook and CLI).
//! - [`crds`]: the CustomResourceDefinitions, every served version.
//! - [`mesh_config`], [`duration`], [`naming`]: shared settings and conventions.

pub mod crds;
pub mod document;
pub mod duration;
pub mod mesh_config;
pub mod naming;
pub mod networking;
pub mod security;
pub mod status;
pub mod telemetry;
pub mod validation;

#[cfg(feature = "envoy")]
pub mod envoy_json;
