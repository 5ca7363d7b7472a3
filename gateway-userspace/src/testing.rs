//! Helpers for tests only: compiled into unit tests, and into the integration tests through
//! the `testing` feature, never into the agent.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use gateway_common::{
    Backend, FlowKey, Limits, LocalFilter, LocalKey, NatPool, NatValue, PassiveStats, ProtectStats,
    STAT_COUNT, ServiceKey, ServiceValue, Settings, Slot, SourceKey, TrafficStats,
};

use crate::{
    admin::{
        BackendStatus, Counter, DataplaneStatus, LatencyHistogram, LimitedSource, ProbeStatus,
        ProtectCounters, ProtectionReport, ServiceProtection, ServiceStatus, Snapshot, SynAnswers,
        Traffic,
    },
    dataplane::{AttachedMode, DataplaneError, DataplaneOps, Limited, LoadOptions},
    mapsync::{MapWriter, SyncError},
    model::{self, AllowKey, Applied, AppliedService, Prior, SlotCounts, table_hash},
    neigh::NextHops,
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
    pub nat_pool: NatPool,
    pub backends: BTreeMap<u32, Backend>,
    pub tables: BTreeMap<u32, Slot>,
    /// The clock table writes read (seconds, like the program's).
    pub now: u32,
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub local: BTreeMap<LocalKey, u8>,
    pub local_filter: LocalFilter,
    pub limits: BTreeMap<u32, Limits>,
    pub allowlist: BTreeSet<AllowKey>,
    /// Every write, in order, for tests of ordering.
    pub log: Vec<String>,
}

impl MemMaps {
    /// The backend ids of the table a service entry currently points at.
    pub fn table_of(&self, key: &ServiceKey) -> Option<Vec<u32>> {
        Some(self.slots_of(key)?.iter().map(Slot::cur).collect())
    }

    /// The slots of the table a service entry currently points at.
    pub fn slots_of(&self, key: &ServiceKey) -> Option<Vec<Slot>> {
        let v = self.services.get(key)?;
        Some(self.region(v.table_offset, v.table_size))
    }

    fn region(&self, offset: u32, len: u32) -> Vec<Slot> {
        (offset..offset + len)
            .map(|i| self.tables.get(&i).copied().unwrap_or_default())
            .collect()
    }
}

impl MapWriter for MemMaps {
    fn set_settings(&mut self, s: &Settings) -> Result<(), SyncError> {
        self.settings = *s;
        self.log.push("settings".into());
        Ok(())
    }

    fn set_nat_pool(&mut self, p: &NatPool) -> Result<(), SyncError> {
        self.nat_pool = *p;
        self.log.push("nat pool".into());
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
    fn write_table(&mut self, offset: u32, prior: Prior, slots: &[u32]) -> Result<(), SyncError> {
        let next = model::next_slots(prior, |at, n| self.region(at, n), slots, self.now);
        for (i, s) in next.into_iter().enumerate() {
            self.tables.insert(offset + i as u32, s);
        }
        self.log.push(format!("table @{offset}"));
        Ok(())
    }
    fn settle_slots(&mut self, offset: u32, len: u32, idle: u32) -> Result<SlotCounts, SyncError> {
        let mut counts = SlotCounts::default();
        for i in offset..offset + len {
            let Some(s) = self.tables.get_mut(&i) else {
                continue;
            };
            if model::settles(*s, self.now, idle) {
                *s = Slot::used(s.cur());
                counts.settled += 1;
            } else if s.prev() != 0 {
                counts.changed += 1;
            }
        }
        Ok(counts)
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
    fn set_local(&mut self, key: &LocalKey, why: u8) -> Result<(), SyncError> {
        self.local.insert(*key, why);
        self.log.push("local".into());
        Ok(())
    }
    fn remove_local(&mut self, key: &LocalKey) -> Result<(), SyncError> {
        self.local.remove(key);
        self.log.push("remove local".into());
        Ok(())
    }
    fn set_local_filter(&mut self, f: &LocalFilter) -> Result<(), SyncError> {
        self.local_filter = *f;
        self.log.push("local filter".into());
        Ok(())
    }
    fn set_limits(&mut self, id: u32, l: &Limits) -> Result<(), SyncError> {
        self.limits.insert(id, *l);
        self.log.push(format!("limits {id}"));
        Ok(())
    }
    fn set_allow(&mut self, key: &AllowKey) -> Result<(), SyncError> {
        self.allowlist.insert(*key);
        self.log.push(format!("allow /{}", key.0));
        Ok(())
    }
    fn remove_allow(&mut self, key: &AllowKey) -> Result<(), SyncError> {
        self.allowlist.remove(key);
        self.log.push(format!("remove allow /{}", key.0));
        Ok(())
    }
}

/// A data plane of in-memory maps for the agent's unit tests; `fail_writes` makes every
/// map write fail, as a kernel that refuses updates would; `adopted` says the maps were
/// left by an earlier agent (a hitless restart); `gone` that it no longer forwards
/// (interface down, program detached).
#[derive(Debug, Default)]
pub struct FakeDataplane {
    pub maps: MemMaps,
    pub options: LoadOptions,
    pub fail_writes: bool,
    pub adopted: bool,
    pub gone: bool,
    /// What LIMITED holds (the program's refusals); `forget_limited` removes from it.
    pub limited: Vec<Limited>,
    /// What PASSIVE holds, by backend id (what full-NAT answers said of each).
    pub passive: BTreeMap<u32, PassiveStats>,
    /// What NAT holds.
    pub nat: Vec<(FlowKey, NatValue)>,
}

impl FakeDataplane {
    fn check(&self, what: &str) -> Result<(), SyncError> {
        if self.fail_writes {
            return Err(SyncError::Write {
                what: what.into(),
                source: "refused (fail_writes)".into(),
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

    fn set_nat_pool(&mut self, p: &NatPool) -> Result<(), SyncError> {
        self.check("nat pool")?;
        self.maps.set_nat_pool(p)
    }
    fn set_backend(&mut self, id: u32, b: &Backend) -> Result<(), SyncError> {
        self.check("a backend")?;
        self.maps.set_backend(id, b)
    }
    fn write_table(&mut self, offset: u32, prior: Prior, slots: &[u32]) -> Result<(), SyncError> {
        self.check("a table")?;
        self.maps.write_table(offset, prior, slots)
    }
    fn settle_slots(&mut self, offset: u32, len: u32, idle: u32) -> Result<SlotCounts, SyncError> {
        self.check("a table")?;
        self.maps.settle_slots(offset, len, idle)
    }
    fn set_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), SyncError> {
        self.check("a service")?;
        self.maps.set_service(key, value)
    }
    fn remove_service(&mut self, key: &ServiceKey) -> Result<(), SyncError> {
        self.check("a service")?;
        self.maps.remove_service(key)
    }
    fn set_local(&mut self, key: &LocalKey, why: u8) -> Result<(), SyncError> {
        self.check("a local address")?;
        self.maps.set_local(key, why)
    }
    fn remove_local(&mut self, key: &LocalKey) -> Result<(), SyncError> {
        self.check("a local address")?;
        self.maps.remove_local(key)
    }
    fn set_local_filter(&mut self, f: &LocalFilter) -> Result<(), SyncError> {
        self.check("the local filter")?;
        self.maps.set_local_filter(f)
    }
    fn set_limits(&mut self, id: u32, l: &Limits) -> Result<(), SyncError> {
        self.check("limits")?;
        self.maps.set_limits(id, l)
    }
    fn set_allow(&mut self, key: &AllowKey) -> Result<(), SyncError> {
        self.check("the allowlist")?;
        self.maps.set_allow(key)
    }
    fn remove_allow(&mut self, key: &AllowKey) -> Result<(), SyncError> {
        self.check("the allowlist")?;
        self.maps.remove_allow(key)
    }
}

impl DataplaneOps for FakeDataplane {
    fn options(&self) -> LoadOptions {
        self.options
    }
    fn forwarding(&self, _interface: &str) -> bool {
        !self.gone
    }
    fn adopted(&self) -> bool {
        self.adopted
    }
    fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        None
    }
    fn attached_mode(&self) -> Option<AttachedMode> {
        None
    }
    /// What the maps hold, read back as `Dataplane::read_applied` reads the kernel's.
    fn read_applied(&self) -> Result<Applied, DataplaneError> {
        let services = self
            .maps
            .services
            .iter()
            .map(|(key, value)| {
                let table = self.maps.table_of(key).unwrap_or_default();
                let s = AppliedService {
                    value: *value,
                    table_hash: table_hash(&table),
                };
                (*key, s)
            })
            .collect();
        Ok(Applied {
            settings: Some(self.maps.settings),
            backends: self.maps.backends.clone(),
            services,
            local: self.maps.local.clone(),
            local_filter: self.maps.local_filter,
            limits: self.maps.limits.clone(),
            allowlist: self.maps.allowlist.clone(),
            nat_pool: Some(self.maps.nat_pool),
        })
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
    fn protect_stats(&self, _id: u32) -> Result<ProtectStats, DataplaneError> {
        Ok(ProtectStats::default())
    }
    fn passive_stats(&self, id: u32) -> Result<PassiveStats, DataplaneError> {
        Ok(self.passive.get(&id).copied().unwrap_or_default())
    }
    fn nat_visit(&self, f: &mut dyn FnMut(&FlowKey, &NatValue)) -> Result<(), DataplaneError> {
        for (k, v) in &self.nat {
            f(k, v);
        }
        Ok(())
    }
    fn limited(&self) -> Vec<Limited> {
        self.limited.clone()
    }
    fn forget_limited(&mut self, key: &SourceKey) {
        self.limited.retain(|l| l.key != *key);
    }
}

/// Next hops from a fixed table, for the agent's unit tests: a backend in `macs` resolves to
/// its MAC, any other has none. No change is ever announced; `flushes` counts reloads'
/// requests to forget routes.
#[derive(Debug, Default)]
pub struct FixedHops {
    pub macs: HashMap<IpAddr, [u8; 6]>,
    pub flushes: u32,
}

impl NextHops for FixedHops {
    fn resolve(
        &mut self,
        backends: &[(IpAddr, bool)],
        _iface: &str,
    ) -> HashMap<IpAddr, Result<[u8; 6], String>> {
        backends
            .iter()
            .map(|(a, _)| {
                let mac = self.macs.get(a).copied().ok_or_else(|| "no route".into());
                (*a, mac)
            })
            .collect()
    }
    fn flush_routes(&mut self) {
        self.flushes += 1;
    }
    fn due(&self) -> bool {
        false
    }
    async fn changed(&mut self) {
        std::future::pending().await
    }
}

/// A backend of [`snapshot`]'s service, up or down.
fn backend(address: &str, up: bool, packets: u64) -> BackendStatus {
    BackendStatus {
        address: address.into(),
        id: 1,
        state: if up { "up" } else { "down" }.into(),
        reason: if up { "ready, up" } else { "health check down" }.into(),
        weight: 100,
        effective_weight: 100,
        backup: false,
        slots: if up { 251 } else { 0 },
        share: if up { 100.0 } else { 0.0 },
        health_up: up,
        last_probe: Some(ProbeStatus {
            ok: up,
            reason: if up {
                "connected"
            } else {
                "connection refused"
            }
            .into(),
            latency_ms: 0.25,
        }),
        transitions: vec![],
        transitions_total: 3,
        since_transition_seconds: Some(12.5),
        traffic: Traffic {
            packets,
            bytes: packets * 60,
            new_flows: packets / 2,
        },
        // As if the service were full-NAT: the down backend refused SYNs.
        syns: Some(SynAnswers {
            answered: packets,
            refused: if up { 0 } else { 4 },
            unanswered: if up { 0 } else { 1 },
        }),
        api_override: None,
    }
}

/// A snapshot of one service with a backend up and one down, for the tests of what is
/// rendered from it; the service's name needs escaping in a metrics label.
pub fn snapshot() -> Snapshot {
    Snapshot {
        uptime_seconds: 3600.0,
        dataplane: DataplaneStatus {
            interface: "eth0".into(),
            xdp_mode: Some("native".into()),
            program_id: Some(42),
            conntrack_entries: Some(7),
            conntrack_capacity: 65536,
            snat_draining: vec!["198.18.0.110".into()],
            counters: vec![
                Counter {
                    name: "forwarded".into(),
                    value: 10,
                },
                Counter {
                    name: "conntrack_miss_syn".into(),
                    value: 4,
                },
            ],
        },
        services: vec![ServiceStatus {
            name: "we\"b\\x\n".into(),
            vip: "198.18.1.1".into(),
            port: 80,
            protocol: "tcp".into(),
            mode: "l2dsr".into(),
            table_size: 251,
            changed_slots: 7,
            protection_mode: "enforce".into(),
            protection: ProtectCounters {
                dropped_new_flows: 3,
                dropped_packets: 0,
                monitored_new_flows: 0,
                monitored_packets: 0,
            },
            panic: false,
            traffic: Traffic {
                packets: 10,
                bytes: 600,
                new_flows: 5,
            },
            backends: vec![
                backend("198.18.0.11", true, 10),
                backend("198.18.0.12", false, 0),
            ],
        }],
        table_rebuilds: 2,
        reloads_ok: 1,
        reloads_error: 0,
        map_write_errors: 0,
        probe_latency: vec![LatencyHistogram {
            service: "web".into(),
            le: vec![0.001, 0.01],
            counts: vec![3, 1, 1],
            sum_seconds: 2.5,
        }],
        bgp: Some(crate::admin::BgpStatus {
            bird_socket: "/run/gateway/bird-eth0/bird.ctl".into(),
            errors: 3,
            last_error: Some("connecting to BIRD's control socket: refused".into()),
            vips: vec![
                crate::admin::VipStatus {
                    vip: "198.18.1.1".into(),
                    announced: true,
                    reason: "servable".into(),
                    since_seconds: 12.0,
                },
                crate::admin::VipStatus {
                    vip: "fd00:1::1".into(),
                    announced: false,
                    reason: "no usable backend".into(),
                    since_seconds: 3.0,
                },
            ],
        }),
    }
}

/// A stand-in for BIRD that answers `configure` until dropped; counts the commands.
pub struct FakeBird {
    commands: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    path: std::path::PathBuf,
}

impl FakeBird {
    pub fn start(path: &std::path::Path) -> FakeBird {
        let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        let commands = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = commands.clone();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { return };
                let mut w = s.try_clone().unwrap();
                let _ = std::io::Write::write_all(&mut w, b"0001 BIRD 2.0.12 ready.\n");
                let mut line = String::new();
                if std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut line).is_err()
                    || line == "stop\n"
                {
                    return;
                }
                seen.lock().unwrap().push(line);
                let _ = std::io::Write::write_all(
                    &mut w,
                    b"0002-Reading configuration\n0003 Reconfigured\n",
                );
            }
        });
        FakeBird {
            commands,
            path: path.to_path_buf(),
        }
    }

    /// `configure` commands received (other commands, such as heartbeats, are not counted).
    pub fn count(&self) -> usize {
        self.commands
            .lock()
            .unwrap()
            .iter()
            .filter(|c| *c == "configure\n")
            .count()
    }
}

impl Drop for FakeBird {
    fn drop(&mut self) {
        let _ = crate::bgp::bird::command(&self.path, "stop", std::time::Duration::from_secs(1));
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A `GET /protection` body with one service and one limited source.
pub fn protection_report() -> ProtectionReport {
    ProtectionReport {
        flood_new_flows_per_cpu: 200_000,
        allowlist: vec!["198.18.200.0/24".into()],
        services: vec![ServiceProtection {
            service: "web".into(),
            mode: "enforce".into(),
            new_flows_per_second: Some(10),
            new_flows_burst: Some(20),
            packets_per_second: None,
            packets_burst: None,
            prefix_v4: 24,
            prefix_v6: 64,
            counters: ProtectCounters {
                dropped_new_flows: 120,
                dropped_packets: 0,
                monitored_new_flows: 0,
                monitored_packets: 0,
            },
        }],
        sources: vec![LimitedSource {
            prefix: "198.18.0.0/24".into(),
            service: "web".into(),
            action: "dropped".into(),
            limited_for_seconds: 12.0,
            packets_per_second: 400.0,
            refused_per_second: 390.0,
            packets: 5000,
            new_flows: 4800,
            refused: 120,
        }],
    }
}
