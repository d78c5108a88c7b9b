//! Sidecar scoping: a Sidecar resource limits the `sleep` proxy's egress to catalog. A
//! host outside the scope is then treated exactly like a host outside the mesh, as Istio
//! does:
//!
//! - `outboundTrafficPolicy: REGISTRY_ONLY`: HTTP to an out-of-scope service on a port
//!   the proxy has an HTTP listener for (catalog-staging on 80) hits the `block_all`
//!   virtual host: a 502 from the proxy; on a port with no listener at all (reviews on
//!   9080) the connection goes to `BlackHoleCluster` and is closed with no response;
//! - `ALLOW_ANY` (the mesh default): both are passed through to their original
//!   destination (the `allow_any` virtual host, the `PassthroughCluster`) and answered by
//!   the real service, but with none of its routing: a VirtualService for the
//!   out-of-scope reviews (v3 only) is not applied, kube-proxy balances the connections
//!   over every version.

use anyhow::{Result, ensure};

use super::env::{Env, brief};
use crate::cluster::ClientArgs;

const REVIEWS_V3_ONLY: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: default
spec:
  host: reviews
  subsets:
  - name: v3
    labels:
      version: v3
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v3
"#;

fn sidecar(policy: Option<&str>) -> String {
    let policy = policy
        .map(|p| format!("  outboundTrafficPolicy:\n    mode: {p}\n"))
        .unwrap_or_default();
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: sleep
  namespace: default
spec:
  workloadSelector:
    labels:
      app: sleep
  egress:
  - hosts:
    - "./catalog.default.svc.cluster.local"
{policy}"#
    )
}

/// New connection per request, so that passthrough traffic is balanced per request by
/// kube-proxy (as it balances connections).
fn fresh(url: &str, n: u64) -> ClientArgs {
    ClientArgs::get(url)
        .requests(n)
        .concurrency(2)
        .header("connection", "close")
}

pub fn run(env: &Env<'_>) -> Result<()> {
    env.service("catalog", "http-catalog", 80)?;
    env.app("catalog-v1", "catalog", "v1", 80)?;
    env.service("catalog-staging", "http-catalog-staging", 80)?;
    env.app("catalog-staging-v1", "catalog-staging", "v1", 80)?;
    env.service("reviews", "http-reviews", 9080)?;
    for v in ["v1", "v2", "v3"] {
        env.app(&format!("reviews-{v}"), "reviews", v, 9080)?;
    }
    env.sleep()?;
    env.apply(REVIEWS_V3_ONLY)?;

    env.step("REGISTRY_ONLY: only catalog is reachable");
    env.apply(&sidecar(Some("REGISTRY_ONLY")))?;
    let r = env.from_sleep(fresh("http://catalog/", 10))?;
    ensure!(
        r.ok == 10 && r.by_service.get("catalog") == Some(&10),
        "catalog is in scope: {}",
        brief(&r)
    );
    let r = env.from_sleep(fresh("http://catalog-staging/", 10))?;
    ensure!(
        r.status("502") == 10 && r.by_service.is_empty(),
        "out of scope on an HTTP port with REGISTRY_ONLY: the block_all route answers 502: {}",
        brief(&r)
    );
    let r = env.from_sleep(fresh("http://reviews:9080/", 10).errors_expected())?;
    ensure!(
        r.failed() == 10 && r.by_status.is_empty(),
        "out of scope on a port with no listener with REGISTRY_ONLY: BlackHoleCluster closes the connection, no HTTP response: {}",
        brief(&r)
    );

    env.step("ALLOW_ANY (default): out-of-scope hosts pass through, unrouted");
    env.apply(&sidecar(None))?;
    let r = env.from_sleep(fresh("http://catalog/", 10))?;
    ensure!(r.ok == 10, "catalog is in scope: {}", brief(&r));
    let r = env.from_sleep(fresh("http://catalog-staging/", 10))?;
    ensure!(
        r.ok == 10 && r.by_service.get("catalog-staging") == Some(&10),
        "out of scope with ALLOW_ANY: passed through to catalog-staging: {}",
        brief(&r)
    );
    let r = env.from_sleep(fresh("http://reviews:9080/", 30))?;
    ensure!(
        r.ok == 30 && r.by_service.get("reviews") == Some(&30),
        "out of scope with ALLOW_ANY: passed through to reviews: {}",
        brief(&r)
    );
    ensure!(
        r.by_version.len() > 1,
        "passthrough traffic must not follow the out-of-scope reviews VirtualService (v3 only); kube-proxy spreads 30 connections over v1..v3: {}",
        brief(&r)
    );
    Ok(())
}
