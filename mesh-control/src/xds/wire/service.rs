//! The ADS gRPC service: requests decoded by tonic, responses framed here.
//!
//! tonic's response encoder writes every message into one buffer per stream and keeps
//! that buffer for the stream's life, at the size of the largest message it encoded. A
//! sidecar that sees a whole mesh gets a few megabytes in its first CDS response, so
//! 1,000 such streams held gigabytes of idle buffers. Here each response is one exactly
//! sized allocation, freed once HTTP/2 has written it.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryResponse,
};
use http_body::Frame;
use prost::Message;
use prost::bytes::{BufMut, Bytes, BytesMut};
use tokio_stream::Stream;
use tonic::codec::Codec;
use tonic::codegen::{BoxFuture, Service, StdError, http};
use tonic::metadata::{GRPC_CONTENT_TYPE, MetadataMap};
use tonic::{Status, Streaming};

use super::{Head, Outgoing, SotwRequest};

/// The two ADS methods, as the server implements them.
#[tonic::async_trait]
pub trait Ads: Send + Sync + 'static {
    type SotwStream: tokio_stream::Stream<Item = Result<Outgoing<DiscoveryResponse>, Status>>
        + Send
        + 'static;
    type DeltaStream: tokio_stream::Stream<Item = Result<Outgoing<DeltaDiscoveryResponse>, Status>>
        + Send
        + 'static;
    async fn sotw(
        &self,
        request: tonic::Request<Streaming<SotwRequest>>,
    ) -> Result<tonic::Response<Self::SotwStream>, Status>;
    async fn delta(
        &self,
        request: tonic::Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaStream>, Status>;
}

/// Envoy's `AggregatedDiscoveryService` over an [`Ads`] implementation.
pub struct AdsServer<T> {
    inner: Arc<T>,
    max_decoding_message_size: usize,
}

impl<T> AdsServer<T> {
    pub fn new(inner: T, max_decoding_message_size: usize) -> Self {
        AdsServer {
            inner: Arc::new(inner),
            max_decoding_message_size,
        }
    }
}

impl<T> Clone for AdsServer<T> {
    fn clone(&self) -> Self {
        AdsServer {
            inner: self.inner.clone(),
            max_decoding_message_size: self.max_decoding_message_size,
        }
    }
}

impl<T> tonic::server::NamedService for AdsServer<T> {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

impl<T, B> Service<http::Request<B>> for AdsServer<T>
where
    T: Ads,
    B: http_body::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        let max = self.max_decoding_message_size;
        match req.uri().path() {
            SOTW_PATH => Box::pin(async move {
                let request = decode_request::<SotwRequest, B>(req, max);
                Ok(respond(inner.sotw(request).await))
            }),
            DELTA_PATH => Box::pin(async move {
                let request = decode_request::<DeltaDiscoveryRequest, B>(req, max);
                Ok(respond(inner.delta(request).await))
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("").into_http()) }),
        }
    }
}

/// The request stream, decoded by tonic's prost decoder, with the connection's extensions
/// (the peer address) kept.
fn decode_request<M, B>(req: http::Request<B>, max: usize) -> tonic::Request<Streaming<M>>
where
    M: Message + Default + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    let (parts, body) = req.into_parts();
    let mut codec = tonic_prost::ProstCodec::<(), M>::default();
    let stream = Streaming::new_request(codec.decoder(), body, None, Some(max));
    tonic::Request::from_parts(
        MetadataMap::from_headers(parts.headers),
        parts.extensions,
        stream,
    )
}

fn respond<M, S>(result: Result<tonic::Response<S>, Status>) -> http::Response<tonic::body::Body>
where
    M: Head,
    S: Stream<Item = Result<Outgoing<M>, Status>> + Send + 'static,
{
    match result {
        Ok(response) => {
            let (_, stream, _) = response.into_parts();
            let mut http = http::Response::new(tonic::body::Body::new(Frames {
                stream: Box::pin(stream),
                done: false,
            }));
            http.headers_mut()
                .insert(http::header::CONTENT_TYPE, GRPC_CONTENT_TYPE);
            http
        }
        Err(status) => status.into_http(),
    }
}

/// gRPC length-prefixed messages, then the status trailers.
struct Frames<M> {
    stream: Pin<Box<dyn Stream<Item = Result<Outgoing<M>, Status>> + Send>>,
    done: bool,
}

/// A message of `len` bytes as one gRPC frame: uncompressed flag, length, message.
fn frame<M: Head>(message: &Outgoing<M>, len: usize) -> Bytes {
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    message.encode_raw(&mut buf);
    buf.freeze()
}

fn trailers(status: &Status) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        map.insert(Status::GRPC_STATUS, (tonic::Code::Internal as i32).into());
    }
    map
}

impl<M: Head> http_body::Body for Frames<M> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.stream.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(message))) => {
                let len = message.encoded_len();
                if len > u32::MAX as usize {
                    self.done = true;
                    let status = Status::out_of_range("response larger than 4 GiB");
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))));
                }
                Poll::Ready(Some(Ok(Frame::data(frame(&message, len)))))
            }
            Poll::Ready(Some(Err(status))) => {
                self.done = true;
                Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Some(Ok(Frame::trailers(trailers(&Status::ok(""))))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::sync::Semaphore;

    fn message(nonce: &str) -> Outgoing<DiscoveryResponse> {
        Outgoing::new(DiscoveryResponse {
            nonce: nonce.into(),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn frames_release_a_held_permit_once_encoded_and_end_with_ok_trailers() {
        let permits = Arc::new(Semaphore::new(1));
        let mut first = message("1");
        first.hold = Some(permits.clone().try_acquire_owned().unwrap());
        let stream = tokio_stream::iter([Ok(first), Ok(message("2"))]);
        let mut body = Frames {
            stream: Box::pin(stream),
            done: false,
        };
        assert_eq!(permits.available_permits(), 0);

        let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(permits.available_permits(), 1, "released with the encoding");
        let len = u32::from_be_bytes(data[1..5].try_into().unwrap()) as usize;
        assert_eq!((data[0], data.len()), (0, 5 + len));
        assert_eq!(DiscoveryResponse::decode(&data[5..]).unwrap().nonce, "1");

        let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(DiscoveryResponse::decode(&data[5..]).unwrap().nonce, "2");
        let trailers = body
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_trailers()
            .unwrap();
        assert_eq!(trailers.get(Status::GRPC_STATUS).unwrap(), "0");
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn an_error_ends_the_body_with_its_status() {
        let stream = tokio_stream::iter([Err(Status::invalid_argument("no node"))]);
        let mut body: Frames<DiscoveryResponse> = Frames {
            stream: Box::pin(stream),
            done: false,
        };
        let trailers = body
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_trailers()
            .unwrap();
        assert_eq!(
            trailers.get(Status::GRPC_STATUS).unwrap(),
            &(tonic::Code::InvalidArgument as i32).to_string()
        );
        assert!(body.frame().await.is_none());
    }
}
