//! A TCP service (port named `tcp-`): connections through both sidecars reach the echo
//! server, balanced per connection; a VirtualService `tcp` route then sends every
//! connection to one subset.

use anyhow::{Result, ensure};

use super::env::{Env, brief};
use crate::cluster::ClientArgs;
use crate::testapp::client::Protocol;

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: echo
  namespace: default
spec:
  host: echo
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
  name: echo
  namespace: default
spec:
  hosts:
  - echo
  tcp:
  - match:
    - port: 9000
    route:
    - destination:
        host: echo
        subset: v2
        port:
          number: 9000
"#;

pub fn run(env: &Env<'_>) -> Result<()> {
    env.service("echo", "tcp-echo", 9000)?;
    env.tcp_app("echo-v1", "echo", "v1", 9000)?;
    env.tcp_app("echo-v2", "echo", "v2", 9000)?;
    env.sleep()?;
    env.synced()?;
    let conns = || {
        ClientArgs::get("tcp://echo:9000")
            .protocol(Protocol::Tcp)
            .requests(40)
            .concurrency(4)
    };
    let r = env.from_sleep(conns())?;
    ensure!(
        r.ok == 40 && r.by_service.get("echo") == Some(&40),
        "every connection must reach the echo service: {}",
        brief(&r)
    );
    ensure!(
        r.version("v1") > 0 && r.version("v2") > 0,
        "without a route, connections are balanced over both versions: {}",
        brief(&r)
    );
    env.apply(CONFIG)?;
    let r = env.from_sleep(conns())?;
    ensure!(
        r.ok == 40 && r.version("v2") == 40,
        "the tcp route sends every connection to v2: {}",
        brief(&r)
    );
    Ok(())
}
