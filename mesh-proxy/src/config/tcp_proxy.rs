//! `envoy.filters.network.tcp_proxy` as a domain type.

use std::{sync::Arc, time::Duration};

use envoy_types::pb::{
    envoy::extensions::filters::network::tcp_proxy::v3::{self as tpb, tcp_proxy},
    google::protobuf::Any,
};

use super::{ConfigError, Result, decode_any, opt_duration};
use crate::accesslog::AccessLogConfig;

pub const TCP_PROXY_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

/// Envoy's default idle timeout for tcp_proxy.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct TcpProxy {
    pub stat_prefix: String,
    pub cluster: ClusterChoice,
    /// `None` disables the idle timeout (Envoy: an explicit 0s).
    pub idle_timeout: Option<Duration>,
    pub max_downstream_connection_duration: Option<Duration>,
    /// Total connect attempts (Envoy's `max_connect_attempts`, default 1).
    pub max_connect_attempts: u32,
    pub access_log: Vec<Arc<AccessLogConfig>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClusterChoice {
    Single(Arc<str>),
    /// Cumulative weights for a binary search; the last value is the total.
    Weighted {
        clusters: Vec<(Arc<str>, u64)>,
        total: u64,
    },
}

impl ClusterChoice {
    /// The cluster for a random value `r` (uniform over u64).
    pub fn pick(&self, r: u64) -> &Arc<str> {
        match self {
            ClusterChoice::Single(c) => c,
            ClusterChoice::Weighted { clusters, total } => {
                let point = r % total;
                let i = clusters.partition_point(|(_, cumulative)| *cumulative <= point);
                &clusters[i.min(clusters.len() - 1)].0
            }
        }
    }

    /// Every cluster name this choice can route to.
    pub fn names(&self) -> Vec<&str> {
        match self {
            ClusterChoice::Single(c) => vec![c],
            ClusterChoice::Weighted { clusters, .. } => {
                clusters.iter().map(|(c, _)| &**c).collect()
            }
        }
    }
}

impl TcpProxy {
    pub fn from_any(any: &Any) -> Result<Self> {
        let p: tpb::TcpProxy = decode_any(any, "typed_config")?;
        TcpProxy::try_from(&p).map_err(|e| e.at("typed_config"))
    }
}

fn unsupported_if(cond: bool, field: &str) -> Result<()> {
    if cond {
        Err(ConfigError::unsupported(field))
    } else {
        Ok(())
    }
}

impl TryFrom<&tpb::TcpProxy> for TcpProxy {
    type Error = ConfigError;

    fn try_from(p: &tpb::TcpProxy) -> Result<Self> {
        if p.stat_prefix.is_empty() {
            return Err(ConfigError::field("stat_prefix", "must not be empty"));
        }
        unsupported_if(p.on_demand.is_some(), "on_demand")?;
        unsupported_if(p.metadata_match.is_some(), "metadata_match")?;
        unsupported_if(
            p.downstream_idle_timeout.is_some(),
            "downstream_idle_timeout",
        )?;
        unsupported_if(p.upstream_idle_timeout.is_some(), "upstream_idle_timeout")?;
        unsupported_if(!p.hash_policy.is_empty(), "hash_policy")?;
        unsupported_if(p.tunneling_config.is_some(), "tunneling_config")?;
        unsupported_if(
            p.max_downstream_connection_duration_jitter_percentage
                .is_some(),
            "max_downstream_connection_duration_jitter_percentage",
        )?;
        #[allow(deprecated)]
        {
            unsupported_if(
                p.access_log_flush_interval.is_some(),
                "access_log_flush_interval",
            )?;
            unsupported_if(
                p.flush_access_log_on_connected,
                "flush_access_log_on_connected",
            )?;
        }
        unsupported_if(p.access_log_options.is_some(), "access_log_options")?;
        unsupported_if(!p.proxy_protocol_tlvs.is_empty(), "proxy_protocol_tlvs")?;
        unsupported_if(p.upstream_connect_mode != 0, "upstream_connect_mode")?;
        unsupported_if(p.max_early_data_bytes.is_some(), "max_early_data_bytes")?;
        // backoff_options only shapes retry pacing between connect attempts: descriptive
        // for us (we retry immediately on another host, as Envoy does for the first retry).
        let cluster = match &p.cluster_specifier {
            Some(tcp_proxy::ClusterSpecifier::Cluster(c)) if !c.is_empty() => {
                ClusterChoice::Single(c.as_str().into())
            }
            Some(tcp_proxy::ClusterSpecifier::Cluster(_)) | None => {
                return Err(ConfigError::field(
                    "cluster",
                    "a cluster or weighted_clusters is required",
                ));
            }
            Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => {
                let mut clusters = Vec::with_capacity(w.clusters.len());
                let mut total = 0u64;
                for (i, c) in w.clusters.iter().enumerate() {
                    unsupported_if(
                        c.metadata_match.is_some(),
                        &format!("weighted_clusters.clusters[{i}].metadata_match"),
                    )?;
                    if c.name.is_empty() {
                        return Err(ConfigError::field(
                            format!("weighted_clusters.clusters[{i}].name"),
                            "must not be empty",
                        ));
                    }
                    if c.weight == 0 {
                        continue;
                    }
                    total += u64::from(c.weight);
                    clusters.push((Arc::from(c.name.as_str()), total));
                }
                if total == 0 {
                    return Err(ConfigError::field(
                        "weighted_clusters",
                        "the total weight must be greater than 0",
                    ));
                }
                ClusterChoice::Weighted { clusters, total }
            }
        };
        let idle_timeout = match opt_duration(&p.idle_timeout, "idle_timeout")? {
            None => Some(DEFAULT_IDLE_TIMEOUT),
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
        };
        let max_downstream_connection_duration = opt_duration(
            &p.max_downstream_connection_duration,
            "max_downstream_connection_duration",
        )?
        .filter(|d| !d.is_zero());
        let max_connect_attempts = match p.max_connect_attempts {
            None => 1,
            Some(v) if v.value >= 1 => v.value,
            Some(_) => {
                return Err(ConfigError::field(
                    "max_connect_attempts",
                    "must be at least 1",
                ));
            }
        };
        let mut access_log = Vec::with_capacity(p.access_log.len());
        for (i, a) in p.access_log.iter().enumerate() {
            access_log.push(Arc::new(
                AccessLogConfig::try_from_proto(a).map_err(|e| e.at(format!("access_log[{i}]")))?,
            ));
        }
        Ok(TcpProxy {
            stat_prefix: p.stat_prefix.clone(),
            cluster,
            idle_timeout,
            max_downstream_connection_duration,
            max_connect_attempts,
            access_log,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tcp(v: serde_json::Value) -> Result<TcpProxy> {
        let pb: tpb::TcpProxy = mesh_api::envoy_json::message_from_json(&v).unwrap();
        TcpProxy::try_from(&pb)
    }

    #[test]
    fn defaults() {
        let t = tcp(json!({"statPrefix": "outbound|9000||echo", "cluster": "outbound|9000||echo"}))
            .unwrap();
        assert_eq!(t.idle_timeout, Some(DEFAULT_IDLE_TIMEOUT));
        assert_eq!(t.max_connect_attempts, 1);
        assert_eq!(t.cluster.pick(7).as_ref(), "outbound|9000||echo");
    }

    #[test]
    fn zero_idle_timeout_disables() {
        let t = tcp(json!({"statPrefix": "s", "cluster": "c", "idleTimeout": "0s"})).unwrap();
        assert_eq!(t.idle_timeout, None);
    }

    #[test]
    fn weighted_clusters_pick_by_weight() {
        let t = tcp(json!({"statPrefix": "s", "weightedClusters": {"clusters": [
            {"name": "a", "weight": 1}, {"name": "zero", "weight": 0}, {"name": "b", "weight": 3}]}}))
        .unwrap();
        let mut counts = std::collections::HashMap::new();
        for r in 0..400u64 {
            *counts.entry(t.cluster.pick(r).to_string()).or_insert(0) += 1;
        }
        assert_eq!(counts["a"], 100);
        assert_eq!(counts["b"], 300);
        assert!(!counts.contains_key("zero"));
    }

    #[test]
    fn unsupported_fields_are_named() {
        let e =
            tcp(json!({"statPrefix": "s", "cluster": "c", "tunnelingConfig": {"hostname": "h"}}))
                .unwrap_err();
        assert_eq!(e.field, "tunneling_config");
        let e = tcp(json!({"statPrefix": "s"})).unwrap_err();
        assert_eq!(e.field, "cluster");
    }
}
