//! Message types shared by several networking kinds (Istio's `networking/v1alpha3`
//! common messages): string matches, port selectors, percentages, destinations, header
//! operations and workload selectors.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Istio `StringMatch`: exactly one of `exact`, `prefix`, `regex` (RE2 syntax). An empty
/// match is allowed only where Istio gives it a meaning (header presence).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct StringMatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A borrowed view of which [`StringMatch`] variant is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMatchKind<'a> {
    Exact(&'a str),
    Prefix(&'a str),
    Regex(&'a str),
}

// === impl StringMatch ===

impl StringMatch {
    pub fn exact(s: impl Into<String>) -> Self {
        Self {
            exact: Some(s.into()),
            ..Self::default()
        }
    }

    pub fn prefix(s: impl Into<String>) -> Self {
        Self {
            prefix: Some(s.into()),
            ..Self::default()
        }
    }

    pub fn regex(s: impl Into<String>) -> Self {
        Self {
            regex: Some(s.into()),
            ..Self::default()
        }
    }

    /// The one variant that is set; `None` when empty or (invalidly) several are set.
    pub fn kind(&self) -> Option<StringMatchKind<'_>> {
        match (&self.exact, &self.prefix, &self.regex) {
            (Some(e), None, None) => Some(StringMatchKind::Exact(e)),
            (None, Some(p), None) => Some(StringMatchKind::Prefix(p)),
            (None, None, Some(r)) => Some(StringMatchKind::Regex(r)),
            _ => None,
        }
    }

    /// How many of the oneof fields are set (valid: 1, or 0 where emptiness means presence).
    pub fn set_count(&self) -> usize {
        [
            self.exact.is_some(),
            self.prefix.is_some(),
            self.regex.is_some(),
        ]
        .into_iter()
        .filter(|b| *b)
        .count()
    }
}

/// Istio `PortSelector`: a port number on the destination service.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct PortSelector {
    pub number: u32,
}

/// Istio `Percent`: a percentage in 0.0..=100.0.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Percent {
    pub value: f64,
}

/// Istio `Destination`: a service (by registry host name), optional subset and port.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Destination {
    pub host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
}

/// Istio `Headers`: header manipulation for requests and responses.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Headers {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderOperations>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderOperations>,
}

/// Istio `Headers.HeaderOperations`: overwrite, append and remove.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct HeaderOperations {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// Istio `type.v1beta1.WorkloadSelector` (DestinationRule, security and telemetry
/// policies): pods by `matchLabels`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// Istio's networking `WorkloadSelector` (ServiceEntry, Sidecar): pods by `labels`.
///
/// The Rust field is `match_labels` like [`WorkloadSelector`]'s so that code reading either
/// selector looks the same; the JSON name is Istio's `labels`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct WorkloadLabelSelector {
    #[serde(rename = "labels", skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// Istio `PolicyTargetReference` (type/v1beta1): a Gateway API resource a policy attaches to.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct PolicyTargetReference {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub kind: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}
