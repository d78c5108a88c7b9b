use proptest::prelude::*;

use super::*;

fn input<'a>(
    dst: &str,
    src: &str,
    sni: Option<&'a str>,
    transport: &'a str,
    alpn: &'a [String],
) -> MatchInput<'a> {
    let destination: SocketAddr = dst.parse().unwrap();
    let source: SocketAddr = src.parse().unwrap();
    MatchInput {
        destination,
        source,
        direct_source: source.ip(),
        server_name: sni,
        transport_protocol: transport,
        application_protocols: alpn,
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn port_is_more_specific_and_does_not_backtrack() {
    let chains = vec![
        ChainMatch {
            destination_port: Some(80),
            prefix_ranges: vec![net("10.0.0.0/8")],
            ..Default::default()
        },
        ChainMatch::default(),
    ];
    let m = FilterChainMatcher::new(&chains).unwrap();
    assert_eq!(
        m.find(&input("10.1.1.1:80", "1.1.1.1:5", None, "raw_buffer", &[])),
        Some(0)
    );
    assert_eq!(
        m.find(&input("10.1.1.1:81", "1.1.1.1:5", None, "raw_buffer", &[])),
        Some(1)
    );
    // Port 80 selects the port-80 bucket; its IP does not match and Envoy does not
    // fall back to the catch-all chain.
    assert_eq!(
        m.find(&input(
            "192.168.1.1:80",
            "1.1.1.1:5",
            None,
            "raw_buffer",
            &[]
        )),
        None
    );
}

#[test]
fn longest_prefix_wins() {
    let chains = vec![
        ChainMatch {
            prefix_ranges: vec![net("10.0.0.0/8")],
            ..Default::default()
        },
        ChainMatch {
            prefix_ranges: vec![net("10.1.0.0/16")],
            ..Default::default()
        },
        ChainMatch {
            prefix_ranges: vec![net("0.0.0.0/0")],
            ..Default::default()
        },
    ];
    let m = FilterChainMatcher::new(&chains).unwrap();
    assert_eq!(
        m.find(&input("10.1.2.3:1", "1.1.1.1:5", None, "", &[])),
        Some(1)
    );
    assert_eq!(
        m.find(&input("10.2.2.3:1", "1.1.1.1:5", None, "", &[])),
        Some(0)
    );
    assert_eq!(
        m.find(&input("11.2.2.3:1", "1.1.1.1:5", None, "", &[])),
        Some(2)
    );
    // IPv4-mapped IPv6 destinations match IPv4 ranges.
    assert_eq!(
        m.find(&input("[::ffff:10.1.2.3]:1", "1.1.1.1:5", None, "", &[])),
        Some(1)
    );
}

#[test]
fn server_names_exact_then_longest_wildcard() {
    let chains = vec![
        ChainMatch {
            server_names: vec!["www.example.com".into()],
            ..Default::default()
        },
        ChainMatch {
            server_names: vec!["*.example.com".into()],
            ..Default::default()
        },
        ChainMatch {
            server_names: vec!["*.com".into()],
            ..Default::default()
        },
        ChainMatch::default(),
    ];
    let m = FilterChainMatcher::new(&chains).unwrap();
    let f = |sni| m.find(&input("1.1.1.1:443", "2.2.2.2:5", sni, "tls", &[]));
    assert_eq!(f(Some("www.example.com")), Some(0));
    assert_eq!(f(Some("a.b.example.com")), Some(1));
    assert_eq!(f(Some("example.com")), Some(2));
    assert_eq!(f(Some("example.org")), Some(3));
    assert_eq!(f(None), Some(3));
}

#[test]
fn transport_and_alpn_istio_inbound_shape() {
    // The shape of Istio's virtualInbound chains for one port.
    let alpn_http = vec!["http/1.1".to_string(), "h2c".to_string()];
    let chains = vec![
        ChainMatch {
            destination_port: Some(8080),
            transport_protocol: "tls".into(),
            ..Default::default()
        },
        ChainMatch {
            destination_port: Some(8080),
            transport_protocol: "raw_buffer".into(),
            application_protocols: alpn_http.clone(),
            ..Default::default()
        },
        ChainMatch {
            destination_port: Some(8080),
            transport_protocol: "raw_buffer".into(),
            ..Default::default()
        },
    ];
    let m = FilterChainMatcher::new(&chains).unwrap();
    let h1 = ["http/1.1".to_string()];
    assert_eq!(
        m.find(&input(
            "10.250.0.2:8080",
            "10.250.0.3:5",
            None,
            "raw_buffer",
            &h1
        )),
        Some(1)
    );
    assert_eq!(
        m.find(&input(
            "10.250.0.2:8080",
            "10.250.0.3:5",
            None,
            "raw_buffer",
            &[]
        )),
        Some(2)
    );
    assert_eq!(
        m.find(&input(
            "10.250.0.2:8080",
            "10.250.0.3:5",
            Some("x"),
            "tls",
            &[]
        )),
        Some(0)
    );
}

#[test]
fn source_type_prefers_specific() {
    let chains = vec![
        ChainMatch {
            source_type: SourceType::Local,
            ..Default::default()
        },
        ChainMatch {
            source_type: SourceType::Any,
            ..Default::default()
        },
    ];
    let m = FilterChainMatcher::new(&chains).unwrap();
    assert_eq!(
        m.find(&input("10.0.0.1:80", "127.0.0.1:5", None, "", &[])),
        Some(0)
    );
    assert_eq!(
        m.find(&input("10.0.0.1:80", "10.0.0.1:5", None, "", &[])),
        Some(0)
    );
    assert_eq!(
        m.find(&input("10.0.0.1:80", "10.0.0.2:5", None, "", &[])),
        Some(1)
    );
}

#[test]
fn source_ports_and_duplicates() {
    let chains = vec![
        ChainMatch {
            source_ports: vec![1000, 1001],
            ..Default::default()
        },
        ChainMatch::default(),
        ChainMatch {
            source_ports: vec![1001],
            ..Default::default()
        },
    ];
    assert_eq!(
        FilterChainMatcher::new(&chains).unwrap_err(),
        DuplicateMatch {
            first: 0,
            second: 2
        }
    );
    let m = FilterChainMatcher::new(&chains[..2]).unwrap();
    assert_eq!(
        m.find(&input("1.1.1.1:1", "2.2.2.2:1000", None, "", &[])),
        Some(0)
    );
    assert_eq!(
        m.find(&input("1.1.1.1:1", "2.2.2.2:999", None, "", &[])),
        Some(1)
    );
    assert_eq!(
        FilterChainMatcher::new(&[ChainMatch::default(), ChainMatch::default()]).unwrap_err(),
        DuplicateMatch {
            first: 0,
            second: 1
        }
    );
}

// === property test: the compiled table agrees with Envoy's pruning description ===

/// Envoy's documented algorithm, literally: prune by each criterion, keeping the most
/// specific matches.
fn reference(chains: &[ChainMatch], c: &MatchInput<'_>) -> Option<usize> {
    let mut cands: Vec<usize> = (0..chains.len()).collect();
    // Each step scores a chain: None = does not match, Some(k) = matches with specificity k.
    type Score = fn(&ChainMatch, &MatchInput<'_>) -> Option<u32>;
    fn cidr(ranges: &[IpNet], ip: IpAddr) -> Option<u32> {
        let ip = canonical(ip);
        if ranges.is_empty() {
            return Some(0);
        }
        ranges
            .iter()
            .filter(|r| r.contains(&ip))
            .map(|r| 1 + u32::from(r.prefix_len()))
            .max()
    }
    let steps: [Score; 9] = [
        |m, c| match m.destination_port {
            None => Some(0),
            Some(p) if p == c.destination.port() => Some(1),
            Some(_) => None,
        },
        |m, c| cidr(&m.prefix_ranges, c.destination.ip()),
        |m, c| {
            if m.server_names.is_empty() {
                return Some(0);
            }
            let sni = c.server_name?;
            m.server_names
                .iter()
                .filter_map(|n| match n.strip_prefix('*') {
                    None => (n == sni).then_some(1000),
                    Some(suffix) => (sni.len() > suffix.len() && sni.ends_with(suffix))
                        .then_some(suffix.len() as u32),
                })
                .max()
        },
        |m, c| {
            if m.transport_protocol.is_empty() {
                Some(0)
            } else {
                (m.transport_protocol == c.transport_protocol).then_some(1)
            }
        },
        |m, c| {
            if m.application_protocols.is_empty() {
                return Some(0);
            }
            // Earlier connection protocols rank higher.
            let n = c.application_protocols.len() as u32;
            c.application_protocols
                .iter()
                .position(|p| m.application_protocols.contains(p))
                .map(|i| 1 + n - i as u32)
        },
        |m, c| cidr(&m.direct_source_prefix_ranges, c.direct_source),
        |m, c| match m.source_type {
            SourceType::Any => Some(0),
            SourceType::Local => c.is_local_source().then_some(1),
            SourceType::External => (!c.is_local_source()).then_some(1),
        },
        |m, c| cidr(&m.source_prefix_ranges, c.source.ip()),
        |m, c| {
            if m.source_ports.is_empty() {
                Some(0)
            } else {
                m.source_ports.contains(&c.source.port()).then_some(1)
            }
        },
    ];
    for step in steps {
        let scored: Vec<(usize, u32)> = cands
            .iter()
            .filter_map(|&i| step(&chains[i], c).map(|s| (i, s)))
            .collect();
        let best = scored.iter().map(|(_, s)| *s).max()?;
        cands = scored
            .into_iter()
            .filter(|(_, s)| *s == best)
            .map(|(i, _)| i)
            .collect();
    }
    cands.first().copied()
}

fn arb_match() -> impl Strategy<Value = ChainMatch> {
    let nets = prop::collection::vec(
        prop::sample::select(vec![
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.1.1.0/24",
            "0.0.0.0/0",
        ]),
        0..2,
    );
    (
        prop::option::of(prop::sample::select(vec![80u16, 443])),
        nets.clone(),
        prop::collection::vec(
            prop::sample::select(vec![
                "a.example.com",
                "*.example.com",
                "*.com",
                "b.example.com",
            ]),
            0..2,
        ),
        prop::sample::select(vec!["", "tls", "raw_buffer"]),
        prop::collection::vec(prop::sample::select(vec!["h2", "http/1.1"]), 0..2),
        prop::sample::select(vec![
            SourceType::Any,
            SourceType::Local,
            SourceType::External,
        ]),
        nets,
        prop::collection::vec(prop::sample::select(vec![1000u16, 2000]), 0..2),
    )
        .prop_map(|(port, dst, names, transport, alpn, st, src, ports)| {
            let dedup = |mut v: Vec<String>| {
                v.sort();
                v.dedup();
                v
            };
            let dedup_net = |v: Vec<&str>| {
                let mut v: Vec<IpNet> = v.into_iter().map(net).collect();
                v.sort();
                v.dedup();
                v
            };
            let mut ports = ports;
            ports.sort();
            ports.dedup();
            ChainMatch {
                destination_port: port,
                prefix_ranges: dedup_net(dst),
                server_names: dedup(names.into_iter().map(String::from).collect()),
                transport_protocol: transport.to_string(),
                application_protocols: dedup(alpn.into_iter().map(String::from).collect()),
                direct_source_prefix_ranges: vec![],
                source_type: st,
                source_prefix_ranges: dedup_net(src),
                source_ports: ports,
            }
        })
}

proptest! {
    #[test]
    fn compiled_matches_reference(
        chains in prop::collection::vec(arb_match(), 1..8),
        dst in prop::sample::select(vec!["10.1.1.5", "10.1.2.5", "10.2.0.1", "192.168.0.1"]),
        port in prop::sample::select(vec![80u16, 443, 8080]),
        src in prop::sample::select(vec!["127.0.0.1", "10.1.1.9", "172.16.0.1"]),
        sport in prop::sample::select(vec![1000u16, 2000, 3000]),
        sni in prop::option::of(prop::sample::select(vec!["a.example.com", "x.y.example.com", "example.com", "foo.org"])),
        transport in prop::sample::select(vec!["tls", "raw_buffer"]),
        alpn in prop::collection::vec(prop::sample::select(vec!["h2", "http/1.1"]), 0..3),
    ) {
        let alpn: Vec<String> = alpn.into_iter().map(String::from).collect();
        let destination = SocketAddr::new(dst.parse().unwrap(), port);
        let source = SocketAddr::new(src.parse().unwrap(), sport);
        let c = MatchInput { destination, source, direct_source: source.ip(), server_name: sni, transport_protocol: transport, application_protocols: &alpn };
        // Duplicates are rejected (the reference would leave two candidates).
        if let Ok(m) = FilterChainMatcher::new(&chains) {
            prop_assert_eq!(m.find(&c), reference(&chains, &c));
        }
    }
}
