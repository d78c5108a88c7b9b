//! `mesh-local`: the local cluster from the command line (what `cargo xtask demo` runs).
//!
//! `run` brings the demo up and tears it down on Ctrl-C; `up` leaves it running;
//! `down` tears down whatever the state file records (also after a crash); `status`
//! prints the state; `exec POD[.NS] -- CMD` runs a command in a pod.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use e2e::cluster::Cluster;
use e2e::local::{ClusterConfig, LocalCluster, demo, teardown};

#[derive(Parser)]
#[command(
    name = "mesh-local",
    about = "The mesh on one Linux machine: network namespaces, no Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Bring the demo up, print what to try, tear it down on Ctrl-C.
    Run {
        /// Apps only: no sidecars, no gateway.
        #[arg(long)]
        no_sidecars: bool,
    },
    /// Bring the demo up and leave it running (writes demo.json).
    Up {
        #[arg(long)]
        no_sidecars: bool,
    },
    /// Tear down the cluster recorded in $MESH_LOCAL_DIR.
    Down,
    /// Print the recorded state.
    Status,
    /// Run a command in a pod's network namespace as the app's user.
    Exec {
        /// POD or POD.NAMESPACE; POD may be an app label (e.g. sleep).
        pod: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mesh-local: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<ExitCode> {
    let cfg = ClusterConfig::from_env();
    match cmd {
        Cmd::Run { no_sidecars } => {
            let cluster = bring_up(cfg, !no_sidecars)?;
            println!("{}", demo::what_to_try(&cluster));
            println!("Press Ctrl-C to tear it down.");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(tokio::signal::ctrl_c())?;
            eprintln!("tearing down...");
            drop(cluster);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Up { no_sidecars } => {
            let cluster = bring_up(cfg, !no_sidecars)?;
            println!("{}", demo::what_to_try(&cluster));
            cluster.keep();
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Down => {
            teardown(&cfg.dir)?;
            println!("local cluster in {} torn down", cfg.dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status => {
            let cluster = LocalCluster::attach(&cfg.dir)?;
            println!("{}", serde_json::to_string_pretty(&cluster.state())?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Exec { pod, cmd } => {
            let cluster = LocalCluster::attach(&cfg.dir)?;
            let (name, ns) = pod.split_once('.').unwrap_or((&pod, "default"));
            let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
            let out = cluster.exec(name, ns, &args)?;
            use std::io::Write;
            std::io::stdout().write_all(&out.stdout)?;
            std::io::stderr().write_all(&out.stderr)?;
            Ok(ExitCode::from(
                out.status.code().unwrap_or(1).clamp(0, 255) as u8
            ))
        }
    }
}

/// Brings the demo up; on failure tears down what was made before reporting the error.
fn bring_up(cfg: ClusterConfig, sidecars: bool) -> Result<LocalCluster> {
    let dir = cfg.dir.clone();
    demo::up(cfg, sidecars).with_context(|| {
        format!(
            "the demo did not come up; what it had made in {} is torn down (the failing component's last log lines are above)",
            dir.display()
        )
    })
}
