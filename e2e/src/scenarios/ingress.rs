//! The ingress gateway, from outside the mesh: a Gateway for `catalog.example.com` and a
//! VirtualService bound to it with ordered prefix routes (first match wins, as in Istio:
//! `/api` shadows the later `/api/special`), prefix rewrites, and a request header set to
//! `%REQ(:PATH)%`, which Envoy evaluates before the rewrite (so the app sees the original
//! path in `X-Custom-Header` and the rewritten one as its path). Hosts and paths that no
//! route matches get Envoy's 404.

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use super::env::{Env, brief};
use crate::cluster::{Caller, ClientArgs};
use crate::testapp::client::Report;

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: catalog-gateway
  namespace: default
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - catalog.example.com
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: catalog
  namespace: default
spec:
  host: catalog.default.svc.cluster.local
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
  name: catalog-ingress
  namespace: default
spec:
  hosts:
  - catalog.example.com
  gateways:
  - catalog-gateway
  http:
  - name: api
    match:
    - uri:
        prefix: /api
    route:
    - destination:
        host: backend.default.svc.cluster.local
        port:
          number: 8080
  - name: api-special
    match:
    - uri:
        prefix: /api/special
    route:
    - destination:
        host: catalog.default.svc.cluster.local
        subset: v2
  - name: catalog-v2
    match:
    - uri:
        prefix: /catalog/v2/
    rewrite:
      uri: /items/
    route:
    - destination:
        host: catalog.default.svc.cluster.local
        subset: v2
  - name: catalog
    match:
    - uri:
        prefix: /catalog/
    rewrite:
      uri: /items/
    headers:
      request:
        set:
          X-Custom-Header: "%REQ(:PATH)%"
    route:
    - destination:
        host: catalog.default.svc.cluster.local
        subset: v1
"#;

fn get(env: &Env<'_>, gateway: &str, host: &str, path: &str) -> Result<Report> {
    env.client(
        Caller::Outside,
        ClientArgs::get(format!("http://{host}{path}"))
            .connect_to(gateway)
            .keep(1),
    )
}

fn answer(r: &Report) -> Result<&Value> {
    r.answers.first().context("no answer kept")
}

pub fn run(env: &Env<'_>) -> Result<()> {
    env.service("catalog", "http-catalog", 80)?;
    env.app("catalog-v1", "catalog", "v1", 80)?;
    env.app("catalog-v2", "catalog", "v2", 80)?;
    env.service("backend", "http-backend", 8080)?;
    env.app("backend-v1", "backend", "v1", 8080)?;
    let gw = env.ingress_gateway()?;
    env.apply(CONFIG)?;
    let gateway = format!("{}:80", gw.ip);
    let host = "catalog.example.com";

    env.step("prefix /catalog/: rewrite to /items/, header from the original path");
    let r = get(env, &gateway, host, "/catalog/shoes?color=red")?;
    let a = answer(&r)?;
    ensure!(
        r.ok == 1 && a["service"] == "catalog" && a["version"] == "v1",
        "/catalog/ must reach catalog v1: {}",
        brief(&r)
    );
    ensure!(
        a["path"] == "/items/shoes" && a["query"] == "color=red",
        "/catalog/shoes must be rewritten to /items/shoes keeping the query: {a}"
    );
    ensure!(
        a["headers"]["x-custom-header"] == "/catalog/shoes?color=red",
        "X-Custom-Header must carry %REQ(:PATH)% before the rewrite: {a}"
    );
    ensure!(a["authority"] == host, "the authority must be kept: {a}");

    env.step("prefix /catalog/v2/ is listed first and wins over /catalog/");
    let r = get(env, &gateway, host, "/catalog/v2/hats")?;
    let a = answer(&r)?;
    ensure!(
        r.ok == 1 && a["version"] == "v2" && a["path"] == "/items/hats",
        "/catalog/v2/hats must reach catalog v2 as /items/hats: {a}"
    );
    ensure!(
        a["headers"].get("x-custom-header").is_none(),
        "the header is set on the /catalog/ route only: {a}"
    );

    env.step("/api is listed before /api/special: first match wins");
    let r = get(env, &gateway, host, "/api/special/1")?;
    let a = answer(&r)?;
    ensure!(
        r.ok == 1 && a["service"] == "backend" && a["path"] == "/api/special/1",
        "/api/special/1 must go to backend unchanged (the /api route comes first): {a}"
    );

    env.step("no route, no virtual host: 404");
    let r = get(env, &gateway, host, "/elsewhere")?;
    ensure!(
        r.status("404") == 1,
        "a path no route matches must get 404: {}",
        brief(&r)
    );
    let r = get(env, &gateway, "other.example.com", "/catalog/shoes")?;
    ensure!(
        r.status("404") == 1,
        "a host the Gateway does not serve must get 404: {}",
        brief(&r)
    );
    Ok(())
}
