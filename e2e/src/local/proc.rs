//! Starting processes inside a pod's network namespace as a given user, and stopping
//! exactly those processes later by PID.
//!
//! `ip netns exec` enters the namespace and bind-mounts `/etc/netns/<ns>/*` over `/etc`
//! (that is how pods get their hosts file); `setpriv` then drops to the pod's UID/GID
//! with no supplementary groups. Both exec in place, so the recorded PID is the app's.

use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::state::Proc;

/// Field 22 of /proc/PID/stat: the start time in clock ticks since boot.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it follow ") ".
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the recorded process is still the one we started (and not a zombie).
pub fn alive(p: &Proc) -> bool {
    let zombie = std::fs::read_to_string(format!("/proc/{}/stat", p.pid))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        .unwrap_or(true);
    !zombie && start_time(p.pid) == Some(p.start_time)
}

/// The command that runs `argv` in `netns` (None: the current one) as `uid`.
pub fn command(netns: Option<&str>, uid: Option<u32>, argv: &[String]) -> Command {
    let mut full: Vec<String> = Vec::new();
    if let Some(ns) = netns {
        full.extend(["ip", "netns", "exec", ns].map(String::from));
    }
    if let Some(uid) = uid {
        full.extend([
            "setpriv".to_string(),
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".to_string(),
            "--".to_string(),
        ]);
    }
    full.extend(argv.iter().cloned());
    let mut cmd = Command::new(&full[0]);
    cmd.args(&full[1..]);
    cmd
}

/// Starts a long-running process with its output in `log`.
pub fn spawn(
    what: &str,
    netns: Option<&str>,
    uid: Option<u32>,
    argv: &[String],
    env: &[(String, String)],
    log: &Path,
) -> Result<Proc> {
    // Append mode: a process that also opens its own stdout by path (an access log at
    // /dev/stdout) then writes at the end instead of over earlier lines.
    let _ = std::fs::remove_file(log);
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot create {}", log.display()))?;
    // Owned by the process's user, so it can reopen its own stdout by path (/dev/stdout
    // is /proc/self/fd/1, which is checked against the file's permissions).
    if let Some(uid) = uid {
        std::os::unix::fs::fchown(&out, Some(uid), Some(uid))
            .with_context(|| format!("cannot chown {}", log.display()))?;
    }
    let err = out.try_clone()?;
    let mut cmd = command(netns, uid, argv);
    // Own process group: a Ctrl-C meant for the harness does not hit the pods' processes
    // (teardown stops them, in order).
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let child = cmd
        .spawn()
        .with_context(|| format!("{what}: cannot start {argv:?}"))?;
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    // The Child handle is dropped on purpose: the process outlives this call and is
    // stopped by PID (recorded in the state file) at teardown, possibly by another process.
    drop(child);
    let start_time = start_time(pid)
        .with_context(|| format!("{what}: exited immediately; see {}", log.display()))?;
    Ok(Proc {
        what: what.to_string(),
        pid,
        start_time,
        log: log.to_path_buf(),
    })
}

/// SIGTERM, then SIGKILL after `grace`. A process that is gone (or whose PID now
/// belongs to someone else) is left alone.
pub fn stop(p: &Proc, grace: Duration) -> Result<()> {
    if !alive(p) {
        reap(p.pid);
        return Ok(());
    }
    let pid = Pid::from_raw(p.pid);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        reap(p.pid);
        if !alive(p) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(pid, Signal::SIGKILL);
    for _ in 0..100 {
        reap(p.pid);
        if !alive(p) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("{} (pid {}) did not exit after SIGKILL", p.what, p.pid)
}

/// Collects the exit status when the process is our own child, so it does not linger
/// as a zombie (which would still look alive in /proc).
fn reap(pid: i32) {
    use nix::sys::wait::{WaitPidFlag, waitpid};
    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
}
