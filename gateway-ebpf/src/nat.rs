//! Full-NAT: a client's flow leaves towards its backend from a SNAT address and port of this
//! balancer, so the backend sees an ordinary connection from us and answers it; the answer
//! comes back to that address and leaves towards the client from the VIP.
//!
//! NAT holds both directions of a flow, each keyed by the 5-tuple as it arrives: the
//! client's (to the VIP) and the backend's answer (to the SNAT address and port). Both map
//! to the packet's new source and destination ([`NatValue`]), so one rewrite serves both.
//! A new flow's answer entry is inserted first, only if absent: that claims the SNAT port.
//!
//! This runs as its own program (`gateway_fullnat`), which the main one tail-calls once it
//! knows the packet belongs to full-NAT ([`hand_off`]): its own verifier budget, and nothing
//! added to the paths of the other modes. The main program has parsed and validated the
//! packet; it leaves what it learnt in HANDOFF.
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_FIB_LKUP_RET_SUCCESS, BPF_NOEXIST, bpf_fib_lookup},
    helpers::{
        bpf_get_prandom_u32,
        generated::{bpf_fib_lookup, bpf_ktime_get_coarse_ns},
    },
    programs::XdpContext,
};
use gateway_common::{
    Backend, FAMILY_V4, FlowKey, JUMP_FULLNAT, LOCAL_SNAT, MAX_SNAT_ADDRS, MODE_FULLNAT,
    NAT_DIR_FORWARD, NAT_DIR_REPLY, NAT_PORT_TRIES, NAT_RETRY, NAT_TCP_CLOSING,
    NAT_TCP_ESTABLISHED, NAT_TCP_REFUSED, NAT_TCP_RESET, NAT_TCP_SYN, NAT_UDP, NatValue,
    PROTECT_OFF, PROTO_TCP, STAT_DROP_INTERNAL, STAT_DROP_MARTIAN_SOURCE, STAT_DROP_NAT_EXHAUSTED,
    STAT_DROP_NAT_FLOOD, STAT_DROP_NAT_NO_MAPPING, STAT_DROP_NAT_REPLY_MISS,
    STAT_DROP_NAT_UNTRANSLATED, STAT_FORWARDED, STAT_ICMP_RELAYED, STAT_NAT_HALF_LOST,
    STAT_NAT_NEW, STAT_NAT_REPLIED, STAT_NAT_RESET_HIDDEN, STAT_NAT_RETRIED, STAT_PASS_NOT_VIP,
    ServiceValue,
    hash::{flow_hash, slot_of},
};
use gateway_ebpf::hdr::*;

use crate::{
    csum,
    forward::set_macs,
    maps::{
        BACKEND_STATS, HANDOFF, Handoff, JUMP, NAT, NAT_POOL, NatScratch, PASSIVE, SERVICE_STATS,
    },
    packet::{at, copy, frame_len, ld16, put},
    parse::{KeyBuf, L4, Packet},
    protect, select,
    stats::{Verdict, account, count},
};

const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;
const TCP_CSUM: usize = 16;
/// Address families as `bpf_fib_lookup` takes them.
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const L4_TCP: u32 = 0;
const L4_ICMP_ERROR: u32 = 2;

/// In the main program: whether a packet for no service is addressed to a SNAT address
/// (marked in LOCAL_ADDRS, behind LOCAL_FILTER: most packets for the host pay one bit test).
#[inline(always)]
pub fn to_pool(key: &FlowKey) -> bool {
    crate::maps::local(&key.dst, key.family).is_some_and(|w| w & LOCAL_SNAT != 0)
}

/// The service the main program takes a packet to a SNAT address for: full-NAT, no limits,
/// and an id no service has ([`hand_off`] tells answers by it).
pub const ANSWERS: ServiceValue = ServiceValue {
    id: u32::MAX,
    table_offset: 0,
    table_size: 0,
    mode: MODE_FULLNAT,
    protect: PROTECT_OFF,
    _pad: [0; 2],
};

/// In the main program: hands the packet to the full-NAT program. `svc` is the full-NAT
/// service it is for, or [`ANSWERS`] for an answer to a SNAT address. Returns only if the
/// tail call failed (the program is not in JUMP).
#[inline(always)]
pub fn hand_off(
    ctx: &XdpContext,
    pkt: &Packet,
    key: &KeyBuf,
    svc: &ServiceValue,
    quoted_l4: usize,
) {
    let Some(h) = HANDOFF.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's entry, written whole before the tail call reads it; the key goes
    // in as five words at the value's 8-byte aligned start.
    unsafe {
        core::ptr::write(h as *mut [u64; 5], key.words());
        (*h).svc = *svc;
        (*h).l2_len = pkt.l2_len as u32;
        (*h).l4_off = pkt.l4_off as u32;
        (*h).l4 = match pkt.l4 {
            L4::Tcp => L4_TCP,
            L4::Udp => 1,
            L4::IcmpError => L4_ICMP_ERROR,
        };
        (*h).tcp_flags = pkt.tcp_flags;
        (*h).quoted_l4 = quoted_l4 as u32;
        (*h).reply = u8::from(svc.id == ANSWERS.id);
        JUMP.tail_call(ctx, JUMP_FULLNAT);
    }
}

/// What the full-NAT program needs of the packet besides its key.
struct Pkt {
    l2: usize,
    l4: usize,
    tcp: bool,
    flags: u8,
}

/// The full-NAT program's verdict.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> Verdict {
    let Some(h) = HANDOFF.get_ptr_mut(0) else {
        return Verdict::drop(STAT_DROP_INTERNAL);
    };
    // SAFETY: this CPU's entry, written by the main program for this packet.
    let h = unsafe { &mut *h };
    if h.l4 == L4_ICMP_ERROR {
        let v = icmp_error(ctx, h);
        return Verdict {
            action: (v >> 32) as u32,
            reason: v as u32,
        };
    }
    let p = Pkt {
        l2: h.l2_len as usize,
        l4: h.l4_off as usize,
        tcp: h.l4 == L4_TCP,
        flags: h.tcp_flags,
    };
    let Handoff {
        key,
        svc,
        scratch,
        reply: to_pool,
        ..
    } = h;
    if *to_pool != 0 {
        reply(ctx, &p, key, scratch)
    } else {
        forward(ctx, &p, key, svc, scratch)
    }
}

/// Seconds on the coarse clock.
#[inline(always)]
fn now() -> u32 {
    // SAFETY: the helper takes no arguments.
    (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000) as u32
}

/// Whether two addresses are equal. Every address the program compares lies 4-byte aligned
/// (in a map value, or at the start or middle of a key on the stack).
#[inline(always)]
fn same(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let (a, b) = (a.as_ptr() as *const u32, b.as_ptr() as *const u32);
    // SAFETY: 16 bytes each, 4-byte aligned as above.
    unsafe {
        core::ptr::read(a) == core::ptr::read(b)
            && core::ptr::read(a.add(1)) == core::ptr::read(b.add(1))
            && core::ptr::read(a.add(2)) == core::ptr::read(b.add(2))
            && core::ptr::read(a.add(3)) == core::ptr::read(b.add(3))
    }
}

/// Writes into `out` the key the other direction of mapping `v` arrives with: its new
/// destination answering its new source.
#[inline(always)]
fn other_way(v: &NatValue, proto: u8, family: u8, out: &mut FlowKey) {
    out.src = v.dst;
    out.dst = v.src;
    out.sport_be = v.dport_be;
    out.dport_be = v.sport_be;
    out.proto = proto;
    out.family = family;
    out._pad = [0; 2];
}

/// Whether `key` is the other direction of mapping `v`'s flow (see `other_way`).
#[inline(always)]
fn answers(v: &NatValue, key: &FlowKey) -> bool {
    v.dport_be == key.sport_be
        && v.sport_be == key.dport_be
        && same(&v.dst, &key.src)
        && same(&v.src, &key.dst)
}

/// Removes the mapping under `key` (value `v`) and its other direction, if that still
/// belongs to it (an expired answer entry may have been given to another flow).
#[inline(always)]
fn remove_pair(key: &FlowKey, v: &NatValue, s: &mut NatScratch) {
    other_way(v, key.proto, key.family, &mut s.other);
    // SAFETY: the value is only compared.
    if let Some(b) = unsafe { NAT.get(&s.other) }
        && answers(b, key)
    {
        let _ = NAT.remove(&s.other);
    }
    let _ = NAT.remove(key);
}

/// Sets the state of the mapping `v` (found under `key`) and of its other direction: both
/// age by it, and a port is free only once both have.
#[inline(always)]
fn set_state(key: &FlowKey, v: &mut NatValue, state: u8, s: &mut NatScratch) {
    if v.state == state {
        return;
    }
    v.state = state;
    other_way(v, key.proto, key.family, &mut s.other);
    if let Some(o) = NAT.get_ptr_mut(&s.other) {
        // SAFETY: a map value, valid for this run.
        unsafe { (*o).state = state };
    }
}

/// A FIN closes the flow (`closing`), a reset ends it (`reset`, which frees its port
/// sooner); either direction's tells both. A FIN after a reset changes nothing.
#[inline(always)]
fn closing(key: &FlowKey, v: &mut NatValue, flags: u8, s: &mut NatScratch) {
    if flags & TCP_RST != 0 {
        set_state(key, v, NAT_TCP_RESET, s);
    } else if flags & TCP_FIN != 0 && v.state != NAT_TCP_RESET {
        set_state(key, v, NAT_TCP_CLOSING, s);
    }
}

/// Writes again the other direction of the flow `key` (mapping `v`) if it is missing: an
/// LRU map may evict one entry of a pair. `dir` is the missing entry's direction. If
/// another flow holds its key now (the port was reused), nothing is written.
#[inline(always)]
fn keep_pair(ctx: &XdpContext, key: &FlowKey, v: &NatValue, s: &mut NatScratch, dir: u8) {
    other_way(v, key.proto, key.family, &mut s.other);
    // SAFETY: only tested for presence.
    if unsafe { NAT.get(&s.other) }.is_some() {
        return;
    }
    count(STAT_NAT_HALF_LOST);
    let o = &mut s.back;
    // The missing entry maps its packets to this packet's addresses, swapped.
    o.src = key.dst;
    o.dst = key.src;
    o.sport_be = key.dport_be;
    o.dport_be = key.sport_be;
    o.backend = v.backend;
    o.mac = [0; 6];
    if dir == NAT_DIR_REPLY {
        // Answers go back to where this client packet came from.
        if let Some(eth) = at(ctx, 0, ETH_LEN) {
            o.mac = copy(eth, ETH_SRC);
        }
    }
    o.state = v.state;
    o.dir = dir;
    o.seen = v.seen;
    o.flags = v.flags;
    o._pad = [0; 3];
    let _ = NAT.insert(&s.other, &s.back, BPF_NOEXIST as u64);
}

/// Sets an answer entry's MAC to the next hop towards its client (`v.dst`) that the
/// kernel's routes and neighbours give, when that is out of the interface the packet came
/// in on; otherwise it keeps the MAC it has (the one the client's packets came from). A BPF
/// function of its own: the lookup's parameters take 64 bytes of stack.
#[inline(never)]
fn fib_mac(ctx: &XdpContext, v: &mut NatValue, family: u8) -> bool {
    // SAFETY: plain data, all zero is valid.
    let mut q: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    let ifindex = ctx.ingress_ifindex() as u32;
    q.ifindex = ifindex;
    let word = |a: &[u8; 16], i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    if family == FAMILY_V4 {
        q.family = AF_INET;
        q.__bindgen_anon_3.ipv4_src = word(&v.src, 0);
        q.__bindgen_anon_4.ipv4_dst = word(&v.dst, 0);
    } else {
        q.family = AF_INET6;
        let words4 = |a: &[u8; 16]| [word(a, 0), word(a, 4), word(a, 8), word(a, 12)];
        q.__bindgen_anon_3.ipv6_src = words4(&v.src);
        q.__bindgen_anon_4.ipv6_dst = words4(&v.dst);
    }
    // SAFETY: `q` is a whole bpf_fib_lookup on the stack.
    let r = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut core::ffi::c_void,
            &mut q,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if r != BPF_FIB_LKUP_RET_SUCCESS as i64 || q.ifindex != ifindex {
        return false;
    }
    v.mac = q.dmac;
    true
}

/// What a backend's answer (or silence) to a full-NAT SYN says of it.
enum Passive {
    Answered,
    Refused,
    Unanswered,
}

/// Counts `what` for backend `id` in PASSIVE, which the agent reads.
#[inline(always)]
fn passive(id: u32, what: Passive) {
    if let Some(c) = PASSIVE.get_ptr_mut(id) {
        // SAFETY: this CPU's slot; XDP runs with preemption off.
        unsafe {
            match what {
                Passive::Answered => (*c).answered += 1,
                Passive::Refused => (*c).refused += 1,
                Passive::Unanswered => (*c).unanswered += 1,
            }
        }
    }
}

/// A client's packet for a full-NAT service.
#[inline(always)]
fn forward(
    ctx: &XdpContext,
    p: &Pkt,
    key: &FlowKey,
    svc: &ServiceValue,
    s: &mut NatScratch,
) -> Verdict {
    let syn = p.tcp && p.flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let now = now();
    let bytes = frame_len(ctx) as u64;
    // A backend this flow's SYN must not go to again: it refused the SYN (the reset was
    // kept from the client), or left it unanswered until the client sent it again.
    let mut avoid = 0;
    if let Some(e) = NAT.get_ptr_mut(key) {
        // SAFETY: a map value, valid for this run; racing writers only lose a refresh.
        let v = unsafe { &mut *e };
        let live = v.dir == NAT_DIR_FORWARD && !v.expired(now);
        if live && syn && v.flags & NAT_RETRY == 0 {
            if v.state == NAT_TCP_REFUSED {
                avoid = v.backend;
            } else if v.state == NAT_TCP_SYN && v.seen != now {
                passive(v.backend, Passive::Unanswered);
                avoid = v.backend;
            }
        }
        // A SYN on a mapping past its own SYN is a new connection reusing the ports; a
        // refused mapping carries nothing but its SYN again.
        let reused = syn && v.state != NAT_TCP_SYN;
        let refused = v.state == NAT_TCP_REFUSED;
        match select::serving(v.backend) {
            Some(b) if live && !reused && !refused && avoid == 0 => {
                if p.tcp {
                    closing(key, v, p.flags, s);
                }
                if v.seen != now {
                    v.seen = now;
                    // Once a second per flow: its answer entry is still there.
                    keep_pair(ctx, key, v, s, NAT_DIR_REPLY);
                }
                if !rewrite(ctx, p, key, v) || !set_macs(ctx, &b.mac) {
                    return Verdict::drop(STAT_DROP_INTERNAL);
                }
                account(&SERVICE_STATS, svc.id, bytes, false);
                account(&BACKEND_STATS, v.backend, bytes, false);
                return Verdict::tx(STAT_FORWARDED);
            }
            _ => remove_pair(key, v, s),
        }
    }
    if p.tcp && !syn {
        return Verdict::drop(STAT_DROP_NAT_NO_MAPPING);
    }
    let settings = crate::maps::settings();
    if select::from_local(key, settings.checks_off) {
        return Verdict::drop(STAT_DROP_MARTIAN_SOURCE);
    }
    // Past the full-NAT flood guard's rate a new flow gets no mapping (it could not be
    // forwarded without one): the flood cannot evict established flows' mappings.
    if protect::flooding(settings.nat_flood_window_limit, protect::GUARD_NAT) {
        account(&SERVICE_STATS, svc.id, bytes, false);
        return Verdict::drop(STAT_DROP_NAT_FLOOD);
    }
    let hash = flow_hash(key);
    let placed = if avoid != 0 {
        select::table_backend_avoiding(svc, hash, avoid)
    } else {
        select::table_backend(svc, hash)
    };
    let claimed = match placed {
        Ok((id, b)) => claim(ctx, key, b, id, hash, p.tcp, avoid != 0, now, s).map(|()| b),
        Err(reason) => Err(reason),
    };
    let b = match claimed {
        Ok(b) => b,
        Err(reason) => {
            account(&SERVICE_STATS, svc.id, bytes, false);
            return Verdict::drop(reason);
        }
    };
    count(STAT_NAT_NEW);
    if avoid != 0 && s.fwd.backend != avoid {
        count(STAT_NAT_RETRIED);
    }
    if !rewrite(ctx, p, key, &s.fwd) || !set_macs(ctx, &b.mac) {
        return Verdict::drop(STAT_DROP_INTERNAL);
    }
    account(&SERVICE_STATS, svc.id, bytes, true);
    account(&BACKEND_STATS, s.fwd.backend, bytes, true);
    Verdict::tx(STAT_FORWARDED)
}

/// Makes the mapping of a new flow `key` to backend `b` (id `id`) in `s.fwd` and NAT: a
/// SNAT address (by the flow hash) and a free port (consecutive ones from a random start,
/// `NAT_PORT_TRIES` of them). The answer entry is inserted first, only if absent, so two
/// flows never share an answer tuple; one whose flow has expired is taken over.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn claim(
    ctx: &XdpContext,
    key: &FlowKey,
    b: &Backend,
    id: u32,
    hash: u32,
    tcp: bool,
    retry: bool,
    now: u32,
    s: &mut NatScratch,
) -> Result<(), u32> {
    let pool = NAT_POOL.get(0).ok_or(STAT_DROP_NAT_UNTRANSLATED)?;
    let min = u32::from(pool.port_min);
    let max = u32::from(pool.port_max);
    if max < min || min == 0 {
        return Err(STAT_DROP_NAT_UNTRANSLATED);
    }
    // The forward entry: from the SNAT address, to the backend on the service's port.
    let f = &mut s.fwd;
    f.src = [0; 16];
    if key.family == FAMILY_V4 {
        let n = u32::from(pool.v4_count);
        if n == 0 {
            return Err(STAT_DROP_NAT_UNTRANSLATED);
        }
        let a = pool.v4[((hash % n) as usize) & (MAX_SNAT_ADDRS - 1)];
        f.src[0] = a[0];
        f.src[1] = a[1];
        f.src[2] = a[2];
        f.src[3] = a[3];
    } else {
        let n = u32::from(pool.v6_count);
        if n == 0 {
            return Err(STAT_DROP_NAT_UNTRANSLATED);
        }
        f.src = pool.v6[((hash % n) as usize) & (MAX_SNAT_ADDRS - 1)];
    }
    f.dst = b.addr;
    f.dport_be = key.dport_be;
    f.backend = id;
    f.mac = [0; 6];
    f.state = if tcp { NAT_TCP_SYN } else { NAT_UDP };
    f.dir = NAT_DIR_FORWARD;
    f.seen = now;
    f.flags = if retry { NAT_RETRY } else { 0 };
    f._pad = [0; 3];
    // The answer entry: from the VIP, to the client, back through the MAC it came from.
    let Some(eth) = at(ctx, 0, ETH_LEN) else {
        return Err(STAT_DROP_INTERNAL);
    };
    let a = &mut s.back;
    a.src = key.dst;
    a.dst = key.src;
    a.sport_be = key.dport_be;
    a.dport_be = key.sport_be;
    a.backend = id;
    a.mac = copy(eth, ETH_SRC);
    fib_mac(ctx, a, key.family);
    a.state = f.state;
    a.dir = NAT_DIR_REPLY;
    a.seen = now;
    a.flags = f.flags;
    a._pad = [0; 3];
    let span = max - min + 1;
    // A random first port, then the next ones, wrapping at the range's end: a scaling and
    // a compare where `%` would divide (twice a try).
    // SAFETY: the helper takes no arguments.
    let mut at = slot_of(unsafe { bpf_get_prandom_u32() }, span);
    let mut i = 0;
    let mut claimed = false;
    while i < NAT_PORT_TRIES && i < span {
        f.sport_be = ((min + at) as u16).to_be();
        at += 1;
        if at == span {
            at = 0;
        }
        // The answer's key: the backend answering the SNAT address and port.
        other_way(f, key.proto, key.family, &mut s.answer);
        if NAT.insert(&s.answer, &s.back, BPF_NOEXIST as u64).is_ok()
            || (expired_pair(&s.answer, &mut s.other, now)
                && NAT.insert(&s.answer, &s.back, BPF_ANY as u64).is_ok())
        {
            claimed = true;
            break;
        }
        i += 1;
    }
    if !claimed {
        return Err(STAT_DROP_NAT_EXHAUSTED);
    }
    if NAT.insert(key, &s.fwd, BPF_ANY as u64).is_err() {
        let _ = NAT.remove(&s.answer);
        return Err(STAT_DROP_INTERNAL);
    }
    Ok(())
}

/// Whether the answer entry under `answer` and its flow's forward entry have both outlived
/// their timeouts (or the forward one is gone, or now maps elsewhere): its SNAT port is
/// free again. The forward entry is then removed. `fwd` is room for the forward key.
#[inline(always)]
fn expired_pair(answer: &FlowKey, fwd: &mut FlowKey, now: u32) -> bool {
    // SAFETY: values are only read.
    let Some(old) = (unsafe { NAT.get(answer) }) else {
        return false;
    };
    if old.dir != NAT_DIR_REPLY || !old.expired(now) {
        return false;
    }
    other_way(old, answer.proto, answer.family, fwd);
    // SAFETY: as above.
    if let Some(f) = unsafe { NAT.get(&*fwd) }
        && answers(f, answer)
    {
        if !f.expired(now) {
            return false;
        }
        let _ = NAT.remove(&*fwd);
    }
    true
}

/// A packet to a SNAT address: a backend's answer, rewritten to its client.
#[inline(always)]
fn reply(ctx: &XdpContext, p: &Pkt, key: &FlowKey, s: &mut NatScratch) -> Verdict {
    let now = now();
    let found = NAT.get_ptr_mut(key);
    // SAFETY: a map value, valid for this run.
    let v = match found.map(|e| unsafe { &mut *e }) {
        Some(v) if v.dir == NAT_DIR_REPLY => v,
        _ => {
            let port = u16::from_be(key.dport_be);
            let in_range = NAT_POOL
                .get(0)
                .is_some_and(|p| port >= p.port_min && port <= p.port_max);
            return if in_range {
                Verdict::drop(STAT_DROP_NAT_REPLY_MISS)
            } else {
                Verdict::pass(STAT_PASS_NOT_VIP)
            };
        }
    };
    if p.tcp && v.state == NAT_TCP_SYN {
        if p.flags & TCP_RST != 0 {
            passive(v.backend, Passive::Refused);
            if v.flags & NAT_RETRY == 0 {
                // Kept from the client, whose SYN retransmission then goes to another
                // backend: the forward entry remembers which one to avoid, the answer
                // entry goes (and frees its port).
                other_way(v, key.proto, key.family, &mut s.other);
                if let Some(f) = NAT.get_ptr_mut(&s.other) {
                    // SAFETY: as above.
                    unsafe {
                        (*f).state = NAT_TCP_REFUSED;
                        (*f).seen = now;
                    }
                }
                let _ = NAT.remove(key);
                return Verdict::drop(STAT_NAT_RESET_HIDDEN);
            }
        } else if p.flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
            passive(v.backend, Passive::Answered);
        }
    }
    if p.tcp {
        if p.flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK && v.state == NAT_TCP_SYN {
            // The client's direction learns it too: a SYN after this is a new connection.
            set_state(key, v, NAT_TCP_ESTABLISHED, s);
        } else {
            closing(key, v, p.flags, s);
        }
    }
    if v.seen != now {
        v.seen = now;
        // Once a second per flow: its forward entry is still there, and the client's next
        // hop is still the one the routes and neighbours name.
        keep_pair(ctx, key, v, s, NAT_DIR_FORWARD);
        fib_mac(ctx, v, key.family);
    }
    if !rewrite(ctx, p, key, v) || !set_macs(ctx, &v.mac) {
        return Verdict::drop(STAT_DROP_INTERNAL);
    }
    Verdict::tx(STAT_NAT_REPLIED)
}

/// An ICMP error about a full-NAT flow, for the other side of it. To the VIP from the
/// client's side, it quotes an answer the balancer sent the client: it goes to the backend,
/// quoting what the backend sent, from the SNAT address. To a SNAT address from the
/// backend's side, it quotes a packet the balancer sent the backend: it goes to the client,
/// quoting what the client sent, from the VIP. `h.key` is the quoted packet's flow reversed
/// (the direction whose mapping says how to translate): the quoted packet gets the
/// mapping's new destination as its source and its new source as its destination, and the
/// outer header the mapping's new addresses. The inner IPv4 and transport checksums (where
/// the quote holds them), the ICMP checksum and the outer IPv4 checksum are updated
/// incrementally.
///
/// A BPF function of its own (its temporaries would not fit the caller's stack beside the
/// rest), so it returns its verdict as one number: the action in the high half, the counter
/// in the low one.
#[inline(never)]
fn icmp_error(ctx: &XdpContext, h: &Handoff) -> u64 {
    let v = translate_icmp_error(ctx, h);
    (u64::from(v.action) << 32) | u64::from(v.reason)
}

#[inline(always)]
fn translate_icmp_error(ctx: &XdpContext, h: &Handoff) -> Verdict {
    let key = &h.key;
    let want = if h.reply != 0 {
        NAT_DIR_REPLY
    } else {
        NAT_DIR_FORWARD
    };
    // SAFETY: a map value, valid for this run; only read.
    let v = match unsafe { NAT.get(key) } {
        Some(v) if v.dir == want => v,
        _ => return Verdict::drop(STAT_DROP_NAT_UNTRANSLATED),
    };
    let mac = if h.reply != 0 {
        v.mac
    } else {
        match select::serving(v.backend) {
            Some(b) => b.mac,
            None => return Verdict::drop(STAT_DROP_NAT_UNTRANSLATED),
        }
    };
    let l2 = h.l2_len as usize;
    let icmp_off = h.l4_off as usize;
    let inner = icmp_off + ICMP_LEN;
    let ql4 = h.quoted_l4 as usize;
    let Some(ports) = at(ctx, ql4, 4) else {
        return Verdict::drop(STAT_DROP_INTERNAL);
    };
    let old_ports = u64::from(!ld16(ports, L4_SPORT)) + u64::from(!ld16(ports, L4_DPORT));
    let d_ports = old_ports + u64::from(v.dport_be) + u64::from(v.sport_be);
    // SAFETY: `ports` covers both ports.
    unsafe {
        core::ptr::write(ports.add(L4_SPORT) as *mut u16, v.dport_be);
        core::ptr::write(ports.add(L4_DPORT) as *mut u16, v.sport_be);
    }
    // What the ICMP checksum gains besides the quoted ports.
    let mut d_icmp = d_ports;
    let d_inner;
    if key.family == FAMILY_V4 {
        let (Some(outer), Some(ip)) = (at(ctx, l2, IPV4_LEN), at(ctx, inner, IPV4_LEN)) else {
            return Verdict::drop(STAT_DROP_INTERNAL);
        };
        let four = |a: &[u8; 16]| [a[0], a[1], a[2], a[3]];
        let (new_src, new_dst) = (four(&v.src), four(&v.dst));
        let o_src: [u8; 4] = copy(outer, IPV4_SRC);
        let o_dst: [u8; 4] = copy(outer, IPV4_DST);
        let d_outer = csum::words(&o_src, true)
            + csum::words(&o_dst, true)
            + csum::words(&new_src, false)
            + csum::words(&new_dst, false);
        let i_src: [u8; 4] = copy(ip, IPV4_SRC);
        let i_dst: [u8; 4] = copy(ip, IPV4_DST);
        // The quoted packet runs the other way: from the mapping's destination.
        d_inner = csum::words(&i_src, true)
            + csum::words(&i_dst, true)
            + csum::words(&new_dst, false)
            + csum::words(&new_src, false);
        let old_ic = ld16(ip, IPV4_CSUM);
        let new_ic = csum::updated(old_ic, d_inner);
        d_icmp += d_inner + u64::from(!old_ic) + u64::from(new_ic);
        let oc = csum::updated(ld16(outer, IPV4_CSUM), d_outer);
        // SAFETY: `outer` and `ip` cover their fixed headers.
        unsafe {
            put(ip, IPV4_SRC, new_dst);
            put(ip, IPV4_DST, new_src);
            core::ptr::write(ip.add(IPV4_CSUM) as *mut u16, new_ic);
            put(outer, IPV4_SRC, new_src);
            put(outer, IPV4_DST, new_dst);
            core::ptr::write(outer.add(IPV4_CSUM) as *mut u16, oc);
        }
    } else {
        let (Some(outer), Some(ip)) = (at(ctx, l2, IPV6_LEN), at(ctx, inner, IPV6_LEN)) else {
            return Verdict::drop(STAT_DROP_INTERNAL);
        };
        let o_src: [u8; 16] = copy(outer, IPV6_SRC);
        let o_dst: [u8; 16] = copy(outer, IPV6_DST);
        // ICMPv6's checksum covers the outer addresses (its pseudo-header).
        d_icmp += csum::words(&o_src, true)
            + csum::words(&o_dst, true)
            + csum::words(&v.src, false)
            + csum::words(&v.dst, false);
        let i_src: [u8; 16] = copy(ip, IPV6_SRC);
        let i_dst: [u8; 16] = copy(ip, IPV6_DST);
        d_inner = csum::words(&i_src, true)
            + csum::words(&i_dst, true)
            + csum::words(&v.dst, false)
            + csum::words(&v.src, false);
        d_icmp += d_inner;
        // SAFETY: as above.
        unsafe {
            put(ip, IPV6_SRC, v.dst);
            put(ip, IPV6_DST, v.src);
            put(outer, IPV6_SRC, v.src);
            put(outer, IPV6_DST, v.dst);
        }
    }
    // The quoted transport checksum, where the quote reaches it.
    let l4_csum = if key.proto == PROTO_TCP {
        at(ctx, ql4, TCP_LEN).map(|p| (p, TCP_CSUM))
    } else {
        at(ctx, ql4, UDP_LEN).map(|p| (p, UDP_CSUM))
    };
    if let Some((p, off)) = l4_csum {
        let old = ld16(p, off);
        if !(old == 0 && key.proto != PROTO_TCP && key.family == FAMILY_V4) {
            let new = match csum::updated(old, d_inner + d_ports) {
                0 if key.proto != PROTO_TCP => 0xffff,
                c => c,
            };
            d_icmp += u64::from(!old) + u64::from(new);
            // SAFETY: `p` covers the checksum.
            unsafe { core::ptr::write(p.add(off) as *mut u16, new) };
        }
    }
    let Some(icmp) = at(ctx, icmp_off, ICMP_LEN) else {
        return Verdict::drop(STAT_DROP_INTERNAL);
    };
    let c = csum::updated(ld16(icmp, ICMP_CSUM), d_icmp);
    // SAFETY: `icmp` covers the ICMP header.
    unsafe { core::ptr::write(icmp.add(ICMP_CSUM) as *mut u16, c) };
    if !set_macs(ctx, &mac) {
        return Verdict::drop(STAT_DROP_INTERNAL);
    }
    count(STAT_ICMP_RELAYED);
    Verdict::tx(if h.reply != 0 {
        STAT_NAT_REPLIED
    } else {
        STAT_FORWARDED
    })
}

/// Rewrites the packet's addresses and ports to `v`'s, with both checksums updated. A BPF
/// function of its own: its three callers would otherwise each hold its temporaries on the
/// stack.
#[inline(never)]
fn rewrite(ctx: &XdpContext, p: &Pkt, key: &FlowKey, v: &NatValue) -> bool {
    let (l2, l4) = (p.l2, p.l4);
    let ports = u64::from(!key.sport_be)
        + u64::from(!key.dport_be)
        + u64::from(v.sport_be)
        + u64::from(v.dport_be);
    let addrs = if key.family == FAMILY_V4 {
        let Some(ip) = at(ctx, l2, IPV4_LEN) else {
            return false;
        };
        let old_src = [key.src[0], key.src[1], key.src[2], key.src[3]];
        let old_dst = [key.dst[0], key.dst[1], key.dst[2], key.dst[3]];
        let new_src = [v.src[0], v.src[1], v.src[2], v.src[3]];
        let new_dst = [v.dst[0], v.dst[1], v.dst[2], v.dst[3]];
        let d = csum::words(&old_src, true)
            + csum::words(&old_dst, true)
            + csum::words(&new_src, false)
            + csum::words(&new_dst, false);
        let c = csum::updated(ld16(ip, IPV4_CSUM), d);
        // SAFETY: `ip` covers the fixed header.
        unsafe {
            put(ip, IPV4_SRC, new_src);
            put(ip, IPV4_DST, new_dst);
            core::ptr::write(ip.add(IPV4_CSUM) as *mut u16, c);
        }
        d
    } else {
        let Some(ip) = at(ctx, l2, IPV6_LEN) else {
            return false;
        };
        let d = csum::words(&key.src, true)
            + csum::words(&key.dst, true)
            + csum::words(&v.src, false)
            + csum::words(&v.dst, false);
        // SAFETY: `ip` covers the fixed header.
        unsafe {
            put(ip, IPV6_SRC, v.src);
            put(ip, IPV6_DST, v.dst);
        }
        d
    };
    let delta = addrs + ports;
    if p.tcp {
        let Some(p) = at(ctx, l4, TCP_LEN) else {
            return false;
        };
        let c = csum::updated(ld16(p, TCP_CSUM), delta);
        // SAFETY: `p` covers the TCP header.
        unsafe {
            core::ptr::write(p.add(L4_SPORT) as *mut u16, v.sport_be);
            core::ptr::write(p.add(L4_DPORT) as *mut u16, v.dport_be);
            core::ptr::write(p.add(TCP_CSUM) as *mut u16, c);
        }
    } else {
        let Some(p) = at(ctx, l4, UDP_LEN) else {
            return false;
        };
        let old = ld16(p, UDP_CSUM);
        // An IPv4 datagram without a checksum (0) stays without one; a computed 0 is sent
        // as its other form, 0xffff (RFC 768).
        let c = if old == 0 && key.family == FAMILY_V4 {
            0
        } else {
            match csum::updated(old, delta) {
                0 => 0xffff,
                c => c,
            }
        };
        // SAFETY: `p` covers the UDP header.
        unsafe {
            core::ptr::write(p.add(L4_SPORT) as *mut u16, v.sport_be);
            core::ptr::write(p.add(L4_DPORT) as *mut u16, v.dport_be);
            core::ptr::write(p.add(UDP_CSUM) as *mut u16, c);
        }
    }
    true
}
