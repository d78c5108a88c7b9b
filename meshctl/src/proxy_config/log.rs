//! `proxy-config log`: shows the proxy's log levels, or sets them through the admin
//! API's `/logging` (as `istioctl proxy-config log` does): `--level debug` for every
//! logger, `--level http:debug,upstream:trace` per logger (Envoy logger names, or
//! mesh-proxy module paths such as `mesh_proxy::xds:debug`), `--reset` back to `warning`.

use anyhow::{Result, bail};
use http::Method;

use super::source::ProxyArgs;

/// Envoy's level names (`warn` is accepted and sent as `warning`).
const LEVELS: &[&str] = &[
    "trace", "debug", "info", "warning", "error", "critical", "off",
];
/// What `--reset` sets, as istioctl does.
const DEFAULT_LEVEL: &str = "warning";

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    proxy: ProxyArgs,
    /// `LEVEL` for every logger, or `LOGGER:LEVEL` pairs, comma separated.
    #[arg(long, conflicts_with = "reset")]
    level: Option<String>,
    /// Set every logger back to `warning`.
    #[arg(long)]
    reset: bool,
}

/// One change to send: `?level=X` or `?<logger>=X`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    All(String),
    Logger(String, String),
}

fn level(s: &str) -> Result<String> {
    let l = s.trim().to_ascii_lowercase();
    let l = if l == "warn" {
        "warning".to_string()
    } else {
        l
    };
    if !LEVELS.contains(&l.as_str()) {
        bail!("unknown log level {s:?} (one of: {})", LEVELS.join(", "));
    }
    Ok(l)
}

fn parse_changes(spec: &str) -> Result<Vec<Change>> {
    spec.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| match p.trim().rsplit_once(':') {
            // `mesh_proxy::xds:debug`: the level follows the last single colon.
            Some((logger, l)) if !logger.is_empty() && !logger.ends_with(':') => {
                Ok(Change::Logger(logger.to_string(), level(l)?))
            }
            _ => Ok(Change::All(level(p)?)),
        })
        .collect()
}

pub async fn run(args: &Args) -> Result<()> {
    let target = args.proxy.target()?;
    let changes = match (&args.level, args.reset) {
        (_, true) => vec![Change::All(DEFAULT_LEVEL.to_string())],
        (Some(spec), false) => {
            let c = parse_changes(spec)?;
            if c.is_empty() {
                bail!("--level is empty (try --level debug or --level http:debug)");
            }
            c
        }
        (None, false) => vec![],
    };
    // Envoy serves /logging on POST only; with no parameters it lists the levels.
    let mut last = None;
    for c in &changes {
        let path = match c {
            Change::All(l) => format!("/logging?level={l}"),
            Change::Logger(name, l) => format!("/logging?{name}={l}"),
        };
        last = Some(target.request(Method::POST, &path).await?);
    }
    let reply = match last {
        Some(r) => r,
        None => target.request(Method::POST, "/logging").await?,
    };
    println!("{}:", target.what);
    print!("{}", reply.text());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_specs() {
        assert_eq!(
            parse_changes("debug").unwrap(),
            [Change::All("debug".into())]
        );
        assert_eq!(
            parse_changes("http:debug, mesh_proxy::xds:TRACE,warn").unwrap(),
            [
                Change::Logger("http".into(), "debug".into()),
                Change::Logger("mesh_proxy::xds".into(), "trace".into()),
                Change::All("warning".into()),
            ]
        );
        let err = parse_changes("http:loud").unwrap_err().to_string();
        assert!(err.contains("unknown log level \"loud\""), "{err}");
    }
}
