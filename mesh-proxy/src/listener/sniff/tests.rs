use proptest::prelude::*;

use super::*;

/// A syntactically complete ClientHello record with the given SNI and ALPN.
pub(crate) fn client_hello_bytes(sni: Option<&str>, alpn: &[&str]) -> Vec<u8> {
    let mut exts = Vec::new();
    if let Some(name) = sni {
        let n = name.as_bytes();
        let mut d = Vec::new();
        d.extend_from_slice(&((n.len() + 3) as u16).to_be_bytes());
        d.push(0);
        d.extend_from_slice(&(n.len() as u16).to_be_bytes());
        d.extend_from_slice(n);
        exts.extend_from_slice(&0u16.to_be_bytes());
        exts.extend_from_slice(&(d.len() as u16).to_be_bytes());
        exts.extend_from_slice(&d);
    }
    if !alpn.is_empty() {
        let mut list = Vec::new();
        for p in alpn {
            list.push(p.len() as u8);
            list.extend_from_slice(p.as_bytes());
        }
        let mut d = (list.len() as u16).to_be_bytes().to_vec();
        d.extend_from_slice(&list);
        exts.extend_from_slice(&16u16.to_be_bytes());
        exts.extend_from_slice(&(d.len() as u16).to_be_bytes());
        exts.extend_from_slice(&d);
    }
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
    body.extend_from_slice(&[1, 0]); // null compression
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

#[test]
fn parses_sni_and_alpn() {
    let b = client_hello_bytes(Some("Reviews.Default.svc"), &["h2", "http/1.1"]);
    assert_eq!(
        client_hello(&b),
        Verdict::Yes(ClientHello {
            server_name: Some("reviews.default.svc".into()),
            alpn: vec!["h2".into(), "http/1.1".into()]
        })
    );
    // Every strict prefix asks for more.
    for n in 1..b.len() {
        assert_eq!(client_hello(&b[..n]), Verdict::NeedMore, "prefix {n}");
    }
}

#[test]
fn fragmented_over_two_records() {
    let b = client_hello_bytes(Some("a.example"), &[]);
    let hs = &b[5..];
    let (x, y) = hs.split_at(10);
    let mut two = vec![0x16, 3, 1];
    two.extend_from_slice(&(x.len() as u16).to_be_bytes());
    two.extend_from_slice(x);
    two.extend_from_slice(&[0x16, 3, 1]);
    two.extend_from_slice(&(y.len() as u16).to_be_bytes());
    two.extend_from_slice(y);
    assert_eq!(
        client_hello(&two),
        Verdict::Yes(ClientHello {
            server_name: Some("a.example".into()),
            alpn: vec![]
        })
    );
}

#[test]
fn not_tls() {
    assert_eq!(client_hello(b"GET / HTTP/1.1\r\n"), Verdict::No);
    assert_eq!(client_hello(&[0x16, 2]), Verdict::No);
}

#[test]
fn http_detection() {
    assert_eq!(
        http_protocol(b"GET /x HTTP/1.1\r\nHost: a\r\n"),
        Verdict::Yes("http/1.1")
    );
    assert_eq!(
        http_protocol(b"POST / HTTP/1.0\r\n"),
        Verdict::Yes("http/1.0")
    );
    assert_eq!(http_protocol(b"GET /x HT"), Verdict::NeedMore);
    assert_eq!(http_protocol(b"GE"), Verdict::NeedMore);
    assert_eq!(http_protocol(H2_PREFACE), Verdict::Yes("h2c"));
    assert_eq!(http_protocol(&H2_PREFACE[..10]), Verdict::NeedMore);
    assert_eq!(http_protocol(b"SSH-2.0-OpenSSH\r\n"), Verdict::No);
    assert_eq!(http_protocol(b"\x00\x01binary"), Verdict::No);
    assert_eq!(http_protocol(b"GET / FOO/1.1\r\n"), Verdict::No);
}

#[tokio::test]
async fn sniff_reads_until_decided_and_keeps_bytes() {
    use tokio::io::AsyncWriteExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hello = client_hello_bytes(Some("x.test"), &["h2"]);
    let sent = hello.clone();
    let client = tokio::spawn(async move {
        let mut c = TcpStream::connect(addr).await.unwrap();
        // Dribble the ClientHello in pieces.
        for chunk in sent.chunks(7) {
            c.write_all(chunk).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        c
    });
    let (mut s, _) = l.accept().await.unwrap();
    let mut buf = BytesMut::new();
    let mut out = Sniffed::default();
    sniff(
        &mut s,
        &mut buf,
        true,
        true,
        Some(Duration::from_secs(5)),
        &mut out,
    )
    .await
    .unwrap();
    assert_eq!(out.transport_protocol, TransportProtocol::Tls);
    assert_eq!(out.server_name.as_deref(), Some("x.test"));
    assert_eq!(out.application_protocols, vec!["h2".to_string()]);
    assert_eq!(&buf[..], &hello[..]);
    drop(client.await.unwrap());
}

#[tokio::test]
async fn sniff_times_out_on_silent_client() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let _c = TcpStream::connect(addr).await.unwrap();
    let (mut s, _) = l.accept().await.unwrap();
    let mut buf = BytesMut::new();
    let mut out = Sniffed::default();
    let e = sniff(
        &mut s,
        &mut buf,
        true,
        true,
        Some(Duration::from_millis(50)),
        &mut out,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, SniffError::Timeout(_)));
}

proptest! {
    #[test]
    fn parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = client_hello(&bytes);
        let _ = http_protocol(&bytes);
    }

    #[test]
    fn hello_roundtrip(sni in "[a-z0-9.-]{1,60}", alpn in prop::collection::vec("[a-z0-9/.]{1,12}", 0..4)) {
        let alpn_refs: Vec<&str> = alpn.iter().map(String::as_str).collect();
        let b = client_hello_bytes(Some(&sni), &alpn_refs);
        prop_assert_eq!(client_hello(&b), Verdict::Yes(ClientHello { server_name: Some(sni.clone()), alpn: alpn.clone() }));
    }

    #[test]
    fn truncated_hello_is_never_a_false_no(cut in 1usize..200) {
        let b = client_hello_bytes(Some("svc.ns.svc.cluster.local"), &["h2"]);
        let cut = cut.min(b.len() - 1);
        prop_assert_eq!(client_hello(&b[..cut]), Verdict::NeedMore);
    }
}
