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

/// After a failed write or BIRD command, the next attempt is this much later.
pub(super) const BGP_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

impl<D: DataplaneOps, N: NextHops> Agent<D, N> {
    /// Each VIP's servability: a service on it has a usable backend in the last plan, and
    /// the maps hold that plan (`synced`).
    fn servable(&self, synced: bool) -> BTreeMap<IpAddr, Result<(), Unservable>> {
        let mut out = BTreeMap::new();
        for s in &self.config.services {
            let usable = self
                .last_plan
                .as_ref()
                .and_then(|p| p.services.iter().find(|x| x.name == s.name))
                .is_some_and(|p| !p.empty());
            let e = out.entry(s.vip).or_insert(Err(Unservable::NoBackend));
            if !synced {
                *e = Err(Unservable::NotSynced);
            } else if usable {
                *e = Ok(());
            }
        }
        out
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

    /// Tells the speaker what is servable now (after a plan, or when a hold ends).
    pub(super) fn announce(&mut self, synced: bool) {
        let servable = self.servable(synced);
        let (Some(sp), Some(bgp)) = (self.speaker.as_mut(), self.config.bgp.as_ref()) else {
            return;
        };
        match sp.update(bgp, &servable, Instant::now()) {
            Ok(Some(vips)) => {
                let list: Vec<String> = vips.iter().map(IpAddr::to_string).collect();
                info!("bgp: announcing [{}]", list.join(", "));
                for (vip, st) in sp.announcer.states() {
                    if let Err(why) = st.servable {
                        info!("bgp: {vip} not announced: {}", why.as_str());
                    }
                }
                self.bgp_retry_at = None;
            }
            Ok(None) => self.bgp_retry_at = None,
            Err(e) => {
                error!(
                    "bgp: {} (retrying in {BGP_RETRY:?}; balancing goes on)",
                    crate::error::Chain(&e)
                );
                self.bgp_retry_at = Some(tokio::time::Instant::now() + BGP_RETRY);
            }
        }
    }

    /// When the speaker next needs a turn: a hold ending, or a retry.
    pub(super) fn bgp_due(&self) -> Option<tokio::time::Instant> {
        let hold = self
            .speaker
            .as_ref()
            .and_then(|sp| sp.announcer.next_deadline())
            .map(tokio::time::Instant::from_std);
        match (hold, self.bgp_retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Withdraws every VIP at once (the agent stops serving them).
    pub(super) fn withdraw_all(&mut self, why: &str) {
        let Some(bgp) = self.config.bgp.clone() else {
            return;
        };
        let Some(sp) = self.speaker.as_mut() else {
            return;
        };
        let all: BTreeMap<IpAddr, Result<(), Unservable>> = BTreeMap::new();
        sp.announcer.withdraw_after = std::time::Duration::ZERO;
        match sp.update(&bgp, &all, Instant::now()) {
            Ok(_) => info!("bgp: withdrew every VIP ({why})"),
            Err(e) => error!(
                "bgp: withdrawing every VIP ({why}): {}",
                crate::error::Chain(&e)
            ),
        }
    }
}
