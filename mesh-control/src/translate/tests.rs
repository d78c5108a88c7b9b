use super::*;
use crate::model::{Proxy, ProxyKind};
use crate::store::Snapshot;

const BOOKINFO: &str = include_str!("../../tests/golden/base/bookinfo.yaml");
const HTTP_FEATURES: &str = include_str!("../../tests/golden/http-features/virtual-service.yaml");
const REVIEWS_DR: &str = include_str!("../../tests/golden/http-features/destination-rule.yaml");

fn snapshot(extra: &str) -> Snapshot {
    let snap = Snapshot::from_yaml("t.yaml", &format!("{BOOKINFO}\n---\n{extra}"));
    assert!(snap.issues().is_empty(), "{:#?}", snap.issues());
    snap
}

fn proxy(ip: &str, pod: &str, ns: &str) -> Proxy {
    Proxy::for_test(ProxyKind::Sidecar, ip.parse().expect("ip"), pod, ns)
}

fn json(n: &Named) -> serde_json::Value {
    mesh_api::envoy_json::any_to_json(&n.resource).expect("envoy json")
}

fn route_json(g: &Generated, name: &str) -> serde_json::Value {
    json(
        g.routes
            .iter()
            .find(|r| r.name == name)
            .expect("route config"),
    )
}

fn vhost_names(rc: &serde_json::Value) -> Vec<String> {
    rc["virtualHosts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn same_input_same_bytes() {
    let snap = snapshot(&format!("{REVIEWS_DR}\n---\n{HTTP_FEATURES}"));
    let p = proxy("10.250.0.10", "productpage-v1", "default");
    let first = generate(&snap, &p);
    for _ in 0..20 {
        assert_eq!(
            generate(&snap, &p),
            first,
            "generation must be byte-for-byte stable"
        );
    }
}

#[test]
fn proxy_identity_comes_from_the_registry_pod_by_ip() {
    let snap = snapshot("");
    // The node id names no pod the registry knows, but its IP is reviews-v2's.
    let p = proxy("10.250.0.13", "unknown-pod", "default");
    let (resolved, pod) = resolve_proxy(&snap, &p);
    assert_eq!(pod.map(|w| w.name.clone()).as_deref(), Some("reviews-v2"));
    assert_eq!(
        resolved.labels.get("version").map(String::as_str),
        Some("v2")
    );
    assert_eq!(
        resolved.service_account.as_deref(),
        Some("bookinfo-reviews")
    );
    let g = generate(&snap, &p);
    assert!(g.clusters.iter().any(|c| c.name == "inbound|9080||"));
    let inbound = json(
        g.listeners
            .iter()
            .find(|l| l.name == "virtualInbound")
            .expect("inbound"),
    );
    let chains: Vec<&str> = inbound["filterChains"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(chains.contains(&"0.0.0.0_9080"), "{chains:?}");
}

#[test]
fn export_to_hides_services_and_virtual_services_from_other_namespaces() {
    let snap = snapshot(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: private
  namespace: team-a
  annotations: {networking.istio.io/exportTo: "."}
spec: {clusterIP: 10.251.7.1, ports: [{name: http, port: 9080}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings-for-team-a, namespace: team-a}
spec:
  hosts: [ratings.default.svc.cluster.local]
  exportTo: ["."]
  http:
  - route:
    - destination: {host: ratings.default.svc.cluster.local}
    timeout: 7s
"#,
    );
    let outside = generate(&snap, &proxy("10.250.0.10", "productpage-v1", "default"));
    assert!(
        !outside
            .clusters
            .iter()
            .any(|c| c.name.contains("private.team-a"))
    );
    let rc = route_json(&outside, "9080");
    let ratings = rc["virtualHosts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "ratings.default.svc.cluster.local:9080")
        .expect("ratings vhost")
        .clone();
    assert_eq!(
        ratings["routes"][0]["route"]["timeout"], "0s",
        "team-a's rule is not visible here"
    );

    let inside = generate(&snap, &proxy("10.250.7.9", "client", "team-a"));
    assert!(
        inside
            .clusters
            .iter()
            .any(|c| c.name == "outbound|9080||private.team-a.svc.cluster.local")
    );
    let rc = route_json(&inside, "9080");
    let ratings = rc["virtualHosts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "ratings.default.svc.cluster.local:9080")
        .expect("ratings vhost")
        .clone();
    assert_eq!(ratings["routes"][0]["route"]["timeout"], "7s");
    // From team-a, `ratings` alone is not a name of the default namespace's service.
    let domains: Vec<&str> = ratings["domains"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str())
        .collect();
    assert!(
        !domains.contains(&"ratings") && domains.contains(&"ratings.default"),
        "{domains:?}"
    );
}

#[test]
fn workload_sidecar_beats_namespace_default() {
    let snap = snapshot(
        r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  egress: [{hosts: ["./ratings.default.svc.cluster.local"]}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: productpage, namespace: default}
spec:
  workloadSelector: {labels: {app: productpage}}
  egress: [{hosts: ["./reviews.default.svc.cluster.local", "./details.default.svc.cluster.local"]}]
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"#,
    );
    let pp = generate(&snap, &proxy("10.250.0.10", "productpage-v1", "default"));
    let outbound: Vec<&str> = pp
        .clusters
        .iter()
        .map(|c| c.name.as_str())
        .filter(|n| n.starts_with("outbound"))
        .collect();
    assert_eq!(
        outbound,
        [
            "outbound|9080||details.default.svc.cluster.local",
            "outbound|9080||reviews.default.svc.cluster.local"
        ]
    );
    assert!(vhost_names(&route_json(&pp, "9080")).contains(&"block_all".to_string()));
    let ratings_client = generate(&snap, &proxy("10.250.0.12", "reviews-v1", "default"));
    let outbound: Vec<&str> = ratings_client
        .clusters
        .iter()
        .map(|c| c.name.as_str())
        .filter(|n| n.starts_with("outbound"))
        .collect();
    assert_eq!(
        outbound,
        ["outbound|9080||ratings.default.svc.cluster.local"]
    );
    assert!(vhost_names(&route_json(&ratings_client, "9080")).contains(&"allow_any".to_string()));
}

#[test]
fn gateway_merges_virtual_services_for_a_host_and_honours_namespace_hosts() {
    let snap = Snapshot::from_yaml(
        "gw.yaml",
        &format!(
            "{BOOKINFO}\n---\n{}",
            r#"
apiVersion: v1
kind: Pod
metadata: {name: gw-1, namespace: edge, labels: {istio: gw}}
spec: {containers: [{name: p, image: p}]}
status: {podIP: 10.250.9.1}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public, namespace: edge}
spec:
  selector: {istio: gw}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["default/shop.example.com", "edge/*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a-api, namespace: default}
spec:
  hosts: [shop.example.com]
  gateways: [edge/public]
  http:
  - match: [{uri: {prefix: /api}}]
    route: [{destination: {host: details}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b-web, namespace: default}
spec:
  hosts: [shop.example.com]
  gateways: [edge/public]
  http:
  - route: [{destination: {host: productpage}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: sneaky, namespace: other}
spec:
  hosts: [shop.example.com]
  gateways: [edge/public]
  http:
  - route: [{destination: {host: ratings.default.svc.cluster.local}}]
"#
        ),
    );
    let gw = Proxy::for_test(
        ProxyKind::Router,
        "10.250.9.1".parse().expect("ip"),
        "gw-1",
        "edge",
    );
    let g = generate(&snap, &gw);
    assert_eq!(
        g.listeners
            .iter()
            .map(|l| l.name.as_str())
            .collect::<Vec<_>>(),
        ["0.0.0.0_80"]
    );
    let rc = route_json(&g, "http.80");
    let vh = &rc["virtualHosts"][0];
    assert_eq!(vh["name"], "shop.example.com:80");
    assert_eq!(
        vh["domains"],
        serde_json::json!(["shop.example.com", "shop.example.com:*"])
    );
    let clusters: Vec<&str> = vh["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["route"]["cluster"].as_str())
        .collect();
    assert_eq!(
        clusters,
        [
            "outbound|9080||details.default.svc.cluster.local",
            "outbound|9080||productpage.default.svc.cluster.local"
        ],
        "the older rule's routes first, the catch-all last, the other namespace's rule excluded by `default/` host"
    );
    assert!(snap.issues().iter().any(|i| i.resource.as_deref()
        == Some("VirtualService default/b-web")
        && i.message.contains("merged")));
}
