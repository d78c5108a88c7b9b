//! Blue/green: every request goes to one version; switching the VirtualService's subset
//! moves every request to the other, and back.

use anyhow::{Result, ensure};

use super::env::{Env, brief};
use crate::cluster::ClientArgs;

const DESTINATION_RULE: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: catalog
  namespace: default
spec:
  host: catalog.default.svc.cluster.local
  subsets:
  - name: blue
    labels:
      version: v1
  - name: green
    labels:
      version: v2
"#;

fn virtual_service(subset: &str) -> String {
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
        subset: {subset}
"#
    )
}

pub fn run(env: &Env<'_>) -> Result<()> {
    env.service("catalog", "http-catalog", 80)?;
    env.app("catalog-v1", "catalog", "v1", 80)?;
    env.app("catalog-v2", "catalog", "v2", 80)?;
    env.sleep()?;
    env.apply(DESTINATION_RULE)?;
    for (subset, version) in [("blue", "v1"), ("green", "v2"), ("blue", "v1")] {
        env.step(format!("all traffic to subset {subset} ({version})"));
        env.apply(&virtual_service(subset))?;
        let r = env.from_sleep(
            ClientArgs::get("http://catalog/")
                .requests(40)
                .concurrency(4),
        )?;
        ensure!(
            r.ok == 40 && r.version(version) == 40,
            "subset {subset}: every request must be answered by {version}: {}",
            brief(&r)
        );
    }
    Ok(())
}
