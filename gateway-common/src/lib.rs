//! Types and constants shared by the gateway XDP program and its agent.
//!
//! Everything that crosses the kernel/user boundary is defined once here: map names, their
//! capacities, counter indexes, and the `#[repr(C)]` key and value types. Multi-byte fields
//! that hold packet data are in network byte order and say so in their name (`_be`);
//! addresses are byte arrays in network order. Every type has explicit padding and a
//! compile-time size assert, and no `bool`, `enum` or `Option`.
#![no_std]

pub mod hash;

// ---------------------------------------------------------------------------------------
// Maps

/// Services: `HashMap<ServiceKey, ServiceValue>`. A hash map so that replacing a value is
/// atomic for readers (the kernel swaps the element), which makes a table flip atomic.
pub const MAP_SERVICES: &str = "SERVICES";
/// Backends: `Array<Backend>`, indexed by backend id. Id 0 is never used: it means "none".
pub const MAP_BACKENDS: &str = "BACKENDS";
/// Maglev tables: `Array<SlotLine>`, 32 slots' words per element (see [`SlotLine`],
/// [`Slot`]). Service `id` owns two regions of `table_stride` slots (a multiple of 32):
/// `[2*id*stride, ..)` and `[(2*id+1)*stride, ..)`; the active one is named by its
/// `ServiceValue::table_offset`. Size set at load time.
pub const MAP_TABLES: &str = "TABLES";
/// Services where the program looks for them: `Array<ServiceSlot>` of `SERVICE_BUCKETS`,
/// mmapable, written by user space with plain stores in an order a reader can follow
/// (see [`ServiceSlot`]); SERVICES stays the record user space reads back.
pub const MAP_SERVICE_INDEX: &str = "SERVICE_INDEX";
/// What changed slots remember: `Array<SlotState>`, one per slot of TABLES (same index),
/// in the same two regions per service. Size set at load time.
pub const MAP_SLOT_STATE: &str = "SLOT_STATE";
/// Connection tracking: `LruHashMap<FlowKey, FlowValue>` with per-CPU LRU lists
/// (`BPF_F_NO_COMMON_LRU`). Size set at load time.
pub const MAP_CONNTRACK: &str = "CONNTRACK";
/// Global counters: `PerCpuArray<u64>`, indexed by the `STAT_*` consts.
pub const MAP_STATS: &str = "STATS";
/// Per-service traffic: `PerCpuArray<TrafficStats>`, indexed by service id.
pub const MAP_SERVICE_STATS: &str = "SERVICE_STATS";
/// Per-backend traffic: `PerCpuArray<TrafficStats>`, indexed by backend id.
pub const MAP_BACKEND_STATS: &str = "BACKEND_STATS";
/// Data-plane settings: `Array<Settings>` with one entry.
pub const MAP_SETTINGS: &str = "SETTINGS";
/// Addresses no packet to a VIP may come from: `HashMap<LocalKey, u8>`, the value
/// `LOCAL_VIP` or `LOCAL_HOST`. Written by the agent from the VIPs and this host's
/// addresses.
pub const MAP_LOCAL_ADDRS: &str = "LOCAL_ADDRS";
/// A bitmap in front of LOCAL_ADDRS: `Array<LocalFilter>` with one entry, the bit
/// [`local_filter_bit`] of every address LOCAL_ADDRS holds set. The program asks
/// LOCAL_ADDRS (a hash lookup) only for a source whose bit is set: one read of a line that
/// stays in cache for every other packet.
pub const MAP_LOCAL_FILTER: &str = "LOCAL_FILTER";
/// Per-service source limits: `Array<Limits>`, indexed by service id; read only for a
/// service whose `ServiceValue::protect` is not `PROTECT_OFF`.
pub const MAP_LIMITS: &str = "LIMITS";
/// Token buckets per source prefix and service: `LruHashMap<SourceKey, SourceBucket>` with
/// per-CPU LRU lists. Size set at load time (`[protection] sources_size`).
pub const MAP_SOURCES: &str = "SOURCES";
/// The sources refused (or, in monitor mode, that would have been) lately:
/// `LruHashMap<SourceKey, u32>`, the value the second (`bpf_ktime_get_coarse_ns`) of the
/// first refusal. Written at most once a second per source; the agent reads it to list and
/// log limited sources, and removes entries whose source is no longer refused.
pub const MAP_LIMITED: &str = "LIMITED";
/// Source prefixes no limit applies to: `LpmTrie<AllowAddr, u8>` (see [`AllowAddr`]).
pub const MAP_ALLOWLIST: &str = "ALLOWLIST";
/// Per-service protection counters: `PerCpuArray<ProtectStats>`, indexed by service id.
pub const MAP_PROTECT_STATS: &str = "PROTECT_STATS";
/// What the pinned maps are: `Array<Meta>` with one entry, written by the agent that
/// created them and checked by one that adopts them.
pub const MAP_META: &str = "META";
/// Full-NAT mappings, both directions in one map: `LruHashMap<FlowKey, NatValue>`. A
/// client's flow (as it arrives) maps to its SNAT address and port and its backend; the
/// backend's answer (as it arrives, to the SNAT address) maps back to the client.
pub const MAP_NAT: &str = "NAT";
/// The SNAT pool: `Array<NatPool>` with one entry.
pub const MAP_NAT_POOL: &str = "NAT_POOL";
/// What full-NAT's answers say of each backend: `PerCpuArray<PassiveStats>`, by backend id.
pub const MAP_PASSIVE: &str = "PASSIVE";
/// The programs the main one tail-calls: `ProgramArray`, indexed by `JUMP_*`. Not in
/// [`MAP_NAMES`]: each loaded object fills its own (a program array holds programs, which an
/// agent cannot adopt), pinned beside the link so that it stays filled while the program
/// runs without an agent.
pub const MAP_JUMP: &str = "JUMP";
/// `JUMP` index of the full-NAT program.
pub const JUMP_FULLNAT: u32 = 0;
/// Every map, in the order they are pinned.
pub const MAP_NAMES: [&str; 21] = [
    MAP_META,
    MAP_SERVICES,
    MAP_BACKENDS,
    MAP_TABLES,
    MAP_CONNTRACK,
    MAP_STATS,
    MAP_SERVICE_STATS,
    MAP_BACKEND_STATS,
    MAP_SETTINGS,
    MAP_LOCAL_ADDRS,
    MAP_LOCAL_FILTER,
    MAP_SLOT_STATE,
    MAP_SERVICE_INDEX,
    MAP_LIMITS,
    MAP_SOURCES,
    MAP_LIMITED,
    MAP_ALLOWLIST,
    MAP_PROTECT_STATS,
    MAP_NAT,
    MAP_NAT_POOL,
    MAP_PASSIVE,
];

/// The maps' layout: bump it whenever any map's type, key, value or meaning changes. An
/// agent refuses pinned maps of another layout instead of misreading them. 3: STATS grew
/// by `STAT_DROP_STALE_BACKEND`. 4: STATS grew by the packet-validity reasons, SETTINGS by
/// `checks_off` and the host's MACs, and LOCAL_ADDRS was added. 5: TABLES held 8-byte slots
/// (backend, previous backend, time), STATS grew by `STAT_TABLE_STEADY` and
/// `STAT_SLOT_PREVIOUS`, and LOCAL_FILTER was added. 6: TABLES holds 16-bit slot words with
/// marks, 32 to an element ([`SlotLine`]), and SLOT_STATE what changed slots remember. 7:
/// the program finds services in SERVICE_INDEX. 8: protection: LIMITS, SOURCES, LIMITED,
/// ALLOWLIST and PROTECT_STATS, `protect` in services, the flood guard in SETTINGS and its
/// counters in STATS. 9: full-NAT: NAT, NAT_POOL and PASSIVE, its counters in STATS,
/// `nat_size` in META. 10: flows hash and scale to table slots differently
/// ([`hash::flow_hash`], [`hash::slot_of`]): the same TABLES would send a settled slot's
/// established flows elsewhere.
pub const LAYOUT_VERSION: u32 = 10;
/// `Meta::magic`: "GWAY".
pub const META_MAGIC: u32 = 0x4757_4159;

/// Most services the data plane holds (also the size of SERVICE_STATS).
pub const MAX_SERVICES: u32 = 256;
/// Most backends (ids 1..MAX_BACKENDS; also the size of BACKENDS and BACKEND_STATS).
/// Room for a 10,000-backend fleet: 512 KiB of BACKENDS plus 24 bytes per CPU per id of
/// BACKEND_STATS.
pub const MAX_BACKENDS: u32 = 16384;
/// Default conntrack capacity; the agent sets the real one at load time.
pub const DEFAULT_CONNTRACK_SIZE: u32 = 1 << 20;
/// Default Maglev table size (prime).
pub const DEFAULT_TABLE_SIZE: u32 = 65537;
/// `BPF_F_NO_COMMON_LRU`: per-CPU LRU lists inside one LRU map (no shared-list lock).
pub const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;
/// `BPF_F_MMAPABLE`: user space maps TABLES into memory and writes a whole table with one
/// copy instead of one syscall per slot.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Name of the main XDP program in the object.
pub const PROG_GATEWAY: &str = "gateway";
/// Name of the full-NAT program (tail-called by the main one, `JUMP_FULLNAT`).
pub const PROG_FULLNAT: &str = "gateway_fullnat";
/// Name of the pass-everything program in the `xdp-pass` object.
pub const PROG_PASS: &str = "xdp_pass";
/// Name of the benchmark floor program in the `xdp-floor` object.
pub const PROG_FLOOR: &str = "xdp_floor";

// ---------------------------------------------------------------------------------------
// Global counters (indexes into STATS)
//
// Every packet moves `STAT_RX_PACKETS` and exactly one verdict counter, the reason its run
// ended: a pass reason (`PASS_*`, `PARSE_*`, `FRAGMENT`), `NO_BACKEND`,
// `DROP_STALE_BACKEND`, `FORWARDED`, `TOO_BIG`, `DROP_INTERNAL`, or one of the validity
// reasons (`DROP_BAD_LENGTH` .. `DROP_ICMP_CHECKSUM`: a VIP packet no router would forward). A packet that reached
// backend selection also moves at most one lookup counter, how its backend was found:
// `TABLE_STEADY`, `CT_HIT`, `CT_MISS_SYN`, `CT_MISS_NON_SYN`, `SLOT_PREVIOUS`,
// `RESCHEDULED` or `ICMP_RELAYED`.

/// Every packet the program sees.
pub const STAT_RX_PACKETS: u32 = 0;
/// Passed: not IPv4/IPv6 (ARP, LLDP, ...).
pub const STAT_PASS_NOT_IP: u32 = 1;
/// Passed: IP, but no service matches (destination, port, protocol).
pub const STAT_PASS_NOT_VIP: u32 = 2;
/// Passed: Ethernet or VLAN header truncated.
pub const STAT_PARSE_L2: u32 = 3;
/// Passed: IPv4/IPv6 header truncated or malformed (bad version, IHL, length), or an IPv6
/// extension-header chain longer than the program walks.
pub const STAT_PARSE_L3: u32 = 4;
/// Passed: TCP/UDP/ICMP header truncated.
pub const STAT_PARSE_L4: u32 = 5;
/// Passed: an IP fragment (only the first carries ports; fragments are not balanced).
pub const STAT_FRAGMENT: u32 = 6;
/// Dropped: the service's table slot holds no backend (nothing up).
pub const STAT_NO_BACKEND: u32 = 7;
/// An established flow found in conntrack.
pub const STAT_CT_HIT: u32 = 8;
/// A TCP SYN on a changed slot: placed through the table and recorded (a new connection,
/// or a reused 5-tuple). On a settled slot a SYN counts as `TABLE_STEADY`.
pub const STAT_CT_MISS_SYN: u32 = 9;
/// Not a SYN and not in conntrack, placed through the table: a UDP flow's first packet
/// (UDP flows are always tracked), or a TCP packet on a changed slot whose previous backend
/// is unknown or the slot's own.
pub const STAT_CT_MISS_NON_SYN: u32 = 10;
/// A conntrack entry whose backend is down or gone, or a TCP packet of a flow older than
/// its slot's change whose previous backend is: placed again through the table.
pub const STAT_RESCHEDULED: u32 = 11;
/// Forwarded to a backend (XDP_TX), including relayed ICMP errors.
pub const STAT_FORWARDED: u32 = 12;
/// An ICMP/ICMPv6 error about a VIP flow, relayed to the backend that owns the flow.
pub const STAT_ICMP_RELAYED: u32 = 13;
/// Too big to encapsulate: answered with ICMP frag-needed / packet-too-big.
pub const STAT_TOO_BIG: u32 = 14;
/// Dropped: a head/tail adjustment failed (no headroom) or an internal inconsistency.
pub const STAT_DROP_INTERNAL: u32 = 15;
/// Dropped: the service's table slot names a backend id whose BACKENDS entry is cleared
/// (or out of range), or the service's table lies past the end of TABLES. User space writes a backend before any table names it and clears it
/// only after none does, so this is a user-space bug or a map written behind its back,
/// never "nothing is up" (that is `STAT_NO_BACKEND`).
pub const STAT_DROP_STALE_BACKEND: u32 = 16;
/// Dropped: a VIP packet whose IP length fields disagree with its headers: an IPv4 total
/// length or IPv6 payload length too short for the transport header, or an IPv6 payload
/// length of zero (a jumbogram; RFC 791, RFC 8200, RFC 2675).
pub const STAT_DROP_BAD_LENGTH: u32 = 17;
/// Dropped: a VIP packet whose IPv4 header checksum is wrong (RFC 791, RFC 1812 5.2.2).
pub const STAT_DROP_IPV4_CHECKSUM: u32 = 18;
/// Dropped: a VIP packet with malformed IPv4 options (RFC 791: an option running past the
/// header, or a length below 2).
pub const STAT_DROP_IPV4_OPTIONS: u32 = 19;
/// Dropped: a VIP packet that asks to be source-routed: IPv4 LSRR/SSRR options, an IPv6
/// routing header with segments left, or a type 0 routing header (RFC 7126, RFC 5095).
pub const STAT_DROP_SOURCE_ROUTE: u32 = 20;
/// Dropped: a VIP packet whose IPv6 hop-by-hop header is not the first (RFC 8200 4.1).
pub const STAT_DROP_IPV6_EXT_ORDER: u32 = 21;
/// Dropped: a VIP TCP segment whose data offset is below 5 or runs past the packet
/// (RFC 9293 3.1).
pub const STAT_DROP_TCP_OFFSET: u32 = 22;
/// Dropped: a VIP UDP datagram whose length field disagrees with the IP length (RFC 768).
pub const STAT_DROP_UDP_LENGTH: u32 = 23;
/// Dropped: a VIP UDP datagram over IPv6 with checksum zero (RFC 8200 8.1).
pub const STAT_DROP_UDP_ZERO_CHECKSUM: u32 = 24;
/// Dropped: a VIP packet from a source no one may use: IPv4 0/8, 127/8, multicast,
/// reserved and broadcast; IPv6 unspecified, loopback, multicast, IPv4-mapped
/// (RFC 1812 5.3.7, RFC 4291 2.5.2-2.5.5, RFC 6890).
pub const STAT_DROP_MARTIAN_SOURCE: u32 = 25;
/// Dropped: an ICMP/ICMPv6 error to a VIP whose ICMP checksum is wrong, or too long to
/// check (over 1240 bytes of ICMP: no error needs more, RFC 4443 2.4), so it is not
/// relayed to a backend (RFC 792, RFC 4443 2.3).
pub const STAT_DROP_ICMP_CHECKSUM: u32 = 26;
/// Passed untouched: a frame not addressed to one of this host's MACs (broadcast,
/// multicast, or another host's: flooded by a switch, or seen in promiscuous mode), or
/// from a multicast source MAC (IEEE 802.3: no station sends from a group address).
pub const STAT_PASS_NOT_OUR_MAC: u32 = 27;
/// A packet placed by a settled table slot (one whose backend has not changed while flows
/// on it may still live): the table's answer, with no conntrack read or write.
pub const STAT_TABLE_STEADY: u32 = 28;
/// A TCP packet with no conntrack entry on a changed slot, sent to the slot's previous
/// backend (its flow began before the change) and recorded.
pub const STAT_SLOT_PREVIOUS: u32 = 29;
/// A new flow placed by the table without a conntrack entry, because this CPU inserted more
/// than `Settings::flood_window_limit` entries in the current flood window (the flood
/// guard: established flows keep their entries; docs/datapath.md).
pub const STAT_FLOOD_BYPASS: u32 = 30;
/// Dropped: a TCP SYN from a source prefix over its service's new-flow limit.
pub const STAT_DROP_LIMIT_NEW_FLOWS: u32 = 31;
/// Dropped: a packet from a source prefix over its service's packet limit.
pub const STAT_DROP_LIMIT_PACKETS: u32 = 32;
/// Forwarded, in monitor mode, although its source is over the new-flow limit (enforce
/// mode would have counted it as `drop_limit_new_flows`). The monitor counters are the drop
/// counters plus 2.
pub const STAT_MONITOR_LIMIT_NEW_FLOWS: u32 = 33;
/// Forwarded, in monitor mode, although its source is over the packet limit.
pub const STAT_MONITOR_LIMIT_PACKETS: u32 = 34;
/// A packet over a limit from an allowlisted source: forwarded.
pub const STAT_LIMIT_ALLOWLISTED: u32 = 35;
/// A full-NAT mapping made (a TCP SYN or a UDP flow's first datagram); the packet is then
/// forwarded (`STAT_FORWARDED`).
pub const STAT_NAT_NEW: u32 = 36;
/// Sent: a backend's answer to a full-NAT flow, rewritten to the client.
pub const STAT_NAT_REPLIED: u32 = 37;
/// Dropped: a TCP segment other than a SYN, for a full-NAT service, with no mapping (it
/// never makes one).
pub const STAT_DROP_NAT_NO_MAPPING: u32 = 38;
/// Dropped: no free SNAT port for a new full-NAT flow (every port tried was taken).
pub const STAT_DROP_NAT_EXHAUSTED: u32 = 39;
/// Dropped: a packet to a SNAT address and a port in the SNAT range with no mapping (the
/// host would answer it with a reset).
pub const STAT_DROP_NAT_REPLY_MISS: u32 = 40;
/// Dropped: a full-NAT packet the program does not translate (an ICMP error, for now), or a
/// full-NAT service whose family has no SNAT address.
pub const STAT_DROP_NAT_UNTRANSLATED: u32 = 41;
/// Dropped: a backend's reset to a full-NAT flow's SYN, kept from the client so that its
/// SYN retransmission can be placed on another backend (`STAT_NAT_RETRIED`).
pub const STAT_NAT_RESET_HIDDEN: u32 = 42;
/// A full-NAT SYN placed on another backend than its flow's first one, which refused it or
/// did not answer it.
pub const STAT_NAT_RETRIED: u32 = 43;
/// One direction of a full-NAT flow was found missing (its LRU entry evicted, or removed)
/// by a packet of the other, which wrote it again; checked once a second per flow.
pub const STAT_NAT_HALF_LOST: u32 = 44;
/// Dropped: a new full-NAT flow past the full-NAT flood guard's rate (see
/// `Settings::nat_flood_window_limit`).
pub const STAT_DROP_NAT_FLOOD: u32 = 45;
/// Number of global counters; the size of STATS.
pub const STAT_COUNT: u32 = 46;

/// Names of the global counters, indexed like the `STAT_*` consts.
pub const STAT_NAMES: [&str; STAT_COUNT as usize] = [
    "rx_packets",
    "pass_not_ip",
    "pass_not_vip",
    "parse_error_l2",
    "parse_error_l3",
    "parse_error_l4",
    "fragment",
    "no_backend",
    "conntrack_hit",
    "conntrack_miss_syn",
    "conntrack_miss_non_syn",
    "rescheduled",
    "forwarded",
    "icmp_relayed",
    "too_big",
    "drop_internal",
    "drop_stale_backend",
    "drop_bad_length",
    "drop_ipv4_checksum",
    "drop_ipv4_options",
    "drop_source_route",
    "drop_ipv6_ext_order",
    "drop_tcp_offset",
    "drop_udp_length",
    "drop_udp_zero_checksum",
    "drop_martian_source",
    "drop_icmp_checksum",
    "pass_not_our_mac",
    "table_steady",
    "slot_previous",
    "flood_bypass",
    "drop_limit_new_flows",
    "drop_limit_packets",
    "monitor_limit_new_flows",
    "monitor_limit_packets",
    "limit_allowlisted",
    "nat_new",
    "nat_replied",
    "drop_nat_no_mapping",
    "drop_nat_exhausted",
    "drop_nat_reply_miss",
    "drop_nat_untranslated",
    "nat_reset_hidden",
    "nat_retried",
    "nat_half_lost",
    "drop_nat_flood",
];

// ---------------------------------------------------------------------------------------
// Packet checks an operator can turn off (bits of `Settings::checks_off`), each with the
// counter it moves. A packet to a VIP that fails a check that is on is dropped.

/// IP length fields against the headers, TCP data offset, UDP length.
pub const CHECK_LENGTHS: u32 = 1 << 0;
pub const CHECK_IPV4_CHECKSUM: u32 = 1 << 1;
pub const CHECK_IPV4_OPTIONS: u32 = 1 << 2;
pub const CHECK_SOURCE_ROUTE: u32 = 1 << 3;
pub const CHECK_IPV6_EXT_ORDER: u32 = 1 << 4;
pub const CHECK_UDP_ZERO_CHECKSUM: u32 = 1 << 5;
pub const CHECK_MARTIAN_SOURCE: u32 = 1 << 6;
pub const CHECK_ICMP_CHECKSUM: u32 = 1 << 7;
/// The frame's MACs (`STAT_PASS_NOT_OUR_MAC`): a pass, not a drop.
pub const CHECK_MAC: u32 = 1 << 8;
/// The checks, with their config names, in bit order.
pub const CHECK_NAMES: [(u32, &str); 9] = [
    (CHECK_LENGTHS, "lengths"),
    (CHECK_IPV4_CHECKSUM, "ipv4_checksum"),
    (CHECK_IPV4_OPTIONS, "ipv4_options"),
    (CHECK_SOURCE_ROUTE, "source_route"),
    (CHECK_IPV6_EXT_ORDER, "ipv6_extension_order"),
    (CHECK_UDP_ZERO_CHECKSUM, "udp6_zero_checksum"),
    (CHECK_MARTIAN_SOURCE, "martian_source"),
    (CHECK_ICMP_CHECKSUM, "icmp_checksum"),
    (CHECK_MAC, "mac"),
];
/// MACs of this host in SETTINGS: the interface's own and those the operator adds.
pub const MAX_LOCAL_MACS: usize = 4;

// ---------------------------------------------------------------------------------------
// Values of small fields

/// `family` values.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;
/// `proto` values (IANA protocol numbers).
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
/// `ServiceValue::mode`: rewrite MACs, backends answer directly (direct server return).
pub const MODE_L2DSR: u8 = 1;
/// `ServiceValue::mode`: encapsulate in IPv4 (IPv4 VIP) or IPv6 (IPv6 VIP) to the backend.
pub const MODE_IPIP: u8 = 2;
/// `ServiceValue::mode`: full-NAT: both addresses rewritten (the SNAT pool's towards the
/// backend), answers come back through the balancer.
pub const MODE_FULLNAT: u8 = 3;
/// `ServiceValue::protect`: no source limits (LIMITS is not read).
pub const PROTECT_OFF: u8 = 0;
/// `ServiceValue::protect`: limits are computed and counted (`monitor_limit_*`), nothing is
/// dropped.
pub const PROTECT_MONITOR: u8 = 1;
/// `ServiceValue::protect`: packets over a limit are dropped (`drop_limit_*`).
pub const PROTECT_ENFORCE: u8 = 2;
/// `Backend::state`: takes new flows (only such backends appear in tables) and keeps its own.
pub const BACKEND_UP: u8 = 1;
/// `Backend::state`: keeps its established flows, takes no new ones (not in any table).
pub const BACKEND_DRAIN: u8 = 2;
/// `Backend::state`: takes nothing; flows pinned to it are placed again through the table.
pub const BACKEND_DOWN: u8 = 0;

/// Bytes that IPIP encapsulation adds for an IPv4 VIP (outer IPv4 header).
pub const ENCAP_V4_OVERHEAD: u32 = 20;
/// Bytes that encapsulation adds for an IPv6 VIP (outer IPv6 header).
pub const ENCAP_V6_OVERHEAD: u32 = 40;

// ---------------------------------------------------------------------------------------
// Map types

/// Most entries of LOCAL_ADDRS: every VIP and this host's addresses.
pub const MAX_LOCAL_ADDRS: u32 = 4096;
/// `LOCAL_ADDRS` values: why the address is local.
pub const LOCAL_VIP: u8 = 1;
pub const LOCAL_HOST: u8 = 2;
/// A bit of LOCAL_ADDRS's value: the address is a SNAT address (answers to full-NAT flows
/// arrive to it), besides being a host address or not.
pub const LOCAL_SNAT: u8 = 4;

/// Words of `LocalFilter`: 65,536 bits, so a few thousand addresses set under one bit in
/// ten, and a handful almost none.
pub const LOCAL_FILTER_WORDS: usize = 1024;

/// LOCAL_FILTER's value (see `MAP_LOCAL_FILTER`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalFilter {
    pub words: [u64; LOCAL_FILTER_WORDS],
}
const _: () = assert!(core::mem::size_of::<LocalFilter>() == 8192);

impl Default for LocalFilter {
    fn default() -> Self {
        LocalFilter {
            words: [0; LOCAL_FILTER_WORDS],
        }
    }
}

impl LocalFilter {
    /// Sets the bit of an address (as LOCAL_ADDRS keys it).
    pub fn insert(&mut self, addr: &[u8; 16], family: u8) {
        let bit = local_filter_bit(addr, family);
        self.words[(bit >> 6) as usize % LOCAL_FILTER_WORDS] |= 1 << (bit & 63);
    }

    /// Whether the bit of an address is set: LOCAL_ADDRS may hold it.
    #[inline(always)]
    pub fn may_hold(&self, addr: &[u8; 16], family: u8) -> bool {
        let bit = local_filter_bit(addr, family);
        self.words[(bit >> 6) as usize % LOCAL_FILTER_WORDS] & (1 << (bit & 63)) != 0
    }
}

/// An address's bit in `LocalFilter` (0..65536): its four words folded, then a
/// multiplicative hash's top 16 bits.
#[inline(always)]
pub fn local_filter_bit(addr: &[u8; 16], family: u8) -> u32 {
    let w = |i: usize| u32::from_le_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    let folded = w(0) ^ w(4).rotate_left(7) ^ w(8).rotate_left(14) ^ w(12).rotate_left(21);
    (folded ^ u32::from(family)).wrapping_mul(0x9E37_79B1) >> 16
}

/// An address of this balancer (a VIP or the host's own), the key of LOCAL_ADDRS.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LocalKey {
    /// Network order (IPv4 in the first 4 bytes, the rest zero).
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<LocalKey>() == 20);

/// A service: VIP, port and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ServiceKey {
    /// The VIP, network order; an IPv4 VIP fills the first 4 bytes, the rest are zero.
    pub addr: [u8; 16],
    pub port_be: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    /// Index into SERVICE_STATS and of the service's table regions.
    pub id: u32,
    /// First slot of the active table in TABLES. User space fills the inactive region,
    /// then replaces this value: a packet sees either the old table or the new one.
    pub table_offset: u32,
    /// Slots in the active table (a prime, Maglev's M).
    pub table_size: u32,
    /// `MODE_L2DSR` or `MODE_IPIP`.
    pub mode: u8,
    /// `PROTECT_*`: whether LIMITS[id] applies.
    pub protect: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 16);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    /// The backend's address, network order (IPv4 in the first 4 bytes); the IPIP outer
    /// destination.
    pub addr: [u8; 16],
    /// The L2 next hop towards the backend: its own MAC on the same segment, else the
    /// router's.
    pub mac: [u8; 6],
    /// `FAMILY_V4` / `FAMILY_V6`; 0 marks an unused slot.
    pub family: u8,
    /// `BACKEND_UP`, `BACKEND_DRAIN` or `BACKEND_DOWN`.
    pub state: u8,
    /// Id of the service it belongs to (ids are per service and backend address). The
    /// kernel ignores it; a restarted agent reads it to adopt pinned maps.
    pub service: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 32);

/// Buckets of SERVICE_INDEX (a power of two): at most `MAX_SERVICES` are used, so probes
/// rarely go past the first.
pub const SERVICE_BUCKETS: u32 = 4096;
/// Buckets the program looks at from a key's home bucket before giving up; user space
/// places every service within them.
pub const SERVICE_PROBES: u32 = 8;
/// `ServiceSlot::key.family` of a bucket whose service was removed: probing goes on past
/// it (a later bucket may hold a key whose home is earlier), and a new service may reuse it.
pub const SERVICE_TOMBSTONE: u8 = 0xFF;

/// SERVICE_INDEX's value: a service where the program looks for it - its home bucket
/// ([`service_bucket`]) or one of the next `SERVICE_PROBES - 1` - without a hash map's
/// hashing, locking and key copy (a third of the cost of an established packet went
/// there). `key.family` 0 marks an empty bucket (probing stops there).
///
/// User space writes it in place, in an order a reader can follow: a new service's fields
/// first and `key.family` last; a table flip as one 8-byte store of `table`; a removal by
/// setting `key.family` to `SERVICE_TOMBSTONE`. A packet racing a change sees the service
/// before or after it (on a weakly ordered CPU, a packet racing an addition may miss the
/// service and pass to the host).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceSlot {
    pub key: ServiceKey,
    /// `ServiceValue::id`.
    pub id: u32,
    /// `table_offset | table_size << 32`: one word, so that a table flip (and a resize)
    /// is one store a reader sees whole.
    pub table: u64,
    /// `ServiceValue::mode`.
    pub mode: u8,
    /// `ServiceValue::protect`.
    pub protect: u8,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<ServiceSlot>() == 40);

/// A service key's home bucket in SERVICE_INDEX: each word of the key times its own odd
/// constant, summed, and the sum's top bits (multiplicative hashing: a product's top bits
/// depend on all of the multiplicand's bits). The products do not wait on each other, so
/// the program's lookup does not wait on a chain of them.
#[inline(always)]
pub fn service_bucket(key: &ServiceKey) -> u32 {
    let w = |i: usize| {
        u64::from_le_bytes([
            key.addr[i],
            key.addr[i + 1],
            key.addr[i + 2],
            key.addr[i + 3],
            key.addr[i + 4],
            key.addr[i + 5],
            key.addr[i + 6],
            key.addr[i + 7],
        ])
    };
    let tail = u64::from(key.port_be) | u64::from(key.proto) << 16 | u64::from(key.family) << 24;
    let h = w(0)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(w(8).wrapping_mul(0xc2b2_ae3d_27d4_eb4f))
        .wrapping_add(tail.wrapping_mul(0x1656_67b1_9e37_79f9));
    (h >> (64 - SERVICE_BUCKETS.ilog2())) as u32
}
const _: () = assert!(SERVICE_BUCKETS.is_power_of_two());

/// Slots of one `SlotLine`.
pub const SLOTS_PER_LINE: u32 = 32;
/// A slot word's backend id (`MAX_BACKENDS` fits).
pub const SLOT_ID: u16 = 0x3FFF;
/// A slot word's mark: a packet used this settled slot.
pub const SLOT_USED: u16 = 0x4000;
/// A slot word's mark: the slot is changed; `SLOT_STATE` holds its previous backend.
pub const SLOT_CHANGED: u16 = 0x8000;
const _: () = assert!(MAX_BACKENDS <= SLOT_ID as u32 + 1);

/// `SlotState::prev` of a changed slot whose previous backend is not known (the table was
/// resized, so slots do not correspond): flows without an entry take the slot's backend.
/// No backend has this id.
pub const SLOT_PREV_UNKNOWN: u32 = 0xFFFF;
const _: () = assert!(MAX_BACKENDS <= SLOT_PREV_UNKNOWN);

/// TABLES' value: the words of 32 consecutive slots, one cache line. Slot `i` of TABLES is
/// word `i % 32` of line `i / 32`, so in memory the table is one array of 16-bit words: a
/// 65,537-slot table is 128 KiB, which stays in a core's cache where a map of 8-byte values
/// (an array map rounds each value up to 8 bytes) would not. A word is the backend id
/// (`SLOT_ID`; 0: none) and the marks `SLOT_USED` and `SLOT_CHANGED`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SlotLine {
    pub words: [u16; SLOTS_PER_LINE as usize],
}
const _: () = assert!(core::mem::size_of::<SlotLine>() == 64);

/// SLOT_STATE's value, per slot (indexed like TABLES' slots): read only for a slot whose
/// word is `SLOT_CHANGED`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SlotState {
    /// The backend of the flows older than the slot's change (`SLOT_PREV_UNKNOWN`: not
    /// known).
    pub prev: u32,
    /// The last time (seconds of CLOCK_MONOTONIC, as `bpf_ktime_get_coarse_ns`) a packet
    /// on this slot went to a backend other than its own, or the change itself.
    pub seen: u32,
}
const _: () = assert!(core::mem::size_of::<SlotState>() == 8);

/// A Maglev table slot as user space sees it, stored as a word in TABLES and, while
/// changed, a `SlotState`.
///
/// A slot is *settled* while `prev` is 0: every flow on it belongs to its backend, and a
/// packet takes the table's answer without touching conntrack (the program marks the slot
/// used, `SLOT_USED`, the first time). When user space changes the backend of a used slot
/// it keeps the old one in `prev` (the oldest, if the slot was already changed) and sets
/// `seen` to the time of the change: TCP packets on a changed slot go through conntrack,
/// and one that has no entry belongs to a flow that began before the change, so it follows
/// `prev` while that backend still serves. The program refreshes `seen` whenever it sends
/// a packet to a backend other than the slot's; user space settles the slot (in place)
/// once no such packet has been seen for the idle timeout. A slot no packet used stays
/// settled through a change: no flow can be on it (a fresh balancer's backends coming up
/// one by one change nothing). docs/datapath.md has the whole reasoning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Slot {
    /// The backend new flows go to (0: none).
    pub cur: u32,
    /// 0: settled; else the backend of older flows (or `SLOT_PREV_UNKNOWN`).
    pub prev: u32,
    /// While changed: `SlotState::seen`. While settled: 1 if a packet used the slot, else 0.
    pub seen: u32,
}

impl Slot {
    pub const fn new(cur: u32, prev: u32, seen: u32) -> Slot {
        Slot { cur, prev, seen }
    }

    /// A settled slot naming `cur`, not used yet.
    pub const fn settled(cur: u32) -> Slot {
        Slot::new(cur, 0, 0)
    }

    /// A settled slot naming `cur` that flows may be using.
    pub const fn used(cur: u32) -> Slot {
        Slot::new(cur, 0, 1)
    }

    pub const fn cur(&self) -> u32 {
        self.cur
    }

    pub const fn prev(&self) -> u32 {
        self.prev
    }

    /// Its TABLES word and SLOT_STATE value.
    pub const fn encode(self) -> (u16, SlotState) {
        let id = (self.cur as u16) & SLOT_ID;
        if self.prev != 0 {
            let state = SlotState {
                prev: self.prev,
                seen: self.seen,
            };
            (id | SLOT_CHANGED, state)
        } else if self.seen != 0 {
            (id | SLOT_USED, SlotState { prev: 0, seen: 0 })
        } else {
            (id, SlotState { prev: 0, seen: 0 })
        }
    }

    /// The slot a TABLES word and its SLOT_STATE value describe.
    pub const fn decode(word: u16, state: SlotState) -> Slot {
        let cur = (word & SLOT_ID) as u32;
        if word & SLOT_CHANGED != 0 {
            Slot::new(cur, state.prev, state.seen)
        } else if word & SLOT_USED != 0 {
            Slot::used(cur)
        } else {
            Slot::settled(cur)
        }
    }
}

/// A flow's 5-tuple as the client sent it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FlowKey {
    /// Client address, network order (IPv4 in the first 4 bytes).
    pub src: [u8; 16],
    /// VIP, network order (IPv4 in the first 4 bytes).
    pub dst: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    /// Backend id the flow is pinned to.
    pub backend: u32,
    /// Reserved (full-NAT will keep its source port here); zero.
    pub _reserved: u32,
}
const _: () = assert!(core::mem::size_of::<FlowValue>() == 8);

/// Per-service and per-backend traffic, summed over CPUs by user space.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TrafficStats {
    pub packets: u64,
    /// Frame bytes as received (before any encapsulation).
    pub bytes: u64,
    /// Flows placed through the table (SYNs, conntrack misses, rescheduled flows).
    pub new_flows: u64,
}
const _: () = assert!(core::mem::size_of::<TrafficStats>() == 24);

/// Data-plane settings (SETTINGS[0]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Settings {
    /// Largest IP packet (L3 bytes) that may leave after encapsulation; larger ones are
    /// answered with ICMP frag-needed / packet-too-big. 0 disables the check.
    pub mtu: u32,
    /// Outer source for IPv4 encapsulation, network order. Its low `ipip_src_v4_vary_bits`
    /// bits are replaced by the flow hash so backends spread flows over receive queues.
    pub ipip_src_v4: [u8; 4],
    /// Outer source for IPv6 encapsulation; per-flow variety comes from the flow label.
    pub ipip_src_v6: [u8; 16],
    /// 0..=16.
    pub ipip_src_v4_vary_bits: u8,
    pub _pad: [u8; 3],
    /// `CHECK_*` bits of packet checks the operator turned off (0: every check on).
    pub checks_off: u32,
    /// The MACs frames to VIPs must be addressed to; all-zero entries are unused, and with
    /// none set the destination MAC is not checked.
    pub macs: [[u8; 6]; MAX_LOCAL_MACS],
    /// The flood guard: conntrack inserts one CPU may make per `FLOOD_WINDOW_SHIFT` window
    /// before new flows are placed without an entry (`STAT_FLOOD_BYPASS`). 0: no guard.
    pub flood_window_limit: u32,
    /// The same for full-NAT mappings: past it a new full-NAT flow gets none and is dropped
    /// (`STAT_DROP_NAT_FLOOD`), so a flood cannot evict established flows' mappings. 0: no
    /// guard.
    pub nat_flood_window_limit: u32,
}
const _: () = assert!(core::mem::size_of::<Settings>() == 64);
// The program compares MACs as 2-byte words: each must start at an even offset.
const _: () = assert!(core::mem::offset_of!(Settings, macs) % 2 == 0);

/// The flood guard's window: `bpf_ktime_get_coarse_ns() >> FLOOD_WINDOW_SHIFT`, about 1.07 s:
/// long enough that a legitimate burst of new flows (a client opening thousands of UDP
/// flows at once) is averaged over a second rather than cut off after a tenth of one.
pub const FLOOD_WINDOW_SHIFT: u32 = 30;

/// The inserts per window that a rate of `per_second` new flows allows (at least 1 for
/// any non-zero rate).
pub const fn flood_window_limit(per_second: u32) -> u32 {
    if per_second == 0 {
        return 0;
    }
    let w = (per_second as u64 * (1u64 << FLOOD_WINDOW_SHIFT)) / 1_000_000_000;
    if w == 0 {
        1
    } else if w > u32::MAX as u64 {
        u32::MAX
    } else {
        w as u32
    }
}

/// LIMITS' value: a service's source limits as GCRA parameters (the generic cell rate
/// algorithm, a token bucket kept as one time per bucket): a source may send while its
/// theoretical arrival time, advanced by `*_interval_ns` per packet, stays within
/// `*_tolerance_ns` (interval x burst) of now. An interval of 0 means no limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Limits {
    /// 1e9 / new flows per second (TCP SYNs).
    pub new_interval_ns: u64,
    /// `new_interval_ns` x the new-flow burst.
    pub new_tolerance_ns: u64,
    /// 1e9 / packets per second.
    pub pkt_interval_ns: u64,
    /// `pkt_interval_ns` x the packet burst.
    pub pkt_tolerance_ns: u64,
    /// Source prefix lengths a bucket covers (IPv4 /32 and IPv6 /64 by default).
    pub prefix_v4: u8,
    pub prefix_v6: u8,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<Limits>() == 40);

/// SOURCES' and LIMITED's key: a source prefix (the address masked to the service's
/// prefix length) and the service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SourceKey {
    /// Network order, bits past the prefix zero (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    pub family: u8,
    /// The prefix length the address was masked to.
    pub prefix: u8,
    pub _pad: [u8; 2],
    pub service: u32,
}
const _: () = assert!(core::mem::size_of::<SourceKey>() == 24);

impl SourceKey {
    /// The key of `addr` masked to `prefix` bits (from the first byte, for both families).
    /// Two 64-bit masks, so that the program takes a handful of branches, not one a byte.
    #[inline(always)]
    pub fn new(addr: &[u8; 16], family: u8, prefix: u8, service: u32) -> SourceKey {
        let p = prefix as u32;
        let hi = u64::from_be_bytes([
            addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
        ]);
        let lo = u64::from_be_bytes([
            addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
        ]);
        let mask = |bits: u32| {
            if bits == 0 {
                0
            } else if bits >= 64 {
                u64::MAX
            } else {
                u64::MAX << (64 - bits)
            }
        };
        let hi = hi & mask(p);
        let lo = lo & mask(p.saturating_sub(64));
        let mut out = [0u8; 16];
        let (a, b) = out.split_at_mut(8);
        a.copy_from_slice(&hi.to_be_bytes());
        b.copy_from_slice(&lo.to_be_bytes());
        SourceKey {
            addr: out,
            family,
            prefix,
            _pad: [0; 2],
            service,
        }
    }
}

/// SOURCES' value: one source prefix's buckets for one service, and what it sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SourceBucket {
    /// Theoretical arrival times (ns, `bpf_ktime_get_coarse_ns`) of the new-flow and
    /// packet buckets.
    pub new_tat: u64,
    pub pkt_tat: u64,
    /// Packets and new flows (TCP SYNs) seen from the prefix, refused ones included.
    pub packets: u64,
    pub new_flows: u64,
    /// Packets refused (or, in monitor mode, that would have been).
    pub refused: u64,
    /// The second of the last refusal (0: never).
    pub last_refused: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<SourceBucket>() == 48);

/// ALLOWLIST's key data (an LPM trie key is a prefix length and this): the family byte,
/// then the address, so an IPv4 /24 is a prefix length of 8 + 24 bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct AllowAddr {
    pub family: u8,
    pub addr: [u8; 16],
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<AllowAddr>() == 20);

/// Most entries of ALLOWLIST.
pub const MAX_ALLOWLIST: u32 = 4096;
/// Most entries of LIMITED.
pub const MAX_LIMITED: u32 = 4096;
/// Default SOURCES capacity; the agent sets the real one at load time.
pub const DEFAULT_SOURCES_SIZE: u32 = 1 << 16;

/// PROTECT_STATS' value, per service, summed over CPUs by user space. Its fields are in the
/// order of `STAT_DROP_LIMIT_NEW_FLOWS ..= STAT_MONITOR_LIMIT_PACKETS`, which the program
/// counts by index.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ProtectStats {
    /// SYNs and packets dropped over a limit.
    pub drop_new_flows: u64,
    pub drop_packets: u64,
    /// In monitor mode: SYNs and packets over a limit, forwarded.
    pub monitor_new_flows: u64,
    pub monitor_packets: u64,
}
const _: () = assert!(core::mem::size_of::<ProtectStats>() == 32);

/// The flood guard's per-CPU state (not pinned: it holds nothing between windows).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FloodWindow {
    /// `bpf_ktime_get_coarse_ns() >> FLOOD_WINDOW_SHIFT` of the window counted.
    pub window: u32,
    /// Conntrack inserts (and bypasses) in it.
    pub inserts: u32,
}
const _: () = assert!(core::mem::size_of::<FloodWindow>() == 8);

/// META[0]: the layout and the load-time sizes the maps were created with.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Meta {
    /// `META_MAGIC` once written (a fresh map reads zero).
    pub magic: u32,
    /// `LAYOUT_VERSION` of the agent that created the maps.
    pub layout_version: u32,
    pub conntrack_size: u32,
    pub max_services: u32,
    pub max_table_size: u32,
    /// `META_MODE_*`: how the pinned link was attached (0 before it is).
    pub attached_mode: u32,
    pub sources_size: u32,
    pub nat_size: u32,
}
const _: () = assert!(core::mem::size_of::<Meta>() == 32);

/// Default NAT capacity (entries: two per full-NAT flow); the agent sets the real one at
/// load time (`[dataplane] nat_size`).
pub const DEFAULT_NAT_SIZE: u32 = 1 << 18;
/// SNAT addresses per family.
pub const MAX_SNAT_ADDRS: usize = 8;
/// SNAT ports tried for a new flow: consecutive ones from a random start, so a range of
/// up to this many ports is searched whole.
pub const NAT_PORT_TRIES: u32 = 32;

/// NAT_POOL[0]: the addresses and ports this balancer rewrites full-NAT flows' sources to.
/// No other balancer may use them: answers to them must come back here.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatPool {
    /// Network order; the first `v4_count` are used.
    pub v4: [[u8; 4]; MAX_SNAT_ADDRS],
    pub v6: [[u8; 16]; MAX_SNAT_ADDRS],
    pub v4_count: u8,
    pub v6_count: u8,
    pub _pad: [u8; 2],
    /// The port range, inclusive, host order; `port_min` <= `port_max` when any address is
    /// set.
    pub port_min: u16,
    pub port_max: u16,
}
const _: () = assert!(core::mem::size_of::<NatPool>() == 168);

/// `NatValue::dir`: a client's packet, towards the backend.
pub const NAT_DIR_FORWARD: u8 = 1;
/// `NatValue::dir`: a backend's answer, towards the client.
pub const NAT_DIR_REPLY: u8 = 2;
/// `NatValue::state`: a TCP mapping whose SYN was sent and not yet answered.
pub const NAT_TCP_SYN: u8 = 1;
/// `NatValue::state`: the backend answered the SYN.
pub const NAT_TCP_ESTABLISHED: u8 = 2;
/// `NatValue::state`: a FIN was seen.
pub const NAT_TCP_CLOSING: u8 = 3;
/// `NatValue::state`: a UDP mapping.
pub const NAT_UDP: u8 = 4;
/// `NatValue::state`, forward entries only: the backend answered the SYN with a reset (or
/// left it unanswered); the entry only remembers which backend the retransmitted SYN must
/// avoid. Its answer entry is gone.
pub const NAT_TCP_REFUSED: u8 = 5;
/// `NatValue::state`: a reset was seen (no TIME_WAIT follows one, so its port is free
/// sooner than after a FIN).
pub const NAT_TCP_RESET: u8 = 6;
/// Seconds a mapping lives without packets, by state (`NAT_TCP_SYN` ..= `NAT_TCP_RESET`):
/// once past it, its SNAT port may be given to a new flow.
pub const NAT_TIMEOUTS: [u32; 6] = [30, 7200, 30, 120, 30, 10];
/// `NatValue::flags`: the mapping is a retry (its first backend refused the SYN); a reset
/// from this backend reaches the client.
pub const NAT_RETRY: u8 = 1;
/// Table slots after a flow's own that a retried SYN may take, looking for another backend.
pub const NAT_RETRY_SLOTS: u32 = 8;

/// PASSIVE[backend id], per CPU: the SYNs of full-NAT flows the backend answered, and those
/// it refused with a reset or left unanswered until the client sent the SYN again. The
/// agent turns them into passive health results.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PassiveStats {
    pub answered: u64,
    pub refused: u64,
    pub unanswered: u64,
}
const _: () = assert!(core::mem::size_of::<PassiveStats>() == 24);

/// How a mapping rewrites a packet: both directions have the same shape, the packet's new
/// source and destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatValue {
    /// Forward: the SNAT address; reply: the VIP. Network order.
    pub src: [u8; 16],
    /// Forward: the backend; reply: the client.
    pub dst: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    /// The backend id the flow is placed on.
    pub backend: u32,
    /// Reply: the MAC the client's first packet came from (the next hop back); forward:
    /// zero (the backend's next hop is in BACKENDS).
    pub mac: [u8; 6],
    /// `NAT_TCP_*` / `NAT_UDP`.
    pub state: u8,
    /// `NAT_DIR_*`.
    pub dir: u8,
    /// `bpf_ktime_get_coarse_ns` in seconds at the last packet.
    pub seen: u32,
    /// `NAT_RETRY`.
    pub flags: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<NatValue>() == 56);

impl NatValue {
    /// Whether the mapping has outlived its state's timeout at second `now`.
    pub fn expired(&self, now: u32) -> bool {
        let i = (self.state as usize).wrapping_sub(1);
        let timeout = if i < NAT_TIMEOUTS.len() {
            NAT_TIMEOUTS[i]
        } else {
            0
        };
        now.wrapping_sub(self.seen) > timeout
    }
}

/// `Meta::attached_mode` values.
pub const META_MODE_NATIVE: u32 = 1;
pub const META_MODE_GENERIC: u32 = 2;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), Copy, with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowValue {}
    unsafe impl aya::Pod for super::TrafficStats {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::Meta {}
    unsafe impl aya::Pod for super::LocalKey {}
    unsafe impl aya::Pod for super::SlotLine {}
    unsafe impl aya::Pod for super::ServiceSlot {}
    unsafe impl aya::Pod for super::SlotState {}
    unsafe impl aya::Pod for super::LocalFilter {}
    unsafe impl aya::Pod for super::Limits {}
    unsafe impl aya::Pod for super::SourceKey {}
    unsafe impl aya::Pod for super::SourceBucket {}
    unsafe impl aya::Pod for super::AllowAddr {}
    unsafe impl aya::Pod for super::ProtectStats {}
    unsafe impl aya::Pod for super::NatPool {}
    unsafe impl aya::Pod for super::NatValue {}
    unsafe impl aya::Pod for super::PassiveStats {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::boxed::Box;

    use super::*;

    type Shape<'a> = (&'a str, Box<dyn Fn(u32) -> ServiceKey + 'a>);

    /// Places keys in SERVICE_INDEX as user space does (home bucket, then the next free
    /// one) and returns the longest probe any needed.
    fn longest_probe(keys: impl Iterator<Item = ServiceKey>) -> u32 {
        let mut used = [false; SERVICE_BUCKETS as usize];
        let mut longest = 0;
        for k in keys {
            let home = service_bucket(&k);
            let mut i = 0;
            while used[((home + i) & (SERVICE_BUCKETS - 1)) as usize] {
                i += 1;
            }
            used[((home + i) & (SERVICE_BUCKETS - 1)) as usize] = true;
            longest = longest.max(i + 1);
        }
        longest
    }

    #[test]
    fn a_full_index_of_regular_services_places_every_one_within_the_probes() {
        let v4 = |n: u32, port: u16| {
            let mut addr = [0; 16];
            addr[..4].copy_from_slice(&(0xc612_0100 + n).to_be_bytes());
            ServiceKey {
                addr,
                port_be: port.to_be(),
                proto: PROTO_TCP,
                family: FAMILY_V4,
            }
        };
        let v6 = |n: u32, port: u16| {
            let mut addr = [0; 16];
            addr[0] = 0xfd;
            addr[12..].copy_from_slice(&n.to_be_bytes());
            ServiceKey {
                addr,
                port_be: port.to_be(),
                proto: PROTO_UDP,
                family: FAMILY_V6,
            }
        };
        let shapes: [Shape; 4] = [
            (
                "one IPv4 VIP, many ports",
                Box::new(|i| v4(1, 8000 + i as u16)),
            ),
            ("many IPv4 VIPs, one port", Box::new(|i| v4(i, 443))),
            (
                "many IPv6 VIPs, two ports",
                Box::new(|i| v6(i / 2, 80 + (i % 2) as u16 * 363)),
            ),
            (
                "one IPv6 VIP, many ports",
                Box::new(|i| v6(7, 1000 + i as u16)),
            ),
        ];
        for (name, key) in shapes {
            let n = longest_probe((0..MAX_SERVICES).map(&key));
            assert!(
                n <= SERVICE_PROBES / 2,
                "{name}: a service {n} buckets from home"
            );
        }
    }
}
