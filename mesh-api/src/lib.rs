//! Istio's resource types (networking, security, telemetry), their validation, the mesh
//! config, and the naming conventions the proxy and the control plane share. No I/O.

#[cfg(feature = "envoy")]
pub mod envoy_json;
