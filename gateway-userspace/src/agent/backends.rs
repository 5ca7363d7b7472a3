//! The backend registry: one record per backend of each service, with its probe, its health
//! and its next hop - the facts that [`crate::plan`] plans from.
use std::{collections::VecDeque, net::IpAddr, time::Duration};

use log::{info, warn};

use super::{ADOPT_GRACE, Agent, HISTORY};
use crate::{
    config::{AdminState, Mode},
    dataplane::DataplaneOps,
    health::{self, CheckId, CheckSpec},
    model::BackendKey,
    neigh::NextHops,
    plan::{self, BackendFacts, Facts},
};

/// Upper bounds (seconds) of the probe latency histogram's buckets.
pub const PROBE_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Probe latencies of one service: bucket counts (not cumulative) and their sum.
#[derive(Debug, Clone)]
pub(super) struct LatencyHistogram {
    pub counts: [u64; PROBE_BUCKETS.len() + 1],
    pub sum_seconds: f64,
}

impl LatencyHistogram {
    fn record(&mut self, latency: Duration) {
        let secs = latency.as_secs_f64();
        let bucket = PROBE_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(PROBE_BUCKETS.len());
        self.counts[bucket] += 1;
        self.sum_seconds += secs;
    }
}

/// What the agent knows about one backend of one service.
#[derive(Debug, Clone)]
pub struct BackendRecord {
    pub up: bool,
    /// Seen up since the agent started: a later rise is a recovery (slow start), the first
    /// one is not.
    pub was_up: bool,
    pub up_since: Option<Duration>,
    pub last: Option<health::ProbeResult>,
    pub transitions: VecDeque<String>,
    /// Every transition since the agent started (`transitions` keeps only the last few),
    /// and when the last one was.
    pub transitions_total: u64,
    pub last_transition: Option<std::time::Instant>,
    pub(super) check: Option<(CheckId, CheckSpec)>,
}

impl<D: DataplaneOps, N: NextHops> Agent<D, N> {
    /// Starts, updates and stops probes so they match the config.
    pub(super) fn sync_checks(&mut self) {
        self.passive.watched = super::passive::watched(&self.config);
        let mut wanted = std::collections::HashMap::new();
        for s in &self.config.services {
            for b in &s.backends {
                // Neither maint nor kind none (see CheckSpec::new) is probed.
                let spec = if b.state == AdminState::Maint {
                    None
                } else {
                    CheckSpec::new(b.address, b.health.clone())
                };
                wanted.insert(BackendKey::new(&s.name, b.address), spec);
            }
        }
        // Gone, or no longer probed.
        let stale: Vec<BackendKey> = self
            .records
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for k in stale {
            if let Some(r) = self.records.remove(&k)
                && let Some((id, _)) = r.check
            {
                self.prober.remove(id);
                self.by_check.remove(&id);
            }
        }
        for (key, spec) in wanted {
            let initial_up = spec.as_ref().is_none_or(|s| s.check().initial_up);
            let rec = self
                .records
                .entry(key.clone())
                .or_insert_with(|| BackendRecord {
                    up: initial_up,
                    was_up: initial_up,
                    up_since: None,
                    last: None,
                    transitions: VecDeque::new(),
                    transitions_total: 0,
                    last_transition: None,
                    check: None,
                });
            match (spec, rec.check.take()) {
                (None, Some((id, _))) => {
                    self.prober.remove(id);
                    self.by_check.remove(&id);
                    // Unprobed backends (kind none, or maint) count as up; maint is
                    // kept out by its admin state.
                    rec.up = true;
                }
                (None, None) => rec.up = true,
                (Some(spec), Some((id, old))) => {
                    if spec != old {
                        self.prober.update(id, spec.clone());
                    }
                    rec.check = Some((id, spec));
                }
                (Some(spec), None) => {
                    let id = self.next_check;
                    self.next_check += 1;
                    // An adopted backend starts where the last agent left it.
                    let mut first = spec.clone();
                    if let Some(up) = self.seed_up.remove(&key) {
                        first = first.starting(up);
                        rec.was_up = up;
                    }
                    rec.up = first.check().initial_up;
                    rec.up_since = None;
                    self.prober.add(id, first);
                    self.by_check.insert(id, key.clone());
                    rec.check = Some((id, spec));
                }
            }
        }
    }

    /// What the plan needs of each backend: health, the time it came back, its next hop.
    pub(super) fn facts(&self) -> Facts {
        self.records
            .iter()
            .map(|(k, r)| {
                let mac = self
                    .macs
                    .get(&k.addr)
                    .cloned()
                    .unwrap_or_else(|| Err("next hop not resolved yet".into()));
                (
                    k.clone(),
                    BackendFacts {
                        up: r.up,
                        up_since: r.up_since,
                        mac,
                    },
                )
            })
            .collect()
    }

    /// Takes in one probe result (thousands a second at scale: no allocation unless the
    /// state changes or the service is new to the histogram). Returns whether the backend's
    /// health changed.
    pub(super) fn on_event(&mut self, ev: health::Event) -> bool {
        let now = self.now();
        let Some(key) = self.by_check.get(&ev.id) else {
            return false;
        };
        let Some(rec) = self.records.get_mut(key) else {
            return false;
        };
        let changed = rec.up != ev.up;
        if let Some(t) = &ev.transition {
            let line = format!(
                "{} {}",
                key.service,
                t.describe(ev.target, &ev.result.reason)
            );
            info!("{line}");
            rec.transitions.push_back(line);
            rec.transitions_total += 1;
            rec.last_transition = Some(std::time::Instant::now());
            if rec.transitions.len() > HISTORY {
                rec.transitions.pop_front();
            }
        }
        if changed && ev.up && rec.was_up {
            rec.up_since = Some(now);
        }
        rec.was_up |= ev.up;
        rec.up = ev.up;
        if ev.passive {
            // Not a probe: no latency, and the last probe's result stays the one shown.
            return changed;
        }
        if !self.probe_latency.contains_key(&key.service) {
            self.probe_latency.insert(
                key.service.clone(),
                LatencyHistogram {
                    counts: [0; PROBE_BUCKETS.len() + 1],
                    sum_seconds: 0.0,
                },
            );
        }
        self.probe_latency
            .get_mut(&key.service)
            .expect("inserted above")
            .record(ev.result.latency);
        rec.last = Some(ev.result);
        changed
    }

    /// Asks the next hops of every backend again, and this host's own MAC and addresses;
    /// returns whether any answer changed.
    /// After adopting pinned maps, a hop still being resolved keeps the pinned MAC for
    /// [`ADOPT_GRACE`].
    pub(super) fn resolve(&mut self) -> bool {
        let backends: Vec<(IpAddr, bool)> = self
            .config
            .services
            .iter()
            .flat_map(|s| {
                s.backends
                    .iter()
                    .map(move |b| (b.address, s.mode == Mode::L2dsr))
            })
            .collect();
        let mut macs = self
            .hops
            .resolve(&backends, &self.config.dataplane.interface);
        if !self.pinned_macs.is_empty() {
            if self.now() > ADOPT_GRACE {
                self.pinned_macs.clear();
            }
            for (addr, m) in macs.iter_mut() {
                if m.is_err()
                    && let Some(pinned) = self.pinned_macs.get(addr)
                {
                    *m = Ok(*pinned);
                }
            }
        }
        // Link and address events wake the resolver too: this host's own facts may have
        // changed with them.
        let host = plan::Host {
            interface_mac: crate::sys::interface_mac(&self.config.dataplane.interface),
            addresses: crate::sys::host_addresses(),
            // Not read from the system: `try_replan` adds the agent's draining set.
            snat_draining: Vec::new(),
        };
        let mut changed = macs != self.macs;
        if host != self.host {
            self.host = host;
            changed = true;
        }
        for (addr, m) in &macs {
            let old = self.macs.get(addr);
            match (old, m) {
                (Some(Ok(a)), Ok(b)) if a != b => {
                    info!("backend {addr}: next hop MAC changed to {}", fmt_mac(b))
                }
                (Some(Ok(_)), Err(e)) => warn!("backend {addr}: next hop lost: {e}"),
                _ => {}
            }
        }
        self.macs = macs;
        changed
    }
}

pub fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
