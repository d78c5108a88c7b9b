//! DestinationRule traffic policy to Envoy cluster settings: load balancer, connection
//! pool (circuit breakers and HTTP protocol options), outlier detection and client TLS,
//! with Istio's precedence (port-level settings over the rule's, a subset's over both).

use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection as EnvoyOutlier, UpstreamConnectionOptions,
    circuit_breakers::Thresholds,
    cluster::{self, CommonLbConfig, DiscoveryType, LbPolicy, RingHashLbConfig},
};
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, Http2ProtocolOptions, HttpProtocolOptions as CommonHttpOptions, TcpKeepalive,
    TransportSocket, data_source, transport_socket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, TlsCertificate, UpstreamTlsContext,
    common_tls_context::ValidationContextType,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions, UseDownstreamHttpConfig,
    explicit_http_config::ProtocolConfig,
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use mesh_api::naming::Protocol;
use mesh_api::networking::{
    ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, H2UpgradePolicy,
    LoadBalancerSettings, OutlierDetection, SimpleLb, TrafficPolicy,
};

use super::util::{any, istio_duration, u32v};

/// The extension name of upstream HTTP protocol options.
pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// The pieces of a traffic policy that apply to one cluster (one port, maybe one subset).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effective {
    pub lb: Option<LoadBalancerSettings>,
    pub pool: Option<ConnectionPoolSettings>,
    pub outlier: Option<OutlierDetection>,
    pub tls: Option<ClientTlsSettings>,
}

impl Effective {
    /// The rule-level policy for `port` (port-level settings override the top level,
    /// section by section), then the subset's policy the same way on top.
    pub fn resolve(
        top: Option<&TrafficPolicy>,
        subset: Option<&TrafficPolicy>,
        port: u16,
    ) -> Effective {
        let mut out = Effective::default();
        for policy in [top, subset].into_iter().flatten() {
            out.overlay(policy, port);
        }
        out
    }

    fn overlay(&mut self, policy: &TrafficPolicy, port: u16) {
        if policy.load_balancer.is_some() {
            self.lb = policy.load_balancer.clone();
        }
        if policy.connection_pool.is_some() {
            self.pool = policy.connection_pool.clone();
        }
        if policy.outlier_detection.is_some() {
            self.outlier = policy.outlier_detection.clone();
        }
        if policy.tls.is_some() {
            self.tls = policy.tls.clone();
        }
        let port_level = policy
            .port_level_settings
            .iter()
            .find(|p| p.port.as_ref().is_some_and(|s| s.number == u32::from(port)));
        if let Some(p) = port_level {
            if p.load_balancer.is_some() {
                self.lb = p.load_balancer.clone();
            }
            if p.connection_pool.is_some() {
                self.pool = p.connection_pool.clone();
            }
            if p.outlier_detection.is_some() {
                self.outlier = p.outlier_detection.clone();
            }
            if p.tls.is_some() {
                self.tls = p.tls.clone();
            }
        }
    }

    /// Applies the policy to `c`, a cluster for a port speaking `protocol`.
    pub fn apply(
        &self,
        c: &mut Cluster,
        protocol: Protocol,
        mesh_h2_upgrade: Option<H2UpgradePolicy>,
        sni_host: &str,
    ) {
        apply_lb(c, self.lb.as_ref());
        let mut common = CommonHttpOptions::default();
        let mut h2 = Http2ProtocolOptions::default();
        let mut thresholds = default_thresholds();
        let mut upgrade = mesh_h2_upgrade == Some(H2UpgradePolicy::Upgrade);
        if let Some(pool) = &self.pool {
            if let Some(http) = &pool.http {
                if let Some(v) = positive(http.http2_max_requests) {
                    thresholds.max_requests = Some(u32v(v));
                }
                if let Some(v) = positive(http.http1_max_pending_requests) {
                    thresholds.max_pending_requests = Some(u32v(v));
                }
                if let Some(v) = positive(http.max_retries) {
                    thresholds.max_retries = Some(u32v(v));
                }
                if let Some(v) = positive(http.max_requests_per_connection) {
                    common.max_requests_per_connection = Some(u32v(v));
                }
                if let Some(d) = istio_duration(&http.idle_timeout) {
                    common.idle_timeout = Some(d);
                }
                if let Some(v) = positive(http.max_concurrent_streams) {
                    h2.max_concurrent_streams = Some(u32v(v));
                }
                match http.h2_upgrade_policy {
                    Some(H2UpgradePolicy::Upgrade) => upgrade = true,
                    Some(H2UpgradePolicy::DoNotUpgrade) => upgrade = false,
                    _ => {}
                }
            }
            if let Some(tcp) = &pool.tcp {
                if let Some(v) = positive(tcp.max_connections) {
                    thresholds.max_connections = Some(u32v(v));
                }
                if let Some(d) = istio_duration(&tcp.connect_timeout) {
                    c.connect_timeout = Some(d);
                }
                if let Some(d) = istio_duration(&tcp.max_connection_duration) {
                    common.max_connection_duration = Some(d);
                }
                if let Some(d) = istio_duration(&tcp.idle_timeout) {
                    // Istio applies the TCP idle timeout to HTTP connections too when unset there.
                    common.idle_timeout.get_or_insert(d);
                }
                if let Some(k) = &tcp.tcp_keepalive {
                    c.upstream_connection_options = Some(UpstreamConnectionOptions {
                        tcp_keepalive: Some(TcpKeepalive {
                            keepalive_probes: k.probes.map(u32v),
                            keepalive_time: istio_duration(&k.time).map(|d| u32v(d.seconds as u32)),
                            keepalive_interval: istio_duration(&k.interval)
                                .map(|d| u32v(d.seconds as u32)),
                        }),
                        ..Default::default()
                    });
                }
            }
        }
        c.circuit_breakers = Some(CircuitBreakers {
            thresholds: vec![thresholds],
            ..Default::default()
        });

        // Upstream HTTP protocol: HTTP/2 for h2/gRPC ports (or when upgrading), the
        // client's protocol for undeclared ports, HTTP/1.1 otherwise.
        let upstream = if protocol.is_http2() || (upgrade && protocol.is_http()) {
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(h2)),
                },
            ))
        } else if protocol == Protocol::Unsupported {
            Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(
                UseDownstreamHttpConfig {
                    http_protocol_options: Some(Default::default()),
                    http2_protocol_options: Some(h2),
                    ..Default::default()
                },
            ))
        } else if protocol.is_http() && common != CommonHttpOptions::default() {
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::HttpProtocolOptions(Default::default())),
                },
            ))
        } else {
            None
        };
        if let Some(upstream) = upstream {
            let opts = HttpProtocolOptions {
                common_http_protocol_options: (common != CommonHttpOptions::default())
                    .then_some(common),
                upstream_protocol_options: Some(upstream),
                ..Default::default()
            };
            c.typed_extension_protocol_options
                .insert(HTTP_PROTOCOL_OPTIONS.to_string(), any(&opts));
        }

        if let Some(o) = &self.outlier {
            apply_outlier(c, o);
        }
        if let Some(tls) = &self.tls {
            apply_tls(c, tls, sni_host);
        }
    }
}

fn positive(v: Option<i32>) -> Option<u32> {
    v.filter(|v| *v > 0).map(|v| v as u32)
}

/// Istio's default thresholds: effectively unlimited, so Envoy's small defaults (1024) never
/// surprise anyone; remaining capacity is tracked for stats.
pub fn default_thresholds() -> Thresholds {
    Thresholds {
        max_connections: Some(u32v(u32::MAX)),
        max_pending_requests: Some(u32v(u32::MAX)),
        max_requests: Some(u32v(u32::MAX)),
        max_retries: Some(u32v(u32::MAX)),
        track_remaining: true,
        ..Default::default()
    }
}

fn apply_lb(c: &mut Cluster, lb: Option<&LoadBalancerSettings>) {
    let original_dst = c.cluster_discovery_type
        == Some(cluster::ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32,
        ));
    if original_dst {
        // The only policy Envoy allows there.
        c.lb_policy = LbPolicy::ClusterProvided as i32;
        return;
    }
    // Istio's default is LEAST_REQUEST.
    c.lb_policy = LbPolicy::LeastRequest as i32;
    let Some(lb) = lb else { return };
    if let Some(hash) = &lb.consistent_hash {
        match &hash.maglev {
            Some(m) => {
                c.lb_policy = LbPolicy::Maglev as i32;
                c.lb_config = Some(cluster::LbConfig::MaglevLbConfig(cluster::MaglevLbConfig {
                    table_size: m
                        .table_size
                        .map(|t| envoy_types::pb::google::protobuf::UInt64Value { value: t }),
                }));
            }
            None => {
                c.lb_policy = LbPolicy::RingHash as i32;
                let min = hash
                    .ring_hash
                    .as_ref()
                    .and_then(|r| r.minimum_ring_size)
                    .or(hash.minimum_ring_size)
                    .unwrap_or(1024);
                c.lb_config = Some(cluster::LbConfig::RingHashLbConfig(RingHashLbConfig {
                    minimum_ring_size: Some(envoy_types::pb::google::protobuf::UInt64Value {
                        value: min,
                    }),
                    ..Default::default()
                }));
            }
        }
        return;
    }
    match lb.simple.unwrap_or_default() {
        SimpleLb::Unspecified | SimpleLb::LeastConn | SimpleLb::LeastRequest => {}
        SimpleLb::RoundRobin => c.lb_policy = LbPolicy::RoundRobin as i32,
        SimpleLb::Random => c.lb_policy = LbPolicy::Random as i32,
        SimpleLb::Passthrough => {
            c.lb_policy = LbPolicy::ClusterProvided as i32;
            c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
                DiscoveryType::OriginalDst as i32,
            ));
            c.eds_cluster_config = None;
            c.load_assignment = None;
        }
    }
}

/// Istio's outlier detection: success-rate ejection off, 5xx and gateway-error ejection
/// enforced at 100% when configured, the panic threshold set from `minHealthPercent`.
fn apply_outlier(c: &mut Cluster, o: &OutlierDetection) {
    let mut out = EnvoyOutlier {
        enforcing_success_rate: Some(u32v(0)),
        ..Default::default()
    };
    let five_xx = o
        .consecutive_5xx_errors
        .or(o.consecutive_errors.filter(|e| *e > 0).map(|e| e as u32));
    if let Some(v) = five_xx {
        out.consecutive_5xx = Some(u32v(v));
        out.enforcing_consecutive_5xx = Some(u32v(if v > 0 { 100 } else { 0 }));
    }
    if let Some(v) = o.consecutive_gateway_errors {
        out.consecutive_gateway_failure = Some(u32v(v));
        out.enforcing_consecutive_gateway_failure = Some(u32v(if v > 0 { 100 } else { 0 }));
    }
    out.interval = istio_duration(&o.interval);
    out.base_ejection_time = istio_duration(&o.base_ejection_time);
    if let Some(p) = o.max_ejection_percent.filter(|p| *p > 0) {
        out.max_ejection_percent = Some(u32v(p as u32));
    }
    if o.split_external_local_origin_errors == Some(true) {
        out.split_external_local_origin_errors = true;
        if let Some(v) = o.consecutive_local_origin_failures.filter(|v| *v > 0) {
            out.consecutive_local_origin_failure = Some(u32v(v));
            out.enforcing_consecutive_local_origin_failure = Some(u32v(100));
        }
        out.enforcing_local_origin_success_rate = Some(u32v(0));
    }
    c.outlier_detection = Some(out);
    let min_health = o.min_health_percent.unwrap_or(0);
    if min_health >= 0 {
        let common = c
            .common_lb_config
            .get_or_insert_with(CommonLbConfig::default);
        common.healthy_panic_threshold = Some(Percent {
            value: f64::from(min_health),
        });
    }
}

fn file(path: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_string())),
        ..Default::default()
    }
}

/// Client TLS from a DestinationRule: SIMPLE and MUTUAL with certificate files. ISTIO_MUTUAL
/// and `credentialName` come with the security work (SDS); they leave the cluster plaintext.
fn apply_tls(c: &mut Cluster, tls: &ClientTlsSettings, sni_host: &str) {
    let mode = tls.mode.unwrap_or_default();
    if !matches!(mode, ClientTlsMode::Simple | ClientTlsMode::Mutual)
        || tls.credential_name.is_some()
    {
        return;
    }
    let mut common = CommonTlsContext::default();
    if let Some(ca) = &tls.ca_certificates
        && tls.insecure_skip_verify != Some(true)
    {
        common.validation_context_type = Some(ValidationContextType::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(file(ca)),
                ..Default::default()
            },
        ));
    }
    if mode == ClientTlsMode::Mutual
        && let (Some(cert), Some(key)) = (&tls.client_certificate, &tls.private_key)
    {
        common.tls_certificates.push(TlsCertificate {
            certificate_chain: Some(file(cert)),
            private_key: Some(file(key)),
            ..Default::default()
        });
    }
    let sni = tls.sni.clone().unwrap_or_else(|| {
        if sni_host.starts_with('*') {
            String::new()
        } else {
            sni_host.to_string()
        }
    });
    let ctx = UpstreamTlsContext {
        common_tls_context: Some(common),
        sni,
        ..Default::default()
    };
    c.transport_socket = Some(TransportSocket {
        name: "envoy.transport_sockets.tls".to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&ctx))),
    });
}
