//! Structural checks of an Istio document against its CRD schema (the one `crds`
//! generates and the API server enforces): unknown fields, wrong types, bad enum values,
//! integer ranges, missing required fields. Unlike serde, which stops at the first
//! problem, this walks the whole document and reports every problem with its path.

use serde_json::{Map, Value};

use crate::document::{FieldError, Kind};

/// Fields a Kubernetes object may carry next to `spec`.
const TOP_LEVEL: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];

/// Checks `spec` and `status` of an Istio object (metadata is checked elsewhere).
pub fn check_object(kind: Kind, value: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let (Some(schema), Value::Object(obj)) = (crate::crds::schema(kind), value) else {
        return errors;
    };
    for key in obj.keys() {
        if !TOP_LEVEL.contains(&key.as_str()) {
            errors.push(FieldError::new(
                key.clone(),
                format!("unknown field {key:?}"),
            ));
        }
    }
    let props = schema.get("properties");
    for field in ["spec", "status"] {
        if let (Some(v), Some(s)) = (obj.get(field), props.and_then(|p| p.get(field))) {
            walk(field, v, s, &mut errors);
        }
    }
    errors
}

fn walk(path: &str, value: &Value, schema: &Value, errors: &mut Vec<FieldError>) {
    if value.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) {
            errors.push(FieldError::new(path, "must not be null"));
        }
        return;
    }
    let preserve = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => match value {
            Value::Object(obj) => walk_object(path, obj, schema, preserve, errors),
            _ => errors.push(type_error(path, "an object", value)),
        },
        Some("array") => match value {
            Value::Array(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        walk(&format!("{path}[{i}]"), item, item_schema, errors);
                    }
                }
            }
            _ => errors.push(type_error(path, "a list", value)),
        },
        Some("string") => match value {
            Value::String(s) => check_enum(path, &Value::String(s.clone()), schema, errors),
            _ => errors.push(type_error(path, "a string", value)),
        },
        Some("boolean") if !value.is_boolean() => {
            errors.push(type_error(path, "a boolean (true or false)", value));
        }
        Some("integer") => match value.as_number() {
            Some(n) if n.is_i64() || n.is_u64() => check_range(path, value, schema, errors),
            // YAML writes 3.0 for some generators; serde rejects it, so do we.
            _ => errors.push(type_error(path, "an integer", value)),
        },
        Some("number") => {
            if value.is_number() {
                check_range(path, value, schema, errors);
            } else {
                errors.push(type_error(path, "a number", value));
            }
        }
        _ => {}
    }
}

fn walk_object(
    path: &str,
    obj: &Map<String, Value>,
    schema: &Value,
    preserve: bool,
    errors: &mut Vec<FieldError>,
) {
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for field in required.iter().filter_map(Value::as_str) {
            if !obj.contains_key(field) {
                errors.push(FieldError::new(join(path, field), "required field missing"));
            }
        }
    }
    for (key, v) in obj {
        if let Some(prop) = properties.and_then(|p| p.get(key)) {
            walk(&join(path, key), v, prop, errors);
        } else if let Some(additional) = additional {
            walk(&format!("{path}[{key}]"), v, additional, errors);
        } else if !preserve {
            errors.push(FieldError::new(
                join(path, key),
                unknown_field_message(key, properties),
            ));
        }
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn check_enum(path: &str, value: &Value, schema: &Value, errors: &mut Vec<FieldError>) {
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let names: Vec<String> = allowed
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect();
        errors.push(FieldError::new(
            path,
            format!(
                "unsupported value {value}: must be one of {}",
                names.join(", ")
            ),
        ));
    }
}

fn check_range(path: &str, value: &Value, schema: &Value, errors: &mut Vec<FieldError>) {
    let Some(v) = value.as_f64() else { return };
    let format = schema.get("format").and_then(Value::as_str);
    let (fmt_min, fmt_max) = match format {
        Some("int32") => (Some(f64::from(i32::MIN)), Some(f64::from(i32::MAX))),
        Some("uint32") => (Some(0.0), Some(f64::from(u32::MAX))),
        Some("uint64" | "uint16" | "uint8" | "uint") => (Some(0.0), None),
        _ => (None, None),
    };
    let min = schema.get("minimum").and_then(Value::as_f64).or(fmt_min);
    let max = schema.get("maximum").and_then(Value::as_f64).or(fmt_max);
    if let Some(min) = min
        && v < min
    {
        errors.push(FieldError::new(
            path,
            format!("must be >= {min}, got {value}"),
        ));
    } else if let Some(max) = max
        && v > max
    {
        errors.push(FieldError::new(
            path,
            format!("must be <= {max}, got {value}"),
        ));
    }
}

fn type_error(path: &str, expected: &str, got: &Value) -> FieldError {
    let got = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    };
    FieldError::new(path, format!("must be {expected}, got {got}"))
}

/// `unknown field "timeot" (did you mean "timeout"?)`.
fn unknown_field_message(key: &str, properties: Option<&Map<String, Value>>) -> String {
    let suggestion = properties.and_then(|p| {
        p.keys()
            .map(|k| {
                (
                    edit_distance(&key.to_ascii_lowercase(), &k.to_ascii_lowercase()),
                    k,
                )
            })
            .filter(|(d, _)| *d <= 2)
            .min()
            .map(|(_, k)| k.clone())
    });
    match suggestion {
        Some(s) => format!("unknown field {key:?} (did you mean {s:?}?)"),
        None => format!("unknown field {key:?}"),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(kind: Kind, v: Value) -> Vec<String> {
        check_object(kind, &v)
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn reports_every_structural_problem() {
        let errs = errors(
            Kind::VirtualService,
            json!({
                "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"name": "x"},
                "extra": 1,
                "spec": {
                    "hosts": "reviews",
                    "http": [{"timeot": "1s", "retries": {"attempts": "three"},
                              "route": [{"destination": {"host": "r", "port": {"number": -1}}}]}],
                }
            }),
        );
        assert_eq!(
            errs,
            vec![
                "extra: unknown field \"extra\"",
                "spec.hosts: must be a list, got a string",
                "spec.http[0].timeot: unknown field \"timeot\" (did you mean \"timeout\"?)",
                "spec.http[0].retries.attempts: must be an integer, got a string",
                "spec.http[0].route[0].destination.port.number: must be >= 0, got -1",
            ]
        );
    }

    #[test]
    fn enums_and_maps() {
        let errs = errors(
            Kind::DestinationRule,
            json!({"spec": {"host": "r", "trafficPolicy": {"loadBalancer": {"simple": "FASTEST"}},
                   "subsets": [{"name": "v1", "labels": {"version": 1}}]}}),
        );
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with(
                "spec.trafficPolicy.loadBalancer.simple: unsupported value \"FASTEST\""
            )
        );
        assert!(
            errs[1].starts_with("spec.subsets[0].labels[version]: must be a string"),
            "{errs:?}"
        );
    }

    #[test]
    fn status_is_free_form() {
        assert!(
            errors(
                Kind::Gateway,
                json!({"spec": {}, "status": {"anything": [1]}})
            )
            .is_empty()
        );
    }
}
