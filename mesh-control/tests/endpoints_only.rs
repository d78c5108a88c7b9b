//! EDS-only generation: `translate::endpoints_only` must produce exactly the endpoints of a
//! full generation for every proxy of every golden scenario and of a scoped mesh with
//! workload-selecting Sidecars and DestinationRules, and proxies of one class must get the
//! same endpoints (the push shares one generation between them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "golden/support.rs"]
mod support;

use std::sync::Arc;

use mesh_control::model::{Proxy, ProxyKind};
use mesh_control::monitoring::Metrics;
use mesh_control::store::{Snapshot, Store};
use mesh_control::translate::endpoints_only::{
    endpoints_class, generate_endpoints, generate_endpoints_for,
};
use mesh_control::translate::generate;
use mesh_control::xds::{StoreGenerator, XdsServer, XdsServerConfig, XdsType};
use tokio_util::sync::CancellationToken;

#[test]
fn equals_full_generation_on_every_golden_scenario() {
    let mut checked = 0;
    for scenario in support::scenarios() {
        let store = scenario.store();
        let snapshot = store.snapshot();
        for spec in &scenario.proxies {
            let proxy = spec.proxy();
            assert_eq!(
                generate_endpoints(&snapshot, &proxy),
                generate(&snapshot, &proxy).endpoints,
                "{}/{}",
                scenario.name,
                spec.name
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} proxies checked");
}

/// Two namespaces; in `shop`, a Sidecar for `app: cart` only and a DestinationRule whose
/// subsets differ for `app: cart` (workload selector), so the class must include labels.
const MESH: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.251.0.1, selector: {app: web}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {clusterIP: 10.251.0.2, selector: {app: cart}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: other}
spec: {clusterIP: 10.251.0.3, selector: {app: api}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web, version: v1}}
spec: {containers: [{name: app, image: app}]}
status: {podIP: 10.250.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: shop, labels: {app: web, version: v2}}
spec: {containers: [{name: app, image: app}]}
status: {podIP: 10.250.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: cart-1, namespace: shop, labels: {app: cart, version: v1}}
spec: {containers: [{name: app, image: app}]}
status: {podIP: 10.250.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: cart-2, namespace: shop, labels: {app: cart, version: v1}}
spec: {containers: [{name: app, image: app}]}
status: {podIP: 10.250.0.4}
---
apiVersion: v1
kind: Pod
metadata: {name: api-1, namespace: other, labels: {app: api}}
spec: {containers: [{name: app, image: app}]}
status: {podIP: 10.250.0.5}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec:
  host: web
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web-for-cart, namespace: shop}
spec:
  host: web
  workloadSelector: {matchLabels: {app: cart}}
  subsets: [{name: canary, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: cart-only-shop, namespace: shop}
spec:
  workloadSelector: {labels: {app: cart}}
  egress: [{hosts: ["./*"]}]
"#;

fn sidecar(pod: &str, ns: &str, ip: &str) -> Proxy {
    Proxy::for_test(ProxyKind::Sidecar, ip.parse().unwrap(), pod, ns)
}

#[test]
fn classes_share_exactly_when_endpoints_are_equal() {
    let snapshot = Snapshot::from_yaml("mesh.yaml", MESH);
    let proxies = [
        sidecar("web-1", "shop", "10.250.0.1"),
        sidecar("web-2", "shop", "10.250.0.2"),
        sidecar("cart-1", "shop", "10.250.0.3"),
        sidecar("cart-2", "shop", "10.250.0.4"),
        sidecar("api-1", "other", "10.250.0.5"),
    ];
    let out: Vec<_> = proxies
        .iter()
        .map(|p| {
            let eds = generate_endpoints(&snapshot, p);
            assert_eq!(eds, generate(&snapshot, p).endpoints, "{}", p.pod_name);
            (endpoints_class(&snapshot, p), eds)
        })
        .collect();
    let names = |i: usize| -> Vec<&str> { out[i].1.iter().map(|n| n.name.as_str()).collect() };
    // The two cart replicas: one class, and the scoped view (no `other` namespace) with the
    // cart-specific subset.
    assert_eq!(out[2].0, out[3].0);
    assert_eq!(out[2].1, out[3].1);
    assert!(
        !names(2).iter().any(|n| n.contains("api.other")),
        "{:?}",
        names(2)
    );
    assert!(
        names(2).iter().any(|n| n.contains("|canary|web.shop")),
        "{:?}",
        names(2)
    );
    // web-1 and web-2 differ in a label no selector reads (version): one class.
    assert_eq!(out[0].0, out[1].0);
    assert_eq!(out[0].1, out[1].1);
    assert!(names(0).iter().any(|n| n.contains("api.other")));
    assert!(names(0).iter().any(|n| n.contains("|v2|web.shop")));
    // Different labels in one namespace that change what is visible: different classes.
    assert_ne!(out[0].0, out[2].0);
    assert_ne!(out[0].1, out[2].1);
    // Another namespace: another class.
    assert_ne!(out[4].0, out[0].0);
    // A proxy is classed by the registry's Pod, not by what it claims.
    let mut liar = sidecar("cart-1", "shop", "10.250.0.3");
    liar.labels.insert("app".into(), "web".into());
    assert_eq!(endpoints_class(&snapshot, &liar), out[2].0);
}

#[test]
fn narrowed_generation_is_the_full_one_filtered() {
    let mut checked = 0;
    for scenario in support::scenarios() {
        let store = scenario.store();
        let snapshot = store.snapshot();
        let hosts: Vec<String> = snapshot
            .registry()
            .services()
            .iter()
            .map(|s| s.hostname.clone())
            .collect();
        for spec in &scenario.proxies {
            let proxy = spec.proxy();
            let full = generate_endpoints(&snapshot, &proxy);
            for host in &hosts {
                let only: std::collections::HashSet<String> = [host.clone()].into();
                let want: Vec<_> = full
                    .iter()
                    .filter(|n| n.name.rsplit('|').next() == Some(host.as_str()))
                    .cloned()
                    .collect();
                assert_eq!(
                    generate_endpoints_for(&snapshot, &proxy, Some(&only)),
                    want,
                    "{}/{} {host}",
                    scenario.name,
                    spec.name
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 50, "only {checked} checked");
}

const SLICE: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 80}]
endpoints:
- addresses: ["10.250.0.1"]
  targetRef: {kind: Pod, name: web-1, namespace: shop}
- addresses: ["10.250.0.2"]
  conditions: {ready: READY}
  targetRef: {kind: Pod, name: web-2, namespace: shop}
"#;

fn eds_of(res: &mesh_control::xds::resources::ProxyResources) -> Vec<(String, Vec<u8>)> {
    res.get(XdsType::Endpoint)
        .iter()
        .map(|(n, v)| (n.to_string(), v.resource.value.clone()))
        .collect()
}

fn named_of(list: Vec<mesh_control::translate::Named>) -> Vec<(String, Vec<u8>)> {
    list.into_iter()
        .map(|n| (n.name, n.resource.value))
        .collect()
}

/// The server's EDS-only path (incremental when only endpoints changed, whole when services
/// changed too, shared within a class) gives each proxy exactly what a full generation
/// gives it.
#[tokio::test]
async fn incremental_pushes_equal_full_generation() {
    let store = Arc::new(Store::new());
    store.apply_text("mesh.yaml", MESH);
    store.apply_text("slice.yaml", &SLICE.replace("READY", "true"));
    let mut registry = prometheus_client::registry::Registry::default();
    let server = XdsServer::new(
        Arc::new(StoreGenerator(store.clone())),
        Arc::new(Metrics::new(&mut registry)),
        XdsServerConfig::default(),
        CancellationToken::new(),
    );
    let proxies: Vec<Arc<Proxy>> = [
        sidecar("web-1", "shop", "10.250.0.1"),
        sidecar("cart-1", "shop", "10.250.0.3"),
        sidecar("cart-2", "shop", "10.250.0.4"),
        sidecar("api-1", "other", "10.250.0.5"),
    ]
    .into_iter()
    .map(Arc::new)
    .collect();
    let mut held = Vec::new();
    for p in &proxies {
        held.push(server.generate(p.clone(), None, false).await);
    }
    let check = |held: &[Arc<mesh_control::xds::resources::ProxyResources>], what: &str| {
        let snapshot = store.snapshot();
        for (p, res) in proxies.iter().zip(held) {
            assert_eq!(
                eds_of(res),
                named_of(generate(&snapshot, p).endpoints),
                "{what}: {}",
                p.pod_name
            );
        }
    };
    check(&held, "initial");

    // web-2 not ready: an EndpointSlice change, incremental.
    store.apply_text("slice.yaml", &SLICE.replace("READY", "false"));
    let before = held.clone();
    for (i, p) in proxies.iter().enumerate() {
        held[i] = server
            .generate(p.clone(), Some(held[i].clone()), true)
            .await;
    }
    check(&held, "endpoint change");
    // Only the load assignments with web-2 in them changed (web's, web's v2 subset); the
    // rest are the same allocations, and the two cart replicas share one set.
    let (old, new) = (
        before[0].get(XdsType::Endpoint),
        held[0].get(XdsType::Endpoint),
    );
    for (name, v) in new.iter() {
        let same = Arc::ptr_eq(v, old.get(name).unwrap());
        let changed = ["outbound|80||web.shop", "outbound|80|v2|web.shop"]
            .iter()
            .any(|c| name.starts_with(c));
        assert_eq!(same, !changed, "{name}");
    }
    assert!(held[1].shares(&held[2], XdsType::Endpoint));
    // api-1 does not see web's v2 subset change... but sees web: its set changed too.
    assert!(!held[3].shares(&before[3], XdsType::Endpoint));

    // A no-op EDS push changes nothing.
    let again = server
        .generate(proxies[0].clone(), Some(held[0].clone()), true)
        .await;
    assert!(again.shares(&held[0], XdsType::Endpoint));

    // A service port change is not endpoints-only: the EDS path regenerates everything.
    store.apply_text(
        "mesh.yaml",
        &MESH.replace(
            "metadata: {name: api, namespace: other}\nspec: {clusterIP: 10.251.0.3, selector: {app: api}, ports: [{name: http, port: 80}]}",
            "metadata: {name: api, namespace: other}\nspec: {clusterIP: 10.251.0.3, selector: {app: api}, ports: [{name: http, port: 81}]}",
        ),
    );
    for (i, p) in proxies.iter().enumerate() {
        held[i] = server
            .generate(p.clone(), Some(held[i].clone()), true)
            .await;
    }
    check(&held, "service change");
}
