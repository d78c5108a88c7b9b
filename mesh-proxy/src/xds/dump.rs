//! The raw resources behind the live config, kept for `/config_dump`: each accepted
//! resource's `Any` with its version and last-updated time, and the last rejected
//! version of each resource with the reason (Envoy's `error_state`).

use std::{
    collections::{BTreeMap, HashMap},
    time::SystemTime,
};

use envoy_types::pb::google::protobuf::Any;
use parking_lot::Mutex;

use super::TypeUrl;

#[derive(Debug, Clone)]
pub struct Stored {
    pub resource: Any,
    /// The resource's own version (delta), else the response's version.
    pub version: String,
    pub last_updated: SystemTime,
}

impl Stored {
    pub fn new(resource: Any, resource_version: &str, response_version: &str) -> Self {
        let version = if resource_version.is_empty() {
            response_version
        } else {
            resource_version
        };
        Stored {
            resource,
            version: version.to_string(),
            last_updated: SystemTime::now(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Rejected {
    pub resource: Any,
    pub version: String,
    pub details: String,
    pub last_update_attempt: SystemTime,
}

#[derive(Debug, Default, Clone)]
pub struct TypeDump {
    /// The last response version (accepted or not) and its NACK message, if any.
    pub version_info: String,
    pub last_error: Option<String>,
    pub resources: BTreeMap<String, Stored>,
    pub rejected: BTreeMap<String, Rejected>,
}

/// Shared between the xDS task (writer) and the admin server (reader).
#[derive(Debug, Default)]
pub struct DumpState {
    types: Mutex<HashMap<TypeUrl, TypeDump>>,
    warming: Mutex<(Vec<String>, Vec<String>)>,
}

impl DumpState {
    pub fn accept(&self, t: TypeUrl, name: &str, stored: Stored) {
        let mut types = self.types.lock();
        let d = types.entry(t).or_default();
        d.rejected.remove(name);
        d.resources.insert(name.to_string(), stored);
    }

    pub fn reject(&self, t: TypeUrl, name: &str, resource: &Any, version: &str, details: &str) {
        let mut types = self.types.lock();
        types.entry(t).or_default().rejected.insert(
            name.to_string(),
            Rejected {
                resource: resource.clone(),
                version: version.to_string(),
                details: details.to_string(),
                last_update_attempt: SystemTime::now(),
            },
        );
    }

    pub fn remove(&self, t: TypeUrl, name: &str) {
        let mut types = self.types.lock();
        if let Some(d) = types.get_mut(&t) {
            d.resources.remove(name);
            d.rejected.remove(name);
        }
    }

    /// Whether `resource` is byte-identical to the accepted version of `name`.
    pub fn same(&self, t: TypeUrl, name: &str, resource: &Any) -> bool {
        self.types
            .lock()
            .get(&t)
            .and_then(|d| d.resources.get(name))
            .is_some_and(|s| s.resource == *resource)
    }

    pub fn set_version(&self, t: TypeUrl, version: &str, error: Option<String>) {
        let mut types = self.types.lock();
        let d = types.entry(t).or_default();
        d.version_info = version.to_string();
        d.last_error = error;
    }

    pub fn set_warming(&self, clusters: Vec<String>, listeners: Vec<String>) {
        *self.warming.lock() = (clusters, listeners);
    }

    /// A copy of one type's state.
    pub fn get(&self, t: TypeUrl) -> TypeDump {
        self.types.lock().get(&t).cloned().unwrap_or_default()
    }

    /// Names of the warming clusters and listeners.
    pub fn warming(&self) -> (Vec<String>, Vec<String>) {
        self.warming.lock().clone()
    }

    /// The versions of every accepted resource of a type (delta reconnects send these).
    pub fn versions(&self, t: TypeUrl) -> HashMap<String, String> {
        self.types
            .lock()
            .get(&t)
            .map(|d| {
                d.resources
                    .iter()
                    .map(|(n, s)| (n.clone(), s.version.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}
