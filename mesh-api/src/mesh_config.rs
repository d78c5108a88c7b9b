//! The mesh-wide settings Istio keeps in the `mesh` key of its `istio` ConfigMap
//! (`MeshConfig`). Missing fields take Istio's defaults; fields this mesh does not model
//! are kept verbatim in `extra` (Istio's MeshConfig has many more), so reading and
//! writing a ConfigMap loses nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::networking::{
    ConnectionPoolSettings, H2UpgradePolicy, HttpRetry, LocalityLbSetting, OutboundTrafficMode,
};

/// The ConfigMap key holding the mesh config YAML.
pub const CONFIG_MAP_KEY: &str = "mesh";
/// The ConfigMap name Istio uses (in the root namespace).
pub const CONFIG_MAP_NAME: &str = "istio";

/// Why a mesh config could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MeshConfigError {
    #[error("mesh config: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error(
        "configmap {namespace}/{name} has no {CONFIG_MAP_KEY:?} key (hint: Istio keeps the mesh config YAML under data.mesh)"
    )]
    MissingKey { namespace: String, name: String },
    #[error("mesh config field {field}: {message}")]
    Invalid { field: String, message: String },
}

/// Istio `MeshConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshConfig {
    pub trust_domain: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trust_domain_aliases: Vec<String>,
    pub root_namespace: String,
    pub outbound_traffic_policy: MeshOutboundTrafficPolicy,
    pub default_config: ProxyConfig,
    /// Empty: no access log; `/dev/stdout`: the proxy's stdout.
    pub access_log_file: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub access_log_format: String,
    pub access_log_encoding: AccessLogEncoding,
    pub enable_tracing: bool,
    pub enable_auto_mtls: bool,
    pub connect_timeout: Duration,
    pub protocol_detection_timeout: Duration,
    pub ingress_class: String,
    pub ingress_service: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub default_service_export_to: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub default_virtual_service_export_to: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub default_destination_rule_export_to: Vec<String>,
    /// Istio enables locality load balancing by default (`{enabled: true}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locality_lb_setting: Option<LocalityLbSetting>,
    /// The retry policy of HTTP routes that set none (Istio's built-in default otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_http_retry_policy: Option<HttpRetry>,
    pub dns_refresh_rate: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound_connection_pool: Option<ConnectionPoolSettings>,
    pub enable_prometheus_merge: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extension_providers: Vec<ExtensionProviderConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_providers: Option<DefaultProviders>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh_mtls: Option<MeshMtls>,
    /// Every other MeshConfig field, kept as written.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for MeshConfig {
    /// Istio's defaults (`mesh.DefaultMeshConfig`).
    fn default() -> Self {
        Self {
            trust_domain: crate::naming::DEFAULT_TRUST_DOMAIN.to_string(),
            trust_domain_aliases: Vec::new(),
            root_namespace: "istio-system".to_string(),
            outbound_traffic_policy: MeshOutboundTrafficPolicy {
                mode: OutboundTrafficMode::AllowAny,
            },
            default_config: ProxyConfig::default(),
            access_log_file: String::new(),
            access_log_format: String::new(),
            access_log_encoding: AccessLogEncoding::Text,
            enable_tracing: true,
            enable_auto_mtls: true,
            connect_timeout: std::time::Duration::from_secs(10).into(),
            protocol_detection_timeout: std::time::Duration::ZERO.into(),
            ingress_class: "istio".to_string(),
            ingress_service: "istio-ingressgateway".to_string(),
            default_service_export_to: vec!["*".to_string()],
            default_virtual_service_export_to: vec!["*".to_string()],
            default_destination_rule_export_to: vec!["*".to_string()],
            locality_lb_setting: Some(LocalityLbSetting {
                enabled: Some(true),
                ..Default::default()
            }),
            default_http_retry_policy: None,
            dns_refresh_rate: std::time::Duration::from_secs(60).into(),
            h2_upgrade_policy: None,
            tcp_keepalive: None,
            inbound_connection_pool: None,
            enable_prometheus_merge: true,
            extension_providers: Vec::new(),
            default_providers: None,
            mesh_mtls: None,
            extra: BTreeMap::new(),
        }
    }
}

// === impl MeshConfig ===

impl MeshConfig {
    /// Parses the mesh config YAML (the ConfigMap's `mesh` value); missing fields keep
    /// Istio's defaults. Durations are checked here, since a bad one cannot be applied.
    pub fn from_yaml(text: &str) -> Result<Self, MeshConfigError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let config: MeshConfig = serde_yaml::from_str(text)?;
        config.check()?;
        Ok(config)
    }

    /// Reads `data.mesh` of Istio's `istio` ConfigMap.
    pub fn from_config_map(cm: &ConfigMap) -> Result<Self, MeshConfigError> {
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get(CONFIG_MAP_KEY))
            .ok_or_else(|| MeshConfigError::MissingKey {
                namespace: cm.metadata.namespace.clone().unwrap_or_default(),
                name: cm.metadata.name.clone().unwrap_or_default(),
            })?;
        Self::from_yaml(text)
    }

    fn check(&self) -> Result<(), MeshConfigError> {
        let durations = [
            ("connectTimeout", &self.connect_timeout),
            ("protocolDetectionTimeout", &self.protocol_detection_timeout),
            ("dnsRefreshRate", &self.dns_refresh_rate),
            (
                "defaultConfig.drainDuration",
                &self.default_config.drain_duration,
            ),
            (
                "defaultConfig.terminationDrainDuration",
                &self.default_config.termination_drain_duration,
            ),
        ];
        for (field, d) in durations {
            if let Err(e) = d.parsed() {
                return Err(MeshConfigError::Invalid {
                    field: field.to_string(),
                    message: e.to_string(),
                });
            }
        }
        if let Some(retry) = &self.default_http_retry_policy {
            let mut errs = crate::validation::semantic::Errors::default();
            crate::validation::semantic::retries(&mut errs, "defaultHttpRetryPolicy", retry);
            if let Some(e) = errs.0.into_iter().next() {
                return Err(MeshConfigError::Invalid {
                    field: e.path,
                    message: e.message,
                });
            }
        }
        if let Some(l) = &self.locality_lb_setting {
            let mut errs = crate::validation::semantic::Errors::default();
            crate::validation::semantic::locality_lb(&mut errs, "localityLbSetting", l);
            if let Some(e) = errs.0.into_iter().next() {
                return Err(MeshConfigError::Invalid {
                    field: e.path,
                    message: e.message,
                });
            }
        }
        if self.trust_domain.is_empty() {
            return Err(MeshConfigError::Invalid {
                field: "trustDomain".to_string(),
                message: "must not be empty".to_string(),
            });
        }
        Ok(())
    }
}

/// Istio `MeshConfig.OutboundTrafficPolicy`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshOutboundTrafficPolicy {
    pub mode: OutboundTrafficMode,
}

/// Istio `MeshConfig.AccessLogEncoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AccessLogEncoding {
    #[default]
    Text,
    Json,
}

/// Istio `ProxyConfig` (`defaultConfig`): per-proxy settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxyConfig {
    pub discovery_address: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub proxy_metadata: BTreeMap<String, String>,
    /// 0: as many worker threads as cores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<i32>,
    pub drain_duration: Duration,
    pub termination_drain_duration: Duration,
    pub status_port: u32,
    pub hold_application_until_proxy_starts: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing: Option<serde_json::Value>,
    /// Every other ProxyConfig field, kept as written.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            discovery_address: "istiod.istio-system.svc:15012".to_string(),
            proxy_metadata: BTreeMap::new(),
            concurrency: None,
            drain_duration: std::time::Duration::from_secs(45).into(),
            termination_drain_duration: std::time::Duration::from_secs(5).into(),
            status_port: 15020,
            hold_application_until_proxy_starts: false,
            tracing: None,
            extra: BTreeMap::new(),
        }
    }
}

/// Istio `MeshConfig.ExtensionProvider`: a name and one provider stanza
/// (`envoyOtelAls`, `opentelemetry`, `zipkin`, `envoyExtAuthzHttp`, `prometheus`, ...).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionProviderConfig {
    pub name: String,
    #[serde(flatten)]
    pub provider: BTreeMap<String, serde_json::Value>,
}

/// Istio `MeshConfig.DefaultProviders`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct DefaultProviders {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tracing: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub access_logging: Vec<String>,
}

/// Istio `MeshConfig.TLSConfig` (`meshMTLS`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshMtls {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_protocol_version: Option<crate::networking::TlsProtocol>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_like_istio() {
        let m = MeshConfig::from_yaml("").expect("empty is default");
        assert_eq!(m.trust_domain, "cluster.local");
        assert_eq!(m.root_namespace, "istio-system");
        assert_eq!(
            m.outbound_traffic_policy.mode,
            OutboundTrafficMode::AllowAny
        );
        assert!(m.enable_tracing);
        assert_eq!(
            m.connect_timeout.get(),
            Some(std::time::Duration::from_secs(10))
        );
    }

    #[test]
    fn reads_fields_and_keeps_unknown_ones() {
        let m = MeshConfig::from_yaml(
            "trustDomain: example.org\naccessLogFile: /dev/stdout\naccessLogEncoding: JSON\n\
             outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\ndefaultConfig:\n  proxyMetadata:\n    A: b\n  \
             holdApplicationUntilProxyStarts: true\n  terminationDrainDuration: 30s\nenableAutoMtls: false\n\
             discoverySelectors: [{matchLabels: {a: b}}]\n",
        )
        .expect("valid");
        assert_eq!(m.trust_domain, "example.org");
        assert_eq!(m.access_log_encoding, AccessLogEncoding::Json);
        assert_eq!(
            m.outbound_traffic_policy.mode,
            OutboundTrafficMode::RegistryOnly
        );
        assert!(m.default_config.hold_application_until_proxy_starts);
        assert_eq!(
            m.default_config.discovery_address,
            "istiod.istio-system.svc:15012"
        );
        assert!(!m.enable_auto_mtls);
        assert!(m.extra.contains_key("discoverySelectors"));
        let back = serde_yaml::to_string(&m).expect("serialises");
        assert!(back.contains("discoverySelectors"), "{back}");
    }

    #[test]
    fn rejects_bad_duration_naming_field() {
        let err = MeshConfig::from_yaml("connectTimeout: soon").expect_err("bad duration");
        assert!(err.to_string().contains("connectTimeout"), "{err}");
    }

    #[test]
    fn from_config_map() {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("istio".into());
        cm.metadata.namespace = Some("istio-system".into());
        assert!(matches!(
            MeshConfig::from_config_map(&cm),
            Err(MeshConfigError::MissingKey { .. })
        ));
        cm.data = Some([("mesh".to_string(), "rootNamespace: mesh-root".to_string())].into());
        assert_eq!(
            MeshConfig::from_config_map(&cm)
                .expect("valid")
                .root_namespace,
            "mesh-root"
        );
    }
}
