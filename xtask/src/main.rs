//! `cargo xtask`: what cargo alone cannot do - set-up, build-and-load, the namespace lab,
//! the full test run and the demo.
mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build needs (idempotent; other commands run it when needed).
    Setup,
    /// Build the agent (and with it the kernel object).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build, then run `gateway` as root with the given arguments.
    Run {
        #[arg(long)]
        release: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The namespace lab: client, balancer and backends on one bridge (with `up
    /// --balancers 2`: a router running BIRD in front of two balancers, each running the
    /// agent, its BIRD and its guard).
    Lab {
        #[command(subcommand)]
        action: LabCmd,
    },
    /// fmt check, clippy (-D warnings), unit tests and the privileged tests.
    Test {
        /// Extra arguments for the test binaries (e.g. a name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The main job: a working balancer on a default lab, with traffic, then tear-down.
    /// `demo ecmp`: two balancers behind a router, one of them dying.
    Demo {
        /// `ecmp` for the scale-out demo.
        which: Option<String>,
        /// Keep the lab, the agent and the traffic up after the demo, with the status page
        /// reachable from this machine, until Ctrl-C.
        #[arg(long)]
        keep: bool,
    },
    /// Run benchmarks (all, or the one named) and write docs/BENCHMARKS.md.
    Bench {
        /// `xdp`, `maglev`, `sync`, `e2e`, `failover`, `health`, `ecmp` or `protection`; all
        /// when omitted.
        which: Option<String>,
    },
}

#[derive(Subcommand)]
enum LabCmd {
    /// Build the lab (and leave it up).
    Up {
        #[arg(long, default_value = "lab")]
        name: String,
        #[arg(long, default_value_t = 3)]
        backends: usize,
        /// 2: the scale-out lab, with the balancers' agents, BIRDs and guards started.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
        balancers: u8,
    },
    /// Remove the lab: kill its processes by PID, delete its namespaces.
    Down {
        #[arg(long, default_value = "lab")]
        name: String,
    },
    /// List the lab's namespaces, addresses and processes.
    Status {
        #[arg(long, default_value = "lab")]
        name: String,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup => setup::ensure(true).map(|_| ()),
        Cmd::Build { release } => build(release).map(|_| ()),
        Cmd::Run { release, args } => run(release, &args),
        Cmd::Lab { action } => lab_cmd(action),
        Cmd::Test { args } => test(&args),
        Cmd::Demo { which, keep } => match which.as_deref() {
            None => demo(keep),
            Some("ecmp") => demo_ecmp(),
            Some(other) => Err(anyhow::anyhow!("no demo named {other:?}; known: ecmp")),
        },
        Cmd::Bench { which } => bench(which.as_deref()),
    };
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A cargo command in the workspace with the bpf linker on hand.
fn cargo(env: &setup::Env) -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    c.env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", &env.linker);
    c
}

fn status(cmd: &mut Command) -> anyhow::Result<()> {
    let st = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

fn step(msg: &str) {
    println!("\x1b[1m==> {msg}\x1b[0m");
}

/// Builds every binary; returns the target directory of the profile.
fn build(release: bool) -> anyhow::Result<PathBuf> {
    let env = setup::ensure(false)?;
    let mut c = cargo(&env);
    c.args(["build", "--bins"]);
    if release {
        c.arg("--release");
    }
    status(&mut c)?;
    Ok(workspace_root()
        .join("target")
        .join(if release { "release" } else { "debug" }))
}

fn run(release: bool, args: &[String]) -> anyhow::Result<()> {
    let dir = build(release)?;
    let bin = dir.join("gateway");
    let mut c = if setup::is_root() {
        Command::new(&bin)
    } else {
        let mut s = Command::new("sudo");
        s.arg(&bin);
        s
    };
    status(c.args(args))
}

fn lab_spec(
    dir: &Path,
    name: &str,
    backends: usize,
    balancers: usize,
) -> anyhow::Result<lab::LabSpec> {
    let pass = dir.join("xdp-pass.o");
    let decap = dir.join("xdp-decap.o");
    status(
        Command::new(dir.join("gateway"))
            .args(["internal", "write-objects"])
            .arg(&pass)
            .arg(&decap),
    )?;
    Ok(lab::LabSpec {
        name: name.to_string(),
        backends,
        pass_object: pass,
        decap_object: decap,
        server_bin: dir.join("lab-server"),
        balancers,
    })
}

fn lab_cmd(action: LabCmd) -> anyhow::Result<()> {
    match action {
        LabCmd::Up {
            name,
            backends,
            balancers,
        } => {
            let dir = build(false)?;
            let mut l = lab::Lab::up(lab_spec(&dir, &name, backends, balancers.into())?)?;
            l.teardown_on_drop = false;
            print_lab(&l);
            if l.router.is_some() {
                // Left running: `lab down` ends them.
                drop(start_balancers(&l, &dir)?);
            }
            Ok(())
        }
        LabCmd::Down { name } => {
            let n = lab::teardown_by_name(&name)?;
            println!("lab {name}: removed {n} namespaces");
            Ok(())
        }
        LabCmd::Status { name } => {
            let prefix = format!("{}{name}-", lab::NS_PREFIX);
            let all: Vec<String> = lab::list_netns()?
                .into_iter()
                .filter(|n| n.starts_with(&prefix))
                .collect();
            if all.is_empty() {
                println!("lab {name}: down");
            }
            for ns in all {
                let addrs = lab::run(Command::new("ip").args(["-n", &ns, "-br", "addr"]))?;
                let pids = lab::run(Command::new("ip").args(["netns", "pids", &ns]))?;
                println!(
                    "{ns}  pids: {}",
                    String::from_utf8_lossy(&pids.stdout)
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(",")
                );
                for l in String::from_utf8_lossy(&addrs.stdout).lines() {
                    println!("    {l}");
                }
            }
            Ok(())
        }
    }
}

fn print_lab(l: &lab::Lab) {
    println!("lab {} is up:", l.name);
    let front = std::iter::once(&l.client).chain(&l.router);
    for n in front.chain(&l.lbs).chain(&l.backends) {
        println!(
            "  {:<8} netns {:<16} {} {}",
            n.name, n.netns, n.ipv4, n.ipv6
        );
    }
    println!(
        "  VIPs {} and {} on the backends' lo; lab-server on port {}",
        lab::VIP4,
        lab::VIP6,
        lab::SERVER_PORT
    );
}

/// The scale-out lab's balancers: on each, the agent with a built-in config (l2dsr, both
/// VIPs, the lab's backends, `[bgp]` towards the router), then its BIRD and its guard, left
/// running (`cargo xtask lab down` ends them); waits until the router spreads both VIPs over
/// both balancers.
fn start_balancers(l: &lab::Lab, dir: &Path) -> anyhow::Result<Vec<(usize, std::process::Child)>> {
    let scratch = l.scratch_dir();
    let mut children = Vec::new();
    for (i, lb) in l.lbs.iter().enumerate() {
        let bird_dir = scratch.join(format!("bird-{}", lb.name));
        let mut text = ECMP_CONFIG
            .replace("PIN_DIR", &l.pin_dir().join(&lb.name).display().to_string())
            .replace(
                "STATE_FILE",
                &scratch
                    .join(format!("{}.overrides.json", lb.name))
                    .display()
                    .to_string(),
            )
            .replace("ROUTER_ID", &lb.ipv4.to_string())
            .replace("BIRD_DIR", &bird_dir.display().to_string());
        for (v4, v6) in l.backends.iter().map(|b| (b.ipv4, b.ipv6)) {
            text = text
                .replace(
                    "#BACKENDS4",
                    &format!("[[service.backend]]\naddress = \"{v4}\"\n#BACKENDS4"),
                )
                .replace(
                    "#BACKENDS6",
                    &format!("[[service.backend]]\naddress = \"{v6}\"\n#BACKENDS6"),
                );
        }
        let cfg = scratch.join(format!("gateway-{}.toml", lb.name));
        std::fs::write(&cfg, text)?;
        let log = |what: &str| -> anyhow::Result<Stdio> {
            Ok(std::fs::File::create(scratch.join(format!("{}-{what}.log", lb.name)))?.into())
        };
        children.push((
            i,
            lab::ns_command(&lb.netns, dir.join("gateway"))
                .args(["run", "--config"])
                .arg(&cfg)
                .env("RUST_LOG", "info")
                .stdout(log("gateway")?)
                .stderr(log("gateway-stderr")?)
                .spawn()?,
        ));
        lab::wait_for(
            "the agent's BIRD configuration",
            Duration::from_secs(20),
            || bird_dir.join("bird.conf").is_file() && bird_dir.join("vips.conf").is_file(),
        )?;
        let bird = lab::start_bird(
            &lb.netns,
            &bird_dir.join("bird.conf"),
            &bird_dir.join("bird.ctl"),
        )?;
        children.push((i, bird));
        children.push((
            i,
            lab::ns_command(&lb.netns, dir.join("gateway"))
                .args(["bgp-guard", "--config"])
                .arg(&cfg)
                .stdout(log("guard")?)
                .stderr(log("guard-stderr")?)
                .spawn()?,
        ));
        println!(
            "  {}: gateway, BIRD and bgp-guard running; config {}, logs {}/{}-*.log",
            lb.name,
            cfg.display(),
            scratch.display(),
            lb.name
        );
    }
    for vip in [format!("{}/32", lab::VIP4), format!("{}/128", lab::VIP6)] {
        lab::wait_for("the router's ECMP routes", Duration::from_secs(30), || {
            l.router_next_hops(&vip).is_ok_and(|h| h.len() == 2)
        })?;
        let hops: Vec<String> = l
            .router_next_hops(&vip)?
            .iter()
            .map(|h| h.to_string())
            .collect();
        println!("  router: {vip} via {}", hops.join(" and "));
    }
    println!(
        "  the router's BIRD: birdc -s {} show route",
        l.router_socket().display()
    );
    Ok(children)
}

/// `cargo xtask demo ecmp`: the scale-out lab (a router in front of two balancers), a stream
/// of new connections with a live table of where they go, one balancer's machine dying (its
/// link down, its processes killed), the router's withdrawal and the failover measured.
fn demo_ecmp() -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    if !setup::is_root() {
        bail!("the demo builds network namespaces and loads XDP: run it as root");
    }
    step("set-up and build");
    let dir = build(false)?;
    step("lab up: a client behind a router (BIRD, ECMP), two balancers, 3 backends");
    let l = lab::Lab::up(lab_spec(&dir, "demoecmp", 3, 2)?)?;
    print_lab(&l);
    step(
        "on each balancer: gateway (l2dsr, [bgp]), its BIRD and its guard; the router learns the VIPs",
    );
    let children = start_balancers(&l, &dir)?;

    step(
        "traffic: new TCP connections from the client to 198.18.1.1:80, counted per balancer and backend",
    );
    let (stop, rx, traffic) = demo_traffic(&l);
    // New flows each balancer placed, from `gateway status` in its namespace.
    let placed = |lb: &lab::Node| -> u64 {
        lab::ns_exec(
            &lb.netns,
            &[dir.join("gateway").to_str().unwrap_or("gateway"), "status"],
        )
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let line = text
                .lines()
                .find(|l| l.starts_with("service web4"))?
                .to_string();
            let words: Vec<&str> = line.split_whitespace().collect();
            let i = words
                .windows(3)
                .position(|w| w[1] == "new" && w[2] == "flows")?;
            words[i].parse().ok()
        })
        .unwrap_or(0)
    };
    let began = Instant::now();
    let mut last = [placed(&l.lbs[0]), placed(&l.lbs[1])];
    let mut show = |n: usize, what: &str| -> anyhow::Result<Vec<Instant>> {
        let mut failures = Vec::new();
        println!("  {what}");
        println!(
            "  {:>6}  {:>9}  {:>9}  {:>6}  {:>6}  {:>6}  {:>7}  router's next hops",
            "t", "via lb", "via lb2", "b1", "b2", "b3", "failed"
        );
        for _ in 0..n {
            let w = rx
                .recv_timeout(Duration::from_secs(5))
                .context("traffic stalled")?;
            let now = [placed(&l.lbs[0]), placed(&l.lbs[1])];
            let via = [
                now[0].saturating_sub(last[0]),
                now[1].saturating_sub(last[1]),
            ];
            last = now;
            let c = |b: &str| *w.per_backend.get(b).unwrap_or(&0);
            let hops: Vec<String> = l
                .router_next_hops(&format!("{}/32", lab::VIP4))
                .unwrap_or_default()
                .iter()
                .map(|h| h.to_string())
                .collect();
            println!(
                "  {:>5.1}s  {:>9}  {:>9}  {:>6}  {:>6}  {:>6}  {:>7}  {}",
                began.elapsed().as_secs_f64(),
                via[0],
                via[1],
                c("b1"),
                c("b2"),
                c("b3"),
                w.failed,
                hops.join(" ")
            );
            failures.extend(w.failures);
        }
        Ok(failures)
    };
    show(
        4,
        "every 0.5 s: new flows each balancer placed, answers per backend:",
    )?;

    step("balancer lb2's machine dies: its link goes down, its agent, BIRD and guard are killed");
    let died = Instant::now();
    lab::ns_exec(&l.lbs[1].netns, &["ip", "link", "set", "eth0", "down"])?;
    for mut c in children
        .into_iter()
        .filter(|(i, _)| *i == 1)
        .map(|(_, c)| c)
    {
        let _ = c.kill();
        let _ = c.wait();
    }
    let vip4 = format!("{}/32", lab::VIP4);
    // The withdrawal is watched beside the live table.
    let (withdrawn, failures) = std::thread::scope(|s| {
        let watch = s.spawn(|| {
            lab::wait_for("the router's withdrawal", Duration::from_secs(10), || {
                l.router_next_hops(&vip4).is_ok_and(|h| h.len() == 1)
            })
            .map(|()| died.elapsed())
        });
        let failures = show(
            8,
            "the router keeps sending lb2 its share until the BGP hold time (3 s) ends:",
        );
        (watch.join(), failures)
    });
    let withdrawn = withdrawn.map_err(|_| anyhow::anyhow!("the watcher panicked"))??;
    let failures = failures?;
    let after: Vec<_> = failures.iter().filter(|t| **t >= died).collect();
    println!(
        "  => the router withdrew lb2 {} ms after its death; new connections failed for {} ms \
         ({} failures), then all went through lb",
        withdrawn.as_millis(),
        after
            .iter()
            .max()
            .map_or(0, |t| t.duration_since(died).as_millis()),
        after.len()
    );
    println!(
        "     (a dead machine says nothing: the hold time bounds this; a dead agent alone is \
         withdrawn by its guard, see docs/operations.md)"
    );
    stop.store(true, Ordering::Relaxed);
    let _ = traffic.join();
    step("lab down");
    drop(l);
    println!("demo done");
    Ok(())
}

/// The agent's config on each balancer of `cargo xtask lab up --balancers 2`.
const ECMP_CONFIG: &str = r#"
[dataplane]
interface = "eth0"
conntrack_size = 65536
pin_dir = "PIN_DIR"
on_exit = "keep"

[admin]
state_file = "STATE_FILE"

[bgp]
local_as = 65010
router_id = "ROUTER_ID"
bird_dir = "BIRD_DIR"

[[bgp.neighbor]]
address = "198.18.0.1"
as = 65000
hold_time = "3s"

[[bgp.neighbor]]
address = "fd00::1"
as = 65000
hold_time = "3s"

[[service]]
name = "web4"
vip = "198.18.1.1"
port = 80
protocol = "tcp"
mode = "l2dsr"

[service.health]
interval = "500ms"

#BACKENDS4
[[service]]
name = "web6"
vip = "fd00:1::1"
port = 80
protocol = "tcp"
mode = "l2dsr"

[service.health]
interval = "500ms"

#BACKENDS6
"#;

/// The agent's default pin root (`dataplane.pin_dir` is `<this>/<interface>` by default);
/// tests and benches must never use it.
const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/gateway";

/// The names in directory `dir` (none if it does not exist).
fn entries(dir: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Entries of the default pin root that are not in `before`.
fn pinned_since(before: &[String]) -> Vec<String> {
    entries(DEFAULT_PIN_ROOT)
        .into_iter()
        .filter(|e| !before.contains(e))
        .collect()
}

fn test(args: &[String]) -> anyhow::Result<()> {
    let started = Instant::now();
    let env = setup::ensure(false)?;
    step("cargo fmt --check");
    status(cargo(&env).args(["fmt", "--all", "--check"]))?;
    step("cargo clippy --all-targets -- -D warnings");
    status(cargo(&env).args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    step("cargo build --bins");
    status(cargo(&env).args(["build", "--bins"]))?;
    step("unit and privileged tests");
    let production_pins = entries(DEFAULT_PIN_ROOT);
    if !setup::is_root() {
        println!("not root: privileged tests will print SKIPPED; CI runs them as root");
    }
    let mut test = cargo(&env);
    test.args(["test", "--", "--include-ignored"]).args(args);
    if setup::is_root() {
        // A privileged test that skips as root is a broken test: make it fail.
        test.env("GATEWAY_REQUIRE_PRIVILEGED", "1");
    }
    status(&mut test)?;
    let left: Vec<String> = lab::list_netns()?
        .into_iter()
        .filter(|n| n.starts_with(lab::NS_PREFIX))
        .collect();
    if !left.is_empty() {
        bail!("tests left namespaces behind: {left:?}");
    }
    let pins = entries(lab::PIN_ROOT);
    if !pins.is_empty() {
        bail!(
            "tests left pinned state behind in {}: {pins:?}",
            lab::PIN_ROOT
        );
    }
    // Every lab's balancer interface is called eth0, so an agent that pinned under the
    // default root would be adopted by the next lab's agent (and by a real one on eth0).
    let new = pinned_since(&production_pins);
    if !new.is_empty() {
        bail!("tests pinned state under {DEFAULT_PIN_ROOT} (not their lab's directory): {new:?}");
    }
    println!("all tests passed in {:.0?}", started.elapsed());
    Ok(())
}

/// The built-in config of the demo: one TCP service on the lab's IPv4 VIP, three backends,
/// HTTP health checks every 200 ms. Pinned state and API changes go to the lab's own
/// directories (`PIN_DIR`, `STATE_FILE`), which go with the lab, so that a demo that was
/// interrupted leaves nothing that the next one would adopt.
const DEMO_CONFIG: &str = r#"
[dataplane]
interface = "eth0"
xdp_mode = "auto"
conntrack_size = 65536
pin_dir = "PIN_DIR"

[admin]
state_file = "STATE_FILE"

[[service]]
name = "web"
vip = "198.18.1.1"
port = 80
protocol = "tcp"
mode = "l2dsr"

[service.health]
kind = "http"
path = "/"
interval = "200ms"
timeout = "200ms"
fall = 2
rise = 2

[[service.backend]]
address = "198.18.0.11"

[[service.backend]]
address = "198.18.0.12"

[[service.backend]]
address = "198.18.0.13"
"#;

/// What the traffic thread saw in one window.
struct Window {
    per_backend: std::collections::BTreeMap<String, usize>,
    failed: usize,
    /// When each failed connection was attempted.
    failures: Vec<Instant>,
}

/// The demos' traffic: from the lab's client, new TCP connections to 198.18.1.1:80 one at
/// a time (300 ms timeout each), counted per answering backend in windows of 0.5 s, until
/// the flag is set.
fn demo_traffic(
    l: &lab::Lab,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::sync::mpsc::Receiver<Window>,
    std::thread::JoinHandle<()>,
) {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    };
    let vip = std::net::SocketAddr::new(lab::VIP4.into(), lab::SERVER_PORT);
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<Window>();
    let stop2 = stop.clone();
    let traffic = lab::client::in_netns(&l.client.netns, move || {
        let mut port = 20_000u16;
        while !stop2.load(Ordering::Relaxed) {
            let mut w = Window {
                per_backend: Default::default(),
                failed: 0,
                failures: vec![],
            };
            let end = Instant::now() + Duration::from_millis(500);
            while Instant::now() < end {
                let at = Instant::now();
                match lab::client::tcp_name(vip, port, Duration::from_millis(300)) {
                    Ok(name) => *w.per_backend.entry(name).or_insert(0) += 1,
                    Err(_) => {
                        w.failed += 1;
                        w.failures.push(at);
                    }
                }
                port = if port == 60_000 { 20_000 } else { port + 1 };
                std::thread::sleep(Duration::from_micros(500));
            }
            if tx.send(w).is_err() {
                break;
            }
        }
    });
    (stop, rx, traffic)
}

/// Set by SIGINT or SIGTERM while `demo --keep` waits.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Forwards connections to `127.0.0.1:port` on this machine to the same address inside
/// `netns` (the agent's admin API listens on the balancer namespace's loopback), so a
/// browser on this machine can open the status page. Returns the local address, the
/// first free port from 9180.
fn admin_proxy(netns: &str) -> anyhow::Result<std::net::SocketAddr> {
    let listener = (9180..9200)
        .find_map(|p| std::net::TcpListener::bind(("127.0.0.1", p)).ok())
        .context("no free port in 9180..9200 for the status page")?;
    let local = listener.local_addr()?;
    let netns = netns.to_string();
    std::thread::spawn(move || {
        for client in listener.incoming().map_while(Result::ok) {
            let netns = netns.clone();
            // The upstream connection is made from a thread inside the namespace; a socket
            // keeps its namespace, so the copying threads need not be in it.
            let upstream =
                lab::client::in_netns(&netns, || std::net::TcpStream::connect(("127.0.0.1", 9180)))
                    .join();
            let Ok(Ok(upstream)) = upstream else {
                continue;
            };
            let pump = |mut from: std::net::TcpStream, mut to: std::net::TcpStream| {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            };
            if let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) {
                pump(client, upstream);
                pump(u2, c2);
            }
        }
    });
    Ok(local)
}

fn demo(keep: bool) -> anyhow::Result<()> {
    use std::{
        io::BufRead,
        sync::{Arc, Mutex, atomic::Ordering},
    };
    if !setup::is_root() {
        bail!("the demo builds network namespaces and loads XDP: run it as root");
    }
    step("set-up and build");
    let dir = build(false)?;
    step("lab up: a client, a balancer and 3 backends in network namespaces");
    let mut l = lab::Lab::up(lab_spec(&dir, "demo", 3, 1)?)?;
    print_lab(&l);

    step(
        "gateway run on the balancer's eth0, with a built-in config (l2dsr, 3 backends, HTTP checks every 200 ms)",
    );
    let cfg = dir.join("demo-gateway.toml");
    let state_file = l.scratch_dir().join("overrides.json");
    std::fs::write(
        &cfg,
        DEMO_CONFIG
            .replace("PIN_DIR", &l.pin_dir().display().to_string())
            .replace("STATE_FILE", &state_file.display().to_string()),
    )?;
    let mut agent = lab::ns_command(&l.lb.netns, dir.join("gateway"))
        .args(["run", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Health per backend, from the agent's transition log lines.
    let health: Arc<Mutex<std::collections::BTreeMap<String, String>>> = Arc::default();
    for stream in [
        Box::new(agent.stderr.take().context("agent stderr")?) as Box<dyn std::io::Read + Send>,
        Box::new(agent.stdout.take().context("agent stdout")?),
    ] {
        let health = health.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stream)
                .lines()
                .map_while(Result::ok)
            {
                println!("    gateway| {line}");
                for (word, state) in [(" UP after", "up"), (" DOWN after", "DOWN")] {
                    if let Some(i) = line.find(word) {
                        let addr = line[..i].rsplit(' ').next().unwrap_or("").to_string();
                        health.lock().unwrap().insert(addr, state.to_string());
                    }
                }
            }
        });
    }
    lab::wait_for("all three backends up", Duration::from_secs(20), || {
        health
            .lock()
            .unwrap()
            .values()
            .filter(|s| *s == "up")
            .count()
            == 3
    })?;

    let page = admin_proxy(&l.lb.netns)?;
    println!(
        "  status page: http://{page}/ui (open it in a browser on this machine while the demo runs)"
    );

    step("traffic: a steady stream of new TCP connections from the client to 198.18.1.1:80");
    let (stop, rx, traffic) = demo_traffic(&l);
    let names = ["b1", "b2", "b3"];
    let addrs = ["198.18.0.11:80", "198.18.0.12:80", "198.18.0.13:80"];
    let began = Instant::now();
    let show = |n: usize, what: &str| -> anyhow::Result<Vec<Instant>> {
        let mut failures = Vec::new();
        println!("  {what}");
        println!(
            "  {:>6}  {:>22}  {:>22}  {:>22}  {:>7}",
            "t", "b1 198.18.0.11", "b2 198.18.0.12", "b3 198.18.0.13", "failed"
        );
        for _ in 0..n {
            let w = rx
                .recv_timeout(Duration::from_secs(5))
                .context("traffic stalled")?;
            let total: usize = w.per_backend.values().sum::<usize>() + w.failed;
            let h = health.lock().unwrap().clone();
            let cells: Vec<String> = names
                .iter()
                .zip(addrs)
                .map(|(n, a)| {
                    let c = *w.per_backend.get(*n).unwrap_or(&0);
                    let pct = 100.0 * c as f64 / total.max(1) as f64;
                    format!(
                        "{c:>5} {pct:>5.1}% {:>6}",
                        h.get(a).map(String::as_str).unwrap_or("?")
                    )
                })
                .collect();
            let t = began.elapsed().as_secs_f64();
            println!(
                "  {t:>5.1}s  {:>22}  {:>22}  {:>22}  {:>7}",
                cells[0], cells[1], cells[2], w.failed
            );
            failures.extend(w.failures);
        }
        Ok(failures)
    };
    show(
        4,
        "new connections per backend, every 0.5 s (count, share, health):",
    )?;

    step("kill backend b2's server (as a crash would)");
    let killed = Instant::now();
    l.stop_server(1)?;
    let failures = show(4, "b2 fails its checks; gateway takes it out of the table:")?;
    let after: Vec<_> = failures.iter().filter(|t| **t >= killed).collect();
    match after.iter().max() {
        Some(last) => println!(
            "  => failover: new connections failed for {} ms after the kill ({} failures), then went to b1 and b3 only",
            last.duration_since(killed).as_millis(),
            after.len()
        ),
        None => println!("  => failover: no new connection failed"),
    }
    println!(
        "     (bound: fall 2 x interval 200 ms + timeout 200 ms = 600 ms of probing, then the table flips in a few ms)"
    );

    step("bring b2 back");
    l.start_server_again(1)?;
    show(4, "b2 passes 2 checks in a row and takes its share again:")?;

    if keep {
        step("--keep: the lab, the agent and the traffic stay up; Ctrl-C ends the demo");
        println!("  status page: http://{page}/ui");
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            libc::signal(
                libc::SIGINT,
                on_interrupt as *const () as libc::sighandler_t,
            );
            libc::signal(
                libc::SIGTERM,
                on_interrupt as *const () as libc::sighandler_t,
            );
        }
        while !INTERRUPTED.load(Ordering::SeqCst) {
            // The traffic's half-second reports are not printed any more; drop them.
            while rx.try_recv().is_ok() {}
            std::thread::sleep(Duration::from_millis(200));
        }
        println!();
    }

    stop.store(true, Ordering::Relaxed);
    let _ = traffic.join();
    step("stop the agent (SIGTERM): it prints its counters and detaches");
    // SAFETY: signalling our own child by PID.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let st = agent.wait()?;
    std::thread::sleep(Duration::from_millis(100));
    if !st.success() {
        bail!("gateway exited with {st}");
    }
    step("lab down");
    drop(l);
    println!("demo done");
    Ok(())
}

/// Benchmarks: (name, cargo bench target, what it measures).
const BENCHES: &[(&str, &str, &str)] = &[
    (
        "xdp",
        "xdp",
        "Data plane: ns/packet through BPF_PROG_TEST_RUN, against a floor program",
    ),
    (
        "maglev",
        "maglev",
        "Maglev: table build time and slots moved",
    ),
    (
        "sync",
        "sync",
        "Agent: from a probe verdict to the maps updated",
    ),
    (
        "e2e",
        "e2e",
        "End to end in the lab: connections and requests per second",
    ),
    ("failover", "failover", "Failover time over 20 runs"),
    (
        "health",
        "health",
        "Health checking at scale: 10,000 backends probed every second",
    ),
    (
        "ecmp",
        "ecmp",
        "Scale-out: a balancer dies behind ECMP, over 20 runs",
    ),
    (
        "protection",
        "protection",
        "Protection: the source-limit check per packet, and the flood guard under a SYN flood",
    ),
];

/// Benchmarks that run the `gateway` binary in a lab: cargo does not build another
/// package's binaries for a bench, so xtask builds the release agent first.
const AGENT_BENCHES: &[&str] = &["e2e", "failover", "health", "ecmp", "protection"];

fn bench(which: Option<&str>) -> anyhow::Result<()> {
    let env = setup::ensure(false)?;
    let selected: Vec<_> = BENCHES
        .iter()
        .filter(|(n, ..)| which.is_none_or(|w| w == *n))
        .collect();
    if selected.is_empty() {
        bail!(
            "no benchmark named {:?}; known: {:?}",
            which.unwrap_or(""),
            BENCHES.iter().map(|b| b.0).collect::<Vec<_>>()
        );
    }
    let root = workspace_root();
    let path = root.join("docs/BENCHMARKS.md");
    // Sections of benchmarks not run this time are kept from the last run.
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let mut sections: Vec<(String, String)> = BENCHES
        .iter()
        .filter_map(|(_, _, title)| {
            section_of(&old, title).map(|body| (title.to_string(), body.to_string()))
        })
        .collect();
    // Not necessarily cargo's target directory (CARGO_TARGET_DIR may point elsewhere), so
    // it may not exist yet.
    let out_dir = root.join("target");
    std::fs::create_dir_all(&out_dir)?;
    let started = std::time::Instant::now();
    let production_pins = entries(DEFAULT_PIN_ROOT);
    if selected.iter().any(|(n, ..)| AGENT_BENCHES.contains(n)) {
        step("cargo build --release -p gateway-userspace --bin gateway");
        status(cargo(&env).args([
            "build",
            "--release",
            "-p",
            "gateway-userspace",
            "--bin",
            "gateway",
        ]))?;
    }
    for (name, target, title) in selected {
        step(&format!("bench {name}"));
        let out = out_dir.join(format!("bench-{name}.md"));
        let t0 = std::time::Instant::now();
        status(
            cargo(&env)
                .args(["bench", "-p", "gateway-tests", "--bench", target])
                .env("GATEWAY_BENCH_OUT", &out),
        )?;
        let body = std::fs::read_to_string(&out)?;
        let body = format!(
            "Command: `cargo xtask bench {name}` (took {:.0} s, build included), on {}\n\n{body}",
            t0.elapsed().as_secs_f64(),
            machine_info()
        );
        sections.retain(|(t, _)| t != title);
        sections.push((title.to_string(), body));
    }
    println!("benchmarks took {:.0} s", started.elapsed().as_secs_f64());
    let new = pinned_since(&production_pins);
    if !new.is_empty() {
        bail!(
            "benchmarks pinned state under {DEFAULT_PIN_ROOT} (not their lab's directory): {new:?}"
        );
    }
    let mut doc = String::from(
        "# Benchmarks\n\nWritten by `cargo xtask bench` (all) or `cargo xtask bench NAME` (that \
         section only); each section names the machine it ran on. Each figure is a \
         median over repeated rounds, with the spread; timings are compared with a baseline \
         measured in the same run where one exists (these machines are shared and noisy).\n",
    );
    for (_, _, title) in BENCHES {
        if let Some((_, body)) = sections.iter().find(|(t, _)| t == title) {
            // Trimmed, so that rewriting the file does not pile up blank lines.
            doc += &format!("\n## {title}\n\n{}\n", body.trim());
        }
    }
    std::fs::create_dir_all(root.join("docs"))?;
    std::fs::write(&path, doc)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// The body of section `## title` in a BENCHMARKS.md, up to the next section.
fn section_of<'a>(doc: &'a str, title: &str) -> Option<&'a str> {
    let head = format!("\n## {title}\n");
    let start = doc.find(&head)? + head.len();
    let rest = &doc[start..];
    Some(rest.find("\n## ").map_or(rest, |end| &rest[..end + 1]))
}

fn machine_info() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cpu}, {cores} cores, kernel {kernel}")
}
