//! Access logs: one line per request (or TCP connection) in Envoy's default format or a
//! configured text/JSON format, to stdout, stderr or a file.
//!
//! Lines are formatted on the request's task and handed to a writer thread per sink
//! through a bounded channel, so a slow disk never blocks the data path; when the
//! channel is full the line is dropped and counted (Envoy also buffers and may drop).

// Envoy still honours the deprecated `format` fields; so do we.
#![allow(deprecated)]

use std::{
    collections::HashMap,
    io::Write,
    path::PathBuf,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
        mpsc::{SyncSender, TrySendError, sync_channel},
    },
};

use envoy_types::pb::envoy::{
    config::{
        accesslog::v3::{AccessLog, access_log::ConfigType},
        core::v3::{SubstitutionFormatString, data_source, substitution_format_string::Format},
    },
    extensions::access_loggers::{
        file::v3::{FileAccessLog, file_access_log},
        stream::v3::{StderrAccessLog, StdoutAccessLog, stderr_access_log, stdout_access_log},
    },
};
use parking_lot::Mutex;

use crate::{
    config::ConfigError,
    http::format::{FormatCtx, Formatter},
};

/// Envoy's default access log format.
pub const DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" \
%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \
\"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

const FILE_TYPE: &str = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";
const STDOUT_TYPE: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
const STDERR_TYPE: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SinkKind {
    Stdout,
    Stderr,
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub enum LogFormat {
    Text(Formatter),
    /// Key order is the config's; values are formatted and written as JSON strings.
    Json(Vec<(String, Formatter)>),
}

#[derive(Debug)]
pub struct AccessLogConfig {
    pub sink: SinkKind,
    pub format: LogFormat,
    writer: OnceLock<Arc<Sink>>,
}

impl AccessLogConfig {
    pub fn new(sink: SinkKind, format: LogFormat) -> Self {
        AccessLogConfig {
            sink,
            format,
            writer: OnceLock::new(),
        }
    }

    /// The default access log (stdout, Envoy's default format).
    pub fn default_stdout() -> Self {
        let f = Formatter::parse(DEFAULT_FORMAT).expect("the default access log format parses");
        AccessLogConfig::new(SinkKind::Stdout, LogFormat::Text(f))
    }

    pub fn try_from_proto(a: &AccessLog) -> Result<Self, ConfigError> {
        if a.filter.is_some() {
            return Err(ConfigError::field(
                "filter",
                "access log filters are not supported",
            ));
        }
        let any = match &a.config_type {
            Some(ConfigType::TypedConfig(any)) => any,
            None => return Err(ConfigError::field("typed_config", "is required")),
        };
        let decode_err = |e: prost::DecodeError| {
            ConfigError::field(
                "typed_config",
                format!("cannot decode {}: {e}", any.type_url),
            )
        };
        let (sink, fmt) = match any.type_url.as_str() {
            FILE_TYPE => {
                let f: FileAccessLog =
                    prost::Message::decode(any.value.as_slice()).map_err(decode_err)?;
                if f.path.is_empty() {
                    return Err(ConfigError::field("typed_config.path", "must not be empty"));
                }
                let fmt = match f.access_log_format {
                    None => None,
                    Some(file_access_log::AccessLogFormat::Format(s)) => {
                        Some(LogFormat::Text(text(&s, "typed_config.format")?))
                    }
                    Some(file_access_log::AccessLogFormat::LogFormat(l)) => {
                        Some(substitution(&l, "typed_config.log_format")?)
                    }
                    Some(file_access_log::AccessLogFormat::JsonFormat(_))
                    | Some(file_access_log::AccessLogFormat::TypedJsonFormat(_)) => {
                        return Err(ConfigError::field(
                            "typed_config.json_format",
                            "use log_format.json_format",
                        ));
                    }
                };
                let sink = match f.path.as_str() {
                    "/dev/stdout" => SinkKind::Stdout,
                    "/dev/stderr" => SinkKind::Stderr,
                    p => SinkKind::File(PathBuf::from(p)),
                };
                (sink, fmt)
            }
            STDOUT_TYPE => {
                let s: StdoutAccessLog =
                    prost::Message::decode(any.value.as_slice()).map_err(decode_err)?;
                let fmt = match s.access_log_format {
                    Some(stdout_access_log::AccessLogFormat::LogFormat(l)) => {
                        Some(substitution(&l, "typed_config.log_format")?)
                    }
                    None => None,
                };
                (SinkKind::Stdout, fmt)
            }
            STDERR_TYPE => {
                let s: StderrAccessLog =
                    prost::Message::decode(any.value.as_slice()).map_err(decode_err)?;
                let fmt = match s.access_log_format {
                    Some(stderr_access_log::AccessLogFormat::LogFormat(l)) => {
                        Some(substitution(&l, "typed_config.log_format")?)
                    }
                    None => None,
                };
                (SinkKind::Stderr, fmt)
            }
            other => {
                return Err(ConfigError::field(
                    "typed_config",
                    format!("access logger {:?} ({other}) is not supported", a.name),
                ));
            }
        };
        let fmt = match fmt {
            Some(f) => f,
            None => LogFormat::Text(text(DEFAULT_FORMAT, "typed_config")?),
        };
        Ok(AccessLogConfig::new(sink, fmt))
    }

    /// Formats and queues one line.
    pub fn log(&self, ctx: &FormatCtx<'_>) {
        let mut line = String::with_capacity(256);
        match &self.format {
            LogFormat::Text(f) => f.format_log(ctx, &mut line),
            LogFormat::Json(fields) => {
                let mut map = serde_json::Map::new();
                let mut buf = String::new();
                for (k, f) in fields {
                    buf.clear();
                    f.format_log(ctx, &mut buf);
                    map.insert(k.clone(), serde_json::Value::String(buf.clone()));
                }
                line = serde_json::Value::Object(map).to_string();
                line.push('\n');
            }
        }
        self.writer.get_or_init(|| sink_for(&self.sink)).write(line);
    }
}

fn text(s: &str, field: &str) -> Result<Formatter, ConfigError> {
    Formatter::parse(s).map_err(|e| ConfigError::field(field, e.to_string()))
}

fn substitution(l: &SubstitutionFormatString, field: &str) -> Result<LogFormat, ConfigError> {
    if !l.formatters.is_empty() {
        return Err(ConfigError::field(
            format!("{field}.formatters"),
            "formatter extensions are not supported",
        ));
    }
    match &l.format {
        Some(Format::TextFormat(s)) => {
            Ok(LogFormat::Text(text(s, &format!("{field}.text_format"))?))
        }
        Some(Format::TextFormatSource(ds)) => match &ds.specifier {
            Some(data_source::Specifier::InlineString(s)) => Ok(LogFormat::Text(text(
                s,
                &format!("{field}.text_format_source"),
            )?)),
            _ => Err(ConfigError::field(
                format!("{field}.text_format_source"),
                "only inline_string is supported",
            )),
        },
        Some(Format::JsonFormat(st)) => {
            let mut fields = Vec::new();
            let mut keys: Vec<_> = st.fields.keys().collect();
            keys.sort();
            for k in keys {
                use envoy_types::pb::google::protobuf::value::Kind;
                let v = &st.fields[k];
                match &v.kind {
                    Some(Kind::StringValue(s)) => {
                        fields.push((k.clone(), text(s, &format!("{field}.json_format.{k}"))?))
                    }
                    _ => {
                        return Err(ConfigError::field(
                            format!("{field}.json_format.{k}"),
                            "only string values are supported",
                        ));
                    }
                }
            }
            Ok(LogFormat::Json(fields))
        }
        None => Ok(LogFormat::Text(text(DEFAULT_FORMAT, field)?)),
    }
}

/// A writer thread fed through a bounded channel.
#[derive(Debug)]
pub struct Sink {
    tx: SyncSender<String>,
    dropped: AtomicU64,
}

impl Sink {
    fn write(&self, line: String) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// One writer per destination for the whole process: listeners that log to the same
/// file share it (and config updates keep it open).
fn sink_for(kind: &SinkKind) -> Arc<Sink> {
    static SINKS: OnceLock<Mutex<HashMap<SinkKind, Arc<Sink>>>> = OnceLock::new();
    let mut sinks = SINKS.get_or_init(Default::default).lock();
    sinks
        .entry(kind.clone())
        .or_insert_with(|| spawn_sink(kind.clone()))
        .clone()
}

fn spawn_sink(kind: SinkKind) -> Arc<Sink> {
    let (tx, rx) = sync_channel::<String>(16 * 1024);
    let name = format!(
        "accesslog-{}",
        match &kind {
            SinkKind::Stdout => "stdout".to_string(),
            SinkKind::Stderr => "stderr".to_string(),
            SinkKind::File(p) => p.display().to_string(),
        }
    );
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let mut out: Box<dyn Write + Send> = match &kind {
            SinkKind::Stdout => Box::new(std::io::stdout()),
            SinkKind::Stderr => Box::new(std::io::stderr()),
            SinkKind::File(p) => match std::fs::OpenOptions::new().create(true).append(true).open(p) {
                Ok(f) => Box::new(f),
                Err(e) => {
                    tracing::error!(path = %p.display(), error = %e, "cannot open access log file; lines are dropped");
                    return;
                }
            },
        };
        let mut buf = std::io::BufWriter::with_capacity(64 * 1024, &mut out);
        while let Ok(line) = rx.recv() {
            let _ = buf.write_all(line.as_bytes());
            // Drain what is queued, then flush once: batching without delaying lines.
            while let Ok(more) = rx.try_recv() {
                let _ = buf.write_all(more.as_bytes());
            }
            let _ = buf.flush();
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start access log writer");
    }
    Arc::new(Sink {
        tx,
        dropped: AtomicU64::new(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::stream_info::{ResponseFlags, StreamInfo};
    use http::{HeaderMap, Method, Uri};

    #[test]
    fn default_format_line() {
        let f = Formatter::parse(DEFAULT_FORMAT).expect("default parses");
        let mut h = HeaderMap::new();
        h.insert("x-request-id", "abc".parse().expect("v"));
        h.insert("user-agent", "curl/8".parse().expect("v"));
        h.insert("host", "svc:80".parse().expect("v"));
        let mut info = StreamInfo::new(
            "127.0.0.1:5000".parse().expect("a"),
            "127.0.0.1:15001".parse().expect("a"),
        );
        info.start_time = std::time::UNIX_EPOCH;
        info.protocol = Some(http::Version::HTTP_11);
        info.response_code = Some(404);
        info.response_flags.insert(ResponseFlags::NO_ROUTE_FOUND);
        info.duration = Some(std::time::Duration::from_millis(3));
        let (m, u): (Method, Uri) = (Method::GET, "/x".parse().expect("uri"));
        let ctx = FormatCtx {
            method: &m,
            uri: &u,
            req_headers: &h,
            resp_headers: Some(&HeaderMap::new()),
            resp_trailers: None,
            info: &info,
        };
        let mut line = String::new();
        f.format_log(&ctx, &mut line);
        assert_eq!(
            line,
            "[1970-01-01T00:00:00.000Z] \"GET /x HTTP/1.1\" 404 NR 0 0 3 - \"-\" \"curl/8\" \"abc\" \"svc:80\" \"-\"\n"
        );
    }

    #[test]
    fn file_sink_writes_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.log");
        let cfg = AccessLogConfig::new(
            SinkKind::File(path.clone()),
            LogFormat::Text(Formatter::parse("%RESPONSE_CODE%\n").expect("f")),
        );
        let h = HeaderMap::new();
        let mut info = StreamInfo::new(
            "127.0.0.1:5000".parse().expect("a"),
            "127.0.0.1:1".parse().expect("a"),
        );
        info.response_code = Some(200);
        let (m, u): (Method, Uri) = (Method::GET, "/".parse().expect("uri"));
        let ctx = FormatCtx {
            method: &m,
            uri: &u,
            req_headers: &h,
            resp_headers: None,
            resp_trailers: None,
            info: &info,
        };
        cfg.log(&ctx);
        cfg.log(&ctx);
        for _ in 0..100 {
            if std::fs::read_to_string(&path).is_ok_and(|s| s == "200\n200\n") {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!(
            "access log file not written: {:?}",
            std::fs::read_to_string(&path)
        );
    }
}
