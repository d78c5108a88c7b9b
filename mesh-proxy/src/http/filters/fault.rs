//! `envoy.filters.http.fault`: delay and abort injection with Envoy's semantics.
//!
//! The per-route config (`typed_per_filter_config`, most specific level) replaces the
//! listener-level config entirely. In order: the `max_active_faults` overflow check, the
//! `upstream_cluster`, `downstream_nodes` and `headers` conditions, then a delay (flag
//! `DI`) when its percentage hits, then an abort (flag `FI`, body `fault filter abort`)
//! when its percentage hits. Header-controlled faults (`x-envoy-fault-*`) are honoured
//! only when the config asks for them (`header_delay` / `header_abort`). The router runs
//! after this filter, so mirrored copies of a request never see a fault.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use envoy_types::pb::envoy::extensions::filters::{
    common::fault::v3::fault_delay::FaultDelaySecifier,
    http::fault::v3::{HttpFault, fault_abort::ErrorType},
};
use http::{HeaderMap, HeaderName, StatusCode};

use crate::{
    config::{
        ConfigError, duration,
        route_match::{Fraction, HeaderMatcher},
    },
    http::route_select::{RequestView, header_matches},
};

pub const TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";

static DELAY_REQUEST: HeaderName = HeaderName::from_static("x-envoy-fault-delay-request");
static DELAY_PERCENTAGE: HeaderName =
    HeaderName::from_static("x-envoy-fault-delay-request-percentage");
static ABORT_REQUEST: HeaderName = HeaderName::from_static("x-envoy-fault-abort-request");
static ABORT_GRPC_REQUEST: HeaderName = HeaderName::from_static("x-envoy-fault-abort-grpc-request");
static ABORT_PERCENTAGE: HeaderName =
    HeaderName::from_static("x-envoy-fault-abort-request-percentage");
static DOWNSTREAM_NODE: HeaderName = HeaderName::from_static("x-envoy-downstream-service-node");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelayKind {
    Fixed(Duration),
    /// `header_delay`: milliseconds from `x-envoy-fault-delay-request`.
    Header,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortKind {
    Http(StatusCode),
    /// HTTP 200 with this gRPC status (a trailers-only reply for gRPC requests).
    Grpc(u32),
    /// `header_abort`: `x-envoy-fault-abort-request` (HTTP status) or
    /// `x-envoy-fault-abort-grpc-request`.
    Header,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delay {
    pub kind: DelayKind,
    pub percentage: Fraction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abort {
    pub kind: AbortKind,
    pub percentage: Fraction,
}

/// One `HTTPFault` config (listener level or per route).
#[derive(Debug, Clone)]
pub struct FaultConfig {
    pub delay: Option<Delay>,
    pub abort: Option<Abort>,
    pub upstream_cluster: Option<String>,
    pub downstream_nodes: Vec<String>,
    pub headers: Vec<HeaderMatcher>,
    pub max_active_faults: Option<u64>,
}

/// The listener-level filter: its config and the count of requests with a fault in
/// progress (Envoy's `active_faults` gauge, which route-level configs share).
#[derive(Debug)]
pub struct FaultFilter {
    pub config: Arc<FaultConfig>,
    active: Arc<AtomicU64>,
}

impl FaultFilter {
    pub fn new(config: FaultConfig) -> Self {
        FaultFilter {
            config: Arc::new(config),
            active: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Requests with a fault in progress now.
    pub fn active_faults(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }
}

/// Holds one unit of `active_faults` until the stream ends.
pub struct ActiveFault(Arc<AtomicU64>);

impl Drop for ActiveFault {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn fraction(
    p: &Option<envoy_types::pb::envoy::r#type::v3::FractionalPercent>,
    field: &str,
) -> Result<Fraction, ConfigError> {
    match p {
        Some(p) => Fraction::from_proto(p, field),
        // Envoy reads an unset percentage as 0%: the fault never fires.
        None => Ok(Fraction {
            numerator: 0,
            denominator: 100,
        }),
    }
}

impl FaultConfig {
    pub fn try_from_proto(p: &HttpFault) -> Result<Self, ConfigError> {
        if p.response_rate_limit.is_some() {
            return Err(ConfigError::field(
                "response_rate_limit",
                "is not supported",
            ));
        }
        let delay = p
            .delay
            .as_ref()
            .map(|d| {
                let kind = match &d.fault_delay_secifier {
                    Some(FaultDelaySecifier::FixedDelay(fixed)) => {
                        let fixed = duration(fixed, "delay.fixed_delay")?;
                        if fixed.is_zero() {
                            return Err(ConfigError::field(
                                "delay.fixed_delay",
                                "must be greater than zero",
                            ));
                        }
                        DelayKind::Fixed(fixed)
                    }
                    Some(FaultDelaySecifier::HeaderDelay(_)) => DelayKind::Header,
                    None => {
                        return Err(ConfigError::field(
                            "delay",
                            "one of fixed_delay and header_delay is required",
                        ));
                    }
                };
                Ok(Delay {
                    kind,
                    percentage: fraction(&d.percentage, "delay.percentage")?,
                })
            })
            .transpose()?;
        let abort = p
            .abort
            .as_ref()
            .map(|a| {
                let kind = match a.error_type {
                    Some(ErrorType::HttpStatus(s)) => AbortKind::Http(
                        u16::try_from(s)
                            .ok()
                            .filter(|s| (200..600).contains(s))
                            .and_then(|s| StatusCode::from_u16(s).ok())
                            .ok_or_else(|| {
                                ConfigError::field(
                                    "abort.http_status",
                                    format!("{s} is not an HTTP status in [200, 600)"),
                                )
                            })?,
                    ),
                    Some(ErrorType::GrpcStatus(s)) => AbortKind::Grpc(s),
                    Some(ErrorType::HeaderAbort(_)) => AbortKind::Header,
                    None => {
                        return Err(ConfigError::field(
                            "abort",
                            "one of http_status, grpc_status and header_abort is required",
                        ));
                    }
                };
                Ok(Abort {
                    kind,
                    percentage: fraction(&a.percentage, "abort.percentage")?,
                })
            })
            .transpose()?;
        let mut headers = Vec::with_capacity(p.headers.len());
        for (i, h) in p.headers.iter().enumerate() {
            headers.push(HeaderMatcher::try_from_proto(h, &format!("headers[{i}]"))?);
        }
        // The runtime keys only name overrides of a runtime layer we do not have; with
        // no overrides Envoy uses the configured values, as here.
        Ok(FaultConfig {
            delay,
            abort,
            upstream_cluster: (!p.upstream_cluster.is_empty()).then(|| p.upstream_cluster.clone()),
            downstream_nodes: p.downstream_nodes.clone(),
            headers,
            max_active_faults: p.max_active_faults.as_ref().map(|v| u64::from(v.value)),
        })
    }
}

/// What the filter decided for a request, before any waiting.
#[derive(Debug, Default)]
pub struct Decision {
    /// Wait this long (flag `DI`), then evaluate the abort.
    pub delay: Option<Duration>,
    /// Holds `active_faults` while the fault is in progress.
    pub active: Option<ActiveFault>,
}

/// An abort to send as a local reply (flag `FI`, details `fault_filter_abort`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortReply {
    pub status: StatusCode,
    pub grpc_status: Option<u32>,
}

impl std::fmt::Debug for ActiveFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ActiveFault")
    }
}

/// A percentage from a request header, capped at the configured one (Envoy's
/// `HeaderPercentageProvider`).
fn header_percentage(headers: &HeaderMap, name: &HeaderName, configured: Fraction) -> Fraction {
    match headers
        .get(name)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        Some(n) => Fraction {
            numerator: n.min(configured.numerator),
            denominator: configured.denominator,
        },
        None => configured,
    }
}

impl FaultFilter {
    /// Evaluates the conditions and the delay for a request; `cfg` is the route's config
    /// when it has one, else the filter's own. `random` draws the percentages.
    pub fn decide(
        &self,
        cfg: &FaultConfig,
        req: &RequestView<'_>,
        cluster: Option<&str>,
        random: &mut dyn FnMut() -> u64,
    ) -> Option<Decision> {
        if cfg.delay.is_none() && cfg.abort.is_none() {
            return None;
        }
        let max = cfg.max_active_faults.unwrap_or(u64::MAX);
        if self.active.load(Ordering::Relaxed) >= max {
            return None;
        }
        if let Some(want) = &cfg.upstream_cluster
            && cluster != Some(want.as_str())
        {
            return None;
        }
        if !cfg.downstream_nodes.is_empty() {
            let node = req
                .headers
                .get(&DOWNSTREAM_NODE)
                .and_then(|v| v.to_str().ok());
            if !node.is_some_and(|n| cfg.downstream_nodes.iter().any(|d| d == n)) {
                return None;
            }
        }
        if !cfg.headers.iter().all(|h| header_matches(h, req)) {
            return None;
        }
        let mut decision = Decision::default();
        if let Some(d) = &cfg.delay {
            let pct = match d.kind {
                DelayKind::Fixed(_) => d.percentage,
                DelayKind::Header => {
                    header_percentage(req.headers, &DELAY_PERCENTAGE, d.percentage)
                }
            };
            if pct.enabled(random()) {
                let dur = match d.kind {
                    DelayKind::Fixed(f) => Some(f),
                    DelayKind::Header => req
                        .headers
                        .get(&DELAY_REQUEST)
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                        .map(Duration::from_millis),
                };
                // Envoy delays only for a positive duration.
                if let Some(dur) = dur.filter(|d| !d.is_zero()) {
                    decision.delay = Some(dur);
                    decision.active = Some(self.activate());
                }
            }
        }
        Some(decision)
    }

    fn activate(&self) -> ActiveFault {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveFault(self.active.clone())
    }

    /// The abort for a request, evaluated after the delay (if any) as Envoy does.
    pub fn abort(
        &self,
        cfg: &FaultConfig,
        headers: &HeaderMap,
        decision: &mut Decision,
        random: &mut dyn FnMut() -> u64,
    ) -> Option<AbortReply> {
        let a = cfg.abort.as_ref()?;
        let pct = match a.kind {
            AbortKind::Header => header_percentage(headers, &ABORT_PERCENTAGE, a.percentage),
            _ => a.percentage,
        };
        if !pct.enabled(random()) {
            return None;
        }
        let reply = match a.kind {
            AbortKind::Http(status) => AbortReply {
                status,
                grpc_status: None,
            },
            AbortKind::Grpc(g) => AbortReply {
                status: StatusCode::OK,
                grpc_status: Some(g),
            },
            AbortKind::Header => {
                let http = headers
                    .get(&ABORT_REQUEST)
                    .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
                    .filter(|s| (200..600).contains(s))
                    .and_then(|s| StatusCode::from_u16(s).ok());
                match http {
                    Some(status) => AbortReply {
                        status,
                        grpc_status: None,
                    },
                    None => {
                        let grpc = headers
                            .get(&ABORT_GRPC_REQUEST)
                            .and_then(|v| v.to_str().ok()?.parse::<u32>().ok())?;
                        AbortReply {
                            status: StatusCode::OK,
                            grpc_status: Some(grpc),
                        }
                    }
                }
            }
        };
        if decision.active.is_none() {
            decision.active = Some(self.activate());
        }
        Some(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Uri};
    use mesh_api::envoy_json::message_from_json;
    use serde_json::json;

    fn config(v: serde_json::Value) -> Result<FaultConfig, ConfigError> {
        let p: HttpFault = message_from_json(&v).expect("valid proto json");
        FaultConfig::try_from_proto(&p)
    }

    fn view<'a>(headers: &'a HeaderMap, method: &'a Method, uri: &'a Uri) -> RequestView<'a> {
        RequestView {
            method,
            uri,
            headers,
            authority: "svc",
            scheme: "http",
            random: 0,
        }
    }

    #[test]
    fn parses_istio_fault_and_rejects_bad_values() {
        let c = config(json!({
            "delay": {"fixed_delay": "1.5s", "percentage": {"numerator": 50}},
            "abort": {"http_status": 503, "percentage": {"numerator": 125000, "denominator": "MILLION"}},
        }))
        .expect("valid");
        assert_eq!(
            c.delay,
            Some(Delay {
                kind: DelayKind::Fixed(Duration::from_millis(1500)),
                percentage: Fraction {
                    numerator: 50,
                    denominator: 100
                }
            })
        );
        assert_eq!(
            c.abort.map(|a| a.kind),
            Some(AbortKind::Http(StatusCode::SERVICE_UNAVAILABLE))
        );
        let e = config(json!({"abort": {"http_status": 700}})).expect_err("bad status");
        assert_eq!(e.field, "abort.http_status");
        let e = config(json!({"abort": {"percentage": {"numerator": 1}}})).expect_err("no type");
        assert_eq!(e.field, "abort");
        let e = config(json!({"response_rate_limit": {"fixed_limit": {"limit_kbps": 1}}}))
            .expect_err("unsupported");
        assert_eq!(e.field, "response_rate_limit");
    }

    #[test]
    fn percentages_conditions_and_overflow() {
        let f = FaultFilter::new(
            config(json!({
                "abort": {"grpc_status": 14, "percentage": {"numerator": 30}},
                "headers": [{"name": "x-user", "string_match": {"exact": "tester"}}],
                "max_active_faults": 1,
            }))
            .expect("valid"),
        );
        let (m, u) = (Method::GET, Uri::from_static("/"));
        let mut h = HeaderMap::new();
        assert!(
            f.decide(&f.config, &view(&h, &m, &u), None, &mut || 0)
                .is_none(),
            "header condition not met"
        );
        h.insert("x-user", "tester".parse().expect("value"));
        let mut d = f
            .decide(&f.config, &view(&h, &m, &u), None, &mut || 0)
            .expect("applies");
        assert_eq!(d.delay, None);
        // 30 % => random % 100 < 30.
        assert_eq!(f.abort(&f.config, &h, &mut d, &mut || 30), None);
        let reply = f.abort(&f.config, &h, &mut d, &mut || 129).expect("abort");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.grpc_status, Some(14));
        assert_eq!(f.active_faults(), 1);
        // max_active_faults reached: no fault for the next request.
        assert!(
            f.decide(&f.config, &view(&h, &m, &u), None, &mut || 0)
                .is_none()
        );
        drop(d);
        assert_eq!(f.active_faults(), 0);
    }

    #[test]
    fn header_faults_only_when_configured() {
        let fixed = FaultFilter::new(
            config(json!({"abort": {"http_status": 500, "percentage": {"numerator": 100}}}))
                .expect("valid"),
        );
        let mut h = HeaderMap::new();
        h.insert("x-envoy-fault-abort-request", "418".parse().expect("value"));
        h.insert("x-envoy-fault-delay-request", "200".parse().expect("value"));
        let (m, u) = (Method::GET, Uri::from_static("/"));
        let mut d = fixed
            .decide(&fixed.config, &view(&h, &m, &u), None, &mut || 0)
            .expect("applies");
        assert_eq!(d.delay, None, "no header_delay configured");
        assert_eq!(
            fixed
                .abort(&fixed.config, &h, &mut d, &mut || 0)
                .map(|r| r.status),
            Some(StatusCode::INTERNAL_SERVER_ERROR),
            "the header does not override a fixed abort"
        );
        let by_header = FaultFilter::new(
            config(json!({
                "delay": {"header_delay": {}, "percentage": {"numerator": 100}},
                "abort": {"header_abort": {}, "percentage": {"numerator": 100}},
            }))
            .expect("valid"),
        );
        let mut d = by_header
            .decide(&by_header.config, &view(&h, &m, &u), None, &mut || 0)
            .expect("applies");
        assert_eq!(d.delay, Some(Duration::from_millis(200)));
        assert_eq!(
            by_header
                .abort(&by_header.config, &h, &mut d, &mut || 0)
                .map(|r| r.status),
            Some(StatusCode::IM_A_TEAPOT)
        );
        // The percentage header can lower the configured percentage, not raise it.
        h.insert(
            "x-envoy-fault-abort-request-percentage",
            "0".parse().expect("value"),
        );
        assert_eq!(
            by_header.abort(&by_header.config, &h, &mut d, &mut || 0),
            None
        );
    }

    #[test]
    fn upstream_cluster_and_downstream_nodes() {
        let f = FaultFilter::new(
            config(json!({
                "abort": {"http_status": 503, "percentage": {"numerator": 100}},
                "upstream_cluster": "reviews",
                "downstream_nodes": ["productpage"],
            }))
            .expect("valid"),
        );
        let (m, u) = (Method::GET, Uri::from_static("/"));
        let mut h = HeaderMap::new();
        h.insert(
            "x-envoy-downstream-service-node",
            "productpage".parse().expect("value"),
        );
        assert!(
            f.decide(&f.config, &view(&h, &m, &u), Some("ratings"), &mut || 0)
                .is_none()
        );
        assert!(
            f.decide(&f.config, &view(&h, &m, &u), Some("reviews"), &mut || 0)
                .is_some()
        );
        h.insert(
            "x-envoy-downstream-service-node",
            "other".parse().expect("value"),
        );
        assert!(
            f.decide(&f.config, &view(&h, &m, &u), Some("reviews"), &mut || 0)
                .is_none()
        );
    }
}
