//! The half-open check's wire format: the SYN it sends, its checksum, and what a reply
//! says. Pure functions over bytes: no sockets here.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// TCP header flags.
pub(super) const FIN: u8 = 0x01;
pub(super) const SYN: u8 = 0x02;
pub(super) const RST: u8 = 0x04;
pub(super) const ACK: u8 = 0x10;

/// The SYN sent: a 20-byte header and one option, MSS 1460 (what a real client's SYN
/// carries at least; some middleboxes drop SYNs without options).
pub(super) const SYN_LEN: usize = 24;

/// What a backend answered to a SYN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Answer {
    /// SYN-ACK: something listens.
    Accepted,
    /// Reset: nothing listens on the port.
    Refused,
}

/// A probe's four-tuple: the backend, its port, and our port.
pub(super) type Tuple = (IpAddr, u16, u16);

/// The probe a received segment answers, and how: its four-tuple, the sequence number of
/// the SYN it acknowledges, and the answer. `data` starts at the IPv4 header for IPv4 and
/// at the TCP header for IPv6 (where `from` gives the source). Anything else, from a plain
/// ACK to a truncated header, is no answer.
pub(super) fn parse_reply(
    data: &[u8],
    from: Option<IpAddr>,
    v6: bool,
) -> Option<(Tuple, u32, Answer)> {
    let (src, tcp) = if v6 {
        (from?, data)
    } else {
        let ihl = usize::from(*data.first()? & 0x0f) * 4;
        if data[0] >> 4 != 4 || ihl < 20 || data.get(9) != Some(&6) {
            return None;
        }
        let src: [u8; 4] = data.get(12..16)?.try_into().ok()?;
        (IpAddr::from(src), data.get(ihl..)?)
    };
    let tcp = tcp.get(..20)?;
    let be16 = |i: usize| u16::from_be_bytes([tcp[i], tcp[i + 1]]);
    let ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
    let flags = tcp[13];
    let answer = if flags & RST != 0 && flags & ACK != 0 {
        Answer::Refused
    } else if flags & (SYN | ACK | FIN | RST) == SYN | ACK {
        Answer::Accepted
    } else {
        return None;
    };
    Some(((src, be16(0), be16(2)), ack.wrapping_sub(1), answer))
}

/// A SYN from `src_port` to `dst` with sequence number `seq`. For IPv4 the checksum is
/// computed over the pseudo-header with `src`; for IPv6 (`src` is `None`) the kernel fills
/// it in.
pub(super) fn syn_segment(
    src: Option<Ipv4Addr>,
    dst: SocketAddr,
    src_port: u16,
    seq: u32,
) -> [u8; SYN_LEN] {
    let mut s = [0u8; SYN_LEN];
    s[0..2].copy_from_slice(&src_port.to_be_bytes());
    s[2..4].copy_from_slice(&dst.port().to_be_bytes());
    s[4..8].copy_from_slice(&seq.to_be_bytes());
    s[12] = ((SYN_LEN / 4) as u8) << 4;
    s[13] = SYN;
    s[14..16].copy_from_slice(&64240u16.to_be_bytes());
    s[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]); // MSS 1460
    if let (Some(src), IpAddr::V4(dst)) = (src, dst.ip()) {
        let sum = tcp_sum_v4(src, dst, &s);
        s[16..18].copy_from_slice(&(!sum).to_be_bytes());
    }
    s
}

/// The folded one's-complement sum of a TCP segment of even length and its IPv4
/// pseudo-header (RFC 793): the checksum is its complement, and a segment whose checksum
/// is right sums to 0xffff.
pub(super) fn tcp_sum_v4(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> u16 {
    let mut sum = 6 + segment.len() as u32;
    for pair in [&src.octets()[..], &dst.octets()[..], segment]
        .into_iter()
        .flat_map(|b| b.chunks(2))
    {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply_v4(src: [u8; 4], sport: u16, dport: u16, ack: u32, flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[9] = 6;
        p[12..16].copy_from_slice(&src);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p[28..32].copy_from_slice(&ack.to_be_bytes());
        p[33] = flags;
        p
    }

    #[test]
    fn replies_are_parsed_and_everything_else_is_ignored() {
        let src = IpAddr::from([198, 18, 0, 11]);
        let tuple = (src, 80, 40000);
        type Case = (&'static str, Vec<u8>, Option<(Tuple, u32, Answer)>);
        let cases: [Case; 8] = [
            (
                "syn-ack",
                reply_v4([198, 18, 0, 11], 80, 40000, 1000, SYN | ACK),
                Some((tuple, 999, Answer::Accepted)),
            ),
            (
                "reset",
                reply_v4([198, 18, 0, 11], 80, 40000, 1000, RST | ACK),
                Some((tuple, 999, Answer::Refused)),
            ),
            (
                "plain ack",
                reply_v4([198, 18, 0, 11], 80, 40000, 1000, ACK),
                None,
            ),
            (
                "bare syn",
                reply_v4([198, 18, 0, 11], 80, 40000, 1000, SYN),
                None,
            ),
            (
                "reset without ack",
                reply_v4([198, 18, 0, 11], 80, 40000, 1000, RST),
                None,
            ),
            (
                "truncated",
                reply_v4([198, 18, 0, 11], 80, 40000, 1000, SYN | ACK)[..30].to_vec(),
                None,
            ),
            ("empty", vec![], None),
            (
                "not tcp",
                {
                    let mut p = reply_v4([198, 18, 0, 11], 80, 40000, 1000, SYN | ACK);
                    p[9] = 17;
                    p
                },
                None,
            ),
        ];
        for (name, packet, want) in cases {
            assert_eq!(parse_reply(&packet, None, false), want, "{name}");
        }
        // IPv4 options move the TCP header.
        let mut opts = reply_v4([198, 18, 0, 11], 80, 40000, 1000, SYN | ACK);
        opts[0] = 0x46;
        opts.splice(20..20, [1, 1, 1, 1]);
        assert_eq!(
            parse_reply(&opts, None, false),
            Some((tuple, 999, Answer::Accepted))
        );
        // A bad header length is no answer, not a panic.
        let mut bad = reply_v4([198, 18, 0, 11], 80, 40000, 1000, SYN | ACK);
        bad[0] = 0x4f;
        assert_eq!(parse_reply(&bad, None, false), None);
        // IPv6: the segment alone, the source from the socket.
        let v6: IpAddr = "fd00::11".parse().unwrap();
        let seg = reply_v4([0; 4], 80, 40000, 1000, SYN | ACK)[20..].to_vec();
        assert_eq!(
            parse_reply(&seg, Some(v6), true),
            Some(((v6, 80, 40000), 999, Answer::Accepted))
        );
        assert_eq!(parse_reply(&seg, None, true), None);
    }

    #[test]
    fn syn_checksum_matches_an_independent_computation() {
        // 10.0.0.1:40000 -> 10.0.0.2:80, seq 1: the checksum worked out separately (RFC 1071
        // over pseudo-header and segment, in another language) and checked on the wire
        // (`tcpdump -vv` reports the lab's probe SYNs "cksum ... (correct)").
        let s = syn_segment(
            Some(Ipv4Addr::new(10, 0, 0, 1)),
            "10.0.0.2:80".parse().unwrap(),
            40000,
            1,
        );
        assert_eq!(u16::from_be_bytes([s[16], s[17]]), 0xeca1);
    }

    #[test]
    fn syn_checksum_verifies() {
        let (src, dst) = (Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 64, 1));
        for (port, seq) in [(40000, 0), (1, u32::MAX), (65535, 0x1234_5678)] {
            let s = syn_segment(Some(src), SocketAddr::from((dst, 9000)), port, seq);
            assert_eq!(tcp_sum_v4(src, dst, &s), 0xffff, "port {port} seq {seq}");
            assert_eq!(s[13], SYN);
            assert_eq!(u32::from_be_bytes(s[4..8].try_into().unwrap()), seq);
        }
    }

    /// The SYN's fixed fields: ports, header length, window and the MSS option; an IPv6
    /// SYN leaves the checksum to the kernel.
    #[test]
    fn syn_fields() {
        let dst: SocketAddr = "[fd00::11]:8080".parse().unwrap();
        let s = syn_segment(None, dst, 40000, 7);
        assert_eq!(u16::from_be_bytes([s[0], s[1]]), 40000);
        assert_eq!(u16::from_be_bytes([s[2], s[3]]), 8080);
        assert_eq!(usize::from(s[12] >> 4) * 4, SYN_LEN);
        assert_eq!(u16::from_be_bytes([s[14], s[15]]), 64240);
        assert_eq!(s[16..18], [0, 0]);
        assert_eq!(s[20..24], [2, 4, 0x05, 0xb4]);
    }
}
