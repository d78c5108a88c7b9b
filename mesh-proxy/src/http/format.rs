//! Envoy's substitution format language (`%REQ(x-foo)%`, `%DOWNSTREAM_REMOTE_ADDRESS%`,
//! `%START_TIME(%s)%`, ...), used by header values and by the access log.
//!
//! A format string is parsed once, at config time, into a list of literal and command
//! parts; an unknown command is a config error naming the command (Envoy rejects it too).
//! Evaluation writes into a caller-supplied `String`, so formatting a header value costs
//! no allocation beyond the output.

use std::{fmt::Write as _, net::SocketAddr, sync::OnceLock};

use http::{HeaderMap, HeaderName, Method, Uri};

use super::stream_info::StreamInfo;

/// A format string that failed to parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("invalid format string {input:?}: couldn't find a valid command at position {pos}")]
    NoCommand { input: String, pos: usize },
    #[error("invalid format string {input:?}: unsupported command %{command}%")]
    Unsupported { input: String, command: String },
    #[error("invalid format string {input:?}: {what}")]
    Invalid { input: String, what: String },
}

/// A parsed format string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Formatter {
    parts: Box<[Part]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(Box<str>),
    Cmd {
        cmd: Command,
        max_len: Option<usize>,
    },
}

/// Where a `%REQ(..)%`-style command reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HeaderRef {
    Method,
    Path,
    Authority,
    Scheme,
    Named(HeaderName),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    Req(HeaderRef, Option<HeaderRef>),
    Resp(HeaderRef, Option<HeaderRef>),
    Trailer(HeaderRef, Option<HeaderRef>),
    StartTime(Option<Box<str>>),
    Hostname,
    Protocol,
    DownstreamRemoteAddress {
        port: bool,
    },
    DownstreamDirectRemoteAddress {
        port: bool,
    },
    DownstreamLocalAddress {
        port: bool,
    },
    DownstreamLocalPort,
    UpstreamRemoteAddress {
        port: bool,
    },
    UpstreamLocalAddress,
    UpstreamCluster,
    RouteName,
    RequestedServerName,
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    ConnectionTerminationDetails,
    UpstreamTransportFailureReason,
    BytesReceived,
    BytesSent,
    Duration,
    RequestDuration,
    ResponseDuration,
    UpstreamRequestAttemptCount,
    /// Resolved when the config is loaded, as Envoy does.
    Env(Box<str>),
    /// Commands that name data we do not track (TLS peer details before TLS exists,
    /// dynamic metadata, filter state): they format as missing.
    Missing,
}

/// What a formatter reads. `resp_headers` is `None` on the request path.
pub struct FormatCtx<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub req_headers: &'a HeaderMap,
    pub resp_headers: Option<&'a HeaderMap>,
    pub resp_trailers: Option<&'a HeaderMap>,
    pub info: &'a StreamInfo,
}

impl Formatter {
    /// Parses `input`. Literal `%` is written `%%`.
    pub fn parse(input: &str) -> Result<Formatter, FormatError> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let bytes = input.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let Some(off) = input[i..].find('%') else {
                lit.push_str(&input[i..]);
                break;
            };
            lit.push_str(&input[i..i + off]);
            i += off;
            if bytes.get(i + 1) == Some(&b'%') {
                lit.push('%');
                i += 2;
                continue;
            }
            let (cmd_text, arg, max_len, consumed) = scan_command(input, i)?;
            if !lit.is_empty() {
                parts.push(Part::Lit(std::mem::take(&mut lit).into_boxed_str()));
            }
            let cmd = parse_command(input, cmd_text, arg)?;
            parts.push(Part::Cmd { cmd, max_len });
            i += consumed;
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit.into_boxed_str()));
        }
        Ok(Formatter {
            parts: parts.into_boxed_slice(),
        })
    }

    /// True when the format has no commands (its output never changes).
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Lit(_)))
    }

    /// Formats for a header value: missing values become empty strings.
    pub fn format_header(&self, ctx: &FormatCtx<'_>, out: &mut String) {
        self.format(ctx, out, "");
    }

    /// Formats for an access log line: missing values become `-`.
    pub fn format_log(&self, ctx: &FormatCtx<'_>, out: &mut String) {
        self.format(ctx, out, "-");
    }

    fn format(&self, ctx: &FormatCtx<'_>, out: &mut String, missing: &str) {
        for part in self.parts.iter() {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Cmd { cmd, max_len } => {
                    let start = out.len();
                    if !cmd.write(ctx, out) {
                        out.truncate(start);
                        out.push_str(missing);
                    } else if let Some(max) = max_len {
                        truncate_at_char(out, start + max);
                    }
                }
            }
        }
    }
}

fn truncate_at_char(out: &mut String, mut at: usize) {
    if at >= out.len() {
        return;
    }
    while !out.is_char_boundary(at) {
        at -= 1;
    }
    out.truncate(at);
}

/// (command name, argument, max length, bytes consumed).
type Scanned<'a> = (&'a str, Option<&'a str>, Option<usize>, usize);

/// Finds the extent of the command starting at `input[start] == '%'`:
/// `%NAME%`, `%NAME(arg)%`, `%NAME(arg):N%`. Returns (name, arg, max_len, bytes consumed).
fn scan_command(input: &str, start: usize) -> Result<Scanned<'_>, FormatError> {
    let no_cmd = || FormatError::NoCommand {
        input: input.to_string(),
        pos: start,
    };
    let rest = &input[start + 1..];
    let name_len = rest
        .bytes()
        .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
        .count();
    if name_len == 0 {
        return Err(no_cmd());
    }
    let name = &rest[..name_len];
    let mut pos = name_len;
    let mut arg = None;
    if rest[pos..].starts_with('(') {
        let close = rest[pos..].find(')').ok_or_else(no_cmd)?;
        arg = Some(&rest[pos + 1..pos + close]);
        pos += close + 1;
    }
    let mut max_len = None;
    if rest[pos..].starts_with(':') {
        let digits = rest[pos + 1..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        if digits == 0 {
            return Err(no_cmd());
        }
        max_len = rest[pos + 1..pos + 1 + digits].parse().ok();
        pos += 1 + digits;
    }
    if !rest[pos..].starts_with('%') {
        return Err(no_cmd());
    }
    Ok((name, arg, max_len, 1 + pos + 1))
}

fn parse_command(input: &str, name: &str, arg: Option<&str>) -> Result<Command, FormatError> {
    let unsupported = || FormatError::Unsupported {
        input: input.to_string(),
        command: name.to_string(),
    };
    let need_arg = || match arg {
        Some(a) if !a.is_empty() => Ok(a),
        _ => Err(FormatError::Invalid {
            input: input.to_string(),
            what: format!("%{name}(..)% needs an argument"),
        }),
    };
    let headers = |a: &str| -> Result<(HeaderRef, Option<HeaderRef>), FormatError> {
        let (main, alt) = match a.split_once('?') {
            Some((m, alt)) => (m, Some(alt)),
            None => (a, None),
        };
        let h = |s: &str| {
            header_ref(s).map_err(|what| FormatError::Invalid {
                input: input.to_string(),
                what,
            })
        };
        Ok((h(main)?, alt.map(h).transpose()?))
    };
    Ok(match name {
        "REQ" => {
            let (a, b) = headers(need_arg()?)?;
            Command::Req(a, b)
        }
        "RESP" => {
            let (a, b) = headers(need_arg()?)?;
            Command::Resp(a, b)
        }
        "TRAILER" => {
            let (a, b) = headers(need_arg()?)?;
            Command::Trailer(a, b)
        }
        "START_TIME" => Command::StartTime(arg.filter(|a| !a.is_empty()).map(|a| {
            // Envoy's `%E3S` (seconds with 3 decimals) and `%f` (nanoseconds) in jiff terms.
            a.replace("%E3S", "%S.%3f")
                .replace("%E6S", "%S.%6f")
                .replace("%E9S", "%S.%9f")
                .into()
        })),
        "HOSTNAME" => Command::Hostname,
        "PROTOCOL" => Command::Protocol,
        "DOWNSTREAM_REMOTE_ADDRESS" => Command::DownstreamRemoteAddress { port: true },
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => {
            Command::DownstreamRemoteAddress { port: false }
        }
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => Command::DownstreamDirectRemoteAddress { port: true },
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
            Command::DownstreamDirectRemoteAddress { port: false }
        }
        "DOWNSTREAM_LOCAL_ADDRESS" => Command::DownstreamLocalAddress { port: true },
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Command::DownstreamLocalAddress { port: false },
        "DOWNSTREAM_LOCAL_PORT" => Command::DownstreamLocalPort,
        "UPSTREAM_REMOTE_ADDRESS" | "UPSTREAM_HOST" => {
            Command::UpstreamRemoteAddress { port: true }
        }
        "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Command::UpstreamRemoteAddress { port: false },
        "UPSTREAM_LOCAL_ADDRESS" => Command::UpstreamLocalAddress,
        // Envoy's RAW form skips the cluster's alt_stat_name; we have no alt stat names, so
        // both are the cluster's name (Istio's default text format uses the RAW form).
        "UPSTREAM_CLUSTER" | "UPSTREAM_CLUSTER_RAW" => Command::UpstreamCluster,
        "ROUTE_NAME" => Command::RouteName,
        "REQUESTED_SERVER_NAME" => Command::RequestedServerName,
        "RESPONSE_CODE" => Command::ResponseCode,
        "RESPONSE_FLAGS" => Command::ResponseFlags,
        "RESPONSE_CODE_DETAILS" => Command::ResponseCodeDetails,
        "CONNECTION_TERMINATION_DETAILS" => Command::ConnectionTerminationDetails,
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => Command::UpstreamTransportFailureReason,
        "BYTES_RECEIVED" => Command::BytesReceived,
        "BYTES_SENT" => Command::BytesSent,
        "DURATION" => Command::Duration,
        "REQUEST_DURATION" => Command::RequestDuration,
        "RESPONSE_DURATION" => Command::ResponseDuration,
        "UPSTREAM_REQUEST_ATTEMPT_COUNT" => Command::UpstreamRequestAttemptCount,
        "ENVIRONMENT" => {
            let a = need_arg()?;
            Command::Env(std::env::var(a).unwrap_or_default().into())
        }
        // Identity and metadata commands Istio's formats use: accepted, formatted as
        // missing until the data exists (TLS identity arrives with mTLS).
        "DOWNSTREAM_PEER_URI_SAN"
        | "DOWNSTREAM_LOCAL_URI_SAN"
        | "DOWNSTREAM_PEER_SUBJECT"
        | "DOWNSTREAM_TLS_VERSION"
        | "UPSTREAM_PEER_URI_SAN"
        | "DYNAMIC_METADATA"
        | "CLUSTER_METADATA"
        | "UPSTREAM_METADATA"
        | "FILTER_STATE"
        | "CEL"
        | "UPSTREAM_FILTER_STATE" => Command::Missing,
        _ => return Err(unsupported()),
    })
}

fn header_ref(name: &str) -> Result<HeaderRef, String> {
    Ok(match name.to_ascii_lowercase().as_str() {
        ":method" => HeaderRef::Method,
        ":path" => HeaderRef::Path,
        ":authority" | "host" => HeaderRef::Authority,
        ":scheme" => HeaderRef::Scheme,
        other => HeaderRef::Named(
            HeaderName::from_bytes(other.as_bytes())
                .map_err(|_| format!("invalid header name {name:?}"))?,
        ),
    })
}

fn hostname() -> &'static str {
    static HOSTNAME: OnceLock<String> = OnceLock::new();
    HOSTNAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "-".to_string())
    })
}

fn write_addr(out: &mut String, addr: SocketAddr, port: bool) {
    // Writing to a String never fails.
    let _ = if port {
        write!(out, "{addr}")
    } else {
        write!(out, "{}", addr.ip())
    };
}

fn write_header(headers: &HeaderMap, h: &HeaderRef, ctx: &FormatCtx<'_>, out: &mut String) -> bool {
    match h {
        HeaderRef::Method => out.push_str(ctx.method.as_str()),
        HeaderRef::Path => match ctx.uri.path_and_query() {
            Some(pq) => out.push_str(pq.as_str()),
            None => return false,
        },
        HeaderRef::Authority => match authority(ctx.uri, ctx.req_headers) {
            Some(a) => out.push_str(a),
            None => return false,
        },
        HeaderRef::Scheme => match ctx.uri.scheme_str() {
            Some(s) => out.push_str(s),
            None => out.push_str("http"),
        },
        HeaderRef::Named(name) => {
            let mut values = headers.get_all(name).iter();
            let Some(first) = values.next() else {
                return false;
            };
            out.push_str(&String::from_utf8_lossy(first.as_bytes()));
            // Envoy joins repeated headers with ',' when formatting.
            for v in values {
                out.push(',');
                out.push_str(&String::from_utf8_lossy(v.as_bytes()));
            }
        }
    }
    true
}

/// The request authority: the URI's (HTTP/2, absolute-form) or the Host header.
pub fn authority<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    uri.authority().map(|a| a.as_str()).or_else(|| {
        headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

fn write_pair(
    headers: Option<&HeaderMap>,
    a: &HeaderRef,
    b: &Option<HeaderRef>,
    ctx: &FormatCtx<'_>,
    out: &mut String,
) -> bool {
    let Some(headers) = headers else { return false };
    write_header(headers, a, ctx, out)
        || b.as_ref()
            .is_some_and(|b| write_header(headers, b, ctx, out))
}

impl Command {
    /// Appends this command's value; false when the value is missing.
    fn write(&self, ctx: &FormatCtx<'_>, out: &mut String) -> bool {
        let info = ctx.info;
        match self {
            Command::Req(a, b) => write_pair(Some(ctx.req_headers), a, b, ctx, out),
            Command::Resp(a, b) => write_pair(ctx.resp_headers, a, b, ctx, out),
            Command::Trailer(a, b) => write_pair(ctx.resp_trailers, a, b, ctx, out),
            Command::StartTime(fmt) => {
                let Ok(ts) = jiff::Timestamp::try_from(info.start_time) else {
                    return false;
                };
                match fmt {
                    None => {
                        let _ = write!(out, "{}", ts.strftime("%Y-%m-%dT%H:%M:%S.%3fZ"));
                    }
                    Some(f) => {
                        let dt = ts.to_zoned(jiff::tz::TimeZone::UTC);
                        let tm = jiff::fmt::strtime::BrokenDownTime::from(&dt);
                        if tm.format(f.as_bytes(), &mut *out).is_err() {
                            return false;
                        }
                    }
                }
                true
            }
            Command::Hostname => {
                out.push_str(hostname());
                true
            }
            Command::Protocol => match info.protocol {
                Some(v) => {
                    out.push_str(protocol_name(v));
                    true
                }
                None => false,
            },
            Command::DownstreamRemoteAddress { port } => {
                write_addr(out, info.downstream_remote, *port);
                true
            }
            Command::DownstreamDirectRemoteAddress { port } => {
                write_addr(out, info.downstream_direct_remote, *port);
                true
            }
            Command::DownstreamLocalAddress { port } => {
                write_addr(out, info.downstream_local, *port);
                true
            }
            Command::DownstreamLocalPort => {
                let _ = write!(out, "{}", info.downstream_local.port());
                true
            }
            Command::UpstreamRemoteAddress { port } => match info.upstream_host {
                Some(a) => {
                    write_addr(out, a, *port);
                    true
                }
                None => false,
            },
            Command::UpstreamLocalAddress => match info.upstream_local {
                Some(a) => {
                    write_addr(out, a, true);
                    true
                }
                None => false,
            },
            Command::UpstreamCluster => opt_str(out, info.upstream_cluster.as_deref()),
            Command::RouteName => opt_str(out, info.route_name.as_deref()),
            Command::RequestedServerName => opt_str(out, info.requested_server_name.as_deref()),
            Command::ResponseCode => {
                // Envoy prints 0 when no response was sent.
                let _ = write!(out, "{}", info.response_code.unwrap_or(0));
                true
            }
            Command::ResponseFlags => {
                info.response_flags.write_to(out);
                true
            }
            Command::ResponseCodeDetails => opt_str(
                out,
                Some(info.response_code_details).filter(|d| !d.is_empty()),
            ),
            Command::ConnectionTerminationDetails => false,
            Command::UpstreamTransportFailureReason => {
                opt_str(out, info.upstream_transport_failure_reason.as_deref())
            }
            Command::BytesReceived => {
                let _ = write!(out, "{}", info.bytes_received);
                true
            }
            Command::BytesSent => {
                let _ = write!(out, "{}", info.bytes_sent);
                true
            }
            Command::Duration | Command::RequestDuration | Command::ResponseDuration => {
                let d = info.duration.unwrap_or_else(|| info.start.elapsed());
                let _ = write!(out, "{}", d.as_millis());
                true
            }
            Command::UpstreamRequestAttemptCount => {
                let _ = write!(out, "{}", info.attempt_count);
                true
            }
            Command::Env(v) => opt_str(out, Some(v).filter(|v| !v.is_empty()).map(|v| &**v)),
            Command::Missing => false,
        }
    }
}

fn opt_str(out: &mut String, s: Option<&str>) -> bool {
    match s {
        Some(s) => {
            out.push_str(s);
            true
        }
        None => false,
    }
}

/// Envoy's protocol names.
pub fn protocol_name(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "-",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::stream_info::{ResponseFlags, StreamInfo};

    fn ctx_parts() -> (Method, Uri, HeaderMap, StreamInfo) {
        let mut h = HeaderMap::new();
        h.insert("x-foo", "bar".parse().expect("value"));
        h.append("x-multi", "a".parse().expect("value"));
        h.append("x-multi", "b".parse().expect("value"));
        h.insert(http::header::HOST, "example.com".parse().expect("value"));
        let mut info = StreamInfo::new(
            "10.250.0.7:4567".parse().expect("addr"),
            "127.0.0.1:15001".parse().expect("addr"),
        );
        info.protocol = Some(http::Version::HTTP_11);
        info.start_time =
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        (Method::GET, "/a/b?c=d".parse().expect("uri"), h, info)
    }

    fn run(f: &str, log: bool) -> String {
        let (m, u, h, info) = ctx_parts();
        let ctx = FormatCtx {
            method: &m,
            uri: &u,
            req_headers: &h,
            resp_headers: None,
            resp_trailers: None,
            info: &info,
        };
        let mut out = String::new();
        let f = Formatter::parse(f).expect("parses");
        if log {
            f.format_log(&ctx, &mut out)
        } else {
            f.format_header(&ctx, &mut out)
        }
        out
    }

    #[test]
    fn commands() {
        assert_eq!(run("%REQ(X-FOO)%", false), "bar");
        assert_eq!(run("%REQ(x-multi)%", false), "a,b");
        assert_eq!(run("%REQ(x-none?x-foo)%", false), "bar");
        assert_eq!(
            run("%REQ(:PATH)% %REQ(:method)% %REQ(:authority)%", false),
            "/a/b?c=d GET example.com"
        );
        assert_eq!(run("%REQ(x-foo):2%", false), "ba");
        assert_eq!(run("%DOWNSTREAM_REMOTE_ADDRESS%", false), "10.250.0.7:4567");
        assert_eq!(
            run("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", false),
            "10.250.0.7"
        );
        assert_eq!(run("%PROTOCOL%", false), "HTTP/1.1");
        assert_eq!(run("%START_TIME%", false), "2023-11-14T22:13:20.123Z");
        assert_eq!(run("%START_TIME(%s)%", false), "1700000000");
        assert_eq!(run("100%% %UPSTREAM_HOST%", false), "100% ");
        assert_eq!(run("%UPSTREAM_HOST% %RESPONSE_FLAGS%", true), "- -");
        assert!(!run("%HOSTNAME%", false).is_empty());
    }

    #[test]
    fn istios_default_text_format_parses() {
        // Istio's default `accessLogFormat` (pilot/pkg/model/telemetry_logging.go).
        let istio = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";
        let line = run(istio, true);
        assert!(
            line.starts_with("[2023-11-14T22:13:20.123Z] \"GET /a/b?c=d HTTP/1.1\""),
            "{line}"
        );
        assert!(line.contains(" 127.0.0.1:15001 10.250.0.7:4567 "), "{line}");
    }

    #[test]
    fn errors_name_the_command() {
        let e = Formatter::parse("%NOT_A_THING%").expect_err("rejects");
        assert!(e.to_string().contains("%NOT_A_THING%"), "{e}");
        assert!(matches!(
            Formatter::parse("50% off"),
            Err(FormatError::NoCommand { pos: 2, .. })
        ));
        assert!(Formatter::parse("%REQ()%").is_err());
        assert!(Formatter::parse("%REQ(x-a").is_err());
    }

    #[test]
    fn literal_detection() {
        assert!(Formatter::parse("plain").expect("parses").is_literal());
        assert!(
            !Formatter::parse("a%PROTOCOL%")
                .expect("parses")
                .is_literal()
        );
        let _ = ResponseFlags::NONE;
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            if let Ok(f) = Formatter::parse(&s) {
                let (m, u, h, info) = ctx_parts();
                let ctx = FormatCtx { method: &m, uri: &u, req_headers: &h, resp_headers: None, resp_trailers: None, info: &info };
                let mut out = String::new();
                f.format_log(&ctx, &mut out);
            }
        }

        #[test]
        fn literals_round_trip(s in "[a-zA-Z0-9 ./:-]{0,40}") {
            let f = Formatter::parse(&s).expect("plain text parses");
            proptest::prop_assert!(f.is_literal());
            let (m, u, h, info) = ctx_parts();
            let ctx = FormatCtx { method: &m, uri: &u, req_headers: &h, resp_headers: None, resp_trailers: None, info: &info };
            let mut out = String::new();
            f.format_header(&ctx, &mut out);
            proptest::prop_assert_eq!(out, s);
        }
    }
}
