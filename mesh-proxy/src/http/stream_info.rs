//! What happened to one request: timings, addresses, the chosen upstream and the
//! response flags. Filled in as the request moves through the router and read by the
//! header formatters and the access log.

use std::{
    fmt,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

/// Envoy's response flags, as a bit set. The short names and their printing order are
/// Envoy's (`ResponseFlagUtils::CORE_RESPONSE_FLAGS`), so access logs read the same.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseFlags(u32);

macro_rules! response_flags {
    ($($name:ident = $bit:expr, $short:literal;)*) => {
        impl ResponseFlags {
            $(pub const $name: ResponseFlags = ResponseFlags(1 << $bit);)*
            const TABLE: &'static [(ResponseFlags, &'static str)] = &[$((ResponseFlags::$name, $short)),*];
        }
    };
}

response_flags! {
    FAILED_LOCAL_HEALTH_CHECK = 0, "LH";
    NO_HEALTHY_UPSTREAM = 1, "UH";
    UPSTREAM_REQUEST_TIMEOUT = 2, "UT";
    LOCAL_RESET = 3, "LR";
    UPSTREAM_REMOTE_RESET = 4, "UR";
    UPSTREAM_CONNECTION_FAILURE = 5, "UF";
    UPSTREAM_CONNECTION_TERMINATION = 6, "UC";
    UPSTREAM_OVERFLOW = 7, "UO";
    NO_ROUTE_FOUND = 8, "NR";
    DELAY_INJECTED = 9, "DI";
    FAULT_INJECTED = 10, "FI";
    RATE_LIMITED = 11, "RL";
    UNAUTHORIZED_EXTERNAL_SERVICE = 12, "UAEX";
    RATE_LIMIT_SERVICE_ERROR = 13, "RLSE";
    DOWNSTREAM_CONNECTION_TERMINATION = 14, "DC";
    UPSTREAM_RETRY_LIMIT_EXCEEDED = 15, "URX";
    STREAM_IDLE_TIMEOUT = 16, "SI";
    INVALID_ENVOY_REQUEST_HEADERS = 17, "IH";
    DOWNSTREAM_PROTOCOL_ERROR = 18, "DPE";
    UPSTREAM_MAX_STREAM_DURATION_REACHED = 19, "UMSDR";
    NO_FILTER_CONFIG_FOUND = 20, "NFCF";
    DURATION_TIMEOUT = 21, "DT";
    UPSTREAM_PROTOCOL_ERROR = 22, "UPE";
    NO_CLUSTER_FOUND = 23, "NC";
    DOWNSTREAM_REMOTE_RESET = 24, "DR";
}

impl ResponseFlags {
    pub const NONE: ResponseFlags = ResponseFlags(0);

    pub fn insert(&mut self, other: ResponseFlags) {
        self.0 |= other.0;
    }

    pub fn contains(self, other: ResponseFlags) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Writes the flags as Envoy does: comma separated short names, `-` when none.
    pub fn write_to(self, out: &mut String) {
        if self.is_empty() {
            out.push('-');
            return;
        }
        let mut first = true;
        for (flag, short) in Self::TABLE {
            if self.contains(*flag) {
                if !first {
                    out.push(',');
                }
                out.push_str(short);
                first = false;
            }
        }
    }
}

impl fmt::Display for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        self.write_to(&mut s);
        f.write_str(&s)
    }
}

impl fmt::Debug for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Per-request facts, as Envoy's `StreamInfo`.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    pub start_time: SystemTime,
    pub start: Instant,
    /// The client address after `x-forwarded-for` processing (Envoy's "remote address").
    pub downstream_remote: SocketAddr,
    /// The peer of the TCP connection.
    pub downstream_direct_remote: SocketAddr,
    /// The local address of the downstream connection (original destination when captured).
    pub downstream_local: SocketAddr,
    pub requested_server_name: Option<Arc<str>>,
    pub protocol: Option<http::Version>,
    pub route_name: Option<Arc<str>>,
    pub upstream_cluster: Option<Arc<str>>,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_local: Option<SocketAddr>,
    pub response_code: Option<u16>,
    pub response_flags: ResponseFlags,
    pub response_code_details: &'static str,
    pub upstream_transport_failure_reason: Option<String>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration: Option<Duration>,
    pub attempt_count: u32,
}

impl StreamInfo {
    pub fn new(downstream_remote: SocketAddr, downstream_local: SocketAddr) -> Self {
        StreamInfo {
            start_time: SystemTime::now(),
            start: Instant::now(),
            downstream_remote,
            downstream_direct_remote: downstream_remote,
            downstream_local,
            requested_server_name: None,
            protocol: None,
            route_name: None,
            upstream_cluster: None,
            upstream_host: None,
            upstream_local: None,
            response_code: None,
            response_flags: ResponseFlags::NONE,
            response_code_details: "",
            upstream_transport_failure_reason: None,
            bytes_received: 0,
            bytes_sent: 0,
            duration: None,
            attempt_count: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_print_in_envoy_order() {
        let mut f = ResponseFlags::NONE;
        assert_eq!(f.to_string(), "-");
        f.insert(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
        f.insert(ResponseFlags::NO_HEALTHY_UPSTREAM);
        assert_eq!(f.to_string(), "UH,URX");
        assert!(f.contains(ResponseFlags::NO_HEALTHY_UPSTREAM));
        assert!(!f.contains(ResponseFlags::NO_ROUTE_FOUND));
    }
}
