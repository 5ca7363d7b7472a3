//! Map sync: `diff(applied, desired)` turns a desired data-plane state into map operations,
//! and `apply(ops, writer)` performs them through a [`MapWriter`]. The states are
//! [`crate::model`]'s. Only the writer touches aya ([`crate::dataplane::Dataplane`]); tests
//! use `testing::MemMaps`.
//!
//! Tables are replaced atomically: each service owns two table regions; a new table is
//! written into the one packets are not using, then the service entry is replaced to point
//! at it (one hash-map update, which the kernel performs as an element swap).
use std::sync::Arc;

use gateway_common::{
    Backend, Limits, LocalFilter, LocalKey, NatPool, ServiceKey, ServiceValue, Settings,
};
use thiserror::Error;

use crate::model::{self, AllowKey, Applied, AppliedService, Desired, Layout, Prior, SlotCounts};

#[derive(Debug, Error)]
pub enum SyncError {
    /// A map refused a write (the kernel's error, or the table memory's).
    #[error("writing {what}")]
    Write {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A table would not fit the region it was given.
    #[error("writing table @{offset}: slot {end} is past the map's {slots} slots")]
    TableBounds {
        offset: u32,
        end: usize,
        slots: usize,
    },
    #[error("service id {id} is outside the {max} services the maps hold")]
    ServiceId { id: u32, max: u32 },
    #[error("table of {size} slots exceeds the largest the maps hold ({max})")]
    TableSize { size: usize, max: u32 },
    #[error("service {id}: its {probes} buckets of the service index are taken")]
    ServiceIndexFull { id: u32, probes: u32 },
}

/// One map write.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Settings(Settings),
    NatPool(Box<NatPool>),
    /// Set a backend slot; a zeroed `Backend` (family 0) clears it.
    Backend {
        id: u32,
        backend: Backend,
    },
    /// Write a table into a region (never the active one), continuing `prior`.
    Table {
        offset: u32,
        prior: Prior,
        slots: Arc<Vec<u32>>,
    },
    /// Insert or replace a service entry (this is the table flip).
    Service {
        key: ServiceKey,
        value: ServiceValue,
    },
    RemoveService {
        key: ServiceKey,
    },
    /// Mark an address as this balancer's (`LOCAL_VIP` / `LOCAL_HOST`).
    Local {
        key: LocalKey,
        why: u8,
    },
    RemoveLocal {
        key: LocalKey,
    },
    /// Replace LOCAL_FILTER (after the additions to LOCAL_ADDRS it covers).
    LocalFilter(Box<LocalFilter>),
    /// Set a service's source limits (before the service entry that turns them on).
    Limits {
        id: u32,
        limits: Limits,
    },
    /// Add a prefix to ALLOWLIST.
    Allow {
        key: AllowKey,
    },
    RemoveAllow {
        key: AllowKey,
    },
}

impl Op {
    /// Execution order: a backend exists before a table names it, a table is complete before
    /// a service points at it, and a backend is cleared only after no table names it.
    fn phase(&self) -> u8 {
        match self {
            Op::Settings(_)
            | Op::NatPool(_)
            | Op::Local { .. }
            | Op::LocalFilter(_)
            | Op::Limits { .. }
            | Op::Allow { .. } => 0,
            Op::Backend { backend, .. } if backend.family != 0 => 1,
            Op::Table { .. } => 2,
            Op::Service { .. } => 3,
            Op::RemoveService { .. } => 4,
            Op::Backend { .. } => 5,
            Op::RemoveLocal { .. } | Op::RemoveAllow { .. } => 6,
        }
    }
}

/// The operations that take the data plane from `applied` to `desired`, and the state it is
/// in once they are applied. Equal inputs give no operations.
pub fn diff(
    applied: &Applied,
    desired: &Desired,
    layout: Layout,
) -> Result<(Vec<Op>, Applied), SyncError> {
    let mut ops = Vec::new();
    let mut next = Applied {
        settings: Some(desired.settings),
        ..Applied::default()
    };
    if applied.settings != Some(desired.settings) {
        ops.push(Op::Settings(desired.settings));
    }
    next.nat_pool = Some(desired.nat_pool);
    if applied.nat_pool != Some(desired.nat_pool) {
        ops.push(Op::NatPool(Box::new(desired.nat_pool)));
    }

    for (id, b) in &desired.backends {
        if applied.backends.get(id) != Some(b) {
            ops.push(Op::Backend {
                id: *id,
                backend: *b,
            });
        }
        next.backends.insert(*id, *b);
    }
    for id in applied.backends.keys() {
        if !desired.backends.contains_key(id) {
            ops.push(Op::Backend {
                id: *id,
                backend: Backend::default(),
            });
        }
    }

    for (key, want) in &desired.services {
        if want.id >= layout.max_services {
            return Err(SyncError::ServiceId {
                id: want.id,
                max: layout.max_services,
            });
        }
        if want.table.len() > layout.stride as usize {
            return Err(SyncError::TableSize {
                size: want.table.len(),
                max: layout.stride,
            });
        }
        let current = applied.services.get(key).filter(|c| c.value.id == want.id);
        let mut value = ServiceValue {
            id: want.id,
            table_offset: layout.region(want.id, 0),
            table_size: want.table.len() as u32,
            mode: want.mode,
            protect: want.protect,
            _pad: [0; 2],
        };
        if applied.limits.get(&want.id) != Some(&want.limits) {
            ops.push(Op::Limits {
                id: want.id,
                limits: want.limits,
            });
        }
        next.limits.insert(want.id, want.limits);
        let same_table = current.is_some_and(|c| c.table_hash == want.table_hash);
        let mut prior = Prior::Nothing;
        match current {
            Some(c) if same_table => value.table_offset = c.value.table_offset,
            Some(c) => {
                // Write the region packets are not reading, then flip to it.
                let active_half = u32::from(c.value.table_offset != layout.region(want.id, 0));
                value.table_offset = layout.region(want.id, 1 - active_half);
                prior = if c.value.table_size == value.table_size {
                    Prior::Region(c.value.table_offset)
                } else {
                    Prior::Resized
                };
            }
            None => {}
        }
        if !same_table {
            ops.push(Op::Table {
                offset: value.table_offset,
                prior,
                slots: want.table.clone(),
            });
        }
        if current.map(|c| c.value) != Some(value) {
            ops.push(Op::Service { key: *key, value });
        }
        next.services.insert(
            *key,
            AppliedService {
                value,
                table_hash: want.table_hash,
            },
        );
    }
    for key in applied.services.keys() {
        if !desired.services.contains_key(key) {
            ops.push(Op::RemoveService { key: *key });
        }
    }

    for (key, why) in &desired.local {
        if applied.local.get(key) != Some(why) {
            ops.push(Op::Local {
                key: *key,
                why: *why,
            });
        }
    }
    for key in applied.local.keys() {
        if !desired.local.contains_key(key) {
            ops.push(Op::RemoveLocal { key: *key });
        }
    }
    // After the additions: a bit is set before a packet may need it. A removed address
    // loses its bit a moment before its entry.
    let filter = model::local_filter(&desired.local);
    if applied.local_filter != filter {
        ops.push(Op::LocalFilter(Box::new(filter)));
    }
    next.local = desired.local.clone();
    next.local_filter = filter;
    for key in desired.allowlist.difference(&applied.allowlist) {
        ops.push(Op::Allow { key: *key });
    }
    for key in applied.allowlist.difference(&desired.allowlist) {
        ops.push(Op::RemoveAllow { key: *key });
    }
    next.allowlist = desired.allowlist.clone();
    // LIMITS entries of removed services stay (an array cannot forget): keep knowing them.
    for (id, l) in &applied.limits {
        next.limits.entry(*id).or_insert(*l);
    }
    ops.sort_by_key(Op::phase);
    Ok((ops, next))
}

/// The only interface through which map contents change.
pub trait MapWriter {
    fn set_settings(&mut self, s: &Settings) -> Result<(), SyncError>;
    fn set_nat_pool(&mut self, p: &NatPool) -> Result<(), SyncError>;
    fn set_backend(&mut self, id: u32, b: &Backend) -> Result<(), SyncError>;
    /// Writes the table of backend ids `slots` at `offset` as [`crate::model::next_slots`]
    /// says, reading the `prior` region's slots and the clock itself.
    fn write_table(&mut self, offset: u32, prior: Prior, slots: &[u32]) -> Result<(), SyncError>;
    /// Settles, in place, the changed slots of the table at `offset` that have seen no
    /// older flow for `idle` seconds ([`crate::model::settles`]).
    fn settle_slots(&mut self, offset: u32, len: u32, idle: u32) -> Result<SlotCounts, SyncError>;
    fn set_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), SyncError>;
    fn remove_service(&mut self, key: &ServiceKey) -> Result<(), SyncError>;
    fn set_local(&mut self, key: &LocalKey, why: u8) -> Result<(), SyncError>;
    fn remove_local(&mut self, key: &LocalKey) -> Result<(), SyncError>;
    fn set_local_filter(&mut self, f: &LocalFilter) -> Result<(), SyncError>;
    fn set_limits(&mut self, id: u32, l: &Limits) -> Result<(), SyncError>;
    fn set_allow(&mut self, key: &AllowKey) -> Result<(), SyncError>;
    fn remove_allow(&mut self, key: &AllowKey) -> Result<(), SyncError>;
}

/// Performs `ops` in their phase order; stops at the first failure.
pub fn apply(ops: &[Op], w: &mut impl MapWriter) -> Result<(), SyncError> {
    let mut ordered: Vec<&Op> = ops.iter().collect();
    ordered.sort_by_key(|o| o.phase());
    for op in ordered {
        match op {
            Op::Settings(s) => w.set_settings(s)?,
            Op::NatPool(p) => w.set_nat_pool(p)?,
            Op::Backend { id, backend } => w.set_backend(*id, backend)?,
            Op::Table {
                offset,
                prior,
                slots,
            } => w.write_table(*offset, *prior, slots)?,
            Op::Service { key, value } => w.set_service(key, value)?,
            Op::RemoveService { key } => w.remove_service(key)?,
            Op::Local { key, why } => w.set_local(key, *why)?,
            Op::RemoveLocal { key } => w.remove_local(key)?,
            Op::LocalFilter(f) => w.set_local_filter(f)?,
            Op::Limits { id, limits } => w.set_limits(*id, limits)?,
            Op::Allow { key } => w.set_allow(key)?,
            Op::RemoveAllow { key } => w.remove_allow(key)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use gateway_common::{BACKEND_UP, FAMILY_V4, MODE_L2DSR, PROTO_TCP};

    use super::*;
    use crate::{model::DesiredService, testing::MemMaps};

    const LAYOUT: Layout = Layout {
        max_services: 4,
        stride: 7,
    };

    fn skey(last: u8) -> ServiceKey {
        ServiceKey {
            addr: [198, 18, 1, last, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            port_be: 80u16.to_be(),
            proto: PROTO_TCP,
            family: FAMILY_V4,
        }
    }

    fn backend(last: u8) -> Backend {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[198, 18, 0, last]);
        Backend {
            addr,
            mac: [2, 0, 0, 0, 0, last],
            family: FAMILY_V4,
            state: BACKEND_UP,
            service: 0,
            _pad: 0,
        }
    }

    fn desired(table: Vec<u32>) -> Desired {
        let mut d = Desired::default();
        d.backends.insert(1, backend(11));
        d.backends.insert(2, backend(12));
        d.services
            .insert(skey(1), DesiredService::new(1, MODE_L2DSR, Arc::new(table)));
        d
    }

    fn sync(applied: &Applied, d: &Desired, maps: &mut MemMaps) -> (Vec<Op>, Applied) {
        let (ops, next) = diff(applied, d, LAYOUT).unwrap();
        apply(&ops, maps).unwrap();
        (ops, next)
    }

    #[test]
    fn same_input_gives_an_empty_diff() {
        let d = desired(vec![1, 2, 1, 2, 1, 2, 1]);
        let mut maps = MemMaps::default();
        let (ops, applied) = sync(&Applied::default(), &d, &mut maps);
        assert!(!ops.is_empty());
        let (again, applied2) = diff(&applied, &d, LAYOUT).unwrap();
        assert!(again.is_empty(), "{again:?}");
        assert_eq!(applied, applied2);
    }

    #[test]
    fn a_new_table_goes_to_the_inactive_region_then_flips() {
        let mut maps = MemMaps::default();
        let (_, a1) = sync(&Applied::default(), &desired(vec![1; 7]), &mut maps);
        let first = maps.services[&skey(1)].table_offset;
        assert_eq!(first, LAYOUT.region(1, 0));
        let (ops, a2) = sync(&a1, &desired(vec![2; 7]), &mut maps);
        let second = maps.services[&skey(1)].table_offset;
        assert_eq!(second, LAYOUT.region(1, 1));
        // The table is written before the service entry flips to it.
        let t = ops
            .iter()
            .position(|o| matches!(o, Op::Table { .. }))
            .unwrap();
        let s = ops
            .iter()
            .position(|o| matches!(o, Op::Service { .. }))
            .unwrap();
        assert!(t < s);
        assert_eq!(maps.table_of(&skey(1)).unwrap(), vec![2; 7]);
        // The old region still holds the old table until the next change.
        assert_eq!(maps.tables[&first].cur(), 1);
        let (_, _) = sync(&a2, &desired(vec![1; 7]), &mut maps);
        assert_eq!(maps.services[&skey(1)].table_offset, first);
    }

    #[test]
    fn removed_backends_are_cleared_after_the_tables_stop_naming_them() {
        let mut maps = MemMaps::default();
        let (_, a1) = sync(
            &Applied::default(),
            &desired(vec![1, 2, 1, 2, 1, 2, 1]),
            &mut maps,
        );
        let mut d = desired(vec![1; 7]);
        d.backends.remove(&2);
        maps.log.clear();
        sync(&a1, &d, &mut maps);
        let flip = maps
            .log
            .iter()
            .position(|l| l.starts_with("service"))
            .unwrap();
        let clear = maps
            .log
            .iter()
            .position(|l| l == "clear backend 2")
            .unwrap();
        assert!(flip < clear, "{:?}", maps.log);
        assert!(!maps.backends.contains_key(&2));
    }

    #[test]
    fn removed_services_are_deleted_and_ids_checked() {
        let mut maps = MemMaps::default();
        let (_, a1) = sync(&Applied::default(), &desired(vec![1; 7]), &mut maps);
        let mut d = desired(vec![1; 7]);
        d.services.clear();
        sync(&a1, &d, &mut maps);
        assert!(maps.services.is_empty());

        let mut bad = desired(vec![1; 7]);
        bad.services.get_mut(&skey(1)).unwrap().id = 9;
        assert!(matches!(
            diff(&Applied::default(), &bad, LAYOUT),
            Err(SyncError::ServiceId { .. })
        ));
        let big = desired(vec![1; 11]);
        assert!(matches!(
            diff(&Applied::default(), &big, LAYOUT),
            Err(SyncError::TableSize { .. })
        ));
    }

    #[test]
    fn local_addresses_are_added_changed_and_removed() {
        let a = crate::model::local_key("198.18.1.1".parse().unwrap());
        let b = crate::model::local_key("fd00::250".parse().unwrap());
        let mut maps = MemMaps::default();
        let mut d = desired(vec![1; 7]);
        d.local.insert(a, gateway_common::LOCAL_VIP);
        d.local.insert(b, gateway_common::LOCAL_HOST);
        let (_, applied) = sync(&Applied::default(), &d, &mut maps);
        assert_eq!(maps.local, d.local);
        // The filter in front of them holds both.
        for k in [a, b] {
            assert!(maps.local_filter.may_hold(&k.addr, k.family));
        }
        let other = crate::model::local_key("198.18.1.2".parse().unwrap());
        assert!(!maps.local_filter.may_hold(&other.addr, other.family));
        // Unchanged: nothing to write.
        let (ops, _) = diff(&applied, &d, LAYOUT).unwrap();
        assert!(ops.is_empty(), "{ops:?}");
        // One goes, one changes its reason.
        d.local.remove(&b);
        d.local.insert(a, gateway_common::LOCAL_HOST);
        let (ops, _) = sync(&applied, &d, &mut maps);
        assert_eq!(
            ops,
            vec![
                Op::Local {
                    key: a,
                    why: gateway_common::LOCAL_HOST
                },
                Op::LocalFilter(Box::new(crate::model::local_filter(&d.local))),
                Op::RemoveLocal { key: b },
            ]
        );
        assert_eq!(maps.local, d.local);
        assert!(!maps.local_filter.may_hold(&b.addr, b.family));
        // Only a change of reason: the filter stays.
        let applied = diff(&applied, &d, LAYOUT).unwrap().1;
        d.local.insert(a, gateway_common::LOCAL_VIP);
        let (ops, _) = diff(&applied, &d, LAYOUT).unwrap();
        assert_eq!(ops.len(), 1, "{ops:?}");
    }

    #[test]
    fn limits_are_written_before_the_service_turns_them_on_and_the_allowlist_follows() {
        use crate::config::{Prefix, ProtectMode, Rate, SourceLimits};
        let mut maps = MemMaps::default();
        let mut d = desired(vec![1, 2, 1, 2, 1, 2, 1]);
        let (applied, _) = {
            let (ops, next) = diff(&Applied::default(), &d, LAYOUT).unwrap();
            apply(&ops, &mut maps).unwrap();
            (next, ops)
        };
        let limits = SourceLimits {
            mode: ProtectMode::Enforce,
            new_flows: Some(Rate {
                per_second: 100,
                burst: 200,
            }),
            packets: None,
            prefix_v4: 24,
            prefix_v6: 48,
        };
        let (protect, l) = crate::model::limits(&limits);
        assert_eq!(protect, gateway_common::PROTECT_ENFORCE);
        assert_eq!(
            (l.new_interval_ns, l.new_tolerance_ns),
            (10_000_000, 2_000_000_000)
        );
        assert_eq!((l.pkt_interval_ns, l.prefix_v4, l.prefix_v6), (0, 24, 48));
        let svc = d.services.get_mut(&skey(1)).unwrap();
        svc.protect = protect;
        svc.limits = l;
        let allow: Prefix = Prefix {
            addr: "198.18.200.0".parse().unwrap(),
            len: 24,
        };
        d.allowlist.insert(crate::model::allow_key(&allow));
        maps.log.clear();
        let (ops, applied) = diff(&applied, &d, LAYOUT).unwrap();
        apply(&ops, &mut maps).unwrap();
        assert_eq!(maps.log.len(), 3, "{:?}", maps.log);
        assert!(
            maps.log[..2].contains(&"limits 1".to_string()),
            "{:?}",
            maps.log
        );
        assert!(
            maps.log[..2].contains(&"allow /32".to_string()),
            "{:?}",
            maps.log
        );
        assert!(maps.log[2].starts_with("service"), "{:?}", maps.log);
        assert_eq!(maps.services[&skey(1)].protect, protect);
        assert_eq!(maps.limits[&1], l);
        // Nothing changed: nothing written; a removed prefix is removed.
        assert!(diff(&applied, &d, LAYOUT).unwrap().0.is_empty());
        d.allowlist.clear();
        let (ops, _) = diff(&applied, &d, LAYOUT).unwrap();
        apply(&ops, &mut maps).unwrap();
        assert!(maps.allowlist.is_empty());
        assert_eq!(ops.len(), 1, "{ops:?}");
    }
}
