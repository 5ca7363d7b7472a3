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

struct Case {
    name: &'static str,
    frames: Vec<Vec<u8>>,
    verdict: u32,
    /// Counter that must grow by one per run (None for the floor).
    stat: Option<u32>,
    /// Target ratio to the floor, from the data-plane issue.
    target: Option<f64>,
    /// Run once each before measuring (the flows a conntrack-hit case uses).
    prime: Vec<Vec<u8>>,
    /// Empty conntrack before every `n`th run, so each SYN is a fresh insert (not an
    /// update of an entry an earlier pass made). Emptying is outside the measured time.
    fresh_every: Option<usize>,
    /// Round means with the balancer's program, and with its unchecked build.
    means: Vec<f64>,
    unchecked: Vec<f64>,
    /// Each round mean over the floor measured just before it (see `PAIRED_FLOOR`).
    ratios: Vec<f64>,
    unchecked_ratios: Vec<f64>,
}

impl Case {
    /// A case measured on both builds, with no target, priming or emptying.
    fn new(name: &'static str, frames: Vec<Vec<u8>>, verdict: u32, stat: Option<u32>) -> Case {
        Case {
            name,
            frames,
            verdict,
            stat,
            target: None,
            prime: vec![],
            fresh_every: None,
            means: vec![],
            unchecked: vec![],
            ratios: vec![],
            unchecked_ratios: vec![],
        }
    }
}

fn run_once(p: &Xdp, frame: &[u8], out: &mut [u8]) -> (u32, Duration) {
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(out),
            repeat: 1,
            ..Default::default()
        })
        .expect("test run");
    (r.return_value, r.duration)
}

fn main() {
    if !lab::is_root() {
        eprintln!("bench xdp: needs root (BPF_PROG_TEST_RUN); run `cargo xtask bench xdp` as root");
        std::process::exit(1);
    }
    let vip4 = v4(198, 18, 1, 1);
    let vip4i = v4(198, 18, 1, 2);
    let vip6i = v6("fd00:1::2");
    let c4 = v4(198, 18, 0, 1);
    let c6 = v6("fd00::1");
    let svc = |vip, mode, b: Be| Svc {
        vip,
        port: 80,
        proto: PROTO_TCP,
        mode,
        table_size: 65537,
        backends: vec![b],
    };
    let services = vec![
        svc(vip4, MODE_L2DSR, be(v4(198, 18, 0, 11), 11)),
        svc(vip4i, MODE_IPIP, be(v4(198, 18, 0, 12), 12)),
        svc(vip6i, MODE_IPIP, be(v6("fd00::12"), 0x12)),
    ];
    let settings = Settings {
        mtu: 1500,
        ipip_src_v4: [198, 18, 100, 0],
        ipip_src_v6: addr16(v6("fd00::2")),
        ipip_src_v4_vary_bits: 8,
        _pad: [0; 3],
        checks_off: 0,
        macs: [[0; 6]; gateway_common::MAX_LOCAL_MACS],
    };
    // The balancer's program, and (the same map contents) its build without validation.
    let mut worlds = [
        World::new(&services, settings),
        World::with_object(&services, settings, gateway::object::GATEWAY_UNCHECKED),
    ];
    let mut floor_obj = aya::Ebpf::load(gateway::object::XDP_FLOOR).expect("floor object");
    let floor: &mut Xdp = floor_obj
        .program_mut(PROG_FLOOR)
        .unwrap()
        .try_into()
        .unwrap();
    floor.load().expect("load floor");

    let ack = |src, dst| tcp(src, dst, 33333, 80, TCP_ACK).bytes();
    let syn = |src, dst| tcp(src, dst, 33333, 80, TCP_SYN).bytes();
    let syns: Vec<Vec<u8>> = (0..ITERS)
        .map(|i| tcp(c4, vip4, 10_000 + i as u16, 80, TCP_SYN).bytes())
        .collect();
    // Established flows from distinct ports, and a flood of SYNs from random sources in
    // 198.19.0.0/16 (the frames only ever reach the program through BPF_PROG_TEST_RUN).
    let established: Vec<u16> = (0..ITERS as u16).map(|i| 30_000 + i).collect();
    let ack_from = |src, sport| tcp(src, vip4, sport, 80, TCP_ACK).bytes();
    let syn_from = |src, sport| tcp(src, vip4, sport, 80, TCP_SYN).bytes();
    let mut x = 0x0066_6c6f_6f64_u64;
    let flood: Vec<Vec<u8>> = (0..ITERS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_le_bytes();
            // 198.19/16 holds none of the world's VIPs or host addresses.
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
            ..Case::new(
                "conntrack hit, l2dsr (IPv4)",
                vec![ack(c4, vip4)],
                XDP_TX,
                Some(STAT_CT_HIT),
            )
        },
        Case {
            target: Some(3.5),
            prime: vec![syn(c4, vip4i)],
            ..Case::new(
                "conntrack hit, ipip (IPv4)",
                vec![ack(c4, vip4i)],
                XDP_TX,
                Some(STAT_CT_HIT),
            )
        },
        Case {
            target: Some(3.5),
            prime: vec![syn(c6, vip6i)],
            ..Case::new(
                "conntrack hit, ipip (IPv6)",
                vec![ack(c6, vip6i)],
                XDP_TX,
                Some(STAT_CT_HIT),
            )
        },
        Case {
            target: Some(5.0),
            fresh_every: Some(WARM_FLOWS),
            ..Case::new(
                "new flow: SYN, table lookup, conntrack insert",
                syns[..WARM_FLOWS].to_vec(),
                XDP_TX,
                Some(STAT_CT_MISS_SYN),
            )
        },
        Case {
            prime: established.iter().map(|p| syn_from(c4, *p)).collect(),
            ..Case::new(
                "conntrack hit, cold caches: 20000 established flows",
                established.iter().map(|p| ack_from(c4, *p)).collect(),
                XDP_TX,
                Some(STAT_CT_HIT),
            )
        },
        Case::new(
            "SYN flood: 20000 random sources, conntrack never emptied",
            flood,
            XDP_TX,
            Some(STAT_CT_MISS_SYN),
        ),
        Case {
            fresh_every: Some(ITERS),
            ..Case::new(
                "new flow, cold caches: 20000 distinct flows",
                syns,
                XDP_TX,
                Some(STAT_CT_MISS_SYN),
            )
        },
    ];
    let mut out = vec![0u8; 4096];
    let floor_frame = ack(c4, vip4);
    let floor: &Xdp = floor;

    let mut checks = Vec::new();
    for round in 0..ROUNDS {
        for c in cases.iter_mut() {
            // The floor once per round; every other case with both builds, alternating
            // which goes first.
            let order: &[usize] = match (c.stat, round % 2) {
                (None, _) => &[0],
                (Some(_), 0) => &[0, 1],
                (Some(_), _) => &[1, 0],
            };
            for &k in order {
                let unchecked = k == 1;
                let world = &mut worlds[k];
                let paired_floor = c.stat.map(|_| {
                    let mut t = Duration::ZERO;
                    for _ in 0..PAIRED_FLOOR {
                        let (v, d) = run_once(floor, &floor_frame, &mut out);
                        assert_eq!(v, XDP_TX, "floor: wrong verdict");
                        t += d;
                    }
                    t.as_nanos() as f64 / PAIRED_FLOOR as f64
                });
                for p in &c.prime {
                    assert_eq!(world.run(p).0, XDP_TX, "{}: priming", c.name);
                }
                let before = world.stats();
                let mut total = Duration::ZERO;
                for i in 0..ITERS {
                    if c.fresh_every.is_some_and(|n| i % n == 0) {
                        world.dp.conntrack_clear();
                    }
                    let prog = if c.stat.is_none() {
                        floor
                    } else {
                        world.dp.program().unwrap()
                    };
                    let frame = &c.frames[i % c.frames.len()];
                    let (v, d) = run_once(prog, frame, &mut out);
                    assert_eq!(v, c.verdict, "{}: wrong verdict", c.name);
                    total += d;
                }
                if let Some(s) = c.stat {
                    let grew = world.stats()[s as usize] - before[s as usize];
                    assert_eq!(
                        grew, ITERS as u64,
                        "{} (unchecked: {unchecked}): {} grew by {grew}, not {ITERS}",
                        c.name, STAT_NAMES[s as usize]
                    );
                    if round == 0 && !unchecked {
                        checks.push(format!(
                            "{}: `{}` grew by {grew} for {ITERS} runs (and in the unchecked build)",
                            c.name, STAT_NAMES[s as usize]
                        ));
                    }
                }
                let mean = total.as_nanos() as f64 / ITERS as f64;
                if unchecked {
                    c.unchecked.push(mean);
                } else {
                    c.means.push(mean);
                }
                if let Some(f) = paired_floor {
                    let ratios = if unchecked {
                        &mut c.unchecked_ratios
                    } else {
                        &mut c.ratios
                    };
                    ratios.push(mean / f);
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
         (~30 ns), in the floor as in every case.\n\n\
         Every case runs with warm caches, as a benchmark of one flow repeated does: the \
         conntrack-hit cases replay one flow, and the new-flow case cycles through 256 distinct \
         SYNs, emptying conntrack (outside the measured time) before each pass so that every run \
         is a fresh insert. The cold-cache row uses 20,000 distinct flows per pass, so its table \
         slot, conntrack bucket and LRU node are usually cache misses; most of the difference is \
         the kernel's LRU-hash insert touching cold memory, and it is the figure to expect under \
         a real flood of new flows. The 20,000-established row primes 20,000 flows (outside \
         the measured time) and cycles through them, so their conntrack entries are mostly \
         cache misses, as a busy balancer's established traffic is; the SYN-flood row sends \
         SYNs from random sources in 198.19/16 and never empties conntrack (65,536 entries \
         here), so most inserts evict.\n\n\
         What validation costs (docs/datapath.md lists the checks): every case also runs, in \
         the same rounds and against the same map contents, on the program built with the \
         checks compiled out (`gateway-ebpf/src/unchecked.rs`); `without checks` is its median \
         and ratio, `checks cost` the median over rounds of the difference between the two \
         builds' means in the same round. The targets apply to the balancer's program, checks \
         on.\n\n\
         Ratios: every measurement of a case (20,000 runs) follows a measurement of the floor \
         (5,000 runs); the ratio is the median over rounds of the case's mean over that floor's \
         mean. This machine is shared and has slow spells lasting seconds; a ratio of two \
         medians taken minutes apart moved by 0.2x between runs, a paired one much less. The \
         floor row's own median is in the first line.\n\n",
    );
    writeln!(
        md,
        "| case | median ns/packet | spread (min-max) | ratio to floor | target | \
         without checks | checks cost |"
    )
    .unwrap();
    writeln!(md, "|---|---|---|---|---|---|---|").unwrap();
    let mut missed = Vec::new();
    for c in &cases {
        let m = median(&c.means);
        let lo = c.means.iter().cloned().fold(f64::MAX, f64::min);
        let hi = c.means.iter().cloned().fold(0.0, f64::max);
        let ratio = if c.ratios.is_empty() {
            1.0
        } else {
            median(&c.ratios)
        };
        let target = c.target.map_or("-".to_string(), |t| {
            if ratio > t {
                missed.push(c.name);
            }
            format!("<= {t}x {}", if ratio <= t { "(met)" } else { "(MISSED)" })
        });
        let (without, cost) = if c.unchecked.is_empty() {
            ("-".to_string(), "-".to_string())
        } else {
            let u = median(&c.unchecked);
            let diffs: Vec<f64> = c
                .means
                .iter()
                .zip(&c.unchecked)
                .map(|(a, b)| a - b)
                .collect();
            (
                format!("{u:.1} ({:.2}x)", median(&c.unchecked_ratios)),
                format!("{:+.1} ns", median(&diffs)),
            )
        };
        writeln!(
            md,
            "| {} | {m:.1} | {lo:.1}-{hi:.1} | {ratio:.2}x | {target} | {without} | {cost} |",
            c.name
        )
        .unwrap();
    }
    writeln!(
        md,
        "\n{ROUNDS} rounds x {ITERS} runs per case, interleaved; the median of the round means."
    )
    .unwrap();
    writeln!(md, "Path checks (first round):\n").unwrap();
    for c in &checks {
        writeln!(md, "- {c}").unwrap();
    }
    print!("{md}");
    if let Ok(path) = std::env::var("GATEWAY_BENCH_OUT") {
        std::fs::write(&path, &md).expect("write bench output");
    }
    if !missed.is_empty() {
        eprintln!("targets missed: {missed:?}");
    }
}
