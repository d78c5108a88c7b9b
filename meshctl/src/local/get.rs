//! `get pods|services`: what the local cluster runs, in kubectl's columns.

use std::process::ExitCode;

use anyhow::Result;

use super::cluster::Dir;
use crate::table::Table;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum What {
    #[value(alias = "pod", alias = "po")]
    Pods,
    #[value(alias = "service", alias = "svc")]
    Services,
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    #[arg(value_enum)]
    what: What,
    /// Only this namespace (default: all).
    #[arg(short, long)]
    namespace: Option<String>,
    #[arg(from_global)]
    local: bool,
}

pub fn run(args: &GetArgs, dir: &Dir) -> Result<ExitCode> {
    super::require_local(args.local, "get")?;
    let state = dir.state()?;
    let wanted = |ns: &str| args.namespace.as_deref().is_none_or(|n| n == ns);
    let table = match args.what {
        What::Pods => {
            let mut t = Table::new(
                &["NAMESPACE", "NAME", "READY", "STATUS", "IP", "APP", "PROXY"],
                3,
            );
            let mut pods: Vec<_> = state
                .pods
                .iter()
                .filter(|p| wanted(&p.spec.namespace))
                .collect();
            pods.sort_by(|a, b| {
                (&a.spec.namespace, &a.spec.name).cmp(&(&b.spec.namespace, &b.spec.name))
            });
            for p in pods {
                let containers = if p.has_sidecar() { 2 } else { 1 };
                let ready = if p.ready { containers } else { 0 };
                let proxy = if p.is_gateway() {
                    "router"
                } else if p.has_sidecar() {
                    "sidecar"
                } else {
                    "-"
                };
                let status = if p.ip.is_empty() {
                    "Pending"
                } else {
                    "Running"
                };
                t.row([
                    p.spec.namespace.clone(),
                    p.spec.name.clone(),
                    format!("{ready}/{containers}"),
                    status.to_string(),
                    p.ip.clone(),
                    p.app().to_string(),
                    proxy.to_string(),
                ]);
            }
            t
        }
        What::Services => {
            let mut t = Table::new(&["NAMESPACE", "NAME", "CLUSTER-IP", "PORT(S)"], 3);
            let mut svcs: Vec<_> = state
                .services
                .iter()
                .filter(|s| wanted(&s.spec.namespace))
                .collect();
            svcs.sort_by(|a, b| {
                (&a.spec.namespace, &a.spec.name).cmp(&(&b.spec.namespace, &b.spec.name))
            });
            for s in svcs {
                let ports: Vec<String> = s
                    .spec
                    .ports
                    .iter()
                    .map(|p| {
                        if p.port == p.target_port {
                            format!("{}/TCP ({})", p.port, p.name)
                        } else {
                            format!("{}:{}/TCP ({})", p.port, p.target_port, p.name)
                        }
                    })
                    .collect();
                t.row([
                    s.spec.namespace.clone(),
                    s.spec.name.clone(),
                    s.vip.clone(),
                    ports.join(","),
                ]);
            }
            t
        }
    };
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}
