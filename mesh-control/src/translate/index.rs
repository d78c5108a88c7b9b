//! Per-snapshot routing indexes shared by every proxy's translation: VirtualServices with
//! host names made fully qualified and delegates merged in, DestinationRules by host, and
//! the problems found on the way (missing subsets, missing delegates, host conflicts).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use mesh_api::mesh_config::MeshConfig;
use mesh_api::naming::resolve_short_name;
use mesh_api::networking::{
    Destination, DestinationRuleSpec, HttpMatchRequest, HttpRoute, StringMatch, VirtualServiceSpec,
};

use super::hosts::host_matches;
use crate::registry::{Registry, Visibility};
use crate::store::ConfigIssue;
use crate::store::config::{ConfigSet, Meta, Shared};

/// The gateway name that binds a VirtualService to sidecars.
pub const MESH_GATEWAY: &str = "mesh";

/// A VirtualService as the translator uses it: hosts and destinations fully qualified,
/// gateways as `namespace/name` (or `mesh`), delegate routes merged into the root.
#[derive(Debug, Clone)]
pub struct EffectiveVs {
    pub meta: Meta,
    pub spec: VirtualServiceSpec,
    pub gateways: Vec<String>,
    pub visibility: Visibility,
}

impl EffectiveVs {
    pub fn binds(&self, gateway: &str) -> bool {
        self.gateways.iter().any(|g| g == gateway)
    }
}

/// Indexes computed once per snapshot.
#[derive(Debug, Default)]
pub struct MeshIndex {
    /// Root VirtualServices (delegates excluded), oldest first.
    pub virtual_services: Vec<Arc<EffectiveVs>>,
    /// DestinationRules with their host made fully qualified, oldest first.
    pub destination_rules: Vec<Arc<NormalizedDr>>,
    dr_by_host: HashMap<String, Vec<usize>>,
    dr_wildcards: Vec<usize>,
    /// EnvoyFilters, compiled, by priority then age.
    pub envoy_filters: Vec<Arc<super::envoy_filter::CompiledFilter>>,
    /// The label keys translation may read from a proxy (see [`super::sharing`]).
    pub label_keys_read: BTreeSet<String>,
}

/// A DestinationRule with its host resolved.
#[derive(Debug, Clone)]
pub struct NormalizedDr {
    pub meta: Meta,
    pub host: String,
    pub spec: DestinationRuleSpec,
    pub visibility: Visibility,
}

impl MeshIndex {
    pub fn build(
        config: &ConfigSet,
        registry: &Registry,
        mesh: &MeshConfig,
        domain_suffix: &str,
    ) -> (MeshIndex, Vec<ConfigIssue>) {
        let _ = registry;
        let mut issues = Vec::new();
        let mut index = MeshIndex::default();

        for dr in &config.destination_rules {
            let host = resolve_short_name(&dr.spec.host, &dr.meta.namespace, domain_suffix);
            let i = index.destination_rules.len();
            if host.starts_with('*') {
                index.dr_wildcards.push(i);
            } else {
                index.dr_by_host.entry(host.clone()).or_default().push(i);
            }
            index.destination_rules.push(Arc::new(NormalizedDr {
                visibility: Visibility::parse(
                    &dr.spec.export_to,
                    &dr.meta.namespace,
                    &mesh.default_destination_rule_export_to,
                ),
                meta: dr.meta.clone(),
                host,
                spec: dr.spec.clone(),
            }));
        }

        // Normalize every VirtualService, then merge delegates into roots.
        let normalized: Vec<(Shared<VirtualServiceSpec>, VirtualServiceSpec)> = config
            .virtual_services
            .iter()
            .map(|vs| {
                (
                    vs.clone(),
                    normalize_vs(&vs.spec, &vs.meta.namespace, domain_suffix),
                )
            })
            .collect();
        let by_name: HashMap<(&str, &str), usize> = normalized
            .iter()
            .enumerate()
            .map(|(i, (vs, _))| ((vs.meta.namespace.as_str(), vs.meta.name.as_str()), i))
            .collect();

        for (vs, spec) in &normalized {
            check_subsets(&index, vs, spec, &mut issues);
            if spec.hosts.is_empty() {
                // A delegate (or an incomplete resource): used only through a root.
                continue;
            }
            let mut merged = spec.clone();
            merged.http = Vec::with_capacity(spec.http.len());
            for (i, route) in spec.http.iter().enumerate() {
                let Some(delegate) = &route.delegate else {
                    merged.http.push(route.clone());
                    continue;
                };
                let ns = delegate
                    .namespace
                    .clone()
                    .unwrap_or_else(|| vs.meta.namespace.clone());
                let Some(&d) = by_name.get(&(ns.as_str(), delegate.name.as_str())) else {
                    issues.push(issue(
                        &vs.meta,
                        format!("spec.http[{i}].delegate"),
                        format!("delegate VirtualService {ns}/{} does not exist; its routes are skipped", delegate.name),
                    ));
                    continue;
                };
                let (dvs, dspec) = &normalized[d];
                let dvis = Visibility::parse(
                    &dvs.spec.export_to,
                    &dvs.meta.namespace,
                    &mesh.default_virtual_service_export_to,
                );
                if !dvis.visible_to(&vs.meta.namespace) {
                    issues.push(issue(
                        &vs.meta,
                        format!("spec.http[{i}].delegate"),
                        format!(
                            "delegate VirtualService {ns}/{} is not exported to namespace {}",
                            delegate.name, vs.meta.namespace
                        ),
                    ));
                    continue;
                }
                if !dspec.hosts.is_empty() {
                    issues.push(issue(
                        &dvs.meta,
                        "spec.hosts".to_string(),
                        format!(
                            "a delegate VirtualService must not set hosts (used as a delegate by {}); its hosts are ignored for delegation",
                            vs.meta.display()
                        ),
                    ));
                }
                for droute in &dspec.http {
                    if droute.delegate.is_some() {
                        issues.push(issue(
                            &dvs.meta,
                            "spec.http.delegate".to_string(),
                            "delegation is only one level deep (as in Istio); nested delegate ignored".to_string(),
                        ));
                        continue;
                    }
                    if let Some(r) = merge_http_route(route, droute) {
                        merged.http.push(r);
                    }
                }
            }
            let gateways = if spec.gateways.is_empty() {
                vec![MESH_GATEWAY.to_string()]
            } else {
                spec.gateways
                    .iter()
                    .map(|g| qualify_gateway(g, &vs.meta.namespace))
                    .collect()
            };
            index.virtual_services.push(Arc::new(EffectiveVs {
                visibility: Visibility::parse(
                    &spec.export_to,
                    &vs.meta.namespace,
                    &mesh.default_virtual_service_export_to,
                ),
                meta: vs.meta.clone(),
                spec: merged,
                gateways,
            }));
        }

        report_host_conflicts(&index.virtual_services, &mut issues);
        index.envoy_filters = super::envoy_filter::compile(&config.envoy_filters, &mut issues);
        index.label_keys_read = super::sharing::label_keys_read(config, mesh);
        (index, issues)
    }

    /// The DestinationRule that applies to `host` for a proxy in `proxy_ns` with `labels`,
    /// merged the way Istio merges rules for one host: the proxy's namespace first, then the
    /// service's namespace, then the root namespace, then any other (oldest first); several
    /// rules in the chosen namespace are merged (subsets added, the first policy wins).
    pub fn destination_rule(
        &self,
        host: &str,
        service_ns: Option<&str>,
        proxy_ns: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<Arc<NormalizedDr>> {
        let visible = |i: &&usize| {
            let dr = &self.destination_rules[**i];
            dr.visibility.visible_to(proxy_ns)
                && match &dr.spec.workload_selector {
                    Some(sel) => {
                        dr.meta.namespace == proxy_ns
                            && crate::registry::selects(&sel.match_labels, labels)
                    }
                    None => true,
                }
        };
        let mut candidates: Vec<usize> = self
            .dr_by_host
            .get(host)
            .into_iter()
            .flatten()
            .filter(visible)
            .copied()
            .collect();
        if candidates.is_empty() {
            // The most specific wildcard rule.
            let mut best: Option<(usize, usize)> = None;
            for i in self.dr_wildcards.iter().filter(visible) {
                let dr = &self.destination_rules[*i];
                if host_matches(&dr.host, host) {
                    let len = dr.host.len();
                    if best.is_none_or(|(l, _)| len > l) {
                        best = Some((len, *i));
                    }
                }
            }
            candidates.extend(best.map(|(_, i)| i));
            if let Some((_, i)) = best {
                let h = &self.destination_rules[i].host;
                candidates.extend(
                    self.dr_wildcards
                        .iter()
                        .filter(visible)
                        .filter(|j| **j != i && self.destination_rules[**j].host == *h),
                );
            }
        }
        if candidates.is_empty() {
            return None;
        }
        let rank = |ns: &str| {
            if ns == proxy_ns {
                0
            } else if Some(ns) == service_ns {
                1
            } else if ns == "istio-system" {
                2
            } else {
                3
            }
        };
        // Workload-selected rules first (they are more specific), then by namespace rank.
        candidates.sort_by_key(|i| {
            let dr = &self.destination_rules[*i];
            (
                dr.spec.workload_selector.is_none(),
                rank(&dr.meta.namespace),
                *i,
            )
        });
        let first = self.destination_rules[candidates[0]].clone();
        let same: Vec<&Arc<NormalizedDr>> = candidates[1..]
            .iter()
            .map(|i| &self.destination_rules[*i])
            .filter(|d| {
                d.meta.namespace == first.meta.namespace
                    && d.spec.workload_selector.is_none() == first.spec.workload_selector.is_none()
            })
            .collect();
        if same.is_empty() {
            return Some(first);
        }
        let mut merged = (*first).clone();
        for other in same {
            for subset in &other.spec.subsets {
                if !merged.spec.subsets.iter().any(|s| s.name == subset.name) {
                    merged.spec.subsets.push(subset.clone());
                }
            }
            if merged.spec.traffic_policy.is_none() {
                merged.spec.traffic_policy = other.spec.traffic_policy.clone();
            }
        }
        Some(Arc::new(merged))
    }
}

fn issue(meta: &Meta, field: String, message: String) -> ConfigIssue {
    ConfigIssue {
        origin: meta.origin.clone(),
        resource: Some(meta.display()),
        field: Some(field),
        message,
    }
}

/// `name` -> `ns/name`; `mesh` and `ns/name` stay.
fn qualify_gateway(g: &str, ns: &str) -> String {
    if g == MESH_GATEWAY || g.contains('/') {
        g.to_string()
    } else {
        format!("{ns}/{g}")
    }
}

fn qualify_dest(d: &mut Destination, ns: &str, suffix: &str) {
    d.host = resolve_short_name(&d.host, ns, suffix);
}

/// Makes every host name in a VirtualService fully qualified, relative to its namespace.
fn normalize_vs(spec: &VirtualServiceSpec, ns: &str, suffix: &str) -> VirtualServiceSpec {
    let mut out = spec.clone();
    out.hosts = spec
        .hosts
        .iter()
        .map(|h| resolve_short_name(h, ns, suffix))
        .collect();
    for http in &mut out.http {
        for r in &mut http.route {
            qualify_dest(&mut r.destination, ns, suffix);
        }
        if let Some(m) = &mut http.mirror {
            qualify_dest(m, ns, suffix);
        }
        for m in &mut http.mirrors {
            qualify_dest(&mut m.destination, ns, suffix);
        }
        for m in &mut http.r#match {
            m.gateways = m.gateways.iter().map(|g| qualify_gateway(g, ns)).collect();
        }
    }
    for tcp in &mut out.tcp {
        for r in &mut tcp.route {
            qualify_dest(&mut r.destination, ns, suffix);
        }
        for m in &mut tcp.r#match {
            m.gateways = m.gateways.iter().map(|g| qualify_gateway(g, ns)).collect();
        }
    }
    for tls in &mut out.tls {
        for r in &mut tls.route {
            qualify_dest(&mut r.destination, ns, suffix);
        }
        for m in &mut tls.r#match {
            m.gateways = m.gateways.iter().map(|g| qualify_gateway(g, ns)).collect();
        }
    }
    out
}

/// Reports destinations naming a subset that no DestinationRule for the host defines (Istio
/// sends such routes anyway; requests on them fail with 503 "no cluster").
fn check_subsets(
    index: &MeshIndex,
    vs: &Shared<VirtualServiceSpec>,
    spec: &VirtualServiceSpec,
    issues: &mut Vec<ConfigIssue>,
) {
    let mut check = |dest: &Destination, field: String| {
        let Some(subset) = &dest.subset else { return };
        let rules: Vec<&Arc<NormalizedDr>> = index
            .dr_by_host
            .get(&dest.host)
            .into_iter()
            .flatten()
            .map(|i| &index.destination_rules[*i])
            .chain(
                index
                    .dr_wildcards
                    .iter()
                    .map(|i| &index.destination_rules[*i])
                    .filter(|d| host_matches(&d.host, &dest.host)),
            )
            .collect();
        if rules
            .iter()
            .any(|d| d.spec.subsets.iter().any(|s| &s.name == subset))
        {
            return;
        }
        let message = if rules.is_empty() {
            format!(
                "subset {subset:?} of host {} is not defined: no DestinationRule for that host (requests to it will fail with 503)",
                dest.host
            )
        } else {
            format!(
                "subset {subset:?} is not defined in {} for host {} (requests to it will fail with 503)",
                rules[0].meta.display(),
                dest.host
            )
        };
        issues.push(issue(&vs.meta, field, message));
    };
    for (i, http) in spec.http.iter().enumerate() {
        for (j, r) in http.route.iter().enumerate() {
            check(
                &r.destination,
                format!("spec.http[{i}].route[{j}].destination.subset"),
            );
        }
        if let Some(m) = &http.mirror {
            check(m, format!("spec.http[{i}].mirror.subset"));
        }
        for (j, m) in http.mirrors.iter().enumerate() {
            check(
                &m.destination,
                format!("spec.http[{i}].mirrors[{j}].destination.subset"),
            );
        }
    }
    for (i, tcp) in spec.tcp.iter().enumerate() {
        for (j, r) in tcp.route.iter().enumerate() {
            check(
                &r.destination,
                format!("spec.tcp[{i}].route[{j}].destination.subset"),
            );
        }
    }
    for (i, tls) in spec.tls.iter().enumerate() {
        for (j, r) in tls.route.iter().enumerate() {
            check(
                &r.destination,
                format!("spec.tls[{i}].route[{j}].destination.subset"),
            );
        }
    }
}

/// Two VirtualServices bound to the same gateway with the same host: for sidecars the oldest
/// wins the host (Istio's rule); for gateways their routes are merged, oldest first. Both
/// are reported so users see why a rule seems ignored.
fn report_host_conflicts(vss: &[Arc<EffectiveVs>], issues: &mut Vec<ConfigIssue>) {
    let mut owners: HashMap<(&str, &str), &EffectiveVs> = HashMap::new();
    for vs in vss {
        for gw in &vs.gateways {
            for (i, host) in vs.spec.hosts.iter().enumerate() {
                match owners.get(&(gw.as_str(), host.as_str())) {
                    Some(owner) if overlaps(&owner.visibility, &vs.visibility) => {
                        let message = if gw == MESH_GATEWAY {
                            format!(
                                "host {host} is already routed for sidecars by the older {}; this VirtualService is ignored for that host",
                                owner.meta.display()
                            )
                        } else {
                            format!(
                                "host {host} on gateway {gw} is also routed by the older {}; the routes are merged, the older ones first",
                                owner.meta.display()
                            )
                        };
                        issues.push(issue(&vs.meta, format!("spec.hosts[{i}]"), message));
                    }
                    Some(_) => {}
                    None => {
                        owners.insert((gw.as_str(), host.as_str()), vs);
                    }
                }
            }
        }
    }
}

fn overlaps(a: &Visibility, b: &Visibility) -> bool {
    a.all || b.all || a.namespaces.intersection(&b.namespaces).next().is_some()
}

/// Istio's delegate merge: the delegate route's matches are combined with the root's (and
/// must lie within them), and every unset field is taken from the root route.
fn merge_http_route(root: &HttpRoute, delegate: &HttpRoute) -> Option<HttpRoute> {
    let matches = merge_matches(&root.r#match, &delegate.r#match)?;
    let mut out = delegate.clone();
    out.r#match = matches;
    out.name = match (&root.name, &delegate.name) {
        (Some(r), Some(d)) => Some(format!("{r}-{d}")),
        (Some(r), None) => Some(r.clone()),
        (None, d) => d.clone(),
    };
    out.delegate = None;
    macro_rules! inherit {
        ($($f:ident),*) => { $( if out.$f.is_none() { out.$f = root.$f.clone(); } )* };
    }
    inherit!(
        rewrite,
        direct_response,
        timeout,
        retries,
        fault,
        mirror,
        mirror_percent,
        mirror_percentage,
        cors_policy,
        headers
    );
    if out.mirrors.is_empty() {
        out.mirrors = root.mirrors.clone();
    }
    Some(out)
}

fn merge_matches(
    root: &[HttpMatchRequest],
    delegate: &[HttpMatchRequest],
) -> Option<Vec<HttpMatchRequest>> {
    if root.is_empty() {
        return Some(delegate.to_vec());
    }
    if delegate.is_empty() {
        return Some(root.to_vec());
    }
    let mut out = Vec::new();
    for r in root {
        for d in delegate {
            if let Some(m) = merge_match(r, d) {
                out.push(m);
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

fn merge_match(root: &HttpMatchRequest, delegate: &HttpMatchRequest) -> Option<HttpMatchRequest> {
    let mut out = delegate.clone();
    out.uri = match (&root.uri, &delegate.uri) {
        (None, d) => d.clone(),
        (Some(r), None) => Some(r.clone()),
        (Some(r), Some(d)) => Some(uri_within(r, d)?),
    };
    fn same(a: &Option<StringMatch>, b: &Option<StringMatch>) -> Option<Option<StringMatch>> {
        match (a, b) {
            (None, b) => Some(b.clone()),
            (a, None) => Some(a.clone()),
            (Some(x), Some(y)) => (x == y).then(|| Some(x.clone())),
        }
    }
    out.scheme = same(&root.scheme, &delegate.scheme)?;
    out.method = same(&root.method, &delegate.method)?;
    out.authority = same(&root.authority, &delegate.authority)?;
    for (k, v) in &root.headers {
        match out.headers.get(k) {
            Some(existing) if existing != v => return None,
            _ => {
                out.headers.insert(k.clone(), v.clone());
            }
        }
    }
    for (k, v) in &root.query_params {
        match out.query_params.get(k) {
            Some(existing) if existing != v => return None,
            _ => {
                out.query_params.insert(k.clone(), v.clone());
            }
        }
    }
    for (k, v) in &root.without_headers {
        out.without_headers
            .entry(k.clone())
            .or_insert_with(|| v.clone());
    }
    out.port = match (root.port, delegate.port) {
        (Some(a), Some(b)) if a != b => return None,
        (a, b) => a.or(b),
    };
    if out.source_labels.is_empty() {
        out.source_labels = root.source_labels.clone();
    }
    if out.gateways.is_empty() {
        out.gateways = root.gateways.clone();
    }
    if out.source_namespace.is_none() {
        out.source_namespace = root.source_namespace.clone();
    }
    if out.ignore_uri_case.is_none() {
        out.ignore_uri_case = root.ignore_uri_case;
    }
    Some(out)
}

/// The delegate's URI match when it lies within the root's, else `None` (a conflict).
fn uri_within(root: &StringMatch, delegate: &StringMatch) -> Option<StringMatch> {
    use mesh_api::networking::StringMatchKind as K;
    match (root.kind()?, delegate.kind()?) {
        (K::Prefix(r), K::Prefix(d)) | (K::Prefix(r), K::Exact(d)) if d.starts_with(r) => {
            Some(delegate.clone())
        }
        (K::Exact(r), K::Exact(d)) if r == d => Some(delegate.clone()),
        (K::Regex(r), K::Regex(d)) if r == d => Some(delegate.clone()),
        _ => None,
    }
}
