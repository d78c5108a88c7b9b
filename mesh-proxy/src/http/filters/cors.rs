//! `envoy.filters.http.cors`, with Envoy's semantics.
//!
//! The policies of a request are its per-route configs (`CorsPolicy` in
//! `typed_per_filter_config`), most specific first (weighted cluster, route, virtual
//! host, route configuration), or, when there are none, the deprecated `cors` fields of
//! the route and virtual host. Each attribute is taken from the first policy that sets
//! it; `filter_enabled` / `shadow_enabled` come from the first policy. A request with an
//! allowed `Origin` gets `access-control-allow-origin` (and credentials / expose headers)
//! on its response; a preflight (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) is answered here with 200, unless the origin is not
//! allowed and `forward_not_matching_preflights` (default true) sends it upstream.

use envoy_types::pb::envoy::{
    config::{
        core::v3::RuntimeFractionalPercent,
        route::v3::{CorsPolicy as PbRouteCors, cors_policy::EnabledSpecifier},
    },
    extensions::filters::http::cors::v3::CorsPolicy as PbCors,
    r#type::matcher::v3::StringMatcher as PbStringMatcher,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, header};

use crate::{
    config::{
        ConfigError,
        route_match::{Fraction, StringMatcher},
    },
    http::body::ResponseBody,
};

pub const FILTER_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors";
pub const POLICY_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy";

static ACCESS_CONTROL_REQUEST_METHOD: HeaderName =
    HeaderName::from_static("access-control-request-method");
static ACCESS_CONTROL_REQUEST_HEADERS: HeaderName =
    HeaderName::from_static("access-control-request-headers");
static ACCESS_CONTROL_REQUEST_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-request-private-network");
static ACCESS_CONTROL_ALLOW_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-allow-private-network");

/// One CORS policy (per-route filter config or a deprecated route / vhost `cors`).
#[derive(Debug, Clone, Default)]
pub struct CorsPolicy {
    pub allow_origins: Vec<StringMatcher>,
    pub allow_methods: Option<HeaderValue>,
    pub allow_headers: Option<HeaderValue>,
    pub expose_headers: Option<HeaderValue>,
    pub max_age: Option<HeaderValue>,
    pub allow_credentials: Option<bool>,
    pub allow_private_network_access: Option<bool>,
    pub forward_not_matching_preflights: Option<bool>,
    /// `filter_enabled`; unset means enabled.
    pub filter_enabled: Option<Fraction>,
    /// `shadow_enabled`; unset means off.
    pub shadow_enabled: Option<Fraction>,
}

fn value(s: &str, field: &str) -> Result<Option<HeaderValue>, ConfigError> {
    if s.is_empty() {
        return Ok(None);
    }
    HeaderValue::from_str(s)
        .map(Some)
        .map_err(|_| ConfigError::field(field, format!("{s:?} is not a valid header value")))
}

fn runtime(
    p: &Option<RuntimeFractionalPercent>,
    field: &str,
) -> Result<Option<Fraction>, ConfigError> {
    p.as_ref()
        .map(|f| Fraction::from_runtime(f, field))
        .transpose()
}

struct Common<'a> {
    origins: &'a [PbStringMatcher],
    allow_methods: &'a str,
    allow_headers: &'a str,
    expose_headers: &'a str,
    max_age: &'a str,
}

fn common(c: Common<'_>) -> Result<CorsPolicy, ConfigError> {
    let mut allow_origins = Vec::with_capacity(c.origins.len());
    for (i, m) in c.origins.iter().enumerate() {
        allow_origins.push(StringMatcher::try_from_proto(
            m,
            &format!("allow_origin_string_match[{i}]"),
        )?);
    }
    Ok(CorsPolicy {
        allow_origins,
        allow_methods: value(c.allow_methods, "allow_methods")?,
        allow_headers: value(c.allow_headers, "allow_headers")?,
        expose_headers: value(c.expose_headers, "expose_headers")?,
        max_age: value(c.max_age, "max_age")?,
        ..CorsPolicy::default()
    })
}

impl CorsPolicy {
    /// The filter's per-route `CorsPolicy`.
    pub fn try_from_proto(p: &PbCors) -> Result<Self, ConfigError> {
        let mut c = common(Common {
            origins: &p.allow_origin_string_match,
            allow_methods: &p.allow_methods,
            allow_headers: &p.allow_headers,
            expose_headers: &p.expose_headers,
            max_age: &p.max_age,
        })?;
        c.allow_credentials = p.allow_credentials.as_ref().map(|b| b.value);
        c.allow_private_network_access = p.allow_private_network_access.as_ref().map(|b| b.value);
        c.forward_not_matching_preflights =
            p.forward_not_matching_preflights.as_ref().map(|b| b.value);
        c.filter_enabled = runtime(&p.filter_enabled, "filter_enabled")?;
        c.shadow_enabled = runtime(&p.shadow_enabled, "shadow_enabled")?;
        Ok(c)
    }

    /// The deprecated `cors` field of a route action or virtual host.
    pub fn try_from_route_proto(p: &PbRouteCors) -> Result<Self, ConfigError> {
        #[allow(deprecated)]
        let origins = &p.allow_origin_string_match;
        let mut c = common(Common {
            origins,
            allow_methods: &p.allow_methods,
            allow_headers: &p.allow_headers,
            expose_headers: &p.expose_headers,
            max_age: &p.max_age,
        })?;
        c.allow_credentials = p.allow_credentials.as_ref().map(|b| b.value);
        c.allow_private_network_access = p.allow_private_network_access.as_ref().map(|b| b.value);
        c.forward_not_matching_preflights =
            p.forward_not_matching_preflights.as_ref().map(|b| b.value);
        c.filter_enabled = match &p.enabled_specifier {
            Some(EnabledSpecifier::FilterEnabled(f)) => {
                Some(Fraction::from_runtime(f, "filter_enabled")?)
            }
            None => None,
        };
        c.shadow_enabled = runtime(&p.shadow_enabled, "shadow_enabled")?;
        Ok(c)
    }
}

/// The policies of one request, most specific first.
pub struct Policies<'a>(pub &'a [&'a CorsPolicy]);

impl Policies<'_> {
    fn first<T>(&self, f: impl Fn(&CorsPolicy) -> Option<T>) -> Option<T> {
        self.0.iter().find_map(|p| f(p))
    }

    fn enabled(&self, random: u64) -> bool {
        self.0
            .first()
            .is_some_and(|p| p.filter_enabled.is_none_or(|f| f.enabled(random)))
    }

    fn shadow_enabled(&self, random: u64) -> bool {
        self.0
            .first()
            .is_some_and(|p| p.shadow_enabled.is_some_and(|f| f.enabled(random)))
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        let Some(p) = self.0.iter().find(|p| !p.allow_origins.is_empty()) else {
            return false;
        };
        p.allow_origins
            .iter()
            .any(|m| m.matches("*") || m.matches(origin))
    }

    fn credentials(&self) -> bool {
        self.first(|p| p.allow_credentials).unwrap_or(false)
    }
}

/// What the response path adds for a CORS request with an allowed origin.
#[derive(Debug, Clone)]
pub struct Encode {
    origin: HeaderValue,
    credentials: bool,
    expose_headers: Option<HeaderValue>,
}

impl Encode {
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, self.origin.clone());
        if self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(e) = &self.expose_headers {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
        }
    }
}

/// The filter's decision for a request.
pub enum Decision {
    /// Not a CORS request, or the filter is off: nothing to do.
    Pass,
    /// Continue to the router; `Some` adds the CORS headers to the response.
    Continue(Option<Encode>),
    /// A preflight answered here (details `cors_response`); the filter's response side
    /// then runs on it too, as in Envoy (so it carries the expose headers).
    Preflight(Box<Response<ResponseBody>>, Option<Encode>),
}

/// Runs the filter's request side. `random` draws `filter_enabled` / `shadow_enabled`.
pub fn decide(
    policies: &Policies<'_>,
    method: &Method,
    headers: &HeaderMap,
    random: u64,
) -> Decision {
    if policies.0.is_empty() {
        return Decision::Pass;
    }
    let enabled = policies.enabled(random);
    if !enabled && !policies.shadow_enabled(random) {
        return Decision::Pass;
    }
    let Some(origin) = headers.get(header::ORIGIN).filter(|o| !o.is_empty()) else {
        return Decision::Pass;
    };
    let allowed = origin.to_str().is_ok_and(|o| policies.origin_allowed(o));
    if !enabled {
        // Shadow mode: the origin is evaluated (stats) but nothing is enforced.
        return Decision::Pass;
    }
    let encode = allowed.then(|| Encode {
        origin: origin.clone(),
        credentials: policies.credentials(),
        expose_headers: policies.first(|p| p.expose_headers.clone()),
    });
    let request_method = headers
        .get(&ACCESS_CONTROL_REQUEST_METHOD)
        .filter(|v| !v.is_empty());
    let (true, Some(request_method)) = (method == Method::OPTIONS, request_method) else {
        return Decision::Continue(encode);
    };
    if !allowed
        && policies
            .first(|p| p.forward_not_matching_preflights)
            .unwrap_or(true)
    {
        return Decision::Continue(encode);
    }
    let mut resp = Response::new(ResponseBody::empty());
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    if allowed {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    }
    if policies.credentials() {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if let Some(m) = policies.first(|p| p.allow_methods.clone()) {
        let v = if m == "*" { request_method.clone() } else { m };
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    if let Some(a) = policies.first(|p| p.allow_headers.clone()) {
        let v = if a == "*" {
            headers
                .get(&ACCESS_CONTROL_REQUEST_HEADERS)
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static(""))
        } else {
            a
        };
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    if let Some(m) = policies.first(|p| p.max_age.clone()) {
        h.insert(header::ACCESS_CONTROL_MAX_AGE, m);
    }
    if policies
        .first(|p| p.allow_private_network_access)
        .unwrap_or(false)
        && headers
            .get(&ACCESS_CONTROL_REQUEST_PRIVATE_NETWORK)
            .is_some_and(|v| v == "true")
    {
        h.insert(
            &ACCESS_CONTROL_ALLOW_PRIVATE_NETWORK,
            HeaderValue::from_static("true"),
        );
    }
    Decision::Preflight(Box::new(resp), encode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::envoy_json::message_from_json;
    use serde_json::json;

    fn policy(v: serde_json::Value) -> CorsPolicy {
        let p: PbCors = message_from_json(&v).expect("valid proto json");
        CorsPolicy::try_from_proto(&p).expect("valid policy")
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    fn istio() -> CorsPolicy {
        policy(json!({
            "allow_origin_string_match": [{"exact": "https://bookinfo.example.com"}, {"safe_regex": {"regex": "https://.*\\.example\\.org"}}],
            "allow_methods": "GET,POST",
            "allow_headers": "authorization",
            "expose_headers": "x-request-id",
            "max_age": "86400",
            "allow_credentials": true,
            "filter_enabled": {"default_value": {"numerator": 100}},
            "forward_not_matching_preflights": true,
        }))
    }

    #[test]
    fn preflight_from_allowed_origin_is_answered() {
        let p = istio();
        let ps = [&p];
        let h = headers(&[
            ("origin", "https://a.example.org"),
            ("access-control-request-method", "POST"),
        ]);
        let Decision::Preflight(resp, _) = decide(&Policies(&ps), &Method::OPTIONS, &h, 0) else {
            panic!("expected a preflight reply");
        };
        let r = resp.headers();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(r["access-control-allow-origin"], "https://a.example.org");
        assert_eq!(r["access-control-allow-methods"], "GET,POST");
        assert_eq!(r["access-control-allow-headers"], "authorization");
        assert_eq!(r["access-control-max-age"], "86400");
        assert_eq!(r["access-control-allow-credentials"], "true");
        assert!(r.get("access-control-expose-headers").is_none());
    }

    #[test]
    fn simple_request_gets_headers_on_the_response() {
        let p = istio();
        let ps = [&p];
        let h = headers(&[("origin", "https://bookinfo.example.com")]);
        let Decision::Continue(Some(enc)) = decide(&Policies(&ps), &Method::GET, &h, 0) else {
            panic!("expected CORS response headers");
        };
        let mut out = HeaderMap::new();
        enc.apply(&mut out);
        assert_eq!(
            out["access-control-allow-origin"],
            "https://bookinfo.example.com"
        );
        assert_eq!(out["access-control-expose-headers"], "x-request-id");
        let bad = headers(&[("origin", "https://evil.example.com")]);
        assert!(matches!(
            decide(&Policies(&ps), &Method::GET, &bad, 0),
            Decision::Continue(None)
        ));
    }

    #[test]
    fn unmatched_preflight_is_forwarded_or_answered_bare() {
        let mut p = istio();
        let h = headers(&[
            ("origin", "https://evil.example.com"),
            ("access-control-request-method", "GET"),
        ]);
        assert!(matches!(
            decide(&Policies(&[&p]), &Method::OPTIONS, &h, 0),
            Decision::Continue(None)
        ));
        p.forward_not_matching_preflights = Some(false);
        let Decision::Preflight(resp, _) = decide(&Policies(&[&p]), &Method::OPTIONS, &h, 0) else {
            panic!("expected a bare preflight reply");
        };
        assert!(resp.headers().get("access-control-allow-origin").is_none());
        assert_eq!(resp.headers()["access-control-allow-methods"], "GET,POST");
    }

    #[test]
    fn attributes_come_from_the_most_specific_policy_that_sets_them() {
        let route = policy(json!({"allow_methods": "PUT"}));
        let vhost = policy(json!({
            "allow_origin_string_match": [{"exact": "*"}],
            "allow_methods": "GET", "allow_headers": "*", "max_age": "10",
        }));
        let h = headers(&[
            ("origin", "https://any"),
            ("access-control-request-method", "PUT"),
            ("access-control-request-headers", "x-a,x-b"),
        ]);
        let Decision::Preflight(resp, _) =
            decide(&Policies(&[&route, &vhost]), &Method::OPTIONS, &h, 0)
        else {
            panic!("expected a preflight reply");
        };
        let r = resp.headers();
        assert_eq!(
            r["access-control-allow-origin"], "https://any",
            "'*' allows all"
        );
        assert_eq!(r["access-control-allow-methods"], "PUT");
        assert_eq!(
            r["access-control-allow-headers"], "x-a,x-b",
            "'*' echoes the request"
        );
        assert_eq!(r["access-control-max-age"], "10");
    }

    #[test]
    fn disabled_and_shadow_modes_do_nothing() {
        let off = policy(json!({
            "allow_origin_string_match": [{"exact": "*"}],
            "filter_enabled": {"default_value": {"numerator": 0}},
            "shadow_enabled": {"default_value": {"numerator": 100}},
        }));
        let h = headers(&[
            ("origin", "https://x"),
            ("access-control-request-method", "GET"),
        ]);
        assert!(matches!(
            decide(&Policies(&[&off]), &Method::OPTIONS, &h, 0),
            Decision::Pass
        ));
        assert!(matches!(
            decide(&Policies(&[]), &Method::OPTIONS, &h, 0),
            Decision::Pass
        ));
    }
}
