//! Changes made through the admin API (a backend's admin state or weight) on top of the
//! configuration file.
//!
//! The rule: the last writer wins, per field. An API change overrides the file's value and
//! survives reloads and agent restarts (it is saved in a state file) until either
//! - the file itself changes that field of that backend (the operator edited it since: the
//!   file's new value wins, and the override is dropped with a log line), or
//! - the API sets the field back to the file's value (the override is then simply gone), or
//! - the backend or its service leaves the file.
//!
//! The planner never sees overrides: [`Overrides::apply`] folds them into the config it
//! plans from, so API changes take the same plan -> diff -> apply path as everything else.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::{AdminState, Config, WEIGHT};

#[derive(Debug, Error, PartialEq)]
pub enum OverrideError {
    #[error("no service named {0:?}")]
    NoService(String),
    #[error("service {service} has no backend {addr}")]
    NoBackend { service: String, addr: IpAddr },
    #[error("weight {0} is outside 1..=10000")]
    Weight(u32),
}

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("reading the state file {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the state file {} is not valid", .path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing the state file {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One backend's API changes, with the file's values they were made against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Override {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<AdminState>,
    /// The file's state when `state` was set.
    pub file_state: AdminState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// The file's weight when `weight` was set.
    pub file_weight: u32,
}

/// What a change did, for the caller and the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub service: String,
    pub backend: IpAddr,
    pub field: String,
    pub from: String,
    pub to: String,
    /// `api` when the value now overrides the file, `file` when it matches the file again.
    pub source: String,
}

/// One change of one backend through the API: its admin state or its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChange {
    State(AdminState),
    Weight(u32),
}

/// Overrides by service name and backend address.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Overrides {
    #[serde(default)]
    pub backends: BTreeMap<String, BTreeMap<IpAddr, Override>>,
}

impl Overrides {
    /// The effective config: `file` with every override applied.
    pub fn apply(&self, file: &Config) -> Config {
        let mut c = file.clone();
        for s in &mut c.services {
            let Some(per) = self.backends.get(&s.name) else {
                continue;
            };
            for b in &mut s.backends {
                if let Some(o) = per.get(&b.address) {
                    b.state = o.state.unwrap_or(b.state);
                    b.weight = o.weight.unwrap_or(b.weight);
                }
            }
        }
        c
    }

    fn file_backend<'a>(
        file: &'a Config,
        service: &str,
        addr: IpAddr,
    ) -> Result<&'a crate::config::BackendConfig, OverrideError> {
        let s = file
            .services
            .iter()
            .find(|s| s.name == service)
            .ok_or_else(|| OverrideError::NoService(service.to_string()))?;
        s.backends
            .iter()
            .find(|b| b.address == addr)
            .ok_or_else(|| OverrideError::NoBackend {
                service: service.to_string(),
                addr,
            })
    }

    fn entry(
        &mut self,
        service: &str,
        addr: IpAddr,
        file_b: &crate::config::BackendConfig,
    ) -> &mut Override {
        self.backends
            .entry(service.to_string())
            .or_default()
            .entry(addr)
            .or_insert(Override {
                state: None,
                file_state: file_b.state,
                weight: None,
                file_weight: file_b.weight,
            })
    }

    fn tidy(&mut self) {
        for per in self.backends.values_mut() {
            per.retain(|_, o| o.state.is_some() || o.weight.is_some());
        }
        self.backends.retain(|_, per| !per.is_empty());
    }

    /// Records `change` of one backend of the file's `service`: what it changed, or why
    /// it was refused.
    pub fn set(
        &mut self,
        file: &Config,
        service: &str,
        addr: IpAddr,
        change: BackendChange,
    ) -> Result<Change, OverrideError> {
        match change {
            BackendChange::State(state) => self.set_state(file, service, addr, state),
            BackendChange::Weight(weight) => self.set_weight(file, service, addr, weight),
        }
    }

    /// Sets a backend's admin state; the same as the file's removes the override.
    pub fn set_state(
        &mut self,
        file: &Config,
        service: &str,
        addr: IpAddr,
        state: AdminState,
    ) -> Result<Change, OverrideError> {
        let fb = Self::file_backend(file, service, addr)?.clone();
        let before = self.apply(file);
        let from = Self::file_backend(&before, service, addr)?.state;
        let o = self.entry(service, addr, &fb);
        if state == fb.state {
            o.state = None;
        } else {
            o.state = Some(state);
            o.file_state = fb.state;
        }
        self.tidy();
        Ok(Change {
            service: service.to_string(),
            backend: addr,
            field: "state".into(),
            from: from.as_str().into(),
            to: state.as_str().into(),
            source: if state == fb.state { "file" } else { "api" }.into(),
        })
    }

    /// Sets a backend's weight (1..=10000); the same as the file's removes the override.
    pub fn set_weight(
        &mut self,
        file: &Config,
        service: &str,
        addr: IpAddr,
        weight: u32,
    ) -> Result<Change, OverrideError> {
        if !WEIGHT.contains(&i64::from(weight)) {
            return Err(OverrideError::Weight(weight));
        }
        let fb = Self::file_backend(file, service, addr)?.clone();
        let before = self.apply(file);
        let from = Self::file_backend(&before, service, addr)?.weight;
        let o = self.entry(service, addr, &fb);
        if weight == fb.weight {
            o.weight = None;
        } else {
            o.weight = Some(weight);
            o.file_weight = fb.weight;
        }
        self.tidy();
        Ok(Change {
            service: service.to_string(),
            backend: addr,
            field: "weight".into(),
            from: from.to_string(),
            to: weight.to_string(),
            source: if weight == fb.weight { "file" } else { "api" }.into(),
        })
    }

    /// Applies the rule to a newly read `file`: drops overrides of backends that left it and
    /// of fields the file changed since the override was made. Returns one line per drop.
    pub fn reconcile(&mut self, file: &Config) -> Vec<String> {
        let mut dropped = Vec::new();
        for (service, per) in &mut self.backends {
            for (addr, o) in per.iter_mut() {
                let Ok(fb) = Self::file_backend(file, service, *addr) else {
                    dropped.push(format!(
                        "{service} {addr}: left the config; its API changes are dropped"
                    ));
                    o.state = None;
                    o.weight = None;
                    continue;
                };
                if let Some(s) = o.state
                    && fb.state != o.file_state
                {
                    dropped.push(format!(
                        "{service} {addr}: the file changed state {} -> {}, which replaces \
                         the API's {}",
                        o.file_state.as_str(),
                        fb.state.as_str(),
                        s.as_str()
                    ));
                    o.state = None;
                }
                if let Some(w) = o.weight
                    && fb.weight != o.file_weight
                {
                    dropped.push(format!(
                        "{service} {addr}: the file changed weight {} -> {}, which replaces \
                         the API's {w}",
                        o.file_weight, fb.weight
                    ));
                    o.weight = None;
                }
            }
        }
        self.tidy();
        dropped
    }

    /// Where overrides are kept by default: next to nothing else, on tmpfs, so that they
    /// live exactly as long as the pinned data plane (until a reboot).
    pub fn default_path(interface: &str) -> PathBuf {
        Path::new("/run/gateway").join(format!("{interface}.overrides.json"))
    }

    /// Reads a state file; a missing file is no overrides.
    pub fn load(path: &Path) -> Result<Overrides, StateFileError> {
        let path_buf = || path.to_path_buf();
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|source| StateFileError::Parse {
                path: path_buf(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Overrides::default()),
            Err(source) => Err(StateFileError::Read {
                path: path_buf(),
                source,
            }),
        }
    }

    /// Writes the state file atomically (a temporary file renamed over it).
    pub fn save(&self, path: &Path) -> Result<(), StateFileError> {
        let err = |source| StateFileError::Write {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = path.with_extension("tmp");
        // Maps of strings and numbers: serializing cannot fail.
        let text = serde_json::to_string_pretty(self).expect("overrides serialize");
        std::fs::write(&tmp, text).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// The override of one backend, if any.
    pub fn get(&self, service: &str, addr: IpAddr) -> Option<&Override> {
        self.backends.get(service)?.get(&addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(state12: &str, weight12: u32) -> Config {
        let text = format!(
            r#"
[dataplane]
interface = "eth0"

[[service]]
name = "web"
vip = "198.18.1.1"
port = 80
protocol = "tcp"
mode = "l2dsr"

[[service.backend]]
address = "198.18.0.11"

[[service.backend]]
address = "198.18.0.12"
state = "{state12}"
weight = {weight12}
"#
        );
        Config::parse(&text, Path::new("t.toml")).unwrap()
    }

    fn b12(c: &Config) -> (AdminState, u32) {
        let b = &c.services[0].backends[1];
        (b.state, b.weight)
    }

    const B12: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 0, 12));

    #[test]
    fn an_api_change_survives_a_reload_that_leaves_the_field_alone() {
        let file = config("ready", 100);
        let mut o = Overrides::default();
        let c = o.set_state(&file, "web", B12, AdminState::Drain).unwrap();
        assert_eq!(
            (c.from.as_str(), c.to.as_str(), c.source.as_str()),
            ("ready", "drain", "api")
        );
        assert_eq!(b12(&o.apply(&file)), (AdminState::Drain, 100));
        // The file changes the weight only: the drain stays, the new weight applies.
        let file2 = config("ready", 50);
        assert!(o.reconcile(&file2).is_empty());
        assert_eq!(b12(&o.apply(&file2)), (AdminState::Drain, 50));
    }

    #[test]
    fn the_file_wins_when_it_changes_the_same_field() {
        let file = config("ready", 100);
        let mut o = Overrides::default();
        o.set_state(&file, "web", B12, AdminState::Drain).unwrap();
        o.set_weight(&file, "web", B12, 10).unwrap();
        let file2 = config("maint", 100);
        let dropped = o.reconcile(&file2);
        assert_eq!(dropped.len(), 1, "{dropped:?}");
        assert!(dropped[0].contains("state ready -> maint"), "{dropped:?}");
        assert_eq!(b12(&o.apply(&file2)), (AdminState::Maint, 10));
    }

    #[test]
    fn setting_the_files_value_clears_the_override() {
        let file = config("ready", 100);
        let mut o = Overrides::default();
        o.set_weight(&file, "web", B12, 7).unwrap();
        assert!(o.get("web", B12).is_some());
        let c = o.set_weight(&file, "web", B12, 100).unwrap();
        assert_eq!(c.source, "file");
        assert_eq!(o, Overrides::default());
    }

    #[test]
    fn a_backend_that_leaves_the_file_loses_its_overrides() {
        let file = config("ready", 100);
        let mut o = Overrides::default();
        o.set_state(&file, "web", B12, AdminState::Maint).unwrap();
        let mut file2 = file.clone();
        file2.services[0].backends.pop();
        assert_eq!(o.reconcile(&file2).len(), 1);
        assert_eq!(o, Overrides::default());
    }

    #[test]
    fn bad_requests_are_errors() {
        let file = config("ready", 100);
        let mut o = Overrides::default();
        assert_eq!(
            o.set_state(&file, "nope", B12, AdminState::Drain),
            Err(OverrideError::NoService("nope".into()))
        );
        let other: IpAddr = "198.18.0.99".parse().unwrap();
        assert!(matches!(
            o.set_state(&file, "web", other, AdminState::Drain),
            Err(OverrideError::NoBackend { .. })
        ));
        assert_eq!(
            o.set_weight(&file, "web", B12, 0),
            Err(OverrideError::Weight(0))
        );
        assert_eq!(
            o.set_weight(&file, "web", B12, 10_001),
            Err(OverrideError::Weight(10_001))
        );
        assert_eq!(o, Overrides::default());
    }

    #[test]
    fn the_state_file_round_trips() {
        let file = config("ready", 100);
        let mut o = Overrides::default();
        o.set_state(&file, "web", B12, AdminState::Drain).unwrap();
        let path = std::env::temp_dir().join(format!("gateway-ov-{}.json", std::process::id()));
        o.save(&path).unwrap();
        assert_eq!(Overrides::load(&path).unwrap(), o);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(Overrides::load(&path).unwrap(), Overrides::default());
    }
}
