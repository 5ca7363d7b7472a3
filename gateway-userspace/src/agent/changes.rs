//! Changes to what the agent runs: a reload of the config file, and the admin API's
//! changes of one backend (kept as [`Overrides`] over the file, in the state file).
use std::net::IpAddr;

use log::{error, info, warn};

use super::Agent;
use crate::{
    admin,
    config::{self, Config, ConfigError},
    dataplane::DataplaneOps,
    error::Chain,
    neigh::NextHops,
    overrides::{BackendChange, Change, Overrides},
};

impl<D: DataplaneOps, N: NextHops> Agent<D, N> {
    /// Recomputes the running config from the file and the overrides; settings fixed at
    /// load time keep their old values until a restart.
    fn set_effective(&mut self) {
        let next = self.overrides.apply(&self.file_config);
        self.config = config::LoadTime::keep_running(&self.config, next);
        self.bgp_config_changed();
    }

    fn save_overrides(&self) {
        if let Err(e) = self.overrides.save(&self.state_file) {
            error!(
                "saving API changes (they apply, but will not survive a restart): {}",
                Chain(&e)
            );
        }
    }

    /// Makes `overrides` the running config's: saved, applied over the file, checks in
    /// step.
    fn take_overrides(&mut self, overrides: Overrides) {
        self.overrides = overrides;
        self.save_overrides();
        self.set_effective();
        self.sync_checks();
    }

    /// An admin API change of one backend: recorded as an override, then planned and
    /// applied like any other change. If the maps cannot be written the change is undone
    /// and the error returned.
    pub fn api_change(
        &mut self,
        service: &str,
        addr: IpAddr,
        change: BackendChange,
    ) -> Result<Change, admin::ChangeError> {
        let before = self.overrides.clone();
        let mut next = before.clone();
        let c = next.set(&self.file_config, service, addr, change)?;
        self.take_overrides(next);
        let why = format!(
            "api: {} {} {} {} -> {}",
            c.service, c.backend, c.field, c.from, c.to
        );
        info!("{why}");
        if let Err(e) = self.try_replan(&why) {
            self.write_failed(&why, &e);
            self.take_overrides(before);
            self.announce(false);
            return Err(admin::ChangeError::Apply(e));
        }
        self.announce(true);
        Ok(c)
    }

    /// Re-reads the config file. An invalid file changes nothing (the error is returned);
    /// settings fixed at load time keep their old values until a restart. API overrides are
    /// kept unless the file changed the same field (see [`crate::overrides`]).
    pub fn reload(&mut self) -> Result<(), ConfigError> {
        let next = Config::load(&self.path)?;
        let fixed: Vec<&str> = config::LoadTime::changed(&self.config, &next)
            .iter()
            .map(|s| s.key)
            .collect();
        if !fixed.is_empty() {
            warn!("reload: {} take effect at the next start", fixed.join(", "));
        }
        let mut overrides = self.overrides.clone();
        for line in overrides.reconcile(&next) {
            warn!("reload: {line}");
        }
        self.file_config = next;
        if overrides != self.overrides {
            self.overrides = overrides;
            self.save_overrides();
        }
        self.set_effective();
        self.hops.flush_routes();
        self.sync_checks();
        self.resolve();
        self.look_at_snat_draining();
        self.replan("reload");
        info!("reloaded {}", self.path.display());
        Ok(())
    }

    /// A reload with its outcome counted and logged; the error is returned to the caller.
    pub fn reload_counted(&mut self) -> Result<(), String> {
        match self.reload() {
            Ok(()) => {
                self.reloads_ok += 1;
                Ok(())
            }
            Err(e) => {
                self.reloads_error += 1;
                let e = Chain(&e).to_string();
                error!("reload failed, keeping the running config: {e}");
                Err(e)
            }
        }
    }
}
