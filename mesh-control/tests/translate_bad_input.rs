//! Bad input through the real file source: a broken YAML file next to good ones, a
//! VirtualService naming a subset no DestinationRule defines, two VirtualServices for one
//! host, and a once-good file turning invalid. Every problem must show in the logs and in
//! the `/debug/configz` view with its file, resource and field, and nothing else may be
//! lost: the good resources (and the last good version of a broken one) stay in force and
//! still translate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::sync::Arc;

use mesh_control::model::{Proxy, ProxyKind};
use mesh_control::source::file::FileSource;
use mesh_control::store::Store;
use mesh_control::translate::generate;
use parking_lot::Mutex;

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

const BASE: &str = include_str!("golden/base/bookinfo.yaml");

const ROUTES: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 50}
    - {destination: {host: reviews, subset: v9}, weight: 50}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-again, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  http:
  - route:
    - destination: {host: reviews, subset: v2}
"#;

fn productpage() -> Proxy {
    Proxy::for_test(
        ProxyKind::Sidecar,
        "10.250.0.10".parse().unwrap(),
        "productpage-v1",
        "default",
    )
}

/// The reviews virtual host's first route's clusters, as the proxy would get them.
fn reviews_clusters(store: &Store) -> Vec<String> {
    let g = generate(&store.snapshot(), &productpage());
    let route = g
        .routes
        .iter()
        .find(|r| r.name == "9080")
        .expect("route 9080");
    let json = mesh_api::envoy_json::any_to_json(&route.resource).unwrap();
    let vhost = json["virtualHosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "reviews.default.svc.cluster.local:9080")
        .expect("reviews vhost")
        .clone();
    let action = &vhost["routes"][0]["route"];
    match action.get("weightedClusters") {
        Some(w) => w["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect(),
        None => vec![action["cluster"].as_str().unwrap().to_string()],
    }
}

#[test]
fn bad_input_is_reported_and_nothing_else_is_lost() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().unwrap();
    let path = |f: &str| dir.path().join(f);
    std::fs::write(path("a-bookinfo.yaml"), BASE).unwrap();
    std::fs::write(path("b-routes.yaml"), ROUTES).unwrap();
    std::fs::write(
        path("c-broken.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: broken\n",
    )
    .unwrap();
    let store = Arc::new(Store::new());
    FileSource::new(dir.path(), store.clone())
        .load_all()
        .unwrap();

    let configz = serde_json::to_value(store.configz()).unwrap();
    let errors = configz["errors"].as_array().unwrap().clone();
    let has = |file: &str, resource: Option<&str>, field: Option<&str>, words: &str| {
        errors.iter().any(|e| {
            e["origin"].as_str().unwrap().contains(file)
                && resource.is_none_or(|r| e["resource"] == r)
                && field.is_none_or(|f| e["field"] == f)
                && e["message"].as_str().unwrap().contains(words)
        })
    };
    assert!(
        has("c-broken.yaml", None, None, "YAML syntax error"),
        "{errors:#?}"
    );
    assert!(
        has(
            "b-routes.yaml",
            Some("VirtualService default/reviews"),
            Some("spec.http[0].route[1].destination.subset"),
            "\"v9\""
        ),
        "{errors:#?}"
    );
    assert!(
        has(
            "b-routes.yaml",
            Some("VirtualService default/reviews-again"),
            Some("spec.hosts[0]"),
            "already routed"
        ),
        "{errors:#?}"
    );
    assert_eq!(errors.len(), 3, "{errors:#?}");

    // Everything good is in force: 4 services, 6 pods, the DestinationRule, both
    // VirtualServices; the oldest VirtualService owns the host.
    let resources: Vec<String> = configz["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["resource"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(resources.len(), 4 + 6 + 1 + 2, "{resources:#?}");
    assert_eq!(store.snapshot().registry().services().len(), 4);
    assert_eq!(
        reviews_clusters(&store),
        [
            "outbound|9080|v1|reviews.default.svc.cluster.local",
            "outbound|9080|v9|reviews.default.svc.cluster.local"
        ]
    );

    // The logs say the same, with file, resource and field.
    let text = logs.text();
    assert!(
        text.contains("c-broken.yaml") && text.contains("YAML syntax error"),
        "{text}"
    );
    assert!(
        text.contains("spec.http[0].route[1].destination.subset"),
        "{text}"
    );
    assert!(
        text.contains("VirtualService default/reviews-again"),
        "{text}"
    );

    // A once-good file turns invalid: the last good VirtualService stays in force.
    let broken = ROUTES.replace(
        "weight: 50}\n    - {destination: {host: reviews, subset: v9}, weight: 50}",
        "weight: -5}",
    );
    std::fs::write(path("b-routes.yaml"), broken).unwrap();
    FileSource::new(dir.path(), store.clone())
        .load_all()
        .unwrap();
    assert_eq!(
        reviews_clusters(&store).len(),
        2,
        "the last good version routes as before"
    );
    let issues = store.snapshot().issues().to_vec();
    assert!(
        issues.iter().any(|i| i.origin.contains("b-routes.yaml:")
            && i.resource.as_deref() == Some("VirtualService default/reviews")
            && i.field.as_deref().is_some_and(|f| f.contains("weight"))
            && i.message.contains("last good version")),
        "{issues:#?}"
    );

    // Fixing everything clears every problem.
    std::fs::write(
        path("b-routes.yaml"),
        ROUTES
            .replace("subset: v9", "subset: v2")
            .replace("reviews.default.svc.cluster.local]", "ratings]"),
    )
    .unwrap();
    std::fs::remove_file(path("c-broken.yaml")).unwrap();
    FileSource::new(dir.path(), store.clone())
        .load_all()
        .unwrap();
    assert!(
        store.snapshot().issues().is_empty(),
        "{:#?}",
        store.snapshot().issues()
    );
    assert_eq!(
        reviews_clusters(&store),
        [
            "outbound|9080|v1|reviews.default.svc.cluster.local",
            "outbound|9080|v2|reviews.default.svc.cluster.local"
        ]
    );
}
