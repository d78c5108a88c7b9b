//! Istio's reference examples (reproduced in `tests/examples/`): every one is valid, and
//! parses and re-serialises to the same JSON value (apiVersion aside: one Rust type
//! serves every version and writes v1).

mod common;

use mesh_api::document::{self, Resource, split_documents};
use mesh_api::validation;
use serde_json::Value;

#[test]
fn every_example_is_valid() {
    let mut count = 0;
    for file in common::example_files() {
        let text = std::fs::read_to_string(&file).expect("read example");
        let name = file.display().to_string();
        for result in validation::validate_text(&text, &name) {
            match result {
                Ok(r) => {
                    assert!(
                        r.kind().is_some_and(|k| k.is_istio()),
                        "{name}: unexpected {r:?}"
                    );
                    count += 1;
                }
                Err(e) => panic!("example rejected:\n{e}"),
            }
        }
    }
    assert!(count >= 60, "only {count} examples");
}

#[test]
fn every_example_round_trips_to_the_same_json() {
    for file in common::example_files() {
        let text = std::fs::read_to_string(&file).expect("read example");
        let name = file.display().to_string();
        for raw in split_documents(&text, &name) {
            let raw = raw.expect("example parses as YAML");
            let mut original = raw.value.clone();
            let resource =
                Resource::from_value(raw.value).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            let mut again = resource.to_json();
            for v in [&mut original, &mut again] {
                v.as_object_mut().expect("object").remove("apiVersion");
            }
            assert!(
                common::json_eq(&original, &again),
                "{name} document {} changed in a round trip:\noriginal: {original}\nagain:    {again}",
                raw.index
            );
            // And the re-serialised form parses to the same resource.
            let mut reparsed_json = again.clone();
            reparsed_json.as_object_mut().expect("object").insert(
                "apiVersion".into(),
                Value::String({
                    // The newest version the kind is served as (v1, or v1alpha3 only).
                    let kind = resource.kind().expect("kind");
                    let version = kind.versions().last().expect("served versions");
                    format!("{}/{version}", kind.group())
                }),
            );
            assert_eq!(
                Resource::from_value(reparsed_json).expect("reparses"),
                resource
            );
        }
    }
}

#[test]
fn every_served_version_is_accepted_for_every_kind() {
    for kind in document::Kind::istio() {
        for version in kind.versions() {
            let doc = format!(
                "apiVersion: {}/{version}\nkind: {kind}\nmetadata: {{name: x, namespace: y}}\nspec: {{}}\n",
                kind.group()
            );
            let parsed = document::parse(&doc, "versions.yaml");
            assert!(
                matches!(parsed.as_slice(), [Ok(r)] if r.kind() == Some(kind)),
                "{kind} {version}: {parsed:?}"
            );
        }
        let doc = format!(
            "apiVersion: {}/v9\nkind: {kind}\nmetadata: {{name: x}}\nspec: {{}}\n",
            kind.group()
        );
        let parsed = document::parse(&doc, "versions.yaml");
        let err = parsed[0].as_ref().expect_err("unknown version");
        assert_eq!(err.errors[0].path, "apiVersion");
    }
}

#[test]
fn kubernetes_kinds_and_unowned_kinds() {
    let text = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default, creationTimestamp: "2024-01-02T03:04:05Z"}
spec:
  ports: [{name: http, port: 9080}]
  selector: {app: reviews}
---
apiVersion: discovery.k8s.io/v1beta1
kind: EndpointSlice
metadata: {name: reviews-abc, namespace: default, labels: {kubernetes.io/service-name: reviews}}
addressType: IPv4
endpoints: [{addresses: [10.250.0.5]}]
ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-1, namespace: default, labels: {app: reviews}}
spec: {containers: [{name: app, image: reviews}]}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data: {mesh: "trustDomain: cluster.local"}
---
apiVersion: v1
kind: Secret
metadata: {name: cacerts, namespace: istio-system}
data: {ca-cert.pem: aGVsbG8=}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: reviews-v1, namespace: default}
"#;
    let parsed: Vec<Resource> = document::parse(text, "k8s.yaml")
        .into_iter()
        .map(|r| r.expect("valid"))
        .collect();
    let keys: Vec<String> = parsed.iter().map(|r| r.describe()).collect();
    assert_eq!(
        keys,
        [
            "Service default/reviews",
            "EndpointSlice default/reviews-abc",
            "Namespace default",
            "Pod default/reviews-1",
            "ConfigMap istio-system/istio",
            "Secret istio-system/cacerts",
            "apps/v1 Deployment reviews-v1",
        ]
    );
    assert_eq!(
        parsed[0].creation_timestamp().map(|t| t.0.to_string()),
        Some("2024-01-02T03:04:05Z".to_string())
    );
    assert!(
        matches!(&parsed[6], Resource::Unowned(u) if u.namespace.as_deref() == Some("default"))
    );
    // A namespaced resource without a namespace is in "default".
    let vs = document::parse(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: {hosts: [r], http: [{route: [{destination: {host: r}}]}]}\n",
        "vs.yaml",
    );
    let key = vs[0].as_ref().expect("valid").key().expect("key");
    assert_eq!(key.to_string(), "VirtualService default/r");
}
