//! `Listener` (LDS) as a domain type: addresses, listener filters, filter chains with a
//! precompiled matcher, and each chain's terminal network filter (tcp_proxy or the HTTP
//! connection manager).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use envoy_types::pb::{
    envoy::config::{
        core::v3::{TrafficDirection as PbDirection, TransportSocket, transport_socket},
        listener::v3::{
            self as lpb, filter, filter_chain_match::ConnectionSourceType, listener_filter,
        },
    },
    google::protobuf::Any,
};

use super::{
    ConfigError, Result,
    address::{cidr, socket_addr},
    http::{HttpConnectionManager, RouteSource},
    opt_duration,
    tcp_proxy::{TCP_PROXY_TYPE_URL, TcpProxy},
};
use crate::{
    accesslog::AccessLogConfig,
    listener::filter_chain::{ChainMatch, FilterChainMatcher, SourceType},
};

const HCM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TLS_INSPECTOR: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
const HTTP_INSPECTOR: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector";
const ORIGINAL_DST: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst";
const RAW_BUFFER: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";

/// Envoy's default `listener_filters_timeout`.
pub const DEFAULT_LISTENER_FILTERS_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub struct Listener {
    pub name: Arc<str>,
    pub address: SocketAddr,
    pub additional_addresses: Vec<SocketAddr>,
    /// `false`: the listener only receives connections handed off by a
    /// `use_original_dst` listener (Istio's per-service outbound listeners).
    pub bind_to_port: bool,
    pub use_original_dst: bool,
    pub listener_filters: ListenerFilters,
    /// `None`: wait for the listener filters without limit (Envoy: `0s`).
    pub listener_filters_timeout: Option<Duration>,
    pub continue_on_listener_filters_timeout: bool,
    pub filter_chains: Vec<Arc<FilterChain>>,
    pub matcher: FilterChainMatcher,
    pub default_filter_chain: Option<Arc<FilterChain>>,
    pub traffic_direction: TrafficDirection,
    /// `drain_type: MODIFY_ONLY`: `/drain_listeners` leaves this listener alone.
    pub modify_only_drain: bool,
    pub tcp_backlog: Option<u32>,
    pub per_connection_buffer_limit_bytes: u32,
    /// Access logs for connections that match no filter chain.
    pub access_log: Vec<Arc<AccessLogConfig>>,
    /// RDS route configurations the listener's HCMs reference (for warming).
    pub rds_names: Vec<Arc<str>>,
    /// Envoy's stats label for the listener (`0.0.0.0_15001`).
    pub stat_name: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerFilters {
    pub original_dst: bool,
    pub tls_inspector: bool,
    pub http_inspector: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TrafficDirection {
    #[default]
    Unspecified,
    Inbound,
    Outbound,
}

#[derive(Debug)]
pub struct FilterChain {
    pub name: Arc<str>,
    pub filter_chain_match: ChainMatch,
    pub terminal: Terminal,
    /// Equal for byte-identical chains (see [`Listener::fingerprint_chains`]); 0 until set.
    pub fingerprint: u64,
}

/// The terminal network filter of a chain.
#[derive(Debug, Clone)]
pub enum Terminal {
    TcpProxy(Arc<TcpProxy>),
    Http(Arc<HttpConnectionManager>),
}

impl Listener {
    /// Fingerprints the chains of a listener converted from `encoded` (its bytes as
    /// received), so an in-place update drains only the connections of changed chains.
    pub fn fingerprint_chains(&mut self, encoded: &[u8]) -> Result<()> {
        let (chains, default) = fingerprint::chain_fingerprints(encoded)
            .map_err(|e| ConfigError::field("filter_chains", format!("cannot decode: {e}")))?;
        for (chain, fp) in self.filter_chains.iter_mut().zip(chains) {
            if let Some(c) = Arc::get_mut(chain) {
                c.fingerprint = fp;
            }
        }
        if let (Some(chain), Some(fp)) = (self.default_filter_chain.as_mut(), default)
            && let Some(c) = Arc::get_mut(chain)
        {
            c.fingerprint = fp;
        }
        Ok(())
    }

    /// Whether two versions can share one bound socket (then the listener is updated in
    /// place and its connections keep running).
    pub fn same_socket(&self, other: &Listener) -> bool {
        self.address == other.address
            && self.additional_addresses == other.additional_addresses
            && self.bind_to_port == other.bind_to_port
            && self.tcp_backlog == other.tcp_backlog
    }
}

impl TryFrom<&lpb::Listener> for Listener {
    type Error = ConfigError;

    fn try_from(l: &lpb::Listener) -> Result<Self> {
        convert(l).map_err(|e| ConfigError {
            resource: l.name.clone(),
            ..e
        })
    }
}

fn unsupported_if(cond: bool, field: &str) -> Result<()> {
    if cond {
        Err(ConfigError::unsupported(field))
    } else {
        Ok(())
    }
}

fn convert(l: &lpb::Listener) -> Result<Listener> {
    if l.name.is_empty() {
        return Err(ConfigError::field("name", "listener name is required"));
    }
    unsupported_if(l.listener_specifier.is_some(), "internal_listener")?;
    unsupported_if(l.api_listener.is_some(), "api_listener")?;
    unsupported_if(l.udp_listener_config.is_some(), "udp_listener_config")?;
    unsupported_if(l.fcds_config.is_some(), "fcds_config")?;
    unsupported_if(l.filter_chain_matcher.is_some(), "filter_chain_matcher")?;
    unsupported_if(l.transparent.is_some_and(|b| b.value), "transparent")?;
    unsupported_if(l.freebind.is_some_and(|b| b.value), "freebind")?;
    unsupported_if(!l.socket_options.is_empty(), "socket_options")?;
    unsupported_if(
        l.tcp_fast_open_queue_length.is_some(),
        "tcp_fast_open_queue_length",
    )?;
    unsupported_if(l.enable_mptcp, "enable_mptcp")?;
    unsupported_if(l.tcp_keepalive.is_some(), "tcp_keepalive")?;
    // Descriptive or meaningless for a work-stealing runtime: stat_prefix, metadata,
    // stats_matcher, connection_balance_config, reuse_port/enable_reuse_port,
    // max_connections_to_accept_per_socket_event, ignore_global_conn_limit,
    // bypass_overload_manager, per_connection_buffer_high_watermark_timeout.

    let address = socket_addr(
        l.address
            .as_ref()
            .ok_or_else(|| ConfigError::field("address", "address is required"))?,
        "address",
    )?;
    let mut additional_addresses = Vec::with_capacity(l.additional_addresses.len());
    for (i, a) in l.additional_addresses.iter().enumerate() {
        let field = format!("additional_addresses[{i}]");
        unsupported_if(
            a.socket_options.is_some(),
            &format!("{field}.socket_options"),
        )?;
        let addr = a
            .address
            .as_ref()
            .ok_or_else(|| ConfigError::field(format!("{field}.address"), "address is required"))?;
        additional_addresses.push(socket_addr(addr, &format!("{field}.address"))?);
    }

    let listener_filters = listener_filters(l)?;
    let listener_filters_timeout =
        match opt_duration(&l.listener_filters_timeout, "listener_filters_timeout")? {
            None => Some(DEFAULT_LISTENER_FILTERS_TIMEOUT),
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
        };

    let mut rds_names = Vec::new();
    let mut filter_chains = Vec::with_capacity(l.filter_chains.len());
    for (i, fc) in l.filter_chains.iter().enumerate() {
        let chain =
            filter_chain(fc, &mut rds_names).map_err(|e| e.at(format!("filter_chains[{i}]")))?;
        filter_chains.push(Arc::new(chain));
    }
    let default_filter_chain = match &l.default_filter_chain {
        Some(fc) => {
            if fc.filter_chain_match.is_some() {
                return Err(ConfigError::field(
                    "default_filter_chain.filter_chain_match",
                    "must not be set on the default chain",
                ));
            }
            Some(Arc::new(
                filter_chain(fc, &mut rds_names).map_err(|e| e.at("default_filter_chain"))?,
            ))
        }
        None => None,
    };
    if filter_chains.is_empty() && default_filter_chain.is_none() {
        return Err(ConfigError::field(
            "filter_chains",
            "a listener needs at least one filter chain or a default_filter_chain",
        ));
    }
    let matches: Vec<ChainMatch> = filter_chains
        .iter()
        .map(|c| c.filter_chain_match.clone())
        .collect();
    let matcher = FilterChainMatcher::new(&matches).map_err(|d| {
        ConfigError::field(
            format!("filter_chains[{}].filter_chain_match", d.second),
            format!("multiple filter chains with the same matching rules are defined (same as filter_chains[{}])", d.first),
        )
    })?;
    // TLS-dependent matching needs the tls_inspector, as Envoy warns; without it the
    // chain could never match, so say so instead of silently black-holing.
    for (i, c) in filter_chains.iter().enumerate() {
        let m = &c.filter_chain_match;
        if !listener_filters.tls_inspector
            && (!m.server_names.is_empty() || m.transport_protocol == "tls")
        {
            return Err(ConfigError::field(
                format!("filter_chains[{i}].filter_chain_match"),
                "matches on server_names or transport_protocol \"tls\" need the tls_inspector listener filter",
            ));
        }
    }

    let traffic_direction = match PbDirection::try_from(l.traffic_direction) {
        Ok(PbDirection::Inbound) => TrafficDirection::Inbound,
        Ok(PbDirection::Outbound) => TrafficDirection::Outbound,
        _ => TrafficDirection::Unspecified,
    };
    let mut access_log = Vec::with_capacity(l.access_log.len());
    for (i, a) in l.access_log.iter().enumerate() {
        access_log.push(Arc::new(
            AccessLogConfig::try_from_proto(a).map_err(|e| e.at(format!("access_log[{i}]")))?,
        ));
    }
    rds_names.sort();
    rds_names.dedup();
    Ok(Listener {
        name: l.name.as_str().into(),
        address,
        additional_addresses,
        bind_to_port: l.bind_to_port.map(|b| b.value).unwrap_or(true),
        use_original_dst: l.use_original_dst.map(|b| b.value).unwrap_or(false),
        listener_filters,
        listener_filters_timeout,
        continue_on_listener_filters_timeout: l.continue_on_listener_filters_timeout,
        filter_chains,
        matcher,
        default_filter_chain,
        traffic_direction,
        modify_only_drain: l.drain_type == lpb::listener::DrainType::ModifyOnly as i32,
        tcp_backlog: l.tcp_backlog_size.map(|v| v.value),
        per_connection_buffer_limit_bytes: l
            .per_connection_buffer_limit_bytes
            .map(|v| v.value)
            .unwrap_or(1024 * 1024),
        access_log,
        rds_names,
        stat_name: stat_name(address),
    })
}

/// Envoy's listener stats name: `0.0.0.0_15001`, `[::]_80` becomes `::_80`.
fn stat_name(a: SocketAddr) -> String {
    format!("{}_{}", a.ip(), a.port())
}

fn listener_filters(l: &lpb::Listener) -> Result<ListenerFilters> {
    let mut out = ListenerFilters::default();
    for (i, f) in l.listener_filters.iter().enumerate() {
        let field = format!("listener_filters[{i}]");
        unsupported_if(
            f.filter_disabled.is_some(),
            &format!("{field}.filter_disabled"),
        )?;
        let type_url = match &f.config_type {
            Some(listener_filter::ConfigType::TypedConfig(any)) => any.type_url.as_str(),
            Some(listener_filter::ConfigType::ConfigDiscovery(_)) => {
                return Err(ConfigError::unsupported(format!(
                    "{field}.config_discovery"
                )));
            }
            None => "",
        };
        // Envoy still accepts well-known names without a typed config.
        match (type_url, f.name.as_str()) {
            (TLS_INSPECTOR, _)
            | ("", "envoy.filters.listener.tls_inspector" | "envoy.listener.tls_inspector") => {
                out.tls_inspector = true;
            }
            (HTTP_INSPECTOR, _)
            | ("", "envoy.filters.listener.http_inspector" | "envoy.listener.http_inspector") => {
                out.http_inspector = true;
            }
            (ORIGINAL_DST, _)
            | ("", "envoy.filters.listener.original_dst" | "envoy.listener.original_dst") => {
                out.original_dst = true;
            }
            _ => {
                return Err(ConfigError::field(
                    format!("{field}.typed_config"),
                    format!("listener filter {:?} ({type_url}) is not supported", f.name),
                ));
            }
        }
    }
    Ok(out)
}

fn filter_chain(fc: &lpb::FilterChain, rds_names: &mut Vec<Arc<str>>) -> Result<FilterChain> {
    #[allow(deprecated)]
    unsupported_if(
        fc.use_proxy_proto.is_some_and(|b| b.value),
        "use_proxy_proto",
    )?;
    if let Some(ts) = &fc.transport_socket {
        transport_socket(ts)?;
    }
    let filter_chain_match = match &fc.filter_chain_match {
        Some(m) => chain_match(m).map_err(|e| e.at("filter_chain_match"))?,
        None => ChainMatch::default(),
    };
    let Some((last, rest)) = fc.filters.split_last() else {
        return Err(ConfigError::field(
            "filters",
            "a filter chain needs a terminal filter (tcp_proxy or http_connection_manager)",
        ));
    };
    if let Some((i, f)) = rest.iter().enumerate().next() {
        // No non-terminal network filters are implemented yet (network RBAC comes later).
        return Err(ConfigError::field(
            format!("filters[{i}]"),
            format!(
                "network filter {:?} ({}) is not supported",
                f.name,
                type_url_of(f)
            ),
        ));
    }
    let idx = fc.filters.len() - 1;
    let terminal = terminal(last, rds_names).map_err(|e| e.at(format!("filters[{idx}]")))?;
    Ok(FilterChain {
        name: fc.name.as_str().into(),
        filter_chain_match,
        terminal,
        fingerprint: 0,
    })
}

fn type_url_of(f: &lpb::Filter) -> &str {
    match &f.config_type {
        Some(filter::ConfigType::TypedConfig(any)) => &any.type_url,
        _ => "",
    }
}

fn terminal(f: &lpb::Filter, rds_names: &mut Vec<Arc<str>>) -> Result<Terminal> {
    let any: &Any = match &f.config_type {
        Some(filter::ConfigType::TypedConfig(any)) => any,
        Some(filter::ConfigType::ConfigDiscovery(_)) => {
            return Err(ConfigError::unsupported("config_discovery"));
        }
        None => {
            return Err(ConfigError::field(
                "typed_config",
                format!("filter {:?} has no typed_config", f.name),
            ));
        }
    };
    match any.type_url.as_str() {
        TCP_PROXY_TYPE_URL => Ok(Terminal::TcpProxy(Arc::new(TcpProxy::from_any(any)?))),
        HCM_TYPE_URL => {
            let hcm = HttpConnectionManager::from_any(any).map_err(|e| {
                // The HCM's errors carry its own field path; it sits under typed_config.
                ConfigError {
                    resource: String::new(),
                    ..e
                }
                .at("typed_config")
            })?;
            if let RouteSource::Rds(name) = &hcm.routes {
                rds_names.push(name.clone());
            }
            Ok(Terminal::Http(Arc::new(hcm)))
        }
        other => Err(ConfigError::field(
            "typed_config",
            format!(
                "network filter {:?} ({other}) is not supported as a terminal filter",
                f.name
            ),
        )),
    }
}

fn transport_socket(ts: &TransportSocket) -> Result<()> {
    match &ts.config_type {
        Some(transport_socket::ConfigType::TypedConfig(any)) if any.type_url == RAW_BUFFER => {
            Ok(())
        }
        None if ts.name.ends_with("raw_buffer") => Ok(()),
        _ => Err(ConfigError::field(
            "transport_socket",
            format!(
                "transport socket {:?} is not supported yet (only raw_buffer; TLS termination comes later)",
                ts.name
            ),
        )),
    }
}

fn chain_match(m: &lpb::FilterChainMatch) -> Result<ChainMatch> {
    unsupported_if(!m.address_suffix.is_empty(), "address_suffix")?;
    unsupported_if(m.suffix_len.is_some(), "suffix_len")?;
    let destination_port = m
        .destination_port
        .map(|p| {
            u16::try_from(p.value)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    ConfigError::field(
                        "destination_port",
                        format!("{} is not a valid port", p.value),
                    )
                })
        })
        .transpose()?;
    let ranges = |v: &[envoy_types::pb::envoy::config::core::v3::CidrRange],
                  field: &str|
     -> Result<Vec<ipnet::IpNet>> {
        let mut out: Vec<ipnet::IpNet> = v
            .iter()
            .enumerate()
            .map(|(i, c)| cidr(c, &format!("{field}[{i}]")))
            .collect::<Result<_>>()?;
        out.sort();
        out.dedup();
        Ok(out)
    };
    let source_type = match ConnectionSourceType::try_from(m.source_type) {
        Ok(ConnectionSourceType::Any) => SourceType::Any,
        Ok(ConnectionSourceType::SameIpOrLoopback) => SourceType::Local,
        Ok(ConnectionSourceType::External) => SourceType::External,
        Err(_) => return Err(ConfigError::field("source_type", "unknown value")),
    };
    let mut source_ports = Vec::with_capacity(m.source_ports.len());
    for p in &m.source_ports {
        source_ports.push(
            u16::try_from(*p).map_err(|_| {
                ConfigError::field("source_ports", format!("{p} is not a valid port"))
            })?,
        );
    }
    source_ports.sort();
    source_ports.dedup();
    let mut server_names: Vec<String> = m
        .server_names
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    for s in &server_names {
        if s.is_empty()
            || (s.contains('*') && !(s.starts_with("*.") && s[1..].matches('*').count() == 0))
        {
            return Err(ConfigError::field(
                "server_names",
                format!("{s:?}: only leading \"*.\" wildcards are supported"),
            ));
        }
    }
    server_names.sort();
    server_names.dedup();
    let mut application_protocols = m.application_protocols.clone();
    application_protocols.sort();
    application_protocols.dedup();
    Ok(ChainMatch {
        destination_port,
        prefix_ranges: ranges(&m.prefix_ranges, "prefix_ranges")?,
        server_names,
        transport_protocol: m.transport_protocol.clone(),
        application_protocols,
        direct_source_prefix_ranges: ranges(
            &m.direct_source_prefix_ranges,
            "direct_source_prefix_ranges",
        )?,
        source_type,
        source_prefix_ranges: ranges(&m.source_prefix_ranges, "source_prefix_ranges")?,
        source_ports,
    })
}

mod fingerprint;

#[cfg(test)]
mod tests;
