//! Redirect `Location` computation, as Envoy's `Http::Utility::newUri`: scheme, host,
//! port and path rewrites, `strip_query`, and Envoy's default-port stripping.

use crate::config::route_action::{PathRedirect, Redirect};

/// The request facts a redirect reads.
pub struct RedirectInput<'a> {
    /// `x-forwarded-proto` (set by the connection manager) or the connection's scheme.
    pub scheme: &'a str,
    pub host: &'a str,
    /// Path and query as received.
    pub path_and_query: &'a str,
    /// Length of the path prefix the route matched (for `prefix_rewrite`).
    pub matched_len: usize,
}

pub fn location(r: &Redirect, req: &RedirectInput<'_>) -> String {
    let scheme = r.scheme.as_deref().unwrap_or(req.scheme);
    let port = r.port.map(|p| format!(":{p}")).unwrap_or_default();
    let host = match &r.host {
        Some(h) => h.as_str(),
        None => request_host(req.host, req.scheme, scheme, !port.is_empty()),
    };
    let (cur_path, cur_query) = match req.path_and_query.find('?') {
        Some(i) => (&req.path_and_query[..i], &req.path_and_query[i..]),
        None => (req.path_and_query, ""),
    };
    let mut path = match &r.path {
        Some(PathRedirect::Path {
            path,
            has_query: true,
        }) => path.clone(),
        Some(PathRedirect::Path {
            path,
            has_query: false,
        }) => format!("{path}{cur_query}"),
        Some(PathRedirect::Prefix(p)) => {
            let rest = cur_path.get(req.matched_len..).unwrap_or("");
            format!("{p}{rest}{cur_query}")
        }
        Some(PathRedirect::Regex(rx)) => format!("{}{cur_query}", rx.apply(cur_path)),
        None => req.path_and_query.to_string(),
    };
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    let path_has_own_query = matches!(
        &r.path,
        Some(PathRedirect::Path {
            has_query: true,
            ..
        })
    );
    if r.strip_query
        && !path_has_own_query
        && let Some(i) = path.find('?')
    {
        path.truncate(i);
    }
    format!("{scheme}://{host}{port}{path}")
}

/// Envoy's `processRequestHost`: drops the request's port when a new port is set, or
/// when the scheme changes and the port was the old scheme's default.
fn request_host<'a>(
    host: &'a str,
    request_scheme: &str,
    new_scheme: &str,
    new_port: bool,
) -> &'a str {
    if host.is_empty() {
        return host;
    }
    let port_at = if host.starts_with('[') {
        host.rfind("]:").map(|i| i + 1)
    } else {
        host.rfind(':')
    };
    let Some(i) = port_at else { return host };
    let port = &host[i..];
    let mut remove = new_port;
    if new_scheme != request_scheme {
        remove |= request_scheme == "https" && port == ":443";
        remove |= request_scheme == "http" && port == ":80";
    }
    if remove { &host[..i] } else { host }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn redirect() -> Redirect {
        Redirect {
            scheme: None,
            host: None,
            port: None,
            path: None,
            response_code: StatusCode::MOVED_PERMANENTLY,
            strip_query: false,
        }
    }

    fn input<'a>(host: &'a str, pq: &'a str) -> RedirectInput<'a> {
        RedirectInput {
            scheme: "http",
            host,
            path_and_query: pq,
            matched_len: 0,
        }
    }

    #[test]
    fn https_redirect_strips_default_port() {
        let r = Redirect {
            scheme: Some("https".into()),
            ..redirect()
        };
        assert_eq!(
            location(&r, &input("foo.com:80", "/a?b=c")),
            "https://foo.com/a?b=c"
        );
        assert_eq!(
            location(&r, &input("foo.com:8080", "/a")),
            "https://foo.com:8080/a"
        );
    }

    #[test]
    fn host_port_path_and_query() {
        let r = Redirect {
            host: Some("new.com".into()),
            port: Some(8443),
            path: Some(PathRedirect::Path {
                path: "/new".into(),
                has_query: false,
            }),
            strip_query: true,
            ..redirect()
        };
        assert_eq!(
            location(&r, &input("old.com", "/old?x=1")),
            "http://new.com:8443/new"
        );
        let r = Redirect {
            port: Some(9000),
            ..redirect()
        };
        assert_eq!(
            location(&r, &input("old.com:80", "/p")),
            "http://old.com:9000/p"
        );
        let r = Redirect {
            path: Some(PathRedirect::Path {
                path: "/q?z=1".into(),
                has_query: true,
            }),
            strip_query: true,
            ..redirect()
        };
        assert_eq!(location(&r, &input("h", "/p?x=1")), "http://h/q?z=1");
    }

    #[test]
    fn prefix_rewrite() {
        let r = Redirect {
            path: Some(PathRedirect::Prefix("/v2".into())),
            ..redirect()
        };
        let i = RedirectInput {
            scheme: "http",
            host: "h",
            path_and_query: "/v1/users?id=3",
            matched_len: 3,
        };
        assert_eq!(location(&r, &i), "http://h/v2/users?id=3");
    }
}
