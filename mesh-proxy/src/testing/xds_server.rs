//! A small in-process ADS server (SotW and delta) for tests: push resources into it and
//! every connected stream gets them; every request it receives is recorded so tests
//! can assert ACKs, NACKs and subscriptions. Real tonic, real HTTP/2, real sockets.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use envoy_types::pb::{
    envoy::service::discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
        Resource,
        aggregated_discovery_service_server::{
            AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
        },
    },
    google::protobuf::Any,
};
use futures::Stream;
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// Every request the server saw.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub delta: bool,
    pub type_url: String,
    pub version_info: String,
    pub nonce: String,
    /// `error_detail.message` of a NACK.
    pub error: Option<String>,
    pub resource_names: Vec<String>,
    pub unsubscribe: Vec<String>,
    pub initial_resource_versions: HashMap<String, String>,
    pub node_id: Option<String>,
}

impl Recorded {
    pub fn is_nack(&self) -> bool {
        self.error.is_some()
    }
}

#[derive(Default)]
struct Shared {
    /// type_url -> name -> resource
    resources: BTreeMap<String, BTreeMap<String, Any>>,
    version: u64,
    requests: Vec<Recorded>,
}

/// The server handle. Dropping it stops the server.
pub struct XdsServer {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    changed: watch::Sender<u64>,
    /// Bumped to make every open stream fail (tests of reconnect).
    kill: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for XdsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl XdsServer {
    /// Starts on 127.0.0.1 with an ephemeral port.
    pub async fn start() -> XdsServer {
        Self::start_on("127.0.0.1:0".parse().expect("valid address")).await
    }

    pub async fn start_on(addr: SocketAddr) -> XdsServer {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind the test xds server");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (changed, _) = watch::channel(0u64);
        let (kill, _) = watch::channel(0u64);
        let svc = Ads {
            shared: shared.clone(),
            changed: changed.clone(),
            kill: kill.clone(),
        };
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(
                    AggregatedDiscoveryServiceServer::new(svc)
                        .max_decoding_message_size(64 << 20)
                        .max_encoding_message_size(64 << 20),
                )
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        XdsServer {
            addr,
            shared,
            changed,
            kill,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces every resource of `type_url` (names are read from the resources).
    pub fn set(&self, type_url: &str, resources: Vec<Any>) {
        let mut s = self.shared.lock();
        let map = resources.into_iter().map(|a| (name_of(&a), a)).collect();
        s.resources.insert(type_url.to_string(), map);
        s.version += 1;
        let v = s.version;
        drop(s);
        self.changed.send_replace(v);
    }

    /// Adds or replaces one resource.
    pub fn upsert(&self, resource: Any) {
        let mut s = self.shared.lock();
        s.resources
            .entry(resource.type_url.clone())
            .or_default()
            .insert(name_of(&resource), resource);
        s.version += 1;
        let v = s.version;
        drop(s);
        self.changed.send_replace(v);
    }

    pub fn remove(&self, type_url: &str, name: &str) {
        let mut s = self.shared.lock();
        if let Some(m) = s.resources.get_mut(type_url) {
            m.remove(name);
        }
        s.version += 1;
        let v = s.version;
        drop(s);
        self.changed.send_replace(v);
    }

    /// The version string of the current state (SotW `version_info`).
    pub fn version(&self) -> String {
        self.shared.lock().version.to_string()
    }

    /// Ends every open stream with an error (the client must reconnect).
    pub fn disconnect_all(&self) {
        self.kill.send_modify(|k| *k += 1);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// Waits until a recorded request satisfies `pred` (polls; bounded by `timeout`).
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&Recorded) -> bool,
    ) -> Option<Recorded> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(r) = self
                .shared
                .lock()
                .requests
                .iter()
                .find(|r| pred(r))
                .cloned()
            {
                return Some(r);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for the ACK of the current version of `type_url` (the server's nonces end
    /// in `-<version>`).
    pub async fn wait_for_ack(&self, type_url: &str, timeout: Duration) -> Option<Recorded> {
        let suffix = format!("-{}", self.version());
        self.wait_for(timeout, |r| {
            r.type_url == type_url && r.error.is_none() && r.nonce.ends_with(&suffix)
        })
        .await
    }

    /// Waits for a NACK of `type_url` whose message contains `needle`.
    pub async fn wait_for_nack(
        &self,
        type_url: &str,
        needle: &str,
        timeout: Duration,
    ) -> Option<Recorded> {
        self.wait_for(timeout, |r| {
            r.type_url == type_url && r.error.as_deref().is_some_and(|e| e.contains(needle))
        })
        .await
    }
}

fn name_of(a: &Any) -> String {
    #[derive(Clone, PartialEq, Message)]
    struct NameOnly {
        #[prost(string, tag = "1")]
        name: String,
    }
    NameOnly::decode(a.value.as_slice())
        .map(|n| n.name)
        .unwrap_or_default()
}

fn hash_version(a: &Any) -> String {
    format!("{:016x}", xxhash_rust::xxh64::xxh64(&a.value, 0))
}

fn is_wildcard(type_url: &str) -> bool {
    type_url.ends_with("Cluster") || type_url.ends_with("Listener")
}

#[derive(Clone)]
struct Ads {
    shared: Arc<Mutex<Shared>>,
    changed: watch::Sender<u64>,
    kill: watch::Sender<u64>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        tokio::spawn(async move {
            let mut changed = this.changed.subscribe();
            let mut kill = this.kill.subscribe();
            kill.mark_unchanged();
            // type -> subscribed names (empty set + wildcard for CDS/LDS)
            let mut subs: HashMap<String, BTreeSet<String>> = HashMap::new();
            let mut sent_version: HashMap<String, u64> = HashMap::new();
            let mut nonce = 0u64;
            loop {
                let mut to_send: Vec<String> = Vec::new();
                tokio::select! {
                    req = inbound.message() => {
                        let Ok(Some(req)) = req else { return };
                        this.shared.lock().requests.push(Recorded {
                            delta: false,
                            type_url: req.type_url.clone(),
                            version_info: req.version_info.clone(),
                            nonce: req.response_nonce.clone(),
                            error: req.error_detail.as_ref().map(|e| e.message.clone()),
                            resource_names: req.resource_names.clone(),
                            unsubscribe: vec![],
                            initial_resource_versions: HashMap::new(),
                            node_id: req.node.as_ref().map(|n| n.id.clone()),
                        });
                        let names: BTreeSet<String> = req.resource_names.iter().cloned().collect();
                        let prev = subs.insert(req.type_url.clone(), names.clone());
                        // New subscription or changed names: send the state; plain ACKs don't.
                        if prev.as_ref() != Some(&names) || req.response_nonce.is_empty() {
                            to_send.push(req.type_url.clone());
                        }
                    }
                    r = changed.changed() => {
                        if r.is_err() { return }
                        let v = *changed.borrow_and_update();
                        for t in subs.keys() {
                            if sent_version.get(t) != Some(&v) {
                                to_send.push(t.clone());
                            }
                        }
                    }
                    _ = kill.changed() => {
                        let _ = tx.send(Err(Status::unavailable("test server dropped the stream"))).await;
                        return;
                    }
                }
                for t in to_send {
                    let (version, resources) = {
                        let s = this.shared.lock();
                        let all = s.resources.get(&t).cloned().unwrap_or_default();
                        let names = subs.get(&t).cloned().unwrap_or_default();
                        let res: Vec<Any> = all
                            .into_iter()
                            .filter(|(n, _)| is_wildcard(&t) || names.contains(n))
                            .map(|(_, a)| a)
                            .collect();
                        (s.version, res)
                    };
                    sent_version.insert(t.clone(), version);
                    nonce += 1;
                    let resp = DiscoveryResponse {
                        version_info: version.to_string(),
                        resources,
                        type_url: t.clone(),
                        nonce: format!("{nonce}-{version}"),
                        ..Default::default()
                    };
                    if tx.send(Ok(resp)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        tokio::spawn(async move {
            let mut changed = this.changed.subscribe();
            let mut kill = this.kill.subscribe();
            kill.mark_unchanged();
            struct Sub {
                wildcard: bool,
                names: BTreeSet<String>,
                /// What the client has: name -> version.
                sent: HashMap<String, String>,
            }
            let mut subs: HashMap<String, Sub> = HashMap::new();
            let mut nonce = 0u64;
            loop {
                let mut to_send: Vec<String> = Vec::new();
                tokio::select! {
                    req = inbound.message() => {
                        let Ok(Some(req)) = req else { return };
                        this.shared.lock().requests.push(Recorded {
                            delta: true,
                            type_url: req.type_url.clone(),
                            version_info: String::new(),
                            nonce: req.response_nonce.clone(),
                            error: req.error_detail.as_ref().map(|e| e.message.clone()),
                            resource_names: req.resource_names_subscribe.clone(),
                            unsubscribe: req.resource_names_unsubscribe.clone(),
                            initial_resource_versions: req.initial_resource_versions.clone(),
                            node_id: req.node.as_ref().map(|n| n.id.clone()),
                        });
                        let first = !subs.contains_key(&req.type_url);
                        let sub = subs.entry(req.type_url.clone()).or_insert_with(|| Sub {
                            wildcard: is_wildcard(&req.type_url) && req.resource_names_subscribe.is_empty(),
                            names: BTreeSet::new(),
                            sent: req.initial_resource_versions.clone(),
                        });
                        let mut changed_subs = first;
                        for n in &req.resource_names_subscribe {
                            if n == "*" {
                                sub.wildcard = true;
                            }
                            changed_subs |= sub.names.insert(n.clone());
                        }
                        for n in &req.resource_names_unsubscribe {
                            changed_subs |= sub.names.remove(n);
                            sub.sent.remove(n);
                        }
                        if changed_subs {
                            to_send.push(req.type_url.clone());
                        }
                    }
                    r = changed.changed() => {
                        if r.is_err() { return }
                        changed.borrow_and_update();
                        to_send.extend(subs.keys().cloned());
                    }
                    _ = kill.changed() => {
                        let _ = tx.send(Err(Status::unavailable("test server dropped the stream"))).await;
                        return;
                    }
                }
                for t in to_send {
                    let Some(sub) = subs.get_mut(&t) else {
                        continue;
                    };
                    let (version, all) = {
                        let s = this.shared.lock();
                        (s.version, s.resources.get(&t).cloned().unwrap_or_default())
                    };
                    let mut resources = Vec::new();
                    let mut removed = Vec::new();
                    for (name, any) in &all {
                        if !(sub.wildcard || sub.names.contains(name)) {
                            continue;
                        }
                        let v = hash_version(any);
                        if sub.sent.get(name) != Some(&v) {
                            sub.sent.insert(name.clone(), v.clone());
                            resources.push(Resource {
                                name: name.clone(),
                                version: v,
                                resource: Some(any.clone()),
                                ..Default::default()
                            });
                        }
                    }
                    let gone: Vec<String> = sub
                        .sent
                        .keys()
                        .filter(|n| !all.contains_key(*n))
                        .cloned()
                        .collect();
                    for n in gone {
                        sub.sent.remove(&n);
                        removed.push(n);
                    }
                    if resources.is_empty()
                        && removed.is_empty()
                        && !sub.names.is_empty()
                        && !sub.wildcard
                    {
                        // Nothing to say for a name subscription whose resources are unknown.
                        continue;
                    }
                    if resources.is_empty() && removed.is_empty() && sub.wildcard && nonce > 0 {
                        continue;
                    }
                    nonce += 1;
                    let resp = DeltaDiscoveryResponse {
                        system_version_info: version.to_string(),
                        resources,
                        type_url: t.clone(),
                        removed_resources: removed,
                        nonce: format!("{nonce}-{version}"),
                        ..Default::default()
                    };
                    if tx.send(Ok(resp)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
