//! Differential tests against Envoy 1.40: the same listener/route/cluster config (Envoy
//! JSON) is given to Envoy as a static bootstrap and to mesh-proxy; the same requests go
//! to both; status, chosen upstream, the path and headers the upstream saw, and the
//! response headers must agree. Where we differ on purpose the case says why.
//!
//! Needs the Envoy binary (`$MESH_ENVOY`, else `tools/envoy.sh`); skips without it unless
//! `MESH_CI_STRICT=1`.
#![allow(clippy::unwrap_used)]

mod http_common;

use std::{net::SocketAddr, process::Stdio, sync::Arc, time::Duration};

use http_common::*;
use serde_json::{Value, json};

fn envoy_bin() -> Option<String> {
    if let Ok(p) = std::env::var("MESH_ENVOY") {
        return Some(p);
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tools/envoy.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && std::path::Path::new(&p).exists()).then_some(p)
}

/// A running Envoy; killed (by its own pid) on drop.
struct Envoy {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_envoy(bin: &str, hcm: &Value, clusters: &[Value]) -> Envoy {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let bootstrap = json!({
        "static_resources": {
            "listeners": [{
                "name": "l",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
            }],
            "clusters": clusters,
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("envoy.json");
    std::fs::write(&path, serde_json::to_vec(&bootstrap).unwrap()).unwrap();
    let child = std::process::Command::new(bin)
        .args([
            "-c",
            path.to_str().unwrap(),
            "--concurrency",
            "1",
            "-l",
            "error",
            "--disable-hot-restart",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let envoy = Envoy {
        child,
        addr,
        _dir: dir,
    };
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return envoy;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("envoy did not start listening on {addr}");
}

/// What we compare for one request.
#[derive(Debug, PartialEq)]
struct Observed {
    status: u16,
    upstream: String,
    path: Value,
    upstream_headers: Vec<(String, Value)>,
    response_headers: Vec<(String, Option<String>)>,
    body_if_local: Option<String>,
}

const UPSTREAM_HEADERS: &[&str] = &[
    "host",
    "x-envoy-original-path",
    "x-forwarded-proto",
    "x-added",
    "x-copied",
    "x-vhost",
    "x-gone",
    "x-envoy-expected-rq-timeout-ms",
    "x-forwarded-host",
];
const RESPONSE_HEADERS: &[&str] = &["location", "x-resp", "content-type", "server", "x-upstream"];

fn observe(g: &Got) -> Observed {
    let echo = g.echo();
    let from_upstream = !echo.is_null();
    Observed {
        status: g.status.as_u16(),
        upstream: g.upstream(),
        path: echo["path"].clone(),
        upstream_headers: UPSTREAM_HEADERS
            .iter()
            .map(|h| (h.to_string(), echo["headers"][h].clone()))
            .collect(),
        response_headers: RESPONSE_HEADERS
            .iter()
            .map(|h| (h.to_string(), g.header(h)))
            .collect(),
        body_if_local: (!from_upstream).then(|| String::from_utf8_lossy(&g.body).into_owned()),
    }
}

#[tokio::test]
async fn same_config_same_answers_as_envoy() {
    let Some(bin) = envoy_bin() else {
        assert!(!strict(), "envoy is required (MESH_CI_STRICT=1)");
        eprintln!("skipping: envoy binary not found");
        return;
    };
    let (a, b) = (upstream("a").await, upstream("b").await);
    let add = |k: &str, v: &str| json!({"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"});
    let rc = json!({
        "name": "diff",
        "response_headers_to_add": [add("x-resp", "global")],
        "virtual_hosts": [
            {"name": "exact", "domains": ["a.svc", "a.svc:80"],
             "request_headers_to_add": [add("x-vhost", "exact")],
             "routes": [
                {"match": {"prefix": "/v1/"}, "route": {"cluster": "a", "prefix_rewrite": "/v2/"}},
                {"match": {"safe_regex": {"regex": "/r/([a-z]+)/(\\d+)"}}, "route": {"cluster": "a", "regex_rewrite": {"pattern": {"regex": "^/r/([a-z]+)/(\\d+)$"}, "substitution": "/\\2/\\1"}}},
                {"match": {"prefix": "/hdr", "headers": [{"name": "x-version", "string_match": {"exact": "b"}}]}, "route": {"cluster": "b"}},
                {"match": {"prefix": "/hdr"}, "route": {"cluster": "a"},
                 "request_headers_to_add": [add("x-added", "route"), add("x-copied", "%REQ(x-source)%")],
                 "request_headers_to_remove": ["x-gone"],
                 "response_headers_to_add": [add("x-resp", "route")]},
                {"match": {"prefix": "/host"}, "route": {"cluster": "b", "host_rewrite_literal": "b.internal", "append_x_forwarded_host": true}},
                {"match": {"prefix": "/redir"}, "redirect": {"host_redirect": "elsewhere", "path_redirect": "/landing", "response_code": "FOUND"}},
                {"match": {"prefix": "/https"}, "redirect": {"https_redirect": true}},
                {"match": {"path": "/direct"}, "direct_response": {"status": 201, "body": {"inline_string": "made here"}}},
                {"match": {"path_separated_prefix": "/sep"}, "route": {"cluster": "b"}},
                {"match": {"prefix": "/CI", "case_sensitive": false}, "route": {"cluster": "b", "timeout": "3s"}},
                {"match": {"prefix": "/q", "query_parameters": [{"name": "v", "string_match": {"exact": "2"}}]}, "route": {"cluster": "b"}},
                {"match": {"prefix": "/empty"}, "route": {"cluster": "empty"}},
                {"match": {"prefix": "/w"}, "route": {"weighted_clusters": {"clusters": [{"name": "a", "weight": 0}, {"name": "b", "weight": 100}]}}},
                {"match": {"prefix": "/"}, "route": {"cluster": "a"}},
             ]},
            {"name": "wild", "domains": ["*.wild.svc"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "b"}}]},
        ],
    });
    let hcm = hcm_json(rc);
    let empty = json!({"name": "empty", "type": "STATIC", "connect_timeout": "1s", "load_assignment": {"cluster_name": "empty", "endpoints": []}});
    let clusters = [
        cluster_json("a", &[a.addr], false),
        cluster_json("b", &[b.addr], false),
        empty,
    ];
    let envoy = start_envoy(&bin, &hcm, &clusters).await;
    let ours = proxy(hcm, &clusters).await;

    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
    let cases: &[Case<'_>] = &[
        ("a.svc", "/v1/items?x=1", &[]),
        ("a.svc:80", "/r/cart/42", &[]),
        ("a.svc", "/hdr", &[("x-version", "b")]),
        (
            "a.svc",
            "/hdr",
            &[
                ("x-source", "copied"),
                ("x-gone", "1"),
                ("x-added", "client"),
            ],
        ),
        ("a.svc", "/host/x", &[]),
        ("a.svc", "/redir?q=1", &[]),
        ("a.svc:80", "/https/p?q=1", &[]),
        ("a.svc", "/direct", &[]),
        ("a.svc", "/sep", &[]),
        ("a.svc", "/sep/x", &[]),
        ("a.svc", "/separate", &[]),
        ("a.svc", "/ci/x", &[]),
        ("a.svc", "/q?v=2", &[]),
        ("a.svc", "/q?v=3", &[]),
        ("a.svc", "/w", &[]),
        // 503 UH with Envoy's body.
        ("a.svc", "/empty", &[]),
        // Hop-by-hop headers named in Connection are dropped by both.
        (
            "a.svc",
            "/hdr",
            &[("connection", "x-gone"), ("x-gone", "1")],
        ),
        ("x.wild.svc", "/", &[]),
        ("wild.svc", "/", &[]),
        ("A.SVC", "/plain", &[]),
        ("unknown", "/", &[]),
    ];
    for (host, path, headers) in cases {
        let theirs = observe(&get(envoy.addr, host, path, headers).await);
        let mine = observe(&get(ours.addr, host, path, headers).await);
        assert_eq!(mine, theirs, "request {host}{path} {headers:?}");
    }
}

/// One side of the resilience comparison: its own upstreams (so counts are per proxy).
struct Side {
    addr: SocketAddr,
    flaky: Scripted,
    slow: Scripted,
    mirror: Scripted,
    closing: Scripted,
    _envoy: Option<Envoy>,
    _proxy: Option<Proxy>,
}

/// What the resilience cases compare.
#[derive(Debug, PartialEq)]
struct Seen2 {
    status: u16,
    headers: Vec<(&'static str, Option<String>)>,
    body: String,
}

const COMPARED: &[&str] = &[
    "x-resp",
    "content-type",
    "grpc-status",
    "grpc-message",
    "x-envoy-attempt-count",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-local-rate-limit",
    "access-control-allow-origin",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-max-age",
    "access-control-allow-credentials",
    "access-control-expose-headers",
];

fn seen2(g: &Got) -> Seen2 {
    Seen2 {
        status: g.status.as_u16(),
        headers: COMPARED.iter().map(|h| (*h, g.header(h))).collect(),
        // Upstream bodies here are lengths; local replies are Envoy's texts.
        body: String::from_utf8_lossy(&g.body).into_owned(),
    }
}

fn resilience_config(
    flaky: SocketAddr,
    slow: SocketAddr,
    mirror: SocketAddr,
    closing: SocketAddr,
) -> (Value, Vec<Value>) {
    let add = |k: &str, v: &str| json!({"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"});
    let fault = |v: Value| {
        let mut f = json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"});
        f.as_object_mut()
            .unwrap()
            .extend(v.as_object().unwrap().clone());
        json!({"envoy.filters.http.fault": f})
    };
    let rl = json!({"envoy.filters.http.local_ratelimit": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "rl",
        "token_bucket": {"max_tokens": 2, "tokens_per_fill": 2, "fill_interval": "3600s"},
        "filter_enabled": {"default_value": {"numerator": 100}},
        "filter_enforced": {"default_value": {"numerator": 100}},
        "response_headers_to_add": [{"header": {"key": "x-local-rate-limit", "value": "true"}}],
        "enable_x_ratelimit_headers": "DRAFT_VERSION_03"}});
    let cors = json!({"envoy.filters.http.cors": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": [{"exact": "https://app.example.com"}, {"safe_regex": {"regex": "https://.*\\.example\\.org"}}],
        "allow_methods": "GET,POST", "allow_headers": "authorization", "expose_headers": "x-request-id",
        "max_age": "86400", "allow_credentials": true,
        "filter_enabled": {"default_value": {"numerator": 100}},
        "forward_not_matching_preflights": true}});
    let rc = json!({
        "name": "res",
        "response_headers_to_add": [add("x-resp", "global")],
        "virtual_hosts": [{"name": "v", "domains": ["*"], "include_attempt_count_in_response": true, "routes": [
            {"match": {"prefix": "/abort"}, "route": {"cluster": "flaky"},
             "typed_per_filter_config": fault(json!({"abort": {"http_status": 503, "percentage": {"numerator": 100}}}))},
            {"match": {"prefix": "/grpcabort"}, "route": {"cluster": "flaky"},
             "typed_per_filter_config": fault(json!({"abort": {"grpc_status": 8, "percentage": {"numerator": 100}}}))},
            {"match": {"prefix": "/delayed"}, "route": {"cluster": "flaky"},
             "typed_per_filter_config": fault(json!({"delay": {"fixed_delay": "0.05s", "percentage": {"numerator": 100}},
                "abort": {"http_status": 418, "percentage": {"numerator": 100}}}))},
            {"match": {"prefix": "/hdrfault"}, "route": {"cluster": "flaky"},
             "typed_per_filter_config": fault(json!({"abort": {"header_abort": {}, "percentage": {"numerator": 100}}}))},
            {"match": {"prefix": "/timeout"}, "route": {"cluster": "slow", "timeout": "0.2s"}},
            {"match": {"prefix": "/msd"}, "route": {"cluster": "slow", "timeout": "0.2s",
                "max_stream_duration": {"grpc_timeout_header_max": "0.3s"}}},
            {"match": {"prefix": "/retry"}, "route": {"cluster": "flaky",
                "retry_policy": {"retry_on": "5xx", "num_retries": 3, "retry_back_off": {"base_interval": "0.001s"}}}},
            {"match": {"prefix": "/exhaust"}, "route": {"cluster": "flaky",
                "retry_policy": {"retry_on": "retriable-status-codes", "retriable_status_codes": [500], "num_retries": 1,
                    "retry_back_off": {"base_interval": "0.001s"}}}},
            {"match": {"prefix": "/reset"}, "route": {"cluster": "closing",
                "retry_policy": {"retry_on": "reset", "num_retries": 1, "retry_back_off": {"base_interval": "0.001s"}}}},
            {"match": {"prefix": "/pertry"}, "route": {"cluster": "slow", "timeout": "2s",
                "retry_policy": {"retry_on": "connect-failure", "per_try_timeout": "0.1s"}}},
            {"match": {"prefix": "/limited"}, "route": {"cluster": "flaky"}, "typed_per_filter_config": rl},
            {"match": {"prefix": "/cors"}, "route": {"cluster": "flaky"}, "typed_per_filter_config": cors},
            {"match": {"prefix": "/mirror"}, "route": {"cluster": "flaky",
                "request_mirror_policies": [{"cluster": "mirror"}]}},
            {"match": {"prefix": "/"}, "route": {"cluster": "flaky"}},
        ]}],
    });
    let filters = vec![
        json!({"name": "envoy.filters.http.fault", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}}),
        json!({"name": "envoy.filters.http.cors", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}}),
        json!({"name": "envoy.filters.http.local_ratelimit", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "rl"}}),
    ];
    let hcm = hcm_with(rc, filters, None);
    let clusters = vec![
        cluster_json("flaky", &[flaky], false),
        cluster_json("slow", &[slow], false),
        cluster_json("mirror", &[mirror], false),
        cluster_json("closing", &[closing], false),
    ];
    (hcm, clusters)
}

async fn side(envoy_bin: Option<&str>) -> Side {
    // `flaky`: /retry fails its first two requests, /exhaust always answers 500.
    let retry_count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let rc2 = retry_count.clone();
    let flaky = scripted(
        Default::default(),
        Arc::new(move |_, s: &Seen| match s.path.as_str() {
            "/retry" if rc2.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 => {
                Act::Status(503)
            }
            "/exhaust" => Act::Status(500),
            _ => Act::Status(200),
        }),
    )
    .await;
    let slow = scripted(
        Default::default(),
        Arc::new(|_, _| Act::Delay(Duration::from_millis(1500), 200)),
    )
    .await;
    let mirror = scripted(Default::default(), Arc::new(|_, _| Act::Status(200))).await;
    let closing = scripted(Default::default(), Arc::new(|_, _| Act::Close)).await;
    let (hcm, clusters) = resilience_config(flaky.addr, slow.addr, mirror.addr, closing.addr);
    let (addr, envoy, proxy) = match envoy_bin {
        Some(bin) => {
            let e = start_envoy(bin, &hcm, &clusters).await;
            (e.addr, Some(e), None)
        }
        None => {
            let p = proxy(hcm, &clusters).await;
            (p.addr, None, Some(p))
        }
    };
    Side {
        addr,
        flaky,
        slow,
        mirror,
        closing,
        _envoy: envoy,
        _proxy: proxy,
    }
}

#[tokio::test]
async fn resilience_same_as_envoy() {
    let Some(bin) = envoy_bin() else {
        assert!(!strict(), "envoy is required (MESH_CI_STRICT=1)");
        eprintln!("skipping: envoy binary not found");
        return;
    };
    let theirs = side(Some(&bin)).await;
    let mine = side(None).await;
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
    let grpc: &[(&str, &str)] = &[("content-type", "application/grpc")];
    let cases: &[Case<'_>] = &[
        ("GET", "/abort", &[]),
        ("GET", "/abort", grpc),
        ("GET", "/grpcabort", grpc),
        ("GET", "/grpcabort", &[]),
        ("GET", "/delayed", &[]),
        (
            "GET",
            "/hdrfault",
            &[("x-envoy-fault-abort-request", "429")],
        ),
        (
            "GET",
            "/hdrfault",
            &[("x-envoy-fault-abort-grpc-request", "7")],
        ),
        ("GET", "/hdrfault", &[]),
        ("GET", "/timeout", &[]),
        ("GET", "/timeout", grpc),
        // Envoy ignores the route timeout on a route with max_stream_duration: plain
        // HTTP waits for the slow upstream; gRPC uses grpc-timeout (capped).
        ("GET", "/msd", &[]),
        (
            "GET",
            "/msd",
            &[
                ("content-type", "application/grpc"),
                ("grpc-timeout", "10S"),
            ],
        ),
        ("GET", "/retry", &[]),
        ("GET", "/exhaust", &[]),
        ("GET", "/reset", &[]),
        ("GET", "/pertry", &[]),
        (
            "GET",
            "/x",
            &[
                ("x-envoy-retry-on", "5xx"),
                ("x-envoy-upstream-rq-timeout-ms", "100"),
            ],
        ),
        ("GET", "/limited", &[]),
        ("GET", "/limited", &[]),
        ("GET", "/limited", &[]),
        (
            "OPTIONS",
            "/cors",
            &[
                ("origin", "https://a.example.org"),
                ("access-control-request-method", "POST"),
            ],
        ),
        (
            "OPTIONS",
            "/cors",
            &[
                ("origin", "https://evil.com"),
                ("access-control-request-method", "POST"),
            ],
        ),
        ("GET", "/cors", &[("origin", "https://app.example.com")]),
        ("GET", "/cors", &[("origin", "https://evil.com")]),
        ("GET", "/mirror", &[]),
    ];
    for (method, path, headers) in cases {
        let req = |addr: SocketAddr| {
            let mut b = http::Request::builder()
                .method(*method)
                .uri(*path)
                .header("host", "svc.local:8080");
            for (k, v) in *headers {
                b = b.header(*k, *v);
            }
            send(
                addr,
                b.body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap(),
            )
        };
        let t = seen2(&req(theirs.addr).await);
        let m = seen2(&req(mine.addr).await);
        assert_eq!(m, t, "{method} {path} {headers:?}");
    }
    // The same number of requests reached each upstream (retries, faults, limits).
    for (name, t, m) in [
        ("flaky", &theirs.flaky, &mine.flaky),
        ("slow", &theirs.slow, &mine.slow),
        ("closing", &theirs.closing, &mine.closing),
    ] {
        assert_eq!(m.hits(), t.hits(), "requests reaching {name}");
    }
    for _ in 0..100 {
        if theirs.mirror.hits() == 1 && mine.mirror.hits() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let host = |s: &Side| {
        s.mirror.seen()[0].headers["host"]
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(host(&mine), host(&theirs), "the mirror's host");
}
