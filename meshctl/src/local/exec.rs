//! `exec POD[.NS] -- CMD`: a command inside a pod's network namespace (with its
//! `/etc/netns/<ns>/hosts`), as the app's user for app pods, as `kubectl exec` would.

use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

use super::cluster::Dir;

/// The app containers' UID in the local cluster (the harness's APP_UID).
const APP_UID: u32 = 1000;

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// POD or POD.NAMESPACE; POD may also be an app label (`sleep`, like deploy/sleep).
    pod: String,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    command: Vec<String>,
    #[arg(from_global)]
    local: bool,
}

pub fn run(args: &ExecArgs, dir: &Dir) -> Result<ExitCode> {
    super::require_local(args.local, "exec")?;
    let state = dir.state()?;
    let (name, ns) = args.pod.rsplit_once('.').unwrap_or((&args.pod, "default"));
    let in_ns = || state.pods.iter().filter(|p| p.spec.namespace == ns);
    let Some(pod) = in_ns()
        .find(|p| p.spec.name == name)
        .or_else(|| in_ns().find(|p| p.app() == name))
    else {
        let known: Vec<String> = state
            .pods
            .iter()
            .map(|p| format!("{}.{}", p.spec.name, p.spec.namespace))
            .collect();
        bail!(
            "no pod or app {name:?} in namespace {ns} (pods: {})",
            known.join(", ")
        );
    };
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &pod.netns]);
    if !pod.is_gateway() {
        cmd.args([
            "setpriv",
            &format!("--reuid={APP_UID}"),
            &format!("--regid={APP_UID}"),
            "--clear-groups",
            "--",
        ]);
    }
    cmd.args(&args.command);
    let status = cmd.status().with_context(|| {
        format!(
            "cannot run {:?} in pod {}.{}",
            args.command, pod.spec.name, ns
        )
    })?;
    Ok(ExitCode::from(
        status.code().unwrap_or(1).clamp(0, 255) as u8
    ))
}
