//! gRPC: the `testapp.Echo/Call` unary method, served with tonic's codec on the same
//! port as HTTP. Controls come in the `x-testapp-query` metadata (same syntax as the HTTP
//! query string), so any gRPC client (grpcurl -H) can drive them; the answer carries the
//! same JSON line an HTTP request gets.
//!
//! ```proto
//! package testapp;
//! service Echo { rpc Call(EchoRequest) returns (EchoResponse); }
//! message EchoRequest { string message = 1; }
//! message EchoResponse { string json = 1; string message = 2; }
//! ```

use std::future::Future;
use std::pin::Pin;

use tonic::{Code, Status};

pub const PATH: &str = "/testapp.Echo/Call";
/// Metadata key carrying the controls.
pub const CONTROLS_HEADER: &str = "x-testapp-query";

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoResponse {
    #[prost(string, tag = "1")]
    pub json: String,
    #[prost(string, tag = "2")]
    pub message: String,
}

pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The gRPC status a `status=` control maps to (as Envoy maps HTTP to gRPC codes).
pub fn status_for_http(code: u16, message: String) -> Status {
    let code = match code {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502..=504 => Code::Unavailable,
        200..=299 => Code::Ok,
        _ => Code::Unknown,
    };
    Status::new(code, message)
}

/// Answers every call with a prepared JSON line.
#[derive(Clone)]
pub struct Answer(pub String);

impl tonic::server::UnaryService<EchoRequest> for Answer {
    type Response = EchoResponse;
    type Future =
        Pin<Box<dyn Future<Output = Result<tonic::Response<EchoResponse>, Status>> + Send>>;

    fn call(&mut self, request: tonic::Request<EchoRequest>) -> Self::Future {
        let json = self.0.clone();
        Box::pin(async move {
            Ok(tonic::Response::new(EchoResponse {
                json,
                message: request.into_inner().message,
            }))
        })
    }
}

/// One unary call over an established channel.
pub async fn call(
    channel: tonic::transport::Channel,
    controls: Option<&str>,
    message: String,
) -> Result<EchoResponse, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
    let mut req = tonic::Request::new(EchoRequest { message });
    if let Some(q) = controls {
        let v = q
            .parse()
            .map_err(|_| Status::invalid_argument("controls are not valid metadata"))?;
        req.metadata_mut().insert(CONTROLS_HEADER, v);
    }
    let path = http::uri::PathAndQuery::from_static(PATH);
    grpc.unary(req, path, tonic_prost::ProstCodec::default())
        .await
        .map(tonic::Response::into_inner)
}
