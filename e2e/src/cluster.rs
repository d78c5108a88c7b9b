//! The `Cluster` trait: what an end-to-end scenario needs from a cluster, so the same
//! scenario code runs on the local backend (network namespaces) and, later, on a real
//! Kubernetes cluster.

use std::process::Output;

use anyhow::Result;
use serde::{Deserialize, Serialize};

/// A running pod as scenarios see it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodInfo {
    pub name: String,
    pub namespace: String,
    pub ip: String,
    /// The `app` label (what `exec` accepts instead of a pod name).
    pub app: String,
    /// The proxy's admin address as reachable through the pod (`127.0.0.1:15000`), when
    /// the pod has a proxy.
    pub admin: Option<String>,
}

/// A Service as scenarios see it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServiceInfo {
    pub name: String,
    pub namespace: String,
    pub vip: String,
    pub ports: Vec<u16>,
}

pub trait Cluster {
    /// Creates or replaces the resources in a YAML stream (Istio config, Services, ...).
    fn apply(&self, yaml: &str) -> Result<()>;
    /// Removes the resources named in a YAML stream.
    fn delete(&self, yaml: &str) -> Result<()>;
    /// Runs a command inside a pod (its network namespace, as the app's user), like
    /// `kubectl exec`. `pod` may be a pod name or an `app` label value.
    fn exec(&self, pod: &str, namespace: &str, cmd: &[&str]) -> Result<Output>;
    fn pods(&self) -> Result<Vec<PodInfo>>;
    fn services(&self) -> Result<Vec<ServiceInfo>>;
    /// The ingress gateway's base URL as reachable from where the scenarios run.
    fn ingress_url(&self) -> Option<String>;
}
