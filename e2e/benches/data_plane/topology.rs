//! The pods: for every proxy kind, a server pod (the 1 KiB upstream app, with the kind's
//! sidecar) and a client pod (where the load generator runs as the app UID, so its
//! connections are captured into the client sidecar), in a local cluster of their own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use e2e::local::commands::{PodCommand, PodCommands, Readiness};
use e2e::local::manifest::{PodKind, PodSpec, ServicePort, ServiceSpec};
use e2e::local::{Binaries, ClusterConfig, LocalCluster};

use crate::proxies::{self, Common, Kind, Side};

pub const NAMESPACE: &str = "bench";

/// A workload: the protocol and the port it is served on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    Http1,
    H2c,
    Grpc,
    Tcp,
}

impl Workload {
    pub const ALL: [Workload; 4] = [
        Workload::Http1,
        Workload::H2c,
        Workload::Grpc,
        Workload::Tcp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Http1 => "http1",
            Workload::H2c => "h2c",
            Workload::Grpc => "grpc",
            Workload::Tcp => "tcp",
        }
    }

    /// The app's port; the Service port has the same number and a name by which Istio
    /// (and our control plane) picks the protocol.
    pub fn port(self) -> u16 {
        match self {
            Workload::Http1 => 8080,
            Workload::H2c => 8081,
            Workload::Grpc => 8082,
            Workload::Tcp => 9000,
        }
    }

    fn port_name(self) -> &'static str {
        match self {
            Workload::Http1 => "http",
            Workload::H2c => "http2",
            Workload::Grpc => "grpc",
            Workload::Tcp => "tcp",
        }
    }
}

/// A client pod and a server pod with the same kind of sidecar.
#[derive(Debug, Clone)]
pub struct Pair {
    pub kind: Kind,
    /// The workloads this pair carries.
    pub workloads: Vec<Workload>,
    pub client_netns: String,
    pub server_netns: String,
    pub server_ip: String,
    /// The Service VIP (absent for the direct pair, whose client dials the pod).
    pub vip: Option<String>,
    pub client_proxy: Option<i32>,
    pub server_proxy: Option<i32>,
}

impl Pair {
    /// Where the load generator dials for `w`.
    pub fn target(&self, w: Workload) -> String {
        format!(
            "{}:{}",
            self.vip.as_deref().unwrap_or(&self.server_ip),
            w.port()
        )
    }

    /// `mesh-proxy` or `nginx (http1)`.
    pub fn label(&self) -> String {
        if self.kind.one_pair() {
            self.kind.name().to_string()
        } else {
            let w: Vec<&str> = self.workloads.iter().map(|w| w.name()).collect();
            format!("{} ({})", self.kind.name(), w.join(","))
        }
    }
}

/// How to build the pods.
pub struct Options {
    pub kinds: Vec<Kind>,
    pub workloads: Vec<Workload>,
    pub concurrency: usize,
    /// CPUs of the proxies and the apps (`taskset -c` list), when pinning.
    pub proxy_cpus: Option<String>,
    pub envoy: Option<PathBuf>,
    /// This bench's executable, run as the upstream app.
    pub bench_exe: PathBuf,
}

pub struct Topology {
    /// Its `Drop` tears the cluster down when the bench fails half-way.
    pub cluster: LocalCluster,
    pub pairs: Vec<Pair>,
}

impl Topology {
    /// Stops every process and removes the cluster, reporting what could not be removed.
    pub fn teardown(self) -> Result<()> {
        let dir = self.cluster.dir().to_path_buf();
        self.cluster.keep();
        e2e::local::teardown(&dir)
    }
}

/// The cluster directory and name prefix: separate from the demo's and the e2e runner's.
pub fn cluster_config() -> ClusterConfig {
    ClusterConfig {
        dir: std::env::var_os("MESH_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/run/mesh-bench-data")),
        prefix: "mbd".into(),
        host_link: false,
        control_plane: true,
        proxy_ready_timeout: Duration::from_secs(30),
        bins: Binaries::locate(),
    }
}

pub fn build(opts: &Options) -> Result<Topology> {
    let cfg = cluster_config();
    // A bench that crashed leaves its cluster behind; this one is ours to clean.
    e2e::local::teardown(&cfg.dir).context("removing the cluster of an earlier bench run")?;
    let dir = cfg.dir.clone();
    let cluster = LocalCluster::up(cfg)?;
    let work_dir = dir.join("proxies");
    let pin: Vec<String> = opts
        .proxy_cpus
        .as_ref()
        .map(|c| vec!["taskset".into(), "-c".into(), c.clone()])
        .unwrap_or_default();
    let common = Common {
        cluster: &cluster,
        pin: pin.clone(),
        concurrency: opts.concurrency,
        envoy: opts.envoy.as_deref(),
        work_dir: &work_dir,
    };
    let mut pairs = Vec::new();
    for &kind in &opts.kinds {
        let groups: Vec<Vec<Workload>> = if kind.one_pair() {
            vec![opts.workloads.clone()]
        } else {
            opts.workloads.iter().map(|w| vec![*w]).collect()
        };
        for workloads in groups {
            let pair = add_pair(&common, opts, &pin, kind, workloads)
                .with_context(|| format!("creating the {} pods", kind.name()))?;
            pairs.push(pair);
        }
    }
    Ok(Topology { cluster, pairs })
}

fn add_pair(
    c: &Common<'_>,
    opts: &Options,
    pin: &[String],
    kind: Kind,
    workloads: Vec<Workload>,
) -> Result<Pair> {
    let name = if kind.one_pair() {
        kind.name().to_string()
    } else {
        format!("{}-{}", kind.name(), workloads[0].name())
    };
    let server_app = format!("{name}-server");
    let vip = if kind == Kind::Direct {
        None
    } else {
        let svc = c.cluster.add_service(ServiceSpec {
            name: server_app.clone(),
            namespace: NAMESPACE.into(),
            selector: [("app".to_string(), server_app.clone())].into(),
            ports: workloads
                .iter()
                .map(|w| ServicePort {
                    name: w.port_name().into(),
                    port: w.port(),
                    target_port: w.port(),
                })
                .collect(),
        })?;
        Some(svc.vip)
    };
    let sidecar = kind != Kind::Direct;
    let http: Vec<u16> = workloads
        .iter()
        .filter(|w| **w != Workload::Tcp)
        .map(|w| w.port())
        .collect();
    let tcp: Vec<u16> = workloads
        .iter()
        .filter(|w| **w == Workload::Tcp)
        .map(|w| w.port())
        .collect();

    // Server: the upstream app and the server-side sidecar.
    let mut server = PodSpec::app(&server_app, NAMESPACE, &server_app, "v1", &http);
    server.tcp_ports = tcp.clone();
    server.kind = PodKind::App { sidecar };
    let mut app = pin.to_vec();
    app.extend([opts.bench_exe.display().to_string(), "upstream".into()]);
    for p in &http {
        app.extend(["--http-port".into(), p.to_string()]);
    }
    for p in &tcp {
        app.extend(["--tcp-port".into(), p.to_string()]);
    }
    let first = workloads[0].port();
    let server_cmds = PodCommands {
        app: Some(PodCommand::new(
            "upstream",
            app,
            Readiness::Tcp(format!("127.0.0.1:{first}")),
        )),
        sidecar: proxies::sidecar(
            c,
            kind,
            Side::Server,
            &server,
            workloads.first().copied(),
            &format!("127.0.0.1:{first}"),
        )?,
    };
    let server_info = c.cluster.add_pod_with(server, &server_cmds)?;

    // Client: an idle app (the load generator is started in it per run) and the sidecar.
    let client_app = format!("{name}-client");
    let mut client = PodSpec::app(&client_app, NAMESPACE, &client_app, "v1", &[]);
    client.kind = PodKind::App { sidecar };
    let client_cmds = PodCommands {
        app: Some(PodCommand::new(
            "idle",
            vec!["sleep".into(), "infinity".into()],
            Readiness::Started,
        )),
        sidecar: proxies::sidecar(
            c,
            kind,
            Side::Client,
            &client,
            workloads.first().copied(),
            &format!("{}:{first}", server_info.ip),
        )?,
    };
    c.cluster.add_pod_with(client, &client_cmds)?;

    let st = c.cluster.state();
    let pod = |app: &str| {
        st.pods
            .iter()
            .find(|p| p.spec.name == app && p.spec.namespace == NAMESPACE)
            .cloned()
            .with_context(|| format!("pod {app} vanished from the cluster state"))
    };
    let proxy_pid = |p: &e2e::local::state::PodState| {
        p.procs
            .iter()
            .find(|pr| pr.what == kind.name())
            .map(|pr| pr.pid)
    };
    let (cp, sp) = (pod(&client_app)?, pod(&server_app)?);
    Ok(Pair {
        kind,
        workloads,
        client_netns: cp.netns.clone(),
        server_netns: sp.netns.clone(),
        server_ip: sp.ip.clone(),
        vip,
        client_proxy: proxy_pid(&cp),
        server_proxy: proxy_pid(&sp),
    })
}

/// The Envoy binary: `$MESH_ENVOY`, else what `tools/envoy.sh` installs (and prints).
pub fn find_envoy(root: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MESH_ENVOY") {
        return Some(PathBuf::from(p));
    }
    let out = std::process::Command::new("bash")
        .arg(root.join("tools/envoy.sh"))
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && Path::new(&path).is_file()).then(|| PathBuf::from(path))
}
