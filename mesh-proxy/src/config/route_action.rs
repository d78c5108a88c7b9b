//! Route actions: forward to a cluster (single, from a header, or weighted), redirect,
//! or direct response; with rewrites, timeouts, retry, hash and mirror policies.

// Envoy still honours deprecated fields (header matcher variants, `append`,
// `total_weight`, ...); configs from older control planes use them, so we read them too.
#![allow(deprecated)]

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use envoy_types::pb::{
    envoy::{
        config::{
            core::v3::{DataSource, data_source::Specifier},
            route::v3::{self as rpb, redirect_action, route_action, weighted_cluster},
        },
        r#type::matcher::v3::RegexMatchAndSubstitute,
    },
    google::protobuf::Duration as PbDuration,
};
use http::{HeaderName, StatusCode};
use regex::Regex;

use crate::http::filters::cors::CorsPolicy;

use super::{
    ConfigError, duration,
    route::FilterConfigs,
    route_headers::HeaderMutations,
    route_match::{Fraction, search_regex},
};

/// Envoy's default route timeout.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

fn header_name(s: &str, field: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(s.to_ascii_lowercase().as_bytes())
        .map_err(|_| ConfigError::field(field, format!("invalid header name {s:?}")))
}

/// A regex substitution on the path (without the query string).
#[derive(Debug, Clone)]
pub struct RegexRewrite {
    pub pattern: Regex,
    /// In `regex` crate syntax (`${1}`), converted from RE2's `\1`.
    pub substitution: String,
}

impl RegexRewrite {
    pub fn try_from_proto(p: &RegexMatchAndSubstitute, field: &str) -> Result<Self, ConfigError> {
        let pattern = p
            .pattern
            .as_ref()
            .ok_or_else(|| ConfigError::field(format!("{field}.pattern"), "is required"))?;
        let pattern = search_regex(pattern, &format!("{field}.pattern"))?;
        let mut substitution = String::with_capacity(p.substitution.len());
        let mut chars = p.substitution.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '$' => substitution.push_str("$$"),
                '\\' => match chars.next() {
                    Some(d @ '0'..='9') => {
                        substitution.push_str("${");
                        substitution.push(d);
                        substitution.push('}');
                    }
                    Some('\\') => substitution.push('\\'),
                    _ => {
                        return Err(ConfigError::field(
                            format!("{field}.substitution"),
                            "invalid escape: only \\0-\\9 and \\\\ are allowed (RE2 rewrite syntax)",
                        ));
                    }
                },
                c => substitution.push(c),
            }
        }
        Ok(RegexRewrite {
            pattern,
            substitution,
        })
    }

    pub fn apply(&self, path: &str) -> String {
        self.pattern
            .replace_all(path, self.substitution.as_str())
            .into_owned()
    }
}

#[derive(Debug, Clone)]
pub enum HostRewrite {
    Literal(String),
    /// Use the chosen upstream host's hostname (STRICT_DNS / LOGICAL_DNS endpoints).
    Auto,
    Header(HeaderName),
    PathRegex(RegexRewrite),
}

#[derive(Debug, Clone)]
pub struct WeightedClusterEntry {
    pub name: Arc<str>,
    /// `cluster_header`: the cluster name is read from this request header.
    pub header: Option<HeaderName>,
    pub weight: u64,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub host_rewrite: Option<String>,
    pub typed_per_filter_config: FilterConfigs,
}

#[derive(Debug, Clone)]
pub struct WeightedClusters {
    pub clusters: Vec<WeightedClusterEntry>,
    pub total_weight: u64,
    /// `random_value_specifier.header_name`: take the random value from this header.
    pub random_header: Option<HeaderName>,
    pub use_hash_policy: bool,
}

impl WeightedClusters {
    /// Picks by Envoy's rule: walk the clusters accumulating weight until it exceeds
    /// `random % total_weight`.
    pub fn pick(&self, random: u64) -> &WeightedClusterEntry {
        let target = random % self.total_weight.max(1);
        let mut acc = 0;
        for c in &self.clusters {
            acc += c.weight;
            if target < acc {
                return c;
            }
        }
        // Unreachable with weights summing to total_weight (checked at load); the last
        // cluster is the safe answer.
        &self.clusters[self.clusters.len() - 1]
    }
}

#[derive(Debug, Clone)]
pub enum ClusterSpecifier {
    Cluster(Arc<str>),
    Header(HeaderName),
    Weighted(WeightedClusters),
}

pub use super::route::retry::{RetryOn, RetryPolicy};

#[derive(Debug, Clone)]
pub enum HashPolicyKind {
    Header(HeaderName),
    Cookie {
        name: String,
        ttl: Option<Duration>,
        path: String,
    },
    SourceIp,
    QueryParameter(String),
}

#[derive(Debug, Clone)]
pub struct HashPolicy {
    pub kind: HashPolicyKind,
    pub terminal: bool,
}

impl HashPolicy {
    pub fn try_from_proto(p: &route_action::HashPolicy, field: &str) -> Result<Self, ConfigError> {
        use route_action::hash_policy::PolicySpecifier as P;
        let kind = match &p.policy_specifier {
            Some(P::Header(h)) => {
                if h.regex_rewrite.is_some() {
                    return Err(ConfigError::field(
                        format!("{field}.header.regex_rewrite"),
                        "is not supported",
                    ));
                }
                HashPolicyKind::Header(header_name(
                    &h.header_name,
                    &format!("{field}.header.header_name"),
                )?)
            }
            Some(P::Cookie(c)) => {
                if !c.attributes.is_empty() {
                    return Err(ConfigError::field(
                        format!("{field}.cookie.attributes"),
                        "is not supported",
                    ));
                }
                HashPolicyKind::Cookie {
                    name: c.name.clone(),
                    ttl: c
                        .ttl
                        .as_ref()
                        .map(|d| duration(d, &format!("{field}.cookie.ttl")))
                        .transpose()?,
                    path: c.path.clone(),
                }
            }
            Some(P::ConnectionProperties(cp)) if cp.source_ip => HashPolicyKind::SourceIp,
            Some(P::ConnectionProperties(_)) => {
                return Err(ConfigError::field(
                    format!("{field}.connection_properties.source_ip"),
                    "must be true",
                ));
            }
            Some(P::QueryParameter(q)) => HashPolicyKind::QueryParameter(q.name.clone()),
            Some(P::FilterState(_)) => {
                return Err(ConfigError::field(
                    format!("{field}.filter_state"),
                    "is not supported",
                ));
            }
            None => return Err(ConfigError::field(field, "a policy specifier is required")),
        };
        Ok(HashPolicy {
            kind,
            terminal: p.terminal,
        })
    }
}

#[derive(Debug, Clone)]
pub struct MirrorPolicy {
    pub cluster: Option<Arc<str>>,
    pub cluster_header: Option<HeaderName>,
    pub fraction: Option<Fraction>,
    pub disable_shadow_host_suffix_append: bool,
}

impl MirrorPolicy {
    pub fn try_from_proto(
        p: &route_action::RequestMirrorPolicy,
        field: &str,
    ) -> Result<Self, ConfigError> {
        if !p.request_headers_mutations.is_empty() {
            return Err(ConfigError::field(
                format!("{field}.request_headers_mutations"),
                "is not supported",
            ));
        }
        if !p.host_rewrite_literal.is_empty() {
            return Err(ConfigError::field(
                format!("{field}.host_rewrite_literal"),
                "is not supported",
            ));
        }
        let cluster = (!p.cluster.is_empty()).then(|| Arc::from(p.cluster.as_str()));
        let cluster_header = (!p.cluster_header.is_empty())
            .then(|| header_name(&p.cluster_header, &format!("{field}.cluster_header")))
            .transpose()?;
        if cluster.is_some() == cluster_header.is_some() {
            return Err(ConfigError::field(
                field,
                "exactly one of cluster and cluster_header is required",
            ));
        }
        Ok(MirrorPolicy {
            cluster,
            cluster_header,
            fraction: p
                .runtime_fraction
                .as_ref()
                .map(|f| Fraction::from_runtime(f, &format!("{field}.runtime_fraction")))
                .transpose()?,
            disable_shadow_host_suffix_append: p.disable_shadow_host_suffix_append,
        })
    }
}

#[derive(Debug, Clone)]
pub struct RouteAction {
    pub cluster: ClusterSpecifier,
    pub cluster_not_found_response_code: StatusCode,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<RegexRewrite>,
    pub host_rewrite: Option<HostRewrite>,
    pub append_x_forwarded_host: bool,
    /// `None`: no timeout (`timeout: 0s`).
    pub timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub retry_policy: Option<RetryPolicy>,
    pub request_mirror_policies: Vec<MirrorPolicy>,
    pub hash_policy: Vec<HashPolicy>,
    /// Per-route overrides of the HCM's upgrade settings: (upgrade type lowercased, enabled).
    pub upgrade_configs: Vec<(String, bool)>,
    /// `max_stream_duration`; its presence switches Envoy to the "new timeouts": the
    /// route `timeout` and `max_grpc_timeout` are then ignored.
    pub max_stream_duration: Option<MaxStreamDuration>,
    pub max_grpc_timeout: Option<Duration>,
    pub grpc_timeout_offset: Option<Duration>,
    /// The deprecated `cors` policy (used by the CORS filter when no per-filter config).
    pub cors: Option<Arc<CorsPolicy>>,
}

/// `RouteAction.max_stream_duration`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaxStreamDuration {
    /// `None`: not set (the HCM's applies); `Some(ZERO)`: explicitly unlimited.
    pub max_stream_duration: Option<Duration>,
    /// Use `grpc-timeout` as the stream's duration, capped by this (0: uncapped).
    pub grpc_timeout_header_max: Option<Duration>,
    pub grpc_timeout_header_offset: Option<Duration>,
}

impl RouteAction {
    pub fn try_from_proto(p: &rpb::RouteAction, field: &str) -> Result<Self, ConfigError> {
        use route_action::{ClusterSpecifier as C, HostRewriteSpecifier as H};
        let f = |name: &str| format!("{field}.{name}");
        let unsupported = |name: &str| ConfigError::field(f(name), "is not supported");
        let cluster = match &p.cluster_specifier {
            Some(C::Cluster(c)) if !c.is_empty() => {
                ClusterSpecifier::Cluster(Arc::from(c.as_str()))
            }
            Some(C::Cluster(_)) => {
                return Err(ConfigError::field(f("cluster"), "must not be empty"));
            }
            Some(C::ClusterHeader(h)) => {
                ClusterSpecifier::Header(header_name(h, &f("cluster_header"))?)
            }
            Some(C::WeightedClusters(w)) => {
                ClusterSpecifier::Weighted(weighted(w, &f("weighted_clusters"))?)
            }
            Some(C::ClusterSpecifierPlugin(_)) => {
                return Err(unsupported("cluster_specifier_plugin"));
            }
            Some(C::InlineClusterSpecifierPlugin(_)) => {
                return Err(unsupported("inline_cluster_specifier_plugin"));
            }
            None => return Err(ConfigError::field(field, "a cluster specifier is required")),
        };
        let cluster_not_found_response_code = match p.cluster_not_found_response_code {
            0 => StatusCode::SERVICE_UNAVAILABLE,
            1 => StatusCode::NOT_FOUND,
            2 => StatusCode::INTERNAL_SERVER_ERROR,
            n => {
                return Err(ConfigError::field(
                    f("cluster_not_found_response_code"),
                    format!("unknown value {n}"),
                ));
            }
        };
        if p.metadata_match.is_some() {
            return Err(unsupported("metadata_match"));
        }
        if p.path_rewrite_policy.is_some() {
            return Err(unsupported("path_rewrite_policy"));
        }
        if !p.path_rewrite.is_empty() {
            return Err(unsupported("path_rewrite"));
        }
        if p.internal_redirect_policy.is_some() || p.internal_redirect_action != 0 {
            return Err(unsupported("internal_redirect_policy"));
        }
        if p.hedge_policy.is_some() {
            return Err(unsupported("hedge_policy"));
        }
        if p.early_data_policy.is_some() {
            return Err(unsupported("early_data_policy"));
        }
        if p.retry_policy_typed_config.is_some() {
            return Err(unsupported("retry_policy_typed_config"));
        }
        if p.priority != 0 {
            return Err(ConfigError::field(
                f("priority"),
                "only DEFAULT priority routing is supported",
            ));
        }
        // rate_limits / include_vh_rate_limits take effect only with the (global)
        // ratelimit filter or local_ratelimit descriptors, which are NACKed; like Envoy
        // without them, they are inert here.
        let prefix_rewrite = (!p.prefix_rewrite.is_empty()).then(|| p.prefix_rewrite.clone());
        let regex_rewrite = p
            .regex_rewrite
            .as_ref()
            .map(|r| RegexRewrite::try_from_proto(r, &f("regex_rewrite")))
            .transpose()?;
        if prefix_rewrite.is_some() && regex_rewrite.is_some() {
            return Err(ConfigError::field(
                f("regex_rewrite"),
                "cannot be combined with prefix_rewrite",
            ));
        }
        let host_rewrite = match &p.host_rewrite_specifier {
            None => None,
            Some(H::HostRewriteLiteral(s)) => Some(HostRewrite::Literal(s.clone())),
            Some(H::AutoHostRewrite(b)) => b.value.then_some(HostRewrite::Auto),
            Some(H::HostRewriteHeader(h)) => Some(HostRewrite::Header(header_name(
                h,
                &f("host_rewrite_header"),
            )?)),
            Some(H::HostRewritePathRegex(r)) => Some(HostRewrite::PathRegex(
                RegexRewrite::try_from_proto(r, &f("host_rewrite_path_regex"))?,
            )),
            Some(H::HostRewrite(_)) => return Err(unsupported("host_rewrite")),
        };
        let timeout = match &p.timeout {
            None => Some(DEFAULT_ROUTE_TIMEOUT),
            Some(d) => Some(duration(d, &f("timeout"))?).filter(|d| !d.is_zero()),
        };
        let opt = |d: &Option<PbDuration>, name: &str| {
            d.as_ref().map(|d| duration(d, &f(name))).transpose()
        };
        let mut request_mirror_policies = Vec::new();
        for (i, m) in p.request_mirror_policies.iter().enumerate() {
            request_mirror_policies.push(MirrorPolicy::try_from_proto(
                m,
                &f(&format!("request_mirror_policies[{i}]")),
            )?);
        }
        let mut hash_policy = Vec::new();
        for (i, h) in p.hash_policy.iter().enumerate() {
            hash_policy.push(HashPolicy::try_from_proto(
                h,
                &f(&format!("hash_policy[{i}]")),
            )?);
        }
        let mut upgrade_configs = Vec::new();
        for (i, u) in p.upgrade_configs.iter().enumerate() {
            if u.connect_config.is_some() || u.upgrade_type.eq_ignore_ascii_case("connect") {
                return Err(ConfigError::field(
                    f(&format!("upgrade_configs[{i}]")),
                    "CONNECT upgrades are not supported",
                ));
            }
            upgrade_configs.push((
                u.upgrade_type.to_ascii_lowercase(),
                u.enabled.as_ref().is_none_or(|b| b.value),
            ));
        }
        let max_stream_duration = match &p.max_stream_duration {
            Some(m) => Some(MaxStreamDuration {
                max_stream_duration: opt(
                    &m.max_stream_duration,
                    "max_stream_duration.max_stream_duration",
                )?,
                grpc_timeout_header_max: opt(
                    &m.grpc_timeout_header_max,
                    "max_stream_duration.grpc_timeout_header_max",
                )?,
                grpc_timeout_header_offset: opt(
                    &m.grpc_timeout_header_offset,
                    "max_stream_duration.grpc_timeout_header_offset",
                )?,
            }),
            None => None,
        };
        Ok(RouteAction {
            cluster,
            cluster_not_found_response_code,
            prefix_rewrite,
            regex_rewrite,
            host_rewrite,
            append_x_forwarded_host: p.append_x_forwarded_host,
            timeout,
            idle_timeout: opt(&p.idle_timeout, "idle_timeout")?,
            retry_policy: p
                .retry_policy
                .as_ref()
                .map(|r| RetryPolicy::try_from_proto(r, &f("retry_policy")))
                .transpose()?,
            request_mirror_policies,
            hash_policy,
            upgrade_configs,
            max_stream_duration,
            max_grpc_timeout: opt(&p.max_grpc_timeout, "max_grpc_timeout")?,
            grpc_timeout_offset: opt(&p.grpc_timeout_offset, "grpc_timeout_offset")?,
            cors: p
                .cors
                .as_ref()
                .map(|c| CorsPolicy::try_from_route_proto(c).map(Arc::new))
                .transpose()
                .map_err(|e| e.at(f("cors")))?,
        })
    }

    /// The route-level override for an upgrade type, if any.
    pub fn upgrade_enabled(&self, upgrade: &str) -> Option<bool> {
        self.upgrade_configs
            .iter()
            .find(|(t, _)| t.eq_ignore_ascii_case(upgrade))
            .map(|(_, e)| *e)
    }
}

fn weighted(w: &rpb::WeightedCluster, field: &str) -> Result<WeightedClusters, ConfigError> {
    use weighted_cluster::{RandomValueSpecifier as R, cluster_weight::HostRewriteSpecifier as H};
    if w.clusters.is_empty() {
        return Err(ConfigError::field(
            format!("{field}.clusters"),
            "must not be empty",
        ));
    }
    if !w.runtime_key_prefix.is_empty() {
        return Err(ConfigError::field(
            format!("{field}.runtime_key_prefix"),
            "is not supported (no runtime layer)",
        ));
    }
    let mut clusters = Vec::with_capacity(w.clusters.len());
    let mut sum = 0u64;
    for (i, c) in w.clusters.iter().enumerate() {
        let cf = format!("{field}.clusters[{i}]");
        if c.metadata_match.is_some() {
            return Err(ConfigError::field(
                format!("{cf}.metadata_match"),
                "is not supported",
            ));
        }
        let header = (!c.cluster_header.is_empty())
            .then(|| header_name(&c.cluster_header, &format!("{cf}.cluster_header")))
            .transpose()?;
        if c.name.is_empty() == header.is_none() {
            return Err(ConfigError::field(
                cf,
                "exactly one of name and cluster_header is required",
            ));
        }
        let weight = u64::from(c.weight.as_ref().map_or(0, |w| w.value));
        sum += weight;
        clusters.push(WeightedClusterEntry {
            name: Arc::from(c.name.as_str()),
            header,
            weight,
            request_headers: HeaderMutations::try_from_proto(
                &c.request_headers_to_add,
                &c.request_headers_to_remove,
                &format!("{cf}.request_headers_to_add"),
                &format!("{cf}.request_headers_to_remove"),
            )?,
            response_headers: HeaderMutations::try_from_proto(
                &c.response_headers_to_add,
                &c.response_headers_to_remove,
                &format!("{cf}.response_headers_to_add"),
                &format!("{cf}.response_headers_to_remove"),
            )?,
            host_rewrite: c
                .host_rewrite_specifier
                .as_ref()
                .map(|H::HostRewriteLiteral(s)| s.clone()),
            typed_per_filter_config: FilterConfigs::try_from_proto(
                &c.typed_per_filter_config,
                &format!("{cf}.typed_per_filter_config"),
            )?,
        });
    }
    let total_weight = match &w.total_weight {
        Some(t) if u64::from(t.value) != sum => {
            return Err(ConfigError::field(
                format!("{field}.total_weight"),
                format!(
                    "sum of cluster weights ({sum}) must equal total_weight ({})",
                    t.value
                ),
            ));
        }
        Some(t) => u64::from(t.value),
        None => sum,
    };
    if total_weight == 0 {
        return Err(ConfigError::field(
            format!("{field}.clusters"),
            "sum of weights must be greater than zero",
        ));
    }
    let (random_header, use_hash_policy) = match &w.random_value_specifier {
        Some(R::HeaderName(h)) => (
            Some(header_name(h, &format!("{field}.header_name"))?),
            false,
        ),
        Some(R::UseHashPolicy(b)) => (None, b.value),
        None => (None, false),
    };
    Ok(WeightedClusters {
        clusters,
        total_weight,
        random_header,
        use_hash_policy,
    })
}

#[derive(Debug, Clone)]
pub enum PathRedirect {
    /// `path_redirect`; `has_query` when it carries its own query string.
    Path {
        path: String,
        has_query: bool,
    },
    Prefix(String),
    Regex(RegexRewrite),
}

#[derive(Debug, Clone)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathRedirect>,
    pub response_code: StatusCode,
    pub strip_query: bool,
}

impl Redirect {
    pub fn try_from_proto(p: &rpb::RedirectAction, field: &str) -> Result<Self, ConfigError> {
        use redirect_action::{PathRewriteSpecifier as P, SchemeRewriteSpecifier as S};
        let scheme = match &p.scheme_rewrite_specifier {
            Some(S::HttpsRedirect(true)) => Some("https".to_string()),
            Some(S::HttpsRedirect(false)) | None => None,
            Some(S::SchemeRedirect(s)) if s.is_empty() => None,
            Some(S::SchemeRedirect(s)) => Some(s.to_ascii_lowercase()),
        };
        let path = match &p.path_rewrite_specifier {
            None => None,
            Some(P::PathRedirect(s)) => Some(PathRedirect::Path {
                path: s.clone(),
                has_query: s.contains('?'),
            }),
            Some(P::PrefixRewrite(s)) => Some(PathRedirect::Prefix(s.clone())),
            Some(P::RegexRewrite(r)) => Some(PathRedirect::Regex(RegexRewrite::try_from_proto(
                r,
                &format!("{field}.regex_rewrite"),
            )?)),
            Some(P::PathRewrite(_)) => {
                return Err(ConfigError::field(
                    format!("{field}.path_rewrite"),
                    "is not supported",
                ));
            }
        };
        let response_code = match p.response_code {
            0 => StatusCode::MOVED_PERMANENTLY,
            1 => StatusCode::FOUND,
            2 => StatusCode::SEE_OTHER,
            3 => StatusCode::TEMPORARY_REDIRECT,
            4 => StatusCode::PERMANENT_REDIRECT,
            n => {
                return Err(ConfigError::field(
                    format!("{field}.response_code"),
                    format!("unknown value {n}"),
                ));
            }
        };
        let port = match p.port_redirect {
            0 => None,
            n => Some(u16::try_from(n).map_err(|_| {
                ConfigError::field(
                    format!("{field}.port_redirect"),
                    format!("invalid port {n}"),
                )
            })?),
        };
        Ok(Redirect {
            scheme,
            host: (!p.host_redirect.is_empty()).then(|| p.host_redirect.clone()),
            port,
            path,
            response_code,
            strip_query: p.strip_query,
        })
    }
}

#[derive(Debug, Clone)]
pub struct DirectResponse {
    pub status: StatusCode,
    pub body: Option<Bytes>,
}

/// Envoy's default `max_direct_response_body_size_bytes`.
pub const DEFAULT_MAX_DIRECT_RESPONSE_BODY: usize = 4096;

impl DirectResponse {
    pub fn try_from_proto(
        p: &rpb::DirectResponseAction,
        field: &str,
        max_body: usize,
    ) -> Result<Self, ConfigError> {
        let status = u16::try_from(p.status)
            .ok()
            .filter(|s| (200..600).contains(s))
            .and_then(|s| StatusCode::from_u16(s).ok())
            .ok_or_else(|| {
                ConfigError::field(
                    format!("{field}.status"),
                    format!("invalid status {}", p.status),
                )
            })?;
        if p.body_format.is_some() {
            return Err(ConfigError::field(
                format!("{field}.body_format"),
                "is not supported",
            ));
        }
        let body = p
            .body
            .as_ref()
            .map(|b| data_source(b, &format!("{field}.body")))
            .transpose()?;
        if let Some(b) = &body
            && b.len() > max_body
        {
            return Err(ConfigError::field(
                format!("{field}.body"),
                format!(
                    "response body size is {} bytes; maximum is {max_body}",
                    b.len()
                ),
            ));
        }
        Ok(DirectResponse {
            status,
            body: body.filter(|b| !b.is_empty()),
        })
    }
}

/// Reads an Envoy `DataSource` once, at config time.
pub fn data_source(d: &DataSource, field: &str) -> Result<Bytes, ConfigError> {
    match &d.specifier {
        Some(Specifier::InlineString(s)) => Ok(Bytes::from(s.clone())),
        Some(Specifier::InlineBytes(b)) => Ok(Bytes::from(b.clone())),
        Some(Specifier::Filename(path)) => std::fs::read(path).map(Bytes::from).map_err(|e| {
            ConfigError::field(
                format!("{field}.filename"),
                format!("cannot read {path:?}: {e}"),
            )
        }),
        Some(Specifier::EnvironmentVariable(v)) => {
            std::env::var(v).map(Bytes::from).map_err(|_| {
                ConfigError::field(
                    format!("{field}.environment_variable"),
                    format!("{v:?} is not set"),
                )
            })
        }
        None => Ok(Bytes::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;

    #[test]
    fn re2_substitution_is_translated() {
        let r = RegexRewrite::try_from_proto(
            &RegexMatchAndSubstitute {
                pattern: Some(RegexMatcher {
                    regex: "^/service/([^/]+)(/.*)$".into(),
                    engine_type: None,
                }),
                substitution: "\\2/instance/\\1$".into(),
            },
            "regex_rewrite",
        )
        .expect("valid");
        assert_eq!(r.apply("/service/foo/v1/api"), "/v1/api/instance/foo$");
        let all = RegexRewrite::try_from_proto(
            &RegexMatchAndSubstitute {
                pattern: Some(RegexMatcher {
                    regex: "o".into(),
                    engine_type: None,
                }),
                substitution: "0".into(),
            },
            "x",
        )
        .expect("valid");
        assert_eq!(
            all.apply("/foo/boo"),
            "/f00/b00",
            "every match is replaced, as RE2 GlobalReplace"
        );
    }

    #[test]
    fn weighted_pick_walks_cumulative_weights() {
        let entry = |name: &str, weight| WeightedClusterEntry {
            name: Arc::from(name),
            header: None,
            weight,
            request_headers: HeaderMutations::default(),
            response_headers: HeaderMutations::default(),
            host_rewrite: None,
            typed_per_filter_config: FilterConfigs::default(),
        };
        let w = WeightedClusters {
            clusters: vec![entry("a", 10), entry("b", 0), entry("c", 90)],
            total_weight: 100,
            random_header: None,
            use_hash_policy: false,
        };
        assert_eq!(&*w.pick(0).name, "a");
        assert_eq!(&*w.pick(9).name, "a");
        assert_eq!(&*w.pick(10).name, "c");
        assert_eq!(&*w.pick(199).name, "c");
    }
}
