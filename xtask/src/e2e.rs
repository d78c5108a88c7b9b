//! `cargo xtask e2e [--scenario NAME]... [--keep] [--envoy]`: the end-to-end scenarios on
//! the local backend (`--envoy`: with upstream Envoy as every proxy, the reference). Installs the Debian tools the local cluster uses when missing, builds the
//! binaries, and runs `mesh-e2e` (e2e crate), which brings up a fresh local cluster per
//! scenario and prints pass/fail per scenario and a summary. Needs root; fails when any
//! scenario fails. A failing scenario's logs land in `target/e2e-artifacts/<scenario>/`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::demo;

pub fn run(root: &Path, scenarios: &[String], keep: bool, envoy: bool) -> Result<()> {
    if !demo::is_root() {
        bail!(
            "the e2e scenarios create network namespaces and iptables rules: run them as root (sudo -E cargo xtask e2e)"
        );
    }
    demo::install_missing()?;
    let mut build = super::cargo();
    build.args([
        "build",
        "-p",
        "e2e",
        "-p",
        "mesh-cni",
        "-p",
        "mesh-proxy",
        "-p",
        "mesh-control",
        "--bins",
    ]);
    super::run("build", build)?;

    let target = demo::target_dir(root);
    let bin_dir = target.join("debug");
    let mut e2e = Command::new(bin_dir.join("mesh-e2e"));
    e2e.env("MESH_TESTAPP_BIN", bin_dir.join("testapp"))
        .env("MESH_CNI_BIN", bin_dir.join("mesh-cni"))
        .env("MESH_PROXY_BIN", bin_dir.join("mesh-proxy"))
        .env("MESH_CONTROL_BIN", bin_dir.join("mesh-control"))
        .arg("--artifacts")
        .arg(target.join("e2e-artifacts"));
    for s in scenarios {
        e2e.args(["--scenario", s]);
    }
    if keep {
        e2e.arg("--keep");
    }
    if envoy {
        e2e.arg("--envoy");
    }
    let status = e2e
        .status()
        .with_context(|| format!("cannot run {}", bin_dir.join("mesh-e2e").display()))?;
    if !status.success() {
        bail!("e2e scenarios failed ({status}); see the summary above");
    }
    Ok(())
}
