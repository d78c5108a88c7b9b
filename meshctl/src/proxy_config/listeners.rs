//! `proxy-config listeners`: `ADDRESSES  PORT  MATCH  DESTINATION`, one row per filter
//! chain of every static or active listener (istioctl's verbose view; `--verbose=false`
//! gives `ADDRESSES  PORT  TYPE`), sorted by port, address and type.

use anyhow::{Result, bail};
use envoy_types::pb::envoy::config::core::v3::{
    Address, address, envoy_internal_address, socket_address,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter as NetworkFilter, FilterChain, FilterChainMatch, Listener, filter,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use serde_json::Value;

use super::routes::{cluster_destination, describe_inline};
use super::{Output, Source, print_value, warn_rejected};
use crate::envoy::dump::{ConfigDump, Entry, Status};
use crate::envoy::unpack;
use crate::table::Table;

const HCM: &str = "envoy.filters.network.http_connection_manager";
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
const BLACK_HOLE: &str = "BlackHoleCluster";

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    source: Source,
    /// Only listeners bound to this address.
    #[arg(long)]
    address: Option<String>,
    /// Only listeners on this port.
    #[arg(long)]
    port: Option<u32>,
    /// Only listeners of this type: HTTP, TCP, HTTP+TCP or UNKNOWN.
    #[arg(long = "type")]
    kind: Option<String>,
    /// One row per filter chain with its match and destination (`false`: one per listener).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    verbose: bool,
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub address: Option<String>,
    pub port: Option<u32>,
    pub kind: Option<String>,
}

impl Filter {
    fn accepts(&self, l: &Listener) -> bool {
        self.address
            .as_deref()
            .is_none_or(|a| addresses(l).iter().any(|x| x.eq_ignore_ascii_case(a)))
            && self.port.is_none_or(|p| port(l) == p)
            && self
                .kind
                .as_deref()
                .is_none_or(|k| listener_type(l).eq_ignore_ascii_case(k))
    }
}

pub async fn run(args: &Args) -> Result<()> {
    let fetched = args.source.config_dump(false).await?;
    let filter = Filter {
        address: args.address.clone(),
        port: args.port,
        kind: args.kind.clone(),
    };
    match args.output {
        Output::Short => print!("{}", table(&fetched.dump, &filter, args.verbose)?.render()),
        out => {
            let raw: Vec<Value> = selected(&fetched.dump, &filter)?
                .into_iter()
                .map(|e| e.raw)
                .collect();
            print_value(&Value::Array(raw), out)?;
        }
    }
    warn_rejected(&fetched.dump, Some("listener"));
    Ok(())
}

fn selected(dump: &ConfigDump, filter: &Filter) -> Result<Vec<Entry<Listener>>> {
    let all = dump.listeners()?;
    if all.is_empty() {
        bail!(
            "no listeners found in the config dump (hint: has the proxy received its config? `meshctl proxy-status` shows what the control plane sent)"
        );
    }
    let mut out: Vec<_> = all
        .into_iter()
        .filter(|e| e.status != Status::Warming && filter.accepts(&e.resource))
        .collect();
    out.sort_by_key(|e| {
        (
            port(&e.resource),
            address_of(&e.resource),
            listener_type(&e.resource),
        )
    });
    Ok(out)
}

pub fn table(dump: &ConfigDump, filter: &Filter, verbose: bool) -> Result<Table> {
    let entries = selected(dump, filter)?;
    let mut t = if verbose {
        Table::new(&["ADDRESSES", "PORT", "MATCH", "DESTINATION"], 1)
    } else {
        Table::new(&["ADDRESSES", "PORT", "TYPE"], 1)
    };
    for e in &entries {
        let l = &e.resource;
        let addrs = addresses(l).join(",");
        let port = port(l).to_string();
        if verbose {
            let mut rows: Vec<(String, String)> = chains(l)
                .map(|fc| {
                    (
                        describe_chain_match(fc.filter_chain_match.as_ref()),
                        destination(&fc.filters),
                    )
                })
                .collect();
            rows.sort_by(|a, b| b.1.cmp(&a.1));
            for (m, d) in rows {
                t.row([addrs.clone(), port.clone(), m, d]);
            }
        } else {
            t.row([addrs, port, listener_type(l).to_string()]);
        }
    }
    Ok(t)
}

fn chains(l: &Listener) -> impl Iterator<Item = &FilterChain> {
    l.filter_chains
        .iter()
        .chain(l.default_filter_chain.as_ref())
}

fn render_address(a: Option<&Address>) -> String {
    match a.and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(s)) => s.address.clone(),
        Some(address::Address::Pipe(p)) => p.path.clone(),
        Some(address::Address::EnvoyInternalAddress(i)) => match &i.address_name_specifier {
            Some(envoy_internal_address::AddressNameSpecifier::ServerListenerName(n)) => {
                format!("envoy://{n}/{}", i.endpoint_id)
            }
            None => "envoy://".into(),
        },
        None => String::new(),
    }
}

fn address_of(l: &Listener) -> String {
    render_address(l.address.as_ref())
}

fn addresses(l: &Listener) -> Vec<String> {
    std::iter::once(address_of(l))
        .chain(
            l.additional_addresses
                .iter()
                .map(|a| render_address(a.address.as_ref())),
        )
        .collect()
}

fn port(l: &Listener) -> u32 {
    match l.address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(s)) => match s.port_specifier {
            Some(socket_address::PortSpecifier::PortValue(p)) => p,
            _ => 0,
        },
        _ => 0,
    }
}

fn is_filter(f: &NetworkFilter, name: &str, message: &str) -> bool {
    f.name == name
        || matches!(&f.config_type, Some(filter::ConfigType::TypedConfig(a)) if a.type_url.ends_with(message))
}

fn tcp_proxy(f: &NetworkFilter) -> Option<TcpProxy> {
    if !is_filter(f, TCP_PROXY, "tcp_proxy.v3.TcpProxy") {
        return None;
    }
    match &f.config_type {
        Some(filter::ConfigType::TypedConfig(a)) => unpack::<TcpProxy>(a).ok(),
        _ => None,
    }
}

fn tcp_cluster(t: &TcpProxy) -> String {
    match &t.cluster_specifier {
        Some(tcp_proxy::ClusterSpecifier::Cluster(c)) => c.clone(),
        Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => w
            .clusters
            .iter()
            .map(|c| format!("{} ({})", c.name, c.weight))
            .collect::<Vec<_>>()
            .join(", "),
        None => String::new(),
    }
}

/// HTTP, TCP, HTTP+TCP or UNKNOWN, from the filters of all chains (a TCP proxy to the
/// black hole does not count: it is how Istio drops traffic).
fn listener_type(l: &Listener) -> &'static str {
    let (mut http, mut tcp) = (0, 0);
    for f in chains(l).flat_map(|c| &c.filters) {
        if is_filter(f, HCM, "HttpConnectionManager") {
            http += 1;
        } else if let Some(t) = tcp_proxy(f)
            && tcp_cluster(&t) != BLACK_HOLE
        {
            tcp += 1;
        }
    }
    match (http > 0, tcp > 0) {
        (true, false) => "HTTP",
        (true, true) => "HTTP+TCP",
        (false, true) => "TCP",
        (false, false) => "UNKNOWN",
    }
}

/// Where a chain's traffic goes: `Route: <rds name>`, an inline route summary, or
/// `Cluster: <name>`.
fn destination(filters: &[NetworkFilter]) -> String {
    for f in filters {
        if is_filter(f, HCM, "HttpConnectionManager") {
            let Some(filter::ConfigType::TypedConfig(a)) = &f.config_type else {
                return "HTTP".into();
            };
            return match unpack::<HttpConnectionManager>(a) {
                Ok(hcm) => match &hcm.route_specifier {
                    Some(RouteSpecifier::RouteConfig(rc)) => describe_inline(rc),
                    Some(RouteSpecifier::Rds(rds)) if !rds.route_config_name.is_empty() => {
                        format!("Route: {}", rds.route_config_name)
                    }
                    _ => "HTTP".into(),
                },
                Err(e) => e.to_string(),
            };
        }
        if let Some(t) = tcp_proxy(f) {
            let cluster = tcp_cluster(&t);
            if cluster != BLACK_HOLE {
                return cluster_destination(&cluster);
            }
        }
    }
    "Non-HTTP/Non-TCP".into()
}

/// istioctl's filter-chain match summary: SNI, transport, ALPN (named when it is one of
/// Istio's standard sets), destination prefixes and port; `ALL` when unconstrained.
fn describe_chain_match(m: Option<&FilterChainMatch>) -> String {
    let default = FilterChainMatch::default();
    let m = m.unwrap_or(&default);
    let mut d = Vec::new();
    if !m.server_names.is_empty() {
        d.push(format!("SNI: {}", m.server_names.join(",")));
    }
    if !m.transport_protocol.is_empty() {
        d.push(format!("Trans: {}", m.transport_protocol));
    }
    if !m.application_protocols.is_empty() {
        const KNOWN: &[(&str, &[&str])] = &[
            (
                "App: HTTP TLS",
                &[
                    "http/1.0",
                    "http/1.1",
                    "h2c",
                    "istio-http/1.0",
                    "istio-http/1.1",
                    "istio-h2",
                ],
            ),
            (
                "App: Istio HTTP Plain",
                &["istio", "istio-http/1.0", "istio-http/1.1", "istio-h2"],
            ),
            ("App: TCP TLS", &["istio-peer-exchange", "istio"]),
            ("App: HTTP", &["http/1.0", "http/1.1", "h2c"]),
        ];
        let named = KNOWN.iter().find(|(_, set)| {
            m.application_protocols
                .iter()
                .map(String::as_str)
                .eq(set.iter().copied())
        });
        d.push(match named {
            Some((label, _)) => (*label).to_string(),
            None => format!("App: {}", m.application_protocols.join(",")),
        });
    }
    let port = m
        .destination_port
        .as_ref()
        .map(|p| format!(":{}", p.value))
        .unwrap_or_default();
    if !m.prefix_ranges.is_empty() {
        let ranges: Vec<String> = m
            .prefix_ranges
            .iter()
            .map(|r| {
                format!(
                    "{}/{}",
                    r.address_prefix,
                    r.prefix_len.as_ref().map_or(0, |l| l.value)
                )
            })
            .collect();
        d.push(format!("Addr: {}{port}", ranges.join(",")));
    } else if !port.is_empty() {
        d.push(format!("Addr: *{port}"));
    }
    if d.is_empty() {
        "ALL".into()
    } else {
        d.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn chain_matches_like_istioctl() {
        let m: FilterChainMatch = crate::envoy::decode(&json!({
            "destination_port": 9080, "transport_protocol": "raw_buffer",
            "application_protocols": ["http/1.0", "http/1.1", "h2c"],
            "prefix_ranges": [{"address_prefix": "10.250.0.5", "prefix_len": 32}]
        }))
        .unwrap();
        assert_eq!(
            describe_chain_match(Some(&m)),
            "Trans: raw_buffer; App: HTTP; Addr: 10.250.0.5/32:9080"
        );
        let m: FilterChainMatch = crate::envoy::decode(
            &json!({"server_names": ["a.example.com"], "application_protocols": ["h2"]}),
        )
        .unwrap();
        assert_eq!(
            describe_chain_match(Some(&m)),
            "SNI: a.example.com; App: h2"
        );
        assert_eq!(describe_chain_match(None), "ALL");
    }

    #[test]
    fn types_and_destinations() {
        let l: Listener = crate::envoy::decode(&json!({
            "name": "virtualOutbound",
            "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15001}},
            "filter_chains": [
                {"filter_chain_match": {"prefix_ranges": [{"address_prefix": "10.250.0.5", "prefix_len": 32}]},
                 "filters": [{"name": TCP_PROXY, "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "stat_prefix": "b", "cluster": "BlackHoleCluster"}}]},
                {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "x", "rds": {"route_config_name": "9080", "config_source": {"ads": {}}}}}]}
            ],
            "default_filter_chain": {"filters": [{"name": TCP_PROXY, "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "stat_prefix": "p", "cluster": "PassthroughCluster"}}]}
        }))
        .unwrap();
        assert_eq!(listener_type(&l), "HTTP+TCP");
        let dests: Vec<String> = chains(&l).map(|c| destination(&c.filters)).collect();
        assert_eq!(
            dests,
            ["Non-HTTP/Non-TCP", "Route: 9080", "PassthroughCluster"]
        );
        assert_eq!(port(&l), 15001);
        assert!(
            Filter {
                kind: Some("http+tcp".into()),
                ..Default::default()
            }
            .accepts(&l)
        );
        assert!(
            !Filter {
                port: Some(80),
                ..Default::default()
            }
            .accepts(&l)
        );
    }
}
