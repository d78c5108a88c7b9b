//! Command line and environment: every flag is also an environment variable (Istio's
//! names where Istio has one: `POD_NAME`, `POD_NAMESPACE`, `INSTANCE_IP`,
//! `SERVICE_ACCOUNT`, `XDS_ADDRESS`), and the node identity is built as Istio's agent
//! builds it.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};
use serde_json::{Map, Value, json};

use crate::xds::NodeInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// A workload's sidecar (traffic captured to 15001/15006).
    Sidecar,
    /// A gateway: listeners on the Gateway servers' ports, no capture.
    Router,
}

impl Mode {
    fn node_type(self) -> &'static str {
        match self {
            Mode::Sidecar => "sidecar",
            Mode::Router => "router",
        }
    }
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "mesh-proxy",
    version,
    about = "The mesh data plane: an Envoy-xDS-driven sidecar and gateway proxy"
)]
pub struct Args {
    #[arg(long, env = "MESH_MODE", value_enum, default_value = "sidecar")]
    pub mode: Mode,
    /// The control plane's xDS endpoint (`http://host:port`).
    #[arg(long, env = "XDS_ADDRESS", default_value = "http://127.0.0.1:15010")]
    pub xds_address: String,
    /// Use state-of-the-world xDS instead of delta.
    #[arg(long, env = "MESH_XDS_SOTW")]
    pub xds_sotw: bool,
    /// The node id; default `<mode>~<ip>~<pod>.<ns>~<ns>.svc.<domain>`.
    #[arg(long, env = "MESH_NODE_ID")]
    pub node_id: Option<String>,
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub pod_namespace: String,
    #[arg(long, env = "INSTANCE_IP")]
    pub instance_ip: Option<String>,
    #[arg(long, env = "SERVICE_ACCOUNT")]
    pub service_account: Option<String>,
    /// The workload (Deployment) name, `WORKLOAD_NAME` in the node metadata.
    #[arg(long, env = "MESH_WORKLOAD_NAME")]
    pub workload_name: Option<String>,
    /// Pod labels as `key=value` (repeatable, or comma separated in the variable).
    #[arg(long = "label", env = "MESH_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// A Kubernetes downward-API labels file (`key="value"` lines).
    #[arg(long, env = "MESH_LABELS_FILE")]
    pub labels_file: Option<PathBuf>,
    #[arg(long, env = "MESH_CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,
    #[arg(long, env = "MESH_ID", default_value = "cluster.local")]
    pub mesh_id: String,
    #[arg(long, env = "MESH_DNS_DOMAIN", default_value = "cluster.local")]
    pub dns_domain: String,
    #[arg(long, env = "MESH_INTERCEPTION_MODE", default_value = "REDIRECT")]
    pub interception_mode: String,
    /// Envoy's service cluster (`<app>.<namespace>` by default).
    #[arg(long, env = "MESH_SERVICE_CLUSTER")]
    pub service_cluster: Option<String>,
    #[arg(long, env = "MESH_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    /// `/healthz/ready`; empty disables.
    #[arg(long, env = "MESH_HEALTH_ADDR", default_value = "0.0.0.0:15021")]
    pub health_addr: String,
    /// `/stats/prometheus`; empty disables.
    #[arg(long, env = "MESH_PROMETHEUS_ADDR", default_value = "0.0.0.0:15090")]
    pub prometheus_addr: String,
    /// Merged metrics and agent endpoints; empty disables.
    #[arg(
        long,
        env = "MESH_MERGED_METRICS_ADDR",
        default_value = "0.0.0.0:15020"
    )]
    pub merged_metrics_addr: String,
    /// Worker threads.
    #[arg(long, env = "MESH_CONCURRENCY", default_value_t = 2)]
    pub concurrency: usize,
    /// Log filter (`info`, `debug`, `mesh_proxy::xds=debug,info`).
    #[arg(long, env = "MESH_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// How long removed listeners and a shutting-down proxy let connections finish.
    #[arg(long, env = "MESH_DRAIN_DURATION", default_value = "5s", value_parser = parse_duration)]
    pub drain_duration: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("label {0:?}: expected key=value")]
    Label(String),
    #[error("labels file {path}: {source}")]
    LabelsFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("labels file {path} line {line}: expected key=\"value\"")]
    LabelsLine { path: PathBuf, line: usize },
    #[error("--{flag} {value:?}: {message}")]
    Address {
        flag: &'static str,
        value: String,
        message: String,
    },
}

/// `5s`, `500ms`, `1m`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (try 5s, 500ms, 1m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a downward-API labels file: `key="value"` per line (values JSON-quoted).
pub fn parse_labels_file(path: &std::path::Path) -> Result<BTreeMap<String, String>, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::LabelsFile {
        path: path.into(),
        source,
    })?;
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or(CliError::LabelsLine {
            path: path.into(),
            line: i + 1,
        })?;
        let v =
            serde_json::from_str::<String>(v).unwrap_or_else(|_| v.trim_matches('"').to_string());
        out.insert(k.trim().to_string(), v);
    }
    Ok(out)
}

impl Args {
    /// Pod labels from the file and the flags (flags win).
    pub fn labels(&self) -> Result<BTreeMap<String, String>, CliError> {
        let mut labels = match &self.labels_file {
            Some(p) if p.exists() => parse_labels_file(p)?,
            Some(_) | None => BTreeMap::new(),
        };
        for l in &self.labels {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| CliError::Label(l.clone()))?;
            labels.insert(k.to_string(), v.to_string());
        }
        Ok(labels)
    }

    fn pod_name(&self) -> String {
        self.pod_name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "mesh-proxy".into())
        })
    }

    /// Istio's node identity and metadata.
    pub fn node(&self) -> Result<NodeInfo, CliError> {
        let labels = self.labels()?;
        let pod = self.pod_name();
        let ns = &self.pod_namespace;
        let ip = self
            .instance_ip
            .clone()
            .unwrap_or_else(|| "127.0.0.1".into());
        let id = self.node_id.clone().unwrap_or_else(|| {
            format!(
                "{}~{ip}~{pod}.{ns}~{ns}.svc.{}",
                self.mode.node_type(),
                self.dns_domain
            )
        });
        let app = labels
            .get("app")
            .or_else(|| labels.get("app.kubernetes.io/name"))
            .cloned()
            .unwrap_or_else(|| pod.clone());
        let mut md = Map::new();
        md.insert("NAME".into(), json!(pod));
        md.insert("NAMESPACE".into(), json!(ns));
        md.insert("INSTANCE_IPS".into(), json!(ip));
        md.insert(
            "LABELS".into(),
            Value::Object(labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect()),
        );
        if let Some(sa) = &self.service_account {
            md.insert("SERVICE_ACCOUNT".into(), json!(sa));
        }
        md.insert(
            "WORKLOAD_NAME".into(),
            json!(self.workload_name.clone().unwrap_or_else(|| app.clone())),
        );
        md.insert("CLUSTER_ID".into(), json!(self.cluster_id));
        md.insert("MESH_ID".into(), json!(self.mesh_id));
        md.insert("INTERCEPTION_MODE".into(), json!(self.interception_mode));
        md.insert("PROXY_TYPE".into(), json!(self.mode.node_type()));
        Ok(NodeInfo {
            id,
            cluster: self
                .service_cluster
                .clone()
                .unwrap_or_else(|| format!("{app}.{ns}")),
            metadata: md,
            locality: None,
        })
    }

    /// An optional listen address flag (`""` disables it).
    pub fn optional_addr(flag: &'static str, value: &str) -> Result<Option<SocketAddr>, CliError> {
        if value.trim().is_empty() {
            return Ok(None);
        }
        value
            .parse()
            .map(Some)
            .map_err(|e: std::net::AddrParseError| CliError::Address {
                flag,
                value: value.into(),
                message: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("mesh-proxy").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn node_id_follows_istio() {
        let a = parse(&[
            "--pod-name",
            "reviews-v1-abc",
            "--pod-namespace",
            "bookinfo",
            "--instance-ip",
            "10.250.0.7",
            "--service-account",
            "reviews",
            "--label",
            "app=reviews",
            "--label",
            "version=v1",
        ]);
        let n = a.node().unwrap();
        assert_eq!(
            n.id,
            "sidecar~10.250.0.7~reviews-v1-abc.bookinfo~bookinfo.svc.cluster.local"
        );
        assert_eq!(n.cluster, "reviews.bookinfo");
        assert_eq!(n.metadata["NAMESPACE"], "bookinfo");
        assert_eq!(n.metadata["LABELS"]["version"], "v1");
        assert_eq!(n.metadata["SERVICE_ACCOUNT"], "reviews");
        assert_eq!(n.metadata["INSTANCE_IPS"], "10.250.0.7");
        let r = parse(&[
            "--mode",
            "router",
            "--pod-name",
            "gw",
            "--instance-ip",
            "10.250.0.9",
        ]);
        assert!(
            r.node()
                .unwrap()
                .id
                .starts_with("router~10.250.0.9~gw.default~")
        );
    }

    #[test]
    fn labels_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("labels");
        std::fs::write(
            &p,
            "app=\"ratings\"\nversion=\"v2\"\nsecurity.istio.io/tlsMode=\"istio\"\n",
        )
        .unwrap();
        let a = parse(&[
            "--labels-file",
            p.to_str().unwrap(),
            "--label",
            "version=v3",
        ]);
        let l = a.labels().unwrap();
        assert_eq!(l["app"], "ratings");
        assert_eq!(l["version"], "v3");
        assert_eq!(l["security.istio.io/tlsMode"], "istio");
        assert!(parse(&["--label", "novalue"]).labels().is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse(&["--drain-duration", "1s"]).drain_duration == Duration::from_secs(1));
    }

    #[test]
    fn optional_addresses() {
        assert_eq!(Args::optional_addr("health-addr", "").unwrap(), None);
        assert!(Args::optional_addr("health-addr", "nope").is_err());
    }
}
