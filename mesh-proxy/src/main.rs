//! `mesh-proxy`: parse flags, set up logging with a runtime-reloadable filter, build a
//! runtime sized by `--concurrency`, run the proxy until SIGTERM/SIGINT or
//! `/quitquitquit`, then drain and exit.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use mesh_proxy::{
    app::{Proxy, ProxyOptions},
    cli::Args,
    xds::XdsConfig,
};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, reload, util::SubscriberInitExt};

/// One worker: a current-thread runtime, so that a request never pays for the
/// multi-thread scheduler's cross-thread queues and wakeups (linkerd2-proxy does the same
/// for a one-core limit). More: a work-stealing runtime with that many workers.
fn runtime(concurrency: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if concurrency <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .thread_name("mesh-proxy-worker")
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(concurrency)
            .thread_name("mesh-proxy-worker")
            .enable_all()
            .build()
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = EnvFilter::try_new(&args.log_level)
        .with_context(|| format!("--log-level {:?}", args.log_level))?;
    let (filter, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_target(true))
        .init();
    let log: mesh_proxy::admin::LogReload = Arc::new(move |directive: &str| {
        let f = EnvFilter::try_new(directive).map_err(|e| e.to_string())?;
        handle.reload(f).map_err(|e| e.to_string())
    });

    let node = args.node().context("building the node identity")?;
    let mut xds = XdsConfig::new(args.xds_address.clone(), node);
    xds.sotw = args.xds_sotw;
    let opts = ProxyOptions {
        xds,
        drain_duration: args.drain_duration,
        admin_addr: Some(args.admin_addr),
        health_addr: Args::optional_addr("health-addr", &args.health_addr)?,
        prometheus_addr: Args::optional_addr("prometheus-addr", &args.prometheus_addr)?,
        merged_addr: Args::optional_addr("merged-metrics-addr", &args.merged_metrics_addr)?,
        log: Some(log),
        log_level: args.log_level.clone(),
        command_line: std::env::args().collect(),
    };
    let runtime = runtime(args.concurrency).context("building the tokio runtime")?;
    runtime.block_on(async move {
        info!(mode = ?args.mode, xds = %args.xds_address, node = %opts.xds.node.id, "starting mesh-proxy");
        let proxy = Proxy::start(opts).await.context("starting the proxy")?;
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        tokio::select! {
            _ = term.recv() => info!("SIGTERM"),
            _ = int.recv() => info!("SIGINT"),
            _ = proxy.quit_requested() => info!("/quitquitquit"),
        }
        proxy.shutdown().await;
        anyhow::Ok(())
    })
}
