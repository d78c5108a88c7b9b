//! Command-line flags. Each also reads an environment variable; where Istio has one for the
//! same knob (`PILOT_DEBOUNCE_AFTER`, `PILOT_DEBOUNCE_MAX`, `PILOT_PUSH_THROTTLE`), that is
//! the name, so an istiod deployment's settings carry over.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "mesh-control",
    version,
    about = "The mesh control plane: Istio config in, Envoy xDS out"
)]
pub struct Args {
    /// Directory of Istio and Kubernetes YAML/JSON to serve (watched for changes).
    #[arg(long, env = "MESH_CONFIG_DIR")]
    pub config_dir: PathBuf,

    /// Plaintext ADS (xDS) gRPC address.
    #[arg(long, env = "MESH_XDS_ADDR", default_value = "0.0.0.0:15010")]
    pub xds_addr: SocketAddr,

    /// Metrics and /debug endpoints.
    #[arg(long, env = "MESH_MONITORING_ADDR", default_value = "0.0.0.0:15014")]
    pub monitoring_addr: SocketAddr,

    /// Log filter, e.g. `info` or `info,mesh_control::xds=debug`.
    #[arg(long, env = "MESH_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log as JSON lines instead of text.
    #[arg(long, env = "MESH_LOG_JSON")]
    pub log_json: bool,

    /// Quiet period before a config change is pushed (`100ms`, `1s`, `0` to disable).
    #[arg(long, env = "PILOT_DEBOUNCE_AFTER", default_value = "100ms", value_parser = parse_duration)]
    pub debounce_after: Duration,

    /// Longest a change waits under a steady stream of changes.
    #[arg(long, env = "PILOT_DEBOUNCE_MAX", default_value = "10s", value_parser = parse_duration)]
    pub debounce_max: Duration,

    /// Proxies pushed concurrently.
    #[arg(long, env = "PILOT_PUSH_THROTTLE", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub push_concurrency: u32,

    /// Configs generated at once (CPU-bound work); default: the number of CPUs.
    #[arg(long, env = "MESH_GENERATE_CONCURRENCY", value_parser = clap::value_parser!(u32).range(1..))]
    pub generate_concurrency: Option<u32>,

    /// How often the xDS server pings an idle proxy connection (HTTP/2 PING), as istiod's
    /// `--keepaliveInterval`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub keepalive_interval: Duration,

    /// How long the xDS server waits for a ping's answer before it closes the connection
    /// (the proxy reconnects), as istiod's `--keepaliveTimeout`.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,
}

/// `100ms`, `1.5s`, `2m`, `0` (jiff's friendly format, as Go's `time.ParseDuration` takes).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    let d: jiff::SignedDuration = s
        .parse()
        .map_err(|e| format!("invalid duration {s:?}: {e} (examples: 100ms, 10s, 1m)"))?;
    Duration::try_from(d).map_err(|_| format!("invalid duration {s:?}: must not be negative"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").unwrap_err().contains("soon"));
    }

    #[test]
    fn defaults() {
        let a = Args::try_parse_from(["mesh-control", "--config-dir", "/tmp"]).unwrap();
        assert_eq!(a.xds_addr.port(), 15010);
        assert_eq!(a.monitoring_addr.port(), 15014);
        assert_eq!(a.debounce_after, Duration::from_millis(100));
        assert_eq!(a.debounce_max, Duration::from_secs(10));
        assert_eq!(a.push_concurrency, 100);
        assert!(
            Args::try_parse_from(["mesh-control"]).is_err(),
            "--config-dir is required"
        );
    }
}
