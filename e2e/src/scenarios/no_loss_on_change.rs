//! A configuration change while traffic flows loses no request: a steady load runs while
//! the VirtualService's weights flip between v1 and v2 several times; every request must
//! succeed, and both versions must have answered (the flips took effect mid-stream).

use std::time::Duration;

use anyhow::{Context, Result, ensure};

use super::env::{Env, brief};
use crate::cluster::ClientArgs;

const DESTINATION_RULE: &str = r#"
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
"#;

fn weights(v1: u32, v2: u32) -> String {
    format!(
        r#"
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
      weight: {v1}
    - destination:
        host: catalog
        subset: v2
      weight: {v2}
"#
    )
}

/// 1,500 requests at 250 per second: six seconds of steady load.
const REQUESTS: u64 = 1500;
const RATE: f64 = 250.0;

pub fn run(env: &Env<'_>) -> Result<()> {
    env.service("catalog", "http-catalog", 80)?;
    env.app("catalog-v1", "catalog", "v1", 80)?;
    env.app("catalog-v2", "catalog", "v2", 80)?;
    env.sleep()?;
    env.apply(DESTINATION_RULE)?;
    env.apply(&weights(100, 0))?;
    let load = ClientArgs::get("http://catalog/")
        .requests(REQUESTS)
        .concurrency(8)
        .rate(RATE)
        .timeout(Duration::from_secs(5));
    let report = std::thread::scope(|s| {
        let traffic = s.spawn(|| env.from_sleep(load));
        std::thread::sleep(Duration::from_millis(500));
        let mut flips = Ok(());
        for (i, (a, b)) in [(0, 100), (100, 0), (0, 100), (50, 50)]
            .into_iter()
            .enumerate()
        {
            env.step(format!("flip {}: v1 {a}% / v2 {b}%", i + 1));
            if let Err(e) = env.apply(&weights(a, b)) {
                flips = Err(e);
                break;
            }
            std::thread::sleep(Duration::from_millis(700));
        }
        let report = traffic
            .join()
            .map_err(|_| anyhow::anyhow!("the traffic thread panicked"))
            .and_then(|r| r.context("steady load"));
        flips.map(|()| report)
    })??;
    ensure!(
        report.total == REQUESTS && report.ok == REQUESTS && report.failed() == 0,
        "no request may fail while routes change: {}",
        brief(&report)
    );
    ensure!(
        report.version("v1") > 0 && report.version("v2") > 0,
        "the flips must take effect during the load: {}",
        brief(&report)
    );
    Ok(())
}
