//! Per-request controls, given as query parameters (HTTP) or as the `query` field of the
//! gRPC request: `delay=500ms`, `status=503`, `reset=1`, `fail_first=N&key=K`,
//! `call=URL` (make a downstream call, propagating trace headers), and `pod=NAME`: the
//! delay, status, reset and fail_first controls act only in the pod named NAME (so one
//! endpoint of a service can be made slow or failing while its peers answer normally, and
//! a mirror target can be slowed without slowing the primary).

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    #[error(
        "query parameter {param}: {value:?} is not a duration (examples: 500ms, 2s, 1m, 250us)"
    )]
    Duration { param: &'static str, value: String },
    #[error("query parameter {param}: {value:?} is not a number")]
    Number { param: &'static str, value: String },
    #[error("query parameter status: {0} is not an HTTP status code (100-599)")]
    Status(u16),
    #[error("query parameter fail_first needs key=K to count requests by")]
    FailFirstWithoutKey,
}

/// The controls of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Controls {
    pub delay: Option<Duration>,
    pub status: Option<u16>,
    pub reset: bool,
    pub fail_first: Option<u64>,
    pub key: Option<String>,
    pub call: Option<String>,
    /// Only the pod with this name obeys delay/status/reset/fail_first.
    pub pod: Option<String>,
}

impl Controls {
    /// Parses a query string (without the `?`). Unknown parameters are ignored so that
    /// callers can add their own (cache busters, tags).
    pub fn parse(query: &str) -> Result<Self, ControlError> {
        let mut c = Controls::default();
        for (k, v) in form_pairs(query) {
            match k.as_str() {
                "delay" => c.delay = Some(parse_duration("delay", &v)?),
                "status" => {
                    let code: u16 = v.parse().map_err(|_| ControlError::Number {
                        param: "status",
                        value: v.clone(),
                    })?;
                    if !(100..=599).contains(&code) {
                        return Err(ControlError::Status(code));
                    }
                    c.status = Some(code);
                }
                "reset" => c.reset = matches!(v.as_str(), "1" | "true" | "yes"),
                "fail_first" => {
                    c.fail_first = Some(v.parse().map_err(|_| ControlError::Number {
                        param: "fail_first",
                        value: v.clone(),
                    })?)
                }
                "key" => c.key = Some(v),
                "call" => c.call = Some(v),
                "pod" => c.pod = Some(v),
                _ => {}
            }
        }
        if c.fail_first.is_some() && c.key.is_none() {
            return Err(ControlError::FailFirstWithoutKey);
        }
        Ok(c)
    }

    /// The controls that act in the pod `pod`: all of them when no `pod=` was given or it
    /// names this pod; otherwise only the bookkeeping (`key`) and `call`.
    pub fn for_pod(self, pod: &str) -> Controls {
        match &self.pod {
            Some(only) if only != pod => Controls {
                key: self.key,
                call: self.call,
                pod: self.pod,
                ..Controls::default()
            },
            _ => self,
        }
    }
}

/// `a=1&b=x%20y` into decoded pairs.
pub fn form_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `500ms`, `2s`, `1.5s`, `1m`, `250us`; a bare number is milliseconds.
pub fn parse_duration(param: &'static str, v: &str) -> Result<Duration, ControlError> {
    let err = || ControlError::Duration {
        param,
        value: v.to_string(),
    };
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    // Whole numbers are exact; fractions go through f64.
    if let Ok(n) = num.parse::<u64>() {
        let d = match unit {
            "" | "ms" => Duration::from_millis(n),
            "us" | "µs" => Duration::from_micros(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            _ => return Err(err()),
        };
        return if d <= Duration::from_secs(3600) {
            Ok(d)
        } else {
            Err(err())
        };
    }
    let n: f64 = num.parse().map_err(|_| err())?;
    let secs = match unit {
        "" | "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(err()),
    };
    if !secs.is_finite() || !(0.0..=3600.0).contains(&secs) {
        return Err(err());
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_control() {
        let c = Controls::parse("delay=500ms&status=503&reset=1&fail_first=2&key=k1&call=http%3A%2F%2Fb%3A80%2Fx&other=1")
            .unwrap();
        assert_eq!(c.delay, Some(Duration::from_millis(500)));
        assert_eq!(c.status, Some(503));
        assert!(c.reset);
        assert_eq!(c.fail_first, Some(2));
        assert_eq!(c.key.as_deref(), Some("k1"));
        assert_eq!(c.call.as_deref(), Some("http://b:80/x"));
        assert_eq!(Controls::parse("").unwrap(), Controls::default());
    }

    #[test]
    fn pod_gates_the_failure_controls() {
        let c = Controls::parse("delay=2s&status=500&reset=1&fail_first=1&key=k&pod=b-2").unwrap();
        let elsewhere = c.clone().for_pod("b-1");
        assert_eq!(elsewhere.delay, None);
        assert_eq!(elsewhere.status, None);
        assert!(!elsewhere.reset);
        assert_eq!(elsewhere.fail_first, None);
        assert_eq!(
            elsewhere.key.as_deref(),
            Some("k"),
            "requests are still counted"
        );
        assert_eq!(c.clone().for_pod("b-2"), c);
        let ungated = Controls::parse("status=503").unwrap();
        assert_eq!(ungated.clone().for_pod("any"), ungated);
    }

    #[test]
    fn rejects_bad_values_naming_the_parameter() {
        assert!(
            Controls::parse("delay=soon")
                .unwrap_err()
                .to_string()
                .contains("delay")
        );
        assert_eq!(
            Controls::parse("status=999").unwrap_err(),
            ControlError::Status(999)
        );
        assert_eq!(
            Controls::parse("fail_first=3").unwrap_err(),
            ControlError::FailFirstWithoutKey
        );
        assert!(Controls::parse("fail_first=x&key=a").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("d", "2s").unwrap(), Duration::from_secs(2));
        assert_eq!(
            parse_duration("d", "1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(
            parse_duration("d", "250us").unwrap(),
            Duration::from_micros(250)
        );
        assert_eq!(
            parse_duration("d", "10").unwrap(),
            Duration::from_millis(10)
        );
        assert!(parse_duration("d", "5h").is_err());
        assert!(parse_duration("d", "-1s").is_err());
    }

    proptest::proptest! {
        /// Any query string parses or fails with an error; it never panics.
        #[test]
        fn arbitrary_queries_never_panic(q in "\\PC{0,60}") {
            let _ = Controls::parse(&q);
        }

        /// Whole milliseconds survive a round trip.
        #[test]
        fn millisecond_durations_round_trip(ms in 0u64..3_600_000) {
            proptest::prop_assert_eq!(
                parse_duration("d", &format!("{ms}ms")).unwrap(),
                Duration::from_millis(ms)
            );
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c%2"), "a b c%2");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
