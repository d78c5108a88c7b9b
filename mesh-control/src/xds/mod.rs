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
pub mod wire;

use std::sync::Arc;

use crate::model::Proxy;
use crate::store::{Snapshot, Store};
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

    /// A full generation and the config it was made from, which the server keeps with the
    /// proxy's resources and hands back to [`Generator::endpoints_delta`]. Default: no token.
    fn generate_with_token(&self, proxy: &Proxy) -> (Generated, Option<ConfigToken>) {
        (self.generate(proxy), None)
    }

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

    /// A full generation in two parts: one shared by a class of proxies, generated once per
    /// class and config version, and the proxy's own. `None` (the default): the proxy's
    /// config is generated whole.
    fn shared_generation<'a>(&'a self, _proxy: &'a Proxy) -> Option<SharedGeneration<'a>> {
        None
    }

    /// An incremental endpoints update for a proxy whose resources were generated from
    /// `from`: the load assignments that changed since, to replace in what it has. `None`
    /// (the default, or when more than endpoints changed): regenerate all its endpoints.
    fn endpoints_delta<'a>(
        &'a self,
        _proxy: &'a Proxy,
        _from: &ConfigToken,
    ) -> Option<EndpointsDelta<'a>> {
        None
    }
}

/// The config a generation was made from, opaque to the server.
pub type ConfigToken = Arc<dyn std::any::Any + Send + Sync>;

/// Endpoints shared by a class of proxies (see [`Generator::shared_endpoints`]).
pub struct SharedEndpoints<'a> {
    /// The config version they are generated from.
    pub version: u64,
    /// Proxies with the same class and version get the same endpoints.
    pub class: String,
    pub token: Option<ConfigToken>,
    /// Generates them (from that version).
    pub generate: Box<dyn FnOnce() -> Vec<Named> + 'a>,
}

/// A generation split by what a class of proxies shares (see
/// [`Generator::shared_generation`]). The two parts together are the proxy's whole config;
/// a name in both keeps the shared resource.
pub struct SharedGeneration<'a> {
    /// The config version both parts are generated from.
    pub version: u64,
    /// Proxies with the same class and version get the same shared part.
    pub class: String,
    pub token: Option<ConfigToken>,
    pub shared: Box<dyn FnOnce() -> Generated + 'a>,
    pub own: Box<dyn FnOnce() -> Generated + 'a>,
}

/// Changed load assignments (see [`Generator::endpoints_delta`]): proxies with the same
/// class and the same pair of versions get the same ones.
pub struct EndpointsDelta<'a> {
    pub from: u64,
    pub to: u64,
    pub class: String,
    pub token: ConfigToken,
    pub generate: Box<dyn FnOnce() -> EndpointsChange + 'a>,
}

/// What an incremental endpoints update found.
pub enum EndpointsChange {
    /// Load assignments to replace in the proxy's set (none when nothing it sees changed).
    Replace(Vec<Named>),
    /// More than endpoints changed: the proxy's whole new set.
    All(Vec<Named>),
}

/// The production generator: [`translate::generate`] over the store's current snapshot.
#[derive(Debug, Clone)]
pub struct StoreGenerator(pub Arc<Store>);

impl Generator for StoreGenerator {
    fn generate(&self, proxy: &Proxy) -> Generated {
        translate::generate(&self.0.snapshot(), proxy)
    }

    fn generate_with_token(&self, proxy: &Proxy) -> (Generated, Option<ConfigToken>) {
        let snapshot = self.0.snapshot();
        let generated = translate::generate(&snapshot, proxy);
        (generated, Some(snapshot))
    }

    fn generate_endpoints(&self, proxy: &Proxy) -> Vec<Named> {
        translate::endpoints_only::generate_endpoints(&self.0.snapshot(), proxy)
    }

    fn shared_endpoints<'a>(&'a self, proxy: &'a Proxy) -> Option<SharedEndpoints<'a>> {
        let snapshot = self.0.snapshot();
        Some(SharedEndpoints {
            version: snapshot.version(),
            class: translate::endpoints_only::endpoints_class(&snapshot, proxy),
            token: Some(snapshot.clone()),
            generate: Box::new(move || {
                translate::endpoints_only::generate_endpoints(&snapshot, proxy)
            }),
        })
    }

    fn shared_generation<'a>(&'a self, proxy: &'a Proxy) -> Option<SharedGeneration<'a>> {
        let snapshot = self.0.snapshot();
        let class = translate::sharing::generation_class(&snapshot, proxy)?;
        let own = snapshot.clone();
        Some(SharedGeneration {
            version: snapshot.version(),
            class,
            token: Some(snapshot.clone()),
            shared: Box::new(move || translate::generate_shared(&snapshot, proxy)),
            own: Box::new(move || translate::generate_own(&own, proxy)),
        })
    }

    fn endpoints_delta<'a>(
        &'a self,
        proxy: &'a Proxy,
        from: &ConfigToken,
    ) -> Option<EndpointsDelta<'a>> {
        let old = from.clone().downcast::<Snapshot>().ok()?;
        let new = self.0.snapshot();
        Some(EndpointsDelta {
            from: old.version(),
            to: new.version(),
            class: translate::endpoints_only::endpoints_class(&new, proxy),
            token: new.clone(),
            generate: Box::new(move || {
                match translate::endpoints_only::changed_endpoint_hosts(&old, &new) {
                    Some(hosts) if hosts.is_empty() => EndpointsChange::Replace(Vec::new()),
                    Some(hosts) => {
                        EndpointsChange::Replace(translate::endpoints_only::generate_endpoints_for(
                            &new,
                            proxy,
                            Some(&hosts),
                        ))
                    }
                    // Services changed too (a full push follows).
                    None => EndpointsChange::All(translate::endpoints_only::generate_endpoints(
                        &new, proxy,
                    )),
                }
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
