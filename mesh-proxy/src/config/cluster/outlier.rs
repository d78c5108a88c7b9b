//! `Cluster.outlier_detection` as a domain type, with Envoy's defaults filled in (they
//! are not the proto's zero values: `enforcing_consecutive_5xx` defaults to 100,
//! `enforcing_consecutive_gateway_failure` to 0, `max_ejection_time` to 300 s, ...).

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cpb;

use super::unsupported_if;
use crate::config::{ConfigError, Result, opt_duration};

/// Outlier detection settings (Envoy's `DetectorConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierDetection {
    /// Time between ejection sweeps (unejection happens on a sweep too).
    pub interval: Duration,
    pub base_ejection_time: Duration,
    /// Upper bound of `base_ejection_time x backoff`.
    pub max_ejection_time: Duration,
    /// Random extra ejection time, up to this much, so hosts do not return together.
    pub max_ejection_time_jitter: Duration,
    /// Percent of the cluster's hosts that may be ejected at once.
    pub max_ejection_percent: u32,
    /// Eject one host even when `max_ejection_percent` would allow none.
    pub always_eject_one_host: bool,
    pub consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    pub consecutive_local_origin_failure: u32,
    /// Locally originated failures (connect failures, timeouts, resets) are counted on
    /// their own instead of as 503/504.
    pub split_external_local_origin_errors: bool,
    pub success_rate_minimum_hosts: u32,
    pub success_rate_request_volume: u32,
    /// Hosts below `mean - stdev_factor / 1000 x stdev` are ejected.
    pub success_rate_stdev_factor: u32,
    pub failure_percentage_threshold: u32,
    pub failure_percentage_minimum_hosts: u32,
    pub failure_percentage_request_volume: u32,
    pub enforcing: Enforcing,
}

/// The percent chance that a detected outlier is actually ejected, per detection kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enforcing {
    pub consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    pub consecutive_local_origin_failure: u32,
    pub success_rate: u32,
    pub local_origin_success_rate: u32,
    pub failure_percentage: u32,
    pub failure_percentage_local_origin: u32,
}

impl Default for OutlierDetection {
    /// Envoy's defaults for an empty `outlier_detection {}`.
    fn default() -> Self {
        OutlierDetection {
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_time_jitter: Duration::ZERO,
            max_ejection_percent: 10,
            always_eject_one_host: false,
            consecutive_5xx: 5,
            consecutive_gateway_failure: 5,
            consecutive_local_origin_failure: 5,
            split_external_local_origin_errors: false,
            success_rate_minimum_hosts: 5,
            success_rate_request_volume: 100,
            success_rate_stdev_factor: 1900,
            failure_percentage_threshold: 85,
            failure_percentage_minimum_hosts: 5,
            failure_percentage_request_volume: 50,
            enforcing: Enforcing {
                consecutive_5xx: 100,
                consecutive_gateway_failure: 0,
                consecutive_local_origin_failure: 100,
                success_rate: 100,
                local_origin_success_rate: 100,
                failure_percentage: 0,
                failure_percentage_local_origin: 0,
            },
        }
    }
}

fn percent(v: Option<u32>, default: u32, field: &str) -> Result<u32> {
    match v {
        None => Ok(default),
        Some(p) if p <= 100 => Ok(p),
        Some(p) => Err(ConfigError::field(
            field,
            format!("{p} is not a percentage (0..=100)"),
        )),
    }
}

impl TryFrom<&cpb::OutlierDetection> for OutlierDetection {
    type Error = ConfigError;

    fn try_from(o: &cpb::OutlierDetection) -> Result<Self> {
        convert(o).map_err(|e| e.at("outlier_detection"))
    }
}

fn convert(o: &cpb::OutlierDetection) -> Result<OutlierDetection> {
    unsupported_if(!o.monitors.is_empty(), "monitors")?;
    unsupported_if(
        o.detect_degraded_hosts.is_some_and(|b| b.value),
        "detect_degraded_hosts",
    )?;
    // successful_active_health_check_uneject_host only matters with active health checks,
    // which a cluster here cannot have (health_checks is rejected).
    let d = OutlierDetection::default();
    let v = |x: Option<u32>, default: u32| x.unwrap_or(default);
    let interval = opt_duration(&o.interval, "interval")?.unwrap_or(d.interval);
    if interval.is_zero() {
        return Err(ConfigError::field("interval", "must be greater than 0"));
    }
    let base_ejection_time =
        opt_duration(&o.base_ejection_time, "base_ejection_time")?.unwrap_or(d.base_ejection_time);
    // Unset: the default or the base ejection time, whichever is larger (as Envoy).
    let max_ejection_time = opt_duration(&o.max_ejection_time, "max_ejection_time")?
        .unwrap_or(d.max_ejection_time.max(base_ejection_time));
    if max_ejection_time < base_ejection_time {
        return Err(ConfigError::field(
            "max_ejection_time",
            "cannot be smaller than base_ejection_time",
        ));
    }
    let max_ejection_time_jitter =
        opt_duration(&o.max_ejection_time_jitter, "max_ejection_time_jitter")?
            .unwrap_or(Duration::ZERO);
    let e = d.enforcing;
    Ok(OutlierDetection {
        interval,
        base_ejection_time,
        max_ejection_time,
        max_ejection_time_jitter,
        // Envoy caps it at 100 rather than rejecting larger values.
        max_ejection_percent: v(
            o.max_ejection_percent.map(|x| x.value),
            d.max_ejection_percent,
        )
        .min(100),
        always_eject_one_host: o.always_eject_one_host.is_some_and(|b| b.value),
        consecutive_5xx: v(o.consecutive_5xx.map(|x| x.value), d.consecutive_5xx),
        consecutive_gateway_failure: v(
            o.consecutive_gateway_failure.map(|x| x.value),
            d.consecutive_gateway_failure,
        ),
        consecutive_local_origin_failure: v(
            o.consecutive_local_origin_failure.map(|x| x.value),
            d.consecutive_local_origin_failure,
        ),
        split_external_local_origin_errors: o.split_external_local_origin_errors,
        success_rate_minimum_hosts: v(
            o.success_rate_minimum_hosts.map(|x| x.value),
            d.success_rate_minimum_hosts,
        ),
        success_rate_request_volume: v(
            o.success_rate_request_volume.map(|x| x.value),
            d.success_rate_request_volume,
        ),
        success_rate_stdev_factor: v(
            o.success_rate_stdev_factor.map(|x| x.value),
            d.success_rate_stdev_factor,
        ),
        failure_percentage_threshold: percent(
            o.failure_percentage_threshold.map(|x| x.value),
            d.failure_percentage_threshold,
            "failure_percentage_threshold",
        )?,
        failure_percentage_minimum_hosts: v(
            o.failure_percentage_minimum_hosts.map(|x| x.value),
            d.failure_percentage_minimum_hosts,
        ),
        failure_percentage_request_volume: v(
            o.failure_percentage_request_volume.map(|x| x.value),
            d.failure_percentage_request_volume,
        ),
        enforcing: Enforcing {
            consecutive_5xx: percent(
                o.enforcing_consecutive_5xx.map(|x| x.value),
                e.consecutive_5xx,
                "enforcing_consecutive_5xx",
            )?,
            consecutive_gateway_failure: percent(
                o.enforcing_consecutive_gateway_failure.map(|x| x.value),
                e.consecutive_gateway_failure,
                "enforcing_consecutive_gateway_failure",
            )?,
            consecutive_local_origin_failure: percent(
                o.enforcing_consecutive_local_origin_failure
                    .map(|x| x.value),
                e.consecutive_local_origin_failure,
                "enforcing_consecutive_local_origin_failure",
            )?,
            success_rate: percent(
                o.enforcing_success_rate.map(|x| x.value),
                e.success_rate,
                "enforcing_success_rate",
            )?,
            local_origin_success_rate: percent(
                o.enforcing_local_origin_success_rate.map(|x| x.value),
                e.local_origin_success_rate,
                "enforcing_local_origin_success_rate",
            )?,
            failure_percentage: percent(
                o.enforcing_failure_percentage.map(|x| x.value),
                e.failure_percentage,
                "enforcing_failure_percentage",
            )?,
            failure_percentage_local_origin: percent(
                o.enforcing_failure_percentage_local_origin.map(|x| x.value),
                e.failure_percentage_local_origin,
                "enforcing_failure_percentage_local_origin",
            )?,
        },
    })
}
