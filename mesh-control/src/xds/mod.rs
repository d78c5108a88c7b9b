//! The Aggregated Discovery Service: Envoy's xDS v3 over gRPC, both the state-of-the-world
//! (`StreamAggregatedResources`) and incremental (`DeltaAggregatedResources`) variants.
//!
//! Layout: [`sotw`] and [`delta`] are the protocol rules as pure state machines (requests
//! and pushes in, responses out, sync state recorded); [`server`] is the tonic service and the
//! per-stream task that drives them; [`connection`] is the registry of connected proxies the
//! push side fans out to and the debug endpoints read.

pub mod connection;
pub mod delta;
pub mod resources;
pub mod server;
pub mod sotw;
pub mod status;
pub mod subscription;
pub mod types;

use std::sync::Arc;

use crate::model::Proxy;
use crate::store::Store;
use crate::translate::{self, Generated, Named};

pub use connection::{ConnId, Connection, Protocol, Registry};
pub use resources::Interner;
pub use server::{XdsServer, XdsServerConfig};
pub use types::{TypeSet, XdsType};

/// Sent as `control_plane.identifier` in every response.
pub const CONTROL_PLANE_ID: &str = "mesh-control";

/// How a request relates to the last response of its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckKind {
    /// The first request for a type on the stream.
    Initial,
    /// The client accepted the last response.
    Ack,
    /// The client rejected the last response, with its message.
    Nack(String),
    /// The nonce is not the last one sent: an answer to a superseded response.
    Stale,
    /// Delta only: a request without a nonce after the first (a subscription change).
    Spontaneous,
    /// A type this server does not serve.
    Ignored,
}

/// What the xDS server needs from the config side: the resources for one proxy, from the
/// latest config. Generation is a pure function call; the server runs it on the blocking
/// pool, never on a stream task.
pub trait Generator: Send + Sync + 'static {
    fn generate(&self, proxy: &Proxy) -> Generated;

    /// Only the endpoints (an EDS-only push). The default generates everything and keeps the
    /// endpoints, which is correct but not cheaper.
    fn generate_endpoints(&self, proxy: &Proxy) -> Vec<Named> {
        self.generate(proxy).endpoints
    }

    /// The endpoints of `proxy` as the class of proxies that share them: an EDS-only push
    /// generates them once per class and config version. `None` (the default): no sharing.
    fn shared_endpoints<'a>(&'a self, _proxy: &'a Proxy) -> Option<SharedEndpoints<'a>> {
        None
    }
}

/// Endpoints shared by a class of proxies (see [`Generator::shared_endpoints`]).
pub struct SharedEndpoints<'a> {
    /// The config version they are generated from.
    pub version: u64,
    /// Proxies with the same class and version get the same endpoints.
    pub class: String,
    /// Generates them (from that version).
    pub generate: Box<dyn FnOnce() -> Vec<Named> + 'a>,
}

/// The production generator: [`translate::generate`] over the store's current snapshot.
#[derive(Debug, Clone)]
pub struct StoreGenerator(pub Arc<Store>);

impl Generator for StoreGenerator {
    fn generate(&self, proxy: &Proxy) -> Generated {
        translate::generate(&self.0.snapshot(), proxy)
    }

    fn generate_endpoints(&self, proxy: &Proxy) -> Vec<Named> {
        translate::endpoints_only::generate_endpoints(&self.0.snapshot(), proxy)
    }

    fn shared_endpoints<'a>(&'a self, proxy: &'a Proxy) -> Option<SharedEndpoints<'a>> {
        let snapshot = self.0.snapshot();
        Some(SharedEndpoints {
            version: snapshot.version(),
            class: translate::endpoints_only::endpoints_class(&snapshot, proxy),
            generate: Box::new(move || {
                translate::endpoints_only::generate_endpoints(&snapshot, proxy)
            }),
        })
    }
}

/// Errors of the xDS server.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    #[error("xds server: cannot bind {addr}: {source} (hint: is another control plane running?)")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("xds server: {0}")]
    Serve(#[from] tonic::transport::Error),
}
