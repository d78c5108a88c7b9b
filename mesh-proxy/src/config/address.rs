//! Envoy `Address` / `SocketAddress` / `CidrRange` decoding shared by listeners, clusters
//! and endpoints.

use std::net::{IpAddr, SocketAddr};

use envoy_types::pb::envoy::config::core::v3::{
    Address, CidrRange, SocketAddress, address, socket_address,
};
use ipnet::IpNet;

use super::{ConfigError, Result};

/// A TCP socket address whose host may still be a DNS name (STRICT_DNS endpoints).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPort {
    Ip(SocketAddr),
    Dns { host: String, port: u16 },
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPort::Ip(a) => a.fmt(f),
            HostPort::Dns { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// The `socket_address` of an `Address`, checking the fields we do not implement.
pub fn socket_address_of<'a>(a: &'a Address, field: &str) -> Result<&'a SocketAddress> {
    match &a.address {
        Some(address::Address::SocketAddress(s)) => Ok(s),
        Some(address::Address::Pipe(_)) => Err(ConfigError::unsupported(format!("{field}.pipe"))),
        Some(address::Address::EnvoyInternalAddress(_)) => Err(ConfigError::unsupported(format!(
            "{field}.envoy_internal_address"
        ))),
        None => Err(ConfigError::field(field, "address is required")),
    }
}

fn port_of(s: &SocketAddress, field: &str) -> Result<u16> {
    match &s.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => u16::try_from(*p).map_err(|_| {
            ConfigError::field(
                format!("{field}.port_value"),
                format!("port {p} out of range"),
            )
        }),
        Some(socket_address::PortSpecifier::NamedPort(_)) => {
            Err(ConfigError::unsupported(format!("{field}.named_port")))
        }
        None => Err(ConfigError::field(
            format!("{field}.port_value"),
            "port is required",
        )),
    }
}

fn check_socket_fields(s: &SocketAddress, field: &str) -> Result<()> {
    if s.protocol != socket_address::Protocol::Tcp as i32 {
        return Err(ConfigError::field(
            format!("{field}.protocol"),
            "only TCP is supported",
        ));
    }
    if !s.resolver_name.is_empty() {
        return Err(ConfigError::unsupported(format!("{field}.resolver_name")));
    }
    if !s.network_namespace_filepath.is_empty() {
        return Err(ConfigError::unsupported(format!(
            "{field}.network_namespace_filepath"
        )));
    }
    Ok(())
}

/// An IP socket address (listeners, EDS and STATIC endpoints).
pub fn socket_addr(a: &Address, field: &str) -> Result<SocketAddr> {
    let s = socket_address_of(a, field)?;
    let field = format!("{field}.socket_address");
    check_socket_fields(s, &field)?;
    let port = port_of(s, &field)?;
    let ip: IpAddr = s.address.parse().map_err(|_| {
        ConfigError::field(
            format!("{field}.address"),
            format!("{:?} is not an IP address", s.address),
        )
    })?;
    Ok(SocketAddr::new(ip, port))
}

/// An IP or DNS-name socket address (STRICT_DNS endpoints).
pub fn host_port(a: &Address, field: &str) -> Result<HostPort> {
    let s = socket_address_of(a, field)?;
    let field = format!("{field}.socket_address");
    check_socket_fields(s, &field)?;
    let port = port_of(s, &field)?;
    if s.address.is_empty() {
        return Err(ConfigError::field(
            format!("{field}.address"),
            "address is required",
        ));
    }
    Ok(match s.address.parse::<IpAddr>() {
        Ok(ip) => HostPort::Ip(SocketAddr::new(ip, port)),
        Err(_) => HostPort::Dns {
            host: s.address.clone(),
            port,
        },
    })
}

/// A CIDR range; Envoy masks the host bits (`10.1.2.3/8` means `10.0.0.0/8`).
pub fn cidr(c: &CidrRange, field: &str) -> Result<IpNet> {
    let ip: IpAddr = c.address_prefix.parse().map_err(|_| {
        ConfigError::field(
            format!("{field}.address_prefix"),
            format!("{:?} is not an IP address", c.address_prefix),
        )
    })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = c.prefix_len.map(|v| v.value).unwrap_or(max);
    let len = u8::try_from(len)
        .ok()
        .filter(|l| u32::from(*l) <= max)
        .ok_or_else(|| {
            ConfigError::field(
                format!("{field}.prefix_len"),
                format!("{len} is out of range for {ip}"),
            )
        })?;
    IpNet::new(ip, len)
        .map(|n| n.trunc())
        .map_err(|e| ConfigError::field(format!("{field}.prefix_len"), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::UInt32Value;

    fn sa(addr: &str, port: u32) -> Address {
        Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: addr.into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn parses_ip_and_dns() {
        assert_eq!(
            socket_addr(&sa("::1", 80), "address").unwrap(),
            "[::1]:80".parse().unwrap()
        );
        assert_eq!(
            host_port(&sa("example.local", 53), "address").unwrap(),
            HostPort::Dns {
                host: "example.local".into(),
                port: 53
            }
        );
        let e = socket_addr(&sa("example.local", 80), "address").unwrap_err();
        assert_eq!(e.field, "address.socket_address.address");
        let e = socket_addr(&sa("1.2.3.4", 70000), "address").unwrap_err();
        assert_eq!(e.field, "address.socket_address.port_value");
    }

    #[test]
    fn cidr_masks_host_bits() {
        let c = CidrRange {
            address_prefix: "10.1.2.3".into(),
            prefix_len: Some(UInt32Value { value: 8 }),
        };
        assert_eq!(
            cidr(&c, "x").unwrap(),
            "10.0.0.0/8".parse::<IpNet>().unwrap()
        );
        let c = CidrRange {
            address_prefix: "10.1.2.3".into(),
            prefix_len: Some(UInt32Value { value: 33 }),
        };
        assert!(cidr(&c, "x").is_err());
        let c = CidrRange {
            address_prefix: "::1".into(),
            prefix_len: None,
        };
        assert_eq!(cidr(&c, "x").unwrap(), "::1/128".parse::<IpNet>().unwrap());
    }
}
