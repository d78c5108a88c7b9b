//! Parsing of the Envoy node: Istio's id format and metadata keys.

use std::collections::BTreeMap;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

use super::{InterceptionMode, ModelError, Proxy, ProxyKind};

pub(super) fn from_node(node: &Node) -> Result<Proxy, ModelError> {
    if node.id.is_empty() {
        return Err(ModelError::MissingNodeId);
    }
    let id = node.id.clone();
    let invalid = |reason: &str| ModelError::InvalidNodeId {
        id: id.clone(),
        reason: reason.to_string(),
    };
    let parts: Vec<&str> = id.split('~').collect();
    if parts.len() != 4 {
        return Err(invalid(&format!(
            "has {} '~'-separated fields, want 4",
            parts.len()
        )));
    }
    let kind = match parts[0] {
        "sidecar" => ProxyKind::Sidecar,
        "router" => ProxyKind::Router,
        other => return Err(invalid(&format!("unknown proxy type {other:?}"))),
    };
    let ip: IpAddr = parts[1]
        .parse()
        .map_err(|_| invalid(&format!("{:?} is not an IP address", parts[1])))?;
    // Pod names may contain dots, namespaces may not: split at the last one.
    let (pod_name, id_namespace) = match parts[2].rsplit_once('.') {
        Some((pod, ns)) if !pod.is_empty() && !ns.is_empty() => (pod.to_string(), ns.to_string()),
        _ if !parts[2].is_empty() => (parts[2].to_string(), String::new()),
        _ => return Err(invalid("empty workload name")),
    };
    let dns_domain = parts[3].to_string();

    let metadata = node
        .metadata
        .as_ref()
        .map(struct_to_json)
        .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
    let meta_str = |key: &str| {
        metadata
            .get(key)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };

    let namespace = meta_str("NAMESPACE")
        .or_else(|| (!id_namespace.is_empty()).then(|| id_namespace.clone()))
        .or_else(|| dns_domain.split('.').next().map(str::to_string))
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid("no namespace in the id nor in metadata NAMESPACE"))?;

    let labels = match metadata.get("LABELS") {
        None | Some(serde_json::Value::Null) => BTreeMap::new(),
        Some(serde_json::Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => Ok((k.clone(), s.clone())),
                other => Err(ModelError::InvalidMetadata {
                    id: id.clone(),
                    key: "LABELS",
                    reason: format!("label {k:?} has non-string value {other}"),
                }),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(ModelError::InvalidMetadata {
                id: id.clone(),
                key: "LABELS",
                reason: format!("want a map of strings, got {other}"),
            });
        }
    };

    let mut ip_addresses = vec![ip];
    if let Some(ips) = meta_str("INSTANCE_IPS") {
        for raw in ips.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let extra: IpAddr = raw.parse().map_err(|_| ModelError::InvalidMetadata {
                id: id.clone(),
                key: "INSTANCE_IPS",
                reason: format!("{raw:?} is not an IP address"),
            })?;
            if !ip_addresses.contains(&extra) {
                ip_addresses.push(extra);
            }
        }
    }

    let interception_mode = match meta_str("INTERCEPTION_MODE").as_deref() {
        None | Some("REDIRECT") => InterceptionMode::Redirect,
        Some("TPROXY") => InterceptionMode::Tproxy,
        Some("NONE") => InterceptionMode::None,
        Some(other) => {
            return Err(ModelError::InvalidMetadata {
                id: id.clone(),
                key: "INTERCEPTION_MODE",
                reason: format!("{other:?} is not one of REDIRECT, TPROXY, NONE"),
            });
        }
    };

    // Envoy's node locality (what istio-agent puts in the bootstrap), as region/zone/subzone.
    let locality = node
        .locality
        .as_ref()
        .filter(|l| !(l.region.is_empty() && l.zone.is_empty() && l.sub_zone.is_empty()))
        .map(|l| format!("{}/{}/{}", l.region, l.zone, l.sub_zone));

    Ok(Proxy {
        kind,
        locality,
        ip_addresses,
        pod_name,
        namespace,
        labels,
        service_account: meta_str("SERVICE_ACCOUNT"),
        workload_name: meta_str("WORKLOAD_NAME"),
        cluster_id: meta_str("CLUSTER_ID").unwrap_or_else(|| "Kubernetes".to_string()),
        mesh_id: meta_str("MESH_ID"),
        version: meta_str("ISTIO_VERSION").or_else(|| agent_version(node)),
        interception_mode,
        dns_domain,
        metadata,
        id,
    })
}

/// `name/version` from the node's user agent fields.
fn agent_version(node: &Node) -> Option<String> {
    use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
    let version = match node.user_agent_version_type.as_ref()? {
        UserAgentVersionType::UserAgentVersion(v) => v.clone(),
        UserAgentVersionType::UserAgentBuildVersion(b) => {
            let v = b.version.as_ref()?;
            format!("{}.{}.{}", v.major_number, v.minor_number, v.patch)
        }
    };
    if version.is_empty() {
        return None;
    }
    Some(if node.user_agent_name.is_empty() {
        version
    } else {
        format!("{}/{version}", node.user_agent_name)
    })
}

/// Converts a protobuf `Struct` (Envoy node metadata) to JSON.
pub fn struct_to_json(s: &Struct) -> serde_json::Value {
    let mut keys: Vec<&String> = s.fields.keys().collect();
    keys.sort();
    serde_json::Value::Object(
        keys.into_iter()
            .map(|k| (k.clone(), value_to_json(&s.fields[k])))
            .collect(),
    )
}

/// Converts JSON to a protobuf `Struct` (non-objects give an empty struct): for building
/// Envoy nodes in tests, bootstraps and tools.
pub fn json_to_struct(v: &serde_json::Value) -> Struct {
    match v {
        serde_json::Value::Object(map) => Struct {
            fields: map
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        },
        _ => Struct::default(),
    }
}

fn json_to_value(v: &serde_json::Value) -> Value {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => {
            Kind::ListValue(envoy_types::pb::google::protobuf::ListValue {
                values: a.iter().map(json_to_value).collect(),
            })
        }
        serde_json::Value::Object(_) => Kind::StructValue(json_to_struct(v)),
    };
    Value { kind: Some(kind) }
}

fn value_to_json(v: &Value) -> serde_json::Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.iter().map(value_to_json).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(v.to_string())),
        }
    }

    fn node(id: &str, meta: &[(&str, Value)]) -> Node {
        Node {
            id: id.to_string(),
            metadata: Some(Struct {
                fields: meta
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn parses_istio_sidecar_node() {
        let labels = Value {
            kind: Some(Kind::StructValue(Struct {
                fields: [
                    ("app".to_string(), s("reviews")),
                    ("version".to_string(), s("v1")),
                ]
                .into_iter()
                .collect(),
            })),
        };
        let n = node(
            "sidecar~10.250.0.5~reviews-v1-abc.default~default.svc.cluster.local",
            &[
                ("LABELS", labels),
                ("SERVICE_ACCOUNT", s("bookinfo-reviews")),
                ("INSTANCE_IPS", s("10.250.0.5,fd00::5")),
                ("INTERCEPTION_MODE", s("TPROXY")),
                ("CLUSTER_ID", s("c1")),
            ],
        );
        let p = Proxy::from_node(&n).expect("valid node");
        assert_eq!(p.kind, ProxyKind::Sidecar);
        assert_eq!(p.pod_name, "reviews-v1-abc");
        assert_eq!(p.namespace, "default");
        assert_eq!(p.labels.get("version").map(String::as_str), Some("v1"));
        assert_eq!(p.service_account.as_deref(), Some("bookinfo-reviews"));
        assert_eq!(p.ip_addresses.len(), 2);
        assert_eq!(p.interception_mode, InterceptionMode::Tproxy);
        assert_eq!(p.cluster_id, "c1");
        assert_eq!(p.metadata["SERVICE_ACCOUNT"], "bookinfo-reviews");
    }

    #[test]
    fn version_from_istio_metadata_else_the_user_agent() {
        use envoy_types::pb::envoy::config::core::v3::{BuildVersion, node::UserAgentVersionType};
        use envoy_types::pb::envoy::r#type::v3::SemanticVersion;
        let id = "sidecar~10.0.0.1~x.default~default.svc.cluster.local";
        assert_eq!(
            Proxy::from_node(&node(id, &[])).expect("valid").version,
            None
        );
        let mut n = node(id, &[]);
        n.user_agent_name = "envoy".into();
        n.user_agent_version_type =
            Some(UserAgentVersionType::UserAgentBuildVersion(BuildVersion {
                version: Some(SemanticVersion {
                    major_number: 1,
                    minor_number: 40,
                    patch: 0,
                }),
                metadata: None,
            }));
        assert_eq!(
            Proxy::from_node(&n).expect("valid").version.as_deref(),
            Some("envoy/1.40.0")
        );
        n.user_agent_name = "mesh-proxy".into();
        n.user_agent_version_type = Some(UserAgentVersionType::UserAgentVersion("0.1.0".into()));
        assert_eq!(
            Proxy::from_node(&n).expect("valid").version.as_deref(),
            Some("mesh-proxy/0.1.0")
        );
        let n = node(id, &[("ISTIO_VERSION", s("1.24.0"))]);
        assert_eq!(
            Proxy::from_node(&n).expect("valid").version.as_deref(),
            Some("1.24.0")
        );
    }

    #[test]
    fn locality_from_the_node() {
        let mut n = node("sidecar~10.0.0.1~x.default~default.svc.cluster.local", &[]);
        assert_eq!(Proxy::from_node(&n).expect("valid").locality, None);
        n.locality = Some(envoy_types::pb::envoy::config::core::v3::Locality {
            region: "us-east".into(),
            zone: "us-east-1a".into(),
            sub_zone: String::new(),
        });
        assert_eq!(
            Proxy::from_node(&n).expect("valid").locality.as_deref(),
            Some("us-east/us-east-1a/")
        );
    }

    #[test]
    fn metadata_namespace_wins_and_pod_names_keep_dots() {
        let n = node(
            "router~10.250.0.9~ingress.gw.v1.istio-system~istio-system.svc.cluster.local",
            &[("NAMESPACE", s("gateways"))],
        );
        let p = Proxy::from_node(&n).expect("valid node");
        assert_eq!(p.kind, ProxyKind::Router);
        assert_eq!(p.pod_name, "ingress.gw.v1");
        assert_eq!(p.namespace, "gateways");
        assert_eq!(p.cluster_id, "Kubernetes");
        assert_eq!(p.interception_mode, InterceptionMode::Redirect);
    }

    #[test]
    fn rejects_bad_ids_and_metadata_naming_the_field() {
        assert_eq!(
            Proxy::from_node(&Node::default()),
            Err(ModelError::MissingNodeId)
        );
        for bad in [
            "sidecar~10.0.0.1~x.default",
            "gateway~10.0.0.1~x.default~default.svc.cluster.local",
            "sidecar~not-an-ip~x.default~default.svc.cluster.local",
            "sidecar~10.0.0.1~~default.svc.cluster.local",
        ] {
            let err = Proxy::from_node(&node(bad, &[])).expect_err(bad);
            assert!(
                matches!(err, ModelError::InvalidNodeId { .. }),
                "{bad}: {err}"
            );
        }
        let err = Proxy::from_node(&node(
            "sidecar~10.0.0.1~x.default~default.svc.cluster.local",
            &[("INSTANCE_IPS", s("10.0.0.1,bogus"))],
        ))
        .expect_err("bad INSTANCE_IPS");
        assert!(err.to_string().contains("INSTANCE_IPS"), "{err}");
        let err = Proxy::from_node(&node(
            "sidecar~10.0.0.1~x.default~default.svc.cluster.local",
            &[("LABELS", s("app=x"))],
        ))
        .expect_err("bad LABELS");
        assert!(err.to_string().contains("LABELS"), "{err}");
    }
}
