//! The agent's BGP announcements (`[bgp]`): after every plan, each VIP's servability goes
//! to the [`bgp::Speaker`], which tells BIRD what changed.
use std::{collections::BTreeMap, net::IpAddr, time::Instant};

use log::{error, info};

use super::Agent;
use crate::{
    bgp::{self, Unservable},
    dataplane::DataplaneOps,
    neigh::NextHops,
};

/// How often the speaker looks again without being asked: the data plane still forwards,
/// BIRD still answers, a failed write or command is retried.
pub(super) const BGP_TICK: std::time::Duration = std::time::Duration::from_secs(1);

impl<D: DataplaneOps, N: NextHops> Agent<D, N> {
    /// Each VIP's servability: a service on it has a usable backend in the last plan, and
    /// the maps hold that plan (`synced`).
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
        match (&mut self.speaker, self.config.bgp.is_some()) {
            (Some(sp), true) => sp.reconfigure(&self.config),
            (None, true) => self.speaker = bgp::Speaker::new(&self.config, Instant::now()),
            (Some(_), false) => {
                self.withdraw_all("[bgp] was removed from the config");
                self.speaker = None;
            }
            (None, false) => {}
        }
    }

    /// Tells the speaker what is servable now (after a plan, on the speaker's tick); when
    /// there is nothing new to tell, checks that BIRD is still there.
    pub(super) fn announce(&mut self, synced: bool) {
        let servable = self.servable(synced);
        let (Some(sp), Some(bgp)) = (self.speaker.as_mut(), self.config.bgp.as_ref()) else {
            return;
        };
        let result = match sp.update(bgp, &servable, Instant::now()) {
            Ok(Some(vips)) => {
                let list: Vec<String> = vips.iter().map(IpAddr::to_string).collect();
                info!("bgp: announcing [{}]", list.join(", "));
                for (vip, st) in sp.announcer.states() {
                    if let Err(why) = st.servable {
                        info!("bgp: {vip} not announced: {}", why.as_str());
                    }
                }
                Ok(())
            }
            Ok(None) => sp.heartbeat(),
            Err(e) => Err(e),
        };
        self.bgp_next_tick = tokio::time::Instant::now() + BGP_TICK;
        match result {
            Ok(()) => {
                if self.bgp_failing {
                    info!("bgp: BIRD answers again and has the current routes");
                }
                self.bgp_failing = false;
            }
            // Logged when it starts failing, not every second while it does (counted).
            Err(e) if !self.bgp_failing => {
                self.bgp_failing = true;
                error!(
                    "bgp: {} (retrying every {BGP_TICK:?}; balancing goes on)",
                    crate::error::Chain(&e)
                );
            }
            Err(_) => {}
        }
    }

    /// When the speaker next needs a turn: its tick, or sooner a hold that ends.
    pub(super) fn bgp_due(&self) -> Option<tokio::time::Instant> {
        let sp = self.speaker.as_ref()?;
        let hold = sp
            .announcer
            .next_deadline()
            .map(tokio::time::Instant::from_std);
        Some(hold.map_or(self.bgp_next_tick, |h| h.min(self.bgp_next_tick)))
    }

    /// Withdraws every VIP at once (the agent stops serving them); whether BIRD was told.
    pub(super) fn withdraw_all(&mut self, why: &str) -> bool {
        let Some(bgp) = self.config.bgp.clone() else {
            return false;
        };
        let Some(sp) = self.speaker.as_mut() else {
            return false;
        };
        let all: BTreeMap<IpAddr, Result<(), Unservable>> = BTreeMap::new();
        sp.announcer.withdraw_after = std::time::Duration::ZERO;
        match sp.update(&bgp, &all, Instant::now()) {
            Ok(_) => {
                info!("bgp: withdrew every VIP ({why})");
                true
            }
            Err(e) => {
                error!(
                    "bgp: withdrawing every VIP ({why}): {}",
                    crate::error::Chain(&e)
                );
                false
            }
        }
    }
}
