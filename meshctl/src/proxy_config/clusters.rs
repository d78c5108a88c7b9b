//! `proxy-config clusters`: `SERVICE FQDN  PORT  SUBSET  DIRECTION  TYPE  DESTINATION RULE`,
//! one row per static or active cluster, Istio's `direction|port|subset|fqdn` names split
//! into their parts, sorted by FQDN, subset, port and direction (as istioctl does).

use anyhow::{Result, bail};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use mesh_api::naming::ClusterName;
use serde_json::Value;

use super::{Output, Source, print_value, warn_rejected};
use crate::envoy::dump::{ConfigDump, Entry, Status};
use crate::istio;
use crate::table::Table;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    source: Source,
    /// Only clusters whose name contains this FQDN.
    #[arg(long)]
    fqdn: Option<String>,
    /// Only clusters for this service port.
    #[arg(long)]
    port: Option<u32>,
    /// Only clusters for this subset.
    #[arg(long)]
    subset: Option<String>,
    /// Only `inbound` or `outbound` clusters.
    #[arg(long)]
    direction: Option<String>,
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

/// istioctl's cluster filter: substring matches on the cluster name.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub fqdn: Option<String>,
    pub port: Option<u32>,
    pub subset: Option<String>,
    pub direction: Option<String>,
}

impl Filter {
    pub fn accepts(&self, name: &str) -> bool {
        let contains = |f: &Option<String>| f.as_deref().is_none_or(|s| name.contains(s));
        contains(&self.fqdn)
            && contains(&self.subset)
            && contains(&self.direction)
            && self.port.is_none_or(|p| name.contains(&format!("|{p}|")))
    }
}

pub async fn run(args: &Args) -> Result<()> {
    let fetched = args.source.config_dump(false).await?;
    let filter = Filter {
        fqdn: args.fqdn.clone(),
        port: args.port,
        subset: args.subset.clone(),
        direction: args.direction.clone(),
    };
    match args.output {
        Output::Short => print!("{}", table(&fetched.dump, &filter)?.render()),
        out => {
            let raw: Vec<Value> = selected(&fetched.dump, &filter)?
                .into_iter()
                .map(|e| e.raw)
                .collect();
            print_value(&Value::Array(raw), out)?;
        }
    }
    warn_rejected(&fetched.dump, Some("cluster"));
    Ok(())
}

/// Static and active clusters that pass the filter, sorted as istioctl sorts them.
fn selected(dump: &ConfigDump, filter: &Filter) -> Result<Vec<Entry<Cluster>>> {
    let all = dump.clusters()?;
    if all.is_empty() {
        bail!(
            "no clusters found in the config dump (hint: has the proxy received its config? `meshctl proxy-status` shows what the control plane sent)"
        );
    }
    let mut out: Vec<_> = all
        .into_iter()
        .filter(|e| e.status != Status::Warming && filter.accepts(&e.resource.name))
        .collect();
    out.sort_by_key(|e| sort_key(&e.resource.name));
    Ok(out)
}

pub(super) fn sort_key(name: &str) -> (String, String, u16, String) {
    match name.parse::<ClusterName>() {
        Ok(k) => (k.host, k.subset, k.port, k.direction.as_str().to_string()),
        Err(_) => (name.to_string(), String::new(), 0, String::new()),
    }
}

pub fn table(dump: &ConfigDump, filter: &Filter) -> Result<Table> {
    let mut t = Table::new(
        &[
            "SERVICE FQDN",
            "PORT",
            "SUBSET",
            "DIRECTION",
            "TYPE",
            "DESTINATION RULE",
        ],
        5,
    );
    for e in selected(dump, filter)? {
        let c = &e.resource;
        let dr = istio::config_ref(c.metadata.as_ref());
        match c.name.parse::<ClusterName>() {
            Ok(k) => t.row([
                k.host,
                k.port.to_string(),
                if k.subset.is_empty() {
                    "-".to_string()
                } else {
                    k.subset
                },
                k.direction.as_str().to_string(),
                discovery_type(c),
                dr,
            ]),
            Err(_) => t.row([
                c.name.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                discovery_type(c),
                dr,
            ]),
        }
    }
    Ok(t)
}

/// Envoy's discovery type name, or the custom cluster type's extension name.
fn discovery_type(c: &Cluster) -> String {
    match &c.cluster_discovery_type {
        Some(cluster::ClusterDiscoveryType::Type(t)) => cluster::DiscoveryType::try_from(*t)
            .map(|t| t.as_str_name().to_string())
            .unwrap_or_else(|_| t.to_string()),
        Some(cluster::ClusterDiscoveryType::ClusterType(custom)) => custom.name.clone(),
        None => cluster::DiscoveryType::Static.as_str_name().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_istioctl() {
        let name = "outbound|9080|v1|reviews.default.svc.cluster.local";
        assert!(Filter::default().accepts(name));
        let f = |fqdn: Option<&str>, port, subset: Option<&str>, dir: Option<&str>| Filter {
            fqdn: fqdn.map(str::to_string),
            port,
            subset: subset.map(str::to_string),
            direction: dir.map(str::to_string),
        };
        assert!(f(Some("reviews"), Some(9080), Some("v1"), Some("outbound")).accepts(name));
        assert!(!f(None, Some(908), None, None).accepts(name));
        assert!(!f(None, None, Some("v2"), None).accepts(name));
        assert!(!f(None, None, None, Some("inbound")).accepts(name));
    }
}
