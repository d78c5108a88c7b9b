//! The generated CRDs in a real Kubernetes API server (`tools/kube-apiserver/run.sh`,
//! started by `cargo xtask ci`, found through `MESH_KUBECONFIG`): every CRD becomes
//! Established, every Istio reference example is accepted by `kubectl apply
//! --dry-run=server`, and structurally wrong documents are rejected by the API server
//! itself (client-side validation off), as they are by our validator.
//!
//! Skips with a printed reason when no API server is configured, except under
//! `MESH_CI_STRICT=1`, where that is a failure.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

struct Kube {
    kubeconfig: String,
    kubectl: PathBuf,
}

impl Kube {
    fn from_env() -> Option<Kube> {
        let strict = std::env::var("MESH_CI_STRICT").is_ok_and(|v| v == "1");
        let Ok(kubeconfig) = std::env::var("MESH_KUBECONFIG") else {
            assert!(
                !strict,
                "MESH_CI_STRICT=1 but MESH_KUBECONFIG is not set (run through `cargo xtask ci`, which starts the API server)"
            );
            eprintln!(
                "skipping: MESH_KUBECONFIG is not set (start tools/kube-apiserver/run.sh, or run `cargo xtask ci`)"
            );
            return None;
        };
        let kubectl = std::env::var_os("MESH_KUBECTL")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/mesh-kube/bin/kubectl"));
        Some(Kube {
            kubeconfig,
            kubectl,
        })
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(&self.kubectl)
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.kubectl.display()));
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("write stdin");
        }
        drop(child.stdin.take());
        child.wait_with_output().expect("kubectl runs")
    }

    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn crd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/crds")
}

/// Installs the CRDs and waits until each is Established (idempotent: `apply`).
fn install_crds(kube: &Kube) {
    let dir = crd_dir().display().to_string();
    // The tests of this file run at once (nextest: one process each) against one API
    // server. A client-side apply reads, then creates: two at once can both find a CRD
    // missing, and the slower create fails with AlreadyExists. Applying again patches it.
    let apply = || kube.run(&["apply", "-f", &dir], None);
    let mut out = apply();
    for _ in 0..2 {
        if out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("AlreadyExists") {
            break;
        }
        out = apply();
    }
    assert!(
        out.status.success(),
        "kubectl apply -f {dir} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for crd in mesh_api::crds::all() {
        let name = crd.metadata.name.expect("crd name");
        kube.ok(
            &[
                "wait",
                "--for",
                "condition=established",
                "--timeout",
                "60s",
                &format!("crd/{name}"),
            ],
            None,
        );
        let status = kube.ok(
            &[
                "get",
                &format!("crd/{name}"),
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
            ],
            None,
        );
        assert_eq!(status, "True", "{name} is not Established");
    }
}

#[test]
fn crds_are_established_and_examples_are_accepted_by_the_api_server() {
    let Some(kube) = Kube::from_env() else { return };
    install_crds(&kube);

    // Every namespace the examples use must exist for a server-side dry run.
    let mut namespaces = BTreeSet::from(["default".to_string()]);
    for file in common::example_files() {
        let text = std::fs::read_to_string(&file).expect("read");
        for raw in mesh_api::document::split_documents(&text, "x") {
            let raw = raw.expect("yaml");
            if let Some(ns) = raw
                .value
                .pointer("/metadata/namespace")
                .and_then(|v| v.as_str())
            {
                namespaces.insert(ns.to_string());
            }
        }
    }
    let ns_yaml: String = namespaces
        .iter()
        .map(|ns| format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"))
        .collect();
    kube.ok(&["apply", "-f", "-"], Some(&ns_yaml));

    for file in common::example_files() {
        let out = kube.ok(
            &[
                "apply",
                "--dry-run=server",
                "-f",
                &file.display().to_string(),
            ],
            None,
        );
        assert!(
            out.contains("(server dry run)"),
            "{}: {out}",
            file.display()
        );
    }
}

/// Documents whose structure is wrong: the API server must reject them on its own.
const STRUCTURALLY_WRONG: &[(&str, &str)] = &[
    (
        "hosts is a string",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: wrong-1, namespace: default}\nspec: {hosts: reviews}\n",
    ),
    (
        "weight is a string",
        "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: wrong-2, namespace: default}\nspec: {hosts: [r], http: [{route: [{destination: {host: r}, weight: heavy}]}]}\n",
    ),
    (
        "bad enum",
        "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {name: wrong-3, namespace: default}\nspec: {host: r, trafficPolicy: {loadBalancer: {simple: FASTEST}}}\n",
    ),
    (
        "bad mtls mode",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: wrong-4, namespace: default}\nspec: {mtls: {mode: SOMETIMES}}\n",
    ),
    (
        "port number negative",
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: wrong-5, namespace: default}\nspec: {servers: [{port: {number: -80, name: http, protocol: HTTP}, hosts: ['*']}]}\n",
    ),
    (
        "rules is an object",
        "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: wrong-6, namespace: default}\nspec: {rules: {from: []}}\n",
    ),
    (
        "sampling is a string",
        "apiVersion: telemetry.istio.io/v1alpha1\nkind: Telemetry\nmetadata: {name: wrong-7, namespace: default}\nspec: {tracing: [{randomSamplingPercentage: lots}]}\n",
    ),
];

#[test]
fn structurally_wrong_documents_are_rejected_by_the_api_server_and_by_us() {
    let Some(kube) = Kube::from_env() else { return };
    install_crds(&kube);
    for (what, doc) in STRUCTURALLY_WRONG {
        let ours = mesh_api::validation::validate_text(doc, "wrong.yaml");
        assert!(ours[0].is_err(), "{what}: our validator accepted it");
        let out = kube.run(
            &["apply", "--dry-run=server", "--validate=false", "-f", "-"],
            Some(doc),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: the API server accepted it");
        assert!(
            stderr.contains("is invalid") || stderr.contains("Invalid value"),
            "{what}: {stderr}"
        );
    }
}
