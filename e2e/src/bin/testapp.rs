//! `testapp serve ...` runs the test workload; `testapp client URL ...` drives it.
//! See `e2e::testapp` for the protocol and the controls.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use e2e::testapp::client::{self, ClientConfig, Protocol};
use e2e::testapp::controls::parse_duration;
use e2e::testapp::{Identity, server};

#[derive(Parser)]
#[command(
    name = "testapp",
    about = "The mesh's test workload: server and load client"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve HTTP/1.1 + h2c + gRPC + WebSocket on each --http-port and TCP echo on each --tcp-port.
    Serve {
        #[arg(long = "http-port", default_value = "8080")]
        http_ports: Vec<u16>,
        #[arg(long = "tcp-port")]
        tcp_ports: Vec<u16>,
        #[arg(long, default_value = "0.0.0.0")]
        bind: IpAddr,
        #[arg(long, env = "SERVICE_NAME", default_value = "testapp")]
        service: String,
        #[arg(long, env = "SERVICE_VERSION", default_value = "v1")]
        version: String,
        #[arg(long, env = "POD_NAME", default_value = "testapp")]
        pod: String,
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        namespace: String,
        #[arg(long, env = "INSTANCE_IP", default_value = "")]
        ip: String,
    },
    /// Send requests and print JSON totals per version, pod and status.
    Client {
        /// http://HOST:PORT/PATH?QUERY (http1, h2, grpc), tcp://HOST:PORT, ws://HOST:PORT/ws
        url: String,
        #[arg(short = 'n', long, default_value_t = 1)]
        requests: u64,
        #[arg(short = 'c', long, default_value_t = 1)]
        concurrency: usize,
        /// Requests per second (all workers together).
        #[arg(long)]
        rate: Option<f64>,
        /// A request header, "Name: value" (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        #[arg(short = 'X', long, default_value = "GET")]
        method: String,
        /// Request body.
        #[arg(short = 'd', long)]
        data: Option<String>,
        #[arg(long, value_enum, default_value_t = Protocol::Http1)]
        protocol: Protocol,
        /// Per-request timeout (e.g. 5s, 500ms).
        #[arg(long, default_value = "10s")]
        timeout: String,
        /// Dial IP:PORT instead of the URL's host (which still goes into Host).
        #[arg(long)]
        connect_to: Option<SocketAddr>,
        /// gRPC controls, e.g. "delay=100ms&status=503".
        #[arg(long)]
        grpc_query: Option<String>,
        /// Include the first N answers (in request order) in the report.
        #[arg(long, default_value_t = 0)]
        keep: usize,
        /// Set header NAME to k<i mod COUNT> on request i: NAME:COUNT (e.g. x-user:40).
        #[arg(long, value_name = "NAME:COUNT")]
        vary_header: Option<String>,
        /// Stop sending once N requests got no answer (timeouts, resets, refused).
        #[arg(long, value_name = "N")]
        stop_after_errors: Option<u64>,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Serve {
            http_ports,
            tcp_ports,
            bind,
            service,
            version,
            pod,
            namespace,
            ip,
        } => {
            let identity = Identity {
                service,
                version,
                pod,
                namespace,
                ip,
            };
            let srv = server::start(identity, bind, &http_ports, &tcp_ports)
                .await
                .context("cannot bind the testapp ports")?;
            eprintln!("testapp: http on {:?}, tcp on {:?}", srv.http, srv.tcp);
            shutdown_signal().await;
            drop(srv);
            Ok(())
        }
        Cmd::Client {
            url,
            requests,
            concurrency,
            rate,
            headers,
            method,
            data,
            protocol,
            timeout,
            connect_to,
            grpc_query,
            keep,
            vary_header,
            stop_after_errors,
        } => {
            let mut cfg = ClientConfig::new(url, protocol);
            cfg.requests = requests;
            cfg.concurrency = concurrency;
            cfg.rate = rate;
            cfg.headers = headers
                .iter()
                .map(|h| client::parse_header(h))
                .collect::<Result<_, _>>()?;
            cfg.method = method
                .parse()
                .with_context(|| format!("method {method:?}"))?;
            cfg.body = data;
            cfg.timeout = parse_duration("timeout", &timeout)
                .map_err(anyhow::Error::from)
                .and_then(|d| {
                    (d > Duration::ZERO)
                        .then_some(d)
                        .context("timeout must be positive")
                })?;
            cfg.connect_to = connect_to;
            cfg.grpc_query = grpc_query;
            cfg.keep = keep;
            cfg.stop_after_errors = stop_after_errors;
            cfg.vary_header = vary_header
                .map(|v| {
                    let (name, count) = v
                        .rsplit_once(':')
                        .with_context(|| format!("--vary-header {v:?}: expected NAME:COUNT"))?;
                    let count: u64 = count.parse().ok().filter(|c| *c > 0).with_context(|| {
                        format!("--vary-header {v:?}: COUNT must be a positive number")
                    })?;
                    Ok::<_, anyhow::Error>((name.to_string(), count))
                })
                .transpose()?;
            let report = client::run(cfg).await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
