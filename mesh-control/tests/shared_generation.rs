//! Shared generation: a push translates a sidecar's outbound config once per class of
//! proxies (`translate::sharing`) and each proxy's inbound part on its own. The two parts
//! must make exactly the whole generation for every proxy of every golden scenario, classes
//! must follow what the config's selectors read, and the server's memo must hand proxies
//! of one class the very same sets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "golden/support.rs"]
mod support;

use std::sync::Arc;

use mesh_control::model::{Proxy, ProxyKind};
use mesh_control::monitoring::Metrics;
use mesh_control::store::{Snapshot, Store};
use mesh_control::translate::sharing::generation_class;
use mesh_control::translate::{Generated, Named, generate, generate_own, generate_shared};
use mesh_control::xds::resources::Interner;
use mesh_control::xds::{StoreGenerator, XdsServer, XdsServerConfig, XdsType};
use tokio_util::sync::CancellationToken;

/// What the server's merge does: both parts by type, by name, the shared one first.
fn merged(shared: Generated, own: Generated) -> Generated {
    fn join(mut a: Vec<Named>, b: Vec<Named>) -> Vec<Named> {
        for n in b {
            if !a.iter().any(|x| x.name == n.name) {
                a.push(n);
            }
        }
        a.sort_by(|x, y| x.name.cmp(&y.name));
        a
    }
    Generated {
        listeners: join(shared.listeners, own.listeners),
        routes: join(shared.routes, own.routes),
        clusters: join(shared.clusters, own.clusters),
        endpoints: join(shared.endpoints, own.endpoints),
        secrets: join(shared.secrets, own.secrets),
    }
}

#[test]
fn parts_make_the_whole_on_every_golden_scenario() {
    let (mut shared, mut whole) = (0, 0);
    for scenario in support::scenarios() {
        let store = scenario.store();
        let snapshot = store.snapshot();
        for spec in &scenario.proxies {
            let proxy = spec.proxy();
            let what = format!("{}/{}", scenario.name, spec.name);
            if generation_class(&snapshot, &proxy).is_none() {
                whole += 1;
                continue;
            }
            let parts = merged(
                generate_shared(&snapshot, &proxy),
                generate_own(&snapshot, &proxy),
            );
            assert_eq!(parts, generate(&snapshot, &proxy), "{what}");
            shared += 1;
        }
    }
    // The scenarios have sidecars (shared) and gateways or patched proxies (whole).
    assert!(shared >= 20, "only {shared} shared");
    assert!(whole >= 1, "no proxy generated whole");
}

/// One namespace with two Deployments; extra config is appended per test.
const MESH: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.251.0.1, selector: {app: web}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {clusterIP: 10.251.0.2, selector: {app: cart}, ports: [{name: http, port: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web, version: v1, tier: gold}}
spec: {containers: [{name: app, image: app}]}
status: {podIP: 10.250.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: shop, labels: {app: web, version: v2, tier: gold}}
spec: {containers: [{name: app, image: app}]}
status: {podIP: 10.250.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: cart-1, namespace: shop, labels: {app: cart, version: v1, tier: bronze}}
spec: {containers: [{name: app, image: app}]}
status: {podIP: 10.250.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: other-1, namespace: other, labels: {app: web, version: v1, tier: gold}}
spec: {containers: [{name: app, image: app}]}
status: {podIP: 10.250.0.4}
"#;

fn sidecar(pod: &str, ns: &str, ip: &str) -> Proxy {
    Proxy::for_test(ProxyKind::Sidecar, ip.parse().unwrap(), pod, ns)
}

fn proxies() -> [Proxy; 4] {
    [
        sidecar("web-1", "shop", "10.250.0.1"),
        sidecar("web-2", "shop", "10.250.0.2"),
        sidecar("cart-1", "shop", "10.250.0.3"),
        sidecar("other-1", "other", "10.250.0.4"),
    ]
}

/// Each proxy's class; and, for proxies of one class, that their shared parts are equal.
fn classes(extra: &str) -> Vec<Option<String>> {
    let snapshot = Snapshot::from_yaml("mesh.yaml", &format!("{MESH}\n---\n{extra}"));
    assert!(snapshot.issues().is_empty(), "{:#?}", snapshot.issues());
    let proxies = proxies();
    let out: Vec<_> = proxies
        .iter()
        .map(|p| generation_class(&snapshot, p))
        .collect();
    for (i, a) in proxies.iter().enumerate() {
        let whole = generate(&snapshot, a);
        if out[i].is_some() {
            let parts = merged(generate_shared(&snapshot, a), generate_own(&snapshot, a));
            assert_eq!(parts, whole, "{}", a.pod_name);
        }
        for (j, b) in proxies.iter().enumerate().skip(i + 1) {
            if out[i].is_some() && out[i] == out[j] {
                assert_eq!(
                    generate_shared(&snapshot, a),
                    generate_shared(&snapshot, b),
                    "{} and {} share a class",
                    a.pod_name,
                    b.pod_name
                );
            }
        }
    }
    out
}

#[test]
fn without_selectors_a_namespace_is_one_class() {
    let c = classes("");
    assert!(c.iter().all(Option::is_some));
    assert_eq!(c[0], c[1]);
    assert_eq!(c[0], c[2], "labels no selector reads do not split a class");
    assert_ne!(c[0], c[3], "another namespace is another class");
}

#[test]
fn labels_a_selector_reads_split_classes() {
    // VirtualService sourceLabels on `version`: web-1 and web-2 get different routes.
    let vs = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: cart, namespace: shop}
spec:
  hosts: [cart]
  http:
  - match: [{sourceLabels: {version: v2}}]
    route: [{destination: {host: cart}}]
    timeout: 1s
  - route: [{destination: {host: cart}}]
"#;
    let c = classes(vs);
    assert_ne!(c[0], c[1]);
    assert_eq!(c[0], c[2], "web-1 and cart-1 agree on version");

    // A DestinationRule workload selector on `app`.
    let dr = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cart-for-web, namespace: shop}
spec:
  host: cart
  workloadSelector: {matchLabels: {app: web}}
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 7}}}
"#;
    let c = classes(dr);
    assert_eq!(c[0], c[1]);
    assert_ne!(c[0], c[2]);

    // A Sidecar workload selector on `app`.
    let sc = r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: cart-only, namespace: shop}
spec:
  workloadSelector: {labels: {app: cart}}
  egress: [{hosts: ["./cart.shop.svc.cluster.local"]}]
"#;
    let c = classes(sc);
    assert_eq!(c[0], c[1]);
    assert_ne!(c[0], c[2]);

    // A failoverPriority label (`key=value` form too).
    let fp = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec:
  host: web
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1}
    loadBalancer:
      localityLbSetting: {enabled: true, failoverPriority: ["tier=gold"]}
"#;
    let c = classes(fp);
    assert_eq!(c[0], c[1]);
    assert_ne!(c[0], c[2]);
}

#[test]
fn patched_proxies_and_gateways_are_generated_whole() {
    let ef = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: web-lua, namespace: shop}
spec:
  workloadSelector: {labels: {app: web}}
  configPatches:
  - applyTo: HTTP_FILTER
    match: {context: SIDECAR_OUTBOUND}
    patch: {operation: INSERT_FIRST, value: {name: first}}
"#;
    let c = classes(ef);
    assert_eq!(c[0], None);
    assert_eq!(c[1], None);
    assert!(c[2].is_some());

    let snapshot = Snapshot::from_yaml("mesh.yaml", MESH);
    let gw = Proxy::for_test(
        ProxyKind::Router,
        "10.250.0.9".parse().unwrap(),
        "gw-1",
        "shop",
    );
    assert_eq!(generation_class(&snapshot, &gw), None);
}

/// Through the server: proxies of one class hold the same allocations for what they share,
/// and everyone's resources are exactly what a whole generation gives.
#[tokio::test]
async fn the_server_shares_one_generation_per_class() {
    let store = Arc::new(Store::new());
    store.apply_text("mesh.yaml", MESH);
    let mut registry = prometheus_client::registry::Registry::default();
    let server = XdsServer::new(
        Arc::new(StoreGenerator(store.clone())),
        Arc::new(Metrics::new(&mut registry)),
        XdsServerConfig::default(),
        CancellationToken::new(),
    );
    let proxies: Vec<Arc<Proxy>> = proxies().into_iter().map(Arc::new).collect();
    let check = |held: &[Arc<mesh_control::xds::resources::ProxyResources>]| {
        let snapshot = store.snapshot();
        for (p, res) in proxies.iter().zip(held) {
            let (whole, _) = Interner::default().proxy_resources(generate(&snapshot, p));
            for ty in XdsType::PUSH_ORDER {
                let names = |r: &mesh_control::xds::resources::ProxyResources| -> Vec<_> {
                    r.get(ty)
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.resource.value.clone()))
                        .collect()
                };
                assert_eq!(names(res), names(&whole), "{} {ty}", p.pod_name);
                assert_eq!(res.get(ty).version(), whole.get(ty).version());
            }
        }
    };
    let mut held = Vec::new();
    for p in &proxies {
        held.push(server.generate(p.clone(), None, false).await);
    }
    check(&held);
    // web-1 and cart-1: one class. Routes and endpoints are all shared: the same sets.
    for ty in [XdsType::Route, XdsType::Endpoint] {
        assert!(held[0].shares(&held[2], ty), "{ty}");
    }
    // Clusters hold each proxy's inbound ones too. web-1 and web-2 serve the same port:
    // one merged set. cart-1 serves another: its own set, with the same outbound resources.
    assert!(held[0].shares(&held[1], XdsType::Cluster));
    assert!(held[0].shares(&held[1], XdsType::Listener));
    assert!(!held[0].shares(&held[2], XdsType::Cluster));
    let outbound = |i: usize| -> Vec<*const _> {
        held[i]
            .get(XdsType::Cluster)
            .iter()
            .filter(|(n, _)| n.starts_with("outbound|"))
            .map(|(_, v)| Arc::as_ptr(v))
            .collect()
    };
    assert_eq!(outbound(0), outbound(2));

    // A change: a new version, the memo starts over, and the result is still exact.
    store.apply_text(
        "vs.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: cart, namespace: shop}
spec:
  hosts: [cart]
  http: [{route: [{destination: {host: cart}}], timeout: 3s}]
"#,
    );
    for (i, p) in proxies.iter().enumerate() {
        held[i] = server
            .generate(p.clone(), Some(held[i].clone()), false)
            .await;
    }
    check(&held);
    assert!(held[0].shares(&held[1], XdsType::Route));
}
