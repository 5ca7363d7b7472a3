//! A typed packet builder and an independent checker for the frames the data plane emits.
//!
//! The builder writes correct checksums unless told otherwise, and can emit every kind of
//! damage the golden tests need (truncation is done by the caller on the bytes).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// RFC 1071 sum of `data` added to `sum` (not folded, not inverted).
pub fn sum16(mut sum: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    sum
}

pub fn fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

pub fn checksum(sum: u64) -> u16 {
    !fold(sum)
}

fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u64 {
    let mut s = 0;
    match (src, dst) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            s = sum16(s, &a.octets());
            s = sum16(s, &b.octets());
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            s = sum16(s, &a.octets());
            s = sum16(s, &b.octets());
        }
        _ => panic!("mixed address families"),
    }
    s + u64::from(proto) + len as u64
}

#[derive(Debug, Clone)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        payload: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
    },
    /// ICMP or ICMPv6 (by the IP version): type, code, the 4 bytes after the checksum, and
    /// the body (for errors, the quoted packet).
    Icmp {
        ty: u8,
        code: u8,
        rest: [u8; 4],
        body: Vec<u8>,
    },
    Raw {
        proto: u8,
        bytes: Vec<u8>,
    },
}

impl L4 {
    pub fn proto(&self, v6: bool) -> u8 {
        match self {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Icmp { .. } => {
                if v6 {
                    58
                } else {
                    1
                }
            }
            L4::Raw { proto, .. } => *proto,
        }
    }

    fn bytes(&self, src: IpAddr, dst: IpAddr) -> Vec<u8> {
        let v6 = src.is_ipv6();
        let mut b = Vec::new();
        match self {
            L4::Tcp {
                sport,
                dport,
                flags,
                seq,
                payload,
            } => {
                b.extend(sport.to_be_bytes());
                b.extend(dport.to_be_bytes());
                b.extend(seq.to_be_bytes());
                b.extend(0u32.to_be_bytes());
                b.extend([0x50, *flags]);
                b.extend(64240u16.to_be_bytes());
                b.extend([0, 0, 0, 0]);
                b.extend(payload);
                let c = checksum(sum16(pseudo(src, dst, 6, b.len()), &b));
                b[16..18].copy_from_slice(&c.to_be_bytes());
            }
            L4::Udp {
                sport,
                dport,
                payload,
            } => {
                b.extend(sport.to_be_bytes());
                b.extend(dport.to_be_bytes());
                b.extend(((8 + payload.len()) as u16).to_be_bytes());
                b.extend([0, 0]);
                b.extend(payload);
                let mut c = checksum(sum16(pseudo(src, dst, 17, b.len()), &b));
                if c == 0 {
                    c = 0xffff;
                }
                b[6..8].copy_from_slice(&c.to_be_bytes());
            }
            L4::Icmp {
                ty,
                code,
                rest,
                body,
            } => {
                b.extend([*ty, *code, 0, 0]);
                b.extend(rest);
                b.extend(body);
                let base = if v6 { pseudo(src, dst, 58, b.len()) } else { 0 };
                let c = checksum(sum16(base, &b));
                b[2..4].copy_from_slice(&c.to_be_bytes());
            }
            L4::Raw { bytes, .. } => b.extend(bytes),
        }
        b
    }
}

/// An IPv6 extension header.
#[derive(Debug, Clone)]
pub enum Ext {
    HopByHop,
    /// A routing header with no segments left (type 4): forwarded like any other.
    Routing,
    /// A routing header of `rtype` with `segments_left` still to visit: source routing.
    SourceRoute {
        rtype: u8,
        segments_left: u8,
    },
    DestOpts,
    Fragment {
        offset: u16,
        more: bool,
    },
}

impl Ext {
    fn number(&self) -> u8 {
        match self {
            Ext::HopByHop => 0,
            Ext::Routing | Ext::SourceRoute { .. } => 43,
            Ext::DestOpts => 60,
            Ext::Fragment { .. } => 44,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Ip {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    pub tos: u8,
    /// IPv4 only.
    pub df: bool,
    pub mf: bool,
    pub frag_offset: u16,
    pub options: Vec<u8>,
    /// IPv6 only.
    pub ext: Vec<Ext>,
    pub flow_label: u32,
    /// IPv4 identification.
    pub id: u16,
    pub l4: L4,
}

impl Ip {
    pub fn new(src: IpAddr, dst: IpAddr, l4: L4) -> Self {
        Ip {
            src,
            dst,
            ttl: 64,
            tos: 0,
            df: true,
            mf: false,
            frag_offset: 0,
            options: vec![],
            ext: vec![],
            flow_label: 0,
            id: 0x1234,
            l4,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let l4 = self.l4.bytes(self.src, self.dst);
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                assert!(self.options.len().is_multiple_of(4) && self.options.len() <= 40);
                let hlen = 20 + self.options.len();
                let mut h = vec![0x40 | (hlen / 4) as u8, self.tos];
                h.extend(((hlen + l4.len()) as u16).to_be_bytes());
                h.extend(self.id.to_be_bytes());
                let frag =
                    (u16::from(self.df) << 14) | (u16::from(self.mf) << 13) | self.frag_offset;
                h.extend(frag.to_be_bytes());
                h.extend([self.ttl, self.l4.proto(false), 0, 0]);
                h.extend(s.octets());
                h.extend(d.octets());
                h.extend(&self.options);
                let c = checksum(sum16(0, &h));
                h[10..12].copy_from_slice(&c.to_be_bytes());
                h.extend(l4);
                h
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut exts = Vec::new();
                for (i, e) in self.ext.iter().enumerate() {
                    let next = self.ext.get(i + 1).map_or(self.l4.proto(true), Ext::number);
                    match e {
                        Ext::Fragment { offset, more } => {
                            exts.extend([next, 0]);
                            exts.extend(((offset << 3) | u16::from(*more)).to_be_bytes());
                            exts.extend(7u32.to_be_bytes());
                        }
                        // Next header, length 0, type, segments left, 4 reserved bytes.
                        Ext::Routing => exts.extend([next, 0, 4, 0, 0, 0, 0, 0]),
                        Ext::SourceRoute {
                            rtype,
                            segments_left,
                        } => exts.extend([next, 0, *rtype, *segments_left, 0, 0, 0, 0]),
                        // 8 bytes: next header, length 0, and a PadN option of 4 bytes.
                        _ => exts.extend([next, 0, 1, 4, 0, 0, 0, 0]),
                    }
                }
                let first_next = self.ext.first().map_or(self.l4.proto(true), Ext::number);
                let word = (6u32 << 28) | (u32::from(self.tos) << 20) | (self.flow_label & 0xfffff);
                let mut h = word.to_be_bytes().to_vec();
                h.extend(((exts.len() + l4.len()) as u16).to_be_bytes());
                h.extend([first_next, self.ttl]);
                h.extend(s.octets());
                h.extend(d.octets());
                h.extend(exts);
                h.extend(l4);
                h
            }
            _ => panic!("mixed address families"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Frame {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub vlan: Option<u16>,
    pub ip: Option<Ip>,
    /// Used when `ip` is None.
    pub ethertype: u16,
    pub raw: Vec<u8>,
}

pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

impl Frame {
    pub fn ip(ip: Ip) -> Self {
        Frame {
            dst: LB_MAC,
            src: CLIENT_MAC,
            vlan: None,
            ip: Some(ip),
            ethertype: 0,
            raw: vec![],
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(self.dst);
        b.extend(self.src);
        if let Some(tci) = self.vlan {
            b.extend(0x8100u16.to_be_bytes());
            b.extend(tci.to_be_bytes());
        }
        match &self.ip {
            Some(ip) => {
                b.extend(
                    if ip.src.is_ipv4() {
                        0x0800u16
                    } else {
                        0x86ddu16
                    }
                    .to_be_bytes(),
                );
                b.extend(ip.bytes());
            }
            None => {
                b.extend(self.ethertype.to_be_bytes());
                b.extend(&self.raw);
            }
        }
        b
    }
}

pub fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8) -> Frame {
    Frame::ip(Ip::new(
        src,
        dst,
        L4::Tcp {
            sport,
            dport,
            flags,
            seq: 1,
            payload: b"hello".to_vec(),
        },
    ))
}

pub fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Frame {
    Frame::ip(Ip::new(
        src,
        dst,
        L4::Udp {
            sport,
            dport,
            payload: b"ping".to_vec(),
        },
    ))
}

pub fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

pub fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().expect("IPv6 literal"))
}

/// What the checker found in a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub vlan: Option<u16>,
    /// Outer header of an encapsulated packet: (src, dst, IPv6 flow label).
    pub outer: Option<(IpAddr, IpAddr, u32)>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    /// TCP/UDP ports, or ICMP (type, code).
    pub ports: (u16, u16),
    /// IP packet (inner if encapsulated) as bytes.
    pub inner: Vec<u8>,
}

/// Parses an Ethernet frame (optionally VLAN-tagged, optionally IPIP/IP6IP6-encapsulated) and
/// verifies every checksum in it: IPv4 headers, TCP, UDP, ICMP, ICMPv6. The arithmetic is
/// this module's own, independent of the data plane's.
pub fn check(frame: &[u8]) -> Result<Parsed, String> {
    let need = |n: usize, what: &str| {
        if frame.len() < n {
            Err(format!("{what}: frame of {} bytes too short", frame.len()))
        } else {
            Ok(())
        }
    };
    need(14, "ethernet")?;
    let mut off = 12;
    let mut ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let mut vlan = None;
    if ethertype == 0x8100 {
        need(18, "vlan")?;
        vlan = Some(u16::from_be_bytes([frame[14], frame[15]]));
        ethertype = u16::from_be_bytes([frame[16], frame[17]]);
        off += 4;
    }
    off += 2;
    let v6 = match ethertype {
        0x0800 => false,
        0x86dd => true,
        t => return Err(format!("ethertype {t:#06x} is not IP")),
    };
    let (outer, ip) = {
        let (src, dst, proto, hlen, len, flow) = ip_header(&frame[off..], v6)?;
        let ip = &frame[off..off + len];
        if proto == 4 || proto == 41 {
            (Some((src, dst, flow)), (&ip[hlen..], proto == 41))
        } else {
            (None, (ip, v6))
        }
    };
    let (bytes, v6) = ip;
    let (src, dst, proto, hlen, len, _) = ip_header(bytes, v6)?;
    let l4 = &bytes[hlen..len];
    let ports = match proto {
        6 | 17 => {
            if l4.len() < if proto == 6 { 20 } else { 8 } {
                return Err("L4 header truncated".into());
            }
            let skip_udp_zero = proto == 17 && !v6 && l4[6] == 0 && l4[7] == 0;
            if !skip_udp_zero && fold(sum16(pseudo(src, dst, proto, l4.len()), l4)) != 0xffff {
                return Err(format!(
                    "bad {} checksum",
                    if proto == 6 { "TCP" } else { "UDP" }
                ));
            }
            (
                u16::from_be_bytes([l4[0], l4[1]]),
                u16::from_be_bytes([l4[2], l4[3]]),
            )
        }
        1 | 58 => {
            if l4.len() < 8 {
                return Err("ICMP header truncated".into());
            }
            let base = if proto == 58 {
                pseudo(src, dst, 58, l4.len())
            } else {
                0
            };
            if fold(sum16(base, l4)) != 0xffff {
                return Err("bad ICMP checksum".into());
            }
            (u16::from(l4[0]), u16::from(l4[1]))
        }
        _ => (0, 0),
    };
    Ok(Parsed {
        dst_mac: frame[0..6].try_into().unwrap(),
        src_mac: frame[6..12].try_into().unwrap(),
        vlan,
        outer,
        src,
        dst,
        proto,
        ports,
        inner: bytes[..len].to_vec(),
    })
}

/// (src, dst, upper protocol, header length incl. extensions, total length, flow label).
fn ip_header(b: &[u8], v6: bool) -> Result<(IpAddr, IpAddr, u8, usize, usize, u32), String> {
    if !v6 {
        if b.len() < 20 || b[0] >> 4 != 4 {
            return Err("IPv4 header truncated or wrong version".into());
        }
        let hlen = usize::from(b[0] & 0xf) * 4;
        let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
        if hlen < 20 || len < hlen || len > b.len() {
            return Err(format!(
                "IPv4 lengths: ihl {hlen}, total {len}, have {}",
                b.len()
            ));
        }
        if fold(sum16(0, &b[..hlen])) != 0xffff {
            return Err("bad IPv4 header checksum".into());
        }
        let src = Ipv4Addr::new(b[12], b[13], b[14], b[15]);
        let dst = Ipv4Addr::new(b[16], b[17], b[18], b[19]);
        Ok((src.into(), dst.into(), b[9], hlen, len, 0))
    } else {
        if b.len() < 40 || b[0] >> 4 != 6 {
            return Err("IPv6 header truncated or wrong version".into());
        }
        let len = 40 + usize::from(u16::from_be_bytes([b[4], b[5]]));
        if len > b.len() {
            return Err("IPv6 payload length beyond the frame".into());
        }
        let flow = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0xfffff;
        let src = Ipv6Addr::from(<[u8; 16]>::try_from(&b[8..24]).unwrap());
        let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&b[24..40]).unwrap());
        let mut next = b[6];
        let mut off = 40;
        while matches!(next, 0 | 43 | 60 | 44) {
            if off + 8 > len {
                return Err("IPv6 extension truncated".into());
            }
            let n = b[off];
            off += if next == 44 {
                8
            } else {
                (usize::from(b[off + 1]) + 1) * 8
            };
            next = n;
        }
        Ok((src.into(), dst.into(), next, off, len, flow))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_pass_the_checker_and_damage_is_caught() {
        for f in [
            tcp(v4(198, 18, 0, 1), v4(198, 18, 1, 1), 40000, 80, TCP_SYN),
            udp(v6("fd00::1"), v6("fd00:1::1"), 40000, 53),
        ] {
            let mut b = f.bytes();
            let p = check(&b).unwrap();
            assert_eq!(p.ports.1, if p.proto == 6 { 80 } else { 53 });
            let last = b.len() - 1;
            b[last] ^= 0xff;
            assert!(
                check(&b).is_err(),
                "a flipped payload byte must fail the L4 checksum"
            );
        }
        let mut b = tcp(v4(1, 2, 3, 4), v4(5, 6, 7, 8), 1, 2, TCP_ACK).bytes();
        b[14 + 8] = 1; // TTL
        assert_eq!(check(&b).unwrap_err(), "bad IPv4 header checksum");
    }
}

/// Why a router that follows the RFCs would not forward this frame's IP packet, if it
/// would not; `None` for a packet it would forward (or one this validator does not judge:
/// not IP, or a fragment). Written from the RFCs, independently of the XDP program, for
/// the randomized run's invariant "never forwards what a router would drop".
///
/// - RFC 791 / 1812: version 4, IHL >= 5, total length covers the header and within the
///   frame, header checksum, options well-formed, no loose/strict source route (RFC 7126);
/// - RFC 8200: version 6, payload length non-zero (RFC 2675) and within the frame,
///   hop-by-hop only first, no routing header with segments left or of type 0 (RFC 5095),
///   atomic fragments are whole packets (RFC 6946);
/// - transport: TCP data offset 5..=length (RFC 9293), UDP length equal to the transport's
///   length (RFC 768), UDP over IPv6 with a checksum (RFC 8200 8.1); the transport header
///   (TCP 20, UDP 8, ICMP 8 bytes) within the IP length; an ICMP message's checksum (RFC
///   792, RFC 4443 2.3: an error relayed to a backend must be one its stack accepts);
/// - sources (RFC 1812 5.3.7, RFC 4291, RFC 6890): not 0/8, 127/8, 224/4, 240/4; not ::,
///   ::1, ff00::/8, ::ffff:0:0/96; not the packet's own destination.
pub fn router_refusal(frame: &[u8]) -> Option<&'static str> {
    let mut l2 = 14;
    let mut ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    if ethertype == 0x8100 {
        ethertype = u16::from_be_bytes([*frame.get(16)?, *frame.get(17)?]);
        l2 = 18;
    }
    let ip = frame.get(l2..)?;
    let (proto, l4, v6) = match ethertype {
        0x0800 => {
            let ihl = usize::from(*ip.first()? & 0xf) * 4;
            if ip[0] >> 4 != 4 || ihl < 20 || ip.len() < ihl {
                return Some("bad IPv4 header");
            }
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            if total < ihl || total > ip.len() {
                return Some("IPv4 total length");
            }
            if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
                return None;
            }
            if fold(sum16(0, &ip[..ihl])) != 0xffff {
                return Some("IPv4 header checksum");
            }
            let mut i = 20;
            while i < ihl {
                match ip[i] {
                    0 => break,
                    1 => i += 1,
                    t => {
                        let len = usize::from(*ip.get(i + 1)?);
                        if len < 2 || i + len > ihl {
                            return Some("IPv4 options malformed");
                        }
                        if t == 0x83 || t == 0x89 {
                            return Some("IPv4 source route");
                        }
                        i += len;
                    }
                }
            }
            let s = &ip[12..16];
            if s[0] == 0 || s[0] == 127 || s[0] >= 224 || s == &ip[16..20] {
                return Some("martian IPv4 source");
            }
            (ip[9], &ip[ihl..total], false)
        }
        0x86dd => {
            if ip.len() < 40 || ip[0] >> 4 != 6 {
                return Some("bad IPv6 header");
            }
            let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            if payload == 0 {
                return Some("IPv6 payload length zero");
            }
            if 40 + payload > ip.len() {
                return Some("IPv6 payload length");
            }
            let src: [u8; 16] = ip[8..24].try_into().ok()?;
            let a = std::net::Ipv6Addr::from(src);
            if a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || a.to_ipv4_mapped().is_some()
                || ip[8..24] == ip[24..40]
            {
                return Some("martian IPv6 source");
            }
            let body = &ip[40..40 + payload];
            let mut nh = ip[6];
            let mut off = 0;
            let mut n = 0;
            while matches!(nh, 0 | 43 | 60 | 44) {
                let Some(h) = body.get(off..off + 8) else {
                    return Some("IPv6 extension header past the payload");
                };
                if nh == 0 && n > 0 {
                    return Some("IPv6 hop-by-hop not first");
                }
                if nh == 43 && (h[2] == 0 || h[3] != 0) {
                    return Some("IPv6 source route");
                }
                if nh == 44 {
                    if u16::from_be_bytes([h[2], h[3]]) & 0xfff9 != 0 {
                        return None;
                    }
                    off += 8;
                } else {
                    off += (usize::from(h[1]) + 1) * 8;
                }
                nh = h[0];
                n += 1;
            }
            (nh, body.get(off..)?, true)
        }
        _ => return None,
    };
    match proto {
        6 => {
            if l4.len() < 20 {
                return Some("IP length ends inside the TCP header");
            }
            let doff = usize::from(l4[12] >> 4) * 4;
            if doff < 20 || doff > l4.len() {
                return Some("TCP data offset");
            }
        }
        17 => {
            if l4.len() < 8 {
                return Some("IP length ends inside the UDP header");
            }
            if usize::from(u16::from_be_bytes([l4[4], l4[5]])) != l4.len() {
                return Some("UDP length");
            }
            if v6 && l4[6] == 0 && l4[7] == 0 {
                return Some("UDP over IPv6 without a checksum");
            }
        }
        1 | 58 if l4.len() < 8 => return Some("IP length ends inside the ICMP header"),
        1 | 58 => {
            let mut sum = sum16(0, l4);
            if v6 {
                sum += sum16(0, &ip[8..40]) + l4.len() as u64 + 58;
            }
            if fold(sum) != 0xffff {
                return Some("ICMP checksum");
            }
        }
        _ => {}
    }
    None
}

#[cfg(test)]
mod router_tests {
    use super::*;

    fn frame(ip: Ip) -> Vec<u8> {
        Frame::ip(ip).bytes()
    }

    #[test]
    fn the_validator_forwards_good_packets_and_refuses_bad_ones() {
        let c: IpAddr = "198.18.1.1".parse().unwrap();
        let v: IpAddr = "198.18.0.100".parse().unwrap();
        let good = tcp(c, v, 1000, 80, 0x02).bytes();
        assert_eq!(router_refusal(&good), None);
        let mut bad = good.clone();
        bad[14 + 10] ^= 1;
        assert_eq!(router_refusal(&bad), Some("IPv4 header checksum"));
        let mut ip = Ip::new(
            "127.0.0.1".parse().unwrap(),
            v,
            L4::Udp {
                sport: 1,
                dport: 53,
                payload: vec![0; 4],
            },
        );
        assert_eq!(
            router_refusal(&frame(ip.clone())),
            Some("martian IPv4 source")
        );
        ip.src = c;
        ip.options = vec![0x83, 3, 4, 0];
        assert_eq!(router_refusal(&frame(ip)), Some("IPv4 source route"));
        let c6: IpAddr = "fd00::1:1".parse().unwrap();
        let v6: IpAddr = "fd00::100".parse().unwrap();
        let mut f = udp(c6, v6, 1000, 53);
        f.ip.as_mut().unwrap().ext = vec![Ext::DestOpts, Ext::HopByHop];
        assert_eq!(
            router_refusal(&f.bytes()),
            Some("IPv6 hop-by-hop not first")
        );
        f.ip.as_mut().unwrap().ext = vec![
            Ext::HopByHop,
            Ext::Fragment {
                offset: 0,
                more: false,
            },
        ];
        assert_eq!(router_refusal(&f.bytes()), None);
    }
}

/// Makes `frame`, an untagged IPv4 TCP SYN, the `n`-th of a spoofed flood: source address
/// 198.19.x.y and a source port from `n` (no two alike below 2^24), with the IPv4 header
/// checksum fixed (the balancer checks it; the TCP checksum is left as it was).
pub fn spoof_syn(frame: &mut [u8], n: u32) {
    let [hi, x, y, z] = n.to_be_bytes();
    frame[26..30].copy_from_slice(&[198, 19, y, z.max(1)]);
    frame[34..36].copy_from_slice(&(1024 + u16::from(x) * 64 + u16::from(hi & 63)).to_be_bytes());
    frame[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(sum16(0, &frame[14..34]));
    frame[24..26].copy_from_slice(&c.to_be_bytes());
}
