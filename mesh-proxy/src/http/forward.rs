//! The router's upstream side for one request: request header mutations and rewrites,
//! timeouts, the retry loop (host selection avoiding previous hosts, per-try timeouts,
//! backoff, replay of the buffered body), mirrors, and the response (or Envoy's local
//! reply for each way an upstream request can fail).

use std::{net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use http::{
    HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version, header,
    request::Parts, uri::PathAndQuery,
};
use http_body::Body as _;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::{
    body::{ResponseBody, Source, StreamTimers, UpstreamBody},
    format::{FormatCtx, authority},
    mirror,
    pool::{ConnectSettings, Connector, Guard, HostPool, PoolResponse, Protocol, UpstreamError},
    request_body::{BufferedBody, DEFAULT_BUFFER_LIMIT, RequestProgress},
    request_headers::{
        self as rh, X_ENVOY_ATTEMPT_COUNT, X_ENVOY_ORIGINAL_PATH, X_ENVOY_UPSTREAM_SERVICE_TIME,
        X_FORWARDED_HOST,
    },
    retry::{Decision, ResetReason, RetryState, RetryStatus},
    route_select::RequestView,
    router::{State, pq_of, set_host, set_path, stream_idle},
    stream_info::ResponseFlags,
    timeout::{self, Timeouts},
};
use crate::{
    config::{
        cluster::{Discovery, UpstreamProtocol},
        route::VirtualHost,
        route_action::{ClusterSpecifier, HashPolicyKind, HostRewrite, RouteAction},
    },
    upstream::{Cluster, ConnectError, Host, LbContext, Outcome},
};

pub static X_ENVOY_IS_TIMEOUT_RETRY: HeaderName =
    HeaderName::from_static("x-envoy-is-timeout-retry");

/// Picks the route's cluster: a name, a request header, or a weighted choice (returned
/// with its index so its per-cluster config applies).
pub(super) fn choose_cluster(
    action: &RouteAction,
    parts: &Parts,
    remote: SocketAddr,
    random: u64,
) -> (Option<Arc<str>>, Option<usize>) {
    match &action.cluster {
        ClusterSpecifier::Cluster(c) => (Some(c.clone()), None),
        ClusterSpecifier::Header(h) => (
            parts
                .headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .filter(|c| !c.is_empty())
                .map(Arc::from),
            None,
        ),
        ClusterSpecifier::Weighted(w) => {
            let r = if let Some(h) = &w.random_header {
                parts
                    .headers
                    .get(h)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(random)
            } else if w.use_hash_policy {
                hash_key(action, parts, remote, None).unwrap_or(random)
            } else {
                random
            };
            let entry = w.pick(r);
            let idx = w.clusters.iter().position(|c| std::ptr::eq(c, entry));
            let name = match &entry.header {
                Some(h) => parts
                    .headers
                    .get(h)
                    .and_then(|v| v.to_str().ok())
                    .map(Arc::from),
                None => Some(entry.name.clone()),
            };
            (name, idx)
        }
    }
}

/// How one attempt ended.
enum Attempt {
    Response(Box<PoolResponse>),
    Failed(UpstreamError),
    /// The per-try timeout (or per-try idle timeout) fired.
    PerTryTimeout(&'static str),
    /// The route timeout fired.
    GlobalTimeout,
    /// Nothing moved on the stream for the stream idle timeout.
    StreamIdle,
}

/// Decrements the cluster's `upstream_rq_active` when dropped (requests in flight).
pub(super) struct ActiveRequest(crate::stats::ClusterStats);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.upstream_rq_active.dec();
    }
}

/// Forwards a request along a route.
pub(super) async fn forward(
    st: &mut State,
    mut parts: Parts,
    body: Incoming,
    action: &RouteAction,
    vhost: &VirtualHost,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<ResponseBody> {
    let cx = st.cx.clone();
    let hcm = cx.hcm.clone();
    let suppress = hcm.router.suppress_envoy_headers;
    let Some(routed) = st.routed.as_ref() else {
        return st.local(
            &parts,
            StatusCode::NOT_FOUND,
            "",
            "route_not_found",
            ResponseFlags::NO_ROUTE_FOUND,
        );
    };
    let matched_len = routed.matched_len;
    let route_buffer_limit = routed.route().buffer_limit;
    let rc_mirrors = routed.rc.request_mirror_policies.clone();
    let Some(cluster_name) = routed.cluster.clone() else {
        return st.local(
            &parts,
            action.cluster_not_found_response_code,
            "",
            "cluster_not_found",
            ResponseFlags::NO_CLUSTER_FOUND,
        );
    };
    st.info.upstream_cluster = Some(cluster_name.clone());

    // Request header mutations (computed against the request as received), then host
    // and path rewrites, as Envoy's finalizeRequestHeaders.
    if let Some(routed) = &st.routed {
        let levels = routed.levels(false);
        if levels.iter().flatten().any(|m| m.needs_context()) {
            let snapshot = parts.headers.clone();
            let ctx = FormatCtx {
                method: &parts.method,
                uri: &parts.uri,
                req_headers: &snapshot,
                resp_headers: None,
                resp_trailers: None,
                info: &st.info,
            };
            for m in levels.iter().flatten() {
                m.apply(&mut parts.headers, Some(&ctx));
            }
        } else {
            for m in levels.iter().flatten() {
                m.apply(&mut parts.headers, None);
            }
        }
    }
    let weighted_host = st
        .routed
        .as_ref()
        .and_then(|r| r.weighted())
        .and_then(|w| w.host_rewrite.clone());
    let new_host = match (&weighted_host, &action.host_rewrite) {
        (Some(h), _) => Some(h.clone()),
        (None, Some(HostRewrite::Literal(h))) => Some(h.clone()),
        (None, Some(HostRewrite::Header(h))) => parts
            .headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        (None, Some(HostRewrite::PathRegex(rx))) => Some(rx.apply(parts.uri.path())),
        (None, Some(HostRewrite::Auto)) | (None, None) => None,
    };
    if let Some(h) = &new_host {
        let old_host = authority(&parts.uri, &parts.headers).map(str::to_string);
        set_host(&mut parts, h);
        if action.append_x_forwarded_host
            && let Some(old) = old_host
                .as_deref()
                .and_then(|o| HeaderValue::from_str(o).ok())
        {
            parts.headers.append(&X_FORWARDED_HOST, old);
        }
    }
    let new_path = if let Some(prefix) = &action.prefix_rewrite {
        let path = parts.uri.path();
        let rest = path.get(matched_len..).unwrap_or("");
        let q = parts
            .uri
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        Some(format!("{prefix}{rest}{q}"))
    } else {
        action.regex_rewrite.as_ref().map(|rx| {
            let q = parts
                .uri
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            format!("{}{q}", rx.apply(parts.uri.path()))
        })
    };
    if let Some(p) = new_path {
        let p = if p.starts_with('/') {
            p
        } else {
            format!("/{p}")
        };
        if let Ok(pq) = PathAndQuery::try_from(p) {
            // The path as received: mutations and the host rewrite leave it alone.
            if !suppress && let Ok(v) = HeaderValue::from_str(&pq_of(&parts)) {
                parts.headers.insert(&X_ENVOY_ORIGINAL_PATH, v);
            }
            set_path(&mut parts, pq);
        }
    }

    // Timeouts and retries (both read and consume their x-envoy-* request headers).
    let policy = action.retry_policy.as_ref().or(vhost.retry_policy.as_ref());
    let mut t = timeout::final_timeout(
        action,
        policy.and_then(|p| p.per_try_timeout),
        policy.and_then(|p| p.per_try_idle_timeout),
        &mut parts.headers,
        st.grpc,
        hcm.router.respect_expected_rq_timeout,
    );
    let mut retry = if on_upgrade.is_some() {
        None
    } else {
        let (method, uri) = (&parts.method, &parts.uri);
        RetryState::new(policy, &mut parts.headers, |h| {
            policy.is_some_and(|p| {
                RetryState::request_matches(
                    p,
                    &RequestView {
                        method,
                        uri,
                        headers: h,
                        authority: authority(uri, h).unwrap_or(""),
                        scheme: "http",
                        random: 0,
                    },
                )
            })
        })
    };
    if on_upgrade.is_some() {
        // Upgraded streams are long-lived; Envoy does not time them out as requests.
        t = Timeouts::default();
    }

    // Cluster and host.
    let Some(cluster) = cx.rt.clusters.get(&cluster_name) else {
        return st.local(
            &parts,
            action.cluster_not_found_response_code,
            "",
            "cluster_not_found",
            ResponseFlags::NO_CLUSTER_FOUND,
        );
    };
    let stats = cluster.stats();
    let Some(rq_guard) = cluster.circuit_breakers().try_acquire_request() else {
        stats.upstream_rq_overflow.inc();
        return st.local(
            &parts,
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect error or disconnect/reset before headers. reset reason: overflow",
            "upstream_reset_before_response_started{overflow}",
            ResponseFlags::UPSTREAM_OVERFLOW,
        );
    };
    st.held.request_slot = Some(rq_guard);
    stats.upstream_rq_total.inc();
    stats.upstream_rq_active.inc();
    st.held.cluster_active = Some(ActiveRequest(stats.clone()));

    let original_dst = match &cluster.config().discovery {
        Discovery::OriginalDst {
            use_http_header: true,
            http_header_name,
            ..
        } => parts
            .headers
            .get(http_header_name.as_str())
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .or(cx.original_dst),
        _ => cx.original_dst,
    };
    let hash = hash_key(
        action,
        &parts,
        st.info.downstream_remote,
        Some((cx.peer, cx.local, &mut st.set_cookies)),
    );
    let protocol = if on_upgrade.is_some() {
        Protocol::Http1
    } else {
        upstream_protocol(&cluster, parts.version)
    };
    let settings = connect_settings(&cluster);
    let up_version = match protocol {
        Protocol::Http1 => Version::HTTP_11,
        Protocol::Http2 => Version::HTTP_2,
    };

    // The request body: shared and kept (up to the buffer limit) when a retry or a
    // mirror may need it again, else streamed straight through.
    let progress = RequestProgress::new();
    let has_body = !body.is_end_stream();
    if !has_body {
        progress.finish();
    }
    let mirrors = mirror::select(
        &action.request_mirror_policies,
        &vhost.request_mirror_policies,
        &rc_mirrors,
        &parts.headers,
    );
    let limit = route_buffer_limit
        .or(vhost.buffer_limit)
        .unwrap_or(DEFAULT_BUFFER_LIMIT);
    let (mut first_body, buffered) = if !has_body {
        (Some(UpstreamBody::empty()), None)
    } else if retry.is_some() || !mirrors.is_empty() {
        let b = BufferedBody::new(body, limit, progress.clone());
        (
            Some(UpstreamBody::Replay {
                body: b.reader(true),
            }),
            Some(b),
        )
    } else {
        (
            Some(UpstreamBody::Incoming {
                body,
                progress: Some(progress.clone()),
            }),
            None,
        )
    };

    let include_attempts = vhost.include_request_attempt_count;
    st.attempt_count_header = vhost.include_attempt_count_in_response;
    let idle = stream_idle(&hcm, action.idle_timeout);
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut tried_priorities: Vec<u32> = Vec::new();
    let mut attempt: u32 = 0;
    let mut timeout_retry = false;
    let mut rand = || rand::random::<u64>();
    loop {
        attempt += 1;
        let avoid = retry.as_ref().is_some_and(RetryState::avoid_previous_hosts);
        let attempts = retry
            .as_ref()
            .map_or(1, RetryState::host_selection_attempts);
        let excluded = match policy.and_then(|p| p.previous_priorities) {
            Some(f) if retry.is_some() => excluded_priorities(&tried_priorities, attempt, f),
            _ => Vec::new(),
        };
        let Some(host) = pick(
            &cluster,
            hash,
            original_dst,
            &tried,
            avoid,
            attempts,
            &excluded,
        ) else {
            stats.upstream_cx_none_healthy.inc();
            return st.local(
                &parts,
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream",
                "no_healthy_upstream",
                ResponseFlags::NO_HEALTHY_UPSTREAM,
            );
        };
        st.info.attempt_count = attempt;
        st.info.upstream_host = Some(host.addr);
        if retry.is_some() {
            tried_priorities.push(host.priority);
        }
        let host_guard = host.request_guard();
        // Retries tell the upstream what is left of the route timeout.
        let elapsed = match progress.done_at() {
            Some(d) if attempt > 1 => Instant::now().saturating_duration_since(d),
            _ => Duration::ZERO,
        };
        timeout::set_timeout_headers(&t, elapsed, action, &mut parts.headers, !suppress, st.grpc);
        if timeout_retry && vhost.include_is_timeout_retry_header {
            parts
                .headers
                .insert(&X_ENVOY_IS_TIMEOUT_RETRY, HeaderValue::from_static("true"));
        }
        let auto_host = matches!(action.host_rewrite, Some(HostRewrite::Auto));
        let mut up = build_upstream_request(
            &parts,
            up_version,
            &host,
            auto_host,
            attempt,
            include_attempts,
        );
        *up.body_mut() = match first_body.take() {
            Some(b) => b,
            None => match &buffered {
                Some(b) => UpstreamBody::Replay {
                    body: b.reader(true),
                },
                None => UpstreamBody::empty(),
            },
        };
        if attempt == 1 && !mirrors.is_empty() {
            mirror::spawn_all(
                &cx.rt,
                &mirrors,
                &parts,
                buffered.as_ref(),
                t.global,
                hash,
                original_dst,
            );
        }
        let pool = pool_for(&host, protocol);
        let connector = ClusterConnector {
            cluster: &cluster,
            host: &host,
        };
        let started = Instant::now();

        if let Some(on_up) = on_upgrade {
            // Boxed: the upgrade path is rare and its state would otherwise size every
            // request's future.
            return Box::pin(upgrade(
                st, &parts, pool, up, &connector, &settings, on_up, host_guard,
            ))
            .await;
        }

        // Pinned here and lent to the timers, so that the forward future holds the send
        // future once instead of once per async layer.
        let send = std::pin::pin!(pool.send(up, &connector, &settings));
        let outcome = run_attempt(send, &t, &progress, started, idle).await;
        // The next attempt may not replay a body that outgrew the buffer.
        let can_retry = buffered.as_ref().is_none_or(|b| !b.overflowed());
        match outcome {
            Attempt::Response(r) => {
                let PoolResponse {
                    response,
                    upstream_local,
                } = *r;
                host.report(Outcome::Status(outlier_status(
                    response.status(),
                    response.headers(),
                )));
                if let Some(rs) = retry.as_mut() {
                    let d = rs.would_retry_headers(response.status(), response.headers());
                    let d = if can_retry { d } else { Decision::No };
                    match rs.should_retry(d, &cluster, &mut rand) {
                        RetryStatus::Yes(delay) => {
                            drop(response);
                            tried.push(host.addr);
                            timeout_retry = false;
                            if backoff(delay, &t, &progress).await {
                                continue;
                            }
                            return global_timeout(st, &parts);
                        }
                        RetryStatus::NoRetryLimitExceeded => st
                            .info
                            .response_flags
                            .insert(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED),
                        RetryStatus::NoOverflow => st
                            .info
                            .response_flags
                            .insert(ResponseFlags::UPSTREAM_OVERFLOW),
                        RetryStatus::No => {}
                    }
                    rs.finish();
                }
                st.info.upstream_local = upstream_local;
                st.held.host_active = Some(host_guard);
                return respond(st, &parts, response, started, &t, &progress, idle, vhost);
            }
            Attempt::Failed(e) => {
                tried.push(host.addr);
                let reason = reset_reason(&e);
                // Connect results are the cluster's to report; a reset after it is ours.
                if matches!(reason, ResetReason::Remote | ResetReason::RefusedStream) {
                    host.report(Outcome::ConnectFailed);
                }
                if let Some(rs) = retry.as_mut() {
                    let d = rs.would_retry_reset(reason, !e.is_connect_failure());
                    let d = if can_retry { d } else { Decision::No };
                    match rs.should_retry(d, &cluster, &mut rand) {
                        RetryStatus::Yes(delay) => {
                            timeout_retry = false;
                            if backoff(delay, &t, &progress).await {
                                continue;
                            }
                            return global_timeout(st, &parts);
                        }
                        RetryStatus::NoRetryLimitExceeded => st
                            .info
                            .response_flags
                            .insert(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED),
                        RetryStatus::NoOverflow => st
                            .info
                            .response_flags
                            .insert(ResponseFlags::UPSTREAM_OVERFLOW),
                        RetryStatus::No => {}
                    }
                }
                let retried = retry.as_ref().is_some_and(RetryState::retried);
                return upstream_failure(st, &parts, e, retried);
            }
            Attempt::PerTryTimeout(details) => {
                tried.push(host.addr);
                host.report(Outcome::Timeout);
                if let Some(rs) = retry.as_mut() {
                    let d = rs.would_retry_reset(ResetReason::LocalTimeout, true);
                    let d = if can_retry { d } else { Decision::No };
                    match rs.should_retry(d, &cluster, &mut rand) {
                        RetryStatus::Yes(delay) => {
                            timeout_retry = true;
                            if backoff(delay, &t, &progress).await {
                                continue;
                            }
                            return global_timeout(st, &parts);
                        }
                        RetryStatus::NoRetryLimitExceeded => st
                            .info
                            .response_flags
                            .insert(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED),
                        RetryStatus::NoOverflow => st
                            .info
                            .response_flags
                            .insert(ResponseFlags::UPSTREAM_OVERFLOW),
                        RetryStatus::No => {}
                    }
                }
                return st.local(
                    &parts,
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream request timeout",
                    details,
                    ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
                );
            }
            Attempt::GlobalTimeout => {
                host.report(Outcome::Timeout);
                return global_timeout(st, &parts);
            }
            Attempt::StreamIdle => {
                return st.local(
                    &parts,
                    StatusCode::REQUEST_TIMEOUT,
                    "stream timeout",
                    "stream_idle_timeout",
                    ResponseFlags::STREAM_IDLE_TIMEOUT,
                );
            }
        }
    }
}

fn global_timeout(st: &mut State, parts: &Parts) -> Response<ResponseBody> {
    st.local(
        parts,
        StatusCode::GATEWAY_TIMEOUT,
        "upstream request timeout",
        "upstream_response_timeout",
        ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
    )
}

/// The route timeout's deadline: it runs from the end of the request.
async fn global_deadline(t: &Timeouts, progress: &RequestProgress) {
    match t.global {
        Some(g) => {
            let done = progress.wait_done().await;
            tokio::time::sleep_until(done + g).await;
        }
        None => std::future::pending().await,
    }
}

/// Waits out a retry backoff; false when the route timeout fired first.
async fn backoff(delay: Duration, t: &Timeouts, progress: &RequestProgress) -> bool {
    if delay.is_zero() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = global_deadline(t, progress) => false,
    }
}

/// Sends one attempt under its timers: the per-try timeout (from the later of the
/// attempt's start and the end of the request), the per-try idle timeout, the route
/// timeout and the stream idle timeout.
async fn run_attempt(
    send: Pin<&mut impl std::future::Future<Output = Result<PoolResponse, UpstreamError>>>,
    t: &Timeouts,
    progress: &RequestProgress,
    started: Instant,
    idle: Option<Duration>,
) -> Attempt {
    let per_try = async {
        match t.per_try {
            Some(p) => {
                let done = progress.wait_done().await;
                tokio::time::sleep_until(done.max(started) + p).await;
            }
            None => std::future::pending().await,
        }
    };
    let per_try_idle = async {
        match t.per_try_idle {
            Some(p) => tokio::time::sleep_until(started + p).await,
            None => std::future::pending().await,
        }
    };
    let stream_idle = async {
        match idle {
            Some(i) => loop {
                let last = progress.last_activity().max(started);
                tokio::time::sleep_until(last + i).await;
                if Instant::now() >= progress.last_activity().max(started) + i {
                    break;
                }
            },
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        r = send => match r {
            Ok(r) => Attempt::Response(Box::new(r)),
            Err(e) => Attempt::Failed(e),
        },
        _ = global_deadline(t, progress) => Attempt::GlobalTimeout,
        _ = per_try => Attempt::PerTryTimeout("upstream_per_try_timeout"),
        _ = per_try_idle => Attempt::PerTryTimeout("upstream_per_try_idle_timeout"),
        _ = stream_idle => Attempt::StreamIdle,
    }
}

fn reset_reason(e: &UpstreamError) -> ResetReason {
    match e {
        UpstreamError::Connect(_) | UpstreamError::ConnectTimeout => ResetReason::ConnectionFailure,
        UpstreamError::Overflow | UpstreamError::PendingOverflow => ResetReason::Overflow,
        UpstreamError::Reset(_) if e.is_refused_stream() => ResetReason::RefusedStream,
        UpstreamError::Reset(_) | UpstreamError::Protocol(_) => ResetReason::Remote,
    }
}

/// Picks a host, re-picking up to `attempts` times to avoid hosts already tried (the
/// `previous_hosts` predicate with `host_selection_retry_max_attempts`). With
/// `excluded` priorities (the `previous_priorities` retry priority), a host of an
/// excluded priority is replaced by one of the first priority left that has healthy
/// hosts (not tried, when possible); when every priority is excluded the normal pick
/// stands, as Envoy falls back to the unmodified load.
fn pick(
    cluster: &Cluster,
    hash: Option<u64>,
    original_dst: Option<SocketAddr>,
    tried: &[SocketAddr],
    avoid: bool,
    attempts: u32,
    excluded: &[u32],
) -> Option<Arc<Host>> {
    let ctx = LbContext {
        hash,
        avoid: if avoid { tried } else { &[] },
        original_dst,
    };
    let mut host = cluster.pick(&ctx)?;
    let mut n = 1;
    while avoid && n < attempts && tried.contains(&host.addr) {
        host = cluster.pick(&ctx)?;
        n += 1;
    }
    if !excluded.is_empty() && excluded.contains(&host.priority) {
        let set = cluster.hosts();
        let level = set
            .hosts
            .iter()
            .filter(|h| !excluded.contains(&h.priority) && h.is_healthy())
            .map(|h| h.priority)
            .min();
        if let Some(p) = level {
            let candidates: Vec<&Arc<Host>> = set
                .hosts
                .iter()
                .filter(|h| h.priority == p && h.is_healthy())
                .collect();
            let fresh: Vec<&Arc<Host>> = candidates
                .iter()
                .copied()
                .filter(|h| !avoid || !tried.contains(&h.addr))
                .collect();
            let r = hash.unwrap_or_else(rand::random) as usize;
            let from = if fresh.is_empty() {
                &candidates
            } else {
                &fresh
            };
            host = from[r % from.len()].clone();
        }
    }
    Some(host)
}

/// Envoy's `PreviousPrioritiesRetryPriority`: attempt `attempt` (1-based) excludes the
/// priorities of the attempts before the last multiple of `update_frequency`.
fn excluded_priorities(tried: &[u32], attempt: u32, update_frequency: u32) -> Vec<u32> {
    let counted = (attempt.saturating_sub(1) / update_frequency * update_frequency) as usize;
    let mut out: Vec<u32> = tried.iter().take(counted).copied().collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The status outlier detection sees: trailers-only gRPC responses count by their
/// `grpc-status` mapped to HTTP (Envoy's `grpcToHttpStatus`).
fn outlier_status(status: StatusCode, headers: &HeaderMap) -> u16 {
    let grpc = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok()?.trim().parse::<u32>().ok());
    match grpc {
        None => status.as_u16(),
        Some(code) => match code {
            0 => 200,
            1 => 499,
            3 | 9 | 11 => 400,
            4 => 504,
            5 => 404,
            6 | 10 => 409,
            7 => 403,
            8 => 429,
            12 => 501,
            14 => 503,
            16 => 401,
            _ => 500,
        },
    }
}

/// The upstream form of a request (`auto_host`: `auto_host_rewrite` to the host's
/// hostname).
pub(super) fn build_upstream_request(
    parts: &Parts,
    version: Version,
    host: &Host,
    auto_host: bool,
    attempt: u32,
    include_attempts: bool,
) -> Request<UpstreamBody> {
    let mut headers = parts.headers.clone();
    let mut host_value = headers.get(header::HOST).cloned();
    if auto_host
        && !host.hostname.is_empty()
        && let Ok(v) = HeaderValue::from_str(&host.hostname)
    {
        headers.insert(header::HOST, v.clone());
        host_value = Some(v);
    }
    if include_attempts {
        headers.insert(&X_ENVOY_ATTEMPT_COUNT, number_value(u64::from(attempt)));
    }
    let pq = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let uri = match version {
        Version::HTTP_2 => {
            let auth = host_value
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            headers.remove(header::HOST);
            Uri::builder()
                .scheme("http")
                .authority(if auth.is_empty() {
                    host.addr.to_string()
                } else {
                    auth.to_string()
                })
                .path_and_query(pq)
                .build()
        }
        _ => Uri::builder().path_and_query(pq).build(),
    };
    let mut req = Request::new(UpstreamBody::empty());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri.unwrap_or_default();
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    req
}

/// A small number as a header value (attempt counts, upstream service times in ms):
/// the common ones are static, so that most requests allocate no value for them.
pub(super) fn number_value(n: u64) -> HeaderValue {
    const SMALL: [&str; 32] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
        "17", "18", "19", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31",
    ];
    match SMALL.get(n as usize) {
        Some(v) => HeaderValue::from_static(v),
        None => HeaderValue::from(n),
    }
}

#[allow(clippy::too_many_arguments)]
fn respond(
    st: &mut State,
    parts: &Parts,
    response: Response<super::pool::PooledBody>,
    started: Instant,
    t: &Timeouts,
    progress: &RequestProgress,
    idle: Option<Duration>,
    vhost: &VirtualHost,
) -> Response<ResponseBody> {
    let (mut rparts, body) = response.into_parts();
    rh::strip_response_hop_by_hop(&mut rparts.headers, false);
    if !st.cx.hcm.router.suppress_envoy_headers {
        let ms = started.elapsed().as_millis() as u64;
        rparts
            .headers
            .insert(&X_ENVOY_UPSTREAM_SERVICE_TIME, number_value(ms));
    }
    if vhost.include_attempt_count_in_response {
        rparts.headers.insert(
            &X_ENVOY_ATTEMPT_COUNT,
            number_value(u64::from(st.info.attempt_count)),
        );
    }
    for c in st.set_cookies.drain(..) {
        rparts.headers.append(header::SET_COOKIE, c);
    }
    rparts.version = Version::HTTP_11;
    st.info.response_code_details = "via_upstream";
    // The route timeout keeps running until the response is complete.
    let deadline = t
        .global
        .map(|g| progress.done_at().unwrap_or_else(Instant::now) + g);
    let body = ResponseBody::new(Source::Upstream(body)).with_stream_timers(StreamTimers {
        idle,
        upstream_idle: t.per_try_idle,
        deadline,
        stream_deadline: st.stream_deadline,
    });
    st.finish(parts, Response::from_parts(rparts, body))
}

fn upstream_failure(
    st: &mut State,
    parts: &Parts,
    e: UpstreamError,
    retried: bool,
) -> Response<ResponseBody> {
    let (flag, details) = match &e {
        UpstreamError::Overflow | UpstreamError::PendingOverflow => (
            ResponseFlags::UPSTREAM_OVERFLOW,
            "upstream_reset_before_response_started{overflow}",
        ),
        UpstreamError::Connect(_) | UpstreamError::ConnectTimeout => (
            ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
            "upstream_reset_before_response_started{remote_connection_failure}",
        ),
        UpstreamError::Reset(_) => (
            ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
            "upstream_reset_before_response_started{connection_termination}",
        ),
        UpstreamError::Protocol(_) => (
            ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
            "upstream_reset_before_response_started{protocol_error}",
        ),
    };
    let reason = e.reason();
    st.info.upstream_transport_failure_reason = Some(reason.clone());
    let body = format!(
        "upstream connect error or disconnect/reset before headers. {}reset reason: {reason}",
        if retried {
            "retried and the latest "
        } else {
            ""
        }
    );
    st.local_owned(parts, StatusCode::SERVICE_UNAVAILABLE, body, details, flag)
}

/// An upgrade (WebSocket, ...): a dedicated upstream HTTP/1.1 connection; on `101` both
/// sides are upgraded and bytes are copied in both directions until either closes.
#[allow(clippy::too_many_arguments)]
async fn upgrade(
    st: &mut State,
    parts: &Parts,
    pool: Arc<HostPool>,
    mut up: Request<UpstreamBody>,
    connector: &ClusterConnector<'_>,
    settings: &ConnectSettings,
    on_upgrade: hyper::upgrade::OnUpgrade,
    host_guard: crate::upstream::HostRequestGuard,
) -> Response<ResponseBody> {
    // Restore the upgrade pair the hop-by-hop pass kept.
    if let Some(u) = parts.headers.get(header::UPGRADE) {
        up.headers_mut().insert(header::UPGRADE, u.clone());
        up.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let started = Instant::now();
    let (mut resp, local) = match pool.send_dedicated_h1(up, connector, settings).await {
        Ok(r) => r,
        Err(e) => return upstream_failure(st, parts, e, false),
    };
    st.info.upstream_local = local;
    st.held.host_active = Some(host_guard);
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut rparts, body) = resp.into_parts();
        rh::strip_response_hop_by_hop(&mut rparts.headers, false);
        let pooled = super::pool::PooledBody::detached(body);
        let body = ResponseBody::new(Source::Upstream(pooled))
            .with_timers(st.cx.hcm.stream_idle_timeout, None);
        st.info.response_code_details = "via_upstream";
        return st.finish(parts, Response::from_parts(rparts, body));
    }
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        let (down, upc) = match tokio::try_join!(on_upgrade, upstream_upgrade) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut down = hyper_util::rt::TokioIo::new(down);
        let mut upc = hyper_util::rt::TokioIo::new(upc);
        if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut upc).await {
            tracing::debug!(error = %e, "upgraded stream ended with error");
        }
    });
    let (mut rparts, _) = resp.into_parts();
    rh::strip_response_hop_by_hop(&mut rparts.headers, true);
    if !st.cx.hcm.router.suppress_envoy_headers {
        rparts.headers.insert(
            &X_ENVOY_UPSTREAM_SERVICE_TIME,
            HeaderValue::from(started.elapsed().as_millis() as u64),
        );
    }
    st.info.response_code_details = "via_upstream";
    st.finish(parts, Response::from_parts(rparts, ResponseBody::empty()))
}

/// Opens connections through the cluster (connect timeout, `max_connections`, stats).
pub(super) struct ClusterConnector<'a> {
    pub cluster: &'a Cluster,
    pub host: &'a Arc<Host>,
}

impl Connector for ClusterConnector<'_> {
    fn connect(&self) -> super::pool::ConnectFuture<'_> {
        Box::pin(async move {
            match self.cluster.connect(self.host).await {
                Ok(c) => Ok((c.stream, Box::new(c.guard) as Guard)),
                Err(ConnectError::Overflow { .. }) => Err(UpstreamError::Overflow),
                Err(ConnectError::Timeout { .. }) => Err(UpstreamError::ConnectTimeout),
                Err(ConnectError::Io { source, .. }) => Err(UpstreamError::Connect(source)),
                Err(e @ ConnectError::NoHealthyHost { .. }) => {
                    Err(UpstreamError::Connect(std::io::Error::other(e.to_string())))
                }
            }
        })
    }

    fn acquire_pending(&self) -> Option<Guard> {
        match self.cluster.circuit_breakers().try_acquire_pending() {
            Some(g) => Some(Box::new(g)),
            None => {
                self.cluster.stats().upstream_rq_pending_overflow.inc();
                None
            }
        }
    }
}

/// The per-host HTTP pools, in the host's extension slot.
#[derive(Default)]
struct HostPools {
    h1: std::sync::OnceLock<Arc<HostPool>>,
    h2: std::sync::OnceLock<Arc<HostPool>>,
}

pub(super) fn pool_for(host: &Host, protocol: Protocol) -> Arc<HostPool> {
    let pools = host.ext(HostPools::default);
    let make = || HostPool::new(host.addr, protocol);
    match (pools, protocol) {
        (Some(p), Protocol::Http1) => p.h1.get_or_init(make).clone(),
        (Some(p), Protocol::Http2) => p.h2.get_or_init(make).clone(),
        // The slot holds another type (cannot happen: only this module uses it).
        (None, _) => make(),
    }
}

/// The cluster's upstream connection settings and lifetimes.
pub(super) fn connect_settings(cluster: &Cluster) -> ConnectSettings {
    let http = &cluster.config().http;
    let (idle_timeout, max_requests_per_connection, max_connection_duration) =
        ConnectSettings::lifetimes(
            http.idle_timeout,
            http.max_requests_per_connection,
            http.max_connection_duration,
        );
    ConnectSettings {
        h2_initial_stream_window: http.initial_stream_window_size,
        h2_initial_connection_window: http.initial_connection_window_size,
        h2_keepalive_interval: None,
        max_response_headers_kb: None,
        idle_timeout,
        max_requests_per_connection,
        max_connection_duration,
    }
}

pub(super) fn upstream_protocol(cluster: &Cluster, downstream: Version) -> Protocol {
    match cluster.config().http.protocol {
        UpstreamProtocol::Http1 => Protocol::Http1,
        UpstreamProtocol::Http2 => Protocol::Http2,
        UpstreamProtocol::UseDownstream if downstream == Version::HTTP_2 => Protocol::Http2,
        UpstreamProtocol::UseDownstream => Protocol::Http1,
    }
}

/// The request's hash for ring hash / maglev from the route's hash policies, combined
/// as Envoy does. With `cookie` (the downstream peer and local addresses and where to put
/// `set-cookie` values), a cookie policy with a `ttl` and no cookie in the request makes
/// one, as Envoy: its value is the hex xxHash64 of the connection's addresses.
pub(super) fn hash_key(
    action: &RouteAction,
    parts: &Parts,
    remote: SocketAddr,
    mut cookie: Option<(SocketAddr, SocketAddr, &mut Vec<HeaderValue>)>,
) -> Option<u64> {
    let mut hash: Option<u64> = None;
    for p in &action.hash_policy {
        let h = match &p.kind {
            HashPolicyKind::Header(name) => {
                let mut vals = parts.headers.get_all(name).iter().peekable();
                if vals.peek().is_none() {
                    None
                } else {
                    let mut acc = 0u64;
                    for v in vals {
                        acc ^= xxhash_rust::xxh64::xxh64(v.as_bytes(), 0);
                    }
                    Some(acc)
                }
            }
            HashPolicyKind::Cookie { name, ttl, path } => {
                match cookie_value(&parts.headers, name) {
                    Some(c) => Some(xxhash_rust::xxh64::xxh64(c.as_bytes(), 0)),
                    None => match (ttl, cookie.as_mut()) {
                        (Some(ttl), Some((peer, local, out))) => {
                            let value = format!(
                                "{:016x}",
                                xxhash_rust::xxh64::xxh64(format!("{peer}{local}").as_bytes(), 0)
                            );
                            if let Ok(v) =
                                HeaderValue::from_str(&set_cookie(name, &value, path, *ttl))
                            {
                                out.push(v);
                            }
                            Some(xxhash_rust::xxh64::xxh64(value.as_bytes(), 0))
                        }
                        _ => None,
                    },
                }
            }
            HashPolicyKind::SourceIp => Some(xxhash_rust::xxh64::xxh64(
                remote.ip().to_string().as_bytes(),
                0,
            )),
            HashPolicyKind::QueryParameter(name) => parts.uri.query().and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| xxhash_rust::xxh64::xxh64(v.as_bytes(), 0))
            }),
        };
        if let Some(h) = h {
            hash = Some(match hash {
                Some(prev) => prev.rotate_left(1) ^ h,
                None => h,
            });
            if p.terminal {
                break;
            }
        }
    }
    hash
}

/// Envoy's `makeSetCookieValue` (`HttpOnly`, `Max-Age` unless the ttl is zero).
fn set_cookie(name: &str, value: &str, path: &str, ttl: Duration) -> String {
    let mut s = format!("{name}=\"{value}\"");
    if !ttl.is_zero() {
        s.push_str(&format!("; Max-Age={}", ttl.as_secs()));
    }
    if !path.is_empty() {
        s.push_str("; Path=");
        s.push_str(path);
    }
    s.push_str("; HttpOnly");
    s
}

/// A cookie's value from the request (quotes removed, as Envoy's `parseCookieValue`).
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| {
            v.strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_values_are_the_decimal_form() {
        for n in [0, 1, 9, 10, 31, 32, 100, 4_294_967_296] {
            assert_eq!(number_value(n), HeaderValue::from(n), "{n}");
        }
    }

    #[test]
    fn previous_priorities_update_every_n_attempts() {
        // Attempts went to priorities 0, 0, 1, 1 (update_frequency 2).
        let tried = [0, 0, 1, 1];
        assert!(excluded_priorities(&tried[..0], 1, 2).is_empty());
        assert!(excluded_priorities(&tried[..1], 2, 2).is_empty());
        assert_eq!(excluded_priorities(&tried[..2], 3, 2), [0]);
        assert_eq!(excluded_priorities(&tried[..3], 4, 2), [0]);
        assert_eq!(excluded_priorities(&tried, 5, 2), [0, 1]);
        assert_eq!(excluded_priorities(&tried[..1], 2, 1), [0]);
    }

    #[test]
    fn grpc_statuses_map_to_http_for_outlier_detection() {
        let mut h = HeaderMap::new();
        assert_eq!(outlier_status(StatusCode::BAD_GATEWAY, &h), 502);
        h.insert("grpc-status", HeaderValue::from_static("14"));
        assert_eq!(outlier_status(StatusCode::OK, &h), 503);
        h.insert("grpc-status", HeaderValue::from_static("0"));
        assert_eq!(outlier_status(StatusCode::OK, &h), 200);
    }

    #[test]
    fn set_cookie_is_envoys_format() {
        assert_eq!(
            set_cookie("session", "00ab", "/", Duration::from_secs(3600)),
            "session=\"00ab\"; Max-Age=3600; Path=/; HttpOnly"
        );
        assert_eq!(
            set_cookie("s", "1", "", Duration::ZERO),
            "s=\"1\"; HttpOnly"
        );
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; session=\"00ab\""),
        );
        assert_eq!(cookie_value(&h, "session"), Some("00ab"));
        assert_eq!(cookie_value(&h, "a"), Some("1"));
        assert_eq!(cookie_value(&h, "b"), None);
    }
}
