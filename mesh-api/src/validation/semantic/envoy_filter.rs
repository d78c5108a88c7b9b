//! Semantic checks of EnvoyFilter, after Istio's `ValidateEnvoyFilter`: every patch has
//! an `applyTo`, an operation and (unless it removes) a value; the match names the kind of
//! object the patch applies to; filter and sub-filter matches name something. With the
//! `envoy` feature the value is also parsed as the Envoy message `applyTo` names, so a typo
//! in a patch is rejected when the resource is applied rather than when a proxy gets it.
//!
//! Whether the mesh can apply a patch shape (Istio accepts every one) is not decided here:
//! the control plane reports shapes it does not apply as config issues.

use super::*;
use crate::networking::{ApplyTo, EnvoyConfigObjectPatch, EnvoyFilterSpec, Operation};

/// The HTTP connection manager's names (current and pre-v3).
const HCM_NAMES: [&str; 2] = [
    "envoy.filters.network.http_connection_manager",
    "envoy.http_connection_manager",
];

pub(crate) fn envoy_filter(spec: &EnvoyFilterSpec) -> Vec<FieldError> {
    let mut errs = Errors::default();
    if let Some(sel) = &spec.workload_selector {
        check_workload_label_selector(&mut errs, "spec.workloadSelector", sel);
        if !spec.target_refs.is_empty() {
            errs.add(
                "spec.workloadSelector",
                "only one of targetRefs or workloadSelector may be set",
            );
        }
    }
    for (i, cp) in spec.config_patches.iter().enumerate() {
        config_patch(&mut errs, &format!("spec.configPatches[{i}]"), cp);
    }
    errs.0
}

fn config_patch(errs: &mut Errors, path: &str, cp: &EnvoyConfigObjectPatch) {
    let apply_to = cp.apply_to.unwrap_or_default();
    if apply_to == ApplyTo::Invalid {
        errs.add(format!("{path}.applyTo"), "Envoy filter: missing applyTo");
    }
    let Some(patch) = &cp.patch else {
        errs.add(format!("{path}.patch"), "Envoy filter: missing patch");
        return;
    };
    let operation = patch.operation.unwrap_or_default();
    if operation == Operation::Invalid {
        errs.add(
            format!("{path}.patch.operation"),
            "Envoy filter: missing patch operation",
        );
    }
    if operation != Operation::Remove && patch.value.is_none() {
        errs.add(
            format!("{path}.patch.value"),
            "Envoy filter: missing patch value for non-remove operation",
        );
    }
    if let Some(m) = &cp.r#match {
        let p = format!("{path}.match");
        let set = [
            m.listener.is_some(),
            m.route_configuration.is_some(),
            m.cluster.is_some(),
        ];
        if set.iter().filter(|s| **s).count() > 1 {
            errs.add(
                &p,
                "only one of listener, routeConfiguration or cluster may be set",
            );
        }
        let object_match = set.iter().any(|s| *s);
        if apply_to.is_listener_object() && object_match && m.listener.is_none() {
            errs.add(
                &p,
                "Envoy filter: applyTo for listener class objects cannot have non listener match",
            );
        }
        if apply_to.is_route_object() && object_match && m.route_configuration.is_none() {
            errs.add(
                &p,
                "Envoy filter: applyTo for http route class objects cannot have non route configuration match",
            );
        }
        if apply_to == ApplyTo::Cluster && object_match && m.cluster.is_none() {
            errs.add(
                &p,
                "Envoy filter: applyTo for cluster class objects cannot have non cluster match",
            );
        }
        if let Some(proxy) = &m.proxy
            && let Some(re) = &proxy.proxy_version
        {
            errs.check(format!("{p}.proxy.proxyVersion"), check_regex(re));
        }
        if let Some(l) = &m.listener {
            if let Some(port) = l.port_number
                && port > 65535
            {
                errs.add(
                    format!("{p}.listener.portNumber"),
                    format!("port number {port} must be in the range 1..65535"),
                );
            }
            if let Some(filter) = l.filter_chain.as_ref().and_then(|fc| fc.filter.as_ref()) {
                let fp = format!("{p}.listener.filterChain.filter");
                let name = filter.name.as_deref().unwrap_or_default();
                if name.is_empty() {
                    errs.add(
                        format!("{fp}.name"),
                        "Envoy filter: filter match has no name to match on",
                    );
                } else if let Some(sub) = &filter.sub_filter {
                    if apply_to != ApplyTo::HttpFilter {
                        errs.add(
                            format!("{fp}.subFilter"),
                            "Envoy filter: subfilter match can be used with applyTo HTTP_FILTER only",
                        );
                    }
                    if !HCM_NAMES.contains(&name) {
                        errs.add(
                            format!("{fp}.subFilter"),
                            format!(
                                "Envoy filter: subfilter match requires filter match with {}",
                                HCM_NAMES[0]
                            ),
                        );
                    }
                    if sub.name.as_deref().unwrap_or_default().is_empty() {
                        errs.add(
                            format!("{fp}.subFilter.name"),
                            "Envoy filter: subfilter match has no name to match on",
                        );
                    }
                }
            }
        }
    }
    #[cfg(feature = "envoy")]
    if let Some(value) = &patch.value
        && apply_to != ApplyTo::Invalid
        && let Err(e) = crate::networking::envoy_filter_value::parse(apply_to, value)
    {
        errs.add(format!("{path}.patch.value"), e.to_string());
    }
}

#[cfg(test)]
mod tests {
    use crate::document::Resource;

    fn errors(yaml: &str) -> Vec<String> {
        let value: serde_json::Value = serde_yaml::from_str(yaml).expect("yaml");
        match crate::validation::validate_value(value) {
            Ok(_) => Vec::new(),
            Err(errs) => errs
                .iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect(),
        }
    }

    const DOC: &str = "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: f, namespace: default}\nspec:\n";

    #[test]
    fn istio_local_rate_limit_example_is_valid() {
        let yaml = format!(
            "{DOC}  workloadSelector: {{labels: {{app: productpage}}}}\n  configPatches:\n  - applyTo: HTTP_FILTER\n    match:\n      context: SIDECAR_INBOUND\n      listener:\n        filterChain:\n          filter:\n            name: envoy.filters.network.http_connection_manager\n    patch:\n      operation: INSERT_BEFORE\n      value:\n        name: envoy.filters.http.local_ratelimit\n        typed_config:\n          '@type': type.googleapis.com/udpa.type.v1.TypedStruct\n          type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit\n          value:\n            stat_prefix: http_local_rate_limiter\n"
        );
        assert_eq!(errors(&yaml), Vec::<String>::new());
        let value: serde_json::Value = serde_yaml::from_str(&yaml).expect("yaml");
        assert!(matches!(
            Resource::from_value(value),
            Ok(Resource::EnvoyFilter(_))
        ));
    }

    #[test]
    fn missing_pieces_are_named() {
        let errs = errors(&format!(
            "{DOC}  configPatches:\n  - match: {{cluster: {{name: x}}}}\n    patch: {{operation: MERGE}}\n  - applyTo: HTTP_FILTER\n    match: {{listener: {{filterChain: {{filter: {{name: envoy.filters.network.tcp_proxy, subFilter: {{}}}}}}}}}}\n    patch: {{operation: REMOVE}}\n"
        ));
        let want = [
            "spec.configPatches[0].applyTo: Envoy filter: missing applyTo",
            "spec.configPatches[0].patch.value: Envoy filter: missing patch value for non-remove operation",
            "spec.configPatches[1].match.listener.filterChain.filter.subFilter: Envoy filter: subfilter match requires filter match with envoy.filters.network.http_connection_manager",
            "spec.configPatches[1].match.listener.filterChain.filter.subFilter.name: Envoy filter: subfilter match has no name to match on",
        ];
        for w in want {
            assert!(errs.iter().any(|e| e == w), "missing {w:?} in {errs:#?}");
        }
    }

    #[test]
    fn wrong_match_kind_and_bad_value() {
        let errs = errors(&format!(
            "{DOC}  configPatches:\n  - applyTo: HTTP_ROUTE\n    match: {{listener: {{portNumber: 80}}}}\n    patch: {{operation: MERGE, value: {{typed_per_filter_config: 3}}}}\n"
        ));
        assert!(
            errs.iter()
                .any(|e| e.starts_with("spec.configPatches[0].match: ")
                    && e.contains("non route configuration match")),
            "{errs:#?}"
        );
        #[cfg(feature = "envoy")]
        assert!(
            errs.iter().any(|e| e.starts_with(
                "spec.configPatches[0].patch.value: not a valid envoy.config.route.v3.Route"
            )),
            "{errs:#?}"
        );
    }

    #[test]
    fn only_v1alpha3_is_served() {
        let value: serde_json::Value = serde_yaml::from_str(
            "apiVersion: networking.istio.io/v1\nkind: EnvoyFilter\nmetadata: {name: f}\nspec: {}\n",
        )
        .expect("yaml");
        let err = Resource::from_value(value).expect_err("v1 is not served");
        assert_eq!(err[0].path, "apiVersion");
    }
}
