//! Mirroring: the caller is answered by the primary only, and the mirror target receives a
//! copy of every request (counted by the test app under a unique key).

use std::time::Duration;

use anyhow::{Result, ensure};

use super::env::{Env, brief};
use crate::cluster::ClientArgs;

pub const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: catalog
  namespace: default
spec:
  host: catalog
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: catalog
  namespace: default
spec:
  hosts:
  - catalog
  http:
  - route:
    - destination:
        host: catalog
        subset: v1
      weight: 100
    mirror:
      host: catalog
      subset: v2
    mirrorPercentage:
      value: 100.0
"#;

pub fn run(env: &Env<'_>) -> Result<()> {
    env.service("catalog", "http-catalog", 80)?;
    env.app("catalog-v1", "catalog", "v1", 80)?;
    env.app("catalog-v2", "catalog", "v2", 80)?;
    env.sleep()?;
    env.apply(CONFIG)?;
    let key = env.key("mirror");
    let n = 50;
    let r = env.from_sleep(
        ClientArgs::get(format!("http://catalog/items?key={key}"))
            .requests(n)
            .concurrency(4),
    )?;
    ensure!(
        r.ok == n && r.version("v1") == n && r.version("v2") == 0,
        "the caller must see only the primary (v1): {}",
        brief(&r)
    );
    let primary = env.requests_seen("catalog-v1", 80, &key)?;
    ensure!(primary == n, "the primary saw {primary} requests, want {n}");
    let mirrored = env.eventually_seen("catalog-v2", 80, &key, n, Duration::from_secs(10))?;
    ensure!(
        mirrored == n,
        "the mirror target saw {mirrored} of {n} requests"
    );
    Ok(())
}
