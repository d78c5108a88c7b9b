//! Push fan-out: 1,000 delta ADS clients on real gRPC connections over loopback; one
//! endpoint change; time until every client has received (and the server sent) the new
//! endpoints. Run: `cargo bench -p mesh-control --bench push_fanout`.
//!
//! The clients are minimal delta clients (wildcard CDS, EDS for every cluster, ACK
//! everything) so the figure is the server's: debounce is bypassed (the push is queued
//! directly), generation runs once per proxy (a 60-cluster mesh), each client gets one EDS
//! response with one resource.

#![allow(clippy::unwrap_used)]

#[path = "../tests/xds_support/mod.rs"]
mod xds_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use mesh_control::xds::XdsType;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use xds_support::{ControlPlane, World, channel, node};

const CLIENTS: usize = 1_000;
const CLUSTERS: u16 = 60;

fn world(generation: u16) -> World {
    World {
        clusters: (0..CLUSTERS)
            .map(|i| {
                let ports = if i == 0 {
                    vec![1000 + generation, 2000]
                } else {
                    vec![80, 81, 82]
                };
                (
                    format!("outbound|80||svc{i}.default.svc.cluster.local"),
                    ports,
                )
            })
            .collect(),
        listeners: (0..10)
            .map(|i| (format!("0.0.0.0_{i}"), format!("route{i}")))
            .collect(),
        routes: BTreeMap::new(),
    }
}

/// A delta client that counts EDS resources received.
async fn client(addr: SocketAddr, eds_resources: Arc<AtomicU64>) {
    let mut grpc = channel(addr).await;
    let (tx, rx) = mpsc::channel(16);
    let mut inbound = grpc
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(DeltaDiscoveryRequest {
        node: Some(node()),
        type_url: XdsType::Cluster.type_url().into(),
        ..Default::default()
    })
    .await
    .unwrap();
    tx.send(DeltaDiscoveryRequest {
        type_url: XdsType::Endpoint.type_url().into(),
        resource_names_subscribe: world(0).clusters.keys().cloned().collect(),
        ..Default::default()
    })
    .await
    .unwrap();
    tokio::spawn(async move {
        while let Ok(Some(resp)) = inbound.message().await {
            if resp.type_url == XdsType::Endpoint.type_url() {
                eds_resources.fetch_add(resp.resources.len() as u64, Ordering::Relaxed);
            }
            let ack = DeltaDiscoveryRequest {
                type_url: resp.type_url,
                response_nonce: resp.nonce,
                ..Default::default()
            };
            if tx.send(ack).await.is_err() {
                return;
            }
        }
    });
}

async fn wait_until(counter: &AtomicU64, target: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while counter.load(Ordering::Relaxed) < target {
        assert!(Instant::now() < deadline, "clients never caught up");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    let cp = rt.block_on(async {
        let cp = ControlPlane::start(world(0)).await;
        for _ in 0..CLIENTS {
            client(cp.xds_addr, counter.clone()).await;
        }
        // Initial sync: every client gets every cluster's endpoints.
        wait_until(&counter, CLIENTS as u64 * u64::from(CLUSTERS)).await;
        cp
    });
    assert_eq!(cp.server.registry().len(), CLIENTS);

    let mut generation = 0u16;
    let mut group = c.benchmark_group("push_fanout");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("1000_delta_clients_one_endpoint_change", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                generation = generation.wrapping_add(1) % 5000;
                let target = counter.load(Ordering::Relaxed) + CLIENTS as u64;
                let start = Instant::now();
                cp.change(world(generation), false);
                rt.block_on(wait_until(&counter, target));
                total += start.elapsed();
            }
            total
        })
    });
    group.finish();
    // Exactly one EDS resource per client per change: nothing else was resent.
    let calls = cp.generator.calls.load(Ordering::Relaxed);
    println!(
        "generations: {calls}, eds resources received: {}",
        counter.load(Ordering::Relaxed)
    );
    drop(cp);
}

criterion_group!(benches, fanout);
criterion_main!(benches);
