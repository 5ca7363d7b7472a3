//! The configuration file: parsed from TOML, then validated into types that cannot be invalid.
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// toml's message names the line, column and field.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// How the program is attached to the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic mode with a warning.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode: works on every interface, slower.
    Generic,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataplaneConfig {
    /// The interface the program attaches to.
    pub interface: String,
    #[serde(default)]
    pub xdp_mode: XdpMode,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub dataplane: DataplaneConfig,
}

impl Config {
    /// Parses a config; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("test.toml"))
    }

    #[test]
    fn minimal_config_defaults_to_auto_mode() {
        let c = parse("[dataplane]\ninterface = \"eth0\"\n").unwrap();
        assert_eq!(c.dataplane.interface, "eth0");
        assert_eq!(c.dataplane.xdp_mode, XdpMode::Auto);
    }

    #[test]
    fn unknown_key_names_file_line_and_field() {
        let err = parse("[dataplane]\ninterface = \"eth0\"\nintreface = \"x\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("test.toml:"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
        assert!(msg.contains("intreface"), "{msg}");
    }

    #[test]
    fn bad_mode_is_rejected() {
        let err = parse("[dataplane]\ninterface = \"eth0\"\nxdp_mode = \"fast\"\n").unwrap_err();
        assert!(err.to_string().contains("fast"), "{err}");
    }
}
