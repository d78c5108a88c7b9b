//! What goes over the wire in every workload: 1 KiB answers. HTTP answers carry a 1,024-byte
//! body, the gRPC method `bench.Bench/Call` answers a message whose payload is 1,024 bytes,
//! and the TCP workload sends 1,024-byte messages that the upstream echoes.
//!
//! ```proto
//! package bench;
//! service Bench { rpc Call(Payload) returns (Payload); }
//! message Payload { bytes data = 1; }
//! ```

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

/// Size of every answer (HTTP body, gRPC payload, TCP echo).
pub const ANSWER_BYTES: usize = 1024;
pub const GRPC_PATH: &str = "/bench.Bench/Call";

static ANSWER: [u8; ANSWER_BYTES] = [b'x'; ANSWER_BYTES];

pub fn answer() -> Bytes {
    Bytes::from_static(&ANSWER)
}

/// A TCP message: 1,023 bytes and a newline (line-framed, so any echo server works).
pub fn tcp_message() -> Vec<u8> {
    let mut m = vec![b'm'; ANSWER_BYTES];
    m[ANSWER_BYTES - 1] = b'\n';
    m
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    #[prost(bytes = "bytes", tag = "1")]
    pub data: Bytes,
}

/// The server side of `bench.Bench/Call`: the 1 KiB payload, whatever was asked.
#[derive(Clone, Copy)]
pub struct Answer;

impl tonic::server::UnaryService<Payload> for Answer {
    type Response = Payload;
    type Future =
        Pin<Box<dyn Future<Output = Result<tonic::Response<Payload>, tonic::Status>> + Send>>;

    fn call(&mut self, _request: tonic::Request<Payload>) -> Self::Future {
        Box::pin(async { Ok(tonic::Response::new(Payload { data: answer() })) })
    }
}
