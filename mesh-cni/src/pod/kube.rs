//! Pods from the Kubernetes API, through the kubeconfig named in the netconf (the node
//! agent writes one for the plugin). The plugin is a short-lived process, so it builds a
//! current-thread runtime for the one request and bounds it with a timeout.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use super::{PodError, PodSource};

/// How long ADD waits for the API server before failing (the runtime retries ADD).
const TIMEOUT: Duration = Duration::from_secs(10);

pub struct KubeSource {
    kubeconfig: PathBuf,
    context: Option<String>,
}

impl KubeSource {
    pub fn new(kubeconfig: PathBuf, context: Option<String>) -> Self {
        Self {
            kubeconfig,
            context,
        }
    }

    async fn fetch(&self, namespace: &str, name: &str) -> Result<Option<Pod>, String> {
        let kc = Kubeconfig::read_from(&self.kubeconfig)
            .map_err(|e| format!("kubeconfig {}: {e}", self.kubeconfig.display()))?;
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = Config::from_custom_kubeconfig(kc, &options)
            .await
            .map_err(|e| format!("kubeconfig {}: {e}", self.kubeconfig.display()))?;
        let client = Client::try_from(config).map_err(|e| e.to_string())?;
        Api::<Pod>::namespaced(client, namespace)
            .get_opt(name)
            .await
            .map_err(|e| e.to_string())
    }
}

impl PodSource for KubeSource {
    fn get(&self, namespace: &str, name: &str) -> Result<Pod, PodError> {
        let api_error = |message: String| PodError::Api {
            namespace: namespace.to_string(),
            name: name.to_string(),
            message,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| api_error(format!("cannot start a runtime: {e}")))?;
        let found = rt
            .block_on(async { tokio::time::timeout(TIMEOUT, self.fetch(namespace, name)).await })
            .map_err(|_| api_error(format!("no answer within {}s", TIMEOUT.as_secs())))?
            .map_err(api_error)?;
        found.ok_or_else(|| PodError::NotFound {
            namespace: namespace.to_string(),
            name: name.to_string(),
            source_desc: format!("the Kubernetes API ({})", self.kubeconfig.display()),
            hint: String::new(),
        })
    }
}
