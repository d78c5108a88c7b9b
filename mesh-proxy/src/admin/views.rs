//! `/clusters`, `/listeners`, `/stats` and `/server_info` in Envoy's formats.

use std::{fmt::Write, net::SocketAddr};

use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::{
    envoy::{
        admin::v3::{
            ClusterStatus, Clusters, CommandLineOptions, HostHealthStatus, HostStatus,
            ListenerStatus, Listeners, ServerInfo, SimpleMetric, server_info::State,
            simple_metric::Type as MetricType,
        },
        config::core::v3::{
            Address, HealthStatus as PbHealth, Locality, SocketAddress, address, socket_address,
        },
    },
    google::protobuf::Duration as PbDuration,
};
use serde_json::Value;

use super::{
    AdminState,
    config_dump::{DumpError, to_json, to_json_with_defaults},
};
use crate::{config::endpoint::HealthStatus, upstream::ResourceKind};

pub(super) fn help() -> String {
    [
        "admin commands are:",
        "  /: this help",
        "  /clusters (?format=json): upstream clusters and hosts",
        "  /config_dump (?resource=, ?mask=, ?include_eds): the current xDS config",
        "  /drain_listeners (POST, ?inboundonly): drain listeners",
        "  /listeners (?format=json): listeners and their addresses",
        "  /logging (POST ?level=, ?<module>=<level>): change the log level",
        "  /quitquitquit (POST): drain and exit",
        "  /ready: LIVE, PRE_INITIALIZING or DRAINING",
        "  /server_info: version, state, uptime, node",
        "  /stats (?filter=, ?format=json|prometheus, ?usedonly): counters and gauges",
        "  /stats/prometheus: Prometheus exposition",
        "",
    ]
    .join("\n")
}

fn sock(a: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: a.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                a.port(),
            ))),
            ..Default::default()
        })),
    }
}

pub(super) fn clusters_text(state: &AdminState) -> String {
    let mut out = String::new();
    let all = state.rt.clusters.all();
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    for name in names {
        let c = &all[name];
        let _ = writeln!(out, "{name}::observability_name::{}", c.config().stat_name);
        if let Some(d) = c.outlier_detector() {
            let [(avg, threshold), (local_avg, local_threshold)] = d.success_rate_numbers();
            let _ = writeln!(out, "{name}::outlier::success_rate_average::{avg}");
            let _ = writeln!(
                out,
                "{name}::outlier::success_rate_ejection_threshold::{threshold}"
            );
            let _ = writeln!(
                out,
                "{name}::outlier::local_origin_success_rate_average::{local_avg}"
            );
            let _ = writeln!(
                out,
                "{name}::outlier::local_origin_success_rate_ejection_threshold::{local_threshold}"
            );
        }
        for (cb, priority) in [
            (c.circuit_breakers(), "default"),
            (c.high_circuit_breakers(), "high"),
        ] {
            for (kind, label) in [
                (ResourceKind::Connections, "max_connections"),
                (ResourceKind::PendingRequests, "max_pending_requests"),
                (ResourceKind::Requests, "max_requests"),
                (ResourceKind::Retries, "max_retries"),
            ] {
                let _ = writeln!(
                    out,
                    "{name}::{priority}_priority::{label}::{}",
                    cb.usage(kind).1
                );
            }
        }
        let _ = writeln!(out, "{name}::added_via_api::true");
        if let Some(eds) = c.config().eds_service_name() {
            let _ = writeln!(out, "{name}::eds_service_name::{eds}");
        }
        for h in c.hosts().hosts.iter() {
            let a = h.addr;
            let _ = writeln!(out, "{name}::{a}::cx_active::{}", h.active_connections());
            let _ = writeln!(
                out,
                "{name}::{a}::cx_connect_fail::{}",
                h.connect_failures()
            );
            let _ = writeln!(out, "{name}::{a}::cx_total::{}", h.total_connections());
            let _ = writeln!(out, "{name}::{a}::rq_active::{}", h.active_requests());
            let _ = writeln!(out, "{name}::{a}::rq_total::{}", h.total_requests());
            let [rate, local_rate] = h.success_rates();
            let _ = writeln!(out, "{name}::{a}::hostname::{}", h.hostname);
            let _ = writeln!(out, "{name}::{a}::health_flags::{}", health_flags(h));
            let _ = writeln!(out, "{name}::{a}::weight::{}", h.weight);
            let _ = writeln!(out, "{name}::{a}::region::{}", h.locality.region);
            let _ = writeln!(out, "{name}::{a}::zone::{}", h.locality.zone);
            let _ = writeln!(out, "{name}::{a}::sub_zone::{}", h.locality.sub_zone);
            let _ = writeln!(out, "{name}::{a}::canary::false");
            let _ = writeln!(out, "{name}::{a}::priority::{}", h.priority);
            let _ = writeln!(out, "{name}::{a}::success_rate::{rate}");
            let _ = writeln!(out, "{name}::{a}::local_origin_success_rate::{local_rate}");
        }
    }
    out
}

/// Envoy's `healthFlagsToString`: "healthy", or each failing flag prefixed with `/`.
fn health_flags(h: &crate::upstream::Host) -> String {
    let mut flags = String::new();
    if h.is_ejected() {
        flags.push_str("/failed_outlier_check");
    }
    match h.health() {
        HealthStatus::Healthy => {}
        HealthStatus::Degraded => flags.push_str("/degraded_eds_health"),
        HealthStatus::Unhealthy => flags.push_str("/failed_eds_health"),
    }
    if flags.is_empty() {
        flags.push_str("healthy");
    }
    flags
}

pub(super) fn clusters_json(state: &AdminState) -> Result<Value, DumpError> {
    let all = state.rt.clusters.all();
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let mut statuses = Vec::new();
    for name in names {
        let c = &all[name];
        let metric = |n: &str, v: u64, t: MetricType| SimpleMetric {
            name: n.into(),
            value: v,
            r#type: t as i32,
        };
        let host_statuses = c
            .hosts()
            .hosts
            .iter()
            .map(|h| HostStatus {
                address: Some(sock(h.addr)),
                stats: vec![
                    metric("cx_connect_fail", h.connect_failures(), MetricType::Counter),
                    metric("cx_total", h.total_connections(), MetricType::Counter),
                    metric("rq_total", h.total_requests(), MetricType::Counter),
                    metric("cx_active", h.active_connections(), MetricType::Gauge),
                    metric("rq_active", h.active_requests(), MetricType::Gauge),
                ],
                health_status: Some(HostHealthStatus {
                    eds_health_status: match h.health() {
                        HealthStatus::Healthy => PbHealth::Healthy,
                        HealthStatus::Degraded => PbHealth::Degraded,
                        HealthStatus::Unhealthy => PbHealth::Unhealthy,
                    } as i32,
                    failed_outlier_check: h.is_ejected(),
                    ..Default::default()
                }),
                success_rate: percent(h.success_rates()[0]),
                local_origin_success_rate: percent(h.success_rates()[1]),
                weight: h.weight,
                hostname: h.hostname.to_string(),
                priority: h.priority,
                locality: Some(Locality {
                    region: h.locality.region.clone(),
                    zone: h.locality.zone.clone(),
                    sub_zone: h.locality.sub_zone.clone(),
                }),
            })
            .collect();
        let numbers = c.outlier_detector().map(|d| d.success_rate_numbers());
        statuses.push(ClusterStatus {
            name: name.clone(),
            added_via_api: true,
            success_rate_ejection_threshold: numbers.and_then(|n| percent(n[0].1)),
            local_origin_success_rate_ejection_threshold: numbers.and_then(|n| percent(n[1].1)),
            host_statuses,
            observability_name: c.config().stat_name.clone(),
            eds_service_name: c
                .config()
                .eds_service_name()
                .unwrap_or_default()
                .to_string(),
            ..Default::default()
        });
    }
    to_json(&Clusters {
        cluster_statuses: statuses,
    })
}

/// A success rate as Envoy's JSON has it: absent when not computed (negative).
fn percent(v: f64) -> Option<Percent> {
    (v >= 0.0).then_some(Percent { value: v })
}

pub(super) fn listeners_text(state: &AdminState) -> String {
    let mut out = String::new();
    for (l, bound) in state.listeners.listeners() {
        let addr = bound.first().copied().unwrap_or(l.address);
        let _ = writeln!(out, "{}::{}", l.name, addr);
    }
    out
}

pub(super) fn listeners_json(state: &AdminState) -> Result<Value, DumpError> {
    let listener_statuses = state
        .listeners
        .listeners()
        .into_iter()
        .map(|(l, bound)| {
            let mut addrs = if bound.is_empty() {
                std::iter::once(l.address)
                    .chain(l.additional_addresses.iter().copied())
                    .collect::<Vec<_>>()
            } else {
                bound
            };
            let first = addrs.remove(0);
            ListenerStatus {
                name: l.name.to_string(),
                local_address: Some(sock(first)),
                additional_local_addresses: addrs.into_iter().map(sock).collect(),
            }
        })
        .collect();
    to_json(&Listeners { listener_statuses })
}

/// Envoy-style stat names and values, sorted.
pub(super) fn stats(
    state: &AdminState,
    filter: Option<&regex::Regex>,
    used_only: bool,
) -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = Vec::new();
    let s = &state.rt.stats;
    for c in state.rt.clusters.all().values() {
        let prefix = format!("cluster.{}.", c.config().stat_name);
        for (n, v) in c.stats().values() {
            out.push((format!("{prefix}{n}"), v));
        }
    }
    for (l, _) in state.listeners.listeners() {
        let h = s.listener.handles(&crate::stats::ListenerLabels {
            envoy_listener_address: l.stat_name.clone(),
        });
        for (n, v) in h.values() {
            out.push((format!("listener.{}.{n}", l.stat_name), v));
        }
    }
    let server = &s.server;
    out.push(("server.live".into(), server.live.get()));
    out.push(("server.state".into(), server.state.get()));
    out.push((
        "server.uptime".into(),
        i64::try_from(s.uptime_secs()).unwrap_or(i64::MAX),
    ));
    out.push((
        "control_plane.connected_state".into(),
        server.control_plane_connected.get(),
    ));
    out.push((
        "listener_manager.total_listeners_active".into(),
        server.total_listeners_active.get(),
    ));
    out.push((
        "listener_manager.total_listeners_warming".into(),
        server.total_listeners_warming.get(),
    ));
    out.push((
        "listener_manager.total_listeners_draining".into(),
        server.total_listeners_draining.get(),
    ));
    out.push((
        "listener_manager.total_filter_chains_draining".into(),
        server.total_filter_chains_draining.get(),
    ));
    out.push((
        "cluster_manager.active_clusters".into(),
        server.active_clusters.get(),
    ));
    out.push((
        "cluster_manager.warming_clusters".into(),
        server.warming_clusters.get(),
    ));
    out.retain(|(n, v)| filter.is_none_or(|f| f.is_match(n)) && (!used_only || *v != 0));
    out.sort();
    out
}

pub(super) fn server_info(state: &AdminState) -> Result<Value, DumpError> {
    let up = state.rt.stats.uptime_secs() as i64;
    let st = if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        State::Draining
    } else if *state.ready.borrow() {
        State::Live
    } else {
        State::PreInitializing
    };
    to_json_with_defaults(&ServerInfo {
        version: format!("mesh-proxy/{}/RELEASE", env!("CARGO_PKG_VERSION")),
        state: st as i32,
        uptime_current_epoch: Some(PbDuration {
            seconds: up,
            nanos: 0,
        }),
        uptime_all_epochs: Some(PbDuration {
            seconds: up,
            nanos: 0,
        }),
        hot_restart_version: "disabled".into(),
        command_line_options: Some(CommandLineOptions {
            service_node: state.node.id.clone(),
            service_cluster: state.node.cluster.clone(),
            ..Default::default()
        }),
        node: Some(state.node.to_proto()),
        hot_restart_initializing: false,
    })
}
