//! The HTTP filters that run between the connection manager and the router: fault
//! injection, CORS and local rate limiting, in the order the HCM lists them.
//!
//! Each filter has a listener-level config (from `http_filters[i].typed_config`) and may
//! have per-route configs (`typed_per_filter_config`, keyed by the filter's name), parsed
//! here once per xDS update by the config's type URL. The router looks the most specific
//! one up per request (weighted cluster, route, virtual host, route configuration).

pub mod cors;
pub mod fault;
pub mod local_ratelimit;

use std::sync::Arc;

use envoy_types::pb::{
    envoy::extensions::filters::http::{
        cors::v3::{Cors as PbCorsFilter, CorsPolicy as PbCorsPolicy},
        fault::v3::HttpFault,
        local_ratelimit::v3::LocalRateLimit as PbLocalRateLimit,
    },
    google::protobuf::Any,
};
use http::HeaderMap;

use crate::config::{ConfigError, decode_any};

/// A filter of the HCM's chain (the router, always last, is kept apart).
#[derive(Debug, Clone)]
pub enum Filter {
    Fault(Arc<fault::FaultFilter>),
    Cors,
    LocalRateLimit(Arc<local_ratelimit::LocalRateLimit>),
}

/// A filter with the name its per-route configs are keyed by.
#[derive(Debug, Clone)]
pub struct FilterEntry {
    pub name: Arc<str>,
    /// `disabled`: the filter runs only on routes whose per-filter config enables it.
    pub disabled: bool,
    pub filter: Filter,
}

/// The filter for an HCM `typed_config`, or `None` when the type is not one of ours.
pub fn from_hcm(any: &Any) -> Result<Option<Filter>, ConfigError> {
    Ok(Some(match any.type_url.as_str() {
        fault::TYPE_URL => {
            let p: HttpFault = decode_any(any, "typed_config")?;
            Filter::Fault(Arc::new(fault::FaultFilter::new(
                fault::FaultConfig::try_from_proto(&p).map_err(|e| e.at("typed_config"))?,
            )))
        }
        cors::FILTER_TYPE_URL => {
            // The filter-level `Cors` message has no fields in use; policies are per route.
            let _: PbCorsFilter = decode_any(any, "typed_config")?;
            Filter::Cors
        }
        local_ratelimit::TYPE_URL => {
            let p: PbLocalRateLimit = decode_any(any, "typed_config")?;
            Filter::LocalRateLimit(Arc::new(
                local_ratelimit::LocalRateLimit::try_from_proto(&p, false)
                    .map_err(|e| e.at("typed_config"))?,
            ))
        }
        _ => return Ok(None),
    }))
}

/// A parsed per-route filter config.
#[derive(Debug, Clone)]
pub enum RouteFilterConfig {
    Fault(Arc<fault::FaultConfig>),
    Cors(Arc<cors::CorsPolicy>),
    LocalRateLimit(Arc<local_ratelimit::LocalRateLimit>),
}

/// Parses a per-route config by its type; `None` when the type is not one of ours.
pub fn route_config(any: &Any) -> Result<Option<RouteFilterConfig>, ConfigError> {
    Ok(Some(match any.type_url.as_str() {
        fault::TYPE_URL => {
            let p: HttpFault = decode_any(any, "")?;
            RouteFilterConfig::Fault(Arc::new(fault::FaultConfig::try_from_proto(&p)?))
        }
        cors::POLICY_TYPE_URL => {
            let p: PbCorsPolicy = decode_any(any, "")?;
            RouteFilterConfig::Cors(Arc::new(cors::CorsPolicy::try_from_proto(&p)?))
        }
        local_ratelimit::TYPE_URL => {
            let p: PbLocalRateLimit = decode_any(any, "")?;
            RouteFilterConfig::LocalRateLimit(Arc::new(
                local_ratelimit::LocalRateLimit::try_from_proto(&p, true)?,
            ))
        }
        _ => return Ok(None),
    }))
}

/// What the request-side filters leave for the response headers (Envoy's encoder
/// filters run on every response, including the router's local replies, for the
/// filters whose request side ran).
#[derive(Debug, Default)]
pub struct EncodeState {
    pub cors: Option<cors::Encode>,
    pub ratelimit: Option<local_ratelimit::Encode>,
}

impl EncodeState {
    pub fn apply(&self, headers: &mut HeaderMap) {
        // Encoder filters run in reverse order of the chain; these touch disjoint headers.
        if let Some(r) = &self.ratelimit {
            r.apply(headers);
        }
        if let Some(c) = &self.cors {
            c.apply(headers);
        }
    }
}
