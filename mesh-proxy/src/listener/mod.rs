//! Listeners: one accept loop per Listener, original destination (`SO_ORIGINAL_DST`),
//! listener filters (TLS/HTTP sniffing), `use_original_dst` hand-off, filter-chain
//! match, and the hand-over to `tcp` or `http`. Listener updates keep existing
//! connections; removed listeners drain theirs.

pub mod filter_chain;
mod io;
pub mod manager;
pub mod original_dst;
pub mod sniff;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Instant, SystemTime},
};

pub use io::Io;
pub use manager::Manager;

/// The transport protocol as Envoy names it for filter-chain matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportProtocol {
    #[default]
    RawBuffer,
    Tls,
}

impl TransportProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            TransportProtocol::RawBuffer => "raw_buffer",
            TransportProtocol::Tls => "tls",
        }
    }
}

/// What the listener learned about a downstream connection, handed to the network
/// filters with the [`Io`].
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Process-unique connection id (Envoy's `%CONNECTION_ID%`).
    pub id: u64,
    /// The listener that owns the connection (after `use_original_dst` hand-off).
    pub listener: Arc<str>,
    /// The selected filter chain's name.
    pub filter_chain: Arc<str>,
    /// The socket's local address (for captured traffic, the capture port).
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// `SO_ORIGINAL_DST` when it differs from `local` (iptables REDIRECT).
    pub original_dst: Option<SocketAddr>,
    /// Lowercased SNI when a ClientHello was seen.
    pub server_name: Option<Arc<str>>,
    /// ALPN from the ClientHello, or `http/1.1` / `h2c` / `http/1.0` from http_inspector.
    pub application_protocols: Vec<String>,
    pub transport_protocol: TransportProtocol,
    /// The peer's SPIFFE identity once mTLS terminates here (not yet).
    pub peer_identity: Option<Arc<str>>,
    pub start: Instant,
    pub start_time: SystemTime,
}

impl ConnInfo {
    /// The destination the client meant: the original destination, else the local address.
    pub fn destination(&self) -> SocketAddr {
        self.original_dst.unwrap_or(self.local)
    }

    /// A `ConnInfo` for tests and for code that builds connections by hand.
    pub fn new(listener: &str, local: SocketAddr, peer: SocketAddr) -> Self {
        ConnInfo {
            id: next_connection_id(),
            listener: listener.into(),
            filter_chain: "".into(),
            local,
            peer,
            original_dst: None,
            server_name: None,
            application_protocols: Vec::new(),
            transport_protocol: TransportProtocol::RawBuffer,
            peer_identity: None,
            start: Instant::now(),
            start_time: SystemTime::now(),
        }
    }
}

/// A process-wide connection counter, as Envoy's connection ids.
pub fn next_connection_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
