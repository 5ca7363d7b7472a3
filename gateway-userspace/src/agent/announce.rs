//! The agent's BGP announcements (`[bgp]`): after every plan and every second, each VIP's
//! servability goes to the speaker's thread ([`bgp::worker`]), which tells BIRD what
//! changed.
use std::{collections::BTreeMap, net::IpAddr};

use log::{error, info};

use super::Agent;
use crate::{
    bgp::{self, Unservable},
    dataplane::DataplaneOps,
    neigh::NextHops,
};

/// How long a withdrawal of every VIP may take before the agent goes on without it.
const WITHDRAW_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

impl<D: DataplaneOps, N: NextHops> Agent<D, N> {
    /// Each VIP's servability: a service on it has a usable backend in the last plan, and
    /// the maps hold that plan (`synced`). An announced SNAT address is servable while the
    /// program forwards and the maps are synced: its answers belong to flows this balancer
    /// mapped, whatever the backends are doing now.
    fn servable(&mut self, synced: bool) -> BTreeMap<IpAddr, Result<(), Unservable>> {
        let mut out = BTreeMap::new();
        let forwarding = self.dp.forwarding(&self.config.dataplane.interface);
        let checked = self.all_checked();
        for s in &self.config.services {
            let usable = self
                .last_plan
                .as_ref()
                .and_then(|p| p.services.iter().find(|x| x.name == s.name))
                .is_some_and(|p| !p.empty());
            let e = out.entry(s.vip).or_insert(Err(Unservable::NoBackend));
            if !forwarding {
                *e = Err(Unservable::DataPlaneGone);
            } else if !checked {
                *e = Err(Unservable::NotChecked);
            } else if !synced {
                *e = Err(Unservable::NotSynced);
            } else if usable {
                *e = Ok(());
            }
        }
        let snat = if !forwarding {
            Err(Unservable::DataPlaneGone)
        } else if !synced {
            Err(Unservable::NotSynced)
        } else {
            Ok(())
        };
        // A SNAT address still draining stays announced until its last flow ends.
        if self.config.bgp.as_ref().is_some_and(|b| b.announce_snat) {
            let draining = self.snat_draining.iter().copied();
            for a in self.config.dataplane.snat_addrs().chain(draining) {
                out.insert(a, snat);
            }
        }
        out
    }

    /// Whether every probed backend has had its first verdict since the agent started: it
    /// is up, or its last probe failed (a backend whose probe passed but is not up yet is
    /// still rising). Until then a balancer that started on fresh maps may hold a table
    /// with fewer backends than its peers, and flows routed to it would land elsewhere.
    /// Adopted maps hold the last agent's table, so an adopting agent starts checked. Once
    /// true it stays true: later changes are the same on every balancer.
    fn all_checked(&mut self) -> bool {
        if !self.checked {
            self.checked = self
                .records
                .values()
                .all(|r| r.check.is_none() || r.last.as_ref().is_some_and(|l| r.up || !l.ok));
            if self.checked && self.speaker.is_some() {
                info!("bgp: every backend has been checked once");
            }
        }
        self.checked
    }

    /// Follows a config change: starts, reconfigures or (withdrawing first) stops speaking.
    pub(super) fn bgp_config_changed(&mut self) {
        match (&self.speaker, self.config.bgp.is_some()) {
            (Some(sp), true) => sp.reconfigure(&self.config),
            (None, true) => self.speaker = bgp::worker::SpeakerThread::start(&self.config),
            (Some(_), false) => {
                self.withdraw_all("[bgp] was removed from the config");
                self.speaker = None;
            }
            (None, false) => {}
        }
    }

    /// Hands the speaker what is servable now (after a plan, and every second); it tells
    /// BIRD on its own thread.
    pub(super) fn announce(&mut self, synced: bool) {
        if self.speaker.is_none() {
            return;
        }
        let servable = self.servable(synced);
        if let Some(sp) = &self.speaker {
            sp.servable(servable);
        }
    }

    /// Withdraws every VIP at once (the agent stops serving them); whether BIRD was told.
    pub(super) fn withdraw_all(&mut self, why: &str) -> bool {
        let Some(sp) = &self.speaker else {
            return false;
        };
        let told = sp.withdraw_all(WITHDRAW_TIMEOUT);
        if told {
            info!("bgp: withdrew every VIP ({why})");
        } else {
            error!("bgp: could not withdraw the VIPs ({why}): BIRD did not take the change");
        }
        told
    }
}
