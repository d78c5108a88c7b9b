//! The hashes Envoy's consistent-hash load balancers use, so that the same request key
//! lands on the same host here as in Envoy.

use std::net::SocketAddr;

use crate::upstream::Host;

/// Envoy's `HashUtil::xxHash64` (XXH64). Route hash policies hash header values, cookies
/// and source IPs with seed 0.
pub fn xxhash64(data: &[u8], seed: u64) -> u64 {
    xxhash_rust::xxh64::xxh64(data, seed)
}

/// The string Envoy hashes for a host on the ring / maglev table: the address as
/// `ip:port` (`[v6]:port`), or the hostname when `use_hostname_for_hashing` is set.
pub fn ring_hash_key(host: &Host, use_hostname: bool) -> String {
    if use_hostname && !host.hostname.is_empty() {
        return host.hostname.to_string();
    }
    addr_string(host.addr)
}

fn addr_string(a: SocketAddr) -> String {
    // Rust's SocketAddr display is Envoy's asString(): "1.2.3.4:80", "[::1]:80".
    a.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xxhash64_known_vectors() {
        // Reference values of XXH64 with seed 0.
        assert_eq!(xxhash64(b"", 0), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxhash64(b"a", 0), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(xxhash64(b"abc", 0), 0x44BC_2CF5_AD77_0999);
    }

    #[test]
    fn keys_match_envoy_address_strings() {
        assert_eq!(addr_string("10.0.0.1:80".parse().unwrap()), "10.0.0.1:80");
        assert_eq!(addr_string("[::1]:80".parse().unwrap()), "[::1]:80");
    }
}
