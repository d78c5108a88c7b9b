//! Istio's duration format: Go's `time.ParseDuration` syntax (`10s`, `0.5s`, `300ms`,
//! `1h30m`, `1.5m`), which is what users write in VirtualService timeouts, retry
//! per-try timeouts, outlier detection intervals and the mesh config.
//!
//! [`Duration`] keeps the text the user wrote next to its parsed value, so that a resource
//! re-serialises byte-for-byte (`5m` stays `5m`) and validation can report every bad
//! duration in a document instead of failing the whole parse on the first one.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration (expected a number with a unit, like 10s or 300ms)")]
    Empty,
    #[error("negative duration {0:?} is not allowed")]
    Negative(String),
    #[error("invalid duration {0:?}: missing unit (use ns, us, ms, s, m or h, like 10s)")]
    MissingUnit(String),
    #[error("invalid duration {text:?}: unknown unit {unit:?} (use ns, us, ms, s, m or h)")]
    UnknownUnit { text: String, unit: String },
    #[error("invalid duration {0:?} (expected a number with a unit, like 10s, 0.5s or 1h30m)")]
    Syntax(String),
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

const NANOS_PER: [(&str, u128); 7] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Parses a Go/Istio duration (`1h30m`, `0.5s`, `300ms`, `0`).
pub fn parse(text: &str) -> Result<std::time::Duration, DurationError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s.starts_with('-') {
        return Err(DurationError::Negative(text.to_string()));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let mut rest = s;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..num_len];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(DurationError::Syntax(text.to_string()));
        }
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        if unit.is_empty() {
            return Err(DurationError::MissingUnit(text.to_string()));
        }
        let per = NANOS_PER
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, n)| *n)
            .ok_or_else(|| DurationError::UnknownUnit {
                text: text.to_string(),
                unit: unit.to_string(),
            })?;
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        let overflow = || DurationError::Overflow(text.to_string());
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| overflow())?
        };
        let mut nanos = whole.checked_mul(per).ok_or_else(overflow)?;
        // Fractions are exact to the nanosecond, as in Go: digits past that are dropped.
        let mut scale = per;
        for digit in frac.bytes() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            nanos += u128::from(digit - b'0') * scale;
        }
        total = total.checked_add(nanos).ok_or_else(overflow)?;
    }
    let secs = u64::try_from(total / 1_000_000_000)
        .map_err(|_| DurationError::Overflow(text.to_string()))?;
    // The remainder is < 1e9, so it always fits in u32.
    let nanos = (total % 1_000_000_000) as u32;
    Ok(std::time::Duration::new(secs, nanos))
}

/// Formats a duration in the shortest exact form Istio users write: `1h`, `90s`, `300ms`,
/// `1.5s`, `0s`.
pub fn format(d: std::time::Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    for (unit, per) in [("h", 3_600_000_000_000u128), ("m", 60_000_000_000)] {
        if nanos.is_multiple_of(per) {
            return format!("{}{unit}", nanos / per);
        }
    }
    if nanos.is_multiple_of(1_000_000_000) {
        return format!("{}s", nanos / 1_000_000_000);
    }
    if nanos >= 1_000_000_000 {
        let secs = nanos / 1_000_000_000;
        let frac = format!("{:09}", nanos % 1_000_000_000);
        return format!("{secs}.{}s", frac.trim_end_matches('0'));
    }
    if nanos.is_multiple_of(1_000_000) {
        return format!("{}ms", nanos / 1_000_000);
    }
    if nanos.is_multiple_of(1_000) {
        return format!("{}us", nanos / 1_000);
    }
    format!("{nanos}ns")
}

/// A duration field of an Istio resource: the text as written plus its parsed value.
///
/// Deserialising never fails on a malformed duration (only on a non-string); the
/// validator reports it with the field path. Code that runs after validation uses
/// [`Duration::get`].
#[derive(Clone)]
pub struct Duration {
    text: String,
    value: Result<std::time::Duration, DurationError>,
}

// === impl Duration ===

impl Duration {
    /// Parses `text`, keeping it as written.
    pub fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        let value = parse(&text);
        Self { text, value }
    }

    /// The parsed value, or `None` if the text was invalid (validation rejects that).
    pub fn get(&self) -> Option<std::time::Duration> {
        self.value.as_ref().ok().copied()
    }

    /// The parsed value or the reason it is invalid.
    pub fn parsed(&self) -> Result<std::time::Duration, &DurationError> {
        self.value.as_ref().copied()
    }

    /// The text as the user wrote it.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Self {
            text: format(d),
            value: Ok(d),
        }
    }
}

impl Default for Duration {
    fn default() -> Self {
        std::time::Duration::ZERO.into()
    }
}

impl PartialEq for Duration {
    fn eq(&self, other: &Self) -> bool {
        match (&self.value, &other.value) {
            (Ok(a), Ok(b)) => a == b,
            _ => self.text == other.text,
        }
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Duration::new)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration such as 10s, 0.5s, 300ms or 1h30m."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as D;

    #[test]
    fn parses_istio_forms() {
        assert_eq!(parse("10s"), Ok(D::from_secs(10)));
        assert_eq!(parse("0.5s"), Ok(D::from_millis(500)));
        assert_eq!(parse("300ms"), Ok(D::from_millis(300)));
        assert_eq!(parse("1h"), Ok(D::from_secs(3600)));
        assert_eq!(parse("1h30m"), Ok(D::from_secs(5400)));
        assert_eq!(parse("1.5m"), Ok(D::from_secs(90)));
        assert_eq!(parse("0"), Ok(D::ZERO));
        assert_eq!(parse("2us"), Ok(D::from_micros(2)));
        assert_eq!(parse("7ns"), Ok(D::from_nanos(7)));
        assert_eq!(parse(".5s"), Ok(D::from_millis(500)));
    }

    #[test]
    fn rejects_bad_forms() {
        assert_eq!(parse(""), Err(DurationError::Empty));
        assert!(matches!(parse("10"), Err(DurationError::MissingUnit(_))));
        assert!(matches!(parse("-1s"), Err(DurationError::Negative(_))));
        assert!(matches!(
            parse("10d"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(parse("1..2s"), Err(DurationError::Syntax(_))));
        assert!(matches!(parse("s"), Err(DurationError::Syntax(_))));
        assert!(matches!(
            parse("99999999999999999999999h"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn formats_shortest_exact() {
        assert_eq!(format(D::ZERO), "0s");
        assert_eq!(format(D::from_secs(3600)), "1h");
        assert_eq!(format(D::from_secs(300)), "5m");
        assert_eq!(format(D::from_secs(90)), "90s");
        assert_eq!(format(D::from_millis(1500)), "1.5s");
        assert_eq!(format(D::from_millis(300)), "300ms");
        assert_eq!(format(D::from_micros(5)), "5us");
        assert_eq!(format(D::from_nanos(5)), "5ns");
    }

    #[test]
    fn keeps_text_and_compares_by_value() {
        let a = Duration::new("1m");
        assert_eq!(a.as_str(), "1m");
        assert_eq!(a, Duration::new("60s"));
        assert_eq!(serde_json::to_string(&a).ok().as_deref(), Some("\"1m\""));
        let bad = Duration::new("ten seconds");
        assert!(bad.get().is_none());
    }

    proptest::proptest! {
        #[test]
        fn format_then_parse_is_identity(nanos in 0u64..10_000_000_000_000) {
            let d = D::from_nanos(nanos);
            proptest::prop_assert_eq!(parse(&format(d)), Ok(d));
        }
    }
}
