//! The configuration file: parsed from TOML, then validated into types that cannot be invalid.
//!
//! [`Config::parse`] works in two steps. serde reads the text into private `Raw*` structs
//! (`raw`) that mirror the file, with every key wrapped in [`toml::Spanned`] so that its line
//! is known; a syntax error, an unknown key or a value of the wrong type stops there, at the
//! first one (serde's model). The raw structs are then validated (`validate`, and `health`
//! for the health keys that a backend may override) into the public types (`types`), and
//! every problem found on the way is collected, so one run reports all of them (`error`).
//! Nothing is applied on error: keeping the old configuration on a bad reload is the
//! caller's job, and [`LoadTime`] names the settings a reload cannot change.
//!
//! `docs/config.md` is the reference for every key; `examples/gateway.toml` is a full example.
mod bgp;
mod error;
mod health;
mod load_time;
mod protection;
mod raw;
#[cfg(test)]
mod tests;
mod types;
mod validate;

use std::path::Path;

pub use error::{ConfigError, Issue};
pub use load_time::LoadTime;
pub use types::*;
pub use validate::{WEIGHT, parse_duration, parse_mac};

use error::{dotted_key, key_on_line, line_of};
use raw::RawConfig;
use validate::Validator;

impl Config {
    /// Parses and validates a config; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|e| {
                let field = dotted_key(e.path(), e.inner().message());
                let e = e.into_inner();
                let span = e.span();
                let line = span.as_ref().map(|s| line_of(text, s.start));
                // toml points problems with the root table (a missing `[dataplane]`) at 0..0.
                let at_root = span.as_ref().is_none_or(|s| s.end == 0);
                let on_line = || line.filter(|_| !at_root).and_then(|l| key_on_line(text, l));
                ConfigError::Parse {
                    path: path.to_path_buf(),
                    line,
                    field: field.or_else(on_line),
                    message: e.message().to_string(),
                }
            })?;
        let mut v = Validator {
            text,
            service: None,
            issues: Vec::new(),
        };
        let config = v.config(&raw);
        let mut issues = v.issues;
        match config {
            Some(config) if issues.is_empty() => Ok(config),
            _ => {
                debug_assert!(!issues.is_empty(), "rejected without a reason");
                issues.sort_by_key(|i| i.line);
                Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    issues,
                })
            }
        }
    }

    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }
}
