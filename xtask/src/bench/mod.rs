//! `cargo xtask bench <control|micro|smoke>`: the benchmarks and their report
//! (`target/bench/report.md` + `report.json`; see [`report`]).
//!
//! Each bench is a cargo bench target run through `cargo bench`, so that it is built with
//! the bench profile (release) and finds the workspace's binaries; this module runs it, reads
//! what it measured and writes the bench's section of the report. `smoke` runs every bench
//! for a few seconds on a dev build and checks only that every column produced numbers: CI
//! runs it, so a bench that rots fails CI instead of the next person who needs figures.

pub mod control;
pub mod data;
pub mod micro;
pub mod report;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use report::Report;

#[derive(Debug, Subcommand)]
pub enum BenchTask {
    /// Control-plane scale: convergence, CPU, RSS and bytes at 100, 1,000 and 5,000 proxies
    /// with and without Sidecar scoping (the real mesh-control binary, real gRPC clients).
    Control {
        /// 100 and 1,000 proxies, 5 changes of each kind (a few minutes).
        #[arg(long)]
        quick: bool,
        /// Passed to the bench (e.g. `-- --proxies 1000 --scoping off --protocol delta`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Data plane: direct vs mesh-proxy, Envoy, nginx and HAProxy sidecar pairs in the local
    /// cluster (root): latency at 1,000 rps, maximum throughput, CPU and memory.
    Data {
        /// One short repetition (about a minute; the CI smoke variant).
        #[arg(long)]
        quick: bool,
        /// Passed to the bench (e.g. `-- --duration 30s --reps 5 --kinds mesh-proxy,envoy`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The criterion micro benches of every crate (route matching, header formatting,
    /// load-balancer pick, translation, push fan-out).
    Micro {
        /// Criterion's quick mode.
        #[arg(long)]
        quick: bool,
    },
    /// Every bench for a few seconds on a dev build; fails unless every column has numbers.
    Smoke,
}

/// How a bench is built: the bench (release) profile for figures, the dev profile for the
/// smoke run (its numbers mean nothing; it reuses the test build).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    Release,
    Dev,
}

pub fn run(root: &Path, task: BenchTask) -> Result<()> {
    let dir = report_dir(root);
    let section = match task {
        BenchTask::Control { quick, mut args } => {
            if quick {
                args.insert(0, "--quick".to_string());
            }
            control::run(root, Build::Release, &dir, &args)?
        }
        BenchTask::Data { quick, mut args } => {
            if quick {
                args.insert(0, "--quick".to_string());
            }
            data::run(root, Build::Release, &dir, &args)?
        }
        BenchTask::Micro { quick } => micro::run(root, Build::Release, quick, None)?,
        BenchTask::Smoke => return smoke(root),
    };
    if let Err(e) = section.check_numbers() {
        // Still write what was measured: a timeout at 5,000 proxies is a finding.
        eprintln!("warning: some cells have no numbers (see the report's notes): {e:#}");
    }
    let mut report = Report::load(&dir);
    report.put(section);
    let md = report.save(&dir)?;
    eprintln!("==> report: {}", md.display());
    Ok(())
}

/// Every bench briefly, into `target/bench/smoke/` (the real report is left alone).
pub fn smoke(root: &Path) -> Result<()> {
    let dir = report_dir(root).join("smoke");
    let mut report = Report::default();
    let control = control::run(root, Build::Dev, &dir, &["--smoke".to_string()])?;
    control
        .check_numbers()
        .context("bench smoke: control plane")?;
    report.put(control);
    let micro = micro::run(root, Build::Dev, true, Some(&dir.join("criterion")))?;
    micro.check_numbers().context("bench smoke: micro")?;
    report.put(micro);
    // Its own harness (open-loop rounds and a memory probe): one short round must finish.
    let args = ["--secs", "1", "--rounds", "1"].map(String::from);
    cargo_bench(
        root,
        Build::Dev,
        "mesh-proxy",
        "http_resilience",
        &args,
        None,
    )
    .context("bench smoke: http_resilience")?;
    // Made for callgrind (instructions per request); here only: it must run.
    let args = ["--requests", "200"].map(String::from);
    cargo_bench(root, Build::Dev, "mesh-proxy", "proxy_path", &args, None)
        .context("bench smoke: proxy_path")?;
    // The data plane needs root (namespaces, iptables); CI runs as root.
    if crate::is_root() {
        let data = data::run(root, Build::Dev, &dir, &["--quick".to_string()])?;
        data.check_numbers().context("bench smoke: data plane")?;
        report.put(data);
    } else {
        eprintln!("==> bench smoke: data plane skipped (needs root)");
    }
    let md = report.save(&dir)?;
    eprintln!("==> bench smoke passed: {}", md.display());
    Ok(())
}

/// `target/bench` (or under `$CARGO_TARGET_DIR`).
pub fn report_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("bench")
}

pub(crate) fn cargo(root: &Path) -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root);
    c
}

/// `cargo bench -p <package> --bench <bench> -- <args>`; returns the command as run.
pub fn cargo_bench(
    root: &Path,
    build: Build,
    package: &str,
    bench: &str,
    args: &[String],
    criterion_home: Option<&Path>,
) -> Result<String> {
    let mut cmd = cargo(root);
    cmd.args(["bench", "-p", package, "--bench", bench]);
    if build == Build::Dev {
        cmd.args(["--profile", "dev"]);
    }
    cmd.arg("--").args(args);
    if let Some(home) = criterion_home {
        cmd.env("CRITERION_HOME", home);
    }
    let shown = format!(
        "cargo bench -p {package} --bench {bench}{} -- {}",
        if build == Build::Dev {
            " --profile dev"
        } else {
            ""
        },
        args.join(" ")
    );
    eprintln!("==> {shown}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(shown)
}
