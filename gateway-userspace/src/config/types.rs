//! The validated configuration: every value in range, every cross-reference holding.
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::RangeInclusive,
    path::PathBuf,
    time::Duration,
};

use serde::Deserialize;

/// The config file's word for each variant, written once; `Display` prints it.
macro_rules! words {
    ($t:ty { $($v:ident => $w:literal),+ $(,)? }) => {
        impl $t {
            /// The word the config file uses for this value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$v => $w),+
                }
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

words!(XdpMode { Auto => "auto", Native => "native", Generic => "generic" });
words!(OnExit { Detach => "detach", Keep => "keep" });
words!(KernelLog { Off => "off", Error => "error", Warn => "warn", Info => "info", Debug => "debug" });
words!(Protocol { Tcp => "tcp", Udp => "udp" });
words!(Mode { L2dsr => "l2dsr", Ipip => "ipip", Fullnat => "fullnat" });
words!(AdminState { Ready => "ready", Drain => "drain", Maint => "maint" });
words!(ProtectMode { Off => "off", Monitor => "monitor", Enforce => "enforce" });

/// A validated configuration. Every value is in range and every cross-reference holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub dataplane: DataplaneConfig,
    pub admin: AdminConfig,
    /// `[bgp]`, if the VIPs are announced to routers.
    pub bgp: Option<BgpConfig>,
    /// `[protection]` (its defaults when the section is absent).
    pub protection: ProtectionConfig,
    /// In file order.
    pub services: Vec<ServiceConfig>,
}

/// How the program is attached to the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic mode with a warning.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode: works on every interface, slower.
    Generic,
}

/// What `gateway run` does with the data plane when it exits on SIGINT or SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OnExit {
    /// Detach the program and remove its pinned maps: traffic to VIPs goes to the host's
    /// stack again and conntrack is gone.
    #[default]
    Detach,
    /// Leave the program attached and its maps pinned, so that the next agent adopts them
    /// (a restart or upgrade drops no connection). `gateway stop --detach` removes them.
    Keep,
}

/// Where the maps and the XDP link are pinned when `pin_dir` is not set.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/gateway";

/// The level of the XDP program's aya-log messages that reach the agent's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelLog {
    Off,
    Error,
    #[default]
    Warn,
    Info,
    Debug,
}

impl KernelLog {
    pub fn level_filter(self) -> log::LevelFilter {
        match self {
            KernelLog::Off => log::LevelFilter::Off,
            KernelLog::Error => log::LevelFilter::Error,
            KernelLog::Warn => log::LevelFilter::Warn,
            KernelLog::Info => log::LevelFilter::Info,
            KernelLog::Debug => log::LevelFilter::Debug,
        }
    }
}

/// `[dataplane]`: the interface, the program and the sizes of its maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// The interface the program attaches to (a valid Linux interface name).
    pub interface: String,
    pub xdp_mode: XdpMode,
    /// Connection-tracking entries, 1024..=67108864.
    pub conntrack_size: u32,
    /// Largest L3 packet towards a backend after encapsulation; 0 disables the check,
    /// otherwise 1280..=65535.
    pub mtu: u32,
    /// How long a table slot whose backend changed keeps sending the TCP flows that began
    /// before the change to their old backend, counted from the last packet of such a flow
    /// (see `gateway_common::Slot`): an established flow idle for longer than this, on a
    /// slot no other such flow kept alive, moves to the slot's new backend. 1m..=7d.
    pub idle_timeout: Duration,
    /// Services the maps hold, 1..=[`gateway_common::MAX_SERVICES`]; at least `services.len()`.
    pub max_services: u32,
    /// Largest Maglev table of any service: a prime, and every `table_size` is at most this.
    pub max_table_size: u32,
    /// Outer source of IPv4 encapsulation; set whenever an ipip service has an IPv4 VIP.
    pub ipip_source_v4: Option<Ipv4Addr>,
    /// Low bits of the IPv4 outer source replaced by the flow hash, 0..=16.
    pub ipip_source_v4_vary_bits: u8,
    /// Outer source of IPv6 encapsulation; set whenever an ipip service has an IPv6 VIP.
    pub ipip_source_v6: Option<Ipv6Addr>,
    /// Packet checks turned off (`gateway_common::CHECK_*` bits, from `skip_checks`): 0,
    /// every check on, by default.
    pub checks_off: u32,
    /// MACs besides the interface's own that VIP frames may be addressed to (VRRP, macvlan),
    /// at most `MAX_LOCAL_MACS - 1`.
    pub extra_macs: Vec<[u8; 6]>,
    /// Full-NAT mapping entries (two per flow), 1024..=67108864; fixed at load time.
    pub nat_size: u32,
    /// SNAT addresses for full-NAT services with IPv4 VIPs (at most
    /// `gateway_common::MAX_SNAT_ADDRS`); set whenever such a service exists.
    pub snat_v4: Vec<Ipv4Addr>,
    pub snat_v6: Vec<Ipv6Addr>,
    /// The SNAT ports, inclusive (default 1024..=65535).
    pub snat_ports: RangeInclusive<u16>,
    pub kernel_log: KernelLog,
    /// A directory on bpffs for the pinned maps and link (default
    /// `/sys/fs/bpf/gateway/<interface>`).
    pub pin_dir: PathBuf,
    pub on_exit: OnExit,
}

impl DataplaneConfig {
    /// The SNAT addresses, IPv4 then IPv6.
    pub fn snat_addrs(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let v4 = self.snat_v4.iter().map(|a| IpAddr::V4(*a));
        v4.chain(self.snat_v6.iter().map(|a| IpAddr::V6(*a)))
    }
}

/// `[admin]`: the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// A file holding the bearer token that write requests (and reads, with
    /// `token_for_reads`) must carry. Required when `listen` is not a loopback address.
    pub token_file: Option<PathBuf>,
    pub token_for_reads: bool,
    /// Where changes made through the API are kept across restarts (default
    /// `/run/gateway/<interface>.overrides.json`).
    pub state_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: super::validate::DEFAULT_ADMIN_LISTEN,
            token_file: None,
            token_for_reads: false,
            state_file: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// How packets reach a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Rewrite the destination MAC; the backend holds the VIP and answers the client directly.
    L2dsr,
    /// Encapsulate in IPv4 (IPv4 VIP) or IPv6 (IPv6 VIP) towards the backend.
    Ipip,
    /// Rewrite both addresses: the backend sees a connection from a SNAT address of this
    /// balancer and answers it; the answer comes back here and is rewritten to the client.
    Fullnat,
}

/// What the operator wants of a backend, apart from its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Takes new flows when healthy.
    #[default]
    Ready,
    /// Keeps its established flows, takes no new ones.
    Drain,
    /// Out of service: takes nothing, its flows are placed again.
    Maint,
}

/// A `[[service]]`: one VIP, port and protocol, balanced over its backends.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// `[a-z0-9_-]{1,32}`, unique.
    pub name: String,
    pub vip: IpAddr,
    /// 1..=65535. `(vip, port, protocol)` is unique.
    pub port: u16,
    pub protocol: Protocol,
    pub mode: Mode,
    /// Maglev table size: a prime, larger than `backends.len()`, at most
    /// `dataplane.max_table_size`.
    pub table_size: u32,
    /// How long a backend that comes up takes to reach its full weight; zero is off.
    pub slowstart: Duration,
    /// Below this fraction of healthy weight, spread over every backend not in maintenance.
    /// Strictly between 0 and 1.
    pub panic_threshold: Option<f64>,
    /// The service's check, as written (backends may override parts of it).
    pub health: HealthConfig,
    /// In file order; addresses are unique and of the VIP's family.
    pub backends: Vec<BackendConfig>,
    /// BGP communities on the VIP's route (with `[bgp] communities`); empty without `[bgp]`.
    pub communities: Vec<Community>,
    /// The MED on the VIP's route; services that share a VIP agree on it.
    pub med: Option<u32>,
    /// `[service.protection]` over `[protection]`'s defaults.
    pub protection: SourceLimits,
}

/// A `[[service.backend]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    pub address: IpAddr,
    /// 1..=10000.
    pub weight: u32,
    /// Used only when no primary backend is healthy.
    pub backup: bool,
    pub state: AdminState,
    /// The effective check: the service's, with this backend's overrides applied.
    pub health: HealthConfig,
}

/// A health check. Durations are 10ms..=1h, `timeout <= interval`. The prober runs this
/// type itself, with the address it probes ([`crate::health::CheckSpec`]).
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub kind: CheckKind,
    /// The port probed, 1..=65535.
    pub port: u16,
    /// Time between probes while the state is settled and up.
    pub interval: Duration,
    /// Limit on one whole probe (connect, request and response); past it the probe fails.
    pub timeout: Duration,
    /// Consecutive successes that bring a backend up, 1..=100.
    pub rise: u32,
    /// Consecutive failures that bring it down, 1..=100.
    pub fall: u32,
    /// Full-NAT services: consecutive SYNs the backend refused with a reset or left
    /// unanswered (seen by the data plane, with no SYN answered in between) that bring it
    /// down, 0..=100; 0 turns passive checking off. Other modes cannot see answers.
    pub passive_fall: u32,
    /// Interval while a change is pending (some but not yet `rise`/`fall` results).
    pub fast_interval: Duration,
    /// Interval while the backend is down.
    pub down_interval: Duration,
    /// Random spread of each interval either way, as a fraction of it: 0.0..=0.5 (the
    /// prober clamps to that range too).
    pub jitter: f64,
    /// Whether a backend counts as up before its first results.
    pub initial_up: bool,
}

/// How a backend is checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// A TCP handshake that is answered: half-open where the agent may open raw sockets,
    /// else a full connect.
    Tcp,
    /// An HTTP/1.1 GET. Shared, not copied, by every backend and probe that uses it: a
    /// service's ten thousand backends hold one.
    Http(std::sync::Arc<HttpCheck>),
    /// No probe: the backend counts as up, and only its admin state matters. Nothing is
    /// probed for it (it has no `CheckSpec`), so the other keys, though validated, are unused.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpCheck {
    /// Starts with `/`, no whitespace or control characters.
    pub path: String,
    /// The Host header; `None` sends the backend's address.
    pub host: Option<String>,
    /// Accepted statuses: non-empty, each range within 100..=599.
    pub expect_status: Vec<RangeInclusive<u16>>,
    /// A string the response body must contain.
    pub body_contains: Option<String>,
}

/// `[bgp]`: the VIPs this balancer can serve are announced to routers by BIRD, which the
/// agent configures (see [`crate::bgp`] and docs/operations.md, "Scale-out").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpConfig {
    /// This balancer's AS, 1..=4294967295 except 23456 (AS_TRANS).
    pub local_as: u32,
    /// BIRD's router id; unique among the routers and balancers.
    pub router_id: Ipv4Addr,
    /// At least one, addresses unique.
    pub neighbors: Vec<BgpNeighbor>,
    /// The next hop announced with IPv4 VIPs; `None`: the session's own address.
    pub next_hop_v4: Option<Ipv4Addr>,
    pub next_hop_v6: Option<Ipv6Addr>,
    /// Communities on every VIP's route (a service adds its own).
    pub communities: Vec<Community>,
    /// How long a VIP must have been servable before it is announced (again): a backend
    /// that flaps does not flap the route.
    pub announce_after: Duration,
    /// How long a VIP must have been unservable before it is withdrawn.
    pub withdraw_after: Duration,
    /// How long the agent may be gone (a restart) before `gateway bgp-guard` withdraws
    /// every VIP on its behalf.
    pub agent_grace: Duration,
    /// How long a detaching exit (and `gateway stop --detach`) waits after withdrawing
    /// every VIP before it detaches, so that routers stop sending flows first.
    pub withdraw_wait: Duration,
    /// Where the generated BIRD configuration is written; `None`: `/run/gateway/bird-<interface>`.
    pub bird_dir: Option<PathBuf>,
    /// BIRD's control socket; `None`: `bird.ctl` in the BIRD directory.
    pub bird_socket: Option<PathBuf>,
    /// Whether `[dataplane] snat_v4` / `snat_v6` are announced too, while the data plane
    /// forwards: full-NAT answers come back to the balancer that made the mapping.
    pub announce_snat: bool,
}

/// A `[[bgp.neighbor]]`: a router the VIPs are announced to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpNeighbor {
    pub address: IpAddr,
    /// Its AS (equal to `local_as`: an iBGP session).
    pub asn: u32,
    /// TCP MD5 password: printable ASCII without `"` or `\`, at most 80 characters.
    pub password: Option<String>,
    /// Whole seconds, 3..=65535. A dead balancer's routes go at most this long after its
    /// last keepalive.
    pub hold_time: Duration,
    /// Whole seconds, at least 1 and less than `hold_time` (default a third of it).
    pub keepalive: Duration,
}

/// A BGP community: standard (`"65000:100"`, RFC 1997) or large (`"65000:1:2"`, RFC 8092).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Community {
    Standard(u16, u16),
    Large(u32, u32, u32),
}

impl fmt::Display for Community {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Community::Standard(a, b) => write!(f, "{a}:{b}"),
            Community::Large(a, b, c) => write!(f, "{a}:{b}:{c}"),
        }
    }
}

impl std::str::FromStr for Community {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let bad = || {
            format!(
                "{s:?} is not a community (\"A:B\", each 0..=65535, or a large one \
                 \"A:B:C\", each 0..=4294967295)"
            )
        };
        let digits =
            |p: &str| !p.is_empty() && p.len() <= 10 && p.bytes().all(|b| b.is_ascii_digit());
        if !parts.iter().all(|p| digits(p)) {
            return Err(bad());
        }
        match parts.as_slice() {
            [a, b] => Ok(Community::Standard(
                a.parse().map_err(|_| bad())?,
                b.parse().map_err(|_| bad())?,
            )),
            [a, b, c] => Ok(Community::Large(
                a.parse().map_err(|_| bad())?,
                b.parse().map_err(|_| bad())?,
                c.parse().map_err(|_| bad())?,
            )),
            _ => Err(bad()),
        }
    }
}

/// `[protection]`: the conntrack flood guard, the allowlist, and the source limits
/// services inherit.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtectionConfig {
    /// New flows per second one CPU may record in conntrack before the flood guard places
    /// new flows without an entry; 0 turns the guard off.
    pub flood_new_flows_per_cpu: u32,
    /// New full-NAT flows per second one CPU may map before new ones are dropped, so that a
    /// flood cannot evict established flows' mappings; 0 (the default) turns it off.
    pub fullnat_new_flows_per_cpu: u32,
    /// Capacity of the source-bucket map (a load-time size, like `conntrack_size`).
    pub sources_size: u32,
    /// Source prefixes no limit applies to; none contains another.
    pub allowlist: Vec<Prefix>,
    /// What a service without its own `[service.protection]` key gets.
    pub defaults: SourceLimits,
}

/// Default of `flood_new_flows_per_cpu`: see docs/config.md for how it was sized.
pub const DEFAULT_FLOOD_NEW_FLOWS_PER_CPU: u32 = 10_000;

impl Default for ProtectionConfig {
    fn default() -> Self {
        Self {
            flood_new_flows_per_cpu: DEFAULT_FLOOD_NEW_FLOWS_PER_CPU,
            fullnat_new_flows_per_cpu: 0,
            sources_size: gateway_common::DEFAULT_SOURCES_SIZE,
            allowlist: Vec::new(),
            defaults: SourceLimits::default(),
        }
    }
}

/// Per-source limits of one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceLimits {
    pub mode: ProtectMode,
    /// TCP SYNs per second and burst; `None`: no limit.
    pub new_flows: Option<Rate>,
    /// Packets per second and burst; `None`: no limit.
    pub packets: Option<Rate>,
    /// The prefix a bucket covers, per family.
    pub prefix_v4: u8,
    pub prefix_v6: u8,
}

impl Default for SourceLimits {
    fn default() -> Self {
        Self {
            mode: ProtectMode::Off,
            new_flows: None,
            packets: None,
            prefix_v4: 32,
            prefix_v6: 64,
        }
    }
}

impl fmt::Display for SourceLimits {
    /// `off`, or the mode and its limits as `gateway check` prints them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mode == ProtectMode::Off {
            return f.write_str("off");
        }
        let rate = |r: Option<Rate>| {
            r.map_or("no limit".to_string(), |r| {
                format!("{}/s burst {}", r.per_second, r.burst)
            })
        };
        write!(
            f,
            "{}: new flows {}, packets {}, per /{} and /{} sources",
            self.mode,
            rate(self.new_flows),
            rate(self.packets),
            self.prefix_v4,
            self.prefix_v6
        )
    }
}

/// A rate with its burst (burst >= rate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

/// Whether source limits drop, only count, or are not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtectMode {
    #[default]
    Off,
    /// Count what would be dropped, drop nothing.
    Monitor,
    Enforce,
}

/// An address prefix, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// Whether `other` lies within this prefix (same family, at least as long).
    pub fn contains(&self, other: &Prefix) -> bool {
        if self.addr.is_ipv4() != other.addr.is_ipv4() || other.len < self.len {
            return false;
        }
        Prefix::masked(other.addr, self.len) == self.addr
    }

    /// `addr` with the bits past `len` cleared.
    pub fn masked(addr: IpAddr, len: u8) -> IpAddr {
        match addr {
            IpAddr::V4(a) => {
                let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
            }
            IpAddr::V6(a) => {
                let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
            }
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}
