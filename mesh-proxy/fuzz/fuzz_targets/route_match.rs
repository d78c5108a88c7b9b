//! Route selection with arbitrary hosts, paths and header values against a table with
//! every matcher kind; also arbitrary domains into the domain table. Must never panic,
//! and an exact domain must always win over wildcards.
#![no_main]

use std::sync::OnceLock;

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration as PbRoute;
use http::{HeaderMap, HeaderValue, Method, Uri};
use libfuzzer_sys::fuzz_target;
use mesh_proxy::{
    config::{route::RouteConfiguration, route_match::DomainTable},
    http::route_select::{RequestView, select},
};

fn table() -> &'static RouteConfiguration {
    static T: OnceLock<RouteConfiguration> = OnceLock::new();
    T.get_or_init(|| {
        let v = serde_json::json!({"name": "f", "virtual_hosts": [
            {"name": "a", "domains": ["a.com", "a.com:80", "*.a.com", "api.*"], "routes": [
                {"match": {"path": "/exact"}, "route": {"cluster": "c"}},
                {"match": {"path_separated_prefix": "/sep", "case_sensitive": false}, "route": {"cluster": "c"}},
                {"match": {"safe_regex": {"regex": "/r/[a-z]+/\\d*"}}, "route": {"cluster": "c"}},
                {"match": {"prefix": "/h", "headers": [
                    {"name": "x-r", "range_match": {"start": -5, "end": 5}},
                    {"name": "x-s", "string_match": {"suffix": "Z", "ignore_case": true}, "invert_match": true},
                    {"name": ":method", "string_match": {"exact": "GET"}}]}, "route": {"cluster": "c"}},
                {"match": {"prefix": "/q", "query_parameters": [{"name": "k", "string_match": {"contains": "v"}}]}, "route": {"cluster": "c"}},
                {"match": {"prefix": "/"}, "route": {"cluster": "c"}},
            ]},
            {"name": "d", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"}}]},
        ]});
        let p: PbRoute = mesh_api::envoy_json::message_from_json(&v).expect("valid json");
        RouteConfiguration::try_from(&p).expect("valid route config")
    })
}

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let mut parts = s.splitn(4, '\n');
    let host = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("/");
    let xr = parts.next().unwrap_or("");
    let xs = parts.next().unwrap_or("");
    let Ok(uri) = path.parse::<Uri>() else { return };
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(xr) {
        h.insert("x-r", v);
    }
    if let Ok(v) = HeaderValue::from_str(xs) {
        h.insert("x-s", v);
    }
    let view = RequestView { method: &Method::GET, uri: &uri, headers: &h, authority: host, scheme: "http", random: data.len() as u64 };
    let _ = select(table(), &view);

    let mut t = DomainTable::default();
    let _ = t.insert("*", 0);
    let _ = t.insert(host, 1);
    if !host.contains('*') && !host.is_empty() && host != "*" {
        assert_eq!(t.find(&host.to_ascii_lowercase()), Some(1));
    }
});
