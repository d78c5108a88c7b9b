//! The data-plane benchmark (`cargo xtask bench data`; issue 7): the same traffic through
//! no proxy, a mesh-proxy sidecar pair, an Envoy sidecar pair driven by our control plane,
//! an nginx pair and an HAProxy pair, in one local cluster with real iptables capture
//! (client app -> client sidecar -> server sidecar -> server app), interleaved. Needs root.
//!
//! The binary is also the pods' upstream app (`upstream`), the load generator for the
//! workloads oha and h2load do not cover (`load`) and the readiness probe (`probe`): the
//! bench runs itself inside the pods' network namespaces as the app UID.
//!
//! Writes raw results as JSON (`--json PATH`); `xtask/src/bench/data.rs` turns them into
//! the report's tables (medians, added latency, ratios, the targets).

// cargo builds bench targets with cfg(test) but no test harness: the modules' unit tests
// compile to nothing here (tests/data_plane_bench.rs runs them).
#![cfg_attr(test, allow(unused_imports))]

mod load;
mod procfs;
mod proxies;
mod run;
mod scale;
mod stats;
mod tools;
mod topology;
mod upstream;
mod wire;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde_json::json;

use proxies::Kind;
use topology::Workload;

#[derive(Parser)]
#[command(name = "data_plane", about = "The data-plane benchmark (root)")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Write the raw results here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The CI smoke variant: one short repetition (about a minute in all).
    #[arg(long)]
    quick: bool,
    /// Fixed-rate run length per repetition.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Maximum-rate run length per repetition.
    #[arg(long, default_value = "4s", value_parser = parse_duration)]
    max_duration: Duration,
    /// Repetitions, interleaved (every variant once per repetition).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Requests per second of the fixed-rate runs.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Worker threads of every proxy (Envoy --concurrency, nginx workers, HAProxy threads).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Only these proxy kinds (direct is always measured).
    #[arg(long, value_enum, value_delimiter = ',')]
    kinds: Vec<Kind>,
    /// Only these workloads.
    #[arg(long, value_enum, value_delimiter = ',')]
    workloads: Vec<Workload>,
    /// After the traffic runs, give the control plane this many more services and report
    /// the idle RSS of the xDS-driven sidecars holding them (0: skip).
    #[arg(long, default_value_t = 1000)]
    scale_services: usize,
    /// Use the bench's own generator for HTTP too, instead of oha.
    #[arg(long)]
    own_generator: bool,
    /// Do not pin the load generator and the proxies to CPUs.
    #[arg(long)]
    no_pin: bool,
    /// The oha binary (default: `$MESH_OHA`, tools/oha.sh's cache, `$PATH`).
    #[arg(long)]
    oha: Option<PathBuf>,
    /// The Envoy binary (default: `$MESH_ENVOY`, else tools/envoy.sh).
    #[arg(long)]
    envoy: Option<PathBuf>,
    /// cargo bench passes this to every bench binary.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// The server pods' app: 1 KiB answers (HTTP/1.1, h2c, gRPC) and TCP echo.
    Upstream {
        #[arg(long = "http-port")]
        http_ports: Vec<u16>,
        #[arg(long = "tcp-port")]
        tcp_ports: Vec<u16>,
    },
    /// One load run; prints its summary as JSON.
    Load {
        #[arg(long, value_enum)]
        protocol: load::Protocol,
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Requests per second (open loop); absent: the maximum rate (closed loop).
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value_t = 1000)]
        duration_ms: u64,
    },
    /// One request; exits non-zero unless the 1 KiB answer came back.
    Probe {
        #[arg(long, value_enum)]
        protocol: load::Protocol,
        #[arg(long)]
        addr: SocketAddr,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (n, scale) = if let Some(v) = s.strip_suffix("ms") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60.0)
    } else {
        (s, 1.0)
    };
    n.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0)
        .map(|v| Duration::from_secs_f64(v * scale))
        .ok_or_else(|| format!("{s:?} is not a duration (examples: 30s, 500ms, 1m)"))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Some(Cmd::Upstream {
            http_ports,
            tcp_ports,
        }) => runtime()?.block_on(upstream::serve(&http_ports, &tcp_ports)),
        Some(Cmd::Load {
            protocol,
            addr,
            connections,
            rate,
            duration_ms,
        }) => {
            let spec = load::LoadSpec {
                protocol,
                addr,
                connections,
                rate,
                duration: Duration::from_millis(duration_ms),
            };
            let summary = runtime()?.block_on(load::run(&spec))?;
            println!("{}", serde_json::to_string(&summary)?);
            Ok(())
        }
        Some(Cmd::Probe { protocol, addr }) => runtime()?.block_on(load::probe(protocol, addr)),
        None => bench(cli.bench),
    }
}

fn bench(mut a: BenchArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the data-plane bench builds network namespaces and iptables rules: run it as root");
    }
    if a.quick {
        a.duration = Duration::from_secs(2);
        a.max_duration = Duration::from_secs(1);
        a.reps = 1;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("e2e is inside the workspace")?
        .to_path_buf();
    let bench_exe = std::env::current_exe().context("own executable")?;
    let mut kinds = vec![Kind::Direct];
    if a.kinds.is_empty() {
        kinds = Kind::ALL.to_vec();
    } else {
        kinds.extend(a.kinds.iter().filter(|k| **k != Kind::Direct));
    }
    let workloads = if a.workloads.is_empty() {
        Workload::ALL.to_vec()
    } else {
        a.workloads.clone()
    };
    let envoy = if kinds.contains(&Kind::Envoy) {
        Some(a.envoy.clone().or_else(|| topology::find_envoy(&root)).context(
            "Envoy not found: set MESH_ENVOY or let tools/envoy.sh install it (or --kinds without envoy)",
        )?)
    } else {
        None
    };
    for (kind, bin) in [
        (Kind::Nginx, "/usr/sbin/nginx"),
        (Kind::Haproxy, "/usr/sbin/haproxy"),
    ] {
        if kinds.contains(&kind) && !Path::new(bin).is_file() {
            bail!("{bin} not found (apt-get install {})", kind.name());
        }
    }
    let oha = if a.own_generator {
        None
    } else {
        Some(a.oha.clone().or_else(tools::find_oha).context(
            "oha not found: run tools/oha.sh (cargo install oha), set MESH_OHA, or pass --own-generator",
        )?)
    };
    let h2load = tools::which("h2load");
    if h2load.is_none() && workloads.contains(&Workload::H2c) {
        bail!("h2load not found (apt-get install nghttp2-client)");
    }

    // Pinning: the load generator alone on CPU 0; apps and proxies share the others.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = !a.no_pin && cpus >= 2;
    let loadgen_cpus = pin.then(|| "0".to_string());
    let proxy_cpus = pin.then(|| {
        if cpus == 2 {
            "1".to_string()
        } else {
            format!("1-{}", cpus - 1)
        }
    });

    let topo = topology::build(&topology::Options {
        kinds: kinds.clone(),
        workloads: workloads.clone(),
        concurrency: a.concurrency,
        proxy_cpus: proxy_cpus.clone(),
        envoy: envoy.clone(),
        bench_exe: bench_exe.clone(),
    })?;
    let plan = run::Plan {
        reps: a.reps.max(1),
        duration: a.duration,
        max_duration: a.max_duration,
        warmup: if a.quick {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(1)
        },
        idle: if a.quick {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(3)
        },
        rate: a.rate,
        connections: a.connections,
        loadgen_cpus: loadgen_cpus.clone(),
        bench_exe,
        oha: oha.clone(),
        h2load: h2load.clone(),
    };
    run::wait_ready(&plan, &topo.pairs, Duration::from_secs(60))?;
    let raw = run::measure(&plan, &topo.pairs, &workloads)?;
    let scale = if a.scale_services > 0 {
        eprintln!("idle memory with {} more services", a.scale_services);
        scale::measure(
            &topo.cluster.config_dir(),
            &topo.pairs,
            a.scale_services,
            plan.idle,
        )?
    } else {
        serde_json::Value::Null
    };
    topo.teardown()?;

    let mut tools_used = serde_json::Map::new();
    for (name, bin) in [("oha", &oha), ("h2load", &h2load), ("envoy", &envoy)] {
        if let Some(v) = bin.as_deref().and_then(tools::version) {
            tools_used.insert(name.into(), json!(v));
        }
    }
    let out = json!({
        "config": {
            "quick": a.quick,
            "reps": plan.reps,
            "duration_s": plan.duration.as_secs_f64(),
            "max_duration_s": plan.max_duration.as_secs_f64(),
            "rate": plan.rate,
            "connections": plan.connections,
            "concurrency": a.concurrency,
            "loadgen_cpus": loadgen_cpus,
            "proxy_cpus": proxy_cpus,
            "cpus": cpus,
            "kinds": kinds,
            "workloads": workloads,
        },
        "tools": tools_used,
        "pairs": raw["pairs"],
        "runs": raw["runs"],
        "scale": scale,
    });
    let text = serde_json::to_string_pretty(&out)?;
    match &a.json {
        Some(p) => std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?,
        None => println!("{text}"),
    }
    Ok(())
}
