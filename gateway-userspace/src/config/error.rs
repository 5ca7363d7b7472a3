//! Why a configuration was not accepted, and where in the file.
use std::{
    fmt,
    path::{Path, PathBuf},
};

use thiserror::Error;

/// Why a configuration was not accepted.
#[derive(Debug, Error)]
pub enum ConfigError {
    // The io error is the source, which `{:#}` (anyhow) appends: the message leaves it out.
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, or a value of the wrong type (only the first is reported).
    #[error("{}", parse_line(.path, *.line, .field.as_deref(), .message))]
    Parse {
        path: PathBuf,
        /// 1-based; `None` when toml gives no position.
        line: Option<usize>,
        /// The dotted key the error points at (`dataplane.xdp_mode`), as read from the source.
        field: Option<String>,
        message: String,
    },
    /// Well-formed, but the values break the rules: every problem found, ordered by line.
    #[error("{}", issue_lines(.path, .issues))]
    Invalid { path: PathBuf, issues: Vec<Issue> },
}

/// One problem with a well-formed configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// 1-based line of the key (or, for a value left at its default, of its table's header).
    pub line: usize,
    /// The service the key belongs to, by name.
    pub service: Option<String>,
    /// The key as a dotted path: from the top for `dataplane.*` and `admin.*`, from the
    /// `[[service]]` table otherwise (`port`, `health.timeout`, `backend.health.port`).
    pub field: String,
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(service) = &self.service {
            write!(f, "service {service:?}: ")?;
        }
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn parse_line(path: &Path, line: Option<usize>, field: Option<&str>, message: &str) -> String {
    let mut out = path.display().to_string();
    if let Some(line) = line {
        out += &format!(":{line}");
    }
    if let Some(field) = field {
        out += &format!(": {field}");
    }
    // Some toml messages span lines ("invalid table header\nduplicate key ..."): keep one.
    out + ": " + &message.trim().replace('\n', ": ")
}

fn issue_lines(path: &Path, issues: &[Issue]) -> String {
    let path = path.display();
    let lines: Vec<String> = issues
        .iter()
        .map(|i| format!("{path}:{}: {i}", i.line))
        .collect();
    lines.join("\n")
}

/// The 1-based line holding byte `offset`.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.as_bytes()[..offset]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// For a syntax error (where serde has no path yet): the dotted key written on line `line`
/// (1-based), under the last table header above it. Best effort, for the message only.
pub(super) fn key_on_line(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().take(line).collect();
    let header = lines.iter().rev().find_map(|l| {
        let t = l.trim_start().strip_prefix('[')?;
        let t = t.strip_prefix('[').unwrap_or(t);
        Some(t.split(']').next()?.trim().to_string())
    });
    let key = lines.get(line.checked_sub(1)?).and_then(|l| {
        let (k, _) = l.split_once('=')?;
        let k = k.trim();
        let bare = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
        (!k.is_empty() && k.chars().all(bare)).then(|| k.to_string())
    });
    match (header, key) {
        (Some(h), Some(k)) if !h.is_empty() => Some(format!("{h}.{k}")),
        (h, k) => k.or(h).filter(|s| !s.is_empty()),
    }
}

/// The dotted key of a parse error, as written in the file: serde's path without the
/// array indexes (`service.backend.health.rise`), and for an unknown key the key itself.
/// `None` at the top level (a missing `[dataplane]`).
pub(super) fn dotted_key(path: &serde_path_to_error::Path, message: &str) -> Option<String> {
    use serde_path_to_error::Segment;
    let mut keys: Vec<&str> = path
        .iter()
        .filter_map(|s| match s {
            // `Spanned` reads its value as a map with private keys.
            Segment::Map { key } if key.starts_with("$__serde_spanned") => None,
            Segment::Map { key } | Segment::Enum { variant: key } => Some(key.as_str()),
            Segment::Seq { .. } | Segment::Unknown => None,
        })
        .collect();
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|m| m.split('`').next());
    if let Some(k) = unknown
        && keys.last() != Some(&k)
    {
        keys.push(k);
    }
    (!keys.is_empty()).then(|| keys.join("."))
}
