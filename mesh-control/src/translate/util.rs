//! Small builders for Envoy protos shared by the translation modules.

use envoy_types::pb::envoy::config::core::v3::Address;
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress, address,
    config_source::ConfigSourceSpecifier, socket_address,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration, UInt32Value};
use std::collections::HashMap;

use prost::{Message, Name};

/// Packs a message into an `Any`.
pub fn any<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

pub fn duration(d: std::time::Duration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// A zero duration: "no timeout" in most Envoy fields.
pub fn zero() -> Duration {
    Duration {
        seconds: 0,
        nanos: 0,
    }
}

/// An Istio duration field, when it is set and valid (validation reports invalid ones).
pub fn istio_duration(d: &Option<mesh_api::duration::Duration>) -> Option<Duration> {
    d.as_ref().and_then(|d| d.get()).map(duration)
}

pub fn u32v(value: u32) -> UInt32Value {
    UInt32Value { value }
}

pub fn boolv(value: bool) -> BoolValue {
    BoolValue { value }
}

/// Where dynamic resources come from: the ADS stream, with no initial fetch timeout (Istio's
/// choice: a proxy waits for its config rather than starting with none).
pub fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        initial_fetch_timeout: Some(zero()),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

pub fn socket_address(ip: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

/// Istio `Percent` (0..=100, fractional) as millionths, truncated as Istio's
/// `translatePercentToFractionalPercent` does (33.3 is 332999).
pub fn percent_to_fraction(value: f64) -> FractionalPercent {
    FractionalPercent {
        numerator: (value.clamp(0.0, 100.0) * 10_000.0) as u32,
        denominator: DenominatorType::Million as i32,
    }
}

pub fn percent_hundred(value: u32) -> FractionalPercent {
    FractionalPercent {
        numerator: value.min(100),
        denominator: DenominatorType::Hundred as i32,
    }
}

/// A map whose iteration order is its key order. prost encodes map fields in iteration
/// order, and std's `HashMap` iterates in a per-instance random order: without this the
/// same resource could encode to different bytes on each generation (and look changed to
/// the xDS side, which versions resources by content). The field types are fixed by the
/// generated code, so instead of another hasher we retry the (tiny) map until its order is
/// sorted; maps here hold at most a few entries.
pub fn ordered_map<V: Clone>(mut entries: Vec<(String, V)>) -> HashMap<String, V> {
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.dedup_by(|a, b| a.0 == b.0);
    let mut map = HashMap::new();
    for _ in 0..1000 {
        map = entries.iter().cloned().collect::<HashMap<_, _>>();
        if map.keys().zip(entries.iter()).all(|(k, (e, _))| k == e) {
            break;
        }
    }
    map
}
