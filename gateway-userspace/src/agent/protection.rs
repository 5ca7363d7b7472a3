//! Sources over a limit: the agent's once-a-second look at `LIMITED` (the few prefixes the
//! program refused lately, not the whole bucket map), the rates it derives from their
//! buckets, the log lines when a source starts and stops being limited, and the body of
//! `GET /protection`.
use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use gateway_common::SourceKey;
use log::{info, warn};

use super::Agent;
use crate::{
    admin::{LimitedSource, ProtectCounters, ProtectionReport, ServiceProtection},
    config::{ProtectMode, ServiceConfig},
    dataplane::{DataplaneError, DataplaneOps, Limited},
    neigh::NextHops,
    sys,
};

/// A source counts as limited while its last refusal is at most this old (seconds of the
/// program's clock); after that it has stopped, and leaves `LIMITED`.
const QUIET: u32 = 5;
/// Log lines about sources per second at most; the rest are counted and summed up in one
/// line, so a flood from many sources cannot flood the log.
const LOG_PER_SECOND: u32 = 5;

/// What the agent remembers of a limited source between looks.
#[derive(Debug, Clone)]
struct Watched {
    since: Instant,
    /// The bucket's counters at the last look, and when.
    at: Instant,
    packets: u64,
    refused: u64,
    /// Rates between the last two looks.
    packets_per_second: f64,
    refused_per_second: f64,
}

/// The limited sources the agent has seen, and its log budget.
#[derive(Debug, Default)]
pub struct LimitWatch {
    sources: HashMap<SourceKey, Watched>,
    logged: u32,
    suppressed: u32,
    window: Option<Instant>,
}

/// `key`'s prefix as text: `198.18.0.0/24`.
pub fn prefix_text(key: &SourceKey) -> String {
    format!(
        "{}/{}",
        crate::model::ip_of(&key.addr, key.family),
        key.prefix
    )
}

impl LimitWatch {
    /// Whether one more line may be logged now.
    fn may_log(&mut self, now: Instant) -> bool {
        if self
            .window
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1))
        {
            if self.suppressed > 0 {
                warn!(
                    "{} more sources started or stopped being limited (not logged one by one)",
                    self.suppressed
                );
            }
            self.window = Some(now);
            self.logged = 0;
            self.suppressed = 0;
        }
        if self.logged < LOG_PER_SECOND {
            self.logged += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// One look at `LIMITED`: rates, start and stop lines; returns the sources that have
    /// stopped (to forget in the map). `name` names a service id; `now_s` is the
    /// program's clock in seconds.
    fn look(
        &mut self,
        found: &[Limited],
        name: impl Fn(u32) -> String,
        now: Instant,
        now_s: u32,
    ) -> Vec<SourceKey> {
        let mut stopped = Vec::new();
        for l in found {
            let last = l.bucket.map_or(l.since, |b| b.last_refused);
            let (packets, refused) = l.bucket.map_or((0, 0), |b| (b.packets, b.refused));
            if now_s.saturating_sub(last) > QUIET {
                if let Some(w) = self.sources.remove(&l.key)
                    && self.may_log(now)
                {
                    info!(
                        "source {} (service {}) is no longer limited, after {:.0}s and {} refused packets",
                        prefix_text(&l.key),
                        name(l.key.service),
                        now.duration_since(w.since).as_secs_f64(),
                        refused
                    );
                }
                stopped.push(l.key);
                continue;
            }
            match self.sources.get_mut(&l.key) {
                Some(w) => {
                    let dt = now.duration_since(w.at).as_secs_f64();
                    if dt > 0.0 {
                        w.packets_per_second = packets.saturating_sub(w.packets) as f64 / dt;
                        w.refused_per_second = refused.saturating_sub(w.refused) as f64 / dt;
                    }
                    (w.at, w.packets, w.refused) = (now, packets, refused);
                }
                None => {
                    if self.may_log(now) {
                        warn!(
                            "source {} (service {}) is over its limit ({} packets, {} refused so far)",
                            prefix_text(&l.key),
                            name(l.key.service),
                            packets,
                            refused
                        );
                    }
                    self.sources.insert(
                        l.key,
                        Watched {
                            since: now,
                            at: now,
                            packets,
                            refused,
                            packets_per_second: 0.0,
                            refused_per_second: 0.0,
                        },
                    );
                }
            }
        }
        // Sources the LRU dropped from LIMITED are gone too.
        let present: HashSet<SourceKey> = found.iter().map(|l| l.key).collect();
        self.sources.retain(|k, _| present.contains(k));
        stopped
    }
}

/// A service's `PROTECT_STATS` as the API shows them.
pub fn counters(c: gateway_common::ProtectStats) -> ProtectCounters {
    ProtectCounters {
        dropped_new_flows: c.drop_new_flows,
        dropped_packets: c.drop_packets,
        monitored_new_flows: c.monitor_new_flows,
        monitored_packets: c.monitor_packets,
    }
}

impl<D: DataplaneOps, N: NextHops> Agent<D, N> {
    /// The services of the last plan (what the maps hold) by their data-plane id.
    fn services_by_id(&self) -> HashMap<u32, &ServiceConfig> {
        let Some(plan) = &self.last_plan else {
            return HashMap::new();
        };
        plan.services
            .iter()
            .filter_map(|sp| {
                let sc = self.config.services.iter().find(|s| s.name == sp.name)?;
                Some((sp.id, sc))
            })
            .collect()
    }

    /// Once a second: looks at the limited sources, logs changes, forgets the stopped.
    pub fn watch_limited(&mut self) {
        let found = self.dp.limited();
        if found.is_empty() && self.limits.sources.is_empty() {
            return;
        }
        let names: HashMap<u32, String> = self
            .services_by_id()
            .into_iter()
            .map(|(id, s)| (id, s.name.clone()))
            .collect();
        let name = |id: u32| names.get(&id).cloned().unwrap_or_else(|| format!("#{id}"));
        let stopped = self
            .limits
            .look(&found, name, Instant::now(), sys::monotonic_secs());
        for key in stopped {
            self.dp.forget_limited(&key);
        }
    }

    /// The body of `GET /protection`: the settings, each service's counters, and the
    /// sources over a limit now (read from the map at request time).
    pub fn protection_report(&self) -> Result<ProtectionReport, DataplaneError> {
        let p = &self.config.protection;
        let now_s = sys::monotonic_secs();
        let by_id = self.services_by_id();
        let mut services = Vec::new();
        for s in &self.config.services {
            let Some((&id, _)) = by_id.iter().find(|(_, c)| c.name == s.name) else {
                continue;
            };
            let l = &s.protection;
            services.push(ServiceProtection {
                service: s.name.clone(),
                mode: l.mode.to_string(),
                new_flows_per_second: l.new_flows.map(|r| r.per_second),
                new_flows_burst: l.new_flows.map(|r| r.burst),
                packets_per_second: l.packets.map(|r| r.per_second),
                packets_burst: l.packets.map(|r| r.burst),
                prefix_v4: l.prefix_v4,
                prefix_v6: l.prefix_v6,
                counters: counters(self.dp.protect_stats(id)?),
            });
        }
        let mut sources: Vec<LimitedSource> = self
            .dp
            .limited()
            .into_iter()
            .filter_map(|l| {
                let b = l.bucket?;
                if now_s.saturating_sub(b.last_refused) > QUIET {
                    return None;
                }
                let svc = by_id.get(&l.key.service);
                let monitor = svc.is_some_and(|s| s.protection.mode == ProtectMode::Monitor);
                let w = self.limits.sources.get(&l.key);
                Some(LimitedSource {
                    prefix: prefix_text(&l.key),
                    service: svc.map_or_else(|| format!("#{}", l.key.service), |s| s.name.clone()),
                    action: if monitor { "counted" } else { "dropped" }.into(),
                    limited_for_seconds: f64::from(now_s.saturating_sub(l.since)),
                    packets_per_second: w.map_or(0.0, |w| w.packets_per_second),
                    refused_per_second: w.map_or(0.0, |w| w.refused_per_second),
                    packets: b.packets,
                    new_flows: b.new_flows,
                    refused: b.refused,
                })
            })
            .collect();
        sources.sort_by_key(|s| std::cmp::Reverse(s.refused));
        Ok(ProtectionReport {
            flood_new_flows_per_cpu: p.flood_new_flows_per_cpu,
            allowlist: p.allowlist.iter().map(|a| a.to_string()).collect(),
            services,
            sources,
        })
    }
}

#[cfg(test)]
mod tests {
    use gateway_common::SourceBucket;

    use super::*;

    fn source(last: u8, last_refused: u32, packets: u64, refused: u64) -> Limited {
        let key = SourceKey::new(
            &[198, 18, 0, last, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            4,
            32,
            1,
        );
        Limited {
            key,
            since: 100,
            bucket: Some(SourceBucket {
                packets,
                refused,
                last_refused,
                ..SourceBucket::default()
            }),
        }
    }

    #[test]
    fn a_source_is_watched_while_refused_and_forgotten_once_quiet() {
        let mut w = LimitWatch::default();
        let t0 = Instant::now();
        let name = |_| "web".to_string();
        assert!(w.look(&[source(7, 100, 50, 10)], name, t0, 100).is_empty());
        assert_eq!(w.sources.len(), 1);
        let t1 = t0 + Duration::from_secs(2);
        assert!(
            w.look(&[source(7, 102, 850, 610)], name, t1, 102)
                .is_empty()
        );
        let s = &w.sources[&source(7, 0, 0, 0).key];
        assert_eq!((s.packets_per_second, s.refused_per_second), (400.0, 300.0));
        // Quiet for longer than QUIET: stopped, and to be forgotten in the map.
        let t2 = t1 + Duration::from_secs(10);
        let stopped = w.look(&[source(7, 102, 850, 610)], name, t2, 102 + QUIET + 1);
        assert_eq!(stopped, vec![source(7, 0, 0, 0).key]);
        assert!(w.sources.is_empty());
        assert_eq!(prefix_text(&stopped[0]), "198.18.0.7/32");
    }

    #[test]
    fn many_sources_at_once_log_a_few_lines_and_count_the_rest() {
        let mut w = LimitWatch::default();
        let found: Vec<Limited> = (1..=40).map(|i| source(i, 100, 1, 1)).collect();
        let t0 = Instant::now();
        w.look(&found, |_| "web".to_string(), t0, 100);
        assert_eq!(
            (w.logged, w.suppressed),
            (LOG_PER_SECOND, 40 - LOG_PER_SECOND)
        );
        assert_eq!(w.sources.len(), 40);
        // A second later the budget is back (and the suppressed lines were summed up).
        let more: Vec<Limited> = (41..=42).map(|i| source(i, 101, 1, 1)).collect();
        let all: Vec<Limited> = found.iter().cloned().chain(more).collect();
        w.look(
            &all,
            |_| "web".to_string(),
            t0 + Duration::from_secs(1),
            101,
        );
        assert_eq!((w.logged, w.suppressed), (2, 0));
    }
}
