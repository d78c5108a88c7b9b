//! What to capture for one pod: the istio-iptables parameters, read from the pod's
//! `traffic.sidecar.istio.io/*` and `sidecar.istio.io/interceptionMode` annotations with
//! Istio's defaults (the same defaults the injector and istio-cni use).

use std::collections::BTreeMap;
use std::fmt;

use ipnet::{IpNet, Ipv4Net};

/// Annotation keys, exactly as Istio spells them.
pub mod annotation {
    pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
    pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
    pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
    pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
    pub const INCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
    pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
    pub const EXCLUDE_INTERFACES: &str = "traffic.sidecar.istio.io/excludeInterfaces";
    pub const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";
    pub const SIDECAR_STATUS: &str = "sidecar.istio.io/status";
    pub const INJECT: &str = "sidecar.istio.io/inject";
}

/// Istio's well-known ports.
pub mod port {
    /// Outbound capture listener.
    pub const OUTBOUND_CAPTURE: u16 = 15001;
    /// Inbound capture listener.
    pub const INBOUND_CAPTURE: u16 = 15006;
    /// Merged metrics and agent endpoints.
    pub const AGENT: u16 = 15020;
    /// Health (`/healthz/ready`).
    pub const HEALTH: u16 = 15021;
    /// Prometheus (`/stats/prometheus`).
    pub const PROMETHEUS: u16 = 15090;
    /// Inbound ports that are never captured, whatever the annotations say, so that the
    /// kubelet and Prometheus reach the proxy itself (istio-cni appends the same three).
    pub const ALWAYS_EXCLUDED_INBOUND: [u16; 3] = [AGENT, HEALTH, PROMETHEUS];
}

/// The proxy's UID and GID, excluded from capture so it does not capture itself.
pub const PROXY_UID: u32 = 1337;
pub const PROXY_GID: u32 = 1337;

/// Bad annotation value: names the annotation and the offending part.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "annotation {key}: {value:?} is not a port list: {reason} (hint: use \"*\" or comma-separated ports such as \"8080,9090\")"
    )]
    Ports {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "annotation {key}: {value:?} is not a CIDR list: {reason} (hint: use \"*\" or comma-separated CIDRs such as \"10.0.0.0/8,192.168.1.0/24\")"
    )]
    Cidrs {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("annotation {key}: \"*\" is not allowed here (Istio rejects a wildcard exclusion too)")]
    WildcardExclude { key: &'static str },
    #[error(
        "annotation {key}: interface name {name:?} is invalid (1-15 characters, no '/' or whitespace)"
    )]
    Interface { key: &'static str, name: String },
    #[error(
        "annotation sidecar.istio.io/interceptionMode: mode {0:?} is not supported (supported: REDIRECT, NONE; TPROXY is not implemented yet)"
    )]
    UnsupportedMode(String),
}

/// How connections reach the proxy. Only REDIRECT (NAT) is implemented; `None` means the
/// pod asked for no capture at all (`sidecar.istio.io/interceptionMode: NONE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterceptionMode {
    Redirect,
    None,
}

/// A port list that may be the wildcard `*`. `Ports(vec![])` means "no port".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSet {
    All,
    Ports(Vec<u16>),
}

/// A CIDR list that may be the wildcard `*`. `Cidrs(vec![])` means "no address".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpRanges {
    All,
    Cidrs(Vec<Ipv4Net>),
}

/// Everything the rule generator needs for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    pub mode: InterceptionMode,
    pub outbound_capture_port: u16,
    pub inbound_capture_port: u16,
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    pub include_inbound_ports: PortSet,
    /// Only consulted when `include_inbound_ports` is `*` (as istio-iptables does).
    pub exclude_inbound_ports: Vec<u16>,
    pub include_outbound_ip_ranges: IpRanges,
    pub exclude_outbound_ip_ranges: Vec<Ipv4Net>,
    pub include_outbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_interfaces: Vec<String>,
}

impl Default for CaptureConfig {
    /// What a pod with no capture annotations gets: everything in and out, except the
    /// proxy's own inbound ports.
    fn default() -> Self {
        Self {
            mode: InterceptionMode::Redirect,
            outbound_capture_port: port::OUTBOUND_CAPTURE,
            inbound_capture_port: port::INBOUND_CAPTURE,
            proxy_uid: PROXY_UID,
            proxy_gid: PROXY_GID,
            include_inbound_ports: PortSet::All,
            exclude_inbound_ports: port::ALWAYS_EXCLUDED_INBOUND.to_vec(),
            include_outbound_ip_ranges: IpRanges::All,
            exclude_outbound_ip_ranges: Vec::new(),
            include_outbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_interfaces: Vec::new(),
        }
    }
}

impl CaptureConfig {
    /// Reads the capture annotations of a pod. A bad value is an error naming the
    /// annotation: a pod is never captured with a configuration it did not ask for.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let mut cfg = Self::default();
        let get = |key: &str| annotations.get(key).map(|v| v.trim());

        if let Some(mode) = get(annotation::INTERCEPTION_MODE) {
            cfg.mode = match mode {
                "REDIRECT" => InterceptionMode::Redirect,
                "NONE" => InterceptionMode::None,
                other => return Err(ConfigError::UnsupportedMode(other.to_string())),
            };
        }
        if let Some(v) = get(annotation::INCLUDE_INBOUND_PORTS) {
            cfg.include_inbound_ports = parse_port_set(annotation::INCLUDE_INBOUND_PORTS, v)?;
        }
        if let Some(v) = get(annotation::EXCLUDE_INBOUND_PORTS) {
            let mut ports = parse_ports(annotation::EXCLUDE_INBOUND_PORTS, v)?;
            ports.extend(port::ALWAYS_EXCLUDED_INBOUND);
            cfg.exclude_inbound_ports = dedup(ports);
        }
        if let Some(v) = get(annotation::INCLUDE_OUTBOUND_IP_RANGES) {
            cfg.include_outbound_ip_ranges = if v == "*" {
                IpRanges::All
            } else {
                IpRanges::Cidrs(parse_cidrs(annotation::INCLUDE_OUTBOUND_IP_RANGES, v)?)
            };
        }
        if let Some(v) = get(annotation::EXCLUDE_OUTBOUND_IP_RANGES) {
            if v == "*" {
                return Err(ConfigError::WildcardExclude {
                    key: annotation::EXCLUDE_OUTBOUND_IP_RANGES,
                });
            }
            cfg.exclude_outbound_ip_ranges =
                parse_cidrs(annotation::EXCLUDE_OUTBOUND_IP_RANGES, v)?;
        }
        if let Some(v) = get(annotation::INCLUDE_OUTBOUND_PORTS) {
            cfg.include_outbound_ports = parse_ports(annotation::INCLUDE_OUTBOUND_PORTS, v)?;
        }
        if let Some(v) = get(annotation::EXCLUDE_OUTBOUND_PORTS) {
            if v == "*" {
                return Err(ConfigError::WildcardExclude {
                    key: annotation::EXCLUDE_OUTBOUND_PORTS,
                });
            }
            cfg.exclude_outbound_ports = parse_ports(annotation::EXCLUDE_OUTBOUND_PORTS, v)?;
        }
        if let Some(v) = get(annotation::EXCLUDE_INTERFACES) {
            cfg.exclude_interfaces = split(v)
                .map(|name| {
                    let valid = !name.is_empty()
                        && name.len() <= 15
                        && !name.contains(['/', ':'])
                        && !name.chars().any(char::is_whitespace);
                    if valid {
                        Ok(name.to_string())
                    } else {
                        Err(ConfigError::Interface {
                            key: annotation::EXCLUDE_INTERFACES,
                            name: name.to_string(),
                        })
                    }
                })
                .collect::<Result<_, _>>()?;
        }
        Ok(cfg)
    }

    /// Whether any rule at all is needed.
    pub fn captures(&self) -> bool {
        self.mode != InterceptionMode::None
    }
}

fn split(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn dedup(ports: Vec<u16>) -> Vec<u16> {
    let mut out = Vec::with_capacity(ports.len());
    for p in ports {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

fn parse_port_set(key: &'static str, v: &str) -> Result<PortSet, ConfigError> {
    if v == "*" {
        Ok(PortSet::All)
    } else {
        parse_ports(key, v).map(PortSet::Ports)
    }
}

fn parse_ports(key: &'static str, v: &str) -> Result<Vec<u16>, ConfigError> {
    let ports = split(v)
        .map(|p| match p.parse::<u16>() {
            Ok(0) => Err(ConfigError::Ports {
                key,
                value: v.to_string(),
                reason: "port 0 is not a port".into(),
            }),
            Ok(n) => Ok(n),
            Err(e) => Err(ConfigError::Ports {
                key,
                value: v.to_string(),
                reason: format!("{p:?}: {e}"),
            }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(dedup(ports))
}

/// IPv6 ranges are accepted (Istio allows mixed lists) but only IPv4 rules are generated:
/// the mesh's pod networks are IPv4.
fn parse_cidrs(key: &'static str, v: &str) -> Result<Vec<Ipv4Net>, ConfigError> {
    let mut out = Vec::new();
    for s in split(v) {
        let net: IpNet = s.parse().map_err(|e| ConfigError::Cidrs {
            key,
            value: v.to_string(),
            reason: format!("{s:?}: {e}"),
        })?;
        if let IpNet::V4(n) = net {
            let n = n.trunc();
            if !out.contains(&n) {
                out.push(n);
            }
        }
    }
    Ok(out)
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSet::All => f.write_str("*"),
            PortSet::Ports(p) => write_list(f, p),
        }
    }
}

fn write_list<T: fmt::Display>(f: &mut fmt::Formatter<'_>, items: &[T]) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(",")?;
        }
        write!(f, "{item}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_capture_everything_but_proxy_ports() {
        let cfg = CaptureConfig::from_annotations(&BTreeMap::new()).unwrap();
        assert_eq!(cfg, CaptureConfig::default());
        assert_eq!(cfg.exclude_inbound_ports, vec![15020, 15021, 15090]);
    }

    #[test]
    fn exclude_inbound_keeps_proxy_ports() {
        let cfg = CaptureConfig::from_annotations(&ann(&[(
            annotation::EXCLUDE_INBOUND_PORTS,
            "8080, 15021",
        )]))
        .unwrap();
        assert_eq!(cfg.exclude_inbound_ports, vec![8080, 15021, 15020, 15090]);
    }

    #[test]
    fn bad_values_name_the_annotation() {
        let err = CaptureConfig::from_annotations(&ann(&[(
            annotation::INCLUDE_INBOUND_PORTS,
            "80,http",
        )]))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("traffic.sidecar.istio.io/includeInboundPorts"),
            "{err}"
        );
        assert!(err.contains("\"http\""), "{err}");

        let err = CaptureConfig::from_annotations(&ann(&[(
            annotation::EXCLUDE_OUTBOUND_IP_RANGES,
            "10.0.0.0/33",
        )]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("excludeOutboundIPRanges"), "{err}");

        let err =
            CaptureConfig::from_annotations(&ann(&[(annotation::INTERCEPTION_MODE, "TPROXY")]))
                .unwrap_err()
                .to_string();
        assert!(err.contains("TPROXY"), "{err}");
        assert!(
            CaptureConfig::from_annotations(&ann(&[(annotation::EXCLUDE_OUTBOUND_PORTS, "*")]))
                .is_err()
        );
        assert!(
            CaptureConfig::from_annotations(&ann(&[(annotation::EXCLUDE_INBOUND_PORTS, "0")]))
                .is_err()
        );
        assert!(
            CaptureConfig::from_annotations(&ann(&[(annotation::EXCLUDE_INTERFACES, "a/b")]))
                .is_err()
        );
    }

    #[test]
    fn empty_include_means_nothing() {
        let cfg = CaptureConfig::from_annotations(&ann(&[
            (annotation::INCLUDE_INBOUND_PORTS, ""),
            (annotation::INCLUDE_OUTBOUND_IP_RANGES, ""),
        ]))
        .unwrap();
        assert_eq!(cfg.include_inbound_ports, PortSet::Ports(vec![]));
        assert_eq!(cfg.include_outbound_ip_ranges, IpRanges::Cidrs(vec![]));
    }

    #[test]
    fn cidrs_are_normalised_and_v6_skipped() {
        let cfg = CaptureConfig::from_annotations(&ann(&[(
            annotation::INCLUDE_OUTBOUND_IP_RANGES,
            "10.1.2.3/16,fd00::/8,10.1.0.0/16",
        )]))
        .unwrap();
        assert_eq!(
            cfg.include_outbound_ip_ranges,
            IpRanges::Cidrs(vec!["10.1.0.0/16".parse().unwrap()])
        );
    }

    #[test]
    fn none_mode_disables_capture() {
        let cfg = CaptureConfig::from_annotations(&ann(&[(annotation::INTERCEPTION_MODE, "NONE")]))
            .unwrap();
        assert!(!cfg.captures());
    }
}
