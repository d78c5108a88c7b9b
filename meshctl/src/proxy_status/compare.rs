//! `proxy-status <pod>`: the config the control plane would send the proxy now
//! (`/debug/config_dump?proxyID=`) against what the proxy holds (`/config_dump`),
//! per type, as istioctl compares them: clusters, listeners and routes by name and
//! content.
//!
//! Both sides are normalised before comparing (each resource decoded through Envoy's
//! descriptors and printed again with proto field names, defaults omitted), so the
//! control plane's camelCase and the proxy's snake_case JSON compare equal when the
//! messages are.

use std::collections::BTreeMap;

use prost_reflect::{DeserializeOptions, DynamicMessage, SerializeOptions};
use serde_json::Value;

use crate::envoy::dump::{ConfigDump, DumpError, Entry, Status};

/// The comparison of one type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeDiff {
    pub kind: &'static str,
    pub only_control: Vec<String>,
    pub only_proxy: Vec<String>,
    /// Name and the first differing field (`path: control X, proxy Y`).
    pub differ: Vec<(String, String)>,
}

impl TypeDiff {
    pub fn matches(&self) -> bool {
        self.only_control.is_empty() && self.only_proxy.is_empty() && self.differ.is_empty()
    }

    pub fn render(&self) -> String {
        let title = format!("{}{}", self.kind[..1].to_uppercase(), &self.kind[1..]);
        if self.matches() {
            return format!("{title} Match\n");
        }
        let mut out = format!("{title} Don't Match\n");
        for n in &self.only_control {
            out.push_str(&format!(
                "  - sent by the control plane, missing in the proxy: {n}\n"
            ));
        }
        for n in &self.only_proxy {
            out.push_str(&format!(
                "  - in the proxy, no longer sent by the control plane: {n}\n"
            ));
        }
        for (n, d) in &self.differ {
            out.push_str(&format!("  - differs: {n}: {d}\n"));
        }
        out
    }
}

/// Normalised JSON of a resource, by the message type its `@type` names.
fn canonical(raw: &Value) -> Value {
    let Some(name) = raw
        .get("@type")
        .and_then(Value::as_str)
        .and_then(|u| u.rsplit_once('/'))
        .map(|(_, n)| n)
    else {
        return raw.clone();
    };
    let pool = mesh_api::envoy_json::descriptor_pool();
    let Some(desc) = pool.get_message_by_name(name) else {
        return raw.clone();
    };
    let mut body = raw.clone();
    if let Value::Object(m) = &mut body {
        m.remove("@type");
    }
    let de = DeserializeOptions::new().deny_unknown_fields(false);
    let Ok(msg) = DynamicMessage::deserialize_with_options(desc, body, &de) else {
        return raw.clone();
    };
    let ser = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true);
    msg.serialize_with_options(serde_json::value::Serializer, &ser)
        .unwrap_or_else(|_| raw.clone())
}

fn short(v: Option<&Value>) -> String {
    let s = v.map_or_else(|| "absent".to_string(), Value::to_string);
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(57).collect::<String>())
    } else {
        s
    }
}

/// The first path where `a` and `b` differ, with both values.
pub fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(l), Some(r)) => first_difference(l, r, &p),
                    (l, r) => Some(format!("{p}: control {}, proxy {}", short(l), short(r))),
                }
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (l, r))| first_difference(l, r, &format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!(
            "{}: control {}, proxy {}",
            if path.is_empty() {
                "(whole resource)"
            } else {
                path
            },
            short(Some(a)),
            short(Some(b))
        )),
    }
}

fn by_name<M>(entries: Vec<Entry<M>>, name: impl Fn(&M) -> String) -> BTreeMap<String, Value> {
    entries
        .into_iter()
        .filter(|e| e.status != Status::Static)
        .map(|e| (name(&e.resource), canonical(&e.raw)))
        .collect()
}

fn diff(
    kind: &'static str,
    control: BTreeMap<String, Value>,
    proxy: BTreeMap<String, Value>,
) -> TypeDiff {
    let mut d = TypeDiff {
        kind,
        only_control: vec![],
        only_proxy: vec![],
        differ: vec![],
    };
    for (name, c) in &control {
        match proxy.get(name) {
            None => d.only_control.push(name.clone()),
            Some(p) => {
                if let Some(what) = first_difference(c, p, "") {
                    d.differ.push((name.clone(), what));
                }
            }
        }
    }
    d.only_proxy = proxy
        .keys()
        .filter(|n| !control.contains_key(*n))
        .cloned()
        .collect();
    d
}

/// Clusters, listeners and routes compared (EDS is left out, as istioctl does: endpoints
/// change too often for a snapshot to mean much).
pub fn compare(control: &ConfigDump, proxy: &ConfigDump) -> Result<Vec<TypeDiff>, DumpError> {
    Ok(vec![
        diff(
            "clusters",
            by_name(control.clusters()?, |c| c.name.clone()),
            by_name(proxy.clusters()?, |c| c.name.clone()),
        ),
        diff(
            "listeners",
            by_name(control.listeners()?, |l| l.name.clone()),
            by_name(proxy.listeners()?, |l| l.name.clone()),
        ),
        diff(
            "routes",
            by_name(control.routes()?, |r| r.name.clone()),
            by_name(proxy.routes()?, |r| r.name.clone()),
        ),
    ])
}

/// When the proxy last loaded a route configuration over RDS.
pub fn rds_last_loaded(proxy: &ConfigDump) -> Option<String> {
    proxy
        .routes()
        .ok()?
        .into_iter()
        .filter_map(|e| e.last_updated)
        .max()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn dump(clusters: Value) -> ConfigDump {
        let v = json!({"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "dynamic_active_clusters": clusters}]});
        ConfigDump::parse(&serde_json::to_vec(&v).unwrap(), "t").unwrap()
    }

    #[test]
    fn camel_and_snake_case_compare_equal_and_differences_are_located() {
        let control = dump(json!([
            {"cluster": {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "a", "connectTimeout": "10s", "type": "EDS"}},
            {"cluster": {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "b", "connectTimeout": "1s"}},
            {"cluster": {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "new"}}
        ]));
        let proxy = dump(json!([
            {"cluster": {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "a", "connect_timeout": "10s", "type": "EDS"}},
            {"cluster": {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "b", "connect_timeout": "2s"}},
            {"cluster": {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "old"}}
        ]));
        let d = &compare(&control, &proxy).unwrap()[0];
        assert_eq!(d.only_control, ["new"]);
        assert_eq!(d.only_proxy, ["old"]);
        assert_eq!(
            d.differ,
            [(
                "b".to_string(),
                "connect_timeout: control \"1s\", proxy \"2s\"".to_string()
            )]
        );
        assert!(d.render().starts_with("Clusters Don't Match\n"));
        let same = compare(&control, &control).unwrap();
        assert!(same.iter().all(TypeDiff::matches));
        assert_eq!(same[1].render(), "Listeners Match\n");
    }
}
