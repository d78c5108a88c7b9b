//! Local rate limiting, configured as Istio users do it: an EnvoyFilter inserting
//! `envoy.filters.http.local_ratelimit` into the backend's inbound HTTP filter chain
//! (the example of Istio's "Enabling Rate Limits using Envoy" task) with a bucket of 10
//! tokens refilled with 10 every second. A burst of 30 requests gets 10 through (20 when
//! the burst straddles a refill) and 429 for the excess, logged with flag `RL`; the
//! bucket refills within a second; deleting the EnvoyFilter lifts the limit, also on the
//! connections the sleep's proxy pooled while it was in force.

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};

use super::env::{Env, brief};
use crate::cluster::ClientArgs;

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata:
  name: backend-local-ratelimit
  namespace: default
spec:
  workloadSelector:
    labels:
      app: backend
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_INBOUND
      listener:
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/udpa.type.v1.TypedStruct
          type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          value:
            stat_prefix: http_local_rate_limiter
            token_bucket:
              max_tokens: 10
              tokens_per_fill: 10
              fill_interval: 1s
            filter_enabled:
              runtime_key: local_rate_limit_enabled
              default_value:
                numerator: 100
                denominator: HUNDRED
            filter_enforced:
              runtime_key: local_rate_limit_enforced
              default_value:
                numerator: 100
                denominator: HUNDRED
            response_headers_to_add:
            - append_action: OVERWRITE_IF_EXISTS_OR_ADD
              header:
                key: x-local-rate-limit
                value: "true"
"#;

pub fn run(env: &Env<'_>) -> Result<()> {
    env.service("backend", "http-backend", 8080)?;
    env.app("backend-v1", "backend", "v1", 8080)?;
    env.sleep()?;
    env.apply(CONFIG)?;
    let key = env.key("burst");
    let n = 30;
    let r =
        env.from_sleep(ClientArgs::get(format!("http://backend:8080/?key={key}")).requests(n))?;
    let limited = r.status("429");
    ensure!(
        (10..=20).contains(&r.ok) && r.ok + limited == n,
        "a bucket of 10 lets 10 of a burst of {n} through (20 across a refill), 429 for the rest: {}",
        brief(&r)
    );
    let log = env.access_log_lines("backend-v1", &key, n as usize)?;
    let rl = log
        .iter()
        .filter(|e| e.code == 429 && e.has_flag("RL"))
        .count() as u64;
    ensure!(
        rl == limited,
        "{rl} of {limited} 429s logged with flag RL by the backend's proxy"
    );

    env.step("the bucket refills");
    let deadline = Instant::now() + Duration::from_millis(2500);
    loop {
        let r = env.from_sleep(ClientArgs::get("http://backend:8080/"))?;
        if r.ok == 1 {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "no token after 2.5 s with a 1 s fill interval: {}",
                brief(&r)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // The sleep's proxy pools its connections to the backend's proxy: those opened under
    // the filter must drain when it goes, not keep limiting for as long as they live.
    env.step("the EnvoyFilter is deleted: no limit, on pooled connections too");
    env.delete(CONFIG)?;
    let r = env.from_sleep(
        ClientArgs::get(format!("http://backend:8080/?key={}", env.key("unlimited"))).requests(n),
    )?;
    ensure!(
        r.ok == n,
        "after the EnvoyFilter is deleted every request passes: {}",
        brief(&r)
    );
    Ok(())
}
