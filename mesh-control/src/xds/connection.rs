//! Connected proxies: one [`Connection`] per ADS stream, in a [`Registry`] that the push side
//! fans out to and the debug endpoints read.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::resources::ProxyResources;
use super::status::{SyncStatus, WallTime};
use super::types::TypeSet;
use crate::model::Proxy;

pub type ConnId = u64;

/// Which ADS variant a stream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Sotw,
    Delta,
}

/// A push handed to a connection's stream task: freshly generated resources and the types
/// to consider. `done` lets the push queue hand this connection its next push once this one
/// is written.
#[derive(Debug)]
pub struct PushCommand {
    pub resources: Arc<ProxyResources>,
    pub types: TypeSet,
    /// When the first change of this (debounced) push happened: convergence is measured
    /// from here.
    pub triggered_at: Instant,
    /// When this connection's generation started: push time is measured from here.
    pub started_at: Instant,
    pub generation_time: Duration,
    pub done: Option<Box<dyn Send + Sync + std::fmt::Debug>>,
}

/// One connected proxy.
#[derive(Debug)]
pub struct Connection {
    pub id: ConnId,
    /// `<node id>-<n>`, as Istio names connections.
    pub name: String,
    pub proxy: Arc<Proxy>,
    pub peer: Option<SocketAddr>,
    pub protocol: Protocol,
    pub connected_at: WallTime,
    pub status: Mutex<SyncStatus>,
    /// The resources last generated for this proxy (what pushes diff against).
    pub resources: ArcSwapOption<ProxyResources>,
    pub pushes: AtomicU64,
    push_tx: mpsc::Sender<PushCommand>,
}

impl Connection {
    /// Hands a push to the stream task. Returns false if the stream is gone.
    pub async fn push(&self, cmd: PushCommand) -> bool {
        self.push_tx.send(cmd).await.is_ok()
    }
}

/// Every connected proxy, by connection id.
#[derive(Debug, Default)]
pub struct Registry {
    conns: RwLock<BTreeMap<ConnId, Arc<Connection>>>,
    next_id: AtomicU64,
}

impl Registry {
    /// Registers a new stream; the receiver gets the pushes for it.
    pub fn register(
        &self,
        proxy: Arc<Proxy>,
        peer: Option<SocketAddr>,
        protocol: Protocol,
    ) -> (Arc<Connection>, mpsc::Receiver<PushCommand>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        // Two queued pushes are plenty: the push queue coalesces the rest upstream.
        let (push_tx, push_rx) = mpsc::channel(2);
        let conn = Arc::new(Connection {
            id,
            name: format!("{}-{id}", proxy.id),
            proxy,
            peer,
            protocol,
            connected_at: WallTime::now(),
            status: Mutex::new(SyncStatus::default()),
            resources: ArcSwapOption::empty(),
            pushes: AtomicU64::new(0),
            push_tx,
        });
        self.conns.write().insert(id, conn.clone());
        (conn, push_rx)
    }

    pub fn remove(&self, id: ConnId) {
        self.conns.write().remove(&id);
    }

    pub fn get(&self, id: ConnId) -> Option<Arc<Connection>> {
        self.conns.read().get(&id).cloned()
    }

    pub fn ids(&self) -> Vec<ConnId> {
        self.conns.read().keys().copied().collect()
    }

    pub fn all(&self) -> Vec<Arc<Connection>> {
        self.conns.read().values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.conns.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.read().is_empty()
    }

    /// The newest connection of a proxy, by full node id, by `<pod>.<namespace>`, or by
    /// connection name (the forms `istioctl` accepts).
    pub fn find(&self, proxy_id: &str) -> Option<Arc<Connection>> {
        self.conns
            .read()
            .values()
            .rev()
            .find(|c| {
                c.proxy.id == proxy_id
                    || c.name == proxy_id
                    || format!("{}.{}", c.proxy.pod_name, c.proxy.namespace) == proxy_id
            })
            .cloned()
    }
}
