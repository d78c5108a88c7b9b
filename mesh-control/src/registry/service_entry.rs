//! ServiceEntries and WorkloadEntries into the registry model.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use mesh_api::naming::{Protocol, resolve_short_name};
use mesh_api::networking::{Location, Resolution as SeResolution, WorkloadEntrySpec};

use super::{
    Builder, Endpoint, Resolution, Service, ServicePort, ServiceSource, TargetPort, Visibility,
    Workload, selects,
};
use crate::store::config::ConfigSet;

impl Builder<'_> {
    pub(super) fn workload_entries(&mut self, config: &ConfigSet) {
        for we in &config.workload_entries {
            let w = entry_workload(
                &we.spec,
                "WorkloadEntry",
                &we.meta.name,
                &we.meta.namespace,
                &we.meta.labels,
            );
            self.out.workload_entries.push(Arc::new(w));
        }
    }

    pub(super) fn service_entries(&mut self, config: &ConfigSet) {
        for se in &config.service_entries {
            let spec = &se.spec;
            let ns = &se.meta.namespace;
            let resolution = match spec.resolution.unwrap_or_default() {
                SeResolution::None => Resolution::Passthrough,
                SeResolution::Static => Resolution::ClientSideLb,
                SeResolution::Dns => Resolution::DnsLb,
                SeResolution::DnsRoundRobin => Resolution::DnsRoundRobinLb,
            };
            let mesh_external = spec.location.unwrap_or_default() == Location::MeshExternal;
            let mut ports = Vec::new();
            for (i, p) in spec.ports.iter().enumerate() {
                let Ok(port) = u16::try_from(p.number) else {
                    self.issue(
                        &se.meta.origin,
                        se.meta.display(),
                        Some(&format!("spec.ports[{i}].number")),
                        format!("{} is not a port number; port ignored", p.number),
                    );
                    continue;
                };
                let protocol = match &p.protocol {
                    Some(proto) => Protocol::parse(proto),
                    None => Protocol::from_port_name(&p.name),
                };
                ports.push(ServicePort {
                    name: p.name.clone(),
                    port,
                    protocol,
                    target_port: p
                        .target_port
                        .and_then(|t| u16::try_from(t).ok())
                        .filter(|t| *t != 0)
                        .map(TargetPort::Number),
                });
            }
            let selector = spec
                .workload_selector
                .as_ref()
                .map(|s| s.match_labels.clone());

            // Endpoints are the same for every host of the entry.
            let mut workloads: Vec<Arc<Workload>> = spec
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    Arc::new(entry_workload(
                        e,
                        "ServiceEntry",
                        &format!("{}[{i}]", se.meta.name),
                        ns,
                        &BTreeMap::new(),
                    ))
                })
                .collect();
            if let Some(selector) = &selector {
                workloads.extend(
                    self.out
                        .pods
                        .values()
                        .chain(self.out.workload_entries.iter())
                        .filter(|w| w.namespace == *ns && w.ready && selects(selector, &w.labels))
                        .cloned(),
                );
            }

            for host in &spec.hosts {
                let hostname = resolve_short_name(host, ns, self.domain_suffix);
                let mut endpoints: BTreeMap<u16, Vec<Endpoint>> = BTreeMap::new();
                for p in &ports {
                    for w in &workloads {
                        let Some(target) = w.target_port(p) else {
                            continue;
                        };
                        let dns =
                            matches!(resolution, Resolution::DnsLb | Resolution::DnsRoundRobinLb);
                        let address = match (w.ips.first(), &w.hostname) {
                            (Some(ip), _) => ip.to_string(),
                            // A DNS name is an endpoint only when the proxy resolves names.
                            (None, Some(name)) if dns => name.clone(),
                            _ => continue,
                        };
                        endpoints
                            .entry(p.port)
                            .or_default()
                            .push(w.endpoint(address, target));
                    }
                    if workloads.is_empty()
                        && matches!(resolution, Resolution::DnsLb | Resolution::DnsRoundRobinLb)
                        && !hostname.starts_with('*')
                    {
                        // DNS without endpoints: the host itself is the endpoint.
                        let target = match &p.target_port {
                            Some(TargetPort::Number(n)) => *n,
                            _ => p.port,
                        };
                        endpoints.entry(p.port).or_default().push(Endpoint {
                            address: hostname.clone(),
                            port: target,
                            labels: Arc::default(),
                            service_account: None,
                            locality: None,
                            weight: 1,
                            workload: None,
                        });
                    }
                }
                let service = Service {
                    hostname,
                    namespace: ns.clone(),
                    name: se.meta.name.clone(),
                    source: ServiceSource::ServiceEntry,
                    addresses: spec.addresses.clone(),
                    ports: ports.clone(),
                    resolution,
                    mesh_external,
                    visibility: Visibility::parse(&spec.export_to, ns, self.export_defaults),
                    labels: se.meta.labels.clone(),
                    selector: selector.clone(),
                    age: se.meta.age.clone(),
                };
                self.add_service(service, endpoints);
            }
        }
    }
}

fn entry_workload(
    spec: &WorkloadEntrySpec,
    kind: &'static str,
    name: &str,
    namespace: &str,
    meta_labels: &BTreeMap<String, String>,
) -> Workload {
    // A WorkloadEntry's spec labels are its workload labels; metadata labels fill in.
    let mut labels = meta_labels.clone();
    labels.extend(spec.labels.clone());
    let address = spec.address.clone().unwrap_or_default();
    let ips: Vec<IpAddr> = address.parse().ok().into_iter().collect();
    let hostname = (ips.is_empty() && !address.is_empty()).then_some(address);
    Workload {
        kind,
        name: name.to_string(),
        namespace: namespace.to_string(),
        labels: Arc::new(labels),
        ips,
        service_account: spec.service_account.clone(),
        container_ports: Vec::new(),
        named_ports: spec
            .ports
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), u16::try_from(*v).ok()?)))
            .collect(),
        locality: spec.locality.clone(),
        weight: spec.weight.unwrap_or(1).max(1),
        ready: true,
        hostname,
    }
}
