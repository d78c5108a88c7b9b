//! The route retry policy (`retry_policy` on a route or virtual host) as a domain type:
//! the `retry_on` conditions as a bit set (so `x-envoy-retry-on` headers merge with one
//! `or`), retry count, per-try timeouts, retriable status codes and headers, the
//! previous-hosts predicate and the backoff.

use std::time::Duration;

use envoy_types::pb::{
    envoy::config::route::v3::{self as rpb},
    google::protobuf::Duration as PbDuration,
};

use crate::config::{ConfigError, duration, route_match::HeaderMatcher};

/// Envoy's `retry_on` conditions, as bits (Envoy's `RetryPolicy::RETRY_ON_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn(u32);

impl RetryOn {
    pub const NONE: RetryOn = RetryOn(0);
    pub const FIVE_XX: RetryOn = RetryOn(1 << 0);
    pub const GATEWAY_ERROR: RetryOn = RetryOn(1 << 1);
    pub const CONNECT_FAILURE: RetryOn = RetryOn(1 << 2);
    pub const RETRIABLE_4XX: RetryOn = RetryOn(1 << 3);
    pub const REFUSED_STREAM: RetryOn = RetryOn(1 << 4);
    pub const GRPC_CANCELLED: RetryOn = RetryOn(1 << 5);
    pub const GRPC_DEADLINE_EXCEEDED: RetryOn = RetryOn(1 << 6);
    pub const GRPC_RESOURCE_EXHAUSTED: RetryOn = RetryOn(1 << 7);
    pub const GRPC_UNAVAILABLE: RetryOn = RetryOn(1 << 8);
    pub const GRPC_INTERNAL: RetryOn = RetryOn(1 << 9);
    pub const RETRIABLE_STATUS_CODES: RetryOn = RetryOn(1 << 10);
    pub const RESET: RetryOn = RetryOn(1 << 11);
    pub const RETRIABLE_HEADERS: RetryOn = RetryOn(1 << 12);
    pub const ENVOY_RATE_LIMITED: RetryOn = RetryOn(1 << 13);
    pub const HTTP3_POST_CONNECT_FAILURE: RetryOn = RetryOn(1 << 14);
    pub const RESET_BEFORE_REQUEST: RetryOn = RetryOn(1 << 15);

    pub const GRPC_ANY: RetryOn = RetryOn(
        Self::GRPC_CANCELLED.0
            | Self::GRPC_DEADLINE_EXCEEDED.0
            | Self::GRPC_RESOURCE_EXHAUSTED.0
            | Self::GRPC_UNAVAILABLE.0
            | Self::GRPC_INTERNAL.0,
    );

    pub fn contains(self, other: RetryOn) -> bool {
        self.0 & other.0 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// One `x-envoy-retry-on` / `retry_on` token.
    fn http_token(s: &str) -> Option<RetryOn> {
        Some(match s {
            "5xx" => Self::FIVE_XX,
            "gateway-error" => Self::GATEWAY_ERROR,
            "connect-failure" => Self::CONNECT_FAILURE,
            "envoy-ratelimited" => Self::ENVOY_RATE_LIMITED,
            "retriable-4xx" => Self::RETRIABLE_4XX,
            "refused-stream" => Self::REFUSED_STREAM,
            "retriable-status-codes" => Self::RETRIABLE_STATUS_CODES,
            "retriable-headers" => Self::RETRIABLE_HEADERS,
            "reset" => Self::RESET,
            "reset-before-request" => Self::RESET_BEFORE_REQUEST,
            "http3-post-connect-failure" => Self::HTTP3_POST_CONNECT_FAILURE,
            _ => return None,
        })
    }

    /// One `x-envoy-retry-grpc-on` token.
    fn grpc_token(s: &str) -> Option<RetryOn> {
        Some(match s {
            "cancelled" => Self::GRPC_CANCELLED,
            "deadline-exceeded" => Self::GRPC_DEADLINE_EXCEEDED,
            "resource-exhausted" => Self::GRPC_RESOURCE_EXHAUSTED,
            "unavailable" => Self::GRPC_UNAVAILABLE,
            "internal" => Self::GRPC_INTERNAL,
            _ => return None,
        })
    }

    /// `x-envoy-retry-on`: unknown tokens are ignored, as Envoy does for headers.
    pub fn parse_http_header(v: &str) -> RetryOn {
        v.split(',')
            .filter_map(|t| Self::http_token(t.trim()))
            .fold(Self::NONE, |a, b| a | b)
    }

    /// `x-envoy-retry-grpc-on`.
    pub fn parse_grpc_header(v: &str) -> RetryOn {
        v.split(',')
            .filter_map(|t| Self::grpc_token(t.trim()))
            .fold(Self::NONE, |a, b| a | b)
    }

    /// A config `retry_on` (HTTP and gRPC tokens together); unknown tokens are an error.
    pub fn parse_config(v: &str, field: &str) -> Result<RetryOn, ConfigError> {
        let mut out = Self::NONE;
        for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            out |= Self::http_token(t)
                .or_else(|| Self::grpc_token(t))
                .ok_or_else(|| {
                    ConfigError::field(field, format!("unknown retry condition {t:?}"))
                })?;
        }
        Ok(out)
    }
}

impl std::ops::BitOr for RetryOn {
    type Output = RetryOn;
    fn bitor(self, rhs: RetryOn) -> RetryOn {
        RetryOn(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for RetryOn {
    fn bitor_assign(&mut self, rhs: RetryOn) {
        self.0 |= rhs.0;
    }
}

/// A `retriable_headers` matcher over response headers; `:status` matches the status.
#[derive(Debug, Clone)]
pub struct ResponseHeaderMatcher {
    pub matcher: HeaderMatcher,
    pub status: bool,
}

impl ResponseHeaderMatcher {
    fn try_from_proto(m: &rpb::HeaderMatcher, field: &str) -> Result<Self, ConfigError> {
        let status = m.name == ":status";
        let matcher = if status {
            let mut m = m.clone();
            m.name = "x-mesh-status".into();
            HeaderMatcher::try_from_proto(&m, field)?
        } else {
            HeaderMatcher::try_from_proto(m, field)?
        };
        Ok(ResponseHeaderMatcher { matcher, status })
    }

    /// A header-name-only matcher (from `x-envoy-retriable-header-names`).
    pub fn present(name: http::HeaderName) -> Self {
        ResponseHeaderMatcher {
            matcher: HeaderMatcher {
                name,
                pseudo: None,
                kind: crate::config::route_match::HeaderMatch::Present(true),
                invert: false,
                treat_missing_as_empty: false,
            },
            status: false,
        }
    }

    pub fn matches(&self, status: http::StatusCode, headers: &http::HeaderMap) -> bool {
        if self.status {
            self.matcher.matches_value(Some(status.as_str()))
        } else {
            self.matcher.matches(headers)
        }
    }
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub retry_on: RetryOn,
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub per_try_idle_timeout: Option<Duration>,
    pub retriable_status_codes: Vec<u16>,
    pub retriable_headers: Vec<ResponseHeaderMatcher>,
    /// Retries happen only when the request matches one of these (empty: always).
    pub retriable_request_headers: Vec<HeaderMatcher>,
    /// `envoy.retry_host_predicates.previous_hosts`: avoid hosts already tried.
    pub avoid_previous_hosts: bool,
    /// How many times host selection may re-pick to avoid a previous host (Envoy: 1).
    pub host_selection_retry_max_attempts: u32,
    /// `envoy.retry_priorities.previous_priorities`: its `update_frequency`.
    pub previous_priorities: Option<u32>,
    pub base_interval: Duration,
    pub max_interval: Duration,
}

/// Envoy's default retry backoff base (`upstream.base_retry_backoff_ms`).
pub const DEFAULT_BASE_INTERVAL: Duration = Duration::from_millis(25);

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retry_on: RetryOn::NONE,
            num_retries: 1,
            per_try_timeout: None,
            per_try_idle_timeout: None,
            retriable_status_codes: Vec::new(),
            retriable_headers: Vec::new(),
            retriable_request_headers: Vec::new(),
            avoid_previous_hosts: false,
            host_selection_retry_max_attempts: 1,
            previous_priorities: None,
            base_interval: DEFAULT_BASE_INTERVAL,
            max_interval: DEFAULT_BASE_INTERVAL * 10,
        }
    }
}

impl RetryPolicy {
    pub fn try_from_proto(p: &rpb::RetryPolicy, field: &str) -> Result<Self, ConfigError> {
        let f = |name: &str| format!("{field}.{name}");
        let retry_on = RetryOn::parse_config(&p.retry_on, &f("retry_on"))?;
        let unsupported = |name: &str| ConfigError::field(f(name), "is not supported");
        let previous_priorities = match &p.retry_priority {
            None => None,
            Some(rp) => Some(previous_priorities(rp, &f("retry_priority"))?),
        };
        if p.rate_limited_retry_back_off.is_some() {
            return Err(unsupported("rate_limited_retry_back_off"));
        }
        if !p.retry_options_predicates.is_empty() {
            return Err(unsupported("retry_options_predicates"));
        }
        let mut avoid_previous_hosts = false;
        for (i, pred) in p.retry_host_predicate.iter().enumerate() {
            match pred.name.as_str() {
                "envoy.retry_host_predicates.previous_hosts" => avoid_previous_hosts = true,
                // We have no canary or internal-host metadata: no host is ever omitted.
                "envoy.retry_host_predicates.omit_canary_hosts"
                | "envoy.retry_host_predicates.omit_host_metadata" => {}
                other => {
                    return Err(ConfigError::field(
                        f(&format!("retry_host_predicate[{i}].name")),
                        format!("retry host predicate {other:?} is not supported"),
                    ));
                }
            }
        }
        let opt_dur = |d: &Option<PbDuration>, name: &str| {
            d.as_ref().map(|d| duration(d, &f(name))).transpose()
        };
        let (base_interval, max_interval) = match &p.retry_back_off {
            Some(b) => {
                let base = opt_dur(&b.base_interval, "retry_back_off.base_interval")?.ok_or_else(
                    || ConfigError::field(f("retry_back_off.base_interval"), "is required"),
                )?;
                if base < Duration::from_millis(1) {
                    return Err(ConfigError::field(
                        f("retry_back_off.base_interval"),
                        "must be at least 1ms",
                    ));
                }
                let max =
                    opt_dur(&b.max_interval, "retry_back_off.max_interval")?.unwrap_or(base * 10);
                if max < base {
                    return Err(ConfigError::field(
                        f("retry_back_off.max_interval"),
                        "must not be less than base_interval",
                    ));
                }
                (base, max)
            }
            None => (DEFAULT_BASE_INTERVAL, DEFAULT_BASE_INTERVAL * 10),
        };
        let mut retriable_status_codes = Vec::new();
        for c in &p.retriable_status_codes {
            let c = u16::try_from(*c)
                .ok()
                .filter(|c| (100..600).contains(c))
                .ok_or_else(|| {
                    ConfigError::field(
                        f("retriable_status_codes"),
                        format!("invalid status code {c}"),
                    )
                })?;
            retriable_status_codes.push(c);
        }
        let mut retriable_headers = Vec::new();
        for (i, h) in p.retriable_headers.iter().enumerate() {
            retriable_headers.push(ResponseHeaderMatcher::try_from_proto(
                h,
                &f(&format!("retriable_headers[{i}]")),
            )?);
        }
        let mut retriable_request_headers = Vec::new();
        for (i, h) in p.retriable_request_headers.iter().enumerate() {
            retriable_request_headers.push(HeaderMatcher::try_from_proto(
                h,
                &f(&format!("retriable_request_headers[{i}]")),
            )?);
        }
        Ok(RetryPolicy {
            retry_on,
            num_retries: p.num_retries.as_ref().map_or(1, |n| n.value),
            per_try_timeout: opt_dur(&p.per_try_timeout, "per_try_timeout")?
                .filter(|d| !d.is_zero()),
            per_try_idle_timeout: opt_dur(&p.per_try_idle_timeout, "per_try_idle_timeout")?
                .filter(|d| !d.is_zero()),
            retriable_status_codes,
            retriable_headers,
            retriable_request_headers,
            avoid_previous_hosts,
            host_selection_retry_max_attempts: u32::try_from(p.host_selection_retry_max_attempts)
                .unwrap_or(u32::MAX)
                .max(1),
            previous_priorities,
            base_interval,
            max_interval,
        })
    }
}

const PREVIOUS_PRIORITIES: &str = "envoy.retry_priorities.previous_priorities";

/// The `update_frequency` of a `previous_priorities` retry priority.
fn previous_priorities(
    rp: &rpb::retry_policy::RetryPriority,
    field: &str,
) -> Result<u32, ConfigError> {
    use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
    use rpb::retry_policy::retry_priority::ConfigType;
    let any = rp
        .config_type
        .as_ref()
        .map(|ConfigType::TypedConfig(any)| any);
    let by_type =
        any.is_some_and(|a| a.type_url == <PreviousPrioritiesConfig as prost::Name>::type_url());
    if rp.name != PREVIOUS_PRIORITIES && !by_type {
        return Err(ConfigError::field(
            format!("{field}.name"),
            format!("retry priority {:?} is not supported", rp.name),
        ));
    }
    let cfg: PreviousPrioritiesConfig = match any {
        Some(a) => crate::config::decode_any(a, &format!("{field}.typed_config"))?,
        None => PreviousPrioritiesConfig::default(),
    };
    u32::try_from(cfg.update_frequency)
        .ok()
        .filter(|f| *f > 0)
        .ok_or_else(|| {
            ConfigError::field(
                format!("{field}.typed_config.update_frequency"),
                "must be greater than zero",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::envoy_json::message_from_json;
    use serde_json::json;

    fn policy(v: serde_json::Value) -> Result<RetryPolicy, ConfigError> {
        let p: rpb::RetryPolicy = message_from_json(&v).expect("valid proto json");
        RetryPolicy::try_from_proto(&p, "retry_policy")
    }

    #[test]
    fn istio_default_policy() {
        let p = policy(json!({
            "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
            "num_retries": 2,
            "retriable_status_codes": [503],
            "host_selection_retry_max_attempts": "5",
            "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
        }))
        .expect("valid");
        for on in [
            RetryOn::CONNECT_FAILURE,
            RetryOn::REFUSED_STREAM,
            RetryOn::GRPC_UNAVAILABLE,
            RetryOn::GRPC_CANCELLED,
            RetryOn::RETRIABLE_STATUS_CODES,
        ] {
            assert!(p.retry_on.contains(on), "{on:?}");
        }
        assert!(!p.retry_on.contains(RetryOn::FIVE_XX));
        assert_eq!(p.num_retries, 2);
        assert_eq!(p.retriable_status_codes, vec![503]);
        assert!(p.avoid_previous_hosts);
        assert_eq!(p.host_selection_retry_max_attempts, 5);
        assert_eq!(p.base_interval, Duration::from_millis(25));
        assert_eq!(p.max_interval, Duration::from_millis(250));
    }

    #[test]
    fn headers_merge_and_ignore_unknown_tokens() {
        assert_eq!(
            RetryOn::parse_http_header("5xx, bogus,reset"),
            RetryOn::FIVE_XX | RetryOn::RESET
        );
        assert_eq!(
            RetryOn::parse_grpc_header("internal,5xx"),
            RetryOn::GRPC_INTERNAL,
            "HTTP tokens are not gRPC tokens"
        );
        let e = policy(json!({"retry_on": "5xx,bogus"})).expect_err("unknown token");
        assert_eq!(e.field, "retry_policy.retry_on");
    }

    #[test]
    fn retriable_headers_match_status_and_headers() {
        let p = policy(json!({
            "retry_on": "retriable-headers",
            "retriable_headers": [
                {"name": ":status", "range_match": {"start": 500, "end": 503}},
                {"name": "x-retry-me", "present_match": true},
            ],
        }))
        .expect("valid");
        let h = http::HeaderMap::new();
        assert!(p.retriable_headers[0].matches(http::StatusCode::BAD_GATEWAY, &h));
        assert!(!p.retriable_headers[0].matches(http::StatusCode::SERVICE_UNAVAILABLE, &h));
        let mut h = http::HeaderMap::new();
        h.insert("x-retry-me", "1".parse().expect("value"));
        assert!(p.retriable_headers[1].matches(http::StatusCode::OK, &h));
    }

    #[test]
    fn previous_priorities_as_istio_sends_it() {
        let p = policy(json!({"retry_on": "5xx", "retry_priority": {
            "name": "envoy.retry_priorities.previous_priorities",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig", "update_frequency": 2}}}))
        .expect("valid");
        assert_eq!(p.previous_priorities, Some(2));
        let e = policy(json!({"retry_on": "5xx", "retry_priority": {
            "name": "envoy.retry_priorities.previous_priorities",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig"}}}))
        .expect_err("zero");
        assert_eq!(
            e.field,
            "retry_policy.retry_priority.typed_config.update_frequency"
        );
    }

    #[test]
    fn backoff_validation() {
        let e = policy(json!({"retry_on": "5xx", "retry_back_off": {"base_interval": "0.1s", "max_interval": "0.05s"}}))
            .expect_err("max < base");
        assert_eq!(e.field, "retry_policy.retry_back_off.max_interval");
        let p = policy(json!({"retry_on": "5xx", "retry_back_off": {"base_interval": "0.1s"}}))
            .expect("valid");
        assert_eq!(
            p.max_interval,
            Duration::from_secs(1),
            "10x base by default"
        );
    }
}
