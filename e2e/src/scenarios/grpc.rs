//! A gRPC service (port named `grpc-`): calls go through both sidecars over HTTP/2, a
//! 50/50 weighted route splits the calls of one client connection per request (L7
//! balancing, which kube-proxy cannot do), and a gRPC status from the server reaches the
//! caller unchanged.

use anyhow::{Result, ensure};

use super::binomial;
use super::env::{Env, brief};
use crate::cluster::ClientArgs;
use crate::testapp::client::Protocol;

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: greeter
  namespace: default
spec:
  host: greeter
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: greeter
  namespace: default
spec:
  hosts:
  - greeter
  http:
  - route:
    - destination:
        host: greeter
        subset: v1
      weight: 50
    - destination:
        host: greeter
        subset: v2
      weight: 50
"#;

pub fn run(env: &Env<'_>) -> Result<()> {
    env.service("greeter", "grpc-greeter", 7070)?;
    env.app("greeter-v1", "greeter", "v1", 7070)?;
    env.app("greeter-v2", "greeter", "v2", 7070)?;
    env.sleep()?;
    env.apply(CONFIG)?;
    let n = 200;
    // One client, one channel: a single HTTP/2 connection to the sidecar.
    let r = env.from_sleep(
        ClientArgs::get("http://greeter:7070")
            .protocol(Protocol::Grpc)
            .requests(n)
            .concurrency(4)
            .keep(1),
    )?;
    ensure!(
        r.ok == n && r.status("Ok") == n,
        "every call must succeed: {}",
        brief(&r)
    );
    ensure!(
        r.answers.first().is_some_and(|a| a["protocol"] == "gRPC"),
        "the server must see a gRPC call: {:?}",
        r.answers.first()
    );
    let (lo, hi) = binomial::interval(n, 0.5, 0.999);
    let v2 = r.version("v2");
    ensure!(
        (lo..=hi).contains(&v2),
        "calls on one connection must be split per call 50/50: v2 got {v2} of {n}, outside {lo}..={hi}: {}",
        brief(&r)
    );
    let r = env.from_sleep(
        ClientArgs::get("http://greeter:7070")
            .protocol(Protocol::Grpc)
            .requests(5)
            .grpc_query("status=503"),
    )?;
    ensure!(
        r.status("Unavailable") == 5,
        "the server's UNAVAILABLE status must reach the caller: {}",
        brief(&r)
    );
    Ok(())
}
