//! Route timeout: with `timeout: 0.5s`, a backend that takes 2 s gives the caller a 504
//! from its sidecar after about half a second (response flag `UT`); fast requests are
//! unaffected.

use std::time::Duration;

use anyhow::{Result, ensure};

use super::env::{Env, SLEEP, brief};
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
    timeout: 0.5s
"#;

pub fn run(env: &Env<'_>) -> Result<()> {
    env.service("backend", "http-backend", 8080)?;
    env.app("backend-v1", "backend", "v1", 8080)?;
    env.sleep()?;
    env.apply(CONFIG)?;
    let fast = env.from_sleep(ClientArgs::get("http://backend:8080/").requests(5))?;
    ensure!(fast.ok == 5, "fast requests pass: {}", brief(&fast));

    let key = env.key("slow");
    let r = env.from_sleep(
        ClientArgs::get(format!("http://backend:8080/?delay=2s&key={key}"))
            .requests(4)
            .concurrency(4)
            .timeout(Duration::from_secs(5)),
    )?;
    ensure!(
        r.status("504") == 4,
        "a 2 s backend behind a 0.5 s timeout must give 504: {}",
        brief(&r)
    );
    // Generous slack: this is a functional check, not a benchmark.
    ensure!(
        r.latency_ms.p50 >= 450.0 && r.latency_ms.max <= 1500.0,
        "the 504 must come after about 0.5 s (got p50 {:.0} ms, max {:.0} ms)",
        r.latency_ms.p50,
        r.latency_ms.max
    );
    let log = env.access_log_lines(SLEEP, &key, 4)?;
    ensure!(
        log.iter().all(|e| e.code == 504 && e.has_flag("UT")),
        "the caller's proxy must log 504 UT: {log:?}"
    );
    Ok(())
}
