//! `meshctl proxy-status [<pod>]`: every proxy's xDS sync state per type, from the control
//! plane's `/debug/syncz`, in istioctl's columns (`NAME  CLUSTER  CDS  LDS  EDS  RDS  ECDS
//! ISTIOD  VERSION`) with how long ago each type was ACKed (`SYNCED (4m6s)`); `ECDS` and
//! `SDS` appear when the control plane sends them. Rejections are listed under the table
//! with the proxy's message.
//!
//! With a pod, also compares what the control plane would send it now with what the proxy
//! holds (`Clusters Match`, `Listeners Don't Match` with the differences).

mod compare;
mod syncz;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use http::Method;

use crate::envoy::dump::ConfigDump;
use crate::http::{self as client, Endpoint, Route};
use crate::pods::{self, PodRef};
use crate::proxy_config::source::{ProxyArgs, Target, parse_duration};
use crate::table::Table;
use syncz::ProxySync;

/// Arguments of `meshctl proxy-status`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only this proxy (NAME[.NAMESPACE] or an app label), and compare its config with
    /// the control plane's.
    #[arg(value_name = "POD[.NAMESPACE]")]
    pod: Option<String>,
    /// The namespace of POD when it has no `.NAMESPACE`.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// The control plane's monitoring URL (default: the local cluster's, from demo.json).
    #[arg(long, value_name = "URL")]
    control: Option<String>,
    /// The proxy's admin URL for the comparison (default: found through the pod).
    #[arg(long, value_name = "URL")]
    admin: Option<String>,
    /// How long each request may take.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print `/debug/syncz` as the control plane returned it.
    #[arg(short, long)]
    json: bool,
}

const TYPES: [&str; 4] = ["CDS", "LDS", "EDS", "RDS"];
const OPTIONAL_TYPES: [&str; 2] = ["ECDS", "SDS"];

pub fn run(args: &Args) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(status(args))?;
    Ok(ExitCode::SUCCESS)
}

fn control_endpoint(args: &Args) -> Result<Endpoint> {
    if let Some(url) = &args.control {
        return Ok(Endpoint::parse(url, Route::Direct)?);
    }
    let backend = pods::detect().map_err(|e| {
        anyhow!(
            "{e}\n(hint: pass the control plane's monitoring URL with --control http://HOST:15014)"
        )
    })?;
    backend.control_plane().ok_or_else(|| {
        anyhow!(
            "{} does not say where its control plane is (hint: pass --control http://HOST:15014)",
            backend.describe()
        )
    })
}

async fn fetch(endpoint: &Endpoint, path: &str, timeout: Duration) -> Result<client::Reply> {
    let reply = client::send(endpoint, Method::GET, path, timeout)
        .await
        .map_err(|e| {
            let hint = if e.is_unreachable() {
                " (hint: is mesh-control running, with its monitoring port there? --control sets the URL)"
            } else {
                ""
            };
            anyhow!("cannot read the control plane's {path}: {e}{hint}")
        })?;
    if !reply.status.is_success() {
        bail!(
            "the control plane answered {} to {path}: {}",
            reply.status,
            reply.text().trim()
        );
    }
    Ok(reply)
}

async fn status(args: &Args) -> Result<()> {
    let control = control_endpoint(args)?;
    let reply = fetch(&control, "/debug/syncz", args.timeout).await?;
    let mut proxies: Vec<ProxySync> = serde_json::from_slice(&reply.body).with_context(|| {
        format!("{control}/debug/syncz is not the control plane's sync status JSON")
    })?;
    let pod = args
        .pod
        .as_deref()
        .map(|p| PodRef::parse(p, &args.namespace))
        .transpose()?;
    if let Some(pod) = &pod {
        proxies = select(proxies, pod)?;
    }
    if args.json {
        let raw: serde_json::Value = serde_json::from_slice(&reply.body)?;
        let raw = match (&pod, raw) {
            (Some(_), serde_json::Value::Array(all)) => serde_json::Value::Array(
                all.into_iter()
                    .filter(|v| {
                        proxies
                            .iter()
                            .any(|p| v.get("proxy").and_then(|x| x.as_str()) == Some(&p.proxy))
                    })
                    .collect(),
            ),
            (_, raw) => raw,
        };
        println!("{}", serde_json::to_string_pretty(&raw)?);
        return Ok(());
    }
    let istiod = control.addr.ip().to_string();
    print!(
        "{}",
        table(&proxies, &istiod, jiff::Timestamp::now()).render()
    );
    for p in &proxies {
        for (ty, t) in &p.types {
            if t.nacked()
                && let Some(n) = &t.nack
            {
                println!(
                    "{} {ty} rejected (still running version {:?}): {}",
                    p.name, n.version, n.message
                );
            }
        }
    }
    if let Some(pod) = &pod
        && let [one] = proxies.as_slice()
    {
        println!();
        compare_configs(args, &control, pod, one).await?;
    }
    Ok(())
}

/// The entries of one pod: by `name.namespace`, else a pod of a workload named so
/// (`reviews` -> `reviews-v1-abc.default`).
fn select(all: Vec<ProxySync>, pod: &PodRef) -> Result<Vec<ProxySync>> {
    let exact = pod.to_string();
    let prefix = format!("{}-", pod.name);
    let suffix = format!(".{}", pod.namespace);
    let picked: Vec<ProxySync> = all.iter().filter(|p| p.name == exact).cloned().collect();
    let picked = if picked.is_empty() {
        all.iter()
            .filter(|p| p.name.starts_with(&prefix) && p.name.ends_with(&suffix))
            .cloned()
            .collect()
    } else {
        picked
    };
    if picked.is_empty() {
        let names: Vec<&str> = all.iter().map(|p| p.name.as_str()).collect();
        bail!(
            "no proxy of pod {pod} is connected to the control plane; connected: {}",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
    }
    Ok(picked)
}

fn table(proxies: &[ProxySync], istiod: &str, now: jiff::Timestamp) -> Table {
    let optional: Vec<&str> = OPTIONAL_TYPES
        .into_iter()
        .filter(|t| {
            proxies
                .iter()
                .any(|p| p.types.get(*t).is_some_and(|e| e.status != "NOT SENT"))
        })
        .collect();
    let mut header = vec!["NAME", "CLUSTER"];
    header.extend(TYPES);
    header.extend(&optional);
    header.extend(["ISTIOD", "VERSION"]);
    let mut t = Table::new(&header, 5);
    for p in proxies {
        let mut row = vec![
            p.name.clone(),
            p.cluster_id.clone().unwrap_or_else(|| "-".into()),
        ];
        for ty in TYPES.iter().chain(&optional) {
            row.push(match p.types.get(*ty) {
                None => "IGNORED".to_string(),
                Some(e) if e.nacked() => format!("{} (NACK)", e.status),
                Some(e) if e.status == "SYNCED" => {
                    match e
                        .acked
                        .as_ref()
                        .and_then(|a| a.at.as_deref())
                        .and_then(|at| syncz::ago(at, now))
                    {
                        Some(ago) => format!("SYNCED ({ago})"),
                        None => "SYNCED".to_string(),
                    }
                }
                Some(e) => e.status.clone(),
            });
        }
        row.push(istiod.to_string());
        row.push(p.version.clone().unwrap_or_else(|| "-".into()));
        t.row(row);
    }
    t
}

/// The proxy's admin API for the comparison: `--admin`, else through the cluster backend.
fn proxy_target(args: &Args, pod: &PodRef) -> Result<Target> {
    ProxyArgs {
        pod: Some(pod.to_string()),
        namespace: args.namespace.clone(),
        admin: args.admin.clone(),
        timeout: args.timeout,
    }
    .target()
}

async fn compare_configs(
    args: &Args,
    control: &Endpoint,
    pod: &PodRef,
    proxy: &ProxySync,
) -> Result<()> {
    let target = match proxy_target(args, pod) {
        Ok(t) => t,
        Err(e) => {
            println!("(not comparing configs: {e:#})");
            return Ok(());
        }
    };
    let path = format!("/debug/config_dump?proxyID={}", proxy.proxy);
    let wanted = fetch(control, &path, args.timeout).await?;
    let wanted = ConfigDump::parse(&wanted.body, "the control plane's /debug/config_dump")?;
    let held = target.request(Method::GET, "/config_dump").await?;
    let held = ConfigDump::parse(&held.body, &format!("{}'s /config_dump", target.what))?;
    for d in compare::compare(&wanted, &held)? {
        let mut text = d.render();
        if d.kind == "routes"
            && d.matches()
            && let Some(at) = compare::rds_last_loaded(&held)
        {
            text = format!("Routes Match (RDS last loaded at {at})\n");
        }
        print!("{text}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn proxies() -> Vec<ProxySync> {
        let stamp = |n: &str, at: &str| json!({"version": "v", "nonce": n, "at": at});
        serde_json::from_value(json!([
            {"proxy": "sidecar~10.250.0.5~sleep.default~default.svc.cluster.local", "name": "sleep.default",
             "types": {
                "CDS": {"status": "SYNCED", "sent": stamp("1", "2026-01-01T00:00:00Z"), "acked": stamp("1", "2026-01-01T00:00:54Z")},
                "LDS": {"status": "STALE", "sent": stamp("2", "2026-01-01T00:00:00Z"), "acked": stamp("1", "2026-01-01T00:00:00Z"),
                        "nack": {"version": "1", "nonce": "2", "message": "listener x: field y: unsupported"}},
                "EDS": {"status": "STALE", "sent": stamp("3", "2026-01-01T00:00:00Z")},
                "RDS": {"status": "NOT SENT"},
                "SDS": {"status": "NOT SENT"}}},
            {"proxy": "sidecar~10.250.0.6~reviews-v1-abc.default~default.svc.cluster.local", "name": "reviews-v1-abc.default", "types": {}}
        ]))
        .unwrap()
    }

    #[test]
    fn the_table_has_istioctls_columns_and_ack_ages() {
        let now: jiff::Timestamp = "2026-01-01T00:05:00Z".parse().unwrap();
        let out = table(&proxies()[..1], "10.250.0.1", now).render();
        let mut lines = out.lines();
        assert_eq!(
            lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
            [
                "NAME", "CLUSTER", "CDS", "LDS", "EDS", "RDS", "ISTIOD", "VERSION"
            ]
        );
        let row = lines.next().unwrap();
        assert!(row.starts_with("sleep.default     -           SYNCED (4m6s)     STALE (NACK)     STALE     NOT SENT     10.250.0.1     -"), "{row}");
    }

    #[test]
    fn selecting_a_pod() {
        let pick = |s: &str| select(proxies(), &PodRef::parse(s, "default").unwrap());
        assert_eq!(pick("sleep").unwrap()[0].name, "sleep.default");
        assert_eq!(
            pick("reviews.default").unwrap()[0].name,
            "reviews-v1-abc.default"
        );
        let err = pick("ratings").unwrap_err().to_string();
        assert!(
            err.contains("connected: sleep.default, reviews-v1-abc.default"),
            "{err}"
        );
    }
}
