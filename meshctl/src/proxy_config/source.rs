//! Where a proxy's configuration is read from: a pod's proxy (found through the cluster
//! backend), an admin URL, or a saved config dump.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use http::Method;

use crate::envoy::dump::ConfigDump;
use crate::http::{self as client, Endpoint, HttpError, Reply, Route};
use crate::pods::{self, PodRef};

/// Which proxy to talk to.
#[derive(clap::Args, Debug, Clone)]
pub struct ProxyArgs {
    /// The pod whose proxy to read: NAME[.NAMESPACE], or an app label such as `sleep`.
    #[arg(value_name = "POD[.NAMESPACE]")]
    pub pod: Option<String>,
    /// The namespace of POD when it has no `.NAMESPACE`.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Talk to this admin API (`http://127.0.0.1:15000`) instead of finding a pod.
    #[arg(long, value_name = "URL", conflicts_with = "pod")]
    pub admin: Option<String>,
    /// How long each admin request may take (`10s`, `500ms`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Which proxy, or a saved config dump instead.
#[derive(clap::Args, Debug, Clone)]
pub struct Source {
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// Read a saved `/config_dump` (`-` for stdin) instead of a live proxy.
    #[arg(short = 'f', long = "file", value_name = "FILE", conflicts_with_all = ["pod", "admin"])]
    pub file: Option<String>,
}

/// `10s`, `500ms`, `1m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = s
        .parse()
        .map_err(|e| format!("invalid duration {s:?}: {e} (examples: 500ms, 10s, 1m)"))?;
    Duration::try_from(d).map_err(|_| format!("invalid duration {s:?}: must not be negative"))
}

/// A proxy's admin API and how to talk about it in messages.
#[derive(Debug, Clone)]
pub struct Target {
    pub endpoint: Endpoint,
    /// "the proxy of sleep.default" or "the admin API at http://...".
    pub what: String,
    /// The proxy's log, when known (named in hints).
    pub log: Option<PathBuf>,
    pub timeout: Duration,
}

impl ProxyArgs {
    /// Finds the proxy: `--admin`, else the pod through the cluster backend.
    pub fn target(&self) -> Result<Target> {
        if let Some(url) = &self.admin {
            let endpoint = Endpoint::parse(url, Route::Direct)?;
            return Ok(Target {
                what: format!("the admin API at {endpoint}"),
                endpoint,
                log: None,
                timeout: self.timeout,
            });
        }
        let Some(pod) = &self.pod else {
            bail!(
                "which proxy? name a pod (POD[.NAMESPACE]), or pass --admin URL (or -f CONFIG_DUMP where reading a file makes sense)"
            );
        };
        let pod = PodRef::parse(pod, &self.namespace)?;
        let backend = pods::detect()?;
        let (pod, endpoint) = backend.find_proxy(&pod)?;
        Ok(Target {
            what: format!("the proxy of pod {}", pod.qualified()),
            endpoint,
            log: pod.proxy_log,
            timeout: self.timeout,
        })
    }
}

impl Target {
    /// One admin request; a non-2xx answer is an error carrying the proxy's message.
    pub async fn request(&self, method: Method, path: &str) -> Result<Reply> {
        let reply = client::send(&self.endpoint, method, path, self.timeout)
            .await
            .map_err(|e| self.explain(e))?;
        if !reply.status.is_success() {
            bail!(
                "{} answered {} to {path}: {}",
                self.what,
                reply.status,
                reply.text().trim()
            );
        }
        Ok(reply)
    }

    fn explain(&self, e: HttpError) -> anyhow::Error {
        let hint = match &e {
            HttpError::Connect { .. } => {
                let log = self
                    .log
                    .as_ref()
                    .map(|l| format!("; its log is {}", l.display()))
                    .unwrap_or_default();
                format!(
                    " (hint: is the proxy running and its admin API on {}?{log})",
                    self.endpoint.addr
                )
            }
            HttpError::Timeout { .. } => {
                " (hint: the proxy may be overloaded or stuck; raise --timeout to wait longer)"
                    .to_string()
            }
            _ => String::new(),
        };
        anyhow!("cannot read {}: {e}{hint}", self.what)
    }
}

/// A config dump and where it came from.
#[derive(Debug)]
pub struct Fetched {
    pub dump: ConfigDump,
    pub from: String,
}

impl Source {
    /// The file's bytes (`-`: stdin), when reading from a file.
    pub fn read_file(&self) -> Result<Option<(Vec<u8>, String)>> {
        let Some(f) = &self.file else { return Ok(None) };
        let mut bytes = Vec::new();
        if f == "-" {
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("reading the config dump from stdin")?;
            return Ok(Some((bytes, "stdin".into())));
        }
        let bytes = std::fs::read(f).with_context(|| format!("cannot read {f}"))?;
        Ok(Some((bytes, f.clone())))
    }

    /// The config dump (`?include_eds` adds endpoints).
    pub async fn config_dump(&self, include_eds: bool) -> Result<Fetched> {
        if let Some((bytes, from)) = self.read_file()? {
            return Ok(Fetched {
                dump: ConfigDump::parse(&bytes, &from)?,
                from,
            });
        }
        let target = self.proxy.target()?;
        let path = if include_eds {
            "/config_dump?include_eds"
        } else {
            "/config_dump"
        };
        let reply = target.request(Method::GET, path).await?;
        Ok(Fetched {
            dump: ConfigDump::parse(&reply.body, &format!("{}'s /config_dump", target.what))?,
            from: target.what,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").unwrap_err().contains("soon"));
    }
}
