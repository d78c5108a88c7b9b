//! The test app over real sockets: every control, every protocol, the client's totals,
//! trace header propagation, and the binary itself.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on purpose

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::testapp::client::{self, ClientConfig, Protocol, Report};
use e2e::testapp::{Identity, server};
use serde_json::Value;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

async fn start(version: &str) -> server::Server {
    let id = Identity {
        service: "catalog".into(),
        version: version.into(),
        pod: format!("catalog-{version}-0"),
        namespace: "default".into(),
        ip: "127.0.0.1".into(),
    };
    server::start(id, LOCAL, &[0], &[0]).await.unwrap()
}

async fn get(url: String, protocol: Protocol, headers: &[(&str, &str)]) -> Report {
    let mut cfg = ClientConfig::new(url, protocol);
    cfg.headers = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    cfg.timeout = Duration::from_secs(5);
    client::run(cfg).await.unwrap()
}

/// One raw HTTP/1.1 exchange, returning the status and parsed JSON body.
async fn fetch(url: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let mut req = http::Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::default()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn answers_http1_with_one_json_line() {
    let srv = start("v1").await;
    let url = format!("http://{}/items/7?x=1", srv.http[0]);
    let (status, v) = fetch(&url, &[("x-user", "jason")]).await;
    assert_eq!(status, 200);
    assert_eq!(v["service"], "catalog");
    assert_eq!(v["version"], "v1");
    assert_eq!(v["pod"], "catalog-v1-0");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/items/7");
    assert_eq!(v["query"], "x=1");
    assert_eq!(v["protocol"], "HTTP/1.1");
    assert_eq!(v["authority"], srv.http[0].to_string());
    assert_eq!(v["headers"]["x-user"], "jason");
}

#[tokio::test]
async fn answers_h2c() {
    let srv = start("v2").await;
    let r = get(format!("http://{}/", srv.http[0]), Protocol::H2, &[]).await;
    assert_eq!(r.ok, 1, "{r:?}");
    assert_eq!(r.by_version.get("v2"), Some(&1));
}

#[tokio::test]
async fn delay_control() {
    let srv = start("v1").await;
    let r = get(
        format!("http://{}/?delay=300ms", srv.http[0]),
        Protocol::Http1,
        &[],
    )
    .await;
    assert_eq!(r.ok, 1);
    assert!(r.latency_ms.max >= 300.0, "{r:?}");
    let (status, v) = fetch(&format!("http://{}/?delay=soon", srv.http[0]), &[]).await;
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap().contains("delay"));
}

#[tokio::test]
async fn status_control() {
    let srv = start("v1").await;
    let (status, v) = fetch(&format!("http://{}/?status=503", srv.http[0]), &[]).await;
    assert_eq!(status, 503);
    assert_eq!(v["status"], 503);
    let r = get(
        format!("http://{}/?status=418", srv.http[0]),
        Protocol::H2,
        &[],
    )
    .await;
    assert_eq!(r.by_status.get("418"), Some(&1));
    assert_eq!(r.ok, 0);
}

#[tokio::test]
async fn reset_control() {
    let srv = start("v1").await;
    for protocol in [Protocol::Http1, Protocol::H2] {
        let r = get(format!("http://{}/?reset=1", srv.http[0]), protocol, &[]).await;
        assert_eq!(r.ok, 0, "{protocol:?}: {r:?}");
        assert!(
            r.by_status.is_empty(),
            "{protocol:?}: a reset must not produce a status: {r:?}"
        );
        assert_eq!(r.errors.values().sum::<u64>(), 1, "{r:?}");
    }
}

#[tokio::test]
async fn fail_first_and_stats() {
    let srv = start("v1").await;
    let base = format!("http://{}", srv.http[0]);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            fetch(&format!("{base}/?fail_first=2&key=k1&status=500"), &[])
                .await
                .0,
        );
    }
    assert_eq!(statuses, vec![500, 500, 200, 200]);
    // Another key has its own counter; default failure status is 503.
    assert_eq!(
        fetch(&format!("{base}/?fail_first=1&key=k2"), &[]).await.0,
        503
    );
    let (_, stats) = fetch(&format!("{base}/stats?key=k1"), &[]).await;
    assert_eq!(stats["count"], 4);
    assert_eq!(stats["pod"], "catalog-v1-0");
    let (_, stats) = fetch(&format!("{base}/stats?key=never"), &[]).await;
    assert_eq!(stats["count"], 0);
    assert_eq!(fetch(&format!("{base}/?fail_first=1"), &[]).await.0, 400);
}

#[tokio::test]
async fn grpc_echo_and_controls() {
    let srv = start("v3").await;
    let url = format!("http://{}", srv.http[0]);
    let r = get(url.clone(), Protocol::Grpc, &[]).await;
    assert_eq!(r.ok, 1, "{r:?}");
    assert_eq!(r.by_version.get("v3"), Some(&1));
    assert_eq!(r.by_status.get("Ok"), Some(&1));

    let mut cfg = ClientConfig::new(url.clone(), Protocol::Grpc);
    cfg.grpc_query = Some("status=503".into());
    let r = client::run(cfg).await.unwrap();
    assert_eq!(r.by_status.get("Unavailable"), Some(&1), "{r:?}");

    let mut cfg = ClientConfig::new(url.clone(), Protocol::Grpc);
    cfg.grpc_query = Some("fail_first=1&key=g".into());
    cfg.requests = 3;
    let r = client::run(cfg).await.unwrap();
    assert_eq!(r.by_status.get("Unavailable"), Some(&1), "{r:?}");
    assert_eq!(r.by_status.get("Ok"), Some(&2), "{r:?}");

    let mut cfg = ClientConfig::new(url.clone(), Protocol::Grpc);
    cfg.grpc_query = Some("delay=200ms".into());
    let r = client::run(cfg).await.unwrap();
    assert!(r.latency_ms.max >= 200.0 && r.ok == 1, "{r:?}");

    let mut cfg = ClientConfig::new(url, Protocol::Grpc);
    cfg.grpc_query = Some("reset=1".into());
    let r = client::run(cfg).await.unwrap();
    assert_eq!(r.ok, 0, "{r:?}");
    assert!(!r.by_status.contains_key("Ok"));
}

#[tokio::test]
async fn tcp_echo() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let srv = start("v1").await;
    let r = get(format!("tcp://{}", srv.tcp[0]), Protocol::Tcp, &[]).await;
    assert_eq!(r.by_pod.get("catalog-v1-0"), Some(&1), "{r:?}");
    let mut s = tokio::net::TcpStream::connect(srv.tcp[0]).await.unwrap();
    s.write_all(b"hello\nworld\n").await.unwrap();
    let mut lines = tokio::io::BufReader::new(s).lines();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("hello"));
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("world"));
}

#[tokio::test]
async fn websocket_echo() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let srv = start("v2").await;
    let url = format!("ws://{}/ws", srv.http[0]);
    let r = get(url.clone(), Protocol::Ws, &[]).await;
    assert_eq!(r.by_version.get("v2"), Some(&1), "{r:?}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::text("ping-1")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("ping-1"));
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![1u8, 2, 3])
    );
}

#[tokio::test]
async fn call_propagates_trace_headers() {
    let front = start("v1").await;
    let back = start("v2").await;
    let url = format!(
        "http://{}/?call=http%3A%2F%2F{}%2Fdeep",
        front.http[0], back.http[0]
    );
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (status, v) = fetch(
        &url,
        &[
            ("traceparent", tp),
            ("x-request-id", "r-1"),
            ("x-private", "no"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let up = &v["upstream"];
    assert_eq!(up["status"], 200, "{v}");
    assert_eq!(up["body"]["version"], "v2");
    assert_eq!(up["body"]["path"], "/deep");
    assert_eq!(up["body"]["headers"]["traceparent"], tp);
    assert_eq!(up["body"]["headers"]["x-request-id"], "r-1");
    assert!(
        up["body"]["headers"].get("x-private").is_none(),
        "only trace headers are copied"
    );
}

#[tokio::test]
async fn client_totals_per_version_and_pod_with_rate_and_concurrency() {
    let srv = start("v1").await;
    let mut cfg = ClientConfig::new(format!("http://{}/", srv.http[0]), Protocol::Http1);
    cfg.requests = 40;
    cfg.concurrency = 4;
    cfg.rate = Some(400.0);
    cfg.method = http::Method::POST;
    cfg.body = Some("abc".into());
    let r = client::run(cfg).await.unwrap();
    assert_eq!(r.total, 40);
    assert_eq!(r.ok, 40);
    assert_eq!(r.by_status.get("200"), Some(&40));
    assert_eq!(r.by_pod.get("catalog-v1-0"), Some(&40));
    assert_eq!(r.by_service.get("catalog"), Some(&40));
    // 40 requests at 400/s cannot finish before the 39th slot (97.5 ms).
    assert!(r.duration_ms >= 95.0, "{r:?}");

    // Nothing listening: every request is a connect error, counted, not a panic.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cfg = ClientConfig::new(format!("http://{dead}/"), Protocol::Http1);
    cfg.requests = 3;
    let r = client::run(cfg).await.unwrap();
    assert_eq!(r.errors.get("connect"), Some(&3), "{r:?}");
    assert_eq!(r.not_sent, 0);

    // A broken path stops the run early instead of costing every request.
    let mut cfg = ClientConfig::new(format!("http://{dead}/"), Protocol::Http1);
    cfg.requests = 50;
    cfg.stop_after_errors = Some(4);
    let r = client::run(cfg).await.unwrap();
    assert_eq!((r.total, r.not_sent), (4, 46), "{r:?}");
}

#[tokio::test]
async fn kept_answers_in_request_order_with_a_varying_header() {
    let srv = start("v1").await;
    let mut cfg = ClientConfig::new(
        format!("http://{}/?status=418", srv.http[0]),
        Protocol::Http1,
    );
    cfg.requests = 12;
    cfg.concurrency = 3;
    cfg.keep = 10;
    cfg.vary_header = Some(("x-user".into(), 4));
    let r = client::run(cfg).await.unwrap();
    assert_eq!(r.answers.len(), 10, "{r:?}");
    for (i, a) in r.answers.iter().enumerate() {
        assert_eq!(a["headers"]["x-user"], format!("k{}", i % 4), "{a}");
        assert_eq!(a["status"], 418);
    }
    // The report round-trips through its JSON (scenarios read it from the client's stdout).
    let back: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(back, r);
    assert_eq!(back.status("418"), 12);

    // A body that is not the app's JSON is kept as text with its status.
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = plain.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, _) = plain.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        s.write_all(
            b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope",
        )
        .await
        .unwrap();
    });
    let mut cfg = ClientConfig::new(format!("http://{addr}/"), Protocol::Http1);
    cfg.keep = 1;
    let r = client::run(cfg).await.unwrap();
    assert_eq!(r.answers[0]["status"], 502, "{r:?}");
    assert_eq!(r.answers[0]["body"], "nope");
}

#[tokio::test]
async fn pod_control_makes_only_the_named_pod_misbehave() {
    let srv = start("v1").await;
    let here = format!(
        "http://{}/?status=500&delay=300ms&pod=catalog-v1-0",
        srv.http[0]
    );
    let (status, _) = fetch(&here, &[]).await;
    assert_eq!(status, 500);
    let t = std::time::Instant::now();
    let other = format!(
        "http://{}/?status=500&delay=2s&pod=catalog-v2-0&key=k",
        srv.http[0]
    );
    let (status, v) = fetch(&other, &[]).await;
    assert_eq!(status, 200, "{v}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "the delay is for the other pod"
    );
    assert_eq!(v["count"], 1, "requests are still counted: {v}");
}

#[tokio::test]
async fn connect_to_keeps_the_authority() {
    let srv = start("v1").await;
    let mut cfg = ClientConfig::new("http://catalog.example.com/", Protocol::Http1);
    cfg.connect_to = Some(srv.http[0]);
    let r = client::run(cfg).await.unwrap();
    assert_eq!(r.ok, 1, "{r:?}");
    let mut cfg = ClientConfig::new("http://catalog.example.com/", Protocol::H2);
    cfg.connect_to = Some(srv.http[0]);
    assert_eq!(client::run(cfg).await.unwrap().ok, 1);
}

#[test]
fn the_binary_serves_and_drives_itself() {
    let bin = env!("CARGO_BIN_EXE_testapp");
    let mut child = Command::new(bin)
        .args([
            "serve",
            "--http-port",
            "0",
            "--tcp-port",
            "0",
            "--bind",
            "127.0.0.1",
        ])
        .env("SERVICE_NAME", "reviews")
        .env("SERVICE_VERSION", "v3")
        .env("POD_NAME", "reviews-v3-abc")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "testapp: http on [127.0.0.1:PORT], tcp on [...]"
    let addr: SocketAddr = line
        .split("http on [")
        .nth(1)
        .and_then(|s| s.split(']').next())
        .unwrap()
        .parse()
        .unwrap();
    let out = Command::new(bin)
        .args([
            "client",
            &format!("http://{addr}/"),
            "-n",
            "5",
            "-c",
            "2",
            "-H",
            "end-user: jason",
        ])
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["by_version"]["v3"], 5, "{v}");
    assert_eq!(v["by_pod"]["reviews-v3-abc"], 5, "{v}");
    assert_eq!(v["by_status"]["200"], 5, "{v}");

    let bad = Command::new(bin)
        .args(["client", "http://x/", "-H", "no-colon"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no-colon"));
}
