//! Validation of Istio resources: the code behind the admission webhook and
//! `meshctl validate`. Two layers, both reporting every problem with its field path:
//!
//! 1. structure ([`schema`]): the document against the CRD schema (unknown fields, types,
//!    enums, ranges); done by [`crate::document`] while parsing;
//! 2. semantics ([`validate`]): Istio's `pkg/config/validation` rules on the typed value.

pub mod schema;
pub(crate) mod semantic;

use serde_json::Value;

pub use semantic::{check_dns_label, check_object_name, check_wildcard_domain};

use crate::document::{self, DocumentError, FieldError, Resource};

/// Istio's semantic checks on a parsed resource; empty when valid. Kubernetes and
/// unowned kinds have no semantic checks here.
pub fn validate(resource: &Resource) -> Vec<FieldError> {
    match resource {
        Resource::VirtualService(r) => semantic::virtual_service(&r.spec),
        Resource::DestinationRule(r) => semantic::destination_rule(&r.spec),
        Resource::Gateway(r) => semantic::gateway(&r.spec),
        Resource::ServiceEntry(r) => semantic::service_entry(&r.spec),
        Resource::WorkloadEntry(r) => semantic::workload_entry(&r.spec),
        Resource::Sidecar(r) => semantic::sidecar(&r.spec),
        Resource::EnvoyFilter(r) => semantic::envoy_filter(&r.spec),
        Resource::PeerAuthentication(r) => semantic::peer_authentication(&r.spec),
        Resource::AuthorizationPolicy(r) => semantic::authorization_policy(&r.spec),
        Resource::RequestAuthentication(r) => semantic::request_authentication(&r.spec),
        Resource::Telemetry(r) => semantic::telemetry(&r.spec),
        _ => Vec::new(),
    }
}

/// Structure and semantics of one JSON object (the webhook's `AdmissionRequest.object`).
pub fn validate_value(value: Value) -> Result<Resource, Vec<FieldError>> {
    let resource = Resource::from_value(value)?;
    let errors = validate(&resource);
    if errors.is_empty() {
        Ok(resource)
    } else {
        Err(errors)
    }
}

/// Parses and fully validates multi-document text: one result per document, each error
/// carrying the file, the document's line, the resource and every field problem.
pub fn validate_text(text: &str, file: &str) -> Vec<Result<Resource, DocumentError>> {
    let raws = document::split_documents(text, file);
    raws.into_iter()
        .map(|raw| {
            let raw = raw?;
            let described = document::describe_value(&raw.value);
            let error = |errors| DocumentError {
                file: file.to_string(),
                index: raw.index,
                line: Some(raw.line),
                column: None,
                resource: described.clone(),
                errors,
            };
            validate_value(raw.value.clone()).map_err(error)
        })
        .collect()
}
