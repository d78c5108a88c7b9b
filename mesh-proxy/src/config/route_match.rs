//! Precompiled request matchers for routes: the path specifier, header and query
//! parameter matchers, Envoy's `StringMatcher`, runtime fractions, and the virtual-host
//! domain table. Regexes are compiled once here; matching on the request path does no
//! allocation except for case-insensitive string comparisons on header values.

// Envoy still honours deprecated fields (header matcher variants, `append`,
// `total_weight`, ...); configs from older control planes use them, so we read them too.
#![allow(deprecated)]

use std::collections::HashMap;

use envoy_types::pb::envoy::{
    config::{core::v3::RuntimeFractionalPercent, route::v3 as rpb},
    r#type::{
        matcher::v3::{
            RegexMatcher, StringMatcher as PbStringMatcher, string_matcher::MatchPattern,
        },
        v3::FractionalPercent,
    },
};
use http::{HeaderMap, HeaderName};
use regex::Regex;

use super::ConfigError;

/// Compiles an Envoy `RegexMatcher` (RE2 syntax) for a full match, as Envoy's
/// `safe_regex` matches the whole input.
pub fn full_regex(m: &RegexMatcher, field: &str) -> Result<Regex, ConfigError> {
    if m.regex.is_empty() {
        return Err(ConfigError::field(field, "regex must not be empty"));
    }
    Regex::new(&format!("^(?:{})$", m.regex))
        .map_err(|e| ConfigError::field(field, format!("invalid regex {:?}: {e}", m.regex)))
}

/// Compiles a regex for searching (rewrites substitute every match, as RE2's GlobalReplace).
pub fn search_regex(m: &RegexMatcher, field: &str) -> Result<Regex, ConfigError> {
    if m.regex.is_empty() {
        return Err(ConfigError::field(field, "regex must not be empty"));
    }
    Regex::new(&m.regex)
        .map_err(|e| ConfigError::field(field, format!("invalid regex {:?}: {e}", m.regex)))
}

/// Envoy's `type.matcher.v3.StringMatcher`.
#[derive(Debug, Clone)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub struct StringMatcher {
    pub kind: StringMatch,
    /// Lowercased patterns, compared to the lowercased input (not applied to regex, as Envoy).
    pub ignore_case: bool,
}

impl StringMatcher {
    pub fn try_from_proto(m: &PbStringMatcher, field: &str) -> Result<Self, ConfigError> {
        let lower = |s: &String| {
            if m.ignore_case {
                s.to_ascii_lowercase()
            } else {
                s.clone()
            }
        };
        let kind = match &m.match_pattern {
            Some(MatchPattern::Exact(s)) => StringMatch::Exact(lower(s)),
            Some(MatchPattern::Prefix(s)) => StringMatch::Prefix(lower(s)),
            Some(MatchPattern::Suffix(s)) => StringMatch::Suffix(lower(s)),
            Some(MatchPattern::Contains(s)) => StringMatch::Contains(lower(s)),
            Some(MatchPattern::SafeRegex(r)) => {
                StringMatch::Regex(full_regex(r, &format!("{field}.safe_regex"))?)
            }
            Some(MatchPattern::Custom(c)) => {
                return Err(ConfigError::field(
                    format!("{field}.custom"),
                    format!(
                        "custom string matcher extension {:?} is not supported",
                        c.name
                    ),
                ));
            }
            None => return Err(ConfigError::field(field, "a match pattern is required")),
        };
        Ok(StringMatcher {
            kind,
            ignore_case: m.ignore_case,
        })
    }

    pub fn matches(&self, value: &str) -> bool {
        if let StringMatch::Regex(r) = &self.kind {
            return r.is_match(value);
        }
        if self.ignore_case && value.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.matches_cased(&value.to_ascii_lowercase());
        }
        self.matches_cased(value)
    }

    fn matches_cased(&self, value: &str) -> bool {
        match &self.kind {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(s) => value.starts_with(s.as_str()),
            StringMatch::Suffix(s) => value.ends_with(s.as_str()),
            StringMatch::Contains(s) => value.contains(s.as_str()),
            StringMatch::Regex(r) => r.is_match(value),
        }
    }
}

/// The route's path specifier.
#[derive(Debug, Clone)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(Regex),
    /// Prefix that must be followed by `/` or the end of the path.
    SeparatedPrefix(String),
}

impl PathMatch {
    /// Length of the matched prefix, for `prefix_rewrite`; `None` when no match.
    /// `path` excludes the query string.
    pub fn match_len(&self, path: &str, case_sensitive: bool) -> Option<usize> {
        let starts = |p: &str| {
            if case_sensitive {
                path.starts_with(p)
            } else {
                path.len() >= p.len()
                    && path.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
            }
        };
        match self {
            PathMatch::Prefix(p) => starts(p).then_some(p.len()),
            PathMatch::Exact(p) => {
                let eq = if case_sensitive {
                    path == p
                } else {
                    path.eq_ignore_ascii_case(p)
                };
                eq.then_some(p.len())
            }
            PathMatch::Regex(r) => r.is_match(path).then_some(path.len()),
            PathMatch::SeparatedPrefix(p) => (starts(p)
                && matches!(path.as_bytes().get(p.len()), None | Some(b'/')))
            .then_some(p.len()),
        }
    }
}

#[derive(Debug, Clone)]
pub enum HeaderMatch {
    Exact(String),
    Regex(Regex),
    /// `[start, end)` on the value parsed as a signed integer.
    Range(i64, i64),
    Present(bool),
    String(StringMatcher),
}

#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    pub name: HeaderName,
    /// Pseudo headers (`:method`, `:path`, `:authority`, `:scheme`) are matched by the
    /// router against the request line; this records which.
    pub pseudo: Option<Pseudo>,
    pub kind: HeaderMatch,
    pub invert: bool,
    pub treat_missing_as_empty: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pseudo {
    Method,
    Path,
    Authority,
    Scheme,
}

impl HeaderMatcher {
    pub fn try_from_proto(m: &rpb::HeaderMatcher, field: &str) -> Result<Self, ConfigError> {
        use rpb::header_matcher::HeaderMatchSpecifier as S;
        let lname = m.name.to_ascii_lowercase();
        let pseudo = match lname.as_str() {
            ":method" => Some(Pseudo::Method),
            ":path" => Some(Pseudo::Path),
            ":authority" => Some(Pseudo::Authority),
            ":scheme" => Some(Pseudo::Scheme),
            n if n.starts_with(':') => {
                return Err(ConfigError::field(
                    format!("{field}.name"),
                    format!("unknown pseudo header {:?}", m.name),
                ));
            }
            _ => None,
        };
        let name = if pseudo.is_some() {
            HeaderName::from_static("x-mesh-pseudo")
        } else {
            HeaderName::from_bytes(lname.as_bytes()).map_err(|_| {
                ConfigError::field(
                    format!("{field}.name"),
                    format!("invalid header name {:?}", m.name),
                )
            })?
        };
        let kind = match &m.header_match_specifier {
            Some(S::ExactMatch(s)) => HeaderMatch::Exact(s.clone()),
            Some(S::SafeRegexMatch(r)) => {
                HeaderMatch::Regex(full_regex(r, &format!("{field}.safe_regex_match"))?)
            }
            Some(S::RangeMatch(r)) => HeaderMatch::Range(r.start, r.end),
            Some(S::PresentMatch(p)) => HeaderMatch::Present(*p),
            Some(S::PrefixMatch(s)) => HeaderMatch::String(StringMatcher {
                kind: StringMatch::Prefix(s.clone()),
                ignore_case: false,
            }),
            Some(S::SuffixMatch(s)) => HeaderMatch::String(StringMatcher {
                kind: StringMatch::Suffix(s.clone()),
                ignore_case: false,
            }),
            Some(S::ContainsMatch(s)) => HeaderMatch::String(StringMatcher {
                kind: StringMatch::Contains(s.clone()),
                ignore_case: false,
            }),
            Some(S::StringMatch(s)) => HeaderMatch::String(StringMatcher::try_from_proto(
                s,
                &format!("{field}.string_match"),
            )?),
            // No specifier: Envoy matches when the header is present.
            None => HeaderMatch::Present(true),
        };
        Ok(HeaderMatcher {
            name,
            pseudo,
            kind,
            invert: m.invert_match,
            treat_missing_as_empty: m.treat_missing_header_as_empty,
        })
    }

    /// Matches against a header's value; `None` when absent. Repeated headers are joined
    /// with `,` by the caller, as Envoy does.
    pub fn matches_value(&self, value: Option<&str>) -> bool {
        let value = match value {
            None if self.treat_missing_as_empty => Some(""),
            v => v,
        };
        let result = match (&self.kind, value) {
            (HeaderMatch::Present(want), v) => {
                // `present_match: false` matches an absent header; invert flips both.
                return (v.is_some() == *want) != self.invert;
            }
            (_, None) => return false,
            (HeaderMatch::Exact(s), Some(v)) => v == s,
            (HeaderMatch::Regex(r), Some(v)) => r.is_match(v),
            (HeaderMatch::Range(start, end), Some(v)) => {
                v.parse::<i64>().is_ok_and(|n| n >= *start && n < *end)
            }
            (HeaderMatch::String(m), Some(v)) => m.matches(v),
        };
        result != self.invert
    }

    /// Matches against a request's headers (pseudo headers are resolved by the caller).
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter();
        let Some(first) = values.next() else {
            return self.matches_value(None);
        };
        let Some(second) = values.next() else {
            return self.matches_value(Some(first.to_str().unwrap_or("")));
        };
        let mut joined = String::new();
        joined.push_str(first.to_str().unwrap_or(""));
        for v in std::iter::once(second).chain(values) {
            joined.push(',');
            joined.push_str(v.to_str().unwrap_or(""));
        }
        self.matches_value(Some(&joined))
    }
}

#[derive(Debug, Clone)]
pub enum QueryMatch {
    Present(bool),
    String(StringMatcher),
    Any,
}

#[derive(Debug, Clone)]
pub struct QueryParamMatcher {
    pub name: String,
    pub kind: QueryMatch,
}

impl QueryParamMatcher {
    pub fn try_from_proto(
        m: &rpb::QueryParameterMatcher,
        field: &str,
    ) -> Result<Self, ConfigError> {
        use rpb::query_parameter_matcher::QueryParameterMatchSpecifier as S;
        if m.name.is_empty() {
            return Err(ConfigError::field(
                format!("{field}.name"),
                "must not be empty",
            ));
        }
        let kind = match &m.query_parameter_match_specifier {
            Some(S::PresentMatch(p)) => QueryMatch::Present(*p),
            Some(S::StringMatch(s)) => QueryMatch::String(StringMatcher::try_from_proto(
                s,
                &format!("{field}.string_match"),
            )?),
            None => QueryMatch::Any,
        };
        Ok(QueryParamMatcher {
            name: m.name.clone(),
            kind,
        })
    }

    /// Envoy's semantics: the first value of the (decoded) parameter is matched; an
    /// absent parameter never matches.
    pub fn matches(&self, query: Option<&str>) -> bool {
        let Some(query) = query else { return false };
        let Some(value) = form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == &self.name)
            .map(|(_, v)| v)
        else {
            return false;
        };
        match &self.kind {
            QueryMatch::Present(p) => *p,
            QueryMatch::Any => true,
            QueryMatch::String(m) => m.matches(&value),
        }
    }
}

/// A fraction of requests (`runtime_fraction`): we have no runtime layer, so the default
/// value is in force, as in an Envoy with no runtime overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fraction {
    pub numerator: u64,
    pub denominator: u64,
}

impl Fraction {
    pub fn from_proto(p: &FractionalPercent, field: &str) -> Result<Self, ConfigError> {
        let denominator = match p.denominator {
            0 => 100,
            1 => 10_000,
            2 => 1_000_000,
            d => {
                return Err(ConfigError::field(
                    format!("{field}.denominator"),
                    format!("unknown denominator {d}"),
                ));
            }
        };
        Ok(Fraction {
            numerator: u64::from(p.numerator).min(denominator),
            denominator,
        })
    }

    pub fn from_runtime(p: &RuntimeFractionalPercent, field: &str) -> Result<Self, ConfigError> {
        match &p.default_value {
            Some(v) => Fraction::from_proto(v, &format!("{field}.default_value")),
            None => Err(ConfigError::field(
                format!("{field}.default_value"),
                "is required",
            )),
        }
    }

    /// Envoy's `featureEnabled(random)`: `random % denominator < numerator`.
    pub fn enabled(&self, random: u64) -> bool {
        random % self.denominator < self.numerator
    }
}

/// Virtual-host lookup by host, precomputed as Envoy does: exact domains in a map,
/// `*.suffix` and `prefix*` wildcards grouped by length (longest first), then `*`.
#[derive(Debug, Clone, Default)]
pub struct DomainTable {
    exact: HashMap<String, usize>,
    /// (suffix length, suffix -> vhost), longest first. `*.foo.com` stores `.foo.com`.
    suffixes: Vec<(usize, HashMap<String, usize>)>,
    prefixes: Vec<(usize, HashMap<String, usize>)>,
    default: Option<usize>,
}

impl DomainTable {
    /// Adds `domain` for vhost `idx`; `Err` names a duplicate or malformed domain.
    pub fn insert(&mut self, domain: &str, idx: usize) -> Result<(), String> {
        let d = domain.to_ascii_lowercase();
        let duplicate =
            || format!("only unique values for domains are permitted: duplicate domain {domain:?}");
        if d.is_empty() {
            return Err("domain must not be empty".to_string());
        }
        if d == "*" {
            if self.default.replace(idx).is_some() {
                return Err(duplicate());
            }
            return Ok(());
        }
        let stars = d.matches('*').count();
        if stars > 1 || (stars == 1 && !d.starts_with('*') && !d.ends_with('*')) {
            return Err(format!(
                "domain {domain:?}: a wildcard may only be the first or last character"
            ));
        }
        let (table, key) = if let Some(suffix) = d.strip_prefix('*') {
            (&mut self.suffixes, suffix.to_string())
        } else if let Some(prefix) = d.strip_suffix('*') {
            (&mut self.prefixes, prefix.to_string())
        } else {
            return match self.exact.insert(d, idx) {
                Some(_) => Err(duplicate()),
                None => Ok(()),
            };
        };
        let len = key.len();
        let pos = match table.binary_search_by(|(l, _)| len.cmp(l)) {
            Ok(p) => p,
            Err(p) => {
                table.insert(p, (len, HashMap::new()));
                p
            }
        };
        match table[pos].1.insert(key, idx) {
            Some(_) => Err(duplicate()),
            None => Ok(()),
        }
    }

    /// Finds the vhost for a lowercased host. Wildcards must match at least one character.
    pub fn find(&self, host: &str) -> Option<usize> {
        if let Some(i) = self.exact.get(host) {
            return Some(*i);
        }
        for (len, map) in &self.suffixes {
            if *len < host.len()
                && let Some(i) = host.get(host.len() - len..).and_then(|s| map.get(s))
            {
                return Some(*i);
            }
        }
        for (len, map) in &self.prefixes {
            if *len < host.len()
                && let Some(i) = host.get(..*len).and_then(|s| map.get(s))
            {
                return Some(*i);
            }
        }
        self.default
    }
}

/// Strips a trailing `:port` from a host (handles `[v6]:port`), as Envoy's
/// `ignore_port_in_host_matching` / `strip_any_host_port`.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.rfind("]:") {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(domains: &[&[&str]]) -> DomainTable {
        let mut t = DomainTable::default();
        for (i, ds) in domains.iter().enumerate() {
            for d in *ds {
                t.insert(d, i).expect("valid");
            }
        }
        t
    }

    #[test]
    fn domain_precedence_is_envoys() {
        let t = table(&[
            &["*"],
            &["*.foo.com"],
            &["*.bar.foo.com"],
            &["www.foo.com", "www.foo.com:8080"],
            &["api.*"],
            &["api.foo.*"],
        ]);
        assert_eq!(t.find("www.foo.com"), Some(3));
        assert_eq!(t.find("www.foo.com:8080"), Some(3));
        // Without port stripping the port is part of the host, as in Envoy.
        assert_eq!(t.find("www.foo.com:9090"), Some(0));
        assert_eq!(t.find("a.bar.foo.com"), Some(2));
        assert_eq!(t.find("x.foo.com"), Some(1));
        // Suffix beats prefix.
        assert_eq!(t.find("api.foo.com"), Some(1));
        assert_eq!(t.find("api.foo.org"), Some(5));
        assert_eq!(t.find("api.x"), Some(4));
        // A wildcard matches at least one character.
        assert_eq!(t.find(".foo.com"), Some(0));
        assert_eq!(t.find("other"), Some(0));
    }

    #[test]
    fn duplicate_domains_are_rejected() {
        let mut t = DomainTable::default();
        t.insert("a.com", 0).expect("first");
        assert!(t.insert("A.com", 1).is_err());
        t.insert("*", 0).expect("first default");
        assert!(t.insert("*", 1).is_err());
        assert!(t.insert("a*b", 1).is_err());
    }

    #[test]
    fn port_stripping() {
        assert_eq!(strip_port("foo.com:80"), "foo.com");
        assert_eq!(strip_port("foo.com"), "foo.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn path_matches() {
        assert_eq!(
            PathMatch::Prefix("/api".into()).match_len("/api/v1", true),
            Some(4)
        );
        assert_eq!(
            PathMatch::Prefix("/API".into()).match_len("/api/v1", true),
            None
        );
        assert_eq!(
            PathMatch::Prefix("/API".into()).match_len("/api/v1", false),
            Some(4)
        );
        assert_eq!(
            PathMatch::SeparatedPrefix("/api".into()).match_len("/api", true),
            Some(4)
        );
        assert_eq!(
            PathMatch::SeparatedPrefix("/api".into()).match_len("/api/x", true),
            Some(4)
        );
        assert_eq!(
            PathMatch::SeparatedPrefix("/api".into()).match_len("/apix", true),
            None
        );
        assert_eq!(PathMatch::Exact("/a".into()).match_len("/a/", true), None);
    }

    #[test]
    fn header_match_semantics() {
        let m = |kind, invert| HeaderMatcher {
            name: HeaderName::from_static("x"),
            pseudo: None,
            kind,
            invert,
            treat_missing_as_empty: false,
        };
        assert!(m(HeaderMatch::Range(10, 20), false).matches_value(Some("10")));
        assert!(!m(HeaderMatch::Range(10, 20), false).matches_value(Some("20")));
        assert!(!m(HeaderMatch::Range(10, 20), false).matches_value(Some("x")));
        assert!(m(HeaderMatch::Present(false), false).matches_value(None));
        assert!(!m(HeaderMatch::Present(true), false).matches_value(None));
        assert!(m(HeaderMatch::Present(true), true).matches_value(None));
        assert!(
            !m(HeaderMatch::Exact("a".into()), true).matches_value(None),
            "absent never matches a value matcher, even inverted"
        );
        assert!(m(HeaderMatch::Exact("a".into()), true).matches_value(Some("b")));
        let mut headers = HeaderMap::new();
        headers.append("x", "a".parse().expect("v"));
        headers.append("x", "b".parse().expect("v"));
        assert!(m(HeaderMatch::Exact("a,b".into()), false).matches(&headers));
    }

    #[test]
    fn query_semantics() {
        let q = |kind| QueryParamMatcher {
            name: "debug".into(),
            kind,
        };
        assert!(q(QueryMatch::Any).matches(Some("a=1&debug=")));
        assert!(!q(QueryMatch::Any).matches(Some("a=1")));
        assert!(!q(QueryMatch::Present(false)).matches(Some("debug=1")));
        let exact = StringMatcher {
            kind: StringMatch::Exact("a b".into()),
            ignore_case: false,
        };
        assert!(q(QueryMatch::String(exact)).matches(Some("debug=a%20b&debug=c")));
    }

    proptest::proptest! {
        #[test]
        fn exact_domain_always_wins(host in "[a-z]{1,8}\\.[a-z]{1,8}\\.com") {
            let mut t = DomainTable::default();
            t.insert("*", 0).expect("ok");
            t.insert("*.com", 1).expect("ok");
            t.insert(&host, 2).expect("ok");
            proptest::prop_assert_eq!(t.find(&host), Some(2));
            let other = format!("x{host}");
            proptest::prop_assert_eq!(t.find(&other), Some(1));
        }

        #[test]
        fn separated_prefix_is_a_prefix(path in "/[a-z/]{0,12}", prefix in "/[a-z]{0,4}") {
            if let Some(n) = PathMatch::SeparatedPrefix(prefix.clone()).match_len(&path, true) {
                proptest::prop_assert!(PathMatch::Prefix(prefix).match_len(&path, true) == Some(n));
            }
        }
    }
}
