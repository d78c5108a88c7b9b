//! The tonic ADS service and the task that runs each stream.
//!
//! A stream task owns its protocol state machine and reacts to two inputs: requests from the
//! proxy and pushes from the push queue. Generation (the translator) never runs on it: the
//! initial generation and every push generation run on the blocking pool, bounded by the
//! push-concurrency semaphore; the task only diffs and writes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryResponse,
};
use futures::Stream;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};

use super::connection::{Connection, Protocol, PushCommand};
use super::delta::DeltaStream;
use super::resources::{Interner, ProxyResources, TypeResources, Versioned};
use super::sotw::{Handled, SotwStream};
use super::status::{Now, SyncStatus};
use super::types::{TypeSet, XdsType};
use super::wire::{Ads, AdsServer, Outgoing, SotwRequest};
use super::{AckKind, EndpointsChange, Generator, Registry, XdsError};
use crate::model::Proxy;
use crate::monitoring::metrics::{Metrics, TypeLabel};

/// Tunables of the xDS server.
#[derive(Debug, Clone)]
pub struct XdsServerConfig {
    /// How many proxy pushes (initial or change) may be in progress at once (Istio's
    /// `PILOT_PUSH_THROTTLE`, default 100).
    pub push_concurrency: usize,
    /// How many generations run on CPUs at once; the rest of the permitted pushes wait
    /// their turn. Generation is CPU-bound: more at once than cores only holds more
    /// half-built configs in memory and makes every proxy wait for all of them. Default:
    /// the number of CPUs.
    pub generate_concurrency: usize,
    /// HTTP/2 PING interval on proxy connections, and how long an unanswered one lasts
    /// before the connection is closed.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

impl Default for XdsServerConfig {
    fn default() -> Self {
        XdsServerConfig {
            push_concurrency: 100,
            generate_concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// The ADS server: connected proxies, the generator, and the push permits.
pub struct XdsServer {
    generator: Arc<dyn Generator>,
    registry: Registry,
    metrics: Arc<Metrics>,
    permits: Arc<Semaphore>,
    cpu: Arc<Semaphore>,
    keepalive: (Duration, Duration),
    interner: Arc<Interner>,
    shared_endpoints: Arc<Mutex<EndpointsMemo>>,
    shared_generations: Arc<Mutex<GenerationMemo>>,
    endpoint_deltas: Arc<Mutex<DeltaMemo>>,
    shutdown: CancellationToken,
}

/// Results of the current config version by proxy class: the first proxy of a class
/// generates, the others of the push wait for it and share the result.
#[derive(Debug)]
struct ClassMemo<T> {
    version: u64,
    classes: HashMap<String, Arc<OnceLock<T>>>,
}

impl<T> Default for ClassMemo<T> {
    fn default() -> Self {
        ClassMemo {
            version: 0,
            classes: HashMap::new(),
        }
    }
}

/// Endpoint sets (see [`Generator::shared_endpoints`]).
type EndpointsMemo = ClassMemo<Arc<TypeResources>>;

/// The shared parts of full generations (see [`Generator::shared_generation`]).
type GenerationMemo = ClassMemo<Arc<ProxyResources>>;

/// Changed load assignments by proxy class for the current pair of config versions (see
/// [`Generator::endpoints_delta`]).
#[derive(Default)]
struct DeltaMemo {
    versions: (u64, u64),
    classes: HashMap<String, Arc<OnceLock<SharedChange>>>,
}

/// An [`EndpointsChange`], interned.
#[derive(Debug)]
enum SharedChange {
    Replace(Vec<Arc<Versioned>>),
    All(Arc<TypeResources>),
}

impl DeltaMemo {
    fn cell(&mut self, versions: (u64, u64), class: String) -> Arc<OnceLock<SharedChange>> {
        if versions != self.versions {
            if versions.1 < self.versions.1 {
                return Arc::default();
            }
            self.versions = versions;
            self.classes.clear();
        }
        self.classes.entry(class).or_default().clone()
    }
}

impl<T> ClassMemo<T> {
    fn cell(&mut self, version: u64, class: String) -> Arc<OnceLock<T>> {
        if version != self.version {
            if version < self.version {
                // A generation racing a newer config: correct, but not shared.
                return Arc::default();
            }
            self.version = version;
            self.classes.clear();
        }
        self.classes.entry(class).or_default().clone()
    }
}

impl std::fmt::Debug for XdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsServer")
            .field("connections", &self.registry.len())
            .field("free_permits", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

impl XdsServer {
    pub fn new(
        generator: Arc<dyn Generator>,
        metrics: Arc<Metrics>,
        config: XdsServerConfig,
        shutdown: CancellationToken,
    ) -> Arc<XdsServer> {
        Arc::new(XdsServer {
            generator,
            registry: Registry::default(),
            metrics,
            permits: Arc::new(Semaphore::new(config.push_concurrency.max(1))),
            cpu: Arc::new(Semaphore::new(config.generate_concurrency.max(1))),
            keepalive: (config.keepalive_interval, config.keepalive_timeout),
            interner: Arc::default(),
            shared_endpoints: Arc::default(),
            shared_generations: Arc::default(),
            endpoint_deltas: Arc::default(),
            shutdown,
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn generator(&self) -> &Arc<dyn Generator> {
        &self.generator
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The semaphore bounding concurrent generations and pushes.
    pub fn permits(&self) -> &Arc<Semaphore> {
        &self.permits
    }

    /// Binds `addr` (before serving, so that bind errors surface at startup).
    pub async fn bind(addr: SocketAddr) -> Result<TcpListener, XdsError> {
        TcpListener::bind(addr)
            .await
            .map_err(|source| XdsError::Bind { addr, source })
    }

    /// Serves ADS on `listener` until the shutdown token fires; open streams end then.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> Result<(), XdsError> {
        let shutdown = self.shutdown.clone();
        let incoming = TcpListenerStream::new(listener);
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(self.keepalive.0))
            .http2_keepalive_timeout(Some(self.keepalive.1))
            .add_service(AdsServer::new(AdsService(self), 16 << 20))
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await?;
        Ok(())
    }

    /// The resources and sets shared between proxies.
    pub fn interner(&self) -> &Arc<Interner> {
        &self.interner
    }

    /// Generates a proxy's resources on the blocking pool, at most `generate_concurrency`
    /// at a time. An EDS-only generation reuses `previous` for the other types and shares
    /// the endpoints between proxies of a class. If the translator panics, the previous
    /// resources stay in force (or nothing, for a new proxy) and the panic is logged.
    pub async fn generate(
        &self,
        proxy: Arc<Proxy>,
        previous: Option<Arc<ProxyResources>>,
        endpoints_only: bool,
    ) -> Arc<ProxyResources> {
        let generator = self.generator.clone();
        let interner = self.interner.clone();
        let memos = (self.shared_endpoints.clone(), self.endpoint_deltas.clone());
        let generations = self.shared_generations.clone();
        let prev = previous.clone();
        let id = proxy.id.clone();
        let _cpu = self.cpu.acquire().await;
        let joined = tokio::task::spawn_blocking(move || {
            let (res, problems) = match (endpoints_only, prev) {
                (true, Some(prev)) => {
                    endpoints_update(&*generator, &interner, &memos, &proxy, &prev)
                }
                _ => full_generation(&*generator, &interner, &generations, &proxy),
            };
            for problem in problems {
                warn!(proxy = %proxy.id, "generated config: {problem}");
            }
            res
        })
        .await;
        match joined {
            Ok(res) => Arc::new(res),
            Err(err) => {
                tracing::error!(proxy = %id, "config generation failed, keeping the last good config: {err}");
                previous.unwrap_or_default()
            }
        }
    }

    async fn run_stream<V: Variant>(
        self: Arc<Self>,
        mut inbound: Streaming<V::Req>,
        tx: mpsc::Sender<Result<V::Resp, Status>>,
        peer: Option<SocketAddr>,
    ) {
        let first = match inbound.message().await {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(status) => {
                debug!(
                    ?peer,
                    "ads stream closed before its first request: {status}"
                );
                return;
            }
        };
        let proxy = match V::node(&first)
            .ok_or_else(|| {
                "the first discovery request carries no node (hint: set node.id in the \
                 proxy's bootstrap)"
                    .to_string()
            })
            .and_then(|node| Proxy::from_node(node).map_err(|e| e.to_string()))
        {
            Ok(proxy) => Arc::new(proxy),
            Err(msg) => {
                warn!(?peer, "rejecting ads stream: {msg}");
                let _ = tx.send(Err(Status::invalid_argument(msg))).await;
                return;
            }
        };

        let (conn, mut pushes) = self.registry.register(proxy.clone(), peer, V::PROTOCOL);
        let _registered = Registered {
            server: self.clone(),
            conn: conn.clone(),
        };
        self.metrics.connected.inc();
        let span = info_span!("ads", conn = %conn.name, protocol = ?V::PROTOCOL);
        async move {
            info!(?peer, "proxy connected");
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                return;
            };
            let initial = self.generate(proxy, None, false).await;
            conn.resources.store(Some(initial));

            let mut machine = V::default();
            // The permit goes with the first response (CDS, the largest) until it is on its
            // way to the wire: see `Outgoing::hold`.
            if self
                .on_request(&conn, &mut machine, first, Some(permit), &tx)
                .await
                .is_err()
            {
                return;
            }
            loop {
                let step = tokio::select! {
                    _ = self.shutdown.cancelled() => Err(()),
                    msg = inbound.message() => match msg {
                        Ok(Some(req)) => self.on_request(&conn, &mut machine, req, None, &tx).await,
                        Ok(None) => Err(()),
                        Err(status) => {
                            debug!("ads stream error: {status}");
                            Err(())
                        }
                    },
                    Some(cmd) = pushes.recv() => self.on_push(&conn, &mut machine, cmd, &tx).await,
                };
                if step.is_err() {
                    break;
                }
            }
            info!("proxy disconnected");
        }
        .instrument(span)
        .await
    }

    async fn on_request<V: Variant>(
        &self,
        conn: &Connection,
        machine: &mut V,
        req: V::Req,
        hold: Option<OwnedSemaphorePermit>,
        tx: &mpsc::Sender<Result<V::Resp, Status>>,
    ) -> Result<(), ()> {
        let res = conn.resources.load_full().unwrap_or_default();
        let handled = {
            let mut status = conn.status.lock();
            machine.on_request(&req, &res, &mut status, Now::read())
        };
        let label = handled.ty.map(TypeLabel::xds);
        match &handled.ack {
            AckKind::Nack(message) => {
                if let Some(label) = &label {
                    self.metrics.rejects.get_or_create(label).inc();
                }
                warn!(
                    type_url = V::type_url(&req),
                    "proxy rejected config: {message}"
                );
            }
            AckKind::Stale => {
                if let Some(label) = &label {
                    self.metrics.expired_nonce.get_or_create(label).inc();
                }
                debug!(
                    type_url = V::type_url(&req),
                    "request with an expired nonce ignored"
                );
            }
            AckKind::Ignored => debug!(type_url = V::type_url(&req), "type not served"),
            kind => debug!(type_url = V::type_url(&req), ?kind, "request"),
        }
        if let Some(mut resp) = handled.response {
            if let Some(label) = &label {
                self.metrics.pushes.get_or_create(label).inc();
            }
            if let Some(permit) = hold {
                V::hold(&mut resp, permit);
            }
            tx.send(Ok(resp)).await.map_err(|_| ())?;
        }
        Ok(())
    }

    async fn on_push<V: Variant>(
        &self,
        conn: &Connection,
        machine: &mut V,
        cmd: PushCommand,
        tx: &mpsc::Sender<Result<V::Resp, Status>>,
    ) -> Result<(), ()> {
        conn.resources.store(Some(cmd.resources.clone()));
        let out = {
            let mut status = conn.status.lock();
            machine.on_push(&cmd.resources, cmd.types, &mut status, Now::read())
        };
        if out.is_empty() {
            return Ok(());
        }
        let types: Vec<_> = out.iter().map(|(t, _)| t.short()).collect();
        for (ty, resp) in out {
            tx.send(Ok(resp)).await.map_err(|_| ())?;
            let label = TypeLabel::xds(ty);
            self.metrics.pushes.get_or_create(&label).inc();
            self.metrics
                .push_time
                .get_or_create(&label)
                .observe(cmd.started_at.elapsed().as_secs_f64());
        }
        self.metrics
            .convergence
            .observe(cmd.triggered_at.elapsed().as_secs_f64());
        conn.pushes.fetch_add(1, Ordering::Relaxed);
        debug!(?types, generation = ?cmd.generation_time, "pushed");
        Ok(())
    }
}

/// A proxy's resources after an EDS-only push: its previous ones with the load assignments
/// that changed replaced (incremental, when the generator can tell what changed since the
/// proxy's config), else with all its endpoints regenerated; either way computed once per
/// class of proxies that get the same, and shared.
/// A proxy's whole config: the part its class shares taken from (or put in) the memo, and
/// its own part generated; or all of it generated, for a proxy without a class.
fn full_generation(
    generator: &dyn Generator,
    interner: &Interner,
    memo: &Mutex<GenerationMemo>,
    proxy: &Proxy,
) -> (ProxyResources, Vec<String>) {
    let Some(split) = generator.shared_generation(proxy) else {
        let (generated, token) = generator.generate_with_token(proxy);
        let (res, problems) = interner.proxy_resources(generated);
        return (res.with_token(token), problems);
    };
    let mut problems = Vec::new();
    let cell = memo.lock().cell(split.version, split.class);
    let shared = cell.get_or_init(|| {
        let (res, p) = interner.proxy_resources((split.shared)());
        problems = p;
        Arc::new(res)
    });
    let (res, mut p) = interner.with_own(shared, (split.own)());
    problems.append(&mut p);
    (res.with_token(split.token), problems)
}

fn endpoints_update(
    generator: &dyn Generator,
    interner: &Interner,
    (shared_memo, delta_memo): &(Arc<Mutex<EndpointsMemo>>, Arc<Mutex<DeltaMemo>>),
    proxy: &Proxy,
    prev: &ProxyResources,
) -> (ProxyResources, Vec<String>) {
    let mut problems = Vec::new();
    if let Some(delta) = prev
        .token()
        .and_then(|from| generator.endpoints_delta(proxy, from))
    {
        let cell = delta_memo.lock().cell((delta.from, delta.to), delta.class);
        let change = cell.get_or_init(|| match (delta.generate)() {
            EndpointsChange::Replace(named) => {
                SharedChange::Replace(interner.versioned(XdsType::Endpoint, named))
            }
            EndpointsChange::All(named) => {
                let (set, p) = interner.type_resources(XdsType::Endpoint, named);
                problems = p;
                SharedChange::All(set)
            }
        });
        let set = match change {
            SharedChange::Replace(changed) => {
                interner.replace(XdsType::Endpoint, prev.get_arc(XdsType::Endpoint), changed)
            }
            SharedChange::All(set) => set.clone(),
        };
        return (
            prev.with_endpoint_set(set).with_token(Some(delta.token)),
            problems,
        );
    }
    let Some(shared) = generator.shared_endpoints(proxy) else {
        let (set, problems) =
            interner.type_resources(XdsType::Endpoint, generator.generate_endpoints(proxy));
        return (prev.with_endpoint_set(set), problems);
    };
    let cell = shared_memo.lock().cell(shared.version, shared.class);
    let set = cell.get_or_init(|| {
        let (set, p) = interner.type_resources(XdsType::Endpoint, (shared.generate)());
        problems = p;
        set
    });
    (
        prev.with_endpoint_set(set.clone()).with_token(shared.token),
        problems,
    )
}

/// Deregisters a connection however its task ends.
struct Registered {
    server: Arc<XdsServer>,
    conn: Arc<Connection>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.server.registry.remove(self.conn.id);
        self.server.metrics.connected.dec();
    }
}

/// What differs between the two ADS variants, for the shared stream task.
trait Variant: Default + Send + 'static {
    type Req: Send + 'static;
    type Resp: Send + 'static;
    const PROTOCOL: Protocol;
    fn node(req: &Self::Req) -> Option<&Node>;
    fn type_url(req: &Self::Req) -> &str;
    /// Keeps `permit` with the response until it is encoded (see `Outgoing::hold`).
    fn hold(resp: &mut Self::Resp, permit: OwnedSemaphorePermit);
    fn on_request(
        &mut self,
        req: &Self::Req,
        res: &ProxyResources,
        status: &mut SyncStatus,
        now: Now,
    ) -> Handled<Self::Resp>;
    fn on_push(
        &mut self,
        res: &ProxyResources,
        types: TypeSet,
        status: &mut SyncStatus,
        now: Now,
    ) -> Vec<(XdsType, Self::Resp)>;
}

impl Variant for SotwStream {
    type Req = SotwRequest;
    type Resp = Outgoing<DiscoveryResponse>;
    const PROTOCOL: Protocol = Protocol::Sotw;
    fn node(req: &SotwRequest) -> Option<&Node> {
        req.node.as_ref()
    }
    fn type_url(req: &SotwRequest) -> &str {
        &req.type_url
    }
    fn hold(resp: &mut Self::Resp, permit: OwnedSemaphorePermit) {
        resp.hold = Some(permit);
    }
    fn on_request(
        &mut self,
        req: &SotwRequest,
        res: &ProxyResources,
        status: &mut SyncStatus,
        now: Now,
    ) -> Handled<Self::Resp> {
        SotwStream::on_request(self, req, res, status, now)
    }
    fn on_push(
        &mut self,
        res: &ProxyResources,
        types: TypeSet,
        status: &mut SyncStatus,
        now: Now,
    ) -> Vec<(XdsType, Self::Resp)> {
        SotwStream::on_push(self, res, types, status, now)
    }
}

impl Variant for DeltaStream {
    type Req = DeltaDiscoveryRequest;
    type Resp = Outgoing<DeltaDiscoveryResponse>;
    const PROTOCOL: Protocol = Protocol::Delta;
    fn node(req: &DeltaDiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }
    fn type_url(req: &DeltaDiscoveryRequest) -> &str {
        &req.type_url
    }
    fn hold(resp: &mut Self::Resp, permit: OwnedSemaphorePermit) {
        resp.hold = Some(permit);
    }
    fn on_request(
        &mut self,
        req: &DeltaDiscoveryRequest,
        res: &ProxyResources,
        status: &mut SyncStatus,
        now: Now,
    ) -> Handled<Self::Resp> {
        DeltaStream::on_request(self, req, res, status, now)
    }
    fn on_push(
        &mut self,
        res: &ProxyResources,
        types: TypeSet,
        status: &mut SyncStatus,
        now: Now,
    ) -> Vec<(XdsType, Self::Resp)> {
        DeltaStream::on_push(self, res, types, status, now)
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Responses buffered per stream before the task waits for the proxy to read.
const RESPONSE_BUFFER: usize = 16;

/// The tonic service: a handle on the server (tonic's trait takes `&self`, the stream tasks
/// need an owned `Arc`).
struct AdsService(Arc<XdsServer>);

#[tonic::async_trait]
impl Ads for AdsService {
    type SotwStream = ResponseStream<Outgoing<DiscoveryResponse>>;
    type DeltaStream = ResponseStream<Outgoing<DeltaDiscoveryResponse>>;

    async fn sotw(
        &self,
        request: Request<Streaming<SotwRequest>>,
    ) -> Result<Response<Self::SotwStream>, Status> {
        let peer = request.remote_addr();
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        tokio::spawn(
            self.0
                .clone()
                .run_stream::<SotwStream>(request.into_inner(), tx, peer),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaStream>, Status> {
        let peer = request.remote_addr();
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        tokio::spawn(
            self.0
                .clone()
                .run_stream::<DeltaStream>(request.into_inner(), tx, peer),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
