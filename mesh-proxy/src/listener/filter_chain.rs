//! Envoy's filter-chain match, precompiled.
//!
//! Envoy prunes the candidate chains criterion by criterion, in this order: destination
//! port, destination IP (longest prefix), server name (exact, then the longest wildcard
//! suffix), transport protocol, application protocols, direct source IP, source type,
//! source IP, source port. At each step only the chains that match *most specifically*
//! survive (a chain that does not constrain the criterion is the least specific match),
//! and there is no backtracking: if the most specific bucket fails later, the connection
//! gets the `default_filter_chain` (or is closed), even if a less specific chain would
//! have matched. We compile the chains into the same nested lookup tables Envoy builds,
//! so matching is a handful of hash and prefix lookups with no allocation.

use std::{
    collections::HashMap,
    hash::Hash,
    net::{IpAddr, SocketAddr},
};

use ipnet::IpNet;

/// The match criteria of one chain, decoded from `FilterChainMatch`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainMatch {
    pub destination_port: Option<u16>,
    pub prefix_ranges: Vec<IpNet>,
    /// Lowercased; `*.example.com` wildcards allowed.
    pub server_names: Vec<String>,
    /// Empty: any.
    pub transport_protocol: String,
    pub application_protocols: Vec<String>,
    pub direct_source_prefix_ranges: Vec<IpNet>,
    pub source_type: SourceType,
    pub source_prefix_ranges: Vec<IpNet>,
    pub source_ports: Vec<u16>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SourceType {
    #[default]
    Any,
    /// Envoy's `SAME_IP_OR_LOOPBACK`.
    Local,
    External,
}

/// What a connection offers to the matcher.
#[derive(Debug, Clone, Copy)]
pub struct MatchInput<'a> {
    /// The (original) destination.
    pub destination: SocketAddr,
    pub source: SocketAddr,
    pub direct_source: IpAddr,
    /// Lowercased SNI.
    pub server_name: Option<&'a str>,
    pub transport_protocol: &'a str,
    pub application_protocols: &'a [String],
}

impl MatchInput<'_> {
    fn is_local_source(&self) -> bool {
        self.source.ip().is_loopback() || self.source.ip() == self.destination.ip()
    }
}

/// Two chains with identical criteria (Envoy rejects the listener too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DuplicateMatch {
    pub first: usize,
    pub second: usize,
}

/// The compiled table; `find` returns the index of the selected chain.
#[derive(Debug, Default)]
pub struct FilterChainMatcher {
    root: Root,
    len: usize,
}

type Root = DstPort<DstIp<ServerName<Transport<AppProto<DirectSrc<SrcType<SrcIp<SrcPort>>>>>>>>;

impl FilterChainMatcher {
    /// Compiles the chains' criteria (indexes are positions in `chains`).
    pub fn new(chains: &[ChainMatch]) -> Result<Self, DuplicateMatch> {
        let mut root = Root::default();
        for (i, m) in chains.iter().enumerate() {
            root.insert(m, i)?;
        }
        Ok(FilterChainMatcher {
            root,
            len: chains.len(),
        })
    }

    pub fn find(&self, input: &MatchInput<'_>) -> Option<usize> {
        self.root.find(input)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

trait Node: Default {
    fn insert(&mut self, m: &ChainMatch, idx: usize) -> Result<(), DuplicateMatch>;
    fn find(&self, c: &MatchInput<'_>) -> Option<usize>;
}

/// One level keyed by exact values, with a bucket for chains that do not constrain it.
#[derive(Debug)]
struct ByKey<K, N> {
    exact: HashMap<K, N>,
    any: Option<N>,
}

impl<K, N> Default for ByKey<K, N> {
    fn default() -> Self {
        ByKey {
            exact: HashMap::new(),
            any: None,
        }
    }
}

impl<K: Eq + Hash, N: Node> ByKey<K, N> {
    fn insert_keys(
        &mut self,
        keys: impl IntoIterator<Item = K>,
        m: &ChainMatch,
        idx: usize,
    ) -> Result<(), DuplicateMatch> {
        let mut any_key = false;
        for k in keys {
            any_key = true;
            self.exact.entry(k).or_default().insert(m, idx)?;
        }
        if !any_key {
            self.any.get_or_insert_with(N::default).insert(m, idx)?;
        }
        Ok(())
    }

    fn find_key<Q>(&self, key: &Q, c: &MatchInput<'_>) -> Option<usize>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match self.exact.get(key) {
            Some(n) => n.find(c),
            None => self.any.as_ref()?.find(c),
        }
    }
}

/// One level keyed by CIDR ranges: the longest prefix containing the address wins.
#[derive(Debug)]
struct ByCidr<N> {
    /// Sorted by prefix length, longest first.
    ranges: Vec<(IpNet, N)>,
    any: Option<N>,
}

impl<N> Default for ByCidr<N> {
    fn default() -> Self {
        ByCidr {
            ranges: Vec::new(),
            any: None,
        }
    }
}

impl<N: Node> ByCidr<N> {
    fn insert_ranges(
        &mut self,
        ranges: &[IpNet],
        m: &ChainMatch,
        idx: usize,
    ) -> Result<(), DuplicateMatch> {
        if ranges.is_empty() {
            return self.any.get_or_insert_with(N::default).insert(m, idx);
        }
        for r in ranges {
            let pos = match self.ranges.iter().position(|(n, _)| n == r) {
                Some(p) => p,
                None => {
                    let at = self
                        .ranges
                        .partition_point(|(n, _)| n.prefix_len() >= r.prefix_len());
                    self.ranges.insert(at, (*r, N::default()));
                    at
                }
            };
            self.ranges[pos].1.insert(m, idx)?;
        }
        Ok(())
    }

    fn find_ip(&self, ip: IpAddr, c: &MatchInput<'_>) -> Option<usize> {
        let ip = canonical(ip);
        match self.ranges.iter().find(|(n, _)| n.contains(&ip)) {
            Some((_, n)) => n.find(c),
            None => self.any.as_ref()?.find(c),
        }
    }
}

/// IPv4-mapped IPv6 addresses (dual-stack sockets) match IPv4 ranges.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

macro_rules! key_level {
    ($name:ident, |$m:ident| $keys:expr, |$c:ident, $this:ident| $find:expr) => {
        #[derive(Debug)]
        struct $name<N>(ByKey<<Self as KeyOf>::Key, N>);
        impl<N> Default for $name<N> {
            fn default() -> Self {
                $name(ByKey::default())
            }
        }
        impl<N: Node> Node for $name<N> {
            fn insert(&mut self, $m: &ChainMatch, idx: usize) -> Result<(), DuplicateMatch> {
                self.0.insert_keys($keys, $m, idx)
            }
            fn find(&self, $c: &MatchInput<'_>) -> Option<usize> {
                let $this = &self.0;
                $find
            }
        }
    };
}

trait KeyOf {
    type Key;
}

key_level!(DstPort, |m| m.destination_port, |c, t| t
    .find_key(&c.destination.port(), c));
impl<N> KeyOf for DstPort<N> {
    type Key = u16;
}

key_level!(
    Transport,
    |m| (!m.transport_protocol.is_empty()).then(|| m.transport_protocol.clone()),
    |c, t| t.find_key(c.transport_protocol, c)
);
impl<N> KeyOf for Transport<N> {
    type Key = String;
}

key_level!(
    AppProto,
    |m| m.application_protocols.iter().cloned(),
    |c, t| {
        // The first of the connection's protocols that some chain names wins.
        match c
            .application_protocols
            .iter()
            .find_map(|p| t.exact.get(p.as_str()))
        {
            Some(n) => n.find(c),
            None => t.any.as_ref()?.find(c),
        }
    }
);
impl<N> KeyOf for AppProto<N> {
    type Key = String;
}

/// Source ports: the leaf level (values are chain indexes).
#[derive(Debug, Default)]
struct SrcPort {
    exact: HashMap<u16, usize>,
    any: Option<usize>,
}

impl Node for SrcPort {
    fn insert(&mut self, m: &ChainMatch, idx: usize) -> Result<(), DuplicateMatch> {
        let put = |slot: &mut Option<usize>| match slot {
            Some(first) => Err(DuplicateMatch {
                first: *first,
                second: idx,
            }),
            None => {
                *slot = Some(idx);
                Ok(())
            }
        };
        if m.source_ports.is_empty() {
            return put(&mut self.any);
        }
        for p in &m.source_ports {
            let mut slot = self.exact.get(p).copied();
            put(&mut slot)?;
            self.exact.insert(*p, idx);
        }
        Ok(())
    }

    fn find(&self, c: &MatchInput<'_>) -> Option<usize> {
        self.exact.get(&c.source.port()).copied().or(self.any)
    }
}

macro_rules! cidr_level {
    ($name:ident, |$m:ident| $ranges:expr, |$c:ident| $ip:expr) => {
        #[derive(Debug)]
        struct $name<N>(ByCidr<N>);
        impl<N> Default for $name<N> {
            fn default() -> Self {
                $name(ByCidr::default())
            }
        }
        impl<N: Node> Node for $name<N> {
            fn insert(&mut self, $m: &ChainMatch, idx: usize) -> Result<(), DuplicateMatch> {
                self.0.insert_ranges($ranges, $m, idx)
            }
            fn find(&self, $c: &MatchInput<'_>) -> Option<usize> {
                self.0.find_ip($ip, $c)
            }
        }
    };
}

cidr_level!(DstIp, |m| &m.prefix_ranges, |c| c.destination.ip());
cidr_level!(DirectSrc, |m| &m.direct_source_prefix_ranges, |c| c
    .direct_source);
cidr_level!(SrcIp, |m| &m.source_prefix_ranges, |c| c.source.ip());

/// Server names: exact, then `*.suffix` wildcards from the longest suffix, then any.
#[derive(Debug)]
struct ServerName<N> {
    exact: HashMap<String, N>,
    /// Keyed by the suffix including its leading dot (`.example.com` for `*.example.com`).
    wildcard: HashMap<String, N>,
    any: Option<N>,
}

impl<N> Default for ServerName<N> {
    fn default() -> Self {
        ServerName {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            any: None,
        }
    }
}

impl<N: Node> Node for ServerName<N> {
    fn insert(&mut self, m: &ChainMatch, idx: usize) -> Result<(), DuplicateMatch> {
        if m.server_names.is_empty() {
            return self.any.get_or_insert_with(N::default).insert(m, idx);
        }
        for name in &m.server_names {
            match name.strip_prefix('*') {
                Some(suffix) => self
                    .wildcard
                    .entry(suffix.to_string())
                    .or_default()
                    .insert(m, idx)?,
                None => self.exact.entry(name.clone()).or_default().insert(m, idx)?,
            }
        }
        Ok(())
    }

    fn find(&self, c: &MatchInput<'_>) -> Option<usize> {
        if let Some(sni) = c.server_name.filter(|s| !s.is_empty()) {
            if let Some(n) = self.exact.get(sni) {
                return n.find(c);
            }
            if !self.wildcard.is_empty() {
                // "a.b.example.com" tries ".b.example.com", ".example.com", ".com".
                let mut from = 1;
                while let Some(dot) = sni[from..].find('.') {
                    let suffix = &sni[from + dot..];
                    if let Some(n) = self.wildcard.get(suffix) {
                        return n.find(c);
                    }
                    from += dot + 1;
                }
            }
        }
        self.any.as_ref()?.find(c)
    }
}

#[derive(Debug)]
struct SrcType<N> {
    local: Option<N>,
    external: Option<N>,
    any: Option<N>,
}

impl<N> Default for SrcType<N> {
    fn default() -> Self {
        SrcType {
            local: None,
            external: None,
            any: None,
        }
    }
}

impl<N: Node> Node for SrcType<N> {
    fn insert(&mut self, m: &ChainMatch, idx: usize) -> Result<(), DuplicateMatch> {
        let slot = match m.source_type {
            SourceType::Any => &mut self.any,
            SourceType::Local => &mut self.local,
            SourceType::External => &mut self.external,
        };
        slot.get_or_insert_with(N::default).insert(m, idx)
    }

    fn find(&self, c: &MatchInput<'_>) -> Option<usize> {
        let specific = if c.is_local_source() {
            &self.local
        } else {
            &self.external
        };
        match specific {
            Some(n) => n.find(c),
            None => self.any.as_ref()?.find(c),
        }
    }
}

#[cfg(test)]
mod tests;
