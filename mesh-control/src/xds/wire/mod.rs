//! Responses as they go on the wire, encoded straight from the interned resources.
//!
//! A push sends the same resources to many proxies: a sidecar that sees a whole mesh of
//! 1,000 services gets about 4 MB of clusters and endpoints. Building Envoy's response
//! messages would copy every resource's bytes into each proxy's message before gRPC
//! encodes the message into its frame buffer (a second copy, and the first one's
//! allocations). [`Outgoing`] holds the message without its resources and the shared
//! resources beside it, and encodes them as the message's repeated resource field: the
//! bytes are copied once, into the frame. Protobuf allows a message's fields in any order,
//! so a peer decodes exactly the message it would have got.
//!
//! The ADS service ([`AdsServer`]) is declared here rather than taken from `envoy-types`,
//! whose generated one fixes the response types to Envoy's messages.

mod request;
mod service;

use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType, encoded_len_varint};
use prost::{DecodeError, Message};
use tokio::sync::OwnedSemaphorePermit;

use super::resources::Versioned;

pub use request::SotwRequest;
pub use service::{Ads, AdsServer};

/// A response and the interned resources that go in its `resources` field.
#[derive(Debug, Default)]
pub struct Outgoing<M> {
    pub head: M,
    pub resources: Vec<Arc<Versioned>>,
    /// Held until the response is encoded for the wire, which happens when HTTP/2 asks for
    /// the stream's next message, i.e. once the one before it is written: the initial
    /// response takes its push permit along, so that a connect storm holds at most
    /// `push_concurrency` initial responses in memory instead of one per stream.
    pub hold: Option<OwnedSemaphorePermit>,
}

impl<M: Head> Outgoing<M> {
    pub fn new(head: M) -> Self {
        Outgoing {
            head,
            resources: Vec::new(),
            hold: None,
        }
    }

    /// The whole Envoy message, as a peer decodes it (tests and debugging).
    pub fn to_message(&self) -> M {
        M::decode(self.encode_to_vec().as_slice()).unwrap_or_default()
    }
}

/// The protocol messages [`Outgoing`] carries, and how one resource is encoded in each.
pub trait Head: Message + Default + Sized + 'static {
    /// The length of one resource as an element of the `resources` field (the embedded
    /// message, without its key and length prefix).
    fn resource_len(v: &Versioned) -> usize;
    fn encode_resource(v: &Versioned, buf: &mut impl BufMut);
}

/// `resources` is field 2 in both `DiscoveryResponse` and `DeltaDiscoveryResponse`.
const RESOURCES: u32 = 2;

/// A length-delimited field (string, bytes or message) of `len` bytes.
fn field_len(tag: u32, len: usize) -> usize {
    encoding::key_len(tag) + encoded_len_varint(len as u64) + len
}

fn encode_bytes(tag: u32, bytes: &[u8], buf: &mut impl BufMut) {
    encoding::encode_key(tag, WireType::LengthDelimited, buf);
    encoding::encode_varint(bytes.len() as u64, buf);
    buf.put_slice(bytes);
}

/// `google.protobuf.Any`: `type_url` (1), `value` (2).
fn any_len(v: &Versioned) -> usize {
    field_len(1, v.resource.type_url.len()) + field_len(2, v.resource.value.len())
}

fn encode_any(v: &Versioned, buf: &mut impl BufMut) {
    encode_bytes(1, v.resource.type_url.as_bytes(), buf);
    encode_bytes(2, &v.resource.value, buf);
}

impl Head for DiscoveryResponse {
    fn resource_len(v: &Versioned) -> usize {
        any_len(v)
    }

    fn encode_resource(v: &Versioned, buf: &mut impl BufMut) {
        encode_any(v, buf);
    }
}

/// `envoy.service.discovery.v3.Resource`: `version` (1), `resource` (2), `name` (3).
impl Head for DeltaDiscoveryResponse {
    fn resource_len(v: &Versioned) -> usize {
        field_len(1, v.version.len()) + field_len(2, any_len(v)) + field_len(3, v.name.len())
    }

    fn encode_resource(v: &Versioned, buf: &mut impl BufMut) {
        encode_bytes(1, v.version.as_bytes(), buf);
        encoding::encode_key(2, WireType::LengthDelimited, buf);
        encoding::encode_varint(any_len(v) as u64, buf);
        encode_any(v, buf);
        encode_bytes(3, v.name.as_bytes(), buf);
    }
}

impl<M: Head> Message for Outgoing<M> {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.head.encode_raw(buf);
        for v in &self.resources {
            encoding::encode_key(RESOURCES, WireType::LengthDelimited, buf);
            encoding::encode_varint(M::resource_len(v) as u64, buf);
            M::encode_resource(v, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        // Decoding gives the whole message in `head` (see `to_message`).
        self.head.merge_field(tag, wire_type, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        let resources: usize = self
            .resources
            .iter()
            .map(|v| field_len(RESOURCES, M::resource_len(v)))
            .sum();
        self.head.encoded_len() + resources
    }

    fn clear(&mut self) {
        self.head.clear();
        self.resources.clear();
        self.hold = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::ControlPlane;
    use envoy_types::pb::envoy::service::discovery::v3::Resource;
    use envoy_types::pb::google::protobuf::Any;

    fn versioned(name: &str, bytes: usize) -> Arc<Versioned> {
        Arc::new(Versioned {
            name: name.into(),
            version: format!("v-{name}").into(),
            resource: Any {
                type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
                value: (0..bytes).map(|i| i as u8).collect(),
            },
        })
    }

    /// Sizes on both sides of the one- and two-byte length prefixes.
    fn resources() -> Vec<Arc<Versioned>> {
        [0, 1, 60, 127, 128, 300, 20_000]
            .iter()
            .enumerate()
            .map(|(i, n)| versioned(&format!("r{i}"), *n))
            .collect()
    }

    #[test]
    fn sotw_encodes_as_the_full_message() {
        let head = DiscoveryResponse {
            version_info: "abc-1".into(),
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            nonce: "7".into(),
            control_plane: Some(ControlPlane {
                identifier: "mesh-control".into(),
            }),
            ..Default::default()
        };
        let out = Outgoing {
            head: head.clone(),
            resources: resources(),
            hold: None,
        };
        let full = DiscoveryResponse {
            resources: out.resources.iter().map(|v| v.resource.clone()).collect(),
            ..head
        };
        let bytes = out.encode_to_vec();
        assert_eq!(bytes.len(), out.encoded_len());
        assert_eq!(DiscoveryResponse::decode(bytes.as_slice()).unwrap(), full);
        assert_eq!(out.to_message(), full);
    }

    #[test]
    fn delta_encodes_as_the_full_message() {
        let head = DeltaDiscoveryResponse {
            system_version_info: "abc".into(),
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            removed_resources: vec!["gone".into()],
            nonce: "3".into(),
            ..Default::default()
        };
        let out = Outgoing {
            head: head.clone(),
            resources: resources(),
            hold: None,
        };
        let full = DeltaDiscoveryResponse {
            resources: out
                .resources
                .iter()
                .map(|v| Resource {
                    name: v.name.to_string(),
                    version: v.version.to_string(),
                    resource: Some(v.resource.clone()),
                    ..Default::default()
                })
                .collect(),
            ..head
        };
        let bytes = out.encode_to_vec();
        assert_eq!(bytes.len(), out.encoded_len());
        assert_eq!(
            DeltaDiscoveryResponse::decode(bytes.as_slice()).unwrap(),
            full
        );
    }

    #[test]
    fn an_empty_response_is_the_head_alone() {
        let out = Outgoing::new(DiscoveryResponse {
            nonce: "1".into(),
            ..Default::default()
        });
        assert_eq!(out.encode_to_vec(), out.head.encode_to_vec());
    }
}
