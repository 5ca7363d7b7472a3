//! `cargo xtask bench health`: the release `gateway` probing 10,000 backends every second
//! (TCP checks), and what that costs the agent: its CPU share and its peak memory.
//! Targets: under 20% of one core and under 64 MiB.
//!
//! The bed is two namespaces joined by one veth pair, not the lab's bridge (a bridge would
//! bill its forwarding to whoever sends):
//!
//! ```text
//!   ns gw-<bed>-lb                              ns gw-<bed>-bk
//!   eth0 198.18.0.2  ───────── veth ─────────   eth0 198.18.0.3  (threaded NAPI)
//!   gateway: 40 ipip services x 250 backends    local route 198.18.64.0/18 on lo
//!   route 198.18.64.0/18 via 198.18.0.3         one listener on :9000 accepts and drops
//! ```
//!
//! The backends are routed, as ipip backends usually are: 10,000 on-link neighbours would
//! overflow the kernel's neighbour table (shared by every namespace). The addresses are
//! real for TCP: the backend namespace answers for the whole /18.
//!
//! Whose CPU is whose: over veth, a packet's receive processing runs in the sender's
//! context, and this kernel bills that time to the task it interrupted (it has no
//! IRQ_TIME_ACCOUNTING): by default every backend's handshake work would be billed to the
//! agent that sent the SYN. So the backend side of the veth runs threaded NAPI (GRO on, and
//! TSO off on the balancer side, without which veth bypasses NAPI): its receive work, and
//! everything that work sends on (the SYN-ACKs and the balancer's receive of them, which
//! on real hosts would be softirq time on two machines), runs in a kernel thread whose CPU
//! is reported on its own row. The agent's row is then its own: user space, its system
//! calls and its sends. A baseline in the same run shows what a full-connect prober pays
//! on this bed: one thread in the balancer namespace making the same 10,000 connections a
//! second with plain blocking sockets (connect, reset), its CPU time from the kernel.
//!
//! Each run: start the agent, wait until all 10,000 backends are up, let it settle, then
//! measure in windows (median and spread); then the baseline, with the agent stopped. The
//! probe latency histogram's count must grow by about one probe per backend per second, or
//! the run fails: a cheap agent that has stopped probing would otherwise look good.
//!
//! Output: Markdown on stdout, also written to `$GATEWAY_BENCH_OUT` if set.
#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, TcpListener},
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::{
    admin_get, metric_sum,
    procfs::{clock_ticks, pids_named, proc_ticks, status_kib},
};

const SERVICES: usize = 40;
const PER_SERVICE: usize = 250;
const BACKENDS: usize = SERVICES * PER_SERVICE;
const CHECK_PORT: u16 = 9000;
/// The first backend; the rest follow in order inside 198.18.64.0/18.
const FIRST_BACKEND: u32 = u32::from_be_bytes([198, 18, 64, 1]);
const LB_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const BK_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
/// Time for every backend to come up (rise = 2 checks a second apart, plus the start).
const UP_TIMEOUT: Duration = Duration::from_secs(60);
/// After all are up: the last table rebuilds and the first probes' set-up are not steady.
const SETTLE: Duration = Duration::from_secs(5);
/// Probes must reach at least this share of one per backend per second.
const MIN_PROBE_RATE: f64 = 0.9;

/// Measurement windows of the agent and of the baseline.
const WINDOWS: usize = 6;
const WINDOW: Duration = Duration::from_secs(10);
const BASELINE_WINDOWS: usize = 3;

/// Two namespaces and what runs in them; dropping it kills the agent and the listener and
/// deletes the namespaces (and the lab's pinned maps and scratch files).
struct Bed {
    name: String,
    lb: String,
    bk: String,
    agent: Option<Child>,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    listener: Option<std::thread::JoinHandle<()>>,
    /// The kernel thread(s) running the backend side's receive processing.
    napi: Vec<String>,
}

impl Drop for Bed {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(l) = self.listener.take() {
            let _ = l.join();
        }
        if let Err(e) = lab::teardown_by_name(&self.name) {
            eprintln!("tearing down {}: {e:#}", self.name);
        }
    }
}

fn sh(netns: Option<&str>, args: &[&str]) {
    let out = match netns {
        Some(ns) => lab::ns_exec(ns, args),
        None => lab::run(std::process::Command::new(args[0]).args(&args[1..])),
    };
    out.unwrap_or_else(|e| panic!("{args:?}: {e:#}"));
}

/// The check port's listener, with a backlog for bursts of thousands of handshakes.
fn listener() -> TcpListener {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.set_reuse_address(true).unwrap();
    s.bind(&std::net::SocketAddr::from((Ipv4Addr::UNSPECIFIED, CHECK_PORT)).into())
        .expect("bind the check port");
    s.listen(4096).unwrap();
    s.set_nonblocking(true).unwrap();
    s.into()
}

fn backend(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(FIRST_BACKEND + i as u32)
}

impl Bed {
    fn up() -> Bed {
        let name = lab::unique_name("hc");
        let (lb, bk) = (format!("gw-{name}-lb"), format!("gw-{name}-bk"));
        let mut bed = Bed {
            name: name.clone(),
            lb: lb.clone(),
            bk: bk.clone(),
            agent: None,
            stop: Arc::new(AtomicBool::new(false)),
            accepted: Arc::new(AtomicU64::new(0)),
            listener: None,
            napi: Vec::new(),
        };
        sh(None, &["ip", "netns", "add", &lb]);
        sh(None, &["ip", "netns", "add", &bk]);
        sh(
            None,
            &[
                "ip", "link", "add", "eth0", "netns", &lb, "type", "veth", "peer", "name", "eth0",
                "netns", &bk,
            ],
        );
        for (ns, addr) in [(&lb, LB_ADDR), (&bk, BK_ADDR)] {
            sh(Some(ns), &["ip", "link", "set", "lo", "up"]);
            sh(
                Some(ns),
                &["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"],
            );
            sh(Some(ns), &["ip", "link", "set", "eth0", "up"]);
        }
        sh(
            Some(&lb),
            &[
                "ip",
                "route",
                "add",
                "198.18.64.0/18",
                "via",
                &BK_ADDR.to_string(),
            ],
        );
        sh(
            Some(&bk),
            &["ip", "route", "add", "local", "198.18.64.0/18", "dev", "lo"],
        );
        // veth hands a packet to its peer's NAPI only with GRO on at the receiver and no TSO
        // at the sender (veth_skb_is_eligible_for_gro); the sysfs write goes through `ip
        // netns exec`, whose /sys is the namespace's (nsenter's would be the host's).
        sh(Some(&bk), &["ethtool", "-K", "eth0", "gro", "on"]);
        sh(Some(&lb), &["ethtool", "-K", "eth0", "tso", "off"]);
        let before = pids_named("napi/");
        let threaded = "echo 1 > /sys/class/net/eth0/threaded";
        sh(None, &["ip", "netns", "exec", &bk, "sh", "-c", threaded]);
        bed.napi = pids_named("napi/")
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        assert!(!bed.napi.is_empty(), "no NAPI thread for the backend side");
        bed.listener = Some(bed.listen());
        bed
    }

    /// One thread in the backend namespace accepting connections on the check port for the
    /// whole /18 and dropping them.
    fn listen(&self) -> std::thread::JoinHandle<()> {
        let (stop, accepted) = (Arc::clone(&self.stop), Arc::clone(&self.accepted));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = common::in_netns(&self.bk, move || {
            let l = listener();
            ready_tx.send(()).unwrap();
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok(_) => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(_) => {}
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("listener ready");
        handle
    }

    /// The lab's scratch directory (removed with the namespaces).
    fn scratch(&self) -> std::path::PathBuf {
        let dir = lab::scratch_dir(&self.name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn config(&self) -> String {
        let scratch = self.scratch();
        let mut s = format!(
            "[dataplane]\ninterface = \"eth0\"\nxdp_mode = \"native\"\nconntrack_size = 65536\n\
             max_services = {SERVICES}\nipip_source_v4 = \"{LB_ADDR}\"\npin_dir = \"{}\"\non_exit = \"detach\"\n\n\
             [admin]\nlisten = \"127.0.0.1:9180\"\nstate_file = \"{}\"\n",
            lab::pin_dir(&self.name).display(),
            scratch.join("overrides.json").display(),
        );
        for svc in 0..SERVICES {
            let _ = write!(
                s,
                "\n[[service]]\nname = \"s{svc}\"\nvip = \"198.18.2.{}\"\nport = 80\n\
                 protocol = \"tcp\"\nmode = \"ipip\"\n\n[service.health]\nkind = \"tcp\"\n\
                 port = {CHECK_PORT}\ninterval = \"1s\"\ntimeout = \"1s\"\n",
                svc + 1
            );
            for b in 0..PER_SERVICE {
                let _ = write!(
                    s,
                    "\n[[service.backend]]\naddress = \"{}\"\n",
                    backend(svc * PER_SERVICE + b)
                );
            }
        }
        let path = scratch.join("gateway.toml");
        std::fs::write(&path, s).unwrap();
        path.display().to_string()
    }

    fn start_agent(&mut self) -> u32 {
        let config = self.config();
        let bin =
            lab::target_bin("gateway").expect("release gateway (cargo xtask bench builds it)");
        let child = lab::ns_command(&self.lb, bin)
            .args(["run", "--config", &config])
            .env(
                "RUST_LOG",
                std::env::var("GATEWAY_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.scratch().join("agent.log")).unwrap())
            .spawn()
            .expect("spawn gateway");
        let pid = child.id();
        self.agent = Some(child);
        pid
    }

    fn metrics(&self) -> String {
        let (code, body) = admin_get(&self.lb, "/metrics");
        assert_eq!(code, 200, "{body}");
        body
    }

    fn wait_all_up(&mut self) -> Duration {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.agent.as_mut().unwrap().try_wait().unwrap() {
                let log = std::fs::read_to_string(self.scratch().join("agent.log"));
                panic!("the agent exited: {status}\n{}", log.unwrap_or_default());
            }
            // The API answers once the agent runs; until then the connect fails.
            let up = lab::client::in_netns(&self.lb, || {
                std::net::TcpStream::connect("127.0.0.1:9180").is_ok()
            })
            .join()
            .unwrap()
            .then(|| metric_sum(&self.metrics(), "gateway_backend_up", ""));
            if up == Some(BACKENDS as u64) {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < UP_TIMEOUT,
                "only {up:?} of {BACKENDS} backends up after {UP_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

struct Window {
    cpu: f64,
    /// The backend side's NAPI thread(s).
    napi_cpu: f64,
    probes_per_s: f64,
}

struct Measured {
    came_up: Duration,
    windows: Vec<Window>,
    peak_kib: u64,
    rss_kib: u64,
    accepted_per_s: f64,
    /// The baseline's CPU per window (1.0 = one core).
    baseline: Vec<f64>,
}

fn measure() -> Measured {
    let mut bed = Bed::up();
    let pid = bed.start_agent();
    let came_up = bed.wait_all_up();
    std::thread::sleep(SETTLE);
    let tick = clock_ticks();
    let count = |m: &str| metric_sum(m, "gateway_probe_duration_seconds_count", "");
    let mut windows = Vec::new();
    let accepted0 = bed.accepted.load(Ordering::Relaxed);
    let started = Instant::now();
    for _ in 0..WINDOWS {
        // Scrapes fall between windows, so their cost is not in the agent's figure.
        let probes0 = count(&bed.metrics());
        let napi = || bed.napi.iter().map(|p| proc_ticks(p)).sum::<u64>();
        let (c0, n0, t0) = (proc_ticks(&pid.to_string()), napi(), Instant::now());
        std::thread::sleep(WINDOW);
        let (c1, n1, t1) = (proc_ticks(&pid.to_string()), napi(), Instant::now());
        let probes1 = count(&bed.metrics());
        let secs = (t1 - t0).as_secs_f64();
        windows.push(Window {
            cpu: (c1 - c0) as f64 / tick / secs,
            napi_cpu: (n1 - n0) as f64 / tick / secs,
            probes_per_s: (probes1 - probes0) as f64 / secs,
        });
    }
    let accepted_per_s =
        (bed.accepted.load(Ordering::Relaxed) - accepted0) as f64 / started.elapsed().as_secs_f64();
    let peak_kib = status_kib(pid, "VmHWM");
    let rss_kib = status_kib(pid, "VmRSS");
    let up = metric_sum(&bed.metrics(), "gateway_backend_up", "");
    assert_eq!(up, BACKENDS as u64, "backends went down during the run");
    for (i, w) in windows.iter().enumerate() {
        assert!(
            w.probes_per_s >= MIN_PROBE_RATE * BACKENDS as f64,
            "window {i}: {:.0} probes/s, expected about {BACKENDS}",
            w.probes_per_s
        );
    }
    if let Some(mut a) = bed.agent.take() {
        let _ = a.kill();
        let _ = a.wait();
    }
    let baseline = baseline(&bed);
    Measured {
        came_up,
        windows,
        peak_kib,
        rss_kib,
        accepted_per_s,
        baseline,
    }
}

/// The bare cost of the same connections on this bed: one thread in the balancer
/// namespace connecting to every backend once a second, in batches on the same 10 ms grid
/// as the agent, with a blocking socket each (reset on close). Returns its CPU per window.
fn baseline(bed: &Bed) -> Vec<f64> {
    lab::client::in_netns(&bed.lb, || {
        const STEP: Duration = Duration::from_millis(10);
        let per_step = BACKENDS / 100;
        let mut cpu = Vec::new();
        let mut next = 0;
        let mut failed = 0u64;
        for _ in 0..BASELINE_WINDOWS {
            let (c0, t0) = (thread_cpu(), Instant::now());
            let mut tick = t0;
            while t0.elapsed() < WINDOW {
                for _ in 0..per_step {
                    let target = std::net::SocketAddr::from((backend(next), CHECK_PORT));
                    next = (next + 1) % BACKENDS;
                    let s =
                        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                            .expect("socket");
                    s.set_linger(Some(Duration::ZERO)).unwrap();
                    if s.connect_timeout(&target.into(), Duration::from_secs(1))
                        .is_err()
                    {
                        failed += 1;
                    }
                }
                tick += STEP;
                if let Some(wait) = tick.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            cpu.push((thread_cpu() - c0).as_secs_f64() / t0.elapsed().as_secs_f64());
        }
        assert!(failed < 100, "{failed} baseline connections failed");
        cpu
    })
    .join()
    .expect("baseline thread")
}

/// The calling thread's CPU time (user + system).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn median_spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
}

fn main() {
    if !common::privileged("bench health") {
        return;
    }
    let m = measure();
    let pct = |v: &[f64]| median_spread(v.iter().map(|c| c * 100.0).collect());
    let (cpu, lo, hi) = pct(&m.windows.iter().map(|w| w.cpu).collect::<Vec<_>>());
    let (napi, nlo, nhi) = pct(&m.windows.iter().map(|w| w.napi_cpu).collect::<Vec<_>>());
    let (base, blo, bhi) = pct(&m.baseline);
    let (probes, plo, phi) = median_spread(m.windows.iter().map(|w| w.probes_per_s).collect());
    let peak = m.peak_kib as f64 / 1024.0;
    let out = format!(
        "{BACKENDS} backends ({SERVICES} ipip services x {PER_SERVICE}), half-open TCP checks \
         every 1 s (timeout 1 s, default rise/fall and jitter) from the release agent, one \
         listener for all of them in the backend namespace. CPU: user + system time over \
         {WINDOWS} windows of {} s (100% = one core); memory: the agent's peak resident set \
         (VmHWM) since start, which includes loading the program and every backend coming up.\n\n\
         | measure | median | min-max |\n|---|---|---|\n\
         | agent CPU | {cpu:.1}% | {lo:.1}-{hi:.1}% |\n\
         | backend side's NAPI thread: receive processing of both ends | {napi:.1}% | {nlo:.1}-{nhi:.1}% |\n\
         | baseline: a full-connect prober (bare blocking connects, same rate, same bed) | {base:.1}% | {blo:.1}-{bhi:.1}% |\n\
         | agent CPU / baseline | {:.2}x | |\n\
         | probes per second (latency histogram count) | {probes:.0} | {plo:.0}-{phi:.0} |\n\n\
         All backends up {:.1} s after start; the listener accepted {:.0} connections/s (a \
         half-open check makes none); peak RSS {peak:.1} MiB, {:.1} MiB at the end.\n\n\
         Targets: CPU under 20% of one core: {} ({cpu:.1}%); peak memory under 64 MiB: {} \
         ({peak:.1} MiB). The backend side of the veth runs threaded NAPI, so the backends' \
         handshake work and the balancer's receive of their answers are billed to that \
         thread (on real hosts: softirq time on each machine), not to the agent; without \
         it this kernel (no IRQ time accounting) bills all of it to the sender's system \
         calls. The baseline's figure is its own thread's CPU time: a socket opened, \
         connected (sleeping until the handshake completes) and reset per connection.\n",
        WINDOW.as_secs(),
        cpu / base,
        m.came_up.as_secs_f64(),
        m.accepted_per_s,
        m.rss_kib as f64 / 1024.0,
        if cpu < 20.0 { "met" } else { "NOT met" },
        if peak < 64.0 { "met" } else { "NOT met" },
    );
    print!("{out}");
    if let Ok(path) = std::env::var("GATEWAY_BENCH_OUT") {
        std::fs::write(path, &out).expect("write GATEWAY_BENCH_OUT");
    }
}
