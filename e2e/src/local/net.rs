//! The node network namespace, the host<->node link, and kube-proxy's job (Service VIPs
//! to pod IPs) for traffic that no sidecar captures.
//!
//! Addresses: pods 10.250.0.0/16 on the node's bridge (gateway 10.250.0.1, made by the
//! CNI bridge plugin on the first pod), Service VIPs 10.251.0.0/16 routed to the node,
//! and 169.254.250.0/30 between the host (.1) and the node (.2). The host gets routes for
//! the two /16s only; nothing has a default route, so nothing leaves the machine.

use std::io::Write as _;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

pub const NODE_IP: &str = "10.250.0.1";
pub const POD_CIDR: &str = "10.250.0.0/16";
pub const VIP_CIDR: &str = "10.251.0.0/16";
pub const LINK_CIDR: &str = "169.254.250.0/30";
pub const HOST_LINK_IP: &str = "169.254.250.1";
pub const NODE_LINK_IP: &str = "169.254.250.2";

/// Runs a command and fails with its stderr.
pub fn run(argv: &[&str]) -> Result<String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .with_context(|| format!("cannot run {argv:?}"))?;
    if !out.status.success() {
        bail!(
            "{argv:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command inside a network namespace.
pub fn ns_run(ns: &str, argv: &[&str]) -> Result<String> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(argv);
    run(&full)
}

pub fn netns_exists(ns: &str) -> bool {
    std::path::Path::new("/run/netns").join(ns).exists()
}

/// Creates a network namespace with loopback up and unprivileged low ports allowed (pods
/// serve port 80 as a non-root user, as Istio's gateways do with the same sysctl).
pub fn create_netns(ns: &str) -> Result<()> {
    if netns_exists(ns) {
        bail!(
            "network namespace {ns} already exists (hint: a previous cluster was not torn down; run `mesh-local down`)"
        );
    }
    run(&["ip", "netns", "add", ns])?;
    ns_run(ns, &["ip", "link", "set", "lo", "up"])?;
    ns_run(
        ns,
        &["sysctl", "-qw", "net.ipv4.ip_unprivileged_port_start=0"],
    )?;
    Ok(())
}

pub fn delete_netns(ns: &str) -> Result<()> {
    if netns_exists(ns) {
        run(&["ip", "netns", "del", ns])?;
    }
    Ok(())
}

/// The node namespace: forwarding on, and the kube-proxy chains hooked in.
pub fn create_node(node: &str) -> Result<()> {
    create_netns(node)?;
    ns_run(node, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    restore(
        node,
        "*nat\n:MESH-SERVICES - [0:0]\n:MESH-POSTROUTING - [0:0]\n\
         -A PREROUTING -j MESH-SERVICES\n-A OUTPUT -j MESH-SERVICES\n\
         -A POSTROUTING -j MESH-POSTROUTING\n\
         -A MESH-POSTROUTING -m conntrack --ctstate DNAT -j MASQUERADE\nCOMMIT\n",
    )
}

/// The veth pair between the host and the node, with host routes to pods and VIPs.
pub fn create_host_link(node: &str, host_if: &str, node_if: &str) -> Result<()> {
    run(&[
        "ip", "link", "add", host_if, "type", "veth", "peer", "name", node_if,
    ])?;
    run(&["ip", "link", "set", node_if, "netns", node])?;
    run(&[
        "ip",
        "addr",
        "add",
        &format!("{HOST_LINK_IP}/30"),
        "dev",
        host_if,
    ])?;
    run(&["ip", "link", "set", host_if, "up"])?;
    ns_run(
        node,
        &[
            "ip",
            "addr",
            "add",
            &format!("{NODE_LINK_IP}/30"),
            "dev",
            node_if,
        ],
    )?;
    ns_run(node, &["ip", "link", "set", node_if, "up"])?;
    for cidr in [POD_CIDR, VIP_CIDR] {
        run(&["ip", "route", "add", cidr, "via", NODE_LINK_IP, "dev", host_if])
            .with_context(|| format!("cannot route {cidr} to the node (hint: is another local cluster up? `mesh-local down`)"))?;
    }
    Ok(())
}

/// The host's route for `cidr`, if there is one (another cluster's host link).
pub fn host_route(cidr: &str) -> Result<Option<String>> {
    let out = run(&["ip", "route", "show", cidr])?;
    let line = out.trim();
    Ok((!line.is_empty()).then(|| line.to_string()))
}

/// Deleting the host end removes the pair and the routes through it.
pub fn delete_host_link(host_if: &str) -> Result<()> {
    if std::path::Path::new("/sys/class/net")
        .join(host_if)
        .exists()
    {
        run(&["ip", "link", "del", host_if])?;
    }
    Ok(())
}

/// One Service port and its endpoints, for the kube-proxy rules.
pub struct VipRule {
    pub vip: String,
    pub port: u16,
    pub endpoints: Vec<(String, u16)>,
}

/// Replaces the VIP rules atomically: random choice among endpoints, as kube-proxy's
/// iptables mode does (probability 1/n, 1/(n-1), ... 1).
pub fn sync_vips(node: &str, rules: &[VipRule]) -> Result<()> {
    let mut input = String::from("*nat\n:MESH-SERVICES - [0:0]\n");
    for r in rules {
        let n = r.endpoints.len();
        for (i, (ip, port)) in r.endpoints.iter().enumerate() {
            let remaining = n - i;
            let stat = if remaining > 1 {
                format!(
                    "-m statistic --mode random --probability {:.5} ",
                    1.0 / remaining as f64
                )
            } else {
                String::new()
            };
            input.push_str(&format!(
                "-A MESH-SERVICES -d {}/32 -p tcp -m tcp --dport {} {stat}-j DNAT --to-destination {ip}:{port}\n",
                r.vip, r.port
            ));
        }
        // No endpoint: no rule (REJECT is not allowed in the nat table); the VIP has no
        // route in the node, so a connection fails fast with "no route to host".
    }
    input.push_str("COMMIT\n");
    restore(node, &input)
}

fn restore(ns: &str, input: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "iptables-nft-restore", "--noflush"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run iptables-nft-restore (hint: apt-get install iptables)")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "iptables-nft-restore in {ns} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
