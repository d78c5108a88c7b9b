//! Helpers for tests that need root and network namespaces: namespaces named with a
//! unique prefix and deleted on drop, the root/strict-CI gate, and running commands
//! inside a namespace.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// True when the test may run. Without root it prints why and returns false, unless
/// `MESH_CI_STRICT=1`, where a missing prerequisite is a failure.
pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() && which("iptables-nft-restore") && which("ip") {
        return true;
    }
    let why = format!("{test}: needs root, iproute2 and iptables (network namespaces)");
    if std::env::var("MESH_CI_STRICT").as_deref() == Ok("1") {
        panic!("{why}; MESH_CI_STRICT=1 makes this a failure");
    }
    eprintln!("skipped: {why}");
    false
}

pub fn which(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false)
        || PathBuf::from("/usr/sbin").join(cmd).is_file()
}

/// A network namespace that is deleted when dropped.
pub struct Netns {
    pub name: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Netns {
    pub fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("mcni{}-{tag}{n}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs a command in the namespace and asserts it succeeded.
    pub fn exec(&self, cmd: &[&str]) -> String {
        let out = self.try_exec(cmd);
        assert!(
            out.status.success(),
            "{cmd:?} in {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn try_exec(&self, cmd: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .output()
            .expect("run ip netns exec")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn sh(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two namespaces joined by a veth pair: `peer` 10.250.0.1/24, `pod` 10.250.0.2/24.
pub fn pair() -> (Netns, Netns) {
    let peer = Netns::new("peer");
    let pod = Netns::new("pod");
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let (a, b) = (
        format!("mv{}a{n}", std::process::id() % 100_000),
        format!("mv{}b{n}", std::process::id() % 100_000),
    );
    peer.exec(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b]);
    peer.exec(&["ip", "link", "set", &b, "netns", &pod.name]);
    peer.exec(&["ip", "addr", "add", "10.250.0.1/24", "dev", &a]);
    peer.exec(&["ip", "link", "set", &a, "up"]);
    pod.exec(&["ip", "addr", "add", "10.250.0.2/24", "dev", &b]);
    pod.exec(&["ip", "link", "set", &b, "up"]);
    (peer, pod)
}
