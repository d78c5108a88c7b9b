//! Canary 90/10: over 1,000 requests the canary's share must fall inside the exact
//! binomial 99.9% interval for p = 0.1 (Envoy picks a weighted cluster per request at
//! random, so the count is Binomial(1000, 0.1)).

use anyhow::{Result, ensure};

use super::binomial;
use super::env::{Env, brief};
use crate::cluster::ClientArgs;

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: catalog
  namespace: default
spec:
  host: catalog.default.svc.cluster.local
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
      weight: 90
    - destination:
        host: catalog
        subset: v2
      weight: 10
"#;

pub const REQUESTS: u64 = 1000;

pub fn run(env: &Env<'_>) -> Result<()> {
    env.service("catalog", "http-catalog", 80)?;
    env.app("catalog-v1", "catalog", "v1", 80)?;
    env.app("catalog-v2", "catalog", "v2", 80)?;
    env.sleep()?;
    env.apply(CONFIG)?;
    let r = env.from_sleep(
        ClientArgs::get("http://catalog/")
            .requests(REQUESTS)
            .concurrency(8),
    )?;
    ensure!(
        r.ok == REQUESTS && r.version("v1") + r.version("v2") == REQUESTS,
        "every request must succeed, answered by v1 or v2: {}",
        brief(&r)
    );
    let (lo, hi) = binomial::interval(REQUESTS, 0.1, 0.999);
    let canary = r.version("v2");
    env.step(format!(
        "canary v2 got {canary} of {REQUESTS} (99.9% interval {lo}..={hi})"
    ));
    ensure!(
        (lo..=hi).contains(&canary),
        "v2 got {canary} of {REQUESTS} requests, outside the binomial 99.9% interval {lo}..={hi} for weight 10%"
    );
    Ok(())
}
