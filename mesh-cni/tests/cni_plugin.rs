//! The CNI plugin run as the runtime runs it: a process with the CNI environment and the
//! netconf on stdin, chained after the real `bridge` + `host-local` plugins (from Debian's
//! containernetworking-plugins) against real network namespaces. Needs root.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on purpose

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{Netns, root_or_skip, which};
use serde_json::{Value, json};

const CNI_BIN: &str = "/usr/lib/cni";

fn plugins_or_skip(test: &str) -> bool {
    if !root_or_skip(test) {
        return false;
    }
    if Path::new(CNI_BIN).join("bridge").is_file() && which("setpriv") {
        return true;
    }
    let why = format!("{test}: needs containernetworking-plugins in {CNI_BIN}");
    if std::env::var("MESH_CI_STRICT").as_deref() == Ok("1") {
        panic!("{why}; MESH_CI_STRICT=1 makes this a failure");
    }
    eprintln!("skipped: {why}");
    false
}

/// A node namespace with a pod namespace and a config directory, like the local cluster.
struct Fixture {
    node: Netns,
    pod: Netns,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let f = Fixture {
            node: Netns::new("node"),
            pod: Netns::new("pod"),
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir(f.config_dir()).unwrap();
        f
    }

    fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("mesh-cni.log")
    }

    fn write_pod(&self, name: &str, annotations: &str, containers: &str) {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  annotations: {annotations}\nspec:\n  containers: {containers}\n"
        );
        std::fs::write(self.config_dir().join(format!("pod-{name}.yaml")), yaml).unwrap();
    }

    fn bridge_conf(&self) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "mesh-test",
            "type": "bridge",
            "bridge": "meshbr0",
            "isGateway": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.250.0.0/16"}]],
                "dataDir": self.dir.path().join("ipam"),
            }
        })
    }

    fn mesh_conf(&self, prev: Option<&Value>) -> Value {
        let mut conf = json!({
            "cniVersion": "1.0.0",
            "name": "mesh-test",
            "type": "mesh-cni",
            "podSource": {"type": "dir", "dir": self.config_dir()},
            "logFile": self.log_file(),
        });
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        conf
    }

    fn env(&self, command: &str, pod: &str) -> Vec<(String, String)> {
        [
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", format!("ctr-{pod}")),
            ("CNI_NETNS", self.pod.path().display().to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", CNI_BIN.to_string()),
            (
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Runs the bridge plugin from inside the node namespace, where its bridge lives.
    fn bridge(&self, command: &str, pod: &str) -> Value {
        let out = run(
            Command::new("ip").args([
                "netns",
                "exec",
                &self.node.name,
                &format!("{CNI_BIN}/bridge"),
            ]),
            &self.env(command, pod),
            &self.bridge_conf().to_string(),
        );
        assert!(
            out.status.success(),
            "bridge {command}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// Runs mesh-cni the way a runtime does (it enters CNI_NETNS itself).
    fn mesh(&self, env: &[(String, String)], stdin: &str) -> Output {
        run(
            &mut Command::new(env!("CARGO_BIN_EXE_mesh-cni")),
            env,
            stdin,
        )
    }

    fn nat(&self) -> String {
        self.pod.exec(&["iptables-nft-save", "-t", "nat"])
    }
}

fn run(cmd: &mut Command, env: &[(String, String)], stdin: &str) -> Output {
    let mut child = cmd
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn error_code(out: &Output) -> u64 {
    assert!(
        !out.status.success(),
        "expected failure, got {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not CNI error JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert_eq!(v["cniVersion"], "1.0.0");
    v["code"].as_u64().unwrap()
}

const SIDECAR: &str = "[{name: app}, {name: istio-proxy}]";

#[test]
fn add_check_del_chained_after_bridge() {
    if !plugins_or_skip("add_check_del_chained_after_bridge") {
        return;
    }
    let f = Fixture::new();
    f.write_pod("web", "{sidecar.istio.io/status: '{}'}", SIDECAR);
    let prev = f.bridge("ADD", "web");
    assert!(
        prev["ips"][0]["address"]
            .as_str()
            .unwrap()
            .starts_with("10.250."),
        "{prev}"
    );

    let out = f.mesh(&f.env("ADD", "web"), &f.mesh_conf(Some(&prev)).to_string());
    assert!(
        out.status.success(),
        "ADD: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let passed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(passed, prev, "prevResult must be passed through unchanged");
    let nat = f.nat();
    assert!(nat.contains("-A OUTPUT -p tcp -j ISTIO_OUTPUT"), "{nat}");
    assert!(
        nat.contains("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001"),
        "{nat}"
    );

    let check = f.mesh(
        &f.env("CHECK", "web"),
        &f.mesh_conf(Some(&prev)).to_string(),
    );
    assert!(
        check.status.success(),
        "CHECK: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    assert!(String::from_utf8_lossy(&check.stdout).trim().is_empty());

    // Someone deletes a rule: CHECK notices and names the chain.
    f.pod.exec(&[
        "iptables-nft",
        "-t",
        "nat",
        "-D",
        "ISTIO_OUTPUT",
        "-j",
        "ISTIO_REDIRECT",
    ]);
    let check = f.mesh(
        &f.env("CHECK", "web"),
        &f.mesh_conf(Some(&prev)).to_string(),
    );
    assert_eq!(error_code(&check), 102);
    assert!(String::from_utf8_lossy(&check.stdout).contains("ISTIO_OUTPUT"));

    // ADD again repairs it, idempotently.
    let out = f.mesh(&f.env("ADD", "web"), &f.mesh_conf(Some(&prev)).to_string());
    assert!(out.status.success());
    let check = f.mesh(
        &f.env("CHECK", "web"),
        &f.mesh_conf(Some(&prev)).to_string(),
    );
    assert!(
        check.status.success(),
        "CHECK after re-ADD: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    assert_eq!(f.nat().matches("-j ISTIO_OUTPUT").count(), 1);

    // DEL (with prevResult, as runtimes send it) removes everything; twice is fine.
    for _ in 0..2 {
        let out = f.mesh(&f.env("DEL", "web"), &f.mesh_conf(Some(&prev)).to_string());
        assert!(
            out.status.success(),
            "DEL: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(!f.nat().contains("ISTIO"));
    }
    f.bridge("DEL", "web");

    let log = std::fs::read_to_string(f.log_file()).unwrap();
    assert!(
        log.contains("cmd=ADD container=ctr-web pod=default/web") && log.contains("captured"),
        "{log}"
    );
    assert!(log.contains("capture rules removed"), "{log}");
}

#[test]
fn pods_without_sidecar_or_opted_out_are_not_captured() {
    if !plugins_or_skip("pods_without_sidecar_or_opted_out_are_not_captured") {
        return;
    }
    let f = Fixture::new();
    f.write_pod("plain", "{}", "[{name: app}]");
    f.write_pod("optout", "{sidecar.istio.io/inject: 'false'}", SIDECAR);
    let prev = f.bridge("ADD", "plain");
    for pod in ["plain", "optout"] {
        let out = f.mesh(&f.env("ADD", pod), &f.mesh_conf(Some(&prev)).to_string());
        assert!(
            out.status.success(),
            "{pod}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), prev);
        assert!(!f.nat().contains("ISTIO"), "{pod} was captured");
        // CHECK agrees that no rules is right.
        let check = f.mesh(&f.env("CHECK", pod), &f.mesh_conf(Some(&prev)).to_string());
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stdout)
        );
    }
    let log = std::fs::read_to_string(f.log_file()).unwrap();
    assert!(log.contains("not captured: no sidecar"), "{log}");
    assert!(log.contains("sidecar.istio.io/inject"), "{log}");
}

#[test]
fn missing_pod_fails_add_and_logs() {
    if !plugins_or_skip("missing_pod_fails_add_and_logs") {
        return;
    }
    let f = Fixture::new();
    let prev = f.bridge("ADD", "ghost");
    let out = f.mesh(
        &f.env("ADD", "ghost"),
        &f.mesh_conf(Some(&prev)).to_string(),
    );
    assert_eq!(error_code(&out), 3);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("pod default/ghost not found"), "{stdout}");
    assert!(!f.nat().contains("ISTIO"));
    let log = std::fs::read_to_string(f.log_file()).unwrap();
    assert!(
        log.contains("error") && log.contains("pod=default/ghost"),
        "{log}"
    );
}

#[test]
fn invalid_annotation_fails_add_naming_it() {
    if !plugins_or_skip("invalid_annotation_fails_add_naming_it") {
        return;
    }
    let f = Fixture::new();
    f.write_pod(
        "bad",
        "{sidecar.istio.io/status: '{}', traffic.sidecar.istio.io/excludeOutboundPorts: 'smtp'}",
        SIDECAR,
    );
    let prev = f.bridge("ADD", "bad");
    let out = f.mesh(&f.env("ADD", "bad"), &f.mesh_conf(Some(&prev)).to_string());
    assert_eq!(error_code(&out), 100);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("traffic.sidecar.istio.io/excludeOutboundPorts")
    );
    assert!(!f.nat().contains("ISTIO"));
}

#[test]
fn bad_netconf_and_environment_are_cni_errors() {
    if !plugins_or_skip("bad_netconf_and_environment_are_cni_errors") {
        return;
    }
    let f = Fixture::new();
    f.write_pod("web", "{sidecar.istio.io/status: '{}'}", SIDECAR);
    let env = f.env("ADD", "web");
    // Not JSON.
    assert_eq!(error_code(&f.mesh(&env, "{nope")), 6);
    // No podSource.
    assert_eq!(
        error_code(&f.mesh(
            &env,
            r#"{"cniVersion":"1.0.0","name":"x","type":"mesh-cni"}"#
        )),
        7
    );
    // Not chained (no prevResult).
    let out = f.mesh(&env, &f.mesh_conf(None).to_string());
    assert_eq!(error_code(&out), 7);
    assert!(String::from_utf8_lossy(&out.stdout).contains("prevResult"));
    // Unsupported version.
    let mut conf = f.mesh_conf(Some(&json!({"cniVersion": "1.0.0"})));
    conf["cniVersion"] = json!("2.0.0");
    assert_eq!(error_code(&f.mesh(&env, &conf.to_string())), 1);
    // Missing CNI_NETNS on ADD.
    let env: Vec<_> = env.into_iter().filter(|(k, _)| k != "CNI_NETNS").collect();
    assert_eq!(
        error_code(&f.mesh(&env, &f.mesh_conf(Some(&json!({}))).to_string())),
        4
    );
    // A namespace path that is not a namespace.
    let mut env = f.env("ADD", "web");
    env[2].1 = "/nonexistent/netns".into();
    assert_eq!(
        error_code(&f.mesh(&env, &f.mesh_conf(Some(&json!({}))).to_string())),
        3
    );
    assert!(!f.nat().contains("ISTIO"));
}

#[test]
fn del_tolerates_a_missing_namespace() {
    if !plugins_or_skip("del_tolerates_a_missing_namespace") {
        return;
    }
    let f = Fixture::new();
    let mut env = f.env("DEL", "gone");
    env[2].1 = String::new();
    let out = f.mesh(&env, &f.mesh_conf(None).to_string());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    env[2].1 = "/run/netns/mcni-does-not-exist".into();
    assert!(
        f.mesh(&env, &f.mesh_conf(None).to_string())
            .status
            .success()
    );
}

#[test]
fn version_reports_supported_versions() {
    let out = run(
        &mut Command::new(env!("CARGO_BIN_EXE_mesh-cni")),
        &[("CNI_COMMAND".into(), "VERSION".into())],
        r#"{"cniVersion":"1.0.0"}"#,
    );
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cniVersion"], "1.0.0");
    let versions: Vec<&str> = v["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        versions.contains(&"1.0.0") && versions.contains(&"0.4.0"),
        "{v}"
    );
}

/// The Kubernetes pod source against a real API server (tools/kube-apiserver).
#[test]
fn kubernetes_pod_source_against_a_real_api_server() {
    if !plugins_or_skip("kubernetes_pod_source_against_a_real_api_server") {
        return;
    }
    let kubeconfig = std::env::var("MESH_KUBECONFIG")
        .unwrap_or_else(|_| "/var/cache/mesh-kube/run/kubeconfig".into());
    let strict = std::env::var("MESH_CI_STRICT").as_deref() == Ok("1")
        && std::env::var_os("MESH_SKIP_KUBE").is_none();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig).ok()?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .ok()?;
        let client = kube::Client::try_from(cfg).ok()?;
        client.apiserver_version().await.ok()?;
        Some(client)
    });
    let Some(client) = client else {
        let why = format!(
            "no Kubernetes API server reachable through {kubeconfig} (tools/kube-apiserver/run.sh start)"
        );
        assert!(!strict, "{why}; MESH_CI_STRICT=1 makes this a failure");
        eprintln!("skipped: {why}");
        return;
    };
    use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
    use kube::api::{Api, DeleteParams, PostParams};
    let name = format!("mcni-{}", std::process::id());
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {"sidecar.istio.io/status": "{}"}},
        "spec": {"containers": [{"name": "app", "image": "app"}, {"name": "istio-proxy", "image": "proxy"}],
                 "automountServiceAccountToken": false}
    }))
    .unwrap();
    rt.block_on(async {
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
        let _ = sas.create(&PostParams::default(), &sa).await;
        Api::<Pod>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &pod)
            .await
            .unwrap();
    });

    let f = Fixture::new();
    let prev = f.bridge("ADD", &name);
    let mut conf = f.mesh_conf(Some(&prev));
    conf["podSource"] = json!({"type": "kubernetes", "kubeconfig": kubeconfig});
    let out = f.mesh(&f.env("ADD", &name), &conf.to_string());
    let ghost = f.mesh(&f.env("ADD", "mcni-no-such-pod"), &conf.to_string());
    rt.block_on(async {
        let _ = Api::<Pod>::namespaced(client, "default")
            .delete(&name, &DeleteParams::default())
            .await;
    });
    assert!(
        out.status.success(),
        "ADD via API: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(f.nat().contains("ISTIO_OUTPUT"));
    assert_eq!(error_code(&ghost), 3);
    assert!(String::from_utf8_lossy(&ghost.stdout).contains("the Kubernetes API"));
}
