//! Header mutations (`request_headers_to_add/remove`, `response_headers_to_add/remove`)
//! at route-config, virtual-host, route and weighted-cluster level, with Envoy's
//! `append_action` semantics and formatter values compiled once.

// Envoy still honours deprecated fields (header matcher variants, `append`,
// `total_weight`, ...); configs from older control planes use them, so we read them too.
#![allow(deprecated)]

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValueOption, header_value_option::HeaderAppendAction,
};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::ConfigError;
use crate::http::format::{FormatCtx, Formatter};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendAction {
    AppendIfExistsOrAdd,
    AddIfAbsent,
    OverwriteIfExistsOrAdd,
    OverwriteIfExists,
}

#[derive(Debug, Clone)]
pub enum HeaderValueSource {
    /// No `%` commands: the value is ready to insert.
    Literal(HeaderValue),
    Format(Formatter),
}

#[derive(Debug, Clone)]
pub struct HeaderAdd {
    pub name: HeaderName,
    pub value: HeaderValueSource,
    pub action: AppendAction,
    pub keep_empty_value: bool,
}

/// One level's mutations: removals first, then additions, as Envoy's `HeaderParser`.
#[derive(Debug, Clone, Default)]
pub struct HeaderMutations {
    pub add: Vec<HeaderAdd>,
    pub remove: Vec<HeaderName>,
}

fn modifiable(name: &str) -> bool {
    !name.starts_with(':') && !name.eq_ignore_ascii_case("host")
}

impl HeaderMutations {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// Builds one level. `field` is e.g. `request_headers_to_add` and is used in errors
    /// together with the `_to_remove` counterpart.
    pub fn try_from_proto(
        add: &[HeaderValueOption],
        remove: &[String],
        add_field: &str,
        remove_field: &str,
    ) -> Result<Self, ConfigError> {
        let mut out = HeaderMutations::default();
        for (i, r) in remove.iter().enumerate() {
            let field = format!("{remove_field}[{i}]");
            if !modifiable(r) {
                return Err(ConfigError::field(
                    field,
                    format!(":-prefixed or host headers may not be removed: {r:?}"),
                ));
            }
            out.remove.push(
                HeaderName::from_bytes(r.to_ascii_lowercase().as_bytes())
                    .map_err(|_| ConfigError::field(field, format!("invalid header name {r:?}")))?,
            );
        }
        for (i, o) in add.iter().enumerate() {
            let field = format!("{add_field}[{i}]");
            let Some(h) = &o.header else {
                return Err(ConfigError::field(format!("{field}.header"), "is required"));
            };
            if !modifiable(&h.key) {
                return Err(ConfigError::field(
                    format!("{field}.header.key"),
                    format!(
                        ":-prefixed or host headers may not be modified: {:?}",
                        h.key
                    ),
                ));
            }
            let name =
                HeaderName::from_bytes(h.key.to_ascii_lowercase().as_bytes()).map_err(|_| {
                    ConfigError::field(
                        format!("{field}.header.key"),
                        format!("invalid header name {:?}", h.key),
                    )
                })?;
            let raw = if h.raw_value.is_empty() {
                h.value.clone()
            } else {
                String::from_utf8(h.raw_value.clone()).map_err(|_| {
                    ConfigError::field(format!("{field}.header.raw_value"), "must be UTF-8")
                })?
            };
            let action = match (&o.append, HeaderAppendAction::try_from(o.append_action)) {
                (Some(_), Ok(a)) if a != HeaderAppendAction::AppendIfExistsOrAdd => {
                    return Err(ConfigError::field(
                        format!("{field}.append"),
                        "append and append_action are mutually exclusive",
                    ));
                }
                (Some(b), _) if b.value => AppendAction::AppendIfExistsOrAdd,
                (Some(_), _) => AppendAction::OverwriteIfExistsOrAdd,
                (None, Ok(HeaderAppendAction::AppendIfExistsOrAdd)) => {
                    AppendAction::AppendIfExistsOrAdd
                }
                (None, Ok(HeaderAppendAction::AddIfAbsent)) => AppendAction::AddIfAbsent,
                (None, Ok(HeaderAppendAction::OverwriteIfExistsOrAdd)) => {
                    AppendAction::OverwriteIfExistsOrAdd
                }
                (None, Ok(HeaderAppendAction::OverwriteIfExists)) => {
                    AppendAction::OverwriteIfExists
                }
                (None, Err(_)) => {
                    return Err(ConfigError::field(
                        format!("{field}.append_action"),
                        format!("unknown value {}", o.append_action),
                    ));
                }
            };
            let formatter = Formatter::parse(&raw)
                .map_err(|e| ConfigError::field(format!("{field}.header.value"), e.to_string()))?;
            let value = if formatter.is_literal() {
                // `%%` escapes are resolved by formatting once with no context needed.
                let lit = raw.replace("%%", "%");
                HeaderValueSource::Literal(HeaderValue::from_str(&lit).map_err(|_| {
                    ConfigError::field(
                        format!("{field}.header.value"),
                        format!("invalid header value {raw:?}"),
                    )
                })?)
            } else {
                HeaderValueSource::Format(formatter)
            };
            out.add.push(HeaderAdd {
                name,
                value,
                action,
                keep_empty_value: o.keep_empty_value,
            });
        }
        Ok(out)
    }

    /// Applies this level to `target`. Values are computed from `ctx` (which reads the
    /// headers as they were before this level), then written.
    pub fn apply(&self, target: &mut HeaderMap, ctx: Option<&FormatCtx<'_>>) {
        for name in &self.remove {
            target.remove(name);
        }
        let mut buf = String::new();
        for add in &self.add {
            let value = match &add.value {
                HeaderValueSource::Literal(v) => v.clone(),
                HeaderValueSource::Format(f) => {
                    buf.clear();
                    if let Some(ctx) = ctx {
                        f.format_header(ctx, &mut buf);
                    }
                    match HeaderValue::from_str(&buf) {
                        Ok(v) => v,
                        Err(_) => continue,
                    }
                }
            };
            if value.is_empty() && !add.keep_empty_value {
                continue;
            }
            apply_one(target, &add.name, value, add.action);
        }
    }

    /// True when any value needs a formatting context.
    pub fn needs_context(&self) -> bool {
        self.add
            .iter()
            .any(|a| matches!(a.value, HeaderValueSource::Format(_)))
    }
}

fn apply_one(target: &mut HeaderMap, name: &HeaderName, value: HeaderValue, action: AppendAction) {
    match action {
        AppendAction::AppendIfExistsOrAdd => {
            target.append(name.clone(), value);
        }
        AppendAction::AddIfAbsent => {
            if !target.contains_key(name) {
                target.insert(name.clone(), value);
            }
        }
        AppendAction::OverwriteIfExistsOrAdd => {
            target.insert(name.clone(), value);
        }
        AppendAction::OverwriteIfExists => {
            if target.contains_key(name) {
                target.insert(name.clone(), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::{
        envoy::config::core::v3::HeaderValue as PbHv, google::protobuf::BoolValue,
    };

    fn opt(k: &str, v: &str, action: i32, append: Option<bool>) -> HeaderValueOption {
        HeaderValueOption {
            header: Some(PbHv {
                key: k.into(),
                value: v.into(),
                raw_value: vec![],
            }),
            append: append.map(|value| BoolValue { value }),
            append_action: action,
            keep_empty_value: false,
        }
    }

    #[test]
    fn append_actions() {
        let m = HeaderMutations::try_from_proto(
            &[
                opt("x-append", "2", 0, None),
                opt("x-absent", "new", 1, None),
                opt("x-present", "no", 1, None),
                opt("x-over", "set", 2, None),
                opt("x-if-exists", "set", 3, None),
                opt("x-legacy", "over", 0, Some(false)),
                opt("x-pct", "100%%", 0, None),
            ],
            &["x-gone".into()],
            "request_headers_to_add",
            "request_headers_to_remove",
        )
        .expect("valid");
        let mut h = HeaderMap::new();
        h.insert("x-append", "1".parse().expect("v"));
        h.insert("x-present", "old".parse().expect("v"));
        h.insert("x-over", "old".parse().expect("v"));
        h.insert("x-legacy", "old".parse().expect("v"));
        h.insert("x-gone", "old".parse().expect("v"));
        m.apply(&mut h, None);
        let all: Vec<_> = h
            .get_all("x-append")
            .iter()
            .map(|v| v.to_str().expect("ascii"))
            .collect();
        assert_eq!(all, ["1", "2"]);
        assert_eq!(h["x-absent"], "new");
        assert_eq!(h["x-present"], "old");
        assert_eq!(h["x-over"], "set");
        assert!(!h.contains_key("x-if-exists"));
        assert_eq!(h["x-legacy"], "over");
        assert_eq!(h["x-pct"], "100%");
        assert!(!h.contains_key("x-gone"));
    }

    #[test]
    fn rejects_pseudo_and_host_and_bad_formats() {
        let e = HeaderMutations::try_from_proto(
            &[opt(":path", "/x", 0, None)],
            &[],
            "request_headers_to_add",
            "r",
        )
        .expect_err("rejects");
        assert_eq!(e.field, "request_headers_to_add[0].header.key");
        let e = HeaderMutations::try_from_proto(
            &[],
            &["Host".into()],
            "a",
            "request_headers_to_remove",
        )
        .expect_err("rejects");
        assert_eq!(e.field, "request_headers_to_remove[0]");
        let e = HeaderMutations::try_from_proto(
            &[opt("x", "%BOGUS%", 0, None)],
            &[],
            "response_headers_to_add",
            "r",
        )
        .expect_err("rejects");
        assert!(e.message.contains("BOGUS"), "{e}");
        let e = HeaderMutations::try_from_proto(&[opt("x", "v", 2, Some(true))], &[], "a", "r")
            .expect_err("rejects");
        assert!(e.field.ends_with(".append"));
    }
}
