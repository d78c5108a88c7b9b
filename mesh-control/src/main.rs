//! `mesh-control`: loads the config directory, serves ADS and the monitoring port, pushes
//! changes, and stops cleanly on SIGTERM or Ctrl-C.

mod cli;

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use mesh_control::monitoring::{Metrics, Monitoring};
use mesh_control::push::{DebounceConfig, Pusher};
use mesh_control::source::file::FileSource;
use mesh_control::store::Store;
use mesh_control::xds::{StoreGenerator, XdsServer, XdsServerConfig};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

fn main() -> Result<()> {
    let args = cli::Args::parse();
    init_logging(&args)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("mesh-control")
        .build()
        .context("starting the tokio runtime")?
        .block_on(run(args))
}

fn init_logging(args: &cli::Args) -> Result<()> {
    let filter = EnvFilter::try_new(&args.log_level)
        .with_context(|| format!("--log-level {:?} is not a valid filter", args.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_json {
        builder.json().init();
    } else {
        builder.with_ansi(false).init();
    }
    Ok(())
}

async fn run(args: cli::Args) -> Result<()> {
    let shutdown = CancellationToken::new();

    let store = Arc::new(Store::new());
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let xds = XdsServer::new(
        Arc::new(StoreGenerator(store.clone())),
        metrics,
        XdsServerConfig {
            push_concurrency: args.push_concurrency as usize,
            generate_concurrency: args
                .generate_concurrency
                .map_or(XdsServerConfig::default().generate_concurrency, |n| {
                    n as usize
                }),
            keepalive_interval: args.keepalive_interval,
            keepalive_timeout: args.keepalive_timeout,
        },
        shutdown.clone(),
    );
    let configz_store = store.clone();
    let monitoring = Monitoring::new(
        registry,
        xds.clone(),
        Box::new(move || {
            serde_json::to_value(configz_store.configz())
                .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
        }),
    );

    // Bind both ports first: a port in use is a startup error, not a log line.
    let xds_listener = XdsServer::bind(args.xds_addr).await?;
    let monitoring_listener = Monitoring::bind(args.monitoring_addr).await?;
    info!(xds = %xds_listener.local_addr()?, monitoring = %monitoring_listener.local_addr()?, "listening");
    let monitoring_task = tokio::spawn(
        monitoring
            .clone()
            .serve(monitoring_listener, shutdown.clone()),
    );

    // Subscribe before loading so that no change between the load and the watch is missed.
    let events = store.subscribe();
    let source = FileSource::new(&args.config_dir, store.clone());
    source
        .load_all()
        .with_context(|| format!("loading --config-dir {}", args.config_dir.display()))?;
    let source_task = tokio::spawn(source.run(shutdown.clone()));

    let (pusher, dispatch_task) = Pusher::start(xds.clone(), shutdown.clone());
    let debounce_task = pusher.run_debouncer(
        events,
        DebounceConfig {
            after: args.debounce_after,
            max: args.debounce_max,
        },
        shutdown.clone(),
    );
    let mut xds_task = tokio::spawn(xds.clone().serve(xds_listener));
    monitoring.set_ready(true);
    info!(config_dir = %args.config_dir.display(), "ready");

    tokio::spawn(stop_on_signal(shutdown.clone()));
    let mut failed = false;
    let xds_result = tokio::select! {
        _ = shutdown.cancelled() => None,
        // The xDS server only returns early on a transport error: stop everything then.
        result = &mut xds_task => Some(result),
    };
    info!("shutting down");
    shutdown.cancel();
    monitoring.set_ready(false);
    let xds_result = match xds_result {
        Some(result) => result,
        None => xds_task.await,
    };
    match xds_result {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            error!("{err}");
            failed = true;
        }
        Err(err) => {
            error!("xds server task: {err}");
            failed = true;
        }
    }
    if let Ok(Err(err)) = source_task.await {
        error!("config source: {err}");
        failed = true;
    }
    let _ = tokio::join!(monitoring_task, dispatch_task, debounce_task);
    info!("stopped");
    if failed {
        anyhow::bail!("mesh-control stopped with errors");
    }
    Ok(())
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            error!("cannot install signal handlers; stop with SIGKILL");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM"),
        _ = int.recv() => info!("SIGINT"),
    }
    shutdown.cancel();
}
