//! `/debug/syncz`: every connected proxy's sync state per type, as JSON or (with
//! `?format=text`) as the table `istioctl proxy-status` prints, plus when each version was
//! sent and ACKed so a user can see which proxies have a change and how long it took.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::model::ProxyKind;
use crate::xds::status::{SyncState, TypeSync, WallTime};
use crate::xds::{Connection, Protocol, Registry, XdsType};

#[derive(Debug, Serialize)]
pub struct ProxySync {
    /// The node id.
    pub proxy: String,
    /// `<pod>.<namespace>`, the name `istioctl` shows.
    pub name: String,
    pub connection: String,
    /// The proxy's cluster (`CLUSTER_ID`), the CLUSTER column of `istioctl proxy-status`.
    pub cluster_id: String,
    /// The proxy's version (`ISTIO_VERSION`, else its user agent), the VERSION column.
    pub version: Option<String>,
    pub kind: ProxyKind,
    pub protocol: Protocol,
    pub peer: Option<String>,
    pub connected_at: WallTime,
    /// Pushes that sent this proxy something.
    pub pushes: u64,
    /// Keyed by `CDS`, `EDS`, `LDS`, `RDS`, `SDS`.
    pub types: BTreeMap<&'static str, TypeEntry>,
}

#[derive(Debug, Serialize)]
pub struct TypeEntry {
    pub status: SyncState,
    /// Milliseconds from sending the last ACKed response to its ACK.
    pub ack_latency_ms: Option<f64>,
    #[serde(flatten)]
    pub sync: TypeSync,
}

pub fn collect(registry: &Registry) -> Vec<ProxySync> {
    let mut out: Vec<_> = registry.all().iter().map(|c| proxy_sync(c)).collect();
    out.sort_by(|a, b| a.name.cmp(&b.name).then(a.connection.cmp(&b.connection)));
    out
}

fn proxy_sync(conn: &Connection) -> ProxySync {
    let status = conn.status.lock().clone();
    let types = XdsType::PUSH_ORDER
        .into_iter()
        .map(|ty| {
            let sync = status.get(ty).clone();
            (
                ty.column(),
                TypeEntry {
                    status: sync.state(),
                    ack_latency_ms: sync.ack_latency().map(|d| d.as_secs_f64() * 1e3),
                    sync,
                },
            )
        })
        .collect();
    ProxySync {
        proxy: conn.proxy.id.clone(),
        name: format!("{}.{}", conn.proxy.pod_name, conn.proxy.namespace),
        connection: conn.name.clone(),
        cluster_id: conn.proxy.cluster_id.clone(),
        version: conn.proxy.version.clone(),
        kind: conn.proxy.kind,
        protocol: conn.protocol,
        peer: conn.peer.map(|p| p.to_string()),
        connected_at: conn.connected_at,
        pushes: conn.pushes.load(Ordering::Relaxed),
        types,
    }
}

/// The `istioctl proxy-status` table, with the last ACK time per proxy.
pub fn render_text(entries: &[ProxySync]) -> String {
    let columns = [
        XdsType::Cluster,
        XdsType::Listener,
        XdsType::Endpoint,
        XdsType::Route,
        XdsType::Secret,
    ];
    let mut rows: Vec<Vec<String>> = vec![
        ["NAME", "TYPE", "PROTOCOL"]
            .into_iter()
            .map(String::from)
            .chain(columns.iter().map(|t| t.column().to_string()))
            .chain(["PUSHES".to_string(), "LAST ACK".to_string()])
            .collect(),
    ];
    for e in entries {
        let mut row = vec![
            e.name.clone(),
            format!("{:?}", e.kind).to_lowercase(),
            format!("{:?}", e.protocol).to_lowercase(),
        ];
        for ty in columns {
            let t = &e.types[ty.column()];
            let mut cell = t.status.as_str().to_string();
            if t.sync.nack.as_ref().is_some_and(|n| {
                t.sync
                    .sent
                    .as_ref()
                    .is_some_and(|s| s.stamp.nonce == n.nonce)
            }) {
                cell.push_str(" (NACK)");
            }
            row.push(cell);
        }
        row.push(e.pushes.to_string());
        let last_ack = e
            .types
            .values()
            .filter_map(|t| t.sync.acked.as_ref().map(|a| a.at))
            .max_by_key(|w| w.0);
        row.push(last_ack.map_or_else(|| "-".to_string(), |w| w.to_string()));
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let _ = write!(line, "{cell:<w$}   ", w = widths[i]);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
