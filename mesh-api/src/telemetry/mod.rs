//! telemetry.istio.io: Telemetry, served as v1alpha1 and v1 with one Rust type.

mod resource;

pub use resource::*;

/// The API group.
pub const GROUP: &str = "telemetry.istio.io";
/// Every version Istio serves for this group, the storage version first.
pub const VERSIONS: &[&str] = &["v1alpha1", "v1"];
/// The version Istio stores.
pub const STORAGE_VERSION: &str = "v1alpha1";
