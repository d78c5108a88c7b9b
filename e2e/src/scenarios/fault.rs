//! Fault injection: `abort` 50% with 503 over 1,000 requests lands in the exact binomial
//! 99.9% interval, the aborted requests never reach the backend and are logged with flag
//! `FI`; `delay` 100% of 1 s holds every request for a second (flag `DI`).

use std::time::Duration;

use anyhow::{Result, ensure};

use super::binomial;
use super::env::{Env, SLEEP, brief};
use crate::cluster::ClientArgs;

const ABORT: &str = r#"
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
    fault:
      abort:
        httpStatus: 503
        percentage:
          value: 50
"#;

const DELAY: &str = r#"
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
    fault:
      delay:
        fixedDelay: 1s
        percentage:
          value: 100
"#;

pub fn run(env: &Env<'_>) -> Result<()> {
    env.service("backend", "http-backend", 8080)?;
    env.app("backend-v1", "backend", "v1", 8080)?;
    env.sleep()?;

    env.step("abort 50% with 503");
    env.apply(ABORT)?;
    let n = 1000;
    let key = env.key("abort");
    let r = env.from_sleep(
        ClientArgs::get(format!("http://backend:8080/?key={key}"))
            .requests(n)
            .concurrency(8),
    )?;
    let aborted = r.status("503");
    ensure!(
        aborted + r.ok == n,
        "every request is either aborted with 503 or answered: {}",
        brief(&r)
    );
    let (lo, hi) = binomial::interval(n, 0.5, 0.999);
    ensure!(
        (lo..=hi).contains(&aborted),
        "{aborted} of {n} aborted, outside the binomial 99.9% interval {lo}..={hi} for 50%"
    );
    let seen = env.requests_seen("backend-v1", 8080, &key)?;
    ensure!(
        seen == r.ok,
        "aborted requests must not reach the backend: it saw {seen}, {} were answered",
        r.ok
    );
    let log = env.access_log_lines(SLEEP, &key, n as usize)?;
    let fi = log
        .iter()
        .filter(|e| e.code == 503 && e.has_flag("FI"))
        .count() as u64;
    ensure!(
        fi == aborted,
        "{fi} of {aborted} aborts logged with flag FI"
    );

    env.step("delay 100% by 1 s");
    env.apply(DELAY)?;
    let key = env.key("delay");
    let r = env.from_sleep(
        ClientArgs::get(format!("http://backend:8080/?key={key}"))
            .requests(5)
            .concurrency(5)
            .timeout(Duration::from_secs(5)),
    )?;
    ensure!(r.ok == 5, "delayed requests still succeed: {}", brief(&r));
    ensure!(
        r.latency_ms.p50 >= 950.0 && r.latency_ms.max <= 2500.0,
        "every request must be held about 1 s (p50 {:.0} ms, max {:.0} ms)",
        r.latency_ms.p50,
        r.latency_ms.max
    );
    let log = env.access_log_lines(SLEEP, &key, 5)?;
    ensure!(
        log.iter().all(|e| e.code == 200 && e.has_flag("DI")),
        "delayed requests are logged with flag DI: {log:?}"
    );
    Ok(())
}
