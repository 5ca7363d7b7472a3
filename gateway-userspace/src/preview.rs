//! What a configuration would do (`gateway check`), and what applying it over a running one
//! would change, without root or the kernel; [`crate::report`] prints both.
//!
//! Both come from the real planner ([`plan::plan`]) with every backend not in `maint`
//! assumed healthy ([`plan::assume_all_up`]): they show the operator's intent, not the live
//! health of the backends.
use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use gateway_common::{BACKEND_DRAIN, BACKEND_UP};

use crate::{
    config::{AdminState, BackendConfig, Config, LoadTime, Mode, Protocol, ServiceConfig},
    plan::{self, Ids, Plan, ServicePlan, TableCache},
};

/// The plan the agent would make with every backend up, from fresh ids and tables.
pub fn planned(config: &Config) -> Plan {
    plan::plan(
        config,
        &plan::assume_all_up(config),
        &plan::Host::default(),
        &mut Ids::default(),
        &mut TableCache::default(),
        Duration::ZERO,
    )
}

/// What applying one config over another would change.
#[derive(Debug, Clone, PartialEq)]
pub struct Change<'a> {
    /// The data-plane and admin settings that differ: those that need a restart first.
    pub settings: Vec<Setting>,
    /// The new config's services in its order, then those it removes.
    pub services: Vec<ServiceChange<'a>>,
}

/// A data-plane or admin setting whose value differs.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// Its section in the file (`dataplane`, `admin`).
    pub section: &'static str,
    /// Its key in that section (`mtu`).
    pub key: &'static str,
    /// The running and the new value, as the file would say them.
    pub old: String,
    pub new: String,
    /// Why a running agent cannot change it; `None` when a reload applies it.
    pub restart: Option<&'static str>,
}

/// A service in either config, by name.
#[derive(Debug, Clone, PartialEq)]
pub enum ServiceChange<'a> {
    /// In the new config only; `empty`: no backend would take new flows.
    Added {
        service: &'a ServiceConfig,
        empty: bool,
    },
    /// In both.
    Kept(Kept<'a>),
    /// In the running config only.
    Removed(&'a ServiceConfig),
}

/// A service in both configs.
#[derive(Debug, Clone, PartialEq)]
pub struct Kept<'a> {
    /// As the new config has it.
    pub service: &'a ServiceConfig,
    /// What differs in its config, in report order.
    pub differences: Vec<Difference>,
    /// The fraction of its table's slots that name another backend (all of them when the
    /// size changes): the share of new-flow placement that moves.
    pub moved: f64,
    /// What happens to established flows.
    pub flows: Flows,
    /// Backends took new flows and none would.
    pub emptied: bool,
}

impl Kept<'_> {
    /// Nothing in its config differs and no slot moves.
    pub fn unchanged(&self) -> bool {
        self.differences.is_empty() && self.moved == 0.0
    }
}

/// One difference in a kept service's config; each carries the running value, then the new.
#[derive(Debug, Clone, PartialEq)]
pub enum Difference {
    /// The VIP, port or protocol.
    Address(Endpoint, Endpoint),
    Mode(Mode, Mode),
    /// In slots.
    TableSize(u32, u32),
    /// Zero is off.
    Slowstart(Duration, Duration),
    PanicThreshold(Option<f64>, Option<f64>),
    /// The service's health check (and so every backend's).
    Health,
    BackendsAdded(Vec<IpAddr>),
    BackendsRemoved(Vec<IpAddr>),
    Weight(IpAddr, u32, u32),
    State(IpAddr, AdminState, AdminState),
    Backup(IpAddr, bool, bool),
    /// A backend's own health check, named only when the service's did not change.
    BackendHealth(IpAddr),
    /// Its source limits (`SourceLimits`' text; a reload applies them).
    Limits(String, String),
}

/// What happens to a kept service's established flows.
#[derive(Debug, Clone, PartialEq)]
pub enum Flows {
    /// The service moved to another address: flows to the old one are no longer balanced.
    Unbalanced,
    /// They stay (their slots remember their backends); only new flows are placed by the
    /// new table.
    Stay,
    /// The table's size changes: slots do not correspond, so established TCP flows not in
    /// conntrack (those that began on settled slots) are placed by the new table.
    Resized,
    /// They stay, except those on these backends (up or draining before, not after), which
    /// are placed again.
    PlacedAgain(Vec<IpAddr>),
}

/// Where a service listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub protocol: Protocol,
}

impl Endpoint {
    pub fn of(s: &ServiceConfig) -> Self {
        Endpoint {
            address: SocketAddr::new(s.vip, s.port),
            protocol: s.protocol,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.protocol)
    }
}

/// What applying `next` over `running` would change.
pub fn change<'a>(running: &'a Config, next: &'a Config) -> Change<'a> {
    let (old_plan, new_plan) = (planned(running), planned(next));
    let old_by_name: HashMap<&str, (&ServiceConfig, &ServicePlan)> = running
        .services
        .iter()
        .zip(&old_plan.services)
        .map(|(s, p)| (s.name.as_str(), (s, p)))
        .collect();
    let mut services: Vec<ServiceChange> = next
        .services
        .iter()
        .zip(&new_plan.services)
        .map(|(s, sp)| match old_by_name.get(s.name.as_str()) {
            Some((old, old_sp)) => {
                ServiceChange::Kept(kept(old, old_sp, &old_plan, s, sp, &new_plan))
            }
            None => ServiceChange::Added {
                service: s,
                empty: sp.empty(),
            },
        })
        .collect();
    services.extend(
        running
            .services
            .iter()
            .filter(|s| !next.services.iter().any(|n| n.name == s.name))
            .map(ServiceChange::Removed),
    );
    Change {
        settings: setting_changes(running, next),
        services,
    }
}

/// The settings that differ, those that need a restart first.
fn setting_changes(running: &Config, next: &Config) -> Vec<Setting> {
    let (a, b) = (&running.dataplane, &next.dataplane);
    let mut out: Vec<Setting> = LoadTime::changed(running, next)
        .iter()
        .map(|s| {
            let (section, key) = s.key.split_once('.').unwrap_or(("", s.key));
            Setting {
                section,
                key,
                old: (s.show)(running),
                new: (s.show)(next),
                restart: Some(s.why),
            }
        })
        .collect();
    let mut live = |key: &'static str, old: String, new: String| {
        if old != new {
            out.push(Setting {
                section: "dataplane",
                key,
                old,
                new,
                restart: None,
            });
        }
    };
    let opt = |a: Option<_>| a.map_or("none".to_string(), |a: IpAddr| a.to_string());
    live("mtu", a.mtu.to_string(), b.mtu.to_string());
    live(
        "ipip_source_v4",
        opt(a.ipip_source_v4.map(IpAddr::V4)),
        opt(b.ipip_source_v4.map(IpAddr::V4)),
    );
    live(
        "ipip_source_v4_vary_bits",
        a.ipip_source_v4_vary_bits.to_string(),
        b.ipip_source_v4_vary_bits.to_string(),
    );
    live(
        "ipip_source_v6",
        opt(a.ipip_source_v6.map(IpAddr::V6)),
        opt(b.ipip_source_v6.map(IpAddr::V6)),
    );
    live("on_exit", a.on_exit.to_string(), b.on_exit.to_string());
    let list = |v: Vec<String>| format!("[{}]", v.join(", "));
    live(
        "snat_v4",
        list(a.snat_v4.iter().map(|x| x.to_string()).collect()),
        list(b.snat_v4.iter().map(|x| x.to_string()).collect()),
    );
    live(
        "snat_v6",
        list(a.snat_v6.iter().map(|x| x.to_string()).collect()),
        list(b.snat_v6.iter().map(|x| x.to_string()).collect()),
    );
    let ports = |r: &std::ops::RangeInclusive<u16>| format!("{}-{}", r.start(), r.end());
    live("snat_ports", ports(&a.snat_ports), ports(&b.snat_ports));
    // `[protection]`'s live keys (a reload applies them; its limits show per service).
    let (p, q) = (&running.protection, &next.protection);
    let prefixes = |l: &[crate::config::Prefix]| {
        let v: Vec<String> = l.iter().map(|p| p.to_string()).collect();
        format!("[{}]", v.join(", "))
    };
    for (key, old, new) in [
        (
            "flood_new_flows_per_cpu",
            p.flood_new_flows_per_cpu.to_string(),
            q.flood_new_flows_per_cpu.to_string(),
        ),
        ("allowlist", prefixes(&p.allowlist), prefixes(&q.allowlist)),
    ] {
        if old != new {
            out.push(Setting {
                section: "protection",
                key,
                old,
                new,
                restart: None,
            });
        }
    }
    out
}

/// A service present in both configs.
fn kept<'a>(
    old: &ServiceConfig,
    old_sp: &ServicePlan,
    old_plan: &Plan,
    new: &'a ServiceConfig,
    new_sp: &ServicePlan,
    new_plan: &Plan,
) -> Kept<'a> {
    let mut differences = Vec::new();
    let (old_end, new_end) = (Endpoint::of(old), Endpoint::of(new));
    if old_end != new_end {
        differences.push(Difference::Address(old_end, new_end));
    }
    if old.mode != new.mode {
        differences.push(Difference::Mode(old.mode, new.mode));
    }
    if old.table_size != new.table_size {
        differences.push(Difference::TableSize(old.table_size, new.table_size));
    }
    if old.slowstart != new.slowstart {
        differences.push(Difference::Slowstart(old.slowstart, new.slowstart));
    }
    if old.panic_threshold != new.panic_threshold {
        differences.push(Difference::PanicThreshold(
            old.panic_threshold,
            new.panic_threshold,
        ));
    }
    let health_changed = old.health != new.health;
    if health_changed {
        differences.push(Difference::Health);
    }
    if old.protection != new.protection {
        differences.push(Difference::Limits(
            old.protection.to_string(),
            new.protection.to_string(),
        ));
    }

    fn find(list: &[BackendConfig], a: IpAddr) -> Option<&BackendConfig> {
        list.iter().find(|b| b.address == a)
    }
    let only_in = |these: &[BackendConfig], other: &[BackendConfig]| -> Vec<IpAddr> {
        these
            .iter()
            .filter(|b| find(other, b.address).is_none())
            .map(|b| b.address)
            .collect()
    };
    let added = only_in(&new.backends, &old.backends);
    if !added.is_empty() {
        differences.push(Difference::BackendsAdded(added));
    }
    let removed = only_in(&old.backends, &new.backends);
    if !removed.is_empty() {
        differences.push(Difference::BackendsRemoved(removed));
    }
    for b in &new.backends {
        let Some(o) = find(&old.backends, b.address) else {
            continue;
        };
        let a = b.address;
        if o.weight != b.weight {
            differences.push(Difference::Weight(a, o.weight, b.weight));
        }
        if o.state != b.state {
            differences.push(Difference::State(a, o.state, b.state));
        }
        if o.backup != b.backup {
            differences.push(Difference::Backup(a, o.backup, b.backup));
        }
        // A changed service check changes every backend's; name only backends' own changes.
        if !health_changed && o.health != b.health {
            differences.push(Difference::BackendHealth(a));
        }
    }

    let moved = moved_share(
        &slot_addresses(old_plan, old_sp),
        &slot_addresses(new_plan, new_sp),
    );
    // Established flows stay while their backend stays up or draining (a changed slot
    // remembers it); flows of a backend that leaves (removed, maint, an idle backup) are
    // placed again.
    let keeps = |s: u8| s == BACKEND_UP || s == BACKEND_DRAIN;
    let still: HashSet<IpAddr> = new_sp
        .backends
        .iter()
        .filter(|b| keeps(b.kernel_state))
        .map(|b| b.address)
        .collect();
    let lost: Vec<IpAddr> = old_sp
        .backends
        .iter()
        .filter(|b| keeps(b.kernel_state) && !still.contains(&b.address))
        .map(|b| b.address)
        .collect();
    let flows = if old_end != new_end {
        Flows::Unbalanced
    } else if old_sp.table_size != new_sp.table_size {
        Flows::Resized
    } else if lost.is_empty() {
        Flows::Stay
    } else {
        Flows::PlacedAgain(lost)
    };
    Kept {
        service: new,
        differences,
        moved,
        flows,
        emptied: new_sp.empty() && !old_sp.empty(),
    }
}

/// Each slot of the service's table as the backend address it names (None: no backend).
/// Ids are per plan; addresses are what a slot means across plans.
fn slot_addresses(plan: &Plan, sp: &ServicePlan) -> Vec<Option<IpAddr>> {
    let by_id: HashMap<u32, IpAddr> = sp.backends.iter().map(|b| (b.id, b.address)).collect();
    plan.desired
        .services
        .get(&sp.key)
        .map(|d| d.table.iter().map(|id| by_id.get(id).copied()).collect())
        .unwrap_or_default()
}

/// The fraction of slots that name another backend; all of them when the sizes differ.
fn moved_share(old: &[Option<IpAddr>], new: &[Option<IpAddr>]) -> f64 {
    if old.len() != new.len() {
        return 1.0;
    }
    if old.is_empty() {
        return 0.0;
    }
    let moved = old.iter().zip(new).filter(|(a, b)| a != b).count();
    moved as f64 / old.len() as f64
}
