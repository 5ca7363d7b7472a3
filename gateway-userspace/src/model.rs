//! The user-space mirror of `gateway-common`'s maps: the data plane as it should be
//! ([`Desired`]) and as it was last written ([`Applied`]), the table geometry ([`Layout`]),
//! the encoders that turn config values into the `#[repr(C)]` keys and values the maps hold,
//! and [`BackendKey`], how user space names a backend.
//!
//! [`crate::plan`] builds a [`Desired`] and [`crate::mapsync`] diffs it against an
//! [`Applied`]; this module depends on neither: it knows what the maps hold, not how they
//! are filled or written.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use gateway_common::{
    AllowAddr, Backend, FAMILY_V4, FAMILY_V6, Limits, LocalFilter, LocalKey, MODE_FULLNAT,
    MODE_IPIP, MODE_L2DSR, NatPool, PROTECT_ENFORCE, PROTECT_MONITOR, PROTECT_OFF, PROTO_TCP,
    PROTO_UDP, SLOT_PREV_UNKNOWN, ServiceKey, ServiceValue, Settings, Slot,
};

use crate::config::{
    Config, Mode, Prefix, ProtectMode, Protocol, Rate, ServiceConfig, SourceLimits,
};

/// An ALLOWLIST key: the prefix length over `AllowAddr`'s bits, and the data.
pub type AllowKey = (u32, AllowAddr);

/// One backend of one service: backends are per service (a service's admin state and ids
/// are its own), so the same address under two services is two backends.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendKey {
    /// The service's name.
    pub service: String,
    pub addr: IpAddr,
}

impl BackendKey {
    pub fn new(service: impl Into<String>, addr: IpAddr) -> Self {
        Self {
            service: service.into(),
            addr,
        }
    }
}

/// The data plane as it should be.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Desired {
    pub settings: Settings,
    /// Backend id -> backend. Ids are 1-based and stable for a backend's lifetime.
    pub backends: BTreeMap<u32, Backend>,
    pub services: BTreeMap<ServiceKey, DesiredService>,
    /// This balancer's addresses (VIPs and the host's): no VIP packet may come from them.
    pub local: BTreeMap<LocalKey, u8>,
    /// Source prefixes no limit applies to.
    pub allowlist: BTreeSet<AllowKey>,
    /// The SNAT pool of full-NAT services.
    pub nat_pool: NatPool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DesiredService {
    /// Stats index and table-region owner; stable for the service's lifetime.
    pub id: u32,
    /// `MODE_L2DSR` / `MODE_IPIP`.
    pub mode: u8,
    /// The Maglev table: `M` backend ids, 0 meaning none.
    pub table: Arc<Vec<u32>>,
    /// [`table_hash`] of `table`.
    pub table_hash: u64,
    /// `PROTECT_*`, and the LIMITS entry it applies.
    pub protect: u8,
    pub limits: Limits,
}

impl DesiredService {
    /// A service without source limits.
    pub fn new(id: u32, mode: u8, table: Arc<Vec<u32>>) -> Self {
        let table_hash = table_hash(&table);
        Self {
            id,
            mode,
            table,
            table_hash,
            protect: PROTECT_OFF,
            limits: Limits::default(),
        }
    }
}

/// Identifies a table's contents. What was written is remembered by this hash rather than
/// by a copy: with many services the copies would double the agent's table memory during
/// every replan (the old tables kept beside the new ones).
///
/// Each step (rotate, xor a word, multiply by an odd constant) is a bijection of the state,
/// so two tables of one size that differ in a single word never collide; other differences
/// collide with odds of about 2^-64. About 50 us for 65537 slots (a general-purpose hasher
/// fed four bytes at a time took ten times that, on every table build).
pub fn table_hash(table: &[u32]) -> u64 {
    let mut h = 0x9E37_79B9_7F4A_7C15_u64 ^ table.len() as u64;
    for pair in table.chunks(2) {
        let w = u64::from(pair[0]) | u64::from(pair.get(1).copied().unwrap_or(0)) << 32;
        h = (h.rotate_left(23) ^ w).wrapping_mul(0x2545_F491_4F6C_DD1D);
    }
    h ^ (h >> 29)
}

/// What a service's new table replaces, which decides what its slots remember (see
/// `gateway_common::Slot`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prior {
    /// Nothing: a new service, whose flows all begin now. Every slot is settled.
    Nothing,
    /// The active table of the same size at this TABLES offset: a slot whose backend
    /// changes remembers the old one.
    Region(u32),
    /// A table of another size: slots do not correspond, so every slot is changed with its
    /// previous backend unknown (flows without a conntrack entry take the new backend).
    Resized,
}

/// The slots of a new table of backend ids, given what the service's slots were (`read`
/// of the [`Prior::Region`]'s offset and length) and the time `now`
/// (seconds, as the program's clock). A slot that keeps its backend keeps its state; one
/// that changes keeps the backend of the flows that predate its first change:
///
/// - settled on A, now B: changed, previous A (if A was 0, or no packet used the slot, no
///   flow lives there: settled);
/// - changed (previous P), now B: still P, the time restarts - flows that began on the
///   backends in between have conntrack entries, made by their SYNs on a changed slot.
pub fn next_slots(
    prior: Prior,
    read: impl FnOnce(u32, u32) -> Vec<Slot>,
    table: &[u32],
    now: u32,
) -> Vec<Slot> {
    let old = match prior {
        Prior::Resized => {
            return table
                .iter()
                .map(|&b| Slot::new(b, SLOT_PREV_UNKNOWN, now))
                .collect();
        }
        Prior::Region(at) => read(at, table.len() as u32),
        Prior::Nothing => Vec::new(),
    };
    match old {
        old if old.len() == table.len() => table
            .iter()
            .zip(&old)
            .map(|(&b, o)| match (o.cur(), o.prev()) {
                (cur, _) if cur == b => *o,
                (0, 0) => Slot::settled(b),
                (_, 0) if o.seen == 0 => Slot::settled(b),
                (cur, 0) => Slot::new(b, cur, now),
                (_, prev) => Slot::new(b, prev, now),
            })
            .collect(),
        _ => table.iter().map(|&b| Slot::settled(b)).collect(),
    }
}

/// Whether a changed slot may settle at `now`: no packet went to a backend other than its
/// own for `idle` seconds. A `seen` ahead of `now` (the program's coarse clock read a
/// moment later) is recent, not ancient. A settled slot is `Slot::used` (flows of its
/// backend may be on it).
pub fn settles(s: Slot, now: u32, idle: u32) -> bool {
    s.prev() != 0 && now.saturating_sub(s.seen) >= idle
}

/// Slots of one table by state, after a settling pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlotCounts {
    /// Still changed: their flows go through conntrack.
    pub changed: u32,
    /// Settled by this pass.
    pub settled: u32,
}

/// The data plane as it was last written.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Applied {
    pub settings: Option<Settings>,
    pub backends: BTreeMap<u32, Backend>,
    pub services: BTreeMap<ServiceKey, AppliedService>,
    pub local: BTreeMap<LocalKey, u8>,
    /// LOCAL_FILTER as written (a fresh map's is empty): derived from `local`, but kept
    /// like any other map so that a filter write that failed is written again.
    pub local_filter: LocalFilter,
    /// LIMITS entries by service id (entries of removed services are left as they were).
    pub limits: BTreeMap<u32, Limits>,
    pub allowlist: BTreeSet<AllowKey>,
    pub nat_pool: Option<NatPool>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AppliedService {
    pub value: ServiceValue,
    /// [`table_hash`] of the table the entry points at.
    pub table_hash: u64,
}

/// Table geometry: service `id` owns regions `2*id` and `2*id+1` of `stride` slots each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub max_services: u32,
    pub stride: u32,
}

impl Layout {
    pub fn region(&self, id: u32, half: u32) -> u32 {
        (2 * id + half) * self.stride
    }

    /// Total slots of the TABLES map.
    pub fn slots(&self) -> u32 {
        2 * self.max_services * self.stride
    }
}

/// An address as the maps hold it: 16 bytes in network order, an IPv4 one in the first
/// four and zeros after.
pub fn addr16(a: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match a {
        IpAddr::V4(v) => out[..4].copy_from_slice(&v.octets()),
        IpAddr::V6(v) => out = v.octets(),
    }
    out
}

/// The address a map key or value holds ([`addr16`]'s inverse).
pub fn ip_of(a: &[u8; 16], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::from([a[0], a[1], a[2], a[3]])
    } else {
        IpAddr::from(*a)
    }
}

/// `FAMILY_V4` / `FAMILY_V6`.
pub fn family(a: IpAddr) -> u8 {
    if a.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 }
}

/// `MODE_L2DSR` / `MODE_IPIP` / `MODE_FULLNAT`.
pub fn mode(m: Mode) -> u8 {
    match m {
        Mode::L2dsr => MODE_L2DSR,
        Mode::Ipip => MODE_IPIP,
        Mode::Fullnat => MODE_FULLNAT,
    }
}

/// The SERVICES map's key for a service: its VIP, port and protocol.
pub fn service_key(s: &ServiceConfig) -> ServiceKey {
    ServiceKey {
        addr: addr16(s.vip),
        port_be: s.port.to_be(),
        proto: match s.protocol {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        },
        family: family(s.vip),
    }
}

/// LOCAL_FILTER for a LOCAL_ADDRS content: every key's bit set.
pub fn local_filter(local: &BTreeMap<LocalKey, u8>) -> LocalFilter {
    let mut f = LocalFilter::default();
    for k in local.keys() {
        f.insert(&k.addr, k.family);
    }
    f
}

/// The LOCAL_ADDRS key of an address.
pub fn local_key(a: IpAddr) -> LocalKey {
    LocalKey {
        addr: addr16(a),
        family: family(a),
        _pad: [0; 3],
    }
}

/// The SETTINGS map's one value, from the config's `[dataplane]` section and this host's
/// interface MAC. Without the interface MAC no MAC is set, and the program checks none:
/// the extra MACs alone would turn away the frames addressed to the interface.
pub fn settings(config: &Config, interface_mac: Option<[u8; 6]>) -> Settings {
    let d = &config.dataplane;
    let mut macs = [[0; 6]; gateway_common::MAX_LOCAL_MACS];
    if let Some(own) = interface_mac {
        for (slot, mac) in macs
            .iter_mut()
            .zip(std::iter::once(&own).chain(&d.extra_macs))
        {
            *slot = *mac;
        }
    }
    Settings {
        mtu: d.mtu,
        ipip_src_v4: d.ipip_source_v4.map(|a| a.octets()).unwrap_or_default(),
        ipip_src_v6: d.ipip_source_v6.map(|a| a.octets()).unwrap_or_default(),
        ipip_src_v4_vary_bits: d.ipip_source_v4_vary_bits,
        _pad: [0; 3],
        checks_off: d.checks_off,
        macs,
        flood_window_limit: gateway_common::flood_window_limit(
            config.protection.flood_new_flows_per_cpu,
        ),
        nat_flood_window_limit: gateway_common::flood_window_limit(
            config.protection.fullnat_new_flows_per_cpu,
        ),
    }
}

/// NAT_POOL's one value, from `[dataplane]`'s `snat_*` keys.
pub fn nat_pool(config: &Config) -> NatPool {
    let d = &config.dataplane;
    let mut p = NatPool {
        port_min: *d.snat_ports.start(),
        port_max: *d.snat_ports.end(),
        ..NatPool::default()
    };
    for (slot, a) in p.v4.iter_mut().zip(&d.snat_v4) {
        *slot = a.octets();
        p.v4_count += 1;
    }
    for (slot, a) in p.v6.iter_mut().zip(&d.snat_v6) {
        *slot = a.octets();
        p.v6_count += 1;
    }
    p
}

/// A service's `ServiceValue::protect` and LIMITS entry.
pub fn limits(l: &SourceLimits) -> (u8, Limits) {
    let protect = match l.mode {
        ProtectMode::Off => PROTECT_OFF,
        ProtectMode::Monitor => PROTECT_MONITOR,
        ProtectMode::Enforce => PROTECT_ENFORCE,
    };
    // GCRA: one packet every `interval`, `burst` of them at once.
    let gcra = |r: Option<Rate>| match r {
        Some(r) => {
            let interval = (1_000_000_000 / u64::from(r.per_second.max(1))).max(1);
            (interval, interval * u64::from(r.burst))
        }
        None => (0, 0),
    };
    let (new_interval_ns, new_tolerance_ns) = gcra(l.new_flows);
    let (pkt_interval_ns, pkt_tolerance_ns) = gcra(l.packets);
    let limits = Limits {
        new_interval_ns,
        new_tolerance_ns,
        pkt_interval_ns,
        pkt_tolerance_ns,
        prefix_v4: l.prefix_v4,
        prefix_v6: l.prefix_v6,
        _pad: [0; 6],
    };
    (protect, limits)
}

/// The ALLOWLIST key of a prefix.
pub fn allow_key(p: &Prefix) -> AllowKey {
    (
        8 + u32::from(p.len),
        AllowAddr {
            family: family(p.addr),
            addr: addr16(p.addr),
            _pad: [0; 3],
        },
    )
}

/// A BACKENDS map slot: the backend at `addr` of service `service` (its id), reached
/// through the next hop `mac`, in `state` (`BACKEND_UP` / `BACKEND_DRAIN` / `BACKEND_DOWN`).
pub fn backend(addr: IpAddr, mac: [u8; 6], state: u8, service: u32) -> Backend {
    Backend {
        addr: addr16(addr),
        mac,
        family: family(addr),
        state,
        service,
        _pad: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_tables_keep_each_slots_oldest_backend() {
        let now = 100;
        // Settled on 1, 2, 0 (empty), 3; changed from 4 (now 5) at time 7; settled on 9,
        // never used.
        let before = [
            Slot::used(1),
            Slot::used(2),
            Slot::settled(0),
            Slot::used(3),
            Slot::new(5, 4, 7),
            Slot::settled(9),
        ];
        let next = next_slots(
            Prior::Region(0),
            |_, _| before.to_vec(),
            &[1, 6, 6, 0, 8, 6],
            now,
        );
        assert_eq!(
            next,
            vec![
                // Unchanged: as it was.
                Slot::used(1),
                // Changed: remembers 2 from now on.
                Slot::new(6, 2, now),
                // Was empty: no flow lived there.
                Slot::settled(6),
                // Emptied: flows of 3 may still live.
                Slot::new(0, 3, now),
                // Changed again: still 4 (the newer flows have entries), time restarted.
                Slot::new(8, 4, now),
                // Never used: no flow to remember.
                Slot::settled(6),
            ]
        );
        // A changed slot that keeps its backend keeps its time too.
        let again = next_slots(
            Prior::Region(0),
            |_, _| next.clone(),
            &[1, 6, 6, 0, 8, 6],
            now + 50,
        );
        assert_eq!(again, next);
        // Back to the oldest backend: still changed (flows of 5 and 8 have entries).
        assert_eq!(
            next_slots(Prior::Region(0), |_, _| next[4..5].to_vec(), &[4], now)[0],
            Slot::new(4, 4, now)
        );
        // A new service starts settled; a resized one has no previous backends to name.
        assert_eq!(
            next_slots(Prior::Nothing, |_, _| unreachable!(), &[1, 0], now),
            vec![Slot::settled(1), Slot::settled(0)]
        );
        assert_eq!(
            next_slots(Prior::Resized, |_, _| unreachable!(), &[1], now),
            vec![Slot::new(1, SLOT_PREV_UNKNOWN, now)]
        );
    }

    #[test]
    fn slots_settle_after_the_idle_time_and_not_before() {
        let s = Slot::new(2, 1, 100);
        assert!(!settles(s, 100, 60));
        assert!(!settles(s, 159, 60));
        assert!(settles(s, 160, 60));
        // The program's clock a moment ahead of ours: recent.
        assert!(!settles(Slot::new(2, 1, 101), 100, 1));
        // Settled slots have nothing to settle.
        assert!(!settles(Slot::settled(2), 1000, 0));
    }

    #[test]
    fn table_hashes_tell_tables_apart() {
        let base: Vec<u32> = (0..65537u32).map(|i| i % 7 + 1).collect();
        let h = table_hash(&base);
        assert_eq!(h, table_hash(&base.clone()), "deterministic");
        let mut seen = std::collections::HashSet::new();
        seen.insert(h);
        // Every single-slot change, at a spread of positions, and a length change.
        for i in (0..base.len()).step_by(97).chain([base.len() - 1]) {
            let mut t = base.clone();
            t[i] += 1;
            assert!(seen.insert(table_hash(&t)), "slot {i}");
        }
        assert!(seen.insert(table_hash(&base[..65536])));
        // Two slots swapped (a backend moving between slots) is a different table too.
        let mut t = base.clone();
        t.swap(10, 11);
        assert!(seen.insert(table_hash(&t)));
    }
}
