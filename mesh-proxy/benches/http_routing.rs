//! Route matching on a 1,000-route table (Istio-like: many virtual hosts with a few
//! routes each, plus one large virtual host with prefix, regex and header routes) and
//! header formatting.
#![allow(clippy::unwrap_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration as PbRoute;
use http::{HeaderMap, Method, Uri};
use mesh_proxy::{
    config::route::RouteConfiguration,
    http::{
        format::{FormatCtx, Formatter},
        route_select::{RequestView, select},
        stream_info::StreamInfo,
    },
};
use serde_json::json;

fn table() -> RouteConfiguration {
    let mut vhosts = Vec::new();
    // 200 services x 4 routes.
    for i in 0..200 {
        let name = format!("svc-{i}.ns.svc.cluster.local");
        vhosts.push(json!({
            "name": format!("{name}:80"),
            "domains": [name.clone(), format!("{name}:80"), format!("svc-{i}"), format!("svc-{i}:80"), format!("svc-{i}.ns"), format!("10.251.{}.{}", i / 250, i % 250)],
            "routes": [
                {"match": {"prefix": "/api/v2/", "headers": [{"name": "x-canary", "string_match": {"exact": "true"}}]}, "route": {"cluster": format!("outbound|80|canary|{name}")}},
                {"match": {"safe_regex": {"regex": "/users/[0-9]+/orders"}}, "route": {"cluster": format!("outbound|80|v2|{name}")}},
                {"match": {"path_separated_prefix": "/api"}, "route": {"cluster": format!("outbound|80|v1|{name}")}},
                {"match": {"prefix": "/"}, "route": {"cluster": format!("outbound|80||{name}")}},
            ],
        }));
    }
    // One large host with 200 routes; the target is near the end.
    let mut routes = Vec::new();
    for j in 0..199 {
        routes
            .push(json!({"match": {"prefix": format!("/path-{j}/")}, "route": {"cluster": "big"}}));
    }
    routes.push(json!({"match": {"prefix": "/"}, "route": {"cluster": "big-default"}}));
    vhosts.push(json!({"name": "big", "domains": ["big.example.com"], "routes": routes}));
    vhosts.push(json!({"name": "allow_any", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "PassthroughCluster"}}]}));
    let p: PbRoute =
        mesh_api::envoy_json::message_from_json(&json!({"name": "80", "virtual_hosts": vhosts}))
            .unwrap();
    RouteConfiguration::try_from(&p).unwrap()
}

fn bench_routes(c: &mut Criterion) {
    let rc = table();
    let mut headers = HeaderMap::new();
    headers.insert("x-canary", "false".parse().unwrap());
    let cases = [
        ("svc-150.ns.svc.cluster.local:80", "/users/42/orders"),
        ("svc-7", "/api/v1/items?x=1"),
        ("big.example.com", "/path-190/x"),
        ("unknown.example.org", "/"),
    ];
    for (host, path) in cases {
        let uri: Uri = path.parse().unwrap();
        c.bench_function(&format!("route_select {host}{path}"), |b| {
            b.iter(|| {
                let view = RequestView {
                    method: &Method::GET,
                    uri: &uri,
                    headers: &headers,
                    authority: host,
                    scheme: "http",
                    random: 7,
                };
                std::hint::black_box(select(&rc, &view).map(|s| s.matched_len))
            })
        });
    }
}

fn bench_format(c: &mut Criterion) {
    let f = Formatter::parse(
        "%REQ(x-request-id)% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %PROTOCOL% %START_TIME%",
    )
    .unwrap();
    let log = Formatter::parse(mesh_proxy::accesslog::DEFAULT_FORMAT).unwrap();
    let mut h = HeaderMap::new();
    h.insert(
        "x-request-id",
        "0d4a2b9e-8f9c-4e1c-9a57-2d8f3c1b7e61".parse().unwrap(),
    );
    h.insert("user-agent", "curl/8.5".parse().unwrap());
    h.insert("host", "svc:80".parse().unwrap());
    let info = StreamInfo::new(
        "10.250.0.7:40000".parse().unwrap(),
        "10.251.0.1:80".parse().unwrap(),
    );
    let uri: Uri = "/api/v1/items".parse().unwrap();
    let ctx = FormatCtx {
        method: &Method::GET,
        uri: &uri,
        req_headers: &h,
        resp_headers: Some(&h),
        resp_trailers: None,
        info: &info,
    };
    let mut out = String::with_capacity(512);
    c.bench_function("format header value (4 commands)", |b| {
        b.iter(|| {
            out.clear();
            f.format_header(&ctx, &mut out);
            std::hint::black_box(out.len())
        })
    });
    c.bench_function("format default access log line", |b| {
        b.iter(|| {
            out.clear();
            log.format_log(&ctx, &mut out);
            std::hint::black_box(out.len())
        })
    });
}

criterion_group!(benches, bench_routes, bench_format);
criterion_main!(benches);
