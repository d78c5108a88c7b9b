//! A live cluster: its config, the current [`HostSet`] (swapped atomically on endpoint
//! updates), circuit breakers, stats, and how to open a TCP connection to one of its
//! hosts. ORIGINAL_DST clusters create hosts on demand; STRICT_DNS clusters re-resolve
//! in a background task owned by the cluster.

use std::{collections::HashMap, io, net::SocketAddr, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::{net::TcpStream, task::AbortHandle};

use super::{
    CircuitBreakers, Host,
    lb::{HostSet, LbContext, LocalityGroup},
};
use crate::{
    config::{
        address::HostPort,
        cluster::{Cluster as ClusterConfig, Discovery, DnsFamily},
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

pub struct Cluster {
    config: Arc<ClusterConfig>,
    hosts: ArcSwap<HostSet>,
    /// The last endpoint assignment, to rebuild tables when health changes.
    assignment: ArcSwap<Option<ClusterLoadAssignment>>,
    circuit_breakers: CircuitBreakers,
    high_circuit_breakers: CircuitBreakers,
    stats: ClusterStats,
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
    /// assignment; `previous` hosts are reused when unchanged).
    pub fn new(config: ClusterConfig, stats: &Stats, previous: Option<&Cluster>) -> Arc<Cluster> {
        let labels = ClusterLabels {
            envoy_cluster_name: config.stat_name.clone(),
        };
        let cluster = Arc::new(Cluster {
            circuit_breakers: CircuitBreakers::new(&config.circuit_breakers.default),
            high_circuit_breakers: CircuitBreakers::new(&config.circuit_breakers.high),
            stats: stats.cluster.handles(&labels),
            hosts: ArcSwap::from_pointee(HostSet::default()),
            assignment: ArcSwap::from_pointee(None),
            original_dst_hosts: Mutex::new(HashMap::new()),
            dns_task: Mutex::new(None),
            config: Arc::new(config),
        });
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
            Discovery::StrictDns { .. } => cluster.start_dns(),
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
        for h in self.hosts.load().hosts.iter().chain(
            previous
                .map(|p| p.hosts.load().hosts.clone())
                .unwrap_or_default()
                .iter(),
        ) {
            existing.entry(h.addr).or_insert_with(|| h.clone());
        }
        let priorities = group_hosts(&la, &existing, |ep| match &ep.address {
            HostPort::Ip(a) => vec![*a],
            HostPort::Dns { .. } => Vec::new(),
        });
        self.install(priorities, la.overprovisioning_factor);
        self.assignment.store(Arc::new(Some(la)));
        self.stats.update_success.inc();
    }

    fn install(&self, priorities: Vec<Vec<LocalityGroup>>, overprovisioning_factor: u32) {
        let set = HostSet::build(&self.config, priorities, overprovisioning_factor);
        self.stats.membership_total.set(set.hosts.len() as i64);
        self.stats
            .membership_healthy
            .set(set.healthy_count() as i64);
        self.hosts.store(Arc::new(set));
    }

    /// Opens a TCP connection to `host` with the cluster's connect timeout, counting it
    /// against `max_connections` until the returned connection is dropped.
    pub async fn connect(&self, host: &Arc<Host>) -> Result<UpstreamConnection, ConnectError> {
        let Some(cb) = self.circuit_breakers.try_acquire_connection() else {
            self.stats.upstream_cx_overflow.inc();
            return Err(ConnectError::Overflow {
                cluster: self.config.name.clone(),
            });
        };
        self.stats.upstream_cx_total.inc();
        let timeout = self.config.connect_timeout;
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(host.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                self.stats.upstream_cx_connect_fail.inc();
                host.record_connect_failure();
                return Err(ConnectError::Io {
                    addr: host.addr,
                    source,
                });
            }
            Err(_) => {
                self.stats.upstream_cx_connect_fail.inc();
                self.stats.upstream_cx_connect_timeout.inc();
                host.record_connect_failure();
                return Err(ConnectError::Timeout {
                    addr: host.addr,
                    timeout,
                });
            }
        };
        // Latency over throughput on the proxy hop, as Envoy does.
        let _ = stream.set_nodelay(true);
        self.stats.upstream_cx_active.inc();
        Ok(UpstreamConnection {
            stream,
            host: host.clone(),
            guard: ConnectionGuard {
                _cb: cb,
                _host: host.connection_guard(),
                active: self.stats.upstream_cx_active.clone(),
            },
        })
    }

    /// Picks a host and connects, trying other hosts on failure up to `attempts` in total.
    pub async fn connect_any(
        &self,
        ctx: &LbContext<'_>,
        attempts: u32,
    ) -> Result<UpstreamConnection, ConnectError> {
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut last = None;
        for _ in 0..attempts.max(1) {
            let avoid: Vec<SocketAddr> = ctx.avoid.iter().chain(tried.iter()).copied().collect();
            let lctx = LbContext {
                avoid: &avoid,
                ..*ctx
            };
            let Some(host) = self.pick(&lctx) else {
                return Err(last.unwrap_or(ConnectError::NoHealthyHost {
                    cluster: self.config.name.clone(),
                }));
            };
            match self.connect(&host).await {
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

    fn start_dns(self: &Arc<Self>) {
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
            loop {
                let resolved = resolve_all(&la, family).await;
                let Some(cluster) = weak.upgrade() else {
                    return;
                };
                let existing: HashMap<SocketAddr, Arc<Host>> = cluster
                    .hosts
                    .load()
                    .hosts
                    .iter()
                    .map(|h| (h.addr, h.clone()))
                    .collect();
                let priorities = group_hosts(&la, &existing, |ep| {
                    resolved.get(&ep.address).cloned().unwrap_or_default()
                });
                cluster.install(priorities, la.overprovisioning_factor);
                cluster.assignment.store(Arc::new(Some(la.clone())));
                drop(cluster);
                tokio::time::sleep(refresh_rate).await;
            }
        });
        *self.dns_task.lock() = Some(task.abort_handle());
    }
}

async fn resolve_all(
    la: &ClusterLoadAssignment,
    family: DnsFamily,
) -> HashMap<HostPort, Vec<SocketAddr>> {
    let mut out = HashMap::new();
    for ep in la.localities.iter().flat_map(|l| l.endpoints.iter()) {
        let addrs = match &ep.address {
            HostPort::Ip(a) => vec![*a],
            HostPort::Dns { host, port } => {
                match tokio::net::lookup_host((host.as_str(), *port)).await {
                    Ok(it) => {
                        let all: Vec<SocketAddr> = it.collect();
                        filter_family(all, family)
                    }
                    Err(e) => {
                        tracing::debug!(%host, error = %e, "dns resolution failed; keeping no hosts for it");
                        Vec::new()
                    }
                }
            }
        };
        out.insert(ep.address.clone(), addrs);
    }
    out
}

fn filter_family(mut all: Vec<SocketAddr>, family: DnsFamily) -> Vec<SocketAddr> {
    let v4: Vec<_> = all.iter().copied().filter(SocketAddr::is_ipv4).collect();
    let v6: Vec<_> = all.iter().copied().filter(SocketAddr::is_ipv6).collect();
    let mut pick = match family {
        DnsFamily::V4Only => v4,
        DnsFamily::V6Only => v6,
        DnsFamily::Auto => {
            if v6.is_empty() {
                v4
            } else {
                v6
            }
        }
        DnsFamily::V4Preferred => {
            if v4.is_empty() {
                v6
            } else {
                v4
            }
        }
        DnsFamily::All => std::mem::take(&mut all),
    };
    pick.sort();
    pick.dedup();
    pick
}

/// Groups an assignment's endpoints into priorities and localities as hosts, reusing
/// `existing` hosts whose attributes are unchanged.
fn group_hosts(
    la: &ClusterLoadAssignment,
    existing: &HashMap<SocketAddr, Arc<Host>>,
    addrs_of: impl Fn(&crate::config::endpoint::Endpoint) -> Vec<SocketAddr>,
) -> Vec<Vec<LocalityGroup>> {
    let max_priority = la.localities.iter().map(|l| l.priority).max().unwrap_or(0) as usize;
    let mut priorities: Vec<Vec<LocalityGroup>> = (0..=max_priority).map(|_| Vec::new()).collect();
    if la.localities.is_empty() {
        return Vec::new();
    }
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
                    _ => Arc::new(fresh),
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
    active: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.active.dec();
    }
}

/// Used by tests and by `/clusters`: health of every host.
pub fn host_health(set: &HostSet) -> Vec<(SocketAddr, HealthStatus)> {
    set.hosts.iter().map(|h| (h.addr, h.health())).collect()
}
