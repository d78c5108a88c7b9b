use super::*;
use crate::store::Snapshot;

fn registry(yaml: &str) -> Arc<Snapshot> {
    let snap = Snapshot::from_yaml("test.yaml", yaml);
    assert!(snap.issues().is_empty(), "{:#?}", snap.issues());
    Arc::new(snap)
}

fn service<'a>(snap: &'a Snapshot, host: &str) -> &'a Arc<Service> {
    snap.registry()
        .services_for_host(host)
        .next()
        .unwrap_or_else(|| panic!("no service {host}"))
}

fn addresses(eps: &[Endpoint]) -> Vec<String> {
    eps.iter()
        .map(|e| format!("{}:{}", e.address, e.port))
        .collect()
}

const SLICED: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {networking.istio.io/exportTo: "., istio-system"}
spec:
  clusterIP: 10.251.0.40
  selector: {app: web}
  ports:
  - {name: web, port: 80, targetPort: http-port, appProtocol: http}
  - {name: metrics, port: 9090, targetPort: 9091}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web, version: v1}}
spec:
  serviceAccountName: web
  containers: [{name: web, image: web, ports: [{name: http-port, containerPort: 8080}, {containerPort: 9091}]}]
status: {podIP: 10.250.0.40}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: web, port: 8080}, {name: metrics, port: 9091}]
endpoints:
- addresses: [10.250.0.40]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: web-1, namespace: shop}
- addresses: [10.250.0.41]
  conditions: {ready: false}
- addresses: [10.250.0.42]
  zone: zone-b
"#;

#[test]
fn endpoint_slices_with_pod_labels_readiness_and_app_protocol() {
    let snap = registry(SLICED);
    let web = service(&snap, "web.shop.svc.cluster.local");
    assert_eq!(web.ports[0].protocol, Protocol::Http, "appProtocol: http");
    assert_eq!(
        web.ports[1].protocol,
        Protocol::Unsupported,
        "`metrics` names no protocol"
    );
    assert!(web.visibility.visible_to("shop") && web.visibility.visible_to("istio-system"));
    assert!(!web.visibility.visible_to("default"));
    let eps = snap.registry().endpoints(web, 80);
    assert_eq!(
        addresses(eps),
        ["10.250.0.40:8080", "10.250.0.42:8080"],
        "the unready one is left out"
    );
    assert_eq!(
        eps[0].labels.get("version").map(String::as_str),
        Some("v1"),
        "labels from the Pod"
    );
    assert_eq!(eps[0].service_account.as_deref(), Some("web"));
    assert_eq!(eps[1].locality.as_deref(), Some("zone-b"));
    assert_eq!(
        addresses(snap.registry().endpoints(web, 9090)),
        ["10.250.0.40:9091", "10.250.0.42:9091"]
    );
}

#[test]
fn pods_selected_directly_when_no_slice_with_named_target_ports() {
    let yaml = SLICED
        .split("---\napiVersion: discovery.k8s.io/v1")
        .next()
        .unwrap_or_default();
    let snap = registry(yaml);
    let web = service(&snap, "web.shop.svc.cluster.local");
    assert_eq!(
        addresses(snap.registry().endpoints(web, 80)),
        ["10.250.0.40:8080"],
        "targetPort http-port resolved"
    );
    assert_eq!(
        addresses(snap.registry().endpoints(web, 9090)),
        ["10.250.0.40:9091"]
    );
    let pod = snap.registry().pod("shop", "web-1").expect("pod");
    let served = snap.registry().services_for_workload(pod);
    assert_eq!(served.len(), 1);
    assert_eq!(
        served[0].1.iter().map(|(_, t)| *t).collect::<Vec<_>>(),
        [8080, 9091]
    );
}

#[test]
fn headless_external_name_and_orphan_slices() {
    let snap = Snapshot::from_yaml(
        "t.yaml",
        r#"
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec: {clusterIP: None, selector: {app: db}, ports: [{name: tcp-pg, port: 5432}]}
---
apiVersion: v1
kind: Service
metadata: {name: search, namespace: default}
spec: {type: ExternalName, externalName: search.example.com, ports: [{name: https, port: 443}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ghost-1, namespace: default, labels: {kubernetes.io/service-name: ghost}}
addressType: IPv4
endpoints: [{addresses: [10.250.9.9]}]
"#,
    );
    let db = service(&snap, "db.default.svc.cluster.local");
    assert_eq!(db.resolution, Resolution::Passthrough);
    assert!(db.addresses.is_empty());
    assert_eq!(db.ports[0].protocol, Protocol::Tcp);
    let search = service(&snap, "search.default.svc.cluster.local");
    assert_eq!(search.resolution, Resolution::DnsLb);
    assert_eq!(
        addresses(snap.registry().endpoints(search, 443)),
        ["search.example.com:443"]
    );
    let issues = snap.issues();
    assert!(
        issues.iter().any(
            |i| i.resource.as_deref() == Some("EndpointSlice default/ghost-1")
                && i.message.contains("does not exist")
        ),
        "{issues:#?}"
    );
}

#[test]
fn service_entries_dns_static_none_and_workload_selection() {
    let snap = registry(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vms, namespace: default}
spec:
  hosts: [vm.internal]
  addresses: [10.251.5.5]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, targetPort: 18080}]
  workloadSelector: {labels: {app: vm}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vms-inline, namespace: default}
spec:
  hosts: [vm-inline.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, targetPort: 18080}]
  endpoints:
  - {address: 10.250.5.9, labels: {app: vm, version: inline}, ports: {http: 28080}}
  - {address: 10.250.5.10}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cdn, namespace: default}
spec:
  hosts: ["*.cdn.example.com"]
  resolution: NONE
  ports: [{number: 443, name: tls, protocol: TLS}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-1, namespace: default}
spec: {address: 10.250.5.1, labels: {app: vm, version: v1}, serviceAccount: vm-sa}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-other-ns, namespace: other}
spec: {address: 10.250.5.2, labels: {app: vm}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: passthrough, namespace: default}
spec:
  hosts: [legacy.example.com]
  resolution: NONE
  exportTo: ["."]
  ports: [{number: 3306, name: mysql, protocol: MySQL}]
"#,
    );
    let api = service(&snap, "api.example.com");
    assert_eq!(api.resolution, Resolution::DnsLb);
    assert!(api.mesh_external);
    assert_eq!(api.ports[0].protocol, Protocol::Tls);
    assert_eq!(
        addresses(snap.registry().endpoints(api, 443)),
        ["api.example.com:443"]
    );
    let cdn = service(&snap, "*.cdn.example.com");
    assert_eq!(cdn.resolution, Resolution::Passthrough);
    assert!(snap.registry().endpoints(cdn, 443).is_empty());

    let vm = service(&snap, "vm.internal");
    assert_eq!(vm.resolution, Resolution::ClientSideLb);
    assert!(!vm.mesh_external);
    assert_eq!(vm.vip(), Some("10.251.5.5"));
    let eps = snap.registry().endpoints(vm, 8080);
    assert_eq!(
        addresses(eps),
        ["10.250.5.1:18080"],
        "the selected WorkloadEntry (same namespace only), on targetPort"
    );
    assert_eq!(eps[0].service_account.as_deref(), Some("vm-sa"));
    let inline = service(&snap, "vm-inline.internal");
    assert_eq!(
        addresses(snap.registry().endpoints(inline, 8080)),
        ["10.250.5.10:18080", "10.250.5.9:28080"],
        "inline endpoints: their named port, else targetPort"
    );

    let legacy = service(&snap, "legacy.example.com");
    assert_eq!(legacy.resolution, Resolution::Passthrough);
    assert_eq!(legacy.ports[0].protocol, Protocol::Mysql);
    assert!(!legacy.visibility.visible_to("shop"));
}
