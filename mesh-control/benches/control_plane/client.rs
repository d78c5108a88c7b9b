//! A lightweight Envoy-like ADS client, thousands of which run in one process: it opens CDS
//! and LDS as wildcards, subscribes EDS to the EDS clusters CDS gave it and RDS to the route
//! configurations its listeners' HTTP connection managers name, and ACKs every response
//! (SotW with the version and full name list, as Envoy does; delta with the nonce).
//!
//! It does not keep resource bodies: only what it needs to follow subscriptions. Decoding is
//! shared between clients through a cache keyed by a hash of the resource bytes, so a
//! thousand clients receiving the same cluster decode it once; that keeps the harness's CPU
//! (which shares the machine with the control plane) small next to the server's.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route, route_action};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::protobuf::Any;
use mesh_control::model::json_to_struct;
use mesh_control::xds::XdsType;
use parking_lot::{Mutex, RwLock};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use xxhash_rust::xxh64::xxh64;

use crate::mesh::PodId;

/// Which ADS variant a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Sotw,
    Delta,
}

/// What a probe response must contain to count: the change really arrived, not some other
/// push of the same type.
#[derive(Debug, Clone)]
pub enum Expect {
    /// The load assignment of `cluster` has `count` endpoints.
    Endpoints { cluster: String, count: usize },
    /// Some route sends `weight` to `cluster` (a weighted-cluster entry).
    RouteWeight { cluster: String, weight: u32 },
}

/// The change being timed: clients record when they ACK a response of `ty` that carries a
/// resource named in `names` whose content meets `expect`.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    pub epoch: u64,
    pub ty: XdsType,
    pub names: HashSet<String>,
    pub expect: Expect,
}

/// State shared by every client of a run.
#[derive(Debug)]
pub struct Shared {
    pub base: Instant,
    pub probe: RwLock<Option<Arc<ProbeSpec>>>,
    cache: DecodeCache,
}

impl Shared {
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared {
            base: Instant::now(),
            probe: RwLock::new(None),
            cache: DecodeCache::default(),
        })
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Nanoseconds since `base` for an instant taken by the harness.
    pub fn at_ns(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// One client's counters, read by the harness.
#[derive(Debug)]
pub struct ClientStats {
    pub protocol: Protocol,
    pub pod: PodId,
    /// Holds CDS, LDS and answers for every EDS and RDS name it subscribed to.
    pub ready: AtomicBool,
    /// gRPC message bytes received (responses), the server's payload.
    pub bytes: AtomicU64,
    pub responses: AtomicU64,
    /// Resources held per type (CDS, EDS subscriptions, LDS, RDS subscriptions).
    pub clusters: AtomicU64,
    pub eds_names: AtomicU64,
    pub listeners: AtomicU64,
    pub rds_names: AtomicU64,
    /// The last probe epoch this client ACKed, and when (ns since `Shared::base`).
    pub probe_epoch: AtomicU64,
    pub probe_at_ns: AtomicU64,
    /// Probe-type responses carrying a probe name whose content did not match (a stale or
    /// wrong push).
    pub mismatches: AtomicU64,
    /// Why the last stream ended, and how many times the client reconnected (as Envoy
    /// does, after a second).
    pub closed: Mutex<Option<String>>,
    pub reconnects: AtomicU64,
}

impl ClientStats {
    fn new(protocol: Protocol, pod: PodId) -> ClientStats {
        ClientStats {
            protocol,
            pod,
            ready: AtomicBool::new(false),
            bytes: AtomicU64::new(0),
            responses: AtomicU64::new(0),
            clusters: AtomicU64::new(0),
            eds_names: AtomicU64::new(0),
            listeners: AtomicU64::new(0),
            rds_names: AtomicU64::new(0),
            probe_epoch: AtomicU64::new(0),
            probe_at_ns: AtomicU64::new(0),
            mismatches: AtomicU64::new(0),
            closed: Mutex::new(None),
            reconnects: AtomicU64::new(0),
        }
    }
}

/// Decoded facts about resource bodies, by content hash.
#[derive(Debug, Default)]
struct DecodeCache {
    /// Cluster -> its EDS service name, when it is an EDS cluster.
    clusters: Mutex<HashMap<u64, Option<Arc<str>>>>,
    /// Listener -> the RDS names its HTTP connection managers use.
    listeners: Mutex<HashMap<u64, Arc<[Arc<str>]>>>,
    /// (probe epoch, content) -> whether it meets the probe's expectation.
    probes: Mutex<HashMap<(u64, u64), bool>>,
    /// SotW bodies -> their resource name (SotW carries no separate name).
    sotw_names: Mutex<HashMap<u64, Arc<str>>>,
    names: Mutex<HashSet<Arc<str>>>,
}

impl DecodeCache {
    fn intern(&self, s: &str) -> Arc<str> {
        let mut names = self.names.lock();
        if let Some(n) = names.get(s) {
            return n.clone();
        }
        let n: Arc<str> = s.into();
        names.insert(n.clone());
        n
    }

    fn eds_name(&self, any: &Any) -> Option<Arc<str>> {
        let key = xxh64(&any.value, 0);
        if let Some(v) = self.clusters.lock().get(&key) {
            return v.clone();
        }
        let c = Cluster::decode(any.value.as_slice()).ok();
        let eds = c.and_then(|c| {
            let is_eds = c.cluster_discovery_type
                == Some(cluster::ClusterDiscoveryType::Type(
                    cluster::DiscoveryType::Eds as i32,
                ));
            is_eds.then(|| {
                let service = c
                    .eds_cluster_config
                    .map(|e| e.service_name)
                    .filter(|s| !s.is_empty());
                self.intern(service.as_deref().unwrap_or(&c.name))
            })
        });
        self.clusters.lock().insert(key, eds.clone());
        eds
    }

    fn route_names(&self, any: &Any) -> Arc<[Arc<str>]> {
        let key = xxh64(&any.value, 0);
        if let Some(v) = self.listeners.lock().get(&key) {
            return v.clone();
        }
        let mut names = BTreeSet::new();
        if let Ok(l) = Listener::decode(any.value.as_slice()) {
            for chain in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
                for f in &chain.filters {
                    let Some(
                        envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(tc),
                    ) = &f.config_type
                    else {
                        continue;
                    };
                    if !tc.type_url.ends_with("HttpConnectionManager") {
                        continue;
                    }
                    if let Ok(hcm) = HttpConnectionManager::decode(tc.value.as_slice())
                        && let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier
                    {
                        names.insert(rds.route_config_name);
                    }
                }
            }
        }
        let out: Arc<[Arc<str>]> = names.iter().map(|n| self.intern(n)).collect();
        self.listeners.lock().insert(key, out.clone());
        out
    }

    fn sotw_name(&self, ty: XdsType, any: &Any) -> Arc<str> {
        let key = xxh64(&any.value, 0);
        if let Some(v) = self.sotw_names.lock().get(&key) {
            return v.clone();
        }
        let name = self.intern(&sotw_name(ty, any));
        self.sotw_names.lock().insert(key, name.clone());
        name
    }

    fn meets(&self, probe: &ProbeSpec, any: &Any) -> bool {
        let key = (probe.epoch, xxh64(&any.value, 0));
        if let Some(v) = self.probes.lock().get(&key) {
            return *v;
        }
        let ok = match &probe.expect {
            Expect::Endpoints { cluster, count } => {
                ClusterLoadAssignment::decode(any.value.as_slice()).is_ok_and(|cla| {
                    cla.cluster_name != *cluster
                        || cla
                            .endpoints
                            .iter()
                            .map(|l| l.lb_endpoints.len())
                            .sum::<usize>()
                            == *count
                })
            }
            Expect::RouteWeight { cluster, weight } => {
                RouteConfiguration::decode(any.value.as_slice()).is_ok_and(|rc| {
                    rc.virtual_hosts
                        .iter()
                        .flat_map(|v| &v.routes)
                        .filter_map(|r| match &r.action {
                            Some(route::Action::Route(ra)) => match &ra.cluster_specifier {
                                Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
                                    Some(w)
                                }
                                _ => None,
                            },
                            _ => None,
                        })
                        .flat_map(|w| &w.clusters)
                        .any(|c| c.name == *cluster && c.weight.map(|w| w.value) == Some(*weight))
                })
            }
        };
        self.probes.lock().insert(key, ok);
        ok
    }
}

/// The Envoy node a pod's sidecar presents (Istio's id format and metadata keys).
pub fn node(pod: &PodId) -> Node {
    let meta = serde_json::json!({
        "NAMESPACE": pod.namespace,
        "LABELS": {"app": format!("svc-{}", pod.service), "version": format!("v{}", pod.version)},
        "SERVICE_ACCOUNT": format!("svc-{}", pod.service),
        "WORKLOAD_NAME": format!("svc-{}-v{}", pod.service, pod.version),
        "INTERCEPTION_MODE": "REDIRECT",
        "CLUSTER_ID": "Kubernetes",
    });
    Node {
        id: format!(
            "sidecar~{}~{}.{}~{}.svc.cluster.local",
            pod.ip, pod.name, pod.namespace, pod.namespace
        ),
        cluster: format!("svc-{}.{}", pod.service, pod.namespace),
        metadata: Some(json_to_struct(&meta)),
        ..Default::default()
    }
}

/// A running client: its counters and its task.
pub struct Client {
    pub stats: Arc<ClientStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a client follows: subscriptions derived from what it holds.
#[derive(Default)]
struct Follow {
    /// Delta: cluster name -> EDS name; listener name -> RDS names.
    clusters: HashMap<Arc<str>, Option<Arc<str>>>,
    listeners: HashMap<Arc<str>, Arc<[Arc<str>]>>,
    eds: HashSet<Arc<str>>,
    rds: HashSet<Arc<str>>,
    /// Types answered at least once, and types with a subscription request unanswered.
    got: [bool; XdsType::COUNT],
    awaiting: [bool; XdsType::COUNT],
}

/// A subscription change to request.
struct SubChange {
    ty: XdsType,
    added: Vec<String>,
    removed: Vec<String>,
}

impl Follow {
    fn update(&mut self, ty: XdsType, want: HashSet<Arc<str>>) -> Option<SubChange> {
        let have = match ty {
            XdsType::Endpoint => &mut self.eds,
            _ => &mut self.rds,
        };
        if *have == want {
            return None;
        }
        let added: Vec<String> = want.difference(have).map(|n| n.to_string()).collect();
        let removed: Vec<String> = have.difference(&want).map(|n| n.to_string()).collect();
        *have = want;
        if !added.is_empty() {
            self.awaiting[ty.index()] = true;
        }
        Some(SubChange { ty, added, removed })
    }

    fn wanted_eds(&self) -> HashSet<Arc<str>> {
        self.clusters.values().flatten().cloned().collect()
    }

    fn wanted_rds(&self) -> HashSet<Arc<str>> {
        self.listeners
            .values()
            .flat_map(|r| r.iter().cloned())
            .collect()
    }

    fn answered(&mut self, ty: XdsType) {
        self.got[ty.index()] = true;
        self.awaiting[ty.index()] = false;
    }

    fn ready(&self) -> bool {
        let got = |t: XdsType| self.got[t.index()];
        let waiting = |t: XdsType| self.awaiting[t.index()];
        got(XdsType::Cluster)
            && got(XdsType::Listener)
            && !waiting(XdsType::Endpoint)
            && !waiting(XdsType::Route)
    }

    fn publish(&self, stats: &ClientStats) {
        stats
            .eds_names
            .store(self.eds.len() as u64, Ordering::Relaxed);
        stats
            .rds_names
            .store(self.rds.len() as u64, Ordering::Relaxed);
        stats.ready.store(self.ready(), Ordering::Relaxed);
    }
}

fn probe_hit<'a>(
    shared: &Shared,
    ty: XdsType,
    resources: impl Iterator<Item = (&'a str, &'a Any)>,
    stats: &ClientStats,
) -> Option<u64> {
    let probe = shared.probe.read().clone()?;
    if probe.ty != ty {
        return None;
    }
    let mut hit = false;
    for (name, any) in resources {
        if !probe.names.contains(name) {
            continue;
        }
        if shared.cache.meets(&probe, any) {
            hit = true;
        } else {
            stats.mismatches.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    }
    hit.then_some(probe.epoch)
}

fn record_probe(shared: &Shared, stats: &ClientStats, epoch: Option<u64>) {
    if let Some(epoch) = epoch {
        stats.probe_at_ns.store(shared.now_ns(), Ordering::Relaxed);
        stats.probe_epoch.store(epoch, Ordering::Release);
    }
}

async fn connect(
    addr: SocketAddr,
) -> Result<AggregatedDiscoveryServiceClient<tonic::transport::Channel>, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(30))
        .connect()
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    Ok(AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(256 << 20))
}

/// Starts a client for `pod`.
pub async fn start(
    addr: SocketAddr,
    protocol: Protocol,
    pod: PodId,
    shared: Arc<Shared>,
) -> Result<Client, String> {
    let grpc = connect(addr).await?;
    let stats = Arc::new(ClientStats::new(protocol, pod));
    let st = stats.clone();
    let task = tokio::spawn(async move {
        let mut grpc = Some(grpc);
        loop {
            let result = match grpc.take() {
                Some(grpc) => match protocol {
                    Protocol::Delta => run_delta(grpc, &shared, &st).await,
                    Protocol::Sotw => run_sotw(grpc, &shared, &st).await,
                },
                None => Err("not connected".to_string()),
            };
            st.ready.store(false, Ordering::Relaxed);
            *st.closed.lock() = Some(match result {
                Ok(()) => "stream closed by the server".to_string(),
                Err(e) => e,
            });
            tokio::time::sleep(Duration::from_secs(1)).await;
            st.reconnects.fetch_add(1, Ordering::Relaxed);
            grpc = connect(addr).await.ok();
        }
    });
    Ok(Client { stats, task })
}

async fn run_delta(
    mut grpc: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    shared: &Shared,
    stats: &ClientStats,
) -> Result<(), String> {
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(64);
    let open = |ty: XdsType, node: Option<Node>| DeltaDiscoveryRequest {
        node,
        type_url: ty.type_url().to_string(),
        ..Default::default()
    };
    tx.send(open(XdsType::Cluster, Some(node(&stats.pod))))
        .await
        .map_err(|e| e.to_string())?;
    tx.send(open(XdsType::Listener, None))
        .await
        .map_err(|e| e.to_string())?;
    let mut inbound = grpc
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("delta stream: {e}"))?
        .into_inner();
    let mut follow = Follow::default();
    loop {
        let resp = match inbound.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("delta stream: {e}")),
        };
        stats
            .bytes
            .fetch_add(resp.encoded_len() as u64, Ordering::Relaxed);
        stats.responses.fetch_add(1, Ordering::Relaxed);
        let Some(ty) = XdsType::from_type_url(&resp.type_url) else {
            continue;
        };
        let mut change = None;
        match ty {
            XdsType::Cluster => {
                for r in &resp.resources {
                    if let Some(any) = &r.resource {
                        let name = shared.cache.intern(&r.name);
                        follow.clusters.insert(name, shared.cache.eds_name(any));
                    }
                }
                for n in &resp.removed_resources {
                    follow.clusters.remove(n.as_str());
                }
                stats
                    .clusters
                    .store(follow.clusters.len() as u64, Ordering::Relaxed);
                let want = follow.wanted_eds();
                change = follow.update(XdsType::Endpoint, want);
            }
            XdsType::Listener => {
                for r in &resp.resources {
                    if let Some(any) = &r.resource {
                        let name = shared.cache.intern(&r.name);
                        follow.listeners.insert(name, shared.cache.route_names(any));
                    }
                }
                for n in &resp.removed_resources {
                    follow.listeners.remove(n.as_str());
                }
                stats
                    .listeners
                    .store(follow.listeners.len() as u64, Ordering::Relaxed);
                let want = follow.wanted_rds();
                change = follow.update(XdsType::Route, want);
            }
            _ => {}
        }
        let hit = probe_hit(
            shared,
            ty,
            resp.resources
                .iter()
                .filter_map(|r| r.resource.as_ref().map(|a| (r.name.as_str(), a))),
            stats,
        );
        let ack = DeltaDiscoveryRequest {
            type_url: resp.type_url,
            response_nonce: resp.nonce,
            ..Default::default()
        };
        tx.send(ack).await.map_err(|e| e.to_string())?;
        record_probe(shared, stats, hit);
        follow.answered(ty);
        if let Some(c) = change {
            let req = DeltaDiscoveryRequest {
                type_url: c.ty.type_url().to_string(),
                resource_names_subscribe: c.added,
                resource_names_unsubscribe: c.removed,
                ..Default::default()
            };
            tx.send(req).await.map_err(|e| e.to_string())?;
        }
        follow.publish(stats);
    }
}

async fn run_sotw(
    mut grpc: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    shared: &Shared,
    stats: &ClientStats,
) -> Result<(), String> {
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(64);
    let open = |ty: XdsType, node: Option<Node>| DiscoveryRequest {
        node,
        type_url: ty.type_url().to_string(),
        ..Default::default()
    };
    tx.send(open(XdsType::Cluster, Some(node(&stats.pod))))
        .await
        .map_err(|e| e.to_string())?;
    tx.send(open(XdsType::Listener, None))
        .await
        .map_err(|e| e.to_string())?;
    let mut inbound = grpc
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("sotw stream: {e}"))?
        .into_inner();
    let mut follow = Follow::default();
    // Per type: the last ACKed version and nonce, and (EDS, RDS) the sorted name list every
    // request of the type carries.
    let mut versions: [String; XdsType::COUNT] = Default::default();
    let mut nonces: [String; XdsType::COUNT] = Default::default();
    let mut names: [Vec<String>; XdsType::COUNT] = Default::default();
    loop {
        let resp = match inbound.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("sotw stream: {e}")),
        };
        stats
            .bytes
            .fetch_add(resp.encoded_len() as u64, Ordering::Relaxed);
        stats.responses.fetch_add(1, Ordering::Relaxed);
        let Some(ty) = XdsType::from_type_url(&resp.type_url) else {
            continue;
        };
        let mut change = None;
        match ty {
            XdsType::Cluster => {
                // The whole state of the world.
                let want: HashSet<Arc<str>> = resp
                    .resources
                    .iter()
                    .filter_map(|a| shared.cache.eds_name(a))
                    .collect();
                stats
                    .clusters
                    .store(resp.resources.len() as u64, Ordering::Relaxed);
                change = follow.update(XdsType::Endpoint, want);
            }
            XdsType::Listener => {
                let want: HashSet<Arc<str>> = resp
                    .resources
                    .iter()
                    .flat_map(|a| {
                        shared
                            .cache
                            .route_names(a)
                            .iter()
                            .cloned()
                            .collect::<Vec<_>>()
                    })
                    .collect();
                stats
                    .listeners
                    .store(resp.resources.len() as u64, Ordering::Relaxed);
                change = follow.update(XdsType::Route, want);
            }
            _ => {}
        }
        let hit = if shared.probe.read().as_ref().is_some_and(|p| p.ty == ty) {
            let named: Vec<(Arc<str>, &Any)> = resp
                .resources
                .iter()
                .map(|a| (shared.cache.sotw_name(ty, a), a))
                .collect();
            probe_hit(shared, ty, named.iter().map(|(n, a)| (&**n, *a)), stats)
        } else {
            None
        };
        let i = ty.index();
        versions[i] = resp.version_info.clone();
        nonces[i] = resp.nonce.clone();
        if let Some(c) = &change {
            let set = match c.ty {
                XdsType::Endpoint => &follow.eds,
                _ => &follow.rds,
            };
            let mut list: Vec<String> = set.iter().map(|n| n.to_string()).collect();
            list.sort();
            names[c.ty.index()] = list;
        }
        let ack = DiscoveryRequest {
            type_url: resp.type_url,
            version_info: resp.version_info,
            response_nonce: resp.nonce,
            resource_names: names[i].clone(),
            ..Default::default()
        };
        tx.send(ack).await.map_err(|e| e.to_string())?;
        record_probe(shared, stats, hit);
        follow.answered(ty);
        if let Some(c) = change {
            let j = c.ty.index();
            let req = DiscoveryRequest {
                type_url: c.ty.type_url().to_string(),
                version_info: versions[j].clone(),
                response_nonce: nonces[j].clone(),
                resource_names: names[j].clone(),
                ..Default::default()
            };
            tx.send(req).await.map_err(|e| e.to_string())?;
        }
        follow.publish(stats);
    }
}

/// The name of a SotW resource (the field differs per type).
fn sotw_name(ty: XdsType, any: &Any) -> String {
    match ty {
        XdsType::Endpoint => ClusterLoadAssignment::decode(any.value.as_slice())
            .map(|c| c.cluster_name)
            .unwrap_or_default(),
        XdsType::Route => RouteConfiguration::decode(any.value.as_slice())
            .map(|r| r.name)
            .unwrap_or_default(),
        XdsType::Cluster => Cluster::decode(any.value.as_slice())
            .map(|c| c.name)
            .unwrap_or_default(),
        XdsType::Listener => Listener::decode(any.value.as_slice())
            .map(|l| l.name)
            .unwrap_or_default(),
        XdsType::Secret => String::new(),
    }
}
