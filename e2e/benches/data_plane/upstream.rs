//! The upstream app of the server pods: HTTP/1.1 and h2c (prior knowledge) on every HTTP
//! port with a 1 KiB body, gRPC `bench.Bench/Call` on the same ports, and a TCP echo.
//! It does no work per request beyond answering, so that the measurements are the
//! network's and the proxies'.

use std::convert::Infallible;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::wire;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Serves until killed.
pub async fn serve(http_ports: &[u16], tcp_ports: &[u16]) -> Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for &port in http_ports {
        let l = TcpListener::bind(("0.0.0.0", port))
            .await
            .with_context(|| format!("upstream: cannot bind HTTP port {port}"))?;
        tasks.spawn(serve_http(l));
    }
    for &port in tcp_ports {
        let l = TcpListener::bind(("0.0.0.0", port))
            .await
            .with_context(|| format!("upstream: cannot bind TCP port {port}"))?;
        tasks.spawn(serve_tcp(l));
    }
    eprintln!("upstream: http {http_ports:?}, tcp {tcp_ports:?}");
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn serve_http(listener: TcpListener) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        tokio::spawn(async move {
            let _ = builder
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .await;
        });
    }
}

async fn handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        let mut service = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
        let resp = service.unary(wire::Answer, req).await;
        return Ok(resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()));
    }
    // Read whatever was sent so the connection stays reusable.
    let _ = req.into_body().collect().await;
    let mut resp = Response::new(
        Full::new(wire::answer())
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    Ok(resp)
}

async fn serve_tcp(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(echo(stream));
    }
}

async fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return stream.shutdown().await;
        }
        stream.write_all(&buf[..n]).await?;
    }
}
