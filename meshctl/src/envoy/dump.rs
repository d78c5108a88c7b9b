//! A proxy's `/config_dump`: the sections of Envoy's `ConfigDump` and the resources in
//! them, each decoded as a typed message and kept next to the JSON the proxy printed.
//!
//! The admin wrappers (`ClustersConfigDump`, `ListenersConfigDump`, ...) are walked as JSON,
//! accepting both proto field names (Envoy, mesh-proxy) and camelCase (proto3 JSON from
//! other tools); only the resources inside them are decoded.

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use prost::{Message, Name};
use serde_json::Value;

use super::{DecodeError, decode};

/// Errors reading a config dump.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("{source_name} is not JSON: {message}")]
    NotJson {
        source_name: String,
        message: String,
    },
    #[error(
        "{source_name} is not an Envoy config dump: it has no \"configs\" list (hint: fetch /config_dump from the proxy's admin port)"
    )]
    NotConfigDump { source_name: String },
    #[error("{kind} {name:?} in the config dump: {source}")]
    Resource {
        kind: &'static str,
        name: String,
        source: DecodeError,
    },
}

/// Where a resource came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The bootstrap's static resources.
    Static,
    /// Received over xDS and in use.
    Active,
    /// Received over xDS and waiting for its dependencies (endpoints, routes, secrets).
    Warming,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Static => "STATIC",
            Status::Active => "ACTIVE",
            Status::Warming => "WARMING",
        }
    }
}

/// One resource of a config dump.
#[derive(Debug, Clone)]
pub struct Entry<M> {
    pub resource: M,
    /// The resource as the proxy printed it (with its `@type`).
    pub raw: Value,
    pub status: Status,
    pub last_updated: Option<String>,
}

/// A resource the proxy rejected (Envoy's `error_state`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub kind: &'static str,
    pub name: String,
    pub details: String,
    pub version: String,
}

/// A whole config dump.
#[derive(Debug, Clone)]
pub struct ConfigDump {
    pub raw: Value,
}

/// `obj[key]`, by proto name or its camelCase form.
pub fn field<'a>(obj: &'a Value, key: &str) -> Option<&'a Value> {
    obj.get(key).or_else(|| obj.get(camel(key)))
}

fn camel(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn str_field(obj: &Value, key: &str) -> String {
    field(obj, key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn items<'a>(obj: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    field(obj, key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn name_of(raw: &Value) -> String {
    ["name", "cluster_name"]
        .iter()
        .find_map(|k| field(raw, k).and_then(Value::as_str))
        .unwrap_or("<unnamed>")
        .to_string()
}

fn entry<M: Message + Name + Default>(
    kind: &'static str,
    raw: &Value,
    wrapper: &Value,
    status: Status,
) -> Result<Entry<M>, DumpError> {
    let resource = decode::<M>(raw).map_err(|source| DumpError::Resource {
        kind,
        name: name_of(raw),
        source,
    })?;
    Ok(Entry {
        resource,
        raw: raw.clone(),
        status,
        last_updated: field(wrapper, "last_updated")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

fn rejected(kind: &'static str, wrapper: &Value, fallback_name: &str) -> Option<Rejected> {
    let err = field(wrapper, "error_state")?;
    let name = field(err, "failed_configuration")
        .map(name_of)
        .filter(|n| n != "<unnamed>")
        .unwrap_or_else(|| fallback_name.to_string());
    Some(Rejected {
        kind,
        name,
        details: str_field(err, "details"),
        version: str_field(err, "version_info"),
    })
}

impl ConfigDump {
    pub fn parse(bytes: &[u8], source_name: &str) -> Result<ConfigDump, DumpError> {
        let raw: Value = serde_json::from_slice(bytes).map_err(|e| DumpError::NotJson {
            source_name: source_name.to_string(),
            message: e.to_string(),
        })?;
        if !raw.get("configs").is_some_and(Value::is_array) {
            return Err(DumpError::NotConfigDump {
                source_name: source_name.to_string(),
            });
        }
        Ok(ConfigDump { raw })
    }

    /// The config whose `@type` is `envoy.admin.v3.<short>`.
    pub fn section(&self, short: &str) -> Option<&Value> {
        let suffix = format!("envoy.admin.v3.{short}");
        items(&self.raw, "configs").find(|c| {
            c.get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with(&suffix))
        })
    }

    /// The bootstrap the proxy started with, as printed.
    pub fn bootstrap_raw(&self) -> Option<&Value> {
        self.section("BootstrapConfigDump")
            .and_then(|s| field(s, "bootstrap"))
    }

    pub fn bootstrap(&self) -> Result<Option<Bootstrap>, DumpError> {
        self.bootstrap_raw()
            .map(|raw| {
                decode::<Bootstrap>(raw).map_err(|source| DumpError::Resource {
                    kind: "bootstrap",
                    name: String::new(),
                    source,
                })
            })
            .transpose()
    }

    /// Static and active clusters (what the proxy routes to), then warming ones.
    pub fn clusters(&self) -> Result<Vec<Entry<Cluster>>, DumpError> {
        let Some(s) = self.section("ClustersConfigDump") else {
            return Ok(vec![]);
        };
        let mut out = Vec::new();
        for (key, status) in [
            ("static_clusters", Status::Static),
            ("dynamic_active_clusters", Status::Active),
            ("dynamic_warming_clusters", Status::Warming),
        ] {
            for w in items(s, key) {
                if let Some(raw) = field(w, "cluster") {
                    out.push(entry("cluster", raw, w, status)?);
                }
            }
        }
        Ok(out)
    }

    /// Static and active listeners, then warming ones.
    pub fn listeners(&self) -> Result<Vec<Entry<Listener>>, DumpError> {
        let Some(s) = self.section("ListenersConfigDump") else {
            return Ok(vec![]);
        };
        let mut out = Vec::new();
        for w in items(s, "static_listeners") {
            if let Some(raw) = field(w, "listener") {
                out.push(entry("listener", raw, w, Status::Static)?);
            }
        }
        for (key, status) in [
            ("active_state", Status::Active),
            ("warming_state", Status::Warming),
        ] {
            for d in items(s, "dynamic_listeners") {
                if let Some(state) = field(d, key)
                    && let Some(raw) = field(state, "listener")
                {
                    out.push(entry("listener", raw, state, status)?);
                }
            }
        }
        Ok(out)
    }

    /// Route configurations loaded over RDS, then static ones (istioctl's order).
    pub fn routes(&self) -> Result<Vec<Entry<RouteConfiguration>>, DumpError> {
        let Some(s) = self.section("RoutesConfigDump") else {
            return Ok(vec![]);
        };
        let mut out = Vec::new();
        for (key, status) in [
            ("dynamic_route_configs", Status::Active),
            ("static_route_configs", Status::Static),
        ] {
            for w in items(s, key) {
                if let Some(raw) = field(w, "route_config") {
                    out.push(entry("route configuration", raw, w, status)?);
                }
            }
        }
        Ok(out)
    }

    /// Endpoints, present only in a dump taken with `?include_eds`.
    pub fn endpoints(&self) -> Result<Option<Vec<Entry<ClusterLoadAssignment>>>, DumpError> {
        let Some(s) = self.section("EndpointsConfigDump") else {
            return Ok(None);
        };
        let mut out = Vec::new();
        for (key, status) in [
            ("static_endpoint_configs", Status::Static),
            ("dynamic_endpoint_configs", Status::Active),
        ] {
            for w in items(s, key) {
                if let Some(raw) = field(w, "endpoint_config") {
                    out.push(entry("cluster load assignment", raw, w, status)?);
                }
            }
        }
        Ok(Some(out))
    }

    /// Secrets (SDS): active, warming and static. Envoy prints them with private keys
    /// redacted; the `Entry::resource` of one without a payload is a `Secret` with only its name.
    pub fn secrets(&self) -> Result<Vec<Entry<Secret>>, DumpError> {
        let Some(s) = self.section("SecretsConfigDump") else {
            return Ok(vec![]);
        };
        let mut out = Vec::new();
        for (key, status) in [
            ("static_secrets", Status::Static),
            ("dynamic_active_secrets", Status::Active),
            ("dynamic_warming_secrets", Status::Warming),
        ] {
            for w in items(s, key) {
                let name = str_field(w, "name");
                match field(w, "secret") {
                    Some(raw) => {
                        let mut e: Entry<Secret> = entry("secret", raw, w, status)?;
                        if e.resource.name.is_empty() {
                            e.resource.name = name;
                        }
                        out.push(e);
                    }
                    None => out.push(Entry {
                        resource: Secret {
                            name,
                            ..Default::default()
                        },
                        raw: Value::Null,
                        status,
                        last_updated: None,
                    }),
                }
            }
        }
        Ok(out)
    }

    /// Every resource the proxy rejected, with Envoy's reason.
    pub fn rejected(&self) -> Vec<Rejected> {
        let mut out = Vec::new();
        let sections = [
            (
                "ClustersConfigDump",
                "cluster",
                &["dynamic_active_clusters", "dynamic_warming_clusters"][..],
            ),
            (
                "ListenersConfigDump",
                "listener",
                &["dynamic_listeners"][..],
            ),
            (
                "RoutesConfigDump",
                "route configuration",
                &["dynamic_route_configs"][..],
            ),
            (
                "EndpointsConfigDump",
                "cluster load assignment",
                &["dynamic_endpoint_configs"][..],
            ),
        ];
        for (section, kind, keys) in sections {
            let Some(s) = self.section(section) else {
                continue;
            };
            for key in keys {
                for w in items(s, key) {
                    let fallback = field(w, "name")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .or_else(|| {
                            ["cluster", "route_config", "endpoint_config"]
                                .iter()
                                .find_map(|k| field(w, k))
                                .map(name_of)
                        })
                        .unwrap_or_default();
                    out.extend(rejected(kind, w, &fallback));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn dump() -> ConfigDump {
        let v = json!({"configs": [
            {"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
             "bootstrap": {"node": {"id": "sidecar~10.0.0.1~a.default~default.svc.cluster.local"}}},
            {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "version_info": "7",
             "static_clusters": [{"cluster": {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "xds", "type": "STATIC"}}],
             "dynamicActiveClusters": [{"versionInfo": "7", "cluster": {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "outbound|80||a.default.svc.cluster.local", "type": "EDS"},
                                        "lastUpdated": "2025-01-01T00:00:00Z"},
                                       {"error_state": {"failed_configuration": {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "bad"},
                                                        "details": "cluster bad: field lb_policy: unsupported", "version_info": "8"}}]},
            {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
             "dynamic_listeners": [{"name": "l", "active_state": {"version_info": "3", "listener": {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", "name": "l"}}},
                                   {"name": "w", "warming_state": {"listener": {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", "name": "w"}}}]}
        ]});
        ConfigDump::parse(&serde_json::to_vec(&v).unwrap(), "test").unwrap()
    }

    #[test]
    fn sections_in_either_field_style() {
        let d = dump();
        let c = d.clusters().unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(
            (c[0].resource.name.as_str(), c[0].status),
            ("xds", Status::Static)
        );
        assert_eq!(c[1].last_updated.as_deref(), Some("2025-01-01T00:00:00Z"));
        assert_eq!(c[1].raw["name"], "outbound|80||a.default.svc.cluster.local");
        let l = d.listeners().unwrap();
        assert_eq!(
            l.iter()
                .map(|e| (e.resource.name.as_str(), e.status))
                .collect::<Vec<_>>(),
            [("l", Status::Active), ("w", Status::Warming)]
        );
        assert!(d.routes().unwrap().is_empty());
        assert!(d.endpoints().unwrap().is_none());
        assert_eq!(
            d.bootstrap().unwrap().unwrap().node.unwrap().id,
            "sidecar~10.0.0.1~a.default~default.svc.cluster.local"
        );
        assert_eq!(
            d.rejected(),
            [Rejected {
                kind: "cluster",
                name: "bad".into(),
                details: "cluster bad: field lb_policy: unsupported".into(),
                version: "8".into()
            }]
        );
    }

    #[test]
    fn not_a_dump() {
        let err = ConfigDump::parse(b"{\"clusters\": []}", "x.json").unwrap_err();
        assert!(
            err.to_string()
                .contains("x.json is not an Envoy config dump"),
            "{err}"
        );
        let err = ConfigDump::parse(b"nope", "x.json").unwrap_err();
        assert!(err.to_string().contains("not JSON"), "{err}");
    }
}
