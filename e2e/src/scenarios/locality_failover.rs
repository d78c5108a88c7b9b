//! Locality failover: the caller is in `us-east`; with `localityLbSetting` (failover
//! us-east -> us-west) and outlier detection, every request goes to the local endpoint
//! while it is healthy, and to the remote locality once the local one is ejected.

use anyhow::{Result, ensure};

use super::env::{Env, answer_pod, brief};
use crate::cluster::ClientArgs;
use crate::local::manifest::PodSpec;

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
      simple: ROUND_ROBIN
      localityLbSetting:
        enabled: true
        failover:
        - from: us-east
          to: us-west
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 1m
      maxEjectionPercent: 100
"#;

/// Istio's pod label for an explicit locality (`region.zone.subzone`).
const LOCALITY: &str = "istio-locality";

fn located(name: &str, app: &str, locality: &str, port: u16) -> PodSpec {
    let mut p = PodSpec::app(name, "default", app, "v1", &[port]);
    p.labels.insert(LOCALITY.into(), locality.into());
    p
}

pub fn run(env: &Env<'_>) -> Result<()> {
    env.service("backend", "http-backend", 8080)?;
    env.pod(located("backend-east", "backend", "us-east.zone-a", 8080))?;
    env.pod(located("backend-west", "backend", "us-west.zone-b", 8080))?;
    env.pod(located("sleep", "sleep", "us-east.zone-a", 80))?;
    env.apply(CONFIG)?;

    let r = env.from_sleep(
        ClientArgs::get("http://backend:8080/")
            .requests(40)
            .concurrency(2),
    )?;
    ensure!(
        r.ok == 40 && r.pod("backend-east") == 40,
        "while the local locality is healthy it gets every request: {}",
        brief(&r)
    );

    env.step("the local endpoint fails and is ejected");
    let n = 40;
    let r = env.from_sleep(
        ClientArgs::get("http://backend:8080/?status=500&pod=backend-east")
            .requests(n)
            .keep(n as usize),
    )?;
    let errors = r.status("500");
    ensure!(
        (1..=3).contains(&errors) && r.pod("backend-east") == errors,
        "one 500 ejects the local endpoint: {}",
        brief(&r)
    );
    let late = &r.answers[10..];
    ensure!(
        late.iter()
            .all(|a| answer_pod(a) == "backend-west" && a["status"] == 200),
        "after the ejection every request fails over to us-west: {:?}",
        late.iter().map(answer_pod).collect::<Vec<_>>()
    );
    Ok(())
}
