//! Map definitions. Names, sizes and layouts come from gateway-common.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray},
};
use gateway_common::{
    AllowAddr, BPF_F_MMAPABLE, BPF_F_NO_COMMON_LRU, Backend, DEFAULT_CONNTRACK_SIZE,
    DEFAULT_NAT_SIZE, DEFAULT_SOURCES_SIZE, NatPool, NatValue, PassiveStats, ServiceValue, FloodWindow, FlowKey, FlowValue, Limits, LocalFilter, LocalKey,
    MAX_ALLOWLIST, MAX_BACKENDS, MAX_LIMITED, MAX_LOCAL_ADDRS, MAX_SERVICES, Meta, ProtectStats,
    STAT_COUNT, SERVICE_BUCKETS, SERVICE_PROBES, ServiceKey, ServiceSlot, Settings,
    SlotLine, SlotState, SourceBucket, SourceKey, TrafficStats, service_bucket,
};

/// Written and read by user space only (the record it adopts pinned maps from); the
/// program finds services in SERVICE_INDEX.
#[map(name = "SERVICES")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// `SERVICE_BUCKETS` buckets; see `gateway_common::ServiceSlot`.
#[map(name = "SERVICE_INDEX")]
pub static SERVICE_INDEX: Array<ServiceSlot> =
    Array::with_max_entries(SERVICE_BUCKETS, BPF_F_MMAPABLE);

#[map(name = "BACKENDS")]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Resized by the agent at load time (services x 2 x largest table, in lines of 32 slots).
#[map(name = "TABLES")]
pub static TABLES: Array<SlotLine> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Resized by the agent at load time (one per slot of TABLES).
#[map(name = "SLOT_STATE")]
pub static SLOT_STATE: Array<SlotState> = Array::with_max_entries(1, BPF_F_MMAPABLE);

#[map(name = "CONNTRACK")]
pub static CONNTRACK: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(DEFAULT_CONNTRACK_SIZE, BPF_F_NO_COMMON_LRU);

#[map(name = "STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

#[map(name = "SERVICE_STATS")]
pub static SERVICE_STATS: PerCpuArray<TrafficStats> =
    PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map(name = "BACKEND_STATS")]
pub static BACKEND_STATS: PerCpuArray<TrafficStats> =
    PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "LOCAL_ADDRS")]
pub static LOCAL_ADDRS: HashMap<LocalKey, u8> = HashMap::with_max_entries(MAX_LOCAL_ADDRS, 0);

#[map(name = "LOCAL_FILTER")]
pub static LOCAL_FILTER: Array<LocalFilter> = Array::with_max_entries(1, 0);

#[map(name = "SETTINGS")]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

#[map(name = "LIMITS")]
pub static LIMITS: Array<Limits> = Array::with_max_entries(MAX_SERVICES, 0);

/// Resized by the agent at load time (`[protection] sources_size`).
#[map(name = "SOURCES")]
pub static SOURCES: LruHashMap<SourceKey, SourceBucket> =
    LruHashMap::with_max_entries(DEFAULT_SOURCES_SIZE, BPF_F_NO_COMMON_LRU);

#[map(name = "LIMITED")]
pub static LIMITED: LruHashMap<SourceKey, u32> = LruHashMap::with_max_entries(MAX_LIMITED, 0);

#[map(name = "ALLOWLIST")]
pub static ALLOWLIST: LpmTrie<AllowAddr, u8> = LpmTrie::with_max_entries(MAX_ALLOWLIST, 0);

#[map(name = "PROTECT_STATS")]
pub static PROTECT_STATS: PerCpuArray<ProtectStats> =
    PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// Resized by the agent at load time (`[dataplane] nat_size`).
#[map(name = "NAT")]
pub static NAT: LruHashMap<FlowKey, NatValue> =
    LruHashMap::with_max_entries(DEFAULT_NAT_SIZE, BPF_F_NO_COMMON_LRU);

#[map(name = "NAT_POOL")]
pub static NAT_POOL: Array<NatPool> = Array::with_max_entries(1, 0);

#[map(name = "PASSIVE")]
pub static PASSIVE: PerCpuArray<PassiveStats> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// The programs the main one hands packets to (`gateway_common::JUMP_*`).
#[map(name = "JUMP")]
pub static JUMP: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// What the main program learnt of a packet, for the program it tail-calls (a tail call
/// keeps only the context). Written and read within one packet's run on one CPU.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Handoff {
    pub key: FlowKey,
    /// The service (zero for an answer to a SNAT address).
    pub svc: ServiceValue,
    pub l2_len: u32,
    pub l4_off: u32,
    /// `parse::L4` as a number: 0 TCP, 1 UDP, 2 ICMP error.
    pub l4: u32,
    /// An ICMP error's quoted transport header (offset from the frame's start).
    pub quoted_l4: u32,
    pub tcp_flags: u8,
    /// Whether the packet is a backend's answer (to a SNAT address), not a client's.
    pub reply: u8,
    pub _pad: [u8; 2],
    /// Room for the full-NAT program's keys and values, which would not fit its stack.
    pub scratch: NatScratch,
}

/// The full-NAT program's working keys and values (see `nat`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NatScratch {
    /// A new flow's answer key (the SNAT port being claimed).
    pub answer: FlowKey,
    /// A key of the other direction of a mapping.
    pub other: FlowKey,
    /// A new flow's forward entry.
    pub fwd: NatValue,
    /// A new flow's answer entry.
    pub back: NatValue,
}

/// One `Handoff` per CPU. Not pinned: it holds nothing between runs.
#[map(name = "HANDOFF")]
pub static HANDOFF: PerCpuArray<Handoff> = PerCpuArray::with_max_entries(1, 0);

/// The flood guard's window, per CPU. Not pinned, like ZERO.
#[map(name = "FLOOD")]
pub static FLOOD: PerCpuArray<FloodWindow> = PerCpuArray::with_max_entries(2, 0);

/// One word, never written, so always 0, whose value the verifier cannot see (see
/// `parse::opaque`). Not pinned: it holds nothing.
#[map(name = "ZERO")]
pub static ZERO: Array<u32> = Array::with_max_entries(1, 0);

/// Settings before the agent's first write: no MTU check, every packet check on.
static NO_SETTINGS: Settings = Settings {
    mtu: 0,
    ipip_src_v4: [0; 4],
    ipip_src_v6: [0; 16],
    ipip_src_v4_vary_bits: 0,
    _pad: [0; 3],
    checks_off: 0,
    macs: [[0; 6]; gateway_common::MAX_LOCAL_MACS],
    flood_window_limit: 0,
    nat_flood_window_limit: 0,
};

/// Why `addr` is this balancer's (`gateway_common::LOCAL_*` bits), if it is: LOCAL_FILTER
/// first, so most addresses cost one bit test and no lookup.
#[inline(always)]
pub fn local(addr: &[u8; 16], family: u8) -> Option<u8> {
    match LOCAL_FILTER.get(0) {
        Some(f) if !f.may_hold(addr, family) => return None,
        _ => {}
    }
    let key = LocalKey {
        addr: *addr,
        family,
        _pad: [0; 3],
    };
    // SAFETY: the value is copied out at once.
    unsafe { LOCAL_ADDRS.get(&key) }.copied()
}

/// SETTINGS[0].
#[inline(always)]
pub fn settings() -> &'static Settings {
    SETTINGS.get(0).unwrap_or(&NO_SETTINGS)
}

/// Read only by user space (layout version and sizes of pinned maps).
#[map(name = "META")]
pub static META: Array<Meta> = Array::with_max_entries(1, 0);

/// A service key as two 8-byte words and the 4-byte tail (port, protocol, family).
#[inline(always)]
fn key_words(k: &ServiceKey) -> (u64, u64, u32) {
    let p = k as *const ServiceKey as *const u8;
    // SAFETY: a ServiceKey is 20 bytes; the reads are unaligned-safe.
    unsafe {
        (
            core::ptr::read_unaligned(p as *const u64),
            core::ptr::read_unaligned(p.add(8) as *const u64),
            core::ptr::read_unaligned(p.add(16) as *const u32),
        )
    }
}

/// The service a packet's (destination, port, protocol) names, from SERVICE_INDEX: its
/// home bucket, then the next ones until an empty bucket or `SERVICE_PROBES` of them.
#[inline(always)]
pub fn service(key: &ServiceKey) -> Option<ServiceValue> {
    let want = key_words(key);
    let home = service_bucket(key);
    for i in 0..SERVICE_PROBES {
        let b = SERVICE_INDEX.get((home + i) & (SERVICE_BUCKETS - 1))?;
        if b.key.family == 0 {
            return None;
        }
        // A tombstone's family (0xFF) never matches a packet's.
        if key_words(&b.key) == want {
            let table = b.table;
            return Some(ServiceValue {
                id: b.id,
                table_offset: table as u32,
                table_size: (table >> 32) as u32,
                mode: b.mode,
                protect: b.protect,
                _pad: [0; 2],
            });
        }
    }
    None
}
