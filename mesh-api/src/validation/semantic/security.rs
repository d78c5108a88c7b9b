//! Semantic checks of security.istio.io kinds, after Istio's `ValidatePeerAuthentication`,
//! `ValidateAuthorizationPolicy` and `ValidateRequestAuthentication`.

use std::collections::BTreeSet;

use super::*;
use crate::security::*;

// === PeerAuthentication ===

pub(crate) fn peer_authentication(spec: &PeerAuthenticationSpec) -> Vec<FieldError> {
    let mut errs = Errors::default();
    if let Some(sel) = &spec.selector {
        check_workload_selector(&mut errs, "spec.selector", sel);
    }
    let has_selector = spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    if !spec.port_level_mtls.is_empty() && !has_selector {
        errs.add(
            "spec.portLevelMtls",
            "portLevelMtls requires a workload selector",
        );
    }
    for (port, mtls) in &spec.port_level_mtls {
        let p = format!("spec.portLevelMtls[{port}]");
        match port.parse::<u32>() {
            Ok(n) => errs.check(&p, check_port(n)),
            Err(_) => errs.add(&p, format!("port {port:?} is not a number")),
        }
        if mtls.mode.is_none() {
            errs.add(
                format!("{p}.mode"),
                "mode is required for a port-level setting",
            );
        }
    }
    errs.0
}

// === AuthorizationPolicy ===

/// Condition keys Istio supports (`when[].key`); `[...]` ones take a name.
const CONDITION_KEYS: &[&str] = &[
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "destination.ip",
    "destination.port",
    "connection.sni",
];
const CONDITION_PREFIXES: &[&str] = &[
    "request.headers[",
    "request.auth.claims[",
    "experimental.envoy.filters.",
];

pub(crate) fn authorization_policy(spec: &AuthorizationPolicySpec) -> Vec<FieldError> {
    let mut errs = Errors::default();
    check_selector_xor_target_ref(
        &mut errs,
        spec.selector.is_some(),
        spec.target_ref.is_some(),
        !spec.target_refs.is_empty(),
    );
    if let Some(sel) = &spec.selector {
        check_workload_selector(&mut errs, "spec.selector", sel);
    }
    let action = spec.action.unwrap_or_default();
    match (action, &spec.provider) {
        (AuthorizationAction::Custom, None) => {
            errs.add("spec.provider", "a provider is required for action CUSTOM");
        }
        (AuthorizationAction::Custom, Some(p)) if p.name.is_empty() => {
            errs.add("spec.provider.name", "provider name is required");
        }
        (AuthorizationAction::Custom, Some(_)) => {}
        (_, Some(_)) => errs.add(
            "spec.provider",
            "provider may only be set with action CUSTOM",
        ),
        (_, None) => {}
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        let p = format!("spec.rules[{i}]");
        for (j, from) in rule.from.iter().enumerate() {
            source(&mut errs, &format!("{p}.from[{j}].source"), &from.source);
        }
        for (j, to) in rule.to.iter().enumerate() {
            operation(&mut errs, &format!("{p}.to[{j}].operation"), &to.operation);
        }
        for (j, cond) in rule.when.iter().enumerate() {
            condition(&mut errs, &format!("{p}.when[{j}]"), cond);
        }
    }
    errs.0
}

fn source(errs: &mut Errors, path: &str, s: &Source) {
    let lists: [(&str, &Vec<String>); 12] = [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("namespaces", &s.namespaces),
        ("notNamespaces", &s.not_namespaces),
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
    ];
    if lists.iter().all(|(_, l)| l.is_empty()) {
        errs.add(path, "source must not be empty");
    }
    for (field, list) in lists {
        for (i, v) in list.iter().enumerate() {
            let p = format!("{path}.{field}[{i}]");
            if field.to_ascii_lowercase().contains("ipblocks") {
                errs.check(p, check_ip_or_cidr(v));
            } else {
                errs.check(p, check_wildcard_value(v));
            }
        }
    }
    let uses_service_accounts =
        !s.service_accounts.is_empty() || !s.not_service_accounts.is_empty();
    let uses_principals = !s.principals.is_empty() || !s.not_principals.is_empty();
    if uses_service_accounts && uses_principals {
        errs.add(
            path,
            "serviceAccounts and principals cannot be used together",
        );
    }
}

fn operation(errs: &mut Errors, path: &str, o: &Operation) {
    let lists: [(&str, &Vec<String>); 8] = [
        ("hosts", &o.hosts),
        ("notHosts", &o.not_hosts),
        ("ports", &o.ports),
        ("notPorts", &o.not_ports),
        ("methods", &o.methods),
        ("notMethods", &o.not_methods),
        ("paths", &o.paths),
        ("notPaths", &o.not_paths),
    ];
    if lists.iter().all(|(_, l)| l.is_empty()) {
        errs.add(path, "operation must not be empty");
    }
    for (field, list) in lists {
        for (i, v) in list.iter().enumerate() {
            let p = format!("{path}.{field}[{i}]");
            if field.to_ascii_lowercase().ends_with("ports") {
                match v.parse::<u32>() {
                    Ok(n) => errs.check(p, check_port(n)),
                    Err(_) => errs.add(p, format!("port {v:?} is not a number")),
                }
            } else if field.to_ascii_lowercase().ends_with("paths") {
                errs.check(p, check_path(v));
            } else {
                errs.check(p, check_wildcard_value(v));
            }
        }
    }
}

/// Paths: `/exact`, `/prefix*`, `*suffix`, `*`, or Istio's templates (`/api/{*}/x`, `{**}`).
fn check_path(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err("path must not be empty".into());
    }
    if v.contains('{') {
        let ok = v.starts_with('/')
            && v.split('/')
                .all(|seg| !seg.contains(['{', '}']) || seg == "{*}" || seg == "{**}")
            && v.matches("{**}").count() <= 1;
        return if ok {
            Ok(())
        } else {
            Err(format!(
                "invalid path template {v:?}: '{{*}}' and '{{**}}' must be whole segments, '{{**}}' at most once"
            ))
        };
    }
    check_wildcard_value(v)
}

/// Istio values match exactly, by prefix (`abc*`), by suffix (`*abc`) or anything (`*`).
fn check_wildcard_value(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err("value must not be empty".into());
    }
    let inner = v.strip_prefix('*').unwrap_or(v);
    let inner = inner.strip_suffix('*').unwrap_or(inner);
    if inner.contains('*') {
        Err(format!(
            "{v:?}: '*' is only supported as a prefix, a suffix or alone"
        ))
    } else {
        Ok(())
    }
}

fn condition(errs: &mut Errors, path: &str, c: &Condition) {
    let key = c.key.as_str();
    let known = CONDITION_KEYS.contains(&key)
        || CONDITION_PREFIXES
            .iter()
            .any(|p| key.starts_with(p) && (p.ends_with('.') || key.ends_with(']')));
    if key.is_empty() {
        errs.add(format!("{path}.key"), "key is required");
    } else if !known {
        errs.add(format!("{path}.key"), format!("unknown attribute {key:?}"));
    }
    if c.values.is_empty() && c.not_values.is_empty() {
        errs.add(path, "at least one of values or notValues must be set");
    }
    for (field, list) in [("values", &c.values), ("notValues", &c.not_values)] {
        for (i, v) in list.iter().enumerate() {
            let p = format!("{path}.{field}[{i}]");
            match key {
                "source.ip" | "remote.ip" | "destination.ip" => errs.check(p, check_ip_or_cidr(v)),
                "destination.port" => match v.parse::<u32>() {
                    Ok(n) => errs.check(p, check_port(n)),
                    Err(_) => errs.add(p, format!("port {v:?} is not a number")),
                },
                _ => {}
            }
        }
    }
}

// === RequestAuthentication ===

pub(crate) fn request_authentication(spec: &RequestAuthenticationSpec) -> Vec<FieldError> {
    let mut errs = Errors::default();
    check_selector_xor_target_ref(
        &mut errs,
        spec.selector.is_some(),
        spec.target_ref.is_some(),
        !spec.target_refs.is_empty(),
    );
    if let Some(sel) = &spec.selector {
        check_workload_selector(&mut errs, "spec.selector", sel);
    }
    let mut issuers = BTreeSet::new();
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        let p = format!("spec.jwtRules[{i}]");
        if rule.issuer.is_empty() {
            errs.add(format!("{p}.issuer"), "issuer must be set");
        } else if !issuers.insert(rule.issuer.as_str()) {
            errs.add(
                format!("{p}.issuer"),
                format!("duplicate issuer {:?}", rule.issuer),
            );
        }
        if let Some(uri) = &rule.jwks_uri {
            errs.check(format!("{p}.jwksUri"), check_jwks_uri(uri));
        }
        if let Some(jwks) = &rule.jwks {
            match serde_json::from_str::<serde_json::Value>(jwks) {
                Ok(v) if v.get("keys").is_some_and(serde_json::Value::is_array) => {}
                Ok(_) => errs.add(
                    format!("{p}.jwks"),
                    "jwks must be a JSON Web Key Set (an object with a \"keys\" list)",
                ),
                Err(e) => errs.add(format!("{p}.jwks"), format!("jwks is not valid JSON: {e}")),
            }
        }
        for (j, a) in rule.audiences.iter().enumerate() {
            if a.is_empty() {
                errs.add(format!("{p}.audiences[{j}]"), "audience must not be empty");
            }
        }
        for (j, h) in rule.from_headers.iter().enumerate() {
            if h.name.is_empty() {
                errs.add(
                    format!("{p}.fromHeaders[{j}].name"),
                    "header name is required",
                );
            } else {
                errs.check(
                    format!("{p}.fromHeaders[{j}].name"),
                    check_header_name(&h.name),
                );
            }
        }
        for (j, q) in rule.from_params.iter().enumerate() {
            if q.is_empty() {
                errs.add(
                    format!("{p}.fromParams[{j}]"),
                    "parameter name must not be empty",
                );
            }
        }
        for (j, c) in rule.from_cookies.iter().enumerate() {
            if c.is_empty() {
                errs.add(
                    format!("{p}.fromCookies[{j}]"),
                    "cookie name must not be empty",
                );
            }
        }
        if let Some(h) = &rule.output_payload_to_header {
            errs.check(format!("{p}.outputPayloadToHeader"), check_header_name(h));
        }
        for (j, c) in rule.output_claim_to_headers.iter().enumerate() {
            let cp = format!("{p}.outputClaimToHeaders[{j}]");
            errs.check(format!("{cp}.header"), check_header_name(&c.header));
            if c.header.starts_with(':') {
                errs.add(format!("{cp}.header"), "pseudo-headers cannot be set");
            }
            if c.claim.is_empty() {
                errs.add(format!("{cp}.claim"), "claim is required");
            }
        }
        if let Some(t) = &rule.timeout {
            check_duration(&mut errs, &format!("{p}.timeout"), t, MIN_1MS);
        }
    }
    errs.0
}

fn check_jwks_uri(uri: &str) -> Result<(), String> {
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"))
        .ok_or_else(|| format!("jwksUri {uri:?} must be an http:// or https:// URL"))?;
    let host_port = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host_port.is_empty() {
        return Err(format!("jwksUri {uri:?} has no host"));
    }
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        let (h, rest) = v6
            .split_once(']')
            .ok_or_else(|| format!("jwksUri {uri:?} has an invalid host"))?;
        (h, rest.strip_prefix(':'))
    } else {
        match host_port.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return Err(format!("jwksUri {uri:?} has an invalid port"));
    }
    let host_ok = host.parse::<std::net::IpAddr>().is_ok()
        || (!host.contains('*') && check_wildcard_domain(host).is_ok());
    if host_ok {
        Ok(())
    } else {
        Err(format!("jwksUri {uri:?} has an invalid host"))
    }
}
