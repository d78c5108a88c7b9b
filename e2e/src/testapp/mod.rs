//! The test workload: one small binary used by every scenario and by the demo.
//!
//! Server: HTTP/1.1 and HTTP/2 (h2c, prior knowledge) on the same ports, gRPC
//! (`testapp.Echo/Call`), WebSocket echo on `/ws`, and raw TCP echo ports. Every HTTP and
//! gRPC answer is one line of JSON naming the service, version and pod that answered and
//! the request it saw ([`server`]). Per-request controls ([`controls`]) make it slow,
//! fail, reset, or fail the first N times. Client: a bounded load generator that prints
//! totals per version, pod and status ([`client`]).

pub mod client;
pub mod controls;
pub mod grpc;
pub mod server;
pub mod tcp;
pub mod ws;

use serde::{Deserialize, Serialize};

/// Who is answering: set from flags or the environment the harness gives each pod.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    pub service: String,
    pub version: String,
    pub pod: String,
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ip: String,
}

/// Headers an application must copy from its inbound request to its outbound calls for
/// distributed traces to join up (the list in Istio's tracing docs).
pub const TRACE_HEADERS: &[&str] = &[
    "x-request-id",
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-ot-span-context",
    "x-cloud-trace-context",
    "grpc-trace-bin",
    "baggage",
];
