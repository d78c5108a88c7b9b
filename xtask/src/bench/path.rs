//! `cargo xtask bench path`: the instructions one HTTP/1.1 request costs mesh-proxy,
//! counted by callgrind on `mesh-proxy/benches/proxy_path.rs` (the golden sidecar's
//! outbound HTTP connection manager, a 1 KiB upstream, one keep-alive connection).
//!
//! Time on a shared VM moves by 2x between runs; an instruction count does not, so this
//! is the figure to compare commits with. Two counts: the proxy's tasks alone
//! (callgrind's `--toggle-collect` on the downstream connection's `serve` and the
//! upstream connection's task), and the whole process through the proxy minus the whole
//! process with the client dialing the upstream directly, which adds the proxy's share
//! of the runtime (event loop, timers, wakeups) that no task owns. Each count runs twice
//! (`SHORT` and `LONG` requests) and the difference, over the difference in requests,
//! is the cost per request without the setup; per function the same difference gives
//! where it goes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::report::{Column, Section, Table};
use super::{Build, bench_executable};

/// The functions whose calls are counted (everything they call included).
const COUNTED: [&str; 2] = [
    "mesh_proxy::http::server::serve::*",
    "mesh_proxy::http::pool::HostPool::connect_h1::*",
];

/// Requests of the two runs: figures, and the smoke check (a dev build under valgrind).
const RUNS: (u64, u64) = (500, 2500);
const SMOKE_RUNS: (u64, u64) = (20, 60);

/// Functions listed in the report.
const TOP: usize = 15;

pub fn run(root: &Path, build: Build, out_dir: &Path) -> Result<Section> {
    which_valgrind()?;
    let exe = bench_executable(root, build, "mesh-proxy", "proxy_path")?;
    let dir = out_dir.join("path");
    std::fs::create_dir_all(&dir)?;
    let (short, long) = if build == Build::Dev {
        SMOKE_RUNS
    } else {
        RUNS
    };
    let n = (long - short) as f64;
    let per = |mode: Mode| -> Result<Count> {
        let a = count(&exe, short, &dir, mode)?;
        let b = count(&exe, long, &dir, mode)?;
        Ok(b.minus(&a))
    };
    let tasks = per(Mode::Tasks)?;
    let through = per(Mode::Whole { direct: false })?;
    let direct = per(Mode::Whole { direct: true })?;
    let share = through.minus(&direct);
    let per_request = tasks.total as f64 / n;
    let whole_share = share.total as f64 / n;
    let mut functions: Vec<(String, f64)> = share
        .functions
        .iter()
        .map(|(name, &ir)| (name.clone(), ir as f64 / n))
        .collect();
    functions.sort_by(|x, y| y.1.total_cmp(&x.1));
    functions.truncate(TOP);

    let mut section = Section::new(
        root,
        "path",
        "Data plane: instructions per HTTP/1.1 request (callgrind)",
        vec![
            "cargo xtask bench path".to_string(),
            format!(
                "valgrind --tool=callgrind --collect-atstart=no {} {} --requests {short}|{long}",
                COUNTED
                    .iter()
                    .map(|f| format!("--toggle-collect='{f}'"))
                    .collect::<Vec<_>>()
                    .join(" "),
                exe.display()
            ),
            format!(
                "valgrind --tool=callgrind {} --requests {short}|{long} [--direct]",
                exe.display()
            ),
        ],
    );
    section
        .versions
        .insert("valgrind".into(), which_valgrind()?);
    let mut total = Table::new(
        "Instructions per request (the difference of two runs over the difference of their requests)",
        vec![
            Column::label("counted"),
            Column::number("instructions per request", ""),
            Column::number("requests (short run)", ""),
            Column::number("requests (long run)", ""),
        ],
    );
    let rows = [
        (
            "mesh-proxy's tasks (downstream and upstream connection)",
            per_request,
        ),
        (
            "whole process, client -> mesh-proxy -> upstream",
            through.total as f64 / n,
        ),
        (
            "whole process, client -> upstream (direct)",
            direct.total as f64 / n,
        ),
        ("mesh-proxy's share (through minus direct)", whole_share),
    ];
    for (what, ir) in rows {
        total.push(vec![
            json!(what),
            json!(ir.round()),
            json!(short),
            json!(long),
        ]);
    }
    let mut top = Table::new(
        &format!(
            "Where mesh-proxy's share goes: the {TOP} functions with the most instructions of their own (per request, through minus direct)"
        ),
        vec![
            Column::label("function"),
            Column::number("instructions per request", ""),
            Column::number("share", "%"),
        ],
    );
    for (name, ir) in &functions {
        top.push(vec![
            json!(name),
            json!(ir.round()),
            json!((ir / whole_share * 1000.0).round() / 10.0),
        ]);
    }
    section.tables = vec![total, top];
    section.notes = vec![
        "One thread runs the client, the proxy and the upstream (hyper on both ends), so the \
         runs are deterministic. The tasks count is everything the proxy's connection tasks \
         run, hyper's HTTP/1.1 codec included; the share adds what the runtime spends on the \
         proxy's sockets and wakeups, and the extra headers the upstream and client parse."
            .to_string(),
    ];
    section.raw = json!({
        "per_request": per_request,
        "whole_share_per_request": whole_share,
        "through_per_request": through.total as f64 / n,
        "direct_per_request": direct.total as f64 / n,
        "requests": [short, long],
        "functions": functions.iter().map(|(n, ir)| json!({"function": n, "per_request": ir})).collect::<Vec<Value>>(),
    });
    Ok(section)
}

/// Whether `valgrind` runs here.
pub fn valgrind_installed() -> bool {
    which_valgrind().is_ok()
}

fn which_valgrind() -> Result<String> {
    let out = Command::new("valgrind")
        .arg("--version")
        .output()
        .context("valgrind is not installed (Debian: apt-get install valgrind)")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Only the proxy's connection tasks.
    Tasks,
    /// Every instruction of the process; `direct` leaves the proxy out of the path.
    Whole { direct: bool },
}

#[derive(Debug, Default)]
struct Count {
    total: i64,
    /// Instructions of each function's own code (callgrind_annotate's exclusive cost).
    functions: HashMap<String, i64>,
}

impl Count {
    fn minus(&self, other: &Count) -> Count {
        let mut functions = self.functions.clone();
        for (name, ir) in &other.functions {
            *functions.entry(name.clone()).or_insert(0) -= ir;
        }
        Count {
            total: self.total - other.total,
            functions,
        }
    }
}

fn count(exe: &Path, requests: u64, dir: &Path, mode: Mode) -> Result<Count> {
    let name = match mode {
        Mode::Tasks => "tasks",
        Mode::Whole { direct: false } => "through",
        Mode::Whole { direct: true } => "direct",
    };
    let out_file: PathBuf = dir.join(format!("callgrind.out.{name}.{requests}"));
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind");
    if let Mode::Tasks = mode {
        cmd.arg("--collect-atstart=no");
        for f in COUNTED {
            cmd.arg(format!("--toggle-collect={f}"));
        }
    }
    cmd.arg(format!("--callgrind-out-file={}", out_file.display()));
    cmd.arg(exe).args(["--requests", &requests.to_string()]);
    if let Mode::Whole { direct: true } = mode {
        cmd.arg("--direct");
    }
    eprintln!("==> {cmd:?}");
    let out = cmd.output().context("cannot run valgrind")?;
    if !out.status.success() {
        bail!(
            "callgrind run of {requests} requests failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let annotate = Command::new("callgrind_annotate")
        .arg("--auto=no")
        .arg(&out_file)
        .output()
        .context("cannot run callgrind_annotate (part of valgrind)")?;
    if !annotate.status.success() {
        bail!("callgrind_annotate {} failed", out_file.display());
    }
    parse_annotate(&String::from_utf8_lossy(&annotate.stdout))
        .with_context(|| format!("reading callgrind_annotate {}", out_file.display()))
}

/// The program total and each function's own instructions from `callgrind_annotate`'s
/// default (exclusive) listing: `1,234 (5.6%)  file:function [object]`.
fn parse_annotate(text: &str) -> Result<Count> {
    let number = |s: &str| s.replace(',', "").parse::<i64>().ok();
    let mut total = None;
    let mut functions = HashMap::new();
    // The listing starts after its `Ir  file:function` heading and its rule, and ends at
    // the next rule or blank line (source annotations may follow).
    let mut in_listing = false;
    for line in text.lines() {
        let line = line.trim();
        if line.ends_with("file:function") {
            in_listing = true;
            continue;
        }
        if in_listing && !functions.is_empty() && (line.is_empty() || line.starts_with("---")) {
            in_listing = false;
        }
        let Some((ir, rest)) = line.split_once(' ') else {
            continue;
        };
        let Some(ir) = number(ir) else { continue };
        let rest = rest.trim_start();
        if rest.ends_with("PROGRAM TOTALS") {
            total = Some(ir);
            continue;
        }
        if !in_listing {
            continue;
        }
        // Past "(12.3%)", the location: `file:function [object]`.
        let Some((_, location)) = rest.split_once(')') else {
            continue;
        };
        let location = location.trim();
        let location = location
            .rsplit_once(" [")
            .map_or(location, |(l, _)| l)
            .trim();
        let function = location.split_once(':').map_or(location, |(_, f)| f);
        *functions.entry(function.to_string()).or_insert(0) += ir;
    }
    Ok(Count {
        total: total.context("no PROGRAM TOTALS line")?,
        functions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_callgrind_annotate() {
        let text = "\
--------------------------------------------------------------------------------
45,900,014 (100.0%)  PROGRAM TOTALS

--------------------------------------------------------------------------------
Ir                  file:function
--------------------------------------------------------------------------------
5,383,906 (11.73%)  ./string/../memmove-vec-unaligned-erms.S:__memcpy_avx_unaligned_erms [/usr/lib/x86_64-linux-gnu/libc.so.6]
1,654,000 ( 3.60%)  /root/http-1.5.0/src/header/map.rs:http::header::map::hash_elem_using [/work/target/proxy_path]
  662,000 ( 1.44%)  /rustc/library/core/src/num/uint_macros.rs:http::header::map::hash_elem_using

--------------------------------------------------------------------------------
-- Auto-annotated source: /work/main/mesh-proxy/src/http/forward.rs
--------------------------------------------------------------------------------
  51,136 ( 0.11%)  => ???:tokio::runtime::task::raw::poll (12,505x)
";
        let c = parse_annotate(text).unwrap();
        assert_eq!(c.total, 45_900_014);
        assert_eq!(c.functions["__memcpy_avx_unaligned_erms"], 5_383_906);
        assert_eq!(c.functions.len(), 2, "{:?}", c.functions.keys());
        // Inlined parts of one function (listed by source file) add up.
        assert_eq!(
            c.functions["http::header::map::hash_elem_using"],
            1_654_000 + 662_000
        );
    }

    #[test]
    fn counts_subtract_per_function() {
        let count = |total, fs: &[(&str, i64)]| Count {
            total,
            functions: fs.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
        };
        let through = count(100, &[("memcpy", 40), ("proxy", 30)]);
        let direct = count(60, &[("memcpy", 25), ("client", 5)]);
        let d = through.minus(&direct);
        assert_eq!(d.total, 40);
        assert_eq!(d.functions["memcpy"], 15);
        assert_eq!(d.functions["proxy"], 30);
        // A function only the baseline runs counts against the difference.
        assert_eq!(d.functions["client"], -5);
    }

    #[test]
    fn a_listing_without_totals_is_an_error() {
        assert!(parse_annotate("Ir file:function\n").is_err());
    }
}
