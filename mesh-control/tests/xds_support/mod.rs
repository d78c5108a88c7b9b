//! Shared by the `xds_*` integration tests: a controllable generator that produces real
//! Envoy resources, an in-process control plane on loopback ports, and ADS clients (SotW
//! and delta) that behave like Envoy: they ACK, subscribe EDS to the clusters CDS gave them
//! and RDS to the route configs their listeners name, and keep the resources they hold.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{
    Address, Node, SocketAddress, address, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use mesh_control::model::Proxy;
use mesh_control::monitoring::{Metrics, Monitoring};
use mesh_control::push::{PushRequest, Pusher};
use mesh_control::translate::{Generated, Named};
use mesh_control::xds::{Generator, XdsServer, XdsServerConfig, XdsType};
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub const NODE_ID: &str = "sidecar~10.250.0.5~reviews-v1-abc.default~default.svc.cluster.local";

// === the mesh a test describes ===

/// A mesh as the fake generator sees it: clusters with their endpoints, and listeners each
/// pointing at one route config.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct World {
    /// cluster name -> endpoint ports (on 10.250.0.x).
    pub clusters: BTreeMap<String, Vec<u16>>,
    /// listener name -> route config name.
    pub listeners: BTreeMap<String, String>,
    /// route config name -> virtual host domain.
    pub routes: BTreeMap<String, String>,
}

fn any<M: Message + prost::Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

pub fn cla(name: &str, ports: &[u16]) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: ports
                .iter()
                .enumerate()
                .map(|(i, port)| LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(Address {
                            address: Some(address::Address::SocketAddress(SocketAddress {
                                address: format!("10.250.0.{}", i + 10),
                                port_specifier: Some(socket_address::PortSpecifier::PortValue(
                                    u32::from(*port),
                                )),
                                ..Default::default()
                            })),
                        }),
                        ..Default::default()
                    })),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

impl World {
    pub fn generate(&self) -> Generated {
        let named = |name: &str, resource: Any| Named {
            name: name.to_string(),
            resource,
        };
        Generated {
            clusters: self
                .clusters
                .keys()
                .map(|c| {
                    named(
                        c,
                        any(&Cluster {
                            name: c.clone(),
                            ..Default::default()
                        }),
                    )
                })
                .collect(),
            endpoints: self
                .clusters
                .iter()
                .map(|(c, ports)| named(c, any(&cla(c, ports))))
                .collect(),
            listeners: self
                .listeners
                .iter()
                .map(|(l, route)| {
                    // The route name rides in the stat prefix: enough for the test client to
                    // know which RDS names to subscribe to.
                    named(
                        l,
                        any(&Listener {
                            name: l.clone(),
                            stat_prefix: route.clone(),
                            ..Default::default()
                        }),
                    )
                })
                .collect(),
            // Like a real translator, every route config a listener names exists (with a
            // default host when the test did not set one): SotW cannot delete an RDS
            // resource, so a mesh where a referenced route vanishes is not a valid test.
            routes: self
                .listeners
                .values()
                .map(|r| (r, self.routes.get(r).map_or("default", String::as_str)))
                .chain(self.routes.iter().map(|(r, d)| (r, d.as_str())))
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .map(|(r, domain)| {
                    named(
                        r,
                        any(&RouteConfiguration {
                            name: r.clone(),
                            virtual_hosts: vec![VirtualHost {
                                name: domain.to_string(),
                                domains: vec![domain.to_string()],
                                ..Default::default()
                            }],
                            ..Default::default()
                        }),
                    )
                })
                .collect(),
            secrets: vec![],
        }
    }

    /// What an Envoy-like client should end up holding: every cluster, listener, the
    /// endpoints of its clusters and the routes its listeners name (that exist).
    pub fn expected(&self) -> Holdings {
        let g = self.generate();
        let map = |v: &[Named]| -> BTreeMap<String, Vec<u8>> {
            v.iter()
                .map(|n| (n.name.clone(), n.resource.value.clone()))
                .collect()
        };
        let wanted_routes: BTreeSet<_> = self.listeners.values().cloned().collect();
        let mut routes = map(&g.routes);
        routes.retain(|name, _| wanted_routes.contains(name));
        Holdings {
            clusters: map(&g.clusters),
            endpoints: map(&g.endpoints),
            listeners: map(&g.listeners),
            routes,
        }
    }
}

/// A [`Generator`] whose output a test sets.
#[derive(Debug, Default)]
pub struct FakeGenerator {
    world: ArcSwap<World>,
    pub calls: std::sync::atomic::AtomicU64,
}

impl FakeGenerator {
    pub fn set(&self, world: World) {
        self.world.store(Arc::new(world));
    }
}

impl Generator for FakeGenerator {
    fn generate(&self, _proxy: &Proxy) -> Generated {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.world.load().generate()
    }
}

// === an in-process control plane ===

pub struct ControlPlane {
    pub xds_addr: SocketAddr,
    pub monitoring_addr: SocketAddr,
    pub generator: Arc<FakeGenerator>,
    pub server: Arc<XdsServer>,
    pub pusher: Pusher,
    pub shutdown: CancellationToken,
}

impl ControlPlane {
    pub async fn start(world: World) -> ControlPlane {
        ControlPlane::start_with(world, XdsServerConfig::default()).await
    }

    pub async fn start_with(world: World, config: XdsServerConfig) -> ControlPlane {
        let shutdown = CancellationToken::new();
        let generator = Arc::new(FakeGenerator::default());
        generator.set(world);
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Arc::new(Metrics::new(&mut registry));
        let server = XdsServer::new(generator.clone(), metrics, config, shutdown.clone());
        let monitoring = Monitoring::new(
            registry,
            server.clone(),
            Box::new(|| serde_json::json!({"resources": []})),
        );
        monitoring.set_ready(true);
        let xds_listener = XdsServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let mon_listener = Monitoring::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let xds_addr = xds_listener.local_addr().unwrap();
        let monitoring_addr = mon_listener.local_addr().unwrap();
        tokio::spawn(server.clone().serve(xds_listener));
        tokio::spawn(monitoring.serve(mon_listener, shutdown.clone()));
        let (pusher, _) = Pusher::start(server.clone(), shutdown.clone());
        ControlPlane {
            xds_addr,
            monitoring_addr,
            generator,
            server,
            pusher,
            shutdown,
        }
    }

    /// Changes the mesh and pushes (`full`: every type, else EDS only).
    pub fn change(&self, world: World, full: bool) {
        self.generator.set(world);
        self.pusher
            .push_all(PushRequest::new(full, Instant::now(), "test change"));
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.monitoring_addr, path).await
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A plain HTTP/1.1 GET over a TCP socket.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text[9..12].parse().unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

pub fn node() -> Node {
    Node {
        id: NODE_ID.to_string(),
        cluster: "reviews.default".to_string(),
        ..Default::default()
    }
}

// === Envoy-like clients ===

/// What a client holds, per type: name -> encoded resource.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Holdings {
    pub clusters: BTreeMap<String, Vec<u8>>,
    pub endpoints: BTreeMap<String, Vec<u8>>,
    pub listeners: BTreeMap<String, Vec<u8>>,
    pub routes: BTreeMap<String, Vec<u8>>,
}

impl Holdings {
    fn of(&mut self, ty: XdsType) -> &mut BTreeMap<String, Vec<u8>> {
        match ty {
            XdsType::Cluster => &mut self.clusters,
            XdsType::Endpoint => &mut self.endpoints,
            XdsType::Listener => &mut self.listeners,
            XdsType::Route => &mut self.routes,
            XdsType::Secret => unreachable!("no secrets in these tests"),
        }
    }

    /// The RDS names the held listeners point at.
    fn route_names(&self) -> BTreeSet<String> {
        self.listeners
            .values()
            .filter_map(|b| Listener::decode(b.as_slice()).ok())
            .map(|l| l.stat_prefix)
            .collect()
    }
}

fn resource_name(ty: XdsType, any: &Any) -> String {
    match ty {
        XdsType::Cluster => Cluster::decode(any.value.as_slice()).unwrap().name,
        XdsType::Endpoint => {
            ClusterLoadAssignment::decode(any.value.as_slice())
                .unwrap()
                .cluster_name
        }
        XdsType::Listener => Listener::decode(any.value.as_slice()).unwrap().name,
        XdsType::Route => {
            RouteConfiguration::decode(any.value.as_slice())
                .unwrap()
                .name
        }
        XdsType::Secret => unreachable!(),
    }
}

/// Client behaviour knobs.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// NACK every response of this type (with this message) instead of ACKing it.
    pub nack: Option<(XdsType, String)>,
}

/// The shared view of a running client.
#[derive(Debug, Default)]
pub struct ClientState {
    pub holdings: Holdings,
    /// Every response received: (type, number of resources, removed names).
    pub log: Vec<(XdsType, usize, usize)>,
    pub nack: Option<(XdsType, String)>,
    /// Delta: versions per name per type, for a reconnect.
    pub versions: BTreeMap<XdsType, BTreeMap<String, String>>,
}

pub struct Client {
    pub state: Arc<Mutex<ClientState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    pub fn holdings(&self) -> Holdings {
        self.state.lock().holdings.clone()
    }

    pub fn responses(&self) -> usize {
        self.state.lock().log.len()
    }

    /// Waits (bounded) until the client holds `want`.
    pub async fn wait_for(&self, want: &Holdings, within: Duration) -> Result<(), Holdings> {
        let deadline = Instant::now() + within;
        loop {
            let have = self.holdings();
            if &have == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(have);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn stop(mut self) -> Arc<Mutex<ClientState>> {
        self.task.abort();
        let _ = (&mut self.task).await;
        self.state.clone()
    }
}

pub async fn channel(addr: SocketAddr) -> AggregatedDiscoveryServiceClient<Channel> {
    AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

/// A SotW client: opens CDS and LDS as wildcards, then EDS/RDS by name as Envoy does.
pub async fn sotw_client(addr: SocketAddr, opts: ClientOptions) -> Client {
    let mut client = channel(addr).await;
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(64);
    let mut inbound = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let state = Arc::new(Mutex::new(ClientState::default()));
    let first = |ty: XdsType, with_node: bool| DiscoveryRequest {
        node: with_node.then(node),
        type_url: ty.type_url().to_string(),
        ..Default::default()
    };
    tx.send(first(XdsType::Cluster, true)).await.unwrap();
    tx.send(first(XdsType::Listener, false)).await.unwrap();
    let st = state.clone();
    let task = tokio::spawn(async move {
        // Per type: (last ACKed version, last nonce, subscribed names).
        let mut versions: BTreeMap<XdsType, String> = BTreeMap::new();
        let mut nonces: BTreeMap<XdsType, String> = BTreeMap::new();
        let mut names: BTreeMap<XdsType, BTreeSet<String>> = BTreeMap::new();
        while let Ok(Some(resp)) = inbound.message().await {
            let ty = XdsType::from_type_url(&resp.type_url).unwrap();
            nonces.insert(ty, resp.nonce.clone());
            let reject = opts.nack.as_ref().filter(|(t, _)| *t == ty);
            let mut follow_ups = Vec::new();
            {
                let mut s = st.lock();
                s.log.push((ty, resp.resources.len(), 0));
                if let Some((_, msg)) = reject {
                    s.nack = Some((ty, msg.clone()));
                } else {
                    apply_sotw(&mut s.holdings, ty, &resp);
                    versions.insert(ty, resp.version_info.clone());
                    // Envoy-like follow-ups: EDS for the clusters, RDS for the listeners.
                    let eds: BTreeSet<_> = s.holdings.clusters.keys().cloned().collect();
                    let rds = s.holdings.route_names();
                    for (t, want) in [(XdsType::Endpoint, eds), (XdsType::Route, rds)] {
                        let have = names.entry(t).or_default();
                        if *have != want {
                            *have = want.clone();
                            s.holdings.of(t).retain(|n, _| want.contains(n));
                            follow_ups.push(t);
                        }
                    }
                }
            }
            let req = DiscoveryRequest {
                type_url: resp.type_url.clone(),
                version_info: versions.get(&ty).cloned().unwrap_or_default(),
                response_nonce: resp.nonce.clone(),
                resource_names: names
                    .get(&ty)
                    .map(|n| n.iter().cloned().collect())
                    .unwrap_or_default(),
                error_detail: reject.map(|(_, msg)| RpcStatus {
                    code: 3,
                    message: msg.clone(),
                    details: vec![],
                }),
                ..Default::default()
            };
            if tx.send(req).await.is_err() {
                return;
            }
            for t in follow_ups {
                let req = DiscoveryRequest {
                    type_url: t.type_url().to_string(),
                    version_info: versions.get(&t).cloned().unwrap_or_default(),
                    response_nonce: nonces.get(&t).cloned().unwrap_or_default(),
                    resource_names: names[&t].iter().cloned().collect(),
                    ..Default::default()
                };
                if tx.send(req).await.is_err() {
                    return;
                }
            }
        }
    });
    Client { state, task }
}

fn apply_sotw(h: &mut Holdings, ty: XdsType, resp: &DiscoveryResponse) {
    let map = h.of(ty);
    if ty.supports_wildcard() {
        // LDS/CDS: the response is the whole state of the world.
        map.clear();
    }
    for any in &resp.resources {
        map.insert(resource_name(ty, any), any.value.clone());
    }
}

/// A delta client: wildcard CDS and LDS, EDS and RDS by name, like Envoy with
/// `api_type: DELTA_GRPC`. `initial` seeds `initial_resource_versions` (a reconnect).
pub async fn delta_client(
    addr: SocketAddr,
    opts: ClientOptions,
    initial: Option<ClientState>,
) -> Client {
    let mut client = channel(addr).await;
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(64);
    let mut inbound = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let initial = initial.unwrap_or_default();
    let state = Arc::new(Mutex::new(ClientState {
        holdings: initial.holdings.clone(),
        versions: initial.versions.clone(),
        ..Default::default()
    }));
    let mut names: BTreeMap<XdsType, BTreeSet<String>> = BTreeMap::new();
    let open = |ty: XdsType, with_node: bool, subscribe: Vec<String>| DeltaDiscoveryRequest {
        node: with_node.then(node),
        type_url: ty.type_url().to_string(),
        resource_names_subscribe: subscribe,
        initial_resource_versions: initial
            .versions
            .get(&ty)
            .map(|m| m.clone().into_iter().collect())
            .unwrap_or_default(),
        ..Default::default()
    };
    tx.send(open(XdsType::Cluster, true, vec![])).await.unwrap();
    tx.send(open(XdsType::Listener, false, vec![]))
        .await
        .unwrap();
    // A reconnecting client re-subscribes to what it had.
    for (ty, held) in [
        (XdsType::Endpoint, &initial.holdings.clusters),
        (XdsType::Route, &BTreeMap::new()),
    ] {
        let want: BTreeSet<String> = if ty == XdsType::Route {
            initial.holdings.route_names()
        } else {
            held.keys().cloned().collect()
        };
        if !want.is_empty() {
            tx.send(open(ty, false, want.iter().cloned().collect()))
                .await
                .unwrap();
            names.insert(ty, want);
        }
    }
    let st = state.clone();
    let task = tokio::spawn(async move {
        while let Ok(Some(resp)) = inbound.message().await {
            let ty = XdsType::from_type_url(&resp.type_url).unwrap();
            let reject = opts.nack.as_ref().filter(|(t, _)| *t == ty);
            let mut follow_ups = Vec::new();
            {
                let mut s = st.lock();
                s.log
                    .push((ty, resp.resources.len(), resp.removed_resources.len()));
                if let Some((_, msg)) = reject {
                    s.nack = Some((ty, msg.clone()));
                } else {
                    apply_delta(&mut s, ty, &resp);
                    let eds: BTreeSet<_> = s.holdings.clusters.keys().cloned().collect();
                    let rds = s.holdings.route_names();
                    for (t, want) in [(XdsType::Endpoint, eds), (XdsType::Route, rds)] {
                        let have = names.entry(t).or_default();
                        if *have != want {
                            let sub: Vec<_> = want.difference(have).cloned().collect();
                            let unsub: Vec<_> = have.difference(&want).cloned().collect();
                            for n in &unsub {
                                s.holdings.of(t).remove(n);
                                s.versions.entry(t).or_default().remove(n);
                            }
                            *have = want;
                            follow_ups.push((t, sub, unsub));
                        }
                    }
                }
            }
            let ack = DeltaDiscoveryRequest {
                type_url: resp.type_url.clone(),
                response_nonce: resp.nonce.clone(),
                error_detail: reject.map(|(_, msg)| RpcStatus {
                    code: 3,
                    message: msg.clone(),
                    details: vec![],
                }),
                ..Default::default()
            };
            if tx.send(ack).await.is_err() {
                return;
            }
            for (t, sub, unsub) in follow_ups {
                let req = DeltaDiscoveryRequest {
                    type_url: t.type_url().to_string(),
                    resource_names_subscribe: sub,
                    resource_names_unsubscribe: unsub,
                    ..Default::default()
                };
                if tx.send(req).await.is_err() {
                    return;
                }
            }
        }
    });
    Client { state, task }
}

fn apply_delta(s: &mut ClientState, ty: XdsType, resp: &DeltaDiscoveryResponse) {
    for r in &resp.resources {
        let any = r.resource.as_ref().unwrap();
        assert_eq!(
            resource_name(ty, any),
            r.name,
            "delta resource name matches its body"
        );
        s.holdings.of(ty).insert(r.name.clone(), any.value.clone());
        s.versions
            .entry(ty)
            .or_default()
            .insert(r.name.clone(), r.version.clone());
    }
    for name in &resp.removed_resources {
        s.holdings.of(ty).remove(name);
        s.versions.entry(ty).or_default().remove(name);
    }
}
