//! Has the mesh converged? Pure checks over the JSON documents a backend fetches:
//! the control plane's `/debug/configz` (does it hold what was applied, and does it report a
//! problem with it), `/debug/syncz` (has every proxy ACKed what it was sent, or NACKed it),
//! and, per proxy, the control plane's `/debug/config_dump?proxyID=` (what it would send
//! now) against the proxy's own `/config_dump?include_eds` (what it runs).
//!
//! The comparison is by resource name and version. Versions are the control plane's
//! content hashes, which delta xDS hands to the proxy per resource, so equal versions mean
//! equal resources, independent of push timing: the check holds exactly when the proxy
//! runs the config that reflects everything the control plane has read. Clusters and
//! listeners (wildcard subscriptions) must match as sets; routes and endpoints are
//! compared for the names the proxy holds, since the control plane generates every route
//! and endpoint set while a proxy subscribes only to those its listeners and clusters use.
//! Anything still warming in the proxy is not converged yet.

use std::collections::BTreeMap;

use serde_json::Value;

/// The NACKs that are current (the proxy rejected the last response of that type it was
/// sent), one line per type and message, naming the proxies (`pod.namespace`) that sent
/// it: the same rejection usually comes from every proxy.
pub fn current_nacks(syncz: &Value) -> Vec<String> {
    let mut by_message: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for p in syncz.as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or("?");
        for (ty, t) in p["types"].as_object().into_iter().flatten() {
            let (Some(nack), Some(sent)) = (t.get("nack"), t.get("sent")) else {
                continue;
            };
            if nack.is_null() || sent.is_null() || nack["nonce"] != sent["nonce"] {
                continue;
            }
            let message = nack["message"].as_str().unwrap_or("").to_string();
            by_message
                .entry((ty.clone(), message))
                .or_default()
                .push(name.to_string());
        }
    }
    by_message
        .into_iter()
        .map(|((ty, message), proxies)| {
            format!(
                "{ty} rejected (NACK) by {}: {message}",
                if proxies.len() == 1 {
                    format!("proxy {}", proxies[0])
                } else {
                    format!("{} proxies ({})", proxies.len(), proxies.join(", "))
                }
            )
        })
        .collect()
}

/// Proxies (by `pod.namespace`) that are not connected, or have a response in flight.
pub fn unsynced(syncz: &Value, proxies: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for want in proxies {
        let entries: Vec<&Value> = syncz
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["name"].as_str() == Some(want))
            .collect();
        if entries.is_empty() {
            out.push(format!(
                "proxy {want} is not connected to the control plane"
            ));
            continue;
        }
        for p in entries {
            for (ty, t) in p["types"].as_object().into_iter().flatten() {
                if t["status"].as_str() == Some("STALE") {
                    out.push(format!("proxy {want}: {ty} sent, not ACKed yet"));
                }
            }
        }
    }
    out
}

/// Whether the control plane's store holds a resource from `origin` (a file) whose
/// description (`ConfigMap ns/name`) ends with `/name`.
pub fn holds(configz: &Value, origin: &str, name: &str) -> bool {
    let suffix = format!("/{name}");
    configz["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| {
            r["origin"].as_str() == Some(origin)
                && r["resource"].as_str().is_some_and(|d| d.ends_with(&suffix))
        })
}

/// The control plane's current config problems whose origin starts with `prefix`.
pub fn config_issues(configz: &Value, prefix: &str) -> Vec<String> {
    configz["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["origin"].as_str().is_some_and(|o| o.starts_with(prefix)))
        .map(|e| {
            let mut s = e["origin"].as_str().unwrap_or("").to_string();
            for k in ["resource", "field", "message"] {
                if let Some(v) = e[k].as_str() {
                    s.push_str(": ");
                    s.push_str(v);
                }
            }
            s
        })
        .collect()
}

/// A field in either spelling: proto names (the proxy) or JSON names (the control plane).
fn field<'a>(v: &'a Value, snake: &str) -> &'a Value {
    if let Some(f) = v.get(snake) {
        return f;
    }
    let mut camel = String::with_capacity(snake.len());
    let mut up = false;
    for c in snake.chars() {
        if c == '_' {
            up = true;
        } else if up {
            camel.push(c.to_ascii_uppercase());
            up = false;
        } else {
            camel.push(c);
        }
    }
    v.get(&camel).unwrap_or(&Value::Null)
}

fn items<'a>(v: &'a Value, snake: &str) -> impl Iterator<Item = &'a Value> {
    field(v, snake).as_array().into_iter().flatten()
}

fn config<'a>(dump: &'a Value, ty: &str) -> Option<&'a Value> {
    dump["configs"].as_array()?.iter().find(|c| {
        c["@type"]
            .as_str()
            .is_some_and(|t| t.ends_with(&format!(".{ty}")))
    })
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// Resources by name with their versions, and what is warming, per type.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub clusters: BTreeMap<String, String>,
    pub listeners: BTreeMap<String, String>,
    pub routes: BTreeMap<String, String>,
    pub endpoints: BTreeMap<String, String>,
    pub warming: Vec<String>,
}

impl Held {
    /// Reads a ConfigDump (Envoy's shape, either JSON spelling).
    pub fn from_dump(dump: &Value) -> Held {
        let mut h = Held::default();
        if let Some(c) = config(dump, "ClustersConfigDump") {
            for e in items(c, "dynamic_active_clusters") {
                let name = s(&field(e, "cluster")["name"]);
                if !name.is_empty() {
                    h.clusters.insert(name, s(field(e, "version_info")));
                }
            }
            for e in items(c, "dynamic_warming_clusters") {
                h.warming
                    .push(format!("cluster {}", s(&field(e, "cluster")["name"])));
            }
        }
        if let Some(c) = config(dump, "ListenersConfigDump") {
            for e in items(c, "dynamic_listeners") {
                let name = s(&e["name"]);
                let active = field(e, "active_state");
                if !active.is_null() {
                    h.listeners
                        .insert(name.clone(), s(field(active, "version_info")));
                }
                if !field(e, "warming_state").is_null() {
                    h.warming.push(format!("listener {name}"));
                }
            }
        }
        if let Some(c) = config(dump, "RoutesConfigDump") {
            for e in items(c, "dynamic_route_configs") {
                let name = s(&field(e, "route_config")["name"]);
                if !name.is_empty() {
                    h.routes.insert(name, s(field(e, "version_info")));
                }
            }
        }
        if let Some(c) = config(dump, "EndpointsConfigDump") {
            for e in items(c, "dynamic_endpoint_configs") {
                let name = s(field(field(e, "endpoint_config"), "cluster_name"));
                let version = s(field(e, "version_info"));
                // Envoy lists every cluster's endpoints here, static ones too, without a
                // version (and EDS ones without one under delta xDS): only versioned
                // entries can be compared; a missing assignment shows as a warming cluster.
                if !name.is_empty() && !version.is_empty() {
                    h.endpoints.insert(name, version);
                }
            }
        }
        h
    }
}

/// How what a proxy holds differs from what the control plane would send it now (empty:
/// converged). Each entry names the type and resource.
pub fn divergence(control: &Held, proxy: &Held) -> Vec<String> {
    let mut out: Vec<String> = proxy
        .warming
        .iter()
        .map(|w| format!("{w} is warming"))
        .collect();
    let exact = |kind: &str, c: &BTreeMap<String, String>, p: &BTreeMap<String, String>| {
        let mut d = Vec::new();
        for (name, v) in c {
            match p.get(name) {
                None => d.push(format!("{kind} {name} not received yet")),
                Some(pv) if pv != v => d.push(format!("{kind} {name} at version {pv}, want {v}")),
                Some(_) => {}
            }
        }
        for name in p.keys().filter(|n| !c.contains_key(*n)) {
            d.push(format!("{kind} {name} still held, no longer sent"));
        }
        d
    };
    let subset = |kind: &str, c: &BTreeMap<String, String>, p: &BTreeMap<String, String>| {
        p.iter()
            .filter_map(|(name, pv)| match c.get(name) {
                None => Some(format!("{kind} {name} still held, no longer sent")),
                Some(v) if v != pv => Some(format!("{kind} {name} at version {pv}, want {v}")),
                Some(_) => None,
            })
            .collect::<Vec<_>>()
    };
    out.extend(exact("cluster", &control.clusters, &proxy.clusters));
    out.extend(exact("listener", &control.listeners, &proxy.listeners));
    out.extend(subset("route", &control.routes, &proxy.routes));
    out.extend(subset("endpoints", &control.endpoints, &proxy.endpoints));
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn proxy_dump(route_version: &str, warming: bool) -> Value {
        let mut clusters = json!({
            "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
            "dynamic_active_clusters": [{"version_info": "c1", "cluster": {"name": "outbound|80||a"}}],
        });
        if warming {
            clusters["dynamic_warming_clusters"] =
                json!([{"version_info": "c2", "cluster": {"name": "outbound|80||b"}}]);
        }
        json!({"configs": [
            {"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump"},
            clusters,
            {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
             "dynamic_listeners": [{"name": "0.0.0.0_80", "active_state": {"version_info": "l1"}}]},
            {"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
             "dynamic_route_configs": [{"version_info": route_version, "route_config": {"name": "80"}}]},
            {"@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
             "dynamic_endpoint_configs": [
                {"version_info": "e1", "endpoint_config": {"cluster_name": "outbound|80||a"}},
                {"endpoint_config": {"cluster_name": "BlackHoleCluster"}},
             ]},
        ]})
    }

    /// The control plane's dump in JSON names, with an extra route and endpoints the proxy
    /// does not subscribe to.
    fn control_dump() -> Value {
        json!({"configs": [
            {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
             "dynamicActiveClusters": [{"versionInfo": "c1", "cluster": {"name": "outbound|80||a"}}]},
            {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
             "dynamicListeners": [{"name": "0.0.0.0_80", "activeState": {"versionInfo": "l1"}}]},
            {"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
             "dynamicRouteConfigs": [{"versionInfo": "r2", "routeConfig": {"name": "80"}},
                                     {"versionInfo": "r9", "routeConfig": {"name": "9080"}}]},
            {"@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
             "dynamicEndpointConfigs": [{"versionInfo": "e1", "endpointConfig": {"clusterName": "outbound|80||a"}},
                                        {"versionInfo": "e7", "endpointConfig": {"clusterName": "outbound|9080||b"}}]},
        ]})
    }

    #[test]
    fn converged_when_every_held_resource_has_the_wanted_version() {
        let control = Held::from_dump(&control_dump());
        assert_eq!(control.routes.len(), 2);
        let proxy = Held::from_dump(&proxy_dump("r2", false));
        assert_eq!(divergence(&control, &proxy), Vec::<String>::new());
    }

    #[test]
    fn an_old_route_or_warming_cluster_is_not_converged() {
        let control = Held::from_dump(&control_dump());
        let d = divergence(&control, &Held::from_dump(&proxy_dump("r1", false)));
        assert_eq!(d, vec!["route 80 at version r1, want r2".to_string()]);
        let d = divergence(&control, &Held::from_dump(&proxy_dump("r2", true)));
        assert_eq!(d, vec!["cluster outbound|80||b is warming".to_string()]);
    }

    #[test]
    fn missing_and_leftover_clusters_are_named() {
        let mut control = Held::from_dump(&control_dump());
        control
            .clusters
            .insert("outbound|90||c".into(), "c3".into());
        let mut proxy = Held::from_dump(&proxy_dump("r2", false));
        proxy.listeners.insert("0.0.0.0_70".into(), "l0".into());
        let d = divergence(&control, &proxy);
        assert_eq!(
            d,
            vec![
                "cluster outbound|90||c not received yet".to_string(),
                "listener 0.0.0.0_70 still held, no longer sent".to_string(),
            ]
        );
    }

    #[test]
    fn nacks_count_only_for_the_response_last_sent() {
        let syncz = json!([
            {"name": "sleep.default", "types": {
                "LDS": {"status": "STALE", "sent": {"nonce": "4"}, "nack": {"nonce": "4", "message": "Listener \"x\": bad"}},
                "CDS": {"status": "SYNCED", "sent": {"nonce": "6"}, "nack": {"nonce": "3", "message": "old"}},
                "EDS": {"status": "NOT SENT", "sent": null, "nack": null},
            }},
            {"name": "a.default", "types": {
                "LDS": {"status": "STALE", "sent": {"nonce": "2"}, "nack": {"nonce": "2", "message": "Listener \"x\": bad"}},
                "CDS": {"status": "STALE", "sent": {"nonce": "3"}, "nack": {"nonce": "3", "message": "other"}},
            }},
        ]);
        assert_eq!(
            current_nacks(&syncz),
            vec![
                "CDS rejected (NACK) by proxy a.default: other".to_string(),
                "LDS rejected (NACK) by 2 proxies (sleep.default, a.default): Listener \"x\": bad"
                    .to_string(),
            ]
        );
        assert_eq!(
            unsynced(
                &syncz,
                &[
                    "sleep.default".to_string(),
                    "catalog-v1.default".to_string()
                ]
            ),
            vec![
                "proxy sleep.default: LDS sent, not ACKed yet".to_string(),
                "proxy catalog-v1.default is not connected to the control plane".to_string(),
            ]
        );
    }

    #[test]
    fn configz_resources_and_issues() {
        let configz = json!({
            "version": 7,
            "resources": [{"origin": "/c/e2e-sync.yaml", "resource": "ConfigMap mesh-e2e/sync-3"}],
            "errors": [
                {"origin": "/c/user/virtualservice.default.r.yaml", "resource": "VirtualService default/r", "field": "spec.http[0]", "message": "unknown subset v9"},
                {"origin": "/c/pods/x.yaml", "resource": null, "field": null, "message": "other"},
            ],
        });
        assert!(holds(&configz, "/c/e2e-sync.yaml", "sync-3"));
        assert!(!holds(&configz, "/c/e2e-sync.yaml", "sync-4"));
        assert!(!holds(&configz, "/c/other.yaml", "sync-3"));
        assert_eq!(
            config_issues(&configz, "/c/user/"),
            vec![
                "/c/user/virtualservice.default.r.yaml: VirtualService default/r: spec.http[0]: unknown subset v9"
                    .to_string()
            ]
        );
    }
}
