//! The control plane under test: the real `mesh-control` binary, spawned with the generated
//! `--config-dir`, and its resource use read from `/proc/<pid>`.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `mesh-control`; killed (by its own PID) and reaped on drop.
pub struct Server {
    child: Child,
    pub xds: SocketAddr,
    pub monitoring: SocketAddr,
    pub log: PathBuf,
    ticks_per_second: f64,
    /// Log length when the server became ready: problems before are the initial load's
    /// transient ones (files read one by one, references resolve once all are in).
    ready_log_len: usize,
}

/// CPU time and memory of the process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    /// User + system CPU seconds, all threads.
    pub cpu_seconds: f64,
    /// Resident set now and at its peak (VmHWM), MiB.
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
}

fn free_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

impl Server {
    /// Starts the binary and waits (bounded) until it reports ready.
    pub fn start(config_dir: &Path, log: PathBuf, extra: &[String]) -> Result<Server, String> {
        let xds = free_port().map_err(|e| e.to_string())?;
        let monitoring = free_port().map_err(|e| e.to_string())?;
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new(env!("CARGO_BIN_EXE_mesh-control"))
            .arg("--config-dir")
            .arg(config_dir)
            .args(["--xds-addr", &xds.to_string()])
            .args(["--monitoring-addr", &monitoring.to_string()])
            .args(["--log-level", "info"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("starting mesh-control: {e}"))?;
        let mut server = Server {
            child,
            xds,
            monitoring,
            log,
            ticks_per_second: clock_ticks(),
            ready_log_len: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "mesh-control exited during startup ({status}); log tail:\n{}",
                    server.log_tail()
                ));
            }
            if http_status(monitoring, "/ready") == Some(200) {
                server.ready_log_len = std::fs::read(&server.log).map_or(0, |l| l.len());
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "mesh-control not ready within 120 s; log tail:\n{}",
                    server.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn stats(&self) -> ProcStats {
        let pid = self.pid();
        let mut out = ProcStats::default();
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // Fields after the parenthesised command name; utime and stime are the 14th
            // and 15th fields of the whole line.
            if let Some((_, rest)) = stat.rsplit_once(')') {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
                out.cpu_seconds = (ticks(11) + ticks(12)) / self.ticks_per_second;
            }
        }
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            for line in status.lines() {
                let kib = |l: &str| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<f64>().ok())
                        .unwrap_or(0.0)
                        / 1024.0
                };
                if line.starts_with("VmRSS:") {
                    out.rss_mib = kib(line);
                } else if line.starts_with("VmHWM:") {
                    out.peak_rss_mib = kib(line);
                }
            }
        }
        out
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The server's Prometheus text, for the metrics the report quotes.
    pub fn metrics(&self) -> String {
        http_get(self.monitoring, "/metrics").unwrap_or_default()
    }

    /// Warning and error lines the server logged once ready (a clean run has none).
    pub fn log_problems(&self) -> Vec<String> {
        let log = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(log.get(self.ready_log_len..).unwrap_or_default())
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .take(5)
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `getconf CLK_TCK` (the unit of utime/stime in /proc), 100 when it cannot be read.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    http_get(addr, path)?.get(9..12)?.parse().ok()
}

/// A metric's value summed over its label sets, from Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}
