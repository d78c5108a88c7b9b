//! What the connection manager does to every request before routing, as Envoy's
//! `ConnectionManagerUtility::mutateRequestHeaders`: hop-by-hop headers,
//! `x-forwarded-for` / `x-forwarded-proto`, trust of `x-envoy-*` headers (edge vs
//! internal), `x-request-id`, `x-forwarded-client-cert`, `via`; and the helpers for
//! response hop-by-hop headers.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderName, HeaderValue, header};
use rand::RngCore;

use crate::config::http::{ForwardClientCert, HttpConnectionManager};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");
pub static X_ENVOY_EXTERNAL_ADDRESS: HeaderName =
    HeaderName::from_static("x-envoy-external-address");
pub static X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
pub static X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
pub static X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-timeout-ms");
pub static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");
pub static X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
pub static X_ENVOY_MAX_RETRIES: HeaderName = HeaderName::from_static("x-envoy-max-retries");
pub static X_ENVOY_RETRY_ON: HeaderName = HeaderName::from_static("x-envoy-retry-on");
pub static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// `x-envoy-*` request headers Envoy removes from edge (external) requests.
const ENVOY_INTERNAL_REQUEST_HEADERS: &[&str] = &[
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-external-address",
    "x-envoy-force-trace",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-internal",
    "x-envoy-ip-tags",
    "x-envoy-max-retries",
    "x-envoy-original-path",
    "x-envoy-retriable-header-names",
    "x-envoy-retriable-status-codes",
    "x-envoy-retry-grpc-on",
    "x-envoy-retry-on",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-stream-duration-ms",
];

/// What the request-header pass decided.
#[derive(Debug, Clone, Copy)]
pub struct Mutated {
    /// The client address (Envoy's "remote address"), after `x-forwarded-for` trust.
    pub remote: SocketAddr,
    /// An external request: `x-envoy-*` headers from it are not trusted.
    pub edge: bool,
    /// The upgrade the client asked for, if the connection headers allow it.
    pub upgrade: bool,
}

/// Envoy's default internal addresses: RFC 1918, loopback (and unique-local v6).
pub fn is_internal(ip: IpAddr, hcm: &HttpConnectionManager) -> bool {
    if let Some(cidrs) = &hcm.internal_cidrs {
        return cidrs.iter().any(|n| n.contains(&ip));
    }
    match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// Removes hop-by-hop headers (and those named by `Connection`), keeping the upgrade
/// pair when `keep_upgrade`; `te: trailers` is kept as Envoy does (gRPC needs it).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of these: one pass over the names instead of a lookup
    // (hash and probe) per name.
    let any = headers.keys().any(|k| {
        k == header::CONNECTION
            || k == header::UPGRADE
            || k == header::TRANSFER_ENCODING
            || k == header::TE
            || k == KEEP_ALIVE
            || k == PROXY_CONNECTION
    });
    if !any {
        if keep_upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !(t.is_empty() || keep_upgrade && t.eq_ignore_ascii_case("upgrade")))
        .filter_map(|t| HeaderName::from_bytes(t.to_ascii_lowercase().as_bytes()).ok())
        // Never strip end-to-end headers the client tried to list.
        .filter(|n| n != header::TE && n != header::HOST)
        .collect();
    for n in listed {
        headers.remove(n);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
    if let Some(te) = headers.get(header::TE) {
        let trailers = te.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(header::TE);
        }
    }
}

/// Whether any header is an `x-envoy-*` one. Most requests carry none: one pass over
/// the names lets the router skip a lookup (hash and probe) per header it consumes.
pub fn has_envoy_headers(headers: &HeaderMap) -> bool {
    headers.keys().any(|k| k.as_str().starts_with("x-envoy-"))
}

/// Whether the request asks for an upgrade (HTTP/1.1 `Connection: upgrade` + `Upgrade`).
pub fn upgrade_type(headers: &HeaderMap) -> Option<&str> {
    let conn_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    if !conn_upgrade {
        return None;
    }
    headers.get(header::UPGRADE).and_then(|v| v.to_str().ok())
}

/// Applies the connection manager's request header rules. `tls`: the downstream
/// connection is TLS (for `x-forwarded-proto`).
pub fn mutate_request_headers(
    headers: &mut HeaderMap,
    hcm: &HttpConnectionManager,
    peer: SocketAddr,
    tls: bool,
    keep_upgrade: bool,
) -> Mutated {
    strip_hop_by_hop(headers, keep_upgrade);
    let proto = if tls { "https" } else { "http" };
    let mut remote = peer;
    let edge;
    if hcm.use_remote_address {
        if !hcm.skip_xff_append {
            append_xff(headers, peer.ip());
        }
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        // Internal when the peer is internal and it is the only hop.
        let only_hop = headers.get_all(&X_FORWARDED_FOR).iter().count() == 1
            && headers
                .get(&X_FORWARDED_FOR)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| !v.contains(','));
        let internal = is_internal(peer.ip(), hcm) && only_hop;
        edge = !internal;
    } else {
        if let Some(ip) = xff_client(headers, hcm.xff_num_trusted_hops) {
            remote = SocketAddr::new(ip, 0);
        }
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        }
        edge = false;
    }
    if edge {
        for h in ENVOY_INTERNAL_REQUEST_HEADERS {
            headers.remove(*h);
        }
        if let Ok(v) = HeaderValue::from_str(&remote.ip().to_string()) {
            headers.insert(&X_ENVOY_EXTERNAL_ADDRESS, v);
        }
    } else if hcm.use_remote_address {
        headers.insert(&X_ENVOY_INTERNAL, HeaderValue::from_static("true"));
    }
    if hcm.generate_request_id {
        let regenerate = edge && !hcm.preserve_external_request_id;
        if regenerate || headers.get(&X_REQUEST_ID).is_none_or(|v| v.is_empty()) {
            headers.insert(&X_REQUEST_ID, new_request_id());
        }
    }
    // No TLS peer certificate on this connection (mTLS arrives later): Envoy removes
    // XFCC unless told to always forward it.
    if hcm.forward_client_cert != ForwardClientCert::AlwaysForwardOnly {
        headers.remove(&X_FORWARDED_CLIENT_CERT);
    }
    if let Some(via) = &hcm.via {
        headers.append(header::VIA, via.clone());
    }
    Mutated {
        remote,
        edge,
        upgrade: keep_upgrade,
    }
}

fn append_xff(headers: &mut HeaderMap, ip: IpAddr) {
    let ip = ip.to_string();
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.is_empty() => format!("{existing},{ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(&X_FORWARDED_FOR, v);
    }
}

/// The client address from `x-forwarded-for`, skipping `trusted_hops` from the right
/// (Envoy's behaviour with `use_remote_address: false`).
pub fn xff_client(headers: &HeaderMap, trusted_hops: u32) -> Option<IpAddr> {
    let joined: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let idx = joined.len().checked_sub(1 + trusted_hops as usize)?;
    joined[idx].parse().ok()
}

/// A random (version 4) UUID, as Envoy's request id.
pub fn new_request_id() -> HeaderValue {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 36];
    let mut j = 0;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[j] = b'-';
            j += 1;
        }
        out[j] = HEX[(byte >> 4) as usize];
        out[j + 1] = HEX[(byte & 0xf) as usize];
        j += 2;
    }
    // 36 ASCII hex digits and dashes: always a valid header value.
    HeaderValue::from_bytes(&out)
        .unwrap_or_else(|_| HeaderValue::from_static("00000000-0000-4000-8000-000000000000"))
}

/// Response hop-by-hop headers (kept: the upgrade pair on a 101).
pub fn strip_response_hop_by_hop(headers: &mut HeaderMap, switching: bool) {
    strip_hop_by_hop(headers, switching);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hcm() -> HttpConnectionManager {
        use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as h;
        let p = h::HttpConnectionManager {
            http_filters: vec![h::HttpFilter {
                name: "envoy.filters.http.router".into(),
                ..Default::default()
            }],
            route_specifier: Some(h::http_connection_manager::RouteSpecifier::Rds(h::Rds {
                route_config_name: "r".into(),
                config_source: None,
            })),
            ..Default::default()
        };
        HttpConnectionManager::try_from(&p).expect("valid")
    }

    #[test]
    fn hop_by_hop_is_removed_but_te_trailers_kept() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            "keep-alive, x-secret".parse().expect("v"),
        );
        h.insert("x-secret", "1".parse().expect("v"));
        h.insert("keep-alive", "timeout=5".parse().expect("v"));
        h.insert(header::TE, "trailers, deflate".parse().expect("v"));
        h.insert(header::UPGRADE, "websocket".parse().expect("v"));
        strip_hop_by_hop(&mut h, false);
        assert!(
            !h.contains_key("x-secret")
                && !h.contains_key("keep-alive")
                && !h.contains_key(header::UPGRADE)
        );
        assert_eq!(h[header::TE], "trailers");
    }

    #[test]
    fn sidecar_defaults_keep_envoy_headers_and_set_request_id() {
        let hcm = hcm();
        let mut h = HeaderMap::new();
        h.insert("x-envoy-retry-on", "5xx".parse().expect("v"));
        h.insert("x-forwarded-for", "1.2.3.4".parse().expect("v"));
        let m = mutate_request_headers(
            &mut h,
            &hcm,
            "10.0.0.1:1234".parse().expect("a"),
            false,
            false,
        );
        assert!(!m.edge);
        assert_eq!(m.remote.ip().to_string(), "1.2.3.4");
        assert_eq!(
            h["x-forwarded-for"], "1.2.3.4",
            "not appended without use_remote_address"
        );
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(h.contains_key("x-envoy-retry-on"));
        assert_eq!(h["x-request-id"].len(), 36);
    }

    #[test]
    fn edge_requests_are_sanitized() {
        let mut hcm = hcm();
        hcm.use_remote_address = true;
        let mut h = HeaderMap::new();
        h.insert("x-envoy-retry-on", "5xx".parse().expect("v"));
        h.insert("x-request-id", "abc".parse().expect("v"));
        h.insert("x-forwarded-proto", "https".parse().expect("v"));
        let m = mutate_request_headers(
            &mut h,
            &hcm,
            "8.8.8.8:1234".parse().expect("a"),
            false,
            false,
        );
        assert!(m.edge);
        assert!(!h.contains_key("x-envoy-retry-on"));
        assert_eq!(h["x-forwarded-for"], "8.8.8.8");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-envoy-external-address"], "8.8.8.8");
        assert_ne!(h["x-request-id"], "abc");
        let mut h = HeaderMap::new();
        let m = mutate_request_headers(
            &mut h,
            &hcm,
            "127.0.0.1:1234".parse().expect("a"),
            false,
            false,
        );
        assert!(!m.edge);
        assert_eq!(h["x-envoy-internal"], "true");
    }

    #[test]
    fn xff_trusted_hops() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "1.1.1.1, 2.2.2.2,3.3.3.3".parse().expect("v"),
        );
        assert_eq!(xff_client(&h, 0), Some("3.3.3.3".parse().expect("ip")));
        assert_eq!(xff_client(&h, 2), Some("1.1.1.1".parse().expect("ip")));
        assert_eq!(xff_client(&h, 3), None);
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = new_request_id();
        let s = id.to_str().expect("ascii");
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert_ne!(new_request_id(), id);
    }
}
