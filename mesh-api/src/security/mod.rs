//! security.istio.io: PeerAuthentication, AuthorizationPolicy, RequestAuthentication,
//! served as v1beta1 and v1 with one Rust type per kind.

mod authorization_policy;
mod peer_authentication;
mod request_authentication;

pub use authorization_policy::*;
pub use peer_authentication::*;
pub use request_authentication::*;

/// The API group.
pub const GROUP: &str = "security.istio.io";
/// Every version Istio serves for this group, the storage version first.
pub const VERSIONS: &[&str] = &["v1beta1", "v1"];
/// The version Istio stores.
pub const STORAGE_VERSION: &str = "v1beta1";
