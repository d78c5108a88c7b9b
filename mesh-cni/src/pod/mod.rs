//! Where the plugin looks a pod up: the Kubernetes API (through a kubeconfig) or a
//! directory of Pod YAML (the local cluster's config directory). Also the rule that
//! decides whether a pod has a sidecar and so must be captured.

mod dir;
mod kube;

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;

pub use dir::DirSource;
pub use kube::KubeSource;

use crate::capture::config::annotation;

/// The sidecar container's name, as Istio's injector names it.
pub const SIDECAR_CONTAINER: &str = "istio-proxy";

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("pod {namespace}/{name} not found in {source_desc}{hint}")]
    NotFound {
        namespace: String,
        name: String,
        source_desc: String,
        hint: String,
    },
    #[error(
        "pod {namespace}/{name}: the Kubernetes API failed: {message} (hint: check the kubeconfig named in the netconf and that the API server is reachable)"
    )]
    Api {
        namespace: String,
        name: String,
        message: String,
    },
    #[error("pod source {path}: {message}")]
    Source { path: PathBuf, message: String },
}

/// The netconf's `podSource`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum PodSourceConfig {
    /// The Kubernetes API server named in a kubeconfig file.
    Kubernetes {
        kubeconfig: PathBuf,
        #[serde(default)]
        context: Option<String>,
    },
    /// A directory of YAML/JSON files holding Pod objects (searched recursively).
    Dir { dir: PathBuf },
}

/// Looks up pods by namespace and name.
pub trait PodSource {
    fn get(&self, namespace: &str, name: &str) -> Result<Pod, PodError>;
}

impl PodSourceConfig {
    pub fn open(&self) -> Box<dyn PodSource> {
        match self {
            PodSourceConfig::Kubernetes {
                kubeconfig,
                context,
            } => Box::new(KubeSource::new(kubeconfig.clone(), context.clone())),
            PodSourceConfig::Dir { dir } => Box::new(DirSource::new(dir.clone())),
        }
    }
}

/// Why a pod is or is not captured; the reason is logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Capture,
    Skip(&'static str),
}

/// A pod is captured when it has a sidecar (the injector's status annotation, or a
/// container or native-sidecar init container named `istio-proxy`) and has not opted out
/// with `sidecar.istio.io/inject: "false"`.
pub fn decide(pod: &Pod) -> Decision {
    let annotations = pod.metadata.annotations.as_ref();
    let ann = |k: &str| annotations.and_then(|a| a.get(k)).map(String::as_str);
    if ann(annotation::INJECT).is_some_and(|v| v.eq_ignore_ascii_case("false")) {
        return Decision::Skip("sidecar.istio.io/inject is \"false\"");
    }
    let spec = pod.spec.as_ref();
    let has_container = spec.is_some_and(|s| {
        s.containers.iter().any(|c| c.name == SIDECAR_CONTAINER)
            || s.init_containers
                .iter()
                .flatten()
                .any(|c| c.name == SIDECAR_CONTAINER)
    });
    if ann(annotation::SIDECAR_STATUS).is_some() || has_container {
        Decision::Capture
    } else {
        Decision::Skip(
            "no sidecar (no sidecar.istio.io/status annotation, no istio-proxy container)",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn sidecar_detection() {
        let with_status = pod(
            "metadata: {name: a, annotations: {sidecar.istio.io/status: '{}'}}\nspec: {containers: [{name: app}]}",
        );
        assert_eq!(decide(&with_status), Decision::Capture);
        let with_container =
            pod("metadata: {name: a}\nspec: {containers: [{name: app}, {name: istio-proxy}]}");
        assert_eq!(decide(&with_container), Decision::Capture);
        let native = pod(
            "metadata: {name: a}\nspec: {containers: [{name: app}], initContainers: [{name: istio-proxy}]}",
        );
        assert_eq!(decide(&native), Decision::Capture);
        let plain = pod("metadata: {name: a}\nspec: {containers: [{name: app}]}");
        assert!(matches!(decide(&plain), Decision::Skip(_)));
        let opted_out = pod(
            "metadata: {name: a, annotations: {sidecar.istio.io/inject: 'false'}}\nspec: {containers: [{name: app}, {name: istio-proxy}]}",
        );
        assert!(matches!(decide(&opted_out), Decision::Skip(_)));
    }
}
