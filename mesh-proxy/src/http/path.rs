//! Request path normalization as the connection manager options ask: RFC 3986 dot
//! segment removal (`normalize_path`), `merge_slashes`, and the escaped-slash actions.

use std::borrow::Cow;

use crate::config::http::{EscapedSlashes, HttpConnectionManager};

/// The path was refused (escaped slashes with `REJECT_REQUEST`, or not a path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected;

/// Normalizes `path_and_query` per the HCM; returns the original when nothing changes.
pub fn normalize<'a>(pq: &'a str, hcm: &HttpConnectionManager) -> Result<Cow<'a, str>, Rejected> {
    if !hcm.normalize_path
        && !hcm.merge_slashes
        && hcm.escaped_slashes == EscapedSlashes::KeepUnchanged
    {
        return Ok(Cow::Borrowed(pq));
    }
    let (path, query) = match pq.find('?') {
        Some(i) => (&pq[..i], &pq[i..]),
        None => (pq, ""),
    };
    let mut p: Cow<'_, str> = Cow::Borrowed(path);
    let has_escaped_slash = |s: &str| {
        let l = s.to_ascii_lowercase();
        l.contains("%2f") || l.contains("%5c")
    };
    match hcm.escaped_slashes {
        EscapedSlashes::KeepUnchanged => {}
        EscapedSlashes::RejectRequest => {
            if has_escaped_slash(&p) {
                return Err(Rejected);
            }
        }
        EscapedSlashes::UnescapeAndForward => {
            if has_escaped_slash(&p) {
                p = Cow::Owned(unescape_slashes(&p));
            }
        }
    }
    if hcm.normalize_path && has_dot_segments(&p) {
        p = Cow::Owned(remove_dot_segments(&p));
    }
    if hcm.merge_slashes && p.contains("//") {
        p = Cow::Owned(merge_slashes(&p));
    }
    if matches!(p, Cow::Borrowed(_)) {
        return Ok(Cow::Borrowed(pq));
    }
    Ok(Cow::Owned(format!("{p}{query}")))
}

fn unescape_slashes(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    let mut i = 0;
    let b = p.as_bytes();
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let code = &p[i + 1..i + 3];
            if code.eq_ignore_ascii_case("2f") {
                out.push('/');
                i += 3;
                continue;
            }
            if code.eq_ignore_ascii_case("5c") {
                out.push('\\');
                i += 3;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// Whether [`remove_dot_segments`] would change `path`: almost no request path has a
/// `.` or `..` segment or a backslash, and those skip the rebuild (and the new URI).
fn has_dot_segments(path: &str) -> bool {
    !path.starts_with('/')
        || path.contains('\\')
        || path.split('/').any(|seg| seg == "." || seg == "..")
}

/// RFC 3986 section 5.2.4, also treating `\` as a separator as browsers do (Envoy's
/// normalizer does the same).
pub fn remove_dot_segments(path: &str) -> String {
    let path = path.replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                if out.len() > 1 {
                    out.pop();
                }
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let joined = out.join("/");
    if joined.starts_with('/') {
        joined
    } else {
        format!("/{joined}")
    }
}

pub fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut prev_slash = false;
    for c in path.chars() {
        if c == '/' && prev_slash {
            continue;
        }
        prev_slash = c == '/';
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments() {
        assert_eq!(remove_dot_segments("/a/b/../c"), "/a/c");
        assert_eq!(remove_dot_segments("/a/./b/."), "/a/b/");
        assert_eq!(remove_dot_segments("/../../x"), "/x");
        assert_eq!(remove_dot_segments("/a/b/.."), "/a/");
        assert_eq!(remove_dot_segments("/"), "/");
        assert_eq!(remove_dot_segments("/a\\..\\b"), "/b");
    }

    #[test]
    fn slashes() {
        assert_eq!(merge_slashes("//a///b/"), "/a/b/");
        assert_eq!(unescape_slashes("/a%2Fb%5cc%2"), "/a/b\\c%2");
    }

    proptest::proptest! {
        #[test]
        fn normalized_paths_have_no_dot_segments(p in "(/(\\.|\\.\\.|[a-z]{1,3})){0,8}") {
            let n = remove_dot_segments(if p.is_empty() { "/" } else { &p });
            proptest::prop_assert!(n.starts_with('/'));
            proptest::prop_assert!(!n.split('/').any(|s| s == "." || s == ".."), "{n}");
        }

        /// The fast path is exact: a path it skips is one the removal leaves as is.
        #[test]
        fn paths_without_dot_segments_are_unchanged(p in "[/a.\\\\]{0,12}") {
            if !has_dot_segments(&p) {
                proptest::prop_assert_eq!(remove_dot_segments(&p), p);
            }
        }
    }
}
