//! Istio's conventions in generated Envoy config that `meshctl` reads back.

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::google::protobuf::value::Kind;

/// The Istio resource a cluster or route was generated from, as `name.namespace`: Istio
/// records it as `filter_metadata.istio.config`, a path such as
/// `/apis/networking.istio.io/v1/namespaces/default/destination-rule/reviews`. Empty when
/// the resource carries none; `<unknown>` for a path of another shape.
pub fn config_ref(metadata: Option<&Metadata>) -> String {
    let path = metadata
        .and_then(|m| m.filter_metadata.get("istio"))
        .and_then(|s| s.fields.get("config"))
        .and_then(|v| match &v.kind {
            Some(Kind::StringValue(s)) => Some(s.as_str()),
            _ => None,
        });
    let Some(path) = path else {
        return String::new();
    };
    let pieces: Vec<&str> = path.split('/').collect();
    match pieces.as_slice() {
        ["", "apis", group, _version, "namespaces", ns, _kind, name]
            if group.ends_with("istio.io") =>
        {
            format!("{name}.{ns}")
        }
        _ => "<unknown>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use envoy_types::pb::google::protobuf::{Struct, Value};

    use super::*;

    fn meta(path: &str) -> Metadata {
        let fields = HashMap::from([(
            "config".to_string(),
            Value {
                kind: Some(Kind::StringValue(path.to_string())),
            },
        )]);
        Metadata {
            filter_metadata: HashMap::from([("istio".to_string(), Struct { fields })]),
            ..Default::default()
        }
    }

    #[test]
    fn config_paths() {
        let m =
            meta("/apis/networking.istio.io/v1alpha3/namespaces/default/destination-rule/reviews");
        assert_eq!(config_ref(Some(&m)), "reviews.default");
        let m = meta("/apis/networking.istio.io/v1/namespaces/shop/virtual-service/cart");
        assert_eq!(config_ref(Some(&m)), "cart.shop");
        assert_eq!(config_ref(Some(&meta("something-else"))), "<unknown>");
        assert_eq!(config_ref(None), "");
    }
}
