//! The `status` of Istio resources (Istio's `IstioStatus`: conditions, validation
//! messages, observed generation). Kept as free-form JSON: the mesh writes little of it,
//! and Istio's CRDs also leave it unstructured (`x-kubernetes-preserve-unknown-fields`).

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The `status` stanza of an Istio resource.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IstioStatus(pub serde_json::Map<String, serde_json::Value>);

impl JsonSchema for IstioStatus {
    fn schema_name() -> Cow<'static, str> {
        "IstioStatus".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
}
