//! The service registry: Kubernetes Services with their EndpointSlices (or the Pods they
//! select), ServiceEntries and WorkloadEntries, as one model of services and endpoints.
//!
//! Built once per store snapshot from the [`ConfigSet`]; immutable afterwards, so every
//! proxy's translation reads it without locks.

mod kube;
mod service_entry;
mod visibility;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use mesh_api::mesh_config::MeshConfig;
use mesh_api::naming::{DEFAULT_DOMAIN_SUFFIX, Protocol};
use serde::Serialize;

use crate::store::ConfigIssue;
use crate::store::config::{Age, ConfigSet};

pub use visibility::Visibility;

#[cfg(test)]
mod tests;

/// Where a service came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum ServiceSource {
    Kubernetes,
    ServiceEntry,
}

/// How a proxy finds a service's endpoints (Istio's `model.Resolution`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Resolution {
    /// Endpoints from the control plane (EDS).
    ClientSideLb,
    /// The proxy resolves the endpoint names and balances over every address (STRICT_DNS).
    DnsLb,
    /// The proxy resolves the name and uses one address at a time (LOGICAL_DNS).
    DnsRoundRobinLb,
    /// Forward to the original destination (headless services, `resolution: NONE`).
    Passthrough,
}

/// A port's target on the workload.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum TargetPort {
    Number(u16),
    /// A named container port, resolved per pod.
    Name(String),
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    #[serde(serialize_with = "ser_protocol")]
    pub protocol: Protocol,
    pub target_port: Option<TargetPort>,
}

fn ser_labels<S: serde::Serializer>(
    l: &Arc<BTreeMap<String, String>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&**l, s)
}

fn ser_protocol<S: serde::Serializer>(p: &Protocol, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(p.as_str())
}

/// A service: one hostname, its ports and how to reach its endpoints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    /// The FQDN (`reviews.default.svc.cluster.local`) or a ServiceEntry host (may be a wildcard).
    pub hostname: String,
    pub namespace: String,
    /// The Kubernetes Service or ServiceEntry name.
    pub name: String,
    pub source: ServiceSource,
    /// VIPs (ClusterIPs, ServiceEntry addresses; the latter may be CIDRs).
    pub addresses: Vec<String>,
    pub ports: Vec<ServicePort>,
    pub resolution: Resolution,
    pub mesh_external: bool,
    pub visibility: Visibility,
    pub labels: BTreeMap<String, String>,
    /// Pods (and WorkloadEntries) this service selects, when it selects by label.
    pub selector: Option<BTreeMap<String, String>>,
    pub age: Age,
}

impl Service {
    pub fn port(&self, number: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == number)
    }

    /// The first VIP that is a plain IP address (not a CIDR), as Istio's `DefaultAddress`.
    pub fn vip(&self) -> Option<&str> {
        self.addresses
            .iter()
            .map(String::as_str)
            .find(|a| a.parse::<IpAddr>().is_ok())
    }
}

/// One endpoint of one service port.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Endpoint {
    /// An IP address, or a DNS name for DNS-resolved ServiceEntries.
    pub address: String,
    pub port: u16,
    #[serde(serialize_with = "ser_labels")]
    pub labels: Arc<BTreeMap<String, String>>,
    pub service_account: Option<String>,
    /// `region/zone/subzone`.
    pub locality: Option<String>,
    pub weight: u32,
    /// Kind/namespace/name of the workload behind it (Pod, WorkloadEntry), for debugging.
    pub workload: Option<String>,
}

/// A workload (Pod or WorkloadEntry) as the inbound side and proxy identity need it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Workload {
    pub kind: &'static str,
    pub name: String,
    pub namespace: String,
    #[serde(serialize_with = "ser_labels")]
    pub labels: Arc<BTreeMap<String, String>>,
    pub ips: Vec<IpAddr>,
    pub service_account: Option<String>,
    /// Container ports: name (may be empty), number, protocol (`TCP`, `UDP`).
    pub container_ports: Vec<(String, u16, String)>,
    /// WorkloadEntry `ports` (port name -> number).
    pub named_ports: BTreeMap<String, u16>,
    pub locality: Option<String>,
    pub weight: u32,
    pub ready: bool,
    /// A WorkloadEntry address that is a DNS name rather than an IP.
    pub hostname: Option<String>,
}

impl Workload {
    /// Resolves a service port's target on this workload.
    pub fn target_port(&self, port: &ServicePort) -> Option<u16> {
        if let Some(p) = self.named_ports.get(&port.name) {
            return Some(*p);
        }
        match &port.target_port {
            None => Some(port.port),
            Some(TargetPort::Number(n)) => Some(*n),
            Some(TargetPort::Name(name)) => self
                .container_ports
                .iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, p, _)| *p),
        }
    }

    fn endpoint(&self, address: String, port: u16) -> Endpoint {
        Endpoint {
            address,
            port,
            labels: self.labels.clone(),
            service_account: self.service_account.clone(),
            locality: self.locality.clone(),
            weight: self.weight,
            workload: Some(format!("{} {}/{}", self.kind, self.namespace, self.name)),
        }
    }
}

/// Whether every `selector` label is on `labels` (an empty selector selects everything).
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A service selecting a workload, with the workload's port for each service port.
pub type WorkloadService = (Arc<Service>, Vec<(ServicePort, u16)>);

/// The registry built from one [`ConfigSet`].
#[derive(Debug, Default)]
pub struct Registry {
    /// Sorted by hostname, then oldest first.
    services: Vec<Arc<Service>>,
    by_host: HashMap<String, Vec<usize>>,
    /// Per service (same index), per service port number.
    endpoints: Vec<BTreeMap<u16, Vec<Endpoint>>>,
    pods: BTreeMap<(String, String), Arc<Workload>>,
    pods_by_ip: HashMap<IpAddr, Vec<Arc<Workload>>>,
    workload_entries: Vec<Arc<Workload>>,
    issues: Vec<ConfigIssue>,
}

/// Empty endpoint list, for lookups that miss.
static NO_ENDPOINTS: Vec<Endpoint> = Vec::new();

impl Registry {
    /// Builds the registry. Problems (an EndpointSlice without its Service, an unresolvable
    /// port) are returned as issues, never as failures.
    pub fn build(config: &ConfigSet, mesh: &MeshConfig) -> Registry {
        let mut builder = Builder {
            out: Registry::default(),
            domain_suffix: DEFAULT_DOMAIN_SUFFIX,
            export_defaults: &mesh.default_service_export_to,
        };
        builder.pods(config);
        builder.workload_entries(config);
        builder.kubernetes_services(config);
        builder.service_entries(config);
        builder.finish()
    }

    pub fn services(&self) -> &[Arc<Service>] {
        &self.services
    }

    /// Every service with this exact hostname (several namespaces may declare one), oldest first.
    pub fn services_for_host<'a>(
        &'a self,
        host: &str,
    ) -> impl Iterator<Item = &'a Arc<Service>> + 'a {
        self.by_host
            .get(host)
            .into_iter()
            .flatten()
            .map(|i| &self.services[*i])
    }

    /// The endpoints of one service port (healthy ones only).
    pub fn endpoints(&self, service: &Service, port: u16) -> &[Endpoint] {
        self.index_of(service)
            .and_then(|i| self.endpoints[i].get(&port))
            .map(Vec::as_slice)
            .unwrap_or(&NO_ENDPOINTS)
    }

    fn index_of(&self, service: &Service) -> Option<usize> {
        self.by_host
            .get(&service.hostname)?
            .iter()
            .copied()
            .find(|i| {
                let s = &self.services[*i];
                s.namespace == service.namespace && s.name == service.name
            })
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Arc<Workload>> {
        self.pods.get(&(namespace.to_string(), name.to_string()))
    }

    pub fn pods_by_ip(&self, ip: &IpAddr) -> &[Arc<Workload>] {
        self.pods_by_ip.get(ip).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The services that select this workload (same namespace, label selector), with the
    /// workload's port for each service port: what the inbound listener serves.
    pub fn services_for_workload(&self, workload: &Workload) -> Vec<WorkloadService> {
        let mut out = Vec::new();
        for svc in &self.services {
            let Some(selector) = &svc.selector else {
                continue;
            };
            if svc.namespace != workload.namespace || svc.mesh_external {
                continue;
            }
            if selector.is_empty() || !selects(selector, &workload.labels) {
                continue;
            }
            let ports: Vec<_> = svc
                .ports
                .iter()
                .filter_map(|p| workload.target_port(p).map(|t| (p.clone(), t)))
                .collect();
            out.push((svc.clone(), ports));
        }
        out
    }

    /// Problems found while building.
    pub fn issues(&self) -> &[ConfigIssue] {
        &self.issues
    }

    /// A serializable summary for `/debug/configz` and tests.
    pub fn view(&self) -> serde_json::Value {
        let services: Vec<_> = self
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| {
                serde_json::json!({
                    "service": &**s,
                    "endpoints": self.endpoints[i],
                })
            })
            .collect();
        serde_json::json!({ "services": services })
    }
}

struct Builder<'a> {
    out: Registry,
    domain_suffix: &'a str,
    export_defaults: &'a [String],
}

impl Builder<'_> {
    fn add_service(&mut self, svc: Service, endpoints: BTreeMap<u16, Vec<Endpoint>>) {
        self.out.services.push(Arc::new(svc));
        self.out.endpoints.push(endpoints);
    }

    fn issue(&mut self, origin: &str, resource: String, field: Option<&str>, message: String) {
        self.out.issues.push(ConfigIssue {
            origin: origin.to_string(),
            resource: Some(resource),
            field: field.map(str::to_string),
            message,
        });
    }

    fn finish(mut self) -> Registry {
        let mut order: Vec<usize> = (0..self.out.services.len()).collect();
        order.sort_by(|a, b| {
            let (x, y) = (&self.out.services[*a], &self.out.services[*b]);
            (&x.hostname, &x.age, &x.namespace).cmp(&(&y.hostname, &y.age, &y.namespace))
        });
        let services = order
            .iter()
            .map(|i| self.out.services[*i].clone())
            .collect();
        let mut endpoints: Vec<_> = order
            .iter()
            .map(|i| std::mem::take(&mut self.out.endpoints[*i]))
            .collect();
        for per_port in &mut endpoints {
            for eps in per_port.values_mut() {
                eps.sort_by(|a, b| (&a.address, a.port).cmp(&(&b.address, b.port)));
                eps.dedup_by(|a, b| a.address == b.address && a.port == b.port);
            }
        }
        self.out.services = services;
        self.out.endpoints = endpoints;
        self.out.by_host.clear();
        for (i, s) in self.out.services.iter().enumerate() {
            self.out
                .by_host
                .entry(s.hostname.clone())
                .or_default()
                .push(i);
        }
        self.out.issues.sort();
        self.out
    }
}
