//! Retries (`attempts: 2`, `perTryTimeout: 300ms`, `retryOn: 5xx,gateway-error`): a
//! backend failing its first two attempts succeeds for the client; one failing every
//! attempt is tried exactly attempts+1 times; a 4xx is not retried; a backend slower
//! than the per-try timeout is tried attempts+1 times and gives 504.

use std::time::Duration;

use anyhow::{Result, ensure};

use super::env::{Env, brief};
use crate::cluster::ClientArgs;

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: backend
  namespace: default
spec:
  hosts:
  - backend
  http:
  - route:
    - destination:
        host: backend
    retries:
      attempts: 2
      perTryTimeout: 300ms
      retryOn: 5xx,gateway-error
"#;

const ATTEMPTS: u64 = 2;
const POD: &str = "backend-v1";

pub fn run(env: &Env<'_>) -> Result<()> {
    // One endpoint, so every attempt is counted by the same app.
    env.service("backend", "http-backend", 8080)?;
    env.app(POD, "backend", "v1", 8080)?;
    env.sleep()?;
    env.apply(CONFIG)?;
    let once = |query: &str| {
        env.from_sleep(
            ClientArgs::get(format!("http://backend:8080/?{query}"))
                .timeout(Duration::from_secs(5)),
        )
    };

    env.step("fails twice, then succeeds");
    let key = env.key("recovers");
    let r = once(&format!("fail_first=2&status=503&key={key}"))?;
    ensure!(r.ok == 1, "the third attempt succeeds: {}", brief(&r));
    let seen = env.requests_seen(POD, 8080, &key)?;
    ensure!(
        seen == ATTEMPTS + 1,
        "the backend saw {seen} attempts, want {}",
        ATTEMPTS + 1
    );

    env.step("fails every attempt");
    let key = env.key("exhausted");
    let r = once(&format!("fail_first=10&status=503&key={key}"))?;
    ensure!(
        r.status("503") == 1,
        "retries exhausted: the last 503 reaches the client: {}",
        brief(&r)
    );
    let seen = env.requests_seen(POD, 8080, &key)?;
    ensure!(
        seen == ATTEMPTS + 1,
        "the backend saw {seen} attempts, want exactly {}",
        ATTEMPTS + 1
    );

    env.step("a 4xx is not retried");
    let key = env.key("client-error");
    let r = once(&format!("fail_first=10&status=404&key={key}"))?;
    ensure!(
        r.status("404") == 1,
        "the 404 reaches the client: {}",
        brief(&r)
    );
    let seen = env.requests_seen(POD, 8080, &key)?;
    ensure!(
        seen == 1,
        "a 404 must not be retried (the backend saw {seen})"
    );

    env.step("slower than the per-try timeout");
    let key = env.key("slow");
    let r = once(&format!("delay=1s&key={key}"))?;
    ensure!(
        r.status("504") == 1,
        "every try times out: 504: {}",
        brief(&r)
    );
    ensure!(
        r.latency_ms.max >= 850.0 && r.latency_ms.max <= 2500.0,
        "three tries of 300 ms plus backoff take about 1 s, got {:.0} ms",
        r.latency_ms.max
    );
    let seen = env.eventually_seen(POD, 8080, &key, ATTEMPTS + 1, Duration::from_secs(2))?;
    ensure!(
        seen == ATTEMPTS + 1,
        "the backend saw {seen} tries, want {}",
        ATTEMPTS + 1
    );
    Ok(())
}
