use std::sync::Arc;

use envoy_types::pb::envoy::config::{cluster::v3::Cluster as PbCluster, route::v3 as rpb};
use http::HeaderValue;
use mesh_api::envoy_json::message_from_json;
use serde_json::json;

use super::*;
use crate::{config::cluster::Cluster as ClusterConfig, stats::Stats};

fn policy(v: serde_json::Value) -> RetryPolicy {
    let p: rpb::RetryPolicy = message_from_json(&v).expect("valid proto json");
    RetryPolicy::try_from_proto(&p, "retry_policy").expect("valid policy")
}

fn cluster(max_retries: u32) -> Arc<Cluster> {
    let p: PbCluster = message_from_json(&json!({
        "name": "c", "type": "STATIC", "connect_timeout": "1s",
        "circuit_breakers": {"thresholds": [{"max_retries": max_retries}]},
        "load_assignment": {"cluster_name": "c", "endpoints": []},
    }))
    .expect("valid cluster json");
    Cluster::new(
        ClusterConfig::try_from(&p).expect("valid cluster"),
        &Stats::new(),
        None,
    )
}

fn state<'a>(p: &'a RetryPolicy, headers: &[(&str, &str)]) -> RetryState<'a> {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.insert(
            HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    RetryState::new(Some(p), &mut h, |_| true).expect("retriable")
}

#[test]
fn status_classification() {
    let p = policy(json!({"retry_on": "5xx", "num_retries": 2}));
    let s = state(&p, &[]);
    let h = HeaderMap::new();
    assert_eq!(
        s.would_retry_headers(StatusCode::SERVICE_UNAVAILABLE, &h),
        Decision::Backoff
    );
    assert_eq!(
        s.would_retry_headers(StatusCode::NOT_FOUND, &h),
        Decision::No,
        "4xx is not retried"
    );
    let gw = policy(json!({"retry_on": "gateway-error"}));
    let s = state(&gw, &[]);
    assert_eq!(
        s.would_retry_headers(StatusCode::INTERNAL_SERVER_ERROR, &h),
        Decision::No
    );
    assert_eq!(
        s.would_retry_headers(StatusCode::GATEWAY_TIMEOUT, &h),
        Decision::Backoff
    );
    let r4 = policy(json!({"retry_on": "retriable-4xx"}));
    let s = state(&r4, &[]);
    assert_eq!(
        s.would_retry_headers(StatusCode::CONFLICT, &h),
        Decision::Backoff
    );
    assert_eq!(
        s.would_retry_headers(StatusCode::BAD_REQUEST, &h),
        Decision::No
    );
    let codes =
        policy(json!({"retry_on": "retriable-status-codes", "retriable_status_codes": [418]}));
    let s = state(&codes, &[("x-envoy-retriable-status-codes", "429, 451")]);
    assert_eq!(
        s.would_retry_headers(StatusCode::IM_A_TEAPOT, &h),
        Decision::Backoff
    );
    assert_eq!(
        s.would_retry_headers(StatusCode::TOO_MANY_REQUESTS, &h),
        Decision::Backoff
    );
    assert_eq!(
        s.would_retry_headers(StatusCode::SERVICE_UNAVAILABLE, &h),
        Decision::No
    );
}

#[test]
fn ratelimited_responses_only_with_envoy_ratelimited() {
    let p = policy(json!({"retry_on": "5xx"}));
    let mut h = HeaderMap::new();
    h.insert("x-envoy-ratelimited", HeaderValue::from_static("true"));
    assert_eq!(
        state(&p, &[]).would_retry_headers(StatusCode::SERVICE_UNAVAILABLE, &h),
        Decision::No
    );
    let p = policy(json!({"retry_on": "envoy-ratelimited"}));
    assert_eq!(
        state(&p, &[]).would_retry_headers(StatusCode::TOO_MANY_REQUESTS, &h),
        Decision::Backoff
    );
}

#[test]
fn grpc_codes_from_trailers_only_responses() {
    let p = policy(
        json!({"retry_on": "cancelled,deadline-exceeded,internal,resource-exhausted,unavailable"}),
    );
    let s = state(&p, &[]);
    for (code, want) in [
        ("1", Decision::Backoff),
        ("4", Decision::Backoff),
        ("8", Decision::Backoff),
        ("13", Decision::Backoff),
        ("14", Decision::Backoff),
        ("2", Decision::No),
        ("0", Decision::No),
    ] {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static(code));
        assert_eq!(
            s.would_retry_headers(StatusCode::OK, &h),
            want,
            "grpc-status {code}"
        );
    }
}

#[test]
fn reset_classification() {
    let cf = policy(json!({"retry_on": "connect-failure"}));
    let s = state(&cf, &[]);
    assert_eq!(
        s.would_retry_reset(ResetReason::ConnectionFailure, false),
        Decision::Backoff
    );
    assert_eq!(s.would_retry_reset(ResetReason::Remote, true), Decision::No);
    assert_eq!(
        s.would_retry_reset(ResetReason::LocalTimeout, true),
        Decision::No
    );
    let refused = policy(json!({"retry_on": "refused-stream"}));
    let s = state(&refused, &[]);
    assert_eq!(
        s.would_retry_reset(ResetReason::RefusedStream, true),
        Decision::Immediately
    );
    let fxx = policy(json!({"retry_on": "5xx"}));
    let s = state(&fxx, &[]);
    for r in [
        ResetReason::ConnectionFailure,
        ResetReason::Remote,
        ResetReason::RefusedStream,
        ResetReason::LocalTimeout,
    ] {
        assert_eq!(s.would_retry_reset(r, true), Decision::Backoff, "{r:?}");
    }
    assert_eq!(
        s.would_retry_reset(ResetReason::Overflow, false),
        Decision::No
    );
    let before = policy(json!({"retry_on": "reset-before-request"}));
    let s = state(&before, &[]);
    assert_eq!(
        s.would_retry_reset(ResetReason::Remote, false),
        Decision::Backoff
    );
    assert_eq!(s.would_retry_reset(ResetReason::Remote, true), Decision::No);
}

#[test]
fn headers_extend_and_are_consumed() {
    let mut h = HeaderMap::new();
    h.insert("x-envoy-retry-on", HeaderValue::from_static("5xx"));
    h.insert("x-envoy-max-retries", HeaderValue::from_static("4"));
    h.insert(
        "x-envoy-retry-grpc-on",
        HeaderValue::from_static("unavailable"),
    );
    h.insert(
        "x-envoy-retriable-header-names",
        HeaderValue::from_static("x-again"),
    );
    h.insert("x-keep", HeaderValue::from_static("1"));
    let s = RetryState::new(None, &mut h, |_| true).expect("headers enable retries");
    assert_eq!(h.len(), 1, "retry headers are removed: {h:?}");
    assert_eq!(s.remaining, 4);
    assert!(s.retry_on.contains(RetryOn::FIVE_XX));
    assert!(s.retry_on.contains(RetryOn::GRPC_UNAVAILABLE));
    let mut resp = HeaderMap::new();
    resp.insert("x-again", HeaderValue::from_static("1"));
    assert_eq!(
        s.would_retry_headers(StatusCode::OK, &resp),
        Decision::No,
        "needs retriable-headers"
    );
    let mut none = HeaderMap::new();
    none.insert("x-envoy-max-retries", HeaderValue::from_static("4"));
    assert!(RetryState::new(None, &mut none, |_| true).is_none());
    assert!(none.is_empty(), "consumed even without a policy");
}

#[test]
fn retriable_request_headers_gate_everything() {
    let p = policy(json!({
        "retry_on": "5xx",
        "retriable_request_headers": [{"name": ":method", "string_match": {"exact": "GET"}}],
    }));
    let mut h = HeaderMap::new();
    let s = RetryState::new(Some(&p), &mut h, |_| false).expect("state");
    assert_eq!(
        s.would_retry_headers(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new()),
        Decision::No
    );
}

#[test]
fn limits_overflow_and_backoff() {
    let p = policy(json!({"retry_on": "5xx", "num_retries": 3}));
    let c = cluster(1);
    let mut s = state(&p, &[]);
    // 25 ms base: the first backoff is in [0, 25), the second in [0, 50), ...
    assert_eq!(
        s.should_retry(Decision::Backoff, &c, &mut || 1_000_024),
        RetryStatus::Yes(Duration::from_millis(24))
    );
    assert_eq!(
        s.should_retry(Decision::Backoff, &c, &mut || 49),
        RetryStatus::Yes(Duration::from_millis(49)),
        "the previous retry's slot is released when its outcome is known"
    );
    // This request's retry in progress holds the only max_retries slot.
    let mut other = state(&p, &[]);
    assert_eq!(
        other.should_retry(Decision::Backoff, &c, &mut || 0),
        RetryStatus::NoOverflow
    );
    assert_eq!(
        s.should_retry(Decision::Immediately, &c, &mut || 7),
        RetryStatus::Yes(Duration::ZERO),
        "refused streams retry at once"
    );
    assert_eq!(
        s.should_retry(Decision::Backoff, &c, &mut || 0),
        RetryStatus::NoRetryLimitExceeded
    );
    assert_eq!(s.should_retry(Decision::No, &c, &mut || 0), RetryStatus::No);
    assert_eq!(c.stats().upstream_rq_retry.get(), 3);
    assert_eq!(c.stats().upstream_rq_retry_overflow.get(), 1);
}

#[test]
fn backoff_doubles_to_the_cap() {
    let p = policy(json!({"retry_on": "5xx", "num_retries": 10,
        "retry_back_off": {"base_interval": "0.01s", "max_interval": "0.05s"}}));
    let c = cluster(100);
    let mut s = state(&p, &[]);
    let ceilings: Vec<u64> = (0..5)
        .map(
            |_| match s.should_retry(Decision::Backoff, &c, &mut || u64::MAX) {
                RetryStatus::Yes(d) => d.as_millis() as u64 + 1,
                other => panic!("{other:?}"),
            },
        )
        .collect();
    // random % ceiling with random = u64::MAX gives ceiling - 1 for these powers of two
    // and 10/20/40/50: check the ceilings grow and stop at the cap.
    assert_eq!(ceilings[0], u64::MAX % 10 + 1);
    assert!(ceilings.iter().all(|c| *c <= 50), "{ceilings:?}");
    assert_eq!(*ceilings.last().expect("some"), u64::MAX % 50 + 1);
}
