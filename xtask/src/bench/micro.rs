//! `cargo xtask bench micro`: runs every criterion bench in the workspace (found with `cargo
//! metadata`: the `[[bench]]` targets, minus the non-criterion ones listed below) and
//! collects criterion's estimates into the report.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::report::{Column, Section, Table};
use super::{Build, cargo, cargo_bench};

/// Bench targets that are not criterion benches (they have their own harness and report
/// section). A new non-criterion bench must be added here.
/// (`http_resilience` and `proxy_path` run in the smoke on their own, see `super::smoke`.)
pub const NOT_CRITERION: [&str; 4] = [
    "control_plane",
    "data_plane",
    "http_resilience",
    "proxy_path",
];

/// A `[[bench]]` target.
#[derive(Debug, Clone)]
pub struct BenchTarget {
    pub package: String,
    pub name: String,
}

/// Every criterion bench target of the workspace, in package and name order.
pub fn targets(root: &Path) -> Result<(Vec<BenchTarget>, PathBuf)> {
    let out = cargo(root)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .context("cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: Value = serde_json::from_slice(&out.stdout).context("cargo metadata output")?;
    let mut found = Vec::new();
    for p in meta["packages"].as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let is_bench = t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bench"));
            let name = t["name"].as_str().unwrap_or_default();
            if is_bench && !NOT_CRITERION.contains(&name) {
                found.push(BenchTarget {
                    package: p["name"].as_str().unwrap_or_default().to_string(),
                    name: name.to_string(),
                });
            }
        }
    }
    found.sort_by(|a, b| (&a.package, &a.name).cmp(&(&b.package, &b.name)));
    let target_dir = PathBuf::from(meta["target_directory"].as_str().unwrap_or("target"));
    Ok((found, target_dir))
}

/// One criterion estimate.
#[derive(Debug, Clone)]
struct Estimate {
    id: String,
    median_ns: f64,
    mean_ns: f64,
    low_ns: f64,
    high_ns: f64,
    throughput: Option<String>,
}

/// Runs the benches (`quick`: criterion's quick mode) with criterion writing under
/// `criterion_home`, and returns the section.
pub fn run(
    root: &Path,
    build: Build,
    quick: bool,
    criterion_home: Option<&Path>,
) -> Result<Section> {
    let (targets, target_dir) = targets(root)?;
    if targets.is_empty() {
        bail!("no criterion benches found in the workspace");
    }
    let home = criterion_home
        .map(Path::to_path_buf)
        .unwrap_or_else(|| target_dir.join("criterion"));
    let mut args = vec!["--noplot".to_string()];
    if quick {
        args.push("--quick".to_string());
    }
    let mut table = Table::new(
        "Criterion estimates (median of the samples; 95% confidence interval of the mean)",
        vec![
            Column::label("crate"),
            Column::label("bench"),
            Column::label("case"),
            Column::label("median"),
            Column::number("median", "ns"),
            Column::number("mean", "ns"),
            Column::number("mean CI low", "ns"),
            Column::number("mean CI high", "ns"),
            Column::label("throughput"),
        ],
    );
    let mut commands = vec![format!(
        "cargo xtask bench micro{}",
        if quick { " --quick" } else { "" }
    )];
    for t in &targets {
        let started = SystemTime::now();
        let cmd = cargo_bench(root, build, &t.package, &t.name, &args, Some(&home))?;
        commands.push(cmd);
        let estimates = collect(&home, started)?;
        if estimates.is_empty() {
            bail!(
                "bench {} of {} produced no criterion estimates under {}",
                t.name,
                t.package,
                home.display()
            );
        }
        for e in estimates {
            table.push(vec![
                json!(t.package),
                json!(t.name),
                json!(e.id),
                json!(human_ns(e.median_ns)),
                json!(e.median_ns),
                json!(e.mean_ns),
                json!(e.low_ns),
                json!(e.high_ns),
                json!(e.throughput.unwrap_or_default()),
            ]);
        }
    }
    let mut section = Section::new(
        root,
        "micro",
        "Micro benchmarks (criterion): hot paths",
        commands,
    );
    section.notes.push(
        "Route matching on a 1,000-route table and access-log formatting (mesh-proxy http_routing), load-balancer picks (mesh-proxy lb_pick), one proxy's translation for a 1,000-service mesh (mesh-control translate), an endpoint push to 1,000 delta clients over real gRPC (mesh-control push_fanout).".to_string(),
    );
    if quick {
        section
            .notes
            .push("Quick mode (criterion --quick): fewer samples, wider intervals.".to_string());
    }
    section.tables.push(table);
    Ok(section)
}

/// Estimates criterion wrote under `home` since `since`.
fn collect(home: &Path, since: SystemTime) -> Result<Vec<Estimate>> {
    let mut files = Vec::new();
    find_benchmarks(home, &mut files);
    let mut out = Vec::new();
    for bench_json in files {
        let fresh = std::fs::metadata(&bench_json)
            .and_then(|m| m.modified())
            .is_ok_and(|m| m >= since);
        if !fresh {
            continue;
        }
        let dir = bench_json.parent().unwrap_or(home);
        let read = |p: PathBuf| -> Result<Value> {
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
        };
        let meta = read(bench_json.clone())?;
        let est = read(dir.join("estimates.json"))?;
        let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        let throughput = match &meta["throughput"] {
            Value::Object(m) => m
                .iter()
                .next()
                .map(|(kind, n)| format!("{n} {}", kind.to_lowercase())),
            _ => None,
        };
        out.push(Estimate {
            id: meta["full_id"].as_str().unwrap_or("?").to_string(),
            median_ns: f(&est["median"]["point_estimate"]),
            mean_ns: f(&est["mean"]["point_estimate"]),
            low_ns: f(&est["mean"]["confidence_interval"]["lower_bound"]),
            high_ns: f(&est["mean"]["confidence_interval"]["upper_bound"]),
            throughput,
        });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Every `new/benchmark.json` under `dir`.
fn find_benchmarks(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            find_benchmarks(&path, out);
        } else if path.file_name().is_some_and(|n| n == "benchmark.json")
            && path
                .parent()
                .and_then(Path::file_name)
                .is_some_and(|n| n == "new")
        {
            out.push(path);
        }
    }
}

fn human_ns(ns: f64) -> String {
    if !ns.is_finite() {
        "?".to_string()
    } else if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_fresh_estimates_only() {
        let dir = tempfile::tempdir().unwrap();
        let write = |rel: &str, id: &str, median: f64| {
            let d = dir.path().join(rel).join("new");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("benchmark.json"),
                json!({"full_id": id, "throughput": {"Elements": 1000}}).to_string(),
            )
            .unwrap();
            std::fs::write(
                d.join("estimates.json"),
                json!({
                    "median": {"point_estimate": median},
                    "mean": {"point_estimate": median + 1.0,
                             "confidence_interval": {"lower_bound": median, "upper_bound": median + 2.0}}
                })
                .to_string(),
            )
            .unwrap();
        };
        write("old/case", "old", 5.0);
        let since = SystemTime::now();
        std::thread::sleep(std::time::Duration::from_millis(20));
        write("group/fn", "group/fn", 1500.0);
        let got = collect(dir.path(), since).unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].id, "group/fn");
        assert_eq!(got[0].median_ns, 1500.0);
        assert_eq!(got[0].throughput.as_deref(), Some("1000 elements"));
        assert_eq!(human_ns(1500.0), "1.50 µs");
    }
}
