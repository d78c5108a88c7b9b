//! A fingerprint of each filter chain as the control plane encoded it, so an in-place
//! listener update can tell the chains that changed from those that did not and drain
//! only the connections of the former (Envoy's in-place filter chain update).
//!
//! The fingerprint hashes the chain's bytes as they arrived rather than a re-encoding of
//! the decoded message: prost decodes proto maps (metadata, RBAC policies) into
//! `HashMap`s whose iteration order differs from one decode to the next, so re-encoding
//! the same chain twice need not give the same bytes.

use std::hash::{DefaultHasher, Hash, Hasher};

use prost::{
    bytes::Buf,
    encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field},
};

/// `Listener.filter_chains`.
const FILTER_CHAINS: u32 = 3;
/// `Listener.default_filter_chain`.
const DEFAULT_FILTER_CHAIN: u32 = 25;

/// The fingerprints of an encoded `Listener`'s filter chains, in order, and of its
/// default filter chain.
pub fn chain_fingerprints(mut listener: &[u8]) -> Result<(Vec<u64>, Option<u64>), String> {
    let mut chains = Vec::new();
    let mut default = None;
    while listener.has_remaining() {
        let (tag, wire_type) = decode_key(&mut listener).map_err(|e| e.to_string())?;
        match (tag, wire_type) {
            (FILTER_CHAINS | DEFAULT_FILTER_CHAIN, WireType::LengthDelimited) => {
                let len = decode_varint(&mut listener).map_err(|e| e.to_string())?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|l| *l <= listener.len())
                    .ok_or("a filter chain runs past the end of the listener")?;
                let (chain, rest) = listener.split_at(len);
                listener = rest;
                let fp = hash(chain);
                if tag == FILTER_CHAINS {
                    chains.push(fp);
                } else {
                    default = Some(fp);
                }
            }
            _ => skip_field(wire_type, tag, &mut listener, DecodeContext::default())
                .map_err(|e| e.to_string())?,
        }
    }
    Ok((chains, default))
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
    use prost::Message;

    use super::*;

    fn chain(name: &str) -> FilterChain {
        FilterChain {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn one_fingerprint_per_chain_equal_for_equal_bytes() {
        let l = Listener {
            name: "l".into(),
            filter_chains: vec![chain("a"), chain("b"), chain("a")],
            default_filter_chain: Some(chain("d")),
            ..Default::default()
        };
        let (chains, default) = chain_fingerprints(&l.encode_to_vec()).unwrap();
        assert_eq!(chains.len(), 3);
        assert_eq!(chains[0], chains[2]);
        assert_ne!(chains[0], chains[1]);
        assert!(default.is_some() && !chains.contains(&default.unwrap()));

        // Another listener around the same chains: same fingerprints.
        let other = Listener {
            name: "other".into(),
            stat_prefix: "x".into(),
            filter_chains: vec![chain("b")],
            ..Default::default()
        };
        let (again, none) = chain_fingerprints(&other.encode_to_vec()).unwrap();
        assert_eq!(again, [chains[1]]);
        assert_eq!(none, None);
    }

    #[test]
    fn truncated_bytes_are_an_error() {
        let l = Listener {
            filter_chains: vec![chain("a")],
            ..Default::default()
        };
        let bytes = l.encode_to_vec();
        assert!(chain_fingerprints(&bytes[..bytes.len() - 1]).is_err());
    }
}
