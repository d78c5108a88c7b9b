//! Network and listener filters: the HTTP connection manager (with Istio's HTTP filter
//! chain fault -> cors -> router), tcp_proxy, and the listener filters for original
//! destination and protocol detection.

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, access_log};
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, SubstitutionFormatString, data_source, substitution_format_string,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
    FileAccessLog, file_access_log,
};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds,
    http_connection_manager::{
        CodecType, PathWithEscapedSlashesAction, RouteSpecifier, UpgradeConfig,
    },
    http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy,
    tcp_proxy::{self, ClusterSpecifier},
};
use envoy_types::pb::google::protobuf::Any;
use mesh_api::mesh_config::MeshConfig;

use super::route::{CORS_FILTER, FAULT_FILTER};
use super::util::{ads, any, boolv, zero};

pub const HCM: &str = "envoy.filters.network.http_connection_manager";
pub const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
pub const ROUTER: &str = "envoy.filters.http.router";
pub const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
pub const HTTP_INSPECTOR: &str = "envoy.filters.listener.http_inspector";
pub const ORIGINAL_DST: &str = "envoy.filters.listener.original_dst";

/// ALPN values the HTTP inspector reports for plaintext HTTP (Istio's `plaintextHTTPALPNs`).
pub const PLAINTEXT_HTTP_ALPNS: [&str; 3] = ["http/1.0", "http/1.1", "h2c"];

/// Istio's default access log line (`EnvoyTextLogFormat`).
const ISTIO_TEXT_LOG_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

pub fn network_filter<M: prost::Message + prost::Name>(name: &str, config: &M) -> Filter {
    Filter {
        name: name.to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(any(config))),
    }
}

pub fn listener_filter<M: prost::Message + prost::Name>(name: &str, config: &M) -> ListenerFilter {
    ListenerFilter {
        name: name.to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(config))),
        ..Default::default()
    }
}

pub fn tls_inspector() -> ListenerFilter {
    listener_filter(TLS_INSPECTOR, &TlsInspector::default())
}

pub fn http_inspector() -> ListenerFilter {
    listener_filter(HTTP_INSPECTOR, &HttpInspector::default())
}

pub fn original_dst() -> ListenerFilter {
    listener_filter(ORIGINAL_DST, &OriginalDst::default())
}

/// The access log of a listener's connections, when the mesh config asks for one.
pub fn access_logs(mesh: &MeshConfig) -> Vec<AccessLog> {
    if mesh.access_log_file.is_empty() {
        return Vec::new();
    }
    let format = if mesh.access_log_format.is_empty() {
        ISTIO_TEXT_LOG_FORMAT.to_string()
    } else {
        mesh.access_log_format.clone()
    };
    // JSON encoding (Istio's `accessLogEncoding: JSON`) is written as text for now.
    let log_format = SubstitutionFormatString {
        format: Some(substitution_format_string::Format::TextFormatSource(
            DataSource {
                specifier: Some(data_source::Specifier::InlineString(format)),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let config = FileAccessLog {
        path: mesh.access_log_file.clone(),
        access_log_format: Some(file_access_log::AccessLogFormat::LogFormat(log_format)),
    };
    vec![AccessLog {
        name: "envoy.access_loggers.file".to_string(),
        config_type: Some(access_log::ConfigType::TypedConfig(any(&config))),
        ..Default::default()
    }]
}

/// Where an HTTP connection manager gets its routes.
pub enum Routes {
    Rds(String),
    Inline(Box<RouteConfiguration>),
}

/// An HTTP connection manager as Istio configures one: fault and CORS filters (configured
/// per route), then the router; websockets allowed; no stream idle timeout; path
/// normalization with escaped slashes kept.
pub fn http_connection_manager(
    stat_prefix: String,
    routes: Routes,
    mesh: &MeshConfig,
    use_remote_address: bool,
) -> HttpConnectionManager {
    let http_filter = |name: &str, config: Any| HttpFilter {
        name: name.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    };
    HttpConnectionManager {
        codec_type: CodecType::Auto as i32,
        stat_prefix,
        route_specifier: Some(match routes {
            Routes::Rds(name) => RouteSpecifier::Rds(Rds {
                config_source: Some(ads()),
                route_config_name: name,
            }),
            Routes::Inline(rc) => RouteSpecifier::RouteConfig(*rc),
        }),
        http_filters: vec![
            http_filter(FAULT_FILTER, any(&HttpFault::default())),
            http_filter(CORS_FILTER, any(&Cors::default())),
            http_filter(ROUTER, any(&Router::default())),
        ],
        use_remote_address: Some(boolv(use_remote_address)),
        upgrade_configs: vec![UpgradeConfig {
            upgrade_type: "websocket".to_string(),
            ..Default::default()
        }],
        stream_idle_timeout: Some(zero()),
        normalize_path: Some(boolv(true)),
        path_with_escaped_slashes_action: PathWithEscapedSlashesAction::KeepUnchanged as i32,
        access_log: access_logs(mesh),
        ..Default::default()
    }
}

/// A tcp_proxy to one cluster.
pub fn tcp_proxy(cluster: &str, mesh: &MeshConfig) -> TcpProxy {
    TcpProxy {
        stat_prefix: cluster.to_string(),
        cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.to_string())),
        access_log: access_logs(mesh),
        ..Default::default()
    }
}

/// A tcp_proxy splitting connections over weighted clusters.
pub fn tcp_proxy_weighted(
    stat_prefix: &str,
    clusters: Vec<(String, u32)>,
    mesh: &MeshConfig,
) -> TcpProxy {
    TcpProxy {
        stat_prefix: stat_prefix.to_string(),
        cluster_specifier: Some(ClusterSpecifier::WeightedClusters(
            tcp_proxy::WeightedCluster {
                clusters: clusters
                    .into_iter()
                    .map(
                        |(name, weight)| tcp_proxy::weighted_cluster::ClusterWeight {
                            name,
                            weight,
                            ..Default::default()
                        },
                    )
                    .collect(),
            },
        )),
        access_log: access_logs(mesh),
        ..Default::default()
    }
}
