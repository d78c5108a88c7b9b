//! Parses arbitrary header-value / access-log format strings and formats them against a
//! fixed request: parsing must reject or accept without panicking, and formatting
//! must never panic (truncation lands on char boundaries).
#![no_main]

use http::{HeaderMap, Method, Uri};
use libfuzzer_sys::fuzz_target;
use mesh_proxy::http::{
    format::{FormatCtx, Formatter},
    stream_info::StreamInfo,
};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let Ok(f) = Formatter::parse(s) else { return };
    let mut h = HeaderMap::new();
    h.insert("x-request-id", "ünïcödé-is-not-valid-but-bytes-are".parse().unwrap_or(http::HeaderValue::from_static("id")));
    h.insert("host", http::HeaderValue::from_static("svc:80"));
    let info = StreamInfo::new("10.250.0.7:4000".parse().unwrap(), "10.251.0.1:80".parse().unwrap());
    let uri: Uri = "/a/b?c=d".parse().unwrap();
    let ctx = FormatCtx { method: &Method::GET, uri: &uri, req_headers: &h, resp_headers: Some(&h), resp_trailers: None, info: &info };
    let mut out = String::new();
    f.format_header(&ctx, &mut out);
    out.clear();
    f.format_log(&ctx, &mut out);
});
