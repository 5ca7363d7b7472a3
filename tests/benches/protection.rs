//! `cargo xtask bench protection`: what source limits cost per packet, through
//! BPF_PROG_TEST_RUN against the floor program measured just before each case (as
//! `bench xdp` does), and the flood guard under a SYN flood: the rate achieved, the share
//! of established flows that kept their conntrack entry and backend, with the guard and
//! without.
//!
//! Output: a Markdown section on stdout, also written to `$GATEWAY_BENCH_OUT` if set.
#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    fmt::Write as _,
    net::IpAddr,
    time::{Duration, Instant},
};

use aya::programs::Xdp;
use common::world::*;
use gateway::{config::AdminState, dataplane::LoadOptions};
use gateway_common::*;
use lab::packet::*;

const ROUNDS: usize = 15;
const ITERS: usize = 20_000;
const PAIRED_FLOOR: usize = ITERS / 4;
/// Established flows the flood must not disturb, the conntrack they share with it, and how
/// long the flood lasts.
const ESTABLISHED: usize = 1_000;
const FLOOD_CONNTRACK: u32 = gateway_common::DEFAULT_CONNTRACK_SIZE;
/// A small table, so that the drain changes most slots and most of the flood's SYNs land
/// on changed slots (where they would insert).
const FLOOD_TABLE: u32 = 251;
const FLOOD_FOR: Duration = Duration::from_secs(10);

fn settings(flood: u32) -> Settings {
    Settings {
        flood_window_limit: flood,
        ..plain_settings()
    }
}

fn vip() -> IpAddr {
    v4(198, 18, 1, 1)
}

fn svc(backends: Vec<Be>, protection: Option<&str>) -> Svc {
    Svc {
        vip: vip(),
        port: 80,
        proto: PROTO_TCP,
        mode: MODE_L2DSR,
        table_size: 65537,
        backends,
        protection: protection.map(str::to_string),
    }
}

fn small(backends: Vec<Be>) -> Svc {
    Svc {
        table_size: FLOOD_TABLE,
        ..svc(backends, None)
    }
}

struct Case {
    name: &'static str,
    world: World,
    frames: Vec<Vec<u8>>,
    verdict: u32,
    stat: u32,
    cursor: usize,
    ratios: Vec<f64>,
    over: Vec<f64>,
    means: Vec<f64>,
}

fn world_with(protection: Option<&str>, allow: &str) -> World {
    let b = vec![be(v4(198, 18, 0, 11), 11)];
    let mut w = World::new(&[svc(b.clone(), None)], settings(0));
    w.protection = allow.to_string();
    w.set(&[svc(b, protection)]);
    w
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s[s.len() / 2]
}

fn main() {
    if !lab::is_root() {
        eprintln!("bench protection: needs root (BPF_PROG_TEST_RUN)");
        std::process::exit(1);
    }
    let mut md = String::new();
    per_packet(&mut md);
    flood(&mut md);
    lab_flood(&mut md);
    print!("{md}");
    if let Some(path) = std::env::var_os("GATEWAY_BENCH_OUT") {
        std::fs::write(path, &md).expect("write the bench output");
    }
}

fn per_packet(md: &mut String) {
    let c = v4(198, 18, 0, 1);
    let ack = tcp(c, vip(), 33333, 80, TCP_ACK).bytes();
    let high =
        "mode = \"enforce\", packets_per_second = 100000000, new_flows_per_second = 100000000";
    let one = "mode = \"enforce\", packets_per_second = 1, packets_burst = 1";
    let monitor = "mode = \"monitor\", packets_per_second = 1, packets_burst = 1";
    // SYNs from 20,000 sources: every one a new bucket on its first pass.
    let sources: Vec<Vec<u8>> = (0..ITERS)
        .map(|i| {
            tcp(
                v4(198, 19, (i >> 8) as u8, (i & 0xff) as u8),
                vip(),
                20000,
                80,
                TCP_SYN,
            )
            .bytes()
        })
        .collect();
    let mut cases = vec![
        Case::new(
            "no limits (protection off), established",
            world_with(None, ""),
            vec![ack.clone()],
            XDP_TX,
            STAT_TABLE_STEADY,
        ),
        Case::new(
            "limit check, within the limit",
            world_with(Some(high), ""),
            vec![ack.clone()],
            XDP_TX,
            STAT_TABLE_STEADY,
        ),
        Case::new(
            "limit check, over the limit (dropped)",
            world_with(Some(one), ""),
            vec![ack.clone()],
            XDP_DROP,
            STAT_DROP_LIMIT_PACKETS,
        ),
        Case::new(
            "limit check, over the limit, allowlisted",
            world_with(Some(one), "allowlist = [\"198.18.0.0/24\"]"),
            vec![ack.clone()],
            XDP_TX,
            STAT_LIMIT_ALLOWLISTED,
        ),
        Case::new(
            "limit check, over the limit, monitor mode",
            world_with(Some(monitor), ""),
            vec![ack.clone()],
            XDP_TX,
            STAT_MONITOR_LIMIT_PACKETS,
        ),
        Case::new(
            "limit check, 20,000 sources cycled (new buckets)",
            world_with(Some(high), ""),
            sources,
            XDP_TX,
            STAT_TABLE_STEADY,
        ),
    ];
    // Prime: the over-limit buckets spend their one packet.
    for c in &mut cases {
        let _ = c.world.run(&c.frames[0]);
    }
    let floor_obj = {
        let mut obj = aya::Ebpf::load(gateway::object::XDP_FLOOR).expect("floor object");
        let floor: &mut Xdp = obj.program_mut(PROG_FLOOR).unwrap().try_into().unwrap();
        floor.load().expect("load floor");
        obj
    };
    let floor: &Xdp = floor_obj.program(PROG_FLOOR).unwrap().try_into().unwrap();
    let mut out = vec![0u8; 4096];
    for _ in 0..ROUNDS {
        for c in &mut cases {
            let n = c.frames.len();
            let mut f_total = Duration::ZERO;
            for i in 0..PAIRED_FLOOR {
                f_total += run_once(floor, &c.frames[(c.cursor + i) % n], &mut out).1;
            }
            let f = f_total.as_nanos() as f64 / PAIRED_FLOOR as f64;
            let before = c.world.stats()[c.stat as usize];
            let prog = c.world.dp.program().expect("program");
            let mut total = Duration::ZERO;
            let mut other = 0;
            for i in 0..ITERS {
                let (v, d) = run_once(prog, &c.frames[(c.cursor + i) % n], &mut out);
                if v != c.verdict {
                    other += 1;
                }
                total += d;
            }
            c.cursor = (c.cursor + ITERS) % n;
            // A bucket of 1/s admits one packet a second: an over-limit case may see a few.
            let slack = if c.stat == STAT_TABLE_STEADY { 0 } else { 5 };
            let moved = c.world.stats()[c.stat as usize] - before;
            assert!(
                other <= slack && moved + slack as u64 >= ITERS as u64,
                "{}: {other} runs took another path; {moved} counted as {}",
                c.name,
                STAT_NAMES[c.stat as usize]
            );
            let mean = total.as_nanos() as f64 / ITERS as f64;
            c.means.push(mean);
            c.ratios.push(mean / f);
            c.over.push(mean - f);
        }
    }
    writeln!(
        md,
        "What the source-limit check costs a packet: the kernel's duration of \
         BPF_PROG_TEST_RUN (`repeat = 1` in a loop, {ITERS} runs a round, {ROUNDS} rounds), each \
         measurement paired with {PAIRED_FLOOR} runs of the floor program (swap MACs, XDP_TX) \
         just before it over the same frames; medians over rounds. One l2dsr IPv4 service; \
         the program's counters prove each run's path (`counter` column). \"Within the \
         limit\": limits far above the traffic (the bucket lookup and update); \"over the \
         limit\": a packet limit of 1/s whose burst the source spent, so every run is refused \
         (or, allowlisted, forwarded after the LPM lookup; in monitor mode, counted and \
         forwarded); \"20,000 sources cycled\": each source a fresh bucket on its first round \
         (an LRU insert), found again on later rounds.\n"
    )
    .unwrap();
    writeln!(
        md,
        "| case | median ns/packet | ratio to floor | over floor | over \"no limits\" | counter |"
    )
    .unwrap();
    writeln!(md, "|---|---|---|---|---|---|").unwrap();
    let base = median(&cases[0].over);
    for c in &cases {
        writeln!(
            md,
            "| {} | {:.1} | {:.2}x | {:+.1} ns | {:+.1} ns | `{}` |",
            c.name,
            median(&c.means),
            median(&c.ratios),
            median(&c.over),
            median(&c.over) - base,
            STAT_NAMES[c.stat as usize]
        )
        .unwrap();
    }
}

impl Case {
    fn new(
        name: &'static str,
        world: World,
        frames: Vec<Vec<u8>>,
        verdict: u32,
        stat: u32,
    ) -> Case {
        Case {
            name,
            world,
            frames,
            verdict,
            stat,
            cursor: 0,
            ratios: vec![],
            over: vec![],
            means: vec![],
        }
    }
}

/// The flood scenario of the flood test, at full speed for `FLOOD_FOR`: established flows
/// on changed slots (a backend drained), then spoofed SYNs from random sources with a table
/// change half way. Returns a table row.
fn flood_run(guard: bool) -> String {
    let load = LoadOptions {
        conntrack_size: FLOOD_CONNTRACK,
        ..TEST_LOAD
    };
    let b = |i: u8| be(v4(198, 18, 0, i), i);
    let drain = |mut b: Be| {
        b.admin = AdminState::Drain;
        b
    };
    let limit = if guard {
        flood_window_limit(gateway::config::DEFAULT_FLOOD_NEW_FLOWS_PER_CPU)
    } else {
        0
    };
    let mut w = World::with_load(
        &[small(vec![b(11), b(12)])],
        settings(limit),
        gateway::object::GATEWAY,
        load,
    );
    let flows: Vec<(IpAddr, u16)> = (0..ESTABLISHED)
        .map(|i| (v4(198, 18, 0, 1 + (i % 200) as u8), 20000 + i as u16))
        .collect();
    // Entries land on the LRU list of the CPU that makes them, and a flood arrives on every
    // CPU (RSS spreads its sources): flows and flood alike take turns on each CPU.
    let mut macs = Vec::new();
    for (i, &(src, sport)) in flows.iter().enumerate() {
        lab::run_on_cpu(i);
        let (v, out) = w.run(&tcp(src, vip(), sport, 80, TCP_SYN).bytes());
        assert_eq!(v, XDP_TX);
        macs.push(out[0..6].to_vec());
    }
    w.set(&[small(vec![b(11), drain(b(12))])]);
    for (i, (&(src, sport), mac)) in flows.iter().zip(&macs).enumerate() {
        lab::run_on_cpu(i);
        let (v, out) = w.run(&tcp(src, vip(), sport, 80, TCP_ACK).bytes());
        assert_eq!((v, &out[0..6]), (XDP_TX, &mac[..]));
    }
    // Flows begun after the drain: on a changed slot their entry is all that keeps them
    // off the slot's previous backend.
    let later: Vec<(IpAddr, u16)> = (0..ESTABLISHED)
        .map(|i| (v4(198, 18, 0, 1 + (i % 200) as u8), 40000 + i as u16))
        .collect();
    for (i, &(src, sport)) in later.iter().enumerate() {
        lab::run_on_cpu(i);
        let (v, out) = w.run(&tcp(src, vip(), sport, 80, TCP_SYN).bytes());
        assert_eq!(v, XDP_TX);
        macs.push(out[0..6].to_vec());
        let (v, _) = w.run(&tcp(src, vip(), sport, 80, TCP_ACK).bytes());
        assert_eq!(v, XDP_TX);
    }
    let flows: Vec<(IpAddr, u16)> = flows.into_iter().chain(later).collect();
    let keys: Vec<FlowKey> = flows
        .iter()
        .map(|&(src, sport)| flow_key(src, vip(), sport, 80, PROTO_TCP))
        .collect();
    let tracked: Vec<&FlowKey> = keys
        .iter()
        .filter(|k| w.dp.conntrack_get(k).is_some())
        .collect();
    let bypass0 = w.stats()[STAT_FLOOD_BYPASS as usize];
    let misses0 = w.stats()[STAT_CT_MISS_SYN as usize];
    // One frame rewritten in place for each SYN: a distinct source address and port every
    // time (no flow repeats, so every SYN on a changed slot is a new entry).
    let mut frame = tcp(v4(198, 19, 0, 1), vip(), 1024, 80, TCP_SYN).bytes();
    let mut out = vec![0u8; 4096];
    let started = Instant::now();
    let mut sent = 0usize;
    let mut changed = false;
    while started.elapsed() < FLOOD_FOR {
        if !changed && started.elapsed() >= FLOOD_FOR / 2 {
            w.set(&[small(vec![b(11), drain(b(12)), b(13)])]);
            changed = true;
        }
        lab::run_on_cpu(sent / 4096);
        let prog = w.dp.program().expect("program");
        for _ in 0..4096 {
            spoof_syn(&mut frame, sent as u32);
            assert_eq!(run_once(prog, &frame, &mut out).0, XDP_TX);
            sent += 1;
        }
    }
    let took = started.elapsed().as_secs_f64();
    lab::run_on_any_cpu();
    let bypassed = w.stats()[STAT_FLOOD_BYPASS as usize] - bypass0;
    // SYNs on changed slots: each would insert an entry, unless the guard held it back.
    let on_changed = w.stats()[STAT_CT_MISS_SYN as usize] - misses0;
    let kept = tracked
        .iter()
        .filter(|k| w.dp.conntrack_get(k).is_some())
        .count();
    let same = flows
        .iter()
        .zip(&macs)
        .filter(|&(&(src, sport), mac)| {
            let (v, out) = w.run(&tcp(src, vip(), sport, 80, TCP_ACK).bytes());
            v == XDP_TX && out[0..6] == mac[..]
        })
        .count();
    format!(
        "| {} | {sent} | {:.0} | {} | {on_changed} | {} | {kept} of {} ({:.1}%) | {same} of {} ({:.1}%) |",
        if guard { "on (default rate)" } else { "off" },
        sent as f64 / took,
        FLOOD_CONNTRACK,
        on_changed - bypassed,
        tracked.len(),
        100.0 * kept as f64 / tracked.len().max(1) as f64,
        flows.len(),
        100.0 * same as f64 / flows.len() as f64,
    )
}

fn flood(md: &mut String) {
    writeln!(
        md,
        "\nThe flood guard under a SYN flood, through BPF_PROG_TEST_RUN: {ESTABLISHED} \
         established flows, then one of the two backends drained (their slots change, and \
         each flow's next packet records its conntrack entry), {ESTABLISHED} more flows begun \
         after the drain (on a changed slot, their entry is what keeps them off the slot's \
         previous backend), then spoofed SYNs from random \
         sources in 198.19/16 as fast as one CPU runs them, 4,096 at a time on each CPU in turn \
         (entries live on the LRU list of the CPU that made them, and a real flood arrives \
         on every CPU), for {}s ({FLOOD_TABLE}-slot table, \
         so most SYNs land on changed slots; conntrack at its default size), with a backend \
         joining half way (a table change during the flood). Afterwards: how many tracked flows kept \
         their entry, and how many flows still reach their own backend (a flow that lost its \
         entry may still: older flows follow the slot's previous backend, and the kernel's \
         LRU spares entries that were looked up since they were made). With the guard at the \
         default `flood_new_flows_per_cpu` and without it. No agent runs here: the agent \
         takes no part in the data path, and its CPU in a flood is its once-a-second look \
         at the few sources over a limit (none here).\n",
        FLOOD_FOR.as_secs()
    )
    .unwrap();
    writeln!(
        md,
        "| guard | SYNs sent | SYNs/s (one CPU at a time) | conntrack size | SYNs on changed \
         slots | entries inserted | entries kept | flows on their backend |"
    )
    .unwrap();
    writeln!(md, "|---|---|---|---|---|---|---|---|").unwrap();
    for guard in [true, false] {
        let row = flood_run(guard);
        writeln!(md, "{row}").unwrap();
    }
}

/// The lab's flood test at bench scale: the real agent, real connections held, spoofed
/// SYNs on the wire.
fn lab_flood(md: &mut String) {
    let gateway = common::agent::gateway_bin();
    assert!(
        gateway.parent().is_some_and(|d| d.ends_with("release")),
        "bench protection wants the release agent, found {}",
        gateway.display()
    );
    let f = common::scenario::flood_in_a_lab("pflood", 3000, FLOOD_FOR);
    writeln!(
        md,
        "\nThe same in the namespace lab, end to end (the flood test of \
         `tests/tests/e2e_protection.rs` with more connections): the release agent, {} TCP \
         connections held from the client, backend b2 drained (a 251-slot table, so about \
         half the slots change and the connections on them get conntrack entries), then \
         spoofed SYNs from random sources sent on the wire by an AF_PACKET socket in the \
         client's namespace for {:.0} s, backend b3 added half way. The lab's conntrack holds \
         65,536 entries and the guard is set to 1,000 new tracked flows/s per CPU, so that what \
         it admits over the flood (rate x CPUs x duration) stays well below that: size the \
         guard the same way against `conntrack_size`. The sender, the balancer's XDP and the \
         backends share the machine's two cores.\n",
        f.held,
        f.took.as_secs_f64()
    )
    .unwrap();
    writeln!(
        md,
        "| SYNs sent | packets/s seen by the program | flood_bypass | connections tracked \
         | entries kept | connections on their backend after | agent CPU during the flood |"
    )
    .unwrap();
    writeln!(md, "|---|---|---|---|---|---|---|").unwrap();
    writeln!(
        md,
        "| {} | {:.0} | {} | {} of {} | {} of {} ({:.1}%, target 100%) | {} of {} | {:.1}% of a core |",
        f.sent,
        f.seen_per_second,
        f.bypassed,
        f.tracked,
        f.held,
        f.kept,
        f.tracked,
        100.0 * f.kept as f64 / f.tracked.max(1) as f64,
        f.same_backend,
        f.held,
        100.0 * f.agent_cpu
    )
    .unwrap();
}
