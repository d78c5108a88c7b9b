//! The local backend's `wait_synced`, and plain HTTP GETs from inside a network namespace
//! (the control plane's monitoring port in the node namespace, a proxy's admin port in its
//! pod's).
//!
//! To know that the control plane has read everything written so far, the harness writes
//! a marker (a ConfigMap with a new name each time) into the config directory after every
//! other write and waits for it in `/debug/configz`: the file source rescans the whole
//! directory in one pass, so a scan that sees the marker sees every file written before
//! it. Then every proxy's config is compared with what the control plane would send it
//! now ([`crate::sync`]).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::state::State;
use super::write_yaml;
use crate::sync::{Held, config_issues, current_nacks, divergence, holds, unsynced};

/// The marker's file name in the config directory.
pub const MARKER_FILE: &str = "e2e-sync.yaml";
const MARKER_NAMESPACE: &str = "mesh-e2e";

/// A GET over HTTP/1.1 with `Connection: close` (read to the end) from inside
/// `netns`; returns the status and body.
pub fn get_in(netns: &str, addr: &str, path: &str) -> Result<(u16, Vec<u8>)> {
    let (a, p) = (addr.to_string(), path.to_string());
    let netns_path = Path::new("/run/netns").join(netns);
    mesh_cni::netns::run_in(&netns_path, move || get(&a, &p))
        .map_err(|e| anyhow::anyhow!("cannot enter network namespace {netns}: {e}"))?
        .with_context(|| format!("GET http://{addr}{path} in {netns}"))
}

fn get(addr: &str, path: &str) -> Result<(u16, Vec<u8>)> {
    let sa: SocketAddr = addr.parse().context("bad address")?;
    let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers in the answer")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line {:?}", head.lines().next()))?;
    let body = raw[split + 4..].to_vec();
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    Ok((status, if chunked { dechunk(&body)? } else { body }))
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunk")?;
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .context("bad chunk size")?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(b.get(..size).context("short chunk")?);
        b = b.get(size + 2..).unwrap_or_default();
    }
}

/// A JSON GET that must answer 200.
pub fn get_json(netns: &str, addr: &str, path: &str) -> Result<Value> {
    let (status, body) = get_in(netns, addr, path)?;
    if status != 200 {
        bail!(
            "GET http://{addr}{path} answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    serde_json::from_slice(&body).with_context(|| format!("GET http://{addr}{path}: not JSON"))
}

/// Writes the next marker; returns its name.
pub fn write_marker(config_dir: &Path, seq: u64) -> Result<String> {
    let name = format!("sync-{seq}");
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": MARKER_NAMESPACE},
        "data": {"purpose": "mesh e2e: written after every change to know the control plane has read it"},
    });
    write_yaml(&config_dir.join(MARKER_FILE), &doc)?;
    Ok(name)
}

/// Waits for the marker, then for every proxy of `st` to run what the control plane
/// would send it now.
pub fn wait_converged(
    st: &State,
    config_dir: &Path,
    marker: &str,
    monitoring: &str,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let node = st.node_netns.as_str();
    let marker_origin = config_dir.join(MARKER_FILE).display().to_string();
    let user_prefix = format!("{}/", config_dir.join("user").display());
    let proxies: Vec<(String, String)> = st
        .pods
        .iter()
        .filter(|p| p.spec.has_sidecar() || p.spec.kind == super::manifest::PodKind::Gateway)
        .map(|p| {
            (
                format!("{}.{}", p.spec.name, p.spec.namespace),
                p.netns.clone(),
            )
        })
        .collect();
    let names: Vec<String> = proxies.iter().map(|(n, _)| n.clone()).collect();
    let mut waiting: Vec<String>;
    loop {
        waiting = Vec::new();
        let configz = get_json(node, monitoring, "/debug/configz")?;
        if !holds(&configz, &marker_origin, marker) {
            waiting.push(format!(
                "the control plane has not read the config directory yet (marker {marker})"
            ));
        } else {
            let issues = config_issues(&configz, &user_prefix);
            if !issues.is_empty() {
                bail!(
                    "the control plane reports problems with the applied config:\n  {}",
                    issues.join("\n  ")
                );
            }
            let syncz = get_json(node, monitoring, "/debug/syncz")?;
            let nacks = current_nacks(&syncz);
            if !nacks.is_empty() {
                bail!("{}", nacks.join("\n"));
            }
            waiting.extend(unsynced(&syncz, &names));
            if waiting.is_empty() {
                for (name, netns) in &proxies {
                    let control = get_json(
                        node,
                        monitoring,
                        &format!("/debug/config_dump?proxyID={name}"),
                    )?;
                    let held = get_json(netns, "127.0.0.1:15000", "/config_dump?include_eds")
                        .with_context(|| format!("proxy {name}"))?;
                    waiting.extend(
                        divergence(&Held::from_dump(&control), &Held::from_dump(&held))
                            .into_iter()
                            .map(|d| format!("proxy {name}: {d}")),
                    );
                }
            }
        }
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            // What each proxy is still missing, even where its sync state already says
            // why: a response the proxy does not ACK usually leaves something warming.
            for (name, netns) in &proxies {
                let (Ok(control), Ok(held)) = (
                    get_json(
                        node,
                        monitoring,
                        &format!("/debug/config_dump?proxyID={name}"),
                    ),
                    get_json(netns, "127.0.0.1:15000", "/config_dump?include_eds"),
                ) else {
                    continue;
                };
                for d in divergence(&Held::from_dump(&control), &Held::from_dump(&held)) {
                    let line = format!("proxy {name}: {d}");
                    if !waiting.contains(&line) {
                        waiting.push(line);
                    }
                }
            }
            waiting.truncate(16);
            bail!(
                "the mesh did not converge within {:.1}s:\n  {}",
                timeout.as_secs_f64(),
                waiting.join("\n  ")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_decoded() {
        assert_eq!(
            dechunk(b"5\r\nhello\r\n6;x=1\r\n world\r\n0\r\n\r\n").unwrap(),
            b"hello world"
        );
        assert!(dechunk(b"zz\r\n").is_err());
    }
}
