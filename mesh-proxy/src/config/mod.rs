//! Domain types decoded from xDS resources at the edge. Raw protos stop here.
//!
//! Every resource is converted once per xDS update (`TryFrom<&proto>`, error
//! [`ConfigError`], which becomes the NACK's `error_detail`); the data path reads only
//! these types through the immutable [`Snapshot`] published by the [`Store`].

pub mod address;
pub mod cluster;
pub mod endpoint;
pub mod http;
pub mod listener;
pub mod route;
pub mod route_action;
pub mod route_headers;
pub mod route_match;
pub mod tcp_proxy;

use std::{collections::HashMap, fmt, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use prost::Message;
use tokio::sync::watch;

/// A resource that cannot be applied: becomes the NACK's `error_detail`.
///
/// `resource` is the resource name (Listener, Cluster, RouteConfiguration, ...), `field`
/// the proto field path inside it (`filter_chains[0].filters[1].typed_config`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{resource}: {field}: {message}")]
pub struct ConfigError {
    pub resource: String,
    pub field: String,
    pub message: String,
}

impl ConfigError {
    /// An error at `field` whose resource is filled in by the caller ([`Self::in_resource`]).
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            resource: String::new(),
            field: field.into(),
            message: message.into(),
        }
    }

    /// The standard error for a field that would change traffic but is not implemented.
    pub fn unsupported(field: impl Into<String>) -> Self {
        Self::field(
            field,
            "not supported by mesh-proxy (see mesh-proxy/SUPPORTED.md)",
        )
    }

    /// Prefixes the field path with an outer one (`filter_chains[2]`).
    #[must_use]
    pub fn at(mut self, outer: impl fmt::Display) -> Self {
        self.field = if self.field.is_empty() {
            outer.to_string()
        } else if self.field.starts_with('[') {
            format!("{outer}{}", self.field)
        } else {
            format!("{outer}.{}", self.field)
        };
        self
    }

    /// Names the resource the error belongs to (kept if already set).
    #[must_use]
    pub fn in_resource(mut self, name: &str) -> Self {
        if self.resource.is_empty() {
            self.resource = name.to_string();
        }
        self
    }
}

/// Result of converting one part of a resource.
pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// Decodes a typed `Any`, checking its type URL against the expected message.
pub fn decode_any<M: Message + prost::Name + Default>(any: &Any, field: &str) -> Result<M> {
    let expected = M::type_url();
    if any.type_url != expected {
        return Err(ConfigError::field(
            field,
            format!("expected type {expected:?}, got {:?}", any.type_url),
        ));
    }
    M::decode(any.value.as_slice())
        .map_err(|e| ConfigError::field(field, format!("cannot decode {expected}: {e}")))
}

/// A protobuf Duration as a std Duration; negative or out-of-range values are an error.
pub fn duration(d: &PbDuration, field: &str) -> Result<Duration> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(ConfigError::field(
            field,
            format!("invalid duration {}s {}ns", d.seconds, d.nanos),
        ));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// An optional protobuf Duration, `None` when unset.
pub fn opt_duration(d: &Option<PbDuration>, field: &str) -> Result<Option<Duration>> {
    d.as_ref().map(|d| duration(d, field)).transpose()
}

/// Everything the data path reads about listeners and routes, immutable once published.
///
/// Clusters and endpoints live in [`crate::upstream::ClusterManager`] because they carry
/// runtime state (load-balancer cursors, circuit-breaker counters, connection pools).
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Active (warmed) listeners by name.
    pub listeners: HashMap<String, Arc<listener::Listener>>,
    /// RDS route configurations by name.
    pub routes: HashMap<String, Arc<route::RouteConfiguration>>,
}

/// The current [`Snapshot`] behind an `ArcSwap`: readers never block, writers publish a
/// whole new snapshot, and connections in flight keep the one they started with.
#[derive(Debug)]
pub struct Store {
    current: ArcSwap<Snapshot>,
    /// Bumped on every publish so the listener manager can wait for changes.
    generation: watch::Sender<u64>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub fn new() -> Self {
        Store {
            current: ArcSwap::from_pointee(Snapshot::default()),
            generation: watch::Sender::new(0),
        }
    }

    /// The snapshot in force now. Cheap; hold it for the duration of a request.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Publishes a new snapshot and wakes the subscribers.
    pub fn store(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
        self.generation.send_modify(|g| *g += 1);
    }

    /// Publishes a snapshot derived from the current one (single writer: the xDS task).
    pub fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        let mut next = Snapshot::clone(&self.current.load());
        f(&mut next);
        self.store(next);
    }

    /// A receiver that changes whenever a new snapshot is published.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Looks up an RDS route configuration by name in the current snapshot.
    pub fn route(&self, name: &str) -> Option<Arc<route::RouteConfiguration>> {
        self.current.load().routes.get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_paths_nest() {
        let e = ConfigError::unsupported("typed_config")
            .at("filters[1]")
            .at("filter_chains[0]")
            .in_resource("virtualOutbound");
        assert_eq!(e.field, "filter_chains[0].filters[1].typed_config");
        assert_eq!(e.resource, "virtualOutbound");
        assert!(e.to_string().starts_with(
            "virtualOutbound: filter_chains[0].filters[1].typed_config: not supported"
        ));
    }

    #[test]
    fn durations_reject_negative() {
        assert!(
            duration(
                &PbDuration {
                    seconds: -1,
                    nanos: 0
                },
                "x"
            )
            .is_err()
        );
        assert_eq!(
            duration(
                &PbDuration {
                    seconds: 1,
                    nanos: 5
                },
                "x"
            )
            .unwrap(),
            Duration::new(1, 5)
        );
    }

    #[test]
    fn store_publishes_and_notifies() {
        let store = Store::new();
        let mut rx = store.subscribe();
        let before = store.load();
        store.update(|s| {
            s.routes.clear();
        });
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        assert!(!Arc::ptr_eq(&before, &store.load()));
    }
}
