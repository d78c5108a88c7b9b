//! Upstream Envoy as a pod's proxy, instead of mesh-proxy: the reference the scenarios are
//! checked against. Envoy gets a bootstrap like the one Istio's agent writes (node id and
//! metadata under Istio's keys, delta ADS to the control plane, admin on 127.0.0.1:15000,
//! readiness on 15021 `/healthz/ready`), so the control plane serves it exactly what it
//! serves mesh-proxy. A scenario that passes with Envoy and fails with mesh-proxy points
//! at the proxy; one that fails with both points at the control plane or the scenario.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The Envoy binary: `$MESH_ENVOY`, else where `tools/envoy.sh` installs it.
pub fn locate() -> PathBuf {
    std::env::var_os("MESH_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(
                "/var/cache/mesh-tools/envoy-venv/lib/python3.11/site-packages/envoy/_bin/envoy",
            )
        })
}

/// What the bootstrap needs to know about the pod.
pub struct Node<'a> {
    /// `sidecar` or `router`.
    pub kind: &'a str,
    pub pod: &'a str,
    pub namespace: &'a str,
    pub ip: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub service_account: &'a str,
    pub workload: &'a str,
    /// The control plane's plaintext xDS address (`10.250.0.1:15010`).
    pub xds: &'a str,
}

fn socket(address: &str, port: u16) -> Value {
    json!({"socket_address": {"address": address, "port_value": port}})
}

fn static_cluster(name: &str, address: &str, port: u16, http2: bool) -> Value {
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket(address, port)}}]}]},
    });
    if http2 {
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        });
    }
    c
}

/// The bootstrap, as JSON (Envoy reads `.json` files as JSON).
pub fn bootstrap(n: &Node<'_>) -> Value {
    let (xds_host, xds_port) = n
        .xds
        .rsplit_once(':')
        .map(|(h, p)| (h, p.parse().unwrap_or(15010)))
        .unwrap_or((n.xds, 15010));
    let id = format!(
        "{}~{}~{}.{}~{}.svc.cluster.local",
        n.kind, n.ip, n.pod, n.namespace, n.namespace
    );
    let health = json!({
        "name": "health",
        "address": socket("0.0.0.0", 15021),
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "health",
                "route_config": {"virtual_hosts": [{"name": "health", "domains": ["*"], "routes": [
                    {"match": {"prefix": "/healthz/ready"}, "route": {"cluster": "admin", "prefix_rewrite": "/ready"}},
                ]}]},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            },
        }]}],
    });
    json!({
        "node": {
            "id": id,
            "cluster": format!("{}.{}", n.workload, n.namespace),
            "metadata": {
                "NAME": n.pod,
                "NAMESPACE": n.namespace,
                "INSTANCE_IPS": n.ip,
                "LABELS": n.labels,
                "SERVICE_ACCOUNT": n.service_account,
                "WORKLOAD_NAME": n.workload,
                "CLUSTER_ID": "Kubernetes",
                "MESH_ID": "cluster.local",
                "INTERCEPTION_MODE": "REDIRECT",
                "PROXY_TYPE": n.kind,
            },
        },
        "admin": {"address": socket("127.0.0.1", 15000)},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
                "set_node_on_first_message_only": true,
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                static_cluster("xds-grpc", xds_host, xds_port, true),
                static_cluster("admin", "127.0.0.1", 15000, false),
            ],
            "listeners": [health],
        },
    })
}

/// The command line that runs Envoy with the bootstrap at `config`.
pub fn argv(envoy: &Path, config: &Path) -> Vec<String> {
    [
        envoy.display().to_string(),
        "-c".into(),
        config.display().to_string(),
        "--disable-hot-restart".into(),
        "--concurrency".into(),
        "2".into(),
        "--drain-time-s".into(),
        "1".into(),
        "--log-level".into(),
        "warning".into(),
    ]
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_carries_istios_node_identity() {
        let labels: BTreeMap<String, String> = [("app".to_string(), "sleep".to_string())].into();
        let b = bootstrap(&Node {
            kind: "sidecar",
            pod: "sleep",
            namespace: "default",
            ip: "10.250.0.5",
            labels: &labels,
            service_account: "sleep",
            workload: "sleep",
            xds: "10.250.0.1:15010",
        });
        assert_eq!(
            b["node"]["id"],
            "sidecar~10.250.0.5~sleep.default~default.svc.cluster.local"
        );
        assert_eq!(b["node"]["metadata"]["LABELS"]["app"], "sleep");
        let xds = &b["static_resources"]["clusters"][0];
        assert_eq!(
            xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
                ["port_value"],
            15010
        );
        assert_eq!(
            b["dynamic_resources"]["ads_config"]["api_type"],
            "DELTA_GRPC"
        );
    }
}
