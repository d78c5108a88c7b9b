//! Circuit breaking (`maxConnections: 1`, `http1MaxPendingRequests: 1`): of 20 concurrent
//! slow requests at most two are admitted (one on the connection, one queued); the
//! overflow is answered 503 at once by the caller's sidecar with flag `UO`, and never
//! reaches the backend (no queue growth).

use std::time::Duration;

use anyhow::{Result, ensure};

use super::env::{Env, SLEEP, brief};
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
    connectionPool:
      tcp:
        maxConnections: 1
      http:
        http1MaxPendingRequests: 1
"#;

const CONCURRENT: u64 = 20;

pub fn run(env: &Env<'_>) -> Result<()> {
    env.service("backend", "http-backend", 8080)?;
    env.app("backend-v1", "backend", "v1", 8080)?;
    env.sleep()?;
    env.apply(CONFIG)?;
    let key = env.key("burst");
    let r = env.from_sleep(
        ClientArgs::get(format!("http://backend:8080/?delay=1s&key={key}"))
            .requests(CONCURRENT)
            .concurrency(CONCURRENT as usize)
            .timeout(Duration::from_secs(10)),
    )?;
    let rejected = r.status("503");
    ensure!(
        (1..=2).contains(&r.ok) && r.ok + rejected == CONCURRENT,
        "one connection and one pending slot admit at most two of {CONCURRENT} concurrent requests, the rest get 503: {}",
        brief(&r)
    );
    ensure!(
        r.latency_ms.p50 < 500.0,
        "the overflow must be answered at once, not queued (p50 {:.0} ms)",
        r.latency_ms.p50
    );
    let seen = env.requests_seen("backend-v1", 8080, &key)?;
    ensure!(
        seen == r.ok,
        "the backend saw {seen} requests; only the {} admitted may reach it",
        r.ok
    );
    let log = env.access_log_lines(SLEEP, &key, CONCURRENT as usize)?;
    let overflow = log
        .iter()
        .filter(|e| e.code == 503 && e.has_flag("UO"))
        .count() as u64;
    ensure!(
        overflow == rejected,
        "the caller's proxy must log every 503 with flag UO ({overflow} of {rejected}): {log:?}"
    );
    Ok(())
}
