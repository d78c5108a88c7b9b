//! `ClusterLoadAssignment` (EDS, or inline `load_assignment` of STATIC/STRICT_DNS
//! clusters) as domain types: localities with weights and priorities, endpoints with
//! health and weight.
// The deprecated inline endpoint list is still valid Envoy config.
#![allow(deprecated)]

use envoy_types::pb::envoy::config::{
    core::v3::{HealthStatus as PbHealth, Metadata},
    endpoint::v3 as epb,
};

use super::{
    ConfigError, Result,
    address::{HostPort, host_port},
};

/// Envoy's default overprovisioning factor (1.4, expressed in percent).
pub const DEFAULT_OVERPROVISIONING_FACTOR: u32 = 140;

#[derive(Debug, Clone, PartialEq)]
pub struct ClusterLoadAssignment {
    pub cluster_name: String,
    pub localities: Vec<LocalityEndpoints>,
    /// Percent: 140 means priority levels count as fully healthy at 71.4% healthy hosts.
    pub overprovisioning_factor: u32,
    pub weighted_priority_health: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
}

impl std::fmt::Display for Locality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.region, self.zone, self.sub_zone)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LocalityEndpoints {
    pub locality: Locality,
    /// `load_balancing_weight`; only used with locality-weighted load balancing.
    pub weight: Option<u32>,
    pub priority: u32,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub address: HostPort,
    pub hostname: String,
    pub health: HealthStatus,
    /// `load_balancing_weight`, 1 when unset.
    pub weight: u32,
    /// `filter_metadata["envoy.transport_socket_match"]["tlsMode"]` (Istio's mTLS marker).
    pub tls_mode: Option<String>,
}

/// EDS health as Envoy groups it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HealthStatus {
    Healthy,
    Degraded,
    Unhealthy,
}

impl HealthStatus {
    fn from_proto(v: i32) -> Self {
        match PbHealth::try_from(v) {
            Ok(PbHealth::Unknown | PbHealth::Healthy) | Err(_) => HealthStatus::Healthy,
            Ok(PbHealth::Degraded) => HealthStatus::Degraded,
            Ok(PbHealth::Unhealthy | PbHealth::Draining | PbHealth::Timeout) => {
                HealthStatus::Unhealthy
            }
        }
    }
}

pub(crate) fn tls_mode(metadata: &Option<Metadata>) -> Option<String> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let m = metadata
        .as_ref()?
        .filter_metadata
        .get("envoy.transport_socket_match")?;
    match m.fields.get("tlsMode")?.kind.as_ref()? {
        Kind::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

impl TryFrom<&epb::ClusterLoadAssignment> for ClusterLoadAssignment {
    type Error = ConfigError;

    fn try_from(cla: &epb::ClusterLoadAssignment) -> Result<Self> {
        convert(cla).map_err(|e| e.in_resource(&cla.cluster_name))
    }
}

fn convert(cla: &epb::ClusterLoadAssignment) -> Result<ClusterLoadAssignment> {
    if !cla.named_endpoints.is_empty() {
        return Err(ConfigError::unsupported("named_endpoints"));
    }
    let mut overprovisioning_factor = DEFAULT_OVERPROVISIONING_FACTOR;
    let mut weighted_priority_health = false;
    if let Some(p) = &cla.policy {
        if !p.drop_overloads.is_empty() {
            return Err(ConfigError::unsupported("policy.drop_overloads"));
        }
        if let Some(f) = p.overprovisioning_factor {
            if f.value == 0 {
                return Err(ConfigError::field(
                    "policy.overprovisioning_factor",
                    "must be greater than 0",
                ));
            }
            overprovisioning_factor = f.value;
        }
        // endpoint_stale_after: we never mark endpoints stale; the control plane pushes updates.
        if p.endpoint_stale_after.is_some() {
            return Err(ConfigError::unsupported("policy.endpoint_stale_after"));
        }
        weighted_priority_health = p.weighted_priority_health;
    }
    let mut localities = Vec::with_capacity(cla.endpoints.len());
    for (i, l) in cla.endpoints.iter().enumerate() {
        localities.push(locality(l).map_err(|e| e.at(format!("endpoints[{i}]")))?);
    }
    Ok(ClusterLoadAssignment {
        cluster_name: cla.cluster_name.clone(),
        localities,
        overprovisioning_factor,
        weighted_priority_health,
    })
}

fn locality(l: &epb::LocalityLbEndpoints) -> Result<LocalityEndpoints> {
    if l.lb_config.is_some() {
        // leds_cluster_locality_config (LEDS) or an explicit list in the oneof.
        if let Some(epb::locality_lb_endpoints::LbConfig::LedsClusterLocalityConfig(_)) =
            &l.lb_config
        {
            return Err(ConfigError::unsupported("leds_cluster_locality_config"));
        }
    }
    if l.proximity.is_some() {
        return Err(ConfigError::unsupported("proximity"));
    }
    let weight = match l.load_balancing_weight {
        Some(w) if w.value == 0 => {
            return Err(ConfigError::field(
                "load_balancing_weight",
                "must be at least 1",
            ));
        }
        w => w.map(|w| w.value),
    };
    let mut endpoints = Vec::with_capacity(l.lb_endpoints.len());
    let mut all: Vec<&epb::LbEndpoint> = l.lb_endpoints.iter().collect();
    if let Some(epb::locality_lb_endpoints::LbConfig::LoadBalancerEndpoints(list)) = &l.lb_config {
        all.extend(list.lb_endpoints.iter());
    }
    for (i, e) in all.into_iter().enumerate() {
        endpoints.push(endpoint(e).map_err(|e| e.at(format!("lb_endpoints[{i}]")))?);
    }
    let locality = l
        .locality
        .as_ref()
        .map(|l| Locality {
            region: l.region.clone(),
            zone: l.zone.clone(),
            sub_zone: l.sub_zone.clone(),
        })
        .unwrap_or_default();
    Ok(LocalityEndpoints {
        locality,
        weight,
        priority: l.priority,
        endpoints,
    })
}

fn endpoint(e: &epb::LbEndpoint) -> Result<Endpoint> {
    let ep = match &e.host_identifier {
        Some(epb::lb_endpoint::HostIdentifier::Endpoint(ep)) => ep,
        Some(epb::lb_endpoint::HostIdentifier::EndpointName(_)) => {
            return Err(ConfigError::unsupported("endpoint_name"));
        }
        None => return Err(ConfigError::field("endpoint", "endpoint is required")),
    };
    if !ep.additional_addresses.is_empty() {
        return Err(ConfigError::unsupported("endpoint.additional_addresses"));
    }
    // health_check_config only matters to active health checking, which we reject on
    // the cluster; it is descriptive here.
    let address = host_port(
        ep.address
            .as_ref()
            .ok_or_else(|| ConfigError::field("endpoint.address", "address is required"))?,
        "endpoint.address",
    )?;
    let weight = match e.load_balancing_weight {
        Some(w) if w.value == 0 => {
            return Err(ConfigError::field(
                "load_balancing_weight",
                "must be at least 1",
            ));
        }
        Some(w) => w.value,
        None => 1,
    };
    Ok(Endpoint {
        address,
        hostname: ep.hostname.clone(),
        health: HealthStatus::from_proto(e.health_status),
        weight,
        tls_mode: tls_mode(&e.metadata),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{
        Address, SocketAddress, address, socket_address,
    };
    use envoy_types::pb::google::protobuf::UInt32Value;

    fn lb_endpoint(ip: &str, port: u32, weight: Option<u32>) -> epb::LbEndpoint {
        epb::LbEndpoint {
            host_identifier: Some(epb::lb_endpoint::HostIdentifier::Endpoint(epb::Endpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: ip.into(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            load_balancing_weight: weight.map(|value| UInt32Value { value }),
            ..Default::default()
        }
    }

    #[test]
    fn converts_localities_and_weights() {
        let cla = epb::ClusterLoadAssignment {
            cluster_name: "outbound|80||a".into(),
            endpoints: vec![epb::LocalityLbEndpoints {
                priority: 1,
                load_balancing_weight: Some(UInt32Value { value: 3 }),
                lb_endpoints: vec![
                    lb_endpoint("10.250.0.1", 80, None),
                    lb_endpoint("10.250.0.2", 80, Some(5)),
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let c = ClusterLoadAssignment::try_from(&cla).unwrap();
        assert_eq!(c.overprovisioning_factor, 140);
        assert_eq!(c.localities[0].priority, 1);
        assert_eq!(c.localities[0].weight, Some(3));
        assert_eq!(c.localities[0].endpoints[1].weight, 5);
        assert_eq!(c.localities[0].endpoints[0].health, HealthStatus::Healthy);
    }

    #[test]
    fn zero_weight_is_named() {
        let cla = epb::ClusterLoadAssignment {
            cluster_name: "c".into(),
            endpoints: vec![epb::LocalityLbEndpoints {
                lb_endpoints: vec![lb_endpoint("10.250.0.1", 80, Some(0))],
                ..Default::default()
            }],
            ..Default::default()
        };
        let e = ClusterLoadAssignment::try_from(&cla).unwrap_err();
        assert_eq!(e.resource, "c");
        assert_eq!(
            e.field,
            "endpoints[0].lb_endpoints[0].load_balancing_weight"
        );
    }
}
