//! The work one HTTP/1.1 request costs the proxy, made to be counted with callgrind
//! (`cargo xtask bench` measures time; this counts instructions, which a shared, noisy
//! machine cannot blur).
//!
//! One thread runs everything on real 127.0.0.1 sockets: a 1 KiB HTTP/1.1 upstream,
//! `mesh_proxy::http::serve` with the outbound HTTP connection manager and route
//! configuration our control plane generates for a sidecar (the `header-routing` golden
//! file: fault, CORS and router filters, Istio's default retry policy), and a client
//! that sends `--requests N` GETs one after another on one keep-alive connection.
//! Instructions per request are the difference of two runs over the difference of
//! their request counts:
//!
//! ```sh
//! cargo bench -p mesh-proxy --bench proxy_path --no-run   # prints the binary
//! for n in 1000 3000; do valgrind --tool=callgrind --callgrind-out-file=cg.$n \
//!     target/release/deps/proxy_path-* --requests $n; done
//! callgrind_annotate --inclusive=yes cg.3000 | head -60
//! ```
//!
//! Without valgrind it prints the wall time per request (a smoke check, not a figure).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{convert::Infallible, net::SocketAddr, time::Instant};

use bytes::Bytes;
use envoy_types::pb::envoy::{
    config::cluster::v3::Cluster as PbCluster,
    extensions::filters::network::http_connection_manager::v3::HttpConnectionManager as PbHcm,
};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use mesh_api::envoy_json::message_from_json;
use mesh_proxy::config::{cluster::Cluster, http::HttpConnectionManager};
use serde_json::{Value, json};
use tokio::net::TcpListener;

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../mesh-control/tests/golden/header-routing/expected/productpage.json"
);
const CLUSTER: &str = "outbound|9080||details.default.svc.cluster.local";

async fn upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let body = Bytes::from(vec![b'x'; 1024]);
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let _ = s.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    let body = body.clone();
                    async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// The golden sidecar's outbound HCM for port 9080, with its RDS route configuration
/// inlined, and the destination's cluster made static on `upstream`.
fn proxy_config(upstream: SocketAddr) -> (HttpConnectionManager, Cluster) {
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(GOLDEN).unwrap()).unwrap();
    let route = golden["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "9080")
        .unwrap()
        .clone();
    let mut hcm = golden["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["filterChains"].as_array().into_iter().flatten())
        .flat_map(|fc| fc["filters"].as_array().into_iter().flatten())
        .map(|f| &f["typedConfig"])
        .find(|tc| tc["rds"]["routeConfigName"] == "9080")
        .unwrap()
        .clone();
    let hcm_obj = hcm.as_object_mut().unwrap();
    hcm_obj.remove("rds");
    hcm_obj.remove("@type");
    let mut route = route;
    route.as_object_mut().unwrap().remove("@type");
    hcm_obj.insert("routeConfig".into(), route);
    let cluster = json!({"name": CLUSTER, "type": "STATIC", "connect_timeout": "5s",
        "load_assignment": {"cluster_name": CLUSTER, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream.port()}}}}]}]}});
    let hcm: PbHcm = message_from_json(&hcm).unwrap();
    let cluster: PbCluster = message_from_json(&cluster).unwrap();
    (
        HttpConnectionManager::try_from(&hcm).unwrap(),
        Cluster::try_from(&cluster).unwrap(),
    )
}

fn main() {
    let requests: u64 = std::env::args()
        .skip_while(|a| a != "--requests")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    // The same client and upstream without the proxy: the baseline that, subtracted
    // from a run through the proxy, leaves everything the proxy costs, its share of the
    // runtime's event loop included.
    let direct = std::env::args().any(|a| a == "--direct");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let up = upstream().await;
        let (hcm, cluster) = proxy_config(up);
        let target = if direct {
            up
        } else {
            support::serve_proxy(hcm, cluster).await
        };
        let s = tokio::net::TcpStream::connect(target).await.unwrap();
        s.set_nodelay(true).unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(conn);
        let started = Instant::now();
        for _ in 0..requests {
            sender.ready().await.unwrap();
            let req = Request::get("/productpage")
                .header("host", "details:9080")
                .header("user-agent", "bench")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            assert!(resp.status().is_success(), "{}", resp.status());
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body.len(), 1024);
        }
        let per = started.elapsed() / requests as u32;
        let via = if direct {
            "directly"
        } else {
            "through the proxy"
        };
        println!("{requests} requests {via}, {per:?} each (wall time, one thread)");
    });
}
