//! Istio's semantic checks (what `pkg/config/validation` enforces beyond the schema):
//! hosts, ports, durations, regexes, weights, percentages, header names, CIDRs, label
//! selectors, exportTo, JWT rules, and the rules that tie fields together (a route needs a
//! destination, redirect or direct response; a CUSTOM policy needs a provider; ...).
//! Each check appends to an error list so that every problem in a resource is reported.

mod envoy_filter;
mod networking;
mod security;
mod telemetry;

use std::net::IpAddr;

pub(crate) use envoy_filter::envoy_filter;
pub(crate) use networking::{
    destination_rule, gateway, locality_lb, retries, service_entry, sidecar, virtual_service,
    workload_entry,
};
pub(crate) use security::{authorization_policy, peer_authentication, request_authentication};
pub(crate) use telemetry::telemetry;

use crate::document::FieldError;
use crate::duration::Duration;
use crate::networking::{Percent, StringMatch, WorkloadLabelSelector, WorkloadSelector};

/// Collects errors with their paths.
#[derive(Debug, Default)]
pub(crate) struct Errors(pub Vec<FieldError>);

impl Errors {
    pub fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(path, message));
    }

    pub fn check(&mut self, path: impl Into<String>, result: Result<(), String>) {
        if let Err(message) = result {
            self.add(path, message);
        }
    }
}

/// `metadata.name`: a DNS-1123 subdomain (what Kubernetes requires of most object names).
pub fn check_object_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 253 {
        return Err(format!("{name:?} is longer than 253 characters"));
    }
    for label in name.split('.') {
        check_dns_label(label).map_err(|_| {
            format!(
                "{name:?} is not a valid name: use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
            )
        })?;
    }
    Ok(())
}

/// A DNS-1123 label: namespaces, subset names, port-less names.
pub fn check_dns_label(label: &str) -> Result<(), String> {
    let ok = !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{label:?} is not a valid DNS-1123 label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
        ))
    }
}

/// A host name that may start with a wildcard: `reviews`, `reviews.default.svc.cluster.local`,
/// `*.example.com`, `*` (Istio's `ValidateWildcardDomain`).
pub fn check_wildcard_domain(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("host must not be empty".into());
    }
    if host.len() > 255 {
        return Err(format!("host {host:?} is longer than 255 characters"));
    }
    let rest = if host == "*" {
        return Ok(());
    } else if let Some(rest) = host.strip_prefix("*.") {
        rest
    } else if let Some(rest) = host.strip_prefix('*') {
        // `*foo.com` is allowed by Istio (a wildcard on the first label's prefix).
        rest
    } else {
        host
    };
    let rest = rest.strip_suffix('.').unwrap_or(rest);
    for label in rest.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "invalid host {host:?}: each label must be 1-63 letters, digits or '-', and '*' may only be the first label"
            ));
        }
    }
    Ok(())
}

/// A port number in 1..=65535.
pub fn check_port(port: u32) -> Result<(), String> {
    if (1..=65535).contains(&port) {
        Ok(())
    } else {
        Err(format!("port number {port} must be in the range 1..65535"))
    }
}

/// An IP address or CIDR block.
pub fn check_ip_or_cidr(s: &str) -> Result<(), String> {
    if s.parse::<IpAddr>().is_ok() || s.parse::<ipnet::IpNet>().is_ok() {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid IP address or CIDR block (like 10.0.0.1 or 10.0.0.0/16)"
        ))
    }
}

/// A percentage in 0..=100.
pub fn check_percent(errs: &mut Errors, path: &str, p: &Percent) {
    if !(0.0..=100.0).contains(&p.value) || p.value.is_nan() {
        errs.add(
            format!("{path}.value"),
            format!("percentage {} must be in the range 0..100", p.value),
        );
    }
}

/// A well-formed duration of at least `min` (Istio requires >= 1ms for most timeouts).
pub fn check_duration(errs: &mut Errors, path: &str, d: &Duration, min: std::time::Duration) {
    match d.parsed() {
        Err(e) => errs.add(path, e.to_string()),
        Ok(v) if v < min => errs.add(
            path,
            format!(
                "duration {} must be at least {}",
                d.as_str(),
                crate::duration::format(min)
            ),
        ),
        Ok(_) => {}
    }
}

pub const MIN_1MS: std::time::Duration = std::time::Duration::from_millis(1);
pub const ZERO: std::time::Duration = std::time::Duration::ZERO;

/// An RE2-compatible regex (Envoy's engine); the Rust `regex` crate accepts the same syntax
/// minus nothing Istio documents.
pub fn check_regex(re: &str) -> Result<(), String> {
    regex::Regex::new(re).map(|_| ()).map_err(|e| {
        format!(
            "invalid regex {re:?}: {}",
            e.to_string().lines().last().unwrap_or_default().trim()
        )
    })
}

/// A string match with exactly one of exact/prefix/regex (or none when `allow_empty`).
pub fn check_string_match(errs: &mut Errors, path: &str, m: &StringMatch, allow_empty: bool) {
    match m.set_count() {
        0 if !allow_empty => errs.add(path, "one of exact, prefix or regex is required"),
        0 | 1 => {}
        _ => errs.add(path, "only one of exact, prefix or regex may be set"),
    }
    if let Some(re) = &m.regex {
        errs.check(format!("{path}.regex"), check_regex(re));
    }
}

/// An HTTP header name (RFC 7230 token; lowercase pseudo-headers like `:authority` allowed).
pub fn check_header_name(name: &str) -> Result<(), String> {
    let body = name.strip_prefix(':').unwrap_or(name);
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if body.is_empty() || !body.bytes().all(tchar) {
        Err(format!("invalid header name {name:?}"))
    } else {
        Ok(())
    }
}

/// Kubernetes label keys (`[prefix/]name`) and values.
pub fn check_labels<'a>(
    errs: &mut Errors,
    path: &str,
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) {
    for (key, value) in labels {
        errs.check(format!("{path}[{key}]"), check_label_key(key));
        errs.check(format!("{path}[{key}]"), check_label_value(value));
    }
}

fn is_label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && s.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && s.as_bytes().last().is_some_and(u8::is_ascii_alphanumeric)
}

pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| check_object_name(p).is_ok());
    if prefix_ok && is_label_name(name) {
        Ok(())
    } else {
        Err(format!(
            "invalid label key {key:?}: an optional DNS prefix and '/', then at most 63 letters, digits, '-', '_' or '.'"
        ))
    }
}

pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(format!(
            "invalid label value {value:?}: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ))
    }
}

pub fn check_workload_selector(errs: &mut Errors, path: &str, selector: &WorkloadSelector) {
    check_selector_labels(errs, &format!("{path}.matchLabels"), &selector.match_labels);
}

pub fn check_workload_label_selector(
    errs: &mut Errors,
    path: &str,
    selector: &WorkloadLabelSelector,
) {
    check_selector_labels(errs, &format!("{path}.labels"), &selector.match_labels);
}

fn check_selector_labels(
    errs: &mut Errors,
    path: &str,
    labels: &std::collections::BTreeMap<String, String>,
) {
    check_labels(errs, path, labels);
    for (k, v) in labels {
        if v.contains('*') {
            errs.add(
                format!("{path}[{k}]"),
                "wildcards are not allowed in label values",
            );
        }
    }
}

/// `exportTo`: `.`, `*`, `~` or namespace names; `*` and `~` stand alone.
pub fn check_export_to(errs: &mut Errors, path: &str, export_to: &[String]) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, e) in export_to.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if !(e == "." || e == "*" || e == "~") {
            errs.check(
                &p,
                check_dns_label(e).map_err(|m| format!("invalid namespace in exportTo: {m}")),
            );
        }
        if !seen.insert(e.as_str()) {
            errs.add(&p, format!("duplicate entry {e:?}"));
        }
    }
    if export_to.len() > 1 && (seen.contains("*") || seen.contains("~")) {
        errs.add(
            path,
            "'*' and '~' cannot be combined with other exportTo values",
        );
    }
}

/// Either a `selector` or `targetRef(s)`, not both (Istio's policy attachment rule).
pub fn check_selector_xor_target_ref(
    errs: &mut Errors,
    has_selector: bool,
    has_target_ref: bool,
    has_target_refs: bool,
) {
    if has_target_ref && has_target_refs {
        errs.add(
            "spec.targetRefs",
            "only one of targetRef or targetRefs may be set",
        );
    }
    if has_selector && (has_target_ref || has_target_refs) {
        errs.add(
            "spec.selector",
            "only one of selector or targetRef(s) may be set",
        );
    }
}
