//! Envoy's JSON (as a proxy's admin API prints it) turned into `envoy-types` messages,
//! through the descriptor pool `mesh-api` compiles from Envoy's `.proto` files.
//!
//! Reading is lenient on purpose, because the JSON may come from any Envoy version and any
//! control plane: unknown fields are skipped, and an `Any` whose type this build does not
//! know (an Istio Wasm filter, say) is replaced by an empty `Struct` so that everything
//! around it still decodes. Output (`-o json|yaml`) never goes through this: it prints the
//! proxy's JSON untouched.

pub mod dump;

use prost::{Message, Name};
use prost_reflect::{DeserializeOptions, DynamicMessage};
use serde_json::{Map, Value};

/// Errors decoding Envoy JSON.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{0} is not among the Envoy messages this build knows")]
    UnknownMessage(String),
    #[error("cannot read {type_name} from the proxy's JSON: {message}")]
    Json { type_name: String, message: String },
    #[error("cannot decode {type_name}: {source}")]
    Proto {
        type_name: String,
        source: prost::DecodeError,
    },
}

const PLACEHOLDER: &str = "type.googleapis.com/google.protobuf.Struct";

/// Decodes a message from Envoy JSON (camelCase or proto field names).
pub fn decode<M: Message + Name + Default>(value: &Value) -> Result<M, DecodeError> {
    let type_name = M::full_name();
    let pool = mesh_api::envoy_json::descriptor_pool();
    let desc = pool
        .get_message_by_name(&type_name)
        .ok_or_else(|| DecodeError::UnknownMessage(type_name.clone()))?;
    let mut value = value.clone();
    if let Value::Object(m) = &mut value {
        // A config dump entry names its own type; the message itself has no such field.
        m.remove("@type");
    }
    replace_unknown_anys(&mut value);
    let options = DeserializeOptions::new().deny_unknown_fields(false);
    let dynamic = DynamicMessage::deserialize_with_options(desc, value, &options).map_err(|e| {
        DecodeError::Json {
            type_name: type_name.clone(),
            message: e.to_string(),
        }
    })?;
    M::decode(dynamic.encode_to_vec().as_slice())
        .map_err(|source| DecodeError::Proto { type_name, source })
}

/// Decodes the payload of an `Any` (already decoded from JSON) as `M`, whatever its type
/// URL says (Envoy accepts v2/v3 URLs for the same message; istioctl does the same).
pub fn unpack<M: Message + Default + Name>(
    any: &envoy_types::pb::google::protobuf::Any,
) -> Result<M, DecodeError> {
    M::decode(any.value.as_slice()).map_err(|source| DecodeError::Proto {
        type_name: M::full_name(),
        source,
    })
}

fn replace_unknown_anys(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let unknown = map
                .get("@type")
                .and_then(Value::as_str)
                .is_some_and(|url| !is_known(url));
            if unknown {
                let mut placeholder = Map::new();
                placeholder.insert("@type".into(), Value::String(PLACEHOLDER.into()));
                placeholder.insert("value".into(), Value::Object(Map::new()));
                *map = placeholder;
                return;
            }
            map.values_mut().for_each(replace_unknown_anys);
        }
        Value::Array(items) => items.iter_mut().for_each(replace_unknown_anys),
        _ => {}
    }
}

fn is_known(type_url: &str) -> bool {
    let name = type_url.rsplit_once('/').map_or(type_url, |(_, n)| n);
    mesh_api::envoy_json::descriptor_pool()
        .get_message_by_name(name)
        .is_some()
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
    use serde_json::json;

    use super::*;

    #[test]
    fn lenient_about_unknown_fields_and_filter_types() {
        let l: Listener = decode(&json!({
            "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
            "name": "virtualOutbound",
            "some_future_field": {"x": 1},
            "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15001}},
            "filter_chains": [{"filters": [
                {"name": "istio.stats", "typed_config": {"@type": "type.googleapis.com/stats.PluginConfig", "x": 1}},
                {"name": "envoy.filters.network.tcp_proxy", "typedConfig": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                    "stat_prefix": "PassthroughCluster", "cluster": "PassthroughCluster"}}
            ]}]
        }))
        .unwrap();
        assert_eq!(l.name, "virtualOutbound");
        let filters = &l.filter_chains[0].filters;
        let Some(filter::ConfigType::TypedConfig(stats)) = &filters[0].config_type else {
            panic!("typed config expected")
        };
        assert_eq!(stats.type_url, PLACEHOLDER);
        let Some(filter::ConfigType::TypedConfig(tcp)) = &filters[1].config_type else {
            panic!("typed config expected")
        };
        let tcp: envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy =
            unpack(tcp).unwrap();
        assert_eq!(tcp.stat_prefix, "PassthroughCluster");
    }

    #[test]
    fn wrong_shapes_are_named() {
        let err = decode::<Listener>(&json!({"name": 5})).unwrap_err();
        assert!(
            err.to_string()
                .contains("envoy.config.listener.v3.Listener"),
            "{err}"
        );
    }
}
