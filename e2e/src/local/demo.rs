//! The demo's sample application (namespace `default`) and ingress gateway
//! (`istio-system`), as issue 5 describes it: catalog v1/v2 on port 80, catalog-staging
//! on 80, reviews v1/v2/v3 on 9080, backend and auth on 8080, a `sleep` client, each
//! Service port named `http-...`.

use std::collections::BTreeMap;

use anyhow::Result;

use super::manifest::{PodKind, PodSpec, ServicePort, ServiceSpec};
use super::{ClusterConfig, LocalCluster};
use crate::cluster::Cluster;

/// The pods: (name, app, version, port).
const APPS: &[(&str, &str, &str, u16)] = &[
    ("catalog-v1", "catalog", "v1", 80),
    ("catalog-v2", "catalog", "v2", 80),
    ("catalog-staging-v1", "catalog-staging", "v1", 80),
    ("reviews-v1", "reviews", "v1", 9080),
    ("reviews-v2", "reviews", "v2", 9080),
    ("reviews-v3", "reviews", "v3", 9080),
    ("backend-v1", "backend", "v1", 8080),
    ("auth-v1", "auth", "v1", 8080),
    ("sleep", "sleep", "v1", 80),
];

/// The demo's edge: `catalog.example.com` on the ingress gateway routes to catalog, as a
/// user would write it for Istio (they can edit or delete it in `config/user/`).
pub const INGRESS_CONFIG: &str = r#"
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
  - route:
    - destination:
        host: catalog
        port:
          number: 80
"#;

fn selector(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Brings the sample up. Without sidecars (`sidecars: false`) the apps run alone and the
/// gateway is left out: that is the harness without any proxy.
pub fn up(cfg: ClusterConfig, sidecars: bool) -> Result<LocalCluster> {
    let cluster = LocalCluster::up(cfg)?;
    let mut services: Vec<(&str, u16)> = Vec::new();
    for &(app, _, _, port) in APPS {
        let name = APPS.iter().find(|a| a.0 == app).map_or(app, |a| a.1);
        if !services.iter().any(|(n, _)| *n == name) {
            services.push((name, port));
        }
    }
    for (name, port) in &services {
        cluster.add_service(ServiceSpec {
            name: name.to_string(),
            namespace: "default".into(),
            selector: selector(&[("app", name)]),
            ports: vec![ServicePort {
                name: format!("http-{name}"),
                port: *port,
                target_port: *port,
            }],
        })?;
    }
    if sidecars {
        cluster.add_service(ServiceSpec {
            name: "istio-ingressgateway".into(),
            namespace: "istio-system".into(),
            selector: selector(&[("istio", "ingressgateway")]),
            ports: vec![
                ServicePort {
                    name: "http2".into(),
                    port: 80,
                    target_port: 80,
                },
                ServicePort {
                    name: "https".into(),
                    port: 443,
                    target_port: 443,
                },
            ],
        })?;
    }
    for &(name, app, version, port) in APPS {
        let mut spec = PodSpec::app(name, "default", app, version, &[port]);
        spec.kind = PodKind::App { sidecar: sidecars };
        cluster.add_pod(spec)?;
    }
    if sidecars {
        let mut gw = PodSpec::app(
            "istio-ingressgateway",
            "istio-system",
            "istio-ingressgateway",
            "v1",
            &[],
        );
        gw.labels.insert("istio".into(), "ingressgateway".into());
        gw.service_account = "istio-ingressgateway-service-account".into();
        gw.kind = PodKind::Gateway;
        cluster.add_pod(gw)?;
        cluster.apply(INGRESS_CONFIG)?;
        // So the printed curl works as soon as `up` returns.
        cluster.wait_synced(std::time::Duration::from_secs(30))?;
    }
    Ok(cluster)
}

/// What to print once the demo is up.
pub fn what_to_try(cluster: &LocalCluster) -> String {
    let dir = cluster.dir().display().to_string();
    let mut s = String::new();
    s.push_str(&format!(
        "The mesh is up. State and logs: {dir} (demo.json lists every pod).\n\n"
    ));
    if let Some(url) = cluster.ingress_url() {
        s.push_str(&format!(
            "From this host, through the ingress gateway (Gateway catalog-gateway, VirtualService catalog-ingress):\n  curl -s {url}/ -H 'Host: catalog.example.com'\n\n"
        ));
    }
    s.push_str("From inside the mesh (the sleep pod; its traffic goes through its sidecar):\n");
    s.push_str("  sudo ip netns exec mesh-default-sleep curl -s http://catalog/\n");
    s.push_str(&format!(
        "  sudo ip netns exec mesh-default-sleep {} client http://reviews:9080/ -n 100 -c 4\n",
        cluster.bins.testapp.display()
    ));
    s.push_str(&format!(
        "\nControl plane: xDS {} , monitoring {}/debug/syncz\nConfig: put Istio YAML into {}/user/ (or meshctl --local apply -f FILE)\n",
        cluster.xds_address(),
        cluster.monitoring_url(),
        cluster.config_dir().display()
    ));
    s
}
