//! The typed view of every resource the translator reads, as one immutable set.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use mesh_api::networking::{
    DestinationRuleSpec, EnvoyFilterSpec, GatewaySpec, ServiceEntrySpec, SidecarSpec,
    VirtualServiceSpec, WorkloadEntrySpec,
};
use serde::Serialize;

/// Where a resource sits in Istio's "oldest first" order: its `creationTimestamp`, then the
/// order the store first saw it (files carry no timestamps, so file order decides there),
/// then namespace and name. A resource keeps its place when it is updated.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Age {
    /// Resources without a timestamp (typical in files) sort before stamped ones.
    pub created: Option<Timestamp>,
    pub seq: u64,
}

/// Identity and bookkeeping of one stored resource.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Meta {
    pub kind: &'static str,
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub age: Age,
    /// The source it came from (file path).
    pub origin: String,
}

impl Meta {
    /// `Kind namespace/name`, the way issues and logs name a resource.
    pub fn display(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A resource with its metadata: `spec` is the Istio spec, or the whole Kubernetes object.
#[derive(Debug, Clone, PartialEq)]
pub struct Config<T> {
    pub meta: Meta,
    pub spec: T,
}

pub type Shared<T> = Arc<Config<T>>;

/// Every resource the translator and registry read, each list sorted oldest first.
#[derive(Debug, Clone, Default)]
pub struct ConfigSet {
    pub virtual_services: Vec<Shared<VirtualServiceSpec>>,
    pub destination_rules: Vec<Shared<DestinationRuleSpec>>,
    pub gateways: Vec<Shared<GatewaySpec>>,
    pub service_entries: Vec<Shared<ServiceEntrySpec>>,
    pub workload_entries: Vec<Shared<WorkloadEntrySpec>>,
    pub sidecars: Vec<Shared<SidecarSpec>>,
    pub envoy_filters: Vec<Shared<EnvoyFilterSpec>>,
    pub services: Vec<Shared<Service>>,
    pub endpoint_slices: Vec<Shared<EndpointSlice>>,
    pub pods: Vec<Shared<Pod>>,
    pub namespaces: Vec<Shared<Namespace>>,
    pub secrets: Vec<Shared<Secret>>,
    pub config_maps: Vec<Shared<ConfigMap>>,
}

impl ConfigSet {
    /// Sorts every list oldest first (Istio's precedence order).
    pub fn sort(&mut self) {
        fn by_age<T>(v: &mut [Shared<T>]) {
            v.sort_by(|a, b| {
                (&a.meta.age, &a.meta.namespace, &a.meta.name).cmp(&(
                    &b.meta.age,
                    &b.meta.namespace,
                    &b.meta.name,
                ))
            });
        }
        by_age(&mut self.virtual_services);
        by_age(&mut self.destination_rules);
        by_age(&mut self.gateways);
        by_age(&mut self.service_entries);
        by_age(&mut self.workload_entries);
        by_age(&mut self.sidecars);
        by_age(&mut self.envoy_filters);
        by_age(&mut self.services);
        by_age(&mut self.endpoint_slices);
        by_age(&mut self.pods);
        by_age(&mut self.namespaces);
        by_age(&mut self.secrets);
        by_age(&mut self.config_maps);
    }
}
