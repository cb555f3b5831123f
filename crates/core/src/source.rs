//! Source files of a policy bundle and the problems found in them.
//!
//! The core never reads the file system: front ends hand it [`SourceFile`]s and get back
//! [`Problem`]s that point at `file:line`.

use std::fmt;
use std::ops::Range;

use serde::Serialize;

/// One file of a policy bundle, as read by a front end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Path relative to the bundle root, with `/` separators (`agents/phish-triage.toml`).
    pub path: String,
    /// The file's content.
    pub text: String,
}

impl SourceFile {
    pub fn new(path: impl Into<String>, text: impl Into<String>) -> Self {
        Self { path: path.into(), text: text.into() }
    }

    /// The 1-based line that holds byte `offset`.
    pub fn line_at(&self, offset: usize) -> usize {
        line_at(&self.text, offset)
    }

    /// A problem at the start of `span` in this file.
    pub fn problem_at(&self, span: Option<Range<usize>>, message: impl Into<String>) -> Problem {
        Problem { file: self.path.clone(), line: span.map(|s| self.line_at(s.start)), message: message.into() }
    }
}

/// The 1-based line of `text` that holds byte `offset`.
pub fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|b| **b == b'\n').count() + 1
}

/// One thing wrong with a bundle, located as precisely as the source allows.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Problem {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl Problem {
    pub fn in_file(file: impl Into<String>, message: impl Into<String>) -> Self {
        Self { file: file.into(), line: None, message: message.into() }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file, line, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Turns a TOML parse error into a located problem.
pub(crate) fn toml_problem(file: &SourceFile, err: &toml::de::Error) -> Problem {
    let message = err.message().trim().to_string();
    file.problem_at(err.span(), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_one_based_and_count_newlines_before_the_offset() {
        let text = "a\nbb\nccc";
        assert_eq!(line_at(text, 0), 1);
        assert_eq!(line_at(text, 2), 2);
        assert_eq!(line_at(text, 5), 3);
        assert_eq!(line_at(text, 999), 3);
    }

    #[test]
    fn problems_render_as_file_colon_line() {
        let f = SourceFile::new("agents/x.toml", "a\nb\n");
        let p = f.problem_at(Some(2..3), "unknown action `x.y`");
        assert_eq!(p.to_string(), "agents/x.toml:2: unknown action `x.y`");
        assert_eq!(Problem::in_file("a", "m").to_string(), "a: m");
    }
}
