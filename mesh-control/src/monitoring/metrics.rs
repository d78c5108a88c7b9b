//! The control plane's metrics, under Istio's names and labels so that existing dashboards
//! and alerts (Istio's "Control Plane" Grafana board) work unchanged.
//!
//! Istio exposes its counters without the `_total` suffix (`pilot_xds_pushes`), in
//! Prometheus' text format. prometheus-client always appends `_total` to a `Counter` in its
//! OpenMetrics output, so counters here are [`IstioCounter`]s (a counter that encodes under
//! its own name) and `/metrics` is served as Prometheus text format 0.0.4, where counters
//! need no suffix.

use std::fmt;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::xds::XdsType;

/// Istio's convergence buckets (seconds).
pub const CONVERGENCE_BUCKETS: [f64; 8] = [0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0];
/// Istio's push-time buckets (seconds).
pub const PUSH_TIME_BUCKETS: [f64; 8] = [0.01, 0.1, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0];

/// A monotonic counter encoded under its own name (no `_total`), as Istio's are.
#[derive(Debug, Clone, Default)]
pub struct IstioCounter(Counter);

impl IstioCounter {
    pub fn inc(&self) -> u64 {
        self.0.inc()
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

impl TypedMetric for IstioCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for IstioCounter {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), fmt::Error> {
        encoder.encode_gauge(&self.0.get())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// The `type` label: an xDS type (`cds`, `eds`, ...) or a push trigger (`endpoint`, `config`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: &'static str,
}

impl TypeLabel {
    pub fn xds(ty: XdsType) -> TypeLabel {
        TypeLabel { r#type: ty.short() }
    }
}

fn push_time_histogram() -> Histogram {
    Histogram::new(PUSH_TIME_BUCKETS)
}

/// Every control-plane metric.
#[derive(Debug)]
pub struct Metrics {
    /// `pilot_xds`: connected xDS clients.
    pub connected: Gauge,
    /// `pilot_xds_pushes{type}`: responses sent, by type.
    pub pushes: Family<TypeLabel, IstioCounter>,
    /// `pilot_total_xds_rejects{type}`: NACKs received, by type.
    pub rejects: Family<TypeLabel, IstioCounter>,
    /// `pilot_xds_expired_nonce{type}`: requests answering a superseded response.
    pub expired_nonce: Family<TypeLabel, IstioCounter>,
    /// `pilot_proxy_convergence_time`: from the first change of a push to the push being
    /// sent to a proxy.
    pub convergence: Histogram,
    /// `pilot_xds_push_time{type}`: from the start of a proxy's generation to its response
    /// being written, by type.
    pub push_time: Family<TypeLabel, Histogram, fn() -> Histogram>,
    /// `pilot_push_triggers{type}`: config changes seen, by kind (`endpoint`, `config`).
    pub push_triggers: Family<TypeLabel, IstioCounter>,
    /// `pilot_debounce_time`: how long a debounced push waited from its first change.
    pub debounce_time: Histogram,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            connected: Gauge::default(),
            pushes: Family::default(),
            rejects: Family::default(),
            expired_nonce: Family::default(),
            convergence: Histogram::new(CONVERGENCE_BUCKETS),
            push_time: Family::new_with_constructor(push_time_histogram),
            push_triggers: Family::default(),
            debounce_time: Histogram::new(CONVERGENCE_BUCKETS),
        };
        registry.register(
            "pilot_xds",
            "Number of endpoints connected to this pilot using XDS",
            m.connected.clone(),
        );
        registry.register(
            "pilot_xds_pushes",
            "Pilot build and send errors for lds, rds, cds and eds",
            m.pushes.clone(),
        );
        registry.register(
            "pilot_total_xds_rejects",
            "Total number of XDS responses from pilot rejected by proxy",
            m.rejects.clone(),
        );
        registry.register(
            "pilot_xds_expired_nonce",
            "Total number of XDS requests with an expired nonce",
            m.expired_nonce.clone(),
        );
        registry.register("pilot_proxy_convergence_time", "Delay in seconds between config change and a proxy receiving all required configuration", m.convergence.clone());
        registry.register(
            "pilot_xds_push_time",
            "Total time in seconds Pilot takes to push lds, rds, cds and eds",
            m.push_time.clone(),
        );
        registry.register(
            "pilot_push_triggers",
            "Total number of times a push was triggered, labeled by reason for the push",
            m.push_triggers.clone(),
        );
        registry.register("pilot_debounce_time", "Delay in seconds between the first config enters debouncing and the merged push request is pushed into the push queue", m.debounce_time.clone());
        m
    }

    /// Metrics in a throwaway registry (tests, benches).
    pub fn unregistered() -> Metrics {
        Metrics::new(&mut Registry::default())
    }
}

/// Encodes `registry` as Prometheus text format 0.0.4 (what Istio serves).
pub fn encode_text(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    // The OpenMetrics terminator is not part of the Prometheus text format.
    if let Some(stripped) = out.strip_suffix("# EOF\n") {
        out.truncate(stripped.len());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_have_istio_names() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        m.pushes
            .get_or_create(&TypeLabel::xds(XdsType::Cluster))
            .inc();
        m.rejects
            .get_or_create(&TypeLabel::xds(XdsType::Listener))
            .inc();
        m.connected.set(3);
        m.convergence.observe(0.2);
        let text = encode_text(&registry).unwrap();
        assert!(text.contains("# TYPE pilot_xds_pushes counter\n"), "{text}");
        assert!(
            text.contains("pilot_xds_pushes{type=\"cds\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("pilot_total_xds_rejects{type=\"lds\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("pilot_xds 3\n"), "{text}");
        assert!(
            text.contains("pilot_proxy_convergence_time_bucket{le=\"0.5\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("pilot_proxy_convergence_time_bucket{le=\"30.0\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("_total{"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
    }
}
