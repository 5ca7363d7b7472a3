//! A randomized run: 100,000 random and mutated frames through the real program (fixed seed,
//! printed; `GATEWAY_FUZZ_SEED` overrides it). Invariants: no XDP_ABORTED; a frame is sent
//! on only if it belongs to a service (or is an ICMP error about one) and goes to one of that
//! service's backends with its IP packet intact, or is the too-big answer to such a frame;
//! whatever is emitted for a frame with valid checksums has valid checksums; nothing is sent
//! on that a router would drop (`packet::router_refusal`, written from the RFCs).
mod common;

use std::net::IpAddr;

use common::world::*;
use gateway_common::*;
use lab::packet::{self, *};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

fn services() -> Vec<Svc> {
    let b = |a: IpAddr, l| be(a, l);
    let s = |vip, port, proto, mode, backends| Svc {
        vip,
        port,
        proto,
        mode,
        table_size: 251,
        backends,
        protection: None,
    };
    vec![
        s(
            v4(198, 18, 1, 1),
            80,
            PROTO_TCP,
            MODE_L2DSR,
            vec![b(v4(198, 18, 0, 11), 11), b(v4(198, 18, 0, 12), 12)],
        ),
        s(
            v4(198, 18, 1, 1),
            53,
            PROTO_UDP,
            MODE_IPIP,
            vec![b(v4(198, 18, 0, 13), 13)],
        ),
        s(
            v6("fd00:1::1"),
            80,
            PROTO_TCP,
            MODE_IPIP,
            vec![b(v6("fd00::11"), 0x21), b(v6("fd00::12"), 0x22)],
        ),
        s(
            v6("fd00:1::1"),
            53,
            PROTO_UDP,
            MODE_L2DSR,
            vec![b(v6("fd00::13"), 0x23)],
        ),
        s(v4(198, 18, 1, 9), 80, PROTO_TCP, MODE_L2DSR, vec![]),
    ]
}

fn settings() -> Settings {
    Settings {
        mtu: 1400,
        ipip_src_v4: [198, 18, 100, 0],
        ipip_src_v6: addr16(v6("fd00::2")),
        ipip_src_v4_vary_bits: 4,
        ..plain_settings()
    }
}

fn random_frame(r: &mut Rng, svcs: &[Svc]) -> Vec<u8> {
    let is_v6 = r.chance(50);
    let client = if is_v6 {
        v6("fd00::1")
    } else {
        v4(198, 18, 0, 1)
    };
    let vips: Vec<&Svc> = svcs.iter().filter(|s| s.vip.is_ipv6() == is_v6).collect();
    // Most frames aim at a service (right VIP, port and protocol), the rest anywhere.
    let target = r.chance(60).then(|| *r.pick(&vips));
    let dst = match target {
        Some(s) => s.vip,
        None if r.chance(70) => r.pick(&vips).vip,
        None if is_v6 => v6("fd00::2"),
        None => v4(198, 18, 0, 2),
    };
    let sport = 1024 + r.below(64000) as u16;
    let any_port = r.below(65536) as u16;
    let dport = target.map_or_else(|| *r.pick(&[80u16, 53, 443, any_port]), |s| s.port);
    let max = if r.chance(10) { 1600 } else { 64 };
    let payload = vec![0xa5; r.below(max) as usize];
    let proto_roll = match target.map(|s| s.proto) {
        Some(PROTO_TCP) if r.chance(85) => 0,
        Some(PROTO_UDP) if r.chance(85) => 5,
        _ => r.below(10),
    };
    let l4 = match proto_roll {
        0..=4 => L4::Tcp {
            sport,
            dport,
            flags: r.next() as u8,
            seq: r.next() as u32,
            payload,
        },
        5..=7 => L4::Udp {
            sport,
            dport,
            payload,
        },
        8 => {
            // An ICMP error quoting a packet from a VIP (or not) back to the client.
            let q = Ip::new(
                dst,
                client,
                L4::Tcp {
                    sport: dport,
                    dport: sport,
                    flags: TCP_ACK,
                    seq: 1,
                    payload: vec![],
                },
            );
            let ty = if is_v6 {
                *r.pick(&[1u8, 2, 3, 128])
            } else {
                *r.pick(&[3u8, 11, 8])
            };
            let router = if is_v6 {
                v6("fd00::fe")
            } else {
                v4(198, 18, 0, 254)
            };
            let mut body = q.bytes();
            body.truncate(r.below(body.len() as u64 + 1) as usize);
            let code = r.below(5) as u8;
            return finish(
                r,
                Ip::new(
                    router,
                    dst,
                    L4::Icmp {
                        ty,
                        code,
                        rest: [0, 0, 5, 0],
                        body,
                    },
                ),
            );
        }
        _ => L4::Raw {
            proto: r.below(256) as u8,
            bytes: payload,
        },
    };
    finish(r, Ip::new(client, dst, l4))
}

fn finish(r: &mut Rng, mut ip: Ip) -> Vec<u8> {
    if ip.src.is_ipv4() {
        if r.chance(10) {
            ip.options = vec![1; 4 * r.below(11) as usize];
        }
        if r.chance(5) {
            ip.mf = true;
        }
        if r.chance(3) {
            ip.frag_offset = r.below(8000) as u16;
        }
        ip.df = r.chance(80);
    } else if r.chance(15) {
        let n = r.below(6);
        ip.ext = (0..n)
            .map(|_| {
                r.pick(&[
                    Ext::HopByHop,
                    Ext::Routing,
                    Ext::DestOpts,
                    Ext::Fragment {
                        offset: 0,
                        more: true,
                    },
                ])
                .clone()
            })
            .collect();
    }
    ip.tos = r.next() as u8;
    let mut f = Frame::ip(ip);
    if r.chance(15) {
        f.vlan = Some(r.below(4096) as u16);
    }
    let mut b = f.bytes();
    // Mutations: flipped bytes, truncation, junk frames.
    if r.chance(25) {
        for _ in 0..=r.below(4) {
            let i = r.below(b.len() as u64) as usize;
            b[i] ^= 1 << r.below(8);
        }
    }
    if r.chance(15) {
        let len = 14 + r.below(b.len() as u64 - 13) as usize;
        b.truncate(len);
    }
    if r.chance(3) {
        b = (0..14 + r.below(100)).map(|_| r.next() as u8).collect();
    }
    b
}

/// A lenient parse of an input frame: (l2 length, VIP-side address, port, protocol) of the
/// flow it belongs to, following an ICMP error's quote. None if it is not a complete
/// TCP/UDP/ICMP-error packet.
fn flow_of(b: &[u8]) -> Option<(usize, IpAddr, u16, u8)> {
    let mut l2 = 14;
    let mut et = u16::from_be_bytes([*b.get(12)?, *b.get(13)?]);
    if et == 0x8100 {
        et = u16::from_be_bytes([*b.get(16)?, *b.get(17)?]);
        l2 = 18;
    }
    let (addr_dst, proto, l4) = ip_parts(b.get(l2..)?, et)?;
    match proto {
        6 | 17 => Some((
            l2,
            addr_dst,
            u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?]),
            proto,
        )),
        1 | 58 => {
            let inner = l4.get(8..)?;
            let (src, qproto, ql4) = quoted(inner, proto == 58)?;
            Some((
                l2,
                src,
                u16::from_be_bytes([*ql4.first()?, *ql4.get(1)?]),
                qproto,
            ))
        }
        _ => None,
    }
}

fn ip_parts(ip: &[u8], et: u16) -> Option<(IpAddr, u8, &[u8])> {
    if et == 0x0800 {
        let hl = usize::from(ip.first()? & 0xf) * 4;
        let d: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
        Some((IpAddr::from(d), *ip.get(9)?, ip.get(hl..)?))
    } else {
        let d: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
        let mut nh = *ip.get(6)?;
        let mut off = 40;
        while matches!(nh, 0 | 43 | 60) {
            let n = *ip.get(off)?;
            off += (usize::from(*ip.get(off + 1)?) + 1) * 8;
            nh = n;
        }
        Some((IpAddr::from(d), nh, ip.get(off..)?))
    }
}

fn quoted(ip: &[u8], v6: bool) -> Option<(IpAddr, u8, &[u8])> {
    if !v6 {
        let hl = usize::from(ip.first()? & 0xf) * 4;
        let s: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
        Some((IpAddr::from(s), *ip.get(9)?, ip.get(hl..)?))
    } else {
        let s: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
        Some((IpAddr::from(s), *ip.get(6)?, ip.get(40..)?))
    }
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn random_and_mutated_frames_keep_the_invariants() {
    if !common::privileged("random_and_mutated_frames_keep_the_invariants") {
        return;
    }
    let seed: u64 = std::env::var("GATEWAY_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2026);
    let n: usize = std::env::var("GATEWAY_FUZZ_COUNT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    println!("seed {seed} (set GATEWAY_FUZZ_SEED to replay), {n} frames");
    let svcs = services();
    let w = World::new(&svcs, settings());
    let mut r = Rng(seed | 1);
    let mut verdicts = [0u64; 5];
    // Frames a router would drop, by whether the program sent them on (it must not).
    let mut refused = 0u64;
    let start = std::time::Instant::now();
    for i in 0..n {
        assert!(start.elapsed().as_secs() < 300, "bounded in time");
        let input = random_frame(&mut r, &svcs);
        let (verdict, out) = w.run(&input);
        verdicts[verdict.min(4) as usize] += 1;
        let ctx = || {
            format!(
                "frame {i} (seed {seed}): {:02x?}",
                &input[..input.len().min(96)]
            )
        };
        assert_ne!(verdict, XDP_ABORTED, "{}", ctx());
        assert!(verdict <= XDP_TX, "unexpected verdict {verdict}: {}", ctx());
        if verdict == XDP_PASS {
            assert_eq!(out, input, "a passed frame was modified: {}", ctx());
        }
        let refusal = packet::router_refusal(&input);
        refused += u64::from(refusal.is_some());
        if verdict != XDP_TX {
            continue;
        }
        if let Some(why) = refusal {
            panic!("sent on a frame a router would drop ({why}): {}", ctx());
        }
        if packet::check(&input).is_ok() {
            packet::check(&out).unwrap_or_else(|e| panic!("emitted frame: {e}: {}", ctx()));
        }
        let (l2, vip, port, proto) =
            flow_of(&input).unwrap_or_else(|| panic!("sent a non-flow: {}", ctx()));
        let svc = svcs
            .iter()
            .find(|s| s.vip == vip && s.port == port && s.proto == proto)
            .unwrap_or_else(|| panic!("sent a frame of no service: {}", ctx()));
        let dst_mac: [u8; 6] = out[0..6].try_into().unwrap();
        if dst_mac == input[6..12] {
            // The too-big answer: ICMP back to the sender, quoting the packet.
            let p =
                packet::check(&out).unwrap_or_else(|e| panic!("too-big answer: {e}: {}", ctx()));
            assert!(
                matches!((p.proto, p.ports), (1, (3, 4)) | (58, (2, 0))),
                "{}",
                ctx()
            );
            assert_eq!(
                svc.mode,
                MODE_IPIP,
                "too-big from an l2dsr service: {}",
                ctx()
            );
            let hdr = if vip.is_ipv6() { 48 } else { 28 };
            assert_eq!(&out[l2 + hdr..], &input[l2..l2 + 128], "quote: {}", ctx());
            continue;
        }
        let b = svc
            .backends
            .iter()
            .find(|b| b.mac == dst_mac)
            .unwrap_or_else(|| {
                panic!(
                    "sent to {dst_mac:02x?}, not a backend of the service: {}",
                    ctx()
                )
            });
        let outer = if svc.mode == MODE_IPIP {
            if vip.is_ipv6() { 40 } else { 20 }
        } else {
            0
        };
        // Encapsulation leaves out what follows the IP packet (Ethernet padding).
        let inner = if outer > 0 {
            &input[l2..l2 + ip_len(&input[l2..])]
        } else {
            &input[l2..]
        };
        assert_eq!(&out[l2 + outer..], inner, "IP packet not intact: {}", ctx());
        if outer > 0 {
            let dst = &out[l2..l2 + outer];
            let want = addr16(b.addr);
            let got: &[u8] = if outer == 20 {
                &dst[16..20]
            } else {
                &dst[24..40]
            };
            assert_eq!(
                got,
                &want[..if outer == 20 { 4 } else { 16 }],
                "outer dst: {}",
                ctx()
            );
        }
    }
    println!(
        "verdicts: aborted {} drop {} pass {} tx {}; {refused} frames a router would drop",
        verdicts[0], verdicts[1], verdicts[2], verdicts[3]
    );
    assert!(
        refused > n as u64 / 100,
        "too few frames a router would drop to exercise the rules"
    );
    assert!(
        verdicts[3] > n as u64 / 5,
        "too few frames forwarded to exercise anything"
    );
    assert!(verdicts[2] > n as u64 / 10, "too few frames passed");
}

/// The IP packet's length by its header (IPv4 total length, IPv6 40 + payload length).
fn ip_len(ip: &[u8]) -> usize {
    if ip[0] >> 4 == 4 {
        usize::from(u16::from_be_bytes([ip[2], ip[3]]))
    } else {
        40 + usize::from(u16::from_be_bytes([ip[4], ip[5]]))
    }
}
