//! A live cluster: its config, the current [`HostSet`] (swapped atomically whenever the
//! endpoints or a host's health change), circuit breakers, outlier detection, stats, and
//! how to open a TCP connection to one of its hosts. ORIGINAL_DST clusters create hosts
//! on demand; STRICT_DNS clusters re-resolve in a background task owned by the cluster.

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::{net::TcpStream, task::AbortHandle, time::Instant};

use super::{
    CircuitBreakers, Host, dns,
    lb::{HostSet, LbContext, LocalityGroup, Membership},
    outlier::{Detector, Outcome},
    socket,
};
use crate::{
    config::{
        address::HostPort,
        cluster::{Cluster as ClusterConfig, Discovery},
        endpoint::{ClusterLoadAssignment, HealthStatus},
    },
    stats::{ClusterLabels, ClusterStats, Stats},
};

/// Why an upstream TCP connection could not be made (maps to Envoy's response flags).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cluster {cluster:?}: max_connections circuit breaker is open (UO)")]
    Overflow { cluster: String },
    #[error("cluster {cluster:?}: no healthy upstream host (UH)")]
    NoHealthyHost { cluster: String },
    #[error("connect to {addr} timed out after {timeout:?} (UF)")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("connect to {addr} failed: {source} (UF)")]
    Io { addr: SocketAddr, source: io::Error },
}

/// Orders clusters by creation, so that a host shared by an old and a new version of a
/// cluster reports to the new one's outlier detector.
static GENERATION: AtomicU64 = AtomicU64::new(1);

pub struct Cluster {
    config: Arc<ClusterConfig>,
    generation: u64,
    hosts: ArcSwap<HostSet>,
    /// The hosts as the last assignment grouped them; rebuilt into `hosts` under this lock
    /// when health changes, so an ejection never races an endpoint update.
    membership: Mutex<Membership>,
    /// The last endpoint assignment (EDS or inline).
    assignment: ArcSwap<Option<ClusterLoadAssignment>>,
    circuit_breakers: CircuitBreakers,
    high_circuit_breakers: CircuitBreakers,
    stats: ClusterStats,
    outlier: Option<Arc<Detector>>,
    /// ORIGINAL_DST: hosts made on demand, reused so per-host pools work.
    original_dst_hosts: Mutex<HashMap<SocketAddr, Arc<Host>>>,
    dns_task: Mutex<Option<AbortHandle>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(task) = self.dns_task.lock().take() {
            task.abort();
        }
    }
}

impl Cluster {
    /// A cluster with no hosts yet (EDS fills them; STATIC/STRICT_DNS use the inline
    /// assignment; `previous` hosts, with their pools and outlier state, are reused when
    /// unchanged).
    pub fn new(config: ClusterConfig, stats: &Stats, previous: Option<&Cluster>) -> Arc<Cluster> {
        let labels = ClusterLabels {
            envoy_cluster_name: config.stat_name.clone(),
        };
        let handles = stats.cluster.handles(&labels);
        let cluster = Arc::new_cyclic(|weak: &Weak<Cluster>| Cluster {
            circuit_breakers: CircuitBreakers::new(&config.circuit_breakers.default),
            high_circuit_breakers: CircuitBreakers::new(&config.circuit_breakers.high),
            outlier: config
                .outlier_detection
                .clone()
                .map(|o| Detector::new(o, weak.clone(), handles.clone())),
            stats: handles,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            hosts: ArcSwap::from_pointee(HostSet::default()),
            membership: Mutex::new(Membership::default()),
            assignment: ArcSwap::from_pointee(None),
            original_dst_hosts: Mutex::new(HashMap::new()),
            dns_task: Mutex::new(None),
            config: Arc::new(config),
        });
        if let Some(d) = &cluster.outlier
            && !d.start()
        {
            tracing::warn!(cluster = %cluster.config.name, "no runtime: ejected hosts will not return");
        }
        match &cluster.config.discovery {
            Discovery::Static => {
                if let Some(la) = cluster.config.load_assignment.clone() {
                    cluster.set_assignment(la, previous);
                }
            }
            Discovery::Eds { .. } => {
                // Same EDS resource as before: keep the endpoints until EDS says otherwise.
                if let Some(prev) = previous
                    .filter(|p| p.config.eds_service_name() == cluster.config.eds_service_name())
                    && let Some(la) = prev.assignment.load().as_ref().clone()
                {
                    cluster.set_assignment(la, Some(prev));
                }
            }
            Discovery::StrictDns { .. } => cluster.start_dns(previous.is_some()),
            Discovery::OriginalDst { .. } => {}
        }
        cluster
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    pub fn stats(&self) -> &ClusterStats {
        &self.stats
    }

    /// The DEFAULT-priority circuit breakers.
    pub fn circuit_breakers(&self) -> &CircuitBreakers {
        &self.circuit_breakers
    }

    /// The HIGH-priority circuit breakers (routes with `priority: HIGH`).
    pub fn high_circuit_breakers(&self) -> &CircuitBreakers {
        &self.high_circuit_breakers
    }

    /// The outlier detector, when the cluster has `outlier_detection`.
    pub fn outlier_detector(&self) -> Option<&Arc<Detector>> {
        self.outlier.as_ref()
    }

    /// The current hosts and tables.
    pub fn hosts(&self) -> Arc<HostSet> {
        self.hosts.load_full()
    }

    /// Whether the cluster has received its endpoints (EDS) or needs none.
    pub fn has_assignment(&self) -> bool {
        self.assignment.load().is_some() || !matches!(self.config.discovery, Discovery::Eds { .. })
    }

    /// Picks a host for a request or connection.
    pub fn pick(&self, ctx: &LbContext<'_>) -> Option<Arc<Host>> {
        if let Discovery::OriginalDst {
            upstream_port_override,
            ..
        } = &self.config.discovery
        {
            let mut dst = ctx.original_dst?;
            if let Some(port) = upstream_port_override {
                dst.set_port(*port);
            }
            let mut hosts = self.original_dst_hosts.lock();
            if hosts.len() > 10_000 {
                // Bound memory for clusters that see many destinations; idle hosts
                // (no pool user) are recreated on demand.
                hosts.retain(|_, h| Arc::strong_count(h) > 1);
            }
            return Some(
                hosts
                    .entry(dst)
                    .or_insert_with(|| Arc::new(Host::new(dst)))
                    .clone(),
            );
        }
        let host = self.hosts.load().pick(ctx);
        if host.is_none() {
            self.stats.upstream_cx_none_healthy.inc();
        }
        host
    }

    /// Applies an endpoint assignment (EDS, or the inline one), reusing unchanged hosts.
    pub fn set_assignment(&self, la: ClusterLoadAssignment, previous: Option<&Cluster>) {
        let mut existing: HashMap<SocketAddr, Arc<Host>> = HashMap::new();
        for h in self.membership.lock().hosts() {
            existing.entry(h.addr).or_insert_with(|| h.clone());
        }
        if let Some(p) = previous {
            for h in p.membership.lock().hosts() {
                existing.entry(h.addr).or_insert_with(|| h.clone());
            }
        }
        // Hosts that join a cluster that already had endpoints warm up (slow start).
        let initialized = self.assignment.load().is_some()
            || previous.is_some_and(|p| p.assignment.load().is_some());
        let warm = (initialized && self.config.slow_start.is_some()).then(Instant::now);
        let priorities = group_hosts(
            &la,
            &existing,
            |ep| match &ep.address {
                HostPort::Ip(a) => vec![*a],
                HostPort::Dns { .. } => Vec::new(),
            },
            warm,
        );
        self.install(Membership {
            priorities,
            overprovisioning_factor: la.overprovisioning_factor,
            weighted_priority_health: la.weighted_priority_health,
        });
        self.assignment.store(Arc::new(Some(la)));
        self.stats.update_success.inc();
    }

    /// Makes `m` the cluster's membership: hosts report to this cluster's outlier
    /// detector from now on, and the load-balancing tables are rebuilt.
    fn install(&self, m: Membership) {
        let mut current = self.membership.lock();
        for h in m.hosts() {
            h.outlier.attach(self.outlier.as_ref(), self.generation);
        }
        *current = m;
        self.publish(&current);
    }

    /// Rebuilds the tables after a health change (an ejection or a return).
    pub(crate) fn rebuild(&self) {
        let current = self.membership.lock();
        self.publish(&current);
    }

    fn publish(&self, m: &Membership) {
        let set = HostSet::build(&self.config, m).with_stats(self.stats.clone());
        self.stats.membership_total.set(set.hosts.len() as i64);
        self.stats
            .membership_healthy
            .set(set.healthy_count() as i64);
        self.stats.membership_degraded.set(
            set.hosts
                .iter()
                .filter(|h| h.lb_health() == HealthStatus::Degraded)
                .count() as i64,
        );
        if self.outlier.is_some() {
            self.stats
                .outlier_detection_ejections_active
                .set(set.ejected_count() as i64);
        }
        self.hosts.store(Arc::new(set));
    }

    pub(crate) fn refresh_outlier_gauge(&self) {
        self.stats
            .outlier_detection_ejections_active
            .set(self.hosts.load().ejected_count() as i64);
    }

    /// Opens a TCP connection to `host` (connect timeout, bind address, keepalive),
    /// counting it against `max_connections` until the returned connection is dropped,
    /// and reports the result to the host's outlier detector (a success as
    /// [`Outcome::ConnectSuccess`]: the HTTP status follows).
    pub async fn connect(&self, host: &Arc<Host>) -> Result<UpstreamConnection, ConnectError> {
        self.connect_reporting(host, Outcome::ConnectSuccess).await
    }

    async fn connect_reporting(
        &self,
        host: &Arc<Host>,
        success: Outcome,
    ) -> Result<UpstreamConnection, ConnectError> {
        let Some(cb) = self.circuit_breakers.try_acquire_connection() else {
            self.stats.upstream_cx_overflow.inc();
            return Err(ConnectError::Overflow {
                cluster: self.config.name.clone(),
            });
        };
        self.stats.upstream_cx_total.inc();
        let timeout = self.config.connect_timeout;
        let open = socket::open(
            host.addr,
            self.config.upstream_bind.as_ref(),
            self.config.tcp_keepalive.as_ref(),
        );
        let stream = match tokio::time::timeout(timeout, open).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                self.stats.upstream_cx_connect_fail.inc();
                host.record_connect_failure();
                host.report(Outcome::ConnectFailed);
                return Err(ConnectError::Io {
                    addr: host.addr,
                    source,
                });
            }
            Err(_) => {
                self.stats.upstream_cx_connect_fail.inc();
                self.stats.upstream_cx_connect_timeout.inc();
                host.record_connect_failure();
                host.report(Outcome::Timeout);
                return Err(ConnectError::Timeout {
                    addr: host.addr,
                    timeout,
                });
            }
        };
        host.report(success);
        self.stats.upstream_cx_active.inc();
        Ok(UpstreamConnection {
            stream,
            host: host.clone(),
            guard: ConnectionGuard {
                _cb: cb,
                _host: host.connection_guard(),
                stats: self.stats.clone(),
            },
        })
    }

    /// Picks a host and connects, trying other hosts on failure up to `attempts` in total
    /// (tcp_proxy: a success is final for outlier detection, nothing follows it).
    pub async fn connect_any(
        &self,
        ctx: &LbContext<'_>,
        attempts: u32,
    ) -> Result<UpstreamConnection, ConnectError> {
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut last = None;
        for _ in 0..attempts.max(1) {
            let host = if tried.is_empty() {
                self.pick(ctx)
            } else {
                let avoid: Vec<SocketAddr> =
                    ctx.avoid.iter().chain(tried.iter()).copied().collect();
                self.pick(&LbContext {
                    avoid: &avoid,
                    ..*ctx
                })
            };
            let Some(host) = host else {
                return Err(last.unwrap_or(ConnectError::NoHealthyHost {
                    cluster: self.config.name.clone(),
                }));
            };
            match self
                .connect_reporting(&host, Outcome::ConnectSuccessFinal)
                .await
            {
                Ok(c) => return Ok(c),
                Err(e @ ConnectError::Overflow { .. }) => return Err(e),
                Err(e) => {
                    tried.push(host.addr);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(ConnectError::NoHealthyHost {
            cluster: self.config.name.clone(),
        }))
    }

    /// `reused`: the cluster replaces an earlier version (hosts it resolves are new to
    /// an initialized cluster and warm up).
    fn start_dns(self: &Arc<Self>, reused: bool) {
        let Discovery::StrictDns {
            refresh_rate,
            family,
            ..
        } = self.config.discovery.clone()
        else {
            return;
        };
        let Some(la) = self.config.load_assignment.clone() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(cluster = %self.config.name, "no runtime: STRICT_DNS cluster will not resolve");
            return;
        };
        let weak = Arc::downgrade(self);
        let task = rt.spawn(async move {
            let mut initialized = reused;
            loop {
                let resolved = dns::resolve_all(&la, family).await;
                let Some(cluster) = weak.upgrade() else {
                    return;
                };
                let existing: HashMap<SocketAddr, Arc<Host>> = cluster
                    .membership
                    .lock()
                    .hosts()
                    .map(|h| (h.addr, h.clone()))
                    .collect();
                let warm = (initialized && cluster.config.slow_start.is_some()).then(Instant::now);
                let priorities = group_hosts(
                    &la,
                    &existing,
                    |ep| resolved.get(&ep.address).cloned().unwrap_or_default(),
                    warm,
                );
                cluster.install(Membership {
                    priorities,
                    overprovisioning_factor: la.overprovisioning_factor,
                    weighted_priority_health: la.weighted_priority_health,
                });
                cluster.assignment.store(Arc::new(Some(la.clone())));
                initialized = true;
                drop(cluster);
                tokio::time::sleep(refresh_rate).await;
            }
        });
        *self.dns_task.lock() = Some(task.abort_handle());
    }
}

/// Groups an assignment's endpoints into priorities and localities as hosts, reusing
/// `existing` hosts whose attributes are unchanged; new hosts warm up from `warm`.
fn group_hosts(
    la: &ClusterLoadAssignment,
    existing: &HashMap<SocketAddr, Arc<Host>>,
    addrs_of: impl Fn(&crate::config::endpoint::Endpoint) -> Vec<SocketAddr>,
    warm: Option<Instant>,
) -> Vec<Vec<LocalityGroup>> {
    if la.localities.is_empty() {
        return Vec::new();
    }
    let max_priority = la.localities.iter().map(|l| l.priority).max().unwrap_or(0) as usize;
    let mut priorities: Vec<Vec<LocalityGroup>> = (0..=max_priority).map(|_| Vec::new()).collect();
    for l in &la.localities {
        let locality = Arc::new(l.locality.clone());
        let mut hosts = Vec::with_capacity(l.endpoints.len());
        for ep in &l.endpoints {
            let hostname: Arc<str> = match (&ep.address, ep.hostname.is_empty()) {
                (HostPort::Dns { host, .. }, true) => host.as_str().into(),
                _ => ep.hostname.as_str().into(),
            };
            for addr in addrs_of(ep) {
                let fresh = Host::with_attributes(
                    addr,
                    hostname.clone(),
                    locality.clone(),
                    ep.weight,
                    l.priority,
                    ep.health,
                    ep.tls_mode.as_deref().map(Arc::from),
                );
                let host = match existing.get(&addr) {
                    Some(old) if old.same_attributes(&fresh) => {
                        old.set_health(ep.health);
                        old.clone()
                    }
                    _ => Arc::new(match warm {
                        Some(t) => fresh.warming_from(t),
                        None => fresh,
                    }),
                };
                hosts.push(host);
            }
        }
        priorities[l.priority as usize].push(LocalityGroup {
            locality,
            weight: l.weight,
            hosts,
        });
    }
    priorities
}

/// An open upstream TCP connection; the counters it holds are released on drop.
#[derive(Debug)]
pub struct UpstreamConnection {
    pub stream: TcpStream,
    pub host: Arc<Host>,
    pub guard: ConnectionGuard,
}

/// Holds the circuit-breaker slot, the host's and the cluster's active-connection counts.
#[derive(Debug)]
pub struct ConnectionGuard {
    _cb: super::circuit_breaker::Guard,
    _host: super::host::HostConnectionGuard,
    /// Its `upstream_cx_active` is decremented on drop.
    stats: ClusterStats,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.stats.upstream_cx_active.dec();
    }
}

/// Used by tests and by `/clusters`: health of every host.
pub fn host_health(set: &HostSet) -> Vec<(SocketAddr, HealthStatus)> {
    set.hosts.iter().map(|h| (h.addr, h.lb_health())).collect()
}
