//! Envoy's canonical JSON for Envoy's protobuf messages.
//!
//! Users read Envoy config as the proto3 JSON mapping Envoy prints in `/config_dump`
//! (camelCase field names, `@type` on every `Any`, durations as `"0.500s"`). The messages
//! themselves come from `envoy-types`; this module holds a descriptor pool compiled at build
//! time from the `.proto` files that crate ships, and converts through `prost-reflect`, so
//! every field (including those nested inside `Any`-typed filter configs) is printed the way
//! Envoy prints it without any hand-written serializer.

use std::sync::OnceLock;

use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::Value;

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));

/// Errors turning Envoy messages into or out of JSON.
#[derive(Debug, thiserror::Error)]
pub enum EnvoyJsonError {
    #[error("unknown message type {0:?}: it is not among the Envoy protos this build knows")]
    UnknownType(String),
    #[error("type url {0:?} has no '/' separating the host from the message name")]
    BadTypeUrl(String),
    #[error("decoding {type_name}: {source}")]
    Decode {
        type_name: String,
        source: prost::DecodeError,
    },
    #[error("converting {type_name} to JSON: {message}")]
    Serialize { type_name: String, message: String },
    #[error("parsing {type_name} from JSON: {message}")]
    Deserialize { type_name: String, message: String },
}

/// The pool of every Envoy message this build can print (see `build.rs` for the list).
pub fn descriptor_pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(DESCRIPTORS).expect("the embedded descriptor set is valid")
    })
}

fn type_name_of(type_url: &str) -> Result<&str, EnvoyJsonError> {
    type_url
        .rsplit_once('/')
        .map(|(_, name)| name)
        .ok_or_else(|| EnvoyJsonError::BadTypeUrl(type_url.to_string()))
}

/// Which field names to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldNames {
    /// proto3's canonical JSON names (`filterChains`): what Envoy accepts in config files and
    /// what golden files use.
    Json,
    /// The names in the `.proto` files (`filter_chains`): what Envoy's admin `/config_dump`
    /// prints, so dumps from our proxy and control plane look like Envoy's.
    Proto,
}

fn options(names: FieldNames) -> SerializeOptions {
    // Defaults are omitted, as Envoy does.
    SerializeOptions::new()
        .use_proto_field_name(names == FieldNames::Proto)
        .skip_default_fields(true)
}

fn dynamic_to_json(
    message: &DynamicMessage,
    type_name: &str,
    names: FieldNames,
) -> Result<Value, EnvoyJsonError> {
    message
        .serialize_with_options(serde_json::value::Serializer, &options(names))
        .map_err(|e| EnvoyJsonError::Serialize {
            type_name: type_name.to_string(),
            message: e.to_string(),
        })
}

/// An `Any` as canonical JSON: the message's fields plus `"@type": "<type url>"`.
pub fn any_to_json(any: &Any) -> Result<Value, EnvoyJsonError> {
    any_to_json_with(any, FieldNames::Json)
}

/// An `Any` as JSON with the chosen field names.
pub fn any_to_json_with(any: &Any, names: FieldNames) -> Result<Value, EnvoyJsonError> {
    let type_name = type_name_of(&any.type_url)?;
    let descriptor = descriptor_pool()
        .get_message_by_name(type_name)
        .ok_or_else(|| EnvoyJsonError::UnknownType(type_name.to_string()))?;
    let message = DynamicMessage::decode(descriptor, any.value.as_slice()).map_err(|source| {
        EnvoyJsonError::Decode {
            type_name: type_name.to_string(),
            source,
        }
    })?;
    let mut json = dynamic_to_json(&message, type_name, names)?;
    if let Value::Object(map) = &mut json {
        // `@type` first, as Envoy prints it.
        let mut with_type = serde_json::Map::with_capacity(map.len() + 1);
        with_type.insert("@type".into(), Value::String(any.type_url.clone()));
        with_type.extend(std::mem::take(map));
        *map = with_type;
    }
    Ok(json)
}

/// A typed Envoy message (from `envoy-types`) as canonical JSON, without `@type`.
pub fn message_to_json<M: Message + Name>(message: &M) -> Result<Value, EnvoyJsonError> {
    message_to_json_with(message, FieldNames::Json)
}

/// A typed Envoy message as JSON with the chosen field names, without `@type`.
pub fn message_to_json_with<M: Message + Name>(
    message: &M,
    names: FieldNames,
) -> Result<Value, EnvoyJsonError> {
    let type_name = M::full_name();
    let descriptor = descriptor_pool()
        .get_message_by_name(&type_name)
        .ok_or_else(|| EnvoyJsonError::UnknownType(type_name.clone()))?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice()).map_err(
        |source| EnvoyJsonError::Decode {
            type_name: type_name.clone(),
            source,
        },
    )?;
    dynamic_to_json(&dynamic, &type_name, names)
}

/// Parses Envoy's JSON (or YAML turned into JSON) into a typed message. Nested `Any`s
/// carry their `@type`, exactly as in an Envoy config file.
pub fn message_from_json<M: Message + Name + Default>(value: &Value) -> Result<M, EnvoyJsonError> {
    let type_name = M::full_name();
    let descriptor = descriptor_pool()
        .get_message_by_name(&type_name)
        .ok_or_else(|| EnvoyJsonError::UnknownType(type_name.clone()))?;
    let dynamic = DynamicMessage::deserialize(descriptor, value).map_err(|e| {
        EnvoyJsonError::Deserialize {
            type_name: type_name.clone(),
            message: e.to_string(),
        }
    })?;
    M::decode(dynamic.encode_to_vec().as_slice())
        .map_err(|source| EnvoyJsonError::Decode { type_name, source })
}

/// Parses Envoy JSON with an `@type` into an `Any`.
pub fn any_from_json(value: &Value) -> Result<Any, EnvoyJsonError> {
    let type_url = value
        .get("@type")
        .and_then(Value::as_str)
        .ok_or_else(|| EnvoyJsonError::BadTypeUrl(String::new()))?
        .to_string();
    let type_name = type_name_of(&type_url)?;
    let descriptor = descriptor_pool()
        .get_message_by_name(type_name)
        .ok_or_else(|| EnvoyJsonError::UnknownType(type_name.to_string()))?;
    let mut body = value.clone();
    if let Value::Object(map) = &mut body {
        map.remove("@type");
    }
    let dynamic = DynamicMessage::deserialize(descriptor, &body).map_err(|e| {
        EnvoyJsonError::Deserialize {
            type_name: type_name.to_string(),
            message: e.to_string(),
        }
    })?;
    Ok(Any {
        type_url,
        value: dynamic.encode_to_vec(),
    })
}

/// Wraps a typed message in an `Any` with Envoy's `type.googleapis.com/` URL.
pub fn to_any<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
        TcpProxy, tcp_proxy,
    };
    use serde_json::json;

    #[test]
    fn type_urls_match_envoys() {
        assert_eq!(
            Cluster::type_url(),
            "type.googleapis.com/envoy.config.cluster.v3.Cluster"
        );
    }

    #[test]
    fn nested_any_is_printed_with_its_type_and_camel_case_fields() {
        let tcp = TcpProxy {
            stat_prefix: "outbound|9080||reviews".into(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(
                "outbound|9080||reviews.default.svc.cluster.local".into(),
            )),
            idle_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 1,
                nanos: 500_000_000,
            }),
            ..Default::default()
        };
        let listener = Listener {
            name: "virtualOutbound".into(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.tcp_proxy".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(to_any(&tcp))),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let json = any_to_json(&to_any(&listener)).unwrap();
        assert_eq!(
            json,
            json!({
                "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
                "name": "virtualOutbound",
                "filterChains": [{
                    "filters": [{
                        "name": "envoy.filters.network.tcp_proxy",
                        "typedConfig": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                            "statPrefix": "outbound|9080||reviews",
                            "cluster": "outbound|9080||reviews.default.svc.cluster.local",
                            "idleTimeout": "1.500s"
                        }
                    }]
                }]
            })
        );
    }

    #[test]
    fn json_round_trips_to_the_same_message() {
        let json = json!({
            "name": "outbound|9080|v1|reviews.default.svc.cluster.local",
            "type": "EDS",
            "edsClusterConfig": {"edsConfig": {"ads": {}, "resourceApiVersion": "V3"}},
            "connectTimeout": "10s",
            "lbPolicy": "LEAST_REQUEST"
        });
        let cluster: Cluster = message_from_json(&json).unwrap();
        assert_eq!(
            cluster.name,
            "outbound|9080|v1|reviews.default.svc.cluster.local"
        );
        assert_eq!(message_to_json(&cluster).unwrap(), json);
        let any = any_from_json(&any_to_json(&to_any(&cluster)).unwrap()).unwrap();
        assert_eq!(any, to_any(&cluster));
    }

    #[test]
    fn proto_field_names_match_envoys_admin_output() {
        let cluster = Cluster {
            name: "c".into(),
            connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 10,
                nanos: 0,
            }),
            ..Default::default()
        };
        let json = any_to_json_with(&to_any(&cluster), FieldNames::Proto).unwrap();
        assert_eq!(
            json,
            json!({
                "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                "name": "c",
                "connect_timeout": "10s"
            })
        );
    }

    #[test]
    fn unknown_types_are_named() {
        let any = Any {
            type_url: "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua".into(),
            value: vec![],
        };
        let err = any_to_json(&any).unwrap_err().to_string();
        assert!(
            err.contains("envoy.extensions.filters.http.lua.v3.Lua"),
            "{err}"
        );
    }
}
