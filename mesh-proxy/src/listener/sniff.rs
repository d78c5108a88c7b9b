//! The sniffing listener filters: `tls_inspector` (is this a TLS ClientHello; its SNI
//! and ALPN) and `http_inspector` (HTTP/1.x request line or the h2c prior-knowledge
//! preface). Bytes read while sniffing are kept and replayed to the network filter.

use std::time::Duration;

use bytes::BytesMut;
use tokio::{io::AsyncReadExt, net::TcpStream};

use super::TransportProtocol;

/// Envoy's limits: a ClientHello larger than this is not inspected further, and the
/// HTTP inspector gives up after this many bytes without a request line.
pub const MAX_CLIENT_HELLO: usize = 64 * 1024;
pub const MAX_HTTP_LINE: usize = 64 * 1024;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the sniffing filters found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sniffed {
    pub transport_protocol: TransportProtocol,
    pub server_name: Option<String>,
    /// ALPN (TLS) or the detected HTTP protocol (`http/1.1`, `http/1.0`, `h2c`).
    pub application_protocols: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SniffError {
    #[error("listener filters timed out after {0:?} waiting for the first bytes")]
    Timeout(Duration),
    #[error("reading the first bytes: {0}")]
    Io(#[from] std::io::Error),
}

/// Result of one inspector over the bytes seen so far.
#[derive(Debug, PartialEq, Eq)]
enum Verdict<T> {
    NeedMore,
    No,
    Yes(T),
}

#[derive(Debug, PartialEq, Eq, Default)]
pub struct ClientHello {
    pub server_name: Option<String>,
    pub alpn: Vec<String>,
}

/// Reads from `stream` into `buf` until the enabled inspectors have decided (or the
/// peer stops sending). On timeout the caller decides whether to continue
/// (`continue_on_listener_filters_timeout`) with what was found so far.
pub async fn sniff(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    tls: bool,
    http: bool,
    timeout: Option<Duration>,
    out: &mut Sniffed,
) -> Result<(), SniffError> {
    let work = async {
        let mut tls_done = !tls;
        let mut http_done = !http;
        loop {
            if !tls_done {
                match client_hello(buf) {
                    Verdict::NeedMore => {}
                    Verdict::No => tls_done = true,
                    Verdict::Yes(hello) => {
                        out.transport_protocol = TransportProtocol::Tls;
                        out.server_name = hello.server_name;
                        out.application_protocols = hello.alpn;
                        return Ok(());
                    }
                }
            }
            if tls_done && !http_done {
                match http_protocol(buf) {
                    Verdict::NeedMore => {}
                    Verdict::No => http_done = true,
                    Verdict::Yes(p) => {
                        out.application_protocols = vec![p.to_string()];
                        return Ok(());
                    }
                }
            }
            if tls_done && http_done {
                return Ok(());
            }
            if buf.len() >= MAX_CLIENT_HELLO.max(MAX_HTTP_LINE) {
                return Ok(());
            }
            buf.reserve(4096);
            if stream.read_buf(buf).await? == 0 {
                // The peer half-closed before the inspectors could decide.
                return Ok(());
            }
        }
    };
    match timeout {
        None => work.await,
        Some(t) => tokio::time::timeout(t, work)
            .await
            .map_err(|_| SniffError::Timeout(t))?,
    }
}

fn u16_at(b: &[u8], i: usize) -> Option<usize> {
    Some(usize::from(*b.get(i)?) << 8 | usize::from(*b.get(i + 1)?))
}

/// Parses a TLS ClientHello (possibly spread over several records).
fn client_hello(buf: &[u8]) -> Verdict<ClientHello> {
    if buf.is_empty() {
        return Verdict::NeedMore;
    }
    if buf[0] != 0x16 {
        return Verdict::No;
    }
    if buf.len() >= 2 && buf[1] != 3 {
        return Verdict::No;
    }
    // Walk the records; one record holding the whole ClientHello is the common case
    // and is parsed in place, otherwise the fragments are joined.
    let mut records: Vec<&[u8]> = Vec::new();
    let mut pos = 0;
    let mut have = 0;
    let mut need = None;
    loop {
        if buf.len() < pos + 5 {
            return Verdict::NeedMore;
        }
        if buf[pos] != 0x16 {
            return Verdict::No;
        }
        let Some(len) = u16_at(buf, pos + 3) else {
            return Verdict::NeedMore;
        };
        if len == 0 || len > 16384 + 2048 || pos + 5 + len > MAX_CLIENT_HELLO {
            return Verdict::No;
        }
        if buf.len() < pos + 5 + len {
            return Verdict::NeedMore;
        }
        let payload = &buf[pos + 5..pos + 5 + len];
        pos += 5 + len;
        records.push(payload);
        have += len;
        if need.is_none() && have >= 4 {
            let joined: Vec<u8> = records
                .iter()
                .flat_map(|r| r.iter().copied())
                .take(4)
                .collect();
            if joined[0] != 1 {
                return Verdict::No;
            }
            let msg_len =
                usize::from(joined[1]) << 16 | usize::from(joined[2]) << 8 | usize::from(joined[3]);
            if msg_len > MAX_CLIENT_HELLO {
                return Verdict::No;
            }
            need = Some(4 + msg_len);
        }
        let Some(need) = need else { continue };
        if have < need {
            continue;
        }
        let parsed = if records.len() == 1 {
            parse_hello_body(&records[0][4..need])
        } else {
            let joined: Vec<u8> = records.iter().flat_map(|r| r.iter().copied()).collect();
            parse_hello_body(&joined[4..need])
        };
        return match parsed {
            Some(h) => Verdict::Yes(h),
            None => Verdict::No,
        };
    }
}

fn parse_hello_body(b: &[u8]) -> Option<ClientHello> {
    let mut i = 2 + 32; // client_version, random
    let sid = usize::from(*b.get(i)?);
    i += 1 + sid;
    let cs = u16_at(b, i)?;
    i += 2 + cs;
    let comp = usize::from(*b.get(i)?);
    i += 1 + comp;
    let mut hello = ClientHello::default();
    if i == b.len() {
        return Some(hello); // no extensions
    }
    let ext_total = u16_at(b, i)?;
    i += 2;
    let end = i + ext_total;
    if end > b.len() {
        return None;
    }
    while i + 4 <= end {
        let ty = u16_at(b, i)?;
        let len = u16_at(b, i + 2)?;
        i += 4;
        let data = b.get(i..i + len)?;
        i += len;
        match ty {
            0 => hello.server_name = server_name(data),
            16 => hello.alpn = alpn(data)?,
            _ => {}
        }
    }
    Some(hello)
}

fn server_name(d: &[u8]) -> Option<String> {
    let list = u16_at(d, 0)?;
    let mut i = 2;
    let end = (2 + list).min(d.len());
    while i + 3 <= end {
        let ty = d[i];
        let len = u16_at(d, i + 1)?;
        let name = d.get(i + 3..i + 3 + len)?;
        if ty == 0 {
            let s = std::str::from_utf8(name).ok()?;
            return Some(s.to_ascii_lowercase());
        }
        i += 3 + len;
    }
    None
}

fn alpn(d: &[u8]) -> Option<Vec<String>> {
    let list = u16_at(d, 0)?;
    let mut out = Vec::new();
    let mut i = 2;
    let end = (2 + list).min(d.len());
    while i < end {
        let len = usize::from(d[i]);
        let p = d.get(i + 1..i + 1 + len)?;
        out.push(String::from_utf8_lossy(p).into_owned());
        i += 1 + len;
    }
    Some(out)
}

/// The HTTP inspector: `h2c` for the HTTP/2 preface, `http/1.x` for a request line.
fn http_protocol(buf: &[u8]) -> Verdict<&'static str> {
    if buf.is_empty() {
        return Verdict::NeedMore;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Verdict::Yes("h2c")
        } else {
            Verdict::NeedMore
        };
    }
    // Method: a token of uppercase letters (and '-', '_'), then a space.
    let Some(sp) = buf.iter().position(|&c| c == b' ') else {
        return if buf
            .iter()
            .all(|c| c.is_ascii_uppercase() || *c == b'-' || *c == b'_')
            && buf.len() < 32
        {
            Verdict::NeedMore
        } else {
            Verdict::No
        };
    };
    if sp == 0
        || !buf[..sp]
            .iter()
            .all(|c| c.is_ascii_uppercase() || *c == b'-' || *c == b'_')
    {
        return Verdict::No;
    }
    let Some(eol) = buf.iter().position(|&c| c == b'\n') else {
        return if buf.len() >= MAX_HTTP_LINE {
            Verdict::No
        } else {
            Verdict::NeedMore
        };
    };
    let line = &buf[..eol];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.ends_with(b" HTTP/1.1") {
        Verdict::Yes("http/1.1")
    } else if line.ends_with(b" HTTP/1.0") {
        Verdict::Yes("http/1.0")
    } else {
        Verdict::No
    }
}

#[cfg(test)]
mod tests;
