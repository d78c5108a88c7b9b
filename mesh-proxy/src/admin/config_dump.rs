//! `/config_dump`: Envoy's `ConfigDump` built from the raw resources the xDS client
//! accepted (with versions, last-updated times, warming state and the last rejected
//! version as `error_state`), printed as Envoy prints it (proto field names, `@type`
//! on every `Any`), with Envoy's `?resource=` and `?mask=` filters.

use std::time::SystemTime;

use envoy_types::pb::{
    envoy::{
        admin::v3::{
            BootstrapConfigDump, ClientResourceStatus, ClustersConfigDump, ConfigDump,
            EndpointsConfigDump, ListenersConfigDump, RoutesConfigDump, UpdateFailureState,
            clusters_config_dump, endpoints_config_dump, listeners_config_dump, routes_config_dump,
        },
        config::{
            bootstrap::v3::{Admin, Bootstrap, bootstrap::DynamicResources},
            core::v3::{
                AggregatedConfigSource, ApiConfigSource, ApiVersion, ConfigSource,
                api_config_source::ApiType, config_source,
            },
        },
    },
    google::protobuf::{Any, Timestamp},
};
use prost::{Message, Name};
use prost_reflect::{DynamicMessage, SerializeOptions};
use serde_json::{Map, Value};

use crate::xds::{NodeInfo, TypeUrl, dump::DumpState};

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error(
        "unknown resource {0:?} (try dynamic_active_clusters, dynamic_listeners, dynamic_route_configs, dynamic_endpoint_configs)"
    )]
    UnknownResource(String),
    #[error("cannot render {0}: {1}")]
    Render(String, String),
    #[error("{0}")]
    Mask(String),
}

fn ts(t: SystemTime) -> Option<Timestamp> {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    Some(Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    })
}

fn pack<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn failure(r: &crate::xds::dump::Rejected) -> UpdateFailureState {
    UpdateFailureState {
        failed_configuration: Some(r.resource.clone()),
        last_update_attempt: ts(r.last_update_attempt),
        details: r.details.clone(),
        version_info: r.version.clone(),
    }
}

fn ads_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

/// Builds the full ConfigDump message.
pub fn build(
    dump: &DumpState,
    node: &NodeInfo,
    xds_address: &str,
    delta: bool,
    include_eds: bool,
    started: SystemTime,
) -> ConfigDump {
    let bootstrap = BootstrapConfigDump {
        bootstrap: Some(Bootstrap {
            node: Some(node.to_proto()),
            dynamic_resources: Some(DynamicResources {
                ads_config: Some(ApiConfigSource {
                    api_type: if delta {
                        ApiType::DeltaGrpc
                    } else {
                        ApiType::Grpc
                    } as i32,
                    transport_api_version: ApiVersion::V3 as i32,
                    cluster_names: vec![xds_address.to_string()],
                    ..Default::default()
                }),
                cds_config: Some(ads_source()),
                lds_config: Some(ads_source()),
                ..Default::default()
            }),
            admin: Some(Admin::default()),
            ..Default::default()
        }),
        last_updated: ts(started),
    };
    let (warming_clusters, warming_listeners) = dump.warming();

    let cds = dump.get(TypeUrl::Cluster);
    let mut clusters = ClustersConfigDump {
        version_info: cds.version_info.clone(),
        ..Default::default()
    };
    for (name, s) in &cds.resources {
        let dc = clusters_config_dump::DynamicCluster {
            version_info: s.version.clone(),
            cluster: Some(s.resource.clone()),
            last_updated: ts(s.last_updated),
            error_state: cds.rejected.get(name).map(failure),
            client_status: if cds.rejected.contains_key(name) {
                ClientResourceStatus::Nacked
            } else {
                ClientResourceStatus::Acked
            } as i32,
        };
        if warming_clusters.contains(name) {
            clusters.dynamic_warming_clusters.push(dc);
        } else {
            clusters.dynamic_active_clusters.push(dc);
        }
    }
    for (name, r) in &cds.rejected {
        if !cds.resources.contains_key(name) {
            clusters
                .dynamic_active_clusters
                .push(clusters_config_dump::DynamicCluster {
                    version_info: String::new(),
                    cluster: None,
                    last_updated: None,
                    error_state: Some(failure(r)),
                    client_status: ClientResourceStatus::Nacked as i32,
                });
        }
    }

    let lds = dump.get(TypeUrl::Listener);
    let mut listeners = ListenersConfigDump {
        version_info: lds.version_info.clone(),
        ..Default::default()
    };
    let names: std::collections::BTreeSet<&String> =
        lds.resources.keys().chain(lds.rejected.keys()).collect();
    for name in names {
        let state = lds
            .resources
            .get(name)
            .map(|s| listeners_config_dump::DynamicListenerState {
                version_info: s.version.clone(),
                listener: Some(s.resource.clone()),
                last_updated: ts(s.last_updated),
            });
        let warming = warming_listeners.contains(name);
        listeners
            .dynamic_listeners
            .push(listeners_config_dump::DynamicListener {
                name: name.clone(),
                active_state: if warming { None } else { state.clone() },
                warming_state: if warming { state } else { None },
                draining_state: None,
                error_state: lds.rejected.get(name).map(failure),
                client_status: if lds.rejected.contains_key(name) {
                    ClientResourceStatus::Nacked
                } else {
                    ClientResourceStatus::Acked
                } as i32,
            });
    }

    let rds = dump.get(TypeUrl::RouteConfiguration);
    let mut routes = RoutesConfigDump::default();
    for (name, s) in &rds.resources {
        routes
            .dynamic_route_configs
            .push(routes_config_dump::DynamicRouteConfig {
                version_info: s.version.clone(),
                route_config: Some(s.resource.clone()),
                last_updated: ts(s.last_updated),
                error_state: rds.rejected.get(name).map(failure),
                client_status: if rds.rejected.contains_key(name) {
                    ClientResourceStatus::Nacked
                } else {
                    ClientResourceStatus::Acked
                } as i32,
            });
    }

    let mut configs = vec![pack(&bootstrap), pack(&clusters)];
    if include_eds {
        let eds = dump.get(TypeUrl::ClusterLoadAssignment);
        let mut endpoints = EndpointsConfigDump::default();
        for (name, s) in &eds.resources {
            endpoints
                .dynamic_endpoint_configs
                .push(endpoints_config_dump::DynamicEndpointConfig {
                    version_info: s.version.clone(),
                    endpoint_config: Some(s.resource.clone()),
                    last_updated: ts(s.last_updated),
                    error_state: eds.rejected.get(name).map(failure),
                    client_status: if eds.rejected.contains_key(name) {
                        ClientResourceStatus::Nacked
                    } else {
                        ClientResourceStatus::Acked
                    } as i32,
                });
        }
        configs.push(pack(&endpoints));
    }
    configs.push(pack(&listeners));
    configs.push(pack(&routes));
    ConfigDump { configs }
}

/// Renders a message as Envoy's JSON: proto field names (Envoy's admin output is
/// snake_case), defaults omitted, `@type` on every `Any`.
pub fn to_json<M: Message + Name>(m: &M) -> Result<Value, DumpError> {
    render(m, true)
}

/// Like [`to_json`] but printing default values too (Envoy's `/server_info` does).
pub fn to_json_with_defaults<M: Message + Name>(m: &M) -> Result<Value, DumpError> {
    render(m, false)
}

fn render<M: Message + Name>(m: &M, skip_defaults: bool) -> Result<Value, DumpError> {
    let name = M::full_name();
    let desc = mesh_api::envoy_json::descriptor_pool()
        .get_message_by_name(&name)
        .ok_or_else(|| DumpError::Render(name.clone(), "not in the descriptor pool".into()))?;
    let dynamic = DynamicMessage::decode(desc, m.encode_to_vec().as_slice())
        .map_err(|e| DumpError::Render(name.clone(), e.to_string()))?;
    let opts = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(skip_defaults);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &opts)
        .map_err(|e| DumpError::Render(name, e.to_string()))
}

/// Element types of the repeated fields `?resource=` can select.
const RESOURCES: &[(&str, &str)] = &[
    (
        "static_clusters",
        "envoy.admin.v3.ClustersConfigDump.StaticCluster",
    ),
    (
        "dynamic_active_clusters",
        "envoy.admin.v3.ClustersConfigDump.DynamicCluster",
    ),
    (
        "dynamic_warming_clusters",
        "envoy.admin.v3.ClustersConfigDump.DynamicCluster",
    ),
    (
        "static_listeners",
        "envoy.admin.v3.ListenersConfigDump.StaticListener",
    ),
    (
        "dynamic_listeners",
        "envoy.admin.v3.ListenersConfigDump.DynamicListener",
    ),
    (
        "static_route_configs",
        "envoy.admin.v3.RoutesConfigDump.StaticRouteConfig",
    ),
    (
        "dynamic_route_configs",
        "envoy.admin.v3.RoutesConfigDump.DynamicRouteConfig",
    ),
    (
        "static_endpoint_configs",
        "envoy.admin.v3.EndpointsConfigDump.StaticEndpointConfig",
    ),
    (
        "dynamic_endpoint_configs",
        "envoy.admin.v3.EndpointsConfigDump.DynamicEndpointConfig",
    ),
];

/// Applies `?resource=` and `?mask=` to the rendered dump, as Envoy does: `resource`
/// lists the elements of that repeated field from every config (each with its `@type`);
/// `mask` keeps only the named field paths of each config (or of each resource), and
/// configs whose type has none of the paths are left out. Paths are checked against
/// the message descriptors: a path ending at an `Any` is an error, as in Envoy.
pub fn filter(dump: Value, resource: Option<&str>, mask: Option<&str>) -> Result<Value, DumpError> {
    let configs = dump
        .get("configs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let paths: Option<Vec<Vec<&str>>> = mask.map(|m| {
        m.split(',')
            .filter(|p| !p.is_empty())
            .map(|p| p.split('.').collect())
            .collect()
    });
    let mut out = Vec::new();
    match resource {
        Some(r) => {
            let (_, ty) = RESOURCES
                .iter()
                .find(|(n, _)| *n == r)
                .ok_or_else(|| DumpError::UnknownResource(r.to_string()))?;
            if let (Some(paths), Some(m)) = (&paths, mask)
                && !paths.iter().all(|p| valid_path(ty, p))
            {
                return Err(DumpError::Mask(format!(
                    "FieldMask paths: {m:?} could not be successfully used."
                )));
            }
            for c in &configs {
                for item in c.get(r).and_then(Value::as_array).into_iter().flatten() {
                    let mut m = Map::new();
                    m.insert(
                        "@type".into(),
                        Value::String(format!("type.googleapis.com/{ty}")),
                    );
                    if let Value::Object(fields) = item {
                        m.extend(fields.clone());
                    }
                    let v = Value::Object(m);
                    out.push(match &paths {
                        Some(p) => apply_mask(&v, p),
                        None => v,
                    });
                }
            }
        }
        None => {
            for c in configs {
                match (&paths, mask) {
                    (Some(p), Some(m)) => {
                        let ty = c
                            .get("@type")
                            .and_then(Value::as_str)
                            .and_then(|t| t.rsplit('/').next())
                            .unwrap_or_default();
                        if p.iter().all(|p| valid_path(ty, p)) {
                            out.push(apply_mask(&c, p));
                        }
                        let _ = m;
                    }
                    _ => out.push(c),
                }
            }
            if let (Some(m), true) = (mask, out.is_empty()) {
                return Err(DumpError::Mask(format!(
                    "FieldMask {m} could not be successfully applied to any configs."
                )));
            }
        }
    }
    let mut root = Map::new();
    root.insert("configs".into(), Value::Array(out));
    Ok(Value::Object(root))
}

/// Whether `path` names fields of message `ty`; it may continue into an `Any` (checked
/// against the actual type when trimming) but not end at one.
fn valid_path(ty: &str, path: &[&str]) -> bool {
    let Some(mut desc) = mesh_api::envoy_json::descriptor_pool().get_message_by_name(ty) else {
        return false;
    };
    for (i, seg) in path.iter().enumerate() {
        let Some(field) = desc.get_field_by_name(seg) else {
            return false;
        };
        let last = i + 1 == path.len();
        match field.kind() {
            prost_reflect::Kind::Message(m) if m.full_name() == "google.protobuf.Any" => {
                return !last;
            }
            prost_reflect::Kind::Message(m) => desc = m,
            _ => return last,
        }
    }
    true
}

/// Keeps the masked paths, and `@type` wherever an object carries one.
fn apply_mask(v: &Value, paths: &[Vec<&str>]) -> Value {
    let Value::Object(m) = v else {
        return v.clone();
    };
    let mut out = Map::new();
    if let Some(t) = m.get("@type") {
        out.insert("@type".into(), t.clone());
    }
    for p in paths {
        let Some((first, rest)) = p.split_first() else {
            continue;
        };
        let Some(child) = m.get(*first) else { continue };
        let value = if rest.is_empty() {
            child.clone()
        } else {
            let sub = [rest.to_vec()];
            match child {
                Value::Array(a) => Value::Array(a.iter().map(|x| apply_mask(x, &sub)).collect()),
                other => apply_mask(other, &sub),
            }
        };
        match (out.get_mut(*first), value) {
            (Some(Value::Object(existing)), Value::Object(new)) => existing.extend(new),
            (Some(Value::Array(existing)), Value::Array(new)) if existing.len() == new.len() => {
                for (e, n) in existing.iter_mut().zip(new) {
                    if let (Value::Object(e), Value::Object(n)) = (e, n) {
                        e.extend(n);
                    }
                }
            }
            (_, value) => {
                out.insert((*first).to_string(), value);
            }
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn resource_and_mask() {
        let dump = json!({"configs": [
            {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "version_info": "3",
             "dynamic_active_clusters": [{"version_info": "3", "cluster": {"name": "a", "type": "EDS"}}]},
            {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "version_info": "1"}
        ]});
        let r = filter(dump.clone(), Some("dynamic_active_clusters"), None).unwrap();
        assert_eq!(
            r["configs"][0]["@type"],
            "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.DynamicCluster"
        );
        assert_eq!(r["configs"][0]["cluster"]["name"], "a");
        let r = filter(
            dump.clone(),
            Some("dynamic_active_clusters"),
            Some("cluster.name"),
        )
        .unwrap();
        assert_eq!(
            r["configs"][0],
            json!({"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.DynamicCluster", "cluster": {"name": "a"}})
        );
        assert!(
            filter(
                dump.clone(),
                Some("dynamic_active_clusters"),
                Some("cluster")
            )
            .is_err(),
            "ends at an Any"
        );
        let r = filter(dump.clone(), None, Some("version_info")).unwrap();
        assert_eq!(
            r["configs"][1],
            json!({"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "version_info": "1"})
        );
        assert!(filter(dump.clone(), None, Some("no_such_field")).is_err());
        assert!(filter(dump, Some("nope"), None).is_err());
    }
}
