//! Shared helpers for meshctl's process tests: running meshctl, locating and spawning the
//! mesh-proxy and mesh-control binaries (killed by their own PIDs on drop), a realistic
//! Istio-shaped sidecar config in Envoy JSON, and network namespaces for the local-cluster
//! backend.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

pub const REVIEWS: &str = "outbound|9080||reviews.default.svc.cluster.local";
pub const REVIEWS_V1: &str = "outbound|9080|v1|reviews.default.svc.cluster.local";
pub const DB: &str = "outbound|5432||db.default.svc.cluster.local";

/// Runs meshctl with `args` and extra environment.
pub fn meshctl(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshctl"));
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("meshctl runs")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// stdout of a successful run (panics with both streams otherwise).
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "meshctl failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Table rows (header first) split into columns on runs of 2+ spaces... except that
/// tables use at least one space (listeners), so rows are compared as whole lines with
/// whitespace collapsed.
pub fn rows(table: &str) -> Vec<String> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `MESH_CI_STRICT=1`: a missing prerequisite fails instead of skipping.
pub fn strict() -> bool {
    std::env::var("MESH_CI_STRICT").is_ok_and(|v| v == "1")
}

pub fn require(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    assert!(!strict(), "MESH_CI_STRICT=1 and {what} is missing");
    eprintln!("skipping: {what} is missing (set MESH_CI_STRICT=1 to make this a failure)");
    false
}

pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// A workspace binary: `$<ENV>`, else next to meshctl in the target directory, else built
/// with cargo (once; later runs find it).
pub fn workspace_bin(package: &str, env_var: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return PathBuf::from(p);
    }
    let dir = Path::new(env!("CARGO_BIN_EXE_meshctl")).parent().unwrap();
    let path = dir.join(package);
    if !path.is_file() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", package, "--bin", package])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cargo build -p {package} failed");
    }
    path
}

/// A child process killed (by its own PID) and reaped on drop.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Proc { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("process exited with {status}:\n{}", self.log_text());
        }
    }
}

/// The mesh-proxy command line for a sidecar (or gateway) with only the admin port.
pub fn proxy_command(
    xds: &str,
    admin: SocketAddr,
    pod: &str,
    namespace: &str,
    mode: &str,
) -> Command {
    let mut cmd = Command::new(workspace_bin("mesh-proxy", "MESH_PROXY_BIN"));
    cmd.args(["--mode", mode, "--xds-address", xds])
        .args([
            "--pod-name",
            pod,
            "--pod-namespace",
            namespace,
            "--instance-ip",
            "127.0.0.1",
        ])
        .args(["--admin-addr", &admin.to_string()])
        .args([
            "--health-addr",
            "",
            "--prometheus-addr",
            "",
            "--merged-metrics-addr",
            "",
        ])
        .args([
            "--concurrency",
            "1",
            "--log-level",
            "info",
            "--drain-duration",
            "100ms",
        ]);
    cmd
}

/// Polls `f` until it returns `Some`, for at most `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn istio_meta(kind: &str, name: &str) -> Value {
    json!({"filter_metadata": {"istio": {"config": format!("/apis/networking.istio.io/v1/namespaces/default/{kind}/{name}")}}})
}

fn eds_cluster(name: &str) -> Value {
    json!({
        "@type": CDS, "name": name, "type": "EDS", "connect_timeout": "10s",
        "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}},
        "metadata": istio_meta("destination-rule", "reviews"),
    })
}

fn sock(ip: &str, port: u16) -> Value {
    json!({"socket_address": {"address": ip, "port_value": port}})
}

fn hcm(route: Value) -> Value {
    let mut typed = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "outbound_0.0.0.0_9080",
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    });
    let obj = typed.as_object_mut().unwrap();
    for (k, v) in route.as_object().unwrap() {
        obj.insert(k.clone(), v.clone());
    }
    json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": typed})
}

fn tcp_proxy(cluster: &str) -> Value {
    json!({"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": cluster, "cluster": cluster}})
}

/// Ports the test listeners bind on 127.0.0.1.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub http: u16,
    pub tcp: u16,
    pub inbound: u16,
}

impl Ports {
    pub fn free() -> Ports {
        Ports {
            http: free_port(),
            tcp: free_port(),
            inbound: free_port(),
        }
    }
}

/// An Istio-shaped sidecar config (Envoy JSON, each with its `@type`): clusters, endpoints,
/// listeners (HTTP with RDS, TCP, an inbound one with an inline route and a black-hole
/// default chain) and the RDS route table with a header-routed rule.
pub fn sidecar_config(p: Ports) -> Vec<(&'static str, Vec<Value>)> {
    let clusters = vec![
        eds_cluster(REVIEWS),
        eds_cluster(REVIEWS_V1),
        json!({"@type": CDS, "name": DB, "type": "STATIC", "connect_timeout": "10s",
               "load_assignment": {"cluster_name": DB, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": sock("127.0.0.1", 15432)}}]}]}}),
        json!({"@type": CDS, "name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "10s",
               "load_assignment": {"cluster_name": "BlackHoleCluster"}}),
    ];
    let endpoints = vec![
        json!({"@type": EDS, "cluster_name": REVIEWS, "endpoints": [{"locality": {"region": "eu", "zone": "a"}, "lb_endpoints": [
            {"endpoint": {"address": sock("127.0.0.2", 9080)}, "health_status": "HEALTHY"},
            {"endpoint": {"address": sock("127.0.0.3", 9080)}, "health_status": "HEALTHY"}]}]}),
        json!({"@type": EDS, "cluster_name": REVIEWS_V1, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": sock("127.0.0.2", 9080)}, "health_status": "HEALTHY"}]}]}),
    ];
    let listeners = vec![
        json!({"@type": LDS, "name": format!("127.0.0.1_{}", p.http), "address": sock("127.0.0.1", p.http),
               "filter_chains": [{"filters": [hcm(json!({"rds": {"route_config_name": "9080", "config_source": {"ads": {}, "resource_api_version": "V3"}}}))]}]}),
        json!({"@type": LDS, "name": format!("127.0.0.1_{}", p.tcp), "address": sock("127.0.0.1", p.tcp),
               "filter_chains": [{"filters": [tcp_proxy(DB)]}]}),
        json!({"@type": LDS, "name": "virtualInbound", "address": sock("127.0.0.1", p.inbound),
               "filter_chains": [{
                   "filter_chain_match": {"destination_port": p.inbound, "transport_protocol": "raw_buffer"},
                   "filters": [hcm(json!({"route_config": {"name": "inbound|9080||", "virtual_hosts": [{"name": "inbound|http|9080", "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": DB}}]}]}}))]}],
               "default_filter_chain": {"filters": [tcp_proxy("BlackHoleCluster")]}}),
    ];
    let reviews_domains = [
        "reviews.default.svc.cluster.local",
        "reviews.default.svc.cluster.local:9080",
        "reviews",
        "reviews:9080",
        "reviews.default.svc",
        "reviews.default.svc:9080",
        "reviews.default",
        "reviews.default:9080",
    ];
    let routes = vec![json!({"@type": RDS, "name": "9080", "virtual_hosts": [
        {"name": "reviews.default.svc.cluster.local:9080", "domains": reviews_domains, "routes": [
            {"name": "jason", "match": {"prefix": "/", "headers": [{"name": "end-user", "string_match": {"exact": "jason"}}]},
             "route": {"cluster": REVIEWS_V1, "timeout": "0s"}, "metadata": istio_meta("virtual-service", "reviews")},
            {"name": "default", "match": {"prefix": "/"}, "route": {"cluster": REVIEWS, "timeout": "0s"},
             "metadata": istio_meta("virtual-service", "reviews")}]},
        {"name": "allow_any", "domains": ["*"], "routes": [
            {"name": "allow_any", "match": {"prefix": "/"}, "route": {"cluster": "BlackHoleCluster", "timeout": "0s"}}]}
    ]})];
    vec![
        (CDS, clusters),
        (EDS, endpoints),
        (LDS, listeners),
        (RDS, routes),
    ]
}

/// The rows meshctl must print for [`sidecar_config`], whichever proxy holds it.
pub fn expected_clusters() -> Vec<String> {
    rows(
        "SERVICE FQDN PORT SUBSET DIRECTION TYPE DESTINATION RULE
BlackHoleCluster - - - STATIC
db.default.svc.cluster.local 5432 - outbound STATIC
reviews.default.svc.cluster.local 9080 - outbound EDS reviews.default
reviews.default.svc.cluster.local 9080 v1 outbound EDS reviews.default",
    )
}

pub fn expected_listeners(p: Ports) -> Vec<String> {
    let mut l = vec![
        format!("127.0.0.1 {} ALL Route: 9080", p.http),
        format!("127.0.0.1 {} ALL Cluster: {DB}", p.tcp),
        format!("127.0.0.1 {} ALL Non-HTTP/Non-TCP", p.inbound),
        format!(
            "127.0.0.1 {} Trans: raw_buffer; Addr: *:{} Cluster: {DB}",
            p.inbound, p.inbound
        ),
    ];
    // Sorted by port, then (within a listener) by destination, descending.
    l.sort_by_key(|r| r.split(' ').nth(1).unwrap().parse::<u16>().unwrap());
    let mut out = vec!["ADDRESSES PORT MATCH DESTINATION".to_string()];
    out.extend(l);
    out
}

pub fn expected_routes() -> Vec<String> {
    rows("NAME VHOST NAME DOMAINS MATCH VIRTUAL SERVICE
9080 reviews.default.svc.cluster.local:9080 reviews, reviews.default /* [end-user=jason] reviews.default
9080 reviews.default.svc.cluster.local:9080 reviews, reviews.default /* reviews.default
9080 allow_any * /*")
}

/// A table (columns at least two spaces apart) as maps from column title to cell, read by
/// the header's column offsets.
pub fn cells(table: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    let mut starts = Vec::new();
    let mut prev_space = 2;
    for (i, ch) in header.char_indices() {
        if ch != ' ' && prev_space >= 2 {
            starts.push(i);
        }
        prev_space = if ch == ' ' { prev_space + 1 } else { 0 };
    }
    let cut = |line: &str, i: usize| -> String {
        let start = starts[i].min(line.len());
        let end = starts
            .get(i + 1)
            .copied()
            .unwrap_or(line.len())
            .min(line.len());
        line[start..end].trim().to_string()
    };
    let titles: Vec<String> = (0..starts.len()).map(|i| cut(header, i)).collect();
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            titles
                .iter()
                .enumerate()
                .map(|(i, t)| (t.clone(), cut(l, i)))
                .collect()
        })
        .collect()
}
