//! The local-cluster backend end to end (needs root: network namespaces): a pod network
//! namespace holding a real mesh-control and a real mesh-proxy sidecar on the standard
//! ports, described by `demo.json`/`state.json` the way the harness writes them.
//! `meshctl proxy-config <pod>` must reach the proxy's admin API through the namespace,
//! `proxy-status` must find the control plane from demo.json (through the node namespace,
//! as there is no host link), and a stopped proxy must be reported with its log file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use support::*;

/// A network namespace deleted on drop.
struct Netns(String);

impl Netns {
    fn create(name: &str) -> Netns {
        let run = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().expect("ip runs");
            assert!(st.success(), "ip {args:?} failed");
        };
        // A leftover from a crashed run of this test would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        run(&["netns", "add", name]);
        let ns = Netns(name.to_string());
        run(&["-n", name, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn in_netns(ns: &str, bin: std::path::PathBuf) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(bin);
    cmd
}

#[test]
fn pods_are_reached_through_their_network_namespace() {
    if !require(
        is_root() && Command::new("ip").arg("-V").output().is_ok(),
        "root and iproute2 (network namespaces)",
    ) {
        return;
    }
    let ns = Netns::create(&format!("meshctl-t{}", std::process::id()));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    std::fs::write(
        config.join("backend.yaml"),
        "apiVersion: v1
kind: Service
metadata: {name: backend, namespace: default}
spec:
  clusterIP: 10.251.0.10
  selector: {app: backend}
  ports: [{name: http, port: 80, targetPort: 8080}]
",
    )
    .unwrap();

    let mut control = in_netns(&ns.0, workspace_bin("mesh-control", "MESH_CONTROL_BIN"));
    control.arg("--config-dir").arg(&config).args([
        "--xds-addr",
        "127.0.0.1:15010",
        "--monitoring-addr",
        "127.0.0.1:15014",
    ]);
    let mut control = Proc::spawn(control, dir.path().join("control.log"));

    let proxy_log = dir.path().join("sleep.proxy.log");
    let mut proxy = in_netns(&ns.0, workspace_bin("mesh-proxy", "MESH_PROXY_BIN"));
    proxy
        .args([
            "--xds-address",
            "http://127.0.0.1:15010",
            "--pod-name",
            "sleep",
            "--pod-namespace",
            "default",
        ])
        .args([
            "--instance-ip",
            "127.0.0.1",
            "--admin-addr",
            "127.0.0.1:15000",
        ])
        .args([
            "--health-addr",
            "",
            "--prometheus-addr",
            "",
            "--merged-metrics-addr",
            "",
            "--concurrency",
            "1",
        ]);
    let proxy = Proc::spawn(proxy, proxy_log.clone());

    let local = dir.path().join("cluster");
    std::fs::create_dir(&local).unwrap();
    std::fs::write(
        local.join("demo.json"),
        serde_json::to_vec(&json!({
            "ingress_url": null,
            "monitoring_url": "http://127.0.0.1:15014",
            "pods": [
                {"name": "sleep", "namespace": "default", "ip": "127.0.0.1", "app": "sleep", "admin": "127.0.0.1:15000"},
                {"name": "backend-v1", "namespace": "default", "ip": "127.0.0.2", "app": "backend", "admin": null}
            ]
        }))
        .unwrap(),
    )
    .unwrap();
    std::fs::write(
        local.join("state.json"),
        serde_json::to_vec(&json!({
            "prefix": "meshctl", "node_netns": ns.0, "host_link": null,
            "pods": [{"spec": {"name": "sleep", "namespace": "default"}, "netns": ns.0, "container_id": ns.0, "ip": "127.0.0.1",
                      "ready": true, "procs": [{"what": "mesh-proxy", "pid": proxy.child.id(), "start_time": 0, "log": proxy_log}]}]
        }))
        .unwrap(),
    )
    .unwrap();
    let env = [("MESH_LOCAL_DIR", local.to_str().unwrap())];

    // The pod's proxy, through its namespace, once it has its clusters.
    let clusters = wait_for(
        Duration::from_secs(20),
        "the sidecar's clusters through meshctl",
        || {
            control.assert_running();
            let out = meshctl(&["proxy-config", "clusters", "sleep"], &env);
            let s = text(&out.stdout);
            (out.status.success() && s.contains("backend.default.svc.cluster.local")).then_some(s)
        },
    );
    assert!(
        rows(&clusters)
            .iter()
            .any(|r| r.starts_with("backend.default.svc.cluster.local 80 - outbound")),
        "{clusters}"
    );
    let listeners = ok(&meshctl(&["pc", "listeners", "sleep.default"], &env));
    assert!(
        rows(&listeners)[0] == "ADDRESSES PORT MATCH DESTINATION",
        "{listeners}"
    );
    let boot = ok(&meshctl(&["pc", "bootstrap", "sleep", "-o", "short"], &env));
    assert!(
        boot.contains("sidecar~127.0.0.1~sleep.default~default.svc.cluster.local"),
        "{boot}"
    );

    // The control plane from demo.json, reached through the node namespace.
    let status = wait_for(
        Duration::from_secs(10),
        "sleep.default in proxy-status",
        || {
            let out = meshctl(&["proxy-status"], &env);
            let s = text(&out.stdout);
            (out.status.success() && s.contains("SYNCED")).then_some(s)
        },
    );
    assert_eq!(cells(&status)[0]["NAME"], "sleep.default", "{status}");
    let one = ok(&meshctl(&["proxy-status", "sleep"], &env));
    assert!(one.contains("Listeners"), "{one}");

    // Entering a namespace needs root: a user without it is told so.
    {
        use std::os::unix::process::CommandExt;
        let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
            .args(["pc", "clusters", "sleep"])
            .env("MESH_LOCAL_DIR", &local)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(err.contains("needs root") && err.contains("sudo"), "{err}");
    }

    // A pod without a proxy, and a stopped proxy: what to do next.
    let out = meshctl(&["pc", "clusters", "backend"], &env);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("backend-v1.default has no sidecar proxy"),
        "{}",
        text(&out.stderr)
    );
    drop(proxy);
    let out = meshctl(&["pc", "routes", "sleep"], &env);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("in network namespace {}", ns.0)),
        "{err}"
    );
    assert!(
        err.contains("is the proxy running") && err.contains(proxy_log.to_str().unwrap()),
        "{err}"
    );
}
