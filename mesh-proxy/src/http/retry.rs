//! Retry state of one request, as Envoy's `RetryStateImpl`.
//!
//! Built from the route's (else the virtual host's) retry policy merged with the trusted
//! request headers `x-envoy-retry-on`, `x-envoy-retry-grpc-on`, `x-envoy-max-retries`,
//! `x-envoy-retriable-status-codes` and `x-envoy-retriable-header-names` (all removed
//! before the request goes upstream). Each failed attempt is classified (response
//! headers or reset reason); a retry then needs a retry left, a slot in the cluster's
//! `max_retries` circuit breaker (held until the retried attempt ends) and waits a fully
//! jittered exponential backoff (Envoy's 25 ms base, 10x cap by default).

use std::time::Duration;

use http::{HeaderMap, HeaderName, StatusCode};

use crate::{
    config::route::retry::{ResponseHeaderMatcher, RetryOn, RetryPolicy},
    http::route_select::{RequestView, header_matches},
    upstream::{Cluster, circuit_breaker::Guard},
};

pub static X_ENVOY_RETRY_ON: HeaderName = HeaderName::from_static("x-envoy-retry-on");
pub static X_ENVOY_RETRY_GRPC_ON: HeaderName = HeaderName::from_static("x-envoy-retry-grpc-on");
pub static X_ENVOY_MAX_RETRIES: HeaderName = HeaderName::from_static("x-envoy-max-retries");
pub static X_ENVOY_RETRIABLE_STATUS_CODES: HeaderName =
    HeaderName::from_static("x-envoy-retriable-status-codes");
pub static X_ENVOY_RETRIABLE_HEADER_NAMES: HeaderName =
    HeaderName::from_static("x-envoy-retriable-header-names");
pub static X_ENVOY_HEDGE_ON_PER_TRY_TIMEOUT: HeaderName =
    HeaderName::from_static("x-envoy-hedge-on-per-try-timeout");
pub static X_ENVOY_RATELIMITED: HeaderName = HeaderName::from_static("x-envoy-ratelimited");

/// Why an attempt ended without response headers (Envoy's `StreamResetReason`s that
/// matter for retries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// Connect refused, failed or timed out.
    ConnectionFailure,
    /// A circuit breaker refused the request (never retried).
    Overflow,
    /// HTTP/2 `REFUSED_STREAM` from the upstream.
    RefusedStream,
    /// The upstream reset or closed the stream or connection, or spoke garbage.
    Remote,
    /// We gave up on the attempt (per-try timeout).
    LocalTimeout,
}

/// Whether and how to retry an attempt's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    No,
    Backoff,
    /// Envoy retries refused streams without waiting.
    Immediately,
}

/// The outcome of asking to retry.
#[derive(Debug, PartialEq, Eq)]
pub enum RetryStatus {
    /// Retry after this delay.
    Yes(Duration),
    /// Not retriable.
    No,
    /// Retriable, but no retries left (flag `URX`).
    NoRetryLimitExceeded,
    /// Retriable, but the `max_retries` circuit breaker is open (flag `UO`).
    NoOverflow,
}

pub struct RetryState<'a> {
    retry_on: RetryOn,
    remaining: u32,
    policy: Option<&'a RetryPolicy>,
    extra_status_codes: Vec<u16>,
    extra_headers: Vec<ResponseHeaderMatcher>,
    /// The next backoff ceiling, doubled per retry up to `max_interval`.
    next_interval_ms: u64,
    max_interval_ms: u64,
    /// The `max_retries` slot of the retry in progress.
    guard: Option<Guard>,
    retried: bool,
}

impl std::fmt::Debug for RetryState<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryState")
            .field("retry_on", &self.retry_on)
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

/// Removes the retry headers from the request (Envoy consumes them even when it does
/// not retry), returning their values.
#[derive(Default)]
struct RetryHeaders {
    retry_on: Option<String>,
    grpc_on: Option<String>,
    max: Option<String>,
    codes: Option<String>,
    names: Option<String>,
}

fn take(headers: &mut HeaderMap, name: &HeaderName) -> Option<String> {
    headers
        .remove(name)
        .and_then(|v| v.to_str().ok().map(str::to_string))
}

impl RetryHeaders {
    fn take(headers: &mut HeaderMap) -> Self {
        if !super::request_headers::has_envoy_headers(headers) {
            return RetryHeaders::default();
        }
        let h = RetryHeaders {
            retry_on: take(headers, &X_ENVOY_RETRY_ON),
            grpc_on: take(headers, &X_ENVOY_RETRY_GRPC_ON),
            max: take(headers, &X_ENVOY_MAX_RETRIES),
            codes: take(headers, &X_ENVOY_RETRIABLE_STATUS_CODES),
            names: take(headers, &X_ENVOY_RETRIABLE_HEADER_NAMES),
        };
        headers.remove(&X_ENVOY_HEDGE_ON_PER_TRY_TIMEOUT);
        h
    }
}

impl<'a> RetryState<'a> {
    /// The retry state of a request, or `None` when it can never be retried.
    /// `view` is the request as received (for `retriable_request_headers`); the retry
    /// headers are taken out of `headers`.
    pub fn new(
        policy: Option<&'a RetryPolicy>,
        headers: &mut HeaderMap,
        view: impl FnOnce(&HeaderMap) -> bool,
    ) -> Option<Self> {
        let h = RetryHeaders::take(headers);
        if h.retry_on.is_none()
            && h.grpc_on.is_none()
            && policy.is_none_or(|p| p.retry_on.is_empty())
        {
            return None;
        }
        let mut retry_on = policy.map_or(RetryOn::NONE, |p| p.retry_on);
        if let Some(v) = &h.retry_on {
            retry_on |= RetryOn::parse_http_header(v);
        }
        if let Some(v) = &h.grpc_on {
            retry_on |= RetryOn::parse_grpc_header(v);
        }
        if policy.is_some_and(|p| !p.retriable_request_headers.is_empty()) && !view(headers) {
            retry_on = RetryOn::NONE;
        }
        let mut remaining = policy.map_or(1, |p| p.num_retries);
        if !retry_on.is_empty()
            && let Some(n) = h.max.as_deref().and_then(|v| v.trim().parse::<u32>().ok())
        {
            remaining = n;
        }
        let extra_status_codes = h
            .codes
            .as_deref()
            .map(|v| {
                v.split(',')
                    .filter_map(|c| c.trim().parse::<u16>().ok())
                    .collect()
            })
            .unwrap_or_default();
        let extra_headers = h
            .names
            .as_deref()
            .map(|v| {
                v.split(',')
                    .filter_map(|n| {
                        HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes()).ok()
                    })
                    .map(ResponseHeaderMatcher::present)
                    .collect()
            })
            .unwrap_or_default();
        let base = policy.map_or(crate::config::route::retry::DEFAULT_BASE_INTERVAL, |p| {
            p.base_interval
        });
        let max = policy.map_or(base * 10, |p| p.max_interval);
        Some(RetryState {
            retry_on,
            remaining,
            policy,
            extra_status_codes,
            extra_headers,
            next_interval_ms: (base.as_millis() as u64).max(1),
            max_interval_ms: (max.as_millis() as u64).max(1),
            guard: None,
            retried: false,
        })
    }

    /// Whether `retriable_request_headers` match a request (used by [`Self::new`]).
    pub fn request_matches(policy: &RetryPolicy, req: &RequestView<'_>) -> bool {
        policy
            .retriable_request_headers
            .iter()
            .any(|m| header_matches(m, req))
    }

    pub fn avoid_previous_hosts(&self) -> bool {
        self.policy.is_some_and(|p| p.avoid_previous_hosts)
    }

    pub fn host_selection_attempts(&self) -> u32 {
        self.policy
            .map_or(1, |p| p.host_selection_retry_max_attempts)
    }

    /// Whether a retry has been made (the reset body says "retried and the latest").
    pub fn retried(&self) -> bool {
        self.retried
    }

    /// Envoy's `wouldRetryFromHeaders`.
    pub fn would_retry_headers(&self, status: StatusCode, headers: &HeaderMap) -> Decision {
        let on = self.retry_on;
        if headers.contains_key(&X_ENVOY_RATELIMITED) {
            return if on.contains(RetryOn::ENVOY_RATE_LIMITED) {
                Decision::Backoff
            } else {
                Decision::No
            };
        }
        let s = status.as_u16();
        let retry = (on.contains(RetryOn::FIVE_XX) && status.is_server_error())
            || (on.contains(RetryOn::GATEWAY_ERROR) && matches!(s, 502..=504))
            || (on.contains(RetryOn::RETRIABLE_4XX) && s == 409)
            || (on.contains(RetryOn::RETRIABLE_STATUS_CODES)
                && (self
                    .policy
                    .is_some_and(|p| p.retriable_status_codes.contains(&s))
                    || self.extra_status_codes.contains(&s)))
            || (on.contains(RetryOn::RETRIABLE_HEADERS)
                && self
                    .policy
                    .map_or(&[][..], |p| &p.retriable_headers[..])
                    .iter()
                    .chain(&self.extra_headers)
                    .any(|m| m.matches(status, headers)))
            || (on.contains(RetryOn::GRPC_ANY) && grpc_retriable(on, headers));
        if retry {
            Decision::Backoff
        } else {
            Decision::No
        }
    }

    /// Envoy's `wouldRetryFromReset`. `started`: the request reached the upstream.
    pub fn would_retry_reset(&self, reason: ResetReason, started: bool) -> Decision {
        let on = self.retry_on;
        match reason {
            ResetReason::Overflow => return Decision::No,
            ResetReason::ConnectionFailure if on.contains(RetryOn::CONNECT_FAILURE) => {
                return Decision::Backoff;
            }
            _ => {}
        }
        if on.contains(RetryOn::RESET_BEFORE_REQUEST) && !started {
            return Decision::Backoff;
        }
        if on.contains(RetryOn::FIVE_XX)
            || on.contains(RetryOn::GATEWAY_ERROR)
            || on.contains(RetryOn::RESET)
        {
            return Decision::Backoff;
        }
        if on.contains(RetryOn::REFUSED_STREAM) && reason == ResetReason::RefusedStream {
            return Decision::Immediately;
        }
        Decision::No
    }

    /// Envoy's `shouldRetry`: spends a retry, takes a `max_retries` slot (released when
    /// the next attempt's outcome is known) and draws the backoff.
    pub fn should_retry(
        &mut self,
        decision: Decision,
        cluster: &Cluster,
        random: &mut dyn FnMut() -> u64,
    ) -> RetryStatus {
        self.guard = None;
        if decision == Decision::No {
            return RetryStatus::No;
        }
        if self.remaining == 0 {
            return RetryStatus::NoRetryLimitExceeded;
        }
        self.remaining -= 1;
        let Some(guard) = cluster.circuit_breakers().try_acquire_retry() else {
            cluster.stats().upstream_rq_retry_overflow.inc();
            return RetryStatus::NoOverflow;
        };
        self.guard = Some(guard);
        self.retried = true;
        cluster.stats().upstream_rq_retry.inc();
        RetryStatus::Yes(match decision {
            Decision::Immediately => Duration::ZERO,
            _ => self.next_backoff(random()),
        })
    }

    /// Envoy's `JitteredExponentialBackOffStrategy::nextBackOffMs`.
    fn next_backoff(&mut self, random: u64) -> Duration {
        let ceiling = self.next_interval_ms;
        self.next_interval_ms = if self.next_interval_ms > self.max_interval_ms / 2 {
            self.max_interval_ms
        } else {
            self.next_interval_ms * 2
        };
        Duration::from_millis((random % ceiling).min(self.max_interval_ms))
    }

    /// Releases the `max_retries` slot (the request is over).
    pub fn finish(&mut self) {
        self.guard = None;
    }
}

/// Trailers-only gRPC responses carry `grpc-status` in the headers.
fn grpc_retriable(on: RetryOn, headers: &HeaderMap) -> bool {
    let Some(code) = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok()?.trim().parse::<u32>().ok())
    else {
        return false;
    };
    let want = match code {
        1 => RetryOn::GRPC_CANCELLED,
        4 => RetryOn::GRPC_DEADLINE_EXCEEDED,
        8 => RetryOn::GRPC_RESOURCE_EXHAUSTED,
        13 => RetryOn::GRPC_INTERNAL,
        14 => RetryOn::GRPC_UNAVAILABLE,
        _ => return false,
    };
    on.contains(want)
}

#[cfg(test)]
mod tests;
