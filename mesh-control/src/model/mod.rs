//! A connected proxy as the translator sees it.
//!
//! Istio identifies a proxy by its node id (`sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`,
//! `router~...` for gateways) and by node metadata under Istio's keys (`NAMESPACE`, `LABELS`,
//! `SERVICE_ACCOUNT`, ...). [`Proxy::from_node`] reads both; the translator later prefers the
//! registry's Pod (by name and namespace, else by IP) over what the proxy claims about itself.

mod node;

use std::collections::BTreeMap;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::Node;
use serde::Serialize;

pub use node::{json_to_struct, struct_to_json};

/// `region/zone/subzone` into its parts (missing parts are empty), as Istio's
/// `SplitLocalityLabel`.
pub fn split_locality(locality: &str) -> (&str, &str, &str) {
    let mut parts = locality.splitn(3, '/');
    (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    )
}

/// The role a proxy plays, from the first field of its node id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyKind {
    /// A workload's sidecar (`sidecar~...`).
    Sidecar,
    /// A gateway (`router~...`): no capture, listeners from Gateway servers.
    Router,
}

impl ProxyKind {
    /// The node id prefix Istio uses for this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyKind::Sidecar => "sidecar",
            ProxyKind::Router => "router",
        }
    }
}

/// A proxy connected (or about to connect) to the control plane.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Proxy {
    /// The full node id, e.g. `sidecar~10.250.0.5~reviews-v1-abc.default~default.svc.cluster.local`.
    pub id: String,
    pub kind: ProxyKind,
    /// The node id's IP first, then any extra `INSTANCE_IPS` from metadata.
    pub ip_addresses: Vec<IpAddr>,
    pub pod_name: String,
    /// The config namespace: metadata `NAMESPACE`, else the one in the node id.
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: Option<String>,
    /// `WORKLOAD_NAME` (the Deployment or similar), when given.
    pub workload_name: Option<String>,
    /// `CLUSTER_ID`, default `Kubernetes` as Istio.
    pub cluster_id: String,
    /// `MESH_ID`, when given.
    pub mesh_id: Option<String>,
    /// What `istioctl proxy-status` shows as VERSION: `ISTIO_VERSION` metadata, else the
    /// node's user agent and version (`envoy/1.40.0`, `mesh-proxy/0.1.0`).
    pub version: Option<String>,
    /// `INTERCEPTION_MODE` (`REDIRECT`, `TPROXY`, `NONE`); default `REDIRECT`.
    pub interception_mode: InterceptionMode,
    /// The DNS domain from the node id (`default.svc.cluster.local`).
    pub dns_domain: String,
    /// All node metadata as JSON, for debug output and keys the translator reads ad hoc.
    pub metadata: serde_json::Value,
    /// `region/zone/subzone`: the Envoy node's locality, else (once resolved against the
    /// registry) its Pod's. Locality load balancing orders endpoints relative to it.
    pub locality: Option<String>,
}

/// Istio's topology labels, added to a proxy's labels from its locality and cluster (as
/// istiod does), so `failoverPriority` and selectors can name them.
pub mod topology {
    pub const REGION: &str = "topology.kubernetes.io/region";
    pub const ZONE: &str = "topology.kubernetes.io/zone";
    pub const SUBZONE: &str = "topology.istio.io/subzone";
    pub const CLUSTER: &str = "topology.istio.io/cluster";
}

/// How traffic reaches the proxy (Istio's `INTERCEPTION_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum InterceptionMode {
    #[default]
    Redirect,
    Tproxy,
    /// No capture: the application talks to the proxy's listeners directly.
    None,
}

/// Errors reading a proxy's identity from its Envoy node.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ModelError {
    #[error("node has no id (hint: Envoy's --service-node or bootstrap node.id must be set)")]
    MissingNodeId,
    #[error(
        "node id {id:?}: {reason} (expected <sidecar|router>~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>)"
    )]
    InvalidNodeId { id: String, reason: String },
    #[error("node {id:?}: metadata {key}: {reason}")]
    InvalidMetadata {
        id: String,
        key: &'static str,
        reason: String,
    },
}

impl Proxy {
    /// Builds the proxy from the Envoy node sent on the first discovery request.
    pub fn from_node(node: &Node) -> Result<Proxy, ModelError> {
        node::from_node(node)
    }

    /// The proxy's primary IP (the one in its node id).
    pub fn primary_ip(&self) -> IpAddr {
        // `from_node` guarantees at least one address.
        self.ip_addresses
            .first()
            .copied()
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }

    /// Overrides what the proxy claimed with what the registry knows about its Pod
    /// (labels, service account, IPs), as istiod does.
    pub fn merge_registry_pod(
        &mut self,
        labels: &BTreeMap<String, String>,
        service_account: Option<&str>,
        ips: &[IpAddr],
        locality: Option<&str>,
    ) {
        self.labels = labels.clone();
        if let Some(sa) = service_account {
            self.service_account = Some(sa.to_string());
        }
        for ip in ips {
            if !self.ip_addresses.contains(ip) {
                self.ip_addresses.push(*ip);
            }
        }
        if self.locality.is_none() {
            self.locality = locality.map(str::to_string);
        }
    }

    /// Adds Istio's topology labels (region, zone, subzone from the locality; the cluster
    /// id) to the proxy's labels, keeping any the workload set itself.
    pub fn add_topology_labels(&mut self) {
        let (region, zone, subzone) = split_locality(self.locality.as_deref().unwrap_or(""));
        for (key, value) in [
            (topology::REGION, region),
            (topology::ZONE, zone),
            (topology::SUBZONE, subzone),
            (topology::CLUSTER, self.cluster_id.as_str()),
        ] {
            if !value.is_empty() {
                self.labels
                    .entry(key.to_string())
                    .or_insert_with(|| value.to_string());
            }
        }
    }

    /// A proxy for tests, golden scenarios and benchmarks.
    pub fn for_test(kind: ProxyKind, ip: IpAddr, pod: &str, namespace: &str) -> Proxy {
        Proxy {
            id: format!(
                "{}~{ip}~{pod}.{namespace}~{namespace}.svc.cluster.local",
                kind.as_str()
            ),
            kind,
            ip_addresses: vec![ip],
            pod_name: pod.to_string(),
            namespace: namespace.to_string(),
            labels: BTreeMap::new(),
            service_account: None,
            workload_name: None,
            cluster_id: "Kubernetes".to_string(),
            mesh_id: None,
            version: None,
            interception_mode: InterceptionMode::Redirect,
            dns_domain: format!("{namespace}.svc.cluster.local"),
            metadata: serde_json::Value::Object(Default::default()),
            locality: None,
        }
    }
}
