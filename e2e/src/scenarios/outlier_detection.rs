//! Outlier detection: of three endpoints, one answers 500 (`status=500&pod=...` makes only
//! that pod fail). After `consecutive5xxErrors: 3` it is ejected: its share drops to zero
//! while it stays ejected, and it receives traffic again after `baseEjectionTime` (the
//! detector un-ejects on its next `interval` tick after that time).

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};

use super::env::{Env, answer_pod, brief};
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
    outlierDetection:
      consecutive5xxErrors: 3
      interval: 1s
      baseEjectionTime: 5s
      maxEjectionPercent: 50
"#;

const BAD: &str = "backend-2";
const BASE_EJECTION: Duration = Duration::from_secs(5);

pub fn run(env: &Env<'_>) -> Result<()> {
    env.service("backend", "http-backend", 8080)?;
    for i in 1..=3 {
        env.app(&format!("backend-{i}"), "backend", "v1", 8080)?;
    }
    env.sleep()?;
    env.apply(CONFIG)?;

    env.step(format!("{BAD} answers 500 until ejected"));
    let n = 60;
    let r = env.from_sleep(
        ClientArgs::get(format!("http://backend:8080/?status=500&pod={BAD}"))
            .requests(n)
            .keep(n as usize),
    )?;
    let ejected_at = Instant::now();
    let errors = r.status("500");
    ensure!(
        (3..=5).contains(&errors) && r.pod(BAD) == errors && r.ok == n - errors,
        "the failing endpoint must be ejected after 3 consecutive 500s (a request or two may be in flight when it is): {}",
        brief(&r)
    );
    let late = &r.answers[n as usize / 2..];
    ensure!(
        late.iter().all(|a| answer_pod(a) != BAD),
        "once ejected, {BAD} must get no traffic: {:?}",
        late.iter().map(answer_pod).collect::<Vec<_>>()
    );

    env.step("healthy again, but still ejected");
    let r = env.from_sleep(ClientArgs::get("http://backend:8080/").requests(30))?;
    if ejected_at.elapsed() < BASE_EJECTION - Duration::from_secs(1) {
        ensure!(
            r.ok == 30 && r.pod(BAD) == 0,
            "{BAD} must stay ejected for baseEjectionTime: {}",
            brief(&r)
        );
    }

    env.step("back after baseEjectionTime");
    let deadline = ejected_at + BASE_EJECTION + Duration::from_secs(6);
    loop {
        let r = env.from_sleep(ClientArgs::get("http://backend:8080/").requests(15))?;
        ensure!(r.ok == 15, "every request must succeed: {}", brief(&r));
        if r.pod(BAD) > 0 {
            let after = ejected_at.elapsed();
            ensure!(
                after >= BASE_EJECTION - Duration::from_millis(1500),
                "{BAD} came back after {:.1}s, before baseEjectionTime (5 s)",
                after.as_secs_f64()
            );
            env.step(format!("{BAD} back after {:.1}s", after.as_secs_f64()));
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{BAD} was not given traffic again within {:.0}s of its ejection",
                (BASE_EJECTION + Duration::from_secs(6)).as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(400));
    }
}
