//! `Cluster` (CDS) as a domain type: discovery type, load-balancing policy, circuit
//! breakers, connect timeout and upstream HTTP protocol options. Fields that would change
//! traffic and are not implemented are rejected by name (see `SUPPORTED.md`).
// Envoy still honours deprecated cluster fields; we check them so none is silently ignored.
#![allow(deprecated)]

use std::time::Duration;

use envoy_types::pb::{
    envoy::{
        config::{
            cluster::v3::{self as cpb, cluster},
            core::v3::{RoutingPriority, TransportSocket, transport_socket},
        },
        extensions::{
            load_balancing_policies::{
                common::v3 as lb_common, least_request::v3::LeastRequest, maglev::v3::Maglev,
                random::v3::Random, ring_hash::v3::RingHash, round_robin::v3::RoundRobin,
            },
            upstreams::http::v3::{HttpProtocolOptions, http_protocol_options},
        },
    },
    google::protobuf::Any,
};

use super::{ConfigError, Result, decode_any, endpoint::ClusterLoadAssignment, opt_duration};

mod outlier;
mod socket;

pub use outlier::{Enforcing, OutlierDetection};
pub use socket::{TcpKeepalive, UpstreamBind};

/// Envoy's default `connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Envoy's default ring sizes and maglev table size.
pub const DEFAULT_MIN_RING_SIZE: u64 = 1024;
pub const DEFAULT_MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
pub const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65537;

const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const RAW_BUFFER: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";

#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub name: String,
    /// `alt_stat_name`, else the name: the stats label.
    pub stat_name: String,
    pub discovery: Discovery,
    pub connect_timeout: Duration,
    pub lb: LbPolicy,
    /// Locality-weighted load balancing (`common_lb_config.locality_weighted_lb_config`).
    pub locality_weighted: bool,
    /// Percent of healthy hosts under which a priority level is in panic mode (all hosts used).
    pub healthy_panic_threshold: f64,
    pub circuit_breakers: CircuitBreakerThresholds,
    /// Inline endpoints (STATIC, STRICT_DNS).
    pub load_assignment: Option<ClusterLoadAssignment>,
    pub http: UpstreamHttpOptions,
    pub per_connection_buffer_limit_bytes: u32,
    /// `upstream_bind_config`: the source address of upstream connections.
    pub upstream_bind: Option<UpstreamBind>,
    /// `upstream_connection_options.tcp_keepalive`.
    pub tcp_keepalive: Option<TcpKeepalive>,
    pub outlier_detection: Option<OutlierDetection>,
    /// Round robin and least request: new hosts ramp up over a window.
    pub slow_start: Option<SlowStart>,
}

/// `slow_start_config`: a host added after the cluster's first assignment gets
/// `weight x max(min_weight_percent, (t / window) ^ (1 / aggression))` until the window ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowStart {
    pub window: Duration,
    pub aggression: f64,
    /// A fraction (0.1 = Envoy's default 10%).
    pub min_weight: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Discovery {
    Static,
    StrictDns {
        refresh_rate: Duration,
        respect_dns_ttl: bool,
        family: DnsFamily,
    },
    /// `service_name` is the EDS resource name (the cluster name when empty).
    Eds {
        service_name: String,
    },
    OriginalDst {
        use_http_header: bool,
        http_header_name: String,
        upstream_port_override: Option<u16>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsFamily {
    Auto,
    V4Only,
    V6Only,
    V4Preferred,
    All,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest {
        choice_count: u32,
        active_request_bias: f64,
    },
    Random,
    RingHash {
        min_ring_size: u64,
        max_ring_size: u64,
        use_hostname: bool,
    },
    Maglev {
        table_size: u64,
        use_hostname: bool,
    },
    /// ORIGINAL_DST clusters: the host is the connection's original destination.
    ClusterProvided,
}

/// The DEFAULT and HIGH priority thresholds (Envoy's defaults when unset).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CircuitBreakerThresholds {
    pub default: Thresholds,
    pub high: Thresholds,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    /// When set, replaces `max_retries`: concurrent retries may be this share of the
    /// active plus pending requests, never fewer than its minimum.
    pub retry_budget: Option<RetryBudget>,
}

/// `circuit_breakers.thresholds[].retry_budget` (Envoy's defaults: 20%, at least 3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    pub budget_percent: f64,
    pub min_retry_concurrency: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            retry_budget: None,
        }
    }
}

/// Which HTTP version the upstream pool speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    Http2,
    /// Same as the downstream request.
    UseDownstream,
}

/// `typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UpstreamHttpOptions {
    pub protocol: UpstreamProtocol,
    pub idle_timeout: Option<Duration>,
    pub max_connection_duration: Option<Duration>,
    pub max_requests_per_connection: Option<u32>,
    pub max_concurrent_streams: Option<u32>,
    pub initial_stream_window_size: Option<u32>,
    pub initial_connection_window_size: Option<u32>,
    pub max_headers_count: Option<u32>,
}

impl Default for Cluster {
    /// A STATIC round-robin cluster with Envoy's defaults and no endpoints (tests, builders).
    fn default() -> Self {
        Cluster {
            name: String::new(),
            stat_name: String::new(),
            discovery: Discovery::Static,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            lb: LbPolicy::RoundRobin,
            locality_weighted: false,
            healthy_panic_threshold: 50.0,
            circuit_breakers: CircuitBreakerThresholds::default(),
            load_assignment: None,
            http: UpstreamHttpOptions::default(),
            per_connection_buffer_limit_bytes: 1024 * 1024,
            upstream_bind: None,
            tcp_keepalive: None,
            outlier_detection: None,
            slow_start: None,
        }
    }
}

impl Cluster {
    /// The EDS resource name this cluster subscribes to, if it is an EDS cluster.
    pub fn eds_service_name(&self) -> Option<&str> {
        match &self.discovery {
            Discovery::Eds { service_name } if service_name.is_empty() => Some(&self.name),
            Discovery::Eds { service_name } => Some(service_name),
            _ => None,
        }
    }
}

impl TryFrom<&cpb::Cluster> for Cluster {
    type Error = ConfigError;

    fn try_from(c: &cpb::Cluster) -> Result<Self> {
        convert(c).map_err(|e| e.in_resource(&c.name))
    }
}

fn unsupported_if(cond: bool, field: &str) -> Result<()> {
    if cond {
        Err(ConfigError::unsupported(field))
    } else {
        Ok(())
    }
}

fn convert(c: &cpb::Cluster) -> Result<Cluster> {
    if c.name.is_empty() {
        return Err(ConfigError::field("name", "cluster name is required"));
    }
    // Fields that change traffic and that we do not implement (yet): named, never ignored.
    unsupported_if(!c.health_checks.is_empty(), "health_checks")?;
    unsupported_if(c.lb_subset_config.is_some(), "lb_subset_config")?;
    unsupported_if(!c.dns_resolvers.is_empty(), "dns_resolvers")?;
    unsupported_if(c.dns_resolution_config.is_some(), "dns_resolution_config")?;
    unsupported_if(
        c.typed_dns_resolver_config.is_some(),
        "typed_dns_resolver_config",
    )?;
    unsupported_if(c.lrs_server.is_some(), "lrs_server")?;
    unsupported_if(!c.filters.is_empty(), "filters")?;
    unsupported_if(c.upstream_config.is_some(), "upstream_config")?;
    unsupported_if(c.preconnect_policy.is_some(), "preconnect_policy")?;
    unsupported_if(
        c.connection_pool_per_downstream_connection,
        "connection_pool_per_downstream_connection",
    )?;
    unsupported_if(
        c.transport_socket_matcher.is_some(),
        "transport_socket_matcher",
    )?;
    unsupported_if(c.queuing_policies.is_some(), "queuing_policies")?;
    unsupported_if(
        c.upstream_http_protocol_options.is_some(),
        "upstream_http_protocol_options",
    )?;
    if let Some(ts) = &c.transport_socket {
        raw_buffer_only(ts, "transport_socket")?;
    }
    for (i, m) in c.transport_socket_matches.iter().enumerate() {
        if let Some(ts) = &m.transport_socket {
            raw_buffer_only(
                ts,
                &format!("transport_socket_matches[{i}].transport_socket"),
            )?;
        }
    }

    let discovery = discovery(c)?;
    let connect_timeout =
        opt_duration(&c.connect_timeout, "connect_timeout")?.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let LbChoice {
        policy: mut lb,
        mut locality_weighted,
        slow_start,
    } = lb_policy(c)?;
    let mut healthy_panic_threshold = 50.0;
    if let Some(common) = &c.common_lb_config {
        if let Some(p) = &common.healthy_panic_threshold {
            if !(0.0..=100.0).contains(&p.value) {
                return Err(ConfigError::field(
                    "common_lb_config.healthy_panic_threshold",
                    "must be within 0..=100",
                ));
            }
            healthy_panic_threshold = p.value;
        }
        unsupported_if(
            common.ignore_new_hosts_until_first_hc,
            "common_lb_config.ignore_new_hosts_until_first_hc",
        )?;
        unsupported_if(
            common.override_host_status.is_some(),
            "common_lb_config.override_host_status",
        )?;
        if let Some(h) = &common.consistent_hashing_lb_config {
            unsupported_if(
                h.hash_balance_factor.is_some(),
                "common_lb_config.consistent_hashing_lb_config.hash_balance_factor",
            )?;
            match &mut lb {
                LbPolicy::RingHash { use_hostname, .. } | LbPolicy::Maglev { use_hostname, .. } => {
                    *use_hostname = h.use_hostname_for_hashing;
                }
                _ => {}
            }
        }
        match &common.locality_config_specifier {
            Some(cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                _,
            )) => {
                locality_weighted = true;
            }
            Some(cluster::common_lb_config::LocalityConfigSpecifier::ZoneAwareLbConfig(_)) => {
                return Err(ConfigError::unsupported(
                    "common_lb_config.zone_aware_lb_config",
                ));
            }
            None => {}
        }
    }
    if matches!(discovery, Discovery::OriginalDst { .. }) != matches!(lb, LbPolicy::ClusterProvided)
    {
        return Err(ConfigError::field(
            "lb_policy",
            "ORIGINAL_DST clusters need lb_policy CLUSTER_PROVIDED, and CLUSTER_PROVIDED needs type ORIGINAL_DST",
        ));
    }

    let load_assignment = match (&discovery, &c.load_assignment) {
        (Discovery::Eds { .. }, Some(_)) => {
            // Envoy ignores it for EDS; we say so rather than guess.
            return Err(ConfigError::field(
                "load_assignment",
                "must not be set on an EDS cluster",
            ));
        }
        (Discovery::OriginalDst { .. }, Some(_)) => {
            return Err(ConfigError::field(
                "load_assignment",
                "must not be set on an ORIGINAL_DST cluster",
            ));
        }
        (_, Some(la)) => {
            let la = ClusterLoadAssignment::try_from(la).map_err(|e| {
                ConfigError {
                    resource: String::new(),
                    ..e
                }
                .at("load_assignment")
            })?;
            if matches!(discovery, Discovery::Static) {
                for (i, l) in la.localities.iter().enumerate() {
                    for (j, e) in l.endpoints.iter().enumerate() {
                        if !matches!(e.address, super::address::HostPort::Ip(_)) {
                            return Err(ConfigError::field(
                                format!(
                                    "load_assignment.endpoints[{i}].lb_endpoints[{j}].endpoint.address"
                                ),
                                "STATIC clusters need IP addresses (use STRICT_DNS for names)",
                            ));
                        }
                    }
                }
            }
            Some(la)
        }
        (Discovery::Static | Discovery::StrictDns { .. }, None) => {
            // No endpoints (Istio's BlackHoleCluster): valid, every pick finds no host (UH).
            Some(ClusterLoadAssignment {
                cluster_name: c.name.clone(),
                localities: Vec::new(),
                overprovisioning_factor: super::endpoint::DEFAULT_OVERPROVISIONING_FACTOR,
                weighted_priority_health: false,
            })
        }
        (_, None) => None,
    };

    let circuit_breakers = circuit_breakers(c)?;
    let mut http = UpstreamHttpOptions::default();
    let mut typed_http = false;
    for (name, any) in &c.typed_extension_protocol_options {
        let field = format!("typed_extension_protocol_options[{name:?}]");
        if name != HTTP_PROTOCOL_OPTIONS {
            return Err(ConfigError::unsupported(field));
        }
        http = upstream_http(any).map_err(|e| e.at(&field))?;
        typed_http = true;
    }
    deprecated_http(c, &mut http, typed_http)?;
    let upstream_bind = c
        .upstream_bind_config
        .as_ref()
        .map(socket::bind)
        .transpose()?;
    let tcp_keepalive = match &c.upstream_connection_options {
        Some(o) => socket::connection_options(o)?,
        None => None,
    };
    let outlier_detection = c
        .outlier_detection
        .as_ref()
        .map(OutlierDetection::try_from)
        .transpose()?;

    Ok(Cluster {
        name: c.name.clone(),
        stat_name: if c.alt_stat_name.is_empty() {
            c.name.clone()
        } else {
            c.alt_stat_name.clone()
        },
        discovery,
        connect_timeout,
        lb,
        locality_weighted,
        healthy_panic_threshold,
        circuit_breakers,
        load_assignment,
        http,
        per_connection_buffer_limit_bytes: c
            .per_connection_buffer_limit_bytes
            .map(|v| v.value)
            .unwrap_or(1024 * 1024),
        upstream_bind,
        tcp_keepalive,
        outlier_detection,
        slow_start,
    })
}

/// The deprecated cluster-level HTTP options (`http_protocol_options`,
/// `http2_protocol_options`, `common_http_protocol_options`, `protocol_selection`,
/// `max_requests_per_connection`): still valid Envoy config, and Envoy refuses them next to
/// the typed `HttpProtocolOptions`.
fn deprecated_http(c: &cpb::Cluster, http: &mut UpstreamHttpOptions, typed: bool) -> Result<()> {
    let any_deprecated = c.http_protocol_options.is_some()
        || c.http2_protocol_options.is_some()
        || c.common_http_protocol_options.is_some()
        || c.protocol_selection != 0;
    if typed && any_deprecated {
        return Err(ConfigError::field(
            "typed_extension_protocol_options",
            "cannot be combined with the deprecated http_protocol_options, http2_protocol_options, common_http_protocol_options or protocol_selection",
        ));
    }
    if let Some(common) = &c.common_http_protocol_options {
        common_options(http, common, "common_http_protocol_options")?;
    }
    if let Some(h2) = &c.http2_protocol_options {
        http.protocol = UpstreamProtocol::Http2;
        h2_options(http, h2, "http2_protocol_options")?;
    }
    if c.protocol_selection == cpb::cluster::ClusterProtocolSelection::UseDownstreamProtocol as i32
    {
        http.protocol = UpstreamProtocol::UseDownstream;
    } else if c.protocol_selection != 0 {
        return Err(ConfigError::field("protocol_selection", "unknown value"));
    }
    if http.max_requests_per_connection.is_none() {
        // Deprecated location; the typed options win when both are set (as in Envoy).
        http.max_requests_per_connection = c.max_requests_per_connection.map(|m| m.value);
    }
    Ok(())
}

fn raw_buffer_only(ts: &TransportSocket, field: &str) -> Result<()> {
    match &ts.config_type {
        Some(transport_socket::ConfigType::TypedConfig(any)) if any.type_url == RAW_BUFFER => {
            Ok(())
        }
        None if ts.name == "envoy.transport_sockets.raw_buffer" || ts.name == "raw_buffer" => {
            Ok(())
        }
        _ => Err(ConfigError::field(
            field,
            format!(
                "transport socket {:?} is not supported yet (only raw_buffer)",
                ts.name
            ),
        )),
    }
}

fn discovery(c: &cpb::Cluster) -> Result<Discovery> {
    use cpb::cluster::{ClusterDiscoveryType, DiscoveryType};
    let t = match &c.cluster_discovery_type {
        None => DiscoveryType::Static,
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(*t)
            .map_err(|_| ConfigError::field("type", format!("unknown discovery type {t}")))?,
        Some(ClusterDiscoveryType::ClusterType(ct)) => {
            return Err(ConfigError::field(
                "cluster_type",
                format!("custom cluster type {:?} is not supported", ct.name),
            ));
        }
    };
    if t != DiscoveryType::Eds && c.eds_cluster_config.is_some() {
        return Err(ConfigError::field(
            "eds_cluster_config",
            "only valid with type EDS",
        ));
    }
    Ok(match t {
        DiscoveryType::Static => Discovery::Static,
        DiscoveryType::StrictDns => {
            let refresh_rate = opt_duration(&c.dns_refresh_rate, "dns_refresh_rate")?
                .unwrap_or(Duration::from_secs(5));
            if refresh_rate < Duration::from_millis(1) {
                return Err(ConfigError::field(
                    "dns_refresh_rate",
                    "must be at least 1ms",
                ));
            }
            unsupported_if(
                c.dns_failure_refresh_rate.is_some(),
                "dns_failure_refresh_rate",
            )?;
            unsupported_if(c.dns_jitter.is_some(), "dns_jitter")?;
            use cpb::cluster::DnsLookupFamily as F;
            let family = match F::try_from(c.dns_lookup_family) {
                Ok(F::Auto) => DnsFamily::Auto,
                Ok(F::V4Only) => DnsFamily::V4Only,
                Ok(F::V6Only) => DnsFamily::V6Only,
                Ok(F::V4Preferred) => DnsFamily::V4Preferred,
                Ok(F::All) => DnsFamily::All,
                Err(_) => return Err(ConfigError::field("dns_lookup_family", "unknown value")),
            };
            Discovery::StrictDns {
                refresh_rate,
                respect_dns_ttl: c.respect_dns_ttl,
                family,
            }
        }
        DiscoveryType::LogicalDns => {
            return Err(ConfigError::field(
                "type",
                "LOGICAL_DNS is not supported (use STRICT_DNS)",
            ));
        }
        DiscoveryType::Eds => {
            let service_name = c
                .eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.clone())
                .unwrap_or_default();
            if let Some(cs) = c
                .eds_cluster_config
                .as_ref()
                .and_then(|e| e.eds_config.as_ref())
            {
                ads_source(cs, "eds_cluster_config.eds_config")?;
            }
            Discovery::Eds { service_name }
        }
        DiscoveryType::OriginalDst => {
            let (use_http_header, http_header_name, upstream_port_override) = match &c.lb_config {
                Some(cluster::LbConfig::OriginalDstLbConfig(o)) => {
                    unsupported_if(
                        o.metadata_key.is_some(),
                        "original_dst_lb_config.metadata_key",
                    )?;
                    let port = o
                        .upstream_port_override
                        .map(|p| {
                            u16::try_from(p.value).map_err(|_| {
                                ConfigError::field(
                                    "original_dst_lb_config.upstream_port_override",
                                    "port out of range",
                                )
                            })
                        })
                        .transpose()?;
                    let header = if o.http_header_name.is_empty() {
                        "x-envoy-original-dst-host".to_string()
                    } else {
                        o.http_header_name.to_ascii_lowercase()
                    };
                    (o.use_http_header, header, port)
                }
                _ => (false, "x-envoy-original-dst-host".to_string(), None),
            };
            // cleanup_interval only bounds memory for idle hosts: descriptive.
            Discovery::OriginalDst {
                use_http_header,
                http_header_name,
                upstream_port_override,
            }
        }
    })
}

/// EDS must come over the ADS stream we run (or be unset, which Istio never does).
pub(crate) fn ads_source(
    cs: &envoy_types::pb::envoy::config::core::v3::ConfigSource,
    field: &str,
) -> Result<()> {
    use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier as S;
    match &cs.config_source_specifier {
        Some(S::Ads(_)) | None => Ok(()),
        Some(_) => Err(ConfigError::field(
            field,
            "only ads config sources are supported (all resources come over the one ADS stream)",
        )),
    }
}

/// The load-balancing policy with what comes with it.
struct LbChoice {
    policy: LbPolicy,
    locality_weighted: bool,
    slow_start: Option<SlowStart>,
}

impl From<(LbPolicy, bool)> for LbChoice {
    fn from((policy, locality_weighted): (LbPolicy, bool)) -> Self {
        LbChoice {
            policy,
            locality_weighted,
            slow_start: None,
        }
    }
}

/// `slow_start_config` (the cluster's legacy message and the typed policies' are the same
/// shape). A zero or missing window turns slow start off, as in Envoy.
fn slow_start(
    window: &Option<envoy_types::pb::google::protobuf::Duration>,
    aggression: Option<f64>,
    min_weight_percent: Option<f64>,
    field: &str,
) -> Result<Option<SlowStart>> {
    let window = opt_duration(window, &format!("{field}.slow_start_window"))?.unwrap_or_default();
    let aggression = aggression.unwrap_or(1.0);
    if aggression.is_nan() || aggression <= 0.0 {
        return Err(ConfigError::field(
            format!("{field}.aggression"),
            format!("must be greater than 0 (got {aggression})"),
        ));
    }
    let min = min_weight_percent.unwrap_or(10.0);
    if !(0.0..=100.0).contains(&min) {
        return Err(ConfigError::field(
            format!("{field}.min_weight_percent"),
            "must be within 0..=100",
        ));
    }
    Ok((!window.is_zero()).then_some(SlowStart {
        window,
        aggression,
        min_weight: min / 100.0,
    }))
}

fn legacy_slow_start(
    s: &Option<cluster::SlowStartConfig>,
    field: &str,
) -> Result<Option<SlowStart>> {
    let Some(s) = s else { return Ok(None) };
    slow_start(
        &s.slow_start_window,
        s.aggression.as_ref().map(|a| a.default_value),
        s.min_weight_percent.as_ref().map(|p| p.value),
        field,
    )
}

fn typed_slow_start(
    s: &Option<lb_common::SlowStartConfig>,
    field: &str,
) -> Result<Option<SlowStart>> {
    let Some(s) = s else { return Ok(None) };
    slow_start(
        &s.slow_start_window,
        s.aggression.as_ref().map(|a| a.default_value),
        s.min_weight_percent.as_ref().map(|p| p.value),
        field,
    )
}

fn lb_policy(c: &cpb::Cluster) -> Result<LbChoice> {
    use cpb::cluster::LbPolicy as P;
    if let Some(policy) = &c.load_balancing_policy {
        return typed_lb_policy(policy);
    }
    let p = P::try_from(c.lb_policy)
        .map_err(|_| ConfigError::field("lb_policy", format!("unknown value {}", c.lb_policy)))?;
    let cfg = c.lb_config.as_ref();
    let mut slow = None;
    let policy = match p {
        P::RoundRobin => {
            if let Some(cluster::LbConfig::RoundRobinLbConfig(rr)) = cfg {
                slow = legacy_slow_start(
                    &rr.slow_start_config,
                    "round_robin_lb_config.slow_start_config",
                )?;
            }
            LbPolicy::RoundRobin
        }
        P::LeastRequest => {
            let (mut choice_count, mut bias) = (2, 1.0);
            if let Some(cluster::LbConfig::LeastRequestLbConfig(lr)) = cfg {
                slow = legacy_slow_start(
                    &lr.slow_start_config,
                    "least_request_lb_config.slow_start_config",
                )?;
                if let Some(n) = lr.choice_count {
                    if n.value < 2 {
                        return Err(ConfigError::field(
                            "least_request_lb_config.choice_count",
                            "must be at least 2",
                        ));
                    }
                    choice_count = n.value;
                }
                if let Some(b) = &lr.active_request_bias {
                    bias = b.default_value;
                }
            }
            LbPolicy::LeastRequest {
                choice_count,
                active_request_bias: bias,
            }
        }
        P::Random => LbPolicy::Random,
        P::RingHash => {
            let (mut min, mut max) = (DEFAULT_MIN_RING_SIZE, DEFAULT_MAX_RING_SIZE);
            if let Some(cluster::LbConfig::RingHashLbConfig(r)) = cfg {
                if r.hash_function != 0 {
                    return Err(ConfigError::field(
                        "ring_hash_lb_config.hash_function",
                        "only XX_HASH is supported",
                    ));
                }
                min = r.minimum_ring_size.map(|v| v.value).unwrap_or(min);
                max = r.maximum_ring_size.map(|v| v.value).unwrap_or(max);
            }
            ring_sizes(min, max, "ring_hash_lb_config")?;
            LbPolicy::RingHash {
                min_ring_size: min,
                max_ring_size: max,
                use_hostname: false,
            }
        }
        P::Maglev => {
            let mut table_size = DEFAULT_MAGLEV_TABLE_SIZE;
            if let Some(cluster::LbConfig::MaglevLbConfig(m)) = cfg {
                table_size = m.table_size.map(|v| v.value).unwrap_or(table_size);
            }
            maglev_size(table_size, "maglev_lb_config.table_size")?;
            LbPolicy::Maglev {
                table_size,
                use_hostname: false,
            }
        }
        P::ClusterProvided => LbPolicy::ClusterProvided,
        P::LoadBalancingPolicyConfig => {
            return Err(ConfigError::field(
                "lb_policy",
                "LOAD_BALANCING_POLICY_CONFIG needs load_balancing_policy",
            ));
        }
    };
    Ok(LbChoice {
        policy,
        locality_weighted: false,
        slow_start: slow,
    })
}

fn ring_sizes(min: u64, max: u64, field: &str) -> Result<()> {
    if min == 0 || min > max || max > DEFAULT_MAX_RING_SIZE {
        return Err(ConfigError::field(
            field,
            format!(
                "ring sizes must satisfy 0 < minimum_ring_size ({min}) <= maximum_ring_size ({max}) <= 8M"
            ),
        ));
    }
    Ok(())
}

fn maglev_size(size: u64, field: &str) -> Result<()> {
    // Envoy requires a prime table size (it makes the permutation a full cycle).
    let prime = size >= 2
        && (2..)
            .take_while(|d| d * d <= size)
            .all(|d| !size.is_multiple_of(d));
    if !prime || size > 5_000_011 {
        return Err(ConfigError::field(
            field,
            format!("{size} must be a prime no larger than 5000011"),
        ));
    }
    Ok(())
}

fn locality_lb(l: &Option<lb_common::LocalityLbConfig>, field: &str) -> Result<bool> {
    use lb_common::locality_lb_config::LocalityConfigSpecifier as S;
    match l
        .as_ref()
        .and_then(|l| l.locality_config_specifier.as_ref())
    {
        None => Ok(false),
        Some(S::LocalityWeightedLbConfig(_)) => Ok(true),
        Some(S::ZoneAwareLbConfig(_)) => Err(ConfigError::unsupported(format!(
            "{field}.zone_aware_lb_config"
        ))),
    }
}

/// `load_balancing_policy`: Envoy takes the first policy it supports; so do we, and
/// reject the cluster only when none is supported.
fn typed_lb_policy(p: &cpb::LoadBalancingPolicy) -> Result<LbChoice> {
    let mut names = Vec::new();
    for (i, policy) in p.policies.iter().enumerate() {
        let field = format!("load_balancing_policy.policies[{i}].typed_extension_config");
        let Some(ext) = &policy.typed_extension_config else {
            continue;
        };
        let Some(any) = &ext.typed_config else {
            continue;
        };
        if let Some(r) = typed_policy(any, &field)? {
            return Ok(r);
        }
        names.push(any.type_url.clone());
    }
    Err(ConfigError::field(
        "load_balancing_policy",
        format!("no supported policy among {names:?}"),
    ))
}

fn typed_policy(any: &Any, field: &str) -> Result<Option<LbChoice>> {
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    Ok(Some(
        match name {
            "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin" => {
                let rr: RoundRobin = decode_any(any, field)?;
                return Ok(Some(LbChoice {
                    policy: LbPolicy::RoundRobin,
                    locality_weighted: locality_lb(&rr.locality_lb_config, field)?,
                    slow_start: typed_slow_start(
                        &rr.slow_start_config,
                        &format!("{field}.slow_start_config"),
                    )?,
                }));
            }
            "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest" => {
                let lr: LeastRequest = decode_any(any, field)?;
                let slow_start =
                    typed_slow_start(&lr.slow_start_config, &format!("{field}.slow_start_config"))?;
                unsupported_if(
                    lr.enable_full_scan.is_some_and(|b| b.value),
                    &format!("{field}.enable_full_scan"),
                )?;
                unsupported_if(
                    lr.selection_method != 0,
                    &format!("{field}.selection_method"),
                )?;
                let choice_count = lr.choice_count.map(|v| v.value).unwrap_or(2);
                if choice_count < 2 {
                    return Err(ConfigError::field(
                        format!("{field}.choice_count"),
                        "must be at least 2",
                    ));
                }
                let bias = lr
                    .active_request_bias
                    .map(|b| b.default_value)
                    .unwrap_or(1.0);
                return Ok(Some(LbChoice {
                    policy: LbPolicy::LeastRequest {
                        choice_count,
                        active_request_bias: bias,
                    },
                    locality_weighted: locality_lb(&lr.locality_lb_config, field)?,
                    slow_start,
                }));
            }
            "envoy.extensions.load_balancing_policies.random.v3.Random" => {
                let r: Random = decode_any(any, field)?;
                (LbPolicy::Random, locality_lb(&r.locality_lb_config, field)?)
            }
            "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash" => {
                let r: RingHash = decode_any(any, field)?;
                if r.hash_function != 0 {
                    return Err(ConfigError::field(
                        format!("{field}.hash_function"),
                        "only XX_HASH is supported",
                    ));
                }
                unsupported_if(
                    r.hash_balance_factor.is_some(),
                    &format!("{field}.hash_balance_factor"),
                )?;
                let min = r
                    .minimum_ring_size
                    .map(|v| v.value)
                    .unwrap_or(DEFAULT_MIN_RING_SIZE);
                let max = r
                    .maximum_ring_size
                    .map(|v| v.value)
                    .unwrap_or(DEFAULT_MAX_RING_SIZE);
                ring_sizes(min, max, field)?;
                let chc = r.consistent_hashing_lb_config.as_ref();
                unsupported_if(
                    chc.is_some_and(|c| c.hash_balance_factor.is_some()),
                    &format!("{field}.consistent_hashing_lb_config.hash_balance_factor"),
                )?;
                let use_hostname =
                    r.use_hostname_for_hashing || chc.is_some_and(|c| c.use_hostname_for_hashing);
                (
                    LbPolicy::RingHash {
                        min_ring_size: min,
                        max_ring_size: max,
                        use_hostname,
                    },
                    r.locality_weighted_lb_config.is_some(),
                )
            }
            "envoy.extensions.load_balancing_policies.maglev.v3.Maglev" => {
                let m: Maglev = decode_any(any, field)?;
                let table_size = m
                    .table_size
                    .map(|v| v.value)
                    .unwrap_or(DEFAULT_MAGLEV_TABLE_SIZE);
                maglev_size(table_size, &format!("{field}.table_size"))?;
                let chc = m.consistent_hashing_lb_config.as_ref();
                unsupported_if(
                    chc.is_some_and(|c| c.hash_balance_factor.is_some()),
                    &format!("{field}.consistent_hashing_lb_config.hash_balance_factor"),
                )?;
                (
                    LbPolicy::Maglev {
                        table_size,
                        use_hostname: chc.is_some_and(|c| c.use_hostname_for_hashing),
                    },
                    m.locality_weighted_lb_config.is_some(),
                )
            }
            "envoy.extensions.load_balancing_policies.cluster_provided.v3.ClusterProvided" => {
                (LbPolicy::ClusterProvided, false)
            }
            _ => return Ok(None),
        }
        .into(),
    ))
}

fn circuit_breakers(c: &cpb::Cluster) -> Result<CircuitBreakerThresholds> {
    let mut out = CircuitBreakerThresholds::default();
    let Some(cb) = &c.circuit_breakers else {
        return Ok(out);
    };
    unsupported_if(
        !cb.per_host_thresholds.is_empty(),
        "circuit_breakers.per_host_thresholds",
    )?;
    for (i, t) in cb.thresholds.iter().enumerate() {
        let field = format!("circuit_breakers.thresholds[{i}]");
        unsupported_if(
            t.max_connection_pools.is_some(),
            &format!("{field}.max_connection_pools"),
        )?;
        let d = Thresholds::default();
        let th = Thresholds {
            max_connections: t
                .max_connections
                .map(|v| v.value)
                .unwrap_or(d.max_connections),
            max_pending_requests: t
                .max_pending_requests
                .map(|v| v.value)
                .unwrap_or(d.max_pending_requests),
            max_requests: t.max_requests.map(|v| v.value).unwrap_or(d.max_requests),
            max_retries: t.max_retries.map(|v| v.value).unwrap_or(d.max_retries),
            retry_budget: t
                .retry_budget
                .as_ref()
                .map(|b| retry_budget(b, &format!("{field}.retry_budget")))
                .transpose()?,
        };
        match RoutingPriority::try_from(t.priority) {
            Ok(RoutingPriority::Default) => out.default = th,
            Ok(RoutingPriority::High) => out.high = th,
            Err(_) => {
                return Err(ConfigError::field(
                    format!("{field}.priority"),
                    "unknown priority",
                ));
            }
        }
    }
    Ok(out)
}

fn retry_budget(
    b: &cpb::circuit_breakers::thresholds::RetryBudget,
    field: &str,
) -> Result<RetryBudget> {
    let budget_percent = b.budget_percent.as_ref().map_or(20.0, |p| p.value);
    if !(0.0..=100.0).contains(&budget_percent) {
        return Err(ConfigError::field(
            format!("{field}.budget_percent"),
            "must be within 0..=100",
        ));
    }
    unsupported_if(
        b.budget_interval
            .as_ref()
            .is_some_and(|d| d.seconds != 0 || d.nanos != 0),
        &format!("{field}.budget_interval"),
    )?;
    Ok(RetryBudget {
        budget_percent,
        min_retry_concurrency: b.min_retry_concurrency.map_or(3, |v| v.value),
    })
}

fn upstream_http(any: &Any) -> Result<UpstreamHttpOptions> {
    let o: HttpProtocolOptions = decode_any(any, "")?;
    unsupported_if(
        o.upstream_http_protocol_options.is_some(),
        "upstream_http_protocol_options",
    )?;
    unsupported_if(!o.http_filters.is_empty(), "http_filters")?;
    unsupported_if(
        o.header_validation_config.is_some(),
        "header_validation_config",
    )?;
    unsupported_if(o.outlier_detection.is_some(), "outlier_detection")?;
    unsupported_if(
        !o.request_mirror_policies.is_empty(),
        "request_mirror_policies",
    )?;
    unsupported_if(!o.hash_policy.is_empty(), "hash_policy")?;
    unsupported_if(o.retry_policy.is_some(), "retry_policy")?;
    let mut out = UpstreamHttpOptions::default();
    if let Some(common) = &o.common_http_protocol_options {
        common_options(&mut out, common, "common_http_protocol_options")?;
    }
    use http_protocol_options::{
        UpstreamProtocolOptions as U, explicit_http_config::ProtocolConfig as P,
    };
    match &o.upstream_protocol_options {
        None => {}
        Some(U::ExplicitHttpConfig(e)) => match &e.protocol_config {
            Some(P::HttpProtocolOptions(_)) | None => out.protocol = UpstreamProtocol::Http1,
            Some(P::Http2ProtocolOptions(h2)) => {
                out.protocol = UpstreamProtocol::Http2;
                h2_options(&mut out, h2, "explicit_http_config.http2_protocol_options")?;
            }
            Some(P::Http3ProtocolOptions(_)) => {
                return Err(ConfigError::unsupported(
                    "explicit_http_config.http3_protocol_options",
                ));
            }
        },
        Some(U::UseDownstreamProtocolConfig(d)) => {
            out.protocol = UpstreamProtocol::UseDownstream;
            unsupported_if(
                d.http3_protocol_options.is_some(),
                "use_downstream_protocol_config.http3_protocol_options",
            )?;
            if let Some(h2) = &d.http2_protocol_options {
                h2_options(
                    &mut out,
                    h2,
                    "use_downstream_protocol_config.http2_protocol_options",
                )?;
            }
        }
        Some(U::AutoConfig(_)) => {
            return Err(ConfigError::field(
                "auto_config",
                "ALPN-based upstream protocol selection needs upstream TLS, not supported yet",
            ));
        }
    }
    Ok(out)
}

fn common_options(
    out: &mut UpstreamHttpOptions,
    common: &envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions,
    field: &str,
) -> Result<()> {
    out.idle_timeout = opt_duration(&common.idle_timeout, &format!("{field}.idle_timeout"))?;
    out.max_connection_duration = opt_duration(
        &common.max_connection_duration,
        &format!("{field}.max_connection_duration"),
    )?;
    out.max_requests_per_connection = common.max_requests_per_connection.map(|v| v.value);
    out.max_headers_count = common.max_headers_count.map(|v| v.value);
    unsupported_if(
        common.max_stream_duration.is_some(),
        &format!("{field}.max_stream_duration"),
    )?;
    unsupported_if(
        common.max_response_headers_kb.is_some(),
        &format!("{field}.max_response_headers_kb"),
    )?;
    // Upstream responses: Envoy applies headers_with_underscores_action to requests only
    // (downstream codecs); on the upstream side it is descriptive.
    Ok(())
}

fn h2_options(
    out: &mut UpstreamHttpOptions,
    h2: &envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions,
    field: &str,
) -> Result<()> {
    unsupported_if(h2.allow_connect, &format!("{field}.allow_connect"))?;
    unsupported_if(h2.allow_metadata, &format!("{field}.allow_metadata"))?;
    out.max_concurrent_streams = h2.max_concurrent_streams.map(|v| v.value);
    out.initial_stream_window_size = h2.initial_stream_window_size.map(|v| v.value);
    out.initial_connection_window_size = h2.initial_connection_window_size.map(|v| v.value);
    Ok(())
}

#[cfg(test)]
mod tests;
