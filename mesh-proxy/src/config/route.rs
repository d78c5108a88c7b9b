//! RouteConfiguration (RDS or inline in the HCM) as domain types: virtual hosts with a
//! precomputed domain table, routes with compiled matchers, actions and header
//! mutations. Built once per xDS update by `TryFrom<&proto>`; the request path reads
//! only these types. Every field that changes routing and is not implemented is
//! rejected by name (see `SUPPORTED.md`).

// Envoy still honours deprecated fields (header matcher variants, `append`,
// `total_weight`, ...); configs from older control planes use them, so we read them too.
#![allow(deprecated)]

use std::{collections::HashMap, sync::Arc};

use envoy_types::pb::{
    envoy::config::route::v3::{self as rpb, route::Action as PbAction},
    google::protobuf::Any,
};

use crate::http::filters::{
    RouteFilterConfig, cors::CorsPolicy, route_config as route_filter_config,
};

use super::{
    ConfigError,
    route_action::{
        DEFAULT_MAX_DIRECT_RESPONSE_BODY, DirectResponse, MirrorPolicy, Redirect, RetryPolicy,
        RouteAction,
    },
    route_headers::HeaderMutations,
    route_match::{DomainTable, Fraction, HeaderMatcher, PathMatch, QueryParamMatcher, full_regex},
};

const TYPE_FILTER_CONFIG: &str = "type.googleapis.com/envoy.config.route.v3.FilterConfig";

/// Per-filter overrides (`typed_per_filter_config`), keyed by filter name and parsed
/// here by their type (fault, CORS policy, local rate limit). A config of any other type
/// is rejected unless it is optional (then ignored, as Envoy does) or only disables the
/// filter, because an override we cannot apply changes traffic.
#[derive(Debug, Clone, Default)]
pub struct FilterConfigs(pub HashMap<String, FilterOverride>);

#[derive(Debug, Clone)]
pub struct FilterOverride {
    /// `FilterConfig.disabled`: the filter is off for this route.
    pub disabled: bool,
    /// The parsed config (`None` for a bare `FilterConfig` that only enables or disables).
    pub config: Option<RouteFilterConfig>,
}

impl FilterConfigs {
    pub fn try_from_proto(m: &HashMap<String, Any>, field: &str) -> Result<Self, ConfigError> {
        let mut out = HashMap::new();
        for (name, any) in m {
            let f = format!("{field}[{name:?}]");
            let (disabled, optional, inner) = if any.type_url == TYPE_FILTER_CONFIG {
                let fc: rpb::FilterConfig =
                    prost::Message::decode(any.value.as_slice()).map_err(|e| {
                        ConfigError::field(&f, format!("cannot decode FilterConfig: {e}"))
                    })?;
                (fc.disabled, fc.is_optional, fc.config)
            } else {
                (false, false, Some(any.clone()))
            };
            let config = match &inner {
                None => None,
                Some(any) => match route_filter_config(any) {
                    Ok(Some(c)) => Some(c),
                    // Unknown but optional: ignored. Unknown but disabling: the filter
                    // cannot run anyway.
                    Ok(None) if optional || disabled => {
                        if optional && !disabled {
                            continue;
                        }
                        None
                    }
                    Ok(None) => {
                        return Err(ConfigError::field(
                            f,
                            format!(
                                "per-route config {} for http filter {name:?} is not supported",
                                any.type_url
                            ),
                        ));
                    }
                    Err(e) => return Err(e.at(&f)),
                },
            };
            out.insert(name.clone(), FilterOverride { disabled, config });
        }
        Ok(FilterConfigs(out))
    }

    pub fn get(&self, name: &str) -> Option<&FilterOverride> {
        self.0.get(name)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct RouteConfiguration {
    pub name: Arc<str>,
    pub virtual_hosts: Vec<Arc<VirtualHost>>,
    domains: DomainTable,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub most_specific_header_mutations_wins: bool,
    pub ignore_port_in_host_matching: bool,
    pub ignore_path_parameters_in_path_matching: bool,
    /// Match on this header instead of `:authority`.
    pub vhost_header: Option<http::HeaderName>,
    pub internal_only_headers: Vec<http::HeaderName>,
    pub request_mirror_policies: Vec<MirrorPolicy>,
    pub typed_per_filter_config: FilterConfigs,
}

#[derive(Debug, Clone)]
pub struct VirtualHost {
    pub name: Arc<str>,
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub retry_policy: Option<RetryPolicy>,
    pub request_mirror_policies: Vec<MirrorPolicy>,
    pub include_request_attempt_count: bool,
    pub include_attempt_count_in_response: bool,
    /// `x-envoy-is-timeout-retry: true` on retries after a per-try timeout.
    pub include_is_timeout_retry_header: bool,
    pub typed_per_filter_config: FilterConfigs,
    /// The deprecated `cors` policy (used by the CORS filter when no per-filter config).
    pub cors: Option<Arc<CorsPolicy>>,
    /// `request_body_buffer_limit` / `per_request_buffer_limit_bytes`.
    pub buffer_limit: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: Option<Arc<str>>,
    pub matcher: RouteMatch,
    pub action: Action,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub typed_per_filter_config: FilterConfigs,
    /// `decorator.operation`, descriptive (tracing).
    pub operation: Option<String>,
    /// `request_body_buffer_limit` / `per_request_buffer_limit_bytes`.
    pub buffer_limit: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub case_sensitive: bool,
    pub headers: Vec<HeaderMatcher>,
    pub query_parameters: Vec<QueryParamMatcher>,
    pub runtime_fraction: Option<Fraction>,
    pub grpc: bool,
}

#[derive(Debug, Clone)]
pub enum Action {
    Route(Box<RouteAction>),
    Redirect(Redirect),
    DirectResponse(DirectResponse),
    /// `non_forwarding_action`: no router action (for filters that answer themselves);
    /// the router answers 404 as Envoy does when no filter responded.
    NonForwarding,
}

impl TryFrom<&rpb::RouteConfiguration> for RouteConfiguration {
    type Error = ConfigError;

    fn try_from(p: &rpb::RouteConfiguration) -> Result<Self, ConfigError> {
        route_configuration(p).map_err(|e| e.in_resource(&p.name))
    }
}

/// Converts with field paths relative to the RouteConfiguration (so an inline route
/// config inside an HCM can prefix them).
pub fn route_configuration(p: &rpb::RouteConfiguration) -> Result<RouteConfiguration, ConfigError> {
    let unsupported = |name: &str| ConfigError::field(name, "is not supported");
    if p.vhds.is_some() {
        return Err(unsupported("vhds"));
    }
    if !p.cluster_specifier_plugins.is_empty() {
        return Err(unsupported("cluster_specifier_plugins"));
    }
    if !p.route_specifiers.is_empty() {
        return Err(unsupported("route_specifiers"));
    }
    let max_body = p
        .max_direct_response_body_size_bytes
        .as_ref()
        .map_or(DEFAULT_MAX_DIRECT_RESPONSE_BODY, |v| v.value as usize);
    let mut domains = DomainTable::default();
    let mut virtual_hosts = Vec::with_capacity(p.virtual_hosts.len());
    let mut names = std::collections::HashSet::new();
    for (i, vh) in p.virtual_hosts.iter().enumerate() {
        let at = format!("virtual_hosts[{i}]");
        if !names.insert(vh.name.as_str()) {
            return Err(ConfigError::field(
                format!("{at}.name"),
                format!("duplicate virtual host name {:?}", vh.name),
            ));
        }
        let v = virtual_host(vh, max_body).map_err(|e| e.at(&at))?;
        for (j, d) in vh.domains.iter().enumerate() {
            domains
                .insert(d, i)
                .map_err(|m| ConfigError::field(format!("{at}.domains[{j}]"), m))?;
        }
        virtual_hosts.push(Arc::new(v));
    }
    let mut internal_only_headers = Vec::new();
    for (i, h) in p.internal_only_headers.iter().enumerate() {
        internal_only_headers.push(
            http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).map_err(|_| {
                ConfigError::field(
                    format!("internal_only_headers[{i}]"),
                    format!("invalid header name {h:?}"),
                )
            })?,
        );
    }
    let vhost_header = (!p.vhost_header.is_empty())
        .then(|| {
            http::HeaderName::from_bytes(p.vhost_header.to_ascii_lowercase().as_bytes()).map_err(
                |_| {
                    ConfigError::field(
                        "vhost_header",
                        format!("invalid header name {:?}", p.vhost_header),
                    )
                },
            )
        })
        .transpose()?;
    Ok(RouteConfiguration {
        name: Arc::from(p.name.as_str()),
        virtual_hosts,
        domains,
        request_headers: HeaderMutations::try_from_proto(
            &p.request_headers_to_add,
            &p.request_headers_to_remove,
            "request_headers_to_add",
            "request_headers_to_remove",
        )?,
        response_headers: HeaderMutations::try_from_proto(
            &p.response_headers_to_add,
            &p.response_headers_to_remove,
            "response_headers_to_add",
            "response_headers_to_remove",
        )?,
        most_specific_header_mutations_wins: p.most_specific_header_mutations_wins,
        ignore_port_in_host_matching: p.ignore_port_in_host_matching,
        ignore_path_parameters_in_path_matching: p.ignore_path_parameters_in_path_matching,
        vhost_header,
        internal_only_headers,
        request_mirror_policies: mirrors(&p.request_mirror_policies, "request_mirror_policies")?,
        typed_per_filter_config: FilterConfigs::try_from_proto(
            &p.typed_per_filter_config,
            "typed_per_filter_config",
        )?,
    })
}

fn mirrors(
    m: &[rpb::route_action::RequestMirrorPolicy],
    field: &str,
) -> Result<Vec<MirrorPolicy>, ConfigError> {
    m.iter()
        .enumerate()
        .map(|(i, m)| MirrorPolicy::try_from_proto(m, &format!("{field}[{i}]")))
        .collect()
}

fn virtual_host(p: &rpb::VirtualHost, max_body: usize) -> Result<VirtualHost, ConfigError> {
    let unsupported = |name: &str| ConfigError::field(name, "is not supported");
    if p.domains.is_empty() {
        return Err(ConfigError::field("domains", "must not be empty"));
    }
    if p.require_tls != 0 {
        return Err(unsupported("require_tls"));
    }
    if p.matcher.is_some() {
        return Err(unsupported("matcher"));
    }
    if p.hedge_policy.is_some() {
        return Err(unsupported("hedge_policy"));
    }
    if p.retry_policy_typed_config.is_some() {
        return Err(unsupported("retry_policy_typed_config"));
    }
    if !p.route_specifiers.is_empty() {
        return Err(unsupported("route_specifiers"));
    }
    let mut routes = Vec::with_capacity(p.routes.len());
    for (i, r) in p.routes.iter().enumerate() {
        routes.push(route(r, max_body).map_err(|e| e.at(format!("routes[{i}]")))?);
    }
    Ok(VirtualHost {
        name: Arc::from(p.name.as_str()),
        domains: p.domains.clone(),
        routes,
        request_headers: HeaderMutations::try_from_proto(
            &p.request_headers_to_add,
            &p.request_headers_to_remove,
            "request_headers_to_add",
            "request_headers_to_remove",
        )?,
        response_headers: HeaderMutations::try_from_proto(
            &p.response_headers_to_add,
            &p.response_headers_to_remove,
            "response_headers_to_add",
            "response_headers_to_remove",
        )?,
        retry_policy: p
            .retry_policy
            .as_ref()
            .map(|r| RetryPolicy::try_from_proto(r, "retry_policy"))
            .transpose()?,
        request_mirror_policies: mirrors(&p.request_mirror_policies, "request_mirror_policies")?,
        include_request_attempt_count: p.include_request_attempt_count,
        include_attempt_count_in_response: p.include_attempt_count_in_response,
        include_is_timeout_retry_header: p.include_is_timeout_retry_header,
        typed_per_filter_config: FilterConfigs::try_from_proto(
            &p.typed_per_filter_config,
            "typed_per_filter_config",
        )?,
        cors: p
            .cors
            .as_ref()
            .map(|c| CorsPolicy::try_from_route_proto(c).map(Arc::new))
            .transpose()
            .map_err(|e| e.at("cors"))?,
        buffer_limit: buffer_limit(
            p.per_request_buffer_limit_bytes.as_ref().map(|v| v.value),
            p.request_body_buffer_limit.as_ref().map(|v| v.value),
        )?,
    })
}

/// Envoy's rule: `request_body_buffer_limit` wins; only one of the two may be set.
fn buffer_limit(per_request: Option<u32>, body: Option<u64>) -> Result<Option<u64>, ConfigError> {
    match (per_request, body) {
        (Some(_), Some(_)) => Err(ConfigError::field(
            "request_body_buffer_limit",
            "only one of per_request_buffer_limit_bytes and request_body_buffer_limit may be set",
        )),
        (Some(p), None) => Ok(Some(u64::from(p))),
        (None, b) => Ok(b),
    }
}

fn route(p: &rpb::Route, max_body: usize) -> Result<Route, ConfigError> {
    if !p.route_specifiers.is_empty() {
        return Err(ConfigError::field("route_specifiers", "is not supported"));
    }
    let m = p
        .r#match
        .as_ref()
        .ok_or_else(|| ConfigError::field("match", "is required"))?;
    let matcher = route_match(m).map_err(|e| e.at("match"))?;
    let action = match &p.action {
        Some(PbAction::Route(a)) => {
            Action::Route(Box::new(RouteAction::try_from_proto(a, "route")?))
        }
        Some(PbAction::Redirect(r)) => Action::Redirect(Redirect::try_from_proto(r, "redirect")?),
        Some(PbAction::DirectResponse(d)) => Action::DirectResponse(
            DirectResponse::try_from_proto(d, "direct_response", max_body)?,
        ),
        Some(PbAction::NonForwardingAction(_)) => Action::NonForwarding,
        Some(PbAction::FilterAction(_)) => {
            return Err(ConfigError::field("filter_action", "is not supported"));
        }
        None => {
            return Err(ConfigError::field(
                "action",
                "one of route, redirect, direct_response is required",
            ));
        }
    };
    if let (Action::Redirect(r), PathMatch::Regex(_)) = (&action, &matcher.path)
        && matches!(r.path, Some(super::route_action::PathRedirect::Prefix(_)))
    {
        return Err(ConfigError::field(
            "redirect.prefix_rewrite",
            "cannot be used with a safe_regex path match",
        ));
    }
    if let (Action::Route(a), PathMatch::Regex(_)) = (&action, &matcher.path)
        && a.prefix_rewrite.is_some()
    {
        return Err(ConfigError::field(
            "route.prefix_rewrite",
            "cannot be used with a safe_regex path match",
        ));
    }
    Ok(Route {
        name: (!p.name.is_empty()).then(|| Arc::from(p.name.as_str())),
        matcher,
        action,
        request_headers: HeaderMutations::try_from_proto(
            &p.request_headers_to_add,
            &p.request_headers_to_remove,
            "request_headers_to_add",
            "request_headers_to_remove",
        )?,
        response_headers: HeaderMutations::try_from_proto(
            &p.response_headers_to_add,
            &p.response_headers_to_remove,
            "response_headers_to_add",
            "response_headers_to_remove",
        )?,
        typed_per_filter_config: FilterConfigs::try_from_proto(
            &p.typed_per_filter_config,
            "typed_per_filter_config",
        )?,
        operation: p.decorator.as_ref().map(|d| d.operation.clone()),
        buffer_limit: buffer_limit(
            p.per_request_buffer_limit_bytes.as_ref().map(|v| v.value),
            p.request_body_buffer_limit.as_ref().map(|v| v.value),
        )?,
    })
}

fn route_match(m: &rpb::RouteMatch) -> Result<RouteMatch, ConfigError> {
    use rpb::route_match::PathSpecifier as P;
    let unsupported = |name: &str| ConfigError::field(name, "is not supported");
    if m.tls_context.is_some() {
        return Err(unsupported("tls_context"));
    }
    if !m.cookies.is_empty() {
        return Err(unsupported("cookies"));
    }
    if !m.dynamic_metadata.is_empty() {
        return Err(unsupported("dynamic_metadata"));
    }
    if !m.filter_state.is_empty() {
        return Err(unsupported("filter_state"));
    }
    let case_sensitive = m.case_sensitive.as_ref().is_none_or(|b| b.value);
    let path = match &m.path_specifier {
        Some(P::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(P::Path(p)) => PathMatch::Exact(p.clone()),
        Some(P::SafeRegex(r)) => PathMatch::Regex(full_regex(r, "safe_regex")?),
        Some(P::PathSeparatedPrefix(p)) => {
            if p.contains('?') || p.contains('#') || (p.ends_with('/') && p.len() > 1) {
                return Err(ConfigError::field(
                    "path_separated_prefix",
                    format!("invalid prefix {p:?}: no trailing '/', '?' or '#'"),
                ));
            }
            PathMatch::SeparatedPrefix(p.clone())
        }
        Some(P::ConnectMatcher(_)) => return Err(unsupported("connect_matcher")),
        Some(P::PathMatchPolicy(_)) => return Err(unsupported("path_match_policy")),
        None => {
            return Err(ConfigError::field(
                "path_specifier",
                "one of prefix, path, safe_regex, path_separated_prefix is required",
            ));
        }
    };
    let mut headers = Vec::with_capacity(m.headers.len());
    for (i, h) in m.headers.iter().enumerate() {
        headers.push(HeaderMatcher::try_from_proto(h, &format!("headers[{i}]"))?);
    }
    let mut query_parameters = Vec::with_capacity(m.query_parameters.len());
    for (i, q) in m.query_parameters.iter().enumerate() {
        query_parameters.push(QueryParamMatcher::try_from_proto(
            q,
            &format!("query_parameters[{i}]"),
        )?);
    }
    Ok(RouteMatch {
        path,
        case_sensitive,
        headers,
        query_parameters,
        runtime_fraction: m
            .runtime_fraction
            .as_ref()
            .map(|f| Fraction::from_runtime(f, "runtime_fraction"))
            .transpose()?,
        grpc: m.grpc.is_some(),
    })
}

impl RouteConfiguration {
    /// The virtual host for a lowercased host (port handling is the caller's, see
    /// `http::router`).
    pub fn find_virtual_host(&self, host: &str) -> Option<&Arc<VirtualHost>> {
        self.domains
            .find(host)
            .and_then(|i| self.virtual_hosts.get(i))
    }
}

pub mod retry;

#[cfg(test)]
mod tests;
