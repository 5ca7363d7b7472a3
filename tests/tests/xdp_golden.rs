//! Golden packet cases for the XDP program, run through BPF_PROG_TEST_RUN against the real
//! object with maps filled by the production path. Each case names its input, the expected
//! verdict, the exact expected output bytes, and the counter that must move; every emitted
//! frame's checksums are recomputed by `lab::packet::check`.
mod common;

use std::net::IpAddr;

use common::world::*;
use gateway::config::AdminState;
use gateway_common::*;
use lab::packet::{self, *};

fn c4() -> IpAddr {
    v4(198, 18, 0, 1)
}
fn c6() -> IpAddr {
    v6("fd00::1")
}
fn vip4() -> IpAddr {
    v4(198, 18, 1, 1)
}
fn vip4_ipip() -> IpAddr {
    v4(198, 18, 1, 2)
}
fn vip4_empty() -> IpAddr {
    v4(198, 18, 1, 3)
}
fn vip6() -> IpAddr {
    v6("fd00:1::1")
}
fn vip6_ipip() -> IpAddr {
    v6("fd00:1::2")
}
fn b1() -> Be {
    be(v4(198, 18, 0, 11), 11)
}
fn b2() -> Be {
    be(v4(198, 18, 0, 12), 12)
}
fn b1v6() -> Be {
    be(v6("fd00::11"), 0x11)
}
fn b2v6() -> Be {
    be(v6("fd00::12"), 0x12)
}

const SRC4: [u8; 4] = [198, 18, 100, 0];
const VARY_BITS: u8 = 8;
const MTU: u32 = 1500;

fn settings() -> Settings {
    Settings {
        mtu: MTU,
        ipip_src_v4: SRC4,
        ipip_src_v6: addr16(v6("fd00::2")),
        ipip_src_v4_vary_bits: VARY_BITS,
        _pad: [0; 3],
        checks_off: 0,
        macs: [LB_MAC, VRRP_MAC, [0; 6], [0; 6]],
        // The config's default guard: far above what any case here inserts.
        flood_window_limit: gateway_common::flood_window_limit(
            gateway::config::DEFAULT_FLOOD_NEW_FLOWS_PER_CPU,
        ),
        nat_flood_window_limit: 0,
    }
}

fn svc(vip: IpAddr, port: u16, proto: u8, mode: u8, backends: Vec<Be>) -> Svc {
    Svc {
        vip,
        port,
        proto,
        mode,
        table_size: 257,
        backends,
        protection: None,
    }
}

/// The standard world: every mode x family x protocol, plus an empty service.
fn services() -> Vec<Svc> {
    vec![
        svc(vip4(), 80, PROTO_TCP, MODE_L2DSR, vec![b1()]),
        svc(vip4(), 53, PROTO_UDP, MODE_L2DSR, vec![b1()]),
        svc(vip6(), 80, PROTO_TCP, MODE_L2DSR, vec![b1v6()]),
        svc(vip6(), 53, PROTO_UDP, MODE_L2DSR, vec![b1v6()]),
        svc(vip4_ipip(), 80, PROTO_TCP, MODE_IPIP, vec![b2()]),
        svc(vip4_ipip(), 53, PROTO_UDP, MODE_IPIP, vec![b2()]),
        svc(vip6_ipip(), 80, PROTO_TCP, MODE_IPIP, vec![b2v6()]),
        svc(vip6_ipip(), 53, PROTO_UDP, MODE_IPIP, vec![b2v6()]),
        svc(vip4_empty(), 80, PROTO_TCP, MODE_L2DSR, vec![]),
    ]
}

enum Out {
    /// Passed untouched.
    Same,
    /// Exactly these bytes.
    Bytes(Vec<u8>),
    /// Dropped: no output to compare.
    Dropped,
}

struct Case {
    name: &'static str,
    input: Vec<u8>,
    verdict: u32,
    out: Out,
    /// The global counter that must grow by exactly one.
    stat: u32,
}

fn l2_len(frame: &[u8]) -> usize {
    if frame[12..14] == [0x81, 0x00] {
        18
    } else {
        14
    }
}

/// The frame with its MACs rewritten for direct server return.
fn dsr(input: &[u8], b: &Be) -> Vec<u8> {
    let mut out = input.to_vec();
    out[0..6].copy_from_slice(&b.mac);
    out[6..12].copy_from_slice(&LB_MAC);
    out
}

/// The frame encapsulated towards `b`, built independently of the program: L2 (with the
/// VLAN tag, if any), an outer IPv4 or IPv6 header, then the original IP packet.
fn ipip(input: &[u8], b: &Be, key: &FlowKey) -> Vec<u8> {
    let l2 = l2_len(input);
    let inner = &input[l2..];
    let hash = hash::flow_hash(key);
    let mut out = input[..l2].to_vec();
    out[0..6].copy_from_slice(&b.mac);
    out[6..12].copy_from_slice(&LB_MAC);
    match b.addr {
        IpAddr::V4(dst) => {
            let tos = inner[1];
            let df = inner[6] & 0x40;
            let len = (20 + inner.len()) as u16;
            let src = [SRC4[0], SRC4[1], SRC4[2], (hash & 0xff) as u8];
            let mut h = vec![0x45, tos];
            h.extend(len.to_be_bytes());
            h.extend([0, 0, df, 0, 64, 4, 0, 0]);
            h.extend(src);
            h.extend(dst.octets());
            let c = packet::checksum(packet::sum16(0, &h));
            h[10..12].copy_from_slice(&c.to_be_bytes());
            out.extend(h);
        }
        IpAddr::V6(dst) => {
            let tc = ((inner[0] & 0x0f) << 4) | (inner[1] >> 4);
            let word = (6u32 << 28) | (u32::from(tc) << 20) | (hash & 0xfffff);
            out.extend(word.to_be_bytes());
            out.extend((inner.len() as u16).to_be_bytes());
            out.extend([41, 64]);
            out.extend(
                v6("fd00::2")
                    .to_string()
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
            );
            out.extend(dst.octets());
        }
    }
    if l2 == 18 {
        out[16..18].copy_from_slice(&[0x08, 0x00]);
        if b.addr.is_ipv6() {
            out[16..18].copy_from_slice(&[0x86, 0xdd]);
        }
    }
    out.extend(inner);
    out
}

fn key_of(f: &Frame) -> FlowKey {
    let ip = f.ip.as_ref().unwrap();
    match &ip.l4 {
        L4::Tcp { sport, dport, .. } => flow_key(ip.src, ip.dst, *sport, *dport, PROTO_TCP),
        L4::Udp { sport, dport, .. } => flow_key(ip.src, ip.dst, *sport, *dport, PROTO_UDP),
        _ => panic!("no flow"),
    }
}

fn with_vlan(mut f: Frame) -> Frame {
    f.vlan = Some(0x0064);
    f
}

fn with_options(mut f: Frame, opts: Vec<u8>) -> Frame {
    f.ip.as_mut().unwrap().options = opts;
    f
}

fn with_ext(mut f: Frame, ext: Vec<Ext>) -> Frame {
    f.ip.as_mut().unwrap().ext = ext;
    f
}

fn raw_l4(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Frame {
    Frame::ip(Ip::new(
        src,
        dst,
        L4::Raw {
            proto,
            bytes: vec![0x11; len],
        },
    ))
}

/// An ICMP error (as a router on the way back would send it) quoting a packet that the
/// backend sent from `vip:vport` to `client:cport`.
fn icmp_error(client: IpAddr, vip: IpAddr, cport: u16, vport: u16, ty: u8, code: u8) -> Frame {
    let quoted = Ip::new(
        vip,
        client,
        L4::Tcp {
            sport: vport,
            dport: cport,
            flags: TCP_ACK,
            seq: 9,
            payload: vec![],
        },
    );
    let body = quoted.bytes();
    let router = if client.is_ipv4() {
        v4(198, 18, 0, 254)
    } else {
        v6("fd00::fe")
    };
    let rest = if ty == 3 || ty == 2 {
        [0, 0, 0x05, 0x00]
    } else {
        [0; 4]
    };
    Frame::ip(Ip::new(
        router,
        vip,
        L4::Icmp {
            ty,
            code,
            rest,
            body,
        },
    ))
}

fn big(mut f: Frame, payload: usize) -> Frame {
    if let Some(ip) = f.ip.as_mut() {
        match &mut ip.l4 {
            L4::Tcp { payload: p, .. } | L4::Udp { payload: p, .. } => *p = vec![0x5a; payload],
            _ => {}
        }
    }
    f
}

/// The ICMP too-big answer the balancer must send back for `input`.
fn too_big_reply(input: &[u8], mtu_inner: u32) -> Vec<u8> {
    let l2 = l2_len(input);
    let ip = &input[l2..];
    let quote = ip[..128].to_vec();
    let v6 = ip[0] >> 4 == 6;
    let (client, vip) = if v6 {
        let s: [u8; 16] = ip[8..24].try_into().unwrap();
        let d: [u8; 16] = ip[24..40].try_into().unwrap();
        (IpAddr::from(s), IpAddr::from(d))
    } else {
        let s: [u8; 4] = ip[12..16].try_into().unwrap();
        let d: [u8; 4] = ip[16..20].try_into().unwrap();
        (IpAddr::from(s), IpAddr::from(d))
    };
    let (ty, code, rest) = if v6 {
        (2, 0, mtu_inner.to_be_bytes())
    } else {
        let m = (mtu_inner as u16).to_be_bytes();
        (3, 4, [0, 0, m[0], m[1]])
    };
    let mut r = Ip::new(
        vip,
        client,
        L4::Icmp {
            ty,
            code,
            rest,
            body: quote,
        },
    );
    r.df = false;
    r.id = 0;
    let mut f = Frame::ip(r);
    f.dst = CLIENT_MAC;
    f.src = LB_MAC;
    f.bytes()
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    let mut add = |name, input: Vec<u8>, verdict, out, stat| {
        v.push(Case {
            name,
            input,
            verdict,
            out,
            stat,
        })
    };

    // Each mode x family x protocol, forwarded.
    for (name, f, b, ipip_mode) in [
        (
            "l2dsr v4 tcp syn",
            tcp(c4(), vip4(), 40001, 80, TCP_SYN),
            b1(),
            false,
        ),
        ("l2dsr v4 udp", udp(c4(), vip4(), 40002, 53), b1(), false),
        (
            "l2dsr v6 tcp syn",
            tcp(c6(), vip6(), 40003, 80, TCP_SYN),
            b1v6(),
            false,
        ),
        ("l2dsr v6 udp", udp(c6(), vip6(), 40004, 53), b1v6(), false),
        (
            "ipip v4 tcp syn",
            tcp(c4(), vip4_ipip(), 40005, 80, TCP_SYN),
            b2(),
            true,
        ),
        ("ipip v4 udp", udp(c4(), vip4_ipip(), 40006, 53), b2(), true),
        (
            "ipip v6 tcp syn",
            tcp(c6(), vip6_ipip(), 40007, 80, TCP_SYN),
            b2v6(),
            true,
        ),
        (
            "ipip v6 udp",
            udp(c6(), vip6_ipip(), 40008, 53),
            b2v6(),
            true,
        ),
        (
            "vlan l2dsr v4 tcp",
            with_vlan(tcp(c4(), vip4(), 40009, 80, TCP_SYN)),
            b1(),
            false,
        ),
        (
            "vlan ipip v6 udp",
            with_vlan(udp(c6(), vip6_ipip(), 40010, 53)),
            b2v6(),
            true,
        ),
        (
            "vlan ipip v4 tcp",
            with_vlan(tcp(c4(), vip4_ipip(), 40011, 80, TCP_SYN)),
            b2(),
            true,
        ),
        (
            "ipv6 eight extension headers, one an atomic fragment",
            with_ext(
                udp(c6(), vip6(), 40017, 53),
                vec![
                    Ext::HopByHop,
                    Ext::DestOpts,
                    Ext::Routing,
                    Ext::Fragment {
                        offset: 0,
                        more: false,
                    },
                    Ext::DestOpts,
                    Ext::DestOpts,
                    Ext::DestOpts,
                    Ext::DestOpts,
                ],
            ),
            b1v6(),
            false,
        ),
        (
            "ipv6 atomic fragment ipip",
            with_ext(
                udp(c6(), vip6_ipip(), 40018, 53),
                vec![Ext::Fragment {
                    offset: 0,
                    more: false,
                }],
            ),
            b2v6(),
            true,
        ),
        (
            "ipv4 options (8 bytes) l2dsr",
            with_options(
                tcp(c4(), vip4(), 40012, 80, TCP_SYN),
                vec![1, 1, 1, 1, 1, 1, 1, 0],
            ),
            b1(),
            false,
        ),
        (
            "ipv4 options (40 bytes) ipip",
            with_options(tcp(c4(), vip4_ipip(), 40013, 80, TCP_SYN), vec![1; 40]),
            b2(),
            true,
        ),
        (
            "ipv6 hop-by-hop + dest-opts l2dsr",
            with_ext(
                tcp(c6(), vip6(), 40014, 80, TCP_SYN),
                vec![Ext::HopByHop, Ext::DestOpts],
            ),
            b1v6(),
            false,
        ),
        (
            "ipv6 hbh + routing + dest-opts ipip",
            with_ext(
                udp(c6(), vip6_ipip(), 40015, 53),
                vec![Ext::HopByHop, Ext::Routing, Ext::DestOpts],
            ),
            b2v6(),
            true,
        ),
        (
            "ipv6 four extension headers",
            with_ext(
                udp(c6(), vip6(), 40016, 53),
                vec![Ext::HopByHop, Ext::DestOpts, Ext::Routing, Ext::DestOpts],
            ),
            b1v6(),
            false,
        ),
    ] {
        let bytes = f.bytes();
        let out = if ipip_mode {
            ipip(&bytes, &b, &key_of(&f))
        } else {
            dsr(&bytes, &b)
        };
        let stat = if name.contains("syn")
            || name.contains("tcp")
            || name.contains("options")
            || name.contains("hop-by-hop")
        {
            STAT_TABLE_STEADY
        } else {
            STAT_CT_MISS_NON_SYN
        };
        add(name, bytes, XDP_TX, Out::Bytes(out), stat);
    }

    // Not for a service: passed untouched.
    add(
        "tcp to a non-VIP address",
        tcp(c4(), v4(198, 18, 0, 2), 40100, 80, TCP_SYN).bytes(),
        XDP_PASS,
        Out::Same,
        STAT_PASS_NOT_VIP,
    );
    add(
        "tcp to a VIP on another port",
        tcp(c4(), vip4(), 40101, 443, TCP_SYN).bytes(),
        XDP_PASS,
        Out::Same,
        STAT_PASS_NOT_VIP,
    );
    add(
        "udp to a tcp-only VIP port",
        udp(c4(), vip4(), 40102, 80).bytes(),
        XDP_PASS,
        Out::Same,
        STAT_PASS_NOT_VIP,
    );
    add(
        "ipv6 to a non-VIP address",
        tcp(c6(), v6("fd00::2"), 40103, 80, TCP_SYN).bytes(),
        XDP_PASS,
        Out::Same,
        STAT_PASS_NOT_VIP,
    );
    add(
        "icmp echo to a VIP",
        Frame::ip(Ip::new(
            c4(),
            vip4(),
            L4::Icmp {
                ty: 8,
                code: 0,
                rest: [0, 1, 0, 1],
                body: vec![1; 16],
            },
        ))
        .bytes(),
        XDP_PASS,
        Out::Same,
        STAT_PASS_NOT_VIP,
    );
    add(
        "gre to a VIP",
        raw_l4(c4(), vip4(), 47, 24).bytes(),
        XDP_PASS,
        Out::Same,
        STAT_PASS_NOT_VIP,
    );
    let arp = Frame {
        dst: [0xff; 6],
        src: CLIENT_MAC,
        vlan: None,
        ip: None,
        ethertype: 0x0806,
        raw: vec![0; 28],
    };
    add("arp", arp.bytes(), XDP_PASS, Out::Same, STAT_PASS_NOT_IP);

    // Truncated or malformed: passed and counted by layer.
    let tagged = with_vlan(tcp(c4(), vip4(), 40200, 80, TCP_SYN)).bytes();
    add(
        "vlan tag cut short",
        tagged[..16].to_vec(),
        XDP_PASS,
        Out::Same,
        STAT_PARSE_L2,
    );
    let t4 = tcp(c4(), vip4(), 40201, 80, TCP_SYN).bytes();
    add(
        "ipv4 header cut at 19 bytes",
        t4[..14 + 19].to_vec(),
        XDP_PASS,
        Out::Same,
        STAT_PARSE_L3,
    );
    add(
        "ipv4 cut at the L4 boundary",
        t4[..14 + 20].to_vec(),
        XDP_PASS,
        Out::Same,
        STAT_PARSE_L3,
    );
    add(
        "ipv4 cut inside tcp",
        t4[..14 + 30].to_vec(),
        XDP_PASS,
        Out::Same,
        STAT_PARSE_L3,
    );
    add(
        "ipv4 with a 12-byte tcp header",
        raw_l4(c4(), vip4(), PROTO_TCP, 12).bytes(),
        XDP_PASS,
        Out::Same,
        STAT_PARSE_L4,
    );
    add(
        "ipv4 with a 4-byte udp header",
        raw_l4(c4(), vip4(), PROTO_UDP, 4).bytes(),
        XDP_PASS,
        Out::Same,
        STAT_PARSE_L4,
    );
    let mut bad_ver = t4.clone();
    bad_ver[14] = 0x65;
    add(
        "ipv4 ethertype with version 6",
        bad_ver,
        XDP_PASS,
        Out::Same,
        STAT_PARSE_L3,
    );
    let mut bad_ihl = t4.clone();
    bad_ihl[14] = 0x44;
    add("ipv4 ihl 4", bad_ihl, XDP_PASS, Out::Same, STAT_PARSE_L3);
    let t6 = tcp(c6(), vip6(), 40202, 80, TCP_SYN).bytes();
    add(
        "ipv6 header cut at 30 bytes",
        t6[..14 + 30].to_vec(),
        XDP_PASS,
        Out::Same,
        STAT_PARSE_L3,
    );
    add(
        "ipv6 cut inside tcp",
        t6[..14 + 50].to_vec(),
        XDP_PASS,
        Out::Same,
        STAT_PARSE_L3,
    );
    add(
        "ipv6 with a 10-byte tcp header",
        raw_l4(c6(), vip6(), PROTO_TCP, 10).bytes(),
        XDP_PASS,
        Out::Same,
        STAT_PARSE_L4,
    );
    let long = with_ext(udp(c6(), vip6(), 40203, 53), vec![Ext::DestOpts; 9]);
    add(
        "ipv6 nine extension headers",
        long.bytes(),
        XDP_PASS,
        Out::Same,
        STAT_PARSE_L3,
    );

    validity_cases(&mut add);

    // Frames for other hosts, or from group addresses, go to the stack untouched; one to an
    // extra MAC the operator listed is ours.
    for (name, dst, src) in [
        ("ip to the broadcast MAC", [0xff; 6], CLIENT_MAC),
        (
            "ip to a multicast MAC",
            [0x01, 0, 0x5e, 0, 0, 5],
            CLIENT_MAC,
        ),
        (
            "ip to another host's MAC",
            [0x02, 0, 0, 0, 0, 0x77],
            CLIENT_MAC,
        ),
        ("ip from a multicast MAC", LB_MAC, [0x03, 0, 0, 0, 0, 1]),
    ] {
        let mut f = tcp(c4(), vip4(), 40040, 80, TCP_SYN);
        f.dst = dst;
        f.src = src;
        add(name, f.bytes(), XDP_PASS, Out::Same, STAT_PASS_NOT_OUR_MAC);
    }
    let mut f = tcp(c6(), vip6(), 40041, 80, TCP_SYN);
    f.dst = VRRP_MAC;
    let bytes = f.bytes();
    let mut out = dsr(&bytes, &b1v6());
    out[6..12].copy_from_slice(&VRRP_MAC);
    add(
        "ip to an extra MAC",
        bytes,
        XDP_TX,
        Out::Bytes(out),
        STAT_TABLE_STEADY,
    );

    // Ethernet padding and trailers stay out of the outer packet.
    for (name, f) in [
        (
            "ipip v4 udp padded to 60 bytes",
            udp(c4(), vip4_ipip(), 40030, 53),
        ),
        (
            "ipip v6 tcp with a trailer",
            tcp(c6(), vip6_ipip(), 40031, 80, TCP_SYN),
        ),
    ] {
        let b = if f.ip.as_ref().unwrap().src.is_ipv4() {
            b2()
        } else {
            b2v6()
        };
        let exact = f.bytes();
        let mut padded = exact.clone();
        padded.resize(exact.len().max(60) + 4, 0xa5);
        let out = ipip(&exact, &b, &key_of(&f));
        let stat = if name.contains("tcp") {
            STAT_TABLE_STEADY
        } else {
            STAT_CT_MISS_NON_SYN
        };
        add(name, padded, XDP_TX, Out::Bytes(out), stat);
    }

    // Fragments: not balanced, passed.
    let mut mf = tcp(c4(), vip4(), 40300, 80, TCP_SYN);
    mf.ip.as_mut().unwrap().mf = true;
    add(
        "ipv4 first fragment",
        mf.bytes(),
        XDP_PASS,
        Out::Same,
        STAT_FRAGMENT,
    );
    let mut off = udp(c4(), vip4(), 40301, 53);
    off.ip.as_mut().unwrap().frag_offset = 100;
    add(
        "ipv4 later fragment",
        off.bytes(),
        XDP_PASS,
        Out::Same,
        STAT_FRAGMENT,
    );
    add(
        "ipv6 fragment header",
        with_ext(
            udp(c6(), vip6(), 40302, 53),
            vec![Ext::Fragment {
                offset: 0,
                more: true,
            }],
        )
        .bytes(),
        XDP_PASS,
        Out::Same,
        STAT_FRAGMENT,
    );
    add(
        "ipv6 fragment after hop-by-hop",
        with_ext(
            udp(c6(), vip6(), 40303, 53),
            vec![
                Ext::HopByHop,
                Ext::Fragment {
                    offset: 8,
                    more: false,
                },
            ],
        )
        .bytes(),
        XDP_PASS,
        Out::Same,
        STAT_FRAGMENT,
    );

    // ICMP errors about VIP flows go to the flow's backend; others pass.
    let e4 = icmp_error(c4(), vip4(), 40400, 80, 3, 4).bytes();
    add(
        "icmp frag-needed about an l2dsr flow",
        e4.clone(),
        XDP_TX,
        Out::Bytes(dsr(&e4, &b1())),
        STAT_ICMP_RELAYED,
    );
    let e6 = icmp_error(c6(), vip6_ipip(), 40401, 80, 2, 0);
    let e6b = e6.bytes();
    let qkey = flow_key(c6(), vip6_ipip(), 40401, 80, PROTO_TCP);
    add(
        "icmpv6 packet-too-big about an ipip flow",
        e6b.clone(),
        XDP_TX,
        Out::Bytes(ipip(&e6b, &b2v6(), &qkey)),
        STAT_ICMP_RELAYED,
    );
    let u6 = icmp_error(c6(), vip6(), 40402, 80, 1, 4).bytes();
    add(
        "icmpv6 unreachable about an l2dsr flow",
        u6.clone(),
        XDP_TX,
        Out::Bytes(dsr(&u6, &b1v6())),
        STAT_ICMP_RELAYED,
    );
    let t4 = icmp_error(c4(), vip4(), 40405, 80, 11, 0).bytes();
    add(
        "icmp time-exceeded about an l2dsr flow",
        t4.clone(),
        XDP_TX,
        Out::Bytes(dsr(&t4, &b1())),
        STAT_ICMP_RELAYED,
    );
    let t6 = icmp_error(c6(), vip6_ipip(), 40406, 80, 3, 0).bytes();
    let t6key = flow_key(c6(), vip6_ipip(), 40406, 80, PROTO_TCP);
    add(
        "icmpv6 time-exceeded about an ipip flow",
        t6.clone(),
        XDP_TX,
        Out::Bytes(ipip(&t6, &b2v6(), &t6key)),
        STAT_ICMP_RELAYED,
    );
    let mut q6 = icmp_error(c6(), vip6(), 40407, 80, 2, 0);
    if let Some(Ip {
        l4: L4::Icmp { body, .. },
        ..
    }) = q6.ip.as_mut()
    {
        let mut quoted = Ip::new(
            vip6(),
            c6(),
            L4::Tcp {
                sport: 80,
                dport: 40407,
                flags: TCP_ACK,
                seq: 9,
                payload: vec![],
            },
        );
        quoted.ext = vec![Ext::DestOpts, Ext::Routing];
        *body = quoted.bytes();
    }
    let q6 = q6.bytes();
    add(
        "icmpv6 packet-too-big quoting extension headers",
        q6.clone(),
        XDP_TX,
        Out::Bytes(dsr(&q6, &b1v6())),
        STAT_ICMP_RELAYED,
    );
    let mut bad4 = icmp_error(c4(), vip4(), 40408, 80, 3, 4).bytes();
    let l2 = l2_len(&bad4);
    bad4[l2 + 20 + 2] ^= 0x10;
    add(
        "icmp error with a bad icmp checksum",
        bad4,
        XDP_DROP,
        Out::Same,
        STAT_DROP_ICMP_CHECKSUM,
    );
    let mut bad6 = icmp_error(c6(), vip6_ipip(), 40409, 80, 2, 0).bytes();
    let last = bad6.len() - 1;
    bad6[last] ^= 0x01;
    add(
        "icmpv6 error with a bad icmp checksum ipip",
        bad6,
        XDP_DROP,
        Out::Same,
        STAT_DROP_ICMP_CHECKSUM,
    );
    add(
        "icmp error about a non-VIP flow",
        icmp_error(c4(), v4(198, 18, 0, 2), 40403, 80, 3, 1).bytes(),
        XDP_PASS,
        Out::Same,
        STAT_PASS_NOT_VIP,
    );
    let mut cut = icmp_error(c4(), vip4(), 40404, 80, 3, 4);
    if let Some(Ip {
        l4: L4::Icmp { body, .. },
        ..
    }) = cut.ip.as_mut()
    {
        body.truncate(22);
    }
    add(
        "icmp error with a cut quote",
        cut.bytes(),
        XDP_PASS,
        Out::Same,
        STAT_PARSE_L4,
    );

    // Too big to encapsulate: answered with ICMP, from the VIP.
    let big4 = big(
        tcp(c4(), vip4_ipip(), 40500, 80, TCP_SYN),
        1500 - 40 - 20 + 1,
    )
    .bytes();
    add(
        "ipip v4 one byte too big",
        big4.clone(),
        XDP_TX,
        Out::Bytes(too_big_reply(&big4, MTU - 20)),
        STAT_TOO_BIG,
    );
    let fits4 = big(tcp(c4(), vip4_ipip(), 40501, 80, TCP_SYN), 1500 - 40 - 20);
    let fits4b = fits4.bytes();
    add(
        "ipip v4 exactly at the MTU",
        fits4b.clone(),
        XDP_TX,
        Out::Bytes(ipip(&fits4b, &b2(), &key_of(&fits4))),
        STAT_TABLE_STEADY,
    );
    let big6 = big(udp(c6(), vip6_ipip(), 40502, 53), 1500 - 40 - 8 - 40 + 1).bytes();
    add(
        "ipip v6 one byte too big",
        big6.clone(),
        XDP_TX,
        Out::Bytes(too_big_reply(&big6, MTU - 40)),
        STAT_TOO_BIG,
    );
    let big6v = with_vlan(big(udp(c6(), vip6_ipip(), 40503, 53), 1500));
    let big6vb = big6v.bytes();
    let mut want = too_big_reply(
        &big(udp(c6(), vip6_ipip(), 40503, 53), 1500).bytes(),
        MTU - 40,
    );
    want.splice(12..12, [0x81, 0x00, 0x00, 0x64]);
    add(
        "vlan ipip v6 too big",
        big6vb,
        XDP_TX,
        Out::Bytes(want),
        STAT_TOO_BIG,
    );
    add(
        "l2dsr ignores the encapsulation MTU",
        big(tcp(c4(), vip4(), 40504, 80, TCP_SYN), 1460).bytes(),
        XDP_TX,
        Out::Dropped,
        STAT_TABLE_STEADY,
    );

    // A service whose table is empty: dropped and counted.
    add(
        "empty table drops",
        tcp(c4(), vip4_empty(), 40600, 80, TCP_SYN).bytes(),
        XDP_DROP,
        Out::Dropped,
        STAT_NO_BACKEND,
    );
    v
}

/// A MAC the operator lists in `extra_macs` (a VRRP virtual router's).
const VRRP_MAC: [u8; 6] = [0x00, 0x00, 0x5e, 0x00, 0x01, 0x07];

/// Recomputes an IPv4 header's checksum after a test changed it.
fn fix_v4_checksum(frame: &mut [u8]) {
    let l2 = l2_len(frame);
    let hlen = usize::from(frame[l2] & 0xf) * 4;
    frame[l2 + 10..l2 + 12].fill(0);
    let mut sum = 0u32;
    for w in frame[l2..l2 + hlen].chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[l2 + 10..l2 + 12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// `f`'s bytes with `change` applied at the IP header (offset 0 = its first byte); an
/// IPv4 header's checksum is fixed afterwards unless `keep_checksum`.
fn mangled(f: Frame, keep_checksum: bool, change: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut b = f.bytes();
    let l2 = l2_len(&b);
    change(&mut b[l2..]);
    if b[l2] >> 4 == 4 && !keep_checksum {
        fix_v4_checksum(&mut b);
    }
    b
}

/// Packets to VIPs that a careful router would drop: each dropped, with its counter, in
/// both families and both modes (RFC 791, 768, 1812, 4291, 5095, 6890, 7126, 8200, 9293).
fn validity_cases(add: &mut impl FnMut(&'static str, Vec<u8>, u32, Out, u32)) {
    let mut drop = |name, bytes, stat| add(name, bytes, XDP_DROP, Out::Same, stat);
    // IP length fields shorter than the transport header.
    drop(
        "ipv4 total length ends inside the tcp header",
        mangled(tcp(c4(), vip4(), 41001, 80, TCP_SYN), false, |ip| {
            ip[2..4].copy_from_slice(&30u16.to_be_bytes())
        }),
        STAT_DROP_BAD_LENGTH,
    );
    drop(
        "ipv4 total length ends inside the udp header ipip",
        mangled(udp(c4(), vip4_ipip(), 41002, 53), false, |ip| {
            ip[2..4].copy_from_slice(&24u16.to_be_bytes())
        }),
        STAT_DROP_BAD_LENGTH,
    );
    drop(
        "ipv6 payload length ends inside the udp header",
        mangled(udp(c6(), vip6(), 41003, 53), false, |ip| {
            ip[4..6].copy_from_slice(&4u16.to_be_bytes())
        }),
        STAT_DROP_BAD_LENGTH,
    );
    drop(
        "ipv6 payload length zero ipip",
        mangled(tcp(c6(), vip6_ipip(), 41004, 80, TCP_SYN), false, |ip| {
            ip[4..6].fill(0)
        }),
        STAT_DROP_BAD_LENGTH,
    );
    // IPv4 header checksum and options.
    drop(
        "ipv4 bad header checksum",
        mangled(tcp(c4(), vip4(), 41010, 80, TCP_SYN), true, |ip| {
            ip[10] ^= 0x40
        }),
        STAT_DROP_IPV4_CHECKSUM,
    );
    drop(
        "ipv4 bad header checksum with options ipip",
        mangled(
            with_options(udp(c4(), vip4_ipip(), 41011, 53), vec![1, 1, 1, 0]),
            true,
            |ip| ip[11] ^= 1,
        ),
        STAT_DROP_IPV4_CHECKSUM,
    );
    drop(
        "ipv4 option of length 1",
        with_options(tcp(c4(), vip4(), 41012, 80, TCP_SYN), vec![7, 1, 0, 0]).bytes(),
        STAT_DROP_IPV4_OPTIONS,
    );
    drop(
        "ipv4 option running past the header ipip",
        with_options(tcp(c4(), vip4_ipip(), 41013, 80, TCP_SYN), vec![1, 7, 9, 0]).bytes(),
        STAT_DROP_IPV4_OPTIONS,
    );
    // Source routing.
    drop(
        "ipv4 loose source route",
        with_options(
            udp(c4(), vip4(), 41020, 53),
            vec![0x83, 7, 4, 198, 18, 0, 9, 0],
        )
        .bytes(),
        STAT_DROP_SOURCE_ROUTE,
    );
    drop(
        "ipv4 strict source route ipip",
        with_options(
            tcp(c4(), vip4_ipip(), 41021, 80, TCP_SYN),
            vec![1, 0x89, 7, 4, 198, 18, 0, 9],
        )
        .bytes(),
        STAT_DROP_SOURCE_ROUTE,
    );
    drop(
        "ipv6 routing header with segments left",
        with_ext(
            tcp(c6(), vip6(), 41022, 80, TCP_SYN),
            vec![Ext::SourceRoute {
                rtype: 4,
                segments_left: 1,
            }],
        )
        .bytes(),
        STAT_DROP_SOURCE_ROUTE,
    );
    drop(
        "ipv6 type 0 routing header ipip",
        with_ext(
            udp(c6(), vip6_ipip(), 41023, 53),
            vec![Ext::SourceRoute {
                rtype: 0,
                segments_left: 0,
            }],
        )
        .bytes(),
        STAT_DROP_SOURCE_ROUTE,
    );
    // IPv6 extension order.
    drop(
        "ipv6 hop-by-hop after destination options",
        with_ext(
            udp(c6(), vip6(), 41030, 53),
            vec![Ext::DestOpts, Ext::HopByHop],
        )
        .bytes(),
        STAT_DROP_IPV6_EXT_ORDER,
    );
    drop(
        "ipv6 second hop-by-hop ipip",
        with_ext(
            tcp(c6(), vip6_ipip(), 41031, 80, TCP_SYN),
            vec![Ext::HopByHop, Ext::HopByHop],
        )
        .bytes(),
        STAT_DROP_IPV6_EXT_ORDER,
    );
    // TCP data offset, UDP length and checksum.
    let ip4 = 20;
    let ip6 = 40;
    drop(
        "tcp data offset below 5",
        mangled(tcp(c4(), vip4(), 41040, 80, TCP_SYN), false, |ip| {
            ip[ip4 + 12] = 4 << 4
        }),
        STAT_DROP_TCP_OFFSET,
    );
    drop(
        "tcp data offset past the packet v6 ipip",
        mangled(tcp(c6(), vip6_ipip(), 41041, 80, TCP_SYN), false, |ip| {
            ip[ip6 + 12] = 15 << 4
        }),
        STAT_DROP_TCP_OFFSET,
    );
    drop(
        "udp length longer than the packet",
        mangled(udp(c4(), vip4(), 41042, 53), false, |ip| {
            let len = u16::from_be_bytes([ip[ip4 + 4], ip[ip4 + 5]]);
            ip[ip4 + 4..ip4 + 6].copy_from_slice(&(len + 8).to_be_bytes())
        }),
        STAT_DROP_UDP_LENGTH,
    );
    drop(
        "udp length shorter than the packet v6 ipip",
        mangled(udp(c6(), vip6_ipip(), 41043, 53), false, |ip| {
            ip[ip6 + 4..ip6 + 6].copy_from_slice(&8u16.to_be_bytes())
        }),
        STAT_DROP_UDP_LENGTH,
    );
    drop(
        "udp over ipv6 with checksum zero",
        mangled(udp(c6(), vip6(), 41044, 53), false, |ip| {
            ip[ip6 + 6..ip6 + 8].fill(0)
        }),
        STAT_DROP_UDP_ZERO_CHECKSUM,
    );
    // Martian sources.
    for (name, src, vip, port) in [
        ("source 0.0.0.9", v4(0, 0, 0, 9), vip4(), 80),
        ("source loopback ipip", v4(127, 0, 0, 1), vip4_ipip(), 80),
        ("source multicast", v4(224, 0, 0, 5), vip4(), 80),
        ("source reserved ipip", v4(240, 0, 0, 1), vip4_ipip(), 80),
        ("source broadcast", v4(255, 255, 255, 255), vip4(), 80),
        ("source ipv6 unspecified", v6("::"), vip6(), 80),
        ("source ipv6 loopback ipip", v6("::1"), vip6_ipip(), 80),
        ("source ipv6 multicast", v6("ff02::1"), vip6(), 80),
        (
            "source ipv4-mapped ipip",
            v6("::ffff:198.18.0.9"),
            vip6_ipip(),
            80,
        ),
        ("source the vip itself", vip4(), vip4(), 80),
        ("source another vip", vip4_ipip(), vip4(), 80),
        ("source another vip v6 ipip", vip6(), vip6_ipip(), 80),
        (
            "source the balancer's address",
            v4(198, 18, 0, 250),
            vip4(),
            80,
        ),
        (
            "source the balancer's address v6 ipip",
            v6("fd00::250"),
            vip6_ipip(),
            80,
        ),
        (
            "source the vip itself v6 ipip",
            vip6_ipip(),
            vip6_ipip(),
            80,
        ),
    ] {
        drop(
            name,
            tcp(src, vip, 41050, port, TCP_SYN).bytes(),
            STAT_DROP_MARTIAN_SOURCE,
        );
    }
}

/// The counters of which every packet moves exactly one: the reason its run ended (see
/// gateway-common's counters).
const VERDICT_STATS: [u32; 22] = [
    STAT_PASS_NOT_OUR_MAC,
    STAT_DROP_ICMP_CHECKSUM,
    STAT_DROP_BAD_LENGTH,
    STAT_DROP_IPV4_CHECKSUM,
    STAT_DROP_IPV4_OPTIONS,
    STAT_DROP_SOURCE_ROUTE,
    STAT_DROP_IPV6_EXT_ORDER,
    STAT_DROP_TCP_OFFSET,
    STAT_DROP_UDP_LENGTH,
    STAT_DROP_UDP_ZERO_CHECKSUM,
    STAT_DROP_MARTIAN_SOURCE,
    STAT_PASS_NOT_IP,
    STAT_PASS_NOT_VIP,
    STAT_PARSE_L2,
    STAT_PARSE_L3,
    STAT_PARSE_L4,
    STAT_FRAGMENT,
    STAT_NO_BACKEND,
    STAT_DROP_STALE_BACKEND,
    STAT_FORWARDED,
    STAT_TOO_BIG,
    STAT_DROP_INTERNAL,
];

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn golden_cases() {
    if !common::privileged("golden_cases") {
        return;
    }
    let w = World::new(&services(), settings());
    let cases = cases();
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let before = w.stats();
        let (verdict, out) = w.run(&c.input);
        let after = w.stats();
        let mut errs = Vec::new();
        if verdict != c.verdict {
            errs.push(format!("verdict {verdict}, want {}", c.verdict));
        }
        match &c.out {
            Out::Same if out != c.input => errs.push("frame changed".into()),
            Out::Bytes(want) if &out != want => errs.push(format!(
                "output differs at byte {:?}\n   got  {:02x?}\n   want {:02x?}",
                out.iter()
                    .zip(want)
                    .position(|(a, b)| a != b)
                    .unwrap_or(out.len().min(want.len())),
                &out[..out.len().min(80)],
                &want[..want.len().min(80)]
            )),
            _ => {}
        }
        if verdict == XDP_TX
            && let Err(e) = packet::check(&out)
        {
            errs.push(format!("emitted frame: {e}"));
        }
        let moved = after[c.stat as usize] - before[c.stat as usize];
        if moved != 1 {
            errs.push(format!(
                "{} moved by {moved}, want 1",
                STAT_NAMES[c.stat as usize]
            ));
        }
        if after[STAT_RX_PACKETS as usize] - before[STAT_RX_PACKETS as usize] != 1 {
            errs.push("rx_packets did not move by one".into());
        }
        let verdicts: Vec<&str> = VERDICT_STATS
            .iter()
            .flat_map(|&s| {
                let n = after[s as usize] - before[s as usize];
                std::iter::repeat_n(STAT_NAMES[s as usize], n as usize)
            })
            .collect();
        if verdicts.len() != 1 {
            errs.push(format!(
                "verdict counters moved: {verdicts:?}, want exactly one"
            ));
        }
        if !errs.is_empty() {
            failures.push(format!("{}: {}", c.name, errs.join("; ")));
        }
    }
    println!("{} golden cases run", cases.len());
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// Conntrack: stickiness, rescheduling, drain. Each scenario has its own maps.

fn one_service(backends: Vec<Be>) -> Vec<Svc> {
    vec![
        svc(vip4(), 80, PROTO_TCP, MODE_L2DSR, backends),
        svc(vip4(), 53, PROTO_UDP, MODE_L2DSR, vec![b1(), b2()]),
    ]
}

fn weighted(mut b: Be, weight: u32) -> Be {
    b.weight = weight;
    b
}

/// Admin drain: keeps its flows, takes no new ones.
fn drain(mut b: Be) -> Be {
    b.admin = AdminState::Drain;
    b
}

/// Probed down.
fn down(mut b: Be) -> Be {
    b.up = false;
    b
}

/// Runs `f` and returns the MAC it was sent to (panics unless XDP_TX).
fn sent_to(w: &World, f: &Frame) -> [u8; 6] {
    let (verdict, out) = w.run(&f.bytes());
    assert_eq!(verdict, XDP_TX, "not forwarded");
    packet::check(&out).expect("valid frame");
    out[0..6].try_into().unwrap()
}

fn stat(w: &World, s: u32) -> u64 {
    w.stats()[s as usize]
}

fn privileged_world(name: &str, services: &[Svc]) -> Option<World> {
    common::privileged(name).then(|| World::new(services, settings()))
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn established_flows_stay_on_their_backend_when_the_table_changes() {
    let Some(mut w) = privileged_world("established_flows_stay", &one_service(vec![b1()])) else {
        return;
    };
    let ports = 41000..41020;
    for port in ports.clone() {
        assert_eq!(sent_to(&w, &tcp(c4(), vip4(), port, 80, TCP_SYN)), b1().mac);
    }
    // b2 joins with a hundred times b1's weight: most slots, and so most of those flows'
    // slots, now name b2, while b1 stays up and in the table.
    let services = one_service(vec![b1(), weighted(b2(), 100)]);
    w.set(&services);
    let on_b2 = |w: &World, port| {
        let key = key_of(&tcp(c4(), vip4(), port, 80, TCP_SYN));
        w.placed(&services[0], &key) == w.id(b2().addr)
    };
    let port = ports
        .clone()
        .find(|p| on_b2(&w, *p))
        .expect("a pinned flow whose slot now names b2");
    let syn = tcp(c4(), vip4(), port, 80, TCP_SYN);
    let ack = tcp(c4(), vip4(), port, 80, TCP_ACK);
    // The flow began on a settled slot: nothing was recorded. Its slot remembers b1.
    assert_eq!(w.dp.conntrack_get(&key_of(&ack)), None);
    let slot = w.slot(&services[0], &key_of(&ack));
    assert_eq!(
        (slot.cur(), slot.prev()),
        (w.id(b2().addr), w.id(b1().addr))
    );
    let (hits, previous) = (stat(&w, STAT_CT_HIT), stat(&w, STAT_SLOT_PREVIOUS));
    for _ in 0..3 {
        assert_eq!(sent_to(&w, &ack), b1().mac, "established flow moved");
    }
    // The first packet follows the slot's previous backend and is recorded; then hits.
    assert_eq!(stat(&w, STAT_SLOT_PREVIOUS), previous + 1);
    assert_eq!(stat(&w, STAT_CT_HIT), hits + 2);
    assert_eq!(w.dp.conntrack_get(&key_of(&ack)), Some(w.id(b1().addr)));
    let fresh = (41100..41200)
        .find(|p| on_b2(&w, *p))
        .expect("a new flow placed on b2");
    assert_eq!(
        sent_to(&w, &tcp(c4(), vip4(), fresh, 80, TCP_SYN)),
        b2().mac
    );
    // A SYN on the tracked 5-tuple is a new connection reusing the ports: placed again.
    assert_eq!(sent_to(&w, &syn), b2().mac);
    assert_eq!(w.dp.conntrack_get(&key_of(&syn)), Some(w.id(b2().addr)));
    assert_eq!(sent_to(&w, &ack), b2().mac);
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn flows_of_a_backend_that_goes_down_are_rescheduled() {
    let Some(mut w) = privileged_world("flows_rescheduled", &one_service(vec![b1()])) else {
        return;
    };
    let syn = tcp(c4(), vip4(), 42000, 80, TCP_SYN);
    let ack = tcp(c4(), vip4(), 42000, 80, TCP_ACK);
    assert_eq!(sent_to(&w, &syn), b1().mac);
    w.set(&one_service(vec![down(b1()), b2()]));
    let before = stat(&w, STAT_RESCHEDULED);
    assert_eq!(sent_to(&w, &ack), b2().mac);
    assert_eq!(stat(&w, STAT_RESCHEDULED), before + 1);
    assert_eq!(
        w.dp.conntrack_get(&key_of(&ack)),
        Some(w.id(b2().addr)),
        "entry not updated"
    );
    // Now pinned to b2: a hit, not another reschedule.
    assert_eq!(sent_to(&w, &ack), b2().mac);
    assert_eq!(stat(&w, STAT_RESCHEDULED), before + 1);

    // A backend removed from the config entirely is cleared from the map: same effect.
    // ack2's slot had no packet before b1 went down: it stayed settled, and ack2's flow
    // begins on b2 (unrecorded).
    let ack2 = tcp(c4(), vip4(), 42001, 80, TCP_ACK);
    w.set(&one_service(vec![b2()]));
    assert_eq!(sent_to(&w, &ack2), b2().mac);
    assert_eq!(stat(&w, STAT_RESCHEDULED), before + 1);
    w.set(&one_service(vec![b1()]));
    assert_eq!(sent_to(&w, &ack2), b1().mac);
    assert_eq!(stat(&w, STAT_RESCHEDULED), before + 2);
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn a_draining_backend_keeps_its_flows_and_gets_no_new_ones() {
    let Some(mut w) = privileged_world("drain", &one_service(vec![b1()])) else {
        return;
    };
    let ack = tcp(c4(), vip4(), 43000, 80, TCP_ACK);
    assert_eq!(
        sent_to(&w, &tcp(c4(), vip4(), 43000, 80, TCP_SYN)),
        b1().mac
    );
    w.set(&one_service(vec![drain(b1()), b2()]));
    for _ in 0..3 {
        assert_eq!(
            sent_to(&w, &ack),
            b1().mac,
            "draining backend lost its flow"
        );
    }
    for port in 43001..43050 {
        assert_eq!(sent_to(&w, &tcp(c4(), vip4(), port, 80, TCP_SYN)), b2().mac);
    }
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn udp_flows_stick_after_their_first_packet() {
    let Some(mut w) = privileged_world("udp_sticky", &one_service(vec![b1()])) else {
        return;
    };
    let services = one_service(vec![b1()]);
    let dns = &services[1];
    let misses = stat(&w, STAT_CT_MISS_NON_SYN);
    let mut placed = Vec::new();
    for port in 44000..44020 {
        let f = udp(c4(), vip4(), port, 53);
        let want = w.placed(dns, &key_of(&f));
        let mac = sent_to(&w, &f);
        assert_eq!(
            mac,
            if want == w.id_in(1, b1().addr) {
                b1().mac
            } else {
                b2().mac
            }
        );
        placed.push((f, mac));
    }
    assert_eq!(stat(&w, STAT_CT_MISS_NON_SYN), misses + 20);
    // Reweight heavily: the table changes, established UDP flows do not.
    let mut changed = one_service(vec![b1()]);
    changed[1].backends = vec![b1(), weighted(b2(), 50)];
    w.set(&changed);
    let hits = stat(&w, STAT_CT_HIT);
    for (f, mac) in &placed {
        assert_eq!(&sent_to(&w, f), mac);
    }
    assert_eq!(stat(&w, STAT_CT_HIT), hits + 20);
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn new_flows_land_where_the_maglev_table_says() {
    let three = vec![b1(), b2(), be(v4(198, 18, 0, 13), 13)];
    let Some(w) = privileged_world("maglev_placement", &one_service(three.clone())) else {
        return;
    };
    let services = one_service(three.clone());
    let mut seen = std::collections::BTreeSet::new();
    for port in 45000..45300 {
        let f = tcp(c4(), vip4(), port, 80, TCP_SYN);
        let id = w.placed(&services[0], &key_of(&f));
        let b = three
            .iter()
            .find(|b| w.id(b.addr) == id)
            .expect("placed on a configured backend");
        assert_eq!(sent_to(&w, &f), b.mac, "port {port}");
        seen.insert(id);
    }
    assert_eq!(seen.len(), 3, "300 flows should reach all three backends");
    let s = w.dp.service_stats(0).unwrap();
    assert_eq!((s.packets, s.new_flows), (300, 300));
    let per_backend: u64 = three
        .iter()
        .map(|b| w.dp.backend_stats(w.id(b.addr)).unwrap().packets)
        .sum();
    assert_eq!(per_backend, 300);
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn a_table_slot_naming_a_cleared_backend_is_counted_apart_from_no_backend() {
    let Some(mut w) = privileged_world("stale_backend", &one_service(vec![b1()])) else {
        return;
    };
    let ack = tcp(c4(), vip4(), 46000, 80, TCP_ACK);
    assert_eq!(
        sent_to(&w, &tcp(c4(), vip4(), 46000, 80, TCP_SYN)),
        b1().mac
    );
    // Clear b1 behind the planner's back: the table still names it. The agent never
    // writes this state (it clears a backend only after no table names it).
    let id = w.id(b1().addr);
    gateway::mapsync::MapWriter::set_backend(&mut w.dp, id, &Backend::default())
        .expect("clear the backend");
    let stale = stat(&w, STAT_DROP_STALE_BACKEND);
    let none = stat(&w, STAT_NO_BACKEND);
    // A new flow's slot names the cleared id.
    let (verdict, _) = w.run(&tcp(c4(), vip4(), 46001, 80, TCP_SYN).bytes());
    assert_eq!(verdict, XDP_DROP);
    // So does the established flow's (a settled slot: its answer is the table's).
    let (verdict, _) = w.run(&ack.bytes());
    assert_eq!(verdict, XDP_DROP);
    assert_eq!(stat(&w, STAT_DROP_STALE_BACKEND), stale + 2);
    assert_eq!(stat(&w, STAT_NO_BACKEND), none);

    // A service entry whose table lies past the end of TABLES: the same disagreement.
    let svc = &one_service(vec![b1()])[0];
    let key = service_key(svc);
    let mut value = w.applied.services[&key].value;
    value.table_offset = w.dp.options().layout().slots();
    gateway::mapsync::MapWriter::set_service(&mut w.dp, &key, &value).expect("point it away");
    let (verdict, _) = w.run(&tcp(c4(), vip4(), 46002, 80, TCP_SYN).bytes());
    assert_eq!(verdict, XDP_DROP);
    assert_eq!(stat(&w, STAT_DROP_STALE_BACKEND), stale + 3);
    assert_eq!(stat(&w, STAT_NO_BACKEND), none);
}

/// Each check can be turned off (`skip_checks`), and only that check: with the IPv4 checksum
/// check off a packet with a bad checksum is forwarded, one with a source route is not.
#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn a_check_turned_off_lets_its_packets_through_and_only_those() {
    let Some(w) = common::privileged("check_turned_off").then(|| {
        let s = Settings {
            checks_off: CHECK_IPV4_CHECKSUM | CHECK_MARTIAN_SOURCE,
            ..settings()
        };
        World::new(&services(), s)
    }) else {
        return;
    };
    let bad_sum = mangled(tcp(c4(), vip4(), 42001, 80, TCP_SYN), true, |ip| {
        ip[10] ^= 0x40
    });
    let (verdict, out) = w.run(&bad_sum);
    assert_eq!(verdict, XDP_TX);
    assert_eq!(out, dsr(&bad_sum, &b1()));
    let martian = tcp(v4(127, 0, 0, 1), vip4(), 42002, 80, TCP_SYN).bytes();
    assert_eq!(w.run(&martian).0, XDP_TX);
    let routed = with_options(
        udp(c4(), vip4(), 42003, 53),
        vec![0x83, 7, 4, 198, 18, 0, 9, 0],
    );
    let before = stat(&w, STAT_DROP_SOURCE_ROUTE);
    assert_eq!(w.run(&routed.bytes()).0, XDP_DROP);
    assert_eq!(stat(&w, STAT_DROP_SOURCE_ROUTE), before + 1);
}

/// The verifier's limit is a million processed instructions; a program that needs most of
/// it fails to load after a small change (a changed branch can double the paths). Keep a
/// wide margin, and print where it stands.
#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn the_program_verifies_with_room_to_spare() {
    let Some(w) = privileged_world("verifier_headroom", &services()) else {
        return;
    };
    let info = w.dp.program().unwrap().info().unwrap();
    let n = info
        .verified_instruction_count()
        .expect("the kernel reports verified instructions");
    println!("the verifier processed {n} instructions (limit 1,000,000)");
    assert!(
        n < 400_000,
        "{n} instructions processed: too close to the limit"
    );
}

// ---------------------------------------------------------------------------------------
// Table slots: settled slots answer alone; changed slots remember their previous backend.

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn settled_slots_place_every_packet_without_touching_conntrack() {
    let Some(w) = privileged_world("settled_slots", &one_service(vec![b1(), b2()])) else {
        return;
    };
    let services = one_service(vec![b1(), b2()]);
    let steady = stat(&w, STAT_TABLE_STEADY);
    // A SYN flood from a thousand sources, and their handshakes' ACKs.
    for i in 0..1000u16 {
        let src = v4(198, 19, (i >> 8) as u8, i as u8);
        for flags in [TCP_SYN, TCP_ACK, TCP_ACK | TCP_PSH] {
            let f = tcp(src, vip4(), 40000 + i, 80, flags);
            let want = w.placed(&services[0], &key_of(&f));
            let mac = if want == w.id(b1().addr) {
                b1().mac
            } else {
                b2().mac
            };
            assert_eq!(sent_to(&w, &f), mac, "source {src}");
        }
    }
    assert_eq!(stat(&w, STAT_TABLE_STEADY), steady + 3000);
    assert_eq!(w.dp.conntrack_len(), 0, "nothing recorded on settled slots");
    // New flows are still counted per service (the SYNs).
    assert_eq!(w.dp.service_stats(0).unwrap().new_flows, 1000);
}

/// Finds a port whose flow from `c4()` hashes to a slot for which `pred` holds.
fn port_where(range: std::ops::Range<u16>, mut pred: impl FnMut(u16) -> bool) -> u16 {
    range.clone().find(|p| pred(*p)).expect("a port in range")
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn a_slot_changed_twice_keeps_the_oldest_flows_and_the_ones_begun_in_between() {
    let b3 = be(v4(198, 18, 0, 13), 13);
    let Some(mut w) = privileged_world("changed_twice", &one_service(vec![b1()])) else {
        return;
    };
    // Every slot names b1: flows begin there (and record nothing, but mark their slots
    // used).
    let olds = 47000..47100u16;
    for p in 47000..47600 {
        assert_eq!(sent_to(&w, &tcp(c4(), vip4(), p, 80, TCP_SYN)), b1().mac);
    }
    // b2 takes nearly every slot (b1 stays up); flows begin on b2.
    let two = one_service(vec![b1(), weighted(b2(), 100)]);
    w.set(&two);
    let mids: Vec<u16> = (47100..47300)
        .filter(|p| {
            w.placed(&two[0], &key_of(&tcp(c4(), vip4(), *p, 80, TCP_SYN))) == w.id(b2().addr)
        })
        .collect();
    for p in &mids {
        let syn = tcp(c4(), vip4(), *p, 80, TCP_SYN);
        assert_eq!(sent_to(&w, &syn), b2().mac);
        assert_eq!(
            w.dp.conntrack_get(&key_of(&syn)),
            Some(w.id(b2().addr)),
            "a SYN on a changed slot is recorded"
        );
    }
    // Then b3 takes nearly every slot from both.
    let three = one_service(vec![b1(), weighted(b2(), 1), weighted(b3.clone(), 10000)]);
    w.set(&three);
    let ack = |p: u16| tcp(c4(), vip4(), p, 80, TCP_ACK);
    let b3_id = w.id(b3.addr);
    // The old flows' slots still remember b1, not b2: they follow b1.
    let moved_old: Vec<u16> = olds
        .clone()
        .filter(|p| w.slot(&three[0], &key_of(&ack(*p))).cur() == b3_id)
        .collect();
    assert!(
        moved_old.len() > 50,
        "{} old flows' slots moved",
        moved_old.len()
    );
    for p in &moved_old {
        assert_eq!(w.slot(&three[0], &key_of(&ack(*p))).prev(), w.id(b1().addr));
        assert_eq!(sent_to(&w, &ack(*p)), b1().mac, "old flow {p} moved");
    }
    // The flows begun in between follow their entries.
    let moved_mid = mids
        .iter()
        .filter(|p| w.slot(&three[0], &key_of(&ack(**p))).cur() == b3_id)
        .count();
    assert!(
        moved_mid > 50,
        "{moved_mid} of {} mid flows' slots moved",
        mids.len()
    );
    for p in &mids {
        assert_eq!(
            sent_to(&w, &ack(*p)),
            b2().mac,
            "flow {p} begun in between moved"
        );
    }
    // An ICMP error about an old flow that never sent again is relayed to b1 too, and
    // records nothing.
    let quiet = port_where(47300..47600, |p| {
        let s = w.slot(&three[0], &key_of(&ack(p)));
        s.cur() == b3_id && s.prev() == w.id(b1().addr)
    });
    let relayed = stat(&w, STAT_ICMP_RELAYED);
    assert_eq!(
        sent_to(&w, &icmp_error(c4(), vip4(), quiet, 80, 3, 4)),
        b1().mac
    );
    assert_eq!(stat(&w, STAT_ICMP_RELAYED), relayed + 1);
    assert_eq!(w.dp.conntrack_get(&key_of(&ack(quiet))), None);
    // A new connection on that slot goes to b3.
    assert_eq!(sent_to(&w, &tcp(c4(), vip4(), quiet, 80, TCP_SYN)), b3.mac);
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn changed_slots_settle_once_their_older_flows_are_idle() {
    let Some(mut w) = privileged_world("slots_settle", &one_service(vec![b1()])) else {
        return;
    };
    let two = one_service(vec![b1(), weighted(b2(), 100)]);
    let ack = |p: u16| tcp(c4(), vip4(), p, 80, TCP_ACK);
    // Slots no packet used stay settled through a change; these flows use theirs.
    for p in 48000..48200 {
        assert_eq!(sent_to(&w, &tcp(c4(), vip4(), p, 80, TCP_SYN)), b1().mac);
    }
    w.set(&two);
    let moved: Vec<u16> = (48000..48200)
        .filter(|p| w.slot(&two[0], &key_of(&ack(*p))).prev() != 0)
        .collect();
    assert!(moved.len() > 100);
    // Just changed: an hour's idle timeout settles nothing.
    let c = w.settle(&two[0], 3600);
    assert_eq!(c.settled, 0);
    assert!(c.changed >= 50, "{c:?}");
    // Two seconds on, one old flow sends: the program stamps its slot.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (busy, quiet) = (moved[0], moved[1]);
    assert_eq!(sent_to(&w, &ack(busy)), b1().mac);
    assert_eq!(sent_to(&w, &ack(quiet)), b1().mac);
    // Both were recorded; now only `busy` keeps sending.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(sent_to(&w, &ack(busy)), b1().mac);
    // With a two-second idle timeout every slot settles but busy's.
    let c = w.settle(&two[0], 2);
    assert_eq!(c.changed, 1, "{c:?}");
    assert_eq!(w.slot(&two[0], &key_of(&ack(busy))).prev(), w.id(b1().addr));
    assert_eq!(sent_to(&w, &ack(busy)), b1().mac, "busy flow moved");
    // The quiet flow's slot answers alone now: its entry is not read.
    let steady = stat(&w, STAT_TABLE_STEADY);
    assert_eq!(sent_to(&w, &ack(quiet)), b2().mac);
    assert_eq!(stat(&w, STAT_TABLE_STEADY), steady + 1);
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn a_slot_no_packet_used_stays_settled_when_its_backend_changes() {
    let Some(mut w) = privileged_world("unused_slots", &one_service(vec![b1()])) else {
        return;
    };
    let ack = |p: u16| tcp(c4(), vip4(), p, 80, TCP_ACK);
    let used = 49000;
    assert_eq!(sent_to(&w, &ack(used)), b1().mac);
    let svc = one_service(vec![b1()]);
    assert_eq!(
        w.slot(&svc[0], &key_of(&ack(used))),
        Slot::used(w.id(b1().addr))
    );
    // b1 goes down: every slot moves to b2. Only the used one remembers b1.
    let two = one_service(vec![down(b1()), b2()]);
    w.set(&two);
    let c = w.settle(&two[0], 3600);
    assert_eq!((c.changed, c.settled), (1, 0), "{c:?}");
    let slot = w.slot(&two[0], &key_of(&ack(used)));
    assert_eq!(
        (slot.cur(), slot.prev()),
        (w.id(b2().addr), w.id(b1().addr))
    );
    // Its flow is placed again (b1 is down) and recorded; others take the table's answer.
    let rescheduled = stat(&w, STAT_RESCHEDULED);
    assert_eq!(sent_to(&w, &ack(used)), b2().mac);
    assert_eq!(stat(&w, STAT_RESCHEDULED), rescheduled + 1);
    let other = port_where(49001..49100, |p| {
        w.slot(&two[0], &key_of(&ack(p))).prev() == 0
    });
    let steady = stat(&w, STAT_TABLE_STEADY);
    assert_eq!(sent_to(&w, &ack(other)), b2().mac);
    assert_eq!(stat(&w, STAT_TABLE_STEADY), steady + 1);
}

// ---------------------------------------------------------------------------------------
// The service index: services found without a hash map.

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn services_whose_buckets_collide_are_all_found_and_a_removal_keeps_the_others() {
    // Three ports of one VIP whose keys share a home bucket: the second and third are
    // placed in the buckets after it, and found by probing.
    let key = |port: u16| ServiceKey {
        addr: addr16(vip4()),
        port_be: port.to_be(),
        proto: PROTO_TCP,
        family: FAMILY_V4,
    };
    let mut by_bucket = std::collections::BTreeMap::<u32, Vec<u16>>::new();
    let ports = (1000..60000u16)
        .find_map(|p| {
            let same = by_bucket.entry(service_bucket(&key(p))).or_default();
            same.push(p);
            (same.len() == 3).then(|| same.clone())
        })
        .expect("three ports sharing a bucket");
    let with = |ps: &[u16]| -> Vec<Svc> {
        ps.iter()
            .map(|p| svc(vip4(), *p, PROTO_TCP, MODE_L2DSR, vec![b1()]))
            .collect()
    };
    let Some(mut w) = privileged_world("service_index", &with(&ports)) else {
        return;
    };
    let reaches = |w: &World, p: u16| {
        let (verdict, _) = w.run(&tcp(c4(), vip4(), 40000, p, TCP_SYN).bytes());
        verdict == XDP_TX
    };
    for p in &ports {
        assert!(reaches(&w, *p), "port {p} of {ports:?}");
    }
    // The first goes: its bucket is a tombstone the others are probed past.
    w.set(&with(&ports[1..]));
    assert!(!reaches(&w, ports[0]), "a removed service still forwarded");
    for p in &ports[1..] {
        assert!(reaches(&w, *p), "port {p} after a removal");
    }
    // And comes back (into the tombstone).
    w.set(&with(&ports));
    for p in &ports {
        assert!(reaches(&w, *p), "port {p} after coming back");
    }
    // A port that shares none of their buckets is not a service.
    let other = (1000..60000u16)
        .find(|p| !ports.contains(p) && service_bucket(&key(*p)) != service_bucket(&key(ports[0])))
        .unwrap();
    assert!(!reaches(&w, other));
}
