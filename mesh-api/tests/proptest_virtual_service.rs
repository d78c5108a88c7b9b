//! Property: any generated valid VirtualService survives serialise -> parse unchanged and
//! stays valid.

use std::collections::BTreeMap;

use mesh_api::document::Resource;
use mesh_api::networking::*;
use mesh_api::validation;
use proptest::prelude::*;

fn label() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,10}[a-z0-9]"
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        label(),
        (label(), label()).prop_map(|(a, b)| format!("{a}.{b}.svc.cluster.local"))
    ]
}

fn string_match() -> impl Strategy<Value = StringMatch> {
    prop_oneof![
        "/[a-z0-9/]{0,12}".prop_map(StringMatch::exact),
        "/[a-z0-9/]{0,12}".prop_map(StringMatch::prefix),
        "\\^/[a-z]{1,6}/\\.\\*".prop_map(StringMatch::regex),
    ]
}

fn duration() -> impl Strategy<Value = mesh_api::duration::Duration> {
    (1u64..100_000).prop_map(|ms| std::time::Duration::from_millis(ms).into())
}

fn destination() -> impl Strategy<Value = Destination> {
    (
        host(),
        proptest::option::of(label()),
        proptest::option::of(1u32..65536),
    )
        .prop_map(|(host, subset, port)| Destination {
            host,
            subset,
            port: port.map(|number| PortSelector { number }),
        })
}

fn http_match() -> impl Strategy<Value = HttpMatchRequest> {
    (
        proptest::option::of(string_match()),
        proptest::collection::btree_map("x-[a-z]{1,8}", string_match(), 0..3),
        proptest::option::of(1u32..65536),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(|(uri, headers, port, ignore_uri_case)| HttpMatchRequest {
            uri,
            headers,
            port,
            ignore_uri_case,
            ..Default::default()
        })
}

fn http_route() -> impl Strategy<Value = HttpRoute> {
    (
        proptest::option::of(label()),
        proptest::collection::vec(http_match(), 0..3),
        proptest::collection::vec((destination(), 1i32..100), 1..4),
        proptest::option::of(duration()),
        proptest::option::of((0i32..10, proptest::option::of(duration()))),
        proptest::option::of(0.0f64..=100.0),
    )
        .prop_map(
            |(name, matches, dests, timeout, retries, mirror_pct)| HttpRoute {
                name,
                r#match: matches,
                route: dests
                    .into_iter()
                    .map(|(destination, weight)| HttpRouteDestination {
                        destination,
                        weight: Some(weight),
                        headers: None,
                    })
                    .collect(),
                timeout,
                retries: retries.map(|(attempts, per_try_timeout)| HttpRetry {
                    attempts,
                    per_try_timeout,
                    retry_on: Some("5xx,connect-failure".into()),
                    retry_remote_localities: None,
                    ..Default::default()
                }),
                mirror: mirror_pct.map(|_| Destination {
                    host: "mirror".into(),
                    ..Default::default()
                }),
                mirror_percentage: mirror_pct.map(|value| Percent { value }),
                ..Default::default()
            },
        )
}

fn virtual_service() -> impl Strategy<Value = VirtualService> {
    (
        label(),
        label(),
        proptest::collection::vec(host(), 1..4),
        proptest::collection::vec(http_route(), 1..4),
        proptest::collection::btree_map(label(), label(), 0..3),
    )
        .prop_map(|(name, namespace, hosts, http, labels)| {
            let mut vs = VirtualService::new(
                &name,
                VirtualServiceSpec {
                    hosts,
                    http,
                    ..Default::default()
                },
            );
            vs.metadata.namespace = Some(namespace);
            vs.metadata.labels =
                (!labels.is_empty()).then_some(labels.into_iter().collect::<BTreeMap<_, _>>());
            vs
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn virtual_service_round_trips(vs in virtual_service()) {
        let resource = Resource::from(vs);
        prop_assert!(validation::validate(&resource).is_empty(), "{:?}", validation::validate(&resource));
        let yaml = serde_yaml::to_string(&resource.to_json()).expect("serialises");
        let parsed = validation::validate_text(&yaml, "generated.yaml");
        prop_assert_eq!(parsed.len(), 1);
        match &parsed[0] {
            Ok(r) => prop_assert_eq!(r, &resource),
            Err(e) => prop_assert!(false, "generated VirtualService rejected: {}\n{}", e, yaml),
        }
    }
}
