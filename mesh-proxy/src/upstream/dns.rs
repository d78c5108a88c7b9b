//! STRICT_DNS resolution: every name of the assignment resolved, filtered by the
//! cluster's address family.

use std::{collections::HashMap, net::SocketAddr};

use crate::config::{address::HostPort, cluster::DnsFamily, endpoint::ClusterLoadAssignment};

pub(super) async fn resolve_all(
    la: &ClusterLoadAssignment,
    family: DnsFamily,
) -> HashMap<HostPort, Vec<SocketAddr>> {
    let mut out = HashMap::new();
    for ep in la.localities.iter().flat_map(|l| l.endpoints.iter()) {
        let addrs = match &ep.address {
            HostPort::Ip(a) => vec![*a],
            HostPort::Dns { host, port } => {
                match tokio::net::lookup_host((host.as_str(), *port)).await {
                    Ok(it) => {
                        let all: Vec<SocketAddr> = it.collect();
                        filter_family(all, family)
                    }
                    Err(e) => {
                        tracing::debug!(%host, error = %e, "dns resolution failed; keeping no hosts for it");
                        Vec::new()
                    }
                }
            }
        };
        out.insert(ep.address.clone(), addrs);
    }
    out
}

pub(super) fn filter_family(mut all: Vec<SocketAddr>, family: DnsFamily) -> Vec<SocketAddr> {
    let v4: Vec<_> = all.iter().copied().filter(SocketAddr::is_ipv4).collect();
    let v6: Vec<_> = all.iter().copied().filter(SocketAddr::is_ipv6).collect();
    let mut pick = match family {
        DnsFamily::V4Only => v4,
        DnsFamily::V6Only => v6,
        DnsFamily::Auto => {
            if v6.is_empty() {
                v4
            } else {
                v6
            }
        }
        DnsFamily::V4Preferred => {
            if v4.is_empty() {
                v6
            } else {
                v4
            }
        }
        DnsFamily::All => std::mem::take(&mut all),
    };
    pick.sort();
    pick.dedup();
    pick
}
