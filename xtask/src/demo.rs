//! `cargo xtask demo [up|down]`: the mesh on this machine with the sample app.
//!
//! Installs the Debian packages the local cluster uses when they are missing, builds the
//! binaries, and hands over to `mesh-local` (e2e crate): no argument brings the demo up
//! and tears it down on Ctrl-C; `up` leaves it running (for scripts); `down` tears it
//! down, also after a crash. State lives in `$MESH_LOCAL_DIR` (default /run/mesh-local).

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    /// Bring the demo up and leave it running.
    Up,
    /// Tear down the running demo.
    Down,
}

/// Commands the local cluster runs, and the Debian package that has each.
const TOOLS: &[(&str, &str)] = &[
    ("/usr/sbin/ip", "iproute2"),
    ("/usr/sbin/iptables-nft-restore", "iptables"),
    ("/usr/lib/cni/bridge", "containernetworking-plugins"),
    ("/usr/lib/cni/host-local", "containernetworking-plugins"),
    ("/usr/bin/setpriv", "util-linux"),
];

pub fn run(root: &Path, action: Option<Action>) -> Result<()> {
    if !is_root() {
        bail!(
            "the demo creates network namespaces and iptables rules: run it as root (sudo -E cargo xtask demo)"
        );
    }
    install_missing()?;
    let mut build = super::cargo();
    build.args(["build", "-p", "e2e", "-p", "mesh-cni"]);
    if action != Some(Action::Down) {
        build.args(["-p", "mesh-proxy", "-p", "mesh-control"]);
    }
    build.arg("--bins");
    super::run("build", build)?;

    let bin_dir = target_dir(root).join("debug");
    let mut local = Command::new(bin_dir.join("mesh-local"));
    local
        .arg(match action {
            None => "run",
            Some(Action::Up) => "up",
            Some(Action::Down) => "down",
        })
        .env("MESH_TESTAPP_BIN", bin_dir.join("testapp"))
        .env("MESH_CNI_BIN", bin_dir.join("mesh-cni"))
        .env("MESH_PROXY_BIN", bin_dir.join("mesh-proxy"))
        .env("MESH_CONTROL_BIN", bin_dir.join("mesh-control"));
    // Replace this process, so Ctrl-C reaches mesh-local alone and it tears the demo down
    // in order (cargo already execs xtask the same way).
    let err = local.exec();
    Err(err).context("cannot run mesh-local")
}

pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Installs the Debian packages of [`TOOLS`] that are missing.
pub fn install_missing() -> Result<()> {
    let mut packages: Vec<&str> = TOOLS
        .iter()
        .filter(|(path, _)| !Path::new(path).exists())
        .map(|(_, pkg)| *pkg)
        .collect();
    packages.dedup();
    if packages.is_empty() {
        return Ok(());
    }
    eprintln!("==> installing {}", packages.join(" "));
    let update = Command::new("apt-get").args(["update", "-qq"]).status();
    if !update.is_ok_and(|s| s.success()) {
        bail!(
            "missing {} and apt-get update failed: install them by hand",
            packages.join(", ")
        );
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get")?;
    if !status.success() {
        bail!("apt-get install {} failed", packages.join(" "));
    }
    Ok(())
}
