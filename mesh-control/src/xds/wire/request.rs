//! The SotW request as the server decodes it.
//!
//! Envoy repeats a type's whole `resource_names` in every SotW request, ACKs included: a
//! sidecar that sees a whole mesh names 4,000 load assignments in each EDS ACK. Decoded as
//! Envoy's `DiscoveryRequest`, every name is a `String` allocation, thousands per ACK per
//! proxy during a push, for a list the server only hashes (see
//! `Subscription::apply_sotw`). Here the names are slices of the received frame.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::rpc::Status;
use prost::bytes::Bytes;

/// `envoy.service.discovery.v3.DiscoveryRequest`, field for field except
/// `resource_locators` (7), which the server does not read (skipped as unknown).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SotwRequest {
    #[prost(string, tag = "1")]
    pub version_info: String,
    #[prost(message, optional, tag = "2")]
    pub node: Option<Node>,
    /// Protobuf strings; bytes here so that decoding does not copy them. Not checked for
    /// UTF-8: a name that is not matches no resource.
    #[prost(bytes = "bytes", repeated, tag = "3")]
    pub resource_names: Vec<Bytes>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, tag = "5")]
    pub response_nonce: String,
    #[prost(message, optional, tag = "6")]
    pub error_detail: Option<Status>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use prost::Message;

    #[test]
    fn decodes_what_envoy_sends() {
        let sent = DiscoveryRequest {
            version_info: "v1".into(),
            node: Some(Node {
                id: "sidecar~10.0.0.1~a.ns~ns.svc.cluster.local".into(),
                ..Default::default()
            }),
            resource_names: vec!["outbound|80||a.ns.svc.cluster.local".into(), "*".into()],
            type_url: "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment".into(),
            response_nonce: "4".into(),
            error_detail: Some(Status {
                code: 3,
                message: "bad".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let got = SotwRequest::decode(Bytes::from(sent.encode_to_vec())).unwrap();
        assert_eq!(got.version_info, sent.version_info);
        assert_eq!(got.node, sent.node);
        assert_eq!(got.type_url, sent.type_url);
        assert_eq!(got.response_nonce, sent.response_nonce);
        assert_eq!(got.error_detail, sent.error_detail);
        let names: Vec<&[u8]> = got.resource_names.iter().map(|b| &b[..]).collect();
        assert_eq!(
            names,
            [&b"outbound|80||a.ns.svc.cluster.local"[..], &b"*"[..]]
        );
    }
}
