//! `cargo xtask bench e2e`: new TCP connections per second and requests per second from the
//! lab's client namespace, straight to one backend (the baseline) and through the release
//! `gateway` in l2dsr, ipip and fullnat mode to that same backend, with the CPU each side
//! used.
//!
//! One backend on purpose: the only difference between the baseline and a gateway path is
//! the hop through the balancer namespace, so the ratio is the price of that hop. Rounds
//! interleave the paths (in a rotating order); each figure is the median of the rounds.
//!
//! CPU: the kernel's own BPF run-time statistics (BPF_ENABLE_STATS, held through an fd, so
//! they switch off again when the bench exits, however it exits) give the XDP program's run
//! time and packet count; /proc gives the client, server and agent processes' CPU time and
//! the machine's split (user, system, softirq, idle).
//!
//! Output: Markdown on stdout, also written to `$GATEWAY_BENCH_OUT` if set.
#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
    process::Command,
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use common::{
    agent::Agent,
    procfs::{clock_ticks, pids_named, proc_ticks},
    scenario::wait_up,
};
use lab::{
    Lab, SERVER_PORT, VIP4,
    client::{Conn, in_netns, tcp_name},
};

/// One measurement window; eight per round (4 paths x 2 loads). Many short rounds rather than
/// a few long ones: on a shared machine a burst of foreign load then spoils one window of a
/// path, not its median. About two minutes in all.
const WINDOW: Duration = Duration::from_secs(2);
const ROUNDS: usize = 7;
/// Client threads opening connections: enough to keep two CPUs busy with the server's
/// thread-per-connection accepts; more only adds context switches.
const CONN_THREADS: usize = 4;
/// Persistent connections for the request rate, one client thread each, one request in
/// flight per connection.
const REQ_CONNS: usize = 8;
/// A bound on operations per thread per window, next to the time bound.
const MAX_OPS: u64 = 2_000_000;
/// A thread gives up its window after this many failed operations.
const MAX_ERRORS: u64 = 100;
/// The ipip service's VIP (the l2dsr service has the lab's VIP4).
const VIP_IPIP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// The fullnat service's VIP, and the SNAT address on the balancer's eth0.
const VIP_FULLNAT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 3);
const SNAT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Direct,
    L2dsr,
    Ipip,
    Fullnat,
}

const PATHS: [Path; 4] = [Path::Direct, Path::L2dsr, Path::Ipip, Path::Fullnat];

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct to the backend (baseline)",
            Path::L2dsr => "gateway, l2dsr",
            Path::Ipip => "gateway, ipip",
            Path::Fullnat => "gateway, fullnat",
        }
    }

    fn target(self, lab: &Lab) -> SocketAddr {
        let ip = match self {
            Path::Direct => lab.backends[0].ipv4,
            Path::L2dsr => VIP4,
            Path::Ipip => VIP_IPIP,
            Path::Fullnat => VIP_FULLNAT,
        };
        SocketAddr::new(ip.into(), SERVER_PORT)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Load {
    /// Connect, one line and its answer, close (with RST, so no TIME_WAIT piles up).
    Conns,
    /// One line and its answer on an open connection, again and again.
    Requests,
}

/// CPU counters at one instant.
#[derive(Clone, Copy, Default)]
struct Cpu {
    /// /proc/stat's first line: user, nice, system, idle, iowait, irq, softirq, steal.
    machine: [u64; 8],
    /// utime + stime of the bench process (the client threads), the server, the agent and
    /// the ksoftirqd threads (softirq work the kernel deferred instead of running it in the
    /// context that raised it).
    client: u64,
    server: u64,
    agent: u64,
    ksoftirqd: u64,
    /// The XDP program's run time and run count.
    xdp_ns: u64,
    xdp_runs: u64,
}

/// One window's result; CPU figures are in CPUs (1.0 = one CPU busy the whole window).
struct Sample {
    ops: u64,
    errors: u64,
    busy: f64,
    softirq: f64,
    client: f64,
    server: f64,
    agent: f64,
    ksoftirqd: f64,
    xdp_cpu: f64,
    xdp_packets: u64,
    xdp_ns_per_packet: f64,
}

impl Sample {
    /// CPU of other work: the machine's busy time minus the lab's processes.
    fn rest(&self) -> f64 {
        self.busy - self.client - self.server - self.ksoftirqd - self.agent
    }

    /// The lab's CPU time per operation, in us: client, server, ksoftirqd and agent.
    fn lab_us_per_op(&self) -> f64 {
        (self.client + self.server + self.ksoftirqd + self.agent) * WINDOW.as_secs_f64() * 1e6
            / self.ops.max(1) as f64
    }

    /// The XDP program's run time per operation, in us.
    fn xdp_us_per_op(&self) -> f64 {
        self.xdp_cpu * WINDOW.as_secs_f64() * 1e6 / self.ops.max(1) as f64
    }
}

fn machine_ticks() -> [u64; 8] {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let mut out = [0u64; 8];
    if let Some(line) = stat.lines().next() {
        for (o, v) in out.iter_mut().zip(line.split_whitespace().skip(1)) {
            *o = v.parse().unwrap_or(0);
        }
    }
    out
}

/// The id of the XDP program attached to `eth0` in `netns`.
fn xdp_prog_id(netns: &str) -> Option<u64> {
    let out = lab::run(Command::new("ip").args(["-n", netns, "-j", "link", "show", "dev", "eth0"]))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v[0]["xdp"]["prog"]["id"].as_u64()
}

/// Run time (ns) and run count of program `id`, as the kernel's BPF stats count them.
fn prog_stats(id: u64) -> (u64, u64) {
    let Ok(out) =
        lab::run(Command::new("bpftool").args(["-j", "prog", "show", "id", &id.to_string()]))
    else {
        return (0, 0);
    };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    (
        v["run_time_ns"].as_u64().unwrap_or(0),
        v["run_cnt"].as_u64().unwrap_or(0),
    )
}

/// The PIDs of the kernel's ksoftirqd threads.
struct Pids {
    server: String,
    agent: String,
    ksoftirqd: Vec<String>,
    /// The gateway's XDP program.
    xdp: u64,
}

/// CPU counters now; the XDP program's counters are read apart (bpftool costs CPU itself).
fn snapshot(p: &Pids) -> Cpu {
    Cpu {
        machine: machine_ticks(),
        client: proc_ticks("self"),
        server: proc_ticks(&p.server),
        agent: proc_ticks(&p.agent),
        ksoftirqd: p.ksoftirqd.iter().map(|pid| proc_ticks(pid)).sum(),
        ..Cpu::default()
    }
}

/// Runs `load` against `target` for one window from the client namespace.
fn window(lab: &Lab, pids: &Pids, target: SocketAddr, load: Load) -> Sample {
    let threads = match load {
        Load::Conns => CONN_THREADS,
        Load::Requests => REQ_CONNS,
    };
    let barrier = Arc::new(Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let barrier = barrier.clone();
            in_netns(&lab.client.netns, move || {
                let mut conn = match load {
                    Load::Conns => None,
                    Load::Requests => Conn::open(target).ok(),
                };
                barrier.wait();
                let end = Instant::now() + WINDOW;
                let (mut ops, mut errors) = (0u64, 0u64);
                if load == Load::Requests && conn.is_none() {
                    return (0, 1);
                }
                while ops < MAX_OPS && errors < MAX_ERRORS {
                    let ok = match conn.as_mut() {
                        None => tcp_name(target, 0, Duration::from_secs(1)).is_ok(),
                        Some(c) => c.ask().is_ok(),
                    };
                    if Instant::now() >= end {
                        break;
                    }
                    if ok {
                        ops += 1;
                    } else {
                        errors += 1;
                    }
                }
                (ops, errors)
            })
        })
        .collect();
    // The program's counters before the barrier and after the CPU counters: bpftool's own
    // CPU stays out of the window, and no traffic but health checks flows outside it.
    let xdp0 = prog_stats(pids.xdp);
    barrier.wait();
    let mut before = snapshot(pids);
    let (mut ops, mut errors) = (0, 0);
    for w in workers {
        let (o, e) = w.join().expect("load thread");
        ops += o;
        errors += e;
    }
    let mut after = snapshot(pids);
    (before.xdp_ns, before.xdp_runs) = xdp0;
    (after.xdp_ns, after.xdp_runs) = prog_stats(pids.xdp);
    sample(&before, &after, ops, errors)
}

fn sample(b: &Cpu, a: &Cpu, ops: u64, errors: u64) -> Sample {
    let hz = clock_ticks();
    let secs = WINDOW.as_secs_f64();
    let d: Vec<f64> = a
        .machine
        .iter()
        .zip(&b.machine)
        .map(|(a, b)| a.saturating_sub(*b) as f64)
        .collect();
    let total: f64 = d.iter().sum::<f64>().max(1.0);
    let cpus = cpus() as f64;
    // /proc/stat counts every CPU; its share of the window, scaled to CPUs.
    let of_machine = |ticks: f64| ticks / total * cpus;
    let busy_ticks = total - d[3] - d[4];
    let per_cpu = |ticks: u64| ticks as f64 / hz / secs;
    let xdp_packets = a.xdp_runs.saturating_sub(b.xdp_runs);
    let xdp_ns = a.xdp_ns.saturating_sub(b.xdp_ns);
    Sample {
        ops,
        errors,
        busy: of_machine(busy_ticks),
        softirq: of_machine(d[6]),
        client: per_cpu(a.client.saturating_sub(b.client)),
        server: per_cpu(a.server.saturating_sub(b.server)),
        agent: per_cpu(a.agent.saturating_sub(b.agent)),
        ksoftirqd: per_cpu(a.ksoftirqd.saturating_sub(b.ksoftirqd)),
        xdp_cpu: xdp_ns as f64 / 1e9 / secs,
        xdp_packets,
        xdp_ns_per_packet: if xdp_packets > 0 {
            xdp_ns as f64 / xdp_packets as f64
        } else {
            0.0
        },
    }
}

fn config(lab: &Lab) -> String {
    let backend = lab.backends[0].ipv4;
    let service = |name: &str, vip: Ipv4Addr, mode: &str| {
        format!(
            "\n[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = {SERVER_PORT}\n\
             protocol = \"tcp\"\nmode = \"{mode}\"\n\n[service.health]\nkind = \"tcp\"\n\
             interval = \"1s\"\ntimeout = \"500ms\"\nfall = 2\nrise = 1\n\n\
             [[service.backend]]\naddress = \"{backend}\"\n"
        )
    };
    // The lab's own pin directory and state file: the defaults are per interface name, and
    // every lab's balancer interface is eth0.
    format!(
        "[dataplane]\ninterface = \"eth0\"\nxdp_mode = \"native\"\nconntrack_size = 65536\n\
         ipip_source_v4 = \"{}\"\nsnat_v4 = [\"{SNAT}\"]\npin_dir = \"{}\"\n\
         on_exit = \"detach\"\n\n[admin]\nstate_file = \"{}\"\n{}{}{}",
        lab.lb.ipv4,
        lab.pin_dir().display(),
        lab.scratch_dir().join("overrides.json").display(),
        service("dsr", VIP4, "l2dsr"),
        service("tun", VIP_IPIP, "ipip"),
        service("nat", VIP_FULLNAT, "fullnat")
    )
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

fn min_max(v: &[f64]) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

fn main() {
    if !lab::is_root() {
        eprintln!(
            "bench e2e: needs root (namespaces, XDP, BPF stats); run `cargo xtask bench e2e` as root"
        );
        std::process::exit(1);
    }
    let started = Instant::now();
    let gateway = common::agent::gateway_bin();
    assert!(
        gateway.parent().is_some_and(|d| d.ends_with("release")),
        "bench e2e wants the release agent, found {}",
        gateway.display()
    );
    // Kept until the end: the kernel counts run time only while an fd like this is open.
    let _stats =
        aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS (run time)");

    let lab = common::lab("e", 1);
    let b1 = &lab.backends[0];
    lab::run(Command::new("ip").args([
        "-n",
        &b1.netns,
        "addr",
        "add",
        &format!("{VIP_IPIP}/32"),
        "dev",
        "lo",
    ]))
    .expect("second VIP on the backend");
    lab::run(Command::new("ip").args([
        "-n",
        &lab.client.netns,
        "route",
        "add",
        &format!("{VIP_IPIP}/32"),
        "via",
        &lab.lb.ipv4.to_string(),
    ]))
    .expect("route to the second VIP");
    lab::run(Command::new("ip").args([
        "-n",
        &lab.client.netns,
        "route",
        "add",
        &format!("{VIP_FULLNAT}/32"),
        "via",
        &lab.lb.ipv4.to_string(),
    ]))
    .expect("route to the full-NAT VIP");
    lab::run(Command::new("ip").args([
        "-n",
        &lab.lb.netns,
        "addr",
        "add",
        &format!("{SNAT}/32"),
        "dev",
        "eth0",
    ]))
    .expect("the SNAT address on the balancer");
    let agent = Agent::start(&lab, &config(&lab));
    wait_up(&lab, &agent, "127.0.0.1:9180", 3);
    let pids = Pids {
        server: lab.server_pids()[0].to_string(),
        agent: agent.pid().to_string(),
        ksoftirqd: pids_named("ksoftirqd/"),
        xdp: xdp_prog_id(&lab.lb.netns).expect("no XDP program on the balancer's eth0"),
    };

    // Every path answers, and warm (neighbour caches, conntrack, server threads' stacks).
    for p in PATHS {
        let t = p.target(&lab);
        let name = common::scenario::client(&lab, move || tcp_name(t, 0, Duration::from_secs(3)));
        assert_eq!(name.as_deref().ok(), Some("b1"), "{}: {name:?}", p.name());
    }
    for p in PATHS {
        for load in [Load::Conns, Load::Requests] {
            warm(&lab, p.target(&lab), load);
        }
    }

    assert!(
        prog_stats(pids.xdp).1 > 0,
        "the kernel counts no runs of the XDP program (bpftool missing, or no BPF stats)"
    );

    // samples[path][load] over rounds
    let mut samples: Vec<[Vec<Sample>; 2]> = (0..PATHS.len()).map(|_| [vec![], vec![]]).collect();
    for round in 0..ROUNDS {
        for k in 0..PATHS.len() {
            let i = (k + round) % PATHS.len();
            let t = PATHS[i].target(&lab);
            for (j, load) in [Load::Conns, Load::Requests].into_iter().enumerate() {
                let s = window(&lab, &pids, t, load);
                eprintln!(
                    "round {round} {} {}: {:.0}/s ({} errors); CPU: machine {:.0}%, client {:.0}%, \
                     server {:.0}%, ksoftirqd {:.0}%, XDP {:.1}% ({} packets)",
                    PATHS[i].name(),
                    ["conns", "requests"][j],
                    s.ops as f64 / WINDOW.as_secs_f64(),
                    s.errors,
                    s.busy * 100.0,
                    s.client * 100.0,
                    s.server * 100.0,
                    s.ksoftirqd * 100.0,
                    s.xdp_cpu * 100.0,
                    s.xdp_packets
                );
                samples[i][j].push(s);
            }
        }
    }
    drop(agent);
    drop(lab);

    let md = report(&samples, started.elapsed());
    print!("{md}");
    if let Ok(path) = std::env::var("GATEWAY_BENCH_OUT") {
        std::fs::write(&path, &md).expect("write bench output");
    }
}

/// An untimed warm-up: one thread of the same load for a tenth of a window.
fn warm(lab: &Lab, target: SocketAddr, load: Load) {
    let deadline = Instant::now() + WINDOW / 10;
    common::scenario::client(lab, move || {
        let mut n = 0u64;
        let mut conn = (load == Load::Requests)
            .then(|| Conn::open(target).ok())
            .flatten();
        while Instant::now() < deadline && n < MAX_OPS {
            let ok = match conn.as_mut() {
                Some(c) => c.ask().is_ok(),
                None => tcp_name(target, 0, Duration::from_secs(1)).is_ok(),
            };
            n += u64::from(ok);
        }
    });
}

fn report(samples: &[[Vec<Sample>; 2]], took: Duration) -> String {
    let secs = WINDOW.as_secs_f64();
    let rate = |s: &[Sample]| -> Vec<f64> { s.iter().map(|s| s.ops as f64 / secs).collect() };
    let med = |s: &[Sample], f: fn(&Sample) -> f64| median(&s.iter().map(f).collect::<Vec<_>>());
    let base = [median(&rate(&samples[0][0])), median(&rate(&samples[0][1]))];
    let mut md = String::new();
    writeln!(
        md,
        "| path | new connections/s | spread (min-max) | vs direct | requests/s | spread (min-max) | vs direct |\n|---|---|---|---|---|---|---|"
    )
    .unwrap();
    for (i, p) in PATHS.iter().enumerate() {
        let mut row = format!("| {} ", p.name());
        for j in 0..2 {
            let r = rate(&samples[i][j]);
            let (lo, hi) = min_max(&r);
            let m = median(&r);
            write!(row, "| {m:.0} | {lo:.0}-{hi:.0} | {:.2}x ", m / base[j]).unwrap();
        }
        writeln!(md, "{row}|").unwrap();
    }
    let errors: u64 = samples.iter().flatten().flatten().map(|s| s.errors).sum();
    writeln!(
        md,
        "\n{ROUNDS} rounds x {secs:.0} s per figure, the paths interleaved in a rotating order; \
         the median of the rounds, and the spread over them. IPv4; one backend behind every \
         service, the baseline's own server, so the only difference is the hop through the \
         balancer (for fullnat, both ways: the backend answers the SNAT address, and the \
         balancer's program sees and rewrites the answers too); release `gateway` and `lab-server`. New connections: {CONN_THREADS} client \
         threads, each connecting, sending a line, reading the answer and closing with RST (no \
         TIME_WAIT). Requests: {REQ_CONNS} persistent connections, one client thread and one \
         request in flight each. Failed operations in all windows: {errors}.\n"
    )
    .unwrap();

    writeln!(
        md,
        "Where the CPU went, in % of one CPU (medians of the same windows; the machine has \
         {}%). `machine` and `softirq` come from /proc/stat and include whatever else the \
         machine ran; the process columns from /proc/PID/stat. This kernel has no IRQ time \
         accounting, so softirq work (most of the packet path on veth) is charged to the \
         process it interrupted: mostly the client and the server, the kernel's ksoftirqd \
         threads when it is deferred, other processes when it lands on them. `rest` is \
         machine minus the lab's processes: mostly other work on this shared machine. `lab \
         us/op` is the client's, server's, ksoftirqd's and agent's CPU time per operation. \
         The XDP columns are the kernel's BPF run-time stats for the gateway's program \
         (BPF_ENABLE_STATS): its ns/packet is also its CPU time in ms per million packets.\n",
        cpus() * 100
    )
    .unwrap();
    writeln!(
        md,
        "| path, load | machine | softirq | client | server | ksoftirqd | agent | rest | lab us/op | vs direct | XDP packets/op | XDP ns/packet (ms per 1M packets) | XDP | XDP us/op |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    .unwrap();
    let pct = |x: f64| format!("{:.0}%", x * 100.0);
    let base_cpu = [
        med(&samples[0][0], Sample::lab_us_per_op),
        med(&samples[0][1], Sample::lab_us_per_op),
    ];
    for (i, p) in PATHS.iter().enumerate() {
        for (j, load) in ["new connections", "requests"].iter().enumerate() {
            let s = &samples[i][j];
            let xdp = if *p == Path::Direct {
                "- | - | - | -".to_string()
            } else {
                format!(
                    "{:.1} | {:.0} | {:.1}% | {:.2}",
                    med(s, |s| s.xdp_packets as f64 / s.ops.max(1) as f64),
                    med(s, |s| s.xdp_ns_per_packet),
                    med(s, |s| s.xdp_cpu) * 100.0,
                    med(s, Sample::xdp_us_per_op),
                )
            };
            let lab = med(s, Sample::lab_us_per_op);
            writeln!(
                md,
                "| {}, {load} | {} | {} | {} | {} | {} | {} | {} | {lab:.1} | {:.2}x | {xdp} |",
                p.name(),
                pct(med(s, |s| s.busy)),
                pct(med(s, |s| s.softirq)),
                pct(med(s, |s| s.client)),
                pct(med(s, |s| s.server)),
                pct(med(s, |s| s.ksoftirqd)),
                pct(med(s, |s| s.agent)),
                pct(med(s, Sample::rest)),
                lab / base_cpu[j],
            )
            .unwrap();
        }
    }
    md += &limits(samples);
    writeln!(md, "\nBench run took {:.0} s.", took.as_secs_f64()).unwrap();
    md
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// What limits the numbers, with the figures that show it.
fn limits(samples: &[[Vec<Sample>; 2]]) -> String {
    let med = |i: usize, j: usize, f: fn(&Sample) -> f64| {
        median(&samples[i][j].iter().map(f).collect::<Vec<_>>())
    };
    let busy: Vec<f64> = samples.iter().flatten().flatten().map(|s| s.busy).collect();
    let xdp_max = samples[1..]
        .iter()
        .flatten()
        .flatten()
        .map(|s| s.xdp_cpu)
        .fold(0.0, f64::max);
    let mut md = format!(
        "\nWhat limits the numbers: CPU time, and not the balancer's XDP program. The machine \
         was at least {:.0}% busy (of {}%) in every window, and the gateway's XDP program never \
         used more than {:.1}% of one CPU. Per operation the lab's processes spent {:.0} us per \
         new connection and {:.1} us per request direct, {:.0} and {:.1} us through l2dsr, \
         {:.0} and {:.1} us through ipip; the XDP program's part of that is {:.2} and {:.2} us \
         (l2dsr), {:.2} and {:.2} us (ipip). ",
        min_max(&busy).0 * 100.0,
        cpus() * 100,
        xdp_max * 100.0,
        med(0, 0, Sample::lab_us_per_op),
        med(0, 1, Sample::lab_us_per_op),
        med(1, 0, Sample::lab_us_per_op),
        med(1, 1, Sample::lab_us_per_op),
        med(2, 0, Sample::lab_us_per_op),
        med(2, 1, Sample::lab_us_per_op),
        med(1, 0, Sample::xdp_us_per_op),
        med(1, 1, Sample::xdp_us_per_op),
        med(2, 0, Sample::xdp_us_per_op),
        med(2, 1, Sample::xdp_us_per_op),
    );
    md += "The rest of the difference is the kernel's path for the extra hop on one machine: \
           each packet towards the server crosses two more veth pairs (into the balancer's \
           namespace, and out of it after XDP_TX, each received through veth's NAPI and XDP \
           path) and the bridge a second time; answers go straight back to the client in both \
           modes. Client, server (one thread per connection, spawned per new connection), \
           kernel and balancer all share the same two CPUs here, so whatever the hop costs \
           comes out of the client's and server's rate. On separate machines the balancer's \
           CPU is its own, and what it spends per packet is the XDP column.\n\n";
    let rest = |i: usize, j: usize| med(i, j, Sample::rest) * 100.0;
    writeln!(
        md,
        "This machine is shared, and `rest` is the CPU other work took during the windows: a \
         median {:.0}% of one CPU in the direct new-connection windows, {:.0}% and {:.0}% \
         through l2dsr and ipip, and {:.0}%, {:.0}% and {:.0}% in the request windows. Where \
         it is large, rates do not compare: a path whose packet work runs inside the client's \
         and server's system calls gets only their scheduler share, while work in softirq \
         context (the balancer's NAPI polls) takes its CPU from whatever process runs, so \
         other work probably slows the direct path more. The CPU per operation compares, \
         apart from softirq time charged to other processes.",
        rest(0, 0),
        rest(1, 0),
        rest(2, 0),
        rest(0, 1),
        rest(1, 1),
        rest(2, 1)
    )
    .unwrap();
    md
}
