//! The control plane's `/debug/syncz` JSON (see mesh-control's `monitoring::syncz`), read
//! leniently: fields the table does not use may come and go.

use std::collections::BTreeMap;

use serde::Deserialize;

/// One proxy connection's sync state.
#[derive(Debug, Clone, Deserialize)]
pub struct ProxySync {
    /// The node id.
    pub proxy: String,
    /// `<pod>.<namespace>`.
    pub name: String,
    /// Keyed by `CDS`, `LDS`, `EDS`, `RDS`, `SDS` (and `ECDS` if the control plane serves it).
    #[serde(default)]
    pub types: BTreeMap<String, TypeEntry>,
    /// The proxy's cluster (Istio's `CLUSTER_ID`), when the control plane reports it.
    #[serde(default, alias = "cluster")]
    pub cluster_id: Option<String>,
    /// The proxy's version (`ISTIO_VERSION` metadata), when reported.
    #[serde(default, alias = "istio_version", alias = "proxy_version")]
    pub version: Option<String>,
}

/// One type's state on one connection.
#[derive(Debug, Clone, Deserialize)]
pub struct TypeEntry {
    /// `SYNCED`, `STALE` or `NOT SENT`.
    pub status: String,
    #[serde(default)]
    pub sent: Option<Stamp>,
    #[serde(default)]
    pub acked: Option<Stamp>,
    #[serde(default)]
    pub nack: Option<Nack>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Stamp {
    #[serde(default)]
    pub nonce: String,
    /// RFC 3339.
    #[serde(default)]
    pub at: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Nack {
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub nonce: String,
    #[serde(default)]
    pub message: String,
}

impl TypeEntry {
    /// Whether the last response sent was rejected.
    pub fn nacked(&self) -> bool {
        matches!((&self.sent, &self.nack), (Some(s), Some(n)) if s.nonce == n.nonce)
    }
}

/// How long ago an RFC 3339 time was, in Kubernetes' short human form (`45s`, `4m6s`,
/// `2h`, `3d4h`), the form istioctl prints next to `SYNCED`.
pub fn ago(at: &str, now: jiff::Timestamp) -> Option<String> {
    let t: jiff::Timestamp = at.parse().ok()?;
    let secs = now.duration_since(t).as_secs().max(0);
    Some(human(secs))
}

pub fn human(secs: i64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86_400);
    let with = |big: i64, unit: &str, small: i64, small_unit: &str| {
        if small == 0 {
            format!("{big}{unit}")
        } else {
            format!("{big}{unit}{small}{small_unit}")
        }
    };
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        with(m, "m", secs % 60, "s")
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        with(h, "h", m % 60, "m")
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        with(d, "d", h % 24, "h")
    } else {
        format!("{d}d")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_like_kubectl() {
        assert_eq!(human(0), "0s");
        assert_eq!(human(119), "119s");
        assert_eq!(human(246), "4m6s");
        assert_eq!(human(300), "5m");
        assert_eq!(human(1500), "25m");
        assert_eq!(human(4 * 3600 + 120), "4h2m");
        assert_eq!(human(30 * 3600), "30h");
        assert_eq!(human(3 * 86_400 + 4 * 3600), "3d4h");
        assert_eq!(human(20 * 86_400), "20d");
        let now: jiff::Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        assert_eq!(ago("2026-01-01T00:00:30.250Z", now).as_deref(), Some("29s"));
        assert_eq!(ago("garbage", now), None);
    }

    #[test]
    fn reads_mesh_controls_json() {
        let v: Vec<ProxySync> = serde_json::from_value(serde_json::json!([{
            "proxy": "sidecar~10.250.0.5~sleep.default~default.svc.cluster.local",
            "name": "sleep.default", "connection": "c1", "kind": "sidecar", "protocol": "delta",
            "peer": "10.250.0.5:40000", "connected_at": "2026-01-01T00:00:00.000Z", "pushes": 2,
            "types": {
                "CDS": {"status": "SYNCED", "ack_latency_ms": 1.5, "subscription": "*", "responses": 1,
                        "sent": {"version": "v1", "nonce": "1", "at": "2026-01-01T00:00:00.000Z", "resources": 3, "removed": 0},
                        "acked": {"version": "v1", "nonce": "1", "at": "2026-01-01T00:00:00.002Z"}, "nack": null},
                "LDS": {"status": "STALE", "subscription": "*", "responses": 1,
                        "sent": {"version": "v2", "nonce": "2", "at": "2026-01-01T00:00:00.000Z", "resources": 1, "removed": 0},
                        "acked": null, "nack": {"version": "v1", "nonce": "2", "message": "listener x: bad", "at": "2026-01-01T00:00:00.000Z"}}
            }
        }]))
        .unwrap();
        assert_eq!(v[0].types["CDS"].status, "SYNCED");
        assert!(!v[0].types["CDS"].nacked());
        assert!(v[0].types["LDS"].nacked());
        assert_eq!(v[0].cluster_id, None);
    }
}
