//! Golden tables: `meshctl proxy-config ... -f` on a saved Istio-shaped sidecar config
//! dump (static, active, warming and rejected resources, inline and RDS routes, weighted
//! and header routes, a gateway route table, SDS secrets with a real certificate, EDS,
//! and filter types this build does not know). `UPDATE_GOLDEN=1` rewrites the files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use support::*;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/istio_sidecar_config_dump.json"
);

fn golden(name: &str, args: &[&str]) {
    let mut a = vec!["proxy-config"];
    a.extend(args);
    a.extend(["-f", FIXTURE]);
    let out = meshctl(&a, &[]);
    let mut got = ok(&out);
    let stderr = text(&out.stderr);
    if !stderr.is_empty() {
        got.push_str("--- stderr ---\n");
        got.push_str(&stderr);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
    assert_eq!(
        got,
        want,
        "meshctl {} differs from {} (UPDATE_GOLDEN=1 rewrites it)",
        a.join(" "),
        path.display()
    );
}

#[test]
fn clusters() {
    golden("clusters", &["clusters"]);
    golden(
        "clusters_filtered",
        &["clusters", "--fqdn", "reviews", "--port", "9080"],
    );
}

#[test]
fn listeners() {
    golden("listeners", &["listeners"]);
    golden("listeners_short", &["listeners", "--verbose=false"]);
}

#[test]
fn routes() {
    golden("routes", &["routes"]);
    golden("routes_short", &["routes", "--verbose=false"]);
}

#[test]
fn endpoints_from_an_eds_dump() {
    golden("endpoints", &["endpoints"]);
    golden(
        "endpoints_unhealthy",
        &["endpoints", "--status", "unhealthy"],
    );
}

#[test]
fn secrets() {
    golden("secrets", &["secret"]);
}

#[test]
fn bootstrap_summary() {
    golden("bootstrap_short", &["bootstrap", "-o", "short"]);
}

#[test]
fn all() {
    golden("all", &["all"]);
}

#[test]
fn json_output_is_the_dumps_own_json() {
    let dump: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(FIXTURE).unwrap()).unwrap();
    let out: serde_json::Value = serde_json::from_str(&ok(&meshctl(
        &["pc", "all", "-o", "json", "-f", FIXTURE],
        &[],
    )))
    .unwrap();
    assert_eq!(out, dump);
    let routes: serde_json::Value = serde_json::from_str(&ok(&meshctl(
        &[
            "pc",
            "routes",
            "--name",
            "http.8080",
            "-o",
            "json",
            "-f",
            FIXTURE,
        ],
        &[],
    )))
    .unwrap();
    assert_eq!(
        routes,
        serde_json::json!([dump["configs"][5]["dynamic_route_configs"][1]["route_config"]])
    );
    // Secrets as printed (the fixture's key is redacted, as Envoy prints it).
    let secrets = ok(&meshctl(
        &["pc", "secret", "-o", "yaml", "-f", FIXTURE],
        &[],
    ));
    assert!(
        secrets.contains("name: ROOTCA") && !secrets.contains("kubernetes://bookinfo-credential"),
        "{secrets}"
    );
}

#[test]
fn all_notes_empty_sections_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("tcp_only.json");
    std::fs::write(
        &f,
        r#"{"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "dynamic_active_clusters": [
            {"cluster": {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "outbound|5432||db.default.svc.cluster.local", "type": "EDS"}}]}]}"#,
    )
    .unwrap();
    let out = ok(&meshctl(&["pc", "all", "-f", f.to_str().unwrap()], &[]));
    assert!(
        out.contains("db.default.svc.cluster.local")
            && out.contains("(no listeners)")
            && out.contains("(no routes loaded over RDS)"),
        "{out}"
    );
    // The single-type command is an error with a hint.
    let out = meshctl(&["pc", "routes", "-f", f.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no routes found"),
        "{}",
        text(&out.stderr)
    );
}
