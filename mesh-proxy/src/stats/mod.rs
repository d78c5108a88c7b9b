//! The metrics registry (prometheus-client) and the proxy's own counter families.
//!
//! Names follow Envoy's stats under the `envoy_` prefix with Envoy's label names
//! (`envoy_cluster_name`, `envoy_listener_address`), so dashboards built on Envoy's
//! Prometheus output keep working. One difference: OpenMetrics requires counters to end
//! in `_total`, so a counter Envoy calls `upstream_cx_connect_fail` is exported as
//! `envoy_cluster_upstream_cx_connect_fail_total` (those already ending in `_total`, such
//! as `upstream_cx_total` and `upstream_rq_total`, keep Envoy's exact name).
//!
//! Hot-path code holds per-object handles ([`ClusterStats`], [`ListenerStats`]) taken
//! from the families once, so recording is a relaxed atomic add with no lookup.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet, text::encode},
    metrics::{MetricType, counter::Counter, gauge::Gauge},
    registry::{Metric, Registry},
};

/// Label set of the per-cluster families.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct ClusterLabels {
    pub envoy_cluster_name: String,
}

/// Label set of the per-listener families.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct ListenerLabels {
    pub envoy_listener_address: String,
}

/// Label set of the tcp_proxy families (Envoy's `tcp.<stat_prefix>.*`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct TcpLabels {
    pub envoy_tcp_prefix: String,
}

/// Label set of the xDS families.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct XdsLabels {
    pub type_url: String,
}

/// Envoy's dotted stat name for a field: `outlier_detection_ejections_active` is
/// `outlier_detection.ejections_active` in `/stats` (Prometheus joins with `_` anyway).
fn envoy_stat_name(field: &'static str) -> &'static str {
    match field.strip_prefix("outlier_detection_") {
        Some(rest) => OUTLIER_NAMES
            .iter()
            .find(|(short, _)| *short == rest)
            .map_or(field, |(_, dotted)| dotted),
        None => field,
    }
}

/// The dotted names of the outlier-detection stats (static, so `/stats` allocates none).
const OUTLIER_NAMES: &[(&str, &str)] = &[
    ("ejections_active", "outlier_detection.ejections_active"),
    ("ejections_overflow", "outlier_detection.ejections_overflow"),
    (
        "ejections_enforced_total",
        "outlier_detection.ejections_enforced_total",
    ),
    (
        "ejections_enforced_consecutive_5xx",
        "outlier_detection.ejections_enforced_consecutive_5xx",
    ),
    (
        "ejections_detected_consecutive_5xx",
        "outlier_detection.ejections_detected_consecutive_5xx",
    ),
    (
        "ejections_enforced_consecutive_gateway_failure",
        "outlier_detection.ejections_enforced_consecutive_gateway_failure",
    ),
    (
        "ejections_detected_consecutive_gateway_failure",
        "outlier_detection.ejections_detected_consecutive_gateway_failure",
    ),
    (
        "ejections_enforced_consecutive_local_origin_failure",
        "outlier_detection.ejections_enforced_consecutive_local_origin_failure",
    ),
    (
        "ejections_detected_consecutive_local_origin_failure",
        "outlier_detection.ejections_detected_consecutive_local_origin_failure",
    ),
    (
        "ejections_enforced_success_rate",
        "outlier_detection.ejections_enforced_success_rate",
    ),
    (
        "ejections_detected_success_rate",
        "outlier_detection.ejections_detected_success_rate",
    ),
    (
        "ejections_enforced_local_origin_success_rate",
        "outlier_detection.ejections_enforced_local_origin_success_rate",
    ),
    (
        "ejections_detected_local_origin_success_rate",
        "outlier_detection.ejections_detected_local_origin_success_rate",
    ),
    (
        "ejections_enforced_failure_percentage",
        "outlier_detection.ejections_enforced_failure_percentage",
    ),
    (
        "ejections_detected_failure_percentage",
        "outlier_detection.ejections_detected_failure_percentage",
    ),
    (
        "ejections_enforced_local_origin_failure_percentage",
        "outlier_detection.ejections_enforced_local_origin_failure_percentage",
    ),
    (
        "ejections_detected_local_origin_failure_percentage",
        "outlier_detection.ejections_detected_local_origin_failure_percentage",
    ),
];

/// All the proxy's metrics. One per process, shared through [`crate::Runtime`].
#[derive(Debug)]
pub struct Stats {
    registry: Mutex<Registry>,
    started: Instant,
    pub cluster: ClusterFamilies,
    pub listener: ListenerFamilies,
    pub tcp: TcpFamilies,
    pub xds: XdsFamilies,
    pub server: ServerStats,
}

macro_rules! families {
    (
        $(#[$meta:meta])* $families:ident / $handles:ident / $values:ident ($labels:ident, $prefix:literal) {
            $( $field:ident : $kind:ident = $name:literal, $help:literal; )*
        }
    ) => {
        $(#[$meta])*
        ///
        /// One block of atomics per labelled object, encoded on scrape by a collector: an
        /// object costs its block and one copy of its labels, not a map entry, a label copy
        /// and an allocation per stat (about 8 KiB per cluster with prometheus-client's
        /// `Family`, which made 1,000 clusters cost 8 MiB of a sidecar's memory).
        #[derive(Debug, Clone, Default)]
        pub struct $families {
            objects: Arc<RwLock<BTreeMap<$labels, $handles>>>,
        }

        /// One object's stats.
        #[derive(Debug, Default)]
        pub struct $values {
            $( pub $field: families!(@metric $kind), )*
        }

        /// Handle to one object's stats, shared with the families (recording is a relaxed
        /// add). A default handle records into a block nobody exports.
        #[derive(Debug, Clone, Default)]
        pub struct $handles(Arc<$values>);

        impl std::ops::Deref for $handles {
            type Target = $values;
            fn deref(&self) -> &$values {
                &self.0
            }
        }

        impl $families {
            fn register(&self, registry: &mut Registry) {
                registry.register_collector(Box::new(self.clone()));
            }

            /// The handles for one labelled object.
            pub fn handles(&self, labels: &$labels) -> $handles {
                if let Some(h) = self.objects.read().get(labels) {
                    return h.clone();
                }
                self.objects.write().entry(labels.clone()).or_default().clone()
            }

            /// Forgets an object's series (when the cluster or listener is removed).
            pub fn remove(&self, labels: &$labels) {
                self.objects.write().remove(labels);
            }
        }

        impl Collector for $families {
            fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
                let objects = self.objects.read();
                $(
                    let mut metric = encoder.encode_descriptor(
                        concat!($prefix, $name),
                        $help,
                        None,
                        families!(@type $kind),
                    )?;
                    for (labels, h) in objects.iter() {
                        families!(@encode metric.encode_family(labels)?, h.$field, $kind);
                    }
                )*
                Ok(())
            }
        }

        impl $values {
            /// `(envoy stat name, value)` pairs for the admin `/stats` text format (the
            /// field names are Envoy's stat names).
            pub fn values(&self) -> Vec<(&'static str, i64)> {
                vec![ $( (envoy_stat_name(stringify!($field)), families!(@get self.$field, $kind)), )* ]
            }
        }
    };
    (@metric counter) => { StatCounter };
    (@metric gauge) => { StatGauge };
    (@type counter) => { MetricType::Counter };
    (@type gauge) => { MetricType::Gauge };
    (@encode $enc:expr, $e:expr, counter) => {
        $enc.encode_counter::<NoLabelSet, u64, f64>(&$e.get(), None)?
    };
    (@encode $enc:expr, $e:expr, gauge) => { $enc.encode_gauge(&$e.get())? };
    (@get $e:expr, counter) => { i64::try_from($e.get()).unwrap_or(i64::MAX) };
    (@get $e:expr, gauge) => { $e.get() };
}

/// A counter inside a per-object stats block.
#[derive(Debug, Default)]
pub struct StatCounter(AtomicU64);

impl StatCounter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn inc_by(&self, v: u64) {
        self.0.fetch_add(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge inside a per-object stats block.
#[derive(Debug, Default)]
pub struct StatGauge(AtomicI64);

impl StatGauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn inc_by(&self, v: i64) {
        self.0.fetch_add(v, Ordering::Relaxed);
    }

    pub fn dec_by(&self, v: i64) {
        self.0.fetch_sub(v, Ordering::Relaxed);
    }

    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

families! {
    /// Envoy's `cluster.<name>.*` stats.
    ClusterFamilies / ClusterStats / ClusterValues (ClusterLabels, "cluster_") {
        upstream_cx_total: counter = "upstream_cx", "upstream connections opened";
        upstream_cx_active: gauge = "upstream_cx_active", "upstream connections open now";
        upstream_cx_connect_fail: counter = "upstream_cx_connect_fail", "upstream connect failures";
        upstream_cx_connect_timeout: counter = "upstream_cx_connect_timeout", "upstream connect timeouts";
        upstream_cx_overflow: counter = "upstream_cx_overflow", "connections refused by the max_connections circuit breaker";
        upstream_cx_none_healthy: counter = "upstream_cx_none_healthy", "connections or requests with no healthy host";
        upstream_cx_rx_bytes_total: counter = "upstream_cx_rx_bytes", "bytes received from upstream";
        upstream_cx_tx_bytes_total: counter = "upstream_cx_tx_bytes", "bytes sent to upstream";
        upstream_rq_total: counter = "upstream_rq", "upstream requests";
        upstream_rq_active: gauge = "upstream_rq_active", "upstream requests in flight";
        upstream_rq_pending_active: gauge = "upstream_rq_pending_active", "requests waiting for a connection";
        upstream_rq_pending_overflow: counter = "upstream_rq_pending_overflow", "requests refused by the max_pending_requests circuit breaker";
        upstream_rq_overflow: counter = "upstream_rq_overflow", "requests refused by the max_requests circuit breaker";
        upstream_rq_retry: counter = "upstream_rq_retry", "retries";
        upstream_rq_retry_overflow: counter = "upstream_rq_retry_overflow", "retries refused by the max_retries circuit breaker";
        membership_total: gauge = "membership_total", "hosts in the cluster";
        membership_healthy: gauge = "membership_healthy", "healthy hosts in the cluster (EDS healthy, not ejected)";
        membership_degraded: gauge = "membership_degraded", "degraded hosts in the cluster";
        update_success: counter = "update_success", "endpoint updates applied";
        lb_healthy_panic: counter = "lb_healthy_panic", "hosts picked in panic mode (too few healthy hosts: all used)";
        outlier_detection_ejections_active: gauge = "outlier_detection_ejections_active", "hosts ejected by outlier detection now";
        outlier_detection_ejections_overflow: counter = "outlier_detection_ejections_overflow", "ejections refused by max_ejection_percent";
        outlier_detection_ejections_enforced_total: counter = "outlier_detection_ejections_enforced_total", "ejections enforced, all kinds";
        outlier_detection_ejections_enforced_consecutive_5xx: counter = "outlier_detection_ejections_enforced_consecutive_5xx", "consecutive 5xx ejections enforced";
        outlier_detection_ejections_detected_consecutive_5xx: counter = "outlier_detection_ejections_detected_consecutive_5xx", "consecutive 5xx outliers detected";
        outlier_detection_ejections_enforced_consecutive_gateway_failure: counter = "outlier_detection_ejections_enforced_consecutive_gateway_failure", "consecutive gateway failure ejections enforced";
        outlier_detection_ejections_detected_consecutive_gateway_failure: counter = "outlier_detection_ejections_detected_consecutive_gateway_failure", "consecutive gateway failure outliers detected";
        outlier_detection_ejections_enforced_consecutive_local_origin_failure: counter = "outlier_detection_ejections_enforced_consecutive_local_origin_failure", "consecutive local-origin failure ejections enforced";
        outlier_detection_ejections_detected_consecutive_local_origin_failure: counter = "outlier_detection_ejections_detected_consecutive_local_origin_failure", "consecutive local-origin failure outliers detected";
        outlier_detection_ejections_enforced_success_rate: counter = "outlier_detection_ejections_enforced_success_rate", "success-rate ejections enforced";
        outlier_detection_ejections_detected_success_rate: counter = "outlier_detection_ejections_detected_success_rate", "success-rate outliers detected";
        outlier_detection_ejections_enforced_local_origin_success_rate: counter = "outlier_detection_ejections_enforced_local_origin_success_rate", "local-origin success-rate ejections enforced";
        outlier_detection_ejections_detected_local_origin_success_rate: counter = "outlier_detection_ejections_detected_local_origin_success_rate", "local-origin success-rate outliers detected";
        outlier_detection_ejections_enforced_failure_percentage: counter = "outlier_detection_ejections_enforced_failure_percentage", "failure-percentage ejections enforced";
        outlier_detection_ejections_detected_failure_percentage: counter = "outlier_detection_ejections_detected_failure_percentage", "failure-percentage outliers detected";
        outlier_detection_ejections_enforced_local_origin_failure_percentage: counter = "outlier_detection_ejections_enforced_local_origin_failure_percentage", "local-origin failure-percentage ejections enforced";
        outlier_detection_ejections_detected_local_origin_failure_percentage: counter = "outlier_detection_ejections_detected_local_origin_failure_percentage", "local-origin failure-percentage outliers detected";
    }
}

families! {
    /// Envoy's `listener.<address>.*` stats.
    ListenerFamilies / ListenerStats / ListenerValues (ListenerLabels, "listener_") {
        downstream_cx_total: counter = "downstream_cx", "connections accepted";
        downstream_cx_active: gauge = "downstream_cx_active", "connections open now";
        downstream_cx_destroy: counter = "downstream_cx_destroy", "connections closed";
        no_filter_chain_match: counter = "no_filter_chain_match", "connections that matched no filter chain";
        downstream_listener_filter_error: counter = "downstream_listener_filter_error", "listener filter failures (sniff timeout or read error)";
        downstream_cx_drained: counter = "downstream_cx_drained", "connections force-closed at the end of a drain";
    }
}

families! {
    /// Envoy's `tcp.<stat_prefix>.*` stats.
    TcpFamilies / TcpStats / TcpValues (TcpLabels, "tcp_") {
        downstream_cx_total: counter = "downstream_cx", "connections handled by tcp_proxy";
        downstream_cx_rx_bytes_total: counter = "downstream_cx_rx_bytes", "bytes received from downstream";
        downstream_cx_tx_bytes_total: counter = "downstream_cx_tx_bytes", "bytes sent to downstream";
        idle_timeout: counter = "idle_timeout", "connections closed by the idle timeout";
        max_downstream_connection_duration: counter = "max_downstream_connection_duration", "connections closed by max_downstream_connection_duration";
        upstream_flush_active: gauge = "upstream_flush_active", "connections flushing upstream after downstream closed";
        downstream_cx_no_route: counter = "downstream_cx_no_route", "connections with no cluster";
    }
}

families! {
    /// Per-type xDS update stats (Envoy's `cluster_manager.cds.*`, `listener_manager.lds.*`, ...).
    XdsFamilies / XdsStats / XdsValues (XdsLabels, "xds_") {
        update_attempt: counter = "update_attempt", "responses received";
        update_success: counter = "update_success", "responses applied and ACKed";
        update_rejected: counter = "update_rejected", "responses NACKed";
    }
}

/// Process-wide gauges (`server.*`, `listener_manager.*`, `cluster_manager.*`).
#[derive(Debug, Default)]
pub struct ServerStats {
    pub live: Gauge,
    pub state: Gauge,
    pub uptime: Gauge,
    pub control_plane_connected: Gauge,
    pub total_listeners_active: Gauge,
    pub total_listeners_warming: Gauge,
    pub total_listeners_draining: Gauge,
    /// Filter chains replaced by an in-place listener update whose connections drain.
    pub total_filter_chains_draining: Gauge,
    pub active_clusters: Gauge,
    pub warming_clusters: Gauge,
    pub connections_total: Counter<u64, AtomicU64>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        let mut root = Registry::default();
        let stats = Stats {
            registry: Mutex::new(Registry::default()),
            started: Instant::now(),
            cluster: ClusterFamilies::default(),
            listener: ListenerFamilies::default(),
            tcp: TcpFamilies::default(),
            xds: XdsFamilies::default(),
            server: ServerStats::default(),
        };
        {
            let envoy = root.sub_registry_with_prefix("envoy");
            stats.cluster.register(envoy);
            stats.listener.register(envoy);
            stats.tcp.register(envoy);
            stats.xds.register(envoy);
            let s = &stats.server;
            envoy.register(
                "server_live",
                "1 when the server is live (not draining)",
                s.live.clone(),
            );
            envoy.register(
                "server_state",
                "0 live, 1 draining, 2 pre-initializing",
                s.state.clone(),
            );
            envoy.register("server_uptime", "seconds since start", s.uptime.clone());
            envoy.register(
                "control_plane_connected_state",
                "1 when the xDS stream is up",
                s.control_plane_connected.clone(),
            );
            envoy.register(
                "listener_manager_total_listeners_active",
                "active listeners",
                s.total_listeners_active.clone(),
            );
            envoy.register(
                "listener_manager_total_listeners_warming",
                "listeners waiting for routes",
                s.total_listeners_warming.clone(),
            );
            envoy.register(
                "listener_manager_total_listeners_draining",
                "removed listeners still draining",
                s.total_listeners_draining.clone(),
            );
            envoy.register(
                "listener_manager_total_filter_chains_draining",
                "filter chains of in-place listener updates still draining",
                s.total_filter_chains_draining.clone(),
            );
            envoy.register(
                "cluster_manager_active_clusters",
                "active clusters",
                s.active_clusters.clone(),
            );
            envoy.register(
                "cluster_manager_warming_clusters",
                "clusters waiting for endpoints",
                s.warming_clusters.clone(),
            );
            envoy.register(
                "server_downstream_cx",
                "connections accepted by all listeners",
                s.connections_total.clone(),
            );
        }
        stats.server.state.set(2);
        *stats.registry.lock() = root;
        stats
    }

    /// Registers another module's metric (the http half registers its families here).
    /// `name` is taken as is (no prefix added).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry.lock().register(name, help, metric);
    }

    /// Prometheus/OpenMetrics text exposition of every registered metric.
    pub fn encode_prometheus(&self) -> String {
        self.server
            .uptime
            .set(i64::try_from(self.started.elapsed().as_secs()).unwrap_or(i64::MAX));
        let mut out = String::with_capacity(16 * 1024);
        // Encoding into a String cannot fail.
        let _ = encode(&mut out, &self.registry.lock());
        out
    }

    /// Seconds since the process started.
    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_counters_use_envoy_names() {
        let stats = Stats::new();
        let labels = ClusterLabels {
            envoy_cluster_name: "outbound|80||a.default.svc.cluster.local".into(),
        };
        let c = stats.cluster.handles(&labels);
        c.upstream_cx_total.inc();
        c.upstream_rq_total.inc_by(3);
        let text = stats.encode_prometheus();
        assert!(
            text.contains(r#"envoy_cluster_upstream_cx_total{envoy_cluster_name="outbound|80||a.default.svc.cluster.local"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"envoy_cluster_upstream_rq_total{envoy_cluster_name="outbound|80||a.default.svc.cluster.local"} 3"#));
        // A second handle shares the same series.
        stats.cluster.handles(&labels).upstream_cx_total.inc();
        assert_eq!(c.upstream_cx_total.get(), 2);
        stats.cluster.remove(&labels);
        assert!(!stats.encode_prometheus().contains("a.default.svc"));
    }

    #[test]
    fn values_list_envoy_stat_names() {
        let stats = Stats::new();
        let l = stats.listener.handles(&ListenerLabels {
            envoy_listener_address: "0.0.0.0_15001".into(),
        });
        l.downstream_cx_total.inc();
        let values = l.values();
        assert!(values.contains(&("downstream_cx_total", 1)));
    }
}
