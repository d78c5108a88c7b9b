//! The Envoy object an EnvoyFilter patch carries (`patch.value`), parsed into the protobuf
//! message its `applyTo` names, through the same descriptor pool as [`crate::envoy_json`].
//!
//! Values are Envoy's JSON: field names in proto (`typed_config`) or JSON (`typedConfig`)
//! form, nested `Any`s with their `@type`. The `udpa.type.v1.TypedStruct` and
//! `xds.type.v3.TypedStruct` wrappers Istio's documentation uses (`type_url` + `value`) are
//! unwrapped into the message they describe, as Envoy itself does when it loads them, so
//! proxies only ever see real typed configs. Unknown fields are errors: a typo in a patch
//! should be reported, not dropped.

use prost_reflect::{DeserializeOptions, DynamicMessage};
use serde_json::{Map, Value};

use super::ApplyTo;
use crate::envoy_json::descriptor_pool;

/// The type URLs of the typed-struct wrappers that are unwrapped.
pub const TYPED_STRUCT_URLS: [&str; 2] = [
    "type.googleapis.com/udpa.type.v1.TypedStruct",
    "type.googleapis.com/xds.type.v3.TypedStruct",
];

/// Why a patch value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchValueError {
    #[error("applyTo {0} takes no value this mesh can parse")]
    NoMessage(&'static str),
    #[error(
        "{at}: unknown type {type_url:?} (hint: this mesh knows the Envoy filters it implements; see mesh-proxy SUPPORTED.md)"
    )]
    UnknownType { at: String, type_url: String },
    #[error("{at}: a TypedStruct needs a type_url and a value object")]
    BadTypedStruct { at: String },
    #[error("not a valid {message}: {reason}")]
    Invalid { message: String, reason: String },
}

/// The full protobuf name of the message a patch of `apply_to` carries.
pub fn message_name(apply_to: ApplyTo) -> Option<&'static str> {
    Some(match apply_to {
        ApplyTo::Listener => "envoy.config.listener.v3.Listener",
        ApplyTo::FilterChain => "envoy.config.listener.v3.FilterChain",
        ApplyTo::NetworkFilter => "envoy.config.listener.v3.Filter",
        ApplyTo::ListenerFilter => "envoy.config.listener.v3.ListenerFilter",
        ApplyTo::HttpFilter => {
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter"
        }
        ApplyTo::RouteConfiguration => "envoy.config.route.v3.RouteConfiguration",
        ApplyTo::VirtualHost => "envoy.config.route.v3.VirtualHost",
        ApplyTo::HttpRoute => "envoy.config.route.v3.Route",
        ApplyTo::Cluster => "envoy.config.cluster.v3.Cluster",
        ApplyTo::ExtensionConfig => "envoy.config.core.v3.TypedExtensionConfig",
        ApplyTo::Bootstrap => "envoy.config.bootstrap.v3.Bootstrap",
        ApplyTo::Invalid => return None,
    })
}

/// Parses a patch value into the message `apply_to` names, encoded (ready for
/// `prost::Message::decode` into the matching `envoy-types` type).
pub fn parse(apply_to: ApplyTo, value: &Map<String, Value>) -> Result<Vec<u8>, PatchValueError> {
    let name = message_name(apply_to).ok_or(PatchValueError::NoMessage(apply_to.as_str()))?;
    let descriptor = descriptor_pool()
        .get_message_by_name(name)
        .ok_or(PatchValueError::NoMessage(apply_to.as_str()))?;
    let mut json = Value::Object(value.clone());
    unwrap_typed_structs(&mut json, "value")?;
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let message =
        DynamicMessage::deserialize_with_options(descriptor, &json, &options).map_err(|e| {
            PatchValueError::Invalid {
                message: name.to_string(),
                reason: e.to_string(),
            }
        })?;
    Ok(prost::Message::encode_to_vec(&message))
}

/// Replaces every TypedStruct (`{"@type": TypedStruct, "type_url": T, "value": {..}}`) with
/// `{"@type": T, ..}`, and checks that every other `@type` is known.
fn unwrap_typed_structs(v: &mut Value, at: &str) -> Result<(), PatchValueError> {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(t)) = map.get("@type")
                && TYPED_STRUCT_URLS.contains(&t.as_str())
            {
                let type_url = map
                    .get("type_url")
                    .or_else(|| map.get("typeUrl"))
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let inner = map
                    .get("value")
                    .cloned()
                    .unwrap_or(Value::Object(Map::new()));
                let (Some(type_url), Value::Object(mut inner)) = (type_url, inner) else {
                    return Err(PatchValueError::BadTypedStruct { at: at.to_string() });
                };
                inner.insert("@type".to_string(), Value::String(type_url));
                *map = inner;
            }
            if let Some(Value::String(t)) = map.get("@type") {
                let name = t.rsplit_once('/').map(|(_, n)| n).unwrap_or(t);
                if descriptor_pool().get_message_by_name(name).is_none() {
                    return Err(PatchValueError::UnknownType {
                        at: at.to_string(),
                        type_url: t.clone(),
                    });
                }
            }
            for (k, child) in map.iter_mut() {
                unwrap_typed_structs(child, &format!("{at}.{k}"))?;
            }
            Ok(())
        }
        Value::Array(items) => {
            for (i, child) in items.iter_mut().enumerate() {
                unwrap_typed_structs(child, &format!("{at}[{i}]"))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::route::v3::Route;
    use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpFilter, http_filter,
    };
    use prost::{Message, Name};
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn istio_docs_local_rate_limit_filter_with_typed_struct() {
        let value = obj(json!({
            "name": "envoy.filters.http.local_ratelimit",
            "typed_config": {
                "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                "type_url": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                "value": {
                    "stat_prefix": "http_local_rate_limiter",
                    "token_bucket": {"max_tokens": 10, "tokens_per_fill": 10, "fill_interval": "60s"},
                    "filter_enabled": {"runtime_key": "local_rate_limit_enabled",
                        "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
                    "response_headers_to_add": [{"append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                        "header": {"key": "x-local-rate-limit", "value": "true"}}]
                }
            }
        }));
        let bytes = parse(ApplyTo::HttpFilter, &value).expect("valid");
        let filter = HttpFilter::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(filter.name, "envoy.filters.http.local_ratelimit");
        let Some(http_filter::ConfigType::TypedConfig(any)) = filter.config_type else {
            panic!("typed config")
        };
        assert_eq!(any.type_url, LocalRateLimit::type_url());
        let rl = LocalRateLimit::decode(any.value.as_slice()).expect("decodes");
        assert_eq!(rl.stat_prefix, "http_local_rate_limiter");
        let bucket = rl.token_bucket.expect("bucket");
        assert_eq!(bucket.max_tokens, 10);
        assert_eq!(bucket.fill_interval.expect("interval").seconds, 60);
    }

    #[test]
    fn camel_case_names_and_direct_types_work_too() {
        let value = obj(json!({
            "typedPerFilterConfig": {
                "envoy.filters.http.local_ratelimit": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                    "statPrefix": "route_limiter",
                    "tokenBucket": {"maxTokens": 5, "fillInterval": "1s"}
                }
            }
        }));
        let bytes = parse(ApplyTo::HttpRoute, &value).expect("valid");
        let route = Route::decode(bytes.as_slice()).expect("decodes");
        assert!(
            route
                .typed_per_filter_config
                .contains_key("envoy.filters.http.local_ratelimit")
        );
    }

    #[test]
    fn typos_and_unknown_types_are_named() {
        let typo = obj(json!({"name": "x", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "a", "token_buket": {}}}));
        let err = parse(ApplyTo::HttpFilter, &typo)
            .expect_err("typo")
            .to_string();
        assert!(err.contains("token_buket"), "{err}");
        let unknown = obj(json!({"name": "x", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"}}));
        let err = parse(ApplyTo::HttpFilter, &unknown)
            .expect_err("unknown")
            .to_string();
        assert!(
            err.contains("value.typed_config") && err.contains("lua"),
            "{err}"
        );
    }
}
