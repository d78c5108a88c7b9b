//! The ADS server over real gRPC on loopback, driven by Envoy-like clients: ACK, NACK (seen
//! in syncz and metrics), reconnects, named subscriptions, pushes, and the monitoring port.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod xds_support;

use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use mesh_control::xds::{XdsServerConfig, XdsType};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use xds_support::*;

const WAIT: Duration = Duration::from_secs(5);

fn world() -> World {
    World {
        clusters: BTreeMap::from([
            (
                "outbound|9080||reviews.default.svc.cluster.local".into(),
                vec![9080, 9081],
            ),
            (
                "outbound|9080||ratings.default.svc.cluster.local".into(),
                vec![9080],
            ),
        ]),
        listeners: BTreeMap::from([("0.0.0.0_9080".into(), "9080".into())]),
        routes: BTreeMap::from([
            ("9080".into(), "reviews".into()),
            ("unused".into(), "nobody".into()),
        ]),
    }
}

async fn syncz(cp: &ControlPlane) -> serde_json::Value {
    let (status, body) = cp.get("/debug/syncz").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until syncz shows `want` for every served type of the only proxy.
async fn wait_synced(cp: &ControlPlane, types: &[&str]) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = syncz(cp).await;
        if s.as_array().is_some_and(|a| a.len() == 1)
            && types.iter().all(|t| s[0]["types"][t]["status"] == "SYNCED")
        {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never synced: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn metric(cp: &ControlPlane, line_prefix: &str) -> Option<f64> {
    let (_, body) = cp.get("/metrics").await;
    body.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn sotw_client_syncs_acks_and_receives_pushes() {
    let w = world();
    let cp = ControlPlane::start(w.clone()).await;
    let client = sotw_client(cp.xds_addr, ClientOptions::default()).await;
    client.wait_for(&w.expected(), WAIT).await.unwrap();
    let s = wait_synced(&cp, &["CDS", "EDS", "LDS", "RDS"]).await;
    assert_eq!(s[0]["proxy"], NODE_ID);
    assert_eq!(s[0]["name"], "reviews-v1-abc.default");
    assert_eq!(s[0]["protocol"], "sotw");
    assert_eq!(s[0]["types"]["SDS"]["status"], "NOT SENT");
    let cds = &s[0]["types"]["CDS"];
    assert_eq!(cds["sent"]["nonce"], cds["acked"]["nonce"]);
    assert_eq!(cds["sent"]["version"], cds["acked"]["version"]);
    assert!(cds["acked"]["at"].as_str().unwrap().ends_with('Z'));
    assert!(cds["ack_latency_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(s[0]["types"]["EDS"]["subscription"], "2 names");

    // An endpoint change is an EDS-only push: only EDS is sent.
    let before = client.responses();
    let mut w2 = w.clone();
    w2.clusters.insert(
        "outbound|9080||ratings.default.svc.cluster.local".into(),
        vec![9080, 9082],
    );
    cp.change(w2.clone(), false);
    client.wait_for(&w2.expected(), WAIT).await.unwrap();
    wait_synced(&cp, &["CDS", "EDS", "LDS", "RDS"]).await;
    let log = client.state.lock().log[before..].to_vec();
    assert_eq!(
        log,
        [(XdsType::Endpoint, 1, 0)],
        "a SotW EDS push carries only the changed load assignment"
    );

    // A full push that changes only a route sends only RDS: unchanged types are not resent.
    let before = client.responses();
    let mut w3 = w2.clone();
    w3.routes.insert("9080".into(), "reviews.default".into());
    cp.change(w3.clone(), true);
    client.wait_for(&w3.expected(), WAIT).await.unwrap();
    wait_synced(&cp, &["CDS", "EDS", "LDS", "RDS"]).await;
    let log = client.state.lock().log[before..].to_vec();
    assert_eq!(log, [(XdsType::Route, 1, 0)]);

    // A new cluster: CDS first, then the client asks for its endpoints.
    let mut w4 = w3.clone();
    w4.clusters.insert(
        "outbound|9080||details.default.svc.cluster.local".into(),
        vec![9080],
    );
    cp.change(w4.clone(), true);
    client.wait_for(&w4.expected(), WAIT).await.unwrap();
    let s = wait_synced(&cp, &["CDS", "EDS", "LDS", "RDS"]).await;
    assert_eq!(s[0]["types"]["EDS"]["subscription"], "3 names");
    assert!(metric(&cp, "pilot_xds_pushes{type=\"cds\"}").await.unwrap() >= 2.0);
    assert!(
        metric(&cp, "pilot_proxy_convergence_time_count")
            .await
            .unwrap()
            >= 3.0
    );
    assert_eq!(metric(&cp, "pilot_xds ").await, Some(1.0));
}

#[tokio::test]
async fn nack_is_visible_in_syncz_and_metrics_and_not_resent() {
    let w = world();
    let cp = ControlPlane::start(w.clone()).await;
    let msg = "Error adding/updating listener(s) 0.0.0.0_9080: unsupported field";
    let client = sotw_client(
        cp.xds_addr,
        ClientOptions {
            nack: Some((XdsType::Listener, msg.into())),
        },
    )
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = syncz(&cp).await;
        if s[0]["types"]["LDS"]["nack"]["message"] == msg
            && s[0]["types"]["CDS"]["status"] == "SYNCED"
        {
            assert_eq!(s[0]["types"]["LDS"]["status"], "STALE");
            assert_eq!(
                s[0]["types"]["LDS"]["nack"]["nonce"],
                s[0]["types"]["LDS"]["sent"]["nonce"]
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no NACK in syncz: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        metric(&cp, "pilot_total_xds_rejects{type=\"lds\"}").await,
        Some(1.0)
    );
    let (_, text) = cp.get("/debug/syncz?format=text").await;
    assert!(text.contains("STALE (NACK)"), "{text}");

    // The rejected listener is not resent by an unrelated push...
    let lds_sent = |c: &Client| {
        c.state
            .lock()
            .log
            .iter()
            .filter(|(t, _, _)| *t == XdsType::Listener)
            .count()
    };
    let before = lds_sent(&client);
    let mut w2 = w.clone();
    w2.clusters.insert(
        "outbound|9080||ratings.default.svc.cluster.local".into(),
        vec![1],
    );
    cp.change(w2.clone(), true);
    client
        .wait_for(
            &{
                let mut e = w2.expected();
                e.listeners.clear();
                e.routes.clear();
                e
            },
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(lds_sent(&client), before);
    // ...but a fixed one is.
    let mut w3 = w2.clone();
    w3.listeners.insert("0.0.0.0_9080".into(), "9081".into());
    cp.change(w3, true);
    let deadline = tokio::time::Instant::now() + WAIT;
    while lds_sent(&client) == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "changed listener never sent"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        metric(&cp, "pilot_total_xds_rejects{type=\"lds\"}").await,
        Some(2.0)
    );
}

#[tokio::test]
async fn reconnecting_clients_get_everything_again() {
    let w = world();
    let cp = ControlPlane::start(w.clone()).await;
    let first = sotw_client(cp.xds_addr, ClientOptions::default()).await;
    first.wait_for(&w.expected(), WAIT).await.unwrap();
    let conn1 = wait_synced(&cp, &["CDS"]).await[0]["connection"].clone();
    drop(first);
    let second = sotw_client(cp.xds_addr, ClientOptions::default()).await;
    second.wait_for(&w.expected(), WAIT).await.unwrap();
    let s = wait_synced(&cp, &["CDS", "EDS", "LDS", "RDS"]).await;
    assert_ne!(
        s[0]["connection"], conn1,
        "a new connection, and the old one is gone"
    );
    assert_eq!(metric(&cp, "pilot_xds ").await, Some(1.0));
}

#[tokio::test]
async fn delta_reconnect_with_initial_versions_resends_nothing_it_has() {
    let w = world();
    let cp = ControlPlane::start(w.clone()).await;
    let client = delta_client(cp.xds_addr, ClientOptions::default(), None).await;
    client.wait_for(&w.expected(), WAIT).await.unwrap();
    wait_synced(&cp, &["CDS", "EDS", "LDS", "RDS"]).await;
    let held = client.stop().await;
    let held = std::mem::take(&mut *held.lock());

    // The mesh changes while the client is away: one endpoint set and one cluster removed.
    let mut w2 = w.clone();
    w2.clusters
        .remove("outbound|9080||ratings.default.svc.cluster.local");
    w2.clusters.insert(
        "outbound|9080||reviews.default.svc.cluster.local".into(),
        vec![7],
    );
    cp.change(w2.clone(), true);

    let again = delta_client(cp.xds_addr, ClientOptions::default(), Some(held)).await;
    again.wait_for(&w2.expected(), WAIT).await.unwrap();
    wait_synced(&cp, &["CDS", "EDS", "LDS", "RDS"]).await;
    let log = again.state.lock().log.clone();
    let sent = |ty| -> (usize, usize) {
        log.iter()
            .filter(|(t, _, _)| *t == ty)
            .fold((0, 0), |(a, b), (_, n, r)| (a + n, b + r))
    };
    assert_eq!(sent(XdsType::Cluster), (0, 1), "only the removal: {log:?}");
    assert_eq!(sent(XdsType::Listener), (0, 0), "{log:?}");
    assert_eq!(
        sent(XdsType::Endpoint).0,
        1,
        "only the changed endpoints: {log:?}"
    );
}

#[tokio::test]
async fn named_subscriptions_get_only_what_they_name() {
    let w = world();
    let cp = ControlPlane::start(w.clone()).await;
    let mut client = channel(cp.xds_addr).await;

    // SotW: EDS for one name, then two.
    let (tx, rx) = mpsc::channel(8);
    let mut inbound = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let reviews = "outbound|9080||reviews.default.svc.cluster.local".to_string();
    let ratings = "outbound|9080||ratings.default.svc.cluster.local".to_string();
    tx.send(DiscoveryRequest {
        node: Some(node()),
        type_url: XdsType::Endpoint.type_url().into(),
        resource_names: vec![reviews.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    let r = inbound.message().await.unwrap().unwrap();
    assert_eq!(r.resources.len(), 1);
    tx.send(DiscoveryRequest {
        type_url: XdsType::Endpoint.type_url().into(),
        resource_names: vec![reviews.clone(), ratings.clone()],
        version_info: r.version_info.clone(),
        response_nonce: r.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let r2 = inbound.message().await.unwrap().unwrap();
    assert_eq!(r2.resources.len(), 2);
    assert_ne!(r2.version_info, r.version_info);

    // Delta: a name that does not exist is answered as removed.
    let (dtx, drx) = mpsc::channel(8);
    let mut dinbound = client
        .delta_aggregated_resources(ReceiverStream::new(drx))
        .await
        .unwrap()
        .into_inner();
    dtx.send(DeltaDiscoveryRequest {
        node: Some(node()),
        type_url: XdsType::Route.type_url().into(),
        resource_names_subscribe: vec!["9080".into(), "nope".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let d = dinbound.message().await.unwrap().unwrap();
    assert_eq!(d.resources.len(), 1);
    assert_eq!(d.resources[0].name, "9080");
    assert_eq!(d.removed_resources, ["nope"]);
    assert!(!d.resources[0].version.is_empty());
}

#[tokio::test]
async fn a_stream_without_node_is_rejected_with_a_hint() {
    let cp = ControlPlane::start(world()).await;
    let mut client = channel(cp.xds_addr).await;
    let (tx, rx) = mpsc::channel(1);
    let mut inbound = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(DiscoveryRequest {
        type_url: XdsType::Cluster.type_url().into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = inbound.message().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("node"), "{}", err.message());

    // A malformed node id names the problem too.
    let (tx, rx) = mpsc::channel(1);
    let mut inbound = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut bad = node();
    bad.id = "not-a-node-id".into();
    tx.send(DiscoveryRequest {
        node: Some(bad),
        type_url: XdsType::Cluster.type_url().into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = inbound.message().await.unwrap_err();
    assert!(err.message().contains("not-a-node-id"), "{}", err.message());
}

#[tokio::test]
async fn monitoring_endpoints() {
    let w = world();
    let cp = ControlPlane::start(w.clone()).await;
    let client = delta_client(cp.xds_addr, ClientOptions::default(), None).await;
    client.wait_for(&w.expected(), WAIT).await.unwrap();
    wait_synced(&cp, &["CDS", "EDS", "LDS", "RDS"]).await;

    assert_eq!(cp.get("/ready").await.0, 200);

    let (status, text) = cp.get("/debug/syncz?format=text").await;
    assert_eq!(status, 200);
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("NAME"), "{text}");
    for col in ["CDS", "LDS", "EDS", "RDS", "SDS", "LAST ACK"] {
        assert!(header.contains(col), "{text}");
    }
    let row = lines.next().unwrap();
    assert!(row.starts_with("reviews-v1-abc.default"), "{text}");
    assert!(
        row.contains("delta") && row.contains("SYNCED") && row.contains("NOT SENT"),
        "{text}"
    );

    // config_dump: Envoy's ConfigDump JSON, by node id or pod.namespace.
    for id in ["reviews-v1-abc.default", NODE_ID] {
        let (status, body) = cp
            .get(&format!(
                "/debug/config_dump?proxyID={}",
                id.replace('|', "%7C")
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
        let configs = dump["configs"].as_array().unwrap();
        assert_eq!(
            configs[0]["@type"],
            "type.googleapis.com/envoy.admin.v3.ClustersConfigDump"
        );
        let clusters = configs[0]["dynamic_active_clusters"].as_array().unwrap();
        assert_eq!(clusters.len(), 2);
        assert_eq!(
            clusters[0]["cluster"]["@type"],
            "type.googleapis.com/envoy.config.cluster.v3.Cluster"
        );
        assert_eq!(
            clusters[0]["cluster"]["name"],
            "outbound|9080||ratings.default.svc.cluster.local"
        );
        assert_eq!(
            configs[1]["dynamic_listeners"][0]["active_state"]["listener"]["name"],
            "0.0.0.0_9080"
        );
        let eds = &configs[4]["dynamic_endpoint_configs"];
        assert_eq!(
            eds[1]["endpoint_config"]["endpoints"][0]["lb_endpoints"][1]["endpoint"]["address"]["socket_address"]
                ["port_value"],
            9081
        );
    }
    let (status, body) = cp.get("/debug/config_dump?proxyID=nobody.nowhere").await;
    assert_eq!(status, 404);
    assert!(
        body.contains("nobody.nowhere") && body.contains("not connected"),
        "{body}"
    );
    assert_eq!(cp.get("/debug/config_dump").await.0, 400);

    let (status, body) = cp.get("/debug/connections").await;
    assert_eq!(status, 200);
    let conns: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(conns[0]["proxy"], NODE_ID);
    assert_eq!(conns[0]["protocol"], "delta");
    assert_eq!(conns[0]["subscriptions"]["CDS"], "*");

    let (status, body) = cp.get("/debug/configz").await;
    assert_eq!(status, 200);
    assert!(body.contains("resources"));

    let (status, body) = cp.get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "# TYPE pilot_xds gauge",
        "# TYPE pilot_xds_pushes counter",
        "# TYPE pilot_proxy_convergence_time histogram",
    ] {
        assert!(body.contains(name), "{name} missing:\n{body}");
    }
    assert!(
        !body.contains(".."),
        "help texts end in one period:\n{body}"
    );
    // Labelled families appear with their first sample, as in Istio.
    assert!(!body.contains("pilot_total_xds_rejects"), "{body}");
    assert_eq!(cp.get("/nope").await.0, 404);
}

#[tokio::test]
async fn shutdown_ends_streams() {
    let w = world();
    let cp = ControlPlane::start(w.clone()).await;
    let client = delta_client(cp.xds_addr, ClientOptions::default(), None).await;
    client.wait_for(&w.expected(), WAIT).await.unwrap();
    cp.shutdown.cancel();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cp.server.registry().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "streams still open after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A connect storm during a stream of pushes with one generation permit: every stream must
/// still get its initial config (pushes must not hold permits while queued for a stream
/// that is itself waiting for a permit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_storm_during_pushes_does_not_deadlock() {
    let mut w = world();
    let cp = ControlPlane::start_with(
        w.clone(),
        XdsServerConfig {
            push_concurrency: 1,
            generate_concurrency: 1,
            ..XdsServerConfig::default()
        },
    )
    .await;
    let mut clients = Vec::new();
    for i in 0..20u16 {
        clients.push(delta_client(cp.xds_addr, ClientOptions::default(), None).await);
        w.clusters.insert(
            "outbound|9080||ratings.default.svc.cluster.local".into(),
            vec![i],
        );
        cp.change(w.clone(), i % 3 == 0);
    }
    for c in &clients {
        c.wait_for(&w.expected(), WAIT).await.unwrap();
    }
    assert_eq!(cp.server.registry().len(), 20);
}
