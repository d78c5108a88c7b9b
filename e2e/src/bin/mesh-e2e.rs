//! `mesh-e2e`: runs the end-to-end scenarios on the local backend (what `cargo xtask e2e`
//! runs), each on a fresh local cluster in `$MESH_E2E_DIR` (default /run/mesh-e2e,
//! namespaces prefixed `e2e-`).
//! Exits non-zero when any scenario fails. `--envoy` runs them with upstream Envoy as
//! every proxy, the reference the scenarios' expectations are checked against.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use e2e::local::{ClusterConfig, state::State};
use e2e::scenarios::{self, runner};

#[derive(Parser)]
#[command(
    name = "mesh-e2e",
    about = "End-to-end scenarios on the local cluster (root)"
)]
struct Cli {
    /// Run only this scenario (repeatable); see --list.
    #[arg(long = "scenario", value_name = "NAME")]
    scenarios: Vec<String>,
    /// Leave the cluster of the first failing scenario (or of the last one) running.
    #[arg(long)]
    keep: bool,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
    /// Run upstream Envoy as every proxy instead of mesh-proxy: the reference (a scenario
    /// that passes with Envoy and fails with mesh-proxy points at the proxy).
    #[arg(long)]
    envoy: bool,
    /// Where a failing scenario's logs, config and sync state are copied.
    #[arg(long, default_value = "/tmp/mesh-e2e-artifacts")]
    artifacts: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.list {
        for s in scenarios::ALL {
            println!("{:<20} issue {}  {}", s.name, s.issue, s.about);
        }
        return ExitCode::SUCCESS;
    }
    let selected = match scenarios::select(&cli.scenarios) {
        Ok(s) => s,
        Err(unknown) => {
            eprintln!("mesh-e2e: no scenario {unknown:?} (see --list)");
            return ExitCode::from(2);
        }
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "mesh-e2e: the scenarios run on the local cluster, which needs root (network namespaces, iptables): run as root or with sudo -E"
        );
        return ExitCode::from(2);
    }
    let mut cluster = ClusterConfig::for_e2e();
    if cli.envoy {
        let envoy = e2e::local::envoy::locate();
        if !envoy.is_file() {
            eprintln!(
                "mesh-e2e: no Envoy at {} (hint: bash tools/envoy.sh installs it; or set MESH_ENVOY)",
                envoy.display()
            );
            return ExitCode::from(2);
        }
        cluster.bins.envoy = Some(envoy);
    }
    match State::load(&cluster.dir) {
        Ok(None) => {}
        Ok(Some(_)) => {
            eprintln!(
                "mesh-e2e: a cluster of an earlier run is still up in {0} (--keep?): tear it down with `MESH_LOCAL_DIR={0} target/debug/mesh-local down`",
                cluster.dir.display()
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("mesh-e2e: {e:#}");
            return ExitCode::from(2);
        }
    }
    let t = Instant::now();
    let outcomes = runner::run(&runner::Options {
        scenarios: selected,
        keep: cli.keep,
        artifacts: cli.artifacts,
        cluster,
    });
    let (text, ok) = runner::summary(&outcomes, t.elapsed());
    eprintln!("\n{text}");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
