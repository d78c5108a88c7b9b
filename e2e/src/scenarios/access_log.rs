//! Reading a proxy's access log (Envoy's default text format, which Istio uses when
//! `accessLogFile` is set): the request line, response code and response flags, so a
//! scenario can assert on `UO`, `UT`, `FI`, `DI`, `RL` as an operator would.
//!
//! ```text
//! [2024-05-01T10:00:00.000Z] "GET /x?key=k HTTP/1.1" 503 UO upstream_reset_before_response_started{overflow} - "-" 0 81 0 - ...
//! ```

/// One access log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub method: String,
    /// The path as logged (with the query string).
    pub path: String,
    pub code: u16,
    /// The response flags (`UO`, `UF,URX`, ...; `-` for none).
    pub flags: String,
}

impl Entry {
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.split(',').any(|f| f == flag)
    }
}

/// Parses one line; `None` for anything that is not an HTTP access log line.
pub fn parse_line(line: &str) -> Option<Entry> {
    let rest = line.strip_prefix('[')?;
    let rest = &rest[rest.find("] \"")? + 3..];
    let end = rest.find('"')?;
    let mut request = rest[..end].split(' ');
    let method = request.next()?.to_string();
    let path = request.next()?.to_string();
    let mut fields = rest[end + 1..].split_whitespace();
    let code = fields.next()?.parse().ok()?;
    let flags = fields.next()?.to_string();
    Some(Entry {
        method,
        path,
        code,
        flags,
    })
}

/// Every access log line in a proxy's output whose path contains `needle`.
pub fn entries(log: &str, needle: &str) -> Vec<Entry> {
    log.lines()
        .filter_map(parse_line)
        .filter(|e| e.path.contains(needle))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_envoys_default_format() {
        let line = r#"[2024-05-01T10:00:00.000Z] "GET /x?key=k1 HTTP/1.1" 503 UO upstream_reset_before_response_started{overflow} - "-" 0 81 0 - "-" "testapp" "6f1" "backend" "-" outbound|8080||backend.default.svc.cluster.local - 10.251.0.10:8080 10.250.0.3:40000 - default"#;
        let e = parse_line(line).unwrap();
        assert_eq!(e.method, "GET");
        assert_eq!(e.path, "/x?key=k1");
        assert_eq!(e.code, 503);
        assert!(e.has_flag("UO"));
        assert!(!e.has_flag("U"));
        let retried = parse_line(r#"[t] "GET / HTTP/1.1" 503 UF,URX - - "-" 0 0 1 - "-""#).unwrap();
        assert!(retried.has_flag("URX") && retried.has_flag("UF"));
    }

    #[test]
    fn other_lines_are_skipped() {
        let log = "2024-05-01T10:00:00Z INFO mesh_proxy: started\n[t] \"GET /a?key=z HTTP/1.1\" 200 - via_upstream - \"-\" 0 10 2 1\n[t] \"GET /b HTTP/1.1\" 200 - x\n";
        let got = entries(log, "key=z");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].code, 200);
        assert_eq!(got[0].flags, "-");
        assert_eq!(parse_line("[broken"), None);
    }
}
