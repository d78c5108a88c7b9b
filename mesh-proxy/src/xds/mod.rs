//! The ADS client: one gRPC stream to the control plane (delta by default,
//! state-of-the-world as an option) carrying CDS, EDS, LDS and RDS.
//!
//! Protocol rules follow Envoy's xDS protocol doc: the node is sent on the first request
//! of a stream; every response is ACKed (delta: the nonce; SotW: the response's version
//! and nonce) or NACKed (`error_detail` naming the resource and field, with the last
//! accepted version in SotW); RDS and EDS subscriptions follow the names the listeners
//! and clusters reference; the initial sequence is CDS, then EDS, then LDS once the
//! clusters are warm, then RDS. On stream failure the client reconnects with jittered
//! exponential backoff while the proxy keeps serving the last good config; a delta
//! reconnect sends `initial_resource_versions` so the server can skip what we have.

pub mod dump;
mod node;
mod session;
pub mod state;

use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

pub use node::NodeInfo;
pub use state::Applier;

use crate::drain;

/// The resource types we consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TypeUrl {
    Cluster,
    ClusterLoadAssignment,
    Listener,
    RouteConfiguration,
}

impl TypeUrl {
    pub const ALL: [TypeUrl; 4] = [
        TypeUrl::Cluster,
        TypeUrl::ClusterLoadAssignment,
        TypeUrl::Listener,
        TypeUrl::RouteConfiguration,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TypeUrl::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            TypeUrl::ClusterLoadAssignment => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            TypeUrl::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            TypeUrl::RouteConfiguration => {
                "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
            }
        }
    }

    pub fn parse(s: &str) -> Option<TypeUrl> {
        TypeUrl::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// CDS and LDS are wildcard subscriptions; RDS and EDS are by name.
    pub fn is_wildcard(self) -> bool {
        matches!(self, TypeUrl::Cluster | TypeUrl::Listener)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    #[error("invalid xds address {address:?}: {message} (hint: use http://host:port)")]
    Address { address: String, message: String },
    #[error("cannot connect to the control plane at {address}: {source}")]
    Connect {
        address: String,
        source: tonic::transport::Error,
    },
    #[error("xds stream failed: {0}")]
    Stream(#[from] tonic::Status),
    #[error("the control plane closed the xds stream")]
    Closed,
}

/// How to reach the control plane and who we are.
#[derive(Debug, Clone)]
pub struct XdsConfig {
    /// `http://host:port` (plaintext gRPC).
    pub address: String,
    pub node: NodeInfo,
    /// State-of-the-world instead of delta.
    pub sotw: bool,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl XdsConfig {
    pub fn new(address: impl Into<String>, node: NodeInfo) -> Self {
        XdsConfig {
            address: address.into(),
            node,
            sotw: false,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(15),
        }
    }
}

/// The ADS client task. Construct with an [`Applier`] wired to the store, the cluster
/// manager and the listener manager, then [`AdsClient::run`] it.
pub struct AdsClient {
    cfg: XdsConfig,
    applier: Applier,
}

impl AdsClient {
    pub fn new(cfg: XdsConfig, applier: Applier) -> Self {
        AdsClient { cfg, applier }
    }

    /// Runs until `shutdown` fires, reconnecting with backoff.
    pub async fn run(mut self, shutdown: drain::Watch) {
        let mut backoff = self.cfg.initial_backoff;
        let stopped = shutdown.signaled();
        tokio::pin!(stopped);
        loop {
            let mut progressed = false;
            let result = tokio::select! {
                r = session::run(&self.cfg, &mut self.applier, &mut progressed) => r,
                _ = &mut stopped => return,
            };
            self.applier.stats().server.control_plane_connected.set(0);
            match result {
                Ok(()) => return,
                Err(e) => {
                    warn!(address = %self.cfg.address, error = %e, "xds stream ended; serving the last good config and reconnecting")
                }
            }
            if progressed {
                backoff = self.cfg.initial_backoff;
            }
            // Full jitter: a fleet of proxies does not reconnect in lockstep.
            let wait = backoff.mul_f64(0.5 + rand::random::<f64>() * 0.5);
            info!(?wait, "reconnecting to the control plane");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = &mut stopped => return,
            }
            backoff = (backoff * 2).min(self.cfg.max_backoff);
        }
    }
}

/// Readiness: latched `true` once the initial CDS/EDS/LDS/RDS config is applied.
pub fn readiness() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(false)
}
