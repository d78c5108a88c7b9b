//! `cargo xtask <task>`: the project's tasks, so that CI and a developer run the same thing.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod bench;
mod crds;
mod demo;
mod e2e;

#[derive(Parser)]
#[command(name = "xtask", about = "Project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Everything CI checks: fmt, clippy -D warnings, generated files up to date, tests.
    Ci {
        /// Skip tests that need a real Kubernetes API server.
        #[arg(long)]
        no_kube: bool,
    },
    /// Write manifests/crds/*.yaml from mesh-api's types (or check they are up to date).
    Crds {
        /// Fail instead of writing when the files are stale.
        #[arg(long)]
        check: bool,
    },
    /// Run the mesh locally with the sample app (root): no argument runs until Ctrl-C.
    Demo {
        #[arg(value_enum)]
        action: Option<demo::Action>,
    },
    /// Run the end-to-end scenarios on the local cluster (root), a fresh cluster each.
    E2e {
        /// Run only this scenario (repeatable); `target/debug/mesh-e2e --list` lists them.
        #[arg(long = "scenario", value_name = "NAME")]
        scenarios: Vec<String>,
        /// Leave the cluster of the first failing (or the last) scenario running.
        #[arg(long)]
        keep: bool,
        /// Use upstream Envoy as every proxy (the reference) instead of mesh-proxy.
        #[arg(long)]
        envoy: bool,
    },
    /// Benchmarks and their report (target/bench/report.md).
    Bench {
        #[command(subcommand)]
        task: bench::BenchTask,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Ci { no_kube } => ci(no_kube),
        Task::Crds { check } => crds::run(&root(), check),
        Task::Demo { action } => demo::run(&root(), action),
        Task::E2e {
            scenarios,
            keep,
            envoy,
        } => e2e::run(&root(), &scenarios, keep, envoy),
        Task::Bench { task } => bench::run(&root(), task),
    }
}

/// The workspace root (xtask lives one level below it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(step: &str, mut cmd: Command) -> Result<()> {
    eprintln!("==> {step}: {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("{step}: could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{step} failed ({status})");
    }
    Ok(())
}

fn ci(no_kube: bool) -> Result<()> {
    let strict = is_root();
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    run("fmt", fmt)?;

    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    run("clippy", clippy)?;

    crds::run(&root(), true).context("crds --check")?;

    // A real Kubernetes API server for the tests that need one (CRDs, dry-run applies).
    let kube = if no_kube {
        None
    } else {
        KubeApiServer::start(strict)?
    };

    let mut test = cargo();
    test.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    if strict {
        // Running as root: a test missing a prerequisite fails instead of skipping.
        test.env("MESH_CI_STRICT", "1");
    }
    match &kube {
        Some(k) => {
            test.env("MESH_KUBECONFIG", &k.kubeconfig);
            test.env("MESH_KUBECTL", &k.kubectl);
        }
        None => {
            test.env("MESH_SKIP_KUBE", "1");
        }
    }
    let result = run("tests", test);
    if let Some(k) = kube {
        k.stop();
    }
    result?;
    // The end-to-end scenarios need root (CI runs as root).
    if strict {
        e2e::run(&root(), &[], false, false)?;
    } else {
        eprintln!("==> e2e: skipped (needs root; run `sudo -E cargo xtask e2e`)");
    }
    // Every bench for a few seconds: only that each still produces numbers.
    bench::smoke(&root())
}

/// Whether we run as root (CI does): then prerequisites are mandatory.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// The API server started by `tools/kube-apiserver/run.sh` (etcd + kube-apiserver on
/// loopback). Stopped through the script, which kills only the PIDs it recorded.
struct KubeApiServer {
    kubeconfig: PathBuf,
    kubectl: PathBuf,
    /// False when a server was already running (we reuse it and leave it running).
    started_here: bool,
}

impl KubeApiServer {
    fn script() -> PathBuf {
        root().join("tools/kube-apiserver/run.sh")
    }

    fn kube_dir() -> PathBuf {
        std::env::var_os("MESH_KUBE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/mesh-kube"))
    }

    /// Whether an API server already answers on the kubeconfig (started by a developer or
    /// an earlier run): then we reuse it and must not start a second one on the same ports.
    fn running() -> bool {
        let dir = Self::kube_dir();
        let kubeconfig = dir.join("run/kubeconfig");
        if !kubeconfig.exists() {
            return false;
        }
        Command::new(dir.join("bin/kubectl"))
            .env("KUBECONFIG", &kubeconfig)
            .args(["get", "--raw", "/readyz", "--request-timeout=3s"])
            .output()
            .is_ok_and(|out| out.status.success() && out.stdout == b"ok")
    }

    /// Starts the server (building it the first time); `None` when it cannot run here and
    /// `strict` is off.
    fn start(strict: bool) -> Result<Option<KubeApiServer>> {
        let dir = Self::kube_dir();
        let server = |started_here| KubeApiServer {
            kubeconfig: dir.join("run/kubeconfig"),
            kubectl: dir.join("bin/kubectl"),
            started_here,
        };
        if Self::running() {
            eprintln!("==> kube-apiserver: already running, reusing it");
            return Ok(Some(server(false)));
        }
        let mut cmd = Command::new("bash");
        cmd.arg(Self::script()).arg("start");
        match run("kube-apiserver", cmd) {
            Ok(()) => Ok(Some(server(true))),
            Err(e) if strict => Err(e.context("starting the Kubernetes API server for the tests")),
            Err(e) => {
                eprintln!(
                    "==> kube-apiserver could not start ({e:#}); tests that need it will skip"
                );
                Ok(None)
            }
        }
    }

    fn stop(self) {
        if !self.started_here {
            return;
        }
        let mut cmd = Command::new("bash");
        cmd.arg(Self::script()).arg("stop");
        if let Err(e) = run("kube-apiserver stop", cmd) {
            eprintln!("warning: {e:#}");
        }
    }
}
