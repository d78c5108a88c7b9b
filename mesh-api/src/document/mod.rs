//! Documents to resources: multi-document YAML or JSON text (with a file name for
//! errors) into typed [`Resource`]s, one result per document, so that one bad document
//! neither hides the others nor stops them from loading.
//!
//! Istio kinds are accepted in every version Istio serves and checked against the same
//! schema the CRDs carry (unknown fields, wrong types, bad enum values, all reported with
//! field paths) before being turned into Rust types. Kubernetes kinds the control plane
//! reads from files (Service, EndpointSlice, Pod, Namespace, Secret, ConfigMap) are
//! parsed with k8s-openapi; any other kind becomes [`Resource::Unowned`].

mod error;
mod kind;
mod split;

use std::fmt;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use error::{DocumentError, FieldError};
pub use kind::{Kind, split_api_version};
pub use split::{RawDocument, split_documents};

use crate::networking::{
    DestinationRule, EnvoyFilter, Gateway, ServiceEntry, Sidecar, VirtualService, WorkloadEntry,
};
use crate::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};
use crate::telemetry::Telemetry;

/// The namespace a namespaced resource without `metadata.namespace` belongs to.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Identifies a resource: kind, namespace (empty for Namespace) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ResourceKey {
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A kind the mesh does not read (Deployment, ServiceAccount, ...): kept by name so that
/// tools can say what they skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unowned {
    pub api_version: String,
    pub kind: String,
    pub name: Option<String>,
    pub namespace: Option<String>,
}

macro_rules! resources {
    ($($kind:ident($ty:ty)),* $(,)?) => {
        /// A parsed document.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Resource {
            $($kind(Box<$ty>),)*
            Unowned(Unowned),
        }

        impl Resource {
            /// The kind, or `None` for [`Resource::Unowned`].
            pub fn kind(&self) -> Option<Kind> {
                match self {
                    $(Resource::$kind(_) => Some(Kind::$kind),)*
                    Resource::Unowned(_) => None,
                }
            }

            /// The object's metadata, or `None` for [`Resource::Unowned`].
            pub fn metadata(&self) -> Option<&ObjectMeta> {
                match self {
                    $(Resource::$kind(r) => Some(&r.metadata),)*
                    Resource::Unowned(_) => None,
                }
            }

            /// Mutable metadata (sources fill in namespaces), `None` for unowned kinds.
            pub fn metadata_mut(&mut self) -> Option<&mut ObjectMeta> {
                match self {
                    $(Resource::$kind(r) => Some(&mut r.metadata),)*
                    Resource::Unowned(_) => None,
                }
            }

            /// The resource as JSON (Istio kinds with their v1 `apiVersion`).
            pub fn to_json(&self) -> Value {
                let value = match self {
                    $(Resource::$kind(r) => serde_json::to_value(r),)*
                    Resource::Unowned(u) => Ok(serde_json::json!({
                        "apiVersion": u.api_version,
                        "kind": u.kind,
                        "metadata": {"name": u.name, "namespace": u.namespace},
                    })),
                };
                // Serialising these types cannot fail: string keys only, no custom errors.
                value.unwrap_or(Value::Null)
            }

            fn from_typed_value(kind: Kind, value: Value) -> Result<Resource, serde_json::Error> {
                Ok(match kind {
                    $(Kind::$kind => Resource::$kind(Box::new(serde_json::from_value(value)?)),)*
                })
            }
        }

        $(
            impl From<$ty> for Resource {
                fn from(r: $ty) -> Resource {
                    Resource::$kind(Box::new(r))
                }
            }
        )*
    };
}

resources! {
    VirtualService(VirtualService),
    DestinationRule(DestinationRule),
    Gateway(Gateway),
    ServiceEntry(ServiceEntry),
    WorkloadEntry(WorkloadEntry),
    Sidecar(Sidecar),
    EnvoyFilter(EnvoyFilter),
    PeerAuthentication(PeerAuthentication),
    AuthorizationPolicy(AuthorizationPolicy),
    RequestAuthentication(RequestAuthentication),
    Telemetry(Telemetry),
    Service(Service),
    EndpointSlice(EndpointSlice),
    Pod(Pod),
    Namespace(Namespace),
    Secret(Secret),
    ConfigMap(ConfigMap),
}

// === impl Resource ===

impl Resource {
    /// Kind, namespace and name; a namespaced resource without a namespace is in
    /// [`DEFAULT_NAMESPACE`]. `None` for unowned kinds.
    pub fn key(&self) -> Option<ResourceKey> {
        let kind = self.kind()?;
        let meta = self.metadata()?;
        let namespace = if kind.is_namespaced() {
            meta.namespace
                .clone()
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())
        } else {
            String::new()
        };
        Some(ResourceKey::new(
            kind,
            namespace,
            meta.name.clone().unwrap_or_default(),
        ))
    }

    /// `metadata.creationTimestamp`, for Istio's oldest-wins conflict rules.
    pub fn creation_timestamp(&self) -> Option<&Time> {
        self.metadata()?.creation_timestamp.as_ref()
    }

    /// A short description for messages: `VirtualService default/reviews`, or
    /// `apps/v1 Deployment web` for unowned kinds.
    pub fn describe(&self) -> String {
        match (self.key(), self) {
            (Some(key), _) => key.to_string(),
            (None, Resource::Unowned(u)) => {
                format!(
                    "{} {} {}",
                    u.api_version,
                    u.kind,
                    u.name.as_deref().unwrap_or("<unnamed>")
                )
            }
            (None, _) => String::new(),
        }
    }

    /// Builds a resource from one document's JSON value: the kind is looked up from
    /// `apiVersion`/`kind`, Istio kinds are schema-checked (every problem is reported),
    /// then the value is converted to its Rust type.
    pub fn from_value(value: Value) -> Result<Resource, Vec<FieldError>> {
        let Value::Object(obj) = &value else {
            return Err(vec![FieldError::new(
                "",
                "a resource must be a YAML/JSON object",
            )]);
        };
        let api_version = match obj.get("apiVersion") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::String(_)) | None => {
                return Err(vec![FieldError::new(
                    "apiVersion",
                    "required field missing",
                )]);
            }
            Some(_) => return Err(vec![FieldError::new("apiVersion", "must be a string")]),
        };
        let kind_name = match obj.get("kind") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::String(_)) | None => {
                return Err(vec![FieldError::new("kind", "required field missing")]);
            }
            Some(_) => return Err(vec![FieldError::new("kind", "must be a string")]),
        };
        let (group, version) = split_api_version(&api_version);
        let Some(kind) = Kind::find(group, &kind_name) else {
            let meta = obj.get("metadata");
            let field = |f: &str| {
                meta.and_then(|m| m.get(f))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            return Ok(Resource::Unowned(Unowned {
                api_version,
                kind: kind_name,
                name: field("name"),
                namespace: field("namespace"),
            }));
        };
        if !kind.versions().contains(&version) {
            return Err(vec![FieldError::new(
                "apiVersion",
                format!(
                    "{kind} is not served as {api_version:?} (served versions: {})",
                    kind.versions().join(", ")
                ),
            )]);
        }
        let mut errors = check_metadata(kind, obj.get("metadata"));
        if kind.is_istio() {
            errors.extend(crate::validation::schema::check_object(kind, &value));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let value = normalize_for_type(kind, value);
        Resource::from_typed_value(kind, value)
            .map_err(|e| vec![FieldError::new("", e.to_string())])
    }
}

/// `metadata.name` is required and `metadata` must be an object; the API server checks the
/// rest of ObjectMeta.
fn check_metadata(kind: Kind, meta: Option<&Value>) -> Vec<FieldError> {
    let Some(meta) = meta else {
        return vec![FieldError::new("metadata.name", "required field missing")];
    };
    let Value::Object(meta) = meta else {
        return vec![FieldError::new("metadata", "must be an object")];
    };
    let mut errors = Vec::new();
    match meta.get("name") {
        None if meta.get("generateName").is_some() => {}
        None => errors.push(FieldError::new("metadata.name", "required field missing")),
        Some(Value::String(name)) => {
            if let Err(message) = crate::validation::semantic::check_object_name(name) {
                errors.push(FieldError::new("metadata.name", message));
            }
        }
        Some(_) => errors.push(FieldError::new("metadata.name", "must be a string")),
    }
    if let Some(ns) = meta.get("namespace") {
        match ns {
            Value::String(ns) if !kind.is_namespaced() && !ns.is_empty() => {
                errors.push(FieldError::new(
                    "metadata.namespace",
                    format!("{kind} is not namespaced"),
                ));
            }
            Value::String(ns) => {
                if let Err(message) = crate::validation::semantic::check_dns_label(ns) {
                    errors.push(FieldError::new("metadata.namespace", message));
                }
            }
            _ => errors.push(FieldError::new("metadata.namespace", "must be a string")),
        }
    }
    errors
}

/// Adjusts a checked document to what the Rust type expects: Istio kinds get an empty
/// spec when it is missing (Istio treats a missing spec as empty), Kubernetes kinds get
/// the `apiVersion` k8s-openapi checks for.
fn normalize_for_type(kind: Kind, mut value: Value) -> Value {
    if let Value::Object(obj) = &mut value {
        if kind.is_istio() {
            obj.entry("spec")
                .or_insert_with(|| Value::Object(Default::default()));
        } else if kind == Kind::EndpointSlice {
            obj.insert(
                "apiVersion".into(),
                Value::String("discovery.k8s.io/v1".into()),
            );
        }
    }
    value
}

/// Parses multi-document YAML or JSON text into resources, one result per non-empty
/// document, in order. `file` names the source in errors (`-` for stdin).
///
/// This does the schema checks; [`crate::validation::validate_text`] adds Istio's
/// semantic checks.
pub fn parse(text: &str, file: &str) -> Vec<Result<Resource, DocumentError>> {
    split_documents(text, file)
        .into_iter()
        .map(|raw| {
            let raw = raw?;
            let described = describe_value(&raw.value);
            Resource::from_value(raw.value).map_err(|errors| DocumentError {
                file: file.to_string(),
                index: raw.index,
                line: Some(raw.line),
                column: None,
                resource: described,
                errors,
            })
        })
        .collect()
}

/// Parses one typed value (used where a caller already has JSON, like the webhook).
pub fn from_json<T: DeserializeOwned>(value: Value) -> Result<T, serde_json::Error> {
    serde_json::from_value(value)
}

/// `Kind namespace/name` from a raw document, for error messages.
pub(crate) fn describe_value(value: &Value) -> Option<String> {
    let kind = value.get("kind")?.as_str()?;
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>");
    Some(
        match meta
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
        {
            Some(ns) => format!("{kind} {ns}/{name}"),
            None => format!("{kind} {name}"),
        },
    )
}
