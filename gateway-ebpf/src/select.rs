//! Backend selection: conntrack first, then the service's Maglev table. The kernel never
//! decides placement itself; it reads the table user space computed.
use gateway_common::{
    BACKEND_DRAIN, BACKEND_UP, Backend, CHECK_MARTIAN_SOURCE, FlowKey, FlowValue, LocalKey,
    STAT_CT_HIT, STAT_CT_MISS_NON_SYN, STAT_CT_MISS_SYN, STAT_DROP_MARTIAN_SOURCE,
    STAT_DROP_STALE_BACKEND, STAT_ICMP_RELAYED, STAT_NO_BACKEND, STAT_RESCHEDULED, ServiceValue,
    hash::flow_hash,
};

use crate::{
    maps::{BACKENDS, CONNTRACK, LOCAL_ADDRS, TABLES},
    stats::count,
};

/// Whether a flow comes from one of this balancer's own addresses (a VIP, or the host's):
/// a spoofed source. Asked only when a flow is placed: a conntrack hit means its first
/// packet was accepted.
#[inline(always)]
fn from_local(key: &FlowKey, checks_off: u32) -> bool {
    if !crate::VALIDATE || checks_off & CHECK_MARTIAN_SOURCE != 0 {
        return false;
    }
    let local = LocalKey {
        addr: key.src,
        family: key.family,
        _pad: [0; 3],
    };
    // SAFETY: only tested for presence.
    unsafe { LOCAL_ADDRS.get(&local) }.is_some()
}

pub struct Choice {
    pub id: u32,
    pub backend: &'static Backend,
    /// Placed through the table (a new flow, a miss or a rescheduled flow).
    pub new_flow: bool,
    /// The flow hash, if placing the flow computed it.
    pub hash: Option<u32>,
}

/// How the packet relates to conntrack.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Track {
    /// A TCP SYN: always placed through the table, and the entry (re)written. A SYN on a
    /// known 5-tuple is a new connection reusing the ports.
    Syn,
    /// Any other packet of a flow: conntrack first; a miss is placed and recorded.
    Flow,
    /// An ICMP error about a flow: conntrack first, else the table; records nothing, and
    /// counts only `icmp_relayed` once a backend is found.
    Relay,
}

/// The backend for `key`. Bumps the lookup counter that says how it was found (see
/// gateway-common's counters); `Err(stat)`: no backend, drop and count `stat`.
#[inline(always)]
pub fn choose(
    svc: &ServiceValue,
    key: &FlowKey,
    track: Track,
    checks_off: u32,
) -> Result<Choice, u32> {
    if track != Track::Syn {
        // SAFETY: the value is copied out at once; LRU entries may be recycled afterwards.
        match unsafe { CONNTRACK.get(key) } {
            Some(v) => {
                let id = v.backend;
                if let Some(b) = BACKENDS.get(id)
                    && b.family != 0
                    && (b.state == BACKEND_UP || b.state == BACKEND_DRAIN)
                {
                    count(if track == Track::Flow {
                        STAT_CT_HIT
                    } else {
                        STAT_ICMP_RELAYED
                    });
                    return Ok(Choice {
                        id,
                        backend: b,
                        new_flow: false,
                        hash: None,
                    });
                }
                // Its backend went down or away: place the flow again.
                if track == Track::Flow {
                    count(STAT_RESCHEDULED);
                }
            }
            None => {
                if track == Track::Flow {
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
    if svc.table_size == 0 {
        return Err(STAT_NO_BACKEND);
    }
    let hash = flow_hash(key);
    let slot = hash % svc.table_size;
    // Like Katran's `get_packet_dst`: an empty slot means nothing is up; a slot that names
    // a backend the map does not hold, or a table past the end of TABLES, means user space
    // and the maps disagree.
    let id = match TABLES.get(svc.table_offset.wrapping_add(slot)) {
        Some(0) => return Err(STAT_NO_BACKEND),
        Some(id) => *id,
        None => return Err(STAT_DROP_STALE_BACKEND),
    };
    let backend = match BACKENDS.get(id) {
        Some(b) if b.family != 0 => b,
        _ => return Err(STAT_DROP_STALE_BACKEND),
    };
    if track == Track::Relay {
        count(STAT_ICMP_RELAYED);
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
        new_flow: true,
        hash: Some(hash),
    })
}
