//! `meshctl`: the mesh's command-line tool (the istioctl role). One module per subcommand;
//! a new subcommand is a variant of [`Command`] and a line in [`Command::run`].

mod envoy;
mod http;
mod istio;
mod local;
mod pods;
mod proxy_config;
mod proxy_status;
mod table;
mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "meshctl",
    version,
    about = "Command-line tool for the mesh (the istioctl role)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Act on the local cluster ($MESH_LOCAL_DIR, default /run/mesh-local) for
    /// apply, delete, exec and get.
    #[arg(long, global = true)]
    #[allow(dead_code)] // read by the subcommands through #[arg(from_global)]
    local: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Validate Istio resources in files, directories or stdin (schema and semantics).
    Validate(validate::Args),
    /// Show a proxy's listeners, routes, clusters, endpoints, bootstrap, secrets, or its
    /// log level, from its admin API (istioctl proxy-config).
    #[command(visible_alias = "pc")]
    ProxyConfig(proxy_config::Args),
    /// Show every proxy's xDS sync state from the control plane (istioctl proxy-status).
    #[command(visible_alias = "ps")]
    ProxyStatus(proxy_status::Args),
    /// Validate and create or replace resources in the local cluster (`--local apply -f`).
    Apply(local::ApplyArgs),
    /// Remove the resources a file names from the local cluster (`--local delete -f`).
    Delete(local::DeleteArgs),
    /// Run a command in a local pod's network namespace (`--local exec POD -- CMD`).
    Exec(local::ExecArgs),
    /// List the local cluster's pods or services (`--local get pods|services`).
    Get(local::GetArgs),
}

impl Command {
    fn run(&self) -> anyhow::Result<ExitCode> {
        match self {
            Command::Validate(args) => validate::run(args),
            Command::ProxyConfig(args) => proxy_config::run(args),
            Command::ProxyStatus(args) => proxy_status::run(args),
            Command::Apply(args) => local::apply(args),
            Command::Delete(args) => local::delete(args),
            Command::Exec(args) => local::exec(args),
            Command::Get(args) => local::get(args),
        }
    }

    /// The exit code of a command that failed to run: `validate` keeps 1 for invalid
    /// input and 2 for its own failure; the others fail with 1, as istioctl does.
    fn failure_code(&self) -> u8 {
        match self {
            Command::Validate(_) => 2,
            _ => 1,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(cli.command.failure_code())
        }
    }
}
