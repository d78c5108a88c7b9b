//! Consistent hashing on a header: every request with the same `x-user` goes to the same
//! pod. With a ring hash, adding a fourth pod moves few keys, mostly to the new pod.
//!
//! Envoy rebuilds the ring with each host's share of points scaled to the minimum ring
//! size, so besides the ~1/4 of keys the new host takes, keys on points an old host gives
//! up move too: about a third of the keys move in all (simulated over many host
//! addresses: 25%..45%), against three quarters for a rehash modulo the host count. The
//! assertions keep a wide margin on both sides of that.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, ensure};

use super::env::{Env, answer_pod, brief};
use crate::cluster::ClientArgs;

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: backend
  namespace: default
spec:
  host: backend
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpHeaderName: x-user
        ringHash:
          minimumRingSize: 1024
"#;

const KEYS: u64 = 100;
const PER_KEY: u64 = 3;

/// Which pod every key went to; fails if a key went to two pods.
fn placement(env: &Env<'_>) -> Result<BTreeMap<String, String>> {
    let n = KEYS * PER_KEY;
    let r = env.from_sleep(
        ClientArgs::get("http://backend:8080/")
            .requests(n)
            .concurrency(4)
            .vary_header("x-user", KEYS)
            .keep(n as usize),
    )?;
    ensure!(r.ok == n, "every request must succeed: {}", brief(&r));
    let mut by_key: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for a in &r.answers {
        let key = a["headers"]["x-user"]
            .as_str()
            .context("the app must echo x-user")?;
        by_key
            .entry(key.to_string())
            .or_default()
            .insert(answer_pod(a).to_string());
    }
    let split: Vec<_> = by_key.iter().filter(|(_, pods)| pods.len() > 1).collect();
    ensure!(split.is_empty(), "a key must stick to one pod: {split:?}");
    Ok(by_key
        .into_iter()
        .filter_map(|(k, pods)| pods.into_iter().next().map(|p| (k, p)))
        .collect())
}

pub fn run(env: &Env<'_>) -> Result<()> {
    env.service("backend", "http-backend", 8080)?;
    for i in 1..=3 {
        env.app(&format!("backend-{i}"), "backend", "v1", 8080)?;
    }
    env.sleep()?;
    env.apply(CONFIG)?;
    let before = placement(env)?;
    let used: BTreeSet<&String> = before.values().collect();
    ensure!(
        used.len() >= 2,
        "{KEYS} keys must spread over the pods: {used:?}"
    );

    env.step("add a fourth pod");
    env.app("backend-4", "backend", "v1", 8080)?;
    env.synced()?;
    let after = placement(env)?;
    let moved: Vec<&String> = before
        .keys()
        .filter(|k| after.get(*k) != before.get(*k))
        .collect();
    let to_new = moved
        .iter()
        .filter(|k| after.get(**k).map(String::as_str) == Some("backend-4"))
        .count();
    env.step(format!(
        "{} of {KEYS} keys moved, {to_new} of them to the new pod",
        moved.len()
    ));
    ensure!(
        to_new as u64 >= KEYS / 10,
        "the new pod must take a share of the keys (took {to_new} of {KEYS})"
    );
    ensure!(
        (moved.len() as u64) * 100 <= KEYS * 60,
        "a ring hash moves few keys when a host is added ({} of {KEYS} moved; a rehash would move about 75)",
        moved.len()
    );
    ensure!(
        to_new * 10 >= moved.len() * 4,
        "most moved keys go to the new pod ({to_new} of {})",
        moved.len()
    );
    Ok(())
}
