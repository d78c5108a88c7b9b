//! CNI errors: the spec's error result (`code`, `msg`, `details`) that the runtime reads
//! from stdout when the plugin exits non-zero.

use serde::Serialize;

/// Error codes from the CNI spec (1.0.0, "Error"), plus this plugin's own (100 and up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    UnknownContainer = 3,
    InvalidEnvironment = 4,
    Io = 5,
    Decode = 6,
    InvalidNetconf = 7,
    TryAgainLater = 11,
    /// The pod's capture annotations are invalid.
    InvalidAnnotation = 100,
    /// iptables could not be applied or checked in the pod's namespace.
    Iptables = 101,
    /// CHECK found rules different from what the pod asks for.
    Drift = 102,
}

/// A failed CNI command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}: {details}")]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>, details: impl ToString) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.to_string(),
        }
    }

    /// The error result as the spec defines it.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            details: &'a str,
        }
        serde_json::to_string(&Wire {
            cni_version,
            code: self.code as u32,
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or_else(|_| format!("{{\"code\":{},\"msg\":\"error\"}}", self.code as u32))
    }
}
