//! Helpers for tests only: compiled into unit tests, and into the integration tests through
//! the `testing` feature, never into the agent.
use std::collections::BTreeMap;

use gateway_common::{Backend, STAT_COUNT, ServiceKey, ServiceValue, Settings, TrafficStats};

use crate::{
    dataplane::{AttachedMode, DataplaneError, DataplaneOps, LoadOptions},
    mapsync::{MapWriter, SyncError},
    model::Applied,
};

/// Set by `cargo xtask test` (which runs as root): a test that would skip for want of root
/// or a capability fails instead, so the test command cannot pass green without running it.
pub const REQUIRE_PRIVILEGED: &str = "GATEWAY_REQUIRE_PRIVILEGED";

/// Prints why `test` cannot run here, or panics when the test command requires it to run.
pub fn skip(test: &str, why: &str) {
    if std::env::var_os(REQUIRE_PRIVILEGED).is_some() {
        panic!("{test} cannot run here ({why}), and {REQUIRE_PRIVILEGED} says it must");
    }
    eprintln!("SKIPPED {test}: {why}");
}

/// An in-memory [`MapWriter`] for tests, recording the maps as the kernel would hold them.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MemMaps {
    pub settings: Settings,
    pub backends: BTreeMap<u32, Backend>,
    pub tables: BTreeMap<u32, u32>,
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    /// Every write, in order, for tests of ordering.
    pub log: Vec<String>,
}

impl MemMaps {
    /// The table a service entry currently points at.
    pub fn table_of(&self, key: &ServiceKey) -> Option<Vec<u32>> {
        let v = self.services.get(key)?;
        Some(
            (v.table_offset..v.table_offset + v.table_size)
                .map(|i| self.tables.get(&i).copied().unwrap_or(0))
                .collect(),
        )
    }
}

impl MapWriter for MemMaps {
    fn set_settings(&mut self, s: &Settings) -> Result<(), SyncError> {
        self.settings = *s;
        self.log.push("settings".into());
        Ok(())
    }
    fn set_backend(&mut self, id: u32, b: &Backend) -> Result<(), SyncError> {
        if b.family == 0 {
            self.backends.remove(&id);
            self.log.push(format!("clear backend {id}"));
        } else {
            self.backends.insert(id, *b);
            self.log.push(format!("backend {id}"));
        }
        Ok(())
    }
    fn write_table(&mut self, offset: u32, slots: &[u32]) -> Result<(), SyncError> {
        for (i, s) in slots.iter().enumerate() {
            self.tables.insert(offset + i as u32, *s);
        }
        self.log.push(format!("table @{offset}"));
        Ok(())
    }
    fn set_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), SyncError> {
        self.services.insert(*key, *value);
        self.log
            .push(format!("service {} @{}", value.id, value.table_offset));
        Ok(())
    }
    fn remove_service(&mut self, key: &ServiceKey) -> Result<(), SyncError> {
        self.services.remove(key);
        self.log.push("remove service".into());
        Ok(())
    }
}

/// A data plane of in-memory maps for the agent's unit tests; `fail_writes` makes every
/// map write fail, as a kernel that refuses updates would.
#[derive(Debug, Default)]
pub struct FakeDataplane {
    pub maps: MemMaps,
    pub options: LoadOptions,
    pub fail_writes: bool,
}

impl FakeDataplane {
    fn check(&self, what: &str) -> Result<(), SyncError> {
        if self.fail_writes {
            return Err(SyncError::Write {
                what: what.into(),
                message: "refused (fail_writes)".into(),
            });
        }
        Ok(())
    }
}

impl MapWriter for FakeDataplane {
    fn set_settings(&mut self, s: &Settings) -> Result<(), SyncError> {
        self.check("settings")?;
        self.maps.set_settings(s)
    }
    fn set_backend(&mut self, id: u32, b: &Backend) -> Result<(), SyncError> {
        self.check("a backend")?;
        self.maps.set_backend(id, b)
    }
    fn write_table(&mut self, offset: u32, slots: &[u32]) -> Result<(), SyncError> {
        self.check("a table")?;
        self.maps.write_table(offset, slots)
    }
    fn set_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), SyncError> {
        self.check("a service")?;
        self.maps.set_service(key, value)
    }
    fn remove_service(&mut self, key: &ServiceKey) -> Result<(), SyncError> {
        self.check("a service")?;
        self.maps.remove_service(key)
    }
}

impl DataplaneOps for FakeDataplane {
    fn options(&self) -> LoadOptions {
        self.options
    }
    fn adopted(&self) -> bool {
        false
    }
    fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        None
    }
    fn attached_mode(&self) -> Option<AttachedMode> {
        None
    }
    /// Nothing to read back: the agent then rewrites the maps whole.
    fn read_applied(&self) -> Result<Applied, DataplaneError> {
        Ok(Applied::default())
    }
    fn program_id(&self) -> Option<u32> {
        None
    }
    fn global_stats(&self) -> Result<Vec<u64>, DataplaneError> {
        Ok(vec![0; STAT_COUNT as usize])
    }
    fn service_stats(&self, _id: u32) -> Result<TrafficStats, DataplaneError> {
        Ok(TrafficStats::default())
    }
    fn backend_stats(&self, _id: u32) -> Result<TrafficStats, DataplaneError> {
        Ok(TrafficStats::default())
    }
    fn conntrack_len(&self) -> usize {
        0
    }
}
