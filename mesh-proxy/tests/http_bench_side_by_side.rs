//! Side-by-side throughput and latency on loopback (not a pass/fail test; `#[ignore]`):
//! one upstream serving 1 KiB, then h2load against it directly, through mesh-proxy,
//! through Envoy (same config, same concurrency) and through nginx (keep-alive
//! upstream) when installed. HTTP/1.1 and HTTP/2 (h2c), max rate and a fixed rate.
//!
//! cargo test --release -p mesh-proxy --test http_bench_side_by_side -- --ignored --nocapture
#![allow(clippy::unwrap_used)]

mod http_common;

use std::{convert::Infallible, net::SocketAddr, process::Stdio, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use serde_json::json;

async fn kib_server() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let body = Bytes::from(vec![b'x'; 1024]);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let body = body.clone();
                    async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(body))) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn h2load(url: &str, h1: bool, extra: &[&str]) -> String {
    let mut args = vec!["-n", "20000", "-c", "64", "-t", "1"];
    if h1 {
        args.push("--h1");
    } else {
        args.extend(["-m", "10"]);
    }
    args.extend(extra);
    args.push(url);
    let out = std::process::Command::new("h2load")
        .args(&args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .unwrap_or("")
        .to_string();
    let lat = text
        .lines()
        .find(|l| l.trim_start().starts_with("time for request:"))
        .unwrap_or("")
        .to_string();
    let ok = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or("")
        .to_string();
    format!("{rps} | {} | {}", lat.trim(), ok.trim())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, run by hand"]
async fn side_by_side() {
    let up = kib_server().await;
    let rc = json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up", "timeout": "0s"}}]}]});
    let hcm = http_common::hcm_json(rc);
    let clusters = [http_common::cluster_json("up", &[up], false)];
    let ours = http_common::proxy(hcm.clone(), &clusters).await;
    let mut targets: Vec<(String, SocketAddr, SocketAddr, Option<u32>)> = vec![
        ("direct".into(), up, up, None),
        (
            "mesh-proxy".into(),
            ours.addr,
            ours.addr,
            Some(std::process::id()),
        ),
    ];

    let mut _keep: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    if let Ok(bin) = std::env::var("MESH_ENVOY").or_else(|_| {
        std::process::Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../tools/envoy.sh"))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    }) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bootstrap = json!({"static_resources": {
            "listeners": [{"name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}]}],
            "clusters": clusters,
        }});
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("envoy.json");
        std::fs::write(&path, serde_json::to_vec(&bootstrap).unwrap()).unwrap();
        let child = std::process::Command::new(bin)
            .args([
                "-c",
                path.to_str().unwrap(),
                "--concurrency",
                "2",
                "-l",
                "error",
                "--disable-hot-restart",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let a: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        targets.push(("envoy".into(), a, a, Some(child.id())));
        _keep.push(Box::new(KillOnDrop(child)));
        _keep.push(Box::new(dir));
    }
    if std::path::Path::new("/usr/sbin/nginx").exists() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let port2 = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let conf = format!(
            "worker_processes 2; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; upstream up {{ server {up}; keepalive 128; }}\n\
               server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n\
               server {{ listen 127.0.0.1:{port2} http2; location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}\n",
            d = dir.path().display()
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = std::process::Command::new("/usr/sbin/nginx")
            .args([
                "-c",
                dir.path().join("nginx.conf").to_str().unwrap(),
                "-p",
                dir.path().to_str().unwrap(),
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        targets.push((
            "nginx".into(),
            format!("127.0.0.1:{port}").parse().unwrap(),
            format!("127.0.0.1:{port2}").parse().unwrap(),
            Some(child.id()),
        ));
        _keep.push(Box::new(KillOnDrop(child)));
        _keep.push(Box::new(dir));
    }

    for (name, addr, addr2, pid) in &targets {
        let url = format!("http://{addr}/");
        let url2 = format!("http://{addr2}/");
        let idle = pid.map(rss_kib).unwrap_or(0);
        let u = url.clone();
        let h1 = tokio::task::spawn_blocking(move || h2load(&u, true, &[]))
            .await
            .unwrap();
        let h2 = tokio::task::spawn_blocking(move || h2load(&url2, false, &[]))
            .await
            .unwrap();
        let u = url.clone();
        // Fixed rate: 64 clients x 16 rps ~ 1,000 rps.
        let fixed =
            tokio::task::spawn_blocking(move || h2load(&u, true, &["--rps", "16", "-n", "5000"]))
                .await
                .unwrap();
        let loaded = pid.map(rss_kib).unwrap_or(0);
        println!("{name:>10} h1  max: {h1}");
        println!("{name:>10} h2  max: {h2}");
        println!("{name:>10} h1 1000rps: {fixed}");
        println!(
            "{name:>10} rss idle {idle} KiB, after load {loaded} KiB (mesh-proxy: whole test process)"
        );
    }
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
