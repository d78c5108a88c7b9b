//! Router features end to end: real sockets, a real echo upstream, config as Envoy JSON.
#![allow(clippy::unwrap_used)]

mod http_common;

use http_common::*;
use serde_json::json;

fn route(m: serde_json::Value, cluster: &str) -> serde_json::Value {
    json!({"match": m, "route": {"cluster": cluster}})
}

#[tokio::test]
async fn domains_match_as_envoy() {
    let (a, b, c, d) = (
        upstream("exact").await,
        upstream("suffix").await,
        upstream("prefix").await,
        upstream("default").await,
    );
    let rc = json!({"name": "r", "virtual_hosts": [
        {"name": "exact", "domains": ["api.example.com", "api.example.com:8080"], "routes": [route(json!({"prefix": "/"}), "exact")]},
        {"name": "suffix", "domains": ["*.example.com"], "routes": [route(json!({"prefix": "/"}), "suffix")]},
        {"name": "prefix", "domains": ["api.*"], "routes": [route(json!({"prefix": "/"}), "prefix")]},
        {"name": "default", "domains": ["*"], "routes": [route(json!({"prefix": "/"}), "default")]},
    ]});
    let clusters: Vec<_> = [&a, &b, &c, &d]
        .iter()
        .map(|u| cluster_json(&u.name, &[u.addr], false))
        .collect();
    let p = proxy(hcm_json(rc), &clusters).await;
    for (host, want) in [
        ("api.example.com", "exact"),
        ("API.Example.com", "exact"),
        ("api.example.com:8080", "exact"),
        ("api.example.com:9090", "prefix"),
        ("www.example.com", "suffix"),
        ("api.other.org", "prefix"),
        ("other.org", "default"),
    ] {
        assert_eq!(
            get(p.addr, host, "/", &[]).await.upstream(),
            want,
            "host {host}"
        );
    }
}

#[tokio::test]
async fn no_route_is_404_nr() {
    let u = upstream("u").await;
    let rc = json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["svc"], "routes": [route(json!({"path": "/only"}), "u")]}]});
    let p = proxy(hcm_json(rc), &[cluster_json("u", &[u.addr], false)]).await;
    assert_eq!(get(p.addr, "svc", "/only", &[]).await.status, 200);
    let r = get(p.addr, "svc", "/other", &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("server").as_deref(), Some("envoy"));
    assert_eq!(get(p.addr, "unknown-host", "/only", &[]).await.status, 404);
}

#[tokio::test]
async fn path_matchers() {
    let u = upstream("u").await;
    let names = ["exact", "sep", "regex", "ci", "prefix"];
    let ups: Vec<_> = futures::future::join_all(names.iter().map(|n| upstream(n))).await;
    let rc = json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
        route(json!({"path": "/exact"}), "exact"),
        route(json!({"path_separated_prefix": "/api"}), "sep"),
        route(json!({"safe_regex": {"regex": "/users/[0-9]+"}}), "regex"),
        route(json!({"prefix": "/CaSe", "case_sensitive": false}), "ci"),
        route(json!({"prefix": "/"}), "prefix"),
    ]}]});
    let mut clusters: Vec<_> = ups
        .iter()
        .map(|u| cluster_json(&u.name, &[u.addr], false))
        .collect();
    clusters.push(cluster_json("u", &[u.addr], false));
    let p = proxy(hcm_json(rc), &clusters).await;
    for (path, want) in [
        ("/exact", "exact"),
        ("/exact?q=1", "exact"),
        ("/exact/", "prefix"),
        ("/api", "sep"),
        ("/api/v1", "sep"),
        ("/apiv1", "prefix"),
        ("/users/42", "regex"),
        ("/users/42/x", "prefix"),
        ("/case/x", "ci"),
        ("/other", "prefix"),
    ] {
        assert_eq!(
            get(p.addr, "h", path, &[]).await.upstream(),
            want,
            "path {path}"
        );
    }
}

#[tokio::test]
async fn header_query_grpc_and_fraction_matchers() {
    let names = [
        "exact", "prefix", "suffix", "contains", "regex", "present", "absent", "range", "invert",
        "query", "grpc", "never", "fallback",
    ];
    let ups: Vec<_> = futures::future::join_all(names.iter().map(|n| upstream(n))).await;
    let h = |m: serde_json::Value, c: &str| route(json!({"prefix": "/", "headers": [m]}), c);
    let rc = json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
        route(json!({"prefix": "/", "runtime_fraction": {"default_value": {"numerator": 0}, "runtime_key": "k"}}), "never"),
        h(json!({"name": "x-exact", "string_match": {"exact": "yes"}}), "exact"),
        h(json!({"name": "x-prefix", "string_match": {"prefix": "pre"}}), "prefix"),
        h(json!({"name": "x-suffix", "string_match": {"suffix": "fix"}}), "suffix"),
        h(json!({"name": "x-contains", "string_match": {"contains": "mid"}}), "contains"),
        h(json!({"name": "x-regex", "string_match": {"safe_regex": {"regex": "v[0-9]+"}}}), "regex"),
        h(json!({"name": "x-present", "present_match": true}), "present"),
        h(json!({"name": "x-range", "range_match": {"start": 10, "end": 20}}), "range"),
        h(json!({"name": "x-invert", "string_match": {"exact": "no"}, "invert_match": true}), "invert"),
        route(json!({"prefix": "/", "query_parameters": [{"name": "debug", "string_match": {"exact": "1"}}]}), "query"),
        route(json!({"prefix": "/", "grpc": {}}), "grpc"),
        route(json!({"prefix": "/"}), "fallback"),
    ]}]});
    let clusters: Vec<_> = ups
        .iter()
        .map(|u| cluster_json(&u.name, &[u.addr], false))
        .collect();
    let p = proxy(hcm_json(rc), &clusters).await;
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case<'_>] = &[
        (&[("x-exact", "yes")], "/", "exact"),
        (&[("x-exact", "YES")], "/", "fallback"),
        (&[("x-prefix", "prefixed")], "/", "prefix"),
        (&[("x-suffix", "a-suffix")], "/", "suffix"),
        (&[("x-contains", "amidb")], "/", "contains"),
        (&[("x-regex", "v12")], "/", "regex"),
        (&[("x-regex", "v12a")], "/", "fallback"),
        (&[("x-present", "")], "/", "present"),
        (&[("x-range", "15")], "/", "range"),
        (&[("x-range", "20")], "/", "fallback"),
        (&[("x-invert", "yes")], "/", "invert"),
        (&[("x-invert", "no")], "/", "fallback"),
        (&[], "/?debug=1", "query"),
        (&[], "/?debug=2", "fallback"),
        (&[("content-type", "application/grpc")], "/", "grpc"),
        (&[], "/", "fallback"),
    ];
    for (headers, path, want) in cases {
        assert_eq!(
            get(p.addr, "h", path, headers).await.upstream(),
            *want,
            "{headers:?} {path}"
        );
    }
}

#[tokio::test]
async fn weighted_clusters_split_by_weight() {
    let (a, b, z) = (
        upstream("a").await,
        upstream("b").await,
        upstream("zero").await,
    );
    let rc = json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
            {"name": "a", "weight": 75}, {"name": "zero", "weight": 0}, {"name": "b", "weight": 25},
        ]}}},
    ]}]});
    let clusters = [
        cluster_json("a", &[a.addr], false),
        cluster_json("b", &[b.addr], false),
        cluster_json("zero", &[z.addr], false),
    ];
    let p = proxy(hcm_json(rc), &clusters).await;
    let mut counts = std::collections::HashMap::new();
    for _ in 0..400 {
        *counts
            .entry(get(p.addr, "h", "/", &[]).await.upstream())
            .or_insert(0) += 1;
    }
    let (ca, cb) = (
        counts.get("a").copied().unwrap_or(0),
        counts.get("b").copied().unwrap_or(0),
    );
    assert_eq!(counts.get("zero"), None, "weight 0 never chosen");
    assert_eq!(ca + cb, 400);
    assert!((240..=360).contains(&ca), "75% to a, got {counts:?}");
}

#[tokio::test]
async fn rewrites() {
    let u = upstream("u").await;
    let rc = json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/v1/"}, "route": {"cluster": "u", "prefix_rewrite": "/api/"}},
        {"match": {"safe_regex": {"regex": "/svc/([^/]+)/(.*)"}}, "route": {"cluster": "u", "regex_rewrite": {"pattern": {"regex": "^/svc/([^/]+)/(.*)$"}, "substitution": "/\\2/on/\\1"}}},
        {"match": {"prefix": "/host"}, "route": {"cluster": "u", "host_rewrite_literal": "rewritten.internal", "append_x_forwarded_host": true}},
        {"match": {"prefix": "/"}, "route": {"cluster": "u"}},
    ]}]});
    let p = proxy(hcm_json(rc), &[cluster_json("u", &[u.addr], false)]).await;
    let r = get(p.addr, "h", "/v1/users?id=1", &[]).await.echo();
    assert_eq!(r["path"], "/api/users?id=1");
    assert_eq!(r["headers"]["x-envoy-original-path"], "/v1/users?id=1");
    let r = get(p.addr, "h", "/svc/cart/items/3", &[]).await.echo();
    assert_eq!(r["path"], "/items/3/on/cart");
    let r = get(p.addr, "orig.host", "/host", &[]).await.echo();
    assert_eq!(r["headers"]["host"], "rewritten.internal");
    assert_eq!(r["headers"]["x-forwarded-host"], "orig.host");
    let r = get(p.addr, "h", "/plain", &[]).await.echo();
    assert_eq!(r["path"], "/plain");
    assert!(r["headers"].get("x-envoy-original-path").is_none());
}

#[tokio::test]
async fn redirects_and_direct_responses() {
    let rc = json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/https"}, "redirect": {"https_redirect": true}},
        {"match": {"prefix": "/moved"}, "redirect": {"host_redirect": "new.example", "port_redirect": 8443, "path_redirect": "/landing", "response_code": "PERMANENT_REDIRECT", "strip_query": true}},
        {"match": {"prefix": "/old/"}, "redirect": {"prefix_rewrite": "/new/", "response_code": "FOUND"}},
        {"match": {"path": "/health"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}},
        {"match": {"path": "/teapot"}, "direct_response": {"status": 418}},
    ]}]});
    let p = proxy(hcm_json(rc), &[]).await;
    let r = get(p.addr, "example.com:80", "/https/a?b=c", &[]).await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location").as_deref(),
        Some("https://example.com/https/a?b=c")
    );
    let r = get(p.addr, "example.com", "/moved/x?y=1", &[]).await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location").as_deref(),
        Some("http://new.example:8443/landing")
    );
    let r = get(p.addr, "example.com", "/old/page?q=2", &[]).await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location").as_deref(),
        Some("http://example.com/new/page?q=2")
    );
    let r = get(p.addr, "h", "/health", &[]).await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"ok"[..]));
    assert_eq!(r.header("content-type").as_deref(), Some("text/plain"));
    assert_eq!(get(p.addr, "h", "/teapot", &[]).await.status, 418);
}

#[tokio::test]
async fn header_mutations_in_envoy_order_with_formatters() {
    let u = upstream("u").await;
    let add = |k: &str, v: &str, action: &str| json!({"header": {"key": k, "value": v}, "append_action": action});
    let rc = json!({
        "name": "r",
        "request_headers_to_add": [add("x-level", "global", "OVERWRITE_IF_EXISTS_OR_ADD"), add("x-all", "global", "APPEND_IF_EXISTS_OR_ADD")],
        "response_headers_to_add": [add("x-resp", "global", "APPEND_IF_EXISTS_OR_ADD")],
        "virtual_hosts": [{
            "name": "v", "domains": ["*"],
            "request_headers_to_add": [add("x-level", "vhost", "OVERWRITE_IF_EXISTS_OR_ADD"), add("x-all", "vhost", "APPEND_IF_EXISTS_OR_ADD")],
            "request_headers_to_remove": ["x-drop-me"],
            "routes": [{
                "match": {"prefix": "/"}, "route": {"cluster": "u"},
                "request_headers_to_add": [
                    add("x-level", "route", "OVERWRITE_IF_EXISTS_OR_ADD"),
                    add("x-all", "route", "APPEND_IF_EXISTS_OR_ADD"),
                    add("x-client", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "OVERWRITE_IF_EXISTS_OR_ADD"),
                    add("x-copy", "%REQ(x-source)%", "OVERWRITE_IF_EXISTS_OR_ADD"),
                    add("x-proto", "%PROTOCOL%", "OVERWRITE_IF_EXISTS_OR_ADD"),
                    add("x-keep", "route", "ADD_IF_ABSENT"),
                ],
                "response_headers_to_add": [add("x-resp", "route", "APPEND_IF_EXISTS_OR_ADD"), add("x-upstream-host", "%UPSTREAM_REMOTE_ADDRESS%", "OVERWRITE_IF_EXISTS_OR_ADD")],
                "response_headers_to_remove": ["x-upstream"],
            }],
        }],
    });
    let p = proxy(hcm_json(rc), &[cluster_json("u", &[u.addr], false)]).await;
    let r = get(
        p.addr,
        "h",
        "/",
        &[
            ("x-drop-me", "1"),
            ("x-source", "copied"),
            ("x-keep", "client"),
        ],
    )
    .await;
    let e = r.echo();
    // Default order: route, then vhost, then route config; the route config's overwrite wins.
    assert_eq!(e["headers"]["x-level"], "global");
    assert_eq!(e["headers"]["x-all"], "route,vhost,global");
    assert_eq!(e["headers"]["x-client"], "127.0.0.1");
    assert_eq!(e["headers"]["x-copy"], "copied");
    assert_eq!(e["headers"]["x-proto"], "HTTP/1.1");
    assert_eq!(e["headers"]["x-keep"], "client");
    assert!(e["headers"].get("x-drop-me").is_none());
    assert_eq!(
        r.headers
            .get_all("x-resp")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect::<Vec<_>>(),
        ["route", "global"]
    );
    assert_eq!(r.header("x-upstream-host"), Some(u.addr.to_string()));
    assert!(r.header("x-upstream").is_none());
    assert!(r.header("x-envoy-upstream-service-time").is_some());
    assert_eq!(r.header("server").as_deref(), Some("envoy"));
}

#[tokio::test]
async fn connection_manager_headers() {
    let u = upstream("u").await;
    let rc = json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [route(json!({"prefix": "/"}), "u")]}]});
    let p = proxy(hcm_json(rc), &[cluster_json("u", &[u.addr], false)]).await;
    let e = get(
        p.addr,
        "h",
        "/",
        &[("connection", "x-hop"), ("x-hop", "1"), ("te", "trailers")],
    )
    .await
    .echo();
    assert_eq!(e["headers"]["x-forwarded-proto"], "http");
    assert_eq!(e["headers"]["x-request-id"].as_str().unwrap().len(), 36);
    assert_eq!(e["headers"]["x-envoy-expected-rq-timeout-ms"], "15000");
    assert_eq!(e["headers"]["te"], "trailers");
    assert!(e["headers"].get("x-hop").is_none());
    let e = get(p.addr, "h", "/", &[("x-request-id", "keep-me")])
        .await
        .echo();
    assert_eq!(e["headers"]["x-request-id"], "keep-me");

    // use_remote_address: the proxy is the edge; XFF gets the peer and x-envoy-* is dropped.
    let mut hcm = hcm_json(
        json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [route(json!({"prefix": "/"}), "u")]}]}),
    );
    hcm["use_remote_address"] = json!(true);
    let p = proxy(hcm, &[cluster_json("u", &[u.addr], false)]).await;
    let e = get(p.addr, "h", "/", &[("x-forwarded-for", "203.0.113.9")])
        .await
        .echo();
    assert_eq!(e["headers"]["x-forwarded-for"], "203.0.113.9,127.0.0.1");
}

#[tokio::test]
async fn upstream_failures_have_envoy_flags() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let slow = upstream("slow").await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let rc = json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/dead"}, "route": {"cluster": "dead"}},
        {"match": {"prefix": "/empty"}, "route": {"cluster": "empty"}},
        {"match": {"prefix": "/missing"}, "route": {"cluster": "no-such-cluster"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "slow", "timeout": "0.2s"}},
    ]}]});
    let mut hcm = hcm_json(rc);
    hcm["access_log"] = json!([{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": log.path().to_str().unwrap(),
    }}]);
    let empty = json!({"name": "empty", "type": "STATIC", "connect_timeout": "1s", "load_assignment": {"cluster_name": "empty", "endpoints": []}});
    let p = proxy(
        hcm,
        &[
            cluster_json("dead", &[dead], false),
            empty,
            cluster_json("slow", &[slow.addr], false),
        ],
    )
    .await;
    let r = get(p.addr, "h", "/dead", &[]).await;
    assert_eq!(r.status, 503);
    assert!(
        String::from_utf8_lossy(&r.body)
            .starts_with("upstream connect error or disconnect/reset before headers"),
        "{r:?}"
    );
    let r = get(p.addr, "h", "/empty", &[]).await;
    assert_eq!(
        (r.status.as_u16(), &r.body[..]),
        (503, &b"no healthy upstream"[..])
    );
    assert_eq!(get(p.addr, "h", "/missing", &[]).await.status, 503);
    let r = get(p.addr, "h", "/delay/2000", &[]).await;
    assert_eq!(
        (r.status.as_u16(), &r.body[..]),
        (504, &b"upstream request timeout"[..])
    );
    assert_eq!(
        get(p.addr, "h", "/nothing-here", &[("host", "h")])
            .await
            .status,
        200
    );

    let mut text = String::new();
    for _ in 0..50 {
        text = std::fs::read_to_string(log.path()).unwrap();
        if text.lines().count() >= 5 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].contains("\"GET /dead HTTP/1.1\" 503 UF "),
        "{text}"
    );
    assert!(
        lines[1].contains("\"GET /empty HTTP/1.1\" 503 UH "),
        "{text}"
    );
    assert!(
        lines[2].contains("\"GET /missing HTTP/1.1\" 503 NC "),
        "{text}"
    );
    assert!(
        lines[3].contains("\"GET /delay/2000 HTTP/1.1\" 504 UT "),
        "{text}"
    );
    assert!(lines[4].contains("\" 200 - "), "{text}");
}

#[tokio::test]
async fn retries_on_5xx_move_to_another_host() {
    let (bad, good) = (failing_upstream("bad", 503).await, upstream("good").await);
    let rc = json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "c", "retry_policy": {
            "retry_on": "5xx", "num_retries": 3,
            "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts"}],
            "retry_back_off": {"base_interval": "0.001s"},
        }}},
    ]}]});
    // Round robin alternates hosts: every request that lands on "bad" is retried on "good".
    let p = proxy(
        hcm_json(rc),
        &[cluster_json("c", &[bad.addr, good.addr], false)],
    )
    .await;
    for _ in 0..10 {
        let r = get(p.addr, "h", "/", &[]).await;
        assert_eq!((r.status.as_u16(), r.upstream().as_str()), (200, "good"));
    }
    assert!(
        bad.hits.load(std::sync::atomic::Ordering::Relaxed) >= 1,
        "the bad host was tried"
    );
    let r = get(p.addr, "h", "/status/503", &[]).await;
    assert_eq!(
        r.status, 503,
        "both hosts fail: retries exhausted, last response returned"
    );
    let stats = p.rt.clusters.get("c").unwrap();
    assert!(stats.stats().upstream_rq_retry.get() >= 1);
}

#[tokio::test]
async fn circuit_breaker_overflow_is_uo() {
    let slow = upstream("slow").await;
    let mut c = cluster_json("c", &[slow.addr], false);
    c["circuit_breakers"] = json!({"thresholds": [{"max_requests": 1, "max_pending_requests": 1, "max_connections": 1}]});
    let rc = json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [route(json!({"prefix": "/"}), "c")]}]});
    let p = proxy(hcm_json(rc), &[c]).await;
    let addr = p.addr;
    let first = tokio::spawn(async move { get(addr, "h", "/delay/500", &[]).await });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let r = get(p.addr, "h", "/", &[]).await;
    assert_eq!(r.status, 503);
    assert!(String::from_utf8_lossy(&r.body).contains("overflow"));
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(
        p.rt.clusters
            .get("c")
            .unwrap()
            .stats()
            .upstream_rq_overflow
            .get(),
        1
    );
}

#[tokio::test]
async fn rds_routes_come_from_the_snapshot() {
    let u = upstream("u").await;
    let mut hcm = hcm_json(json!({}));
    let obj = hcm.as_object_mut().unwrap();
    obj.remove("route_config");
    obj.insert(
        "rds".into(),
        json!({"route_config_name": "rds-1", "config_source": {"ads": {}}}),
    );
    let p = proxy(hcm, &[cluster_json("u", &[u.addr], false)]).await;
    assert_eq!(
        get(p.addr, "h", "/", &[]).await.status,
        404,
        "NR until the RouteConfiguration arrives"
    );
    let rc = route_from_json(
        &json!({"name": "rds-1", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [route(json!({"prefix": "/"}), "u")]}]}),
    );
    p.rt.store.update(|s| {
        s.routes.insert("rds-1".into(), std::sync::Arc::new(rc));
    });
    assert_eq!(get(p.addr, "h", "/", &[]).await.upstream(), "u");
}

#[test]
fn unsupported_route_fields_are_nacked_by_name() {
    let base = |r: serde_json::Value| json!({"name": "rc", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [r]}]});
    let e = route_err(&base(
        json!({"match": {"prefix": "/", "cookies": [{"name": "c"}]}, "route": {"cluster": "c"}}),
    ));
    assert_eq!(
        (e.resource.as_str(), e.field.as_str()),
        ("rc", "virtual_hosts[0].routes[0].match.cookies")
    );
    let e = route_err(&base(
        json!({"match": {"prefix": "/"}, "route": {"cluster": "c", "hedge_policy": {}}}),
    ));
    assert_eq!(e.field, "virtual_hosts[0].routes[0].route.hedge_policy");
    let e = route_err(&base(
        json!({"match": {"safe_regex": {"regex": "(unclosed"}}, "route": {"cluster": "c"}}),
    ));
    assert_eq!(e.field, "virtual_hosts[0].routes[0].match.safe_regex");
    let e = route_err(&json!({"name": "rc", "virtual_hosts": [
        {"name": "a", "domains": ["x.com"], "routes": []}, {"name": "b", "domains": ["x.com"], "routes": []}]}));
    assert_eq!(e.field, "virtual_hosts[1].domains[0]");
    let e = route_err(&base(
        json!({"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [{"name": "a", "weight": 1}], "total_weight": 5}}}),
    ));
    assert!(e.field.ends_with("weighted_clusters.total_weight"), "{e}");
    let e = route_err(&base(
        json!({"match": {"prefix": "/"}, "route": {"cluster": "c"}, "typed_per_filter_config": {
        "envoy.filters.http.rbac": {"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"}}}),
    ));
    assert!(e.message.contains("envoy.filters.http.rbac"), "{e}");
    // A per-route fault config that cannot apply is NACKed by field.
    let e = route_err(&base(
        json!({"match": {"prefix": "/"}, "route": {"cluster": "c"}, "typed_per_filter_config": {
        "envoy.filters.http.fault": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
            "abort": {"http_status": 99}}}}),
    ));
    assert_eq!(
        e.field,
        "virtual_hosts[0].routes[0].typed_per_filter_config[\"envoy.filters.http.fault\"].abort.http_status",
        "{e}"
    );
}
