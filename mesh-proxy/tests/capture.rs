//! Transparent capture, for real: in a network namespace this test creates, iptables
//! REDIRECTs a client's connections to service VIPs (10.251.0.0/16) to the proxy's
//! `virtualOutbound` listener on 15001, which reads SO_ORIGINAL_DST and hands each
//! connection to the listener for the original destination (exact VIP, then the
//! wildcard `0.0.0.0:<port>` listener), or to its own default chain (ORIGINAL_DST
//! passthrough). Needs root; prints why and returns otherwise (fails under
//! MESH_CI_STRICT=1).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{net::SocketAddr, process::Command, time::Duration};

use mesh_proxy::testing::{XdsServer, any, is_root, require};
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Netns(String);

impl Netns {
    fn create() -> Option<Netns> {
        let name = format!("mpcap-{}-{}", std::process::id(), rand_suffix());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .ok()?
            .success();
        ok.then_some(Netns(name))
    }

    fn exec(&self, args: &[&str]) -> bool {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output();
        match out {
            Ok(o) if o.status.success() => true,
            Ok(o) => {
                eprintln!("{args:?}: {}", String::from_utf8_lossy(&o.stderr));
                false
            }
            Err(e) => {
                eprintln!("{args:?}: {e}");
                false
            }
        }
    }

    fn enter(&self) {
        let f = std::fs::File::open(format!("/run/netns/{}", self.0)).expect("netns file");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        % 100_000
}

const CLIENT: &str = "10.250.0.100";

#[test]
fn iptables_redirect_to_virtual_outbound() {
    if !require(is_root(), "root (network namespaces and iptables)") {
        return;
    }
    let Some(ns) = Netns::create() else {
        assert!(
            !mesh_proxy::testing::strict(),
            "cannot create a network namespace"
        );
        eprintln!("skipping: cannot create a network namespace");
        return;
    };
    let setup: &[&[&str]] = &[
        &["ip", "link", "set", "lo", "up"],
        &["ip", "addr", "add", "10.250.0.100/32", "dev", "lo"],
        &["ip", "addr", "add", "10.250.0.5/32", "dev", "lo"],
        &["ip", "addr", "add", "10.251.0.99/32", "dev", "lo"],
        // Service VIPs route locally (no dummy/veth module needed); only the REDIRECT
        // below makes them reach anything.
        &["ip", "route", "add", "local", "10.251.0.0/16", "dev", "lo"],
        // Only the test client's connections are captured, so the proxy's own upstream
        // connections (which would be excluded by UID 1337 in a pod) are not.
        &[
            "iptables",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-s",
            CLIENT,
            "-d",
            "10.251.0.0/16",
            "-j",
            "REDIRECT",
            "--to-ports",
            "15001",
        ],
    ];
    for cmd in setup {
        if !ns.exec(cmd) {
            assert!(
                !mesh_proxy::testing::strict(),
                "netns setup failed: {cmd:?}"
            );
            eprintln!("skipping: netns setup failed: {cmd:?}");
            return;
        }
    }
    // Everything (ADS server, upstreams, proxy, client) runs on a thread inside the netns.
    let name = ns.0.clone();
    let result = std::thread::spawn(move || {
        let ns = Netns(name);
        ns.enter();
        std::mem::forget(ns); // the outer guard deletes it
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(scenario())
    })
    .join();
    drop(ns);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

async fn connect_from_client(dst: &str) -> tokio::net::TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(format!("{CLIENT}:0").parse().unwrap()).unwrap();
    tokio::time::timeout(WAIT, s.connect(dst.parse().unwrap()))
        .await
        .expect("connect in time")
        .expect("connect")
}

async fn read_tag(c: &mut tokio::net::TcpStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let n = tokio::time::timeout(WAIT, c.read(&mut b))
            .await
            .expect("greeting in time")
            .unwrap();
        if n == 0 || b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

async fn echo_on(addr: SocketAddr, tag: &'static str) {
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let _ = s.write_all(format!("{tag}\n").as_bytes()).await;
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}

async fn scenario() {
    echo_on("10.250.0.5:8080".parse().unwrap(), "svc").await;
    echo_on("10.250.0.5:8081".parse().unwrap(), "wild").await;
    echo_on("10.251.0.99:7000".parse().unwrap(), "passthrough").await;
    let xds = XdsServer::start().await;
    let tcp = |cluster: &str| tcp_proxy_filter(cluster);
    xds.set(
        CDS,
        vec![
            any(static_cluster("svc", &["10.250.0.5:8080".parse().unwrap()])),
            any(static_cluster("wild", &["10.250.0.5:8081".parse().unwrap()])),
            any(json!({"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "PassthroughCluster",
                "type": "ORIGINAL_DST", "lbPolicy": "CLUSTER_PROVIDED", "connectTimeout": "1s"})),
        ],
    );
    xds.set(
        LDS,
        vec![
            any(json!({
                "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
                "name": "virtualOutbound",
                "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 15001}},
                "useOriginalDst": true,
                "listenerFilters": [{"name": "envoy.filters.listener.original_dst", "typedConfig": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}}],
                "trafficDirection": "OUTBOUND",
                "filterChains": [{"filterChainMatch": {"destinationPort": 15001}, "name": "virtualOutbound-blackhole",
                    "filters": [tcp("svc")]}],
                "defaultFilterChain": {"name": "PassthroughFilterChain", "filters": [tcp("PassthroughCluster")]}
            })),
            any(json!({
                "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
                "name": "10.251.0.10_80",
                "address": {"socketAddress": {"address": "10.251.0.10", "portValue": 80}},
                "bindToPort": false,
                "trafficDirection": "OUTBOUND",
                "filterChains": [{"filters": [tcp("svc")]}]
            })),
            any(json!({
                "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
                "name": "0.0.0.0_80",
                "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 80}},
                "bindToPort": false,
                "trafficDirection": "OUTBOUND",
                "filterChains": [{"filters": [tcp("wild")]}]
            })),
        ],
    );
    let proxy = start_proxy(&xds, false).await;
    assert!(proxy.wait_ready(WAIT).await, "proxy ready");
    // Exact VIP listener.
    let mut c = connect_from_client("10.251.0.10:80").await;
    assert_eq!(read_tag(&mut c).await, "svc");
    c.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    c.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"ping");
    // Another VIP on port 80: the wildcard listener.
    let mut c = connect_from_client("10.251.0.20:80").await;
    assert_eq!(read_tag(&mut c).await, "wild");
    // No listener for the destination: virtualOutbound's default chain, passthrough to
    // the original destination.
    let mut c = connect_from_client("10.251.0.99:7000").await;
    assert_eq!(read_tag(&mut c).await, "passthrough");
    let stats = proxy.rt.stats.encode_prometheus();
    assert!(
        stats.contains(
            "envoy_cluster_upstream_cx_total{envoy_cluster_name=\"PassthroughCluster\"} 1"
        ),
        "{stats}"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    proxy.shutdown().await;
}
