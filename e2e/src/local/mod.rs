//! The local cluster: a mesh on one Linux machine with no Kubernetes and no Docker.
//!
//! A "node" network namespace holds the pod bridge (made by the standard CNI `bridge`
//! plugin with `host-local` IPAM, `mesh-cni` chained after it); each pod is a network
//! namespace attached by that chain, with the test app running as a non-root UID and
//! `mesh-proxy` as UID 1337. The harness plays kubelet and endpoints controller: it
//! writes Pod, Service and EndpointSlice YAML into the config directory that
//! `mesh-control`'s file source watches, `/etc/netns/<pod>/hosts` for service names, and
//! kube-proxy's VIP rules in the node namespace for traffic no sidecar captures.
//!
//! Everything it creates is recorded in `state.json` in the cluster directory
//! (`$MESH_LOCAL_DIR`, default `/run/mesh-local`) before it is created, so
//! [`teardown`] works after a crash of the process that built the cluster.

pub mod cni;
pub mod commands;
pub mod demo;
pub mod envoy;
pub mod manifest;
pub mod net;
pub mod proc;
pub mod state;
pub mod sync;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::cluster::{Caller, ClientArgs, Cluster, PodInfo, ServiceInfo};
use crate::testapp::client::Report;
use manifest::{PodKind, PodSpec, ServiceSpec};
use state::{PodState, ServiceState, State};

/// Default cluster directory.
pub const DEFAULT_DIR: &str = "/run/mesh-local";
/// Default directory of the end-to-end scenarios' clusters.
pub const E2E_DIR: &str = "/run/mesh-e2e";
/// The proxy's UID (excluded from capture).
pub const PROXY_UID: u32 = 1337;
/// The apps' UID.
pub const APP_UID: u32 = 1000;
pub const XDS_PORT: u16 = 15010;
pub const MONITORING_PORT: u16 = 15014;
/// The cluster summary (`demo.json`), rewritten whenever pods or services change, for
/// tools such as `meshctl --local`: ingress URL, control plane URLs, every pod with its
/// IP, admin address and network namespace.
pub const SUMMARY_FILE: &str = "demo.json";
/// Where `apply` puts user resources, one file per resource:
/// `config/user/<kind lowercase>.<namespace>.<name>.yaml` (meshctl --local uses the same).
pub const USER_DIR: &str = "config/user";

/// Paths of the binaries the cluster runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    pub testapp: PathBuf,
    pub mesh_cni: PathBuf,
    pub mesh_proxy: PathBuf,
    pub mesh_control: PathBuf,
    /// Run upstream Envoy as every pod's proxy instead of mesh-proxy (the reference).
    pub envoy: Option<PathBuf>,
}

impl Binaries {
    /// `$MESH_TESTAPP_BIN`, `$MESH_CNI_BIN`, `$MESH_PROXY_BIN`, `$MESH_CONTROL_BIN`, else
    /// the cargo target directory this process runs from (tests run from `deps/`).
    /// `MESH_LOCAL_PROXY=envoy` runs upstream Envoy ([`envoy::locate`]) as the proxy.
    pub fn locate() -> Self {
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        let target = if exe_dir.ends_with("deps") {
            exe_dir.parent().map(Path::to_path_buf).unwrap_or(exe_dir)
        } else {
            exe_dir
        };
        let pick = |env: &str, name: &str| {
            std::env::var_os(env)
                .map(PathBuf::from)
                .unwrap_or_else(|| target.join(name))
        };
        Binaries {
            testapp: pick("MESH_TESTAPP_BIN", "testapp"),
            mesh_cni: pick("MESH_CNI_BIN", "mesh-cni"),
            mesh_proxy: pick("MESH_PROXY_BIN", "mesh-proxy"),
            mesh_control: pick("MESH_CONTROL_BIN", "mesh-control"),
            envoy: (std::env::var("MESH_LOCAL_PROXY").as_deref() == Ok("envoy"))
                .then(envoy::locate),
        }
    }
}

/// How to build a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub dir: PathBuf,
    /// Prefix of every namespace and interface name (unique per cluster).
    pub prefix: String,
    /// Link the host to the node (routes 10.250/16 and 10.251/16 on the host). Only one
    /// cluster on a machine can have it.
    pub host_link: bool,
    /// Start mesh-control in the node namespace.
    pub control_plane: bool,
    /// How long to wait for a sidecar's `/healthz/ready`.
    pub proxy_ready_timeout: Duration,
    pub bins: Binaries,
}

impl ClusterConfig {
    /// The demo's cluster: `$MESH_LOCAL_DIR` (default /run/mesh-local), prefix `mesh`,
    /// linked to the host.
    pub fn from_env() -> Self {
        ClusterConfig {
            dir: std::env::var_os("MESH_LOCAL_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR)),
            prefix: "mesh".into(),
            host_link: true,
            control_plane: true,
            proxy_ready_timeout: Duration::from_secs(30),
            bins: Binaries::locate(),
        }
    }

    /// The end-to-end scenarios' clusters: `$MESH_E2E_DIR` (default /run/mesh-e2e), prefix
    /// `e2e`, so that their names never collide with a demo's.
    pub fn for_e2e() -> Self {
        ClusterConfig {
            dir: std::env::var_os("MESH_E2E_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(E2E_DIR)),
            prefix: "e2e".into(),
            ..Self::from_env()
        }
    }
}

/// A running local cluster. Dropping a cluster this process created tears it down
/// (unless [`LocalCluster::keep`] was called); one attached to with
/// [`LocalCluster::attach`] is left running.
pub struct LocalCluster {
    dir: PathBuf,
    bins: Binaries,
    proxy_ready_timeout: Duration,
    state: Mutex<State>,
    owned: bool,
    /// The last sync marker written (see [`sync`]).
    sync_seq: AtomicU64,
}

fn config_dir(dir: &Path) -> PathBuf {
    dir.join("config")
}

fn hosts_dir(netns: &str) -> PathBuf {
    Path::new("/etc/netns").join(netns)
}

impl LocalCluster {
    /// Creates the node namespace (and host link), and starts the control plane.
    pub fn up(cfg: ClusterConfig) -> Result<Self> {
        if !nix::unistd::geteuid().is_root() {
            bail!("the local cluster needs root (network namespaces, iptables): run with sudo -E");
        }
        if let Some(old) = State::load(&cfg.dir)? {
            bail!(
                "a local cluster ({} pods) is already up in {} (hint: `cargo xtask demo down` or `mesh-local down`)",
                old.pods.len(),
                cfg.dir.display()
            );
        }
        // Names and routes another cluster owns are never recorded as ours, so that a
        // teardown can never remove them.
        let node = format!("{}-node", cfg.prefix);
        if net::netns_exists(&node) {
            bail!(
                "network namespace {node} already exists: another local cluster with prefix {:?} is up (its state is not in {}); tear it down first",
                cfg.prefix,
                cfg.dir.display()
            );
        }
        if cfg.host_link
            && let Some(route) = net::host_route(net::POD_CIDR)?
        {
            bail!(
                "another local cluster is linked to this host (route {route:?}); only one can be: tear it down first (`cargo xtask demo down`)"
            );
        }
        for sub in [
            "config/pods",
            "config/services",
            "config/endpointslices",
            "config/user",
            "logs",
            "ipam",
        ] {
            std::fs::create_dir_all(cfg.dir.join(sub))
                .with_context(|| format!("cannot create {}", cfg.dir.join(sub).display()))?;
        }
        let cni_dir = cfg
            .bins
            .mesh_cni
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        if !cfg.bins.mesh_cni.is_file() {
            bail!(
                "mesh-cni not found at {} (hint: cargo build -p mesh-cni, or set MESH_CNI_BIN)",
                cfg.bins.mesh_cni.display()
            );
        }
        let state = State {
            prefix: cfg.prefix.clone(),
            node_netns: format!("{}-node", cfg.prefix),
            host_link: cfg.host_link.then(|| format!("{}-h", cfg.prefix)),
            conflist: cni::conflist(&cfg.dir, &config_dir(&cfg.dir)),
            cni_dirs: vec![cni_dir],
            ..State::default()
        };
        // Recorded before anything exists, so a crash half-way is still cleaned up.
        state.save(&cfg.dir)?;
        let cluster = LocalCluster {
            dir: cfg.dir.clone(),
            bins: cfg.bins.clone(),
            proxy_ready_timeout: cfg.proxy_ready_timeout,
            state: Mutex::new(state.clone()),
            owned: true,
            sync_seq: AtomicU64::new(0),
        };
        net::create_node(&state.node_netns)?;
        if let Some(host_if) = &state.host_link {
            net::create_host_link(&state.node_netns, host_if, &format!("{}-n", cfg.prefix))?;
        }
        if cfg.control_plane {
            cluster.start_control_plane()?;
        }
        cluster.write_summary(SUMMARY_FILE)?;
        Ok(cluster)
    }

    /// Attaches to a running cluster (for meshctl, scenarios in another process, `down`).
    pub fn attach(dir: &Path) -> Result<Self> {
        let state = State::load(dir)?.with_context(|| {
            format!(
                "no local cluster in {} (hint: `cargo xtask demo up`)",
                dir.display()
            )
        })?;
        Ok(LocalCluster {
            dir: dir.to_path_buf(),
            bins: Binaries::locate(),
            proxy_ready_timeout: Duration::from_secs(30),
            state: Mutex::new(state),
            owned: false,
            sync_seq: AtomicU64::new(0),
        })
    }

    /// Leaves the cluster running when this value is dropped.
    pub fn keep(mut self) {
        self.owned = false;
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config_dir(&self) -> PathBuf {
        config_dir(&self.dir)
    }

    pub fn state(&self) -> State {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut State)) -> Result<()> {
        let mut st = self.lock();
        f(&mut st);
        st.save(&self.dir)
    }

    /// The control plane's addresses as reachable from pods and from the host.
    pub fn xds_address(&self) -> String {
        format!("{}:{XDS_PORT}", net::NODE_IP)
    }

    pub fn monitoring_url(&self) -> String {
        format!("http://{}:{MONITORING_PORT}", net::NODE_IP)
    }

    fn start_control_plane(&self) -> Result<()> {
        let bin = &self.bins.mesh_control;
        if !bin.is_file() {
            bail!(
                "mesh-control not found at {} (hint: cargo build -p mesh-control, or set MESH_CONTROL_BIN)",
                bin.display()
            );
        }
        let node = self.lock().node_netns.clone();
        let argv = vec![
            bin.display().to_string(),
            "--config-dir".into(),
            self.config_dir().display().to_string(),
            "--xds-addr".into(),
            format!("0.0.0.0:{XDS_PORT}"),
            "--monitoring-addr".into(),
            format!("0.0.0.0:{MONITORING_PORT}"),
        ];
        let log = self.dir.join("logs/mesh-control.log");
        let p = proc::spawn("mesh-control", Some(&node), None, &argv, &[], &log)?;
        self.update(|s| s.control = Some(p.clone()))?;
        wait_for(
            &format!("mesh-control monitoring port in {node}"),
            Duration::from_secs(20),
            &log,
            || in_netns(&node, || tcp_ok(&format!("127.0.0.1:{MONITORING_PORT}"))),
        )
    }

    /// Creates a pod: namespace, Pod YAML, CNI ADD, hosts file, app and proxy processes,
    /// then waits until they are ready and publishes it as Ready.
    pub fn add_pod(&self, spec: PodSpec) -> Result<PodInfo> {
        self.add_pod_with(spec, &commands::PodCommands::default())
    }

    /// [`LocalCluster::add_pod`] with other processes as the app and/or the sidecar.
    pub fn add_pod_with(&self, spec: PodSpec, cmds: &commands::PodCommands) -> Result<PodInfo> {
        let (prefix, node) = {
            let st = self.lock();
            if st
                .pods
                .iter()
                .any(|p| p.spec.name == spec.name && p.spec.namespace == spec.namespace)
            {
                bail!("pod {}/{} already exists", spec.namespace, spec.name);
            }
            (st.prefix.clone(), st.node_netns.clone())
        };
        let netns = format!("{prefix}-{}-{}", spec.namespace, spec.name);
        if net::netns_exists(&netns) {
            bail!(
                "network namespace {netns} already exists: another local cluster with prefix {prefix:?} is up; tear it down first"
            );
        }
        let pod = PodState {
            spec: spec.clone(),
            netns: netns.clone(),
            container_id: netns.clone(),
            ip: String::new(),
            ready: false,
            cni_result: None,
            procs: Vec::new(),
        };
        self.update(|s| s.pods.push(pod))?;
        net::create_netns(&netns)?;
        self.write_pod(&spec, None, false)?;

        let (conflist, dirs) = {
            let st = self.lock();
            (st.conflist.clone(), st.cni_dirs.clone())
        };
        let target = cni::Target {
            node_netns: &node,
            pod_netns: &netns,
            container_id: &netns,
            pod: &spec.name,
            namespace: &spec.namespace,
        };
        let result = cni::add(&conflist, &target, &dirs)?;
        let ip = cni::pod_ip(&result)?;
        self.set_pod(&spec, |p| {
            p.ip = ip.clone();
            p.cni_result = Some(result.clone());
        })?;
        self.write_pod(&spec, Some(&ip), false)?;
        std::fs::create_dir_all(hosts_dir(&netns))?;
        std::fs::write(
            hosts_dir(&netns).join("resolv.conf"),
            "# mesh-local: names come from /etc/hosts\nnameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        )?;
        self.sync_hosts()?;

        let env = self.pod_env(&spec, &ip);
        if let (PodKind::App { .. }, Some(app)) = (spec.kind, &cmds.app) {
            self.start_pod_command(&spec, &netns, &ip, APP_UID, app, &env)?;
        } else if let PodKind::App { .. } = spec.kind {
            let mut argv = vec![self.bins.testapp.display().to_string(), "serve".to_string()];
            for p in &spec.http_ports {
                argv.extend(["--http-port".to_string(), p.to_string()]);
            }
            for p in &spec.tcp_ports {
                argv.extend(["--tcp-port".to_string(), p.to_string()]);
            }
            let log = self
                .dir
                .join(format!("logs/{}.{}.app.log", spec.namespace, spec.name));
            let p = proc::spawn("app", Some(&netns), Some(APP_UID), &argv, &env, &log)?;
            self.set_pod(&spec, |s| s.procs.push(p))?;
            if let Some(port) = spec.http_ports.first().or(spec.tcp_ports.first()) {
                let addr = format!("127.0.0.1:{port}");
                wait_for(
                    &format!("app of pod {}/{}", spec.namespace, spec.name),
                    Duration::from_secs(10),
                    &log,
                    || in_netns(&netns, || tcp_ok(&addr)),
                )?;
            }
        }
        if let (true, Some(sidecar)) = (spec.has_sidecar(), &cmds.sidecar) {
            self.start_pod_command(&spec, &netns, &ip, PROXY_UID, sidecar, &env)?;
        } else if spec.has_sidecar() || spec.kind == PodKind::Gateway {
            let argv = match &self.bins.envoy {
                Some(envoy) => self.envoy_argv(envoy, &spec, &ip)?,
                None => self.mesh_proxy_argv(&spec),
            };
            let log = self
                .dir
                .join(format!("logs/{}.{}.proxy.log", spec.namespace, spec.name));
            let p = proc::spawn(
                "mesh-proxy",
                Some(&netns),
                Some(PROXY_UID),
                &argv,
                &env,
                &log,
            )?;
            self.set_pod(&spec, |s| s.procs.push(p))?;
            wait_for(
                &format!("proxy of pod {}/{}", spec.namespace, spec.name),
                self.proxy_ready_timeout,
                &log,
                || in_netns(&netns, || http_ok("127.0.0.1:15021", "/healthz/ready")),
            )?;
        }
        self.set_pod(&spec, |p| p.ready = true)?;
        self.write_pod(&spec, Some(&ip), true)?;
        self.sync_services()?;
        self.write_summary(SUMMARY_FILE)?;
        self.pod_info(&spec.name, &spec.namespace)
    }

    /// Writes the pod's Envoy bootstrap; returns the command that runs Envoy with it.
    fn envoy_argv(&self, envoy: &Path, spec: &PodSpec, ip: &str) -> Result<Vec<String>> {
        let workload = spec.app_label();
        let bootstrap = envoy::bootstrap(&envoy::Node {
            kind: if spec.kind == PodKind::Gateway {
                "router"
            } else {
                "sidecar"
            },
            pod: &spec.name,
            namespace: &spec.namespace,
            ip,
            labels: &spec.labels,
            service_account: &spec.service_account,
            workload: &workload,
            xds: &self.xds_address(),
        });
        let dir = self.dir.join("bootstrap");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}.{}.json", spec.namespace, spec.name));
        std::fs::write(&path, serde_json::to_vec_pretty(&bootstrap)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(envoy::argv(envoy, &path))
    }

    /// Starts a replacement process in a pod and waits until it is ready.
    fn start_pod_command(
        &self,
        spec: &PodSpec,
        netns: &str,
        ip: &str,
        uid: u32,
        cmd: &commands::PodCommand,
        env: &[(String, String)],
    ) -> Result<()> {
        let log = self.dir.join(format!(
            "logs/{}.{}.{}.log",
            spec.namespace, spec.name, cmd.what
        ));
        let argv = cmd.argv_for(spec, ip);
        let p = proc::spawn(&cmd.what, Some(netns), Some(uid), &argv, env, &log)?;
        self.set_pod(spec, |s| s.procs.push(p))?;
        let what = format!("{} of pod {}/{}", cmd.what, spec.namespace, spec.name);
        match &cmd.ready {
            commands::Readiness::Tcp(addr) => wait_for(&what, cmd.ready_timeout, &log, || {
                in_netns(netns, || tcp_ok(addr))
            }),
            commands::Readiness::Http { addr, path } => {
                wait_for(&what, cmd.ready_timeout, &log, || {
                    in_netns(netns, || http_ok(addr, path))
                })
            }
            commands::Readiness::Started => Ok(()),
        }
    }

    /// Deletes a pod as the kubelet would: it leaves the Service endpoints first, then its
    /// processes stop, CNI DEL runs, and its namespace and files go.
    pub fn remove_pod(&self, name: &str, namespace: &str) -> Result<()> {
        let st = self.state();
        let pod = st
            .pods
            .iter()
            .find(|p| p.spec.name == name && p.spec.namespace == namespace)
            .cloned()
            .with_context(|| format!("no pod {namespace}/{name}"))?;
        self.update(|s| {
            s.pods
                .retain(|p| !(p.spec.name == name && p.spec.namespace == namespace))
        })?;
        self.sync_services()?;
        let _ = std::fs::remove_file(
            self.config_dir()
                .join(format!("pods/{namespace}.{name}.yaml")),
        );
        for pr in pod.procs.iter().rev() {
            proc::stop(pr, Duration::from_secs(3))?;
        }
        let target = cni::Target {
            node_netns: &st.node_netns,
            pod_netns: &pod.netns,
            container_id: &pod.container_id,
            pod: name,
            namespace,
        };
        cni::del(&st.conflist, &target, pod.cni_result.as_ref(), &st.cni_dirs)?;
        net::delete_netns(&pod.netns)?;
        let hd = hosts_dir(&pod.netns);
        if hd.exists() {
            std::fs::remove_dir_all(&hd)?;
        }
        self.write_summary(SUMMARY_FILE)?;
        Ok(())
    }

    /// What a pod's processes get in their environment: the downward-API values Istio's
    /// sidecar template passes, and what the test app reads.
    fn pod_env(&self, spec: &PodSpec, ip: &str) -> Vec<(String, String)> {
        let labels = serde_json::to_string(&spec.labels).unwrap_or_default();
        [
            ("POD_NAME", spec.name.clone()),
            ("POD_NAMESPACE", spec.namespace.clone()),
            ("INSTANCE_IP", ip.to_string()),
            ("SERVICE_ACCOUNT", spec.service_account.clone()),
            ("SERVICE_NAME", spec.app_label()),
            ("SERVICE_VERSION", spec.version()),
            ("ISTIO_META_LABELS", labels),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn set_pod(&self, spec: &PodSpec, f: impl FnOnce(&mut PodState)) -> Result<()> {
        self.update(|s| {
            if let Some(p) = s
                .pods
                .iter_mut()
                .find(|p| p.spec.name == spec.name && p.spec.namespace == spec.namespace)
            {
                f(p);
            }
        })
    }

    fn write_pod(&self, spec: &PodSpec, ip: Option<&str>, ready: bool) -> Result<()> {
        let node = self.lock().node_netns.clone();
        let path = self
            .config_dir()
            .join(format!("pods/{}.{}.yaml", spec.namespace, spec.name));
        write_yaml(&path, &manifest::pod(spec, &node, ip, ready))
    }

    /// Creates a Service with the next free VIP.
    pub fn add_service(&self, spec: ServiceSpec) -> Result<ServiceInfo> {
        let vip = {
            let st = self.lock();
            if st
                .services
                .iter()
                .any(|s| s.spec.name == spec.name && s.spec.namespace == spec.namespace)
            {
                bail!("service {}/{} already exists", spec.namespace, spec.name);
            }
            let n = st.services.len() + 10;
            format!("10.251.{}.{}", n / 250, n % 250 + 1)
        };
        let path = self
            .config_dir()
            .join(format!("services/{}.{}.yaml", spec.namespace, spec.name));
        write_yaml(&path, &manifest::service(&spec, &vip))?;
        self.update(|s| {
            s.services.push(ServiceState {
                spec: spec.clone(),
                vip: vip.clone(),
            })
        })?;
        self.sync_services()?;
        self.sync_hosts()?;
        self.write_summary(SUMMARY_FILE)?;
        Ok(ServiceInfo {
            name: spec.name,
            namespace: spec.namespace,
            vip,
            ports: spec.ports.iter().map(|p| p.port).collect(),
        })
    }

    /// EndpointSlices and kube-proxy rules from the current pods and services.
    fn sync_services(&self) -> Result<()> {
        let st = self.state();
        let mut rules = Vec::new();
        for svc in &st.services {
            let members: Vec<&PodState> = st
                .pods
                .iter()
                .filter(|p| {
                    p.spec.namespace == svc.spec.namespace
                        && !p.ip.is_empty()
                        && manifest::selects(&svc.spec.selector, &p.spec.labels)
                })
                .collect();
            let eps: Vec<manifest::Endpoint<'_>> = members
                .iter()
                .map(|p| manifest::Endpoint {
                    pod: &p.spec.name,
                    ip: &p.ip,
                    ready: p.ready,
                })
                .collect();
            let path = self.config_dir().join(format!(
                "endpointslices/{}.{}.yaml",
                svc.spec.namespace, svc.spec.name
            ));
            write_yaml(
                &path,
                &manifest::endpoint_slice(&svc.spec, &st.node_netns, &eps),
            )?;
            for port in &svc.spec.ports {
                rules.push(net::VipRule {
                    vip: svc.vip.clone(),
                    port: port.port,
                    endpoints: members
                        .iter()
                        .filter(|p| p.ready)
                        .map(|p| (p.ip.clone(), port.target_port))
                        .collect(),
                });
            }
        }
        net::sync_vips(&st.node_netns, &rules)
    }

    /// Rewrites every pod's hosts file in place (same inode, so processes that already
    /// have it bind-mounted see the change).
    fn sync_hosts(&self) -> Result<()> {
        let st = self.state();
        let services: Vec<(String, String, String)> = st
            .services
            .iter()
            .map(|s| (s.spec.name.clone(), s.spec.namespace.clone(), s.vip.clone()))
            .collect();
        for p in st.pods.iter().filter(|p| !p.ip.is_empty()) {
            let dir = hosts_dir(&p.netns);
            std::fs::create_dir_all(&dir)?;
            let text = manifest::hosts_file(&p.spec.name, &p.spec.namespace, &p.ip, &services);
            std::fs::write(dir.join("hosts"), text)?;
        }
        Ok(())
    }

    fn pod_info(&self, name: &str, namespace: &str) -> Result<PodInfo> {
        let st = self.lock();
        let p = st
            .pods
            .iter()
            .find(|p| p.spec.name == name && p.spec.namespace == namespace)
            .with_context(|| format!("no pod {namespace}/{name}"))?;
        Ok(info(p))
    }

    /// Finds a pod by name, or by `app` label (the first such pod), in a namespace.
    pub fn find_pod(&self, pod: &str, namespace: &str) -> Result<PodState> {
        let st = self.lock();
        st.pods
            .iter()
            .find(|p| p.spec.namespace == namespace && p.spec.name == pod)
            .or_else(|| {
                st.pods
                    .iter()
                    .find(|p| p.spec.namespace == namespace && p.spec.app_label() == pod)
            })
            .cloned()
            .with_context(|| {
                let known: Vec<String> = st
                    .pods
                    .iter()
                    .map(|p| format!("{}.{}", p.spec.name, p.spec.namespace))
                    .collect();
                format!(
                    "no pod or app {pod:?} in namespace {namespace} (pods: {})",
                    known.join(", ")
                )
            })
    }

    /// Writes `demo.json`: ingress URL, control plane URLs, and every pod.
    pub fn write_summary(&self, file: &str) -> Result<PathBuf> {
        // The Cluster view plus the local-only details tools need (meshctl --local).
        let pods: Vec<Value> = self
            .state()
            .pods
            .iter()
            .map(|p| {
                let mut v = serde_json::to_value(info(p)).unwrap_or_default();
                v["netns"] = Value::String(p.netns.clone());
                v
            })
            .collect();
        let v = serde_json::json!({
            "ingress_url": self.ingress_url(),
            "xds_url": format!("http://{}", self.xds_address()),
            "monitoring_url": self.monitoring_url(),
            "config_dir": self.config_dir(),
            "pods": pods,
            "services": self.services()?,
        });
        let path = self.dir.join(file);
        std::fs::write(&path, serde_json::to_vec_pretty(&v)?)?;
        Ok(path)
    }
}

fn info(p: &PodState) -> PodInfo {
    let has_proxy = p.spec.has_sidecar() || p.spec.kind == PodKind::Gateway;
    PodInfo {
        name: p.spec.name.clone(),
        namespace: p.spec.namespace.clone(),
        ip: p.ip.clone(),
        app: p.spec.app_label(),
        admin: has_proxy.then(|| "127.0.0.1:15000".to_string()),
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if self.owned
            && let Err(e) = teardown(&self.dir)
        {
            eprintln!("local cluster teardown: {e:#}");
        }
    }
}

fn write_yaml(path: &Path, v: &Value) -> Result<()> {
    // Written aside and renamed: the control plane's watcher never reads half a file.
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, manifest::to_yaml(v))
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Runs `f` on a thread inside the network namespace `ns`.
pub fn in_netns<T: Send + Default>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    mesh_cni::netns::run_in(&Path::new("/run/netns").join(ns), f).unwrap_or_default()
}

fn tcp_ok(addr: &str) -> bool {
    addr.parse::<SocketAddr>()
        .ok()
        .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_millis(300)).ok())
        .is_some()
}

/// A minimal HTTP/1.1 GET (`Connection: close`) that says whether the answer is 200.
fn http_ok(addr: &str, path: &str) -> bool {
    use std::io::{Read, Write};
    let Some(a) = addr.parse::<SocketAddr>().ok() else {
        return false;
    };
    let Ok(mut s) = TcpStream::connect_timeout(&a, Duration::from_millis(300)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200")
}

fn wait_for(what: &str, timeout: Duration, log: &Path, mut ok: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let tail = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = tail.lines().rev().take(15).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    bail!(
        "{what} not ready after {}s; last lines of {}:\n{}",
        timeout.as_secs(),
        log.display(),
        tail.join("\n")
    )
}

/// Removes everything the cluster in `dir` made: processes, CNI state, namespaces,
/// hosts files, host link, files. Works from the state file alone (after a crash) and
/// carries on past individual failures, reporting them at the end.
pub fn teardown(dir: &Path) -> Result<()> {
    let Some(st) = State::load(dir)? else {
        return Ok(());
    };
    let mut errors: Vec<String> = Vec::new();
    let mut note = |r: Result<()>| {
        if let Err(e) = r {
            errors.push(format!("{e:#}"));
        }
    };
    for p in st.pods.iter().rev() {
        for pr in p.procs.iter().rev() {
            note(proc::stop(pr, Duration::from_secs(3)));
        }
        if net::netns_exists(&st.node_netns) {
            let target = cni::Target {
                node_netns: &st.node_netns,
                pod_netns: &p.netns,
                container_id: &p.container_id,
                pod: &p.spec.name,
                namespace: &p.spec.namespace,
            };
            note(cni::del(
                &st.conflist,
                &target,
                p.cni_result.as_ref(),
                &st.cni_dirs,
            ));
        }
        note(net::delete_netns(&p.netns));
        let hd = hosts_dir(&p.netns);
        if hd.exists() {
            note(
                std::fs::remove_dir_all(&hd)
                    .with_context(|| format!("cannot remove {}", hd.display())),
            );
        }
    }
    if let Some(c) = &st.control {
        note(proc::stop(c, Duration::from_secs(5)));
    }
    if let Some(h) = &st.host_link {
        note(net::delete_host_link(h));
    }
    note(net::delete_netns(&st.node_netns));
    for sub in ["config", "ipam", "logs", "bootstrap", "demo.json"] {
        let path = dir.join(sub);
        let r = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else if path.exists() {
            std::fs::remove_file(&path)
        } else {
            Ok(())
        };
        note(r.with_context(|| format!("cannot remove {}", path.display())));
    }
    if errors.is_empty() {
        if let Err(e) = std::fs::remove_file(State::path(dir)) {
            errors.push(format!("cannot remove the state file: {e}"));
        }
        let _ = std::fs::remove_dir(dir);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("teardown left things behind: {}", errors.join("; "))
    }
}

impl Cluster for LocalCluster {
    fn apply(&self, yaml: &str) -> Result<()> {
        for (path, doc) in user_documents(&self.config_dir(), yaml, true)? {
            write_yaml(&path, &doc)?;
        }
        Ok(())
    }

    fn delete(&self, yaml: &str) -> Result<()> {
        for (path, _) in user_documents(&self.config_dir(), yaml, false)? {
            if path.exists() {
                std::fs::remove_file(&path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
            }
        }
        Ok(())
    }

    fn exec(&self, pod: &str, namespace: &str, cmd: &[&str]) -> Result<Output> {
        let p = self.find_pod(pod, namespace)?;
        let argv: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        if argv.is_empty() {
            bail!("exec: no command");
        }
        let uid = (p.spec.kind != PodKind::Gateway).then_some(APP_UID);
        proc::command(Some(&p.netns), uid, &argv)
            .output()
            .with_context(|| {
                format!(
                    "exec in pod {}/{}: cannot run {argv:?}",
                    namespace, p.spec.name
                )
            })
    }

    fn pods(&self) -> Result<Vec<PodInfo>> {
        Ok(self.lock().pods.iter().map(info).collect())
    }

    fn services(&self) -> Result<Vec<ServiceInfo>> {
        Ok(self
            .lock()
            .services
            .iter()
            .map(|s| ServiceInfo {
                name: s.spec.name.clone(),
                namespace: s.spec.namespace.clone(),
                vip: s.vip.clone(),
                ports: s.spec.ports.iter().map(|p| p.port).collect(),
            })
            .collect())
    }

    fn ingress_url(&self) -> Option<String> {
        self.lock()
            .pods
            .iter()
            .find(|p| {
                p.spec.kind == PodKind::Gateway
                    && p.spec.labels.get("istio").map(String::as_str) == Some("ingressgateway")
            })
            .filter(|p| !p.ip.is_empty())
            .map(|p| format!("http://{}:80", p.ip))
    }

    fn add_pod(&self, spec: PodSpec) -> Result<PodInfo> {
        LocalCluster::add_pod(self, spec)
    }

    fn remove_pod(&self, name: &str, namespace: &str) -> Result<()> {
        LocalCluster::remove_pod(self, name, namespace)
    }

    fn add_service(&self, spec: ServiceSpec) -> Result<ServiceInfo> {
        LocalCluster::add_service(self, spec)
    }

    fn wait_synced(&self, timeout: Duration) -> Result<()> {
        let seq = self.sync_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let marker = sync::write_marker(&self.config_dir(), seq)?;
        sync::wait_converged(
            &self.state(),
            &self.config_dir(),
            &marker,
            &format!("127.0.0.1:{MONITORING_PORT}"),
            timeout,
        )
    }

    fn client(&self, from: Caller<'_>, args: &ClientArgs) -> Result<Report> {
        let bin = self.bins.testapp.display().to_string();
        let mut argv = vec![bin];
        argv.extend(args.to_args());
        let (out, who) = match from {
            Caller::Pod { pod, namespace } => {
                let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
                (
                    self.exec(pod, namespace, &refs)?,
                    format!("pod {namespace}/{pod}"),
                )
            }
            Caller::Outside => (
                std::process::Command::new(&argv[0])
                    .args(&argv[1..])
                    .output()
                    .with_context(|| format!("cannot run {}", argv[0]))?,
                "the host".to_string(),
            ),
        };
        if !out.status.success() {
            bail!(
                "testapp client in {who} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "testapp client in {who}: unreadable report {:?}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    fn proxy_admin(&self, pod: &str, namespace: &str, path: &str) -> Result<String> {
        let p = self.find_pod(pod, namespace)?;
        let (status, body) = sync::get_in(&p.netns, "127.0.0.1:15000", path)?;
        let body = String::from_utf8_lossy(&body).into_owned();
        if status != 200 {
            bail!(
                "proxy admin of {namespace}/{}: GET {path} answered {status}: {}",
                p.spec.name,
                body.trim()
            );
        }
        Ok(body)
    }

    fn proxy_log(&self, pod: &str, namespace: &str) -> Result<String> {
        let p = self.find_pod(pod, namespace)?;
        let log = p
            .procs
            .iter()
            .find(|pr| pr.what == "mesh-proxy")
            .map(|pr| pr.log.clone())
            .with_context(|| format!("pod {namespace}/{} has no proxy", p.spec.name))?;
        std::fs::read_to_string(&log).with_context(|| format!("cannot read {}", log.display()))
    }
}

/// Splits a YAML stream into documents, each with the file it lives in under
/// `config/user/`. Every document must name its kind and name, and every Istio resource
/// must pass the same validation as `meshctl validate` and the admission webhook: one
/// invalid document rejects the whole stream, so nothing is written.
fn user_documents(config: &Path, yaml: &str, validate: bool) -> Result<Vec<(PathBuf, Value)>> {
    use serde::Deserialize;
    let invalid: Vec<String> = if validate {
        mesh_api::validation::validate_text(yaml, "input")
            .into_iter()
            .filter_map(|r| r.err().map(|e| e.to_string()))
            .collect()
    } else {
        Vec::new()
    };
    if !invalid.is_empty() {
        bail!(
            "invalid configuration, nothing applied:\n{}",
            invalid.join("\n")
        );
    }
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let v =
            Value::deserialize(doc).with_context(|| format!("document {}: invalid YAML", i + 1))?;
        if v.is_null() {
            continue;
        }
        let kind = v["kind"]
            .as_str()
            .with_context(|| format!("document {}: missing kind", i + 1))?;
        let name = v["metadata"]["name"]
            .as_str()
            .with_context(|| format!("document {} ({kind}): missing metadata.name", i + 1))?;
        let ns = v["metadata"]["namespace"].as_str().unwrap_or("default");
        let file = format!("{}.{ns}.{name}.yaml", kind.to_lowercase());
        out.push((config.join("user").join(file), v));
    }
    Ok(out)
}
