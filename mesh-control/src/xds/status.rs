//! Per-proxy sync state, per type: what was sent (version, nonce, when), what the proxy
//! ACKed (and when), its last NACK, and the `istioctl proxy-status` verdict derived from
//! them. `/debug/syncz` renders it; the protocol state machines write it.

use std::time::SystemTime;

use serde::{Serialize, Serializer};
use tokio::time::Instant;

use super::types::XdsType;

/// A wall-clock time, shown as RFC 3339 (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallTime(pub SystemTime);

impl WallTime {
    pub fn now() -> WallTime {
        WallTime(SystemTime::now())
    }
}

impl std::fmt::Display for WallTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match jiff::Timestamp::try_from(self.0) {
            Ok(ts) => write!(f, "{ts:.3}"),
            Err(_) => f.write_str("?"),
        }
    }
}

impl Serialize for WallTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The clock readings the state machines stamp events with (one reading per event so that
/// tests can drive them with tokio's paused clock).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub instant: Instant,
    pub wall: WallTime,
}

impl Now {
    pub fn read() -> Now {
        Now {
            instant: Instant::now(),
            wall: WallTime::now(),
        }
    }
}

/// A response sent, or the ACK of one.
#[derive(Debug, Clone, Serialize)]
pub struct Stamp {
    pub version: String,
    pub nonce: String,
    pub at: WallTime,
    #[serde(skip)]
    pub instant: Instant,
}

/// A sent response, with what it carried.
#[derive(Debug, Clone, Serialize)]
pub struct Sent {
    #[serde(flatten)]
    pub stamp: Stamp,
    /// Resources in the response (SotW: all selected; delta: only the changed ones).
    pub resources: usize,
    /// Delta only: names removed by the response.
    pub removed: usize,
}

/// The last rejection.
#[derive(Debug, Clone, Serialize)]
pub struct Nack {
    /// The version the proxy says it still runs.
    pub version: String,
    pub nonce: String,
    pub message: String,
    pub at: WallTime,
}

/// `istioctl proxy-status`'s verdict for one type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    /// The proxy ACKed the last response sent.
    Synced,
    /// A response was sent and not (yet) ACKed: in flight, or NACKed.
    Stale,
    /// Nothing of this type was ever sent.
    NotSent,
}

impl SyncState {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Synced => "SYNCED",
            SyncState::Stale => "STALE",
            SyncState::NotSent => "NOT SENT",
        }
    }
}

impl Serialize for SyncState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The state of one type on one connection.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TypeSync {
    pub subscription: String,
    pub sent: Option<Sent>,
    pub acked: Option<Stamp>,
    pub nack: Option<Nack>,
    /// Responses sent of this type on this connection.
    pub responses: u64,
}

impl TypeSync {
    pub fn state(&self) -> SyncState {
        match (&self.sent, &self.acked) {
            (None, _) => SyncState::NotSent,
            (Some(s), Some(a)) if s.stamp.nonce == a.nonce => SyncState::Synced,
            _ => SyncState::Stale,
        }
    }

    /// How long the last ACKed response took from send to ACK.
    pub fn ack_latency(&self) -> Option<std::time::Duration> {
        let (s, a) = (self.sent.as_ref()?, self.acked.as_ref()?);
        (s.stamp.nonce == a.nonce).then(|| a.instant.saturating_duration_since(s.stamp.instant))
    }

    pub(crate) fn record_sent(
        &mut self,
        version: String,
        nonce: String,
        resources: usize,
        removed: usize,
        now: Now,
    ) {
        self.sent = Some(Sent {
            stamp: Stamp {
                version,
                nonce,
                at: now.wall,
                instant: now.instant,
            },
            resources,
            removed,
        });
        self.responses += 1;
    }

    pub(crate) fn record_ack(&mut self, version: String, nonce: String, now: Now) {
        self.acked = Some(Stamp {
            version,
            nonce,
            at: now.wall,
            instant: now.instant,
        });
    }

    pub(crate) fn record_nack(
        &mut self,
        version: String,
        nonce: String,
        message: String,
        now: Now,
    ) {
        self.nack = Some(Nack {
            version,
            nonce,
            message,
            at: now.wall,
        });
    }
}

/// Every type's state on one connection.
#[derive(Debug, Clone, Default)]
pub struct SyncStatus {
    types: [TypeSync; XdsType::COUNT],
}

impl SyncStatus {
    pub fn get(&self, ty: XdsType) -> &TypeSync {
        &self.types[ty.index()]
    }

    pub fn get_mut(&mut self, ty: XdsType) -> &mut TypeSync {
        &mut self.types[ty.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_follow_istioctl() {
        let mut t = TypeSync::default();
        assert_eq!(t.state(), SyncState::NotSent);
        let now = Now::read();
        t.record_sent("v1".into(), "1".into(), 3, 0, now);
        assert_eq!(t.state(), SyncState::Stale);
        t.record_ack("v1".into(), "1".into(), now);
        assert_eq!(t.state(), SyncState::Synced);
        assert_eq!(t.ack_latency(), Some(std::time::Duration::ZERO));
        t.record_sent("v2".into(), "2".into(), 3, 0, now);
        t.record_nack("v1".into(), "2".into(), "bad".into(), now);
        assert_eq!(t.state(), SyncState::Stale);
        assert_eq!(t.ack_latency(), None);
    }

    #[test]
    fn wall_time_is_rfc3339() {
        let t = WallTime(SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_500));
        assert_eq!(t.to_string(), "1970-01-01T00:00:01.500Z");
        assert_eq!(
            serde_json::to_string(&SyncState::NotSent).unwrap(),
            "\"NOT SENT\""
        );
    }
}
