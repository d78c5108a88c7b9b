//! Issue 6, HTTP side, with real sockets: route and per-try timeouts, retries (status,
//! resets, connect failures, gRPC codes, request headers, previous hosts, body replay and
//! its buffer limit), fault injection, mirroring, local rate limiting, CORS, the stream's
//! maximum duration (`grpc-timeout`) and cookie hashing. Response flags are read from a
//! real access log file.
#![allow(clippy::unwrap_used)]

mod http_common;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use http_common::*;
use serde_json::{Value, json};

const LOG_FORMAT: &str =
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_REQUEST_ATTEMPT_COUNT% %RESPONSE_CODE_DETAILS%\n";

fn rc(route: Value) -> Value {
    json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"],
        "include_request_attempt_count": true, "include_attempt_count_in_response": true,
        "routes": [route]}]})
}

fn script(f: impl Fn(u64, &Seen) -> Act + Send + Sync + 'static) -> Script {
    Arc::new(f)
}

struct Setup {
    proxy: Proxy,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn new(route: Value, filters: Vec<Value>, clusters: &[Value]) -> Setup {
        Self::with_rc(rc(route), filters, clusters).await
    }

    async fn with_rc(rc: Value, filters: Vec<Value>, clusters: &[Value]) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("access.log");
        let hcm = hcm_with(rc, filters, Some((log.to_str().unwrap(), LOG_FORMAT)));
        Setup {
            proxy: proxy(hcm, clusters).await,
            log,
            _dir: dir,
        }
    }

    /// The `n`th access log line: code, flags, attempts, details.
    async fn log(&self, n: usize) -> Vec<String> {
        let lines = log_lines(&self.log, n + 1).await;
        lines[n].split(' ').map(str::to_string).collect()
    }
}

fn get_req(path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::builder().uri(path).header("host", "svc");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

fn post_req(path: &str, body: &'static [u8]) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", "svc")
        .body(Full::new(Bytes::from_static(body)))
        .unwrap()
}

fn dead_addr() -> SocketAddr {
    // Bound then closed: connections to it are refused.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn route_timeout_is_504_ut() {
    let up = scripted(
        Default::default(),
        script(|_, _| Act::Delay(Duration::from_secs(5), 200)),
    )
    .await;
    let s = Setup::new(
        json!({"match": {"prefix": "/"}, "route": {"cluster": "c", "timeout": "0.2s"}}),
        vec![],
        &[cluster_json("c", &[up.addr], false)],
    )
    .await;
    let started = Instant::now();
    let r = get(s.proxy.addr, "svc", "/", &[]).await;
    assert_eq!(r.status, 504);
    assert_eq!(&r.body[..], b"upstream request timeout");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the timeout fired before the upstream answered"
    );
    assert_eq!(
        s.log(0).await,
        ["504", "UT", "1", "upstream_response_timeout"]
    );
    assert_eq!(
        up.seen()[0].headers["x-envoy-expected-rq-timeout-ms"],
        "200"
    );
}

#[tokio::test]
async fn timeout_header_from_an_internal_client_and_not_from_an_external_one() {
    let up = scripted(
        Default::default(),
        script(|_, _| Act::Delay(Duration::from_secs(5), 200)),
    )
    .await;
    let route = json!({"match": {"prefix": "/"}, "route": {"cluster": "c", "timeout": "0s"}});
    let internal = Setup::new(
        route.clone(),
        vec![],
        &[cluster_json("c", &[up.addr], false)],
    )
    .await;
    let r = get(
        internal.proxy.addr,
        "svc",
        "/",
        &[("x-envoy-upstream-rq-timeout-ms", "150")],
    )
    .await;
    assert_eq!(r.status, 504, "a trusted client sets the timeout");
    // An edge proxy (use_remote_address) that trusts no address: the header is dropped.
    let mut hcm = hcm_with(rc(route), vec![], None);
    hcm["use_remote_address"] = json!(true);
    hcm["internal_address_config"] =
        json!({"cidr_ranges": [{"address_prefix": "10.99.0.0", "prefix_len": 16}]});
    let edge = proxy(hcm, &[cluster_json("c", &[up.addr], false)]).await;
    let client = tokio::spawn(async move {
        get(
            edge.addr,
            "svc",
            "/",
            &[("x-envoy-upstream-rq-timeout-ms", "150")],
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !client.is_finished(),
        "an external client cannot shorten the timeout"
    );
    client.abort();
}

#[tokio::test]
async fn retries_on_5xx_until_success_and_4xx_is_not_retried() {
    let up = scripted(
        Default::default(),
        script(|n, s| match s.path.as_str() {
            "/four" => Act::Status(404),
            _ if n < 2 => Act::Status(503),
            _ => Act::Status(200),
        }),
    )
    .await;
    let s = Setup::new(
        json!({"match": {"prefix": "/"}, "route": {"cluster": "c", "timeout": "5s",
            "retry_policy": {"retry_on": "5xx,gateway-error", "num_retries": 2, "per_try_timeout": "1s"}}}),
        vec![],
        &[cluster_json("c", &[up.addr], false)],
    )
    .await;
    let r = get(s.proxy.addr, "svc", "/", &[]).await;
    assert_eq!(r.status, 200, "the third attempt succeeds");
    assert_eq!(up.hits(), 3, "attempts + 1 requests reached the backend");
    assert_eq!(r.header("x-envoy-attempt-count").as_deref(), Some("3"));
    let attempts: Vec<_> = up
        .seen()
        .iter()
        .map(|s| {
            s.headers["x-envoy-attempt-count"]
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    assert_eq!(s.log(0).await, ["200", "-", "3", "via_upstream"]);
    let r = get(s.proxy.addr, "svc", "/four", &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(up.hits(), 4, "a 4xx is not retried");
}

#[tokio::test]
async fn retries_exhausted_forward_the_last_response_with_urx() {
    let up = scripted(Default::default(), script(|_, _| Act::Status(503))).await;
    let s = Setup::new(
        json!({"match": {"prefix": "/"}, "route": {"cluster": "c",
            "retry_policy": {"retry_on": "5xx", "num_retries": 2,
                "retry_back_off": {"base_interval": "0.001s"}}}}),
        vec![],
        &[cluster_json("c", &[up.addr], false)],
    )
    .await;
    let r = get(s.proxy.addr, "svc", "/", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(up.hits(), 3);
    assert_eq!(s.log(0).await, ["503", "URX", "3", "via_upstream"]);
}

#[tokio::test]
async fn resets_and_connect_failures_are_retried_on_other_hosts() {
    let counter = Arc::new(AtomicU64::new(0));
    let closing = scripted(counter.clone(), script(|_, _| Act::Close)).await;
    let good = scripted(counter, script(|_, _| Act::Status(200))).await;
    let dead = dead_addr();
    let s = Setup::new(
        json!({"match": {"prefix": "/"}, "route": {"cluster": "c",
            "retry_policy": {"retry_on": "reset,connect-failure", "num_retries": 3,
                "host_selection_retry_max_attempts": "5",
                "retry_back_off": {"base_interval": "0.001s"},
                "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}]}}}),
        vec![],
        &[cluster_json("c", &[dead, closing.addr, good.addr], false)],
    )
    .await;
    for i in 0..6 {
        let r = get(s.proxy.addr, "svc", "/", &[]).await;
        assert_eq!(r.status, 200, "request {i}: {:?}", r.body);
        let attempts: u32 = r.header("x-envoy-attempt-count").unwrap().parse().unwrap();
        assert!(attempts <= 3, "never the same host twice: {attempts}");
    }
    assert!(closing.hits() > 0 && good.hits() == 6);
}

#[tokio::test]
async fn no_retry_policy_means_one_attempt_and_envoys_reset_body() {
    let up = scripted(Default::default(), script(|_, _| Act::Close)).await;
    let s = Setup::new(
        json!({"match": {"prefix": "/"}, "route": {"cluster": "c"}}),
        vec![],
        &[cluster_json("c", &[up.addr], false)],
    )
    .await;
    let r = get(s.proxy.addr, "svc", "/", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(
        &r.body[..],
        b"upstream connect error or disconnect/reset before headers. reset reason: connection termination"
    );
    assert_eq!(up.hits(), 1);
    // With retries exhausted on resets the body says so, as Envoy's.
    let s = Setup::new(
        json!({"match": {"prefix": "/"}, "route": {"cluster": "c",
            "retry_policy": {"retry_on": "reset", "num_retries": 1}}}),
        vec![],
        &[cluster_json("c", &[up.addr], false)],
    )
    .await;
    let r = get(s.proxy.addr, "svc", "/", &[]).await;
    assert_eq!(
        &r.body[..],
        b"upstream connect error or disconnect/reset before headers. retried and the latest reset reason: connection termination"
    );
    assert_eq!(s.log(0).await[..3], ["503", "UC,URX", "2"]);
}

#[tokio::test]
async fn per_try_timeout_moves_to_the_next_host() {
    let counter = Arc::new(AtomicU64::new(0));
    let slow_first = script(|n, _| {
        if n == 0 {
            Act::Delay(Duration::from_secs(5), 200)
        } else {
            Act::Status(200)
        }
    });
    let a = scripted(counter.clone(), slow_first.clone()).await;
    let b = scripted(counter, slow_first).await;
    let s = Setup::with_rc(
        json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"],
            "include_request_attempt_count": true, "include_attempt_count_in_response": true,
            "include_is_timeout_retry_header": true,
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c", "timeout": "3s",
                "retry_policy": {"retry_on": "5xx", "num_retries": 1, "per_try_timeout": "0.1s",
                    "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
                        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}]}}}]}]}),
        vec![],
        &[cluster_json("c", &[a.addr, b.addr], false)],
    )
    .await;
    let r = get(s.proxy.addr, "svc", "/", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-envoy-attempt-count").as_deref(), Some("2"));
    assert_eq!(
        (a.hits(), b.hits()),
        (1, 1),
        "the retry went to the other host"
    );
    let second = a
        .seen()
        .into_iter()
        .chain(b.seen())
        .find(|s| s.headers["x-envoy-attempt-count"] == "2")
        .unwrap();
    assert_eq!(second.headers["x-envoy-is-timeout-retry"], "true");
    assert_eq!(second.headers["x-envoy-expected-rq-timeout-ms"], "100");
    // Not retriable (no 5xx/reset policy): the per-try timeout is the answer.
    let a_slow = scripted(
        Default::default(),
        script(|_, _| Act::Delay(Duration::from_secs(5), 200)),
    )
    .await;
    let s = Setup::new(
        json!({"match": {"prefix": "/"}, "route": {"cluster": "c",
            "retry_policy": {"retry_on": "connect-failure", "per_try_timeout": "0.1s"}}}),
        vec![],
        &[cluster_json("c", &[a_slow.addr], false)],
    )
    .await;
    let r = get(s.proxy.addr, "svc", "/", &[]).await;
    assert_eq!(r.status, 504);
    assert_eq!(
        s.log(0).await,
        ["504", "UT", "1", "upstream_per_try_timeout"]
    );
}

#[tokio::test]
async fn request_bodies_are_replayed_up_to_the_buffer_limit() {
    let up = scripted(
        Default::default(),
        script(|n, _| {
            if n % 2 == 0 {
                Act::Status(503)
            } else {
                Act::Status(200)
            }
        }),
    )
    .await;
    let s = Setup::with_rc(
        json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"],
            "include_attempt_count_in_response": true,
            "routes": [
                {"match": {"prefix": "/small"}, "per_request_buffer_limit_bytes": 8,
                 "route": {"cluster": "c", "retry_policy": {"retry_on": "5xx", "num_retries": 1}}},
                {"match": {"prefix": "/"},
                 "route": {"cluster": "c", "retry_policy": {"retry_on": "5xx", "num_retries": 1}}}]}]}),
        vec![],
        &[cluster_json("c", &[up.addr], false)],
    )
    .await;
    let mut conn = Conn::open(s.proxy.addr).await;
    let r = conn.send(post_req("/", b"replay me please")).await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"16", "the retry carried the whole body");
    let bodies: Vec<_> = up.seen().iter().map(|s| s.body.clone()).collect();
    assert_eq!(bodies, [&b"replay me please"[..], &b"replay me please"[..]]);
    // Over the route's buffer limit: forwarded once, not retried.
    let r = conn
        .send(post_req("/small", b"more than eight bytes"))
        .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-envoy-attempt-count").as_deref(), Some("1"));
    assert_eq!(&up.seen()[2].body[..], b"more than eight bytes");
}

#[tokio::test]
async fn retry_headers_and_grpc_codes() {
    let up = scripted(
        Default::default(),
        script(|n, s| {
            if s.headers.contains_key("x-envoy-retry-on")
                || s.headers.contains_key("x-envoy-max-retries")
            {
                return Act::Status(500); // never forwarded
            }
            match s.path.as_str() {
                "/grpc" if n % 2 == 0 => Act::Grpc(14),
                "/grpc" => Act::Grpc(0),
                _ => Act::Status(502),
            }
        }),
    )
    .await;
    let s = Setup::new(
        json!({"match": {"prefix": "/"}, "route": {"cluster": "c"}}),
        vec![],
        &[cluster_json("c", &[up.addr], false)],
    )
    .await;
    // No route policy: the trusted headers enable retries.
    let r = get(
        s.proxy.addr,
        "svc",
        "/x",
        &[
            ("x-envoy-retry-on", "gateway-error"),
            ("x-envoy-max-retries", "3"),
        ],
    )
    .await;
    assert_eq!(r.status, 502);
    assert_eq!(up.hits(), 4, "1 + x-envoy-max-retries attempts");
    assert_eq!(r.header("x-envoy-attempt-count").as_deref(), Some("4"));
    let r = get(
        s.proxy.addr,
        "svc",
        "/grpc",
        &[
            ("x-envoy-retry-grpc-on", "unavailable"),
            ("content-type", "application/grpc"),
        ],
    )
    .await;
    assert_eq!(
        r.header("grpc-status").as_deref(),
        Some("0"),
        "UNAVAILABLE was retried"
    );
}

#[tokio::test]
async fn retry_overflow_is_uo() {
    let up = scripted(Default::default(), script(|_, _| Act::Status(503))).await;
    let mut c = cluster_json("c", &[up.addr], false);
    c["circuit_breakers"] = json!({"thresholds": [{"max_retries": 0}]});
    let s = Setup::new(
        json!({"match": {"prefix": "/"}, "route": {"cluster": "c",
            "retry_policy": {"retry_on": "5xx", "num_retries": 3}}}),
        vec![],
        &[c],
    )
    .await;
    let r = get(s.proxy.addr, "svc", "/", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(up.hits(), 1);
    assert_eq!(s.log(0).await[..3], ["503", "UO", "1"]);
}

fn fault_filter() -> Value {
    json!({"name": "envoy.filters.http.fault", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}})
}

fn fault_route(fault: Value) -> Value {
    json!({"match": {"prefix": "/"}, "route": {"cluster": "c"},
        "typed_per_filter_config": {"envoy.filters.http.fault": fault}})
}

#[tokio::test]
async fn fault_abort_percentage_is_binomial() {
    let up = scripted(Default::default(), script(|_, _| Act::Status(200))).await;
    let s = Setup::new(
        fault_route(
            json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
            "abort": {"http_status": 503, "percentage": {"numerator": 50}}}),
        ),
        vec![fault_filter()],
        &[cluster_json("c", &[up.addr], false)],
    )
    .await;
    let mut conn = Conn::open(s.proxy.addr).await;
    let mut aborted = 0;
    for _ in 0..1000 {
        let r = conn.send(get_req("/", &[])).await;
        match r.status.as_u16() {
            503 => {
                assert_eq!(&r.body[..], b"fault filter abort");
                aborted += 1;
            }
            200 => {}
            s => panic!("unexpected {s}"),
        }
    }
    // 50% of 1000: mean 500, sd 15.8; 4.4 sd either side.
    assert!((430..=570).contains(&aborted), "{aborted} aborted");
    assert_eq!(
        up.hits(),
        1000 - aborted,
        "aborted requests never reach the upstream"
    );
    let lines = log_lines(&s.log, 1000).await;
    let fi = lines.iter().filter(|l| l.starts_with("503 FI ")).count();
    assert_eq!(fi, aborted);
    assert!(lines.iter().any(|l| l.ends_with("fault_filter_abort")));
}

#[tokio::test]
async fn fault_delay_then_grpc_abort_and_header_control() {
    let up = scripted(Default::default(), script(|_, _| Act::Status(200))).await;
    let s = Setup::with_rc(
        json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
            {"match": {"prefix": "/delay"}, "route": {"cluster": "c"},
             "typed_per_filter_config": {"envoy.filters.http.fault": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                "delay": {"fixed_delay": "0.3s", "percentage": {"numerator": 100}}}}},
            {"match": {"prefix": "/grpc"}, "route": {"cluster": "c"},
             "typed_per_filter_config": {"envoy.filters.http.fault": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                "delay": {"fixed_delay": "0.05s", "percentage": {"numerator": 100}},
                "abort": {"grpc_status": 8, "percentage": {"numerator": 100}}}}},
            {"match": {"prefix": "/header"}, "route": {"cluster": "c"},
             "typed_per_filter_config": {"envoy.filters.http.fault": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                "abort": {"header_abort": {}, "percentage": {"numerator": 100}}}}},
            {"match": {"prefix": "/"}, "route": {"cluster": "c"}}]}]}),
        vec![fault_filter()],
        &[cluster_json("c", &[up.addr], false)],
    )
    .await;
    let started = Instant::now();
    let r = get(s.proxy.addr, "svc", "/delay", &[]).await;
    assert_eq!(r.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300), "delayed");
    assert_eq!(s.log(0).await[..2], ["200", "DI"]);
    let r = get(
        s.proxy.addr,
        "svc",
        "/grpc",
        &[("content-type", "application/grpc")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("grpc-status").as_deref(), Some("8"));
    assert_eq!(
        r.header("grpc-message").as_deref(),
        Some("fault filter abort")
    );
    assert_eq!(s.log(1).await[..2], ["200", "DI,FI"]);
    let r = get(
        s.proxy.addr,
        "svc",
        "/header",
        &[("x-envoy-fault-abort-request", "418")],
    )
    .await;
    assert_eq!(r.status, 418);
    let r = get(s.proxy.addr, "svc", "/header", &[]).await;
    assert_eq!(r.status, 200, "no header, no abort");
    let r = get(
        s.proxy.addr,
        "svc",
        "/other",
        &[("x-envoy-fault-abort-request", "418")],
    )
    .await;
    assert_eq!(
        r.status, 200,
        "no fault config on this route: the header does nothing"
    );
}

#[tokio::test]
async fn mirrors_get_a_copy_and_never_slow_or_fail_the_primary() {
    let primary = scripted(Default::default(), script(|_, _| Act::Status(200))).await;
    let slow_mirror = scripted(
        Default::default(),
        script(|_, _| Act::Delay(Duration::from_secs(2), 500)),
    )
    .await;
    let dead = dead_addr();
    let route = json!({"match": {"prefix": "/"}, "route": {"cluster": "c", "timeout": "5s",
    "request_mirror_policies": [
        {"cluster": "m", "runtime_fraction": {"default_value": {"numerator": 100}}},
        {"cluster": "gone"},
        {"cluster": "deadm"},
    ]}});
    let s = Setup::new(
        route,
        vec![fault_filter()],
        &[
            cluster_json("c", &[primary.addr], false),
            cluster_json("m", &[slow_mirror.addr], false),
            cluster_json("deadm", &[dead], false),
        ],
    )
    .await;
    let started = Instant::now();
    let mut conn = Conn::open(s.proxy.addr).await;
    let r = conn
        .send(
            Request::post("/items?x=1")
                .header("host", "svc:8080")
                .body(Full::new(Bytes::from_static(b"mirrored body")))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200, "the primary answers");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the slow mirror does not hold the primary"
    );
    // The mirror is still being served while the primary is done.
    for _ in 0..100 {
        if slow_mirror.hits() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let m = &slow_mirror.seen()[0];
    assert_eq!(m.headers["host"], "svc-shadow:8080");
    assert_eq!(m.path, "/items?x=1");
    assert_eq!(&m.body[..], b"mirrored body", "the body is shared");
    assert_eq!(slow_mirror.in_progress.load(Ordering::SeqCst), 1);
    assert_eq!(&primary.seen()[0].body[..], b"mirrored body");
    assert_eq!(primary.seen()[0].headers["host"], "svc:8080");
    assert_eq!(s.log(0).await[..2], ["200", "-"]);
}

#[tokio::test]
async fn mirror_sampling_follows_runtime_fraction() {
    let primary = scripted(Default::default(), script(|_, _| Act::Status(200))).await;
    let mirror = scripted(Default::default(), script(|_, _| Act::Status(200))).await;
    let s = Setup::new(
        json!({"match": {"prefix": "/"}, "route": {"cluster": "c",
            "request_mirror_policies": [{"cluster": "m", "disable_shadow_host_suffix_append": true,
                "runtime_fraction": {"default_value": {"numerator": 20}}}]}}),
        vec![],
        &[
            cluster_json("c", &[primary.addr], false),
            cluster_json("m", &[mirror.addr], false),
        ],
    )
    .await;
    let mut conn = Conn::open(s.proxy.addr).await;
    for _ in 0..500 {
        assert_eq!(conn.send(get_req("/", &[])).await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = mirror.hits();
    // 20% of 500: mean 100, sd 8.9.
    assert!((60..=140).contains(&n), "{n} mirrored");
    assert_eq!(mirror.seen()[0].headers["host"], "svc", "no -shadow suffix");
}

fn ratelimit(max_tokens: u32) -> Value {
    json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "http_local_rate_limiter",
        "token_bucket": {"max_tokens": max_tokens, "tokens_per_fill": max_tokens, "fill_interval": "60s"},
        "filter_enabled": {"default_value": {"numerator": 100}},
        "filter_enforced": {"default_value": {"numerator": 100}},
        "response_headers_to_add": [{"header": {"key": "x-local-rate-limit", "value": "true"}}],
        "enable_x_ratelimit_headers": "DRAFT_VERSION_03"})
}

#[tokio::test]
async fn local_rate_limit_per_route_gives_429_rl() {
    let up = scripted(Default::default(), script(|_, _| Act::Status(200))).await;
    let listener_level = json!({"name": "envoy.filters.http.local_ratelimit", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "http_local_rate_limiter"}});
    let s = Setup::with_rc(
        json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
            {"match": {"prefix": "/limited"}, "route": {"cluster": "c"},
             "typed_per_filter_config": {"envoy.filters.http.local_ratelimit": ratelimit(10)}},
            {"match": {"prefix": "/"}, "route": {"cluster": "c"}}]}]}),
        vec![listener_level],
        &[cluster_json("c", &[up.addr], false)],
    )
    .await;
    let mut conn = Conn::open(s.proxy.addr).await;
    let mut limited = 0;
    for i in 0..25 {
        let r = conn.send(get_req("/limited", &[])).await;
        assert_eq!(r.header("x-ratelimit-limit").as_deref(), Some("10"));
        if r.status == 429 {
            limited += 1;
            assert_eq!(&r.body[..], b"local_rate_limited");
            assert_eq!(r.header("x-local-rate-limit").as_deref(), Some("true"));
            assert_eq!(r.header("x-ratelimit-remaining").as_deref(), Some("0"));
        } else {
            assert_eq!(r.status, 200, "request {i}");
            assert!(r.header("x-local-rate-limit").is_none());
        }
    }
    assert_eq!(limited, 15, "a 10-token bucket lets 10 of 25 through");
    assert_eq!(up.hits(), 10);
    for _ in 0..20 {
        assert_eq!(
            conn.send(get_req("/free", &[])).await.status,
            200,
            "other routes are not limited"
        );
    }
    let lines = log_lines(&s.log, 45).await;
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.as_str() == "429 RL 0 local_rate_limited")
            .count(),
        15
    );
}

#[tokio::test]
async fn cors_preflight_and_simple_requests() {
    let up = scripted(Default::default(), script(|_, _| Act::Status(200))).await;
    let cors = json!({"name": "envoy.filters.http.cors", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}});
    let s = Setup::new(
        json!({"match": {"prefix": "/"}, "route": {"cluster": "c"},
            "typed_per_filter_config": {"envoy.filters.http.cors": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
                "allow_origin_string_match": [{"exact": "https://app.example.com"}],
                "allow_methods": "GET,POST", "allow_headers": "authorization",
                "expose_headers": "x-request-id", "max_age": "86400", "allow_credentials": true}}}),
        vec![cors],
        &[cluster_json("c", &[up.addr], false)],
    )
    .await;
    let r = Conn::open(s.proxy.addr)
        .await
        .send(
            Request::builder()
                .method("OPTIONS")
                .uri("/api")
                .header("host", "svc")
                .header("origin", "https://app.example.com")
                .header("access-control-request-method", "POST")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("https://app.example.com")
    );
    assert_eq!(
        r.header("access-control-allow-methods").as_deref(),
        Some("GET,POST")
    );
    assert_eq!(r.header("access-control-max-age").as_deref(), Some("86400"));
    assert_eq!(up.hits(), 0, "the preflight is answered by the proxy");
    assert_eq!(s.log(0).await, ["200", "-", "0", "cors_response"]);
    let r = get(
        s.proxy.addr,
        "svc",
        "/api",
        &[("origin", "https://app.example.com")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("https://app.example.com")
    );
    assert_eq!(
        r.header("access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(
        r.header("access-control-expose-headers").as_deref(),
        Some("x-request-id")
    );
    let r = get(
        s.proxy.addr,
        "svc",
        "/api",
        &[("origin", "https://evil.example.com")],
    )
    .await;
    assert!(r.header("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn grpc_timeout_sets_the_stream_duration() {
    let up = scripted(
        Default::default(),
        script(|_, _| Act::Delay(Duration::from_secs(5), 200)),
    )
    .await;
    // As mesh-control emits: timeout plus max_stream_duration.grpc_timeout_header_max.
    let s = Setup::new(
        json!({"match": {"prefix": "/"}, "route": {"cluster": "c", "timeout": "0s",
            "max_stream_duration": {"grpc_timeout_header_max": "0s"}}}),
        vec![],
        &[cluster_json("c", &[up.addr], false)],
    )
    .await;
    let r = get(
        s.proxy.addr,
        "svc",
        "/",
        &[
            ("content-type", "application/grpc"),
            ("grpc-timeout", "200m"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("grpc-status").as_deref(),
        Some("4"),
        "DEADLINE_EXCEEDED"
    );
    assert_eq!(
        r.header("grpc-message").as_deref(),
        Some("downstream duration timeout")
    );
    assert_eq!(up.seen()[0].headers["grpc-timeout"], "200m");
    let log = s.log(0).await;
    assert_eq!(log[3], "max_duration_timeout");
}

#[tokio::test]
async fn stream_idle_timeout_before_headers_is_408_si() {
    let up = scripted(
        Default::default(),
        script(|_, _| Act::Delay(Duration::from_secs(5), 200)),
    )
    .await;
    let mut hcm = hcm_with(
        rc(json!({"match": {"prefix": "/"}, "route": {"cluster": "c", "timeout": "0s"}})),
        vec![],
        None,
    );
    hcm["stream_idle_timeout"] = json!("0.2s");
    let p = proxy(hcm, &[cluster_json("c", &[up.addr], false)]).await;
    let r = get(p.addr, "svc", "/", &[]).await;
    assert_eq!(r.status, 408);
    assert_eq!(&r.body[..], b"stream timeout");
}

#[tokio::test]
async fn cookie_hash_with_ttl_sets_the_cookie_and_sticks() {
    let counter = Arc::new(AtomicU64::new(0));
    let hosts = [
        scripted(counter.clone(), script(|_, _| Act::Status(200))).await,
        scripted(counter.clone(), script(|_, _| Act::Status(200))).await,
        scripted(counter, script(|_, _| Act::Status(200))).await,
    ];
    let mut c = cluster_json(
        "c",
        &hosts.iter().map(|h| h.addr).collect::<Vec<_>>(),
        false,
    );
    c["lb_policy"] = json!("RING_HASH");
    let s = Setup::new(
        json!({"match": {"prefix": "/"}, "route": {"cluster": "c",
            "hash_policy": [{"cookie": {"name": "session", "ttl": "3600s", "path": "/"}}]}}),
        vec![],
        &[c],
    )
    .await;
    let r = get(s.proxy.addr, "svc", "/", &[]).await;
    let set = r.header("set-cookie").expect("set-cookie");
    let value = set
        .strip_prefix("session=\"")
        .and_then(|v| v.split('"').next())
        .unwrap()
        .to_string();
    assert_eq!(value.len(), 16, "{set}");
    assert!(set.ends_with("; Max-Age=3600; Path=/; HttpOnly"), "{set}");
    let cookie = format!("session=\"{value}\"");
    for _ in 0..20 {
        let r = get(s.proxy.addr, "svc", "/", &[("cookie", &cookie)]).await;
        assert!(
            r.header("set-cookie").is_none(),
            "the client has the cookie"
        );
    }
    let with: Vec<usize> = hosts.iter().map(Scripted::hits).collect();
    assert_eq!(
        with.iter().filter(|h| **h >= 20).count(),
        1,
        "every request with the cookie went to one host: {with:?}"
    );
}

fn cluster_with_lifetimes(addr: SocketAddr, common: Value) -> Value {
    let mut c = cluster_json("c", &[addr], false);
    c["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "common_http_protocol_options": common,
            "explicit_http_config": {"http_protocol_options": {}},
        }
    });
    c
}

/// The upstream connections (client ports) the requests arrived on.
async fn peers(p: &Proxy, n: usize, pause: Duration) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let r = get(p.addr, "svc", "/", &[]).await;
        out.push(r.echo()["peer"].as_str().unwrap().to_string());
        tokio::time::sleep(pause).await;
    }
    out
}

#[tokio::test]
async fn upstream_connections_honour_max_requests_and_idle_timeout() {
    let u = upstream("u").await;
    let route = rc(json!({"match": {"prefix": "/"}, "route": {"cluster": "c"}}));
    let p = proxy(
        hcm_with(route.clone(), vec![], None),
        &[cluster_with_lifetimes(
            u.addr,
            json!({"max_requests_per_connection": 2}),
        )],
    )
    .await;
    let seen = peers(&p, 5, Duration::from_millis(10)).await;
    assert_eq!(seen[0], seen[1]);
    assert_ne!(seen[1], seen[2], "a new connection after two requests");
    assert_eq!(seen[2], seen[3]);
    assert_ne!(seen[3], seen[4]);
    let p = proxy(
        hcm_with(route, vec![], None),
        &[cluster_with_lifetimes(
            u.addr,
            json!({"idle_timeout": "0.2s"}),
        )],
    )
    .await;
    let quick = peers(&p, 3, Duration::from_millis(20)).await;
    assert!(
        quick.iter().all(|x| *x == quick[0]),
        "reused while busy: {quick:?}"
    );
    let slow = peers(&p, 2, Duration::from_millis(600)).await;
    assert_ne!(slow[0], slow[1], "closed after 0.2 s idle");
}

/// The downstream connection's idle timeout closes a keep-alive connection that served
/// a request and then went quiet, and leaves a busy one open.
#[tokio::test]
async fn downstream_idle_timeout_closes_a_quiet_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = upstream("a").await;
    let mut hcm = hcm_with(
        rc(json!({"match": {"prefix": "/"}, "route": {"cluster": "c"}})),
        vec![],
        None,
    );
    hcm["common_http_protocol_options"] = json!({"idle_timeout": "0.3s"});
    let p = proxy(hcm, &[cluster_json("c", &[up.addr], false)]).await;
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let started = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    // Busy for longer than the idle timeout: one request every 100 ms.
    for _ in 0..6 {
        s.write_all(b"GET / HTTP/1.1\r\nhost: svc\r\n\r\n")
            .await
            .unwrap();
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(started.elapsed() > Duration::from_millis(500));
    // Quiet: the proxy closes the connection.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle connection stayed open");
}
