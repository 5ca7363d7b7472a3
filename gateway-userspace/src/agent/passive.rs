//! Passive health of full-NAT backends: what the data plane saw of their answers to SYNs
//! (`PASSIVE`: answered, refused with a reset, left unanswered until the client sent the SYN
//! again), read every [`PASSIVE_TICK`] and handed to each backend's check, whose state
//! machine brings it down after `passive_fall` failures in a row
//! ([`crate::health::HealthState::observe_passive`]). Probes bring it back.
use std::{collections::HashMap, time::Duration};

use gateway_common::PassiveStats;

use super::Agent;
use crate::{config::Mode, dataplane::DataplaneOps, neigh::NextHops};

/// How often PASSIVE is read: a dead backend's first refused SYNs reach its check within
/// this, well inside the second a client waits before sending its SYN again.
pub(super) const PASSIVE_TICK: Duration = Duration::from_millis(100);

/// The counts read last, by backend id.
#[derive(Debug, Default)]
pub(super) struct PassiveWatch {
    seen: HashMap<u32, PassiveStats>,
    /// Whether any backend is watched (a full-NAT service's, with `passive_fall` on): the
    /// control loop's tick asks this on every turn, so it is set when the config is taken
    /// in ([`Agent::sync_checks`]), not worked out each time.
    pub(super) watched: bool,
}

/// Whether `config` has a backend to watch.
pub(super) fn watched(config: &crate::config::Config) -> bool {
    config
        .services
        .iter()
        .any(|s| s.mode == Mode::Fullnat && s.backends.iter().any(|b| b.health.passive_fall > 0))
}

impl<D: DataplaneOps, N: NextHops> Agent<D, N> {
    /// Reads PASSIVE for every watched backend and reports what changed to its check. The
    /// first read of a backend is its baseline (counts from before this agent, or from
    /// before the backend had a check, say nothing now).
    pub(super) fn watch_passive(&mut self) {
        let mut seen = HashMap::with_capacity(self.passive.seen.len());
        for s in self
            .config
            .services
            .iter()
            .filter(|s| s.mode == Mode::Fullnat)
        {
            for b in s.backends.iter().filter(|b| b.health.passive_fall > 0) {
                let Some(id) = self.ids.backend_id(&s.name, b.address) else {
                    continue;
                };
                let Ok(now) = self.dp.passive_stats(id) else {
                    continue;
                };
                seen.insert(id, now);
                let Some(before) = self.passive.seen.get(&id) else {
                    continue;
                };
                let key = crate::model::BackendKey::new(&s.name, b.address);
                let Some((check, _)) = self.records.get(&key).and_then(|r| r.check.as_ref()) else {
                    continue;
                };
                let failures = now.refused.saturating_sub(before.refused)
                    + now.unanswered.saturating_sub(before.unanswered);
                let answered = now.answered.saturating_sub(before.answered);
                if failures > 0 || answered > 0 {
                    self.prober.passive(*check, failures, answered);
                }
            }
        }
        // Backends gone from the config are forgotten.
        self.passive.seen = seen;
    }
}
