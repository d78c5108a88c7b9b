//! Runs the pod network's CNI chain the way a container runtime does: each plugin in the
//! conflist in turn with `CNI_*` variables and its config on stdin, the previous result
//! as `prevResult`; DEL in reverse order. The plugins run inside the node namespace, so
//! the bridge plugin builds its bridge there.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::net::{LINK_CIDR, NODE_IP, POD_CIDR, VIP_CIDR};

/// Where the standard plugins live on Debian (and upstream's default).
pub const SYSTEM_PLUGIN_DIRS: [&str; 2] = ["/usr/lib/cni", "/opt/cni/bin"];

/// The chain: bridge + host-local, then mesh-cni reading pods from `config_dir`.
pub fn conflist(state_dir: &Path, config_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "mesh-local",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "mesh0",
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                    "routes": [{"dst": VIP_CIDR}, {"dst": LINK_CIDR}],
                    "dataDir": state_dir.join("ipam"),
                }
            },
            {
                "type": "mesh-cni",
                "podSource": {"type": "dir", "dir": config_dir},
                "logFile": state_dir.join("logs/mesh-cni.log"),
                "iptables": "nft",
            }
        ]
    })
}

/// Finds a plugin binary by type.
pub fn find_plugin(plugin_type: &str, extra_dirs: &[PathBuf]) -> Result<PathBuf> {
    extra_dirs
        .iter()
        .cloned()
        .chain(SYSTEM_PLUGIN_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(plugin_type))
        .find(|p| p.is_file())
        .with_context(|| format!("CNI plugin {plugin_type:?} not found (hint: apt-get install containernetworking-plugins)"))
}

/// One pod's identity for the CNI calls.
pub struct Target<'a> {
    pub node_netns: &'a str,
    pub pod_netns: &'a str,
    pub container_id: &'a str,
    pub pod: &'a str,
    pub namespace: &'a str,
}

fn invoke(
    command: &str,
    plugin: &Value,
    list: &Value,
    prev: Option<&Value>,
    t: &Target<'_>,
    dirs: &[PathBuf],
) -> Result<Value> {
    let ty = plugin["type"]
        .as_str()
        .context("conflist plugin without a type")?;
    let bin = find_plugin(ty, dirs)?;
    let mut conf = plugin.clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    if let Some(prev) = prev {
        conf["prevResult"] = prev.clone();
    }
    let cni_path: Vec<String> = dirs
        .iter()
        .map(|d| d.display().to_string())
        .chain(SYSTEM_PLUGIN_DIRS.iter().map(|s| s.to_string()))
        .collect();
    let netns_path = format!("/run/netns/{}", t.pod_netns);
    let mut child = Command::new("ip")
        .args(["netns", "exec", t.node_netns])
        .arg(&bin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", t.container_id)
        .env(
            "CNI_NETNS",
            if Path::new(&netns_path).exists() {
                netns_path.as_str()
            } else {
                ""
            },
        )
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_path.join(":"))
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={}",
                t.namespace, t.pod
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run CNI plugin {}", bin.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(conf.to_string().as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "CNI {command} of pod {}/{}: plugin {ty} failed: {} {}",
            t.namespace,
            t.pod,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("CNI plugin {ty} printed no JSON result"))
}

/// ADD through the whole chain; returns the final result (with the pod's IP).
pub fn add(list: &Value, t: &Target<'_>, dirs: &[PathBuf]) -> Result<Value> {
    let mut prev: Option<Value> = None;
    for plugin in list["plugins"]
        .as_array()
        .context("conflist without plugins")?
    {
        prev = Some(invoke("ADD", plugin, list, prev.as_ref(), t, dirs)?);
    }
    prev.context("empty CNI chain")
}

/// DEL in reverse order; every plugin is called even when one fails.
pub fn del(list: &Value, t: &Target<'_>, prev: Option<&Value>, dirs: &[PathBuf]) -> Result<()> {
    let mut errors = Vec::new();
    for plugin in list["plugins"].as_array().into_iter().flatten().rev() {
        if let Err(e) = invoke("DEL", plugin, list, prev, t, dirs) {
            errors.push(format!("{e:#}"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("{}", errors.join("; "))
    }
}

/// The pod's IPv4 address from a CNI result.
pub fn pod_ip(result: &Value) -> Result<String> {
    let addr = result["ips"][0]["address"]
        .as_str()
        .with_context(|| format!("CNI result has no IP: {result}"))?;
    Ok(addr.split('/').next().unwrap_or(addr).to_string())
}
