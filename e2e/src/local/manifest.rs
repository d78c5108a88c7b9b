//! The Kubernetes objects the local cluster publishes into the control plane's config
//! directory, as a kubelet and the endpoints controller would: Pods (with status, IP and
//! readiness), Services (with their VIP) and EndpointSlices.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// The injector's status annotation, as Istio writes it on injected pods.
pub const SIDECAR_STATUS: &str =
    r#"{"initContainers":null,"containers":["istio-proxy"],"volumes":[],"imagePullSecrets":null}"#;

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServicePort {
    /// Istio derives the protocol from the name prefix (`http-`, `grpc-`, `tcp-`, ...).
    pub name: String,
    pub port: u16,
    pub target_port: u16,
}

/// A Service to create.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub namespace: String,
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<ServicePort>,
}

/// What runs in a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PodKind {
    /// The test app, with a sidecar when `sidecar` is true.
    App { sidecar: bool },
    /// A gateway: mesh-proxy in router mode, no app, no capture.
    Gateway,
}

/// A pod to create.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub service_account: String,
    pub kind: PodKind,
    /// Ports the test app serves HTTP/gRPC/WebSocket on.
    pub http_ports: Vec<u16>,
    /// Ports the test app serves TCP echo on.
    pub tcp_ports: Vec<u16>,
}

impl PodSpec {
    /// A test-app pod labelled `app`/`version` like the Istio samples.
    pub fn app(name: &str, namespace: &str, app: &str, version: &str, http_ports: &[u16]) -> Self {
        PodSpec {
            name: name.to_string(),
            namespace: namespace.to_string(),
            labels: [("app", app), ("version", version)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: BTreeMap::new(),
            service_account: app.to_string(),
            kind: PodKind::App { sidecar: true },
            http_ports: http_ports.to_vec(),
            tcp_ports: Vec::new(),
        }
    }

    pub fn app_label(&self) -> String {
        self.labels
            .get("app")
            .or_else(|| self.labels.get("istio"))
            .cloned()
            .unwrap_or_else(|| self.name.clone())
    }

    pub fn version(&self) -> String {
        self.labels
            .get("version")
            .cloned()
            .unwrap_or_else(|| "v1".into())
    }

    pub fn has_sidecar(&self) -> bool {
        matches!(self.kind, PodKind::App { sidecar: true })
    }
}

/// The Pod object; `ip` is `None` before CNI ADD (phase Pending).
pub fn pod(spec: &PodSpec, node: &str, ip: Option<&str>, ready: bool) -> Value {
    let mut annotations = spec.annotations.clone();
    let mut containers = Vec::new();
    match spec.kind {
        PodKind::App { sidecar } => {
            let ports: Vec<Value> = spec
                .http_ports
                .iter()
                .chain(&spec.tcp_ports)
                .map(|p| json!({"containerPort": p, "protocol": "TCP"}))
                .collect();
            containers.push(json!({"name": "app", "image": "mesh/testapp", "ports": ports}));
            if sidecar {
                annotations.insert("sidecar.istio.io/status".into(), SIDECAR_STATUS.into());
                containers.push(proxy_container());
            }
        }
        PodKind::Gateway => {
            // As Istio's gateway deployments: a proxy container, never injected or captured.
            annotations.insert("sidecar.istio.io/inject".into(), "false".into());
            containers.push(proxy_container());
        }
    }
    let mut status =
        json!({"phase": if ip.is_some() { "Running" } else { "Pending" }, "hostIP": "10.250.0.1"});
    if let Some(ip) = ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
        status["conditions"] = json!([
            {"type": "Ready", "status": if ready { "True" } else { "False" }},
            {"type": "ContainersReady", "status": if ready { "True" } else { "False" }},
        ]);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": spec.name, "namespace": spec.namespace,
            "labels": spec.labels, "annotations": annotations,
        },
        "spec": {"serviceAccountName": spec.service_account, "nodeName": node, "containers": containers},
        "status": status,
    })
}

fn proxy_container() -> Value {
    json!({"name": "istio-proxy", "image": "mesh/mesh-proxy", "ports": [{"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}]})
}

pub fn service(spec: &ServiceSpec, vip: &str) -> Value {
    let ports: Vec<Value> = spec
        .ports
        .iter()
        .map(|p| json!({"name": p.name, "port": p.port, "targetPort": p.target_port, "protocol": "TCP"}))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": {"app": spec.name}},
        "spec": {"type": "ClusterIP", "clusterIP": vip, "clusterIPs": [vip], "selector": spec.selector, "ports": ports},
    })
}

/// One ready endpoint of a Service.
pub struct Endpoint<'a> {
    pub pod: &'a str,
    pub ip: &'a str,
    pub ready: bool,
}

pub fn endpoint_slice(spec: &ServiceSpec, node: &str, endpoints: &[Endpoint<'_>]) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|e| {
            json!({
                "addresses": [e.ip],
                "conditions": {"ready": e.ready, "serving": e.ready, "terminating": false},
                "targetRef": {"kind": "Pod", "name": e.pod, "namespace": spec.namespace},
                "nodeName": node,
            })
        })
        .collect();
    let ports: Vec<Value> = spec
        .ports
        .iter()
        .map(|p| json!({"name": p.name, "port": p.target_port, "protocol": "TCP"}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{}-local", spec.name),
            "namespace": spec.namespace,
            "labels": {"kubernetes.io/service-name": spec.name, "endpointslice.kubernetes.io/managed-by": "mesh-local"},
        },
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": ports,
    })
}

/// Whether a pod's labels match a selector (every selector pair present).
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// `/etc/hosts` for a pod: itself, and every Service by its DNS names (the short name
/// only for Services in the pod's own namespace, as Kubernetes search domains do).
pub fn hosts_file(
    pod: &str,
    namespace: &str,
    ip: &str,
    services: &[(String, String, String)],
) -> String {
    let mut out = format!("127.0.0.1\tlocalhost\n::1\tlocalhost\n{ip}\t{pod}\n");
    for (name, ns, vip) in services {
        let short = if ns == namespace {
            format!("{name} ")
        } else {
            String::new()
        };
        out.push_str(&format!(
            "{vip}\t{short}{name}.{ns} {name}.{ns}.svc {name}.{ns}.svc.cluster.local\n"
        ));
    }
    out
}

pub fn to_yaml(v: &Value) -> String {
    serde_yaml::to_string(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_carry_what_the_cni_and_control_plane_read() {
        let spec = PodSpec::app("catalog-v1", "default", "catalog", "v1", &[80]);
        let pending = pod(&spec, "node", None, false);
        assert_eq!(pending["status"]["phase"], "Pending");
        assert!(pending["metadata"]["annotations"]["sidecar.istio.io/status"].is_string());
        let running = pod(&spec, "node", Some("10.250.0.5"), true);
        assert_eq!(running["status"]["podIP"], "10.250.0.5");
        assert_eq!(running["status"]["conditions"][0]["status"], "True");
        let mut gw = spec.clone();
        gw.kind = PodKind::Gateway;
        let gw = pod(&gw, "node", None, false);
        assert_eq!(
            gw["metadata"]["annotations"]["sidecar.istio.io/inject"],
            "false"
        );
        // It round-trips through the Kubernetes types the CNI plugin uses.
        let _: k8s_openapi::api::core::v1::Pod = serde_json::from_value(running).unwrap();
    }

    #[test]
    fn services_and_slices() {
        let spec = ServiceSpec {
            name: "reviews".into(),
            namespace: "default".into(),
            selector: [("app".to_string(), "reviews".to_string())]
                .into_iter()
                .collect(),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 9080,
                target_port: 9080,
            }],
        };
        let svc = service(&spec, "10.251.0.10");
        let _: k8s_openapi::api::core::v1::Service = serde_json::from_value(svc.clone()).unwrap();
        assert_eq!(svc["spec"]["clusterIP"], "10.251.0.10");
        let slice = endpoint_slice(
            &spec,
            "node",
            &[Endpoint {
                pod: "reviews-v1",
                ip: "10.250.0.7",
                ready: true,
            }],
        );
        let _: k8s_openapi::api::discovery::v1::EndpointSlice =
            serde_json::from_value(slice.clone()).unwrap();
        assert_eq!(
            slice["metadata"]["labels"]["kubernetes.io/service-name"],
            "reviews"
        );
        assert!(selects(
            &spec.selector,
            &PodSpec::app("r", "default", "reviews", "v2", &[]).labels
        ));
        assert!(!selects(
            &spec.selector,
            &PodSpec::app("r", "default", "other", "v2", &[]).labels
        ));
    }

    #[test]
    fn hosts_files_resolve_service_names() {
        let h = hosts_file(
            "sleep",
            "default",
            "10.250.0.3",
            &[
                ("catalog".into(), "default".into(), "10.251.0.10".into()),
                (
                    "istio-ingressgateway".into(),
                    "istio-system".into(),
                    "10.251.0.11".into(),
                ),
            ],
        );
        assert!(h.contains("10.251.0.10\tcatalog catalog.default catalog.default.svc catalog.default.svc.cluster.local\n"));
        assert!(h.contains("10.251.0.11\tistio-ingressgateway.istio-system "));
        assert!(!h.contains("\tistio-ingressgateway istio"));
    }
}
