//! Options of the upstream socket: `upstream_bind_config` (the source address, which is
//! how Istio's inbound clusters connect from 127.0.0.6 past the capture rules) and
//! `upstream_connection_options` (TCP keepalive).

use std::{net::SocketAddr, time::Duration};

use envoy_types::pb::envoy::config::{
    cluster::v3 as cpb,
    core::v3::{BindConfig, SocketAddress, TcpKeepalive as PbKeepalive, socket_address},
};

use super::unsupported_if;
use crate::config::{ConfigError, Result};

/// Where upstream connections are bound before they connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamBind {
    /// The primary source address, then the extra ones; a connection uses the first of
    /// the destination's address family (the primary when none matches, as Envoy).
    pub sources: Vec<SocketAddr>,
    /// `IP_FREEBIND`: bind to an address not (yet) configured on the host.
    pub freebind: bool,
}

impl UpstreamBind {
    /// The source address for a connection to `dst`.
    pub fn source_for(&self, dst: &SocketAddr) -> Option<SocketAddr> {
        self.sources
            .iter()
            .find(|s| s.is_ipv4() == dst.is_ipv4())
            .or(self.sources.first())
            .copied()
    }
}

/// `SO_KEEPALIVE` with optional overrides (unset fields keep the OS defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpKeepalive {
    pub probes: Option<u32>,
    pub time: Option<Duration>,
    pub interval: Option<Duration>,
}

fn source(a: &SocketAddress, field: &str) -> Result<SocketAddr> {
    unsupported_if(
        !a.resolver_name.is_empty(),
        &format!("{field}.resolver_name"),
    )?;
    unsupported_if(a.ipv4_compat, &format!("{field}.ipv4_compat"))?;
    if a.protocol != 0 {
        return Err(ConfigError::field(
            format!("{field}.protocol"),
            "only TCP source addresses are supported",
        ));
    }
    let ip = a.address.parse().map_err(|_| {
        ConfigError::field(
            format!("{field}.address"),
            format!("{:?} is not an IP address", a.address),
        )
    })?;
    let port = match &a.port_specifier {
        None => 0,
        Some(socket_address::PortSpecifier::PortValue(p)) => u16::try_from(*p)
            .map_err(|_| ConfigError::field(format!("{field}.port_value"), "port out of range"))?,
        Some(socket_address::PortSpecifier::NamedPort(_)) => {
            return Err(ConfigError::unsupported(format!("{field}.named_port")));
        }
    };
    Ok(SocketAddr::new(ip, port))
}

/// `upstream_bind_config`.
pub fn bind(b: &BindConfig) -> Result<UpstreamBind> {
    let field = "upstream_bind_config";
    unsupported_if(
        !b.socket_options.is_empty(),
        &format!("{field}.socket_options"),
    )?;
    unsupported_if(
        b.local_address_selector.is_some(),
        &format!("{field}.local_address_selector"),
    )?;
    let Some(primary) = &b.source_address else {
        return Err(ConfigError::field(
            format!("{field}.source_address"),
            "required",
        ));
    };
    let mut sources = vec![source(primary, &format!("{field}.source_address"))?];
    for (i, extra) in b.extra_source_addresses.iter().enumerate() {
        let f = format!("{field}.extra_source_addresses[{i}]");
        unsupported_if(
            extra.socket_options.is_some(),
            &format!("{f}.socket_options"),
        )?;
        let Some(a) = &extra.address else {
            return Err(ConfigError::field(format!("{f}.address"), "required"));
        };
        sources.push(source(a, &format!("{f}.address"))?);
    }
    #[allow(deprecated)]
    for (i, a) in b.additional_source_addresses.iter().enumerate() {
        sources.push(source(
            a,
            &format!("{field}.additional_source_addresses[{i}]"),
        )?);
    }
    if sources.len() > 1
        && sources[1..]
            .iter()
            .any(|s| s.is_ipv4() == sources[0].is_ipv4())
    {
        // Envoy: extra addresses must each bring another IP family.
        return Err(ConfigError::field(
            format!("{field}.extra_source_addresses"),
            "each extra source address must be of an IP family the others do not have",
        ));
    }
    Ok(UpstreamBind {
        sources,
        freebind: b.freebind.is_some_and(|f| f.value),
    })
}

/// `upstream_connection_options`.
pub fn connection_options(o: &cpb::UpstreamConnectionOptions) -> Result<Option<TcpKeepalive>> {
    let field = "upstream_connection_options";
    unsupported_if(
        o.set_local_interface_name_on_upstream_connections,
        &format!("{field}.set_local_interface_name_on_upstream_connections"),
    )?;
    unsupported_if(
        o.happy_eyeballs_config.is_some(),
        &format!("{field}.happy_eyeballs_config"),
    )?;
    Ok(o.tcp_keepalive.as_ref().map(keepalive))
}

fn keepalive(k: &PbKeepalive) -> TcpKeepalive {
    TcpKeepalive {
        probes: k.keepalive_probes.map(|v| v.value),
        time: k
            .keepalive_time
            .map(|v| Duration::from_secs(u64::from(v.value))),
        interval: k
            .keepalive_interval
            .map(|v| Duration::from_secs(u64::from(v.value))),
    }
}
