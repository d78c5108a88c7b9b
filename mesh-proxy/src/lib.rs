//! The mesh data plane: an Envoy-xDS-driven sidecar (`--mode sidecar`) and gateway
//! (`--mode router`) proxy.
//!
//! Config flows one way: [`xds`] decodes Envoy v3 resources into [`config`] domain types
//! (a NACK names the resource and field it cannot apply), publishes them as an immutable
//! [`config::Snapshot`] and into the [`upstream::ClusterManager`]; [`listener`] runs one
//! accept loop per Listener, matches filter chains and hands each connection to
//! [`tcp`] (L4) or [`http`] (L7). [`admin`] and [`stats`] expose the live state;
//! [`drain`] threads graceful shutdown through everything. See `ARCHITECTURE.md`.

pub mod accesslog;
pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod drain;
pub mod http;
pub mod listener;
pub mod runtime;
pub mod stats;
pub mod tcp;
pub mod upstream;
pub mod xds;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use runtime::Runtime;
