//! Semantic checks of networking.istio.io kinds, after Istio's `ValidateVirtualService`,
//! `ValidateDestinationRule`, `ValidateGateway`, `ValidateServiceEntry`,
//! `ValidateWorkloadEntry` and `ValidateSidecar`.

use std::collections::BTreeSet;

use super::*;
use crate::naming::Protocol;
use crate::networking::*;

// === VirtualService ===

pub(crate) fn virtual_service(spec: &VirtualServiceSpec) -> Vec<FieldError> {
    let mut errs = Errors::default();
    // A VirtualService without hosts is a delegate, only reachable through `delegate`.
    let is_delegate = spec.hosts.is_empty();
    if is_delegate {
        if !spec.gateways.is_empty() {
            errs.add(
                "spec.gateways",
                "a delegate virtual service (no hosts) must not set gateways",
            );
        }
        if !spec.tls.is_empty() || !spec.tcp.is_empty() {
            errs.add(
                "spec",
                "a delegate virtual service (no hosts) may only have http routes",
            );
        }
        if spec.http.is_empty() {
            errs.add("spec.hosts", "virtual service must have at least one host");
        }
    }
    let applies_to_mesh = spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == "mesh");
    for (i, host) in spec.hosts.iter().enumerate() {
        let path = format!("spec.hosts[{i}]");
        match check_wildcard_domain(host) {
            Err(m) => errs.add(&path, m),
            Ok(()) if host == "*" && applies_to_mesh => errs.add(
                &path,
                "wildcard host * is not allowed for virtual services bound to the mesh gateway",
            ),
            Ok(()) => {}
        }
    }
    for (i, gw) in spec.gateways.iter().enumerate() {
        errs.check(format!("spec.gateways[{i}]"), check_gateway_name(gw));
    }
    if spec.http.is_empty() && spec.tls.is_empty() && spec.tcp.is_empty() {
        errs.add(
            "spec",
            "http, tcp or tls must be provided in virtual service",
        );
    }
    for (i, route) in spec.http.iter().enumerate() {
        http_route(&mut errs, &format!("spec.http[{i}]"), route, is_delegate);
    }
    for (i, route) in spec.tls.iter().enumerate() {
        tls_route(&mut errs, &format!("spec.tls[{i}]"), route, &spec.hosts);
    }
    for (i, route) in spec.tcp.iter().enumerate() {
        tcp_route(&mut errs, &format!("spec.tcp[{i}]"), route);
    }
    check_export_to(&mut errs, "spec.exportTo", &spec.export_to);
    errs.0
}

/// `mesh`, `name`, or `namespace/name`.
fn check_gateway_name(gw: &str) -> Result<(), String> {
    if gw == "mesh" {
        return Ok(());
    }
    let (ns, name) = gw.split_once('/').map_or((None, gw), |(n, g)| (Some(n), g));
    if let Some(ns) = ns {
        check_dns_label(ns).map_err(|m| format!("invalid gateway namespace in {gw:?}: {m}"))?;
    }
    check_object_name(name).map_err(|m| format!("invalid gateway name {gw:?}: {m}"))
}

fn http_route(errs: &mut Errors, path: &str, r: &HttpRoute, in_delegate: bool) {
    let actions = [
        !r.route.is_empty(),
        r.redirect.is_some(),
        r.direct_response.is_some(),
        r.delegate.is_some(),
    ];
    match actions.iter().filter(|a| **a).count() {
        0 => errs.add(
            path,
            "HTTP route, redirect, directResponse or delegate is required",
        ),
        1 => {}
        _ => errs.add(
            path,
            "only one of route, redirect, directResponse or delegate may be set",
        ),
    }
    if r.delegate.is_some() && in_delegate {
        errs.add(
            format!("{path}.delegate"),
            "a delegate virtual service cannot delegate again",
        );
    }
    if let Some(d) = &r.delegate {
        errs.check(format!("{path}.delegate.name"), check_object_name(&d.name));
        if let Some(ns) = &d.namespace {
            errs.check(format!("{path}.delegate.namespace"), check_dns_label(ns));
        }
        // Istio allows rewrite on a delegating route; faults belong to the delegate's routes.
        if r.fault.is_some() {
            errs.add(
                format!("{path}.fault"),
                "fault must be set on the delegate's routes, not on the delegating route",
            );
        }
    }
    for (i, m) in r.r#match.iter().enumerate() {
        http_match(errs, &format!("{path}.match[{i}]"), m);
    }
    if r.route.len() > 1 && r.route.iter().all(|d| d.weight.unwrap_or(0) == 0) {
        errs.add(
            format!("{path}.route"),
            "total destination weight = 0: set weights on the destinations",
        );
    }
    for (i, d) in r.route.iter().enumerate() {
        let p = format!("{path}.route[{i}]");
        destination(errs, &format!("{p}.destination"), &d.destination);
        if let Some(w) = d.weight
            && w < 0
        {
            errs.add(
                format!("{p}.weight"),
                format!("weight {w} must not be negative"),
            );
        }
        if let Some(h) = &d.headers {
            headers(errs, &format!("{p}.headers"), h);
        }
    }
    if let Some(rd) = &r.redirect {
        redirect(errs, &format!("{path}.redirect"), rd);
    }
    if let Some(dr) = &r.direct_response {
        direct_response(errs, &format!("{path}.directResponse"), dr);
    }
    if let Some(rw) = &r.rewrite {
        rewrite(errs, &format!("{path}.rewrite"), rw);
        if r.redirect.is_some() {
            errs.add(
                format!("{path}.rewrite"),
                "rewrite may not be used with redirect",
            );
        }
    }
    if let Some(t) = &r.timeout {
        check_duration(errs, &format!("{path}.timeout"), t, ZERO);
    }
    if let Some(retry) = &r.retries {
        retries(errs, &format!("{path}.retries"), retry);
    }
    if let Some(f) = &r.fault {
        fault(errs, &format!("{path}.fault"), f);
    }
    if r.mirror.is_some() && !r.mirrors.is_empty() {
        errs.add(
            format!("{path}.mirrors"),
            "only one of mirror or mirrors may be set",
        );
    }
    if let Some(m) = &r.mirror {
        destination(errs, &format!("{path}.mirror"), m);
    }
    if let Some(p) = &r.mirror_percentage {
        check_percent(errs, &format!("{path}.mirrorPercentage"), p);
    }
    if let Some(p) = r.mirror_percent
        && p > 100
    {
        errs.add(
            format!("{path}.mirrorPercent"),
            format!("percentage {p} must be in the range 0..100"),
        );
    }
    for (i, m) in r.mirrors.iter().enumerate() {
        destination(
            errs,
            &format!("{path}.mirrors[{i}].destination"),
            &m.destination,
        );
        if let Some(p) = &m.percentage {
            check_percent(errs, &format!("{path}.mirrors[{i}].percentage"), p);
        }
    }
    if let Some(c) = &r.cors_policy {
        cors(errs, &format!("{path}.corsPolicy"), c);
    }
    if let Some(h) = &r.headers {
        headers(errs, &format!("{path}.headers"), h);
    }
}

fn http_match(errs: &mut Errors, path: &str, m: &HttpMatchRequest) {
    for (field, sm) in [
        ("uri", &m.uri),
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(sm) = sm {
            check_string_match(errs, &format!("{path}.{field}"), sm, false);
        }
    }
    for (field, map) in [
        ("headers", &m.headers),
        ("withoutHeaders", &m.without_headers),
    ] {
        for (name, sm) in map {
            let p = format!("{path}.{field}[{name}]");
            errs.check(&p, check_header_name(name));
            check_string_match(errs, &p, sm, true);
        }
    }
    for (name, sm) in &m.query_params {
        let p = format!("{path}.queryParams[{name}]");
        if name.is_empty() {
            errs.add(&p, "query parameter name must not be empty");
        }
        check_string_match(errs, &p, sm, true);
    }
    if let Some(port) = m.port {
        errs.check(format!("{path}.port"), check_port(port));
    }
    check_labels(errs, &format!("{path}.sourceLabels"), &m.source_labels);
    for (i, gw) in m.gateways.iter().enumerate() {
        errs.check(format!("{path}.gateways[{i}]"), check_gateway_name(gw));
    }
    if let Some(ns) = &m.source_namespace {
        errs.check(format!("{path}.sourceNamespace"), check_dns_label(ns));
    }
}

pub(crate) fn destination(errs: &mut Errors, path: &str, d: &Destination) {
    if d.host.is_empty() {
        errs.add(format!("{path}.host"), "destination host is required");
    } else {
        errs.check(format!("{path}.host"), check_wildcard_domain(&d.host));
    }
    if let Some(subset) = &d.subset {
        errs.check(
            format!("{path}.subset"),
            check_dns_label(subset).map_err(|m| format!("invalid subset name: {m}")),
        );
    }
    if let Some(port) = &d.port {
        errs.check(format!("{path}.port.number"), check_port(port.number));
    }
}

fn headers(errs: &mut Errors, path: &str, h: &Headers) {
    for (dir, ops) in [("request", &h.request), ("response", &h.response)] {
        let Some(ops) = ops else { continue };
        for (op, map) in [("set", &ops.set), ("add", &ops.add)] {
            for name in map.keys() {
                errs.check(
                    format!("{path}.{dir}.{op}[{name}]"),
                    check_header_name(name),
                );
            }
        }
        for (i, name) in ops.remove.iter().enumerate() {
            errs.check(format!("{path}.{dir}.remove[{i}]"), check_header_name(name));
        }
    }
}

fn redirect(errs: &mut Errors, path: &str, r: &HttpRedirect) {
    if r.uri.is_none()
        && r.authority.is_none()
        && r.scheme.is_none()
        && r.port.is_none()
        && r.derive_port.is_none()
    {
        errs.add(path, "redirect must specify uri, authority, scheme or port");
    }
    if r.port.is_some() && r.derive_port.is_some() {
        errs.add(path, "only one of port or derivePort may be set");
    }
    if let Some(p) = r.port {
        errs.check(format!("{path}.port"), check_port(p));
    }
    if let Some(code) = r.redirect_code
        && !(300..=399).contains(&code)
    {
        errs.add(
            format!("{path}.redirectCode"),
            format!("{code} is not a valid redirect code, must be 3xx"),
        );
    }
    if let Some(uri) = &r.uri
        && uri.is_empty()
    {
        errs.add(format!("{path}.uri"), "redirect uri must not be empty");
    }
}

fn direct_response(errs: &mut Errors, path: &str, d: &HttpDirectResponse) {
    if !(200..=599).contains(&d.status) {
        errs.add(
            format!("{path}.status"),
            format!("status {} must be in the range 200..599", d.status),
        );
    }
    if let Some(body) = &d.body {
        match (&body.string, &body.bytes) {
            (Some(_), Some(_)) => errs.add(
                format!("{path}.body"),
                "only one of string or bytes may be set",
            ),
            (_, Some(b)) => {
                use base64::Engine;
                if base64::engine::general_purpose::STANDARD.decode(b).is_err() {
                    errs.add(format!("{path}.body.bytes"), "must be base64-encoded");
                }
            }
            _ => {}
        }
        let len = body
            .string
            .as_ref()
            .or(body.bytes.as_ref())
            .map_or(0, String::len);
        if len > 1024 * 1024 {
            errs.add(
                format!("{path}.body"),
                "direct response body must be at most 1 MiB",
            );
        }
    }
}

fn rewrite(errs: &mut Errors, path: &str, r: &HttpRewrite) {
    if r.uri.is_none() && r.authority.is_none() && r.uri_regex_rewrite.is_none() {
        errs.add(
            path,
            "rewrite must specify uri, authority or uriRegexRewrite",
        );
    }
    if r.uri.is_some() && r.uri_regex_rewrite.is_some() {
        errs.add(path, "only one of uri or uriRegexRewrite may be set");
    }
    if let Some(rr) = &r.uri_regex_rewrite {
        errs.check(
            format!("{path}.uriRegexRewrite.match"),
            check_regex(&rr.r#match),
        );
    }
}

/// Envoy's `x-envoy-retry-on` and `x-envoy-retry-grpc-on` policies.
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

pub(crate) fn retries(errs: &mut Errors, path: &str, r: &HttpRetry) {
    if r.attempts < 0 {
        errs.add(
            format!("{path}.attempts"),
            format!("attempts {} must not be negative", r.attempts),
        );
    }
    if let Some(t) = &r.per_try_timeout {
        check_duration(errs, &format!("{path}.perTryTimeout"), t, MIN_1MS);
    }
    if let Some(b) = &r.backoff {
        check_duration(errs, &format!("{path}.backoff"), b, MIN_1MS);
    }
    if let Some(on) = &r.retry_on {
        for policy in on.split(',').map(str::trim) {
            let is_status = policy
                .parse::<u32>()
                .is_ok_and(|c| (100..=599).contains(&c));
            if !is_status && !RETRY_ON.contains(&policy) {
                errs.add(
                    format!("{path}.retryOn"),
                    format!("{policy:?} is not a valid retryOn policy"),
                );
            }
        }
    }
}

fn fault(errs: &mut Errors, path: &str, f: &HttpFaultInjection) {
    if f.delay.is_none() && f.abort.is_none() {
        errs.add(path, "fault injection must have an abort and/or a delay");
    }
    if let Some(d) = &f.delay {
        let p = format!("{path}.delay");
        match (&d.fixed_delay, &d.exponential_delay) {
            (Some(fd), None) => check_duration(errs, &format!("{p}.fixedDelay"), fd, MIN_1MS),
            (None, Some(_)) => errs.add(
                format!("{p}.exponentialDelay"),
                "exponentialDelay is not supported; use fixedDelay",
            ),
            (None, None) => errs.add(&p, "fixedDelay is required"),
            (Some(_), Some(_)) => {
                errs.add(&p, "only one of fixedDelay or exponentialDelay may be set")
            }
        }
        if let Some(pc) = &d.percentage {
            check_percent(errs, &format!("{p}.percentage"), pc);
        }
        if let Some(pc) = d.percent
            && !(0..=100).contains(&pc)
        {
            errs.add(
                format!("{p}.percent"),
                format!("percentage {pc} must be in the range 0..100"),
            );
        }
    }
    if let Some(a) = &f.abort {
        let p = format!("{path}.abort");
        let set = [
            a.http_status.is_some(),
            a.grpc_status.is_some(),
            a.http2_error.is_some(),
        ];
        match set.iter().filter(|s| **s).count() {
            0 => errs.add(
                &p,
                "one of httpStatus, grpcStatus or http2Error is required",
            ),
            1 => {}
            _ => errs.add(
                &p,
                "only one of httpStatus, grpcStatus or http2Error may be set",
            ),
        }
        if let Some(s) = a.http_status
            && !(200..=599).contains(&s)
        {
            errs.add(
                format!("{p}.httpStatus"),
                format!("invalid abort http status {s}: must be in the range 200..599"),
            );
        }
        if a.http2_error.is_some() {
            errs.add(
                format!("{p}.http2Error"),
                "http2Error is not supported; use httpStatus or grpcStatus",
            );
        }
        if let Some(pc) = &a.percentage {
            check_percent(errs, &format!("{p}.percentage"), pc);
        }
    }
}

fn cors(errs: &mut Errors, path: &str, c: &CorsPolicy) {
    for (i, o) in c.allow_origins.iter().enumerate() {
        check_string_match(errs, &format!("{path}.allowOrigins[{i}]"), o, false);
    }
    for (i, m) in c.allow_methods.iter().enumerate() {
        let ok =
            m == "*" || (!m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase() || b == b'-'));
        if !ok {
            errs.add(
                format!("{path}.allowMethods[{i}]"),
                format!("{m:?} is not a valid HTTP method (use uppercase, like GET)"),
            );
        }
    }
    for (field, list) in [
        ("allowHeaders", &c.allow_headers),
        ("exposeHeaders", &c.expose_headers),
    ] {
        for (i, h) in list.iter().enumerate() {
            if h != "*" {
                errs.check(format!("{path}.{field}[{i}]"), check_header_name(h));
            }
        }
    }
    if let Some(max_age) = &c.max_age {
        check_duration(errs, &format!("{path}.maxAge"), max_age, ZERO);
        if max_age.get().is_some_and(|d| d.subsec_nanos() != 0) {
            errs.add(
                format!("{path}.maxAge"),
                "maxAge is only accurate to whole seconds",
            );
        }
    }
}

fn tls_route(errs: &mut Errors, path: &str, r: &TlsRoute, vs_hosts: &[String]) {
    if r.r#match.is_empty() {
        errs.add(
            format!("{path}.match"),
            "TLS route must have at least one match condition",
        );
    }
    for (i, m) in r.r#match.iter().enumerate() {
        let p = format!("{path}.match[{i}]");
        if m.sni_hosts.is_empty() {
            errs.add(
                format!("{p}.sniHosts"),
                "TLS match must have at least one SNI host",
            );
        }
        for (j, sni) in m.sni_hosts.iter().enumerate() {
            let sp = format!("{p}.sniHosts[{j}]");
            match check_wildcard_domain(sni) {
                Err(e) => errs.add(sp, e),
                Ok(()) if !vs_hosts.iter().any(|h| host_matches(h, sni)) => errs.add(
                    sp,
                    format!(
                        "the SNI host {sni:?} is not a match for any of the virtual service hosts"
                    ),
                ),
                Ok(()) => {}
            }
        }
        for (j, s) in m.destination_subnets.iter().enumerate() {
            errs.check(format!("{p}.destinationSubnets[{j}]"), check_ip_or_cidr(s));
        }
        if let Some(port) = m.port {
            errs.check(format!("{p}.port"), check_port(port));
        }
        check_labels(errs, &format!("{p}.sourceLabels"), &m.source_labels);
        for (j, gw) in m.gateways.iter().enumerate() {
            errs.check(format!("{p}.gateways[{j}]"), check_gateway_name(gw));
        }
    }
    route_destinations(errs, path, &r.route);
}

fn tcp_route(errs: &mut Errors, path: &str, r: &TcpRoute) {
    for (i, m) in r.r#match.iter().enumerate() {
        let p = format!("{path}.match[{i}]");
        for (j, s) in m.destination_subnets.iter().enumerate() {
            errs.check(format!("{p}.destinationSubnets[{j}]"), check_ip_or_cidr(s));
        }
        if let Some(s) = &m.source_subnet {
            errs.check(format!("{p}.sourceSubnet"), check_ip_or_cidr(s));
        }
        if let Some(port) = m.port {
            errs.check(format!("{p}.port"), check_port(port));
        }
        check_labels(errs, &format!("{p}.sourceLabels"), &m.source_labels);
        for (j, gw) in m.gateways.iter().enumerate() {
            errs.check(format!("{p}.gateways[{j}]"), check_gateway_name(gw));
        }
    }
    route_destinations(errs, path, &r.route);
}

fn route_destinations(errs: &mut Errors, path: &str, route: &[RouteDestination]) {
    if route.is_empty() {
        errs.add(format!("{path}.route"), "route is required");
    }
    if route.len() > 1 && route.iter().all(|d| d.weight.unwrap_or(0) == 0) {
        errs.add(
            format!("{path}.route"),
            "total destination weight = 0: set weights on the destinations",
        );
    }
    for (i, d) in route.iter().enumerate() {
        destination(
            errs,
            &format!("{path}.route[{i}].destination"),
            &d.destination,
        );
        if let Some(w) = d.weight
            && w < 0
        {
            errs.add(
                format!("{path}.route[{i}].weight"),
                format!("weight {w} must not be negative"),
            );
        }
    }
}

/// Whether host pattern `pattern` (a VirtualService host) covers `host` (an SNI name).
fn host_matches(pattern: &str, host: &str) -> bool {
    fn covers(wild: &str, other: &str) -> bool {
        match wild.strip_prefix('*') {
            Some(suffix) => {
                other.ends_with(suffix)
                    || other.strip_prefix('*').is_some_and(|o| o.ends_with(suffix))
            }
            None => wild == other,
        }
    }
    pattern == host || covers(pattern, host) || covers(host, pattern)
}

// === DestinationRule ===

pub(crate) fn destination_rule(spec: &DestinationRuleSpec) -> Vec<FieldError> {
    let mut errs = Errors::default();
    if spec.host.is_empty() {
        errs.add("spec.host", "host is required");
    } else {
        errs.check("spec.host", check_wildcard_domain(&spec.host));
    }
    if let Some(tp) = &spec.traffic_policy {
        traffic_policy(&mut errs, "spec.trafficPolicy", tp, true);
    }
    let mut names = BTreeSet::new();
    for (i, s) in spec.subsets.iter().enumerate() {
        let p = format!("spec.subsets[{i}]");
        if s.name.is_empty() {
            errs.add(format!("{p}.name"), "subset name is required");
        } else {
            errs.check(
                format!("{p}.name"),
                check_dns_label(&s.name).map_err(|m| format!("invalid subset name: {m}")),
            );
            if !names.insert(s.name.as_str()) {
                errs.add(
                    format!("{p}.name"),
                    format!("duplicate subset name {:?}", s.name),
                );
            }
        }
        check_labels(&mut errs, &format!("{p}.labels"), &s.labels);
        if let Some(tp) = &s.traffic_policy {
            traffic_policy(&mut errs, &format!("{p}.trafficPolicy"), tp, true);
        }
    }
    check_export_to(&mut errs, "spec.exportTo", &spec.export_to);
    if let Some(ws) = &spec.workload_selector {
        check_workload_selector(&mut errs, "spec.workloadSelector", ws);
    }
    errs.0
}

fn traffic_policy(errs: &mut Errors, path: &str, tp: &TrafficPolicy, allow_port_level: bool) {
    if let Some(lb) = &tp.load_balancer {
        load_balancer(errs, &format!("{path}.loadBalancer"), lb);
    }
    if let Some(cp) = &tp.connection_pool {
        connection_pool(errs, &format!("{path}.connectionPool"), cp);
    }
    if let Some(od) = &tp.outlier_detection {
        outlier_detection(errs, &format!("{path}.outlierDetection"), od);
    }
    if let Some(tls) = &tp.tls {
        client_tls(errs, &format!("{path}.tls"), tls);
    }
    if let Some(t) = &tp.tunnel {
        let p = format!("{path}.tunnel");
        if let Some(proto) = &t.protocol
            && proto != "CONNECT"
            && proto != "POST"
        {
            errs.add(
                format!("{p}.protocol"),
                format!("tunnel protocol {proto:?} must be CONNECT or POST"),
            );
        }
        if t.target_host.is_empty() {
            errs.add(format!("{p}.targetHost"), "target host is required");
        }
        errs.check(format!("{p}.targetPort"), check_port(t.target_port));
    }
    if !allow_port_level && !tp.port_level_settings.is_empty() {
        errs.add(format!("{path}.portLevelSettings"), "not allowed here");
    }
    let mut ports = BTreeSet::new();
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let p = format!("{path}.portLevelSettings[{i}]");
        match &pl.port {
            None => errs.add(format!("{p}.port"), "port is required"),
            Some(port) => {
                errs.check(format!("{p}.port.number"), check_port(port.number));
                if !ports.insert(port.number) {
                    errs.add(
                        format!("{p}.port.number"),
                        format!("duplicate port {} in portLevelSettings", port.number),
                    );
                }
            }
        }
        if let Some(lb) = &pl.load_balancer {
            load_balancer(errs, &format!("{p}.loadBalancer"), lb);
        }
        if let Some(cp) = &pl.connection_pool {
            connection_pool(errs, &format!("{p}.connectionPool"), cp);
        }
        if let Some(od) = &pl.outlier_detection {
            outlier_detection(errs, &format!("{p}.outlierDetection"), od);
        }
        if let Some(tls) = &pl.tls {
            client_tls(errs, &format!("{p}.tls"), tls);
        }
    }
}

fn load_balancer(errs: &mut Errors, path: &str, lb: &LoadBalancerSettings) {
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        errs.add(path, "only one of simple or consistentHash may be set");
    }
    if let Some(ch) = &lb.consistent_hash {
        let p = format!("{path}.consistentHash");
        let keys = [
            ch.http_header_name.is_some(),
            ch.http_cookie.is_some(),
            ch.use_source_ip == Some(true),
            ch.http_query_parameter_name.is_some(),
        ];
        match keys.iter().filter(|k| **k).count() {
            0 => errs.add(&p, "one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName is required"),
            1 => {}
            _ => errs.add(&p, "only one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName may be set"),
        }
        if let Some(h) = &ch.http_header_name {
            errs.check(format!("{p}.httpHeaderName"), check_header_name(h));
        }
        if let Some(c) = &ch.http_cookie {
            if c.name.is_empty() {
                errs.add(format!("{p}.httpCookie.name"), "cookie name is required");
            }
            if let Some(ttl) = &c.ttl {
                check_duration(errs, &format!("{p}.httpCookie.ttl"), ttl, ZERO);
            }
        }
        if ch.ring_hash.is_some() && ch.maglev.is_some() {
            errs.add(&p, "only one of ringHash or maglev may be set");
        }
        if let Some(m) = &ch.maglev
            && let Some(size) = m.table_size
            && !is_prime(size)
        {
            errs.add(
                format!("{p}.maglev.tableSize"),
                format!("table size {size} must be a prime number"),
            );
        }
    }
    if let Some(l) = &lb.locality_lb_setting {
        locality_lb(errs, &format!("{path}.localityLbSetting"), l);
    }
    if let Some(w) = &lb.warmup_duration_secs {
        check_duration(errs, &format!("{path}.warmupDurationSecs"), w, ZERO);
    }
    if let Some(w) = &lb.warmup {
        check_duration(
            errs,
            &format!("{path}.warmup.duration"),
            &w.duration,
            MIN_1MS,
        );
        if let Some(mp) = w.minimum_percent
            && !(0.0..=100.0).contains(&mp)
        {
            errs.add(
                format!("{path}.warmup.minimumPercent"),
                "must be in the range 0..100",
            );
        }
        if let Some(a) = w.aggression
            && a < 1.0
        {
            errs.add(format!("{path}.warmup.aggression"), "must be at least 1.0");
        }
    }
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

pub(crate) fn locality_lb(errs: &mut Errors, path: &str, l: &LocalityLbSetting) {
    if !l.distribute.is_empty() && !l.failover.is_empty() {
        errs.add(
            path,
            "can not simultaneously specify 'distribute' and 'failover'",
        );
    }
    if !l.failover.is_empty() && !l.failover_priority.is_empty() {
        for (i, f) in l.failover.iter().enumerate() {
            if f.to.as_deref().is_some_and(|t| t.contains('/')) {
                errs.add(
                    format!("{path}.failover[{i}].to"),
                    "with failoverPriority, failover may only name regions",
                );
            }
        }
    }
    for (i, d) in l.distribute.iter().enumerate() {
        let p = format!("{path}.distribute[{i}]");
        if let Some(from) = &d.from {
            errs.check(format!("{p}.from"), check_locality(from));
        }
        let total: u64 = d.to.values().map(|w| u64::from(*w)).sum();
        if total != 100 {
            errs.add(
                format!("{p}.to"),
                format!("total weight {total} must be 100"),
            );
        }
        for loc in d.to.keys() {
            errs.check(format!("{p}.to[{loc}]"), check_locality(loc));
        }
    }
    for (i, f) in l.failover.iter().enumerate() {
        let p = format!("{path}.failover[{i}]");
        if f.from.is_some() && f.from == f.to {
            errs.add(
                &p,
                "locality lb failover settings must specify different regions",
            );
        }
        for (field, v) in [("from", &f.from), ("to", &f.to)] {
            if let Some(v) = v
                && (v.contains('/') || v.contains('*'))
            {
                errs.add(
                    format!("{p}.{field}"),
                    "failover only supports regions (no '/' or '*')",
                );
            }
        }
    }
}

/// `region[/zone[/subzone]]` with `*` only as the last segment.
fn check_locality(loc: &str) -> Result<(), String> {
    let parts: Vec<&str> = loc.split('/').collect();
    if loc.is_empty() || parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
        return Err(format!(
            "invalid locality {loc:?}: expected region/zone/subzone"
        ));
    }
    if let Some(i) = parts.iter().position(|p| p.contains('*'))
        && (i != parts.len() - 1 || parts[i] != "*")
    {
        return Err(format!(
            "invalid locality {loc:?}: '*' may only be the whole last segment"
        ));
    }
    Ok(())
}

fn connection_pool(errs: &mut Errors, path: &str, cp: &ConnectionPoolSettings) {
    if cp.tcp.is_none() && cp.http.is_none() {
        errs.add(path, "must have at least one of tcp or http");
    }
    if let Some(tcp) = &cp.tcp {
        let p = format!("{path}.tcp");
        non_negative(errs, &format!("{p}.maxConnections"), tcp.max_connections);
        if let Some(d) = &tcp.connect_timeout {
            check_duration(errs, &format!("{p}.connectTimeout"), d, MIN_1MS);
        }
        if let Some(d) = &tcp.max_connection_duration {
            check_duration(errs, &format!("{p}.maxConnectionDuration"), d, MIN_1MS);
        }
        if let Some(d) = &tcp.idle_timeout {
            check_duration(errs, &format!("{p}.idleTimeout"), d, ZERO);
        }
        if let Some(k) = &tcp.tcp_keepalive {
            for (f, d) in [("time", &k.time), ("interval", &k.interval)] {
                if let Some(d) = d {
                    check_duration(
                        errs,
                        &format!("{p}.tcpKeepalive.{f}"),
                        d,
                        std::time::Duration::from_secs(1),
                    );
                }
            }
        }
    }
    if let Some(http) = &cp.http {
        let p = format!("{path}.http");
        non_negative(
            errs,
            &format!("{p}.http1MaxPendingRequests"),
            http.http1_max_pending_requests,
        );
        non_negative(
            errs,
            &format!("{p}.http2MaxRequests"),
            http.http2_max_requests,
        );
        non_negative(
            errs,
            &format!("{p}.maxRequestsPerConnection"),
            http.max_requests_per_connection,
        );
        non_negative(errs, &format!("{p}.maxRetries"), http.max_retries);
        non_negative(
            errs,
            &format!("{p}.maxConcurrentStreams"),
            http.max_concurrent_streams,
        );
        if let Some(d) = &http.idle_timeout {
            check_duration(errs, &format!("{p}.idleTimeout"), d, MIN_1MS);
        }
    }
}

fn non_negative(errs: &mut Errors, path: &str, v: Option<i32>) {
    if let Some(v) = v
        && v < 0
    {
        errs.add(path, format!("{v} must not be negative"));
    }
}

fn outlier_detection(errs: &mut Errors, path: &str, od: &OutlierDetection) {
    non_negative(
        errs,
        &format!("{path}.consecutiveErrors"),
        od.consecutive_errors,
    );
    if let Some(d) = &od.interval {
        check_duration(errs, &format!("{path}.interval"), d, MIN_1MS);
    }
    if let Some(d) = &od.base_ejection_time {
        check_duration(errs, &format!("{path}.baseEjectionTime"), d, MIN_1MS);
    }
    for (field, v) in [
        ("maxEjectionPercent", od.max_ejection_percent),
        ("minHealthPercent", od.min_health_percent),
    ] {
        if let Some(v) = v
            && !(0..=100).contains(&v)
        {
            errs.add(
                format!("{path}.{field}"),
                format!("percentage {v} must be in the range 0..100"),
            );
        }
    }
    if od.consecutive_local_origin_failures.is_some()
        && od.split_external_local_origin_errors != Some(true)
    {
        errs.add(
            format!("{path}.consecutiveLocalOriginFailures"),
            "requires splitExternalLocalOriginErrors: true",
        );
    }
}

fn client_tls(errs: &mut Errors, path: &str, tls: &ClientTlsSettings) {
    let mode = tls.mode.unwrap_or_default();
    let has_files = tls.client_certificate.is_some()
        || tls.private_key.is_some()
        || tls.ca_certificates.is_some();
    match mode {
        ClientTlsMode::Disable | ClientTlsMode::IstioMutual
            if has_files || tls.credential_name.is_some() =>
        {
            let mode = if mode == ClientTlsMode::Disable {
                "DISABLE"
            } else {
                "ISTIO_MUTUAL"
            };
            errs.add(
                path,
                format!("cannot specify certificates or credentialName when mode is {mode}"),
            );
        }
        ClientTlsMode::Mutual if tls.credential_name.is_none() => {
            if tls.client_certificate.is_none() {
                errs.add(
                    format!("{path}.clientCertificate"),
                    "client certificate required for mutual tls",
                );
            }
            if tls.private_key.is_none() {
                errs.add(
                    format!("{path}.privateKey"),
                    "private key required for mutual tls",
                );
            }
        }
        _ => {}
    }
    if tls.credential_name.is_some() && has_files {
        errs.add(
            path,
            "only one of credentialName or certificate files may be set",
        );
    }
    if let Some(sni) = &tls.sni {
        errs.check(format!("{path}.sni"), check_wildcard_domain(sni));
    }
}

// === Gateway ===

const GATEWAY_PROTOCOLS: &str = "HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, MONGO, TCP, TLS";

pub(crate) fn gateway(spec: &GatewaySpec) -> Vec<FieldError> {
    let mut errs = Errors::default();
    if spec.servers.is_empty() {
        errs.add("spec.servers", "gateway must have at least one server");
    }
    check_labels(&mut errs, "spec.selector", &spec.selector);
    let mut port_names = BTreeSet::new();
    for (i, s) in spec.servers.iter().enumerate() {
        let p = format!("spec.servers[{i}]");
        errs.check(format!("{p}.port.number"), check_port(s.port.number));
        let proto = Protocol::parse(&s.port.protocol);
        if proto == Protocol::Unsupported || proto == Protocol::Udp {
            errs.add(
                format!("{p}.port.protocol"),
                format!(
                    "invalid protocol {:?}: must be one of {GATEWAY_PROTOCOLS}",
                    s.port.protocol
                ),
            );
        }
        if !s.port.name.is_empty() && !port_names.insert(s.port.name.as_str()) {
            errs.add(
                format!("{p}.port.name"),
                format!(
                    "port names in servers must be unique: duplicate name {}",
                    s.port.name
                ),
            );
        }
        if let Some(tp) = s.port.target_port {
            errs.check(format!("{p}.port.targetPort"), check_port(tp));
        }
        if s.hosts.is_empty() {
            errs.add(
                format!("{p}.hosts"),
                "server config must contain at least one host",
            );
        }
        for (j, h) in s.hosts.iter().enumerate() {
            errs.check(format!("{p}.hosts[{j}]"), check_namespaced_host(h));
        }
        if let Some(bind) = &s.bind
            && bind.parse::<std::net::IpAddr>().is_err()
            && !bind.starts_with("unix://")
        {
            errs.add(
                format!("{p}.bind"),
                format!("{bind:?} is not an IP address or unix:// path"),
            );
        }
        match &s.tls {
            None if proto == Protocol::Https || proto == Protocol::Tls => {
                errs.add(
                    format!("{p}.tls"),
                    "server must have TLS settings for HTTPS/TLS protocols",
                );
            }
            None => {}
            Some(tls) => server_tls(&mut errs, &format!("{p}.tls"), tls, proto),
        }
    }
    errs.0
}

/// Gateway and Sidecar hosts: `[namespace/]dnsName` with `*`, `.` and `~` namespaces.
fn check_namespaced_host(h: &str) -> Result<(), String> {
    let (ns, host) = h.split_once('/').map_or((None, h), |(n, h)| (Some(n), h));
    if let Some(ns) = ns
        && !matches!(ns, "*" | "." | "~")
    {
        check_dns_label(ns).map_err(|m| format!("invalid namespace in host {h:?}: {m}"))?;
    }
    check_wildcard_domain(host)
}

pub(crate) fn server_tls(errs: &mut Errors, path: &str, tls: &ServerTlsSettings, proto: Protocol) {
    let mode = tls.mode;
    let has_cred = tls.credential_name.is_some() || !tls.credential_names.is_empty();
    if tls.credential_name.is_some() && !tls.credential_names.is_empty() {
        errs.add(
            path,
            "only one of credentialName or credentialNames may be set",
        );
    }
    match mode {
        Some(ServerTlsMode::Simple)
        | Some(ServerTlsMode::Mutual)
        | Some(ServerTlsMode::OptionalMutual) => {
            if !has_cred {
                if tls.server_certificate.is_none() {
                    errs.add(format!("{path}.serverCertificate"), "server certificate (or credentialName) is required for SIMPLE and MUTUAL TLS");
                }
                if tls.private_key.is_none() {
                    errs.add(
                        format!("{path}.privateKey"),
                        "private key (or credentialName) is required for SIMPLE and MUTUAL TLS",
                    );
                }
                if mode != Some(ServerTlsMode::Simple) && tls.ca_certificates.is_none() {
                    errs.add(
                        format!("{path}.caCertificates"),
                        "CA certificates (or credentialName) are required for MUTUAL TLS",
                    );
                }
            }
        }
        Some(ServerTlsMode::Passthrough)
        | Some(ServerTlsMode::AutoPassthrough)
        | Some(ServerTlsMode::IstioMutual) => {
            if has_cred || tls.server_certificate.is_some() || tls.private_key.is_some() {
                errs.add(path, "certificates must not be set for PASSTHROUGH, AUTO_PASSTHROUGH or ISTIO_MUTUAL");
            }
        }
        None => {
            if tls.https_redirect != Some(true)
                && (proto == Protocol::Https || proto == Protocol::Tls)
            {
                errs.add(
                    format!("{path}.mode"),
                    "TLS mode is required for HTTPS/TLS servers",
                );
            }
        }
    }
    if mode == Some(ServerTlsMode::AutoPassthrough) && proto != Protocol::Tls {
        errs.add(
            format!("{path}.mode"),
            "AUTO_PASSTHROUGH is only allowed on TLS servers",
        );
    }
    if let (Some(min), Some(max)) = (tls.min_protocol_version, tls.max_protocol_version)
        && min != TlsProtocol::TlsAuto
        && max != TlsProtocol::TlsAuto
        && (min as u8) > (max as u8)
    {
        errs.add(
            format!("{path}.minProtocolVersion"),
            "minProtocolVersion must not be greater than maxProtocolVersion",
        );
    }
    for (i, c) in tls.cipher_suites.iter().enumerate() {
        if c.is_empty()
            || !c
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_[]|".contains(&b))
        {
            errs.add(
                format!("{path}.cipherSuites[{i}]"),
                format!("invalid cipher suite {c:?}"),
            );
        }
    }
}

// === ServiceEntry ===

pub(crate) fn service_entry(spec: &ServiceEntrySpec) -> Vec<FieldError> {
    let mut errs = Errors::default();
    let resolution = spec.resolution.unwrap_or_default();
    if spec.hosts.is_empty() {
        errs.add("spec.hosts", "service entry must have at least one host");
    }
    for (i, h) in spec.hosts.iter().enumerate() {
        let p = format!("spec.hosts[{i}]");
        if h == "*" {
            errs.add(&p, "invalid host *");
            continue;
        }
        errs.check(&p, check_wildcard_domain(h));
        if h.starts_with('*')
            && matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin)
            && spec.endpoints.is_empty()
        {
            errs.add(
                &p,
                "hosts must be FQDN (no wildcards) for DNS resolution without endpoints",
            );
        }
    }
    for (i, a) in spec.addresses.iter().enumerate() {
        errs.check(format!("spec.addresses[{i}]"), check_ip_or_cidr(a));
    }
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let p = format!("spec.ports[{i}]");
        errs.check(format!("{p}.number"), check_port(port.number));
        if !numbers.insert(port.number) {
            errs.add(
                format!("{p}.number"),
                format!("duplicate port number {}", port.number),
            );
        }
        if port.name.is_empty() {
            errs.add(format!("{p}.name"), "port name is required");
        } else if !names.insert(port.name.as_str()) {
            errs.add(
                format!("{p}.name"),
                format!("duplicate port name {:?}", port.name),
            );
        }
        if let Some(proto) = &port.protocol
            && Protocol::parse(proto) == Protocol::Unsupported
        {
            errs.add(
                format!("{p}.protocol"),
                format!("unsupported protocol {proto:?}"),
            );
        }
        if let Some(tp) = port.target_port {
            errs.check(format!("{p}.targetPort"), check_port(tp));
        }
    }
    if spec.workload_selector.is_some() && !spec.endpoints.is_empty() {
        errs.add(
            "spec.workloadSelector",
            "only one of workloadSelector or endpoints may be set",
        );
    }
    if let Some(ws) = &spec.workload_selector {
        check_workload_label_selector(&mut errs, "spec.workloadSelector", ws);
    }
    match resolution {
        Resolution::None if !spec.endpoints.is_empty() => {
            errs.add(
                "spec.endpoints",
                "no endpoints should be provided for resolution type NONE",
            );
        }
        Resolution::Static if spec.endpoints.is_empty() && spec.workload_selector.is_none() => {
            errs.add(
                "spec.endpoints",
                "endpoints (or a workloadSelector) are required for resolution type STATIC",
            );
        }
        Resolution::DnsRoundRobin if spec.endpoints.len() > 1 => {
            errs.add(
                "spec.endpoints",
                "DNS_ROUND_ROBIN allows at most one endpoint",
            );
        }
        _ => {}
    }
    for (i, ep) in spec.endpoints.iter().enumerate() {
        let p = format!("spec.endpoints[{i}]");
        workload_entry_fields(&mut errs, &p, ep, resolution == Resolution::Static);
        for name in ep.ports.keys() {
            if !names.contains(name.as_str()) {
                errs.add(
                    format!("{p}.ports[{name}]"),
                    format!("endpoint port {name:?} is not defined by the service entry"),
                );
            }
        }
    }
    check_export_to(&mut errs, "spec.exportTo", &spec.export_to);
    errs.0
}

// === WorkloadEntry ===

pub(crate) fn workload_entry(spec: &WorkloadEntrySpec) -> Vec<FieldError> {
    let mut errs = Errors::default();
    if spec.address.as_deref().unwrap_or_default().is_empty() && spec.network.is_none() {
        errs.add(
            "spec.address",
            "address is required (unless network is set)",
        );
    }
    workload_entry_fields(&mut errs, "spec", spec, false);
    errs.0
}

fn workload_entry_fields(errs: &mut Errors, path: &str, we: &WorkloadEntrySpec, require_ip: bool) {
    if let Some(addr) = we.address.as_deref().filter(|a| !a.is_empty()) {
        let p = format!("{path}.address");
        if let Some(sock) = addr.strip_prefix("unix://") {
            if !sock.starts_with('/') {
                errs.add(
                    p,
                    format!("unix socket address {addr:?} must be an absolute path"),
                );
            }
        } else if addr.parse::<std::net::IpAddr>().is_err() {
            if require_ip {
                errs.add(
                    p,
                    format!(
                        "endpoint address {addr:?} is not a valid IP address (resolution STATIC)"
                    ),
                );
            } else {
                errs.check(
                    p,
                    check_wildcard_domain(addr)
                        .map_err(|_| format!("address {addr:?} is not an IP address or host name")),
                );
            }
        }
    }
    for (name, port) in &we.ports {
        errs.check(format!("{path}.ports[{name}]"), check_port(*port));
    }
    check_labels(errs, &format!("{path}.labels"), &we.labels);
    if let Some(sa) = &we.service_account {
        errs.check(format!("{path}.serviceAccount"), check_object_name(sa));
    }
    if let Some(loc) = &we.locality
        && (loc.split('/').count() > 3 || loc.split('/').any(str::is_empty))
    {
        errs.add(
            format!("{path}.locality"),
            format!("invalid locality {loc:?}: expected region/zone/subzone"),
        );
    }
}

// === Sidecar ===

pub(crate) fn sidecar(spec: &SidecarSpec) -> Vec<FieldError> {
    let mut errs = Errors::default();
    if spec.egress.is_empty()
        && spec.ingress.is_empty()
        && spec.outbound_traffic_policy.is_none()
        && spec.inbound_connection_pool.is_none()
    {
        errs.add("spec", "sidecar: empty configuration provided");
    }
    if let Some(ws) = &spec.workload_selector {
        check_workload_label_selector(&mut errs, "spec.workloadSelector", ws);
    }
    let mut ports = BTreeSet::new();
    for (i, ing) in spec.ingress.iter().enumerate() {
        let p = format!("spec.ingress[{i}]");
        sidecar_port(&mut errs, &format!("{p}.port"), &ing.port);
        if !ports.insert(ing.port.number) {
            errs.add(
                format!("{p}.port.number"),
                format!(
                    "sidecar: ports on IP bound listeners must be unique: duplicate {}",
                    ing.port.number
                ),
            );
        }
        if let Some(ep) = &ing.default_endpoint {
            errs.check(format!("{p}.defaultEndpoint"), check_default_endpoint(ep));
        }
        if let Some(bind) = &ing.bind
            && bind.parse::<std::net::IpAddr>().is_err()
        {
            errs.add(
                format!("{p}.bind"),
                format!("{bind:?} is not an IP address"),
            );
        }
        if let Some(tls) = &ing.tls {
            server_tls(
                &mut errs,
                &format!("{p}.tls"),
                tls,
                Protocol::parse(ing.port.protocol.as_deref().unwrap_or_default()),
            );
        }
        if let Some(cp) = &ing.connection_pool {
            connection_pool(&mut errs, &format!("{p}.connectionPool"), cp);
        }
    }
    let mut egress_ports = BTreeSet::new();
    let mut portless = 0;
    for (i, eg) in spec.egress.iter().enumerate() {
        let p = format!("spec.egress[{i}]");
        match &eg.port {
            None => {
                portless += 1;
                if i != spec.egress.len() - 1 {
                    errs.add(&p, "sidecar: the egress listener with empty port should be the last listener in the list");
                }
            }
            Some(port) => {
                sidecar_port(&mut errs, &format!("{p}.port"), port);
                if !egress_ports.insert((eg.bind.clone(), port.number)) {
                    errs.add(
                        format!("{p}.port.number"),
                        format!("sidecar: duplicate egress listener port {}", port.number),
                    );
                }
            }
        }
        if eg.hosts.is_empty() {
            errs.add(
                format!("{p}.hosts"),
                "sidecar: egress listener must contain at least one host",
            );
        }
        for (j, h) in eg.hosts.iter().enumerate() {
            let hp = format!("{p}.hosts[{j}]");
            if !h.contains('/') {
                errs.add(
                    hp,
                    format!("sidecar: host {h:?} must be of form namespace/dnsName"),
                );
            } else {
                errs.check(hp, check_namespaced_host(h));
            }
        }
        if let Some(bind) = &eg.bind
            && bind.parse::<std::net::IpAddr>().is_err()
            && !bind.starts_with("unix://")
        {
            errs.add(
                format!("{p}.bind"),
                format!("{bind:?} is not an IP address or unix:// path"),
            );
        }
    }
    if portless > 1 {
        errs.add(
            "spec.egress",
            "sidecar: only one egress listener may omit the port",
        );
    }
    if let Some(cp) = &spec.inbound_connection_pool {
        connection_pool(&mut errs, "spec.inboundConnectionPool", cp);
    }
    if let Some(otp) = &spec.outbound_traffic_policy
        && let Some(proxy) = &otp.egress_proxy
    {
        if otp.mode != Some(OutboundTrafficMode::AllowAny) {
            errs.add(
                "spec.outboundTrafficPolicy.egressProxy",
                "egress_proxy must be set only with ALLOW_ANY outbound_traffic_policy mode",
            );
        }
        destination(&mut errs, "spec.outboundTrafficPolicy.egressProxy", proxy);
    }
    errs.0
}

fn sidecar_port(errs: &mut Errors, path: &str, port: &SidecarPort) {
    errs.check(format!("{path}.number"), check_port(port.number));
    if let Some(proto) = &port.protocol
        && Protocol::parse(proto) == Protocol::Unsupported
    {
        errs.add(
            format!("{path}.protocol"),
            format!("unsupported protocol {proto:?}"),
        );
    }
    if let Some(tp) = port.target_port {
        errs.check(format!("{path}.targetPort"), check_port(tp));
    }
}

/// `127.0.0.1:PORT`, `0.0.0.0:PORT`, `[::1]:PORT` or `unix:///path`.
fn check_default_endpoint(ep: &str) -> Result<(), String> {
    if let Some(path) = ep.strip_prefix("unix://") {
        return if path.starts_with('/') {
            Ok(())
        } else {
            Err(format!("unix socket {ep:?} must be an absolute path"))
        };
    }
    let addr: std::net::SocketAddr = ep.parse().map_err(|_| {
        format!("default endpoint {ep:?} must be IP:PORT (like 127.0.0.1:8080) or unix:///path")
    })?;
    let ip = addr.ip();
    if !(ip.is_loopback() || ip.is_unspecified()) {
        return Err(format!(
            "default endpoint {ep:?} must use 127.0.0.1, 0.0.0.0, ::1 or ::"
        ));
    }
    check_port(u32::from(addr.port()))
}
