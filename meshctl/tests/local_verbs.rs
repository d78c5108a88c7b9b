//! `meshctl --local apply|delete|get|exec` as a process against a local cluster's files
//! (the state file as the e2e harness writes it). `exec` also needs root and a real
//! network namespace.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on purpose

use std::path::Path;
use std::process::{Command, Output};

use serde_json::json;

fn meshctl(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .env("MESH_LOCAL_DIR", dir)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn cluster(dir: &Path, netns: &str) {
    let state = json!({
        "prefix": "x", "node_netns": "x-node", "host_link": null, "control": null,
        "conflist": {}, "cni_dirs": [],
        "pods": [
            {"spec": {"name": "sleep", "namespace": "default", "labels": {"app": "sleep", "version": "v1"},
                      "annotations": {}, "service_account": "sleep", "kind": {"App": {"sidecar": true}},
                      "http_ports": [80], "tcp_ports": []},
             "netns": netns, "container_id": netns, "ip": "10.250.0.4", "ready": true, "cni_result": null, "procs": []},
            {"spec": {"name": "istio-ingressgateway", "namespace": "istio-system", "labels": {"istio": "ingressgateway"},
                      "annotations": {}, "service_account": "gw", "kind": "Gateway", "http_ports": [], "tcp_ports": []},
             "netns": "x-gw", "container_id": "x-gw", "ip": "", "ready": false, "cni_result": null, "procs": []}
        ],
        "services": [
            {"spec": {"name": "reviews", "namespace": "default", "selector": {"app": "reviews"},
                      "ports": [{"name": "http-reviews", "port": 9080, "target_port": 9080}]}, "vip": "10.251.0.11"}
        ]
    });
    std::fs::write(dir.join("state.json"), serde_json::to_vec(&state).unwrap()).unwrap();
}

const VS: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n";

#[test]
fn apply_validates_everything_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    cluster(tmp.path(), "x-sleep");
    let file = tmp.path().join("in.yaml");
    let written = tmp
        .path()
        .join("config/user/virtualservice.default.reviews.yaml");

    std::fs::write(&file, VS).unwrap();
    let out = meshctl(
        tmp.path(),
        &["--local", "apply", "-f", file.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "virtualservice.networking.istio.io/reviews created\n"
    );
    assert!(written.is_file());
    let again = meshctl(
        tmp.path(),
        &["apply", "--local", "-f", file.to_str().unwrap()],
    );
    assert!(
        text(&again).contains("reviews configured"),
        "{}",
        text(&again)
    );

    // One bad document among good ones: nothing is written, the error names it.
    std::fs::remove_file(&written).unwrap();
    std::fs::write(&file, format!("{VS}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: bad}}\nspec: {{hosts: [x]}}\n")).unwrap();
    let out = meshctl(
        tmp.path(),
        &["--local", "apply", "-f", file.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("VirtualService bad") && text(&out).contains("nothing applied"),
        "{}",
        text(&out)
    );
    assert!(!written.exists());

    // Without --local (no Kubernetes backend yet) and without a cluster: clear errors.
    let out = meshctl(tmp.path(), &["apply", "-f", file.to_str().unwrap()]);
    assert!(text(&out).contains("needs --local"), "{}", text(&out));
    let empty = tempfile::tempdir().unwrap();
    let out = meshctl(
        empty.path(),
        &["--local", "apply", "-f", file.to_str().unwrap()],
    );
    assert!(text(&out).contains("no local cluster"), "{}", text(&out));
}

#[test]
fn delete_removes_what_a_file_names() {
    let tmp = tempfile::tempdir().unwrap();
    cluster(tmp.path(), "x-sleep");
    let file = tmp.path().join("in.yaml");
    std::fs::write(&file, VS).unwrap();
    assert!(
        meshctl(
            tmp.path(),
            &["--local", "apply", "-f", file.to_str().unwrap()]
        )
        .status
        .success()
    );
    let out = meshctl(
        tmp.path(),
        &["--local", "delete", "-f", file.to_str().unwrap()],
    );
    assert!(text(&out).contains("reviews deleted"), "{}", text(&out));
    let out = meshctl(
        tmp.path(),
        &["--local", "delete", "-f", file.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("not found"), "{}", text(&out));
    let out = meshctl(
        tmp.path(),
        &[
            "--local",
            "delete",
            "--ignore-not-found",
            "-f",
            file.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn get_lists_pods_and_services() {
    let tmp = tempfile::tempdir().unwrap();
    cluster(tmp.path(), "x-sleep");
    let out = meshctl(tmp.path(), &["--local", "get", "pods"]);
    let t = text(&out);
    assert!(t.starts_with("NAMESPACE"), "{t}");
    assert!(
        t.contains("sleep")
            && t.contains("2/2")
            && t.contains("10.250.0.4")
            && t.contains("sidecar"),
        "{t}"
    );
    assert!(
        t.contains("istio-ingressgateway") && t.contains("Pending") && t.contains("router"),
        "{t}"
    );
    let out = meshctl(tmp.path(), &["--local", "get", "svc", "-n", "default"]);
    let t = text(&out);
    assert!(
        t.contains("reviews") && t.contains("10.251.0.11") && t.contains("9080/TCP (http-reviews)"),
        "{t}"
    );
}

#[test]
fn exec_runs_in_the_pod_namespace_as_the_app_user() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var("MESH_CI_STRICT").as_deref() != Ok("1"),
            "exec test needs root"
        );
        eprintln!("skipped: exec_runs_in_the_pod_namespace_as_the_app_user needs root");
        return;
    }
    let ns = format!("mctl{}", std::process::id());
    assert!(
        Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .unwrap()
            .success()
    );
    let tmp = tempfile::tempdir().unwrap();
    cluster(tmp.path(), &ns);
    // The namespace has only a loopback interface, and the command runs as UID 1000.
    let links = meshctl(
        tmp.path(),
        &["--local", "exec", "sleep", "--", "ip", "-o", "link"],
    );
    let uid = meshctl(
        tmp.path(),
        &["--local", "exec", "sleep.default", "--", "id", "-u"],
    );
    let missing = meshctl(tmp.path(), &["--local", "exec", "nosuch", "--", "true"]);
    let code = meshctl(
        tmp.path(),
        &["--local", "exec", "sleep", "--", "sh", "-c", "exit 7"],
    );
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    assert_eq!(
        String::from_utf8_lossy(&links.stdout).lines().count(),
        1,
        "{}",
        text(&links)
    );
    assert_eq!(String::from_utf8_lossy(&uid.stdout).trim(), "1000");
    assert!(
        text(&missing).contains("no pod or app \"nosuch\""),
        "{}",
        text(&missing)
    );
    assert_eq!(code.status.code(), Some(7));
}
