//! WebSocket: the HTTP/1.1 upgrade passes through both sidecars (Istio enables the
//! `websocket` upgrade on every HTTP connection manager), is routed by the
//! VirtualService like any request, and carries messages both ways afterwards.

use anyhow::{Result, ensure};

use super::env::{Env, brief};
use crate::cluster::ClientArgs;
use crate::testapp::client::Protocol;

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: chat
  namespace: default
spec:
  host: chat
  subsets:
  - name: v2
    labels:
      version: v2
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: chat
  namespace: default
spec:
  hosts:
  - chat
  http:
  - route:
    - destination:
        host: chat
        subset: v2
"#;

pub fn run(env: &Env<'_>) -> Result<()> {
    env.service("chat", "http-chat", 8080)?;
    env.app("chat-v1", "chat", "v1", 8080)?;
    env.app("chat-v2", "chat", "v2", 8080)?;
    env.sleep()?;
    env.apply(CONFIG)?;
    let r = env.from_sleep(
        ClientArgs::get("ws://chat:8080/ws")
            .protocol(Protocol::Ws)
            .requests(20)
            .concurrency(4),
    )?;
    ensure!(
        r.ok == 20 && r.status("101") == 20,
        "every upgrade must succeed and echo: {}",
        brief(&r)
    );
    ensure!(
        r.version("v2") == 20,
        "the upgrade request is routed by the VirtualService (v2 only): {}",
        brief(&r)
    );
    Ok(())
}
