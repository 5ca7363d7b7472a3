//! `cargo xtask bench xdp`: per-packet cost of the XDP program through BPF_PROG_TEST_RUN,
//! against a floor program (swap MACs, XDP_TX) measured in the same run.
//!
//! With `repeat > 1` the kernel reruns the program on the already-rewritten buffer, so a
//! forwarding path would run only once. Every measurement here is `repeat = 1` in a loop,
//! and the program's own counters prove the path: each case names the counter that must
//! grow by exactly the number of runs (and the verdict every run must return).
//!
//! Output: a Markdown table on stdout, also written to `$GATEWAY_BENCH_OUT` if set.
#[path = "../tests/common/world.rs"]
mod world;

use std::{fmt::Write as _, time::Duration};

use aya::programs::{TestRun, TestRunOptions, Xdp};
use gateway::dataplane::LoadOptions;
use gateway_common::*;
use lab::packet::*;
use world::*;

/// A round of all cases takes about a tenth of a second; on a shared 2-core VM 7 rounds let
/// one burst of foreign load move a median by several ns, 21 rounds much less.
const ROUNDS: usize = 21;
const ITERS: usize = 20_000;
/// Distinct SYNs in the warm new-flow case: few enough that their table slots, conntrack
/// buckets and LRU nodes stay in cache, as the single flow of a conntrack-hit case does.
const WARM_FLOWS: usize = 256;
/// Runs of the floor just before every measurement of a case: the case's ratio to the
/// floor is taken within that pair, so a slow spell of this shared machine that lasts
/// seconds moves both sides of a ratio, not one.
const PAIRED_FLOOR: usize = ITERS / 4;
/// Conntrack entries, as Katran's default (the size the data-plane issue compared at): a
/// large LRU hash whose buckets do not stay in cache.
const CONNTRACK: u32 = 8_000_000;
/// Established flows in the largest row.
const MILLION: usize = 1_000_000;

/// The builds measured side by side, against the same map contents.
const BUILDS: [&str; 3] = ["gateway", "without checks", "every packet tracked"];
const MAIN: usize = 0;
const UNCHECKED: usize = 1;
const TRACKED: usize = 2;

struct Case {
    name: String,
    frames: Vec<Vec<u8>>,
    verdict: u32,
    /// Counter that must grow by one per run (None for the floor), in the balancer's build
    /// and the unchecked one; and in the tracked build, where it differs.
    stat: Option<u32>,
    tracked_stat: Option<u32>,
    /// Target ratio to the floor, from the data-plane issues.
    target: Option<f64>,
    /// Run once each in every build before its first measurement (the flows an
    /// established case uses), outside the measured time.
    prime: Vec<Vec<u8>>,
    /// The flows of `frames`, forgotten by conntrack before each pass over them (outside
    /// the measured time), so each SYN is a fresh insert, not an update of an entry an
    /// earlier pass made.
    forget: Vec<FlowKey>,
    /// NAT entries removed before each pass (outside the measured time): a full-NAT flow
    /// mapped anew on every run.
    forget_nat: Vec<FlowKey>,
    /// Where each build is in `frames`: rows of many flows cycle through them across
    /// rounds, so every flow is cold when it comes round again. The paired floor cycles
    /// through them too, with its own cursor.
    cursor: [usize; 3],
    floor_cursor: usize,
    /// Per build: round means, each over the floor measured just before it (ratio), and
    /// minus it (ns over the floor).
    means: [Vec<f64>; 3],
    ratios: [Vec<f64>; 3],
    over: [Vec<f64>; 3],
    /// The paired floor's means (all builds).
    floors: Vec<f64>,
}

impl Case {
    /// A case with no target, priming or forgetting; the same counter in every build.
    fn new(name: impl Into<String>, frames: Vec<Vec<u8>>, verdict: u32, stat: Option<u32>) -> Case {
        Case {
            name: name.into(),
            frames,
            verdict,
            stat,
            tracked_stat: stat,
            target: None,
            prime: vec![],
            forget: vec![],
            forget_nat: vec![],
            cursor: [0; 3],
            floor_cursor: 0,
            means: Default::default(),
            ratios: Default::default(),
            over: Default::default(),
            floors: vec![],
        }
    }

    /// A case whose packets a settled slot places alone (`table_steady`), and which the
    /// tracked build counts as `tracked`.
    fn settled(name: impl Into<String>, frames: Vec<Vec<u8>>, tracked: u32) -> Case {
        Case {
            tracked_stat: Some(tracked),
            ..Case::new(name, frames, XDP_TX, Some(STAT_TABLE_STEADY))
        }
    }

    fn stat_in(&self, build: usize) -> Option<u32> {
        if build == TRACKED {
            self.tracked_stat
        } else {
            self.stat
        }
    }
}

/// The floor program's object, its program loaded.
fn floor_object() -> aya::Ebpf {
    let mut obj = aya::Ebpf::load(gateway::object::XDP_FLOOR).expect("floor object");
    let floor: &mut Xdp = obj.program_mut(PROG_FLOOR).unwrap().try_into().unwrap();
    floor.load().expect("load floor");
    obj
}

fn key_of(frame: &[u8]) -> FlowKey {
    let f = check(frame).expect("a frame of ours");
    flow_key(f.src, f.dst, f.ports.0, f.ports.1, f.proto)
}

/// The ACK of each SYN's flow.
fn acks_of(syns: &[Vec<u8>]) -> Vec<Vec<u8>> {
    syns.iter()
        .map(|f| {
            let p = check(f).expect("a frame of ours");
            tcp(p.src, p.dst, p.ports.0, p.ports.1, TCP_ACK).bytes()
        })
        .collect()
}

/// `GATEWAY_BENCH_SPIN=secs`: runs the first case left by `GATEWAY_BENCH_CASES` on the
/// balancer's build (or on the floor, with `GATEWAY_BENCH_SPIN_FLOOR` set), one frame
/// repeated, for `secs` seconds, and prints the mean: long enough for `perf record -a` to
/// see the program's JIT image rather than the benchmark's set-up. "spinning" on stderr
/// marks the start.
fn spin(c: &Case, world: &mut World, floor: Option<&Xdp>, secs: u64) {
    for p in &c.prime {
        assert_eq!(world.run(p).0, XDP_TX, "{}: priming", c.name);
    }
    let prog = match floor {
        Some(f) => f,
        None => world.dp.program().unwrap(),
    };
    let stat = c.stat_in(MAIN).unwrap() as usize;
    let before = world.stats()[stat];
    let mut out = vec![0u8; 4096];
    eprintln!("spinning");
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    let (mut n, mut total) = (0u64, Duration::ZERO);
    while std::time::Instant::now() < until {
        for _ in 0..10_000 {
            total += run_once(prog, &c.frames[0], &mut out).1;
        }
        n += 10_000;
    }
    eprintln!(
        "{}: {n} runs, {:.1} ns/packet, `{}` grew by {}",
        c.name,
        total.as_nanos() as f64 / n as f64,
        STAT_NAMES[stat],
        world.stats()[stat] - before
    );
}

fn main() {
    if !lab::is_root() {
        eprintln!("bench xdp: needs root (BPF_PROG_TEST_RUN); run `cargo xtask bench xdp` as root");
        std::process::exit(1);
    }
    let vip4 = v4(198, 18, 1, 1);
    let vip4i = v4(198, 18, 1, 2);
    let vip6i = v6("fd00:1::2");
    let vip4c = v4(198, 18, 1, 3);
    let vip4n = v4(198, 18, 1, 4);
    let vip6n = v6("fd00:1::4");
    let (snat4, snat6) = (v4(198, 18, 0, 100), v6("fd00::100"));
    let c4 = v4(198, 18, 0, 1);
    let c6 = v6("fd00::1");
    let svc = |vip, mode, b: Vec<Be>| Svc {
        vip,
        port: 80,
        proto: PROTO_TCP,
        mode,
        table_size: 65537,
        backends: b,
        protection: None,
    };
    let b11 = be(v4(198, 18, 0, 11), 11);
    let mut b13 = be(v4(198, 18, 0, 13), 13);
    let b11v6 = be(v6("fd00::11"), 0x11);
    let mut services = vec![
        svc(vip4, MODE_L2DSR, vec![b11.clone()]),
        svc(vip4i, MODE_IPIP, vec![be(v4(198, 18, 0, 12), 12)]),
        svc(vip6i, MODE_IPIP, vec![be(v6("fd00::12"), 0x12)]),
        svc(vip4c, MODE_L2DSR, vec![b11.clone()]),
        svc(vip4n, MODE_FULLNAT, vec![b11.clone()]),
        svc(vip6n, MODE_FULLNAT, vec![b11v6.clone()]),
    ];
    // One SNAT port: the full-NAT rows' one flow per family always gets it, so their
    // answers can be written down before any build has mapped them.
    let pool =
        format!("snat_v4 = [\"{snat4}\"]\nsnat_v6 = [\"{snat6}\"]\nsnat_ports = \"40000-40000\"");
    let settings = Settings {
        mtu: 1500,
        ipip_src_v4: [198, 18, 100, 0],
        ipip_src_v6: addr16(v6("fd00::2")),
        ipip_src_v4_vary_bits: 8,
        ..plain_settings()
    };
    let load = LoadOptions {
        conntrack_size: CONNTRACK,
        ..TEST_LOAD
    };
    // The balancer's program, its build without validation, and its build that tracks
    // every packet (as before settled slots), over the same map contents.
    let objects = [
        gateway::object::GATEWAY,
        gateway::object::GATEWAY_UNCHECKED,
        gateway::object::GATEWAY_TRACKED,
    ];
    let mut worlds = objects.map(|o| World::with_dataplane(&services, settings, o, load, &pool));
    // The last service's table then changes: b13 joins with a hundred times b11's weight,
    // so nearly every slot that flows used is changed (its TCP packets go through
    // conntrack).
    let candidates: Vec<Vec<u8>> = (0..4 * ITERS)
        .map(|i| {
            let src = v4(198, 19, 0x80 | (i >> 12) as u8, ((i >> 4) & 0xff) as u8);
            tcp(src, vip4c, 20_000 + (i & 0xf) as u16, 80, TCP_SYN).bytes()
        })
        .collect();
    b13.weight = 100;
    services[3].backends.push(b13);
    let last = 3;
    for w in &mut worlds {
        for f in &candidates {
            assert_eq!(w.run(f).0, XDP_TX, "flows before the change");
        }
        w.set(&services);
        w.dp.conntrack_clear();
    }
    let floor_obj = floor_object();
    let floor: &Xdp = floor_obj.program(PROG_FLOOR).unwrap().try_into().unwrap();

    let ack = |src, dst| tcp(src, dst, 33333, 80, TCP_ACK).bytes();
    let syn = |src, dst| tcp(src, dst, 33333, 80, TCP_SYN).bytes();
    // Many flows: sources in 198.19.0.0/16 (none of the world's VIPs or host addresses),
    // sixteen ports each. The frames only ever reach the program through
    // BPF_PROG_TEST_RUN.
    let many = |n: usize, first: usize, vip, flags| -> Vec<Vec<u8>> {
        (first..first + n)
            .map(|i| {
                let src = v4(198, 19, (i >> 12) as u8, ((i >> 4) & 0xff) as u8);
                tcp(src, vip, 20_000 + (i & 0xf) as u16, 80, flags).bytes()
            })
            .collect()
    };
    let new20k = many(ITERS, MILLION, vip4, TCP_SYN);
    let new_warm = many(WARM_FLOWS, MILLION + ITERS, vip4, TCP_SYN);
    let mut x = 0x0066_6c6f_6f64_u64;
    let flood: Vec<Vec<u8>> = (0..ITERS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_le_bytes();
            let src = v4(198, 19, b[1], b[2].max(1));
            tcp(
                src,
                vip4,
                u16::from_le_bytes([b[3], b[4]]).max(1024),
                80,
                TCP_SYN,
            )
            .bytes()
        })
        .collect();
    // Flows of the changed service, begun after the change, whose slots did change.
    let mut changed: Vec<Vec<u8>> = candidates
        .iter()
        .filter(|f| worlds[MAIN].slot(&services[last], &key_of(f)).prev() != 0)
        .take(ITERS)
        .cloned()
        .collect();
    if std::env::var_os("GATEWAY_BENCH_CASES").is_some() && changed.is_empty() {
        // A partial program measured alone (see `only` below) may not mark slots used.
        changed = candidates[..1].to_vec();
    }
    assert!(!changed.is_empty(), "changed slots");
    // A full-NAT flow's SYN and its answer: established, its mapping lives for hours.
    let handshake4 = vec![
        syn(c4, vip4n),
        tcp(b11.addr, snat4, 80, 40000, TCP_SYN | TCP_ACK).bytes(),
    ];
    let handshake6 = vec![
        syn(c6, vip6n),
        tcp(b11v6.addr, snat6, 80, 40000, TCP_SYN | TCP_ACK).bytes(),
    ];
    let established20k = many(ITERS, 0, vip4, TCP_SYN);
    let established1m = many(MILLION, 0, vip4, TCP_SYN);
    let mut cases = vec![
        Case::new(
            "floor (swap MACs, XDP_TX)",
            vec![ack(c4, vip4)],
            XDP_TX,
            None,
        ),
        Case::new(
            "non-VIP, passed",
            vec![tcp(c4, v4(198, 18, 0, 2), 33333, 80, TCP_ACK).bytes()],
            XDP_PASS,
            Some(STAT_PASS_NOT_VIP),
        ),
        Case {
            target: Some(2.5),
            prime: vec![syn(c4, vip4)],
            ..Case::settled(
                "established, 1 flow, l2dsr (IPv4)",
                vec![ack(c4, vip4)],
                STAT_CT_HIT,
            )
        },
        Case {
            target: Some(3.5),
            prime: vec![syn(c4, vip4i)],
            ..Case::settled(
                "established, 1 flow, ipip (IPv4)",
                vec![ack(c4, vip4i)],
                STAT_CT_HIT,
            )
        },
        Case {
            target: Some(3.5),
            prime: vec![syn(c6, vip6i)],
            ..Case::settled(
                "established, 1 flow, ipip (IPv6)",
                vec![ack(c6, vip6i)],
                STAT_CT_HIT,
            )
        },
        Case {
            target: Some(5.0),
            forget: new_warm.iter().map(|f| key_of(f)).collect(),
            ..Case::settled("new flows, warm: 256 SYNs", new_warm, STAT_CT_MISS_SYN)
        },
        Case {
            prime: established20k.clone(),
            ..Case::settled(
                "established, 20,000 flows cycled",
                acks_of(&established20k),
                STAT_CT_HIT,
            )
        },
        Case {
            target: Some(2.5),
            prime: established1m.clone(),
            ..Case::settled(
                "established, 1,000,000 flows cycled",
                acks_of(&established1m),
                STAT_CT_HIT,
            )
        },
        Case {
            target: Some(3.0),
            forget: new20k.iter().map(|f| key_of(f)).collect(),
            ..Case::settled("new flows, 20,000 distinct", new20k, STAT_CT_MISS_SYN)
        },
        Case::settled(
            "SYN flood: 20,000 random sources, never forgotten",
            flood,
            STAT_CT_MISS_SYN,
        ),
        Case {
            // The packet-hardening issue's "conntrack-hit within 2.5x of the floor for
            // l2dsr": the one row where an established packet is a conntrack hit.
            target: Some(2.5),
            prime: vec![changed[0].clone()],
            ..Case::new(
                "changed slot: established, 1 flow (conntrack hit)",
                acks_of(&changed[..1]),
                XDP_TX,
                Some(STAT_CT_HIT),
            )
        },
        Case {
            prime: changed.clone(),
            ..Case::new(
                "changed slots: established, 20,000 flows cycled",
                acks_of(&changed),
                XDP_TX,
                Some(STAT_CT_HIT),
            )
        },
        // Full-NAT: the client's packets rewritten towards the backend, and the backend's
        // answers rewritten towards the client (the other builds only differ in the main
        // program, which hands both to the same full-NAT program).
        Case {
            prime: handshake4.clone(),
            ..Case::new(
                "full-NAT: established, 1 flow, to the backend (IPv4)",
                vec![ack(c4, vip4n)],
                XDP_TX,
                Some(STAT_FORWARDED),
            )
        },
        Case {
            prime: handshake4.clone(),
            ..Case::new(
                "full-NAT: answer, 1 flow, to the client (IPv4)",
                vec![tcp(b11.addr, snat4, 80, 40000, TCP_ACK).bytes()],
                XDP_TX,
                Some(STAT_NAT_REPLIED),
            )
        },
        Case {
            prime: handshake6.clone(),
            ..Case::new(
                "full-NAT: established, 1 flow, to the backend (IPv6)",
                vec![ack(c6, vip6n)],
                XDP_TX,
                Some(STAT_FORWARDED),
            )
        },
        Case {
            // Both entries go before every run, so each SYN claims the port anew.
            forget_nat: vec![
                key_of(&syn(c4, vip4n)),
                flow_key(b11.addr, snat4, 80, 40000, PROTO_TCP),
            ],
            ..Case::new(
                "full-NAT: new flow, a SYN mapped (IPv4)",
                vec![syn(c4, vip4n)],
                XDP_TX,
                Some(STAT_NAT_NEW),
            )
        },
        Case {
            prime: handshake6.clone(),
            ..Case::new(
                "full-NAT: answer, 1 flow, to the client (IPv6)",
                vec![tcp(b11v6.addr, snat6, 80, 40000, TCP_ACK).bytes()],
                XDP_TX,
                Some(STAT_NAT_REPLIED),
            )
        },
    ];
    drop((established1m, established20k, changed));
    // `GATEWAY_BENCH_CASES=text`: only the floor and the cases whose name contains `text`,
    // and live frames only if "live frames" contains it - for measuring one path while
    // changing it.
    let only = std::env::var("GATEWAY_BENCH_CASES").ok();
    if let Some(only) = &only {
        cases.retain(|c| c.stat.is_none() || c.name.contains(only.as_str()));
    }
    let mut out = vec![0u8; 4096];
    if let Ok(secs) = std::env::var("GATEWAY_BENCH_SPIN") {
        let secs: u64 = secs.parse().expect("GATEWAY_BENCH_SPIN: whole seconds");
        let floor_only = std::env::var_os("GATEWAY_BENCH_SPIN_FLOOR").is_some();
        let c = cases
            .iter()
            .find(|c| c.stat.is_some())
            .expect("a case to spin");
        spin(
            c,
            &mut worlds[MAIN],
            floor_only.then_some(floor),
            secs.min(600),
        );
        return;
    }

    let mut checks = Vec::new();
    for round in 0..ROUNDS {
        for c in cases.iter_mut() {
            // The floor once per round; every other case with each build, rotating which
            // goes first.
            let order: Vec<usize> = match c.stat {
                None => vec![MAIN],
                Some(_) => (0..3).map(|k| (k + round) % 3).collect(),
            };
            for k in order {
                let world = &mut worlds[k];
                let stat = c.stat_in(k);
                if round == 0 {
                    for p in &c.prime {
                        assert_eq!(world.run(p).0, XDP_TX, "{}: priming", c.name);
                    }
                }
                // The floor over the same frames: cycling many frames costs the harness
                // cold copies from user memory, which is not the program's cost.
                let paired_floor = stat.map(|_| {
                    let mut t = Duration::ZERO;
                    for _ in 0..PAIRED_FLOOR {
                        let frame = &c.frames[c.floor_cursor % c.frames.len()];
                        c.floor_cursor += 1;
                        let (v, d) = run_once(floor, frame, &mut out);
                        assert_eq!(v, XDP_TX, "floor: wrong verdict");
                        t += d;
                    }
                    t.as_nanos() as f64 / PAIRED_FLOOR as f64
                });
                let before = world.stats();
                let mut total = Duration::ZERO;
                for _ in 0..ITERS {
                    let at = c.cursor[k] % c.frames.len();
                    if at == 0 {
                        for key in &c.forget {
                            world.dp.conntrack_remove(key);
                        }
                        for key in &c.forget_nat {
                            world.dp.nat_remove(key);
                        }
                    }
                    c.cursor[k] += 1;
                    let prog = if stat.is_none() {
                        floor
                    } else {
                        world.dp.program().unwrap()
                    };
                    let (v, d) = run_once(prog, &c.frames[at], &mut out);
                    assert_eq!(v, c.verdict, "{}: wrong verdict", c.name);
                    total += d;
                }
                if let Some(s) = stat {
                    let grew = world.stats()[s as usize] - before[s as usize];
                    assert_eq!(
                        grew, ITERS as u64,
                        "{} ({}): {} grew by {grew}, not {ITERS}",
                        c.name, BUILDS[k], STAT_NAMES[s as usize]
                    );
                    if round == 0 {
                        checks.push(format!(
                            "{} ({}): `{}` grew by {grew} for {ITERS} runs",
                            c.name, BUILDS[k], STAT_NAMES[s as usize]
                        ));
                    }
                }
                let mean = total.as_nanos() as f64 / ITERS as f64;
                c.means[k].push(mean);
                if let Some(f) = paired_floor {
                    c.floors.push(f);
                    c.ratios[k].push(mean / f);
                    c.over[k].push(mean - f);
                }
            }
        }
    }

    let median = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(|a, b| a.partial_cmp(b).unwrap());
        s[s.len() / 2]
    };
    let mut md = String::from(
        "The kernel's own duration of BPF_PROG_TEST_RUN with `repeat = 1` in a loop: with \
         `repeat > 1` the kernel would rerun the program on the already-rewritten buffer, so a \
         forwarding path would be measured once. The program's counters prove every run took \
         the intended path (listed under the table). The figures include the test-run harness \
         (~30 ns), in the floor as in every case. Conntrack holds 8,000,000 entries (per-CPU \
         LRU lists), as Katran's default.\n\n\
         Three builds of the program run every case in the same rounds, against the same map \
         contents: the balancer's (`gateway`), the same without packet validation \
         (`gateway-ebpf/src/unchecked.rs`: what the checks cost), and the same with every TCP \
         packet going through conntrack (`gateway-ebpf/src/tracked.rs`: the design before \
         settled table slots, so each row's before and after). docs/datapath.md explains \
         settled and changed slots.\n\n\
         Rows: one flow repeated keeps everything in cache. The 20,000- and 1,000,000-flow \
         rows prime their flows once (SYNs, outside the measured time) and cycle through them \
         across rounds, so each flow's table slot and conntrack entry is cold when it comes \
         round again, as on a busy balancer. New flows: 256 SYNs (warm) or 20,000 distinct \
         ones (cold), each flow forgotten by conntrack before the next pass (outside the \
         measured time) so every SYN the tracked build sees is a fresh insert; the SYN flood \
         sends SYNs from random sources in 198.19/16 and never forgets them. The changed-slot \
         rows use a service whose table changed (a backend joined with a hundred times the \
         weight), with flows begun after the change: conntrack hits in every build. The \
         full-NAT rows send one established flow's packets to the backend (both addresses and \
         ports rewritten, checksums updated) and its backend's answers back to the client, \
         through the main program's hand-off to the full-NAT program (a tail call); the new-flow \
         row's mapping is removed before every run (outside the measured time), so each SYN \
         claims its SNAT port anew (the next-hop lookup for the answers' MAC returns at once \
         here: the test-run interface does not forward).\n\n\
         Ratios: every measurement of a case (20,000 runs) follows a measurement of the floor \
         (5,000 runs) over the same frames (for the rows of many flows, cycled the same way: \
         copying a cold frame from user memory is the harness's cost, not the program's; the \
         `floor, same frames` column shows it); the ratio is the median over rounds of the \
         case's mean over that floor's mean, and `over floor` the median of their difference. This machine is shared and has \
         slow spells lasting seconds; a ratio of two medians taken minutes apart moved by 0.2x \
         between runs, a paired one much less. The floor row's own median is in the first \
         line.\n\n",
    );
    writeln!(
        md,
        "| case | median ns/packet | spread (min-max) | floor, same frames | ratio to floor | \
         target | over floor | before: every packet tracked | without checks | checks cost |"
    )
    .unwrap();
    writeln!(md, "|---|---|---|---|---|---|---|---|---|---|").unwrap();
    let mut missed = Vec::new();
    let ratio_of = |c: &Case, k: usize| {
        if c.ratios[k].is_empty() {
            1.0
        } else {
            median(&c.ratios[k])
        }
    };
    for c in &cases {
        let m = median(&c.means[MAIN]);
        let lo = c.means[MAIN].iter().cloned().fold(f64::MAX, f64::min);
        let hi = c.means[MAIN].iter().cloned().fold(0.0, f64::max);
        let ratio = ratio_of(c, MAIN);
        let target = c.target.map_or("-".to_string(), |t| {
            if ratio > t {
                missed.push(c.name.clone());
            }
            format!("<= {t}x {}", if ratio <= t { "(met)" } else { "(MISSED)" })
        });
        let over = |k: usize| {
            if c.over[k].is_empty() {
                "-".to_string()
            } else {
                format!("{:+.1} ns", median(&c.over[k]))
            }
        };
        let (before, without, cost) = if c.stat.is_none() {
            ("-".to_string(), "-".to_string(), "-".to_string())
        } else {
            let diffs: Vec<f64> = c.means[MAIN]
                .iter()
                .zip(&c.means[UNCHECKED])
                .map(|(a, b)| a - b)
                .collect();
            (
                format!("{:.2}x, {}", ratio_of(c, TRACKED), over(TRACKED)),
                format!("{:.2}x", ratio_of(c, UNCHECKED)),
                format!("{:+.1} ns", median(&diffs)),
            )
        };
        writeln!(
            md,
            "| {} | {m:.1} | {lo:.1}-{hi:.1} | {} | {ratio:.2}x | {target} | {} | {before} | \
             {without} | {cost} |",
            c.name,
            if c.floors.is_empty() {
                "-".to_string()
            } else {
                format!("{:.1}", median(&c.floors))
            },
            over(MAIN),
        )
        .unwrap();
    }
    // An established packet's cost should not depend on how many flows there are.
    let find = |name: &str| cases.iter().find(|c| c.name.starts_with(name));
    if let (Some(one), Some(million)) = (
        find("established, 1 flow, l2dsr"),
        find("established, 1,000,000"),
    ) {
        let scale = ratio_of(million, MAIN) / ratio_of(one, MAIN);
        writeln!(
            md,
            "\nEstablished packets, 1,000,000 flows against 1 flow (ratios to the floor): \
             {scale:.2}x (target <= 1.2x {}); every packet tracked: {:.2}x.",
            if scale <= 1.2 { "met" } else { "MISSED" },
            ratio_of(million, TRACKED) / ratio_of(one, TRACKED)
        )
        .unwrap();
        if scale > 1.2 {
            missed.push("1,000,000 flows within 1.2x of 1 flow".into());
        }
    }
    writeln!(
        md,
        "\n{ROUNDS} rounds x {ITERS} runs per case and build, interleaved; the median of the \
         round means."
    )
    .unwrap();
    writeln!(md, "Path checks (first round):\n").unwrap();
    for c in &checks {
        writeln!(md, "- {c}").unwrap();
    }
    if only.as_deref().is_none_or(|o| "live frames".contains(o)) {
        md += &live_frames(
            &worlds,
            [
                ("l2dsr", tcp(c4, vip4, 0, 80, TCP_ACK).bytes()),
                ("ipip", tcp(c4, vip4i, 0, 80, TCP_ACK).bytes()),
            ],
            &mut missed,
        );
    }
    print!("{md}");
    if let Ok(path) = std::env::var("GATEWAY_BENCH_OUT") {
        std::fs::write(&path, &md).expect("write bench output");
    }
    if !missed.is_empty() {
        eprintln!("targets missed: {missed:?}");
    }
}

/// Frames per live-frames run, and runs per configuration (alternating builds).
const LIVE_FRAMES: u32 = 2_000_000;
const LIVE_ROUNDS: usize = 7;
/// Frames the kernel runs per batch (its default).
const LIVE_BATCH: u32 = 64;
/// Flows of the large live-frames row: every TCP source port.
const LIVE_FLOWS: u32 = 65_536;

/// A namespace this benchmark created, deleted when dropped (also on a panic).
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = lab::delete_netns(&self.0) {
            eprintln!("deleting namespace {}: {e}", self.0);
        }
    }
}

/// Enters `netns` on this thread until dropped, then returns to the namespace it left.
struct Entered(std::fs::File);

impl Entered {
    fn new(netns: &str) -> Entered {
        use std::os::fd::AsRawFd;
        let home = std::fs::File::open("/proc/thread-self/ns/net").expect("own namespace");
        let target = std::fs::File::open(format!("/run/netns/{netns}")).expect("open netns");
        // SAFETY: a namespace fd; CLONE_NEWNET switches only this thread.
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        Entered(home)
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: the namespace fd opened in `new`.
        unsafe { libc::setns(self.0.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// Packets per second through a veth pair with `BPF_F_TEST_XDP_LIVE_FRAMES`: the kernel
/// runs `xdp_vary` (which gives each frame its flow and tail-calls the program under test)
/// on frames from a page pool, and sends what it returns XDP_TX out of one end of a veth
/// pair, whose peer drops it in XDP (`xdp_sink`). Wall time of each run of 2,000,000
/// frames; the floor and the builds of the balancer alternate.
fn live_frames(
    worlds: &[World; 3],
    frames: [(&str, Vec<u8>); 2],
    missed: &mut Vec<String>,
) -> String {
    use aya::{
        maps::{Array, ProgramArray},
        programs::{TestRunAttrs, XdpMode},
    };
    let ns = Netns(lab::unique_name("gwlive"));
    lab::run(std::process::Command::new("ip").args(["netns", "add", &ns.0])).expect("netns");
    for args in [
        &[
            "ip", "link", "add", "lv0", "type", "veth", "peer", "name", "lv1",
        ][..],
        &["ip", "link", "set", "lv0", "up"],
        &["ip", "link", "set", "lv1", "up"],
    ] {
        lab::ns_exec(&ns.0, args).expect("veth pair");
    }
    let _inside = Entered::new(&ns.0);
    let mut vary = aya::Ebpf::load(gateway::object::XDP_VARY).expect("vary object");
    let floor_obj = floor_object();
    let floor: &Xdp = floor_obj.program(PROG_FLOOR).unwrap().try_into().unwrap();
    for name in ["xdp_vary", "xdp_sink"] {
        let p: &mut Xdp = vary.program_mut(name).unwrap().try_into().unwrap();
        p.load().expect("load");
    }
    let sink: &mut Xdp = vary.program_mut("xdp_sink").unwrap().try_into().unwrap();
    sink.attach("lv1", XdpMode::Driver)
        .expect("attach the sink to lv1");
    let ifindex = gateway::sys::ifindex("lv0").expect("lv0");

    // (name, program, world whose counters prove the path)
    let subjects: [(&str, &Xdp, Option<&World>); 3] = [
        ("floor", floor, None),
        (
            "gateway",
            worlds[MAIN].dp.program().unwrap(),
            Some(&worlds[MAIN]),
        ),
        (
            "every packet tracked",
            worlds[TRACKED].dp.program().unwrap(),
            Some(&worlds[TRACKED]),
        ),
    ];
    let mut md = String::from(
        "\n### Live frames through a veth pair\n\n\
         `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` (batches of 64): the kernel runs \
         `xdp_vary` (`gateway-ebpf/src/vary.rs`: it writes each frame's TCP source port from a \
         per-CPU counter, so the frames are 1 or 65,536 flows, then tail-calls the program \
         under test) on frames from a page pool and sends what returns XDP_TX out of one end \
         of a veth pair in a namespace of the benchmark's own, whose peer drops it in XDP. \
         Each figure is the median over 7 runs of 2,000,000 frames of frames over the run's \
         wall time, on one CPU (the peer's receive runs in the same CPU's softirq); the floor \
         and the programs alternate. The balancer serves an l2dsr IPv4 service on settled \
         slots, and an ipip IPv4 one; the tracked build puts every packet through conntrack \
         (8,000,000 entries).\n\n\
         | service | flows | floor (Mpps) | gateway (Mpps) | gateway / floor | target | every \
         packet tracked (Mpps) | tracked / floor |\n|---|---|---|---|---|---|---|---|\n",
    );
    for ((mode, frame), flows) in frames.iter().flat_map(|f| [1, LIVE_FLOWS].map(|n| (f, n))) {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex. The kernel wants data_end to be the frame's length.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        let mut knobs: Array<_, u32> =
            Array::try_from(vary.map_mut("FLOWS").unwrap()).expect("FLOWS");
        knobs.set(0, flows, 0).expect("set FLOWS");
        let mut mpps: [Vec<f64>; 3] = Default::default();
        for round in 0..LIVE_ROUNDS {
            for k in 0..3 {
                let k = (k + round) % 3;
                let (name, prog, world) = subjects[k];
                let fd = prog.fd().expect("program fd");
                let mut next = ProgramArray::try_from(vary.map_mut("NEXT").unwrap()).expect("NEXT");
                next.set(0, fd, 0).expect("NEXT[0]");
                let before = world.map(|w| w.stats());
                let front: &Xdp = vary.program("xdp_vary").unwrap().try_into().unwrap();
                let t0 = std::time::Instant::now();
                front
                    .test_run(TestRunOptions {
                        data_in: Some(frame),
                        ctx_in: Some(&ctx),
                        repeat: LIVE_FRAMES,
                        attrs: TestRunAttrs::new().xdp_live_frames(LIVE_BATCH),
                        ..Default::default()
                    })
                    .expect("live-frames test run");
                let took = t0.elapsed().as_secs_f64();
                if let (Some(w), Some(b)) = (world, before) {
                    let grew = w.stats()[STAT_FORWARDED as usize] - b[STAT_FORWARDED as usize];
                    assert_eq!(
                        grew,
                        u64::from(LIVE_FRAMES),
                        "{name}, {flows} flows: forwarded grew by {grew}"
                    );
                }
                mpps[k].push(f64::from(LIVE_FRAMES) / took / 1e6);
            }
        }
        let median = |v: &[f64]| {
            let mut s = v.to_vec();
            s.sort_by(|a, b| a.partial_cmp(b).unwrap());
            s[s.len() / 2]
        };
        let (f, g, t) = (median(&mpps[0]), median(&mpps[1]), median(&mpps[2]));
        let target = if flows == LIVE_FLOWS && *mode == "l2dsr" {
            if g / f < 0.6 {
                missed.push(format!("live frames, {flows} flows"));
            }
            format!(
                ">= 0.6x {}",
                if g / f >= 0.6 { "(met)" } else { "(MISSED)" }
            )
        } else {
            "-".to_string()
        };
        writeln!(
            md,
            "| {mode} | {flows} | {f:.2} | {g:.2} | {:.2}x | {target} | {t:.2} | {:.2}x |",
            g / f,
            t / f
        )
        .unwrap();
    }
    md
}
