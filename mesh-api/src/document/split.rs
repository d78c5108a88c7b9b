//! Splitting a stream into documents. We split on `---` separator lines ourselves (as
//! kubectl does) instead of letting the YAML parser do it, so that each document keeps its
//! starting line and a syntax error in one document does not hide the ones after it.
//! `kind: List` documents are expanded into their items.

use serde_json::Value;

use super::{DocumentError, FieldError};

/// One document's content before it is typed.
#[derive(Debug, Clone, PartialEq)]
pub struct RawDocument {
    /// 0-based position among the file's non-empty documents.
    pub index: usize,
    /// 1-based line where the document starts.
    pub line: usize,
    pub value: Value,
}

/// Splits YAML (or JSON) text into documents, skipping empty ones.
pub fn split_documents(text: &str, file: &str) -> Vec<Result<RawDocument, DocumentError>> {
    let mut out = Vec::new();
    let mut index = 0;
    for (start_line, chunk) in chunks(text) {
        if chunk.lines().all(|l| {
            let t = l.trim();
            t.is_empty() || t.starts_with('#')
        }) {
            continue;
        }
        match serde_yaml::from_str::<Value>(&chunk) {
            Ok(Value::Null) => {}
            Ok(value) => {
                for value in expand_list(value) {
                    out.push(Ok(RawDocument {
                        index,
                        line: start_line,
                        value,
                    }));
                    index += 1;
                }
            }
            Err(e) => {
                let (line, column) = match e.location() {
                    Some(loc) => (Some(start_line + loc.line() - 1), Some(loc.column())),
                    None => (Some(start_line), None),
                };
                out.push(Err(DocumentError {
                    file: file.to_string(),
                    index,
                    line,
                    column,
                    resource: None,
                    errors: vec![FieldError::new(
                        "",
                        format!("YAML syntax error: {}", strip_location(&e)),
                    )],
                }));
                index += 1;
            }
        }
    }
    out
}

/// serde_yaml appends " at line L column C" to its messages; we print our own location.
fn strip_location(e: &serde_yaml::Error) -> String {
    let msg = e.to_string();
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    }
}

/// `(first line, text)` of each `---`-separated chunk. A separator line is `---` alone or
/// followed by whitespace or a comment.
fn chunks(text: &str) -> Vec<(usize, String)> {
    let mut chunks = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        let is_separator = line
            .strip_prefix("---")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '#']));
        if is_separator {
            chunks.push((start, std::mem::take(&mut current)));
            start = i + 2;
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    chunks.push((start, current));
    chunks
}

/// `kind: List` (`kubectl get -o yaml`) carries its objects in `items`.
fn expand_list(value: Value) -> Vec<Value> {
    let is_list = value
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k == "List")
        && value.get("items").is_some_and(Value::is_array);
    if !is_list {
        return vec![value];
    }
    match value {
        Value::Object(mut obj) => match obj.remove("items") {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_tracks_lines() {
        let text = "a: 1\n---\n# only a comment\n---\nb: 2\nc: 3\n--- # next\nd: 4\n";
        let docs: Vec<_> = split_documents(text, "f.yaml")
            .into_iter()
            .map(|d| d.expect("valid"))
            .collect();
        assert_eq!(docs.len(), 3);
        assert_eq!((docs[0].index, docs[0].line), (0, 1));
        assert_eq!((docs[1].index, docs[1].line), (1, 5));
        assert_eq!((docs[2].index, docs[2].line), (2, 8));
    }

    #[test]
    fn syntax_error_has_file_line_and_column_and_keeps_later_documents() {
        let text = "a: 1\n---\nb: [1, 2\nc: 3\n---\nd: 4\n";
        let docs = split_documents(text, "f.yaml");
        assert_eq!(docs.len(), 3);
        let err = docs[1].as_ref().expect_err("syntax error");
        assert_eq!(err.file, "f.yaml");
        assert!(err.line.is_some_and(|l| l >= 3), "{err:?}");
        assert!(err.column.is_some());
        assert!(err.to_string().contains("YAML syntax error"), "{err}");
        assert!(docs[2].is_ok());
    }

    #[test]
    fn json_and_lists() {
        let docs = split_documents(
            r#"{"kind": "List", "items": [{"a": 1}, {"b": 2}]}"#,
            "l.json",
        );
        assert_eq!(docs.len(), 2);
    }
}
