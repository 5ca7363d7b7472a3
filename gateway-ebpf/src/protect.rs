//! Protection: per-source limits and the conntrack flood guard. docs/datapath.md
//! ("Protection") has the reasoning and the numbers.
//!
//! Limits are GCRA token buckets (`gateway_common::Limits`) kept per source prefix and
//! service in SOURCES, an LRU map: a packet is refused when its prefix's packet bucket, or a
//! SYN when its new-flow bucket, is empty. Only a refusal asks ALLOWLIST (an LPM lookup), so
//! sources within their limits pay one hash lookup and allowlisted ones are never refused.
//! Buckets are updated without atomics: CPUs racing on one source can each admit a packet
//! the other already counted, so a source may get up to one extra packet per other CPU per
//! clock tick past its burst.
//!
//! The flood guard counts, per CPU, the conntrack entries each flood window would create;
//! past `Settings::flood_window_limit` new flows are placed without one (see `select`).
use aya_ebpf::{helpers::generated::bpf_ktime_get_coarse_ns, maps::lpm_trie::Key};
use gateway_common::{
    AllowAddr, FAMILY_V4, FLOOD_WINDOW_SHIFT, FlowKey, PROTECT_MONITOR, PROTECT_OFF,
    STAT_DROP_LIMIT_NEW_FLOWS, STAT_DROP_LIMIT_PACKETS, STAT_LIMIT_ALLOWLISTED, SourceBucket,
    SourceKey,
};

use crate::{
    maps::{ALLOWLIST, FLOOD, LIMITED, LIMITS, PROTECT_STATS, SOURCES},
    stats::count,
};

/// GCRA: whether a bucket at `tat` admits one more at `now`, and its next `tat` if so.
#[inline(always)]
fn admit(tat: u64, now: u64, interval: u64, tolerance: u64) -> Option<u64> {
    let next = if tat > now { tat } else { now } + interval;
    if next - now <= tolerance { Some(next) } else { None }
}

/// Whether the source is on the allowlist.
#[inline(always)]
fn allowlisted(key: &FlowKey) -> bool {
    let k = Key::new(
        8 + if key.family == FAMILY_V4 { 32 } else { 128 },
        AllowAddr {
            family: key.family,
            addr: key.src,
            _pad: [0; 3],
        },
    );
    ALLOWLIST.get(&k).is_some()
}

/// The source limits of service `service` (`protect` is its `PROTECT_*`) for a packet of
/// `key`; `syn`: it starts a TCP flow; `relay`: an ICMP error, which no limit applies to.
/// 0: it may pass; else drop it and count the `STAT_*` returned.
#[inline(always)]
pub fn check(service: u32, protect: u8, key: &FlowKey, syn: bool, relay: bool) -> u32 {
    if protect == PROTECT_OFF || relay {
        return 0;
    }
    let Some(l) = LIMITS.get(service) else {
        return 0;
    };
    let prefix = if key.family == FAMILY_V4 {
        l.prefix_v4
    } else {
        l.prefix_v6
    };
    let skey = SourceKey::new(&key.src, key.family, prefix, service);
    // SAFETY: the helper takes no arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let b = match SOURCES.get_ptr_mut(&skey) {
        Some(b) => b,
        None => {
            let fresh = SourceBucket::default();
            // A full LRU evicts its oldest bucket; that source starts again with a full one.
            if SOURCES.insert(&skey, &fresh, 0).is_err() {
                return 0;
            }
            match SOURCES.get_ptr_mut(&skey) {
                Some(b) => b,
                None => return 0,
            }
        }
    };
    // SAFETY: a map value stays valid for this run; plain stores (see the module's note).
    let refused = unsafe {
        (*b).packets += 1;
        if syn {
            (*b).new_flows += 1;
        }
        let mut refused = 0;
        let mut pkt_tat = None;
        if l.pkt_interval_ns != 0 {
            match admit((*b).pkt_tat, now, l.pkt_interval_ns, l.pkt_tolerance_ns) {
                Some(t) => pkt_tat = Some(t),
                None => refused = STAT_DROP_LIMIT_PACKETS,
            }
        }
        let mut new_tat = None;
        if refused == 0 && syn && l.new_interval_ns != 0 {
            match admit((*b).new_tat, now, l.new_interval_ns, l.new_tolerance_ns) {
                Some(t) => new_tat = Some(t),
                None => refused = STAT_DROP_LIMIT_NEW_FLOWS,
            }
        }
        if refused == 0 {
            if let Some(t) = pkt_tat {
                (*b).pkt_tat = t;
            }
            if let Some(t) = new_tat {
                (*b).new_tat = t;
            }
            return 0;
        }
        refused
    };
    if allowlisted(key) {
        count(STAT_LIMIT_ALLOWLISTED);
        return 0;
    }
    let second = (now / 1_000_000_000) as u32;
    // SAFETY: as above.
    unsafe {
        (*b).refused += 1;
        if (*b).last_refused != second {
            (*b).last_refused = second;
            // Once a second per source: the agent lists and logs what LIMITED holds.
            if LIMITED.get_ptr(&skey).is_none() {
                let _ = LIMITED.insert(&skey, &second, 0);
            }
        }
    }
    // The monitor counters follow the drop counters by two, in STATS and PROTECT_STATS.
    let monitor = protect == PROTECT_MONITOR;
    let stat = refused + if monitor { 2 } else { 0 };
    if let Some(s) = PROTECT_STATS.get_ptr_mut(service) {
        let i = ((stat - STAT_DROP_LIMIT_NEW_FLOWS) & 3) as usize;
        // SAFETY: this CPU's slot; `i` is one of its four counters.
        unsafe { *(s as *mut u64).add(i) += 1 };
    }
    if monitor {
        // A drop is counted at the exit, with its verdict; a monitored packet goes on.
        count(stat);
        return 0;
    }
    refused
}

/// The flood guards' windows in FLOOD: conntrack's, and full-NAT's.
pub const GUARD_CONNTRACK: u32 = 0;
pub const GUARD_NAT: u32 = 1;

/// Counts one insert (into conntrack, or a full-NAT mapping: `guard`) on this CPU; whether
/// the flood guard holds it back (this window is past `limit`; 0: no guard).
#[inline(always)]
pub fn flooding(limit: u32, guard: u32) -> bool {
    if limit == 0 {
        return false;
    }
    let Some(w) = FLOOD.get_ptr_mut(guard) else {
        return false;
    };
    // SAFETY: the helper takes no arguments; this CPU's slot, no one races it.
    unsafe {
        let now = (bpf_ktime_get_coarse_ns() >> FLOOD_WINDOW_SHIFT) as u32;
        if (*w).window != now {
            (*w).window = now;
            (*w).inserts = 0;
        }
        (*w).inserts = (*w).inserts.saturating_add(1);
        (*w).inserts > limit
    }
}
