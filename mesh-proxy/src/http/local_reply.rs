//! Responses the proxy generates itself (no route, no healthy upstream, overflow,
//! timeouts, direct responses, redirects), with Envoy's bodies and, for gRPC requests,
//! Envoy's conversion to a trailers-only gRPC response.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::body::ResponseBody;

/// Envoy's `Grpc::Utility::httpToGrpcStatus`.
pub fn http_to_grpc_status(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// Builds a local reply. For gRPC requests the reply is HTTP 200 with `grpc-status` and
/// `grpc-message` in a trailers-only response, as Envoy sends.
pub fn build(status: StatusCode, body: Bytes, grpc: bool) -> Response<ResponseBody> {
    build_with(status, body, grpc, None)
}

/// [`build`] with an explicit gRPC status for gRPC requests (Envoy's `sendLocalReply`
/// `grpc_status` argument); other requests get the HTTP status and body.
pub fn build_with(
    status: StatusCode,
    body: Bytes,
    grpc: bool,
    grpc_status: Option<u32>,
) -> Response<ResponseBody> {
    if grpc {
        let mut resp = Response::new(ResponseBody::empty());
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(
            "grpc-status",
            HeaderValue::from(grpc_status.unwrap_or_else(|| http_to_grpc_status(status))),
        );
        if !body.is_empty()
            && let Ok(v) = HeaderValue::from_bytes(&percent_encode_grpc(&body))
        {
            h.insert("grpc-message", v);
        }
        return resp;
    }
    let mut resp = Response::new(ResponseBody::full(body.clone()));
    *resp.status_mut() = status;
    if !body.is_empty() {
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    resp
}

/// gRPC's percent-encoding of `grpc-message` (printable ASCII except `%` passes).
fn percent_encode_grpc(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    for &c in b {
        if (0x20..0x7f).contains(&c) && c != b'%' {
            out.push(c);
        } else {
            out.extend_from_slice(format!("%{c:02X}").as_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_replies_are_trailers_only() {
        let r = build(
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::from_static(b"no healthy upstream"),
            true,
        );
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()["grpc-message"], "no healthy upstream");
        let r = build(StatusCode::NOT_FOUND, Bytes::new(), false);
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "0");
    }
}
