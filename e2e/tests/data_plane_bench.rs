//! The data-plane bench's parts that need no root: its parsers, configs and percentiles
//! (the bench's own unit tests, compiled here because a `harness = false` bench target
//! runs no tests), and its upstream and load generator against each other on loopback.
//! The whole bench runs in CI as `cargo xtask bench smoke` (root).
#![allow(dead_code, clippy::unwrap_used)]

#[path = "../benches/data_plane/load.rs"]
mod load;
#[path = "../benches/data_plane/procfs.rs"]
mod procfs;
#[path = "../benches/data_plane/proxies.rs"]
mod proxies;
#[path = "../benches/data_plane/scale.rs"]
mod scale;
#[path = "../benches/data_plane/stats.rs"]
mod stats;
#[path = "../benches/data_plane/tools.rs"]
mod tools;
#[path = "../benches/data_plane/topology.rs"]
mod topology;
#[path = "../benches/data_plane/upstream.rs"]
mod upstream;
#[path = "../benches/data_plane/wire.rs"]
mod wire;

use std::net::SocketAddr;
use std::time::Duration;

use load::{LoadSpec, Protocol};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Every protocol at a fixed rate and at the maximum rate through the real upstream: every
/// answer is the 1 KiB one (the generator checks), and the open loop sends what was asked.
#[tokio::test(flavor = "current_thread")]
async fn generator_and_upstream_agree_on_every_protocol() {
    let (http, tcp) = (free_port(), free_port());
    tokio::spawn(async move { upstream::serve(&[http], &[tcp]).await });
    let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    for _ in 0..100 {
        if load::probe(Protocol::Tcp, addr(tcp)).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (protocol, port) in [
        (Protocol::Http1, http),
        (Protocol::H2c, http),
        (Protocol::Grpc, http),
        (Protocol::Tcp, tcp),
    ] {
        load::probe(protocol, addr(port)).await.unwrap();
        let fixed = load::run(&LoadSpec {
            protocol,
            addr: addr(port),
            connections: 8,
            rate: Some(400.0),
            duration: Duration::from_millis(500),
        })
        .await
        .unwrap();
        assert_eq!(
            (fixed.ok, fixed.errors),
            (200, 0),
            "{protocol:?}: {fixed:?}"
        );
        let (p50, p999) = (fixed.p50_ms.unwrap(), fixed.p999_ms.unwrap());
        assert!(p50 > 0.0 && p50 <= p999, "{protocol:?}: {fixed:?}");
        let max = load::run(&LoadSpec {
            protocol,
            addr: addr(port),
            connections: 4,
            rate: None,
            duration: Duration::from_millis(300),
        })
        .await
        .unwrap();
        assert!(max.ok > 0 && max.errors == 0, "{protocol:?}: {max:?}");
        assert_eq!(max.p50_ms, None, "closed-loop runs report no latency");
    }
}

/// A refused connection is an error, not a hang or a success.
#[tokio::test(flavor = "current_thread")]
async fn nothing_listening_is_an_error() {
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(load::probe(Protocol::Http1, addr).await.is_err());
}
