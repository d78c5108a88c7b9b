//! EnvoyFilter patching on hand-built listeners and route configurations: operation
//! order, matching, merges, and which EnvoyFilters a proxy gets.

use std::net::IpAddr;

use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, filter,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, Route, RouteConfiguration, VirtualHost, route,
};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager::RouteSpecifier,
};
use mesh_api::networking::PatchContext;
use prost::Message;

use super::*;
use crate::model::{Proxy, ProxyKind};
use crate::store::Snapshot;
use crate::translate::filters::HCM;
use crate::translate::util::{any, u32v};

fn snapshot(yaml: &str) -> Snapshot {
    let s = Snapshot::from_yaml("test.yaml", yaml);
    assert!(s.issues().is_empty(), "{:#?}", s.issues());
    s
}

fn sidecar(labels: &[(&str, &str)], ns: &str) -> Proxy {
    let mut p = Proxy::for_test(
        ProxyKind::Sidecar,
        "10.250.0.9".parse::<IpAddr>().expect("ip"),
        "p",
        ns,
    );
    p.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    p
}

fn http_filter(name: &str) -> HttpFilter {
    HttpFilter {
        name: name.to_string(),
        config_type: Some(
            envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType::TypedConfig(
                any(&LocalRateLimit {
                    stat_prefix: name.to_string(),
                    ..Default::default()
                }),
            ),
        ),
        ..Default::default()
    }
}

fn listener(
    name: &str,
    port: u32,
    filters: &[&str],
    inline: Option<RouteConfiguration>,
) -> Listener {
    let hcm = HttpConnectionManager {
        http_filters: filters.iter().map(|f| http_filter(f)).collect(),
        route_specifier: inline.map(RouteSpecifier::RouteConfig),
        ..Default::default()
    };
    Listener {
        name: name.to_string(),
        address: Some(crate::translate::util::socket_address(
            "0.0.0.0",
            port as u16,
        )),
        filter_chains: vec![FilterChain {
            name: format!("{name}-http"),
            filter_chain_match: Some(FilterChainMatch {
                destination_port: Some(u32v(port)),
                ..Default::default()
            }),
            filters: vec![Filter {
                name: HCM.to_string(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn hcm_of(l: &Listener) -> HttpConnectionManager {
    let Some(filter::ConfigType::TypedConfig(a)) = &l.filter_chains[0].filters[0].config_type
    else {
        panic!("typed hcm")
    };
    HttpConnectionManager::decode(a.value.as_slice()).expect("hcm")
}

fn filter_names(l: &Listener) -> Vec<String> {
    hcm_of(l).http_filters.into_iter().map(|f| f.name).collect()
}

const HEAD: &str = "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\n";

fn patches_for<'a>(s: &'a Snapshot, p: &Proxy) -> Vec<&'a CompiledPatch> {
    for_proxy(&s.index().envoy_filters, p, "istio-system")
}

#[test]
fn http_filter_operations_in_istio_order() {
    let s = snapshot(&format!(
        "{HEAD}metadata: {{name: ops, namespace: default}}\nspec:\n  configPatches:\n  \
- applyTo: HTTP_FILTER\n    match: {{listener: {{filterChain: {{filter: {{name: {HCM}, subFilter: {{name: b}}}}}}}}}}\n    patch: {{operation: INSERT_BEFORE, value: {{name: before-b}}}}\n  \
- applyTo: HTTP_FILTER\n    match: {{listener: {{filterChain: {{filter: {{name: {HCM}, subFilter: {{name: b}}}}}}}}}}\n    patch: {{operation: INSERT_AFTER, value: {{name: after-b}}}}\n  \
- applyTo: HTTP_FILTER\n    patch: {{operation: INSERT_FIRST, value: {{name: first}}}}\n  \
- applyTo: HTTP_FILTER\n    patch: {{operation: ADD, value: {{name: last}}}}\n  \
- applyTo: HTTP_FILTER\n    match: {{listener: {{filterChain: {{filter: {{name: {HCM}, subFilter: {{name: c}}}}}}}}}}\n    patch: {{operation: REMOVE}}\n  \
- applyTo: HTTP_FILTER\n    match: {{listener: {{filterChain: {{filter: {{name: {HCM}, subFilter: {{name: a}}}}}}}}}}\n    patch: {{operation: REPLACE, value: {{name: a2}}}}\n  \
- applyTo: HTTP_FILTER\n    match: {{listener: {{filterChain: {{filter: {{name: envoy.filters.network.tcp_proxy}}}}}}}}\n    patch: {{operation: ADD, value: {{name: never}}}}\n"
    ));
    let proxy = sidecar(&[], "default");
    let patches = patches_for(&s, &proxy);
    assert_eq!(patches.len(), 7);
    let mut ls = vec![listener("0.0.0.0_9080", 9080, &["a", "b", "c"], None)];
    apply_listeners(&patches, &mut ls, ProxyKind::Sidecar);
    assert_eq!(
        filter_names(&ls[0]),
        ["first", "a2", "before-b", "b", "after-b", "last"]
    );
}

#[test]
fn merge_keeps_the_target_type_and_merges_fields() {
    let s = snapshot(&format!(
        "{HEAD}metadata: {{name: m, namespace: default}}\nspec:\n  configPatches:\n  \
- applyTo: HTTP_FILTER\n    match: {{listener: {{filterChain: {{filter: {{name: {HCM}, subFilter: {{name: rl}}}}}}}}}}\n    patch:\n      operation: MERGE\n      value:\n        typed_config:\n          '@type': type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit\n          token_bucket: {{max_tokens: 7, fill_interval: 1s}}\n"
    ));
    let mut ls = vec![listener("0.0.0.0_9080", 9080, &["rl"], None)];
    apply_listeners(
        &patches_for(&s, &sidecar(&[], "default")),
        &mut ls,
        ProxyKind::Sidecar,
    );
    let f = &hcm_of(&ls[0]).http_filters[0];
    let Some(envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType::TypedConfig(a)) = &f.config_type else {
        panic!("typed")
    };
    let rl = LocalRateLimit::decode(a.value.as_slice()).expect("decodes");
    // The original stat prefix stays; the bucket comes from the patch.
    assert_eq!(rl.stat_prefix, "rl");
    assert_eq!(rl.token_bucket.expect("bucket").max_tokens, 7);
}

#[test]
fn context_port_and_inbound_inline_routes() {
    let s = snapshot(&format!(
        "{HEAD}metadata: {{name: c, namespace: default}}\nspec:\n  configPatches:\n  \
- applyTo: HTTP_FILTER\n    match: {{context: SIDECAR_INBOUND, listener: {{portNumber: 9080}}}}\n    patch: {{operation: INSERT_FIRST, value: {{name: inbound-9080}}}}\n  \
- applyTo: HTTP_FILTER\n    match: {{context: SIDECAR_OUTBOUND, listener: {{portNumber: 80}}}}\n    patch: {{operation: INSERT_FIRST, value: {{name: outbound-80}}}}\n  \
- applyTo: HTTP_ROUTE\n    match: {{context: SIDECAR_INBOUND, routeConfiguration: {{portNumber: 9080, vhost: {{name: 'inbound|http|9080', route: {{action: ROUTE}}}}}}}}\n    patch: {{operation: MERGE, value: {{name: patched}}}}\n"
    ));
    let inline = RouteConfiguration {
        name: "inbound|9080||".to_string(),
        virtual_hosts: vec![VirtualHost {
            name: "inbound|http|9080".to_string(),
            domains: vec!["*".to_string()],
            routes: vec![
                Route {
                    name: "default".to_string(),
                    action: Some(route::Action::Route(Default::default())),
                    ..Default::default()
                },
                Route {
                    name: "direct".to_string(),
                    action: Some(route::Action::DirectResponse(DirectResponseAction {
                        status: 200,
                        ..Default::default()
                    })),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut ls = vec![
        listener("virtualInbound", 9080, &["router"], Some(inline)),
        listener("0.0.0.0_80", 80, &["router"], None),
        listener("0.0.0.0_9080", 9080, &["router"], None),
    ];
    apply_listeners(
        &patches_for(&s, &sidecar(&[], "default")),
        &mut ls,
        ProxyKind::Sidecar,
    );
    assert_eq!(filter_names(&ls[0]), ["inbound-9080", "router"]);
    assert_eq!(filter_names(&ls[1]), ["outbound-80", "router"]);
    assert_eq!(filter_names(&ls[2]), ["router"]);
    let Some(RouteSpecifier::RouteConfig(rc)) = hcm_of(&ls[0]).route_specifier else {
        panic!("inline routes")
    };
    let names: Vec<&str> = rc.virtual_hosts[0]
        .routes
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["patched", "direct"],
        "only the ROUTE action matched"
    );
}

#[test]
fn route_configuration_patches_by_port_vhost_and_domain() {
    let s = snapshot(&format!(
        "{HEAD}metadata: {{name: r, namespace: default}}\nspec:\n  configPatches:\n  \
- applyTo: VIRTUAL_HOST\n    match: {{routeConfiguration: {{portNumber: 9080, vhost: {{name: 'a:9080'}}}}}}\n    patch: {{operation: REMOVE}}\n  \
- applyTo: VIRTUAL_HOST\n    match: {{routeConfiguration: {{vhost: {{domainName: b}}}}}}\n    patch: {{operation: MERGE, value: {{include_request_attempt_count: true}}}}\n  \
- applyTo: VIRTUAL_HOST\n    match: {{routeConfiguration: {{portNumber: 9080}}}}\n    patch: {{operation: ADD, value: {{name: added, domains: [added]}}}}\n  \
- applyTo: HTTP_ROUTE\n    match: {{routeConfiguration: {{vhost: {{name: 'b:9080', route: {{name: r1}}}}}}}}\n    patch: {{operation: INSERT_BEFORE, value: {{name: r0, direct_response: {{status: 204}}}}}}\n  \
- applyTo: HTTP_ROUTE\n    match: {{routeConfiguration: {{vhost: {{name: 'b:9080'}}}}}}\n    patch: {{operation: ADD, value: {{name: r9, direct_response: {{status: 404}}}}}}\n  \
- applyTo: ROUTE_CONFIGURATION\n    match: {{routeConfiguration: {{name: '80'}}}}\n    patch: {{operation: MERGE, value: {{validate_clusters: true}}}}\n"
    ));
    let vh = |name: &str, domain: &str| VirtualHost {
        name: name.to_string(),
        domains: vec![domain.to_string()],
        routes: vec![Route {
            name: "r1".to_string(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut rc9080 = RouteConfiguration {
        name: "9080".to_string(),
        virtual_hosts: vec![vh("a:9080", "a"), vh("b:9080", "b")],
        ..Default::default()
    };
    let mut rc80 = RouteConfiguration {
        name: "80".to_string(),
        virtual_hosts: vec![vh("b:80", "b")],
        ..Default::default()
    };
    let patches = patches_for(&s, &sidecar(&[], "default"));
    let ports = GatewayPorts::default();
    assert!(apply_route_configuration(
        &patches,
        &mut rc9080,
        PatchContext::SidecarOutbound,
        &ports
    ));
    apply_route_configuration(&patches, &mut rc80, PatchContext::SidecarOutbound, &ports);
    let names: Vec<&str> = rc9080
        .virtual_hosts
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(names, ["b:9080", "added"]);
    assert!(rc9080.virtual_hosts[0].include_request_attempt_count);
    let routes: Vec<&str> = rc9080.virtual_hosts[0]
        .routes
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(routes, ["r0", "r1", "r9"]);
    assert_eq!(rc80.validate_clusters.as_ref().map(|v| v.value), Some(true));
    assert!(
        rc80.virtual_hosts[0].include_request_attempt_count,
        "domain match on port 80 too"
    );
    assert_eq!(rc80.virtual_hosts[0].routes.len(), 1, "b:80 is not b:9080");
}

#[test]
fn gateway_route_port_matches_the_service_port() {
    let s = snapshot(&format!(
        "{HEAD}metadata: {{name: g, namespace: istio-system}}\nspec:\n  configPatches:\n  \
- applyTo: VIRTUAL_HOST\n    match: {{context: GATEWAY, routeConfiguration: {{portNumber: 80}}}}\n    patch: {{operation: MERGE, value: {{include_request_attempt_count: true}}}}\n"
    ));
    let mut gw = Proxy::for_test(
        ProxyKind::Router,
        "10.250.0.100".parse::<IpAddr>().expect("ip"),
        "gw",
        "istio-system",
    );
    gw.labels.insert("istio".into(), "ingressgateway".into());
    let patches = patches_for(&s, &gw);
    let mut rc = RouteConfiguration {
        name: "http.8080".to_string(),
        virtual_hosts: vec![VirtualHost {
            name: "*:80".to_string(),
            ..Default::default()
        }],
        ..Default::default()
    };
    // The gateway listens on 8080 for Service port 80.
    let ports = GatewayPorts([(8080, [80].into())].into());
    assert!(apply_route_configuration(
        &patches,
        &mut rc,
        PatchContext::Gateway,
        &ports
    ));
    assert!(rc.virtual_hosts[0].include_request_attempt_count);
    let mut other = rc.clone();
    other.virtual_hosts[0].include_request_attempt_count = false;
    assert!(!apply_route_configuration(
        &patches,
        &mut other,
        PatchContext::Gateway,
        &GatewayPorts([(8080, [443].into())].into())
    ));
}

#[test]
fn which_filters_a_proxy_gets() {
    let s = snapshot(&format!(
        "{HEAD}metadata: {{name: late, namespace: default}}\nspec:\n  priority: 5\n  configPatches:\n  - {{applyTo: HTTP_FILTER, patch: {{operation: ADD, value: {{name: ns-late}}}}}}\n\
---\n{HEAD}metadata: {{name: early, namespace: default}}\nspec:\n  priority: -5\n  workloadSelector: {{labels: {{app: web}}}}\n  configPatches:\n  - {{applyTo: HTTP_FILTER, patch: {{operation: ADD, value: {{name: ns-early}}}}}}\n\
---\n{HEAD}metadata: {{name: root, namespace: istio-system}}\nspec:\n  priority: 100\n  configPatches:\n  - {{applyTo: HTTP_FILTER, patch: {{operation: ADD, value: {{name: root}}}}}}\n\
---\n{HEAD}metadata: {{name: versioned, namespace: istio-system}}\nspec:\n  configPatches:\n  - applyTo: HTTP_FILTER\n    match: {{proxy: {{proxyVersion: '^1\\.2[0-9].*', metadata: {{MESH: m1}}}}}}\n    patch: {{operation: ADD, value: {{name: versioned}}}}\n\
---\n{HEAD}metadata: {{name: elsewhere, namespace: other}}\nspec:\n  configPatches:\n  - {{applyTo: HTTP_FILTER, patch: {{operation: ADD, value: {{name: other-ns}}}}}}\n"
    ));
    let names = |p: &Proxy| -> Vec<String> {
        patches_for(&s, p)
            .iter()
            .filter_map(|c| c.value.http_filter.as_ref().map(|f| f.name.clone()))
            .collect()
    };
    // Root namespace first, then the proxy's namespace by priority; selectors apply.
    assert_eq!(
        names(&sidecar(&[("app", "web")], "default")),
        ["root", "ns-early", "ns-late"]
    );
    assert_eq!(
        names(&sidecar(&[("app", "db")], "default")),
        ["root", "ns-late"]
    );
    let mut versioned = sidecar(&[], "other");
    versioned.metadata = serde_json::json!({"ISTIO_VERSION": "1.24.0", "MESH": "m1"});
    assert_eq!(names(&versioned), ["versioned", "root", "other-ns"]);
    versioned.metadata = serde_json::json!({"MESH": "m1"});
    assert_eq!(
        names(&versioned),
        ["root", "other-ns"],
        "no version: no match"
    );
}

#[test]
fn unsupported_shapes_are_issues_naming_the_field() {
    let s = Snapshot::from_yaml(
        "test.yaml",
        &format!(
            "{HEAD}metadata: {{name: u, namespace: default}}\nspec:\n  configPatches:\n  \
- applyTo: LISTENER\n    patch: {{operation: ADD, value: {{name: extra}}}}\n  \
- applyTo: HTTP_ROUTE\n    patch: {{operation: REPLACE, value: {{name: x}}}}\n  \
- applyTo: HTTP_FILTER\n    patch: {{operation: ADD, value: {{name: kept}}}}\n"
        ),
    );
    let issues: Vec<String> = s
        .issues()
        .iter()
        .map(|i| format!("{} {}", i.field.clone().unwrap_or_default(), i.message))
        .collect();
    assert!(
        issues.iter().any(|i| i.starts_with("spec.configPatches[0].applyTo applyTo LISTENER is not applied")),
        "{issues:#?}"
    );
    assert!(
        issues.iter().any(|i| i
            .starts_with("spec.configPatches[1].patch.operation operation REPLACE on HTTP_ROUTE")),
        "{issues:#?}"
    );
    // The supported patch of the same EnvoyFilter still applies.
    assert_eq!(patches_for(&s, &sidecar(&[], "default")).len(), 1);
}
