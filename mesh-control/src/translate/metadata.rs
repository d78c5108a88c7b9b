//! Istio's `filter_metadata.istio` on generated resources: `config` names the Istio
//! resource a cluster or route came from (`/apis/networking.istio.io/v1/namespaces/<ns>/
//! destination-rule/<name>`), which `istioctl`/`meshctl proxy-config` show as the
//! DESTINATION RULE and VIRTUAL SERVICE columns; clusters also carry their `subset` and
//! the `services` they serve (telemetry labels).

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};

use super::util::ordered_map;
use crate::store::config::Meta;

/// The filter metadata key Istio uses.
pub const ISTIO: &str = "istio";

/// The API path of an Istio resource as Istio writes it (`kebab-case` kind, v1 API).
pub fn config_path(meta: &Meta) -> String {
    let mut kind = String::with_capacity(meta.kind.len() + 4);
    for (i, c) in meta.kind.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                kind.push('-');
            }
            kind.push(c.to_ascii_lowercase());
        } else {
            kind.push(c);
        }
    }
    format!(
        "/apis/networking.istio.io/v1/namespaces/{}/{kind}/{}",
        meta.namespace, meta.name
    )
}

pub fn string(s: impl Into<String>) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

pub fn object(fields: Vec<(String, Value)>) -> Value {
    Value {
        kind: Some(Kind::StructValue(Struct {
            fields: ordered_map(fields),
        })),
    }
}

pub fn list(values: Vec<Value>) -> Value {
    Value {
        kind: Some(Kind::ListValue(ListValue { values })),
    }
}

/// `filter_metadata.istio` with the given fields (encoded in key order).
pub fn istio(fields: Vec<(String, Value)>) -> Metadata {
    Metadata {
        filter_metadata: ordered_map(vec![(
            ISTIO.to_string(),
            Struct {
                fields: ordered_map(fields),
            },
        )]),
        ..Default::default()
    }
}

/// `filter_metadata.istio.config` for a resource generated from `meta`.
pub fn config(meta: &Meta) -> Metadata {
    istio(vec![("config".to_string(), string(config_path(meta)))])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::config::Age;

    #[test]
    fn paths_as_istio_writes_them() {
        let meta = Meta {
            kind: "DestinationRule",
            name: "reviews".into(),
            namespace: "bookinfo".into(),
            labels: Default::default(),
            annotations: Default::default(),
            age: Age {
                created: None,
                seq: 0,
            },
            origin: String::new(),
        };
        assert_eq!(
            config_path(&meta),
            "/apis/networking.istio.io/v1/namespaces/bookinfo/destination-rule/reviews"
        );
        let vs = Meta {
            kind: "VirtualService",
            ..meta
        };
        assert_eq!(
            config_path(&vs),
            "/apis/networking.istio.io/v1/namespaces/bookinfo/virtual-service/reviews"
        );
    }
}
