//! `meshctl proxy-status` run as a process against a spawned mesh-control (temp
//! `--config-dir`) with a real client connected: Envoy (the referee: everything it is sent
//! it ACKs, so every type must show SYNCED and the configs must match), and a spawned
//! mesh-proxy (whose NACKs, if any, must be shown with their reason and be consistent with
//! the config comparison).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mesh_proxy::testing::{Envoy, find_envoy, http_get};
use serde_json::Value;
use support::*;

const NODE: &str = "router~127.0.0.1~ingress.istio-system~istio-system.svc.cluster.local";

fn service(dir: &Path, name: &str, vip: &str, endpoint: &str) {
    let yaml = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  clusterIP: {vip}
  selector: {{app: {name}}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-abcde
  namespace: default
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
- addresses: [\"{endpoint}\"]
  conditions: {{ready: true}}
"
    );
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{name}.yaml"))).unwrap();
}

struct Control {
    _proc: Proc,
    xds: SocketAddr,
    url: String,
    mon: SocketAddr,
    dir: tempfile::TempDir,
    _logs: tempfile::TempDir,
}

fn start_control() -> Control {
    let dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    service(dir.path(), "backend", "10.251.0.10", "10.250.1.1");
    let xds: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mon: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = Command::new(workspace_bin("mesh-control", "MESH_CONTROL_BIN"));
    cmd.arg("--config-dir").arg(dir.path()).args([
        "--xds-addr",
        &xds.to_string(),
        "--monitoring-addr",
        &mon.to_string(),
    ]);
    let mut proc = Proc::spawn(cmd, logs.path().join("control.log"));
    wait_for(Duration::from_secs(20), "mesh-control /ready", || {
        proc.assert_running();
        http_get(mon, "/ready")
            .ok()
            .filter(|b| b.contains("ready") && !b.contains("not ready"))
    });
    Control {
        _proc: proc,
        xds,
        url: format!("http://{mon}"),
        mon,
        dir,
        _logs: logs,
    }
}

/// Waits until the control plane has sent and had ACKed or NACKed CDS, LDS and EDS.
fn wait_answered(c: &Control) -> Value {
    wait_for(
        Duration::from_secs(20),
        "the proxy to answer CDS, LDS and EDS",
        || {
            let v: Value = serde_json::from_str(&http_get(c.mon, "/debug/syncz").ok()?).ok()?;
            let p = v.as_array()?.iter().find(|p| p["proxy"] == NODE)?.clone();
            let answered =
                |t: &str| p["types"][t]["acked"].is_object() || p["types"][t]["nack"].is_object();
            (answered("CDS") && answered("LDS") && answered("EDS")).then_some(p)
        },
    )
}

fn ps(args: &[&str]) -> std::process::Output {
    let mut a = vec!["proxy-status"];
    a.extend(args);
    meshctl(&a, &[])
}

#[test]
fn envoy_is_synced_and_its_config_matches() {
    let Some(bin) = find_envoy() else {
        require(false, "the Envoy binary ($MESH_ENVOY or tools/envoy.sh)");
        return;
    };
    let c = start_control();
    let envoy = Envoy::start(&bin, c.xds, NODE, true).expect("envoy starts");
    wait_answered(&c);

    let out = ok(&ps(&["--control", &c.url]));
    assert_eq!(rows(&out)[0], "NAME CLUSTER CDS LDS EDS RDS ISTIOD VERSION");
    let row = &cells(&out)[0];
    assert_eq!(row["NAME"], "ingress.istio-system");
    // CDS, LDS and EDS: SYNCED with the age of the ACK (`SYNCED (0s)`).
    for ty in ["CDS", "LDS", "EDS"] {
        assert!(
            row[ty].starts_with("SYNCED (") && row[ty].ends_with("s)"),
            "{ty}: {out}"
        );
    }
    assert!(
        ["SYNCED", "NOT SENT"]
            .iter()
            .any(|s| row["RDS"].starts_with(s)),
        "{out}"
    );
    assert_eq!(row["ISTIOD"], "127.0.0.1");

    // One pod: the configs compared.
    let admin = format!("http://{}", envoy.admin);
    let out = ok(&ps(&[
        "ingress.istio-system",
        "--control",
        &c.url,
        "--admin",
        &admin,
    ]));
    assert!(out.contains("Clusters Match\n"), "{out}");
    assert!(out.contains("Listeners Match\n"), "{out}");
    assert!(out.contains("Routes Match"), "{out}");

    // A new service: pushed, ACKed, and still matching.
    service(c.dir.path(), "catalog", "10.251.0.11", "10.250.1.2");
    wait_for(
        Duration::from_secs(10),
        "the new cluster to reach Envoy",
        || {
            http_get(envoy.admin, "/config_dump")
                .ok()
                .filter(|d| d.contains("catalog.default.svc.cluster.local"))
        },
    );
    wait_for(
        Duration::from_secs(10),
        "the push to be ACKed and compared equal",
        || {
            let out = text(
                &ps(&[
                    "ingress",
                    "-n",
                    "istio-system",
                    "--control",
                    &c.url,
                    "--admin",
                    &admin,
                ])
                .stdout,
            );
            (out.contains("Clusters Match") && !out.contains("STALE")).then_some(())
        },
    );

    // --json: the control plane's JSON for that proxy.
    let v: Value = serde_json::from_str(&ok(&ps(&[
        "ingress.istio-system",
        "--json",
        "--control",
        &c.url,
    ])))
    .unwrap();
    assert_eq!(v[0]["proxy"], NODE);
}

#[test]
fn mesh_proxy_sync_state_and_rejections_are_shown() {
    let c = start_control();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut cmd = proxy_command(
        &format!("http://{}", c.xds),
        admin,
        "ingress",
        "istio-system",
        "router",
    );
    cmd.args(["--label", "istio=ingressgateway"]);
    let mut proxy = Proc::spawn(cmd, logs.path().join("proxy.log"));
    let state = wait_answered(&c);
    proxy.assert_running();

    let out = ok(&ps(&["--control", &c.url]));
    let row = &cells(&out)[0];
    assert_eq!(row["NAME"], "ingress.istio-system", "{out}");
    // Every type the proxy answered is SYNCED, unless it rejected it: then the table says
    // NACK and the proxy's reason is printed under it.
    for ty in ["CDS", "LDS", "EDS"] {
        let nacked = state["types"][ty]["nack"].is_object()
            && state["types"][ty]["nack"]["nonce"] == state["types"][ty]["sent"]["nonce"];
        if nacked {
            assert_eq!(row[ty], "STALE (NACK)", "{out}");
            let reason = state["types"][ty]["nack"]["message"].as_str().unwrap();
            assert!(
                out.contains(&format!("ingress.istio-system {ty} rejected"))
                    && out.contains(reason),
                "{out}"
            );
        } else {
            assert!(row[ty].starts_with("SYNCED ("), "{ty}: {out}");
        }
    }

    // The comparison agrees with the sync state: a rejected CDS shows the missing cluster.
    let out = ok(&ps(&[
        "ingress.istio-system",
        "--control",
        &c.url,
        "--admin",
        &format!("http://{admin}"),
    ]));
    assert!(out.contains("Listeners Match\n"), "{out}");
    if out.contains("CDS rejected") {
        assert!(
            out.contains("Clusters Don't Match\n") && out.contains("missing in the proxy"),
            "{out}"
        );
    } else {
        assert!(out.contains("Clusters Match\n"), "{out}");
    }

    // Errors.
    let out = ps(&["nosuch", "--control", &c.url]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("no proxy of pod nosuch.default is connected")
            && err.contains("ingress.istio-system"),
        "{err}"
    );
    let closed = format!("http://127.0.0.1:{}", free_port());
    let out = ps(&["--control", &closed]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is mesh-control running"),
        "{}",
        text(&out.stderr)
    );
}
