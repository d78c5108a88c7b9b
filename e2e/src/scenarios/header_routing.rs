//! Header routing, as in Istio's Bookinfo task: `end-user: jason` goes to reviews v2,
//! everyone else to v3. Header values match exactly (case-sensitive), names do not.

use anyhow::{Result, ensure};

use super::env::{Env, brief};
use crate::cluster::ClientArgs;

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: default
spec:
  host: reviews
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
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
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v3
"#;

pub fn run(env: &Env<'_>) -> Result<()> {
    env.service("reviews", "http-reviews", 9080)?;
    for v in ["v1", "v2", "v3"] {
        env.app(&format!("reviews-{v}"), "reviews", v, 9080)?;
    }
    env.sleep()?;
    env.apply(CONFIG)?;
    let url = "http://reviews:9080/reviews/0";
    for (header, want) in [
        (Some(("end-user", "jason")), "v2"),
        (Some(("End-User", "jason")), "v2"),
        (Some(("end-user", "Jason")), "v3"),
        (Some(("end-user", "jasonx")), "v3"),
        (None, "v3"),
    ] {
        let mut args = ClientArgs::get(url).requests(30).concurrency(3);
        if let Some((k, v)) = header {
            args = args.header(k, v);
        }
        let r = env.from_sleep(args)?;
        ensure!(
            r.ok == 30 && r.version(want) == 30,
            "header {header:?}: every request must go to reviews {want}: {}",
            brief(&r)
        );
    }
    Ok(())
}
