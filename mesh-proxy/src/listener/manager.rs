//! The listener manager: binds sockets, runs one accept loop per bound address, and
//! reconciles with each new set of listeners from xDS.
//!
//! - A listener that stays (same name and socket) is updated **in place**: the accept
//!   loop reads the newest config for each new connection; connections of a filter chain
//!   that is still there, byte for byte, keep running, and those of a chain that changed
//!   or went away drain (HTTP: `Connection: close` / GOAWAY) for `drain_duration`, then
//!   close, as Envoy's in-place filter chain update does. Without that a pooled
//!   sidecar-to-sidecar connection would keep a removed filter (an AuthorizationPolicy, a
//!   rate limit) in force for as long as it lives.
//! - A removed listener (or one whose address changed) stops accepting at once and
//!   drains its connections for `drain_duration`, then force-closes what is left.
//! - `use_original_dst` listeners hand a redirected connection to the listener bound to
//!   its original destination (exact address, then the wildcard address on that port),
//!   including `bind_to_port: false` listeners, as Istio's outbound capture needs.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use bytes::BytesMut;
use parking_lot::Mutex;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::{
    ConnInfo, Io,
    filter_chain::MatchInput,
    next_connection_id,
    original_dst::original_dst,
    sniff::{SniffError, Sniffed, sniff},
};
use crate::{
    Runtime,
    config::{
        ConfigError,
        listener::{FilterChain, Listener, Terminal},
    },
    drain,
    stats::{ListenerLabels, ListenerStats},
};

/// One active listener, shared by its accept loops and by hand-off lookups.
#[derive(Debug)]
pub struct ListenerHandle {
    config: ArcSwap<Listener>,
    /// Runtime whose drain watch is this listener's (child of the process drain).
    rt: Runtime,
    stats: ListenerStats,
    /// Cancelled when the drain deadline passes: remaining connections are closed.
    force: CancellationToken,
    /// Cancelled when the listener stops accepting.
    stop_accepting: CancellationToken,
    /// The addresses actually bound (port 0 resolved).
    bound: Vec<SocketAddr>,
    /// The drain of each filter chain's connections, by chain fingerprint. Also the lock
    /// that orders config updates with connections picking their chain.
    chains: Mutex<HashMap<u64, ChainDrain>>,
}

/// The connections of one filter chain of a listener.
#[derive(Debug)]
struct ChainDrain {
    trigger: drain::Trigger,
    watch: drain::Watch,
    /// Cancelled when the chain's drain deadline passes.
    force: CancellationToken,
}

impl ListenerHandle {
    pub fn config(&self) -> Arc<Listener> {
        self.config.load_full()
    }

    pub fn bound_addresses(&self) -> &[SocketAddr] {
        &self.bound
    }

    /// The chain for a connection, matched against the newest config under the lock that
    /// updates take, so no connection joins a chain that has already been told to drain;
    /// with its drain watch and force token.
    fn join_chain(
        &self,
        input: &MatchInput<'_>,
    ) -> Option<(Arc<FilterChain>, drain::Watch, CancellationToken)> {
        let mut chains = self.chains.lock();
        let cfg = self.config.load();
        let chain = match cfg.matcher.find(input) {
            Some(i) => cfg.filter_chains[i].clone(),
            None => match &cfg.default_filter_chain {
                Some(c) => c.clone(),
                None => {
                    debug!(peer = %input.source, destination = %input.destination, listener = %cfg.name, "no filter chain matched; closing");
                    self.stats.no_filter_chain_match.inc();
                    return None;
                }
            },
        };
        let d = chains.entry(chain.fingerprint).or_insert_with(|| {
            let (trigger, watch) = self.rt.drain.child();
            ChainDrain {
                trigger,
                watch,
                force: CancellationToken::new(),
            }
        });
        Some((chain, d.watch.clone(), d.force.clone()))
    }

    /// Installs `new` in place and drains the connections of chains it no longer has.
    fn update(&self, new: Arc<Listener>, deadline: Duration) {
        let mut chains = self.chains.lock();
        let keep: std::collections::HashSet<u64> = new
            .filter_chains
            .iter()
            .chain(new.default_filter_chain.iter())
            .map(|c| c.fingerprint)
            .collect();
        let name = new.name.clone();
        self.config.store(new);
        let stale: Vec<u64> = chains
            .keys()
            .filter(|k| !keep.contains(k))
            .copied()
            .collect();
        for fp in stale {
            let Some(ChainDrain {
                trigger,
                watch,
                force,
            }) = chains.remove(&fp)
            else {
                continue;
            };
            drop(watch);
            let name = name.clone();
            let server = self.rt.stats.clone();
            server.server.total_filter_chains_draining.inc();
            debug!(listener = %name, chain = fp, "filter chain changed; draining its connections");
            tokio::spawn(async move {
                if !trigger.drain_for(deadline).await {
                    info!(listener = %name, "drain deadline reached; closing the connections of a changed filter chain");
                    force.cancel();
                }
                server.server.total_filter_chains_draining.dec();
            });
        }
    }
}

struct Active {
    handle: Arc<ListenerHandle>,
    trigger: drain::Trigger,
}

/// Binds, updates and drains listeners. Cheap to clone.
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

struct Inner {
    rt: Runtime,
    drain_duration: Duration,
    active: Mutex<HashMap<String, Active>>,
    /// Listeners by configured address, for `use_original_dst` hand-off.
    by_addr: ArcSwap<HashMap<SocketAddr, Arc<ListenerHandle>>>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager").finish_non_exhaustive()
    }
}

impl Manager {
    /// `rt.drain` is the process-wide watch; each listener gets a child of it.
    pub fn new(rt: Runtime, drain_duration: Duration) -> Self {
        Manager {
            inner: Arc::new(Inner {
                rt,
                drain_duration,
                active: Mutex::new(HashMap::new()),
                by_addr: ArcSwap::from_pointee(HashMap::new()),
            }),
        }
    }

    /// Reconciles the running listeners with `desired`. Listeners that cannot be bound
    /// are returned as errors (the caller NACKs them and keeps their previous version,
    /// which stays running). Must be called inside the tokio runtime.
    pub fn apply(&self, desired: &HashMap<String, Arc<Listener>>) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut active = self.inner.active.lock();
        // Removals (and address changes) first, so a renamed listener can take the port.
        let mut replaced = Vec::new();
        let names: Vec<String> = active.keys().cloned().collect();
        for name in names {
            let keep = match desired.get(&name) {
                None => false,
                Some(new) => active
                    .get(&name)
                    .is_some_and(|a| a.handle.config.load().same_socket(new)),
            };
            if !keep && let Some(a) = active.remove(&name) {
                if desired.contains_key(&name) {
                    replaced.push(name.clone());
                }
                drop(self.retire(a));
            }
        }
        for (name, new) in desired {
            match active.get(name) {
                Some(a) => {
                    if !Arc::ptr_eq(&a.handle.config.load_full(), new) {
                        debug!(listener = %name, "listener updated in place");
                        a.handle.update(new.clone(), self.inner.drain_duration);
                    }
                }
                None => match self.start(new.clone()) {
                    Ok(a) => {
                        info!(listener = %name, addresses = ?a.handle.bound, replaced = replaced.contains(name), "listener started");
                        active.insert(name.clone(), a);
                    }
                    Err(e) => {
                        warn!(listener = %name, error = %e, "cannot start listener");
                        errors.push(ConfigError {
                            resource: name.clone(),
                            field: "address".into(),
                            message: format!("cannot bind {}: {e}", new.address),
                        });
                    }
                },
            }
        }
        self.publish(&active);
        errors
    }

    fn publish(&self, active: &HashMap<String, Active>) {
        let mut by_addr = HashMap::new();
        for a in active.values() {
            let cfg = a.handle.config.load();
            for addr in std::iter::once(&cfg.address).chain(cfg.additional_addresses.iter()) {
                by_addr.insert(*addr, a.handle.clone());
            }
        }
        self.inner
            .rt
            .stats
            .server
            .total_listeners_active
            .set(active.len() as i64);
        self.inner.by_addr.store(Arc::new(by_addr));
    }

    fn start(&self, cfg: Arc<Listener>) -> io::Result<Active> {
        let mut sockets = Vec::new();
        if cfg.bind_to_port {
            for addr in std::iter::once(&cfg.address).chain(cfg.additional_addresses.iter()) {
                sockets.push(bind(*addr, cfg.tcp_backlog)?);
            }
        }
        let bound = sockets.iter().filter_map(|s| s.local_addr().ok()).collect();
        let (trigger, watch) = self.inner.rt.drain.child();
        let stats = self.inner.rt.stats.listener.handles(&ListenerLabels {
            envoy_listener_address: cfg.stat_name.clone(),
        });
        let handle = Arc::new(ListenerHandle {
            config: ArcSwap::new(cfg),
            rt: self.inner.rt.with_drain(watch),
            stats,
            force: CancellationToken::new(),
            stop_accepting: CancellationToken::new(),
            bound,
            chains: Mutex::new(HashMap::new()),
        });
        for socket in sockets {
            let handle = handle.clone();
            let inner = self.inner.clone();
            let span = info_span!("listener", name = %handle.config.load().name);
            tokio::spawn(accept_loop(socket, handle, inner).instrument(span));
        }
        Ok(Active { handle, trigger })
    }

    /// Stops accepting and drains the listener's connections in the background; the
    /// task resolves to whether they all finished before the deadline.
    fn retire(&self, a: Active) -> tokio::task::JoinHandle<bool> {
        let Active { handle, trigger } = a;
        handle.stop_accepting.cancel();
        let deadline = self.inner.drain_duration;
        let stats = self.inner.rt.stats.clone();
        stats.server.total_listeners_draining.inc();
        let name = handle.config.load().name.clone();
        info!(listener = %name, ?deadline, "listener removed; draining its connections");
        let force = handle.force.clone();
        // The handle's runtime holds a watch; drop our reference so only connections do.
        drop(handle);
        tokio::spawn(async move {
            let clean = trigger.drain_for(deadline).await;
            if !clean {
                info!(listener = %name, "drain deadline reached; closing remaining connections");
                force.cancel();
            }
            stats.server.total_listeners_draining.dec();
            clean
        })
    }

    /// The active listeners and their bound addresses (admin `/listeners`).
    pub fn listeners(&self) -> Vec<(Arc<Listener>, Vec<SocketAddr>)> {
        let active = self.inner.active.lock();
        let mut v: Vec<_> = active
            .values()
            .map(|a| (a.handle.config(), a.handle.bound.clone()))
            .collect();
        v.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        v
    }

    /// The addresses a listener is bound to (tests bind port 0).
    pub fn bound_addresses(&self, name: &str) -> Option<Vec<SocketAddr>> {
        self.inner
            .active
            .lock()
            .get(name)
            .map(|a| a.handle.bound.clone())
    }

    /// `/drain_listeners`: stop accepting on every listener (inbound only if asked) and
    /// drain their connections; the listeners stay configured but closed.
    pub fn drain_listeners(&self, inbound_only: bool) -> Vec<tokio::task::JoinHandle<bool>> {
        let mut active = self.inner.active.lock();
        let mut drains = Vec::new();
        let names: Vec<String> = active
            .iter()
            .filter(|(_, a)| {
                let c = a.handle.config.load();
                !c.modify_only_drain
                    && (!inbound_only
                        || c.traffic_direction
                            == crate::config::listener::TrafficDirection::Inbound)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for n in names {
            if let Some(a) = active.remove(&n) {
                drains.push(self.retire(a));
            }
        }
        self.publish(&active);
        drains
    }

    /// Process shutdown: stop accepting everywhere, drain every listener's connections
    /// for the drain duration (then close the rest). Returns whether all finished in time.
    pub async fn shutdown(&self) -> bool {
        let drains = self.drain_listeners(false);
        let mut clean = true;
        for d in drains {
            clean &= d.await.unwrap_or(false);
        }
        clean
    }
}

fn bind(addr: SocketAddr, backlog: Option<u32>) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // Dual-stack listeners are two listeners (Istio's additional_addresses).
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(
        backlog
            .map(|b| b.min(i32::MAX as u32) as i32)
            .unwrap_or(1024),
    )?;
    TcpListener::from_std(socket.into())
}

async fn accept_loop(socket: TcpListener, handle: Arc<ListenerHandle>, inner: Arc<Inner>) {
    loop {
        let accepted = tokio::select! {
            r = socket.accept() => r,
            _ = handle.stop_accepting.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let handle = handle.clone();
                let inner = inner.clone();
                tokio::spawn(async move {
                    // Until the connection is dispatched it belongs to this listener.
                    let force = handle.force.clone();
                    let prepared = tokio::select! {
                        p = prepare(stream, peer, handle, inner) => p,
                        _ = force.cancelled() => None,
                    };
                    if let Some(p) = prepared {
                        p.serve().await;
                    }
                });
            }
            Err(e) => {
                // EMFILE/ENFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Counts the connection on its listener for its whole life.
struct ActiveConn(ListenerStats);

impl ActiveConn {
    fn new(stats: &ListenerStats) -> Self {
        stats.downstream_cx_total.inc();
        stats.downstream_cx_active.inc();
        ActiveConn(stats.clone())
    }
}

impl Drop for ActiveConn {
    fn drop(&mut self) {
        self.0.downstream_cx_active.dec();
        self.0.downstream_cx_destroy.inc();
    }
}

/// A connection past the listener filters and filter-chain match, ready to serve.
struct Prepared {
    io: Io,
    conn: ConnInfo,
    chain: Arc<FilterChain>,
    /// The chain's drain (a child of the listener's) and its deadline.
    drain: drain::Watch,
    chain_force: CancellationToken,
    /// The owning listener (after any hand-off).
    handle: Arc<ListenerHandle>,
    _count: ActiveConn,
}

impl Prepared {
    async fn serve(self) {
        let Prepared {
            io,
            conn,
            chain,
            drain,
            chain_force,
            handle,
            _count,
        } = self;
        let rt = handle.rt.with_drain(drain);
        let serve = async move {
            match &chain.terminal {
                Terminal::TcpProxy(t) => crate::tcp::proxy(io, conn, t.clone(), rt).await,
                Terminal::Http(h) => crate::http::serve(io, conn, h.clone(), rt).await,
            }
        };
        tokio::select! {
            biased;
            _ = serve => {}
            _ = crate::drain::woken_only(handle.force.cancelled()) => {
                handle.stats.downstream_cx_drained.inc();
            }
            _ = crate::drain::woken_only(chain_force.cancelled()) => {
                handle.stats.downstream_cx_drained.inc();
            }
        }
    }
}

async fn prepare(
    mut stream: TcpStream,
    peer: SocketAddr,
    mut handle: Arc<ListenerHandle>,
    inner: Arc<Inner>,
) -> Option<Prepared> {
    let id = next_connection_id();
    let local = stream.local_addr().ok()?;
    let _ = stream.set_nodelay(true);
    inner.rt.stats.server.connections_total.inc();
    let mut cfg = handle.config();
    let orig = if cfg.listener_filters.original_dst || cfg.use_original_dst {
        original_dst(&stream)
    } else {
        None
    };

    // Hand-off to the listener bound to the original destination.
    if cfg.use_original_dst
        && let Some(dst) = orig
        && let Some(target) = find_listener(&inner.by_addr.load(), dst)
        && !Arc::ptr_eq(&target, &handle)
    {
        debug!(from = %cfg.name, to = %target.config.load().name, %dst, "hand-off");
        handle = target;
        cfg = handle.config();
    }
    let count = ActiveConn::new(&handle.stats);

    let mut buf = BytesMut::new();
    let mut sniffed = Sniffed::default();
    let lf = cfg.listener_filters;
    if lf.tls_inspector || lf.http_inspector {
        match sniff(
            &mut stream,
            &mut buf,
            lf.tls_inspector,
            lf.http_inspector,
            cfg.listener_filters_timeout,
            &mut sniffed,
        )
        .await
        {
            Ok(()) => {}
            Err(SniffError::Timeout(_)) if cfg.continue_on_listener_filters_timeout => {}
            Err(e) => {
                debug!(%peer, error = %e, "listener filters failed; closing");
                handle.stats.downstream_listener_filter_error.inc();
                return None;
            }
        }
    }

    let destination = orig.unwrap_or(local);
    let input = MatchInput {
        destination,
        source: peer,
        direct_source: peer.ip(),
        server_name: sniffed.server_name.as_deref(),
        transport_protocol: sniffed.transport_protocol.as_str(),
        application_protocols: &sniffed.application_protocols,
    };
    let (chain, drain, chain_force) = handle.join_chain(&input)?;
    let conn = ConnInfo {
        id,
        listener: cfg.name.clone(),
        filter_chain: chain.name.clone(),
        local,
        peer,
        original_dst: orig,
        server_name: sniffed.server_name.map(Arc::from),
        application_protocols: sniffed.application_protocols,
        transport_protocol: sniffed.transport_protocol,
        peer_identity: None,
        start: std::time::Instant::now(),
        start_time: std::time::SystemTime::now(),
    };
    let io = Io::with_prefix(stream, buf.freeze());
    drop(cfg);
    Some(Prepared {
        io,
        conn,
        chain,
        drain,
        chain_force,
        handle,
        _count: count,
    })
}

/// Exact `ip:port`, else the wildcard address of the same family (IPv4-mapped
/// destinations also try `0.0.0.0`).
fn find_listener(
    by_addr: &HashMap<SocketAddr, Arc<ListenerHandle>>,
    dst: SocketAddr,
) -> Option<Arc<ListenerHandle>> {
    if let Some(h) = by_addr.get(&dst) {
        return Some(h.clone());
    }
    let port = dst.port();
    let wild = match dst.ip() {
        IpAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => return find_listener(by_addr, SocketAddr::new(IpAddr::V4(v4), port)),
            None => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
        },
    };
    by_addr.get(&wild).cloned()
}
