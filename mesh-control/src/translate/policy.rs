//! DestinationRule traffic policy to Envoy cluster settings, as Istio's
//! `cluster_traffic_policy.go`: load balancer (slow start, consistent hashing, locality
//! settings), connection pool (circuit breakers, HTTP protocol options, TCP keepalive),
//! outlier detection and client TLS, with Istio's precedence (port-level settings over the
//! rule's, a subset's over both).

use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection as EnvoyOutlier, UpstreamConnectionOptions,
    circuit_breakers::Thresholds,
    cluster::{self, CommonLbConfig, DiscoveryType, LbPolicy, RingHashLbConfig},
};
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, Http2ProtocolOptions, HttpProtocolOptions as CommonHttpOptions, RuntimeDouble,
    TcpKeepalive, TransportSocket, data_source, transport_socket,
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
use mesh_api::mesh_config::MeshConfig;
use mesh_api::naming::Protocol;
use mesh_api::networking::{
    ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, ConsistentHashLb, H2UpgradePolicy,
    LoadBalancerSettings, OutlierDetection, SimpleLb, TcpKeepalive as IstioKeepalive,
    TrafficPolicy,
};

use super::locality::{self, LocalityCtx};
use super::util::{any, istio_duration, ordered_map, u32v};

/// The extension name of upstream HTTP protocol options.
pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// The pieces of a traffic policy that apply to one cluster (one port, maybe one subset).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Effective<'a> {
    pub lb: Option<&'a LoadBalancerSettings>,
    pub pool: Option<&'a ConnectionPoolSettings>,
    pub outlier: Option<&'a OutlierDetection>,
    pub tls: Option<&'a ClientTlsSettings>,
}

/// What applying a policy needs besides the policy: the mesh config and, for locality load
/// balancing, the proxy.
pub struct ApplyEnv<'a> {
    pub mesh: &'a MeshConfig,
    pub proxy_locality: &'a str,
    pub proxy_labels: &'a std::collections::BTreeMap<String, String>,
}

/// The load balancer settings and whether outlier detection is on, for one cluster (Istio's
/// `getOutlierDetectionAndLoadBalancerSettings`).
pub fn lb_and_outlier<'a>(
    top: Option<&'a TrafficPolicy>,
    subset: Option<&'a TrafficPolicy>,
    port: u16,
) -> (Option<&'a LoadBalancerSettings>, bool) {
    let e = Effective::resolve(top, subset, port);
    (e.lb, e.outlier.is_some())
}

impl<'a> Effective<'a> {
    /// The rule-level policy for `port` (port-level settings override the top level,
    /// section by section), then the subset's policy the same way on top.
    pub fn resolve(
        top: Option<&'a TrafficPolicy>,
        subset: Option<&'a TrafficPolicy>,
        port: u16,
    ) -> Effective<'a> {
        let mut out = Effective::default();
        for policy in [top, subset].into_iter().flatten() {
            out.overlay(policy, port);
        }
        out
    }

    fn overlay(&mut self, policy: &'a TrafficPolicy, port: u16) {
        self.lb = policy.load_balancer.as_ref().or(self.lb);
        self.pool = policy.connection_pool.as_ref().or(self.pool);
        self.outlier = policy.outlier_detection.as_ref().or(self.outlier);
        self.tls = policy.tls.as_ref().or(self.tls);
        let port_level = policy
            .port_level_settings
            .iter()
            .find(|p| p.port.as_ref().is_some_and(|s| s.number == u32::from(port)));
        if let Some(p) = port_level {
            self.lb = p.load_balancer.as_ref().or(self.lb);
            self.pool = p.connection_pool.as_ref().or(self.pool);
            self.outlier = p.outlier_detection.as_ref().or(self.outlier);
            self.tls = p.tls.as_ref().or(self.tls);
        }
    }

    /// Applies the policy to `c`, an outbound cluster for a port speaking `protocol`, in
    /// Istio's order: connection pool, HTTP/2 upgrade, outlier detection, load balancer
    /// (with locality settings), client TLS.
    pub fn apply(&self, c: &mut Cluster, protocol: Protocol, env: &ApplyEnv<'_>, sni_host: &str) {
        self.apply_pool(c, protocol, Some(env.mesh));
        if let Some(o) = self.outlier {
            apply_outlier(c, o);
        }
        let locality = locality::setting(
            env.mesh,
            self.lb.and_then(|l| l.locality_lb_setting.as_ref()),
        )
        .map(|setting| LocalityCtx {
            proxy_locality: env.proxy_locality,
            proxy_labels: env.proxy_labels,
            setting,
            enable_failover: c.outlier_detection.is_some(),
        });
        apply_lb(c, self.lb, locality.as_ref());
        if let Some(tls) = self.tls {
            apply_tls(c, tls, sni_host);
        }
    }

    /// Connection pool settings, TCP keepalive and the upstream HTTP protocol. `mesh` is
    /// `None` for inbound clusters (no mesh-wide keepalive or HTTP/2 upgrade there).
    pub fn apply_pool(&self, c: &mut Cluster, protocol: Protocol, mesh: Option<&MeshConfig>) {
        let mut common = CommonHttpOptions::default();
        let mut thresholds = default_thresholds();
        // Istio's `shouldH2Upgrade`: the rule's policy, else the mesh's for HTTP ports.
        let mut upgrade = mesh.and_then(|m| m.h2_upgrade_policy) == Some(H2UpgradePolicy::Upgrade)
            && protocol.is_http()
            && !protocol.is_http2();
        let mut use_client_protocol = false;
        let mut max_concurrent_streams = None;
        if let Some(http) = self.pool.and_then(|p| p.http.as_ref()) {
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
            max_concurrent_streams = positive(http.max_concurrent_streams);
            // An explicit policy wins over the mesh's, and UPGRADE says the port is HTTP.
            match http.h2_upgrade_policy {
                Some(H2UpgradePolicy::Upgrade) => upgrade = true,
                Some(H2UpgradePolicy::DoNotUpgrade) => upgrade = false,
                _ => {}
            }
            use_client_protocol = http.use_client_protocol == Some(true);
        }
        let tcp = self.pool.and_then(|p| p.tcp.as_ref());
        if let Some(tcp) = tcp {
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
        }
        apply_keepalive(c, mesh, tcp.and_then(|t| t.tcp_keepalive.as_ref()));
        c.circuit_breakers = Some(CircuitBreakers {
            thresholds: vec![thresholds],
            ..Default::default()
        });

        // Upstream HTTP protocol: HTTP/2 for h2/gRPC ports (or when upgrading), the
        // client's protocol for undeclared ports (or when asked to), HTTP/1.1 otherwise.
        let h2 = |streams: Option<u32>| Http2ProtocolOptions {
            max_concurrent_streams: streams.map(u32v),
            ..Default::default()
        };
        let upstream = if upgrade {
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(h2(
                        max_concurrent_streams,
                    ))),
                },
            ))
        } else if use_client_protocol || protocol == Protocol::Unsupported {
            Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(
                UseDownstreamHttpConfig {
                    http_protocol_options: Some(Default::default()),
                    http2_protocol_options: Some(h2(None)),
                    ..Default::default()
                },
            ))
        } else if protocol.is_http2() {
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(h2(
                        max_concurrent_streams,
                    ))),
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
            c.typed_extension_protocol_options =
                ordered_map(vec![(HTTP_PROTOCOL_OPTIONS.to_string(), any(&opts))]);
        }
    }
}

/// TCP keepalive: the mesh-wide setting, then the DestinationRule's fields over it (Istio's
/// `applyTCPKeepalive`). Any setting turns SO_KEEPALIVE on with the OS defaults for the
/// fields it leaves out.
fn apply_keepalive(c: &mut Cluster, mesh: Option<&MeshConfig>, rule: Option<&IstioKeepalive>) {
    let mesh_keepalive: Option<IstioKeepalive> = mesh
        .and_then(|m| m.tcp_keepalive.clone())
        .and_then(|v| serde_json::from_value(v).ok());
    for k in [mesh_keepalive.as_ref(), rule].into_iter().flatten() {
        let opts = c
            .upstream_connection_options
            .get_or_insert_with(UpstreamConnectionOptions::default);
        let ka = opts.tcp_keepalive.get_or_insert_with(TcpKeepalive::default);
        if let Some(p) = k.probes.filter(|p| *p > 0) {
            ka.keepalive_probes = Some(u32v(p));
        }
        if let Some(d) = istio_duration(&k.time) {
            ka.keepalive_time = Some(u32v(u32::try_from(d.seconds).unwrap_or(u32::MAX)));
        }
        if let Some(d) = istio_duration(&k.interval) {
            ka.keepalive_interval = Some(u32v(u32::try_from(d.seconds).unwrap_or(u32::MAX)));
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

/// Istio's `applyLoadBalancer`: locality settings first, then the policy (LEAST_REQUEST by
/// default; slow start for LEAST_REQUEST and ROUND_ROBIN), then consistent hashing over it.
fn apply_lb(
    c: &mut Cluster,
    lb: Option<&LoadBalancerSettings>,
    locality: Option<&LocalityCtx<'_>>,
) {
    if let Some(l) = locality {
        if l.weighted_cluster() {
            c.common_lb_config
                .get_or_insert_with(CommonLbConfig::default)
                .locality_config_specifier = Some(
                cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                    Default::default(),
                ),
            );
        }
        if let Some(cla) = c.load_assignment.as_mut() {
            l.apply(cla, None);
        }
    }
    let original_dst = c.cluster_discovery_type
        == Some(cluster::ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32,
        ));
    if original_dst {
        // The only policy Envoy allows there.
        c.lb_policy = LbPolicy::ClusterProvided as i32;
        return;
    }
    let slow_start = lb.and_then(slow_start_config);
    match lb.and_then(|l| l.simple).unwrap_or_default() {
        SimpleLb::Unspecified | SimpleLb::LeastConn | SimpleLb::LeastRequest => {
            c.lb_policy = LbPolicy::LeastRequest as i32;
            c.lb_config = slow_start.map(|s| {
                cluster::LbConfig::LeastRequestLbConfig(cluster::LeastRequestLbConfig {
                    slow_start_config: Some(s),
                    ..Default::default()
                })
            });
        }
        SimpleLb::RoundRobin => {
            c.lb_policy = LbPolicy::RoundRobin as i32;
            c.lb_config = slow_start.map(|s| {
                cluster::LbConfig::RoundRobinLbConfig(cluster::RoundRobinLbConfig {
                    slow_start_config: Some(s),
                })
            });
        }
        SimpleLb::Random => c.lb_policy = LbPolicy::Random as i32,
        SimpleLb::Passthrough => {
            c.lb_policy = LbPolicy::ClusterProvided as i32;
            c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
                DiscoveryType::OriginalDst as i32,
            ));
            c.eds_cluster_config = None;
            c.load_assignment = None;
            return;
        }
    }
    if let Some(hash) = lb.and_then(|l| l.consistent_hash.as_ref()) {
        apply_consistent_hash(c, hash);
    }
}

/// Istio's `ApplyRingHashLoadBalancer`: MAGLEV (table size when given), RING_HASH with
/// `ringHash` (minimum ring size when given), else RING_HASH with the deprecated
/// `minimumRingSize` or Envoy's 1024.
fn apply_consistent_hash(c: &mut Cluster, hash: &ConsistentHashLb) {
    use envoy_types::pb::google::protobuf::UInt64Value;
    if let Some(m) = &hash.maglev {
        c.lb_policy = LbPolicy::Maglev as i32;
        c.lb_config = m.table_size.filter(|t| *t != 0).map(|t| {
            cluster::LbConfig::MaglevLbConfig(cluster::MaglevLbConfig {
                table_size: Some(UInt64Value { value: t }),
            })
        });
    } else if let Some(r) = &hash.ring_hash {
        c.lb_policy = LbPolicy::RingHash as i32;
        c.lb_config = r.minimum_ring_size.filter(|m| *m != 0).map(|m| {
            cluster::LbConfig::RingHashLbConfig(RingHashLbConfig {
                minimum_ring_size: Some(UInt64Value { value: m }),
                ..Default::default()
            })
        });
    } else {
        c.lb_policy = LbPolicy::RingHash as i32;
        let min = hash.minimum_ring_size.filter(|m| *m != 0).unwrap_or(1024);
        c.lb_config = Some(cluster::LbConfig::RingHashLbConfig(RingHashLbConfig {
            minimum_ring_size: Some(UInt64Value { value: min }),
            ..Default::default()
        }));
    }
}

/// Slow start from `warmup` (window, aggression, minimum weight) or the older
/// `warmupDurationSecs` (window only).
fn slow_start_config(lb: &LoadBalancerSettings) -> Option<cluster::SlowStartConfig> {
    if let Some(w) = &lb.warmup {
        return Some(cluster::SlowStartConfig {
            slow_start_window: w.duration.get().map(super::util::duration),
            aggression: w.aggression.map(|a| RuntimeDouble {
                default_value: a,
                runtime_key: String::new(),
            }),
            min_weight_percent: w.minimum_percent.map(|p| Percent { value: p }),
        });
    }
    istio_duration(&lb.warmup_duration_secs).map(|d| cluster::SlowStartConfig {
        slow_start_window: Some(d),
        ..Default::default()
    })
}

/// Istio's outlier detection: success-rate ejection off, 5xx and gateway-error ejection
/// enforced at 100% when configured, the panic threshold set from `minHealthPercent`.
fn apply_outlier(c: &mut Cluster, o: &OutlierDetection) {
    let mut out = EnvoyOutlier {
        enforcing_success_rate: Some(u32v(0)),
        ..Default::default()
    };
    if let Some(v) = o.consecutive_5xx_errors {
        out.consecutive_5xx = Some(u32v(v));
        out.enforcing_consecutive_5xx = Some(u32v(if v > 0 { 100 } else { 0 }));
    }
    // The deprecated `consecutiveErrors` counted gateway errors (502, 503, 504) only, as
    // Istio translated it before it was replaced; the explicit fields win.
    let legacy = o
        .consecutive_errors
        .filter(|e| *e > 0)
        .map(|e| e.unsigned_abs());
    if let Some(v) = o.consecutive_gateway_errors.or(legacy) {
        out.consecutive_gateway_failure = Some(u32v(v));
        out.enforcing_consecutive_gateway_failure = Some(u32v(if v > 0 { 100 } else { 0 }));
    }
    if legacy.is_some() && o.consecutive_5xx_errors.is_none() {
        out.enforcing_consecutive_5xx = Some(u32v(0));
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
