//! `cargo xtask bench data`: the data-plane bench (`e2e/benches/data_plane`: a local
//! cluster with real capture, the same traffic through no proxy, mesh-proxy, Envoy on our
//! control plane, nginx and HAProxy, interleaved) and its part of the report: medians over
//! the repetitions, latency added over direct in the same repetition, throughput and CPU
//! ratios, and the targets checked against them.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::report::{Column, Section, Table};
use super::{Build, bench_executable, cargo};

/// Proxy kinds in the bench's order; the first is the baseline.
const KINDS: [&str; 5] = ["direct", "mesh-proxy", "envoy", "nginx", "haproxy"];
const WORKLOADS: [&str; 4] = ["http1", "h2c", "grpc", "tcp"];

/// Builds the binaries the cluster runs, installs the load generator, runs the bench with
/// `args` and returns the report section.
pub fn run(root: &Path, build: Build, out_dir: &Path, args: &[String]) -> Result<Section> {
    if !crate::is_root() {
        bail!(
            "the data-plane bench creates network namespaces and iptables rules: run it as root (sudo -E cargo xtask bench data)"
        );
    }
    std::fs::create_dir_all(out_dir)?;
    let mut b = cargo(root);
    b.args([
        "build",
        "-p",
        "mesh-proxy",
        "-p",
        "mesh-control",
        "-p",
        "mesh-cni",
    ]);
    b.arg("--bins");
    if build == Build::Release {
        b.arg("--release");
    }
    crate::run("build the proxies and the control plane", b)?;
    let oha = tool(root, "tools/oha.sh").context("installing oha (tools/oha.sh)")?;
    let envoy = tool(root, "tools/envoy.sh").context("installing Envoy (tools/envoy.sh)")?;
    let json_path = out_dir.join("data.json");
    let _ = std::fs::remove_file(&json_path);
    let mut bench_args = vec![
        "--json".to_string(),
        json_path.display().to_string(),
        "--oha".to_string(),
        oha,
        "--envoy".to_string(),
        envoy,
    ];
    bench_args.extend(args.iter().cloned());
    let exe = bench_executable(root, build, "e2e", "data_plane")?;
    let command = format!("{} {}", exe.display(), bench_args.join(" "));
    eprintln!("==> {command}");
    // Run directly, not through `cargo bench`: cargo would hold the target directory's
    // lock for the whole run and stall everyone else's builds for a quarter of an hour.
    let status = Command::new(&exe)
        .args(&bench_args)
        .current_dir(root)
        .status()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    if !status.success() {
        bail!(
            "the data bench failed ({status}); its cluster's logs are in /run/mesh-bench-data/logs if it is still up"
        );
    }
    let text = std::fs::read_to_string(&json_path)
        .with_context(|| format!("the data bench wrote no {}", json_path.display()))?;
    let raw: Value = serde_json::from_str(&text).context("data bench output")?;
    let mut section = Section::new(
        root,
        "data",
        "Data plane: latency, throughput, CPU and memory of a sidecar pair",
        vec![
            format!("cargo xtask bench data {}", args.join(" "))
                .trim_end()
                .to_string(),
            command,
        ],
    );
    for (k, v) in raw["tools"].as_object().into_iter().flatten() {
        if let Some(v) = v.as_str() {
            section.versions.insert(k.clone(), v.to_string());
        }
    }
    section.tables = tables(&raw);
    section.notes = notes(&raw);
    section.raw = raw;
    Ok(section)
}

/// Runs an install script (`tools/*.sh`), which prints the binary's path.
fn tool(root: &Path, script: &str) -> Result<String> {
    let out = Command::new("bash")
        .arg(root.join(script))
        .output()
        .with_context(|| format!("cannot run {script}"))?;
    if !out.status.success() {
        bail!(
            "{script} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn num(v: Option<f64>) -> Value {
    match v {
        Some(f) if f.is_finite() => json!(f),
        _ => Value::Null,
    }
}

/// The median of the values present.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The runs of one workload, kind and mode.
fn runs<'a>(raw: &'a Value, w: &str, kind: &str, mode: &str) -> Vec<&'a Value> {
    raw["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["workload"] == w && r["kind"] == kind && r["mode"] == mode)
        .collect()
}

fn field(r: &Value, key: &str) -> Option<f64> {
    r["summary"][key].as_f64()
}

/// Median over repetitions of a summary field.
fn med(raw: &Value, w: &str, kind: &str, mode: &str, key: &str) -> Option<f64> {
    median(
        runs(raw, w, kind, mode)
            .iter()
            .filter_map(|r| field(r, key))
            .collect(),
    )
}

/// Median over repetitions of (kind's value - direct's value in the same repetition).
fn added(raw: &Value, w: &str, kind: &str, key: &str) -> Option<f64> {
    let direct: BTreeMap<u64, f64> = runs(raw, w, "direct", "fixed")
        .iter()
        .filter_map(|r| Some((r["rep"].as_u64()?, field(r, key)?)))
        .collect();
    median(
        runs(raw, w, kind, "fixed")
            .iter()
            .filter_map(|r| Some(field(r, key)? - direct.get(&r["rep"].as_u64()?)?))
            .collect(),
    )
}

/// Median over repetitions of a sidecar's CPU seconds per 1,000 successful requests
/// in the fixed-rate runs (= vCPU used at 1,000 requests per second).
fn cpu_per_k(raw: &Value, w: &str, kind: &str, side: &str) -> Option<f64> {
    median(
        runs(raw, w, kind, "fixed")
            .iter()
            .filter_map(|r| {
                let ok = field(r, "ok")?;
                (ok > 0.0).then_some(r[format!("{side}_cpu_s")].as_f64()? / (ok / 1000.0))
            })
            .collect(),
    )
}

/// Median over the fixed-rate runs of the time both sidecars of `kind` spent runnable
/// but not running (the run queue's wait), in microseconds per successful request.
fn wait_per_request(raw: &Value, w: &str, kind: &str) -> Option<f64> {
    median(
        runs(raw, w, kind, "fixed")
            .iter()
            .filter_map(|r| {
                let ok = field(r, "ok")?;
                let wait =
                    r["client_sched"]["wait_s"].as_f64()? + r["server_sched"]["wait_s"].as_f64()?;
                (ok > 0.0).then_some(wait * 1e6 / ok)
            })
            .collect(),
    )
}

/// The pair of `kind` that carries `w`.
fn pair<'a>(raw: &'a Value, w: &str, kind: &str) -> Option<&'a Value> {
    raw["pairs"].as_array()?.iter().find(|p| {
        p["kind"] == kind
            && p["workloads"]
                .as_array()
                .is_some_and(|ws| ws.iter().any(|x| x == w))
    })
}

fn present<'a>(raw: &'a Value, list: &str, all: &'a [&'a str]) -> Vec<&'a str> {
    let have: Vec<&str> = raw["config"][list]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    all.iter().copied().filter(|k| have.contains(k)).collect()
}

fn generator(raw: &Value, w: &str, kind: &str, mode: &str) -> Value {
    runs(raw, w, kind, mode)
        .first()
        .map(|r| r["generator"].clone())
        .unwrap_or(Value::Null)
}

pub fn tables(raw: &Value) -> Vec<Table> {
    let kinds = present(raw, "kinds", &KINDS);
    let workloads = present(raw, "workloads", &WORKLOADS);
    let cfg = &raw["config"];
    let mut latency = Table::new(
        &format!(
            "Latency at a fixed {} requests/s over {} connections (open loop, latency-corrected), median of {} interleaved repetitions of {} s; 'added' is over direct in the same repetition",
            cfg["rate"], cfg["connections"], cfg["reps"], cfg["duration_s"]
        ),
        vec![
            Column::label("workload"),
            Column::label("proxies"),
            Column::number("p50", "ms"),
            Column::number("p90", "ms"),
            Column::number("p99", "ms"),
            Column::number("p99.9", "ms"),
            Column::number("added p50", "ms"),
            Column::number("added p99", "ms"),
            Column::number("added p99.9", "ms"),
            Column::number("achieved", "req/s"),
            Column::number("errors", ""),
            Column::label("generator"),
        ],
    );
    let mut throughput = Table::new(
        &format!(
            "Maximum throughput (closed loop, {} connections, one request in flight each), median of {} repetitions of {} s",
            cfg["connections"], cfg["reps"], cfg["max_duration_s"]
        ),
        vec![
            Column::label("workload"),
            Column::label("proxies"),
            Column::number("throughput", "req/s"),
            Column::number("of direct", "%"),
            Column::number("errors", ""),
            Column::label("generator"),
        ],
    );
    let mut cost = Table::new(
        "Sidecar cost: CPU per 1,000 requests in the fixed-rate runs (= vCPU at 1,000 req/s), median; memory from /proc (RSS idle after config sync, VmHWM at the end)",
        vec![
            Column::label("workload"),
            Column::label("proxies"),
            Column::number("client sidecar CPU", "vCPU"),
            Column::number("server sidecar CPU", "vCPU"),
            Column::number("pair CPU vs Envoy", "x"),
            Column::number("client idle RSS", "MiB"),
            Column::number("server idle RSS", "MiB"),
            Column::number("client peak RSS", "MiB"),
            Column::number("server peak RSS", "MiB"),
            Column::number("idle CPU per sidecar", "ms/s"),
            Column::number("pair run-queue wait per request", "µs"),
        ],
    );
    for &w in &workloads {
        let direct_max = med(raw, w, "direct", "max", "rps");
        for &k in &kinds {
            if runs(raw, w, k, "fixed").is_empty() {
                continue;
            }
            let errors = |mode| {
                runs(raw, w, k, mode)
                    .iter()
                    .filter_map(|r| field(r, "errors"))
                    .sum::<f64>()
            };
            latency.push(vec![
                json!(w),
                json!(k),
                num(med(raw, w, k, "fixed", "p50_ms")),
                num(med(raw, w, k, "fixed", "p90_ms")),
                num(med(raw, w, k, "fixed", "p99_ms")),
                num(med(raw, w, k, "fixed", "p999_ms")),
                num(added(raw, w, k, "p50_ms")),
                num(added(raw, w, k, "p99_ms")),
                num(added(raw, w, k, "p999_ms")),
                num(med(raw, w, k, "fixed", "rps")),
                json!(errors("fixed")),
                generator(raw, w, k, "fixed"),
            ]);
            let max = med(raw, w, k, "max", "rps");
            throughput.push(vec![
                json!(w),
                json!(k),
                num(max),
                num(max.zip(direct_max).map(|(m, d)| 100.0 * m / d)),
                json!(errors("max")),
                generator(raw, w, k, "max"),
            ]);
            if k == "direct" {
                continue;
            }
            let pair_cpu = |kind| {
                Some(cpu_per_k(raw, w, kind, "client")? + cpu_per_k(raw, w, kind, "server")?)
            };
            let p = pair(raw, w, k);
            let mem = |side: &str, key: &str| num(p.and_then(|p| p[side][key].as_f64()));
            let idle_cpu = p.and_then(|p| {
                median(
                    ["client", "server"]
                        .iter()
                        .filter_map(|s| p[*s]["idle_cpu_ms_per_s"].as_f64())
                        .collect(),
                )
            });
            cost.push(vec![
                json!(w),
                json!(k),
                num(cpu_per_k(raw, w, k, "client")),
                num(cpu_per_k(raw, w, k, "server")),
                num(pair_cpu(k).zip(pair_cpu("envoy")).map(|(a, b)| a / b)),
                mem("client", "idle_rss_mib"),
                mem("server", "idle_rss_mib"),
                mem("client", "peak_rss_mib"),
                mem("server", "peak_rss_mib"),
                num(idle_cpu),
                num(wait_per_request(raw, w, k)),
            ]);
        }
    }
    let mut out = vec![latency, throughput, cost];
    if let Some(scale) = scale_table(raw) {
        out.push(scale);
    }
    if kinds.contains(&"mesh-proxy") && workloads.contains(&"http1") {
        out.push(targets(raw, &kinds));
    }
    out
}

/// Idle memory once every xDS-driven sidecar holds the generated services.
fn scale_table(raw: &Value) -> Option<Table> {
    let rows = raw["scale"].as_array().filter(|r| !r.is_empty())?;
    let services = rows[0]["services"].as_u64().unwrap_or(0);
    let mut t = Table::new(
        &format!(
            "Idle memory with {services} more services (ServiceEntries: one HTTP port, two endpoints each; every sidecar gets a cluster, an endpoint set and a virtual host per service), read from /proc once the sidecar holds them all"
        ),
        vec![
            Column::label("proxies"),
            Column::label("sidecar"),
            Column::number("clusters", ""),
            Column::number("synced after", "s"),
            Column::number("idle RSS", "MiB"),
            Column::number("idle RSS before", "MiB"),
        ],
    );
    for r in rows {
        let (kind, side) = (r["kind"].as_str()?, r["side"].as_str()?);
        let before = raw["pairs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["kind"] == kind)
            .and_then(|p| p[side]["idle_rss_mib"].as_f64());
        t.push(vec![
            json!(kind),
            json!(side),
            num(r["clusters"].as_f64()),
            num(r["synced_after_s"].as_f64()),
            num(r["idle_rss_mib"].as_f64()),
            num(before),
        ]);
    }
    Some(t)
}

/// The largest idle RSS of mesh-proxy's sidecars with the generated services.
fn scale_rss(raw: &Value) -> Option<(u64, f64)> {
    let rows = raw["scale"].as_array()?;
    let mesh = rows.iter().filter(|r| r["kind"] == "mesh-proxy");
    let rss = mesh
        .clone()
        .filter_map(|r| r["idle_rss_mib"].as_f64())
        .reduce(f64::max)?;
    Some((mesh.clone().next()?["services"].as_u64()?, rss))
}

/// The targets for mesh-proxy (HTTP/1.1, 1 KiB, 1,000 rps), each with what was
/// measured and whether it is met.
fn targets(raw: &Value, kinds: &[&str]) -> Table {
    let mut t = Table::new(
        "Targets of issue 7 (mesh-proxy pair, HTTP/1.1 unless noted)",
        vec![
            Column::label("target"),
            Column::number("measured", ""),
            Column::number("limit", ""),
            Column::label("met"),
        ],
    );
    let w = "http1";
    let mut row =
        |what: String, measured: Option<f64>, limit: Option<f64>, lower_is_better: bool| {
            let met = match (measured, limit) {
                (Some(m), Some(l)) if lower_is_better => {
                    if m < l {
                        "yes"
                    } else {
                        "no"
                    }
                }
                (Some(m), Some(l)) => {
                    if m >= l {
                        "yes"
                    } else {
                        "no"
                    }
                }
                _ => "not measured",
            };
            t.push(vec![json!(what), num(measured), num(limit), json!(met)]);
        };
    let mesh_p50 = added(raw, w, "mesh-proxy", "p50_ms");
    let mesh_p99 = added(raw, w, "mesh-proxy", "p99_ms");
    row("added p50 (ms) < 0.25".into(), mesh_p50, Some(0.25), true);
    row("added p99 (ms) < 1".into(), mesh_p99, Some(1.0), true);
    for other in ["envoy", "nginx"] {
        if kinds.contains(&other) {
            row(
                format!("added p50 (ms) below {other}'s"),
                mesh_p50,
                added(raw, w, other, "p50_ms"),
                true,
            );
            row(
                format!("added p99 (ms) below {other}'s"),
                mesh_p99,
                added(raw, w, other, "p99_ms"),
                true,
            );
        }
    }
    let worst_side = cpu_per_k(raw, w, "mesh-proxy", "client")
        .zip(cpu_per_k(raw, w, "mesh-proxy", "server"))
        .map(|(c, s)| c.max(s));
    row(
        "CPU per sidecar (vCPU at 1,000 rps) < 0.1".into(),
        worst_side,
        Some(0.1),
        true,
    );
    if kinds.contains(&"envoy") {
        let pair = |k| Some(cpu_per_k(raw, w, k, "client")? + cpu_per_k(raw, w, k, "server")?);
        row(
            "pair CPU (vCPU at 1,000 rps) at most half of Envoy's".into(),
            pair("mesh-proxy"),
            pair("envoy").map(|e| e / 2.0),
            true,
        );
    }
    let idle = pair(raw, w, "mesh-proxy").and_then(|p| {
        Some(
            p["client"]["idle_rss_mib"]
                .as_f64()?
                .max(p["server"]["idle_rss_mib"].as_f64()?),
        )
    });
    row("idle RSS (MiB) < 15".into(), idle, Some(15.0), true);
    if let Some((services, rss)) = scale_rss(raw) {
        row(
            format!("idle RSS (MiB) with {services} more services < 40"),
            Some(rss),
            Some(40.0),
            true,
        );
    }
    for wl in WORKLOADS {
        let d = med(raw, wl, "direct", "max", "rps");
        let m = med(raw, wl, "mesh-proxy", "max", "rps");
        if let (Some(d), Some(m)) = (d, m) {
            row(
                format!("max throughput {wl} (% of direct) >= 70"),
                Some(100.0 * m / d),
                Some(70.0),
                false,
            );
        }
    }
    t
}

fn notes(raw: &Value) -> Vec<String> {
    let cfg = &raw["config"];
    let pin = match (cfg["loadgen_cpus"].as_str(), cfg["proxy_cpus"].as_str()) {
        (Some(l), Some(p)) => format!(
            "Pinning (taskset): the load generator alone on CPU {l}; the upstream apps and every sidecar on CPU {p}, so a proxied pair and the direct baseline use the same cores."
        ),
        _ => "No CPU pinning (fewer than 2 CPUs, or --no-pin).".to_string(),
    };
    vec![
        "Topology: a local cluster (network namespaces on a CNI bridge, mesh-cni's iptables capture, our control plane on the file source); per proxy kind a client pod, where the load generator runs as the app UID so its connections are captured, and a server pod with the 1 KiB upstream app. Direct: pods without sidecars or capture, the client dials the server pod. Proxied: the client dials the Service VIP and both sidecars are in the path (client app -> client sidecar -> server sidecar -> server app).".to_string(),
        format!(
            "Proxies: mesh-proxy and Envoy ({}) get the same xDS from our control plane (Envoy bootstrapped with the node id and metadata mesh-proxy sends, ADS to mesh-control); every proxy runs as UID 1337 with {} worker(s) (mesh-proxy/Envoy --concurrency, nginx worker_processes, HAProxy nbthread). nginx and HAProxy listen on the captured ports (15001 outbound to the server pod, 15006 inbound to the app) with keep-alive upstreams; they cannot tell captured ports apart, so they get one pod pair per workload. nginx proxies HTTP/2 upstream only for gRPC: its h2c pair speaks HTTP/1.1 between the sidecars.",
            raw["tools"]["envoy"].as_str().unwrap_or("1.40"),
            cfg["concurrency"]
        ),
        pin,
        "Generators: oha (open loop with --latency-correction; HTTP/1.1 and h2c fixed rate, HTTP/1.1 maximum), h2load (h2c maximum), the bench's own (gRPC unary with tonic, checking every status and payload; TCP 1 KiB echo round trips on persistent connections; open loop scheduled to the microsecond, latency from the due time). Workloads: 1 KiB answers; gRPC and h2c on Service ports named grpc and http2, TCP on a tcp port.".to_string(),
        "CPU is user+system time of each sidecar's process tree from /proc/<pid>/stat across the fixed-rate run, per 1,000 successful requests; RSS from /proc/<pid>/status (VmRSS when idle, VmHWM for the peak, summed over nginx's processes).".to_string(),
        "Pending: a mesh-proxy pair with mTLS between the sidecars (after the security issue lands).".to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_json(rep: u64, w: &str, kind: &str, mode: &str, p50: f64, rps: f64, cpu: f64) -> Value {
        json!({
            "rep": rep, "workload": w, "kind": kind, "mode": mode, "generator": "oha",
            "summary": {"ok": 10000, "errors": 0, "seconds": 10.0, "rps": rps,
                        "p50_ms": p50, "p90_ms": p50 * 2.0, "p99_ms": p50 * 3.0, "p999_ms": p50 * 4.0},
            "client_cpu_s": cpu, "server_cpu_s": cpu,
            "client_sched": {"cpu_s": cpu, "wait_s": 0.02, "slices": 100},
            "server_sched": {"cpu_s": cpu, "wait_s": 0.03, "slices": 100},
        })
    }

    fn raw() -> Value {
        let mut runs = Vec::new();
        for rep in 0..3 {
            let jitter = rep as f64 * 0.01;
            runs.push(run_json(
                rep,
                "http1",
                "direct",
                "fixed",
                0.10 + jitter,
                1000.0,
                f64::NAN,
            ));
            runs.push(run_json(
                rep,
                "http1",
                "mesh-proxy",
                "fixed",
                0.30 + jitter,
                1000.0,
                0.5,
            ));
            runs.push(run_json(
                rep,
                "http1",
                "envoy",
                "fixed",
                0.50 + jitter,
                1000.0,
                1.5,
            ));
            runs.push(run_json(rep, "http1", "direct", "max", 0.0, 20000.0, 0.0));
            runs.push(run_json(
                rep,
                "http1",
                "mesh-proxy",
                "max",
                0.0,
                15000.0,
                0.0,
            ));
            runs.push(run_json(rep, "http1", "envoy", "max", 0.0, 10000.0, 0.0));
        }
        json!({
            "config": {"rate": 1000.0, "connections": 64, "reps": 3, "duration_s": 10.0,
                       "max_duration_s": 4.0, "concurrency": 1,
                       "kinds": ["direct", "mesh-proxy", "envoy"], "workloads": ["http1"]},
            "tools": {},
            "pairs": [
                {"kind": "mesh-proxy", "workloads": ["http1"],
                 "client": {"idle_rss_mib": 9.0, "idle_cpu_ms_per_s": 0.5, "peak_rss_mib": 12.0},
                 "server": {"idle_rss_mib": 10.0, "idle_cpu_ms_per_s": 0.7, "peak_rss_mib": 13.0}},
                {"kind": "envoy", "workloads": ["http1"],
                 "client": {"idle_rss_mib": 40.0, "idle_cpu_ms_per_s": 2.0, "peak_rss_mib": 45.0},
                 "server": {"idle_rss_mib": 41.0, "idle_cpu_ms_per_s": 2.0, "peak_rss_mib": 46.0}}
            ],
            "runs": runs,
        })
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![f64::NAN]), None);
    }

    #[test]
    fn tables_from_runs() {
        let raw = raw();
        let t = tables(&raw);
        assert_eq!(t.len(), 4);
        for table in &t[..3] {
            table.check_numbers().unwrap();
        }
        // Latency: mesh-proxy adds 0.2 ms at p50 in every repetition.
        let mesh = &t[0].rows[1];
        assert_eq!(mesh[1], "mesh-proxy");
        assert!((mesh[6].as_f64().unwrap() - 0.2).abs() < 1e-9, "{mesh:?}");
        assert!((mesh[7].as_f64().unwrap() - 0.6).abs() < 1e-9, "{mesh:?}");
        // Throughput: 75% of direct.
        assert_eq!(t[1].rows[1][3], json!(75.0));
        // CPU: 0.5 s per 10,000 requests = 0.05 vCPU per sidecar; a third of Envoy's.
        let cost = &t[2].rows[0];
        assert_eq!(cost[2], json!(0.05));
        assert!((cost[4].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(t[2].rows[1][4], json!(1.0));
        // Run-queue wait: 0.05 s over 10,000 requests = 5 µs each.
        assert!((cost[10].as_f64().unwrap() - 5.0).abs() < 1e-9, "{cost:?}");
        // Targets: p50 0.2 < 0.25 met; p99 0.6 < 1 met; below Envoy's; CPU met; RSS met;
        // throughput 75% met.
        let verdicts: Vec<(&str, &str)> = t[3]
            .rows
            .iter()
            .map(|r| (r[0].as_str().unwrap(), r[3].as_str().unwrap()))
            .collect();
        assert!(verdicts.iter().all(|(_, v)| *v == "yes"), "{verdicts:?}");
        assert!(verdicts.iter().any(|(w, _)| w.contains("envoy")));
    }

    #[test]
    fn scale_memory_table_and_target() {
        let mut raw = raw();
        let row = |kind: &str, side: &str, rss: f64| {
            json!({"kind": kind, "side": side, "services": 1000, "clusters_before": 4,
                   "clusters": 1004, "synced_after_s": 1.5, "idle_rss_mib": rss})
        };
        raw["scale"] = json!([
            row("mesh-proxy", "client", 30.0),
            row("mesh-proxy", "server", 41.0),
            row("envoy", "client", 90.0),
        ]);
        let t = tables(&raw);
        assert_eq!(t.len(), 5);
        let scale = &t[3];
        scale.check_numbers().unwrap();
        assert!(
            scale.title.contains("1000 more services"),
            "{}",
            scale.title
        );
        assert_eq!(scale.rows[1][4], json!(41.0));
        assert_eq!(
            scale.rows[1][5],
            json!(10.0),
            "the idle RSS before, same sidecar"
        );
        // The target takes the worse mesh-proxy sidecar: 41 MiB misses 40.
        let target = t[4]
            .rows
            .iter()
            .find(|r| r[0].as_str().unwrap().contains("1000 more services"))
            .unwrap();
        assert_eq!(target[1], json!(41.0));
        assert_eq!(target[3], "no");
    }

    #[test]
    fn a_missed_target_says_so() {
        let mut raw = raw();
        for r in raw["runs"].as_array_mut().unwrap() {
            if r["kind"] == "mesh-proxy" && r["mode"] == "fixed" {
                r["summary"]["p50_ms"] = json!(2.0);
            }
        }
        let t = tables(&raw);
        let p50 = &t[3].rows[0];
        assert_eq!(p50[3], "no");
        assert!(p50[1].as_f64().unwrap() > 1.8);
    }
}
