//! `cargo xtask bench <data|control|path|micro|smoke>`: the benchmarks and their report
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
pub mod path;
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
    /// Instructions per HTTP/1.1 request in mesh-proxy, counted by callgrind (needs
    /// valgrind): the noise-free figure to compare commits with.
    Path,
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
        BenchTask::Path => path::run(root, Build::Release, &dir)?,
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
    // Instructions per request: a few requests under callgrind (CI installs valgrind).
    if path::valgrind_installed() {
        let path = path::run(root, Build::Dev, &dir)?;
        path.check_numbers().context("bench smoke: path")?;
        report.put(path);
    } else {
        eprintln!("==> bench smoke: path skipped (valgrind is not installed)");
    }
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

/// Builds a bench target (and, for the bench profile, the workspace binaries it starts)
/// and returns its executable, to run it without cargo in between (as root, under
/// valgrind).
pub fn bench_executable(root: &Path, build: Build, package: &str, bench: &str) -> Result<PathBuf> {
    let mut cmd = cargo(root);
    cmd.args(["bench", "-p", package, "--bench", bench, "--no-run"]);
    cmd.args(["--message-format", "json-render-diagnostics"]);
    if build == Build::Dev {
        cmd.args(["--profile", "dev"]);
    }
    cmd.stderr(std::process::Stdio::inherit());
    eprintln!("==> {cmd:?}");
    let out = cmd.output().context("cannot run cargo bench --no-run")?;
    if !out.status.success() {
        bail!("building the {bench} bench failed ({})", out.status);
    }
    executable(&String::from_utf8_lossy(&out.stdout), bench)
        .with_context(|| format!("cargo reported no executable for the {bench} bench"))
}

/// A bench target's executable from cargo's JSON messages.
fn executable(messages: &str, bench: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == bench)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_executable_from_cargo_messages() {
        let msgs = r#"{"reason":"compiler-artifact","target":{"name":"e2e"},"executable":null}
{"reason":"compiler-artifact","target":{"name":"data_plane"},"executable":"/t/release/deps/data_plane-1f"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            executable(msgs, "data_plane"),
            Some(PathBuf::from("/t/release/deps/data_plane-1f"))
        );
        assert_eq!(executable("{}", "data_plane"), None);
    }
}
