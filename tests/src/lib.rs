//! The namespace lab: a client, a balancer and N backends on one bridge, each in its own
//! network namespace, for tests and for `cargo xtask lab`.
//!
//! ```text
//!   ns gw-<lab>-client         ns gw-<lab>-lb              ns gw-<lab>-b1 .. bN
//!   eth0 198.18.0.1            eth0 198.18.0.2             eth0 198.18.0.11 ..
//!        fd00::1                    fd00::2                     fd00::11 ..
//!   route VIPs via lb          (gateway attaches here)     lo: VIP 198.18.1.1, fd00:1::1
//!        |                          |                      lab-server on :80 (tcp+udp)
//!        |                          |                      xdp_decap on eth0 (ipip mode)
//!   ----c--------- br0 (ns gw-<lab>-sw) ----lb-----------------b1 .. bN----
//!                                 xdp_pass on "lb" (veth XDP_TX needs a program on the peer)
//! ```
//!
//! With two balancers (`LabSpec::balancers = 2`, the scale-out lab) the client sits behind a
//! router that runs BIRD and spreads flows to the VIPs over both balancers with ECMP (L4
//! hashing), from the routes the balancers' own BIRDs announce over BGP; backends answer the
//! client through the router:
//!
//! ```text
//!   ns gw-<lab>-client  eth0 198.18.2.1 / fd00:2::1, default via the router
//!        |
//!   ns gw-<lab>-rt      eth1 198.18.2.254 / fd00:2::fe; eth0 198.18.0.1 / fd00::1 on br0
//!                       BIRD (AS 65000): sessions to both balancers, merge paths, L4 ECMP
//!        |
//!   ----rt------ br0 ----lb------lb2--------b1 .. bN----
//!                       198.18.0.2  198.18.0.3  (each: gateway and its BIRD, AS 65010)
//!                                               backends route 198.18.2.0/24 via the router
//! ```
//!
//! [`Lab`] is an RAII guard: dropping it (also while a test panics) kills every process in
//! the lab's namespaces by PID and deletes the namespaces, which removes their links.
use std::{
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicBool, AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub mod client;
pub mod packet;

/// Prefix of every namespace the lab creates.
pub const NS_PREFIX: &str = "gw-";
/// IPv4 VIP the backends hold on loopback.
pub const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// IPv6 VIP the backends hold on loopback.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);
/// Port the lab servers listen on (TCP and UDP).
pub const SERVER_PORT: u16 = 80;

/// What to build.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// Short name, part of every namespace name; `[a-z0-9]`, at most 16 characters.
    pub name: String,
    pub backends: usize,
    /// The map-less XDP_PASS object (`gateway-ebpf`'s `xdp-pass`) for the balancer's peer.
    pub pass_object: PathBuf,
    /// The map-less IPIP/IP6IP6 decapsulation object (`xdp-decap`) for the backends.
    pub decap_object: PathBuf,
    /// The `lab-server` binary to start in every backend.
    pub server_bin: PathBuf,
    /// 1, or 2 for the scale-out lab (a router running BIRD in front of two balancers).
    pub balancers: usize,
}

/// The router's AS in the scale-out lab, and the balancers'.
pub const ROUTER_AS: u32 = 65000;
pub const BALANCER_AS: u32 = 65010;
/// The scale-out lab's client network, behind the router.
pub const CLIENT_NET4: &str = "198.18.2.0/24";
pub const CLIENT_NET6: &str = "fd00:2::/64";

/// One host of the lab.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub netns: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

pub struct Lab {
    pub name: String,
    pub client: Node,
    /// The (first) balancer.
    pub lb: Node,
    /// Every balancer: `lb`, and in the scale-out lab `lb2`.
    pub lbs: Vec<Node>,
    /// The scale-out lab's router (its address on the balancers' segment).
    pub router: Option<Node>,
    pub backends: Vec<Node>,
    switch: String,
    servers: Vec<Option<Child>>,
    /// The router's BIRD.
    router_bird: Option<Child>,
    spec: LabSpec,
    /// When false, dropping the guard leaves the lab up (`cargo xtask lab up`).
    pub teardown_on_drop: bool,
    /// Whether backends are full-NAT ones ([`Lab::make_fullnat`]): no VIPs to serve UDP on.
    fullnat: AtomicBool,
}

/// Balancer `i`'s SNAT addresses in a full-NAT lab ([`Lab::make_fullnat`]).
pub fn snat_addrs(i: usize) -> (Ipv4Addr, Ipv6Addr) {
    let host = 100 + i as u16;
    (
        Ipv4Addr::new(198, 18, 0, host as u8),
        Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100 + i as u16),
    )
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A lab name unique to this process and call, for tests that run in parallel.
pub fn unique_name(prefix: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}{n}", std::process::id() % 100_000)
}

/// Whether we may create namespaces; privileged tests skip with a printed reason otherwise.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a command, failing with its stderr if it exits non-zero.
pub fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

fn ip(args: &[&str]) -> anyhow::Result<Output> {
    run(Command::new("ip").args(args))
}

/// Runs `args` inside `netns`.
pub fn ns_exec(netns: &str, args: &[&str]) -> anyhow::Result<Output> {
    run(ns_command(netns, args[0]).args(&args[1..]))
}

/// A `Command` that runs `program` inside `netns`. nsenter switches only the network
/// namespace and execs, so the child's PID is the program's own and it sees the host's
/// bpffs; `ip netns exec` would remount /sys and hide /sys/fs/bpf.
pub fn ns_command(netns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{netns}")).arg(program);
    c
}

fn sysctl(netns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    ns_exec(netns, &["sysctl", "-qw", &format!("{key}={value}")]).map(|_| ())
}

/// The namespaces that currently exist.
pub fn list_netns() -> anyhow::Result<Vec<String>> {
    let out = ip(&["netns", "list"])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Kills every process in `netns` by PID, then deletes it.
pub fn delete_netns(netns: &str) -> anyhow::Result<()> {
    if let Ok(out) = ip(&["netns", "pids", netns]) {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: plain kill(2) on a PID read from the kernel for this namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    ip(&["netns", "del", netns]).map(|_| ())
}

/// Deletes every namespace of lab `name`; returns how many there were.
/// Where agents run in a lab pin their maps and link (bpffs is shared by every network
/// namespace, so each lab needs its own directory).
pub const PIN_ROOT: &str = "/sys/fs/bpf/gateway-test";

/// The pin directory of lab `name`.
pub fn pin_dir(name: &str) -> PathBuf {
    Path::new(PIN_ROOT).join(name)
}

/// The scratch directory of lab `name` (removed by [`teardown_by_name`]).
pub fn scratch_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("gateway-lab-{name}"))
}

/// Removes what agents of lab `name` left pinned, and the lab's scratch files.
fn remove_leftovers(name: &str) -> anyhow::Result<()> {
    for dir in [pin_dir(name), scratch_dir(name)] {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    Ok(())
}

pub fn teardown_by_name(name: &str) -> anyhow::Result<usize> {
    remove_leftovers(name)?;
    let prefix = format!("{NS_PREFIX}{name}-");
    let mut n = 0;
    // Switch last: deleting it first would pull every node's link out from under them.
    let mut all: Vec<String> = list_netns()?
        .into_iter()
        .filter(|ns| ns.starts_with(&prefix))
        .collect();
    all.sort_by_key(|ns| ns.ends_with("-sw"));
    for ns in all {
        delete_netns(&ns)?;
        n += 1;
    }
    Ok(n)
}

impl Lab {
    pub fn up(spec: LabSpec) -> anyhow::Result<Lab> {
        if !is_root() {
            bail!("the lab needs root (network namespaces, veth, XDP)");
        }
        if spec.name.is_empty()
            || spec.name.len() > 16
            || !spec
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            bail!(
                "lab name `{}` must be 1-16 characters of [a-z0-9]",
                spec.name
            );
        }
        if spec.backends == 0 || spec.backends > 80 {
            bail!("a lab has 1..=80 backends, not {}", spec.backends);
        }
        if !(1..=2).contains(&spec.balancers) {
            bail!("a lab has 1 or 2 balancers, not {}", spec.balancers);
        }
        // A lab of the same name left behind by a killed run would make every step fail.
        teardown_by_name(&spec.name)?;

        let node = |name: &str, host: u8| Node {
            name: name.to_string(),
            netns: format!("{NS_PREFIX}{}-{name}", spec.name),
            ipv4: Ipv4Addr::new(198, 18, 0, host),
            ipv6: Ipv6Addr::new(
                0xfd00,
                0,
                0,
                0,
                0,
                0,
                0,
                u16::from_str_radix(&host.to_string(), 16).unwrap_or(0),
            ),
        };
        let scale_out = spec.balancers == 2;
        let lbs: Vec<Node> = if scale_out {
            vec![node("lb", 2), node("lb2", 3)]
        } else {
            vec![node("lb", 2)]
        };
        let client = if scale_out {
            Node {
                ipv4: Ipv4Addr::new(198, 18, 2, 1),
                ipv6: Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 1),
                ..node("client", 1)
            }
        } else {
            node("client", 1)
        };
        let mut lab = Lab {
            name: spec.name.clone(),
            client,
            lb: lbs[0].clone(),
            lbs,
            router: scale_out.then(|| node("rt", 1)),
            backends: (1..=spec.backends)
                .map(|i| node(&format!("b{i}"), 10 + i as u8))
                .collect(),
            switch: format!("{NS_PREFIX}{}-sw", spec.name),
            servers: Vec::new(),
            router_bird: None,
            spec,
            teardown_on_drop: true,
            fullnat: AtomicBool::new(false),
        };
        // From here on, a failure drops `lab`, which removes whatever was built.
        lab.build()
            .with_context(|| format!("building lab {}", lab.name))?;
        Ok(lab)
    }

    fn build(&mut self) -> anyhow::Result<()> {
        let sw = self.switch.clone();
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &sw,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;

        // On the bridge: the client (or, in the scale-out lab, the router in its place),
        // the balancers and the backends.
        let front = self.router.clone().unwrap_or_else(|| self.client.clone());
        let nodes: Vec<Node> = std::iter::once(front)
            .chain(self.lbs.iter().cloned())
            .chain(self.backends.iter().cloned())
            .collect();
        for n in &nodes {
            ip(&["netns", "add", &n.netns])?;
            let port = match n.name.as_str() {
                "client" => "c",
                "rt" => "rt",
                other => other,
            };
            ip(&[
                "-n", &sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns",
                &n.netns,
            ])?;
            ip(&["-n", &sw, "link", "set", port, "master", "br0", "up"])?;
            ip(&["-n", &n.netns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &n.netns,
                "addr",
                "add",
                &format!("{}/24", n.ipv4),
                "dev",
                "eth0",
            ])?;
            ip(&[
                "-n",
                &n.netns,
                "addr",
                "add",
                &format!("{}/64", n.ipv6),
                "dev",
                "eth0",
                "nodad",
            ])?;
            ip(&["-n", &n.netns, "link", "set", "eth0", "up"])?;
            // Native XDP drops veth's checksum-offload state: senders must fill checksums.
            ns_exec(&n.netns, &["ethtool", "-K", "eth0", "tx", "off"])?;
        }
        // veth delivers XDP_TX frames only into a peer that runs an XDP program itself.
        let pass = self.spec.pass_object.to_str().context("pass object path")?;
        for lb in &self.lbs {
            ip(&[
                "-n", &sw, "link", "set", "dev", &lb.name, "xdpdrv", "obj", pass, "sec", "xdp",
            ])?;
        }
        if self.router.is_some() {
            self.build_router()?;
        } else {
            self.route_client_to_vips()?;
        }
        self.build_backends()
    }

    /// The scale-out lab's front: the client on its own link behind the router, the router
    /// forwarding with L4 multipath hashing, and its BIRD.
    fn build_router(&mut self) -> anyhow::Result<()> {
        let rt = self.router.clone().context("no router")?;
        let c = self.client.clone();
        ip(&["netns", "add", &c.netns])?;
        ip(&[
            "-n", &rt.netns, "link", "add", "eth1", "type", "veth", "peer", "name", "eth0",
            "netns", &c.netns,
        ])?;
        let (rt4, rt6) = ("198.18.2.254", "fd00:2::fe");
        for (ns, dev, a4, a6) in [
            (&rt.netns, "eth1", rt4.to_string(), rt6.to_string()),
            (&c.netns, "eth0", c.ipv4.to_string(), c.ipv6.to_string()),
        ] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "addr", "add", &format!("{a4}/24"), "dev", dev])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{a6}/64"),
                "dev",
                dev,
                "nodad",
            ])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ns_exec(ns, &["ethtool", "-K", dev, "tx", "off"])?;
        }
        sysctl(&c.netns, "net.ipv4.ip_local_port_range", "10000 19999")?;
        ip(&["-n", &c.netns, "route", "add", "default", "via", rt4])?;
        ip(&["-n", &c.netns, "-6", "route", "add", "default", "via", rt6])?;
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            // ECMP by the 5-tuple, not by addresses only: one client's flows spread.
            ("net.ipv4.fib_multipath_hash_policy", "1"),
            ("net.ipv6.fib_multipath_hash_policy", "1"),
        ] {
            sysctl(&rt.netns, key, value)?;
        }
        let dir = scratch_dir(&self.name);
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("router-bird.conf");
        std::fs::write(&conf, self.router_bird_conf())?;
        self.router_bird = Some(start_bird(&rt.netns, &conf, &self.router_socket())?);
        Ok(())
    }

    /// The router's BIRD: a session per balancer and family, routes into the kernel with
    /// equal paths merged (ECMP), nothing announced back.
    fn router_bird_conf(&self) -> String {
        let mut s = format!(
            "router id 198.18.0.1;\nlog stderr all;\nprotocol device {{ }}\n\
             protocol kernel {{ ipv4 {{ import none; export all; }}; merge paths on; }}\n\
             protocol kernel {{ ipv6 {{ import none; export all; }}; merge paths on; }}\n\
             template bgp balancer {{ local as {ROUTER_AS}; hold time 3; keepalive time 1; \
             connect retry time 1; error wait time 1, 5; }}\n"
        );
        for (i, lb) in self.lbs.iter().enumerate() {
            for (family, addr) in [
                ("ipv4", IpAddr::from(lb.ipv4)),
                ("ipv6", IpAddr::from(lb.ipv6)),
            ] {
                s += &format!(
                    "protocol bgp lb{}{family} from balancer {{ neighbor {addr} as {BALANCER_AS}; \
                     {family} {{ import all; export none; }}; }}\n",
                    i + 1
                );
            }
        }
        s
    }

    /// The router BIRD's control socket (scale-out lab).
    pub fn router_socket(&self) -> PathBuf {
        scratch_dir(&self.name).join("router.ctl")
    }

    /// The next hops the router's kernel has for `prefix` (a VIP): the balancers it spreads
    /// the VIP's flows over.
    pub fn router_next_hops(&self, prefix: &str) -> anyhow::Result<Vec<IpAddr>> {
        let rt = self.router.as_ref().context("not a scale-out lab")?;
        let family = if prefix.contains(':') { "-6" } else { "-4" };
        let out = ip(&["-n", &rt.netns, family, "route", "show", prefix])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let words: Vec<&str> = text.split_whitespace().collect();
        Ok(words
            .windows(2)
            .filter(|w| w[0] == "via")
            .filter_map(|w| w[1].parse().ok())
            .collect())
    }

    /// The single-balancer lab's client: on the bridge, the VIPs routed via the balancer.
    fn route_client_to_vips(&self) -> anyhow::Result<()> {
        let c = &self.client.netns;
        // Tests pick client ports from 20000 up so that placement is reproducible; keep the
        // kernel's own ephemeral ports out of that range.
        sysctl(c, "net.ipv4.ip_local_port_range", "10000 19999")?;
        ip(&[
            "-n",
            c,
            "route",
            "add",
            &format!("{VIP4}/32"),
            "via",
            &self.lb.ipv4.to_string(),
        ])?;
        ip(&[
            "-n",
            c,
            "-6",
            "route",
            "add",
            &format!("{VIP6}/128"),
            "via",
            &self.lb.ipv6.to_string(),
        ])?;
        Ok(())
    }

    fn build_backends(&mut self) -> anyhow::Result<()> {
        for b in self.backends.clone() {
            if let Some(rt) = &self.router {
                // Answers to the client go back through the router.
                ip(&[
                    "-n",
                    &b.netns,
                    "route",
                    "add",
                    CLIENT_NET4,
                    "via",
                    &rt.ipv4.to_string(),
                ])?;
                ip(&[
                    "-n",
                    &b.netns,
                    "-6",
                    "route",
                    "add",
                    CLIENT_NET6,
                    "via",
                    &rt.ipv6.to_string(),
                ])?;
            }
            // Direct server return: the VIP lives on lo, and the backend must neither answer
            // ARP for it nor use it as the source of its own ARP requests.
            for dev in ["all", "eth0"] {
                sysctl(&b.netns, &format!("net.ipv4.conf.{dev}.arp_ignore"), "1")?;
                sysctl(&b.netns, &format!("net.ipv4.conf.{dev}.arp_announce"), "2")?;
            }
            // IPIP / IP6IP6 decapsulation: xdp_decap strips the outer header on eth0, as an
            // ipip/ip6tnl device would (CI kernels may lack those drivers).
            let decap = self
                .spec
                .decap_object
                .to_str()
                .context("decap object path")?;
            ip(&[
                "-n",
                &b.netns,
                "link",
                "set",
                "dev",
                "eth0",
                "xdpgeneric",
                "obj",
                decap,
                "sec",
                "xdp",
            ])?;
            ip(&[
                "-n",
                &b.netns,
                "addr",
                "add",
                &format!("{VIP4}/32"),
                "dev",
                "lo",
            ])?;
            ip(&[
                "-n",
                &b.netns,
                "addr",
                "add",
                &format!("{VIP6}/128"),
                "dev",
                "lo",
                // Without it the address is tentative for a moment, and the server's bind
                // below fails with EADDRNOTAVAIL on a busy machine.
                "nodad",
            ])?;
            let server = self.start_server(&b)?;
            self.servers.push(Some(server));
        }
        Ok(())
    }

    fn start_server(&self, b: &Node) -> anyhow::Result<Child> {
        let mut cmd = ns_command(&b.netns, &self.spec.server_bin);
        cmd.args(["--name", &b.name, "--port", &SERVER_PORT.to_string()]);
        if !self.fullnat.load(Ordering::Relaxed) {
            cmd.args([
                "--udp-addr",
                &VIP4.to_string(),
                "--udp-addr",
                &VIP6.to_string(),
            ]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", self.spec.server_bin.display()))?;
        let mut line = String::new();
        let stdout = child.stdout.take().context("server stdout")?;
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            bail!("lab-server in {} did not start", b.netns);
        }
        Ok(child)
    }

    /// Stops backend `i`'s server (0-based), as a crash would.
    pub fn stop_server(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut c) = self.servers.get_mut(i).and_then(Option::take) {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// Starts backend `i`'s server again if it is stopped.
    pub fn start_server_again(&mut self, i: usize) -> anyhow::Result<()> {
        if self.servers.get(i).is_some_and(Option::is_none) {
            let b = self.backends[i].clone();
            self.servers[i] = Some(self.start_server(&b)?);
        }
        Ok(())
    }

    pub fn server_pids(&self) -> Vec<u32> {
        self.servers.iter().flatten().map(Child::id).collect()
    }

    /// Every namespace of this lab.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = vec![self.client.netns.clone()];
        v.extend(self.router.iter().map(|r| r.netns.clone()));
        v.extend(self.lbs.iter().map(|l| l.netns.clone()));
        v.extend(self.backends.iter().map(|b| b.netns.clone()));
        v.push(self.switch.clone());
        v
    }

    pub fn vip(&self, v6: bool) -> IpAddr {
        if v6 { VIP6.into() } else { VIP4.into() }
    }

    /// Makes the lab one of full-NAT backends: each balancer gets its SNAT addresses on
    /// eth0 ([`snat_addrs`]), and the backends lose what the other modes need - the VIPs,
    /// the decapsulating program - and any route to the client, so that only answers sent
    /// back through the balancer can reach it. Idempotent.
    pub fn make_fullnat(&self) -> anyhow::Result<()> {
        self.fullnat.store(true, Ordering::Relaxed);
        for (i, lb) in self.lbs.iter().enumerate() {
            let (a4, a6) = snat_addrs(i);
            let have = ns_exec(&lb.netns, &["ip", "-o", "addr", "show", "dev", "eth0"])?;
            if String::from_utf8_lossy(&have.stdout).contains(&format!(" {a4}/32")) {
                return Ok(());
            }
            ip(&[
                "-n",
                &lb.netns,
                "addr",
                "add",
                &format!("{a4}/32"),
                "dev",
                "eth0",
            ])?;
            // Deprecated at once: the host never picks it as a source (its own connections,
            // the health checks, would otherwise send from it and lose their answers).
            ip(&[
                "-n",
                &lb.netns,
                "addr",
                "add",
                &format!("{a6}/128"),
                "dev",
                "eth0",
                "nodad",
                "preferred_lft",
                "0",
            ])?;
        }
        let client: Vec<String> = if self.router.is_some() {
            vec![CLIENT_NET4.into(), CLIENT_NET6.into()]
        } else {
            vec![
                format!("{}/32", self.client.ipv4),
                format!("{}/128", self.client.ipv6),
            ]
        };
        for b in &self.backends {
            for vip in [format!("{VIP4}/32"), format!("{VIP6}/128")] {
                ip(&["-n", &b.netns, "addr", "del", &vip, "dev", "lo"])?;
            }
            ip(&[
                "-n",
                &b.netns,
                "link",
                "set",
                "dev",
                "eth0",
                "xdpgeneric",
                "off",
            ])?;
            for net in &client {
                // `replace`: the scale-out lab routes the client network via the router.
                let family = if net.contains(':') { "-6" } else { "-4" };
                ip(&[
                    "-n",
                    &b.netns,
                    family,
                    "route",
                    "replace",
                    "unreachable",
                    net,
                ])?;
            }
        }
        Ok(())
    }

    /// Kills the lab's processes and deletes its namespaces.
    pub fn teardown(&mut self) -> anyhow::Result<()> {
        for c in self
            .servers
            .iter_mut()
            .filter_map(Option::take)
            .chain(self.router_bird.take())
        {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
        let mut first_err = None;
        for ns in self.namespaces() {
            if list_netns()?.contains(&ns)
                && let Err(e) = delete_netns(&ns)
            {
                first_err.get_or_insert(e);
            }
        }
        if let Err(e) = remove_leftovers(&self.name) {
            first_err.get_or_insert(e);
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Where an agent in this lab pins its state (`dataplane.pin_dir`).
    pub fn pin_dir(&self) -> PathBuf {
        pin_dir(&self.name)
    }

    /// A scratch directory for this lab's files (configs, tokens, state files); created on
    /// first use, removed with the lab.
    pub fn scratch_dir(&self) -> PathBuf {
        let dir = scratch_dir(&self.name);
        std::fs::create_dir_all(&dir).expect("creating the lab's scratch directory");
        dir
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.teardown_on_drop
            && let Err(e) = self.teardown()
        {
            eprintln!("lab {}: teardown failed: {e:#}", self.name);
        }
    }
}

/// Starts BIRD in `netns` in the foreground (its PID is the process's own) with `conf` and
/// control socket `socket`; waits until the socket answers.
pub fn start_bird(netns: &str, conf: &Path, socket: &Path) -> anyhow::Result<Child> {
    let _ = std::fs::remove_file(socket);
    let mut child = ns_command(netns, "bird")
        .arg("-f")
        .arg("-c")
        .arg(conf)
        .arg("-s")
        .arg(socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting bird (BIRD 2; `cargo xtask setup` installs bird2)")?;
    let up = wait_for("BIRD's control socket", Duration::from_secs(10), || {
        std::os::unix::net::UnixStream::connect(socket).is_ok()
    });
    if let Err(e) = up {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e.context(format!("BIRD in {netns} with {}", conf.display())));
    }
    Ok(child)
}

/// Waits until `f` returns true, polling every 20 ms, or fails after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// Path of a sibling binary of the current executable's target directory (e.g.
/// `target/debug/lab-server` seen from `target/debug/deps/test-xxxx`).
pub fn target_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "{name} not found near {}; build it with `cargo build --bins`",
        exe.display()
    )
}

/// Moves the calling thread to CPU `cpu % online CPUs` (per-CPU maps and LRU lists are the
/// CPU's the program runs on; BPF_PROG_TEST_RUN runs it on the caller's).
pub fn run_on_cpu(cpu: usize) {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % n, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            rc,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Lets the calling thread run on every CPU again.
pub fn run_on_any_cpu() {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: as in `run_on_cpu`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..n {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
