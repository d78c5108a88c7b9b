//! The network configuration the runtime passes on stdin: the CNI spec's common keys,
//! `prevResult` (kept as raw JSON so it is passed through byte-for-byte equivalent), and
//! this plugin's own keys:
//!
//! ```json
//! { "type": "mesh-cni",
//!   "podSource": { "type": "dir", "dir": "/run/mesh-local/config" },
//!   "logFile": "/var/log/mesh-cni.log",
//!   "iptables": "auto",
//!   "excludeNamespaces": ["kube-system"] }
//! ```
//! `podSource` may instead be `{ "type": "kubernetes", "kubeconfig": "/etc/cni/net.d/mesh-cni.kubeconfig" }`.

use std::path::PathBuf;

use serde::Deserialize;

use super::error::{CniError, Code};
use crate::capture::BackendChoice;
use crate::pod::PodSourceConfig;

/// Versions whose results this plugin can pass through. CHECK exists from 0.4.0 on.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// Where the plugin logs when the netconf names no file.
pub const DEFAULT_LOG_FILE: &str = "/var/log/mesh-cni.log";

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
    pub pod_source: PodSourceConfig,
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    #[serde(default)]
    pub iptables: BackendChoice,
    #[serde(default)]
    pub exclude_namespaces: Vec<String>,
}

/// Just the version, for VERSION and for error results when the rest does not parse.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionOnly {
    #[serde(default)]
    pub cni_version: Option<String>,
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        if stdin.iter().all(u8::is_ascii_whitespace) {
            return Err(CniError::new(
                Code::InvalidNetconf,
                "empty network configuration",
                "the runtime passed nothing on stdin",
            ));
        }
        let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
            let code = if e.is_data() {
                Code::InvalidNetconf
            } else {
                Code::Decode
            };
            CniError::new(code, "invalid network configuration", e)
        })?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                "incompatible CNI version",
                format!(
                    "cniVersion {:?} is not supported (supported: {})",
                    conf.cni_version,
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        Ok(conf)
    }

    pub fn log_file(&self) -> PathBuf {
        self.log_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_LOG_FILE))
    }
}

/// The cniVersion of whatever is on stdin, for error results.
pub fn sniff_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<VersionOnly>(stdin)
        .ok()
        .and_then(|v| v.cni_version)
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| "1.0.0".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_chained_netconf() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"k8s","type":"mesh-cni",
            "podSource":{"type":"dir","dir":"/tmp/x"},"iptables":"legacy",
            "prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.250.0.2/16"}]},
            "runtimeConfig":{"portMappings":[]}}"#,
        )
        .unwrap();
        assert_eq!(conf.iptables, BackendChoice::Legacy);
        assert_eq!(
            conf.pod_source,
            PodSourceConfig::Dir {
                dir: "/tmp/x".into()
            }
        );
        assert!(conf.prev_result.is_some());
    }

    #[test]
    fn errors_name_the_problem() {
        let err = NetConf::parse(br#"{"cniVersion":"1.0.0","type":"mesh-cni"}"#).unwrap_err();
        assert_eq!(err.code, Code::InvalidNetconf);
        assert!(err.details.contains("podSource"), "{err}");
        let err = NetConf::parse(b"{not json").unwrap_err();
        assert_eq!(err.code, Code::Decode);
        let err = NetConf::parse(br#"{"cniVersion":"9.9.9","podSource":{"type":"dir","dir":"/"}}"#)
            .unwrap_err();
        assert_eq!(err.code, Code::IncompatibleVersion);
        let err =
            NetConf::parse(br#"{"cniVersion":"1.0.0","podSource":{"type":"etcd"}}"#).unwrap_err();
        assert!(err.details.contains("etcd"), "{err}");
    }
}
