//! Idle memory with a large mesh: after the traffic runs, the control plane is given N more
//! services (ServiceEntries, one HTTP port and two static endpoints each, exported to every
//! namespace, so every sidecar gets a cluster, an endpoint set and a virtual host per
//! service), and the RSS of every xDS-driven sidecar (mesh-proxy and Envoy) is read once it
//! holds them all and has been idle a moment. nginx and HAProxy take no xDS: not measured.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use e2e::local::sync::get_in;
use serde_json::{Value, json};

use crate::procfs;
use crate::proxies::Kind;
use crate::topology::Pair;

/// The namespace of the generated services (no pods live there).
const NAMESPACE: &str = "bench-scale";
const FILE: &str = "bench-scale.yaml";

/// One generated service: `svc-N.bench-scale.example`, port 8080, endpoints in the pod
/// range's top /20 (no pod gets those addresses here; no traffic is sent to them).
fn service_entry(n: usize) -> Value {
    let ip = |k: usize| {
        format!(
            "10.250.{}.{}",
            240 + (2 * n + k) / 250,
            1 + (2 * n + k) % 250
        )
    };
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": format!("svc-{n}"), "namespace": NAMESPACE},
        "spec": {
            "hosts": [format!("svc-{n}.bench-scale.example")],
            "location": "MESH_INTERNAL",
            "resolution": "STATIC",
            "ports": [{"number": 8080, "name": "http", "protocol": "HTTP"}],
            "endpoints": [{"address": ip(0)}, {"address": ip(1)}],
        },
    })
}

/// Writes the services, waits for every sidecar to hold them, and reads the memory.
pub fn measure(
    config_dir: &Path,
    pairs: &[Pair],
    services: usize,
    idle: Duration,
) -> Result<Value> {
    if services > 2_000 {
        bail!("--scale-services {services}: at most 2,000 (the endpoint addresses run out)");
    }
    let sidecars: Vec<(&Pair, &str, &str, i32)> = pairs
        .iter()
        .filter(|p| matches!(p.kind, Kind::MeshProxy | Kind::Envoy))
        .flat_map(|p| {
            [
                ("client", p.client_netns.as_str(), p.client_proxy),
                ("server", p.server_netns.as_str(), p.server_proxy),
            ]
            .into_iter()
            .filter_map(move |(side, ns, pid)| pid.map(|pid| (p, side, ns, pid)))
        })
        .collect();
    let before: Vec<u64> = sidecars
        .iter()
        .map(|(_, _, ns, _)| active_clusters(ns))
        .collect::<Result<_>>()?;
    let docs: Vec<String> = (0..services)
        .map(|n| e2e::local::manifest::to_yaml(&service_entry(n)))
        .collect();
    let path = config_dir.join(FILE);
    std::fs::write(&path, docs.join("---\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    let mut synced_s = vec![None; sidecars.len()];
    while synced_s.iter().any(Option::is_none) {
        if Instant::now() > deadline {
            bail!(
                "sidecars did not receive {services} more clusters within 120 s ({} of {} did)",
                synced_s.iter().filter(|s| s.is_some()).count(),
                sidecars.len()
            );
        }
        for (i, (_, _, ns, _)) in sidecars.iter().enumerate() {
            if synced_s[i].is_none() && active_clusters(ns)? >= before[i] + services as u64 {
                synced_s[i] = Some(started.elapsed().as_secs_f64());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(idle);
    let out: Vec<Value> = sidecars
        .iter()
        .zip(&synced_s)
        .zip(&before)
        .map(|((&(pair, side, ns, pid), synced), before)| {
            json!({
                "kind": pair.kind,
                "side": side,
                "services": services,
                "clusters_before": before,
                "clusters": active_clusters(ns).ok(),
                "synced_after_s": synced,
                "idle_rss_mib": procfs::memory_mib(pid, "VmRSS"),
            })
        })
        .collect();
    // The next bench run starts from the plain mesh again.
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    Ok(Value::Array(out))
}

/// `cluster_manager.active_clusters` from the admin port inside the pod (Envoy and
/// mesh-proxy both answer `/stats?filter=` with `name: value` lines).
fn active_clusters(netns: &str) -> Result<u64> {
    const STAT: &str = "cluster_manager.active_clusters";
    let (status, body) = get_in(netns, "127.0.0.1:15000", &format!("/stats?filter={STAT}"))?;
    let text = String::from_utf8_lossy(&body);
    if status != 200 {
        bail!("admin /stats in {netns} answered {status}: {}", text.trim());
    }
    text.lines()
        .find_map(|l| l.trim().strip_prefix(STAT)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no {STAT} in the admin stats of {netns}"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn generated_services_have_distinct_endpoints_in_the_pod_range() {
        let mut seen = HashSet::new();
        for n in 0..2_000 {
            let se = service_entry(n);
            for ep in se["spec"]["endpoints"].as_array().unwrap() {
                let ip: std::net::Ipv4Addr = ep["address"].as_str().unwrap().parse().unwrap();
                let [a, b, c, d] = ip.octets();
                assert_eq!((a, b), (10, 250), "{ip}");
                assert!(c >= 240 && (1..=250).contains(&d), "{ip}");
                assert!(seen.insert(ip), "{ip} twice");
            }
        }
    }
}
