//! `cargo xtask bench ecmp`: a balancer of the scale-out lab dies, over 20 runs. Each run
//! builds a fresh lab (router, two balancers with the release `gateway`, their BIRDs and
//! guards, 3 backends), opens 24 long-lived connections through the VIP, streams new
//! connections from the client and, 700-950 ms in, kills balancer lb2 as a machine dies:
//! its link goes down, then its agent, BIRD and guard are killed. Measured: the time to the
//! router's withdrawal of lb2's route (polled every 5 ms), the time to the last new
//! connection that failed, and how many of the long-lived connections broke (target 0:
//! those that moved to lb1 are placed by the same table there).
//!
//! Output: Markdown on stdout, also written to `$GATEWAY_BENCH_OUT` if set.
#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    fmt::Write as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{agent::*, ecmp::*, scenario::vip};

const RUNS: usize = 20;
/// A run takes about 10 s; stop early rather than run past this.
const BUDGET: Duration = Duration::from_secs(400);
/// How long one new connection may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
/// The lab's BGP hold time: a dead machine's sessions end at most this long after its last
/// keepalive.
const HOLD: Duration = Duration::from_secs(3);

struct Run {
    mode: &'static str,
    withdrawn: Duration,
    last_failure: Duration,
    failed: usize,
    total: usize,
    held_broken: usize,
    held_moved: u64,
}

fn main() {
    if !lab::is_root() {
        eprintln!("bench ecmp: needs root (namespaces, XDP); run `cargo xtask bench ecmp` as root");
        std::process::exit(1);
    }
    let gateway = gateway_bin();
    assert!(
        gateway.parent().is_some_and(|d| d.ends_with("release")),
        "bench ecmp wants the release agent, found {}",
        gateway.display()
    );
    let started = Instant::now();
    let modes = ["l2dsr", "ipip"];
    let mut runs: Vec<Run> = Vec::new();
    let mut problems = Vec::new();
    let mut seed = 0x6563_6d70_u64;
    for run in 0..RUNS {
        if started.elapsed() > BUDGET {
            problems.push(format!(
                "stopped after {run} runs: over the {BUDGET:?} budget"
            ));
            break;
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let kill_at = Duration::from_millis(700 + seed % 250);
        let r = one_run(modes[run % modes.len()], kill_at);
        eprintln!(
            "run {run} {}: withdrawn {} ms, last failure {} ms, {} of {} new connections failed, \
             {} of 24 held broken ({} had moved)",
            r.mode,
            r.withdrawn.as_millis(),
            r.last_failure.as_millis(),
            r.failed,
            r.total,
            r.held_broken,
            r.held_moved
        );
        runs.push(r);
    }

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let stats = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        (v[0], at(0.5), at(0.9), v[v.len() - 1])
    };
    let mut md = String::new();
    writeln!(
        md,
        "| measure | min | median | p90 | max |\n|---|---|---|---|---|"
    )
    .unwrap();
    let rows = [
        (
            "death to the router's withdrawal (ms)",
            runs.iter().map(|r| ms(r.withdrawn)).collect::<Vec<_>>(),
        ),
        (
            "death to the last failed new connection (ms)",
            runs.iter().map(|r| ms(r.last_failure)).collect(),
        ),
        (
            "new connections failed per run",
            runs.iter().map(|r| r.failed as f64).collect(),
        ),
    ];
    for (name, v) in rows {
        let (lo, med, p90, hi) = stats(v);
        writeln!(md, "| {name} | {lo:.0} | {med:.0} | {p90:.0} | {hi:.0} |").unwrap();
    }
    let broken: usize = runs.iter().map(|r| r.held_broken).sum();
    let moved: u64 = runs.iter().map(|r| r.held_moved).sum();
    let by_mode = |m: &str| -> usize {
        runs.iter()
            .filter(|r| r.mode == m)
            .map(|r| r.held_broken)
            .sum()
    };
    writeln!(
        md,
        "\n{} runs ({} l2dsr, {} ipip), IPv4, BGP hold time {} s, a new connection every few ms \
         from the client (one at a time, {} ms timeout), {} in all. Established connections \
         broken by the balancer's loss: {broken} of {} held ({moved} of them had gone through \
         the dead balancer and moved to the other): l2dsr {}, ipip {} (target 0: {}).",
        runs.len(),
        runs.iter().filter(|r| r.mode == "l2dsr").count(),
        runs.iter().filter(|r| r.mode == "ipip").count(),
        HOLD.as_secs(),
        CONNECT_TIMEOUT.as_millis(),
        runs.iter().map(|r| r.total).sum::<usize>(),
        runs.len() * 24,
        by_mode("l2dsr"),
        by_mode("ipip"),
        if broken == 0 { "met" } else { "MISSED" }
    )
    .unwrap();
    writeln!(
        md,
        "\nA dead machine says nothing: the router learns of it when the BGP hold time runs out \
         (at most the hold time after the last message it had from the balancer), and until \
         then sends it every flow its hash gives it; those new connections fail. The \
         withdrawal, not the balancer, sets the failover time here; BFD on the sessions, or a \
         shorter hold time, would shorten it. A balancer whose agent dies while the machine \
         lives is withdrawn by its guard after `agent_grace` (the ECMP failover test: 1.02-1.19 \
         s with a grace of 1 s), and one whose data plane is gone by its agent within a second."
    )
    .unwrap();
    for p in &problems {
        writeln!(md, "\nproblem: {p}").unwrap();
    }
    print!("{md}");
    if let Ok(path) = std::env::var("GATEWAY_BENCH_OUT") {
        std::fs::write(&path, &md).expect("write bench output");
    }
}

fn one_run(mode: &'static str, kill_at: Duration) -> Run {
    let lab = common::lab_of("be", 3, 2);
    let mut pair = Pair::start(&lab, Cfg::new(mode, false, 3));
    let before = pair.new_flows(&lab);
    let mut held = Held::open(&lab, false, 24);
    let held_moved = pair.new_flows(&lab)[1] - before[1];

    // New connections, one at a time, until told to stop: (when, ok).
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let vip = vip(&lab, false);
    let stream = lab::client::in_netns(&lab.client.netns, move || {
        let mut seen = Vec::new();
        let mut port = 40_000u16;
        while !stop2.load(Ordering::Relaxed) && port < 64_000 {
            // When the attempt began: a failure is the flow the dead balancer was sent.
            let at = Instant::now();
            let ok = tcp_name(vip, port, CONNECT_TIMEOUT).is_ok();
            seen.push((at, ok));
            port += 1;
        }
        seen
    });
    std::thread::sleep(kill_at);
    let died = Instant::now();
    let lb2 = &lab.lbs[1];
    lab::ns_exec(&lb2.netns, &["ip", "link", "set", "eth0", "down"]).unwrap();
    if let Some(a) = pair.agents[1].take() {
        a.kill();
    }
    if let Some(mut b) = pair.birds[1].take() {
        let _ = b.kill();
        let _ = b.wait();
    }
    let _ = pair.guards[1].kill();
    wait_next_hops(&lab, false, 1, HOLD + Duration::from_secs(3));
    let withdrawn = died.elapsed();
    // A while after the withdrawal, so the stream shows that nothing fails any more.
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let seen = stream.join().expect("client stream");
    let failed: Vec<Instant> = seen
        .iter()
        .filter(|(t, ok)| !ok && *t >= died)
        .map(|(t, _)| *t)
        .collect();
    let last_failure = failed
        .iter()
        .max()
        .map_or(Duration::ZERO, |t| t.duration_since(died));
    let held_broken = held.check(&lab).len();
    Run {
        mode,
        withdrawn,
        last_failure,
        failed: failed.len(),
        total: seen.len(),
        held_broken,
        held_moved,
    }
}
