//! Host name rules: wildcard matching (Istio's `host.Name.Matches`) and the alternative
//! names a Kubernetes service is reachable by from a proxy (`reviews`, `reviews.default`,
//! `reviews.default.svc`, ...).

/// Whether `pattern` (`*`, `*.example.com` or exact) covers `host` (which may itself be a
/// wildcard: `*.example.com` covers `*.a.example.com`).
pub fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix) && host.len() > suffix.len(),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// Whether two host patterns can match a common name (either covers the other).
pub fn hosts_intersect(a: &str, b: &str) -> bool {
    host_matches(a, b) || host_matches(b, a)
}

/// The alternative names of `hostname` for a proxy whose DNS domain is `proxy_domain`
/// (`<ns>.svc.cluster.local`), without port. A service in the proxy's namespace is also
/// reachable by its short name; any Kubernetes service by `name.ns` and `name.ns.svc`.
/// Hosts outside the proxy's cluster domain get none (expanding them could collide).
pub fn alt_hosts(hostname: &str, proxy_domain: &str) -> Vec<String> {
    let Some(pd) = proxy_domain.find(".svc.") else {
        return Vec::new();
    };
    let cluster_suffix = &proxy_domain[pd..]; // .svc.cluster.local
    if !hostname.ends_with(cluster_suffix) {
        return Vec::new();
    }
    let Some(ih) = hostname.find(".svc.") else {
        return Vec::new();
    };
    let Some(ns_dot) = hostname.find('.') else {
        return Vec::new();
    };
    if ns_dot + 1 > ih {
        return Vec::new();
    }
    let name = &hostname[..ns_dot];
    let name_ns = &hostname[..ih];
    if hostname[ns_dot + 1..ih] == proxy_domain[..pd] {
        vec![
            name.to_string(),
            format!("{name_ns}.svc"),
            name_ns.to_string(),
        ]
    } else {
        vec![name_ns.to_string(), format!("{name_ns}.svc")]
    }
}

/// `host:port`, with IPv6 addresses bracketed.
pub fn with_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wildcards() {
        assert!(host_matches("*", "reviews.default.svc.cluster.local"));
        assert!(host_matches("*.example.com", "api.example.com"));
        assert!(host_matches("*.example.com", "*.api.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("api.example.com", "*.example.com"));
        assert!(hosts_intersect("api.example.com", "*.example.com"));
        assert!(host_matches(
            "Reviews.default.svc.cluster.local",
            "reviews.default.svc.cluster.local"
        ));
    }

    #[test]
    fn alternative_names_like_istio() {
        let same = alt_hosts(
            "reviews.default.svc.cluster.local",
            "default.svc.cluster.local",
        );
        assert_eq!(same, ["reviews", "reviews.default.svc", "reviews.default"]);
        let other = alt_hosts(
            "reviews.default.svc.cluster.local",
            "shop.svc.cluster.local",
        );
        assert_eq!(other, ["reviews.default", "reviews.default.svc"]);
        assert!(alt_hosts("api.example.com", "default.svc.cluster.local").is_empty());
        assert!(
            alt_hosts(
                "reviews.default.svc.other.local",
                "default.svc.cluster.local"
            )
            .is_empty()
        );
        assert_eq!(with_port("fd00::1", 80), "[fd00::1]:80");
    }

    proptest! {
        #[test]
        fn star_matches_everything_and_exact_matches_itself(h in "[a-z]{1,8}(\\.[a-z]{1,8}){0,3}") {
            prop_assert!(host_matches("*", &h));
            prop_assert!(host_matches(&h, &h));
            let wildcard = format!("*.{h}");
            let sub = format!("x.{h}");
            prop_assert!(host_matches(&wildcard, &sub));
            prop_assert!(!host_matches(&wildcard, &h));
        }
    }
}
