//! A whole proxy in-process, fed by the test ADS server over real gRPC, with real TCP
//! upstreams: config application (delta and SotW), NACK naming the field while the old
//! config keeps serving, reconnects, EDS warming, in-place listener updates that keep
//! the connections of unchanged chains and drain those of changed ones, drain on removal, and the admin endpoints reflecting all of it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use mesh_proxy::testing::{XdsServer, http_get};
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn tcp_setup(sotw: bool) -> (XdsServer, mesh_proxy::app::Proxy, Echo, u16) {
    let xds = XdsServer::start().await;
    let up = echo("a").await;
    let port = free_port();
    set(&xds, CDS, vec![static_cluster("a", &[up.addr])]);
    set(&xds, LDS, vec![tcp_listener("tcp", port, "a")]);
    let proxy = start_proxy(&xds, sotw).await;
    assert!(proxy.wait_ready(WAIT).await, "proxy did not become ready");
    (xds, proxy, up, port)
}

async fn tcp_proxies_bytes(sotw: bool) {
    let (xds, proxy, _up, port) = tcp_setup(sotw).await;
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let (mut c, tag) = greet(addr).await.unwrap();
    assert_eq!(tag, "a");
    assert_eq!(roundtrip(&mut c, b"ping").await.unwrap(), b"ping");
    // Both types were ACKed at the server's version, with the node on the first request.
    assert!(xds.wait_for_ack(LDS, WAIT).await.is_some());
    let first = &xds.requests()[0];
    assert_eq!(first.type_url, CDS, "CDS is requested first");
    assert_eq!(first.node_id.as_deref(), Some(node().id.as_str()));
    assert!(
        xds.requests().iter().skip(1).all(|r| r.node_id.is_none()),
        "node only on the first request"
    );
    drop(c);
    proxy.shutdown().await;
}

#[tokio::test]
async fn delta_tcp_proxy() {
    tcp_proxies_bytes(false).await;
}

#[tokio::test]
async fn sotw_tcp_proxy() {
    tcp_proxies_bytes(true).await;
}

async fn nack_keeps_last_good(sotw: bool) {
    let (xds, proxy, _up, port) = tcp_setup(sotw).await;
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    // An unsupported network filter before the tcp_proxy: NACK naming it.
    let mut bad = tcp_listener("tcp", port, "a");
    bad["filterChains"][0]["filters"] = json!([
        {"name": "envoy.filters.network.rbac", "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC", "statPrefix": "r"}},
        tcp_proxy_filter("a")
    ]);
    set(&xds, LDS, vec![bad]);
    let nack = xds
        .wait_for_nack(LDS, "envoy.filters.network.rbac", WAIT)
        .await
        .expect("NACK naming the filter");
    let msg = nack.error.unwrap();
    assert!(msg.contains("\"tcp\""), "names the listener: {msg}");
    assert!(
        msg.contains("filter_chains[0].filters[0]"),
        "names the field: {msg}"
    );
    if sotw {
        assert_ne!(
            nack.version_info,
            xds.version(),
            "SotW NACK carries the last accepted version"
        );
    }
    // The old listener still serves.
    let (mut c, tag) = greet(addr).await.unwrap();
    assert_eq!(tag, "a");
    assert_eq!(roundtrip(&mut c, b"still").await.unwrap(), b"still");
    // The dump shows the rejected version as error_state.
    let admin = proxy.admin_addr.unwrap();
    let dump = tokio::task::spawn_blocking(move || {
        http_get(admin, "/config_dump?resource=dynamic_listeners")
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        dump.contains("error_state") && dump.contains("envoy.filters.network.rbac"),
        "{dump}"
    );
    // A later good config is applied.
    let b = echo("b").await;
    set(
        &xds,
        CDS,
        vec![
            static_cluster("a", &[_up.addr]),
            static_cluster("b", &[b.addr]),
        ],
    );
    set(&xds, LDS, vec![tcp_listener("tcp", port, "b")]);
    assert!(xds.wait_for_ack(LDS, WAIT).await.is_some());
    let tag = eventually("the new cluster", || async {
        greet(addr).await.ok().map(|(_, t)| t).filter(|t| t == "b")
    })
    .await;
    assert_eq!(tag, "b");
    drop(c);
    proxy.shutdown().await;
}

#[tokio::test]
async fn delta_nack_keeps_last_good() {
    nack_keeps_last_good(false).await;
}

#[tokio::test]
async fn sotw_nack_keeps_last_good() {
    nack_keeps_last_good(true).await;
}

#[tokio::test]
async fn bad_cluster_is_nacked_by_field_and_others_apply() {
    let (xds, proxy, up, _port) = tcp_setup(false).await;
    let mut bad = eds_cluster("bad");
    bad["lbSubsetConfig"] = json!({"fallbackPolicy": "ANY_ENDPOINT"});
    set(
        &xds,
        CDS,
        vec![
            static_cluster("a", &[up.addr]),
            bad,
            static_cluster("c", &[up.addr]),
        ],
    );
    let nack = xds
        .wait_for_nack(CDS, "lb_subset_config", WAIT)
        .await
        .expect("NACK");
    assert!(
        nack.error
            .unwrap()
            .contains("Cluster \"bad\": lb_subset_config")
    );
    // The good cluster in the same response is applied anyway (as Envoy does).
    eventually("cluster c", || async {
        proxy.rt.clusters.get("c").map(|_| ())
    })
    .await;
    assert!(proxy.rt.clusters.get("bad").is_none());
    proxy.shutdown().await;
}

async fn reconnects_and_keeps_serving(sotw: bool) {
    let (xds, proxy, _up, port) = tcp_setup(sotw).await;
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let before = xds.requests().len();
    xds.disconnect_all();
    // While the stream is down, traffic flows on the last good config.
    let (_c, tag) = greet(addr).await.unwrap();
    assert_eq!(tag, "a");
    // The client comes back; a delta client tells the server what it has.
    let again = eventually("a new stream", || async {
        xds.requests()[before..]
            .iter()
            .find(|r| r.type_url == CDS && r.nonce.is_empty() && r.node_id.is_some())
            .cloned()
    })
    .await;
    if !sotw {
        assert!(
            again.initial_resource_versions.contains_key("a"),
            "{:?}",
            again.initial_resource_versions
        );
    }
    // And config changes still arrive.
    let b = echo("b").await;
    set(&xds, CDS, vec![static_cluster("a", &[b.addr])]);
    let tag = eventually("update after reconnect", || async {
        greet(addr).await.ok().map(|(_, t)| t).filter(|t| t == "b")
    })
    .await;
    assert_eq!(tag, "b");
    proxy.shutdown().await;
}

#[tokio::test]
async fn delta_reconnects() {
    reconnects_and_keeps_serving(false).await;
}

#[tokio::test]
async fn sotw_reconnects() {
    reconnects_and_keeps_serving(true).await;
}

async fn eds_warming(sotw: bool) {
    let xds = XdsServer::start().await;
    let port = free_port();
    set(&xds, CDS, vec![eds_cluster("e")]);
    set(&xds, LDS, vec![tcp_listener("tcp", port, "e")]);
    let proxy = start_proxy(&xds, sotw).await;
    // The cluster waits for its endpoints; LDS is not even requested yet.
    let sub = xds
        .wait_for(WAIT, |r| {
            r.type_url == EDS && r.resource_names.contains(&"e".to_string())
        })
        .await;
    assert!(sub.is_some(), "EDS subscribed by name");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!*proxy.ready.borrow());
    assert!(
        proxy.rt.clusters.get("e").is_none(),
        "warming cluster is not active"
    );
    assert!(
        xds.requests().iter().all(|r| r.type_url != LDS),
        "LDS waits for clusters to warm"
    );
    let up = echo("e").await;
    set(&xds, EDS, vec![cla("e", &[up.addr])]);
    assert!(proxy.wait_ready(WAIT).await);
    let (_c, tag) = greet(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(tag, "e");
    // Endpoint updates move traffic.
    let up2 = echo("e2").await;
    set(&xds, EDS, vec![cla("e", &[up2.addr])]);
    let tag = eventually("new endpoints", || async {
        greet(format!("127.0.0.1:{port}").parse().unwrap())
            .await
            .ok()
            .map(|(_, t)| t)
            .filter(|t| t == "e2")
    })
    .await;
    assert_eq!(tag, "e2");
    proxy.shutdown().await;
}

#[tokio::test]
async fn delta_eds_warming() {
    eds_warming(false).await;
}

#[tokio::test]
async fn sotw_eds_warming() {
    eds_warming(true).await;
}

#[tokio::test]
async fn listener_update_drains_only_changed_chains() {
    let (xds, proxy, up, port) = tcp_setup(false).await;
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let (mut old, tag) = greet(addr).await.unwrap();
    assert_eq!(tag, "a");

    // An in-place update that leaves the chain byte for byte: its connection stays.
    let mut same_chain = tcp_listener("tcp", port, "a");
    same_chain["statPrefix"] = json!("renamed");
    set(&xds, LDS, vec![same_chain]);
    assert!(xds.wait_for_ack(LDS, WAIT).await.is_some());
    // Well past the drain duration (800ms).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(roundtrip(&mut old, b"alive").await.unwrap(), b"alive");
    let stats = proxy.rt.stats.encode_prometheus();
    assert!(
        stats.contains("envoy_listener_manager_total_filter_chains_draining 0"),
        "{stats}"
    );

    // A new cluster in the chain: new connections use it at once, and the old
    // connection drains and is closed when the drain duration ends, as in Envoy.
    let b = echo("b").await;
    set(
        &xds,
        CDS,
        vec![
            static_cluster("a", &[up.addr]),
            static_cluster("b", &[b.addr]),
        ],
    );
    set(&xds, LDS, vec![tcp_listener("tcp", port, "b")]);
    eventually("new connections use the new chain", || async {
        greet(addr).await.ok().map(|(_, t)| t).filter(|t| t == "b")
    })
    .await;
    assert_eq!(roundtrip(&mut old, b"draining").await.unwrap(), b"draining");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), old.read(&mut buf))
        .await
        .expect("closed when the chain's drain ends")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let (mut new, tag) = greet(addr).await.unwrap();
    assert_eq!(tag, "b");
    assert_eq!(roundtrip(&mut new, b"new").await.unwrap(), b"new");
    proxy.shutdown().await;
}

#[tokio::test]
async fn removed_listener_drains_then_closes() {
    let (xds, proxy, _up, port) = tcp_setup(false).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (mut c, _) = greet(addr).await.unwrap();
    set(&xds, LDS, vec![]);
    assert!(xds.wait_for_ack(LDS, WAIT).await.is_some());
    // New connections are refused at once...
    eventually("listener socket closed", || async {
        tokio::net::TcpStream::connect(addr).await.err().map(|_| ())
    })
    .await;
    // ...the open one keeps working during the drain...
    assert_eq!(roundtrip(&mut c, b"draining").await.unwrap(), b"draining");
    // ...and is closed when the drain duration (800ms) ends.
    let mut b = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b))
        .await
        .expect("closed by the drain")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let stats = proxy.rt.stats.encode_prometheus();
    assert!(
        stats.contains("envoy_listener_downstream_cx_drained_total"),
        "{stats}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn filter_chains_by_destination_port_and_default() {
    // One listener bound to two addresses? No: one listener, chains by source port is
    // awkward to drive; use SNI via a raw ClientHello and the default chain.
    let xds = XdsServer::start().await;
    let (a, b, d) = (echo("a").await, echo("b").await, echo("default").await);
    let port = free_port();
    set(
        &xds,
        CDS,
        vec![
            static_cluster("a", &[a.addr]),
            static_cluster("b", &[b.addr]),
            static_cluster("d", &[d.addr]),
        ],
    );
    set(
        &xds,
        LDS,
        vec![json!({
            "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
            "name": "sni",
            "address": {"socketAddress": {"address": "127.0.0.1", "portValue": port}},
            "listenerFilters": [{"name": "envoy.filters.listener.tls_inspector", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
            "listenerFiltersTimeout": "1s",
            "continueOnListenerFiltersTimeout": true,
            "filterChains": [
                {"filterChainMatch": {"serverNames": ["a.example.com"]}, "filters": [tcp_proxy_filter("a")]},
                {"filterChainMatch": {"serverNames": ["*.example.com"]}, "filters": [tcp_proxy_filter("b")]}
            ],
            "defaultFilterChain": {"filters": [tcp_proxy_filter("d")]}
        })],
    );
    let proxy = start_proxy(&xds, false).await;
    assert!(proxy.wait_ready(WAIT).await);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    for (sni, want) in [
        ("a.example.com", "a"),
        ("x.example.com", "b"),
        ("a.example.org", "default"),
    ] {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(&client_hello(sni)).await.unwrap();
        let mut tag = vec![0u8; want.len() + 1];
        c.read_exact(&mut tag).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&tag).trim(), want, "sni {sni}");
    }
    // Plaintext: the inspector decides "not TLS" at the first byte; default chain.
    let (_c, tag) = {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        let mut t = vec![0u8; 8];
        c.read_exact(&mut t).await.unwrap();
        (c, String::from_utf8_lossy(&t).trim().to_string())
    };
    assert_eq!(tag, "default");
    // A silent client hits the 1s listener filter timeout and continues to the default.
    let (_c, tag) = greet(addr).await.unwrap();
    assert_eq!(tag, "default");
    proxy.shutdown().await;
}

/// A minimal TLS ClientHello record with an SNI.
fn client_hello(sni: &str) -> Vec<u8> {
    let n = sni.as_bytes();
    let mut sni_ext = Vec::new();
    sni_ext.extend_from_slice(&((n.len() + 3) as u16).to_be_bytes());
    sni_ext.push(0);
    sni_ext.extend_from_slice(&(n.len() as u16).to_be_bytes());
    sni_ext.extend_from_slice(n);
    let mut exts = Vec::new();
    exts.extend_from_slice(&0u16.to_be_bytes());
    exts.extend_from_slice(&(sni_ext.len() as u16).to_be_bytes());
    exts.extend_from_slice(&sni_ext);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[1u8; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

#[tokio::test]
async fn admin_reflects_state() {
    let (_xds, proxy, up, port) = tcp_setup(false).await;
    let admin = proxy.admin_addr.unwrap();
    let get = |p: &'static str| tokio::task::spawn_blocking(move || http_get(admin, p).unwrap());
    assert_eq!(get("/ready").await.unwrap(), "LIVE\n");
    let dump: serde_json::Value =
        serde_json::from_str(&get("/config_dump").await.unwrap()).unwrap();
    let types: Vec<&str> = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["@type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
            "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
            "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
            "type.googleapis.com/envoy.admin.v3.RoutesConfigDump"
        ]
    );
    let clusters = &dump["configs"][1]["dynamic_active_clusters"];
    assert_eq!(clusters[0]["cluster"]["name"], "a");
    assert_eq!(
        clusters[0]["cluster"]["@type"],
        "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    );
    let masked: serde_json::Value = serde_json::from_str(
        &get("/config_dump?resource=dynamic_listeners&mask=name")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(masked["configs"][0]["name"], "tcp");
    assert!(masked["configs"][0].get("active_state").is_none());
    let clusters_txt = get("/clusters").await.unwrap();
    assert!(
        clusters_txt.contains(&format!("a::{}::health_flags::healthy", up.addr)),
        "{clusters_txt}"
    );
    let listeners = get("/listeners").await.unwrap();
    assert_eq!(listeners.trim(), format!("tcp::127.0.0.1:{port}"));
    let _ = greet(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .unwrap();
    let stats = get("/stats").await.unwrap();
    assert!(stats.contains("cluster.a.upstream_cx_total: 1"), "{stats}");
    let prom = get("/stats/prometheus").await.unwrap();
    assert!(
        prom.contains("envoy_cluster_upstream_cx_total{envoy_cluster_name=\"a\"} 1"),
        "{prom}"
    );
    let info: serde_json::Value =
        serde_json::from_str(&get("/server_info").await.unwrap()).unwrap();
    assert_eq!(info["state"], "LIVE");
    assert_eq!(info["node"]["id"], node().id);
    proxy.shutdown().await;
}
