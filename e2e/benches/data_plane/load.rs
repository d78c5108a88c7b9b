//! The bench's own load generator, for the workloads no packaged tool drives (gRPC
//! unary with status checks, TCP round trips) and as a cross-check of oha.
//!
//! `connections` workers each own one connection and take requests from a shared queue.
//! Fixed rate (open loop): one dispatcher puts the due time of request i, `start + i/rate`,
//! on the queue exactly then (it sleeps to within 2 ms of the due time and then yields
//! until it is reached, because tokio's timer rounds deadlines up to the next millisecond,
//! which would add a random 0-1 ms to every latency); a worker measures from the due time
//! to the end of the answer, so a request that waited for a free connection counts that
//! wait (latency correction, no coordinated omission). Maximum rate (closed loop): every
//! worker sends its next request as soon as the previous answer is in.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};

use crate::stats::{Samples, Summary};
use crate::wire;

/// What a run sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Protocol {
    Http1,
    H2c,
    Grpc,
    Tcp,
}

#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub protocol: Protocol,
    pub addr: SocketAddr,
    pub connections: usize,
    /// Requests per second; `None` runs closed loop at the maximum rate.
    pub rate: Option<f64>,
    pub duration: Duration,
}

/// One connection of any protocol.
enum Conn {
    Http1(http1::SendRequest<Empty<Bytes>>, String),
    H2(http2::SendRequest<Empty<Bytes>>, String),
    Grpc(tonic::client::Grpc<tonic::transport::Channel>),
    Tcp(TcpStream, Vec<u8>, Vec<u8>),
}

impl Conn {
    async fn open(protocol: Protocol, addr: SocketAddr) -> Result<Conn> {
        let authority = addr.to_string();
        Ok(match protocol {
            Protocol::Http1 | Protocol::H2c => {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let io = TokioIo::new(tcp);
                if protocol == Protocol::Http1 {
                    let (send, conn) = http1::handshake(io).await?;
                    tokio::spawn(conn);
                    Conn::Http1(send, authority)
                } else {
                    let (send, conn) = http2::handshake(TokioExecutor::new(), io).await?;
                    tokio::spawn(conn);
                    Conn::H2(send, authority)
                }
            }
            Protocol::Grpc => {
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                    .tcp_nodelay(true)
                    .connect()
                    .await?;
                Conn::Grpc(tonic::client::Grpc::new(channel))
            }
            Protocol::Tcp => {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                Conn::Tcp(tcp, wire::tcp_message(), vec![0; wire::ANSWER_BYTES])
            }
        })
    }

    /// One request and its whole answer; an error when the answer is not the 1 KiB one.
    async fn request(&mut self) -> Result<()> {
        match self {
            Conn::Http1(send, authority) => {
                send.ready().await?;
                let resp = send.send_request(get(authority, true)?).await?;
                check_http(resp).await
            }
            Conn::H2(send, authority) => {
                send.ready().await?;
                // HTTP/2 carries the authority in `:authority` (from the URI); a `host`
                // header as well is a duplicate that nginx answers with 400.
                let resp = send.send_request(get(authority, false)?).await?;
                check_http(resp).await
            }
            Conn::Grpc(grpc) => {
                grpc.ready().await.context("gRPC channel not ready")?;
                let path = http::uri::PathAndQuery::from_static(wire::GRPC_PATH);
                let req = tonic::Request::new(wire::Payload {
                    data: Bytes::from_static(b"ping"),
                });
                let resp: wire::Payload = grpc
                    .unary(req, path, tonic_prost::ProstCodec::default())
                    .await?
                    .into_inner();
                if resp.data.len() != wire::ANSWER_BYTES {
                    bail!("gRPC answer of {} bytes", resp.data.len());
                }
                Ok(())
            }
            Conn::Tcp(stream, message, buf) => {
                stream.write_all(message).await?;
                stream.read_exact(buf).await?;
                if buf != message {
                    bail!("TCP echo differs from what was sent");
                }
                Ok(())
            }
        }
    }
}

fn get(authority: &str, host_header: bool) -> Result<Request<Empty<Bytes>>> {
    let mut req = Request::get(format!("http://{authority}/bench"));
    if host_header {
        req = req.header(http::header::HOST, authority);
    }
    Ok(req.body(Empty::new())?)
}

async fn check_http(resp: http::Response<hyper::body::Incoming>) -> Result<()> {
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if status != StatusCode::OK || body.len() != wire::ANSWER_BYTES {
        bail!("answer {status} with {} bytes", body.len());
    }
    Ok(())
}

/// One request through a fresh connection (the readiness probe of a pair).
pub async fn probe(protocol: Protocol, addr: SocketAddr) -> Result<()> {
    let mut c = tokio::time::timeout(Duration::from_secs(3), Conn::open(protocol, addr))
        .await
        .context("connect timed out")??;
    tokio::time::timeout(Duration::from_secs(3), c.request())
        .await
        .context("request timed out")?
}

/// Runs the load and summarises it.
pub async fn run(spec: &LoadSpec) -> Result<Summary> {
    let mut conns = Vec::with_capacity(spec.connections);
    for i in 0..spec.connections {
        conns.push(
            Conn::open(spec.protocol, spec.addr)
                .await
                .with_context(|| format!("connection {i} to {}", spec.addr))?,
        );
    }
    match spec.rate {
        Some(rate) => fixed_rate(spec, rate, conns).await,
        None => closed_loop(spec, conns).await,
    }
}

async fn fixed_rate(spec: &LoadSpec, rate: f64, conns: Vec<Conn>) -> Result<Summary> {
    let total = (rate * spec.duration.as_secs_f64()).round() as u64;
    let (tx, rx) = mpsc::channel::<Instant>(total.max(1) as usize);
    let rx = Arc::new(Mutex::new(rx));
    let mut workers = tokio::task::JoinSet::new();
    for conn in conns {
        let rx = rx.clone();
        let (protocol, addr) = (spec.protocol, spec.addr);
        workers.spawn(async move {
            let mut samples = Samples::with_capacity((total as usize) / 16);
            let mut conn = Some(conn);
            loop {
                let due = { rx.lock().await.recv().await };
                let Some(due) = due else { break };
                if conn.is_none() {
                    // Reconnect after a failure (a proxy that closed the connection).
                    conn = tokio::time::timeout(Duration::from_secs(1), Conn::open(protocol, addr))
                        .await
                        .ok()
                        .and_then(Result::ok);
                }
                let ok = match conn.as_mut() {
                    Some(c) => c.request().await.is_ok(),
                    None => false,
                };
                if ok {
                    samples.record(due.elapsed().as_micros() as u64);
                } else {
                    samples.errors += 1;
                    conn = None;
                }
            }
            samples
        });
    }
    let start = Instant::now() + Duration::from_millis(20);
    let interval = Duration::from_secs_f64(1.0 / rate);
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        wait_until(due).await;
        if tx.send(due).await.is_err() {
            break;
        }
    }
    drop(tx);
    let mut all = Samples::with_capacity(total as usize);
    while let Some(s) = workers.join_next().await {
        all.merge(s?);
    }
    Ok(all.summary(start.elapsed().as_secs_f64(), true))
}

/// Sleeps to within 2 ms of `due`, then yields until it is reached.
async fn wait_until(due: Instant) {
    let coarse = due.checked_sub(Duration::from_millis(2));
    if let Some(c) = coarse
        && c > Instant::now()
    {
        tokio::time::sleep_until(c.into()).await;
    }
    while Instant::now() < due {
        tokio::task::yield_now().await;
    }
}

async fn closed_loop(spec: &LoadSpec, conns: Vec<Conn>) -> Result<Summary> {
    let start = Instant::now();
    let end = start + spec.duration;
    let mut workers = tokio::task::JoinSet::new();
    for mut conn in conns {
        workers.spawn(async move {
            let mut samples = Samples::with_capacity(1 << 14);
            while Instant::now() < end {
                let t = Instant::now();
                match conn.request().await {
                    Ok(()) => samples.record(t.elapsed().as_micros() as u64),
                    Err(_) => {
                        samples.errors += 1;
                        break;
                    }
                }
            }
            samples
        });
    }
    let mut all = Samples::default();
    while let Some(s) = workers.join_next().await {
        all.merge(s?);
    }
    Ok(all.summary(start.elapsed().as_secs_f64(), false))
}
