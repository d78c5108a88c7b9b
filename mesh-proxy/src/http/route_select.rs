//! Route selection for one request, as Envoy's `RouteMatcher`: virtual host by host
//! (exact, `*.suffix`, `prefix*`, `*`), then the first route whose path, headers, query
//! parameters, runtime fraction and gRPC matchers all match.

use std::{borrow::Cow, sync::Arc};

use http::{HeaderMap, Method, Uri};

use crate::config::{
    route::{Route, RouteConfiguration, RouteMatch, VirtualHost},
    route_match::{HeaderMatcher, Pseudo, strip_port},
};

/// The request facts route matching reads.
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    /// `:authority` (or `Host`), as sent.
    pub authority: &'a str,
    pub scheme: &'a str,
    /// A per-request random value (runtime fractions).
    pub random: u64,
}

/// The selected route and how much of the path its prefix matched.
pub struct Selected<'a> {
    pub vhost: &'a Arc<VirtualHost>,
    pub route: &'a Route,
    pub matched_len: usize,
}

/// Finds the virtual host for the request's host.
pub fn find_vhost<'a>(
    rc: &'a RouteConfiguration,
    req: &RequestView<'_>,
) -> Option<&'a Arc<VirtualHost>> {
    let host: &str = match &rc.vhost_header {
        Some(h) => req
            .headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
        None => req.authority,
    };
    let host = if rc.ignore_port_in_host_matching {
        strip_port(host)
    } else {
        host
    };
    let host: Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    };
    rc.find_virtual_host(&host)
}

/// Selects the route for a request, or `None` (404 `NR`).
pub fn select<'a>(rc: &'a RouteConfiguration, req: &RequestView<'_>) -> Option<Selected<'a>> {
    let vhost = find_vhost(rc, req)?;
    let mut path = req.uri.path();
    if rc.ignore_path_parameters_in_path_matching
        && let Some(i) = path.find(';')
    {
        path = &path[..i];
    }
    for route in &vhost.routes {
        if let Some(matched_len) = route_matches(&route.matcher, path, req) {
            return Some(Selected {
                vhost,
                route,
                matched_len,
            });
        }
    }
    None
}

fn route_matches(m: &RouteMatch, path: &str, req: &RequestView<'_>) -> Option<usize> {
    let len = m.path.match_len(path, m.case_sensitive)?;
    if m.grpc && !is_grpc(req.headers) {
        return None;
    }
    if !m.headers.iter().all(|h| header_matches(h, req)) {
        return None;
    }
    if !m.query_parameters.is_empty() {
        let q = req.uri.query();
        if !m.query_parameters.iter().all(|qm| qm.matches(q)) {
            return None;
        }
    }
    if let Some(f) = &m.runtime_fraction
        && !f.enabled(req.random)
    {
        return None;
    }
    Some(len)
}

/// Whether a header matcher (pseudo headers included) matches a request.
pub fn header_matches(h: &HeaderMatcher, req: &RequestView<'_>) -> bool {
    match h.pseudo {
        None => h.matches(req.headers),
        Some(p) => {
            let v = match p {
                Pseudo::Method => req.method.as_str(),
                Pseudo::Path => req.uri.path_and_query().map_or("/", |pq| pq.as_str()),
                Pseudo::Authority => req.authority,
                Pseudo::Scheme => req.scheme,
            };
            h.matches_value(Some(v))
        }
    }
}

/// `content-type: application/grpc*`.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}
