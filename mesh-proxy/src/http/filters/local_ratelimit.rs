//! `envoy.filters.http.local_ratelimit`: a token bucket per filter config (listener
//! level, or per route through `typed_per_filter_config`; a route's config has its own
//! bucket), or per downstream connection (`local_rate_limit_per_downstream_connection`).
//!
//! The bucket is Envoy's `AtomicTokenBucketImpl`: one atomic holding the time at which
//! the bucket was empty, refilled continuously at `tokens_per_fill / fill_interval`, so
//! a consume is one compare-and-swap and no timer runs. A request is checked when
//! `filter_enabled` hits; when the bucket is empty and `filter_enforced` hits it gets a
//! local reply (`status`, default 429, body `local_rate_limited`, flag `RL`), otherwise
//! `request_headers_to_add_when_not_enforced` are added and it continues. With
//! `enable_x_ratelimit_headers: DRAFT_VERSION_03` every response carries
//! `x-ratelimit-limit`, `x-ratelimit-remaining` and `x-ratelimit-reset`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit as PbLocalRateLimit;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use tokio::time::Instant;

use crate::config::{ConfigError, duration, route_headers::HeaderMutations, route_match::Fraction};

pub const TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";

static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The bucket's shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketSpec {
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    pub fill_interval: Duration,
}

/// Envoy's atomic token bucket: `empty_at` is the (fractional) second, relative to
/// `base`, at which the bucket held no tokens; the tokens now are
/// `min(max, (now - empty_at) * fill_rate)`.
#[derive(Debug)]
pub struct TokenBucket {
    max_tokens: f64,
    fill_rate: f64,
    base: Instant,
    empty_at: AtomicU64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(spec: BucketSpec) -> Self {
        let interval = spec.fill_interval.as_secs_f64().max(f64::MIN_POSITIVE);
        // Envoy's floor on the fill rate keeps the arithmetic finite.
        let fill_rate = (f64::from(spec.tokens_per_fill) / interval).max(1e-12);
        let max_tokens = f64::from(spec.max_tokens);
        TokenBucket {
            max_tokens,
            fill_rate,
            base: Instant::now(),
            empty_at: AtomicU64::new((-max_tokens / fill_rate).to_bits()),
        }
    }

    fn now(&self) -> f64 {
        Instant::now()
            .saturating_duration_since(self.base)
            .as_secs_f64()
    }

    /// Takes one token; false when the bucket is empty.
    pub fn consume(&self) -> bool {
        let now = self.now();
        let mut old = self.empty_at.load(Ordering::Relaxed);
        loop {
            let tokens = ((now - f64::from_bits(old)) * self.fill_rate).min(self.max_tokens);
            if tokens < 1.0 {
                return false;
            }
            let new = now - (tokens - 1.0) / self.fill_rate;
            match self.empty_at.compare_exchange_weak(
                old,
                new.to_bits(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(cur) => old = cur,
            }
        }
    }

    fn tokens(&self) -> f64 {
        let old = f64::from_bits(self.empty_at.load(Ordering::Relaxed));
        ((self.now() - old) * self.fill_rate).min(self.max_tokens)
    }

    pub fn max_tokens(&self) -> u64 {
        self.max_tokens as u64
    }

    pub fn remaining_tokens(&self) -> u64 {
        self.tokens().max(0.0) as u64
    }

    /// Milliseconds until one token is available (0 when one is).
    pub fn next_token_ms(&self) -> u64 {
        let t = self.tokens();
        if t >= 1.0 {
            return 0;
        }
        ((1.0 - t) / self.fill_rate * 1000.0).ceil() as u64
    }

    /// `x-ratelimit-reset`: Envoy divides the milliseconds by 1000 in integers.
    pub fn reset_seconds(&self) -> u64 {
        self.next_token_ms() / 1000
    }
}

/// One `LocalRateLimit` config with its bucket.
#[derive(Debug)]
pub struct LocalRateLimit {
    pub stat_prefix: String,
    pub status: StatusCode,
    /// `None` when no `token_bucket` is configured (allowed at listener level only).
    pub spec: Option<BucketSpec>,
    bucket: Option<TokenBucket>,
    pub filter_enabled: Option<Fraction>,
    pub filter_enforced: Option<Fraction>,
    pub request_headers_when_not_enforced: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub per_connection: bool,
    pub x_ratelimit_headers: bool,
    /// gRPC requests get RESOURCE_EXHAUSTED instead of the status's mapping.
    pub grpc_resource_exhausted: bool,
    pub retry_after: bool,
}

impl LocalRateLimit {
    /// `per_route`: a route's config must carry a token bucket.
    pub fn try_from_proto(p: &PbLocalRateLimit, per_route: bool) -> Result<Self, ConfigError> {
        let unsupported = |f: &str| ConfigError::field(f, "is not supported");
        if p.stat_prefix.is_empty() {
            return Err(ConfigError::field("stat_prefix", "must not be empty"));
        }
        if !p.descriptors.is_empty() {
            return Err(unsupported("descriptors"));
        }
        if !p.rate_limits.is_empty() {
            return Err(unsupported("rate_limits"));
        }
        if p.local_cluster_rate_limit.is_some() {
            return Err(unsupported("local_cluster_rate_limit"));
        }
        let spec = match &p.token_bucket {
            Some(tb) => {
                let fill_interval = tb
                    .fill_interval
                    .as_ref()
                    .map(|d| duration(d, "token_bucket.fill_interval"))
                    .transpose()?
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        ConfigError::field(
                            "token_bucket.fill_interval",
                            "is required and must be greater than zero",
                        )
                    })?;
                if tb.max_tokens == 0 {
                    return Err(ConfigError::field(
                        "token_bucket.max_tokens",
                        "must be greater than zero",
                    ));
                }
                let tokens_per_fill = tb.tokens_per_fill.as_ref().map_or(1, |v| v.value);
                if tokens_per_fill == 0 {
                    return Err(ConfigError::field(
                        "token_bucket.tokens_per_fill",
                        "must be greater than zero",
                    ));
                }
                Some(BucketSpec {
                    max_tokens: tb.max_tokens,
                    tokens_per_fill,
                    fill_interval,
                })
            }
            None if per_route => {
                return Err(ConfigError::field(
                    "token_bucket",
                    "is required in a per-route config",
                ));
            }
            None => None,
        };
        let code = p.status.as_ref().map_or(0, |s| s.code);
        // Envoy's toErrorCode: anything below 400 becomes 429.
        let status = u16::try_from(code)
            .ok()
            .filter(|c| (400..600).contains(c))
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::TOO_MANY_REQUESTS);
        let fraction = |f: &Option<_>, name: &str| {
            f.as_ref()
                .map(|f| Fraction::from_runtime(f, name))
                .transpose()
        };
        Ok(LocalRateLimit {
            stat_prefix: p.stat_prefix.clone(),
            status,
            bucket: if p.local_rate_limit_per_downstream_connection {
                None
            } else {
                spec.map(TokenBucket::new)
            },
            spec,
            filter_enabled: fraction(&p.filter_enabled, "filter_enabled")?,
            filter_enforced: fraction(&p.filter_enforced, "filter_enforced")?,
            request_headers_when_not_enforced: HeaderMutations::try_from_proto(
                &p.request_headers_to_add_when_not_enforced,
                &[],
                "request_headers_to_add_when_not_enforced",
                "request_headers_to_add_when_not_enforced",
            )?,
            response_headers: HeaderMutations::try_from_proto(
                &p.response_headers_to_add,
                &[],
                "response_headers_to_add",
                "response_headers_to_add",
            )?,
            per_connection: p.local_rate_limit_per_downstream_connection,
            x_ratelimit_headers: p.enable_x_ratelimit_headers == 1,
            grpc_resource_exhausted: p.rate_limited_as_resource_exhausted,
            retry_after: p.enable_retry_after_header,
        })
    }
}

/// Per-connection buckets, keyed by the config they belong to (a connection's requests
/// may hit several routes with per-connection limits).
#[derive(Debug, Default)]
pub struct ConnectionBuckets(parking_lot::Mutex<Vec<(usize, Arc<TokenBucket>)>>);

impl ConnectionBuckets {
    fn get(&self, cfg: &Arc<LocalRateLimit>, spec: BucketSpec) -> Arc<TokenBucket> {
        let key = Arc::as_ptr(cfg) as usize;
        let mut list = self.0.lock();
        if let Some((_, b)) = list.iter().find(|(k, _)| *k == key) {
            return b.clone();
        }
        let b = Arc::new(TokenBucket::new(spec));
        list.push((key, b.clone()));
        b
    }
}

/// The bucket a request used, for the response's `x-ratelimit-*` headers.
#[derive(Debug, Clone)]
pub struct Encode {
    cfg: Arc<LocalRateLimit>,
    bucket: Option<Arc<TokenBucket>>,
}

impl Encode {
    fn bucket(&self) -> Option<&TokenBucket> {
        self.bucket.as_deref().or(self.cfg.bucket.as_ref())
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        if !self.cfg.x_ratelimit_headers {
            return;
        }
        if let Some(b) = self.bucket() {
            headers.append(&X_RATELIMIT_LIMIT, HeaderValue::from(b.max_tokens()));
            headers.append(
                &X_RATELIMIT_REMAINING,
                HeaderValue::from(b.remaining_tokens()),
            );
            headers.append(&X_RATELIMIT_RESET, HeaderValue::from(b.reset_seconds()));
        }
    }
}

/// The filter's decision for one request.
#[derive(Debug)]
pub enum Decision {
    /// Filter not enabled for this request.
    Pass,
    /// Allowed (or limited but not enforced: `add_request_headers`).
    Continue {
        encode: Encode,
        add_request_headers: bool,
    },
    /// Rate limited: reply with the config's status (flag `RL`).
    Limited(Encode),
}

impl Decision {
    pub fn encode(&self) -> Option<&Encode> {
        match self {
            Decision::Pass => None,
            Decision::Continue { encode, .. } | Decision::Limited(encode) => Some(encode),
        }
    }
}

/// Checks a request against `cfg`; `random` draws `filter_enabled` / `filter_enforced`.
pub fn decide(
    cfg: &Arc<LocalRateLimit>,
    conn: &ConnectionBuckets,
    random: &mut dyn FnMut() -> u64,
) -> Decision {
    if !cfg.filter_enabled.is_some_and(|f| f.enabled(random())) {
        return Decision::Pass;
    }
    let bucket = match (cfg.per_connection, cfg.spec) {
        (true, Some(spec)) => Some(conn.get(cfg, spec)),
        _ => None,
    };
    let encode = Encode {
        cfg: cfg.clone(),
        bucket,
    };
    // No token bucket configured: nothing is allowed through, as in Envoy's limiter
    // built with zero tokens (a listener-level config meant to be overridden per route).
    let allowed = encode.bucket().is_some_and(TokenBucket::consume);
    if allowed {
        return Decision::Continue {
            encode,
            add_request_headers: false,
        };
    }
    if !cfg.filter_enforced.is_some_and(|f| f.enabled(random())) {
        return Decision::Continue {
            encode,
            add_request_headers: true,
        };
    }
    Decision::Limited(encode)
}

/// Headers of the rate-limited reply: `response_headers_to_add` is applied by the
/// caller; `Retry-After` when asked and not already set.
pub fn limited_headers(encode: &Encode, headers: &mut HeaderMap) {
    if encode.cfg.retry_after
        && encode.cfg.status == StatusCode::TOO_MANY_REQUESTS
        && !headers.contains_key(header::RETRY_AFTER)
        && let Some(b) = encode.bucket()
    {
        let secs = b.next_token_ms().div_ceil(1000).max(1);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
}

impl Encode {
    pub fn config(&self) -> &LocalRateLimit {
        &self.cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::envoy_json::message_from_json;
    use serde_json::json;

    fn cfg(v: serde_json::Value, per_route: bool) -> Result<LocalRateLimit, ConfigError> {
        let p: PbLocalRateLimit = message_from_json(&v).expect("valid proto json");
        LocalRateLimit::try_from_proto(&p, per_route)
    }

    fn ten_per_second() -> serde_json::Value {
        json!({
            "stat_prefix": "http_local_rate_limiter",
            "token_bucket": {"max_tokens": 10, "tokens_per_fill": 10, "fill_interval": "1s"},
            "filter_enabled": {"default_value": {"numerator": 100}},
            "filter_enforced": {"default_value": {"numerator": 100}},
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
        })
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_refills_continuously() {
        let b = TokenBucket::new(BucketSpec {
            max_tokens: 2,
            tokens_per_fill: 1,
            fill_interval: Duration::from_millis(100),
        });
        assert!(b.consume());
        assert!(b.consume());
        assert!(!b.consume(), "empty");
        assert_eq!(b.next_token_ms(), 100);
        tokio::time::advance(Duration::from_millis(50)).await;
        assert!(!b.consume(), "half a token");
        tokio::time::advance(Duration::from_millis(50)).await;
        assert!(b.consume(), "one token after one fill interval");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.remaining_tokens(), 2, "capped at max_tokens");
    }

    #[tokio::test(start_paused = true)]
    async fn ten_rps_limits_the_excess_and_reports_headers() {
        let c = Arc::new(cfg(ten_per_second(), false).expect("valid"));
        let conn = ConnectionBuckets::default();
        let mut allowed = 0;
        let mut limited = 0;
        for _ in 0..25 {
            match decide(&c, &conn, &mut || 0) {
                Decision::Continue { .. } => allowed += 1,
                Decision::Limited(e) => {
                    limited += 1;
                    let mut h = HeaderMap::new();
                    e.apply(&mut h);
                    assert_eq!(h["x-ratelimit-limit"], "10");
                    assert_eq!(h["x-ratelimit-remaining"], "0");
                    // 100 ms to the next token: Envoy's integer division gives 0.
                    assert_eq!(h["x-ratelimit-reset"], "0");
                }
                Decision::Pass => panic!("enabled at 100%"),
            }
        }
        assert_eq!((allowed, limited), (10, 15));
        // (Envoy's float arithmetic: a hair past 500 ms for exactly five tokens.)
        tokio::time::advance(Duration::from_millis(501)).await;
        let n = (0..10)
            .filter(|_| matches!(decide(&c, &conn, &mut || 0), Decision::Continue { .. }))
            .count();
        assert_eq!(n, 5, "half a second refills half the bucket");
    }

    #[tokio::test(start_paused = true)]
    async fn not_enforced_and_not_enabled() {
        let mut v = ten_per_second();
        v["token_bucket"]["max_tokens"] = json!(1);
        v["filter_enforced"] = json!({"default_value": {"numerator": 0}});
        let c = Arc::new(cfg(v, false).expect("valid"));
        let conn = ConnectionBuckets::default();
        assert!(matches!(
            decide(&c, &conn, &mut || 0),
            Decision::Continue {
                add_request_headers: false,
                ..
            }
        ));
        assert!(matches!(
            decide(&c, &conn, &mut || 0),
            Decision::Continue {
                add_request_headers: true,
                ..
            }
        ));
        let mut v = ten_per_second();
        v.as_object_mut().expect("object").remove("filter_enabled");
        let off = Arc::new(cfg(v, false).expect("valid"));
        assert!(matches!(decide(&off, &conn, &mut || 0), Decision::Pass));
    }

    #[tokio::test(start_paused = true)]
    async fn per_connection_buckets_are_separate() {
        let mut v = ten_per_second();
        v["token_bucket"]["max_tokens"] = json!(1);
        v["local_rate_limit_per_downstream_connection"] = json!(true);
        let c = Arc::new(cfg(v, false).expect("valid"));
        let (a, b) = (ConnectionBuckets::default(), ConnectionBuckets::default());
        assert!(matches!(
            decide(&c, &a, &mut || 0),
            Decision::Continue { .. }
        ));
        assert!(matches!(decide(&c, &a, &mut || 0), Decision::Limited(_)));
        assert!(matches!(
            decide(&c, &b, &mut || 0),
            Decision::Continue { .. }
        ));
    }

    #[test]
    fn config_errors_name_the_field() {
        let mut v = ten_per_second();
        v.as_object_mut().expect("object").remove("token_bucket");
        assert!(
            cfg(v.clone(), false).is_ok(),
            "listener level may omit the bucket"
        );
        assert_eq!(cfg(v, true).expect_err("per route").field, "token_bucket");
        let mut v = ten_per_second();
        v["descriptors"] = json!([{"entries": [{"key": "k", "value": "v"}], "token_bucket": {"max_tokens": 1, "fill_interval": "1s"}}]);
        assert_eq!(cfg(v, false).expect_err("descriptors").field, "descriptors");
        let mut v = ten_per_second();
        v["status"] = json!({"code": "OK"});
        assert_eq!(
            cfg(v, false).expect("valid").status,
            StatusCode::TOO_MANY_REQUESTS,
            "codes below 400 become 429"
        );
    }
}
