//! What the agent reports: the admin API's answers, the status snapshot and the counters
//! line.
use super::{Agent, backends::PROBE_BUCKETS};
use crate::model::{self, BackendKey};
use crate::{
    admin,
    dataplane::{DataplaneError, DataplaneOps},
    error::Chain,
    neigh::NextHops,
};

impl<D: DataplaneOps, N: NextHops> Agent<D, N> {
    /// Answers an admin API request; a dropped reply (the client went away) is fine.
    pub(super) fn answer(&mut self, req: admin::Request) {
        match req {
            admin::Request::Change {
                service,
                addr,
                change,
                reply,
            } => {
                let _ = reply.send(self.api_change(&service, addr, change));
            }
            admin::Request::Reload(reply) => {
                let _ = reply.send(self.reload_counted());
            }
            admin::Request::Ready(reply) => {
                let _ = reply.send(self.last_plan.is_some());
            }
            admin::Request::Snapshot { conntrack, reply } => {
                let _ = reply.send(self.snapshot(conntrack).map_err(|e| Chain(&e).to_string()));
            }
            admin::Request::Protection(reply) => {
                let r = self.protection_report();
                let _ = reply.send(r.map_err(|e| Chain(&e).to_string()));
            }
            admin::Request::Nat { query, reply } => {
                let r = self.nat_report(&query);
                let _ = reply.send(r.map_err(|e| Chain(&e).to_string()));
            }
        }
    }

    /// The state the admin API reports, with the counters read now; `conntrack` also
    /// counts the tracked flows (a walk over the whole map).
    pub fn snapshot(&self, conntrack: bool) -> Result<admin::Snapshot, DataplaneError> {
        let counters = gateway_common::STAT_NAMES
            .iter()
            .zip(self.dp.global_stats()?)
            .map(|(n, v)| admin::Counter {
                name: n.to_string(),
                value: v,
            })
            .collect();
        let traffic = |t: gateway_common::TrafficStats| admin::Traffic {
            packets: t.packets,
            bytes: t.bytes,
            new_flows: t.new_flows,
        };
        let mut services = Vec::new();
        let planned = self.last_plan.as_ref().map_or(&[][..], |p| &p.services[..]);
        for sp in planned {
            let Some(sc) = self.config.services.iter().find(|s| s.name == sp.name) else {
                continue;
            };
            let mut backends = Vec::new();
            for b in &sp.backends {
                let rec = self.records.get(&BackendKey::new(&sp.name, b.address));
                backends.push(admin::BackendStatus {
                    address: b.address.to_string(),
                    id: b.id,
                    state: b.state_word().to_string(),
                    reason: b.reason.clone(),
                    weight: b.weight,
                    effective_weight: b.effective_weight,
                    backup: b.backup,
                    slots: b.slots,
                    share: if sp.table_size == 0 {
                        0.0
                    } else {
                        b.slots as f64 * 100.0 / f64::from(sp.table_size)
                    },
                    health_up: b.health_up,
                    last_probe: rec
                        .and_then(|r| r.last.as_ref())
                        .map(|p| admin::ProbeStatus {
                            ok: p.ok,
                            reason: p.reason.to_string(),
                            latency_ms: p.latency.as_secs_f64() * 1000.0,
                        }),
                    transitions: rec
                        .map(|r| r.transitions.iter().cloned().collect())
                        .unwrap_or_default(),
                    transitions_total: rec.map_or(0, |r| r.transitions_total),
                    since_transition_seconds: rec
                        .and_then(|r| r.last_transition)
                        .map(|t| t.elapsed().as_secs_f64()),
                    traffic: traffic(self.dp.backend_stats(b.id)?),
                    syns: if sc.mode == crate::config::Mode::Fullnat {
                        let p = self.dp.passive_stats(b.id)?;
                        Some(admin::SynAnswers {
                            answered: p.answered,
                            refused: p.refused,
                            unanswered: p.unanswered,
                        })
                    } else {
                        None
                    },
                    api_override: self.overrides.get(&sp.name, b.address).cloned(),
                });
            }
            services.push(admin::ServiceStatus {
                name: sp.name.clone(),
                vip: sc.vip.to_string(),
                port: sc.port,
                protocol: sc.protocol.to_string(),
                mode: sc.mode.to_string(),
                table_size: sp.table_size,
                changed_slots: self
                    .changed_slots
                    .get(&model::service_key(sc))
                    .copied()
                    .unwrap_or(0),
                panic: sp.panic,
                traffic: traffic(self.dp.service_stats(sp.id)?),
                protection_mode: sc.protection.mode.to_string(),
                protection: super::protection::counters(self.dp.protect_stats(sp.id)?),
                backends,
            });
        }
        Ok(admin::Snapshot {
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            dataplane: admin::DataplaneStatus {
                interface: self.config.dataplane.interface.clone(),
                xdp_mode: self.dp.attached_mode().map(|m| m.to_string()),
                program_id: self.dp.program_id(),
                conntrack_entries: conntrack.then(|| self.dp.conntrack_len()),
                conntrack_capacity: self.dp.options().conntrack_size,
                counters,
                snat_draining: self.snat_draining.iter().map(|a| a.to_string()).collect(),
            },
            services,
            table_rebuilds: self.table_rebuilds,
            reloads_ok: self.reloads_ok,
            reloads_error: self.reloads_error,
            map_write_errors: self.map_write_errors,
            bgp: self.speaker.as_ref().map(|sp| {
                let v = sp.view();
                admin::BgpStatus {
                    bird_socket: v.socket,
                    errors: v.errors,
                    last_error: v.last_error,
                    vips: v
                        .states
                        .iter()
                        .map(|(vip, st)| admin::VipStatus {
                            vip: vip.to_string(),
                            announced: st.announced,
                            reason: st
                                .servable
                                .err()
                                .map_or("servable", |w| w.as_str())
                                .to_string(),
                            since_seconds: st.since.elapsed().as_secs_f64(),
                        })
                        .collect(),
                }
            }),
            probe_latency: {
                let mut v: Vec<admin::LatencyHistogram> = self
                    .probe_latency
                    .iter()
                    .map(|(svc, h)| admin::LatencyHistogram {
                        service: svc.clone(),
                        le: PROBE_BUCKETS.to_vec(),
                        counts: h.counts.to_vec(),
                        sum_seconds: h.sum_seconds,
                    })
                    .collect();
                v.sort_by(|a, b| a.service.cmp(&b.service));
                v
            },
        })
    }
}

/// Prints the global counters as one `stats name=value ...` line.
pub fn print_stats(dp: &impl DataplaneOps) -> Result<(), DataplaneError> {
    let stats = dp.global_stats()?;
    let line: Vec<String> = gateway_common::STAT_NAMES
        .iter()
        .zip(&stats)
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    println!("stats {}", line.join(" "));
    Ok(())
}
