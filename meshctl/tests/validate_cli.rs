//! `meshctl validate` run as a process on directories of good and bad files: exit codes,
//! the summary line, and the error messages (file, line, column, resource, field path).

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn meshctl(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshctl"));
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start meshctl");
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("meshctl runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn examples() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../mesh-api/tests/examples")
        .display()
        .to_string()
}

const GOOD: &str = "\
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: reviews-v1}
---
apiVersion: v1
kind: Service
metadata: {name: reviews}
spec: {ports: [{name: http, port: 9080}]}
";

const BAD: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: prod}
spec:
  hosts: [ratings]
  http:
  - route: [{destination: {host: ratings}}]
    retries: {attempts: -1}
    timeout: 1 second
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  trafficPolicy: {loadBalancer: {simple: FASTEST}}
";

const BROKEN_YAML: &str = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: gw
spec:
  servers: [{port: {number: 80}
";

#[test]
fn istio_reference_examples_are_valid() {
    let out = meshctl(&["validate", "-f", &examples()], None);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    assert!(stdout.starts_with("validated "), "{stdout}");
    assert!(stdout.trim_end().ends_with("all valid"), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "one summary line: {stdout}");
}

#[test]
fn good_directory_exits_zero_and_notes_skipped_kinds() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("nested")).expect("mkdir");
    std::fs::write(dir.path().join("nested/good.yaml"), GOOD).expect("write");
    std::fs::write(dir.path().join("README.md"), "not yaml: [").expect("write");
    let out = meshctl(&["validate", "-f", &dir.path().display().to_string()], None);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(
        stdout.trim(),
        "validated 2 resources (1 Istio, 1 Kubernetes) in 1 files, skipped 1 of other kinds: all valid"
    );
    assert!(
        stderr.contains("note: ") && stderr.contains("skipping apps/v1 Deployment reviews-v1"),
        "{stderr}"
    );
}

#[test]
fn bad_files_exit_one_with_every_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a-good.yaml"), GOOD).expect("write");
    std::fs::write(dir.path().join("b-bad.yaml"), BAD).expect("write");
    std::fs::write(dir.path().join("c-broken.yml"), BROKEN_YAML).expect("write");
    let out = meshctl(
        &["validate", "-q", "-f", &dir.path().display().to_string()],
        None,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let bad = dir.path().join("b-bad.yaml").display().to_string();
    let broken = dir.path().join("c-broken.yml").display().to_string();
    for expected in [
        format!(
            "{bad}:1: VirtualService prod/ratings: spec.http[0].retries.attempts: attempts -1 must not be negative"
        ),
        format!(
            "{bad}:1: VirtualService prod/ratings: spec.http[0].timeout: invalid duration \"1 second\""
        ),
        format!(
            "{bad}:11: DestinationRule ratings: spec.trafficPolicy.loadBalancer.simple: unsupported value \"FASTEST\""
        ),
        format!("{broken}:7:1: YAML syntax error"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing `{expected}` in:\n{stderr}"
        );
    }
    assert!(!stderr.contains("note:"), "-q hides notes: {stderr}");
    assert_eq!(
        stdout.trim(),
        "4 errors in 3 invalid documents; 2 valid resources in 3 files, skipped 1 of other kinds"
    );
}

#[test]
fn stdin_and_missing_files() {
    let out = meshctl(&["validate", "-f", "-"], Some(BAD));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr)
            .contains("-:1: VirtualService prod/ratings: spec.http[0].retries.attempts")
    );

    let out = meshctl(&["validate", "-f", "-"], Some(GOOD));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let out = meshctl(&["validate", "-f", "/nonexistent/mesh.yaml"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot read /nonexistent/mesh.yaml"),
        "{}",
        text(&out.stderr)
    );
}
