//! Wire layout of the headers the programs read and write: lengths, field offsets from the
//! start of each header, and the values of the fields they test. Multi-byte fields are
//! big-endian on the wire. The TCP and UDP protocol numbers live in gateway-common, which
//! user space shares.

// Ethernet (IEEE 802.3) and one 802.1Q tag.
pub const ETH_LEN: usize = 14;
pub const ETH_ALEN: usize = 6;
pub const ETH_DST: usize = 0;
pub const ETH_SRC: usize = 6;
pub const ETH_PROTO: usize = 12;
pub const VLAN_LEN: usize = 4;
/// The ethertype after a tag, from the start of the frame.
pub const VLAN_INNER_PROTO: usize = ETH_LEN + 2;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;

// IPv4 (RFC 791).
/// Without options.
pub const IPV4_LEN: usize = 20;
/// Version (high nibble) and header length in 4-byte words (low nibble).
pub const IPV4_VER_IHL: usize = 0;
/// Version 4, IHL 5: a header without options.
pub const IPV4_VER_IHL_PLAIN: u8 = 0x45;
pub const IPV4_TOS: usize = 1;
pub const IPV4_TOT_LEN: usize = 2;
/// Flags (high 3 bits) and fragment offset.
pub const IPV4_FRAG_OFF: usize = 6;
pub const IPV4_TTL: usize = 8;
pub const IPV4_PROTO: usize = 9;
pub const IPV4_CSUM: usize = 10;
pub const IPV4_SRC: usize = 12;
pub const IPV4_DST: usize = 16;
/// Don't fragment, in the 16-bit flags/offset field.
pub const IPV4_DF: u16 = 0x4000;
/// More fragments and the fragment offset: any bit set means a fragment.
pub const IPV4_MF_OFFSET: u16 = 0x3fff;
/// Options take at most 40 bytes (IHL 15).
pub const IPV4_MAX_OPTIONS_LEN: usize = 40;
/// Option types (RFC 791): end of list, no operation, loose and strict source route.
pub const IPOPT_END: u8 = 0;
pub const IPOPT_NOP: u8 = 1;
pub const IPOPT_LSRR: u8 = 0x83;
pub const IPOPT_SSRR: u8 = 0x89;

// IPv6 (RFC 8200).
pub const IPV6_LEN: usize = 40;
/// Version (high nibble) and the traffic class's high nibble.
pub const IPV6_VER_TC: usize = 0;
/// The traffic class's low nibble (high nibble of this byte), then the flow label.
pub const IPV6_TC_FLOW: usize = 1;
pub const IPV6_PAYLOAD_LEN: usize = 4;
pub const IPV6_NEXT_HEADER: usize = 6;
pub const IPV6_HOP_LIMIT: usize = 7;
pub const IPV6_SRC: usize = 8;
pub const IPV6_DST: usize = 24;
/// An extension header: next header, then its length in 8-byte units, not counting the
/// first 8 bytes.
pub const EXT_NEXT_HEADER: usize = 0;
pub const EXT_LEN: usize = 1;
pub const EXT_UNIT: usize = 8;
pub const NH_HOP_BY_HOP: u8 = 0;
pub const NH_ROUTING: u8 = 43;
pub const NH_FRAGMENT: u8 = 44;
pub const NH_DEST_OPTS: u8 = 60;
/// Routing header (RFC 8200 4.4): its type, and the segments still to visit.
pub const RH_TYPE: usize = 2;
pub const RH_SEGMENTS_LEFT: usize = 3;
/// The deprecated type 0 routing header (RFC 5095).
pub const RH_TYPE_0: u8 = 0;
/// Fragment header (RFC 8200 4.5): 8 bytes; offset (13 bits), 2 reserved bits, M.
pub const FRAG_LEN: usize = 8;
pub const FRAG_OFF_M: usize = 2;
/// The offset and M bits: none set means an atomic fragment (RFC 6946).
pub const FRAG_OFFSET_M_MASK: u16 = 0xfff9;
/// The offset alone: zero in a first fragment.
pub const FRAG_OFFSET_MASK: u16 = 0xfff8;

// Protocol numbers (IANA), besides TCP and UDP.
pub const PROTO_ICMP: u8 = 1;
/// IPv4 in IPv4 (RFC 2003).
pub const PROTO_IPIP: u8 = 4;
/// IPv6 in IPv6 (RFC 2473).
pub const PROTO_IPV6: u8 = 41;
pub const PROTO_ICMPV6: u8 = 58;

// TCP (RFC 9293) and UDP (RFC 768): both start with the ports.
pub const TCP_LEN: usize = 20;
pub const UDP_LEN: usize = 8;
pub const L4_SPORT: usize = 0;
pub const L4_DPORT: usize = 2;
/// Data offset (high nibble, in 4-byte words).
pub const TCP_DOFF: usize = 12;
pub const TCP_FLAGS: usize = 13;
pub const UDP_LENGTH: usize = 4;
pub const UDP_CSUM: usize = 6;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

// ICMP (RFC 792) and ICMPv6 (RFC 4443): type, code, checksum, then 4 bytes that depend
// on the type, then (for errors) the quoted packet.
pub const ICMP_LEN: usize = 8;
pub const ICMP_TYPE: usize = 0;
pub const ICMP_CODE: usize = 1;
pub const ICMP_CSUM: usize = 2;
/// ICMP frag-needed: the next-hop MTU, 16 bits.
pub const ICMP_NEXT_HOP_MTU: usize = 6;
/// ICMPv6 packet-too-big: the MTU, 32 bits.
pub const ICMPV6_MTU: usize = 4;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
pub const ICMPV6_TIME_EXCEEDED: u8 = 3;
/// The longest ICMP message whose checksum is checked: an ICMPv6 error fills at most the
/// IPv6 minimum MTU (RFC 4443 2.4), 1280 - 40 bytes; ICMP errors are shorter (RFC 1812).
pub const ICMP_MAX_CHECKED: usize = 1240;
