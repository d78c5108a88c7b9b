//! Kubernetes Services, EndpointSlices and Pods into the registry model.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mesh_api::naming::{Protocol, service_fqdn};

use super::{
    Builder, Endpoint, Resolution, Service, ServicePort, ServiceSource, TargetPort, Visibility,
    Workload, selects,
};
use crate::store::config::{Config, ConfigSet};

/// The annotation Istio reads for a Kubernetes Service's `exportTo`.
const EXPORT_TO_ANNOTATION: &str = "networking.istio.io/exportTo";
/// The label tying an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Istio's pod label for an explicit locality (`region.zone.subzone`).
const LOCALITY_LABEL: &str = "istio-locality";

impl Builder<'_> {
    pub(super) fn pods(&mut self, config: &ConfigSet) {
        for pod in &config.pods {
            let Some(w) = pod_workload(pod) else { continue };
            let w = Arc::new(w);
            for ip in &w.ips {
                self.out.pods_by_ip.entry(*ip).or_default().push(w.clone());
            }
            self.out
                .pods
                .insert((w.namespace.clone(), w.name.clone()), w);
        }
    }

    pub(super) fn kubernetes_services(&mut self, config: &ConfigSet) {
        // EndpointSlices grouped by (namespace, service name).
        let mut slices: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
        for (i, slice) in config.endpoint_slices.iter().enumerate() {
            match slice.meta.labels.get(SERVICE_NAME_LABEL) {
                Some(svc) => slices
                    .entry((slice.meta.namespace.clone(), svc.clone()))
                    .or_default()
                    .push(i),
                None => self.issue(
                    &slice.meta.origin,
                    slice.meta.display(),
                    Some("metadata.labels"),
                    format!(
                        "has no {SERVICE_NAME_LABEL:?} label, so it belongs to no Service; ignored"
                    ),
                ),
            }
        }

        for svc in &config.services {
            let spec = svc.spec.spec.clone().unwrap_or_default();
            let ns = &svc.meta.namespace;
            let hostname = service_fqdn(&svc.meta.name, ns, self.domain_suffix);
            let ports: Vec<ServicePort> = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    let port = u16::try_from(p.port).ok()?;
                    let name = p.name.clone().unwrap_or_default();
                    Some(ServicePort {
                        protocol: Protocol::from_service_port(
                            &name,
                            p.protocol.as_deref(),
                            p.app_protocol.as_deref(),
                        ),
                        name,
                        port,
                        target_port: match &p.target_port {
                            None => None,
                            Some(IntOrString::Int(n)) => {
                                u16::try_from(*n).ok().map(TargetPort::Number)
                            }
                            Some(IntOrString::String(s)) => match s.parse::<u16>() {
                                Ok(n) => Some(TargetPort::Number(n)),
                                Err(_) => Some(TargetPort::Name(s.clone())),
                            },
                        },
                    })
                })
                .collect();
            let mut addresses: Vec<String> = Vec::new();
            for ip in spec
                .cluster_ips
                .iter()
                .flatten()
                .chain(spec.cluster_ip.iter())
            {
                if !ip.is_empty() && ip != "None" && !addresses.contains(ip) {
                    addresses.push(ip.clone());
                }
            }
            let external_name = (spec.type_.as_deref() == Some("ExternalName"))
                .then(|| spec.external_name.clone())
                .flatten();
            let headless = spec.cluster_ip.as_deref() == Some("None");
            let resolution = if external_name.is_some() {
                Resolution::DnsLb
            } else if headless {
                Resolution::Passthrough
            } else {
                Resolution::ClientSideLb
            };
            let export: Vec<String> = svc
                .meta
                .annotations
                .get(EXPORT_TO_ANNOTATION)
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            let selector = spec.selector.clone().filter(|s| !s.is_empty());
            let service = Service {
                hostname,
                namespace: ns.clone(),
                name: svc.meta.name.clone(),
                source: ServiceSource::Kubernetes,
                addresses,
                ports,
                resolution,
                mesh_external: false,
                visibility: Visibility::parse(&export, ns, self.export_defaults),
                labels: svc.meta.labels.clone(),
                selector: selector.clone(),
                age: svc.meta.age.clone(),
            };

            let mut endpoints: BTreeMap<u16, Vec<Endpoint>> = BTreeMap::new();
            if let Some(external) = &external_name {
                for p in &service.ports {
                    let port = match &p.target_port {
                        Some(TargetPort::Number(n)) => *n,
                        _ => p.port,
                    };
                    endpoints.entry(p.port).or_default().push(Endpoint {
                        address: external.clone(),
                        port,
                        labels: Arc::default(),
                        service_account: None,
                        locality: None,
                        weight: 1,
                        workload: None,
                    });
                }
            } else if let Some(ids) = slices.remove(&(ns.clone(), svc.meta.name.clone())) {
                for i in ids {
                    self.slice_endpoints(config, i, &service, &mut endpoints);
                }
            } else if let Some(selector) = &selector {
                // No EndpointSlice: select Pods (and WorkloadEntries) directly, so a
                // hand-written local cluster needs only Pods and Services.
                let workloads: Vec<Arc<Workload>> = self
                    .out
                    .pods
                    .values()
                    .chain(self.out.workload_entries.iter())
                    .filter(|w| w.namespace == *ns && w.ready && selects(selector, &w.labels))
                    .cloned()
                    .collect();
                for w in workloads {
                    for p in &service.ports {
                        let Some(target) = w.target_port(p) else {
                            continue;
                        };
                        for ip in w.ips.iter().take(1) {
                            endpoints
                                .entry(p.port)
                                .or_default()
                                .push(w.endpoint(ip.to_string(), target));
                        }
                    }
                }
            }
            self.add_service(service, endpoints);
        }

        for ((ns, name), ids) in slices {
            for i in ids {
                let slice = &config.endpoint_slices[i];
                self.issue(
                    &slice.meta.origin,
                    slice.meta.display(),
                    Some("metadata.labels"),
                    format!("belongs to Service {ns}/{name}, which does not exist; ignored"),
                );
            }
        }
    }

    fn slice_endpoints(
        &mut self,
        config: &ConfigSet,
        index: usize,
        service: &Service,
        out: &mut BTreeMap<u16, Vec<Endpoint>>,
    ) {
        let slice = &config.endpoint_slices[index];
        if slice.spec.address_type == "FQDN" {
            self.issue(
                &slice.meta.origin,
                slice.meta.display(),
                Some("addressType"),
                "FQDN EndpointSlices are not supported (as in Istio); ignored".to_string(),
            );
            return;
        }
        for sp in slice.spec.ports.iter().flatten() {
            let name = sp.name.clone().unwrap_or_default();
            let Some(target) = sp.port.and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            let Some(svc_port) = service
                .ports
                .iter()
                .find(|p| p.name == name || service.ports.len() == 1 && name.is_empty())
            else {
                continue;
            };
            for ep in &slice.spec.endpoints {
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready {
                    continue;
                }
                let pod = ep
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| {
                        let ns = r
                            .namespace
                            .clone()
                            .unwrap_or_else(|| slice.meta.namespace.clone());
                        self.out
                            .pods
                            .get(&(ns, r.name.clone().unwrap_or_default()))
                            .cloned()
                    });
                for addr in &ep.addresses {
                    let endpoint = match &pod {
                        Some(w) => w.endpoint(addr.clone(), target),
                        None => {
                            // Without the Pod, fall back to what the slice says.
                            let pod_by_ip = addr.parse::<IpAddr>().ok().and_then(|ip| {
                                self.out
                                    .pods_by_ip
                                    .get(&ip)
                                    .and_then(|v| v.first().cloned())
                            });
                            match pod_by_ip {
                                Some(w) => w.endpoint(addr.clone(), target),
                                None => Endpoint {
                                    address: addr.clone(),
                                    port: target,
                                    labels: Arc::default(),
                                    service_account: None,
                                    locality: ep.zone.clone(),
                                    weight: 1,
                                    workload: None,
                                },
                            }
                        }
                    };
                    out.entry(svc_port.port).or_default().push(endpoint);
                }
            }
        }
    }
}

fn pod_workload(pod: &Config<Pod>) -> Option<Workload> {
    let spec = pod.spec.spec.as_ref();
    let status = pod.spec.status.as_ref();
    let mut ips: Vec<IpAddr> = Vec::new();
    if let Some(status) = status {
        for ip in status
            .pod_ip
            .iter()
            .chain(status.pod_ips.iter().flatten().map(|p| &p.ip))
        {
            if let Ok(ip) = ip.parse::<IpAddr>()
                && !ips.contains(&ip)
            {
                ips.push(ip);
            }
        }
    }
    let phase = status.and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded") | Some("Failed")) {
        return None;
    }
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_none_or(|c| c.status == "True");
    let container_ports = spec
        .map(|s| {
            s.containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .filter_map(|p| {
                    Some((
                        p.name.clone().unwrap_or_default(),
                        u16::try_from(p.container_port).ok()?,
                        p.protocol.clone().unwrap_or_else(|| "TCP".to_string()),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let locality = pod_locality(&pod.meta.labels);
    Some(Workload {
        kind: "Pod",
        name: pod.meta.name.clone(),
        namespace: pod.meta.namespace.clone(),
        labels: Arc::new(pod.meta.labels.clone()),
        ips,
        service_account: Some(
            spec.and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".to_string()),
        ),
        container_ports,
        named_ports: BTreeMap::new(),
        locality,
        weight: 1,
        ready,
        hostname: None,
    })
}

/// A Pod's locality as `region/zone/subzone`: Istio's `istio-locality` label
/// (`region.zone.subzone`) first, else the topology labels Kubernetes puts on the Node
/// (`topology.kubernetes.io/region|zone`, `topology.istio.io/subzone`), which the local
/// cluster, having no Node objects, carries on the Pod.
fn pod_locality(labels: &BTreeMap<String, String>) -> Option<String> {
    use crate::model::topology;
    if let Some(l) = labels.get(LOCALITY_LABEL).filter(|l| !l.is_empty()) {
        return Some(l.replace('.', "/"));
    }
    let get = |k: &str| labels.get(k).map(String::as_str).unwrap_or("");
    let (region, zone, subzone) = (
        get(topology::REGION),
        get(topology::ZONE),
        get(topology::SUBZONE),
    );
    (!(region.is_empty() && zone.is_empty() && subzone.is_empty()))
        .then(|| format!("{region}/{zone}/{subzone}"))
}
