//! `meshctl proxy-config listeners|routes|clusters|endpoints|bootstrap|secret|log|all
//! <pod>[.<ns>]`: a proxy's configuration in the tables `istioctl proxy-config` prints,
//! or (`-o json|yaml`) as the proxy printed it.
//!
//! The data comes from the proxy's admin API (`/config_dump`, `/clusters?format=json`,
//! `/logging`), which mesh-proxy and Envoy serve alike: through the pod's network
//! namespace in the local cluster, from `--admin URL`, or from a saved dump (`-f FILE`).

mod bootstrap;
mod clusters;
mod endpoints;
mod listeners;
mod log;
mod routes;
mod secrets;
pub mod source;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use serde_json::Value;

use crate::envoy::dump::{ConfigDump, Rejected};
pub use source::Source;

/// Arguments of `meshctl proxy-config`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand, Debug)]
enum What {
    /// Clusters: service FQDN, port, subset, direction, type, DestinationRule.
    #[command(visible_aliases = ["cluster", "c"])]
    Clusters(clusters::Args),
    /// Listeners: addresses, port, filter-chain match, destination.
    #[command(visible_aliases = ["listener", "l"])]
    Listeners(listeners::Args),
    /// Route configurations: virtual hosts, domains, matches, VirtualService.
    #[command(visible_aliases = ["route", "r"])]
    Routes(routes::Args),
    /// Endpoints of every cluster with health and outlier status (`/clusters`).
    #[command(visible_aliases = ["endpoint", "ep"])]
    Endpoints(endpoints::Args),
    /// The bootstrap the proxy started with (node identity, xDS server, admin).
    #[command(visible_aliases = ["b"])]
    Bootstrap(bootstrap::Args),
    /// Certificates and trust bundles received over SDS.
    #[command(visible_aliases = ["secrets", "s"])]
    Secret(secrets::Args),
    /// Get or set the proxy's log level (`/logging`).
    #[command(visible_aliases = ["o"])]
    Log(log::Args),
    /// Clusters, listeners, routes and secrets at once (`-o json`: the whole config dump).
    #[command(visible_aliases = ["a"])]
    All(AllArgs),
}

/// `-o`: istioctl's output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// A table.
    #[default]
    Short,
    /// The proxy's JSON for the selected resources.
    Json,
    /// The same, as YAML.
    Yaml,
}

#[derive(clap::Args, Debug)]
pub struct AllArgs {
    #[command(flatten)]
    source: Source,
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match &args.what {
            What::Clusters(a) => clusters::run(a).await,
            What::Listeners(a) => listeners::run(a).await,
            What::Routes(a) => routes::run(a).await,
            What::Endpoints(a) => endpoints::run(a).await,
            What::Bootstrap(a) => bootstrap::run(a).await,
            What::Secret(a) => secrets::run(a).await,
            What::Log(a) => log::run(a).await,
            What::All(a) => all(a).await,
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn all(args: &AllArgs) -> Result<()> {
    let fetched = args.source.config_dump(false).await?;
    let dump = &fetched.dump;
    match args.output {
        Output::Json | Output::Yaml => print_value(&dump.raw, args.output),
        Output::Short => {
            // A section with nothing in it (a TCP-only proxy has no routes) is a note here,
            // not the error it is for the single-type commands.
            if dump.clusters()?.is_empty() {
                println!("(no clusters)");
            } else {
                let t = clusters::table(dump, &clusters::Filter::default())?;
                print!("{}", t.render());
            }
            println!();
            if dump.listeners()?.is_empty() {
                println!("(no listeners)");
            } else {
                let t = listeners::table(dump, &listeners::Filter::default(), true)?;
                print!("{}", t.render());
            }
            println!();
            if dump.routes()?.is_empty() {
                println!("(no routes loaded over RDS)");
            } else {
                let t = routes::table(dump, &routes::Filter::default(), true)?;
                print!("{}", t.render());
            }
            let secrets = dump.secrets()?;
            if !secrets.is_empty() {
                println!();
                print!("{}", secrets::table(&secrets).render());
            }
            warn_rejected(dump, None);
            Ok(())
        }
    }
}

/// Prints JSON or YAML (the proxy's own JSON, re-indented only).
pub fn print_value(v: &Value, output: Output) -> Result<()> {
    match output {
        Output::Yaml => print!("{}", serde_yaml::to_string(v)?),
        _ => println!("{}", serde_json::to_string_pretty(v)?),
    }
    Ok(())
}

/// Tells (on stderr, so tables stay parseable) which resources of `kind` the proxy
/// rejected: they are not in the table, and the last good version still serves.
pub fn warn_rejected(dump: &ConfigDump, kind: Option<&str>) {
    let rejected: Vec<Rejected> = dump
        .rejected()
        .into_iter()
        .filter(|r| kind.is_none_or(|k| r.kind == k))
        .collect();
    for r in rejected {
        eprintln!(
            "warning: the proxy rejected {} {:?} (version {}): {} (the proxy keeps serving its previous version, if it had one)",
            r.kind, r.name, r.version, r.details
        );
    }
}
