//! The packaged load generators: `oha` (crates.io; fixed rate with latency correction and
//! maximum rate, HTTP/1.1 and h2c) and `h2load` (Debian's nghttp2-client; maximum rate over
//! HTTP/2), their command lines and the parsing of what they print.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::stats::Summary;

/// `$MESH_OHA`, else `oha` where `tools/oha.sh` installs it, else on `$PATH`.
pub fn find_oha() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MESH_OHA") {
        return Some(PathBuf::from(p));
    }
    let cached = Path::new("/var/cache/mesh-tools/oha/bin/oha");
    if cached.is_file() {
        return Some(cached.to_path_buf());
    }
    which("oha")
}

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// `<tool> --version`'s first non-empty line (Envoy prints an empty one first, then
/// `<path>  version: <sha>/<version>/...`, shortened to what follows `version: `).
pub fn version(bin: &Path) -> Option<String> {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| match l.split_once(" version: ") {
            Some((_, v)) => v.trim().to_string(),
            None => l.to_string(),
        })
}

/// oha's arguments: `rate` None is its maximum rate.
pub fn oha_args(
    url: &str,
    h2: bool,
    connections: usize,
    rate: Option<f64>,
    seconds: f64,
) -> Vec<String> {
    let mut a = vec![
        "--no-tui".to_string(),
        "--output-format".into(),
        "json".into(),
        "-z".into(),
        format!("{}ms", (seconds * 1000.0).round() as u64),
        "-c".into(),
        connections.to_string(),
        // Requests in flight at the deadline finish (instead of counting as aborted).
        "-w".into(),
    ];
    if let Some(r) = rate {
        a.extend(["-q".into(), r.to_string(), "--latency-correction".into()]);
    }
    if h2 {
        a.push("--http2".into());
    }
    a.push(url.to_string());
    a
}

/// oha's JSON: successes are 2xx answers; every other answer and every error is an
/// error; latencies (seconds in the JSON) in ms.
pub fn parse_oha(json: &str) -> Result<Summary> {
    let v: Value = serde_json::from_str(json).context("oha printed no JSON")?;
    let s = &v["summary"];
    let seconds = s["total"].as_f64().context("oha JSON: no summary.total")?;
    let mut ok = 0;
    let mut errors = 0;
    for (code, n) in v["statusCodeDistribution"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let n = n.as_u64().unwrap_or(0);
        if code.starts_with('2') {
            ok += n;
        } else {
            errors += n;
        }
    }
    for (_, n) in v["errorDistribution"].as_object().into_iter().flatten() {
        errors += n.as_u64().unwrap_or(0);
    }
    let p = &v["latencyPercentiles"];
    let ms = |k: &str| p[k].as_f64().map(|s| s * 1000.0);
    Ok(Summary {
        ok,
        errors,
        seconds,
        rps: if seconds > 0.0 {
            ok as f64 / seconds
        } else {
            0.0
        },
        p50_ms: ms("p50"),
        p90_ms: ms("p90"),
        p99_ms: ms("p99"),
        p999_ms: ms("p99.9"),
    })
}

/// h2load's arguments: `connections` clients, one stream each, for `seconds`.
pub fn h2load_args(url: &str, connections: usize, seconds: f64) -> Vec<String> {
    vec![
        "-c".into(),
        connections.to_string(),
        "-m".into(),
        "1".into(),
        "-t".into(),
        "1".into(),
        "-D".into(),
        format!("{}", seconds.max(1.0).round() as u64),
        "--warm-up-time=1".into(),
        url.to_string(),
    ]
}

/// h2load's text: `finished in 5.00s, 12345.67 req/s, ...` and
/// `requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout`.
pub fn parse_h2load(text: &str) -> Result<Summary> {
    let finished = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .with_context(|| format!("h2load printed no summary: {text}"))?;
    let parts: Vec<&str> = finished.split(',').map(str::trim).collect();
    let seconds = parts
        .first()
        .and_then(|p| p.strip_prefix("finished in "))
        .and_then(parse_h2load_duration)
        .context("h2load: no duration")?;
    let rps: f64 = parts
        .get(1)
        .and_then(|p| p.strip_suffix(" req/s"))
        .and_then(|p| p.parse().ok())
        .context("h2load: no req/s")?;
    let requests = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .context("h2load: no requests line")?;
    let count = |what: &str| -> u64 {
        requests
            .trim_start_matches("requests:")
            .split(',')
            .map(str::trim)
            .find_map(|p| p.strip_suffix(what)?.trim().parse().ok())
            .unwrap_or(0)
    };
    let status_2xx = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .and_then(|l| l.split(',').next())
        .and_then(|p| {
            p.trim()
                .trim_start_matches("status codes:")
                .trim()
                .split(' ')
                .next()
        })
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    let succeeded = count("succeeded");
    if succeeded == 0 && count("total") > 0 {
        bail!("h2load: no request succeeded: {requests}");
    }
    Ok(Summary {
        ok: status_2xx.min(succeeded),
        errors: count("failed") + count("errored") + count("timeout"),
        seconds,
        rps,
        ..Summary::default()
    })
}

fn parse_h2load_duration(s: &str) -> Option<f64> {
    if let Some(ms) = s.strip_suffix("ms") {
        ms.parse::<f64>().ok().map(|v| v / 1000.0)
    } else {
        s.strip_suffix('s')?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2load_output() {
        let text = "starting benchmark...\n\nfinished in 5.00s, 12345.60 req/s, 13.27MB/s\nrequests: 61728 total, 61792 started, 61728 done, 61728 succeeded, 0 failed, 0 errored, 0 timeout\nstatus codes: 61728 2xx, 0 3xx, 0 4xx, 0 5xx\n";
        let s = parse_h2load(text).unwrap();
        assert_eq!(s.rps, 12345.6);
        assert_eq!(s.ok, 61728);
        assert_eq!(s.errors, 0);
        assert_eq!(s.seconds, 5.0);
        assert!(parse_h2load("finished in 1.00s, 0.00 req/s\nrequests: 5 total, 5 started, 5 done, 0 succeeded, 5 failed, 0 errored, 0 timeout\n").is_err());
    }

    #[test]
    fn oha_json() {
        let j = r#"{"summary":{"successRate":1.0,"total":2.0,"requestsPerSec":999.5},
            "latencyPercentiles":{"p50":0.0002,"p90":0.0003,"p99":0.0005,"p99.9":0.001},
            "statusCodeDistribution":{"200":1998,"503":1},"errorDistribution":{"connection closed":1}}"#;
        let s = parse_oha(j).unwrap();
        assert_eq!((s.ok, s.errors), (1998, 2));
        assert_eq!(s.rps, 999.0);
        assert_eq!(s.p50_ms, Some(0.2));
        assert_eq!(s.p999_ms, Some(1.0));
        let a = oha_args("http://x/", true, 64, Some(1000.0), 10.0);
        assert!(
            a.contains(&"--latency-correction".to_string()) && a.contains(&"--http2".to_string())
        );
        assert!(a.contains(&"10000ms".to_string()));
    }
}
