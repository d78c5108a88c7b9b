//! Real Envoy (the upstream binary, the referee for the protocol) against the ADS server,
//! over both state-of-the-world and delta: it must warm and ACK clusters, endpoints,
//! listeners and routes (syncz SYNCED, no rejects), apply an EDS-only push, and NACK an
//! invalid cluster, which must show in syncz and the reject metric while the last good
//! config stays in force.
//!
//! Needs Envoy: `$MESH_ENVOY`, else `tools/envoy.sh`. Without it the tests print why and
//! pass, unless `MESH_CI_STRICT=1`.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod xds_support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use mesh_api::envoy_json::any_from_json;
use mesh_control::model::Proxy;
use mesh_control::monitoring::{Metrics, Monitoring};
use mesh_control::push::{PushRequest, Pusher};
use mesh_control::translate::{Generated, Named};
use mesh_control::xds::{Generator, XdsServer, XdsServerConfig};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use xds_support::{NODE_ID, http_get};

fn envoy_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("MESH_ENVOY") {
        return Some(PathBuf::from(p));
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tools/envoy.sh");
    let out = Command::new("bash").arg(script).output().ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && path.is_file()).then_some(path)
}

fn need_envoy() -> Option<PathBuf> {
    let found = envoy_binary();
    if found.is_none() {
        if std::env::var("MESH_CI_STRICT").as_deref() == Ok("1") {
            panic!("MESH_CI_STRICT=1 but no Envoy (set MESH_ENVOY or run tools/envoy.sh)");
        }
        eprintln!("skipping: no Envoy binary (set MESH_ENVOY or run tools/envoy.sh)");
    }
    found
}

/// The mesh Envoy is given: one EDS cluster, its endpoints, one listener on RDS.
#[derive(Clone)]
struct Mesh {
    endpoint_port: u16,
    /// Makes the cluster invalid (Envoy must NACK it).
    bad_cluster: bool,
}

fn ads() -> Value {
    json!({"ads": {}, "resourceApiVersion": "V3"})
}

impl Mesh {
    fn generate(&self) -> Generated {
        let named = |name: &str, v: Value| Named {
            name: name.to_string(),
            resource: any_from_json(&v).unwrap(),
        };
        let mut cluster = json!({
            "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "name": "outbound|80||backend.default.svc.cluster.local",
            "type": "EDS",
            "connectTimeout": "1s",
            "edsClusterConfig": {"edsConfig": ads()},
        });
        if self.bad_cluster {
            // PGV: connect_timeout must be > 0.
            cluster["connectTimeout"] = json!("-1s");
        }
        Generated {
            clusters: vec![named(
                "outbound|80||backend.default.svc.cluster.local",
                cluster,
            )],
            endpoints: vec![named(
                "outbound|80||backend.default.svc.cluster.local",
                json!({
                    "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                    "clusterName": "outbound|80||backend.default.svc.cluster.local",
                    "endpoints": [{"lbEndpoints": [{"endpoint": {"address": {"socketAddress": {
                        "address": "127.0.0.1", "portValue": self.endpoint_port}}}}]}],
                }),
            )],
            listeners: vec![named(
                "127.0.0.1_0",
                json!({
                    "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
                    "name": "127.0.0.1_0",
                    "address": {"socketAddress": {"address": "127.0.0.1", "portValue": 0}},
                    "filterChains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typedConfig": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "statPrefix": "outbound_0",
                            "rds": {"configSource": ads(), "routeConfigName": "80"},
                            "httpFilters": [{"name": "envoy.filters.http.router", "typedConfig": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                        },
                    }]}],
                }),
            )],
            routes: vec![named(
                "80",
                json!({
                    "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
                    "name": "80",
                    "virtualHosts": [{"name": "backend", "domains": ["*"], "routes": [{
                        "match": {"prefix": "/"},
                        "route": {"cluster": "outbound|80||backend.default.svc.cluster.local"},
                    }]}],
                }),
            )],
            secrets: vec![],
        }
    }
}

struct MeshGenerator(ArcSwap<Mesh>);

impl Generator for MeshGenerator {
    fn generate(&self, _proxy: &Proxy) -> Generated {
        self.0.load().generate()
    }
}

struct Envoy {
    child: Child,
    admin: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_envoy(bin: &PathBuf, xds: std::net::SocketAddr, api_type: &str) -> Envoy {
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = json!({
        "node": {"id": NODE_ID, "cluster": "reviews.default"},
        "admin": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": 0}}},
        "dynamicResources": {
            "adsConfig": {
                "apiType": api_type,
                "transportApiVersion": "V3",
                "grpcServices": [{"envoyGrpc": {"clusterName": "xds-grpc"}}],
            },
            "cdsConfig": ads(),
            "ldsConfig": ads(),
        },
        "staticResources": {"clusters": [{
            "name": "xds-grpc",
            "type": "STATIC",
            "connectTimeout": "1s",
            "loadAssignment": {"clusterName": "xds-grpc", "endpoints": [{"lbEndpoints": [{
                "endpoint": {"address": {"socketAddress": {
                    "address": xds.ip().to_string(), "portValue": xds.port()}}}}]}]},
            "typedExtensionProtocolOptions": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicitHttpConfig": {"http2ProtocolOptions": {}}}},
        }]},
    });
    let config = dir.path().join("envoy.json");
    std::fs::write(&config, bootstrap.to_string()).unwrap();
    let admin_path = dir.path().join("admin");
    let child = Command::new(bin)
        .arg("-c")
        .arg(&config)
        .arg("--admin-address-path")
        .arg(&admin_path)
        .args([
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "-l",
            "warning",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let admin = loop {
        if let Ok(s) = std::fs::read_to_string(&admin_path)
            && let Ok(a) = s.trim().parse()
        {
            break a;
        }
        assert!(Instant::now() < deadline, "envoy wrote no admin address");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Envoy {
        child,
        admin,
        _dir: dir,
    }
}

async fn syncz(mon: std::net::SocketAddr) -> Value {
    serde_json::from_str(&http_get(mon, "/debug/syncz").await.1).unwrap()
}

async fn wait_for(what: &str, mut cond: impl AsyncFnMut() -> Option<String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match cond().await {
            None => return,
            Some(state) if Instant::now() > deadline => {
                panic!("timed out waiting for {what}: {state}")
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn run(api_type: &str) {
    let Some(bin) = need_envoy() else { return };
    let shutdown = CancellationToken::new();
    let generator = Arc::new(MeshGenerator(ArcSwap::from_pointee(Mesh {
        endpoint_port: 18080,
        bad_cluster: false,
    })));
    let mut registry = prometheus_client::registry::Registry::default();
    let server = XdsServer::new(
        generator.clone(),
        Arc::new(Metrics::new(&mut registry)),
        XdsServerConfig::default(),
        shutdown.clone(),
    );
    let monitoring = Monitoring::new(registry, server.clone(), Box::new(|| json!({})));
    let xds_listener = XdsServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mon_listener = Monitoring::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let xds = xds_listener.local_addr().unwrap();
    let mon = mon_listener.local_addr().unwrap();
    tokio::spawn(server.clone().serve(xds_listener));
    tokio::spawn(monitoring.serve(mon_listener, shutdown.clone()));
    let (pusher, _) = Pusher::start(server.clone(), shutdown.clone());

    let envoy = start_envoy(&bin, xds, api_type).await;
    let protocol = if api_type == "DELTA_GRPC" {
        "delta"
    } else {
        "sotw"
    };

    // Envoy warms everything and ACKs every type.
    wait_for("envoy to ACK CDS, EDS, LDS and RDS", async || {
        let s = syncz(mon).await;
        let ok = s[0]["protocol"] == protocol
            && ["CDS", "EDS", "LDS", "RDS"]
                .iter()
                .all(|t| s[0]["types"][t]["status"] == "SYNCED");
        (!ok).then(|| s.to_string())
    })
    .await;
    let (_, metrics) = http_get(mon, "/metrics").await;
    assert!(!metrics.contains("pilot_total_xds_rejects"), "{metrics}");
    let (_, listeners) = http_get(envoy.admin, "/listeners").await;
    assert!(listeners.contains("127.0.0.1_0"), "{listeners}");

    // EDS-only push: Envoy's cluster gets the new endpoint.
    generator.0.store(Arc::new(Mesh {
        endpoint_port: 18081,
        bad_cluster: false,
    }));
    pusher.push_all(PushRequest::new(false, Instant::now(), "endpoint change"));
    wait_for("envoy to apply the new endpoint", async || {
        let (_, clusters) = http_get(envoy.admin, "/clusters").await;
        (!clusters.contains("backend.default.svc.cluster.local::127.0.0.1:18081::"))
            .then_some(clusters)
    })
    .await;

    // An invalid cluster is NACKed; syncz shows Envoy's message; the old cluster stays.
    generator.0.store(Arc::new(Mesh {
        endpoint_port: 18081,
        bad_cluster: true,
    }));
    pusher.push_all(PushRequest::new(true, Instant::now(), "bad cluster"));
    wait_for("envoy to NACK the bad cluster", async || {
        let s = syncz(mon).await;
        let cds = &s[0]["types"]["CDS"];
        let nacked = cds["status"] == "STALE"
            && cds["nack"]["nonce"] == cds["sent"]["nonce"]
            && cds["nack"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("positive duration"));
        (!nacked).then(|| cds.to_string())
    })
    .await;
    let (_, metrics) = http_get(mon, "/metrics").await;
    assert!(
        metrics.contains("pilot_total_xds_rejects{type=\"cds\"} 1"),
        "{metrics}"
    );
    let (_, clusters) = http_get(envoy.admin, "/clusters").await;
    assert!(
        clusters.contains("backend.default.svc.cluster.local::127.0.0.1:18081::"),
        "last good cluster stays: {clusters}"
    );
    drop(envoy);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_sotw_ads_acks_pushes_and_nacks() {
    run("GRPC").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_delta_ads_acks_pushes_and_nacks() {
    run("DELTA_GRPC").await;
}
