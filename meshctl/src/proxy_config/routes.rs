//! `proxy-config routes`: `NAME  VHOST NAME  DOMAINS  MATCH  VIRTUAL SERVICE`, one row per
//! route of every virtual host of every route configuration (istioctl's verbose view;
//! `--verbose=false` gives `NAME  VIRTUAL HOSTS`).
//!
//! One addition to istioctl's MATCH column: header and query conditions are shown in
//! brackets (`/* [end-user=jason]`), because without them header-routed rules look
//! identical to their fall-through rule.

use std::collections::HashSet;

use anyhow::{Result, bail};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, Route, RouteConfiguration, RouteMatch, VirtualHost,
    header_matcher::HeaderMatchSpecifier, query_parameter_matcher::QueryParameterMatchSpecifier,
    route, route_action, route_match::PathSpecifier,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use serde_json::Value;

use super::{Output, Source, print_value, warn_rejected};
use crate::envoy::dump::{ConfigDump, Entry, Status};
use crate::istio;
use crate::table::Table;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    source: Source,
    /// Only the route configuration with this name (`80`, `http.8080`).
    #[arg(long)]
    name: Option<String>,
    /// One row per route (`false`: one row per route configuration).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    verbose: bool,
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub name: Option<String>,
}

pub async fn run(args: &Args) -> Result<()> {
    let fetched = args.source.config_dump(false).await?;
    let filter = Filter {
        name: args.name.clone(),
    };
    match args.output {
        Output::Short => print!("{}", table(&fetched.dump, &filter, args.verbose)?.render()),
        out => {
            let raw: Vec<Value> = selected(&fetched.dump, &filter)?
                .into_iter()
                .map(|e| e.raw)
                .collect();
            print_value(&Value::Array(raw), out)?;
        }
    }
    warn_rejected(&fetched.dump, Some("route configuration"));
    Ok(())
}

fn selected(dump: &ConfigDump, filter: &Filter) -> Result<Vec<Entry<RouteConfiguration>>> {
    let all = dump.routes()?;
    if all.is_empty() {
        bail!(
            "no routes found in the config dump (hint: only routes loaded over RDS are listed; listeners with inline routes show them under `proxy-config listeners`)"
        );
    }
    let mut out: Vec<_> = all
        .into_iter()
        .filter(|e| filter.name.as_deref().is_none_or(|n| n == e.resource.name))
        .collect();
    // RDS names are ports (`9080`) or `http.8080`: numbers in numeric order first.
    out.sort_by_key(|e| {
        let n = &e.resource.name;
        (
            e.status == Status::Static,
            n.parse::<u64>().map_or((1, 0), |p| (0, p)),
            n.clone(),
        )
    });
    Ok(out)
}

pub fn table(dump: &ConfigDump, filter: &Filter, verbose: bool) -> Result<Table> {
    let entries = selected(dump, filter)?;
    if !verbose {
        let mut t = Table::new(&["NAME", "VIRTUAL HOSTS"], 5);
        for e in &entries {
            t.row([
                e.resource.name.clone(),
                e.resource.virtual_hosts.len().to_string(),
            ]);
        }
        return Ok(t);
    }
    let mut t = Table::new(
        &["NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"],
        5,
    );
    for e in &entries {
        for vh in &e.resource.virtual_hosts {
            let domains = describe_domains(&vh.domains);
            for r in vh.routes.iter().filter(|r| !is_passthrough(r)) {
                t.row([
                    e.resource.name.clone(),
                    vh.name.clone(),
                    domains.clone(),
                    describe_route_match(r.r#match.as_ref()),
                    istio::config_ref(r.metadata.as_ref()),
                ]);
            }
            if vh.routes.is_empty() {
                t.row([
                    e.resource.name.clone(),
                    vh.name.clone(),
                    domains,
                    "/*".into(),
                    "404".into(),
                ]);
            }
        }
    }
    Ok(t)
}

/// Istio's catch-all route to the original destination, which every sidecar route
/// configuration carries; istioctl leaves it out.
fn is_passthrough(r: &Route) -> bool {
    matches!(&r.action, Some(route::Action::Route(a))
        if matches!(&a.cluster_specifier, Some(route_action::ClusterSpecifier::Cluster(c)) if c == "PassthroughCluster"))
}

/// The shortest useful list of a virtual host's domains: no `host:port` forms, no
/// `.svc.cluster.local` expansions of a name also listed short, two at most.
pub fn describe_domains(domains: &[String]) -> String {
    match domains {
        [] => return String::new(),
        [one] => return one.clone(),
        _ => {}
    }
    const MAX: usize = 2;
    let without_port: Vec<&str> = domains
        .iter()
        .map(String::as_str)
        .filter(|d| {
            let colons = d.matches(':').count();
            colons == 0 || (colons > 2 && d.ends_with(']'))
        })
        .collect();
    let unique: HashSet<&str> = without_port.iter().copied().collect();
    let expanded = |d: &str| {
        [".svc.cluster.local", ".svc"].iter().any(|suffix| {
            d.strip_suffix(suffix)
                .is_some_and(|short| unique.contains(short))
        })
    };
    let kept: Vec<&str> = without_port.into_iter().filter(|d| !expanded(d)).collect();
    if kept.len() > MAX {
        format!("{} + {} more...", kept[..MAX].join(", "), kept.len() - MAX)
    } else {
        kept.join(", ")
    }
}

/// A route's path condition as istioctl writes it (`/api*`, `/exact`, `regex ^/v[0-9]`,
/// `PathPrefix:/get`), then its header and query conditions in brackets.
pub fn describe_route_match(m: Option<&RouteMatch>) -> String {
    let Some(m) = m else { return String::new() };
    let mut out = describe_path(m);
    let conds: Vec<String> = m
        .headers
        .iter()
        .map(describe_header)
        .chain(m.query_parameters.iter().map(describe_query))
        .collect();
    if !conds.is_empty() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&format!("[{}]", conds.join(", ")));
    }
    out
}

/// Only the path condition (istioctl's `describeMatch`).
pub fn describe_path(m: &RouteMatch) -> String {
    match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => format!("{p}*"),
        Some(PathSpecifier::PathSeparatedPrefix(p)) => format!("PathPrefix:{p}"),
        Some(PathSpecifier::Path(p)) => p.clone(),
        Some(PathSpecifier::SafeRegex(r)) => format!("regex {}", r.regex),
        Some(PathSpecifier::ConnectMatcher(_)) => "CONNECT".into(),
        Some(PathSpecifier::PathMatchPolicy(p)) => format!("policy {}", p.name),
        None => String::new(),
    }
}

fn describe_string(name: &str, m: &StringMatcher) -> String {
    let case = if m.ignore_case { " (any case)" } else { "" };
    let cond = match &m.match_pattern {
        Some(MatchPattern::Exact(v)) => format!("{name}={v}"),
        Some(MatchPattern::Prefix(v)) => format!("{name}={v}*"),
        Some(MatchPattern::Suffix(v)) => format!("{name}=*{v}"),
        Some(MatchPattern::Contains(v)) => format!("{name}=*{v}*"),
        Some(MatchPattern::SafeRegex(r)) => format!("{name}~{}", r.regex),
        Some(MatchPattern::Custom(c)) => format!("{name} {}", c.name),
        None => name.to_string(),
    };
    format!("{cond}{case}")
}

// The deprecated matchers are still what some control planes send, and a dump shows them.
#[allow(deprecated)]
fn describe_header(h: &HeaderMatcher) -> String {
    let name = &h.name;
    let cond = match &h.header_match_specifier {
        Some(HeaderMatchSpecifier::StringMatch(m)) => describe_string(name, m),
        Some(HeaderMatchSpecifier::ExactMatch(v)) => format!("{name}={v}"),
        Some(HeaderMatchSpecifier::PrefixMatch(v)) => format!("{name}={v}*"),
        Some(HeaderMatchSpecifier::SuffixMatch(v)) => format!("{name}=*{v}"),
        Some(HeaderMatchSpecifier::ContainsMatch(v)) => format!("{name}=*{v}*"),
        Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => format!("{name}~{}", r.regex),
        Some(HeaderMatchSpecifier::RangeMatch(r)) => format!("{name} in [{},{})", r.start, r.end),
        Some(HeaderMatchSpecifier::PresentMatch(true)) | None => name.clone(),
        Some(HeaderMatchSpecifier::PresentMatch(false)) => format!("no {name}"),
    };
    if h.invert_match {
        format!("!{cond}")
    } else {
        cond
    }
}

fn describe_query(q: &QueryParameterMatcher) -> String {
    let name = format!("?{}", q.name);
    match &q.query_parameter_match_specifier {
        Some(QueryParameterMatchSpecifier::StringMatch(m)) => describe_string(&name, m),
        Some(QueryParameterMatchSpecifier::PresentMatch(_)) | None => name,
    }
}

/// istioctl's inline-route summary for a listener (`describeRouteConfig`): the cluster
/// when a single catch-all route forwards everything, else each virtual host's matches.
pub fn describe_inline(rc: &RouteConfiguration) -> String {
    if let [vh] = rc.virtual_hosts.as_slice()
        && vh.domains == ["*"]
        && let [r] = vh.routes.as_slice()
        && matches!(r.r#match.as_ref().and_then(|m| m.path_specifier.as_ref()), Some(PathSpecifier::Prefix(p)) if p == "/")
        && let Some(route::Action::Route(a)) = &r.action
        && let Some(route_action::ClusterSpecifier::Cluster(c)) = &a.cluster_specifier
    {
        return cluster_destination(c);
    }
    let vhosts: Vec<String> = rc.virtual_hosts.iter().map(describe_vhost).collect();
    format!("Inline Route: {}", vhosts.join("; "))
}

fn describe_vhost(vh: &VirtualHost) -> String {
    let routes: Vec<String> = vh
        .routes
        .iter()
        .map(|r| r.r#match.as_ref().map(describe_path).unwrap_or_default())
        .collect();
    if vh.domains == ["*"] {
        routes.join(", ")
    } else {
        format!("{} {}", vh.domains.join("/"), routes.join(", "))
    }
}

/// `Cluster: outbound|...`, or just the name of Istio's special clusters
/// (`PassthroughCluster`, `BlackHoleCluster`, `InboundPassthroughCluster`).
pub fn cluster_destination(cluster: &str) -> String {
    if cluster.contains("Cluster") {
        cluster.to_string()
    } else {
        format!("Cluster: {cluster}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn domains_like_istioctl() {
        assert_eq!(describe_domains(&strings(&["*"])), "*");
        assert_eq!(
            describe_domains(&strings(&[
                "reviews.default.svc.cluster.local",
                "reviews.default.svc.cluster.local:9080",
                "reviews",
                "reviews:9080",
                "reviews.default.svc",
                "reviews.default",
                "10.251.0.12",
                "10.251.0.12:9080",
            ])),
            "reviews, reviews.default + 1 more..."
        );
        assert_eq!(
            describe_domains(&strings(&["a.example.com", "a.example.com:80"])),
            "a.example.com"
        );
        assert_eq!(
            describe_domains(&strings(&[
                "[fd00:10:96::7fc7]",
                "[fd00:10:96::7fc7]:80",
                "x"
            ])),
            "[fd00:10:96::7fc7], x"
        );
    }

    #[test]
    fn matches_with_headers() {
        let m: RouteMatch = crate::envoy::decode(&serde_json::json!({
            "prefix": "/",
            "headers": [{"name": "end-user", "string_match": {"exact": "jason"}},
                        {"name": "x-canary", "present_match": true, "invert_match": true}],
            "query_parameters": [{"name": "v", "string_match": {"prefix": "2"}}]
        }))
        .unwrap();
        assert_eq!(
            describe_route_match(Some(&m)),
            "/* [end-user=jason, !x-canary, ?v=2*]"
        );
        let m: RouteMatch =
            crate::envoy::decode(&serde_json::json!({"safe_regex": {"regex": "^/v[0-9]+"}}))
                .unwrap();
        assert_eq!(describe_route_match(Some(&m)), "regex ^/v[0-9]+");
    }
}
