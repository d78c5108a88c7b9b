//! The per-request pipeline: connection-manager header rules, route selection, the
//! route's action (direct response, redirect, or forwarding with rewrites, header
//! mutations, timeout and retries), the upstream exchange through the host's pool, and
//! the response path (header mutations, `server`, `x-envoy-upstream-service-time`,
//! access log when the stream ends).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header,
    request::Parts, uri::PathAndQuery,
};
use http_body::Body as _;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::{
    body::{Outcome, ResponseBody, Source, UpstreamBody},
    format::{FormatCtx, authority},
    local_reply,
    pool::{ConnectSettings, Connector, Guard, HostPool, PoolResponse, Protocol, UpstreamError},
    redirect::{RedirectInput, location},
    request_headers::{
        self as rh, X_ENVOY_ATTEMPT_COUNT, X_ENVOY_EXPECTED_RQ_TIMEOUT_MS, X_ENVOY_ORIGINAL_PATH,
        X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS, X_ENVOY_UPSTREAM_SERVICE_TIME, X_FORWARDED_HOST,
        X_FORWARDED_PROTO, X_REQUEST_ID,
    },
    route_select::{RequestView, is_grpc, select},
    stream_info::{ResponseFlags, StreamInfo},
};
use crate::{
    config::{
        cluster::{Discovery, UpstreamProtocol},
        http::{HttpConnectionManager, RouteSource, ServerHeader},
        route::{Action, Route, RouteConfiguration, VirtualHost},
        route_action::{
            ClusterSpecifier, HashPolicyKind, HostRewrite, RetryOn, RetryPolicy, RouteAction,
            WeightedClusterEntry,
        },
        route_headers::HeaderMutations,
    },
    runtime::Runtime,
    upstream::{Cluster, ConnectError, Host, LbContext},
};

/// Per-connection context shared by its requests.
pub struct ConnCtx {
    pub hcm: Arc<HttpConnectionManager>,
    pub rt: Runtime,
    pub peer: SocketAddr,
    /// Where the client connected (the original destination for captured traffic).
    pub local: SocketAddr,
    pub original_dst: Option<SocketAddr>,
    pub tls: bool,
    pub sni: Option<Arc<str>>,
}

/// The route a request took, held as owned `Arc`s so it survives across awaits.
struct Routed {
    rc: Arc<RouteConfiguration>,
    vhost: Arc<VirtualHost>,
    route_idx: usize,
    weighted_idx: Option<usize>,
}

impl Routed {
    fn route(&self) -> &Route {
        &self.vhost.routes[self.route_idx]
    }

    fn weighted(&self) -> Option<&WeightedClusterEntry> {
        let idx = self.weighted_idx?;
        match &self.route().action {
            Action::Route(a) => match &a.cluster {
                ClusterSpecifier::Weighted(w) => w.clusters.get(idx),
                _ => None,
            },
            _ => None,
        }
    }

    /// Header mutation levels in Envoy's order: most specific first unless
    /// `most_specific_header_mutations_wins` (then least specific first, so the most
    /// specific overwrite lands last).
    fn levels(&self, response: bool) -> [Option<&HeaderMutations>; 4] {
        fn pick<'a>(
            response: bool,
            m: &'a HeaderMutations,
            r: &'a HeaderMutations,
        ) -> &'a HeaderMutations {
            if response { r } else { m }
        }
        let w = self
            .weighted()
            .map(|w| pick(response, &w.request_headers, &w.response_headers));
        let route = self.route();
        let r = Some(pick(
            response,
            &route.request_headers,
            &route.response_headers,
        ));
        let v = Some(pick(
            response,
            &self.vhost.request_headers,
            &self.vhost.response_headers,
        ));
        let g = Some(pick(
            response,
            &self.rc.request_headers,
            &self.rc.response_headers,
        ));
        if self.rc.most_specific_header_mutations_wins {
            [g, v, r, w]
        } else {
            [w, r, v, g]
        }
    }
}

/// Request facts kept for the response path and the access log.
struct ReqMeta {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

/// Finishes a request when its response stream ends: releases guards, fills the
/// stream info and writes the access logs.
struct Completion {
    cx: Arc<ConnCtx>,
    info: StreamInfo,
    meta: Option<ReqMeta>,
    resp_headers: Option<HeaderMap>,
    _guards: Vec<Guard>,
}

impl super::body::OnComplete for Completion {
    fn complete(mut self: Box<Self>, bytes_sent: u64, outcome: Outcome) {
        self.info.bytes_sent = bytes_sent;
        self.info.duration = Some(self.info.start.elapsed());
        match outcome {
            Outcome::Complete => {}
            Outcome::UpstreamError => self
                .info
                .response_flags
                .insert(ResponseFlags::UPSTREAM_REMOTE_RESET),
            Outcome::IdleTimeout => self
                .info
                .response_flags
                .insert(ResponseFlags::STREAM_IDLE_TIMEOUT),
            Outcome::RouteTimeout => self
                .info
                .response_flags
                .insert(ResponseFlags::UPSTREAM_REQUEST_TIMEOUT),
            Outcome::DownstreamGone => self
                .info
                .response_flags
                .insert(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION),
        }
        if let Some(meta) = &self.meta {
            let ctx = FormatCtx {
                method: &meta.method,
                uri: &meta.uri,
                req_headers: &meta.headers,
                resp_headers: self.resp_headers.as_ref(),
                resp_trailers: None,
                info: &self.info,
            };
            for log in &self.cx.hcm.access_log {
                log.log(&ctx);
            }
        }
    }
}

/// Handles one downstream request.
pub async fn handle(mut req: Request<Incoming>, cx: Arc<ConnCtx>) -> Response<ResponseBody> {
    let mut info = StreamInfo::new(cx.peer, cx.local);
    info.protocol = Some(req.version());
    info.requested_server_name = cx.sni.clone();
    let upgrade = rh::upgrade_type(req.headers()).map(str::to_ascii_lowercase);
    let on_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let grpc = is_grpc(&parts.headers);
    ensure_host(&mut parts);

    let mut st = State {
        cx: cx.clone(),
        info,
        routed: None,
        grpc,
        guards: Vec::new(),
    };

    // Path checks and normalization.
    let Some(pq) = parts.uri.path_and_query().map(|p| p.as_str().to_string()) else {
        return st.local(
            &parts,
            StatusCode::BAD_REQUEST,
            "",
            "missing_path",
            ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
        );
    };
    if !pq.starts_with('/') && parts.method != Method::OPTIONS {
        return st.local(
            &parts,
            StatusCode::NOT_FOUND,
            "",
            "invalid_path",
            ResponseFlags::NO_ROUTE_FOUND,
        );
    }
    match super::path::normalize(&pq, &cx.hcm) {
        Ok(std::borrow::Cow::Owned(n)) => {
            if let Ok(p) = PathAndQuery::try_from(n) {
                set_path(&mut parts, p);
            }
        }
        Ok(_) => {}
        Err(_) => {
            return st.local(
                &parts,
                StatusCode::BAD_REQUEST,
                "",
                "path_normalization_failed",
                ResponseFlags::NONE,
            );
        }
    }

    let mutated = rh::mutate_request_headers(
        &mut parts.headers,
        &cx.hcm,
        cx.peer,
        cx.tls,
        upgrade.is_some(),
    );
    st.info.downstream_remote = mutated.remote;
    strip_host_port(&mut parts, &cx);

    // Routes: inline or RDS from the snapshot in force now.
    let rc = match &cx.hcm.routes {
        RouteSource::Inline(rc) => Some(rc.clone()),
        RouteSource::Rds(name) => cx.rt.store.route(name),
    };
    let Some(rc) = rc else {
        return st.local(
            &parts,
            StatusCode::NOT_FOUND,
            "",
            "route_not_found",
            ResponseFlags::NO_ROUTE_FOUND,
        );
    };
    if mutated.edge {
        for h in &rc.internal_only_headers {
            parts.headers.remove(h);
        }
    }
    let random: u64 = rand::random();
    let scheme = if cx.tls { "https" } else { "http" };
    let auth = authority(&parts.uri, &parts.headers)
        .unwrap_or("")
        .to_string();
    let selected = {
        let view = RequestView {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
            authority: &auth,
            scheme,
            random,
        };
        select(&rc, &view).map(|s| {
            (
                s.vhost.clone(),
                route_index(s.vhost, s.route),
                s.matched_len,
            )
        })
    };
    let Some((vhost, route_idx, matched_len)) = selected else {
        return st.local(
            &parts,
            StatusCode::NOT_FOUND,
            "",
            "route_not_found",
            ResponseFlags::NO_ROUTE_FOUND,
        );
    };
    st.routed = Some(Routed {
        rc,
        vhost: vhost.clone(),
        route_idx,
        weighted_idx: None,
    });
    st.info.route_name = vhost.routes[route_idx].name.clone();
    let route = &vhost.routes[route_idx];
    match &route.action {
        Action::DirectResponse(d) => {
            let body = d.body.clone().unwrap_or_default();
            let details = "direct_response";
            let mut resp = Response::new(ResponseBody::full(body.clone()));
            *resp.status_mut() = d.status;
            if !body.is_empty() {
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            }
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            // Envoy points 201 and 3xx direct responses at the request URI.
            if d.status == StatusCode::CREATED || d.status.is_redirection() {
                let fwd_proto = parts
                    .headers
                    .get(&X_FORWARDED_PROTO)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(scheme)
                    .to_string();
                let same = crate::config::route_action::Redirect {
                    scheme: None,
                    host: None,
                    port: None,
                    path: None,
                    response_code: d.status,
                    strip_query: false,
                };
                let input = RedirectInput {
                    scheme: &fwd_proto,
                    host: &auth,
                    path_and_query: &pq_of(&parts),
                    matched_len,
                };
                if let Ok(v) = HeaderValue::from_str(&location(&same, &input)) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
            }
            st.info.response_code_details = details;
            st.finish(&parts, resp)
        }
        Action::Redirect(r) => {
            let fwd_proto = parts
                .headers
                .get(&X_FORWARDED_PROTO)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(scheme)
                .to_string();
            let loc = location(
                r,
                &RedirectInput {
                    scheme: &fwd_proto,
                    host: &auth,
                    path_and_query: &pq_of(&parts),
                    matched_len,
                },
            );
            let mut resp = Response::new(ResponseBody::empty());
            *resp.status_mut() = r.response_code;
            if let Ok(v) = HeaderValue::from_str(&loc) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            st.info.response_code_details = "direct_response";
            st.finish(&parts, resp)
        }
        Action::NonForwarding => st.local(
            &parts,
            StatusCode::NOT_FOUND,
            "",
            "route_not_found",
            ResponseFlags::NO_ROUTE_FOUND,
        ),
        Action::Route(action) => {
            if let Some(u) = &upgrade
                && !cx.hcm.upgrade_enabled(u, action.upgrade_enabled(u))
            {
                return st.local(
                    &parts,
                    StatusCode::FORBIDDEN,
                    "",
                    "upgrade_failed",
                    ResponseFlags::NONE,
                );
            }
            forward(
                st,
                parts,
                body,
                action,
                &vhost,
                matched_len,
                random,
                on_upgrade,
            )
            .await
        }
    }
}

fn route_index(vhost: &VirtualHost, route: &Route) -> usize {
    vhost
        .routes
        .iter()
        .position(|r| std::ptr::eq(r, route))
        .unwrap_or(0)
}

fn pq_of(parts: &Parts) -> String {
    parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.as_str().to_string())
}

/// HTTP/2 requests carry `:authority` in the URI; upstream HTTP/1.1 needs `Host`.
fn ensure_host(parts: &mut Parts) {
    if parts.headers.contains_key(header::HOST) {
        return;
    }
    if let Some(a) = parts.uri.authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
}

fn set_host(parts: &mut Parts, host: &str) {
    if let Ok(v) = HeaderValue::from_str(host) {
        parts.headers.insert(header::HOST, v);
    }
    if parts.uri.authority().is_some() {
        let mut up = std::mem::take(&mut parts.uri).into_parts();
        up.authority = host.parse().ok();
        if up.authority.is_none() {
            up.scheme = None;
        }
        parts.uri = Uri::from_parts(up).unwrap_or_default();
    }
}

fn set_path(parts: &mut Parts, pq: PathAndQuery) {
    let mut up = std::mem::take(&mut parts.uri).into_parts();
    up.path_and_query = Some(pq);
    parts.uri = Uri::from_parts(up).unwrap_or_default();
}

/// `strip_trailing_host_dot`, `strip_any_host_port` and `strip_matching_host_port`.
fn strip_host_port(parts: &mut Parts, cx: &ConnCtx) {
    let hcm = &cx.hcm;
    if !hcm.strip_trailing_host_dot && !hcm.strip_any_host_port && !hcm.strip_matching_host_port {
        return;
    }
    let Some(host) = authority(&parts.uri, &parts.headers).map(str::to_string) else {
        return;
    };
    let mut h = host.as_str();
    let port_start = if h.starts_with('[') {
        h.rfind("]:").map(|i| i + 1)
    } else {
        h.rfind(':')
    };
    let (name, port) = match port_start {
        Some(i) => (&h[..i], Some(&h[i + 1..])),
        None => (h, None),
    };
    let mut name = name;
    if hcm.strip_trailing_host_dot {
        name = name.strip_suffix('.').unwrap_or(name);
    }
    let strip = match port {
        Some(p) => {
            hcm.strip_any_host_port
                || (hcm.strip_matching_host_port && p.parse::<u16>().ok() == Some(cx.local.port()))
        }
        None => false,
    };
    let new = match (port, strip) {
        (Some(p), false) => format!("{name}:{p}"),
        _ => name.to_string(),
    };
    h = &new;
    if h != host {
        set_host(parts, h);
    }
}

/// Request state carried through the pipeline.
struct State {
    cx: Arc<ConnCtx>,
    info: StreamInfo,
    routed: Option<Routed>,
    grpc: bool,
    guards: Vec<Guard>,
}

impl State {
    /// A local reply (route-level response headers apply when a route was selected).
    fn local(
        mut self,
        parts: &Parts,
        status: StatusCode,
        body: &'static str,
        details: &'static str,
        flags: ResponseFlags,
    ) -> Response<ResponseBody> {
        self.info.response_flags.insert(flags);
        self.info.response_code_details = details;
        let resp = local_reply::build(status, Bytes::from_static(body.as_bytes()), self.grpc);
        self.finish(parts, resp)
    }

    fn local_owned(
        mut self,
        parts: &Parts,
        status: StatusCode,
        body: String,
        details: &'static str,
        flags: ResponseFlags,
    ) -> Response<ResponseBody> {
        self.info.response_flags.insert(flags);
        self.info.response_code_details = details;
        let resp = local_reply::build(status, Bytes::from(body), self.grpc);
        self.finish(parts, resp)
    }

    /// Response-path processing common to every response, then the completion hook.
    fn finish(mut self, parts: &Parts, mut resp: Response<ResponseBody>) -> Response<ResponseBody> {
        let hcm = self.cx.hcm.clone();
        if let Some(routed) = &self.routed {
            let levels = routed.levels(true);
            if levels.iter().flatten().any(|m| m.needs_context()) {
                let ctx = FormatCtx {
                    method: &parts.method,
                    uri: &parts.uri,
                    req_headers: &parts.headers,
                    resp_headers: None,
                    resp_trailers: None,
                    info: &self.info,
                };
                let mut headers = std::mem::take(resp.headers_mut());
                for m in levels.iter().flatten() {
                    m.apply(&mut headers, Some(&ctx));
                }
                *resp.headers_mut() = headers;
            } else {
                for m in levels.iter().flatten() {
                    m.apply(resp.headers_mut(), None);
                }
            }
        }
        match hcm.server_header {
            ServerHeader::Overwrite => {
                resp.headers_mut()
                    .insert(header::SERVER, hcm.server_name.clone());
            }
            ServerHeader::AppendIfAbsent => {
                if !resp.headers().contains_key(header::SERVER) {
                    resp.headers_mut()
                        .insert(header::SERVER, hcm.server_name.clone());
                }
            }
            ServerHeader::PassThrough => {}
        }
        if hcm.always_set_request_id_in_response
            && let Some(id) = parts.headers.get(&X_REQUEST_ID)
        {
            resp.headers_mut().insert(&X_REQUEST_ID, id.clone());
        }
        self.info.response_code = Some(resp.status().as_u16());
        let logging = !hcm.access_log.is_empty();
        let completion = Completion {
            cx: self.cx.clone(),
            meta: logging.then(|| ReqMeta {
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                headers: parts.headers.clone(),
            }),
            resp_headers: logging.then(|| resp.headers().clone()),
            info: self.info,
            _guards: std::mem::take(&mut self.guards),
        };
        let (rparts, body) = resp.into_parts();
        Response::from_parts(rparts, body.on_complete(Box::new(completion)))
    }
}

/// Opens connections through the cluster (connect timeout, `max_connections`, stats).
struct ClusterConnector<'a> {
    cluster: &'a Cluster,
    host: &'a Arc<Host>,
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

fn pool_for(host: &Host, protocol: Protocol) -> Arc<HostPool> {
    let pools = host.ext(HostPools::default);
    let make = || HostPool::new(host.addr, protocol);
    match (pools, protocol) {
        (Some(p), Protocol::Http1) => p.h1.get_or_init(make).clone(),
        (Some(p), Protocol::Http2) => p.h2.get_or_init(make).clone(),
        // The slot holds another type (cannot happen: only this module uses it).
        (None, _) => make(),
    }
}

fn upstream_protocol(cluster: &Cluster, downstream: Version) -> Protocol {
    match cluster.config().http.protocol {
        UpstreamProtocol::Http1 => Protocol::Http1,
        UpstreamProtocol::Http2 => Protocol::Http2,
        UpstreamProtocol::UseDownstream if downstream == Version::HTTP_2 => Protocol::Http2,
        UpstreamProtocol::UseDownstream => Protocol::Http1,
    }
}

fn hash_key(action: &RouteAction, parts: &Parts, remote: SocketAddr) -> Option<u64> {
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
            HashPolicyKind::Cookie { name, .. } => {
                cookie(&parts.headers, name).map(|c| xxhash_rust::xxh64::xxh64(c.as_bytes(), 0))
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

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn should_retry_status(policy: &RetryPolicy, resp: &Response<super::pool::PooledBody>) -> bool {
    let s = resp.status().as_u16();
    if policy.retries_on(RetryOn::FiveXx) && s >= 500 {
        return true;
    }
    if policy.retries_on(RetryOn::GatewayError) && matches!(s, 502..=504) {
        return true;
    }
    if policy.retries_on(RetryOn::Retriable4xx) && s == 409 {
        return true;
    }
    if policy.retries_on(RetryOn::RetriableStatusCodes)
        && policy.retriable_status_codes.contains(&s)
    {
        return true;
    }
    if policy.retries_on(RetryOn::EnvoyRateLimited)
        && resp.headers().contains_key("x-envoy-ratelimited")
    {
        return true;
    }
    // Trailers-only gRPC responses carry grpc-status in the headers.
    if let Some(code) = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
    {
        let on = match code {
            1 => RetryOn::GrpcCancelled,
            4 => RetryOn::GrpcDeadlineExceeded,
            8 => RetryOn::GrpcResourceExhausted,
            13 => RetryOn::GrpcInternal,
            14 => RetryOn::GrpcUnavailable,
            _ => return false,
        };
        return policy.retries_on(on);
    }
    false
}

fn should_retry_error(policy: &RetryPolicy, e: &UpstreamError) -> bool {
    if e.is_connect_failure() {
        return [
            RetryOn::ConnectFailure,
            RetryOn::FiveXx,
            RetryOn::GatewayError,
            RetryOn::Reset,
            RetryOn::ResetBeforeRequest,
        ]
        .iter()
        .any(|c| policy.retries_on(*c));
    }
    match e {
        UpstreamError::Reset(err) => {
            let refused = std::error::Error::source(err)
                .and_then(|s| s.downcast_ref::<h2::Error>())
                .is_some_and(|h| h.reason() == Some(h2::Reason::REFUSED_STREAM));
            (refused && policy.retries_on(RetryOn::RefusedStream))
                || [RetryOn::FiveXx, RetryOn::GatewayError, RetryOn::Reset]
                    .iter()
                    .any(|c| policy.retries_on(*c))
        }
        _ => false,
    }
}

fn backoff(policy: &RetryPolicy, retry: u32) -> Duration {
    let exp = policy.base_interval.saturating_mul(1u32 << retry.min(16));
    let cap = exp.min(policy.max_interval);
    let ms = cap.as_millis().max(1) as u64;
    Duration::from_millis(rand::random::<u64>() % ms)
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    mut st: State,
    mut parts: Parts,
    body: Incoming,
    action: &RouteAction,
    vhost: &VirtualHost,
    matched_len: usize,
    random: u64,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<ResponseBody> {
    let cx = st.cx.clone();
    let hcm = cx.hcm.clone();
    let suppress = hcm.router.suppress_envoy_headers;

    // Cluster name.
    let (cluster_name, weighted_idx): (Arc<str>, Option<usize>) = match &action.cluster {
        ClusterSpecifier::Cluster(c) => (c.clone(), None),
        ClusterSpecifier::Header(h) => match parts.headers.get(h).and_then(|v| v.to_str().ok()) {
            Some(c) if !c.is_empty() => (Arc::from(c), None),
            _ => {
                return st.local(
                    &parts,
                    action.cluster_not_found_response_code,
                    "",
                    "cluster_not_found",
                    ResponseFlags::NO_CLUSTER_FOUND,
                );
            }
        },
        ClusterSpecifier::Weighted(w) => {
            let r = if let Some(h) = &w.random_header {
                parts
                    .headers
                    .get(h)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(random)
            } else if w.use_hash_policy {
                hash_key(action, &parts, st.info.downstream_remote).unwrap_or(random)
            } else {
                random
            };
            let entry = w.pick(r);
            let idx = w.clusters.iter().position(|c| std::ptr::eq(c, entry));
            let name = match &entry.header {
                Some(h) => match parts.headers.get(h).and_then(|v| v.to_str().ok()) {
                    Some(c) => Arc::from(c),
                    None => {
                        return st.local(
                            &parts,
                            action.cluster_not_found_response_code,
                            "",
                            "cluster_not_found",
                            ResponseFlags::NO_CLUSTER_FOUND,
                        );
                    }
                },
                None => entry.name.clone(),
            };
            (name, idx)
        }
    };
    if let Some(r) = st.routed.as_mut() {
        r.weighted_idx = weighted_idx;
    }
    st.info.upstream_cluster = Some(cluster_name.clone());

    // Request header mutations (computed against the request as received), then host
    // and path rewrites, as Envoy's finalizeRequestHeaders.
    let original_pq = pq_of(&parts);
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
    let old_host = authority(&parts.uri, &parts.headers).map(str::to_string);
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
            if !suppress && let Ok(v) = HeaderValue::from_str(&original_pq) {
                parts.headers.insert(&X_ENVOY_ORIGINAL_PATH, v);
            }
            set_path(&mut parts, pq);
        }
    }

    // Timeout: the route's, overridden by x-envoy-upstream-rq-timeout-ms (trusted
    // requests only: edge requests had it removed) or grpc-timeout when configured.
    let mut timeout = action.timeout;
    if let Some(ms) = parts
        .headers
        .remove(&X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        timeout = (ms > 0).then(|| Duration::from_millis(ms));
    }
    if let (Some(max), true) = (action.max_grpc_timeout, st.grpc)
        && let Some(t) = parts
            .headers
            .get("grpc-timeout")
            .and_then(|v| parse_grpc_timeout(v.to_str().ok()?))
    {
        let t = if max.is_zero() { t } else { t.min(max) };
        timeout = Some(t.saturating_sub(action.grpc_timeout_offset.unwrap_or_default()))
            .filter(|t| !t.is_zero());
    }
    if on_upgrade.is_some() {
        // Upgraded streams are long-lived; Envoy disables the route timeout for them.
        timeout = None;
    }
    let policy = action.retry_policy.as_ref().or(vhost.retry_policy.as_ref());
    let per_try = policy.and_then(|p| p.per_try_timeout);
    if !suppress && let Some(t) = per_try.or(timeout) {
        parts.headers.insert(
            &X_ENVOY_EXPECTED_RQ_TIMEOUT_MS,
            HeaderValue::from(t.as_millis() as u64),
        );
    }
    let deadline = timeout.map(|t| Instant::now() + t);

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
    st.guards.push(Box::new(rq_guard));
    stats.upstream_rq_total.inc();
    stats.upstream_rq_active.inc();
    st.guards
        .push(Box::new(GaugeGuard(stats.upstream_rq_active.clone())));

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
    let hash = hash_key(action, &parts, st.info.downstream_remote);
    let protocol = if on_upgrade.is_some() {
        Protocol::Http1
    } else {
        upstream_protocol(&cluster, parts.version)
    };
    let settings = ConnectSettings {
        h2_initial_stream_window: cluster.config().http.initial_stream_window_size,
        h2_initial_connection_window: cluster.config().http.initial_connection_window_size,
        h2_keepalive_interval: None,
        max_response_headers_kb: None,
    };

    // Retries are possible when the request has no body to replay.
    let max_retries = match policy {
        Some(p) if body.is_end_stream() && on_upgrade.is_none() => p.num_retries,
        _ => 0,
    };
    let include_attempts = vhost.include_request_attempt_count;
    let mut body = Some(body);
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut attempt: u32 = 0;
    let up_version = match protocol {
        Protocol::Http1 => Version::HTTP_11,
        Protocol::Http2 => Version::HTTP_2,
    };
    loop {
        attempt += 1;
        st.info.attempt_count = attempt;
        let avoid: &[SocketAddr] = if policy.is_some_and(|p| p.avoid_previous_hosts) {
            &tried
        } else {
            &[]
        };
        let Some(host) = cluster.pick(&LbContext {
            hash,
            avoid,
            original_dst,
        }) else {
            stats.upstream_cx_none_healthy.inc();
            return st.local(
                &parts,
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream",
                "no_healthy_upstream",
                ResponseFlags::NO_HEALTHY_UPSTREAM,
            );
        };
        st.info.upstream_host = Some(host.addr);
        let host_guard = host.request_guard();
        let mut up =
            build_upstream_request(&parts, up_version, &host, action, attempt, include_attempts);
        let up_body = match body.take() {
            Some(b) if attempt == 1 && !b.is_end_stream() => UpstreamBody::Incoming { body: b },
            _ => UpstreamBody::empty(),
        };
        *up.body_mut() = up_body;
        let pool = pool_for(&host, protocol);
        let connector = ClusterConnector {
            cluster: &cluster,
            host: &host,
        };
        let started = Instant::now();

        if let Some(on_up) = on_upgrade {
            return upgrade(
                st, &parts, pool, up, &connector, &settings, on_up, host_guard,
            )
            .await;
        }

        let try_deadline = match (deadline, per_try) {
            (Some(d), Some(p)) => Some(d.min(Instant::now() + p)),
            (None, Some(p)) => Some(Instant::now() + p),
            (d, None) => d,
        };
        let sent = pool.send(up, &connector, &settings);
        let result: Result<PoolResponse, Either> = match try_deadline {
            Some(d) => match tokio::time::timeout_at(d, sent).await {
                Ok(r) => r.map_err(Either::Upstream),
                Err(_) => Err(Either::Timeout),
            },
            None => sent.await.map_err(Either::Upstream),
        };
        let retries_left = attempt <= max_retries;
        match result {
            Ok(PoolResponse {
                response,
                upstream_local,
            }) => {
                if let Some(p) = policy
                    && should_retry_status(p, &response)
                {
                    if retries_left && acquire_retry(&cluster, &mut st) {
                        drop(response);
                        tried.push(host.addr);
                        tokio::time::sleep(backoff(p, attempt - 1)).await;
                        continue;
                    }
                    if max_retries > 0 {
                        st.info
                            .response_flags
                            .insert(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
                    }
                }
                st.info.upstream_local = upstream_local;
                st.guards.push(Box::new(host_guard));
                return respond(st, &parts, response, started, deadline, vhost);
            }
            Err(Either::Timeout) => {
                if per_try.is_some()
                    && deadline.is_none_or(|d| Instant::now() < d)
                    && retries_left
                    && acquire_retry(&cluster, &mut st)
                {
                    tried.push(host.addr);
                    continue;
                }
                return st.local(
                    &parts,
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream request timeout",
                    "upstream_response_timeout",
                    ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
                );
            }
            Err(Either::Upstream(e)) => {
                tried.push(host.addr);
                if let Some(p) = policy {
                    if should_retry_error(p, &e) && retries_left && acquire_retry(&cluster, &mut st)
                    {
                        tokio::time::sleep(backoff(p, attempt - 1)).await;
                        continue;
                    }
                    if should_retry_error(p, &e) && max_retries > 0 {
                        st.info
                            .response_flags
                            .insert(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
                    }
                }
                return upstream_failure(st, &parts, e);
            }
        }
    }
}

enum Either {
    Upstream(UpstreamError),
    Timeout,
}

/// Decrements a gauge when dropped (requests in flight).
struct GaugeGuard(prometheus_client::metrics::gauge::Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn acquire_retry(cluster: &Cluster, st: &mut State) -> bool {
    match cluster.circuit_breakers().try_acquire_retry() {
        Some(g) => {
            cluster.stats().upstream_rq_retry.inc();
            // Envoy counts a retry as active until the retried request finishes.
            st.guards.push(Box::new(g));
            true
        }
        None => {
            cluster.stats().upstream_rq_retry_overflow.inc();
            false
        }
    }
}

fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 {
        return None;
    }
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn build_upstream_request(
    parts: &Parts,
    version: Version,
    host: &Host,
    action: &RouteAction,
    attempt: u32,
    include_attempts: bool,
) -> Request<UpstreamBody> {
    let mut headers = parts.headers.clone();
    let mut host_value = headers.get(header::HOST).cloned();
    if matches!(action.host_rewrite, Some(HostRewrite::Auto))
        && !host.hostname.is_empty()
        && let Ok(v) = HeaderValue::from_str(&host.hostname)
    {
        headers.insert(header::HOST, v.clone());
        host_value = Some(v);
    }
    if include_attempts {
        headers.insert(&X_ENVOY_ATTEMPT_COUNT, HeaderValue::from(attempt));
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

fn respond(
    mut st: State,
    parts: &Parts,
    response: Response<super::pool::PooledBody>,
    started: Instant,
    deadline: Option<Instant>,
    vhost: &VirtualHost,
) -> Response<ResponseBody> {
    let (mut rparts, body) = response.into_parts();
    rh::strip_response_hop_by_hop(&mut rparts.headers, false);
    if !st.cx.hcm.router.suppress_envoy_headers {
        let ms = started.elapsed().as_millis() as u64;
        rparts
            .headers
            .insert(&X_ENVOY_UPSTREAM_SERVICE_TIME, HeaderValue::from(ms));
    }
    if vhost.include_attempt_count_in_response {
        rparts.headers.insert(
            &X_ENVOY_ATTEMPT_COUNT,
            HeaderValue::from(st.info.attempt_count),
        );
    }
    rparts.version = Version::HTTP_11;
    st.info.response_code_details = "via_upstream";
    let body = ResponseBody::new(Source::Upstream(body))
        .with_timers(st.cx.hcm.stream_idle_timeout, deadline);
    st.finish(parts, Response::from_parts(rparts, body))
}

fn upstream_failure(st: State, parts: &Parts, e: UpstreamError) -> Response<ResponseBody> {
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
    let mut st = st;
    let reason = e.reason();
    st.info.upstream_transport_failure_reason = Some(reason.clone());
    let body = format!(
        "upstream connect error or disconnect/reset before headers. reset reason: {reason}"
    );
    st.local_owned(parts, StatusCode::SERVICE_UNAVAILABLE, body, details, flag)
}

/// An upgrade (WebSocket, ...): a dedicated upstream HTTP/1.1 connection; on `101` both
/// sides are upgraded and bytes are copied in both directions until either closes.
#[allow(clippy::too_many_arguments)]
async fn upgrade(
    mut st: State,
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
        Err(e) => return upstream_failure(st, parts, e),
    };
    st.info.upstream_local = local;
    st.guards.push(Box::new(host_guard));
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
