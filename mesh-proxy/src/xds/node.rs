//! The node identity sent on the first request of each stream: id, cluster, Istio's
//! node metadata (a JSON object turned into a protobuf `Struct`) and locality.

use envoy_types::pb::{
    envoy::config::core::v3::{Locality, Node, node::UserAgentVersionType},
    google::protobuf::{ListValue, NullValue, Struct, Value, value::Kind},
};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeInfo {
    /// `sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local` (Istio's form).
    pub id: String,
    /// Envoy's `--service-cluster` (Istio: `<app>.<ns>`).
    pub cluster: String,
    /// Istio's node metadata keys (`NAMESPACE`, `LABELS`, `INSTANCE_IPS`, ...).
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub locality: Option<(String, String, String)>,
}

impl NodeInfo {
    pub fn to_proto(&self) -> Node {
        Node {
            id: self.id.clone(),
            cluster: self.cluster.clone(),
            metadata: Some(to_struct(&self.metadata)),
            locality: self
                .locality
                .as_ref()
                .map(|(region, zone, sub_zone)| Locality {
                    region: region.clone(),
                    zone: zone.clone(),
                    sub_zone: sub_zone.clone(),
                }),
            user_agent_name: "mesh-proxy".into(),
            user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
                env!("CARGO_PKG_VERSION").into(),
            )),
            client_features: vec![
                "envoy.lb.does_not_support_overprovisioning".into(),
                "xds.config.resource-in-sotw".into(),
            ],
            ..Default::default()
        }
    }
}

pub(crate) fn to_struct(m: &serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: m.iter().map(|(k, v)| (k.clone(), to_value(v))).collect(),
    }
}

fn to_value(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(NullValue::NullValue as i32),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(to_value).collect(),
        }),
        J::Object(o) => Kind::StructValue(to_struct(o)),
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_becomes_struct() {
        let mut metadata = serde_json::Map::new();
        metadata.insert("NAMESPACE".into(), "default".into());
        metadata.insert("LABELS".into(), serde_json::json!({"app": "reviews"}));
        let n = NodeInfo {
            id: "sidecar~10.250.0.2~r.default~default.svc.cluster.local".into(),
            metadata,
            ..Default::default()
        }
        .to_proto();
        let md = n.metadata.unwrap();
        assert_eq!(
            md.fields["NAMESPACE"].kind,
            Some(Kind::StringValue("default".into()))
        );
        let Some(Kind::StructValue(labels)) = &md.fields["LABELS"].kind else {
            panic!()
        };
        assert_eq!(
            labels.fields["app"].kind,
            Some(Kind::StringValue("reviews".into()))
        );
    }
}
