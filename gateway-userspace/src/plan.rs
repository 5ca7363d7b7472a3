//! Planning: `plan(config, facts) -> Plan`, the desired data plane (maps) plus a report of
//! why each backend is where it is. Pure: health, MAC resolution and time come in as
//! [`Facts`]; nothing here touches the kernel or the network.
//!
//! What each backend state does:
//! - in the table (`BACKEND_UP`): ready, probed up, L2 next hop known - and, for a backup,
//!   no primary qualifies; in panic mode every ready primary with a known next hop;
//! - `drain`: keeps established flows (`BACKEND_DRAIN`), gets no new ones;
//! - `maint`, probed down, or next hop unknown: `BACKEND_DOWN`, its flows are placed again.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use gateway_common::{BACKEND_DOWN, BACKEND_DRAIN, BACKEND_UP, MAX_BACKENDS, ServiceKey};

use crate::{
    config::{AdminState, Config},
    maglev,
    model::{self, Applied, BackendKey, Desired, DesiredService, addr16, family, service_key},
};

/// Slow start ramps in this many steps (so in this many table rebuilds).
pub const SLOWSTART_STEPS: u32 = 4;
/// The weight a recovering backend starts from, as a fraction of its own.
pub const SLOWSTART_FLOOR: f64 = 0.1;

/// What the agent knows about one backend right now.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendFacts {
    /// The probe verdict (maint backends are not probed; ignored for them).
    pub up: bool,
    /// When it last came up, on the agent's clock (for slow start); None if never seen up.
    pub up_since: Option<Duration>,
    /// The L2 next hop's MAC, or why it is unknown.
    pub mac: Result<[u8; 6], String>,
}

/// Facts per backend. A backend missing here counts as down with an unknown next hop.
pub type Facts = HashMap<BackendKey, BackendFacts>;

/// Stable ids: a service keeps its id (stats index, table regions) and a backend its id
/// (per service, so admin state is per service) for as long as they exist.
#[derive(Debug, Default, Clone)]
pub struct Ids {
    services: BTreeMap<String, u32>,
    backends: BTreeMap<BackendKey, u32>,
    service_ids: IdPool,
    backend_ids: IdPool,
}

/// The ids in use, handing out the lowest free one. Every id from the first one asked for
/// up to `full_below` is taken, so with thousands of ids the search does not scan them all.
#[derive(Debug, Default, Clone)]
struct IdPool {
    used: BTreeSet<u32>,
    full_below: u32,
}

impl IdPool {
    /// The lowest free id at or above `first`, now taken.
    fn take(&mut self, first: u32) -> u32 {
        let mut id = self.full_below.max(first);
        while self.used.contains(&id) {
            id += 1;
        }
        self.full_below = id + 1;
        self.used.insert(id);
        id
    }

    /// Takes `id` as it is (adopting); false if it was taken already.
    fn hold(&mut self, id: u32) -> bool {
        self.used.insert(id)
    }

    fn release(&mut self, id: u32) {
        self.used.remove(&id);
        self.full_below = self.full_below.min(id);
    }
}

impl Ids {
    /// The ids an earlier agent gave the services and backends of `config` that the maps
    /// still hold: a service by its key (VIP, port, protocol), a backend by its service and
    /// address. Conntrack entries name backends by id, so keeping ids keeps flows in place.
    pub fn adopt(config: &Config, applied: &Applied) -> Ids {
        let mut ids = Ids::default();
        let by_key: HashMap<(u32, u8, [u8; 16]), u32> = applied
            .backends
            .iter()
            .map(|(id, pb)| ((pb.service, pb.family, pb.addr), *id))
            .collect();
        for s in &config.services {
            let Some(a) = applied.services.get(&service_key(s)) else {
                continue;
            };
            let sid = a.value.id;
            if !ids.service_ids.hold(sid) {
                continue;
            }
            ids.services.insert(s.name.clone(), sid);
            for b in &s.backends {
                if let Some(id) = by_key.get(&(sid, family(b.address), addr16(b.address))) {
                    ids.backends
                        .insert(BackendKey::new(&s.name, b.address), *id);
                    ids.backend_ids.hold(*id);
                }
            }
        }
        ids
    }

    /// A backend's id, if it has one.
    pub fn backend_id(&self, service: &str, addr: IpAddr) -> Option<u32> {
        self.backends.get(&BackendKey::new(service, addr)).copied()
    }

    /// Drops ids of services and backends no longer configured.
    pub fn retain(&mut self, config: &Config) {
        let services: HashSet<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
        let backends: HashSet<(&str, IpAddr)> = config
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| (s.name.as_str(), b.address)))
            .collect();
        let pool = &mut self.service_ids;
        self.services.retain(|name, id| {
            let keep = services.contains(name.as_str());
            if !keep {
                pool.release(*id);
            }
            keep
        });
        let pool = &mut self.backend_ids;
        self.backends.retain(|k, id| {
            let keep = backends.contains(&(k.service.as_str(), k.addr));
            if !keep {
                pool.release(*id);
            }
            keep
        });
    }

    pub fn service(&mut self, name: &str) -> u32 {
        if let Some(id) = self.services.get(name) {
            return *id;
        }
        let id = self.service_ids.take(0);
        self.services.insert(name.to_string(), id);
        id
    }

    /// Backend ids start at 1: 0 means "no backend" in a table.
    pub fn backend(&mut self, service: &str, addr: IpAddr) -> u32 {
        let key = BackendKey::new(service, addr);
        if let Some(id) = self.backends.get(&key) {
            return *id;
        }
        let id = self.backend_ids.take(1);
        self.backends.insert(key, id);
        id
    }
}

/// Where a backend stands, for reports.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendPlan {
    pub address: IpAddr,
    pub id: u32,
    pub admin: AdminState,
    pub backup: bool,
    pub health_up: bool,
    /// `BACKEND_UP` / `BACKEND_DRAIN` / `BACKEND_DOWN` as written to the map.
    pub kernel_state: u8,
    pub weight: u32,
    /// The weight used for the table (lower during slow start; 0 when not in the table).
    pub effective_weight: u32,
    /// Table slots it holds.
    pub slots: usize,
    /// Why it is (not) taking new flows.
    pub reason: String,
}

impl BackendPlan {
    /// A one-word state for tables: up, standby (in the table's set but holding no slot),
    /// backup (healthy, idle while a primary is up), drain, maint, down (probed down),
    /// unavailable (next hop unknown).
    pub fn state_word(&self) -> &'static str {
        match (self.admin, self.kernel_state) {
            (AdminState::Maint, _) => "maint",
            (_, BACKEND_DRAIN) => "drain",
            (_, BACKEND_UP) if self.slots > 0 => "up",
            (_, BACKEND_UP) => "standby",
            _ if !self.health_up => "down",
            _ if self.backup && self.reason.starts_with("backup") => "backup",
            _ => "unavailable",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServicePlan {
    pub name: String,
    pub key: ServiceKey,
    pub id: u32,
    pub table_size: u32,
    /// The healthy share fell below the panic threshold: spreading over every ready backend.
    pub panic: bool,
    pub backends: Vec<BackendPlan>,
}

impl ServicePlan {
    /// No backend takes new flows: the table is empty and new flows are dropped.
    pub fn empty(&self) -> bool {
        self.backends.iter().all(|b| b.slots == 0)
    }

    /// Why each backend takes no new flows, for the log: the first few by name, then how
    /// many more for each kind of reason (its text before any `:`, which may go on with
    /// details of each backend), so that a service of hundreds logs a short line.
    pub fn reasons(&self) -> String {
        const NAMED: usize = 5;
        let mut parts: Vec<String> = self
            .backends
            .iter()
            .take(NAMED)
            .map(|b| format!("{} {}", b.address, b.reason))
            .collect();
        let mut rest: Vec<(&str, usize)> = Vec::new();
        for b in self.backends.iter().skip(NAMED) {
            let kind = b.reason.split(':').next().unwrap_or_default();
            match rest.iter_mut().find(|(r, _)| *r == kind) {
                Some((_, n)) => *n += 1,
                None => rest.push((kind, 1)),
            }
        }
        parts.extend(
            rest.into_iter()
                .map(|(reason, n)| format!("{n} more: {reason}")),
        );
        parts.join("; ")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub desired: Desired,
    pub services: Vec<ServicePlan>,
    /// The next time (agent clock) a slow-start step changes a weight: plan again then.
    pub next_step: Option<Duration>,
}

/// Remembers the last table built per service so an unchanged input reuses it (building a
/// 65537-slot table takes about a millisecond; comparing inputs is free).
#[derive(Debug, Default)]
pub struct TableCache {
    last: HashMap<String, CachedTable>,
}

#[derive(Debug)]
struct CachedTable {
    entries: Vec<maglev::Entry>,
    size: u32,
    built: Built,
}

/// A table and what is derived from it once, when it is built.
#[derive(Debug, Clone)]
struct Built {
    table: Arc<Vec<u32>>,
    /// Slots per backend id (counting them walks the whole table).
    shares: Arc<BTreeMap<u32, usize>>,
    /// `model::table_hash` of the table.
    hash: u64,
}

impl TableCache {
    fn build(&mut self, service: &str, mut entries: Vec<maglev::Entry>, m: u32) -> Built {
        entries.sort_by_key(|e| e.key);
        if let Some(c) = self.last.get(service)
            && c.entries == entries
            && c.size == m
        {
            return c.built.clone();
        }
        // The old table goes first: with many services, keeping every old table until
        // the new ones are built would double the agent's table memory.
        self.last.remove(service);
        let table = maglev::build(&entries, m);
        let built = Built {
            shares: Arc::new(maglev::shares(&table)),
            hash: model::table_hash(&table),
            table: Arc::new(table),
        };
        let cached = CachedTable {
            entries,
            size: m,
            built: built.clone(),
        };
        self.last.insert(service.to_string(), cached);
        built
    }

    /// Forgets services no longer configured.
    fn retain(&mut self, config: &Config) {
        let names: HashSet<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
        self.last.retain(|name, _| names.contains(name.as_str()));
    }
}

/// The slow-start factor at `now` for a backend up since `since`, and when it next changes.
fn slowstart(slow: Duration, since: Option<Duration>, now: Duration) -> (f64, Option<Duration>) {
    let (Some(since), false) = (since, slow.is_zero()) else {
        return (1.0, None);
    };
    let elapsed = now.saturating_sub(since);
    if elapsed >= slow {
        return (1.0, None);
    }
    let step_len = slow / SLOWSTART_STEPS;
    let step = (elapsed.as_nanos() / step_len.as_nanos().max(1)) as u32;
    let factor = (f64::from(step) / f64::from(SLOWSTART_STEPS)).max(SLOWSTART_FLOOR);
    (factor, Some(since + step_len * (step + 1)))
}

/// Facts about this balancer, as opposed to its backends.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Host {
    /// The MAC of the interface the program is attached to, if known: VIP frames must be
    /// addressed to it (or to one of `dataplane.extra_macs`).
    pub interface_mac: Option<[u8; 6]>,
    /// This host's own addresses: no VIP packet may come from them.
    pub addresses: Vec<IpAddr>,
    /// SNAT addresses the config no longer names that live full-NAT mappings still use:
    /// answers to them still go to the full-NAT program, but no new flow is given them
    /// (they are not in NAT_POOL). See `agent::nat`.
    pub snat_draining: Vec<IpAddr>,
}

/// The desired data plane for `config` given `facts` about the backends and `host` at
/// agent time `now`.
pub fn plan(
    config: &Config,
    facts: &Facts,
    host: &Host,
    ids: &mut Ids,
    tables: &mut TableCache,
    now: Duration,
) -> Plan {
    ids.retain(config);
    tables.retain(config);
    let mut desired = Desired {
        settings: model::settings(config, host.interface_mac),
        nat_pool: model::nat_pool(config),
        ..Desired::default()
    };
    for a in &host.addresses {
        desired
            .local
            .insert(model::local_key(*a), gateway_common::LOCAL_HOST);
    }
    for svc in &config.services {
        desired
            .local
            .insert(model::local_key(svc.vip), gateway_common::LOCAL_VIP);
    }
    let snat = config.dataplane.snat_addrs();
    for a in snat.chain(host.snat_draining.iter().copied()) {
        *desired.local.entry(model::local_key(a)).or_default() |= gateway_common::LOCAL_SNAT;
    }
    desired.allowlist = config
        .protection
        .allowlist
        .iter()
        .map(model::allow_key)
        .collect();
    let mut services = Vec::new();
    let mut next_step: Option<Duration> = None;
    let unknown = BackendFacts {
        up: false,
        up_since: None,
        mac: Err("next hop not resolved yet".into()),
    };

    for s in &config.services {
        let sid = ids.service(&s.name);
        let mut rows = Vec::new();
        // (row index, effective weight) of the backends that may take new flows.
        let mut primaries = Vec::new();
        let mut backups = Vec::new();
        let mut ready_primaries = Vec::new();
        let (mut healthy_weight, mut total_weight) = (0u64, 0u64);
        for b in &s.backends {
            let id = ids.backend(&s.name, b.address);
            let f = facts
                .get(&BackendKey::new(&s.name, b.address))
                .unwrap_or(&unknown);
            let (factor, step) = slowstart(s.slowstart, f.up_since, now);
            let mut reason = String::new();
            let eligible = match (b.state, f.up, &f.mac) {
                (AdminState::Maint, ..) => {
                    reason = "admin maint".into();
                    false
                }
                (_, false, _) => {
                    reason = "health check down".into();
                    false
                }
                (_, true, Err(e)) => {
                    reason = format!("next hop unknown: {e}");
                    false
                }
                (AdminState::Drain, true, Ok(_)) => {
                    reason = "admin drain: established flows only".into();
                    false
                }
                (AdminState::Ready, true, Ok(_)) => true,
            };
            if b.state != AdminState::Maint && !b.backup {
                total_weight += u64::from(b.weight);
                if eligible {
                    healthy_weight += u64::from(b.weight);
                }
                if b.state == AdminState::Ready && f.mac.is_ok() {
                    ready_primaries.push(rows.len());
                }
            }
            let eff = ((f64::from(b.weight) * factor).round() as u32).max(1);
            if eligible {
                if factor < 1.0 {
                    reason = format!("slow start: {:.0}% of its weight", factor * 100.0);
                    next_step = match (next_step, step) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                if b.backup {
                    backups.push(rows.len())
                } else {
                    primaries.push(rows.len())
                };
            }
            let kernel_state = match (b.state, f.up, &f.mac) {
                (AdminState::Drain, true, Ok(_)) => BACKEND_DRAIN,
                _ => BACKEND_DOWN,
            };
            rows.push((
                BackendPlan {
                    address: b.address,
                    id,
                    admin: b.state,
                    backup: b.backup,
                    health_up: f.up,
                    kernel_state,
                    weight: b.weight,
                    effective_weight: eff,
                    slots: 0,
                    reason,
                },
                f.mac.clone().unwrap_or([0; 6]),
            ));
        }

        let panic = s
            .panic_threshold
            .is_some_and(|t| total_weight > 0 && (healthy_weight as f64) < t * total_weight as f64);
        let chosen: Vec<usize> = if panic {
            ready_primaries
        } else if !primaries.is_empty() {
            for i in &backups {
                rows[*i].0.reason = "backup: a primary is up".into();
            }
            primaries
        } else {
            backups
        };
        let mut entries = Vec::new();
        for i in &chosen {
            let (b, _) = &mut rows[*i];
            b.kernel_state = BACKEND_UP;
            if panic {
                b.reason = format!(
                    "panic mode: healthy share below {:.0}%",
                    s.panic_threshold.unwrap_or(0.0) * 100.0
                );
            }
            entries.push(maglev::Entry {
                key: addr16(b.address),
                id: b.id,
                weight: b.effective_weight,
            });
        }
        let built = tables.build(&s.name, entries, s.table_size);
        let shares = &built.shares;
        for (b, mac) in rows.iter_mut() {
            b.slots = shares.get(&b.id).copied().unwrap_or(0);
            if b.slots == 0 {
                b.effective_weight = 0;
            } else if b.reason.is_empty() {
                b.reason = "ready, up".into();
            }
            if b.id < MAX_BACKENDS {
                desired
                    .backends
                    .insert(b.id, model::backend(b.address, *mac, b.kernel_state, sid));
            }
        }
        let key = service_key(s);
        let (protect, limits) = model::limits(&s.protection);
        desired.services.insert(
            key,
            DesiredService {
                id: sid,
                mode: model::mode(s.mode),
                table: built.table,
                table_hash: built.hash,
                protect,
                limits,
            },
        );
        services.push(ServicePlan {
            name: s.name.clone(),
            key,
            id: sid,
            table_size: s.table_size,
            panic,
            backends: rows.into_iter().map(|(b, _)| b).collect(),
        });
    }
    Plan {
        desired,
        services,
        next_step,
    }
}

/// Facts for planning without a live agent (`gateway check`): every non-maint backend up,
/// next hops assumed resolvable.
pub fn assume_all_up(config: &Config) -> Facts {
    let mut f = Facts::new();
    for s in &config.services {
        for b in &s.backends {
            f.insert(
                BackendKey::new(&s.name, b.address),
                BackendFacts {
                    up: true,
                    up_since: None,
                    mac: Ok([0x02, 0, 0, 0, 0, 1]),
                },
            );
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{mapsync, model::Layout};

    const BASE: &str = r#"
[dataplane]
interface = "eth0"

[[service]]
name = "web"
vip = "198.18.1.1"
port = 80
protocol = "tcp"
mode = "l2dsr"
table_size = 65537
{extra}

[[service.backend]]
address = "198.18.0.11"
{b1}
[[service.backend]]
address = "198.18.0.12"
{b2}
[[service.backend]]
address = "198.18.0.13"
{b3}
"#;

    fn config(extra: &str, b: [&str; 3]) -> Config {
        let text = BASE
            .replace("{extra}", extra)
            .replace("{b1}", b[0])
            .replace("{b2}", b[1])
            .replace("{b3}", b[2]);
        Config::parse(&text, Path::new("t.toml")).expect("valid test config")
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([198, 18, 0, last])
    }

    fn facts(up: [bool; 3]) -> Facts {
        (0..3)
            .map(|i| {
                let f = BackendFacts {
                    up: up[i],
                    up_since: None,
                    mac: Ok([2, 0, 0, 0, 0, 11 + i as u8]),
                };
                (BackendKey::new("web", ip(11 + i as u8)), f)
            })
            .collect()
    }

    fn run(c: &Config, f: &Facts) -> Plan {
        plan(
            c,
            f,
            &Host::default(),
            &mut Ids::default(),
            &mut TableCache::default(),
            Duration::ZERO,
        )
    }

    fn states(p: &Plan) -> Vec<(&'static str, u8, usize)> {
        p.services[0]
            .backends
            .iter()
            .map(|b| (b.state_word(), b.kernel_state, b.slots))
            .collect()
    }

    #[test]
    fn all_up_share_the_table_by_weight() {
        let c = config("", ["weight = 100", "weight = 200", "weight = 300"]);
        let p = run(&c, &facts([true; 3]));
        let s = &p.services[0];
        let total: usize = s.backends.iter().map(|b| b.slots).sum();
        assert_eq!(total, 65537);
        for b in &s.backends {
            let want = 65537.0 * f64::from(b.weight) / 600.0;
            assert!((b.slots as f64 - want).abs() / want < 0.01, "{b:?}");
            assert_eq!(b.kernel_state, BACKEND_UP);
        }
        assert!(!s.empty());
    }

    #[test]
    fn reasons_name_the_first_backends_and_count_the_rest() {
        let c = config("", ["", "", "state = \"maint\""]);
        let p = run(&c, &facts([false, false, true]));
        let s = &p.services[0];
        assert!(s.empty());
        assert_eq!(
            s.reasons(),
            "198.18.0.11 health check down; 198.18.0.12 health check down; \
             198.18.0.13 admin maint"
        );
        // Twelve backends: five named, then the other seven counted by kind of reason.
        let mut big = s.clone();
        big.backends = (0..4).flat_map(|_| s.backends.clone()).collect();
        for (i, b) in big.backends.iter_mut().enumerate().skip(9) {
            b.reason = format!("health check down: detail {i}");
        }
        assert_eq!(
            big.reasons(),
            "198.18.0.11 health check down; 198.18.0.12 health check down; \
             198.18.0.13 admin maint; 198.18.0.11 health check down; \
             198.18.0.12 health check down; 2 more: admin maint; 5 more: health check down"
        );
    }

    #[test]
    fn down_drain_and_maint_leave_the_table_with_their_own_kernel_state() {
        let c = config("", ["", "state = \"drain\"", "state = \"maint\""]);
        let p = run(&c, &facts([true, true, true]));
        assert_eq!(
            states(&p),
            vec![
                ("up", BACKEND_UP, 65537),
                ("drain", BACKEND_DRAIN, 0),
                ("maint", BACKEND_DOWN, 0)
            ]
        );
        let p = run(&c, &facts([false, false, true]));
        assert_eq!(states(&p)[0], ("down", BACKEND_DOWN, 0));
        assert_eq!(
            states(&p)[1],
            ("down", BACKEND_DOWN, 0),
            "a draining backend that is down keeps nothing"
        );
        assert!(p.services[0].empty());
        assert!(
            p.desired
                .services
                .values()
                .next()
                .unwrap()
                .table
                .iter()
                .all(|s| *s == 0)
        );
    }

    #[test]
    fn an_unknown_next_hop_keeps_a_backend_out() {
        let c = config("", ["", "", ""]);
        let mut f = facts([true; 3]);
        f.get_mut(&BackendKey::new("web", ip(12))).unwrap().mac = Err("no ARP reply".into());
        let p = run(&c, &f);
        let b = &p.services[0].backends[1];
        assert_eq!((b.slots, b.kernel_state), (0, BACKEND_DOWN));
        assert!(b.reason.contains("no ARP reply"), "{}", b.reason);
    }

    #[test]
    fn backups_take_traffic_only_while_no_primary_is_up() {
        let c = config("", ["", "", "backup = true"]);
        let p = run(&c, &facts([true, false, true]));
        assert_eq!(
            states(&p),
            vec![
                ("up", BACKEND_UP, 65537),
                ("down", BACKEND_DOWN, 0),
                ("backup", BACKEND_DOWN, 0)
            ]
        );
        assert!(p.services[0].backends[2].reason.contains("backup"));
        let p = run(&c, &facts([false, false, true]));
        assert_eq!(states(&p)[2], ("up", BACKEND_UP, 65537));
        let p = run(&c, &facts([false, true, true]));
        assert_eq!(states(&p)[1], ("up", BACKEND_UP, 65537));
        assert_eq!(states(&p)[2].2, 0);
    }

    #[test]
    fn below_the_panic_threshold_traffic_spreads_over_every_ready_backend() {
        let c = config("panic_threshold = 0.5", ["", "", "state = \"maint\""]);
        // One of two non-maint primaries up: 50% is not below 50%.
        let p = run(&c, &facts([true, false, true]));
        assert!(!p.services[0].panic);
        assert_eq!(states(&p)[1].2, 0);
        let c = config("panic_threshold = 0.6", ["", "", "state = \"maint\""]);
        let p = run(&c, &facts([true, false, true]));
        assert!(p.services[0].panic);
        let s = states(&p);
        assert!(s[0].2 > 30000 && s[1].2 > 30000, "{s:?}");
        assert_eq!(s[1].1, BACKEND_UP, "panic-mode backends keep their flows");
        assert_eq!(s[2], ("maint", BACKEND_DOWN, 0));
    }

    #[test]
    fn slow_start_ramps_in_steps_and_says_when_to_plan_again() {
        let c = config("slowstart = \"8s\"", ["", "", ""]);
        let mut f = facts([true; 3]);
        let since = Duration::from_secs(100);
        f.get_mut(&BackendKey::new("web", ip(11))).unwrap().up_since = Some(since);
        let mut ids = Ids::default();
        let mut tables = TableCache::default();
        let mut shares = Vec::new();
        for (t, want_next) in [
            (0, Some(2)),
            (2, Some(4)),
            (5, Some(6)),
            (7, Some(8)),
            (8, None),
        ] {
            let p = plan(
                &c,
                &f,
                &Host::default(),
                &mut ids,
                &mut tables,
                since + Duration::from_secs(t),
            );
            assert_eq!(
                p.next_step,
                want_next.map(|n| since + Duration::from_secs(n)),
                "t={t}"
            );
            shares.push(p.services[0].backends[0].slots);
        }
        assert!(shares.windows(2).all(|w| w[0] <= w[1]), "{shares:?}");
        assert!(shares[0] < 65537 / 3 / 5, "starts small: {shares:?}");
        assert!(
            (shares[4] as f64 - 65537.0 / 3.0).abs() < 300.0,
            "ends at its full share: {shares:?}"
        );
    }

    #[test]
    fn ids_are_stable_and_reused_after_removal() {
        let c = config("", ["", "", ""]);
        let mut ids = Ids::default();
        let mut t = TableCache::default();
        // The same ids and table cache through every plan, as the agent keeps them.
        let mut again = |c: &Config| {
            plan(
                c,
                &facts([true; 3]),
                &Host::default(),
                &mut ids,
                &mut t,
                Duration::ZERO,
            )
        };
        let p1 = again(&c);
        let p2 = again(&c);
        let id_list = |p: &Plan| {
            p.services[0]
                .backends
                .iter()
                .map(|b| b.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(id_list(&p1), vec![1, 2, 3]);
        assert_eq!(id_list(&p1), id_list(&p2));
        let mut fewer = c.clone();
        fewer.services[0].backends.remove(1);
        let p3 = again(&fewer);
        assert_eq!(id_list(&p3), vec![1, 3]);
        let p4 = again(&c);
        assert_eq!(id_list(&p4), vec![1, 2, 3]);
    }

    #[test]
    fn new_backends_take_the_lowest_free_ids_whatever_the_gaps() {
        let mut c = config("", ["", "", ""]);
        let template = c.services[0].backends[0].clone();
        let at = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0xc612_4000 + i));
        c.services[0].backends = (0..300)
            .map(|i| crate::config::BackendConfig {
                address: at(i),
                ..template.clone()
            })
            .collect();
        let mut ids = Ids::default();
        let mut assigned: HashMap<IpAddr, u32> = HashMap::new();
        let mut next = 300;
        // Rounds of removing a scattered third and adding new backends; the reference is
        // the plain definition: the lowest id nobody holds.
        for round in 0..4u32 {
            ids.retain(&c);
            assigned.retain(|a, _| c.services[0].backends.iter().any(|b| b.address == *a));
            for b in &c.services[0].backends {
                let want = match assigned.get(&b.address) {
                    Some(id) => *id,
                    None => (1..)
                        .find(|id| !assigned.values().any(|v| v == id))
                        .unwrap(),
                };
                assert_eq!(ids.backend("web", b.address), want, "round {round}");
                assigned.insert(b.address, want);
            }
            let mut i = 0;
            c.services[0].backends.retain(|_| {
                i += 1;
                (i + round) % 3 != 0
            });
            for _ in 0..50 {
                c.services[0].backends.push(crate::config::BackendConfig {
                    address: at(next),
                    ..template.clone()
                });
                next += 1;
            }
        }
    }

    #[test]
    fn the_same_input_plans_the_same_maps_and_an_empty_diff() {
        let c = config("", ["weight = 5", "", "backup = true"]);
        let layout = Layout {
            max_services: 16,
            stride: 65537,
        };
        let p1 = run(&c, &facts([true, true, true]));
        let p2 = run(&c, &facts([true, true, true]));
        assert_eq!(p1.desired, p2.desired);
        let (ops, applied) = mapsync::diff(&Applied::default(), &p1.desired, layout).unwrap();
        assert!(!ops.is_empty());
        let (again, _) = mapsync::diff(&applied, &p2.desired, layout).unwrap();
        assert!(again.is_empty(), "{again:?}");
    }
}
