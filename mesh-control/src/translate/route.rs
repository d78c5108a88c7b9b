//! HTTP routes: VirtualService `http` rules to Envoy routes (matches, weighted clusters,
//! redirects, direct responses, rewrites, header operations, mirrors, timeouts, retries,
//! fault injection, CORS), and the outbound route configurations of sidecars (one per port,
//! named by the port, with a virtual host per service carrying every name it is reachable by).

use std::collections::{BTreeMap, HashSet};

use base64::Engine;
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, HeaderValue, HeaderValueOption, RuntimeFractionalPercent, data_source,
    header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::config::route::v3::{
    Decorator, DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction,
    RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
    header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier,
    redirect_action::{self, RedirectResponseCode},
    retry_policy::{
        RetryBackOff, RetryHostPredicate, RetryPriority, retry_host_predicate, retry_priority,
    },
    route::Action,
    route_action::{self, ClusterSpecifier, MaxStreamDuration, RequestMirrorPolicy},
    route_match::PathSpecifier,
    weighted_cluster::{ClusterWeight, cluster_weight},
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy as EnvoyCors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort, HttpFault, fault_abort,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, RegexMatcher, StringMatcher, string_matcher::MatchPattern,
};
use mesh_api::naming::PASSTHROUGH_CLUSTER;
use mesh_api::networking::{
    Destination, Headers, HttpMatchRequest, HttpRedirect, HttpRetry, HttpRoute,
    RedirectPortSelection, StringMatch, StringMatchKind, UnmatchedPreflights,
};

use super::Ctx;
use super::cluster::outbound_name;
use super::hosts::{alt_hosts, host_matches, with_port};
use super::index::EffectiveVs;
use super::metadata;
use super::util::{
    any, boolv, istio_duration, ordered_map, percent_hundred, percent_to_fraction, u32v, zero,
};
use crate::registry::Service;

/// HTTP filter names; route-level overrides are keyed by them.
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
pub const CORS_FILTER: &str = "envoy.filters.http.cors";
/// Istio's cap on direct response bodies (Envoy's default is 4 KiB).
const MAX_DIRECT_RESPONSE_BODY: u32 = 1024 * 1024;

/// The context routes are built in: the listener port, the gateways they apply to (`mesh`
/// for sidecars), the proxy's labels and namespace for source matches.
pub struct RouteCtx<'a> {
    pub ctx: &'a Ctx<'a>,
    pub port: u16,
    pub gateways: &'a [String],
    /// Gateway (TLS-terminating) listeners redirect to https by default.
    pub is_tls: bool,
}

impl RouteCtx<'_> {
    fn service(&self, host: &str) -> Option<&Service> {
        self.ctx.scope.service(host).map(|s| &**s)
    }

    /// Istio's `GetDestinationCluster`: the destination port, else the service's only port,
    /// else the listener port.
    fn cluster_for(&self, d: &Destination) -> String {
        let port = match (&d.port, self.service(&d.host)) {
            (Some(p), _) => u16::try_from(p.number).unwrap_or(self.port),
            (None, Some(svc)) if svc.ports.len() == 1 => svc.ports[0].port,
            _ => self.port,
        };
        outbound_name(port, d.subset.as_deref().unwrap_or(""), &d.host)
    }

    fn source_matches(&self, m: &HttpMatchRequest) -> bool {
        if !m.gateways.is_empty() {
            return m.gateways.iter().any(|g| self.gateways.contains(g));
        }
        let proxy = &self.ctx.proxy;
        crate::registry::selects(&m.source_labels, &proxy.labels)
            && m.source_namespace
                .as_deref()
                .is_none_or(|ns| ns == proxy.namespace)
    }
}

/// Istio's `BuildHTTPRoutesForVirtualService`: every match of every rule in order, stopping
/// after the first catch-all.
pub fn routes_for_vs(rc: &RouteCtx<'_>, vs: &EffectiveVs) -> Vec<Route> {
    let mut out = Vec::new();
    for http in &vs.spec.http {
        let mut catchall = false;
        if http.r#match.is_empty() {
            out.push(translate_route(rc, vs, http, None));
            catchall = true;
        } else {
            for m in &http.r#match {
                if m.port.is_some_and(|p| p != u32::from(rc.port)) || !rc.source_matches(m) {
                    continue;
                }
                let r = translate_route(rc, vs, http, Some(m));
                let is_catchall = is_catch_all(&r);
                out.push(r);
                if is_catchall {
                    catchall = true;
                    break;
                }
            }
        }
        if catchall {
            break;
        }
    }
    out
}

fn is_catch_all(r: &Route) -> bool {
    let Some(m) = &r.r#match else { return false };
    let path_all = match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => p == "/",
        Some(PathSpecifier::PathSeparatedPrefix(p)) => p == "/",
        Some(PathSpecifier::SafeRegex(r)) => r.regex == ".*",
        _ => false,
    };
    path_all
        && m.headers.is_empty()
        && m.query_parameters.is_empty()
        && m.dynamic_metadata.is_empty()
}

fn translate_route(
    rc: &RouteCtx<'_>,
    vs: &EffectiveVs,
    http: &HttpRoute,
    m: Option<&HttpMatchRequest>,
) -> Route {
    let mut name = http.name.clone().unwrap_or_default();
    if let Some(mname) = m.and_then(|m| m.name.as_ref()) {
        name = format!("{name}.{mname}");
    }
    let mut out = Route {
        name,
        r#match: Some(route_match(m)),
        metadata: Some(metadata::config(&vs.meta)),
        ..Default::default()
    };
    if let Some(prefix) = m.and_then(|m| m.stat_prefix.clone()) {
        out.stat_prefix = prefix;
    }
    let mut authority = None;
    if let Some(h) = &http.headers {
        let ops = header_ops(h);
        out.request_headers_to_add = ops.request_add;
        out.response_headers_to_add = ops.response_add;
        out.request_headers_to_remove = ops.request_remove;
        out.response_headers_to_remove = ops.response_remove;
        authority = ops.authority;
    }
    if let Some(redirect) = &http.redirect {
        out.action = redirect_action(redirect, rc.port, rc.is_tls);
    } else if let Some(dr) = &http.direct_response {
        out.action = Some(Action::DirectResponse(DirectResponseAction {
            status: dr.status,
            body: dr.body.as_ref().and_then(|b| match (&b.string, &b.bytes) {
                (Some(s), _) => Some(DataSource {
                    specifier: Some(data_source::Specifier::InlineString(s.clone())),
                    ..Default::default()
                }),
                (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .ok()
                    .map(|bytes| DataSource {
                        specifier: Some(data_source::Specifier::InlineBytes(bytes)),
                        ..Default::default()
                    }),
                _ => None,
            }),
            ..Default::default()
        }));
    } else {
        out.action = Some(Action::Route(route_action(rc, http, authority, &mut out)));
    }
    out.decorator = Some(Decorator {
        operation: operation(&out, &vs.meta.name, rc.port),
        ..Default::default()
    });
    let mut per_filter = Vec::new();
    if let Some(fault) = http.fault.as_ref().and_then(translate_fault) {
        per_filter.push((FAULT_FILTER.to_string(), any(&fault)));
    }
    if let Some(cors) = &http.cors_policy {
        per_filter.push((CORS_FILTER.to_string(), any(&translate_cors(cors))));
    }
    out.typed_per_filter_config = ordered_map(per_filter);
    out
}

/// gRPC requests honour `grpc-timeout`, as Istio's `setTimeout` arranges: with no timeout,
/// `max_stream_duration` {0, 0} (uncapped); with one, the deprecated `max_grpc_timeout`
/// caps the header. Not `grpc_timeout_header_max` then: any `max_stream_duration` makes
/// Envoy ignore the route `timeout` for every request, gRPC or not.
#[allow(deprecated)]
fn set_grpc_timeout(
    action: &mut RouteAction,
    timeout: envoy_types::pb::google::protobuf::Duration,
) {
    if timeout.seconds == 0 && timeout.nanos == 0 {
        action.max_stream_duration = Some(MaxStreamDuration {
            max_stream_duration: Some(timeout),
            grpc_timeout_header_max: Some(timeout),
            ..Default::default()
        });
    } else {
        action.max_grpc_timeout = Some(timeout);
    }
}

fn route_action(
    rc: &RouteCtx<'_>,
    http: &HttpRoute,
    mut authority: Option<String>,
    route: &mut Route,
) -> RouteAction {
    let mut action = RouteAction::default();
    let timeout = istio_duration(&http.timeout).unwrap_or_else(zero);
    action.timeout = Some(timeout);
    set_grpc_timeout(&mut action, timeout);
    if let Some(rw) = &http.rewrite {
        if let Some(re) = &rw.uri_regex_rewrite {
            action.regex_rewrite = Some(RegexMatchAndSubstitute {
                pattern: Some(RegexMatcher {
                    regex: re.r#match.clone(),
                    ..Default::default()
                }),
                substitution: re.rewrite.clone(),
            });
        } else if let Some(uri) = rw.uri.as_ref().filter(|u| !u.is_empty()) {
            action.prefix_rewrite = uri.clone();
        }
        if let Some(a) = rw.authority.as_ref().filter(|a| !a.is_empty()) {
            authority = Some(a.clone());
        }
    }
    if let Some(a) = &authority {
        action.host_rewrite_specifier = Some(
            route_action::HostRewriteSpecifier::HostRewriteLiteral(a.clone()),
        );
    }

    let mirror_fraction = match (&http.mirror_percentage, http.mirror_percent) {
        (Some(p), _) => (p.value > 0.0).then(|| percent_to_fraction(p.value)),
        (None, Some(p)) => (p > 0).then(|| percent_hundred(p)),
        (None, None) => Some(percent_hundred(100)),
    };
    if let (Some(m), Some(f)) = (&http.mirror, mirror_fraction) {
        action
            .request_mirror_policies
            .push(mirror_policy(rc.cluster_for(m), f));
    }
    for m in &http.mirrors {
        let fraction = match &m.percentage {
            Some(p) if p.value > 0.0 => Some(percent_to_fraction(p.value)),
            Some(_) => None,
            None => Some(percent_hundred(100)),
        };
        if let Some(f) = fraction {
            action
                .request_mirror_policies
                .push(mirror_policy(rc.cluster_for(&m.destination), f));
        }
    }

    let mut consistent_hash = false;
    if http.route.len() == 1 {
        let dst = &http.route[0];
        action.cluster_specifier =
            Some(ClusterSpecifier::Cluster(rc.cluster_for(&dst.destination)));
        if let Some(h) = &dst.headers {
            let ops = header_ops(h);
            route.request_headers_to_add.extend(ops.request_add);
            route.request_headers_to_remove.extend(ops.request_remove);
            route.response_headers_to_add.extend(ops.response_add);
            route.response_headers_to_remove.extend(ops.response_remove);
            if let (Some(a), None) = (ops.authority, &action.host_rewrite_specifier) {
                action.host_rewrite_specifier =
                    Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(a));
            }
        }
        if let Some(hp) = hash_policy(rc, &dst.destination) {
            action.hash_policy.push(hp);
            consistent_hash = true;
        }
    } else {
        let mut clusters = Vec::new();
        for dst in &http.route {
            let weight = dst.weight.unwrap_or(0);
            if weight <= 0 {
                // Zero-weight destinations are left out when others exist.
                continue;
            }
            let mut cw = ClusterWeight {
                name: rc.cluster_for(&dst.destination),
                weight: Some(u32v(weight as u32)),
                ..Default::default()
            };
            if let Some(h) = &dst.headers {
                let ops = header_ops(h);
                cw.request_headers_to_add = ops.request_add;
                cw.request_headers_to_remove = ops.request_remove;
                cw.response_headers_to_add = ops.response_add;
                cw.response_headers_to_remove = ops.response_remove;
                if let Some(a) = ops.authority {
                    cw.host_rewrite_specifier =
                        Some(cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(a));
                }
            }
            if let Some(hp) = hash_policy(rc, &dst.destination) {
                action.hash_policy.push(hp);
            }
            clusters.push(cw);
        }
        action.cluster_specifier = Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters,
            ..Default::default()
        }));
    }
    action.retry_policy = retry_policy(
        http.retries.as_ref(),
        rc.ctx.snapshot.mesh().default_http_retry_policy.as_ref(),
        consistent_hash,
    );
    action
}

fn mirror_policy(
    cluster: String,
    fraction: envoy_types::pb::envoy::r#type::v3::FractionalPercent,
) -> RequestMirrorPolicy {
    RequestMirrorPolicy {
        cluster,
        runtime_fraction: Some(RuntimeFractionalPercent {
            default_value: Some(fraction),
            ..Default::default()
        }),
        trace_sampled: Some(boolv(false)),
        ..Default::default()
    }
}

/// The hash policy of a DestinationRule's consistent-hash load balancer for a destination.
fn hash_policy(rc: &RouteCtx<'_>, d: &Destination) -> Option<route_action::HashPolicy> {
    use route_action::hash_policy::{
        ConnectionProperties, Cookie, Header, PolicySpecifier, QueryParameter,
    };
    let svc_ns = rc.service(&d.host).map(|s| s.namespace.clone());
    let dr = rc.ctx.destination_rule(&d.host, svc_ns.as_deref())?;
    let port = d.port.as_ref().map(|p| p.number);
    let from_policy = |p: &mesh_api::networking::TrafficPolicy| {
        let pls = port.and_then(|n| {
            p.port_level_settings
                .iter()
                .find(|s| s.port.as_ref().is_some_and(|pp| pp.number == n))
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.consistent_hash.clone())
        });
        pls.or_else(|| {
            p.load_balancer
                .as_ref()
                .and_then(|lb| lb.consistent_hash.clone())
        })
    };
    let subset_hash = d
        .subset
        .as_ref()
        .and_then(|s| dr.spec.subsets.iter().find(|x| &x.name == s))
        .and_then(|s| s.traffic_policy.as_ref())
        .and_then(from_policy);
    let hash = subset_hash.or_else(|| dr.spec.traffic_policy.as_ref().and_then(from_policy))?;
    let spec = if let Some(h) = &hash.http_header_name {
        PolicySpecifier::Header(Header {
            header_name: h.clone(),
            ..Default::default()
        })
    } else if let Some(c) = &hash.http_cookie {
        PolicySpecifier::Cookie(Cookie {
            name: c.name.clone(),
            ttl: istio_duration(&c.ttl),
            path: c.path.clone().unwrap_or_default(),
            ..Default::default()
        })
    } else if hash.use_source_ip == Some(true) {
        PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true })
    } else if let Some(q) = &hash.http_query_parameter_name {
        PolicySpecifier::QueryParameter(QueryParameter { name: q.clone() })
    } else {
        return None;
    };
    Some(route_action::HashPolicy {
        policy_specifier: Some(spec),
        ..Default::default()
    })
}

/// Istio's `retry.ConvertPolicy`: the route's policy, else the mesh's
/// `defaultHttpRetryPolicy`, else Istio's default (2 retries on
/// `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes` with 503,
/// other hosts preferred, 5 host selection attempts). `attempts: 0` turns retries off.
/// Otherwise the default is overridden field by field: attempts, `retryOn` (gRPC names pass
/// through, as Envoy takes them in `retry_on`; numbers become `retriable_status_codes`),
/// per-try timeout, whether to prefer other hosts, other localities
/// (`previous_priorities`) and the backoff base interval.
pub fn retry_policy(
    retries: Option<&HttpRetry>,
    mesh_default: Option<&HttpRetry>,
    consistent_hash: bool,
) -> Option<RetryPolicy> {
    let mut out = RetryPolicy {
        num_retries: Some(u32v(2)),
        retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
            .to_string(),
        host_selection_retry_max_attempts: 5,
        retriable_status_codes: vec![503],
        ..Default::default()
    };
    if !consistent_hash {
        // Prefer hosts not tried yet (not with consistent hashing: the hash picks the host).
        out.retry_host_predicate = vec![previous_hosts()];
    }
    let Some(r) = retries.or(mesh_default) else {
        return Some(out);
    };
    if r.attempts <= 0 {
        return None;
    }
    out.num_retries = Some(u32v(r.attempts.unsigned_abs()));
    if let Some(on) = r.retry_on.as_ref().filter(|s| !s.is_empty()) {
        let mut codes = Vec::new();
        let mut rest = Vec::new();
        for part in on.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.parse::<u32>() {
                Ok(code) if (100..600).contains(&code) => codes.push(code),
                _ => rest.push(part.to_string()),
            }
        }
        let mut retry_on = rest.join(",");
        if !codes.is_empty() && !retry_on.contains("retriable-status-codes") {
            if !retry_on.is_empty() {
                retry_on.push(',');
            }
            retry_on.push_str("retriable-status-codes");
        }
        out.retry_on = retry_on;
        out.retriable_status_codes = codes;
    }
    if let Some(t) = istio_duration(&r.per_try_timeout) {
        out.per_try_timeout = Some(t);
    }
    if let Some(ignore) = r.retry_ignore_previous_hosts {
        out.retry_host_predicate = if ignore {
            vec![previous_hosts()]
        } else {
            Vec::new()
        };
    }
    if r.retry_remote_localities == Some(true) {
        out.retry_priority = Some(RetryPriority {
            name: "envoy.retry_priorities.previous_priorities".to_string(),
            config_type: Some(retry_priority::ConfigType::TypedConfig(any(
                &PreviousPrioritiesConfig {
                    update_frequency: 2,
                },
            ))),
        });
    }
    if let Some(b) = istio_duration(&r.backoff) {
        out.retry_back_off = Some(RetryBackOff {
            base_interval: Some(b),
            ..Default::default()
        });
    }
    Some(out)
}

fn previous_hosts() -> RetryHostPredicate {
    RetryHostPredicate {
        name: "envoy.retry_host_predicates.previous_hosts".to_string(),
        config_type: Some(retry_host_predicate::ConfigType::TypedConfig(any(
            &PreviousHostsPredicate {},
        ))),
    }
}

fn redirect_action(r: &HttpRedirect, port: u16, is_tls: bool) -> Option<Action> {
    let mut action = RedirectAction {
        host_redirect: r.authority.clone().unwrap_or_default(),
        path_rewrite_specifier: r
            .uri
            .clone()
            .map(redirect_action::PathRewriteSpecifier::PathRedirect),
        ..Default::default()
    };
    if let Some(s) = r.scheme.as_ref().filter(|s| !s.is_empty()) {
        action.scheme_rewrite_specifier = Some(
            redirect_action::SchemeRewriteSpecifier::SchemeRedirect(s.clone()),
        );
    }
    let explicit_port = match (r.port, r.derive_port) {
        (Some(p), _) => Some(p),
        (None, Some(RedirectPortSelection::FromRequestPort)) => Some(u32::from(port)),
        _ => None,
    };
    if let Some(p) = explicit_port {
        let scheme = r.scheme.clone().unwrap_or_else(|| {
            if is_tls {
                "https".to_string()
            } else {
                "http".to_string()
            }
        });
        // No explicit :80 / :443 for their default schemes.
        action.port_redirect = if (p == 80 && scheme == "http") || (p == 443 && scheme == "https") {
            0
        } else {
            p
        };
    }
    action.response_code = match r.redirect_code.unwrap_or(301) {
        301 => RedirectResponseCode::MovedPermanently,
        302 => RedirectResponseCode::Found,
        303 => RedirectResponseCode::SeeOther,
        307 => RedirectResponseCode::TemporaryRedirect,
        308 => RedirectResponseCode::PermanentRedirect,
        // Validation rejects other codes; a route without action is dropped by Envoy's
        // rules, so fall back to 301 rather than emit an invalid route.
        _ => RedirectResponseCode::MovedPermanently,
    } as i32;
    Some(Action::Redirect(action))
}

/// Istio's `TranslateRouteMatch`.
pub fn route_match(m: Option<&HttpMatchRequest>) -> RouteMatch {
    let mut out = RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix("/".to_string())),
        ..Default::default()
    };
    let Some(m) = m else { return out };
    for (name, sm) in &m.headers {
        out.headers.push(header_matcher(name, sm));
    }
    for (name, sm) in &m.without_headers {
        let mut h = header_matcher(name, sm);
        h.invert_match = true;
        if !present_match(sm) {
            h.treat_missing_header_as_empty = true;
        }
        out.headers.push(h);
    }
    out.headers.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(uri) = m.uri.as_ref().and_then(StringMatch::kind) {
        out.path_specifier = Some(match uri {
            StringMatchKind::Exact(p) => PathSpecifier::Path(p.to_string()),
            StringMatchKind::Prefix(p) => PathSpecifier::Prefix(p.to_string()),
            StringMatchKind::Regex(r) => PathSpecifier::SafeRegex(RegexMatcher {
                regex: r.to_string(),
                ..Default::default()
            }),
        });
    }
    out.case_sensitive = Some(boolv(m.ignore_uri_case != Some(true)));
    if let Some(method) = &m.method {
        out.headers.push(header_matcher(":method", method));
    }
    if let Some(authority) = &m.authority {
        out.headers.push(header_matcher(":authority", authority));
    }
    if let Some(scheme) = &m.scheme {
        out.headers.push(header_matcher(":scheme", scheme));
    }
    for (name, sm) in &m.query_params {
        out.query_parameters.push(QueryParameterMatcher {
            name: name.clone(),
            query_parameter_match_specifier: Some(if present_match(sm) {
                QueryParameterMatchSpecifier::PresentMatch(true)
            } else {
                QueryParameterMatchSpecifier::StringMatch(string_matcher(sm))
            }),
        });
    }
    out
}

/// An empty match, or Istio's `regex: "*"`, means "present".
fn present_match(sm: &StringMatch) -> bool {
    match sm.kind() {
        None => true,
        Some(StringMatchKind::Regex(r)) => r == "*",
        _ => false,
    }
}

fn string_matcher(sm: &StringMatch) -> StringMatcher {
    let pattern = match sm.kind() {
        Some(StringMatchKind::Exact(e)) => MatchPattern::Exact(e.to_string()),
        Some(StringMatchKind::Prefix(p)) => MatchPattern::Prefix(p.to_string()),
        Some(StringMatchKind::Regex(r)) => MatchPattern::SafeRegex(RegexMatcher {
            regex: r.to_string(),
            ..Default::default()
        }),
        None => MatchPattern::Prefix(String::new()),
    };
    StringMatcher {
        match_pattern: Some(pattern),
        ignore_case: false,
    }
}

fn header_matcher(name: &str, sm: &StringMatch) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(if present_match(sm) {
            HeaderMatchSpecifier::PresentMatch(true)
        } else {
            HeaderMatchSpecifier::StringMatch(string_matcher(sm))
        }),
        ..Default::default()
    }
}

struct HeaderOps {
    request_add: Vec<HeaderValueOption>,
    response_add: Vec<HeaderValueOption>,
    request_remove: Vec<String>,
    response_remove: Vec<String>,
    authority: Option<String>,
}

fn is_internal(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

fn is_authority(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

fn header_values(
    map: &BTreeMap<String, String>,
    append: bool,
) -> (Vec<HeaderValueOption>, Option<String>) {
    let mut authority = None;
    let mut out = Vec::new();
    for (k, v) in map {
        if is_authority(k) {
            authority = Some(v.clone());
        }
        if is_internal(k) {
            continue;
        }
        out.push(HeaderValueOption {
            header: Some(HeaderValue {
                key: k.clone(),
                value: v.clone(),
                ..Default::default()
            }),
            append_action: if append {
                HeaderAppendAction::AppendIfExistsOrAdd
            } else {
                HeaderAppendAction::OverwriteIfExistsOrAdd
            } as i32,
            ..Default::default()
        });
    }
    (out, authority)
}

/// Istio's header operations: `set` overwrites, `add` appends, `:authority`/`host` become a
/// host rewrite (`set` wins over `add`), pseudo-headers are never touched.
fn header_ops(h: &Headers) -> HeaderOps {
    let empty = Default::default();
    let req = h.request.as_ref().unwrap_or(&empty);
    let resp = h.response.as_ref().unwrap_or(&empty);
    let (mut request_add, set_auth) = header_values(&req.set, false);
    let (req_append, add_auth) = header_values(&req.add, true);
    request_add.extend(req_append);
    let (mut response_add, _) = header_values(&resp.set, false);
    response_add.extend(header_values(&resp.add, true).0);
    HeaderOps {
        request_add,
        response_add,
        request_remove: req
            .remove
            .iter()
            .filter(|k| !is_internal(k))
            .cloned()
            .collect(),
        response_remove: resp
            .remove
            .iter()
            .filter(|k| !is_internal(k))
            .cloned()
            .collect(),
        authority: set_auth.or(add_auth),
    }
}

fn translate_fault(f: &mesh_api::networking::HttpFaultInjection) -> Option<HttpFault> {
    let mut out = HttpFault::default();
    if let Some(d) = &f.delay {
        let percentage = match &d.percentage {
            Some(p) => percent_to_fraction(p.value),
            None => percent_hundred(d.percent.unwrap_or(0).max(0) as u32),
        };
        // Exponential delays are not supported by Envoy's fault filter (nor by Istio).
        if let Some(fixed) = istio_duration(&d.fixed_delay) {
            out.delay = Some(FaultDelay {
                percentage: Some(percentage),
                fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(fixed)),
            });
        }
    }
    if let Some(a) = &f.abort {
        let error = if let Some(status) = a.http_status {
            Some(fault_abort::ErrorType::HttpStatus(status.max(0) as u32))
        } else {
            a.grpc_status
                .as_deref()
                .and_then(grpc_code)
                .map(fault_abort::ErrorType::GrpcStatus)
        };
        if let Some(error) = error {
            out.abort = Some(FaultAbort {
                percentage: a.percentage.as_ref().map(|p| percent_to_fraction(p.value)),
                error_type: Some(error),
                ..Default::default()
            });
        }
    }
    (out.delay.is_some() || out.abort.is_some()).then_some(out)
}

fn grpc_code(name: &str) -> Option<u32> {
    const CODES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    CODES.iter().position(|c| *c == name).map(|i| i as u32)
}

fn translate_cors(c: &mesh_api::networking::CorsPolicy) -> EnvoyCors {
    let origins: Vec<StringMatcher> = if !c.allow_origins.is_empty() {
        c.allow_origins.iter().map(string_matcher).collect()
    } else {
        c.allow_origin
            .iter()
            .map(|o| StringMatcher {
                match_pattern: Some(MatchPattern::Exact(o.clone())),
                ignore_case: false,
            })
            .collect()
    };
    EnvoyCors {
        allow_origin_string_match: origins,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: istio_duration(&c.max_age)
            .map(|d| d.seconds.to_string())
            .unwrap_or_default(),
        allow_credentials: c.allow_credentials.map(boolv),
        filter_enabled: Some(RuntimeFractionalPercent {
            default_value: Some(percent_hundred(100)),
            ..Default::default()
        }),
        forward_not_matching_preflights: Some(boolv(
            c.unmatched_preflights != Some(UnmatchedPreflights::Ignore),
        )),
        ..Default::default()
    }
}

/// A readable operation name for traces: `host:port/path` for one destination, else
/// `<virtual service>:port/path`.
fn operation(r: &Route, vs_name: &str, port: u16) -> String {
    let path = match r.r#match.as_ref().and_then(|m| m.path_specifier.as_ref()) {
        Some(PathSpecifier::Prefix(p)) => format!("{p}*"),
        Some(PathSpecifier::Path(p)) => p.clone(),
        Some(PathSpecifier::SafeRegex(re)) => re.regex.clone(),
        _ => "/*".to_string(),
    };
    if let Some(Action::Route(a)) = &r.action
        && let Some(ClusterSpecifier::Cluster(c)) = &a.cluster_specifier
    {
        let parts: Vec<&str> = c.split('|').collect();
        if parts.len() == 4 {
            return format!("{}:{}{path}", parts[3], parts[1]);
        }
    }
    format!("{vs_name}:{port}{path}")
}

/// The route of a service without VirtualService: everything to its cluster, the mesh's
/// default retries, no timeout.
pub fn default_route(
    cluster: String,
    host: &str,
    port: u16,
    mesh_retry: Option<&HttpRetry>,
) -> Route {
    Route {
        name: "default".to_string(),
        r#match: Some(route_match(None)),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster)),
            timeout: Some(zero()),
            max_stream_duration: Some(MaxStreamDuration {
                grpc_timeout_header_max: Some(zero()),
                ..Default::default()
            }),
            retry_policy: retry_policy(None, mesh_retry, false),
            ..Default::default()
        })),
        decorator: Some(Decorator {
            operation: format!("{host}:{port}/*"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The default route of a service port, with the consistent-hash policy of its
/// DestinationRule (Istio's `hashForService`).
fn default_route_for(rc: &RouteCtx<'_>, svc: &Service, port: u16) -> Route {
    let mut r = default_route(
        outbound_name(port, "", &svc.hostname),
        &svc.hostname,
        port,
        rc.ctx.snapshot.mesh().default_http_retry_policy.as_ref(),
    );
    let dest = Destination {
        host: svc.hostname.clone(),
        subset: None,
        port: Some(mesh_api::networking::PortSelector {
            number: u32::from(port),
        }),
    };
    if let (Some(hp), Some(Action::Route(a))) = (hash_policy(rc, &dest), r.action.as_mut()) {
        // Istio builds the default route's retries before the hash, so it keeps the
        // previous-hosts predicate here (unlike routes of a VirtualService).
        a.hash_policy.push(hp);
    }
    r
}

/// Every name a service is reachable by from this proxy, with and without the port:
/// FQDN, the short forms for Kubernetes services, the VIP.
pub fn service_domains(svc: &Service, port: u16, proxy_domain: &str) -> Vec<String> {
    let mut out = vec![svc.hostname.clone(), with_port(&svc.hostname, port)];
    for alt in alt_hosts(&svc.hostname, proxy_domain) {
        let with = with_port(&alt, port);
        out.push(alt);
        out.push(with);
    }
    for addr in &svc.addresses {
        if addr.parse::<std::net::IpAddr>().is_ok() && addr != "0.0.0.0" {
            out.push(if addr.contains(':') {
                format!("[{addr}]")
            } else {
                addr.clone()
            });
            out.push(with_port(addr, port));
        }
    }
    out
}

/// The outbound route configuration for HTTP port `port` of a sidecar (named by the port),
/// from the port's virtual hosts ([`outbound_virtual_hosts`]).
pub fn outbound_route_config(
    ctx: &Ctx<'_>,
    port: u16,
    mut vhosts: Vec<VirtualHost>,
) -> RouteConfiguration {
    vhosts.push(catch_all_vhost(ctx));
    RouteConfiguration {
        name: port.to_string(),
        virtual_hosts: vhosts,
        validate_clusters: Some(boolv(false)),
        max_direct_response_body_size_bytes: Some(u32v(MAX_DIRECT_RESPONSE_BODY)),
        ..Default::default()
    }
}

/// The route configuration of an undeclared-protocol port (`host:port`): only the service's
/// own virtual host (from the port's virtual hosts), matching any authority.
pub fn sniffed_route_config(
    svc: &Service,
    port: u16,
    port_vhosts: &[VirtualHost],
) -> RouteConfiguration {
    let name = with_port(&svc.hostname, port);
    let vhost = port_vhosts
        .iter()
        .find(|v| v.domains.iter().any(|d| *d == svc.hostname || *d == name))
        .map(|v| VirtualHost {
            domains: vec!["*".to_string()],
            ..v.clone()
        });
    RouteConfiguration {
        name,
        virtual_hosts: vhost.into_iter().collect(),
        validate_clusters: Some(boolv(false)),
        max_direct_response_body_size_bytes: Some(u32v(MAX_DIRECT_RESPONSE_BODY)),
        ..Default::default()
    }
}

fn http_like(svc: &Service, port: u16) -> bool {
    svc.port(port).is_some_and(|p| {
        p.protocol.is_http() || p.protocol == mesh_api::naming::Protocol::Unsupported
    })
}

/// Istio's `BuildSidecarOutboundVirtualHosts` for one port: a virtual host per VirtualService
/// host and per service without one, sorted by name, domains unique.
pub fn outbound_virtual_hosts(ctx: &Ctx<'_>, port: u16) -> Vec<VirtualHost> {
    let gateways = [super::index::MESH_GATEWAY.to_string()];
    let rc = RouteCtx {
        ctx,
        port,
        gateways: &gateways,
        is_tls: false,
    };
    let services: Vec<&Service> = ctx
        .scope
        .services
        .iter()
        .map(|s| &**s)
        .filter(|s| http_like(s, port))
        .collect();
    let by_host: std::collections::HashMap<&str, &Service> =
        services.iter().map(|s| (s.hostname.as_str(), *s)).collect();
    let mut taken: HashSet<&str> = HashSet::new();
    let mut vhosts: Vec<VirtualHost> = Vec::new();
    let proxy_domain = ctx.proxy.dns_domain.as_str();
    let contains = |v: &[&Service], s: &Service| v.iter().any(|m| std::ptr::eq(*m, s));

    for (vs, hosts) in &ctx.scope.mesh_virtual_services {
        let mut matched: Vec<&Service> = Vec::new();
        let mut other_hosts: Vec<&String> = Vec::new();
        for h in hosts {
            if h.starts_with('*') {
                let mut any = false;
                for s in &services {
                    if host_matches(h, &s.hostname)
                        && !taken.contains(s.hostname.as_str())
                        && !contains(&matched, s)
                    {
                        matched.push(s);
                        any = true;
                    }
                }
                if !any {
                    other_hosts.push(h);
                }
            } else if let Some(s) = by_host.get(h.as_str()) {
                if !contains(&matched, s) {
                    matched.push(s);
                }
            } else {
                other_hosts.push(h);
            }
        }
        // Istio keeps non-registry hosts only on port 80 unless a service of the rule is on this port.
        if matched.is_empty() && port != 80 {
            continue;
        }
        let routes = routes_for_vs(&rc, vs);
        if routes.is_empty() {
            continue;
        }
        for h in other_hosts {
            vhosts.push(VirtualHost {
                name: with_port(h, port),
                domains: vec![h.clone(), with_port(h, port)],
                routes: routes.clone(),
                include_request_attempt_count: true,
                ..Default::default()
            });
        }
        for s in matched {
            taken.insert(s.hostname.as_str());
            vhosts.push(VirtualHost {
                name: with_port(&s.hostname, port),
                domains: service_domains(s, port, proxy_domain),
                routes: routes.clone(),
                include_request_attempt_count: true,
                ..Default::default()
            });
        }
    }
    for s in &services {
        if taken.contains(s.hostname.as_str()) {
            continue;
        }
        vhosts.push(VirtualHost {
            name: with_port(&s.hostname, port),
            domains: service_domains(s, port, proxy_domain),
            routes: vec![default_route_for(&rc, s, port)],
            include_request_attempt_count: true,
            ..Default::default()
        });
    }
    dedupe_vhosts(&mut vhosts);
    vhosts
}

/// Envoy rejects a route configuration where two virtual hosts share a name or a domain:
/// keep the first of each (Istio does the same and counts the duplicates).
pub fn dedupe_vhosts(vhosts: &mut Vec<VirtualHost>) {
    let mut names = HashSet::new();
    let mut domains = HashSet::new();
    vhosts.retain_mut(|v| {
        if !names.insert(v.name.clone()) {
            return false;
        }
        v.domains.retain(|d| domains.insert(d.to_ascii_lowercase()));
        !v.domains.is_empty()
    });
    vhosts.sort_by(|a, b| a.name.cmp(&b.name));
}

/// The last virtual host: unknown hosts go to `PassthroughCluster` (ALLOW_ANY) or get a 502
/// (REGISTRY_ONLY).
fn catch_all_vhost(ctx: &Ctx<'_>) -> VirtualHost {
    if ctx.scope.allow_any() {
        let cluster = match &ctx.scope.egress_proxy {
            Some(d) => {
                let port = d.port.as_ref().map(|p| p.number as u16).unwrap_or(0);
                outbound_name(port, d.subset.as_deref().unwrap_or(""), &d.host)
            }
            None => PASSTHROUGH_CLUSTER.to_string(),
        };
        VirtualHost {
            name: "allow_any".to_string(),
            domains: vec!["*".to_string()],
            routes: vec![Route {
                name: "allow_any".to_string(),
                r#match: Some(route_match(None)),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(cluster)),
                    timeout: Some(zero()),
                    max_stream_duration: Some(MaxStreamDuration {
                        grpc_timeout_header_max: Some(zero()),
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            include_request_attempt_count: true,
            ..Default::default()
        }
    } else {
        VirtualHost {
            name: "block_all".to_string(),
            domains: vec!["*".to_string()],
            routes: vec![Route {
                name: "block_all".to_string(),
                r#match: Some(route_match(None)),
                action: Some(Action::DirectResponse(DirectResponseAction {
                    status: 502,
                    ..Default::default()
                })),
                ..Default::default()
            }],
            include_request_attempt_count: true,
            ..Default::default()
        }
    }
}

/// A virtual host answering 404 for every request, for gateway servers no rule covers.
pub fn not_found_vhost(port: u16) -> VirtualHost {
    VirtualHost {
        name: format!("blackhole:{port}"),
        domains: vec!["*".to_string()],
        routes: vec![Route {
            name: "default".to_string(),
            r#match: Some(route_match(None)),
            action: Some(Action::DirectResponse(DirectResponseAction {
                status: 404,
                ..Default::default()
            })),
            ..Default::default()
        }],
        ..Default::default()
    }
}
