//! Runs scenarios on the local backend, each on a fresh cluster (a local cluster comes up
//! in about three seconds, so isolation costs little), printing pass/fail per scenario
//! and a summary. A failing scenario's logs, config directory and the control plane's
//! sync state are copied to the artifacts directory before its cluster is torn down.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{Env, Scenario};
use crate::cluster::Cluster;
use crate::local::{ClusterConfig, LocalCluster, MONITORING_PORT, sync};

/// Istio's mesh config as the scenarios run it: access logs on (as in Istio's demo
/// profile), so scenarios can assert on response flags.
pub const MESH_CONFIG: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: istio
  namespace: istio-system
data:
  mesh: |-
    accessLogFile: /dev/stdout
"#;

pub struct Options {
    pub scenarios: Vec<Scenario>,
    /// Leave the cluster of the first failing scenario (or, when all pass, of the last one)
    /// running, and stop there.
    pub keep: bool,
    pub artifacts: PathBuf,
    pub cluster: ClusterConfig,
}

#[derive(Debug)]
pub struct Outcome {
    pub name: &'static str,
    pub passed: bool,
    pub duration: Duration,
    pub error: Option<String>,
}

/// Runs the scenarios; returns one outcome per scenario run.
pub fn run(opts: &Options) -> Vec<Outcome> {
    let total = opts.scenarios.len();
    let mut outcomes = Vec::new();
    for (i, s) in opts.scenarios.iter().enumerate() {
        eprintln!("\n==> [{}/{total}] {}: {}", i + 1, s.name, s.about);
        let t = Instant::now();
        let last = i + 1 == total;
        let (result, cluster) = run_one(s, &opts.cluster);
        let duration = t.elapsed();
        let error = result.err().map(|e| format!("{e:#}"));
        let passed = error.is_none();
        if let (Some(c), false) = (&cluster, passed) {
            let to = opts.artifacts.join(s.name);
            match save_artifacts(c, &to) {
                Ok(()) => eprintln!("    artifacts: {}", to.display()),
                Err(e) => eprintln!("    could not save artifacts: {e:#}"),
            }
        }
        match &error {
            None => eprintln!("    PASS {} ({:.1} s)", s.name, duration.as_secs_f64()),
            Some(e) => eprintln!(
                "    FAIL {} ({:.1} s): {}",
                s.name,
                duration.as_secs_f64(),
                e.replace('\n', "\n        ")
            ),
        }
        outcomes.push(Outcome {
            name: s.name,
            passed,
            duration,
            error,
        });
        let stop = opts.keep && (!passed || last);
        if let Some(c) = cluster {
            if stop {
                eprintln!(
                    "    cluster kept: MESH_LOCAL_DIR={0} meshctl --local get pods (or proxy-config ...); remove it with MESH_LOCAL_DIR={0} target/debug/mesh-local down",
                    c.dir().display()
                );
                c.keep();
            } else {
                drop(c);
            }
        }
        if stop {
            break;
        }
    }
    outcomes
}

fn run_one(s: &Scenario, cfg: &ClusterConfig) -> (Result<()>, Option<LocalCluster>) {
    let cluster = match LocalCluster::up(cfg.clone()) {
        Ok(c) => c,
        Err(e) => return (Err(e.context("the local cluster did not come up")), None),
    };
    let result = cluster
        .apply(MESH_CONFIG)
        .context("mesh config")
        .and_then(|()| {
            let env = Env::new(&cluster, s.name);
            match std::panic::catch_unwind(AssertUnwindSafe(|| (s.run)(&env))) {
                Ok(r) => r,
                Err(p) => {
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    Err(anyhow::anyhow!("scenario panicked: {msg}"))
                }
            }
        });
    (result, Some(cluster))
}

/// Logs, config and the control plane's view, for diagnosing a failure after teardown.
fn save_artifacts(c: &LocalCluster, to: &Path) -> Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to).with_context(|| format!("cannot clear {}", to.display()))?;
    }
    std::fs::create_dir_all(to)?;
    copy_dir(&c.dir().join("logs"), &to.join("logs"))?;
    copy_dir(&c.config_dir(), &to.join("config"))?;
    let node = c.state().node_netns;
    let monitoring = format!("127.0.0.1:{MONITORING_PORT}");
    for (file, path) in [
        ("syncz.json", "/debug/syncz"),
        ("configz.json", "/debug/configz"),
    ] {
        if let Ok((_, body)) = sync::get_in(&node, &monitoring, path) {
            std::fs::write(to.join(file), body)?;
        }
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    if !from.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("cannot copy {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// A summary line keeps this much of the error; the full message is printed above it.
const SUMMARY_ERROR_CHARS: usize = 240;

fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((at, _)) => format!("{}... (full message above)", &s[..at]),
    }
}

/// The summary table; returns whether every scenario passed.
pub fn summary(outcomes: &[Outcome], wall: Duration) -> (String, bool) {
    let passed = outcomes.iter().filter(|o| o.passed).count();
    let failed = outcomes.len() - passed;
    let width = outcomes.iter().map(|o| o.name.len()).max().unwrap_or(0);
    let mut out = format!(
        "e2e: {passed} passed, {failed} failed ({:.0} s)\n",
        wall.as_secs_f64()
    );
    for o in outcomes {
        let first = o
            .error
            .as_deref()
            .and_then(|e| e.lines().next())
            .unwrap_or("");
        let first = clip(first, SUMMARY_ERROR_CHARS);
        out.push_str(&format!(
            "  {}  {:<width$}  {:>5.1} s  {}\n",
            if o.passed { "PASS" } else { "FAIL" },
            o.name,
            o.duration.as_secs_f64(),
            first
        ));
    }
    (out, failed == 0 && !outcomes.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lists_every_scenario_and_fails_on_any_failure() {
        let o = |name, passed: bool| Outcome {
            name,
            passed,
            duration: Duration::from_millis(1500),
            error: (!passed).then(|| "proxy sleep.default rejected LDS (NACK): x\nmore".into()),
        };
        let (text, ok) = summary(
            &[o("canary", true), o("tcp", false)],
            Duration::from_secs(9),
        );
        assert!(!ok);
        assert!(
            text.starts_with("e2e: 1 passed, 1 failed (9 s)\n"),
            "{text}"
        );
        assert!(text.contains("  PASS  canary    1.5 s  \n"), "{text}");
        assert!(
            text.contains("  FAIL  tcp       1.5 s  proxy sleep.default rejected LDS (NACK): x\n"),
            "{text}"
        );
        assert!(!text.contains("more"));
        let long = Outcome {
            name: "fault",
            passed: false,
            duration: Duration::from_millis(1500),
            error: Some("é".repeat(1000)),
        };
        let (text, _) = summary(&[long], Duration::from_secs(1));
        assert!(text.len() < 600, "{text}");
        assert!(text.contains("... (full message above)"), "{text}");
        assert!(summary(&[o("canary", true)], Duration::ZERO).1);
        assert!(
            !summary(&[], Duration::ZERO).1,
            "running nothing is not a pass"
        );
    }
}
