//! The measurement schedule, interleaved: every repetition runs every workload through
//! every pair in turn (direct, mesh-proxy, Envoy, nginx, HAProxy, then again), so drift
//! of the machine over the run hits every variant alike. Per run: the fixed-rate load
//! (latency; CPU of each sidecar from /proc before and after), then the maximum rate.
//! Idle RSS and CPU are taken once every proxy is synced and before any load; peak RSS
//! (VmHWM) at the end.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use e2e::local::{APP_UID, proc};
use serde_json::{Value, json};

use crate::load::Protocol;
use crate::procfs;
use crate::stats::Summary;
use crate::tools;
use crate::topology::{Pair, Workload};

pub struct Plan {
    pub reps: usize,
    pub duration: Duration,
    pub max_duration: Duration,
    pub warmup: Duration,
    pub idle: Duration,
    pub rate: f64,
    pub connections: usize,
    /// `taskset -c` list of the load generator, when pinning.
    pub loadgen_cpus: Option<String>,
    pub bench_exe: PathBuf,
    /// oha for the HTTP/1.1 and h2c fixed-rate runs and the HTTP/1.1 maximum rate; the
    /// bench's own generator when absent (`--own-generator`).
    pub oha: Option<PathBuf>,
    pub h2load: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Fixed,
    Max,
}

impl Plan {
    /// The generator for a workload and mode, and its argv.
    fn command(&self, pair: &Pair, w: Workload, mode: Mode, seconds: f64) -> (String, Vec<String>) {
        let target = pair.target(w);
        let rate = (mode == Mode::Fixed).then_some(self.rate);
        let mut argv: Vec<String> = self
            .loadgen_cpus
            .as_ref()
            .map(|c| vec!["taskset".into(), "-c".into(), c.clone()])
            .unwrap_or_default();
        let url = format!("http://{target}/bench");
        let http = matches!(w, Workload::Http1 | Workload::H2c);
        match (&self.oha, &self.h2load) {
            (_, Some(h2load)) if w == Workload::H2c && mode == Mode::Max => {
                argv.push(h2load.display().to_string());
                argv.extend(tools::h2load_args(&url, self.connections, seconds));
                return ("h2load".into(), argv);
            }
            (Some(oha), _) if http && !(w == Workload::H2c && mode == Mode::Max) => {
                argv.push(oha.display().to_string());
                argv.extend(tools::oha_args(
                    &url,
                    w == Workload::H2c,
                    self.connections,
                    rate,
                    seconds,
                ));
                return ("oha".into(), argv);
            }
            _ => {}
        }
        let protocol = match w {
            Workload::Http1 => Protocol::Http1,
            Workload::H2c => Protocol::H2c,
            Workload::Grpc => Protocol::Grpc,
            Workload::Tcp => Protocol::Tcp,
        };
        argv.extend([
            self.bench_exe.display().to_string(),
            "load".into(),
            "--protocol".into(),
            format!("{protocol:?}").to_lowercase(),
            "--addr".into(),
            target,
            "--connections".into(),
            self.connections.to_string(),
            "--duration-ms".into(),
            ((seconds * 1000.0).round() as u64).to_string(),
        ]);
        if let Some(r) = rate {
            argv.extend(["--rate".into(), r.to_string()]);
        }
        ("bench".into(), argv)
    }

    /// Runs the load in the pair's client pod as the app UID (so it is captured).
    fn load(
        &self,
        pair: &Pair,
        w: Workload,
        mode: Mode,
        seconds: f64,
    ) -> Result<(String, Summary)> {
        let (generator, argv) = self.command(pair, w, mode, seconds);
        let out = proc::command(Some(&pair.client_netns), Some(APP_UID), &argv)
            .output()
            .with_context(|| format!("cannot run {argv:?}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "{generator} through {} ({}) failed ({}): {}{}",
                pair.label(),
                w.name(),
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let summary = match generator.as_str() {
            "oha" => tools::parse_oha(&stdout)?,
            "h2load" => tools::parse_h2load(&stdout)?,
            _ => serde_json::from_str(&stdout)
                .with_context(|| format!("bench load generator printed {stdout:?}"))?,
        };
        Ok((generator, summary))
    }
}

/// Waits until one request of every workload gets its 1 KiB answer through every pair
/// (the xDS proxies need their config first).
pub fn wait_ready(plan: &Plan, pairs: &[Pair], timeout: Duration) -> Result<()> {
    for pair in pairs {
        for &w in &pair.workloads {
            let deadline = Instant::now() + timeout;
            loop {
                let argv = vec![
                    plan.bench_exe.display().to_string(),
                    "probe".into(),
                    "--protocol".into(),
                    w.name().to_string(),
                    "--addr".into(),
                    pair.target(w),
                ];
                let out = proc::command(Some(&pair.client_netns), Some(APP_UID), &argv)
                    .output()
                    .with_context(|| format!("cannot run {argv:?}"))?;
                if out.status.success() {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "{} does not carry {} after {}s: {}",
                        pair.label(),
                        w.name(),
                        timeout.as_secs(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
    Ok(())
}

fn proxies(pair: &Pair) -> [(&'static str, Option<i32>); 2] {
    [("client", pair.client_proxy), ("server", pair.server_proxy)]
}

fn cpu(pid: Option<i32>) -> Option<f64> {
    pid.map(procfs::cpu_seconds)
}

/// Runs the plan; returns the raw results (`pairs` with idle and peak memory, `runs`).
pub fn measure(plan: &Plan, pairs: &[Pair], workloads: &[Workload]) -> Result<Value> {
    // Idle: every proxy synced, nothing flowing.
    let before: Vec<[Option<f64>; 2]> = pairs
        .iter()
        .map(|p| proxies(p).map(|(_, pid)| cpu(pid)))
        .collect();
    std::thread::sleep(plan.idle);
    let mut pair_out: Vec<Value> = pairs
        .iter()
        .zip(&before)
        .map(|(p, b)| {
            let mut v = json!({
                "kind": p.kind,
                "label": p.label(),
                "workloads": p.workloads,
            });
            for ((side, pid), cpu0) in proxies(p).into_iter().zip(b) {
                if let (Some(pid), Some(cpu0)) = (pid, cpu0) {
                    let idle_cpu = (procfs::cpu_seconds(pid) - cpu0) / plan.idle.as_secs_f64();
                    v[side] = json!({
                        "pid": pid,
                        "idle_rss_mib": procfs::memory_mib(pid, "VmRSS"),
                        "idle_cpu_ms_per_s": idle_cpu * 1000.0,
                    });
                }
            }
            v
        })
        .collect();

    // Warm-up: connections and pools established, caches warm; not recorded.
    for &w in workloads {
        for pair in pairs.iter().filter(|p| p.workloads.contains(&w)) {
            plan.load(pair, w, Mode::Fixed, plan.warmup.as_secs_f64())?;
        }
    }

    let mut runs = Vec::new();
    for rep in 0..plan.reps {
        for &w in workloads {
            for mode in [Mode::Fixed, Mode::Max] {
                let seconds = match mode {
                    Mode::Fixed => plan.duration.as_secs_f64(),
                    Mode::Max => plan.max_duration.as_secs_f64(),
                };
                for pair in pairs.iter().filter(|p| p.workloads.contains(&w)) {
                    let cpu0 = proxies(pair).map(|(_, pid)| cpu(pid));
                    let sched0 = proxies(pair).map(|(_, pid)| pid.and_then(procfs::sched));
                    let (generator, s) = plan.load(pair, w, mode, seconds)?;
                    let cpu1 = proxies(pair).map(|(_, pid)| cpu(pid));
                    let sched1 = proxies(pair).map(|(_, pid)| pid.and_then(procfs::sched));
                    let used = |i: usize| match (cpu0[i], cpu1[i]) {
                        (Some(a), Some(b)) => json!(b - a),
                        _ => Value::Null,
                    };
                    let sched: [Option<procfs::Sched>; 2] =
                        std::array::from_fn(|i| Some(sched1[i]?.since(sched0[i]?)));
                    let sched_json = |i: usize| match sched[i] {
                        Some(d) => {
                            json!({"cpu_s": d.cpu_s, "wait_s": d.wait_s, "slices": d.slices})
                        }
                        None => Value::Null,
                    };
                    // Run-queue wait per request of both sidecars together, in µs.
                    let wait_us = match sched {
                        [Some(c), Some(d)] if s.ok > 0 => {
                            format!("{:.1}", (c.wait_s + d.wait_s) * 1e6 / s.ok as f64)
                        }
                        _ => "-".into(),
                    };
                    eprintln!(
                        "rep {rep} {:<5} {:<4} {:<18} {:>9.0} rps  p50 {:>7} ms  p99 {:>7} ms  errors {}  wait {wait_us} us/req",
                        w.name(),
                        if mode == Mode::Fixed { "rate" } else { "max" },
                        pair.label(),
                        s.rps,
                        fmt_ms(s.p50_ms),
                        fmt_ms(s.p99_ms),
                        s.errors
                    );
                    runs.push(json!({
                        "rep": rep,
                        "workload": w,
                        "kind": pair.kind,
                        "mode": if mode == Mode::Fixed { "fixed" } else { "max" },
                        "generator": generator,
                        "summary": s,
                        "client_cpu_s": used(0),
                        "server_cpu_s": used(1),
                        "client_sched": sched_json(0),
                        "server_sched": sched_json(1),
                    }));
                }
            }
        }
    }
    for (p, v) in pairs.iter().zip(pair_out.iter_mut()) {
        for (side, pid) in proxies(p) {
            if let Some(pid) = pid {
                v[side]["peak_rss_mib"] = json!(procfs::memory_mib(pid, "VmHWM"));
            }
        }
    }
    Ok(json!({"pairs": pair_out, "runs": runs}))
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into())
}
