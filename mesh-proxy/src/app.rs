//! Wiring: builds the runtime state, the listener manager, the xDS client and the admin
//! ports, and runs the shutdown sequence. Used by `main` and by the integration tests
//! (which run whole proxies in-process).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};
use tracing::info;

use crate::{
    Runtime,
    admin::{self, AdminState, LogReload},
    drain,
    listener::Manager,
    xds::{AdsClient, Applier, XdsConfig, dump::DumpState, readiness},
};

/// Everything needed to start a proxy.
#[derive(Clone)]
pub struct ProxyOptions {
    pub xds: XdsConfig,
    pub drain_duration: Duration,
    /// 15000 (localhost only); `None` disables.
    pub admin_addr: Option<SocketAddr>,
    /// 15021 `/healthz/ready`.
    pub health_addr: Option<SocketAddr>,
    /// 15090 `/stats/prometheus`.
    pub prometheus_addr: Option<SocketAddr>,
    /// 15020 merged metrics.
    pub merged_addr: Option<SocketAddr>,
    pub log: Option<LogReload>,
    pub log_level: String,
    pub command_line: Vec<String>,
}

impl ProxyOptions {
    /// Options for an in-process test proxy: admin on an ephemeral localhost port, no
    /// other ports, a short drain.
    pub fn for_tests(xds: XdsConfig) -> Self {
        ProxyOptions {
            xds,
            drain_duration: Duration::from_secs(2),
            admin_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            health_addr: None,
            prometheus_addr: None,
            merged_addr: None,
            log: None,
            log_level: "info".into(),
            command_line: vec![],
        }
    }
}

/// A running proxy.
pub struct Proxy {
    pub rt: Runtime,
    pub listeners: Manager,
    pub dump: Arc<DumpState>,
    pub ready: watch::Receiver<bool>,
    /// The bound admin address (port 0 resolved).
    pub admin_addr: Option<SocketAddr>,
    pub health_addr: Option<SocketAddr>,
    pub prometheus_addr: Option<SocketAddr>,
    pub merged_addr: Option<SocketAddr>,
    drain_duration: Duration,
    admin_stop: drain::Trigger,
    quit: Arc<Notify>,
    draining: Arc<AtomicBool>,
    xds_task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(opts: ProxyOptions) -> std::io::Result<Proxy> {
        let (admin_stop, admin_watch) = drain::channel();
        // Connections hold their listener's drain watch (see `listener::Manager`), which
        // the manager signals on removal and on shutdown.
        let rt = Runtime::new(drain::Watch::never());
        let listeners = Manager::new(rt.clone(), opts.drain_duration);
        let dump = Arc::new(DumpState::default());
        let (ready_tx, ready) = readiness();
        let applier = Applier::new(
            rt.store.clone(),
            rt.clusters.clone(),
            listeners.clone(),
            rt.stats.clone(),
            dump.clone(),
            ready_tx,
        );
        let quit = Arc::new(Notify::new());
        let draining = Arc::new(AtomicBool::new(false));
        let state = AdminState {
            rt: rt.clone(),
            listeners: listeners.clone(),
            dump: dump.clone(),
            ready: ready.clone(),
            node: opts.xds.node.clone(),
            xds_address: opts.xds.address.clone(),
            delta: !opts.xds.sotw,
            started: SystemTime::now(),
            command_line: opts.command_line.clone(),
            log: opts.log.clone(),
            log_level: Arc::new(parking_lot::Mutex::new(opts.log_level.clone())),
            quit: quit.clone(),
            draining: draining.clone(),
        };
        let mut bound = [None; 4];
        for (i, (addr, port)) in [
            (opts.admin_addr, admin::Port::Admin),
            (opts.health_addr, admin::Port::Health),
            (opts.prometheus_addr, admin::Port::Prometheus),
            (opts.merged_addr, admin::Port::Merged),
        ]
        .into_iter()
        .enumerate()
        {
            if let Some(addr) = addr {
                bound[i] =
                    Some(admin::serve(addr, port, state.clone(), admin_watch.clone()).await?);
            }
        }
        // The xDS client stops with the admin ports (at the very end of a shutdown), so
        // config keeps flowing while connections drain.
        let xds_task = tokio::spawn(AdsClient::new(opts.xds.clone(), applier).run(admin_watch));
        Ok(Proxy {
            rt,
            listeners,
            dump,
            ready,
            admin_addr: bound[0],
            health_addr: bound[1],
            prometheus_addr: bound[2],
            merged_addr: bound[3],
            drain_duration: opts.drain_duration,
            admin_stop,
            quit,
            draining,
            xds_task,
        })
    }

    /// Waits until the initial configuration is applied (or `timeout` passes).
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut rx = self.ready.clone();
        tokio::time::timeout(timeout, rx.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Resolves on `/quitquitquit`.
    pub async fn quit_requested(&self) {
        self.quit.notified().await
    }

    /// Drains: health turns unready, listeners stop accepting, connections get
    /// `drain_duration` to finish and are then closed; finally xDS and admin stop.
    /// Returns whether every connection finished within the drain duration.
    pub async fn shutdown(self) -> bool {
        info!(drain = ?self.drain_duration, "draining");
        self.draining.store(true, Ordering::Relaxed);
        self.rt.stats.server.state.set(1);
        self.rt.stats.server.live.set(0);
        let clean = self.listeners.shutdown().await;
        self.admin_stop.signal();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.xds_task).await;
        drop(self.admin_stop);
        info!(clean, "drained");
        clean
    }
}
