//! Differential tests against Envoy 1.40: the same listener/route/cluster config (Envoy
//! JSON) is given to Envoy as a static bootstrap and to mesh-proxy; the same requests go
//! to both; status, chosen upstream, the path and headers the upstream saw, and the
//! response headers must agree. Where we differ on purpose the case says why.
//!
//! Needs the Envoy binary (`$MESH_ENVOY`, else `tools/envoy.sh`); skips without it unless
//! `MESH_CI_STRICT=1`.
#![allow(clippy::unwrap_used)]

mod http_common;

use std::{net::SocketAddr, process::Stdio, time::Duration};

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
