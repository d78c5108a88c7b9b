//! Control-plane scale: the real `mesh-control` binary serving a generated mesh (1,000
//! services by default, from a `--config-dir`, so the file watcher, store rebuild and
//! debounce are in every figure) to N lightweight Envoy-like clients on real gRPC streams
//! (half delta, half SotW by default), measuring for an endpoint change and for a
//! VirtualService change, each written to a file:
//!
//! - time from the file write to the last affected proxy's ACK of the new config (p50 and
//!   p99 over the changes), and the median proxy's time;
//! - control-plane CPU seconds per change and for the initial sync (from /proc/<pid>/stat);
//! - RSS after sync and peak (VmHWM);
//! - gRPC bytes sent per change (the sum of the response messages the clients received).
//!
//! ```text
//! cargo bench -p mesh-control --bench control_plane -- [--quick|--smoke] [--proxies 100,1000]
//!     [--scoping both|on|off] [--protocol mixed|delta|sotw] [--json out.json]
//! ```
//! `cargo xtask bench control` runs it and writes the report. Bounded: a cell stops when the
//! sync or a change times out or the server's RSS passes `--max-rss-mib`, and says so.

mod client;
mod mesh;
mod server;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use mesh_control::xds::XdsType;
use serde_json::{Value, json};

use client::{Client, Expect, ProbeSpec, Protocol, Shared};
use mesh::{Mesh, MeshShape};
use server::{Server, metric_sum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scoping {
    On,
    Off,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mix {
    Mixed,
    Delta,
    Sotw,
}

#[derive(Debug, Parser)]
#[command(about = "control-plane convergence, CPU, memory and bytes at N proxies")]
struct Args {
    /// Proxy counts, one run each.
    #[arg(long, value_delimiter = ',', default_values_t = [100, 1000, 5000])]
    proxies: Vec<usize>,
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Pods per service (every pod is an endpoint; proxies take the first N identities).
    #[arg(long, default_value_t = 5)]
    replicas: usize,
    #[arg(long, default_value_t = 10)]
    namespaces: usize,
    /// Changes of each kind per run.
    #[arg(long, default_value_t = 10)]
    changes: usize,
    #[arg(long, value_enum, default_value_t = Scoping::Both)]
    scoping: Scoping,
    #[arg(long, value_enum, default_value_t = Mix::Mixed)]
    protocol: Mix,
    /// 100 and 1,000 proxies, 5 changes of each kind.
    #[arg(long)]
    quick: bool,
    /// A few seconds: 50 services, 20 proxies, 2 changes (checks the harness, not figures).
    #[arg(long)]
    smoke: bool,
    /// Write the results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Stop a run when the control plane's RSS passes this (protects the machine).
    #[arg(long, default_value_t = 8192.0)]
    max_rss_mib: f64,
    #[arg(long, default_value_t = 600)]
    sync_timeout_secs: u64,
    #[arg(long, default_value_t = 60)]
    change_timeout_secs: u64,
    /// Extra flags for mesh-control (e.g. `--server-arg=--push-concurrency=50`).
    #[arg(long)]
    server_arg: Vec<String>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Args {
    fn normalize(&mut self) {
        if self.smoke {
            self.proxies = vec![20];
            self.services = 50;
            self.namespaces = 5;
            self.changes = 2;
        } else if self.quick {
            self.proxies = vec![100, 1000];
            self.changes = 5;
        }
    }
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    args.normalize();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let started = Instant::now();
    let mut cells = Vec::new();
    for &n in &args.proxies {
        let scopes: &[bool] = match args.scoping {
            Scoping::On => &[true],
            Scoping::Off => &[false],
            Scoping::Both => &[false, true],
        };
        for &scoped in scopes {
            let shape = MeshShape {
                services: args.services,
                replicas: args.replicas.max(n.div_ceil(args.services)),
                namespaces: args.namespaces,
                scoped,
            };
            eprintln!(
                "== {n} proxies, {} services, {} pods, sidecar scoping {}",
                shape.services,
                shape.pods(),
                if scoped { "on" } else { "off" }
            );
            let cell = runtime.block_on(run_cell(&args, shape, n))?;
            eprintln!("{}", serde_json::to_string(&cell)?);
            cells.push(cell);
        }
    }
    let out = json!({
        "bench": "control",
        "mesh": {
            "services": args.services,
            "namespaces": args.namespaces,
            "replicas": args.replicas,
            "subsets_per_service": 3,
            "virtual_services": args.services,
            "destination_rules": args.services,
        },
        "changes_per_kind": args.changes,
        "protocol": format!("{:?}", args.protocol).to_lowercase(),
        "server": {
            "binary": env!("CARGO_BIN_EXE_mesh-control"),
            "extra_args": args.server_arg,
            "debounce": "100ms quiet, 10s max (defaults)",
        },
        "seconds": started.elapsed().as_secs_f64(),
        "cells": cells,
    });
    let text = serde_json::to_string_pretty(&out)?;
    match &args.json {
        Some(path) => std::fs::write(path, text).with_context(|| path.display().to_string())?,
        None => println!("{text}"),
    }
    Ok(())
}

/// One run: a fresh server and mesh, N clients, the changes.
async fn run_cell(args: &Args, shape: MeshShape, n: usize) -> Result<Value> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let config = dir.path().join("config");
    std::fs::create_dir(&config)?;
    let mut mesh = Mesh::write(&config, shape).context("writing the mesh")?;
    let mut server = Server::start(
        &config,
        dir.path().join("mesh-control.log"),
        &args.server_arg,
    )
    .map_err(anyhow::Error::msg)?;
    let startup = server.stats();
    let mut cell = json!({
        "proxies": n,
        "scoped": shape.scoped,
        "pods": shape.pods(),
        "startup_cpu_seconds": startup.cpu_seconds,
        "startup_rss_mib": startup.rss_mib,
    });

    // Connect everyone, bounded concurrency (a connect storm, as after a control-plane
    // restart), and wait until every client holds a complete config.
    let shared = Shared::new();
    let sync_start = Instant::now();
    let mut clients: Vec<Client> = Vec::with_capacity(n);
    let mut pending = tokio::task::JoinSet::new();
    let mut next = 0usize;
    while clients.len() < n {
        while next < n && pending.len() < 128 {
            let protocol = match args.protocol {
                Mix::Delta => Protocol::Delta,
                Mix::Sotw => Protocol::Sotw,
                Mix::Mixed if next.is_multiple_of(2) => Protocol::Delta,
                Mix::Mixed => Protocol::Sotw,
            };
            let pod = shape.pod(next);
            let (addr, sh) = (server.xds, shared.clone());
            pending.spawn(async move { client::start(addr, protocol, pod, sh).await });
            next += 1;
        }
        match pending.join_next().await {
            Some(Ok(Ok(c))) => clients.push(c),
            Some(Ok(Err(e))) => anyhow::bail!("client: {e}"),
            Some(Err(e)) => anyhow::bail!("client task: {e}"),
            None => break,
        }
    }
    let sync = wait_ready(&mut server, &clients, args, sync_start).await;
    let synced = server.stats();
    cell["sync_seconds"] = json!(sync_start.elapsed().as_secs_f64());
    cell["sync_cpu_seconds"] = json!(synced.cpu_seconds - startup.cpu_seconds);
    cell["rss_after_sync_mib"] = json!(synced.rss_mib);
    let per_proxy = |f: fn(&client::ClientStats) -> u64| {
        clients.iter().map(|c| f(&c.stats)).sum::<u64>() as f64 / n.max(1) as f64
    };
    cell["per_proxy"] = json!({
        "clusters": per_proxy(|s| s.clusters.load(Ordering::Relaxed)),
        "endpoints": per_proxy(|s| s.eds_names.load(Ordering::Relaxed)),
        "listeners": per_proxy(|s| s.listeners.load(Ordering::Relaxed)),
        "routes": per_proxy(|s| s.rds_names.load(Ordering::Relaxed)),
        "initial_bytes": per_proxy(|s| s.bytes.load(Ordering::Relaxed)),
    });
    if let Err(why) = sync {
        cell["error"] = json!(why);
        return Ok(finish(cell, &mut server, &clients));
    }
    settle(&server, &clients).await;

    let mut failed = None;
    for kind in [ChangeKind::Endpoint, ChangeKind::VirtualService] {
        let mut runs = Vec::new();
        for k in 0..args.changes {
            let run = one_change(args, &mut mesh, &mut server, &clients, &shared, kind, k).await;
            let timed_out = run.timed_out;
            runs.push(run);
            if timed_out {
                failed = Some(format!("{} change {k} timed out", kind.key()));
                break;
            }
        }
        cell[kind.key()] = summarize(&runs);
        if failed.is_some() {
            break;
        }
    }
    if let Some(why) = failed {
        cell["error"] = json!(why);
    }
    Ok(finish(cell, &mut server, &clients))
}

fn finish(mut cell: Value, server: &mut Server, clients: &[Client]) -> Value {
    let end = server.stats();
    cell["peak_rss_mib"] = json!(end.peak_rss_mib);
    cell["total_cpu_seconds"] = json!(end.cpu_seconds);
    let metrics = server.metrics();
    cell["server_metrics"] = json!({
        "pilot_xds_pushes": metric_sum(&metrics, "pilot_xds_pushes"),
        "pilot_total_xds_rejects": metric_sum(&metrics, "pilot_total_xds_rejects"),
        "pilot_xds_expired_nonce": metric_sum(&metrics, "pilot_xds_expired_nonce"),
    });
    let closed: Vec<String> = clients
        .iter()
        .filter_map(|c| c.stats.closed.lock().clone())
        .take(3)
        .collect();
    cell["client_errors"] = json!(closed);
    cell["client_reconnects"] = json!(
        clients
            .iter()
            .map(|c| c.stats.reconnects.load(Ordering::Relaxed))
            .sum::<u64>()
    );
    cell["server_warnings"] = json!(server.log_problems());
    cell["server_alive"] = json!(server.alive());
    cell
}

/// Waits until every client is ready, the server is alive and within its memory bound.
async fn wait_ready(
    server: &mut Server,
    clients: &[Client],
    args: &Args,
    start: Instant,
) -> Result<(), String> {
    let deadline = start + Duration::from_secs(args.sync_timeout_secs);
    let mut last_report = Instant::now();
    loop {
        let ready = clients
            .iter()
            .filter(|c| c.stats.ready.load(Ordering::Relaxed))
            .count();
        if ready == clients.len() {
            return Ok(());
        }
        if !server.alive() {
            return Err(format!(
                "mesh-control died during the initial sync ({ready}/{} ready); log tail:\n{}",
                clients.len(),
                server.log_tail()
            ));
        }
        let st = server.stats();
        if st.rss_mib > args.max_rss_mib {
            return Err(format!(
                "stopped: mesh-control RSS {:.0} MiB passed --max-rss-mib {:.0} with {ready}/{} proxies synced",
                st.rss_mib,
                args.max_rss_mib,
                clients.len()
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "initial sync incomplete after {} s: {ready}/{} proxies ready",
                args.sync_timeout_secs,
                clients.len()
            ));
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            let reconnects: u64 = clients
                .iter()
                .map(|c| c.stats.reconnects.load(Ordering::Relaxed))
                .sum();
            if reconnects > 0 {
                let why = clients
                    .iter()
                    .find_map(|c| c.stats.closed.lock().clone())
                    .unwrap_or_default();
                eprintln!("   sync: {reconnects} reconnects so far (one stream ended: {why})");
            }
            eprintln!(
                "   sync: {ready}/{} ready after {:.0} s, server RSS {:.0} MiB",
                clients.len(),
                start.elapsed().as_secs_f64(),
                st.rss_mib
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the server is idle: no bytes to clients and (almost) no CPU for 300 ms, so
/// that one change's push is measured whole and the next starts from rest. Bounded.
async fn settle(server: &Server, clients: &[Client]) {
    let total_bytes = || -> u64 {
        clients
            .iter()
            .map(|c| c.stats.bytes.load(Ordering::Relaxed))
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut quiet_since = Instant::now();
    let (mut bytes, mut cpu) = (total_bytes(), server.stats().cpu_seconds);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (b, c) = (total_bytes(), server.stats().cpu_seconds);
        if b != bytes || c - cpu > 0.02 {
            quiet_since = Instant::now();
            bytes = b;
            cpu = c;
        } else if quiet_since.elapsed() >= Duration::from_millis(300) {
            return;
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum ChangeKind {
    Endpoint,
    VirtualService,
}

impl ChangeKind {
    fn key(self) -> &'static str {
        match self {
            ChangeKind::Endpoint => "endpoint_change",
            ChangeKind::VirtualService => "virtual_service_change",
        }
    }
}

/// One timed change.
#[derive(Debug, Default)]
struct ChangeRun {
    affected: usize,
    converged: usize,
    /// File write to the last affected ACK, and to the median one (ms).
    last_ms: f64,
    median_ms: f64,
    /// The same per protocol.
    last_delta_ms: Option<f64>,
    last_sotw_ms: Option<f64>,
    cpu_seconds: f64,
    bytes: u64,
    bytes_delta: u64,
    bytes_sotw: u64,
    mismatches: u64,
    timed_out: bool,
}

#[allow(clippy::too_many_arguments)]
async fn one_change(
    args: &Args,
    mesh: &mut Mesh,
    server: &mut Server,
    clients: &[Client],
    shared: &Arc<Shared>,
    kind: ChangeKind,
    k: usize,
) -> ChangeRun {
    let shape = mesh.shape;
    // Spread the changed services over namespaces and the service range.
    let service = (k * 37 + 11) % shape.services;
    let ns = shape.namespace_of(service);
    let epoch = (k as u64 + 1) * 2 + matches!(kind, ChangeKind::VirtualService) as u64 + 1000;
    let clusters = shape.clusters_of(service);
    let (count, weight) = mesh.next_state(service);
    let (ty, names, expect) = match kind {
        ChangeKind::Endpoint => (
            XdsType::Endpoint,
            [clusters[0].clone()].into_iter().collect(),
            Expect::Endpoints {
                cluster: clusters[0].clone(),
                count,
            },
        ),
        ChangeKind::VirtualService => (
            XdsType::Route,
            [mesh::PORT.to_string()].into_iter().collect(),
            Expect::RouteWeight {
                cluster: clusters[1].clone(),
                weight,
            },
        ),
    };
    let affected: Vec<&Client> = clients
        .iter()
        .filter(|c| !shape.scoped || c.stats.pod.namespace == ns)
        .collect();
    *shared.probe.write() = Some(Arc::new(ProbeSpec {
        epoch,
        ty,
        names,
        expect,
    }));
    let bytes_of = |p: Option<Protocol>| -> u64 {
        clients
            .iter()
            .filter(|c| p.is_none_or(|p| c.stats.protocol == p))
            .map(|c| c.stats.bytes.load(Ordering::Relaxed))
            .sum()
    };
    let (b0, bd0, bs0) = (
        bytes_of(None),
        bytes_of(Some(Protocol::Delta)),
        bytes_of(Some(Protocol::Sotw)),
    );
    let cpu0 = server.stats().cpu_seconds;
    let t0 = Instant::now();
    let written = match kind {
        ChangeKind::Endpoint => mesh.toggle_endpoints(service).map(drop),
        ChangeKind::VirtualService => mesh.toggle_v1_weight(service).map(drop),
    };
    let mut run = ChangeRun {
        affected: affected.len(),
        ..Default::default()
    };
    if let Err(e) = written {
        eprintln!("   cannot write the change: {e}");
        run.timed_out = true;
        return run;
    }
    let deadline = t0 + Duration::from_secs(args.change_timeout_secs);
    loop {
        let done = affected
            .iter()
            .filter(|c| c.stats.probe_epoch.load(Ordering::Acquire) == epoch)
            .count();
        if done == affected.len() {
            break;
        }
        if Instant::now() > deadline || !server.alive() {
            run.timed_out = true;
            run.converged = done;
            eprintln!(
                "   {} change {k}: only {done}/{} proxies converged within {} s",
                kind.key(),
                affected.len(),
                args.change_timeout_secs
            );
            *shared.probe.write() = None;
            return run;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    run.converged = affected.len();
    let base = shared.at_ns(t0);
    let times = |p: Option<Protocol>| -> Vec<f64> {
        let mut v: Vec<f64> = affected
            .iter()
            .filter(|c| p.is_none_or(|p| c.stats.protocol == p))
            .map(|c| {
                c.stats
                    .probe_at_ns
                    .load(Ordering::Relaxed)
                    .saturating_sub(base) as f64
                    / 1e6
            })
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let all = times(None);
    run.last_ms = all.last().copied().unwrap_or(0.0);
    run.median_ms = percentile(&all, 50.0);
    run.last_delta_ms = times(Some(Protocol::Delta)).last().copied();
    run.last_sotw_ms = times(Some(Protocol::Sotw)).last().copied();
    // The push goes on for proxies the change does not affect (they are still regenerated
    // and diffed): CPU and bytes are counted until the server is idle again.
    settle(server, clients).await;
    *shared.probe.write() = None;
    run.cpu_seconds = server.stats().cpu_seconds - cpu0;
    run.bytes = bytes_of(None) - b0;
    run.bytes_delta = bytes_of(Some(Protocol::Delta)) - bd0;
    run.bytes_sotw = bytes_of(Some(Protocol::Sotw)) - bs0;
    run.mismatches = affected
        .iter()
        .map(|c| c.stats.mismatches.load(Ordering::Relaxed))
        .sum();
    eprintln!(
        "   {} {k}: {} proxies, last ACK {:.0} ms, median {:.0} ms, cpu {:.2} s, {} bytes",
        kind.key(),
        run.affected,
        run.last_ms,
        run.median_ms,
        run.cpu_seconds,
        run.bytes
    );
    run
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summarize(runs: &[ChangeRun]) -> Value {
    let done: Vec<&ChangeRun> = runs.iter().filter(|r| !r.timed_out).collect();
    let sorted = |f: fn(&ChangeRun) -> Option<f64>| {
        let mut v: Vec<f64> = done.iter().filter_map(|r| f(r)).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let mean = |f: fn(&ChangeRun) -> f64| {
        if done.is_empty() {
            f64::NAN
        } else {
            done.iter().map(|r| f(r)).sum::<f64>() / done.len() as f64
        }
    };
    let last = sorted(|r| Some(r.last_ms));
    let delta = sorted(|r| r.last_delta_ms);
    let sotw = sorted(|r| r.last_sotw_ms);
    let medians = sorted(|r| Some(r.median_ms));
    json!({
        "changes": runs.len(),
        "timeouts": runs.len() - done.len(),
        "affected_proxies": mean(|r| r.affected as f64),
        "last_ack_ms": last,
        "last_ack_p50_ms": percentile(&last, 50.0),
        "last_ack_p99_ms": percentile(&last, 99.0),
        "delta_last_ack_p99_ms": percentile(&delta, 99.0),
        "sotw_last_ack_p99_ms": percentile(&sotw, 99.0),
        "median_proxy_p50_ms": percentile(&medians, 50.0),
        "cpu_seconds_per_change": mean(|r| r.cpu_seconds),
        "bytes_per_change": mean(|r| r.bytes as f64),
        "bytes_per_affected_proxy": mean(|r| r.bytes as f64 / r.affected.max(1) as f64),
        "delta_bytes_per_change": mean(|r| r.bytes_delta as f64),
        "sotw_bytes_per_change": mean(|r| r.bytes_sotw as f64),
        "probe_mismatches": done.iter().map(|r| r.mismatches).sum::<u64>(),
        "unconverged_proxies": runs.iter().filter(|r| r.timed_out).map(|r| r.affected - r.converged).sum::<usize>(),
    })
}
