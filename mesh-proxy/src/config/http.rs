//! The HTTP connection manager (`envoy.filters.network.http_connection_manager`) as a
//! domain type: where routes come from (RDS name or inline), the HTTP filter chain
//! (the router; other filters are rejected by name until implemented), codec and
//! limits, timeouts, `x-forwarded-for` trust, request id, client-cert forwarding,
//! upgrades, path normalization and access logs.

use std::{sync::Arc, time::Duration};

use envoy_types::pb::{
    envoy::{
        config::core::v3::{Http1ProtocolOptions, Http2ProtocolOptions, HttpProtocolOptions},
        extensions::filters::{
            http::router::v3::Router as PbRouter,
            network::http_connection_manager::v3::{
                self as hpb,
                http_connection_manager::{CodecType, RouteSpecifier, StripPortMode},
                http_filter::ConfigType,
            },
        },
    },
    google::protobuf::Any,
};
use http::HeaderValue;
use ipnet::IpNet;

use super::{
    ConfigError, duration,
    route::{RouteConfiguration, route_configuration},
};
use crate::{
    accesslog::AccessLogConfig,
    http::filters::{self, FilterEntry},
};

pub const HCM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const UUID_REQUEST_ID_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Detects HTTP/2 by its connection preface (h2c prior knowledge) or ALPN `h2`.
    Auto,
    Http1,
    Http2,
}

#[derive(Debug, Clone)]
pub enum RouteSource {
    /// RDS: looked up by name in the current snapshot on each request.
    Rds(Arc<str>),
    Inline(Arc<RouteConfiguration>),
}

#[derive(Debug, Clone, Default)]
pub struct RouterConfig {
    /// Do not add `x-envoy-*` headers to upstream requests or downstream responses.
    pub suppress_envoy_headers: bool,
    pub respect_expected_rq_timeout: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardClientCert {
    Sanitize,
    ForwardOnly,
    AppendForward,
    SanitizeSet,
    AlwaysForwardOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerHeader {
    Overwrite,
    AppendIfAbsent,
    PassThrough,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapedSlashes {
    KeepUnchanged,
    RejectRequest,
    UnescapeAndForward,
}

#[derive(Debug, Clone)]
pub struct HttpConnectionManager {
    pub stat_prefix: Arc<str>,
    pub codec: Codec,
    pub routes: RouteSource,
    /// The filters before the router, in order.
    pub http_filters: Vec<FilterEntry>,
    pub router: RouterConfig,
    pub server_name: HeaderValue,
    pub server_header: ServerHeader,
    /// Maximum total request header size (Envoy default 60 KiB).
    pub max_request_headers_kb: u32,
    /// Maximum number of request headers (Envoy default 100).
    pub max_headers_count: u32,
    /// `None`: disabled. Envoy default 5 minutes.
    pub stream_idle_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
    pub request_headers_timeout: Option<Duration>,
    /// Connection idle timeout (common_http_protocol_options.idle_timeout, default 1 h).
    pub idle_timeout: Option<Duration>,
    pub max_connection_duration: Option<Duration>,
    pub max_stream_duration: Option<Duration>,
    pub max_requests_per_connection: Option<u32>,
    pub drain_timeout: Duration,
    pub use_remote_address: bool,
    pub xff_num_trusted_hops: u32,
    pub skip_xff_append: bool,
    pub via: Option<HeaderValue>,
    /// CIDRs treated as internal for `x-envoy-*` trust (internal_address_config);
    /// `None` means Envoy's default (RFC 1918 and loopback).
    pub internal_cidrs: Option<Vec<IpNet>>,
    pub generate_request_id: bool,
    pub preserve_external_request_id: bool,
    pub always_set_request_id_in_response: bool,
    pub forward_client_cert: ForwardClientCert,
    /// Upgrades allowed on this connection manager: (type lowercased, enabled).
    pub upgrades: Vec<(String, bool)>,
    pub normalize_path: bool,
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
    pub strip_matching_host_port: bool,
    pub strip_any_host_port: bool,
    pub strip_trailing_host_dot: bool,
    pub proxy_100_continue: bool,
    pub access_log: Vec<Arc<AccessLogConfig>>,
    pub http1_allow_absolute_url: bool,
    pub http1_accept_http_10: bool,
    pub http2_max_concurrent_streams: Option<u32>,
    pub http2_initial_stream_window_size: Option<u32>,
    pub http2_initial_connection_window_size: Option<u32>,
}

impl TryFrom<&hpb::HttpConnectionManager> for HttpConnectionManager {
    type Error = ConfigError;

    /// The resource name in errors is the stat prefix; the listener conversion
    /// re-labels it with the listener name and filter path.
    fn try_from(p: &hpb::HttpConnectionManager) -> Result<Self, ConfigError> {
        http_connection_manager(p).map_err(|e| e.in_resource(&p.stat_prefix))
    }
}

impl HttpConnectionManager {
    /// Decodes the HCM from a network filter's `typed_config`.
    pub fn from_any(any: &Any) -> Result<Self, ConfigError> {
        if any.type_url != HCM_TYPE_URL {
            return Err(ConfigError::field(
                "typed_config",
                format!("expected {HCM_TYPE_URL}, got {}", any.type_url),
            ));
        }
        let p: hpb::HttpConnectionManager =
            prost::Message::decode(any.value.as_slice()).map_err(|e| {
                ConfigError::field(
                    "typed_config",
                    format!("cannot decode HttpConnectionManager: {e}"),
                )
            })?;
        http_connection_manager(&p)
    }

    /// Whether an upgrade (`websocket`, ...) is enabled, with the route's override.
    pub fn upgrade_enabled(&self, upgrade: &str, route_override: Option<bool>) -> bool {
        let hcm = self
            .upgrades
            .iter()
            .find(|(t, _)| t.eq_ignore_ascii_case(upgrade));
        match (hcm, route_override) {
            (None, _) => false,
            (Some(_), Some(r)) => r,
            (Some((_, enabled)), None) => *enabled,
        }
    }
}

fn opt_duration(
    d: &Option<envoy_types::pb::google::protobuf::Duration>,
    field: &str,
) -> Result<Option<Duration>, ConfigError> {
    d.as_ref().map(|d| duration(d, field)).transpose()
}

/// A zero duration disables a timeout, as in Envoy.
fn timeout(
    d: &Option<envoy_types::pb::google::protobuf::Duration>,
    field: &str,
    default: Option<Duration>,
) -> Result<Option<Duration>, ConfigError> {
    Ok(match opt_duration(d, field)? {
        None => default,
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
    })
}

pub fn http_connection_manager(
    p: &hpb::HttpConnectionManager,
) -> Result<HttpConnectionManager, ConfigError> {
    let unsupported = |name: &str| ConfigError::field(name, "is not supported");
    let codec = match CodecType::try_from(p.codec_type) {
        Ok(CodecType::Auto) => Codec::Auto,
        Ok(CodecType::Http1) => Codec::Http1,
        Ok(CodecType::Http2) => Codec::Http2,
        _ => {
            return Err(ConfigError::field(
                "codec_type",
                format!(
                    "codec {} is not supported (AUTO, HTTP1, HTTP2 are)",
                    p.codec_type
                ),
            ));
        }
    };
    let routes = match &p.route_specifier {
        Some(RouteSpecifier::Rds(r)) => {
            if r.route_config_name.is_empty() {
                return Err(ConfigError::field(
                    "rds.route_config_name",
                    "must not be empty",
                ));
            }
            RouteSource::Rds(Arc::from(r.route_config_name.as_str()))
        }
        Some(RouteSpecifier::RouteConfig(rc)) => RouteSource::Inline(Arc::new(
            route_configuration(rc).map_err(|e| e.at("route_config"))?,
        )),
        Some(RouteSpecifier::ScopedRoutes(_)) => return Err(unsupported("scoped_routes")),
        None => {
            return Err(ConfigError::field(
                "route_specifier",
                "one of rds or route_config is required",
            ));
        }
    };
    let (http_filters, router) = filters(&p.http_filters)?;

    // Fields that change traffic and are not implemented.
    if p.tracing.as_ref().is_some_and(|t| t.provider.is_some()) {
        return Err(unsupported("tracing.provider"));
    }
    if p.http3_protocol_options.is_some() {
        return Err(unsupported("http3_protocol_options"));
    }
    if p.scheme_header_transformation.is_some() {
        return Err(unsupported("scheme_header_transformation"));
    }
    if !p.original_ip_detection_extensions.is_empty() {
        return Err(unsupported("original_ip_detection_extensions"));
    }
    if !p.early_header_mutation_extensions.is_empty() {
        return Err(unsupported("early_header_mutation_extensions"));
    }
    if p.local_reply_config.is_some() {
        return Err(unsupported("local_reply_config"));
    }
    if p.path_normalization_options.is_some() {
        return Err(unsupported("path_normalization_options"));
    }
    if p.typed_header_validation_config.is_some() {
        return Err(unsupported("typed_header_validation_config"));
    }
    if p.proxy_status_config.is_some() {
        return Err(unsupported("proxy_status_config"));
    }
    if p.forward_client_cert_matcher.is_some() {
        return Err(unsupported("forward_client_cert_matcher"));
    }
    if p.add_user_agent.as_ref().is_some_and(|b| b.value) {
        return Err(unsupported("add_user_agent"));
    }
    if p.append_x_forwarded_port {
        return Err(unsupported("append_x_forwarded_port"));
    }
    if p.forward_proto_config.is_some() {
        return Err(unsupported("forward_proto_config"));
    }
    if p.represent_ipv4_remote_address_as_ipv4_mapped_ipv6 {
        return Err(unsupported(
            "represent_ipv4_remote_address_as_ipv4_mapped_ipv6",
        ));
    }
    if let Some(ext) = &p.request_id_extension {
        match &ext.typed_config {
            Some(any) if any.type_url == UUID_REQUEST_ID_TYPE_URL => {}
            Some(any) => {
                return Err(ConfigError::field(
                    "request_id_extension.typed_config",
                    format!("request id extension {} is not supported", any.type_url),
                ));
            }
            None => {}
        }
    }

    let common = p.common_http_protocol_options.unwrap_or_default();
    let HttpProtocolOptions {
        idle_timeout,
        max_connection_duration,
        max_headers_count,
        max_stream_duration,
        headers_with_underscores_action,
        max_requests_per_connection,
        ..
    } = &common;
    if *headers_with_underscores_action != 0 {
        return Err(unsupported(
            "common_http_protocol_options.headers_with_underscores_action",
        ));
    }
    let h1: Http1ProtocolOptions = p.http_protocol_options.clone().unwrap_or_default();
    if h1.header_key_format.is_some() {
        return Err(unsupported("http_protocol_options.header_key_format"));
    }
    if !h1.default_host_for_http_10.is_empty() {
        return Err(unsupported(
            "http_protocol_options.default_host_for_http_10",
        ));
    }
    let h2: Http2ProtocolOptions = p.http2_protocol_options.clone().unwrap_or_default();
    if h2.allow_connect {
        return Err(unsupported("http2_protocol_options.allow_connect"));
    }

    let mut upgrades = Vec::new();
    for (i, u) in p.upgrade_configs.iter().enumerate() {
        if !u.filters.is_empty() {
            return Err(ConfigError::field(
                format!("upgrade_configs[{i}].filters"),
                "upgrade-specific filter chains are not supported",
            ));
        }
        if u.upgrade_type.eq_ignore_ascii_case("connect") {
            return Err(ConfigError::field(
                format!("upgrade_configs[{i}].upgrade_type"),
                "CONNECT is not supported",
            ));
        }
        upgrades.push((
            u.upgrade_type.to_ascii_lowercase(),
            u.enabled.as_ref().is_none_or(|b| b.value),
        ));
    }

    let forward_client_cert = match p.forward_client_cert_details {
        0 => ForwardClientCert::Sanitize,
        1 => ForwardClientCert::ForwardOnly,
        2 => ForwardClientCert::AppendForward,
        3 => ForwardClientCert::SanitizeSet,
        4 => ForwardClientCert::AlwaysForwardOnly,
        n => {
            return Err(ConfigError::field(
                "forward_client_cert_details",
                format!("unknown value {n}"),
            ));
        }
    };
    let server_header = match p.server_header_transformation {
        0 => ServerHeader::Overwrite,
        1 => ServerHeader::AppendIfAbsent,
        2 => ServerHeader::PassThrough,
        n => {
            return Err(ConfigError::field(
                "server_header_transformation",
                format!("unknown value {n}"),
            ));
        }
    };
    let escaped_slashes = match p.path_with_escaped_slashes_action {
        0 | 1 => EscapedSlashes::KeepUnchanged,
        2 => EscapedSlashes::RejectRequest,
        3 => {
            return Err(ConfigError::field(
                "path_with_escaped_slashes_action",
                "UNESCAPE_AND_REDIRECT is not supported",
            ));
        }
        4 => EscapedSlashes::UnescapeAndForward,
        n => {
            return Err(ConfigError::field(
                "path_with_escaped_slashes_action",
                format!("unknown value {n}"),
            ));
        }
    };
    let server_name = if p.server_name.is_empty() {
        "envoy"
    } else {
        p.server_name.as_str()
    };
    let server_name = HeaderValue::from_str(server_name)
        .map_err(|_| ConfigError::field("server_name", "invalid header value"))?;
    let via = (!p.via.is_empty())
        .then(|| {
            HeaderValue::from_str(&p.via)
                .map_err(|_| ConfigError::field("via", "invalid header value"))
        })
        .transpose()?;
    let internal_cidrs = match &p.internal_address_config {
        None => None,
        Some(c) => {
            let mut nets = Vec::new();
            for (i, r) in c.cidr_ranges.iter().enumerate() {
                let len = r.prefix_len.as_ref().map_or(0, |l| l.value);
                let net = format!("{}/{len}", r.address_prefix)
                    .parse::<IpNet>()
                    .map_err(|e| {
                        ConfigError::field(
                            format!("internal_address_config.cidr_ranges[{i}]"),
                            e.to_string(),
                        )
                    })?;
                nets.push(net);
            }
            Some(nets)
        }
    };
    let strip_any_host_port = matches!(
        p.strip_port_mode,
        Some(StripPortMode::StripAnyHostPort(true))
    );
    let mut access_log = Vec::new();
    for (i, a) in p.access_log.iter().enumerate() {
        access_log.push(Arc::new(
            AccessLogConfig::try_from_proto(a).map_err(|e| e.at(format!("access_log[{i}]")))?,
        ));
    }
    let max_request_headers_kb = p.max_request_headers_kb.as_ref().map_or(60, |v| v.value);
    if max_request_headers_kb == 0 || max_request_headers_kb > 8192 {
        return Err(ConfigError::field(
            "max_request_headers_kb",
            "must be between 1 and 8192",
        ));
    }
    Ok(HttpConnectionManager {
        stat_prefix: Arc::from(p.stat_prefix.as_str()),
        codec,
        routes,
        http_filters,
        router,
        server_name,
        server_header,
        max_request_headers_kb,
        max_headers_count: max_headers_count.as_ref().map_or(100, |v| v.value),
        stream_idle_timeout: timeout(
            &p.stream_idle_timeout,
            "stream_idle_timeout",
            Some(Duration::from_secs(300)),
        )?,
        request_timeout: timeout(&p.request_timeout, "request_timeout", None)?,
        request_headers_timeout: timeout(
            &p.request_headers_timeout,
            "request_headers_timeout",
            None,
        )?,
        idle_timeout: timeout(
            idle_timeout,
            "common_http_protocol_options.idle_timeout",
            Some(Duration::from_secs(3600)),
        )?,
        max_connection_duration: timeout(
            max_connection_duration,
            "common_http_protocol_options.max_connection_duration",
            None,
        )?,
        max_stream_duration: timeout(
            max_stream_duration,
            "common_http_protocol_options.max_stream_duration",
            None,
        )?,
        max_requests_per_connection: max_requests_per_connection
            .as_ref()
            .map(|v| v.value)
            .filter(|v| *v > 0),
        drain_timeout: opt_duration(&p.drain_timeout, "drain_timeout")?
            .unwrap_or(Duration::from_secs(5)),
        use_remote_address: p.use_remote_address.as_ref().is_some_and(|b| b.value),
        xff_num_trusted_hops: p.xff_num_trusted_hops,
        skip_xff_append: p.skip_xff_append,
        via,
        internal_cidrs,
        generate_request_id: p.generate_request_id.as_ref().is_none_or(|b| b.value),
        preserve_external_request_id: p.preserve_external_request_id,
        always_set_request_id_in_response: p.always_set_request_id_in_response,
        forward_client_cert,
        upgrades,
        normalize_path: p.normalize_path.as_ref().is_some_and(|b| b.value),
        merge_slashes: p.merge_slashes,
        escaped_slashes,
        strip_matching_host_port: p.strip_matching_host_port,
        strip_any_host_port,
        strip_trailing_host_dot: p.strip_trailing_host_dot,
        proxy_100_continue: p.proxy_100_continue,
        access_log,
        http1_allow_absolute_url: h1.allow_absolute_url.as_ref().is_none_or(|b| b.value),
        http1_accept_http_10: h1.accept_http_10,
        http2_max_concurrent_streams: h2.max_concurrent_streams.as_ref().map(|v| v.value),
        http2_initial_stream_window_size: h2.initial_stream_window_size.as_ref().map(|v| v.value),
        http2_initial_connection_window_size: h2
            .initial_connection_window_size
            .as_ref()
            .map(|v| v.value),
    })
}

fn filters(list: &[hpb::HttpFilter]) -> Result<(Vec<FilterEntry>, RouterConfig), ConfigError> {
    let mut out = Vec::new();
    let mut router = None;
    let mut names = std::collections::HashSet::new();
    for (i, f) in list.iter().enumerate() {
        let field = format!("http_filters[{i}]");
        if router.is_some() {
            return Err(ConfigError::field(
                field,
                format!(
                    "http filter {:?} follows the terminal router filter",
                    f.name
                ),
            ));
        }
        if !names.insert(f.name.as_str()) {
            return Err(ConfigError::field(
                format!("{field}.name"),
                format!("duplicate http filter name {:?}", f.name),
            ));
        }
        let typed = match &f.config_type {
            Some(ConfigType::TypedConfig(any)) => Some(any),
            Some(ConfigType::ConfigDiscovery(_)) => {
                return Err(ConfigError::field(
                    format!("{field}.config_discovery"),
                    format!(
                        "filter config discovery (ECDS) for {:?} is not supported",
                        f.name
                    ),
                ));
            }
            None => None,
        };
        let is_router = match typed {
            Some(any) => any.type_url == ROUTER_TYPE_URL,
            None => f.name == "envoy.filters.http.router",
        };
        if is_router {
            let cfg = match typed {
                Some(any) => router_config(any).map_err(|e| e.at(&field))?,
                None => RouterConfig::default(),
            };
            router = Some(cfg);
            continue;
        }
        let filter = match typed {
            Some(any) => filters::from_hcm(any).map_err(|e| e.at(&field))?,
            None => None,
        };
        match filter {
            Some(filter) => out.push(FilterEntry {
                name: Arc::from(f.name.as_str()),
                disabled: f.disabled,
                filter,
            }),
            // An optional filter we do not know is skipped, as Envoy does.
            None if f.is_optional => {}
            None => {
                let what = typed.map_or_else(
                    || f.name.clone(),
                    |a| format!("{} ({})", f.name, a.type_url),
                );
                return Err(ConfigError::field(
                    field,
                    format!("http filter {what} is not supported"),
                ));
            }
        }
    }
    let router = router.ok_or_else(|| {
        ConfigError::field(
            "http_filters",
            "the last http filter must be envoy.filters.http.router",
        )
    })?;
    Ok((out, router))
}

fn router_config(any: &Any) -> Result<RouterConfig, ConfigError> {
    let r: PbRouter = prost::Message::decode(any.value.as_slice())
        .map_err(|e| ConfigError::field("typed_config", format!("cannot decode Router: {e}")))?;
    if !r.upstream_http_filters.is_empty() {
        return Err(ConfigError::field(
            "typed_config.upstream_http_filters",
            "is not supported",
        ));
    }
    if !r.upstream_log.is_empty() {
        return Err(ConfigError::field(
            "typed_config.upstream_log",
            "is not supported",
        ));
    }
    if !r.strict_check_headers.is_empty() {
        return Err(ConfigError::field(
            "typed_config.strict_check_headers",
            "is not supported",
        ));
    }
    Ok(RouterConfig {
        suppress_envoy_headers: r.suppress_envoy_headers,
        respect_expected_rq_timeout: r.respect_expected_rq_timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpFilter as PbFilter, Rds,
    };

    fn any<M: prost::Message + prost::Name>(m: &M) -> Any {
        Any {
            type_url: M::type_url(),
            value: m.encode_to_vec(),
        }
    }

    fn router_filter() -> PbFilter {
        PbFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(ConfigType::TypedConfig(any(&PbRouter::default()))),
            ..Default::default()
        }
    }

    fn hcm(filters: Vec<PbFilter>) -> hpb::HttpConnectionManager {
        hpb::HttpConnectionManager {
            stat_prefix: "inbound_0.0.0.0_8080".into(),
            http_filters: filters,
            route_specifier: Some(RouteSpecifier::Rds(Rds {
                route_config_name: "8080".into(),
                config_source: None,
            })),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_envoys() {
        let h = HttpConnectionManager::try_from(&hcm(vec![router_filter()])).expect("valid");
        assert_eq!(h.codec, Codec::Auto);
        assert!(matches!(&h.routes, RouteSource::Rds(n) if &**n == "8080"));
        assert_eq!(h.stream_idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(h.max_request_headers_kb, 60);
        assert!(h.generate_request_id);
        assert!(!h.use_remote_address);
        assert_eq!(h.server_name, "envoy");
        assert!(!h.upgrade_enabled("websocket", None));
    }

    #[test]
    fn unknown_filters_are_named() {
        let fault = PbFilter {
            name: "envoy.filters.http.buffer".into(),
            config_type: Some(ConfigType::TypedConfig(Any {
                type_url: "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"
                    .into(),
                value: vec![],
            })),
            ..Default::default()
        };
        let e = HttpConnectionManager::try_from(&hcm(vec![fault.clone(), router_filter()]))
            .expect_err("nack");
        assert_eq!(e.field, "http_filters[0]");
        assert!(e.message.contains("envoy.filters.http.buffer"), "{e}");
        let optional = PbFilter {
            is_optional: true,
            ..fault
        };
        HttpConnectionManager::try_from(&hcm(vec![optional, router_filter()]))
            .expect("optional filters are skipped");
        let e = HttpConnectionManager::try_from(&hcm(vec![])).expect_err("router required");
        assert_eq!(e.field, "http_filters");
    }

    #[test]
    fn upgrades_and_route_overrides() {
        let mut p = hcm(vec![router_filter()]);
        p.upgrade_configs
            .push(hpb::http_connection_manager::UpgradeConfig {
                upgrade_type: "websocket".into(),
                ..Default::default()
            });
        let h = HttpConnectionManager::try_from(&p).expect("valid");
        assert!(h.upgrade_enabled("WebSocket", None));
        assert!(!h.upgrade_enabled("websocket", Some(false)));
        assert!(
            !h.upgrade_enabled("h2c", Some(true)),
            "a route cannot enable an upgrade the HCM lacks"
        );
    }
}
