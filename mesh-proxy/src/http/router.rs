//! The per-request pipeline, in Envoy's order: connection-manager header rules, route
//! selection (including the weighted cluster, so per-filter configs of the chosen
//! cluster apply), the stream's maximum duration, the HTTP filters (fault, CORS, local
//! rate limit), then the route's action: direct response, redirect, or forwarding
//! (`super::forward`). Every response goes through [`State::finish`]: route response
//! header mutations (router responses only), the filters' response side, `server`,
//! request id, and the completion hook that writes the access log when the stream ends.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, header, request::Parts,
    uri::PathAndQuery,
};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::{
    body::{Outcome, ResponseBody},
    filters::{
        EncodeState, Filter, RouteFilterConfig, cors,
        fault::FaultConfig,
        local_ratelimit::{self, ConnectionBuckets},
    },
    format::{FormatCtx, authority},
    local_reply,
    pool::Guard,
    redirect::{RedirectInput, location},
    request_headers::{self as rh, X_FORWARDED_PROTO, X_REQUEST_ID},
    route_select::{RequestView, is_grpc, select},
    stream_info::{ResponseFlags, StreamInfo},
    timeout,
};
use crate::{
    config::{
        http::{HttpConnectionManager, RouteSource, ServerHeader},
        route::{Action, FilterConfigs, FilterOverride, Route, RouteConfiguration, VirtualHost},
        route_action::{ClusterSpecifier, WeightedClusterEntry},
        route_headers::HeaderMutations,
    },
    runtime::Runtime,
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
    /// Token buckets of `local_rate_limit_per_downstream_connection` configs.
    pub rate_limits: ConnectionBuckets,
}

/// The route a request took, held as owned `Arc`s so it survives across awaits.
pub(super) struct Routed {
    pub rc: Arc<RouteConfiguration>,
    pub vhost: Arc<VirtualHost>,
    pub route_idx: usize,
    pub weighted_idx: Option<usize>,
    /// The cluster the route sends to (`None`: its header was missing, 503 `NC`).
    pub cluster: Option<Arc<str>>,
    pub matched_len: usize,
}

impl Routed {
    pub fn route(&self) -> &Route {
        &self.vhost.routes[self.route_idx]
    }

    pub fn weighted(&self) -> Option<&WeightedClusterEntry> {
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
    pub fn levels(&self, response: bool) -> [Option<&HeaderMutations>; 4] {
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

    /// Per-filter config levels, most specific first.
    fn filter_levels(&self) -> [Option<&FilterConfigs>; 4] {
        [
            self.weighted().map(|w| &w.typed_per_filter_config),
            Some(&self.route().typed_per_filter_config),
            Some(&self.vhost.typed_per_filter_config),
            Some(&self.rc.typed_per_filter_config),
        ]
    }

    /// The most specific override of filter `name` (it decides whether the filter runs).
    fn filter_override(&self, name: &str) -> Option<&FilterOverride> {
        self.filter_levels()
            .into_iter()
            .flatten()
            .find_map(|l| l.get(name))
    }

    /// The most specific per-route config of filter `name`.
    fn filter_config(&self, name: &str) -> Option<&RouteFilterConfig> {
        self.filter_levels()
            .into_iter()
            .flatten()
            .find_map(|l| l.get(name).and_then(|o| o.config.as_ref()))
    }

    /// Every per-route config of filter `name`, most specific first.
    fn filter_configs<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a RouteFilterConfig> {
        self.filter_levels()
            .into_iter()
            .flatten()
            .filter_map(move |l| l.get(name).and_then(|o| o.config.as_ref()))
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
    /// Only with access logs (nothing else reads it).
    info: Option<StreamInfo>,
    meta: Option<ReqMeta>,
    resp_headers: Option<HeaderMap>,
    _held: Held,
}

/// What a request holds until its response stream ends: its circuit-breaker slot and
/// the active-request counts (cluster, host), typed so that holding them allocates
/// nothing; `other` takes the rare rest (a fault filter's active-fault slot).
#[derive(Default)]
pub(super) struct Held {
    pub request_slot: Option<crate::upstream::CircuitBreakerGuard>,
    pub cluster_active: Option<super::forward::ActiveRequest>,
    pub host_active: Option<crate::upstream::HostRequestGuard>,
    pub other: Vec<Guard>,
}

impl super::body::OnComplete for Completion {
    fn complete(mut self: Box<Self>, bytes_sent: u64, outcome: Outcome) {
        let (Some(info), Some(meta)) = (self.info.as_mut(), self.meta.as_ref()) else {
            return;
        };
        info.bytes_sent = bytes_sent;
        info.duration = Some(info.start.elapsed());
        let flag = match outcome {
            Outcome::Complete | Outcome::DurationTimeout => ResponseFlags::NONE,
            Outcome::UpstreamError => ResponseFlags::UPSTREAM_REMOTE_RESET,
            Outcome::IdleTimeout => ResponseFlags::STREAM_IDLE_TIMEOUT,
            Outcome::RouteTimeout => ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
            Outcome::DownstreamGone => ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION,
        };
        info.response_flags.insert(flag);
        let ctx = FormatCtx {
            method: &meta.method,
            uri: &meta.uri,
            req_headers: &meta.headers,
            resp_headers: self.resp_headers.as_ref(),
            resp_trailers: None,
            info,
        };
        for log in &self.cx.hcm.access_log {
            log.log(&ctx);
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
        held: Held::default(),
        encode: EncodeState::default(),
        stream_deadline: None,
        set_cookies: Vec::new(),
        attempt_count_header: false,
    };
    pipeline(&mut st, parts, body, upgrade, on_upgrade).await
}

async fn pipeline(
    st: &mut State,
    mut parts: Parts,
    body: Incoming,
    upgrade: Option<String>,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<ResponseBody> {
    let cx = st.cx.clone();
    // Path checks and normalization, on the path as received (borrowed: most paths need
    // no change and are not copied).
    let normalized = {
        let Some(pq) = parts.uri.path_and_query().map(PathAndQuery::as_str) else {
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
        match super::path::normalize(pq, &cx.hcm) {
            Ok(std::borrow::Cow::Owned(n)) => Some(n),
            Ok(_) => None,
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
    };
    if let Some(p) = normalized.and_then(|n| PathAndQuery::try_from(n).ok()) {
        set_path(&mut parts, p);
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
    let random: u64 = rand::random();
    let scheme = if cx.tls { "https" } else { "http" };
    let auth = authority(&parts.uri, &parts.headers)
        .unwrap_or("")
        .to_string();
    if let Some(rc) = &rc
        && mutated.edge
    {
        for h in &rc.internal_only_headers {
            parts.headers.remove(h);
        }
    }
    st.routed = rc.and_then(|rc| {
        let view = RequestView {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
            authority: &auth,
            scheme,
            random,
        };
        let (vhost, route_idx, matched_len) = select(&rc, &view).map(|s| {
            (
                s.vhost.clone(),
                route_index(s.vhost, s.route),
                s.matched_len,
            )
        })?;
        let mut routed = Routed {
            rc: rc.clone(),
            vhost,
            route_idx,
            weighted_idx: None,
            cluster: None,
            matched_len,
        };
        if let Action::Route(a) = &routed.route().action {
            let (cluster, weighted_idx) =
                super::forward::choose_cluster(a, &parts, st.info.downstream_remote, random);
            routed.cluster = cluster;
            routed.weighted_idx = weighted_idx;
        }
        Some(routed)
    });
    if let Some(r) = &st.routed {
        st.info.route_name = r.route().name.clone();
    }

    // The connection manager refuses upgrades the route and HCM do not allow, before
    // any filter runs.
    if let (Some(u), Some(r)) = (&upgrade, &st.routed)
        && let Action::Route(a) = &r.route().action
        && !cx.hcm.upgrade_enabled(u, a.upgrade_enabled(u))
    {
        return st.local(
            &parts,
            StatusCode::FORBIDDEN,
            "",
            "upgrade_failed",
            ResponseFlags::NONE,
        );
    }

    // The stream's maximum duration runs from the stream's start, filters included.
    let route_msd = st.routed.as_ref().and_then(|r| match &r.route().action {
        Action::Route(a) => a.max_stream_duration,
        _ => None,
    });
    if st.routed.is_some() {
        let d = timeout::stream_duration(
            route_msd.as_ref(),
            cx.hcm.max_stream_duration,
            &mut parts.headers,
            st.grpc,
        );
        st.stream_deadline = d.map(|d| Instant::from_std(st.info.start) + d);
    }
    let deadline = st.stream_deadline;
    // The reply to a stream that times out needs the request (route header formatters,
    // access log), which the stages own.
    let timeout_parts = deadline.map(|_| {
        let (mut p, ()) = Request::new(()).into_parts();
        p.method = parts.method.clone();
        p.uri = parts.uri.clone();
        p.version = parts.version;
        p.headers = parts.headers.clone();
        p
    });
    // Pinned in place: awaiting or wrapping it by value would give the pipeline future
    // a second copy of the whole route action's state.
    let finished = {
        let stages = std::pin::pin!(async {
            if let Some(resp) = run_filters(st, &mut parts, &auth, scheme, random).await {
                return resp;
            }
            route_action(st, parts, body, on_upgrade, &auth, scheme).await
        });
        match deadline {
            None => Some(stages.await),
            Some(d) => tokio::time::timeout_at(d, stages).await.ok(),
        }
    };
    match finished {
        Some(resp) => resp,
        None => st.duration_timeout(timeout_parts.as_ref()),
    }
}

/// Runs the HTTP filters' request side; `Some` is a response a filter made.
async fn run_filters(
    st: &mut State,
    parts: &mut Parts,
    auth: &str,
    scheme: &str,
    random: u64,
) -> Option<Response<ResponseBody>> {
    let cx = st.cx.clone();
    let mut rand = || rand::random::<u64>();
    for entry in &cx.hcm.http_filters {
        let routed = st.routed.as_ref();
        let enabled = match routed.and_then(|r| r.filter_override(&entry.name)) {
            Some(o) => !o.disabled,
            None => !entry.disabled,
        };
        if !enabled {
            continue;
        }
        match &entry.filter {
            Filter::Fault(f) => {
                let route_cfg = routed.and_then(|r| match r.filter_config(&entry.name) {
                    Some(RouteFilterConfig::Fault(c)) => Some(c.clone()),
                    _ => None,
                });
                let cfg: &FaultConfig = route_cfg.as_deref().unwrap_or(&f.config);
                let cluster = routed.and_then(|r| r.cluster.clone());
                let view = RequestView {
                    method: &parts.method,
                    uri: &parts.uri,
                    headers: &parts.headers,
                    authority: auth,
                    scheme,
                    random,
                };
                let Some(mut decision) = f.decide(cfg, &view, cluster.as_deref(), &mut rand) else {
                    continue;
                };
                if let Some(delay) = decision.delay {
                    st.info.response_flags.insert(ResponseFlags::DELAY_INJECTED);
                    tokio::time::sleep(delay).await;
                }
                let abort = f.abort(cfg, &parts.headers, &mut decision, &mut rand);
                if let Some(active) = decision.active.take() {
                    st.held.other.push(Box::new(active));
                }
                if let Some(a) = abort {
                    st.info.response_flags.insert(ResponseFlags::FAULT_INJECTED);
                    let resp = local_reply::build_with(
                        a.status,
                        Bytes::from_static(b"fault filter abort"),
                        st.grpc,
                        a.grpc_status,
                    );
                    st.info.response_code_details = "fault_filter_abort";
                    return Some(st.finish_filter(parts, resp));
                }
            }
            Filter::Cors => {
                let Some(r) = routed else { continue };
                let mut list: Vec<&cors::CorsPolicy> = r
                    .filter_configs(&entry.name)
                    .filter_map(|c| match c {
                        RouteFilterConfig::Cors(p) => Some(&**p),
                        _ => None,
                    })
                    .collect();
                if list.is_empty() {
                    if let Action::Route(a) = &r.route().action
                        && let Some(p) = &a.cors
                    {
                        list.push(p);
                    }
                    if let Some(p) = &r.vhost.cors {
                        list.push(p);
                    }
                }
                match cors::decide(
                    &cors::Policies(&list),
                    &parts.method,
                    &parts.headers,
                    rand(),
                ) {
                    cors::Decision::Pass => {}
                    cors::Decision::Continue(enc) => st.encode.cors = enc,
                    cors::Decision::Preflight(resp, enc) => {
                        st.info.response_code_details = "cors_response";
                        st.encode.cors = enc;
                        return Some(st.finish_direct(parts, *resp));
                    }
                }
            }
            Filter::LocalRateLimit(l) => {
                let cfg = match routed.and_then(|r| r.filter_config(&entry.name)) {
                    Some(RouteFilterConfig::LocalRateLimit(c)) => c.clone(),
                    _ => l.clone(),
                };
                match local_ratelimit::decide(&cfg, &cx.rate_limits, &mut rand) {
                    local_ratelimit::Decision::Pass => {}
                    local_ratelimit::Decision::Continue {
                        encode,
                        add_request_headers,
                    } => {
                        if add_request_headers {
                            apply_mutations(
                                &cfg.request_headers_when_not_enforced,
                                &mut parts.headers,
                                &parts.method,
                                &parts.uri,
                                &st.info,
                            );
                        }
                        st.encode.ratelimit = Some(encode);
                    }
                    local_ratelimit::Decision::Limited(encode) => {
                        st.info.response_flags.insert(ResponseFlags::RATE_LIMITED);
                        st.info.response_code_details = "local_rate_limited";
                        let grpc_status = cfg.grpc_resource_exhausted.then_some(8);
                        let mut resp = local_reply::build_with(
                            cfg.status,
                            Bytes::from_static(b"local_rate_limited"),
                            st.grpc,
                            grpc_status,
                        );
                        let mut h = std::mem::take(resp.headers_mut());
                        apply_mutations(
                            &cfg.response_headers,
                            &mut h,
                            &parts.method,
                            &parts.uri,
                            &st.info,
                        );
                        local_ratelimit::limited_headers(&encode, &mut h);
                        *resp.headers_mut() = h;
                        st.encode.ratelimit = Some(encode);
                        return Some(st.finish_filter(parts, resp));
                    }
                }
            }
        }
    }
    None
}

fn apply_mutations(
    m: &HeaderMutations,
    headers: &mut HeaderMap,
    method: &Method,
    uri: &Uri,
    info: &StreamInfo,
) {
    if m.is_empty() {
        return;
    }
    if m.needs_context() {
        let snapshot = headers.clone();
        let ctx = FormatCtx {
            method,
            uri,
            req_headers: &snapshot,
            resp_headers: None,
            resp_trailers: None,
            info,
        };
        m.apply(headers, Some(&ctx));
    } else {
        m.apply(headers, None);
    }
}

/// The router: the route's action.
async fn route_action(
    st: &mut State,
    parts: Parts,
    body: Incoming,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
    auth: &str,
    scheme: &str,
) -> Response<ResponseBody> {
    let Some(routed) = &st.routed else {
        return st.local(
            &parts,
            StatusCode::NOT_FOUND,
            "",
            "route_not_found",
            ResponseFlags::NO_ROUTE_FOUND,
        );
    };
    let vhost = routed.vhost.clone();
    let route_idx = routed.route_idx;
    let matched_len = routed.matched_len;
    let route = &vhost.routes[route_idx];
    match &route.action {
        Action::DirectResponse(d) => {
            let body = d.body.clone().unwrap_or_default();
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
                let fwd_proto = forwarded_proto(&parts, scheme);
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
                    host: auth,
                    path_and_query: &pq_of(&parts),
                    matched_len,
                };
                if let Ok(v) = HeaderValue::from_str(&location(&same, &input)) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
            }
            st.info.response_code_details = "direct_response";
            st.finish(&parts, resp)
        }
        Action::Redirect(r) => {
            let fwd_proto = forwarded_proto(&parts, scheme);
            let loc = location(
                r,
                &RedirectInput {
                    scheme: &fwd_proto,
                    host: auth,
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
            super::forward::forward(st, parts, body, action, &vhost, on_upgrade).await
        }
    }
}

fn forwarded_proto(parts: &Parts, scheme: &str) -> String {
    parts
        .headers
        .get(&X_FORWARDED_PROTO)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(scheme)
        .to_string()
}

fn route_index(vhost: &VirtualHost, route: &Route) -> usize {
    vhost
        .routes
        .iter()
        .position(|r| std::ptr::eq(r, route))
        .unwrap_or(0)
}

pub(super) fn pq_of(parts: &Parts) -> String {
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

pub(super) fn set_host(parts: &mut Parts, host: &str) {
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

pub(super) fn set_path(parts: &mut Parts, pq: PathAndQuery) {
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
pub(super) struct State {
    pub cx: Arc<ConnCtx>,
    pub info: StreamInfo,
    pub routed: Option<Routed>,
    pub grpc: bool,
    pub held: Held,
    /// What the filters add to the response.
    pub encode: EncodeState,
    /// The stream's maximum duration, if any.
    pub stream_deadline: Option<Instant>,
    /// `set-cookie` values from hash policies with a cookie ttl.
    pub set_cookies: Vec<HeaderValue>,
    /// The virtual host's `include_attempt_count_in_response` (router replies carry it
    /// once an attempt was made).
    pub attempt_count_header: bool,
}

impl State {
    /// A local reply of the router (route-level response headers apply when a route
    /// was selected).
    pub fn local(
        &mut self,
        parts: &Parts,
        status: StatusCode,
        body: &'static str,
        details: &'static str,
        flags: ResponseFlags,
    ) -> Response<ResponseBody> {
        self.info.response_flags.insert(flags);
        self.info.response_code_details = details;
        let resp = local_reply::build(status, Bytes::from_static(body.as_bytes()), self.grpc);
        self.router_reply(parts, resp)
    }

    pub fn local_owned(
        &mut self,
        parts: &Parts,
        status: StatusCode,
        body: String,
        details: &'static str,
        flags: ResponseFlags,
    ) -> Response<ResponseBody> {
        self.info.response_flags.insert(flags);
        self.info.response_code_details = details;
        let resp = local_reply::build(status, Bytes::from(body), self.grpc);
        self.router_reply(parts, resp)
    }

    fn router_reply(
        &mut self,
        parts: &Parts,
        mut resp: Response<ResponseBody>,
    ) -> Response<ResponseBody> {
        if self.attempt_count_header && self.info.attempt_count > 0 {
            resp.headers_mut().insert(
                &super::request_headers::X_ENVOY_ATTEMPT_COUNT,
                super::forward::number_value(u64::from(self.info.attempt_count)),
            );
        }
        self.finish(parts, resp)
    }

    /// The stream outlived its maximum duration before a response started: Envoy's
    /// connection manager answers 504 (408 if the request was not complete; here the
    /// request side is always past its headers) with `DEADLINE_EXCEEDED` for gRPC.
    fn duration_timeout(&mut self, parts: Option<&Parts>) -> Response<ResponseBody> {
        self.info.response_code_details = "max_duration_timeout";
        let resp = local_reply::build_with(
            StatusCode::GATEWAY_TIMEOUT,
            Bytes::from_static(b"downstream duration timeout"),
            self.grpc,
            Some(4),
        );
        self.finish_parts(parts, resp, true)
    }

    /// A response a filter encodes itself (not a local reply: no route header mutations,
    /// as Envoy's CORS preflight).
    pub fn finish_direct(
        &mut self,
        parts: &Parts,
        resp: Response<ResponseBody>,
    ) -> Response<ResponseBody> {
        self.finish_parts(Some(parts), resp, false)
    }

    /// A response made by a filter. Envoy's filter manager applies the selected route's
    /// response header mutations to local replies too (checked against Envoy 1.40).
    pub fn finish_filter(
        &mut self,
        parts: &Parts,
        resp: Response<ResponseBody>,
    ) -> Response<ResponseBody> {
        self.finish_parts(Some(parts), resp, true)
    }

    /// Response-path processing common to every router response, then the completion
    /// hook.
    pub fn finish(
        &mut self,
        parts: &Parts,
        resp: Response<ResponseBody>,
    ) -> Response<ResponseBody> {
        self.finish_parts(Some(parts), resp, true)
    }

    fn finish_parts(
        &mut self,
        parts: Option<&Parts>,
        mut resp: Response<ResponseBody>,
        route_headers: bool,
    ) -> Response<ResponseBody> {
        let hcm = self.cx.hcm.clone();
        if route_headers && let (Some(routed), Some(parts)) = (&self.routed, parts) {
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
        self.encode.apply(resp.headers_mut());
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
            && let Some(id) = parts.and_then(|p| p.headers.get(&X_REQUEST_ID))
        {
            resp.headers_mut().insert(&X_REQUEST_ID, id.clone());
        }
        self.info.response_code = Some(resp.status().as_u16());
        let logging = !hcm.access_log.is_empty();
        let completion = Completion {
            cx: self.cx.clone(),
            meta: parts.filter(|_| logging).map(|parts| ReqMeta {
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                headers: parts.headers.clone(),
            }),
            resp_headers: logging.then(|| resp.headers().clone()),
            info: logging.then(|| self.info.clone()),
            _held: std::mem::take(&mut self.held),
        };
        let (rparts, body) = resp.into_parts();
        Response::from_parts(rparts, body.on_complete(Box::new(completion)))
    }
}

/// How long a stream may stay idle before its response starts: the route's
/// `idle_timeout` (0 disables), else the HCM's `stream_idle_timeout`.
pub(super) fn stream_idle(
    hcm: &HttpConnectionManager,
    route_idle: Option<Duration>,
) -> Option<Duration> {
    match route_idle {
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
        None => hcm.stream_idle_timeout,
    }
}
