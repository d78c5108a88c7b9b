//! The timeouts of one request, computed as Envoy's router (`FilterUtility::finalTimeout`,
//! `setTimeoutHeaders`) and connection manager (`refreshDurationTimeout`) do.
//!
//! - The route (global) timeout: the route's `timeout` (default 15 s, 0 disables), or for
//!   gRPC requests with the deprecated `max_grpc_timeout` the `grpc-timeout` header
//!   capped by it. A route that sets `max_stream_duration` uses Envoy's "new timeouts":
//!   then the route `timeout` is not used at all. `x-envoy-upstream-rq-timeout-ms` (and
//!   with `respect_expected_rq_timeout`, `x-envoy-expected-rq-timeout-ms`) override it on
//!   requests the connection manager trusts (edge requests had them removed).
//! - The per-try timeout (`retry_policy.per_try_timeout`, or
//!   `x-envoy-upstream-rq-per-try-timeout-ms`), dropped when not below the global one.
//! - The stream's maximum duration (connection-manager level): the route's
//!   `max_stream_duration`, or for gRPC requests the `grpc-timeout` header capped by
//!   `grpc_timeout_header_max` (0: uncapped) minus `grpc_timeout_header_offset`; else
//!   the HCM's `common_http_protocol_options.max_stream_duration`.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::request_headers::{X_ENVOY_EXPECTED_RQ_TIMEOUT_MS, X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS};
use crate::config::route_action::{MaxStreamDuration, RouteAction};

pub static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
pub static X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms");

/// The router's timeouts for one request (`None` = no timeout).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub global: Option<Duration>,
    pub per_try: Option<Duration>,
    pub per_try_idle: Option<Duration>,
}

/// `grpc-timeout` (`<digits><unit>`, at most 8 digits) as a duration.
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let v = v.trim();
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (n, unit) = v.split_at(v.len() - 1);
    if !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        // Envoy works in whole milliseconds.
        "u" => Duration::from_millis(n / 1000),
        "n" => Duration::from_millis(n / 1_000_000),
        _ => return None,
    })
}

/// Envoy's `toGrpcTimeout`: milliseconds, moving to a larger unit past 8 digits.
pub fn format_grpc_timeout(d: Duration) -> HeaderValue {
    const MAX: u64 = 99_999_999;
    let mut v = d.as_millis().min(u128::from(u64::MAX)) as u64;
    let mut unit = "m";
    for (next, div) in [("S", 1000), ("M", 60), ("H", 60)] {
        if v <= MAX {
            break;
        }
        v = v.div_ceil(div);
        unit = next;
    }
    HeaderValue::from_str(&format!("{}{unit}", v.min(MAX)))
        .unwrap_or(HeaderValue::from_static("0m"))
}

fn header_ms(headers: &HeaderMap, name: &HeaderName) -> Option<Option<Duration>> {
    let v = headers.get(name)?;
    Some(
        v.to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Duration::from_millis),
    )
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// Envoy's `finalTimeout`: reads (and removes) the timeout headers.
pub fn final_timeout(
    action: &RouteAction,
    per_try: Option<Duration>,
    per_try_idle: Option<Duration>,
    headers: &mut HeaderMap,
    grpc: bool,
    respect_expected_rq_timeout: bool,
) -> Timeouts {
    let mut t = Timeouts {
        global: None,
        per_try,
        per_try_idle,
    };
    if action.max_stream_duration.is_none() {
        t.global = match action.max_grpc_timeout {
            Some(max) if grpc => {
                let mut g = headers
                    .get(&GRPC_TIMEOUT)
                    .and_then(|v| parse_grpc_timeout(v.to_str().ok()?))
                    .unwrap_or_default();
                if let Some(off) = action.grpc_timeout_offset
                    && off < g
                {
                    g -= off;
                }
                // A zero maximum means unlimited; a zero timeout means none was given.
                if !max.is_zero() && (g.is_zero() || g > max) {
                    g = max;
                }
                nonzero(g)
            }
            _ => action.timeout,
        };
    }
    if super::request_headers::has_envoy_headers(headers) {
        let set_global = |v: Option<Duration>, t: &mut Timeouts| t.global = v.and_then(nonzero);
        if respect_expected_rq_timeout
            && let Some(v) = header_ms(headers, &X_ENVOY_EXPECTED_RQ_TIMEOUT_MS)
        {
            if v.is_some() {
                set_global(v, &mut t);
            }
        } else if let Some(v) = header_ms(headers, &X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS) {
            if v.is_some() {
                set_global(v, &mut t);
            }
            headers.remove(&X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS);
        }
        if let Some(v) = header_ms(headers, &X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS) {
            if let Some(v) = v {
                t.per_try = nonzero(v);
            }
            headers.remove(&X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS);
        }
    }
    if let (Some(p), Some(g)) = (t.per_try, t.global)
        && p >= g
    {
        t.per_try = None;
    }
    t
}

/// Envoy's `setTimeoutHeaders`, for an attempt starting `elapsed` after the global
/// timer started: `x-envoy-expected-rq-timeout-ms` (unless suppressed) and, with
/// `max_grpc_timeout`, `grpc-timeout`.
pub fn set_timeout_headers(
    t: &Timeouts,
    elapsed: Duration,
    action: &RouteAction,
    headers: &mut HeaderMap,
    insert_expected: bool,
    grpc: bool,
) {
    let Some(mut expected) = t.per_try.or(t.global) else {
        return;
    };
    if let Some(g) = t.global {
        expected = if elapsed >= g {
            // Out of time, but 0 would mean no timeout: Envoy sends 1 ms.
            Duration::from_millis(1)
        } else {
            expected.min(g - elapsed)
        };
    }
    let ms = expected.as_millis().min(u128::from(u64::MAX)) as u64;
    if insert_expected {
        headers.insert(&X_ENVOY_EXPECTED_RQ_TIMEOUT_MS, HeaderValue::from(ms));
    }
    if grpc && action.max_stream_duration.is_none() && action.max_grpc_timeout.is_some() {
        headers.insert(
            &GRPC_TIMEOUT,
            format_grpc_timeout(Duration::from_millis(ms)),
        );
    }
}

/// The stream's maximum duration (Envoy's `refreshDurationTimeout`), measured from the
/// stream's start. Rewrites `grpc-timeout` for gRPC requests on routes with
/// `max_stream_duration`, as Envoy does.
pub fn stream_duration(
    msd: Option<&MaxStreamDuration>,
    hcm_max: Option<Duration>,
    headers: &mut HeaderMap,
    grpc: bool,
) -> Option<Duration> {
    let grpc_timeout = headers
        .get(&GRPC_TIMEOUT)
        .and_then(|v| parse_grpc_timeout(v.to_str().ok()?));
    let header_max = msd.and_then(|m| m.grpc_timeout_header_max);
    let timeout = match (grpc_timeout, header_max) {
        (Some(mut t), Some(max)) => {
            if !max.is_zero() && t > max {
                t = max;
            }
            if !t.is_zero()
                && let Some(off) = msd.and_then(|m| m.grpc_timeout_header_offset)
            {
                t = t.saturating_sub(off);
            }
            Some(t)
        }
        _ => match msd.and_then(|m| m.max_stream_duration) {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
            None => hcm_max.and_then(nonzero),
        },
    };
    match timeout {
        None => {
            if msd.is_some() && grpc {
                headers.remove(&GRPC_TIMEOUT);
            }
            None
        }
        Some(t) => {
            if msd.is_some() && grpc {
                headers.insert(&GRPC_TIMEOUT, format_grpc_timeout(t));
            }
            Some(t)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::route_action::ClusterSpecifier;
    use std::sync::Arc;

    fn action() -> RouteAction {
        RouteAction {
            cluster: ClusterSpecifier::Cluster(Arc::from("c")),
            cluster_not_found_response_code: http::StatusCode::SERVICE_UNAVAILABLE,
            prefix_rewrite: None,
            regex_rewrite: None,
            host_rewrite: None,
            append_x_forwarded_host: false,
            timeout: Some(Duration::from_secs(15)),
            idle_timeout: None,
            retry_policy: None,
            request_mirror_policies: Vec::new(),
            hash_policy: Vec::new(),
            upgrade_configs: Vec::new(),
            max_stream_duration: None,
            max_grpc_timeout: None,
            grpc_timeout_offset: None,
            cors: None,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn grpc_timeout_parse_and_format() {
        assert_eq!(parse_grpc_timeout("100m"), Some(MS(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(MS(2000)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("1500u"), Some(MS(1)));
        assert_eq!(parse_grpc_timeout("123456789m"), None, "more than 8 digits");
        assert_eq!(parse_grpc_timeout("-1S"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(format_grpc_timeout(MS(250)), "250m");
        assert_eq!(format_grpc_timeout(Duration::from_secs(200_000)), "200000S");
    }

    #[test]
    fn route_timeout_and_headers() {
        let a = action();
        let mut h = headers(&[]);
        let t = final_timeout(&a, None, None, &mut h, false, false);
        assert_eq!(t.global, Some(Duration::from_secs(15)));
        let mut h = headers(&[
            ("x-envoy-upstream-rq-timeout-ms", "500"),
            ("x-envoy-upstream-rq-per-try-timeout-ms", "200"),
        ]);
        let t = final_timeout(&a, None, None, &mut h, false, false);
        assert_eq!((t.global, t.per_try), (Some(MS(500)), Some(MS(200))));
        assert!(h.is_empty(), "both headers are consumed");
        set_timeout_headers(&t, MS(0), &a, &mut h, true, false);
        assert_eq!(h["x-envoy-expected-rq-timeout-ms"], "200");
        set_timeout_headers(&t, MS(450), &a, &mut h, true, false);
        assert_eq!(
            h["x-envoy-expected-rq-timeout-ms"], "50",
            "capped by what is left"
        );
        set_timeout_headers(&t, MS(600), &a, &mut h, true, false);
        assert_eq!(h["x-envoy-expected-rq-timeout-ms"], "1");
        // A per-try timeout not below the global one is dropped.
        let mut h = headers(&[("x-envoy-upstream-rq-timeout-ms", "100")]);
        let t = final_timeout(&a, Some(MS(300)), None, &mut h, false, false);
        assert_eq!(t.per_try, None);
        // 0 disables.
        let mut h = headers(&[("x-envoy-upstream-rq-timeout-ms", "0")]);
        assert_eq!(
            final_timeout(&a, None, None, &mut h, false, false).global,
            None
        );
    }

    #[test]
    fn max_grpc_timeout_uses_the_header() {
        let mut a = action();
        a.max_grpc_timeout = Some(MS(0));
        let mut h = headers(&[("grpc-timeout", "2S")]);
        let t = final_timeout(&a, None, None, &mut h, true, false);
        assert_eq!(t.global, Some(MS(2000)));
        a.max_grpc_timeout = Some(MS(500));
        let t = final_timeout(&a, None, None, &mut h, true, false);
        assert_eq!(t.global, Some(MS(500)), "capped");
        set_timeout_headers(&t, MS(0), &a, &mut h, false, true);
        assert_eq!(
            h["grpc-timeout"], "500m",
            "the upstream learns the real deadline"
        );
        let mut none = headers(&[]);
        let t = final_timeout(&a, None, None, &mut none, true, false);
        assert_eq!(t.global, Some(MS(500)), "no header: the maximum");
        let t = final_timeout(&a, None, None, &mut none, false, false);
        assert_eq!(
            t.global,
            Some(Duration::from_secs(15)),
            "not gRPC: route timeout"
        );
    }

    #[test]
    fn max_stream_duration_disables_the_route_timeout() {
        let mut a = action();
        a.timeout = Some(MS(500));
        a.max_stream_duration = Some(MaxStreamDuration {
            max_stream_duration: None,
            grpc_timeout_header_max: Some(MS(500)),
            grpc_timeout_header_offset: None,
        });
        let mut h = headers(&[]);
        assert_eq!(
            final_timeout(&a, None, None, &mut h, false, false).global,
            None,
            "Envoy ignores `timeout` on a route with max_stream_duration"
        );
        let msd = a.max_stream_duration.as_ref();
        assert_eq!(stream_duration(msd, None, &mut h, false), None);
        let mut g = headers(&[("grpc-timeout", "2S")]);
        assert_eq!(stream_duration(msd, None, &mut g, true), Some(MS(500)));
        assert_eq!(g["grpc-timeout"], "500m");
        let mut small = headers(&[("grpc-timeout", "100m")]);
        assert_eq!(stream_duration(msd, None, &mut small, true), Some(MS(100)));
        // HCM fallback when the route sets no max_stream_duration.
        assert_eq!(
            stream_duration(None, Some(MS(700)), &mut headers(&[]), false),
            Some(MS(700))
        );
        let explicit_zero = MaxStreamDuration {
            max_stream_duration: Some(MS(0)),
            ..MaxStreamDuration::default()
        };
        assert_eq!(
            stream_duration(
                Some(&explicit_zero),
                Some(MS(700)),
                &mut headers(&[]),
                false
            ),
            None,
            "0 on the route disables the HCM's"
        );
    }
}
