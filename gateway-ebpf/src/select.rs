//! Backend selection. The kernel never decides placement itself: it reads the table user
//! space computed, and conntrack only where the table cannot answer alone.
//!
//! A TCP packet on a settled slot takes the slot's backend and writes nothing: Maglev
//! answers are stable, so every flow on a slot that has not changed is the slot backend's.
//! Conntrack is read only on a slot whose backend changed while flows on it may still live
//! (see `gateway_common::Slot`), and for UDP, which has no SYN to tell a new flow from one
//! that began before the change. docs/datapath.md has the reasoning.
use gateway_common::{
    BACKEND_DRAIN, BACKEND_UP, Backend, CHECK_MARTIAN_SOURCE, FlowKey, FlowValue,
    NAT_RETRY_SLOTS,
    PROTO_UDP, SLOT_CHANGED, SLOT_ID, SLOT_PREV_UNKNOWN, SLOT_USED, SLOTS_PER_LINE,
    STAT_CT_HIT, STAT_CT_MISS_NON_SYN, STAT_CT_MISS_SYN, STAT_DROP_MARTIAN_SOURCE,
    STAT_DROP_STALE_BACKEND, STAT_FLOOD_BYPASS, STAT_ICMP_RELAYED, STAT_NO_BACKEND,
    STAT_RESCHEDULED, STAT_SLOT_PREVIOUS, STAT_TABLE_STEADY, ServiceValue, Settings, SlotState,
    hash::{flow_hash, slot_of},
};

use crate::{
    maps::{BACKENDS, CONNTRACK, SLOT_STATE, TABLES},
    protect,
    stats::count,
};

/// Whether a flow comes from one of this balancer's own addresses (a VIP, or the host's):
/// a spoofed source. Asked whenever the table places a packet: a conntrack hit means its
/// first packet was accepted.
#[inline(always)]
pub fn from_local(key: &FlowKey, checks_off: u32) -> bool {
    if !crate::VALIDATE || checks_off & CHECK_MARTIAN_SOURCE != 0 {
        return false;
    }
    crate::maps::local(&key.src, key.family).is_some()
}

pub struct Choice {
    pub id: u32,
    pub backend: &'static Backend,
    /// Placed through the table (a new flow, a miss or a rescheduled flow).
    pub new_flow: bool,
    /// The flow hash (the slot's index, and the variety in encapsulated headers).
    pub hash: u32,
}

/// How the packet relates to conntrack.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Track {
    /// A TCP SYN: placed by the table; on a changed slot the entry is (re)written. A SYN on
    /// a known 5-tuple is a new connection reusing the ports.
    Syn,
    /// Any other packet of a flow: on a changed slot (or UDP), conntrack first; a miss is
    /// placed and recorded.
    Flow,
    /// An ICMP error about a flow: like `Flow`, but records nothing, and counts only
    /// `icmp_relayed` once a backend is found.
    Relay,
}

/// Backend `id` if it still serves the flows pinned to it (up or draining).
#[inline(always)]
pub fn serving(id: u32) -> Option<&'static Backend> {
    match BACKENDS.get(id) {
        Some(b) if b.family != 0 && (b.state == BACKEND_UP || b.state == BACKEND_DRAIN) => Some(b),
        _ => None,
    }
}

/// The changed slot's `seen` is now: a packet went to a backend other than the slot's.
/// Written at most once a second per slot, so the state's cache line is shared, not
/// bounced.
#[inline(always)]
fn touch(state: Option<*mut SlotState>) {
    let Some(state) = state else {
        return;
    };
    // SAFETY: the helper takes no arguments; SLOT_STATE values are plain memory, and a
    // racing writer (another CPU, or user space settling the slot) can only lose one
    // refresh.
    unsafe {
        let now = (aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns() / 1_000_000_000) as u32;
        if (*state).seen != now {
            (*state).seen = now;
        }
    }
}

/// The backend for `key`. Bumps the lookup counter that says how it was found (see
/// gateway-common's counters); `Err(stat)`: no backend, drop and count `stat`.
#[inline(always)]
pub fn choose(
    svc: &ServiceValue,
    key: &FlowKey,
    track: Track,
    s: &Settings,
) -> Result<Choice, u32> {
    let checks_off = s.checks_off;
    let hash = flow_hash(key);
    // Like Katran's `get_packet_dst`: a table past the end of TABLES means user space and
    // the maps disagree. A service with no table is a slot that names no one.
    let (at, word) = if svc.table_size == 0 {
        (0, 0)
    } else {
        let at = svc.table_offset.wrapping_add(slot_of(hash, svc.table_size));
        let lane = (at % SLOTS_PER_LINE) as usize;
        let Some(line) = TABLES.get_ptr_mut(at / SLOTS_PER_LINE) else {
            return Err(STAT_DROP_STALE_BACKEND);
        };
        // SAFETY: a map value stays valid for this program run; one word read, and (the
        // first packet on a settled slot) one written. A lost race writes the same mark.
        unsafe {
            let word = (*line).words[lane];
            if word & (SLOT_USED | SLOT_CHANGED) == 0 && crate::SETTLED_SLOTS {
                // A change of this slot's backend must now remember the old one.
                (*line).words[lane] = word | SLOT_USED;
            }
            (at, word)
        }
    };
    let cur = u32::from(word & SLOT_ID);
    let changed = word & SLOT_CHANGED != 0;
    let udp = key.proto == PROTO_UDP;

    if !changed && !udp && crate::SETTLED_SLOTS {
        // Settled: the table's answer is every flow's answer.
        if track != Track::Relay && from_local(key, checks_off) {
            return Err(STAT_DROP_MARTIAN_SOURCE);
        }
        let backend = placed(cur)?;
        count(if track == Track::Relay {
            STAT_ICMP_RELAYED
        } else {
            STAT_TABLE_STEADY
        });
        return Ok(Choice {
            id: cur,
            backend,
            new_flow: track == Track::Syn,
            hash,
        });
    }

    // A changed slot (or UDP): conntrack says where a flow already goes, and the slot's
    // state who its older flows belong to.
    let state = if changed {
        SLOT_STATE.get_ptr_mut(at)
    } else {
        None
    };
    // SAFETY: as above.
    let prev = state.map(|s| unsafe { (*s).prev }).unwrap_or(0);
    let mut older = false;
    if track != Track::Syn {
        // SAFETY: the value is copied out at once; LRU entries may be recycled afterwards.
        match unsafe { CONNTRACK.get(key) }.map(|v| v.backend) {
            Some(id) => {
                if let Some(b) = serving(id) {
                    count(if track == Track::Flow {
                        STAT_CT_HIT
                    } else {
                        STAT_ICMP_RELAYED
                    });
                    if id != cur {
                        touch(state);
                    }
                    return Ok(Choice {
                        id,
                        backend: b,
                        new_flow: false,
                        hash,
                    });
                }
                // Its backend went down or away: place the flow again.
                if track == Track::Flow {
                    count(STAT_RESCHEDULED);
                }
            }
            None => {
                // A TCP packet with no entry on a changed slot began before the change;
                // counted once it is known where it goes.
                older = !udp && prev != 0 && prev != cur;
                if track == Track::Flow && !older {
                    count(STAT_CT_MISS_NON_SYN);
                }
            }
        }
    } else {
        count(STAT_CT_MISS_SYN);
    }

    if track != Track::Relay && from_local(key, checks_off) {
        return Err(STAT_DROP_MARTIAN_SOURCE);
    }
    // Past the flood guard's rate this flow gets no entry. A SYN is then placed the way its
    // later packets will be without one (a TCP flow on a changed slot with no entry follows
    // the previous backend), so the flow stays on one backend.
    let bypass = track != Track::Relay && protect::flooding(s.flood_window_limit, protect::GUARD_CONNTRACK);
    if bypass && track == Track::Syn {
        older = !udp && prev != 0 && prev != cur;
    }
    let previous = if older { serving(prev) } else { None };
    if older && track == Track::Flow {
        count(if previous.is_some() {
            STAT_SLOT_PREVIOUS
        } else if prev == SLOT_PREV_UNKNOWN {
            STAT_CT_MISS_NON_SYN
        } else {
            STAT_RESCHEDULED
        });
    }
    let (id, backend) = match previous {
        Some(b) => {
            touch(state);
            (prev, b)
        }
        None => (cur, placed(cur)?),
    };
    if track == Track::Relay {
        count(STAT_ICMP_RELAYED);
    } else if bypass {
        count(STAT_FLOOD_BYPASS);
    } else {
        let v = FlowValue {
            backend: id,
            _reserved: 0,
        };
        // A full LRU evicts its oldest entry; an error here only costs stickiness.
        let _ = CONNTRACK.insert(key, &v, 0);
    }
    Ok(Choice {
        id,
        backend,
        new_flow: !older || track == Track::Syn,
        hash,
    })
}

/// The backend the service's table names for a flow of hash `hash`, without conntrack: for
/// full-NAT, whose own map remembers each flow's backend.
#[inline(always)]
pub fn table_backend(svc: &ServiceValue, hash: u32) -> Result<(u32, &'static Backend), u32> {
    if svc.table_size == 0 {
        return Err(STAT_NO_BACKEND);
    }
    let at = svc.table_offset.wrapping_add(slot_of(hash, svc.table_size));
    let line = TABLES
        .get(at / SLOTS_PER_LINE)
        .ok_or(STAT_DROP_STALE_BACKEND)?;
    let id = u32::from(line.words[(at % SLOTS_PER_LINE) as usize] & SLOT_ID);
    Ok((id, placed(id)?))
}

/// Like [`table_backend`], for a SYN that must not go to backend `avoid` again: the first
/// of the flow's slot and the `NAT_RETRY_SLOTS` after it that names another backend that is
/// up (Maglev spreads each backend's slots, so the next slots name others in proportion to
/// their weights); the flow's own slot's if none does.
#[inline(always)]
pub fn table_backend_avoiding(
    svc: &ServiceValue,
    hash: u32,
    avoid: u32,
) -> Result<(u32, &'static Backend), u32> {
    if svc.table_size == 0 {
        return Err(STAT_NO_BACKEND);
    }
    let mut next = slot_of(hash, svc.table_size);
    let mut k = 1;
    while k <= NAT_RETRY_SLOTS {
        // The k-th slot after the flow's own, wrapping at the table's end.
        next += 1;
        if next == svc.table_size {
            next = 0;
        }
        let at = svc.table_offset.wrapping_add(next);
        if let Some(line) = TABLES.get(at / SLOTS_PER_LINE) {
            let id = u32::from(line.words[(at % SLOTS_PER_LINE) as usize] & SLOT_ID);
            if id != 0
                && id != avoid
                && let Some(b) = BACKENDS.get(id)
                && b.family != 0
                && b.state == BACKEND_UP
            {
                return Ok((id, b));
            }
        }
        k += 1;
    }
    table_backend(svc, hash)
}

/// The backend a table slot names. An empty slot means nothing is up; one that names a
/// backend the map does not hold means user space and the maps disagree.
#[inline(always)]
fn placed(id: u32) -> Result<&'static Backend, u32> {
    if id == 0 {
        return Err(STAT_NO_BACKEND);
    }
    match BACKENDS.get(id) {
        Some(b) if b.family != 0 => Ok(b),
        _ => Err(STAT_DROP_STALE_BACKEND),
    }
}
