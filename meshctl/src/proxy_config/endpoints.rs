//! `proxy-config endpoints`: `ENDPOINT  STATUS  OUTLIER CHECK  CLUSTER` from the proxy's
//! `/clusters?format=json` (the hosts the load balancer picks from, with EDS health and
//! outlier ejection), sorted by address, port and cluster.
//!
//! With `-f`, the file may be that `/clusters?format=json` output, or a config dump taken
//! with `?include_eds` (istioctl's file mode: `ENDPOINT  STATUS  LOCALITY  CLUSTER`).

use anyhow::{Context, Result, bail};
use envoy_types::pb::envoy::admin::v3::{Clusters, HostStatus};
use envoy_types::pb::envoy::config::core::v3::{
    Address, HealthStatus, Locality, address, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{LbEndpoint, lb_endpoint};
use http::Method;
use serde_json::Value;

use super::{Output, Source, print_value};
use crate::envoy::decode;
use crate::envoy::dump::{ConfigDump, field};
use crate::table::Table;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    source: Source,
    /// Only endpoints with this IP address.
    #[arg(long)]
    address: Option<String>,
    /// Only endpoints on this port.
    #[arg(long)]
    port: Option<u32>,
    /// Only endpoints of this cluster (its full name).
    #[arg(long)]
    cluster: Option<String>,
    /// Only endpoints with this health status (HEALTHY, UNHEALTHY, DRAINING, ...).
    #[arg(long)]
    status: Option<String>,
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Debug, Default, Clone)]
struct Filter {
    address: Option<String>,
    port: Option<u32>,
    cluster: Option<String>,
    status: Option<String>,
}

impl Filter {
    fn accepts(&self, addr: &(String, u32), status: &str, cluster: &str) -> bool {
        let eq =
            |f: &Option<String>, v: &str| f.as_deref().is_none_or(|f| f.eq_ignore_ascii_case(v));
        eq(&self.address, &addr.0)
            && self.port.is_none_or(|p| p == addr.1)
            && eq(&self.cluster, cluster)
            && eq(&self.status, status)
    }
}

pub async fn run(args: &Args) -> Result<()> {
    let filter = Filter {
        address: args.address.clone(),
        port: args.port,
        cluster: args.cluster.clone(),
        status: args.status.clone(),
    };
    let raw = match args.source.read_file()? {
        Some((bytes, from)) => {
            let v: Value =
                serde_json::from_slice(&bytes).with_context(|| format!("{from} is not JSON"))?;
            if v.get("configs").is_some() {
                let dump = ConfigDump::parse(&bytes, &from)?;
                return eds_view(&dump, &filter, args.output);
            }
            v
        }
        None => {
            let target = args.source.proxy.target()?;
            let reply = target.request(Method::GET, "/clusters?format=json").await?;
            serde_json::from_slice(&reply.body)
                .with_context(|| format!("{}'s /clusters?format=json is not JSON", target.what))?
        }
    };
    if field(&raw, "cluster_statuses").is_none() {
        bail!(
            "not the output of /clusters?format=json: it has no cluster_statuses (hint: -f takes that, or a config dump taken with ?include_eds)"
        );
    }
    let clusters: Clusters = decode(&raw)?;
    match args.output {
        Output::Short => print!("{}", hosts_table(&clusters, &filter).render()),
        out => {
            // istioctl prints every cluster that has a host passing the filter, whole.
            let raw_statuses = field(&raw, "cluster_statuses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let kept: Vec<Value> = clusters
                .cluster_statuses
                .iter()
                .zip(raw_statuses)
                .filter(|(c, _)| {
                    c.host_statuses.iter().any(|h| {
                        filter.accepts(&host_addr(h.address.as_ref()), &status_name(h), &c.name)
                    })
                })
                .map(|(_, raw)| raw)
                .collect();
            print_value(&Value::Array(kept), out)?;
        }
    }
    Ok(())
}

fn health_name(code: i32) -> String {
    HealthStatus::try_from(code).map_or_else(|_| code.to_string(), |h| h.as_str_name().to_string())
}

fn status_name(h: &HostStatus) -> String {
    health_name(h.health_status.as_ref().map_or(0, |s| s.eds_health_status))
}

/// IP (or pipe path) and port.
fn host_addr(a: Option<&Address>) -> (String, u32) {
    match a.and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(s)) => (
            s.address.clone(),
            match s.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(p)) => p,
                _ => 0,
            },
        ),
        Some(address::Address::Pipe(p)) => (format!("unix://{}", p.path), 0),
        Some(address::Address::EnvoyInternalAddress(i)) => {
            (format!("envoy://{}", i.endpoint_id), 0)
        }
        None => ("unknown".into(), 0),
    }
}

fn render_addr((ip, port): &(String, u32)) -> String {
    if *port == 0 {
        ip.clone()
    } else {
        format!("{ip}:{port}")
    }
}

fn hosts_table(clusters: &Clusters, filter: &Filter) -> Table {
    let mut rows: Vec<((String, u32), String, bool, String)> = Vec::new();
    for c in &clusters.cluster_statuses {
        for h in &c.host_statuses {
            let addr = host_addr(h.address.as_ref());
            let status = status_name(h);
            if filter.accepts(&addr, &status, &c.name) {
                let outlier = h
                    .health_status
                    .as_ref()
                    .is_some_and(|s| s.failed_outlier_check);
                rows.push((addr, status, outlier, c.name.clone()));
            }
        }
    }
    rows.sort_by(|a, b| (&a.0, &a.3).cmp(&(&b.0, &b.3)));
    let mut t = Table::new(&["ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER"], 5);
    for (addr, status, outlier, cluster) in rows {
        t.row([
            render_addr(&addr),
            status,
            if outlier { "FAILED" } else { "OK" }.to_string(),
            cluster,
        ]);
    }
    t
}

fn locality(l: Option<&Locality>) -> String {
    let Some(l) = l else { return String::new() };
    [&l.region, &l.zone, &l.sub_zone]
        .into_iter()
        .take_while(|s| !s.is_empty())
        .cloned()
        .collect::<Vec<_>>()
        .join("/")
}

fn lb_addr(e: &LbEndpoint) -> (String, u32) {
    match &e.host_identifier {
        Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => host_addr(ep.address.as_ref()),
        _ => ("unknown".into(), 0),
    }
}

fn eds_view(dump: &ConfigDump, filter: &Filter, output: Output) -> Result<()> {
    let Some(assignments) = dump.endpoints()? else {
        bail!("the config dump has no endpoints (hint: take it with /config_dump?include_eds)");
    };
    let mut assignments = assignments;
    // istioctl's order: by service, subset, port, direction.
    assignments.sort_by_key(|e| super::clusters::sort_key(&e.resource.cluster_name));
    let mut t = Table::new(&["ENDPOINT", "STATUS", "LOCALITY", "CLUSTER"], 5);
    let mut kept = Vec::new();
    for e in &assignments {
        let cla = &e.resource;
        let mut any = false;
        for group in &cla.endpoints {
            for ep in &group.lb_endpoints {
                let addr = lb_addr(ep);
                let status = health_name(ep.health_status);
                if filter.accepts(&addr, &status, &cla.cluster_name) {
                    any = true;
                    t.row([
                        render_addr(&addr),
                        status,
                        locality(group.locality.as_ref()),
                        cla.cluster_name.clone(),
                    ]);
                }
            }
        }
        if any {
            kept.push(e.raw.clone());
        }
    }
    match output {
        Output::Short => print!("{}", t.render()),
        out => print_value(&Value::Array(kept), out)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn hosts_with_health_and_outlier_status() {
        let c: Clusters = decode(&json!({"cluster_statuses": [
            {"name": "outbound|9080||reviews.default.svc.cluster.local", "host_statuses": [
                {"address": {"socket_address": {"address": "10.250.0.7", "port_value": 9080}},
                 "health_status": {"eds_health_status": "HEALTHY", "failed_outlier_check": true}},
                {"address": {"socket_address": {"address": "10.250.0.6", "port_value": 9080}},
                 "health_status": {"eds_health_status": "UNHEALTHY"}}]},
            {"name": "sds-grpc", "host_statuses": [{"address": {"pipe": {"path": "/etc/sds"}}, "health_status": {"eds_health_status": "HEALTHY"}}]}
        ]}))
        .unwrap();
        let all = hosts_table(&c, &Filter::default()).render();
        assert_eq!(
            all,
            "ENDPOINT            STATUS        OUTLIER CHECK     CLUSTER\n\
             10.250.0.6:9080     UNHEALTHY     OK                outbound|9080||reviews.default.svc.cluster.local\n\
             10.250.0.7:9080     HEALTHY       FAILED            outbound|9080||reviews.default.svc.cluster.local\n\
             unix:///etc/sds     HEALTHY       OK                sds-grpc\n"
        );
        let f = Filter {
            status: Some("healthy".into()),
            port: Some(9080),
            ..Default::default()
        };
        assert_eq!(hosts_table(&c, &f).rows(), 1);
    }
}
