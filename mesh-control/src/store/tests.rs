use super::*;

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 10.251.0.10
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
"#;

const VS_GOOD: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
"#;

const VS_BAD_FIELD: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
      weight: "heavy"
"#;

fn vs_names(store: &Store) -> Vec<String> {
    store
        .snapshot()
        .config()
        .virtual_services
        .iter()
        .map(|v| v.meta.display())
        .collect()
}

#[test]
fn broken_document_keeps_last_good_version_and_reports_field() {
    let store = Store::new();
    let mut events = store.subscribe();
    store.apply_text("a.yaml", &format!("{SERVICE}\n---\n{VS_GOOD}"));
    assert_eq!(vs_names(&store), ["VirtualService default/reviews"]);
    assert_eq!(store.snapshot().version(), 1);
    assert_eq!(
        events.try_recv().map(|e| e.kind).ok(),
        Some(ChangeKind::Full)
    );

    let issues = store.apply_text("a.yaml", &format!("{SERVICE}\n---\n{VS_BAD_FIELD}"));
    assert!(
        issues
            .iter()
            .any(|i| i.field.as_deref().is_some_and(|f| f.contains("weight"))
                && i.resource.as_deref() == Some("VirtualService default/reviews")
                && i.message.contains("last good version")),
        "{issues:#?}"
    );
    // The old VirtualService is still in force, and the issue is visible in the snapshot.
    assert_eq!(vs_names(&store), ["VirtualService default/reviews"]);
    let snap = store.snapshot();
    let vs = &snap.config().virtual_services[0];
    assert_eq!(vs.spec.http[0].route[0].weight, None);
    assert!(
        snap.issues()
            .iter()
            .any(|i| i.origin.starts_with("a.yaml:"))
    );
    let configz = serde_json::to_value(store.configz()).expect("configz serializes");
    assert!(configz["errors"].as_array().is_some_and(|e| !e.is_empty()));

    // Fixing the file clears the issue.
    store.apply_text("a.yaml", &format!("{SERVICE}\n---\n{VS_GOOD}"));
    assert!(
        store.snapshot().issues().is_empty(),
        "{:#?}",
        store.snapshot().issues()
    );
}

#[test]
fn yaml_syntax_error_keeps_everything_the_file_defined() {
    let store = Store::new();
    store.apply_text("a.yaml", &format!("{SERVICE}\n---\n{VS_GOOD}"));
    store.apply_text("a.yaml", "kind: [unclosed\n");
    assert_eq!(vs_names(&store), ["VirtualService default/reviews"]);
    assert_eq!(store.snapshot().config().services.len(), 1);
    assert!(
        store
            .snapshot()
            .issues()
            .iter()
            .any(|i| i.message.contains("YAML syntax error"))
    );
}

#[test]
fn deleting_a_document_or_file_removes_it_and_other_files_stay() {
    let store = Store::new();
    store.apply_text("svc.yaml", SERVICE);
    store.apply_text("vs.yaml", VS_GOOD);
    assert_eq!(vs_names(&store).len(), 1);
    store.apply_text("vs.yaml", "");
    assert!(vs_names(&store).is_empty());
    store.apply_text("vs.yaml", VS_GOOD);
    store.remove_origin("vs.yaml");
    assert!(vs_names(&store).is_empty());
    assert_eq!(store.snapshot().config().services.len(), 1);
}

#[test]
fn duplicate_definitions_first_origin_wins_and_is_reported() {
    let store = Store::new();
    store.apply_text("a.yaml", VS_GOOD);
    let other = VS_GOOD.replace("{host: reviews}", "{host: reviews, port: {number: 9080}}");
    store.apply_text("b.yaml", &other);
    let snap = store.snapshot();
    assert_eq!(
        snap.config().virtual_services[0].spec.http[0].route[0]
            .destination
            .port,
        None
    );
    assert!(
        snap.issues()
            .iter()
            .any(|i| i.origin == "b.yaml" && i.message.contains("also defined in a.yaml"))
    );
    // When a.yaml goes away, b.yaml's definition takes over.
    store.remove_origin("a.yaml");
    let snap = store.snapshot();
    assert!(
        snap.config().virtual_services[0].spec.http[0].route[0]
            .destination
            .port
            .is_some()
    );
}

#[test]
fn endpoint_slice_only_changes_are_endpoints_only_and_noops_publish_nothing() {
    let store = Store::new();
    let slice = |ip: &str| {
        format!(
            r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: reviews-abc
  namespace: default
  labels: {{kubernetes.io/service-name: reviews}}
addressType: IPv4
ports: [{{name: http, port: 9080}}]
endpoints:
- addresses: ["{ip}"]
"#
        )
    };
    store.apply_text("svc.yaml", SERVICE);
    store.apply_text("eps.yaml", &slice("10.250.0.5"));
    let mut events = store.subscribe();
    store.apply_text("eps.yaml", &slice("10.250.0.6"));
    let e = events.try_recv().expect("an event");
    assert_eq!(e.kind, ChangeKind::EndpointsOnly);
    assert!(
        e.reason.contains("EndpointSlice default/reviews-abc"),
        "{}",
        e.reason
    );
    let version = store.snapshot().version();
    store.apply_text("eps.yaml", &slice("10.250.0.6"));
    assert_eq!(
        store.snapshot().version(),
        version,
        "an unchanged file publishes nothing"
    );
    assert!(events.try_recv().is_err());
}

#[test]
fn a_batch_publishes_one_version_holding_every_file() {
    let store = Store::new();
    store.apply_text("old.yaml", VS_GOOD);
    let mut events = store.subscribe();
    let before = store.snapshot().version();
    let issues = store.apply_batch(
        &[
            ("a.yaml".to_string(), SERVICE.to_string()),
            ("b.yaml".to_string(), VS_BAD_FIELD.to_string()),
        ],
        &["old.yaml".to_string()],
    );
    let snap = store.snapshot();
    assert_eq!(
        snap.version(),
        before + 1,
        "one version for the whole batch"
    );
    assert_eq!(snap.config().services.len(), 1);
    assert!(
        vs_names(&store).is_empty(),
        "old.yaml's VS is gone, b.yaml's is bad"
    );
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert!(issues[0].origin.starts_with("b.yaml:"), "{issues:?}");
    let event = events.try_recv().expect("one event");
    assert!(
        event.reason.starts_with("2 files changed, 1 removed: "),
        "{}",
        event.reason
    );
    assert!(events.try_recv().is_err(), "and only one");
    assert!(store.apply_batch(&[], &[]).is_empty());
    assert_eq!(store.snapshot().version(), before + 1);
}

#[test]
fn unchanged_resources_keep_their_typed_view_across_snapshots() {
    let store = Store::new();
    store.apply_text("svc.yaml", SERVICE);
    store.apply_text("vs.yaml", VS_GOOD);
    let first = store.snapshot();
    // Another file changes: the Service's typed view is the same allocation.
    let vs_weighted = VS_GOOD.replace("{host: reviews}", "{host: reviews}\n      weight: 100");
    store.apply_text("vs.yaml", &vs_weighted);
    let second = store.snapshot();
    assert_eq!(second.version(), first.version() + 1);
    assert!(Arc::ptr_eq(
        &first.config().services[0],
        &second.config().services[0]
    ));
    // The changed VirtualService is a new one, with the new spec.
    let (old_vs, new_vs) = (
        &first.config().virtual_services[0],
        &second.config().virtual_services[0],
    );
    assert!(!Arc::ptr_eq(old_vs, new_vs));
    assert_eq!(new_vs.spec.http[0].route[0].weight, Some(100));
    // The same Service from another file is another definition: not reused.
    store.remove_origin("svc.yaml");
    store.apply_text("svc2.yaml", SERVICE);
    let third = store.snapshot();
    assert_eq!(third.config().services[0].meta.origin, "svc2.yaml");
    assert_eq!(third.stored().len(), 2);
}
