//! Errors about documents: where (file, document, line), what (the resource), and every
//! problem found in it, each with its field path.

use std::fmt;

/// One problem at one field: `spec.http[0].retries.attempts: must be >= 0`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FieldError {
    /// The field path (`spec.http[0].route[1].weight`); empty for the whole document.
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A document that could not be turned into a valid resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentError {
    /// The file it came from (`-` for stdin).
    pub file: String,
    /// 0-based position of the document in the file.
    pub index: usize,
    /// 1-based line: of a YAML syntax error, else where the document starts.
    pub line: Option<usize>,
    /// 1-based column of a YAML syntax error.
    pub column: Option<usize>,
    /// `Kind namespace/name` when the document got that far.
    pub resource: Option<String>,
    /// Every problem found (at least one).
    pub errors: Vec<FieldError>,
}

impl DocumentError {
    /// `file:line:column` (as much as is known).
    pub fn location(&self) -> String {
        match (self.line, self.column) {
            (Some(l), Some(c)) => format!("{}:{l}:{c}", self.file),
            (Some(l), None) => format!("{}:{l}", self.file),
            _ => format!("{} (document {})", self.file, self.index + 1),
        }
    }
}

impl fmt::Display for DocumentError {
    /// One line per problem: `bad.yaml:12: VirtualService default/reviews: spec.http[0].timeout: ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let location = self.location();
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match &self.resource {
                Some(r) => write!(f, "{location}: {r}: {e}")?,
                None => write!(f, "{location}: {e}")?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for DocumentError {}
