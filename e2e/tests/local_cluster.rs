//! The local cluster harness with the test app and no real proxy: pods attached by the
//! real CNI chain (bridge + host-local + mesh-cni), Pod/Service/EndpointSlice YAML,
//! service names and VIPs, exec, capture wiring (with the test app standing in for the
//! proxy), and teardown from the state file alone as after a crash. Needs root.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on purpose

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e::cluster::Cluster;
use e2e::local::manifest::{PodKind, PodSpec, ServicePort, ServiceSpec};
use e2e::local::state::State;
use e2e::local::{Binaries, ClusterConfig, LocalCluster, teardown};
use serde_json::Value;

fn prerequisites(test: &str) -> bool {
    let ok = nix::unistd::geteuid().is_root()
        && Path::new("/usr/lib/cni/bridge").is_file()
        && Path::new("/usr/sbin/iptables-nft-restore").is_file()
        && Path::new("/usr/bin/setpriv").is_file();
    if ok {
        return true;
    }
    let why =
        format!("{test}: needs root, iptables, util-linux setpriv and containernetworking-plugins");
    if std::env::var("MESH_CI_STRICT").as_deref() == Ok("1") {
        panic!("{why}; MESH_CI_STRICT=1 makes this a failure");
    }
    eprintln!("skipped: {why}");
    false
}

/// The mesh-cni binary, built if this test run did not build it (a workspace test run
/// builds it; `-p e2e` alone does not).
fn mesh_cni() -> PathBuf {
    let bin = Binaries::locate().mesh_cni;
    if bin.is_file() {
        return bin;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", "mesh-cni", "--bin", "mesh-cni"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .status()
        .unwrap();
    assert!(status.success(), "cargo build -p mesh-cni failed");
    Binaries::locate().mesh_cni
}

fn config(tag: &str, dir: &Path, proxy: PathBuf) -> ClusterConfig {
    ClusterConfig {
        dir: dir.join("cluster"),
        prefix: format!("mt{}{tag}", std::process::id() % 100_000),
        host_link: false,
        control_plane: false,
        proxy_ready_timeout: Duration::from_secs(10),
        bins: Binaries {
            testapp: PathBuf::from(env!("CARGO_BIN_EXE_testapp")),
            mesh_cni: mesh_cni(),
            mesh_proxy: proxy,
            mesh_control: PathBuf::from("/nonexistent/mesh-control"),
            envoy: None,
        },
    }
}

fn service(name: &str, port: u16) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        namespace: "default".into(),
        selector: [("app".to_string(), name.to_string())]
            .into_iter()
            .collect(),
        ports: vec![ServicePort {
            name: format!("http-{name}"),
            port,
            target_port: port,
        }],
    }
}

fn app(name: &str, app: &str, version: &str, port: u16, sidecar: bool) -> PodSpec {
    let mut p = PodSpec::app(name, "default", app, version, &[port]);
    p.kind = PodKind::App { sidecar };
    p
}

fn client(cluster: &LocalCluster, pod: &str, url: &str, n: &str) -> Value {
    let bin = env!("CARGO_BIN_EXE_testapp");
    // A new connection per request: VIPs are balanced per connection, as by kube-proxy.
    let args = [
        bin,
        "client",
        url,
        "-n",
        n,
        "-c",
        "2",
        "--timeout",
        "3s",
        "-H",
        "connection: close",
    ];
    let t = std::time::Instant::now();
    let out = cluster.exec(pod, "default", &args).unwrap();
    eprintln!("client {url} x{n}: {:?}", t.elapsed());
    assert!(
        out.status.success(),
        "client in {pod}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn yaml(path: PathBuf) -> Value {
    serde_yaml::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

fn netns_list() -> String {
    String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned()
}

#[test]
fn apps_without_sidecars_talk_by_service_name_and_teardown_survives_a_crash() {
    if !prerequisites("apps_without_sidecars") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config("a", tmp.path(), PathBuf::from("/nonexistent/mesh-proxy"));
    let (dir, prefix) = (cfg.dir.clone(), cfg.prefix.clone());
    let t = std::time::Instant::now();
    let cluster = LocalCluster::up(cfg).unwrap();
    eprintln!("up: {:?}", t.elapsed());
    cluster.add_service(service("catalog", 80)).unwrap();
    cluster.add_service(service("reviews", 9080)).unwrap();
    let v1 = cluster
        .add_pod(app("catalog-v1", "catalog", "v1", 80, false))
        .unwrap();
    cluster
        .add_pod(app("catalog-v2", "catalog", "v2", 80, false))
        .unwrap();
    let reviews = cluster
        .add_pod(app("reviews-v1", "reviews", "v1", 9080, false))
        .unwrap();
    cluster
        .add_pod(app("sleep", "sleep", "v1", 80, false))
        .unwrap();
    eprintln!("pods: {:?}", t.elapsed());
    assert!(v1.ip.starts_with("10.250."), "{v1:?}");
    assert!(v1.admin.is_none());

    // What the control plane will read.
    let config = cluster.config_dir();
    let pod = yaml(config.join("pods/default.catalog-v1.yaml"));
    assert_eq!(pod["status"]["podIP"], v1.ip.as_str());
    assert_eq!(pod["status"]["conditions"][0]["status"], "True");
    assert_eq!(pod["metadata"]["labels"]["version"], "v1");
    let slice = yaml(config.join("endpointslices/default.catalog.yaml"));
    assert_eq!(slice["endpoints"].as_array().unwrap().len(), 2, "{slice:?}");
    let svc = yaml(config.join("services/default.catalog.yaml"));
    assert!(
        svc["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .starts_with("10.251.")
    );

    // Service names resolve through /etc/netns/<pod>/hosts and VIPs reach both versions.
    let r = client(&cluster, "sleep", "http://catalog/", "40");
    assert_eq!(r["ok"], 40, "{r}");
    assert!(
        r["by_version"]["v1"].as_u64().unwrap() > 0 && r["by_version"]["v2"].as_u64().unwrap() > 0,
        "{r}"
    );
    let r = client(
        &cluster,
        "sleep",
        &format!("http://{}:9080/", reviews.ip),
        "3",
    );
    assert_eq!(r["by_pod"]["reviews-v1"], 3, "{r}");
    let r = client(
        &cluster,
        "sleep",
        "http://reviews.default.svc.cluster.local:9080/",
        "3",
    );
    assert_eq!(r["ok"], 3, "{r}");

    // A pod goes away: it leaves the endpoints, and its namespace is deleted.
    cluster.remove_pod("catalog-v2", "default").unwrap();
    let slice = yaml(config.join("endpointslices/default.catalog.yaml"));
    assert_eq!(slice["endpoints"].as_array().unwrap().len(), 1, "{slice:?}");
    assert!(!netns_list().contains(&format!("{prefix}-default-catalog-v2")));
    let r = client(&cluster, "sleep", "http://catalog/", "10");
    assert_eq!(r["by_version"]["v1"], 10, "{r}");

    // The app runs as the non-root app UID.
    let out = cluster.exec("catalog", "default", &["id", "-u"]).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1000");

    // mesh-cni was chained and decided not to capture.
    let log = std::fs::read_to_string(dir.join("logs/mesh-cni.log")).unwrap();
    assert!(
        log.contains("pod=default/catalog-v1") && log.contains("not captured: no sidecar"),
        "{log}"
    );

    // Apply and delete user config; Istio resources are validated first.
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: catalog}\n\
              spec: {hosts: [catalog], http: [{route: [{destination: {host: catalog}}]}]}\n";
    cluster.apply(vs).unwrap();
    let vs_file = config.join("user/virtualservice.default.catalog.yaml");
    assert!(vs_file.is_file());
    cluster
        .delete("kind: VirtualService\nmetadata: {name: catalog}\n")
        .unwrap();
    assert!(!vs_file.exists());
    assert!(cluster.apply("kind: VirtualService\nspec: {}\n").is_err());
    // One invalid resource rejects the whole stream: nothing is written.
    let stream = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: ok}\nspec: {host: catalog}\n\
                  ---\n\
                  apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bad}\nspec: {hosts: [catalog]}\n";
    let err = cluster.apply(stream).unwrap_err().to_string();
    assert!(
        err.contains("VirtualService") && err.contains("bad"),
        "{err}"
    );
    assert!(!config.join("user/destinationrule.default.ok.yaml").exists());

    // Crash: the process that built the cluster goes away without tearing down.
    let state = State::load(&dir).unwrap().unwrap();
    cluster.keep();
    assert!(netns_list().contains(&format!("{prefix}-default-sleep")));
    teardown(&dir).unwrap();
    let left = netns_list();
    assert!(!left.contains(&prefix), "namespaces left behind:\n{left}");
    for p in &state.pods {
        for pr in &p.procs {
            assert!(
                !e2e::local::proc::alive(pr),
                "{} of {} still running",
                pr.what,
                p.spec.name
            );
        }
        assert!(!Path::new("/etc/netns").join(&p.netns).exists());
    }
    assert!(!dir.exists(), "cluster directory left behind");
    // Tearing down twice is fine.
    teardown(&dir).unwrap();
}

#[test]
fn sidecar_pods_are_captured_by_the_chained_plugin() {
    if !prerequisites("sidecar_pods_are_captured") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // A stand-in proxy: the test app listening on the proxy's ports, so a captured
    // connection is answered by the caller's own "proxy" rather than by the server.
    let fake = tmp.path().join("fake-proxy");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nexec {} serve --http-port 15001 --http-port 15006 --http-port 15021\n",
            env!("CARGO_BIN_EXE_testapp")
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    let cfg = config("b", tmp.path(), fake);
    let cluster = LocalCluster::up(cfg).unwrap();
    cluster.add_service(service("catalog", 80)).unwrap();
    cluster
        .add_pod(app("catalog-v1", "catalog", "v1", 80, false))
        .unwrap();
    let sleep = cluster
        .add_pod(app("sleep", "sleep", "v1", 80, true))
        .unwrap();
    assert_eq!(sleep.admin.as_deref(), Some("127.0.0.1:15000"));

    // sleep -> catalog is captured to sleep's "proxy" on 15001, which answers as sleep.
    let r = client(&cluster, "sleep", "http://catalog/", "3");
    assert_eq!(r["by_pod"]["sleep"], 3, "outbound was not captured: {r}");
    // Inbound to sleep's app port from catalog (no sidecar) lands on 15006.
    let out = cluster
        .exec(
            "catalog-v1",
            "default",
            &[
                env!("CARGO_BIN_EXE_testapp"),
                "client",
                &format!("http://{}:80/", sleep.ip),
            ],
        )
        .unwrap();
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["ok"], 1, "{r}");
    // The proxy runs as UID 1337; its own connections are not captured.
    let st = cluster.state();
    let proxy = st
        .pods
        .iter()
        .find(|p| p.spec.name == "sleep")
        .unwrap()
        .procs
        .iter()
        .find(|p| p.what == "mesh-proxy")
        .unwrap()
        .clone();
    let status = std::fs::read_to_string(format!("/proc/{}/status", proxy.pid)).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains("1337")),
        "{status}"
    );
    drop(cluster);
}

/// GET over plain HTTP/1.0 from inside a network namespace.
fn get_in(netns: &str, addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let (addr, path) = (addr.to_string(), path.to_string());
    mesh_cni::netns::run_in(&Path::new("/run/netns").join(netns), move || {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .unwrap()
}

/// The real control plane and real proxies in the harness: every sidecar becomes ready
/// and shows up in the control plane's sync state. (Traffic assertions are the
/// scenarios' job, item 5.)
#[test]
fn real_control_plane_and_sidecars_connect() {
    if !prerequisites("real_control_plane_and_sidecars_connect") {
        return;
    }
    let real = Binaries::locate();
    if !real.mesh_proxy.is_file() || !real.mesh_control.is_file() {
        let why = "real_control_plane_and_sidecars_connect: mesh-proxy/mesh-control not built (a workspace test run builds them)";
        assert!(
            std::env::var("MESH_CI_STRICT").as_deref() != Ok("1"),
            "{why}"
        );
        eprintln!("skipped: {why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config("c", tmp.path(), real.mesh_proxy.clone());
    cfg.bins.mesh_control = real.mesh_control;
    cfg.control_plane = true;
    let node = format!("{}-node", cfg.prefix);
    let cluster = LocalCluster::up(cfg).unwrap();
    cluster.add_service(service("catalog", 80)).unwrap();
    cluster
        .add_pod(app("catalog-v1", "catalog", "v1", 80, true))
        .unwrap();
    let sleep = cluster
        .add_pod(app("sleep", "sleep", "v1", 80, true))
        .unwrap();
    let syncz = get_in(&node, "127.0.0.1:15014", "/debug/syncz");
    assert!(
        syncz.starts_with("HTTP/1.1 200") || syncz.starts_with("HTTP/1.0 200"),
        "{syncz}"
    );
    assert!(
        syncz.contains(&format!("sidecar~{}~sleep.default", sleep.ip)),
        "{syncz}"
    );
    assert!(syncz.contains("catalog-v1.default"), "{syncz}");
    let summary = cluster.write_summary("demo.json").unwrap();
    let demo: Value = serde_json::from_slice(&std::fs::read(summary).unwrap()).unwrap();
    assert!(
        demo["pods"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "sleep" && p["netns"].as_str().is_some())
    );
    assert_eq!(demo["xds_url"], "http://10.250.0.1:15010");
}
