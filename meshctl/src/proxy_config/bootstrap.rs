//! `proxy-config bootstrap`: the configuration the proxy started with (node identity and
//! metadata, where it gets xDS, its admin address), as JSON by default like istioctl;
//! `-o short` summarises it.

use anyhow::{Result, bail};
use clap::ValueEnum;
use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::core::v3::{address, api_config_source, socket_address};
use serde_json::Value;

use super::{Output, Source, print_value};
use crate::table::Table;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
enum Format {
    #[default]
    Json,
    Yaml,
    Short,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    source: Source,
    #[arg(short, long, value_enum, default_value_t)]
    output: Format,
}

pub async fn run(args: &Args) -> Result<()> {
    let fetched = args.source.config_dump(false).await?;
    let Some(raw) = fetched.dump.bootstrap_raw() else {
        bail!(
            "{} has no BootstrapConfigDump in its config dump",
            fetched.from
        );
    };
    match args.output {
        Format::Json => print_value(raw, Output::Json),
        Format::Yaml => print_value(raw, Output::Yaml),
        Format::Short => {
            let Some(b) = fetched.dump.bootstrap()? else {
                bail!("{} has no bootstrap", fetched.from);
            };
            print!("{}", summary(&b, raw).render());
            Ok(())
        }
    }
}

fn summary(b: &Bootstrap, raw: &Value) -> Table {
    let mut t = Table::new(&["FIELD", "VALUE"], 5);
    if let Some(node) = &b.node {
        t.row(["node id", node.id.as_str()]);
        t.row(["node cluster", node.cluster.as_str()]);
        // Metadata is shown from the JSON: it is a free-form Struct.
        let meta = crate::envoy::dump::field(raw, "node")
            .and_then(|n| n.get("metadata"))
            .and_then(Value::as_object);
        for key in [
            "NAMESPACE",
            "SERVICE_ACCOUNT",
            "CLUSTER_ID",
            "MESH_ID",
            "ISTIO_VERSION",
            "INTERCEPTION_MODE",
        ] {
            if let Some(v) = meta.and_then(|m| m.get(key)).and_then(Value::as_str) {
                t.row([format!("metadata {key}"), v.to_string()]);
            }
        }
        if let Some(labels) = meta
            .and_then(|m| m.get("LABELS"))
            .and_then(Value::as_object)
        {
            let l: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            t.row(["metadata LABELS".to_string(), l.join(",")]);
        }
    }
    if let Some(ads) = b
        .dynamic_resources
        .as_ref()
        .and_then(|d| d.ads_config.as_ref())
    {
        let kind = api_config_source::ApiType::try_from(ads.api_type)
            .map(|k| k.as_str_name().to_string())
            .unwrap_or_else(|_| ads.api_type.to_string());
        let mut servers: Vec<String> = ads.cluster_names.clone();
        servers.extend(ads.grpc_services.iter().map(|g| match &g.target_specifier {
            Some(
                envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier::EnvoyGrpc(
                    e,
                ),
            ) => {
                format!("cluster {}", e.cluster_name)
            }
            Some(
                envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier::GoogleGrpc(
                    g,
                ),
            ) => g.target_uri.clone(),
            None => String::new(),
        }));
        t.row([
            "ads".to_string(),
            format!("{kind} via {}", servers.join(", ")),
        ]);
    }
    if let Some(addr) = b
        .admin
        .as_ref()
        .and_then(|a| a.address.as_ref())
        .and_then(|a| a.address.as_ref())
        && let address::Address::SocketAddress(s) = addr
    {
        let port = match s.port_specifier {
            Some(socket_address::PortSpecifier::PortValue(p)) => p,
            _ => 0,
        };
        t.row(["admin".to_string(), format!("{}:{port}", s.address)]);
    }
    if let Some(s) = &b.static_resources {
        t.row(["static clusters".to_string(), s.clusters.len().to_string()]);
        t.row([
            "static listeners".to_string(),
            s.listeners.len().to_string(),
        ]);
    }
    t
}
