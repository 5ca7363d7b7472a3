//! The configuration file: parsed from TOML, then validated into types that cannot be invalid.
//!
//! [`Config::parse`] works in two steps. serde reads the text into private `Raw*` structs that
//! mirror the file, with every key wrapped in [`toml::Spanned`] so that its line is known; a
//! syntax error, an unknown key or a value of the wrong type stops there, at the first one
//! (serde's model). The raw structs are then validated into the public types, and every
//! problem found on the way is collected, so one run reports all of them. Nothing is applied
//! on error: keeping the old configuration on a bad reload is the caller's job.
//!
//! `docs/config.md` is the reference for every key; `examples/gateway.toml` is a full example.
use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::{Range, RangeInclusive},
    path::{Path, PathBuf},
    time::Duration,
};

use gateway_common::{DEFAULT_CONNTRACK_SIZE, DEFAULT_TABLE_SIZE, MAX_BACKENDS, MAX_SERVICES};
use serde::{Deserialize, Deserializer};
use thiserror::Error;
use toml::Spanned;

// ---------------------------------------------------------------------------------------
// Errors

/// Why a configuration was not accepted.
#[derive(Debug, Error)]
pub enum ConfigError {
    // The io error is the source, which `{:#}` (anyhow) appends: the message leaves it out.
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, or a value of the wrong type (only the first is reported).
    #[error("{}", parse_line(.path, *.line, .field.as_deref(), .message))]
    Parse {
        path: PathBuf,
        /// 1-based; `None` when toml gives no position.
        line: Option<usize>,
        /// The dotted key the error points at (`dataplane.xdp_mode`), as read from the source.
        field: Option<String>,
        message: String,
    },
    /// Well-formed, but the values break the rules: every problem found, ordered by line.
    #[error("{}", issue_lines(.path, .issues))]
    Invalid { path: PathBuf, issues: Vec<Issue> },
}

/// One problem with a well-formed configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// 1-based line of the key (or, for a value left at its default, of its table's header).
    pub line: usize,
    /// The service the key belongs to, by name.
    pub service: Option<String>,
    /// The key as a dotted path: from the top for `dataplane.*` and `admin.*`, from the
    /// `[[service]]` table otherwise (`port`, `health.timeout`, `backend.health.port`).
    pub field: String,
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(service) = &self.service {
            write!(f, "service {service:?}: ")?;
        }
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn parse_line(path: &Path, line: Option<usize>, field: Option<&str>, message: &str) -> String {
    let mut out = path.display().to_string();
    if let Some(line) = line {
        out += &format!(":{line}");
    }
    if let Some(field) = field {
        out += &format!(": {field}");
    }
    // Some toml messages span lines ("invalid table header\nduplicate key ..."): keep one.
    out + ": " + &message.trim().replace('\n', ": ")
}

fn issue_lines(path: &Path, issues: &[Issue]) -> String {
    let path = path.display();
    let lines: Vec<String> = issues
        .iter()
        .map(|i| format!("{path}:{}: {i}", i.line))
        .collect();
    lines.join("\n")
}

// ---------------------------------------------------------------------------------------
// The validated configuration

/// A validated configuration. Every value is in range and every cross-reference holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub dataplane: DataplaneConfig,
    pub admin: AdminConfig,
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
    /// Services the maps hold, 1..=[`MAX_SERVICES`]; at least `services.len()`.
    pub max_services: u32,
    /// Largest Maglev table of any service: a prime, and every `table_size` is at most this.
    pub max_table_size: u32,
    /// Outer source of IPv4 encapsulation; set whenever an ipip service has an IPv4 VIP.
    pub ipip_source_v4: Option<Ipv4Addr>,
    /// Low bits of the IPv4 outer source replaced by the flow hash, 0..=16.
    pub ipip_source_v4_vary_bits: u8,
    /// Outer source of IPv6 encapsulation; set whenever an ipip service has an IPv6 VIP.
    pub ipip_source_v6: Option<Ipv6Addr>,
    pub kernel_log: KernelLog,
    /// A directory on bpffs for the pinned maps and link (default
    /// `/sys/fs/bpf/gateway/<interface>`).
    pub pin_dir: PathBuf,
    pub on_exit: OnExit,
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
            listen: DEFAULT_ADMIN_LISTEN,
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

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// How packets reach a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Rewrite the destination MAC; the backend holds the VIP and answers the client directly.
    L2dsr,
    /// Encapsulate in IPv4 (IPv4 VIP) or IPv6 (IPv6 VIP) towards the backend.
    Ipip,
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

/// A health check. Durations are 10ms..=1h, `timeout <= interval`.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub kind: CheckKind,
    /// The port probed, 1..=65535.
    pub port: u16,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a backend up, 1..=100.
    pub rise: u32,
    /// Consecutive failures that bring it down, 1..=100.
    pub fall: u32,
    /// Interval while a change is pending (some but not yet `rise`/`fall` results).
    pub fast_interval: Duration,
    /// Interval while the backend is down.
    pub down_interval: Duration,
    /// Random spread of each interval, as a fraction of it: 0.0..=0.5.
    pub jitter: f64,
    /// Whether a backend counts as up before its first results.
    pub initial_up: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// A TCP connect.
    Tcp,
    /// An HTTP/1.1 GET. Shared, not copied, by every backend and probe that uses it: a
    /// service's ten thousand backends hold one.
    Http(std::sync::Arc<HttpCheck>),
    /// No probe: the backend is always considered healthy.
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

// ---------------------------------------------------------------------------------------
// Defaults and limits (docs/config.md lists them too)

const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 9180);
const CONNTRACK_SIZE: RangeInclusive<i64> = 1024..=67_108_864;
const DEFAULT_MTU: u32 = 1500;
/// The IPv6 minimum link MTU (RFC 8200 section 5); also safe for IPv4.
const MIN_MTU: i64 = 1280;
const MAX_MTU: i64 = 65535;
const DEFAULT_MAX_SERVICES: u32 = 16;
const VARY_BITS: RangeInclusive<i64> = 0..=16;
pub const WEIGHT: RangeInclusive<i64> = 1..=10_000;
const DEFAULT_WEIGHT: u32 = 100;
const PORT: RangeInclusive<i64> = 1..=65535;
const RISE_FALL: RangeInclusive<i64> = 1..=100;
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);
const MIN_CHECK_DURATION: Duration = Duration::from_millis(10);
const MAX_DURATION: Duration = Duration::from_secs(3600);
const DEFAULT_JITTER: f64 = 0.1;
const MAX_JITTER: f64 = 0.5;
const STATUS: RangeInclusive<u16> = 100..=599;
const DEFAULT_EXPECT_STATUS: RangeInclusive<u16> = 200..=399;
const MAX_NAME_LEN: usize = 32;

// ---------------------------------------------------------------------------------------
// Entry points and helpers other modules use

impl Config {
    /// Parses and validates a config; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span();
            ConfigError::Parse {
                path: path.to_path_buf(),
                line: span.as_ref().map(|s| line_of(text, s.start)),
                field: span.as_ref().and_then(|s| key_at(text, s)),
                message: e.message().to_string(),
            }
        })?;
        let mut v = Validator {
            text,
            service: None,
            issues: Vec::new(),
        };
        let config = v.config(&raw);
        let mut issues = v.issues;
        match config {
            Some(config) if issues.is_empty() => Ok(config),
            _ => {
                debug_assert!(!issues.is_empty(), "rejected without a reason");
                issues.sort_by_key(|i| i.line);
                Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    issues,
                })
            }
        }
    }

    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }
}

/// Whether `n` is prime (Maglev table sizes must be).
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let n = u64::from(n);
    let mut d = 5u64;
    while d * d <= n {
        if n % d == 0 || n % (d + 2) == 0 {
            return false;
        }
        d += 6;
    }
    true
}

/// Parses a duration: a non-negative decimal number and a unit, `ms`, `s`, `m` or `h`
/// (`"250ms"`, `"1s"`, `"1.5s"`, `"2m"`), or a bare `"0"`. No spaces, signs or exponents.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{s:?} has no unit (ms, s, m or h)"))?;
    let (number, unit) = s.split_at(split);
    let unit_nanos: u128 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    let digits_ok = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits_ok(whole) || !digits_ok(frac) || number.ends_with('.') {
        return Err(format!("{s:?} is not a number followed by a unit"));
    }
    if frac.len() > 9 {
        return Err(format!("{s:?} has more than 9 decimal places"));
    }
    let too_large = || format!("{s:?} is too large");
    let whole: u128 = whole.parse().map_err(|_| too_large())?;
    let frac_value: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().unwrap_or(0)
    };
    let nanos = whole
        .checked_mul(unit_nanos)
        .and_then(|n| n.checked_add(frac_value * unit_nanos / 10u128.pow(frac.len() as u32)))
        .ok_or_else(too_large)?;
    u64::try_from(nanos)
        .map(Duration::from_nanos)
        .map_err(|_| too_large())
}

// ---------------------------------------------------------------------------------------
// The file as written

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    dataplane: Spanned<RawDataplane>,
    admin: Option<Spanned<RawAdmin>>,
    #[serde(default)]
    service: Vec<Spanned<RawService>>,
}

// Integers are read as i64 and ranges checked here, so that `port = 0` and `port = 70000`
// are collected like every other problem instead of stopping serde.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataplane {
    interface: Spanned<String>,
    xdp_mode: Option<XdpMode>,
    conntrack_size: Option<Spanned<i64>>,
    mtu: Option<Spanned<i64>>,
    max_services: Option<Spanned<i64>>,
    max_table_size: Option<Spanned<i64>>,
    ipip_source_v4: Option<Spanned<String>>,
    ipip_source_v4_vary_bits: Option<Spanned<i64>>,
    ipip_source_v6: Option<Spanned<String>>,
    kernel_log: Option<KernelLog>,
    pin_dir: Option<Spanned<String>>,
    on_exit: Option<OnExit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
    token_for_reads: Option<bool>,
    state_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    vip: Spanned<String>,
    port: Spanned<i64>,
    protocol: Protocol,
    mode: Spanned<Mode>,
    table_size: Option<Spanned<i64>>,
    slowstart: Option<Spanned<String>>,
    panic_threshold: Option<Spanned<Number>>,
    health: Option<Spanned<RawHealth>>,
    #[serde(default)]
    backend: Vec<Spanned<RawBackend>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Spanned<String>,
    weight: Option<Spanned<i64>>,
    backup: Option<bool>,
    state: Option<AdminState>,
    health: Option<Spanned<RawHealth>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    kind: Option<Spanned<RawKind>>,
    port: Option<Spanned<i64>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    rise: Option<Spanned<i64>>,
    fall: Option<Spanned<i64>>,
    fast_interval: Option<Spanned<String>>,
    down_interval: Option<Spanned<String>>,
    jitter: Option<Spanned<Number>>,
    initial: Option<Spanned<Initial>>,
    path: Option<Spanned<String>>,
    host: Option<Spanned<String>>,
    expect_status: Option<Spanned<Vec<Spanned<StatusSpec>>>>,
    body_contains: Option<Spanned<String>>,
}

impl RawHealth {
    /// The keys that only an HTTP check may have, with where they are.
    fn http_keys(&self) -> Vec<(&'static str, Range<usize>)> {
        let spans = [
            ("path", self.path.as_ref().map(Spanned::span)),
            ("host", self.host.as_ref().map(Spanned::span)),
            (
                "expect_status",
                self.expect_status.as_ref().map(Spanned::span),
            ),
            (
                "body_contains",
                self.body_contains.as_ref().map(Spanned::span),
            ),
        ];
        spans
            .into_iter()
            .filter_map(|(k, s)| Some((k, s?)))
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawKind {
    Tcp,
    Http,
    None,
}

impl fmt::Display for RawKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RawKind::Tcp => "tcp",
            RawKind::Http => "http",
            RawKind::None => "none",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Initial {
    Down,
    Up,
}

/// A float that may be written as an integer (`jitter = 0`).
#[derive(Debug, Clone, Copy)]
struct Number(f64);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Number;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_f64<E>(self, v: f64) -> Result<Number, E> {
                Ok(Number(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Number, E> {
                Ok(Number(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Number, E> {
                Ok(Number(v as f64))
            }
        }
        d.deserialize_any(V)
    }
}

/// One `expect_status` entry: `"200-299"`, `"204"` or `204`.
#[derive(Debug, Clone)]
struct StatusSpec(String);

impl<'de> Deserialize<'de> for StatusSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = StatusSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a status (\"200\", 200) or a range of them (\"200-299\")")
            }
            fn visit_str<E>(self, v: &str) -> Result<StatusSpec, E> {
                Ok(StatusSpec(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<StatusSpec, E> {
                Ok(StatusSpec(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<StatusSpec, E> {
                Ok(StatusSpec(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------
// Validation

/// Walks the raw config, collecting issues. Each step returns `None` only after reporting
/// why, so a config comes out exactly when there are no issues.
struct Validator<'a> {
    text: &'a str,
    /// The service being validated, named in its issues.
    service: Option<String>,
    issues: Vec<Issue>,
}

/// What services need to know of `[dataplane]`; `None` where the value itself is invalid
/// (and already reported), which skips the checks that depend on it.
struct Limits {
    max_services: Option<u32>,
    max_table_size: Option<u32>,
    /// Whether the key is present at all: a bad address is reported once, as bad, and not
    /// again as missing.
    ipip_source_v4: bool,
    ipip_source_v6: bool,
}

/// Where a health key's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Origin {
    Default,
    Service,
    Backend,
}

/// The service's `[service.health]` and a backend's `health = {...}` over it.
struct Layers<'a> {
    service: Option<&'a RawHealth>,
    backend: Option<&'a RawHealth>,
}

impl<'a> Layers<'a> {
    fn pick<T>(
        &self,
        key: impl Fn(&'a RawHealth) -> &'a Option<Spanned<T>>,
    ) -> Option<(&'a Spanned<T>, Origin)> {
        if let Some(v) = self.backend.and_then(|h| key(h).as_ref()) {
            return Some((v, Origin::Backend));
        }
        self.service
            .and_then(|h| key(h).as_ref())
            .map(|v| (v, Origin::Service))
    }
}

fn health_field(origin: Origin, key: &str) -> String {
    match origin {
        Origin::Backend => format!("backend.health.{key}"),
        Origin::Service | Origin::Default => format!("health.{key}"),
    }
}

impl Validator<'_> {
    fn report(&mut self, span: Range<usize>, field: impl Into<String>, message: impl Into<String>) {
        let issue = Issue {
            line: line_of(self.text, span.start),
            service: self.service.clone(),
            field: field.into(),
            message: message.into(),
        };
        // A backend's merged check repeats the service's own problems: report those once.
        if !self.issues.contains(&issue) {
            self.issues.push(issue);
        }
    }

    /// An integer key: `default` when absent, else range-checked and converted.
    /// An optional absolute path: `Some(None)` when unset, `None` (reported) when invalid.
    fn abs_path(&mut self, v: Option<&Spanned<String>>, field: &str) -> Option<Option<PathBuf>> {
        let Some(p) = v else {
            return Some(None);
        };
        let text = p.get_ref();
        if text.starts_with('/') && !text.split('/').any(|c| c == "..") {
            return Some(Some(PathBuf::from(text)));
        }
        let msg = format!("{text:?} is not an absolute path (without \"..\")");
        self.report(p.span(), field, msg);
        None
    }

    fn int<T: TryFrom<i64>>(
        &mut self,
        raw: Option<&Spanned<i64>>,
        default: T,
        range: RangeInclusive<i64>,
        field: &str,
    ) -> Option<T> {
        let Some(raw) = raw else {
            return Some(default);
        };
        let v = *raw.get_ref();
        if !range.contains(&v) {
            let (lo, hi) = (range.start(), range.end());
            self.report(
                raw.span(),
                field,
                format!("{v} is out of range {lo}..={hi}"),
            );
            return None;
        }
        // In range, so it fits (every range here is within T's).
        T::try_from(v).ok()
    }

    /// A duration key: `default` when absent, else parsed and checked against `range`.
    fn duration(
        &mut self,
        raw: Option<&Spanned<String>>,
        default: Duration,
        range: RangeInclusive<Duration>,
        field: &str,
    ) -> Option<Duration> {
        let Some(raw) = raw else {
            return Some(default);
        };
        match parse_duration(raw.get_ref()) {
            Err(e) => {
                self.report(raw.span(), field, e);
                None
            }
            Ok(d) if !range.contains(&d) => {
                let (lo, hi) = (range.start(), range.end());
                let msg = format!("{} is out of range {lo:?}..={hi:?}", raw.get_ref());
                self.report(raw.span(), field, msg);
                None
            }
            Ok(d) => Some(d),
        }
    }

    /// An address a service or backend uses: parsed, and one a packet can be sent to.
    fn address(&mut self, raw: &Spanned<String>, field: &str) -> Option<IpAddr> {
        let Ok(addr) = raw.get_ref().parse::<IpAddr>() else {
            let msg = format!("{:?} is not an IPv4 or IPv6 address", raw.get_ref());
            self.report(raw.span(), field, msg);
            return None;
        };
        if let Some(why) = unusable(addr) {
            self.report(raw.span(), field, format!("{addr} is {why}"));
            return None;
        }
        Some(addr)
    }

    fn config(&mut self, raw: &RawConfig) -> Option<Config> {
        let (dataplane, limits) = self.dataplane(&raw.dataplane);
        let admin = self.admin(raw.admin.as_ref());

        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut listeners: HashMap<(IpAddr, u16, Protocol), (&str, usize)> = HashMap::new();
        let mut total_backends = 0usize;
        let mut services = Some(Vec::with_capacity(raw.service.len()));
        for (i, service) in raw.service.iter().enumerate() {
            let built = self.service(service, &limits);
            // Checks across services; `self.service` still names this one.
            let s = service.get_ref();
            let name = s.name.get_ref().as_str();
            let line = line_of(self.text, s.name.span().start);
            if let Some(first) = names.get(name) {
                let msg = format!("{name:?} is already the name of the service at line {first}");
                self.report(s.name.span(), "name", msg);
            } else {
                names.insert(name, line);
            }
            let vip = s.vip.get_ref().parse::<IpAddr>().ok();
            let port = u16::try_from(*s.port.get_ref()).ok().filter(|p| *p != 0);
            if let (Some(vip), Some(port)) = (vip, port) {
                let key = (vip, port, s.protocol);
                if let Some((other, at)) = listeners.get(&key) {
                    let msg = format!(
                        "{} port {port}/{} is already used by service {other:?} (line {at})",
                        vip, s.protocol
                    );
                    self.report(s.vip.span(), "vip", msg);
                } else {
                    listeners.insert(key, (name, line));
                }
            }
            if let Some(max) = limits.max_services
                && i == max as usize
            {
                let n = raw.service.len();
                let msg = format!("{n} services, but dataplane.max_services is {max}");
                self.report(service.span(), "service", msg);
            }
            // Backend id 0 means "none" in the data plane.
            let room = MAX_BACKENDS as usize - 1;
            if total_backends <= room && total_backends + s.backend.len() > room {
                let b = &s.backend[room - total_backends];
                let msg =
                    format!("more than {room} backends in all services (the data plane's limit)");
                self.report(b.span(), "backend", msg);
            }
            total_backends += s.backend.len();

            match (built, services.as_mut()) {
                (Some(b), Some(list)) => list.push(b),
                _ => services = None,
            }
        }
        self.service = None;

        Some(Config {
            dataplane: dataplane?,
            admin: admin?,
            services: services?,
        })
    }

    fn dataplane(&mut self, raw: &Spanned<RawDataplane>) -> (Option<DataplaneConfig>, Limits) {
        let d = raw.get_ref();

        let interface = d.interface.get_ref();
        let interface = if valid_ifname(interface) {
            Some(interface.clone())
        } else {
            let msg = format!(
                "{interface:?} is not an interface name (1 to 15 bytes, not \".\" or \"..\", \
                 without '/', ':' or whitespace)"
            );
            self.report(d.interface.span(), "dataplane.interface", msg);
            None
        };

        let conntrack_size = self.int(
            d.conntrack_size.as_ref(),
            DEFAULT_CONNTRACK_SIZE,
            CONNTRACK_SIZE,
            "dataplane.conntrack_size",
        );

        let mtu = match &d.mtu {
            None => Some(DEFAULT_MTU),
            Some(m) => {
                let v = *m.get_ref();
                if v == 0 || (MIN_MTU..=MAX_MTU).contains(&v) {
                    Some(v as u32)
                } else {
                    let msg = format!(
                        "{v} is out of range {MIN_MTU}..={MAX_MTU} (0 turns the check off)"
                    );
                    self.report(m.span(), "dataplane.mtu", msg);
                    None
                }
            }
        };

        let max_services = self.int(
            d.max_services.as_ref(),
            DEFAULT_MAX_SERVICES,
            1..=i64::from(MAX_SERVICES),
            "dataplane.max_services",
        );

        let max_table_size = self
            .int(
                d.max_table_size.as_ref(),
                DEFAULT_TABLE_SIZE,
                3..=i64::from(u32::MAX),
                "dataplane.max_table_size",
            )
            .filter(|&m| {
                let span = d.max_table_size.as_ref().map_or(raw.span(), Spanned::span);
                if !is_prime(m) {
                    self.report(
                        span,
                        "dataplane.max_table_size",
                        format!("{m} is not prime"),
                    );
                    return false;
                }
                // Each service owns two table regions of max_table_size slots (see
                // gateway_common::MAP_TABLES), and the map's max_entries is a u32.
                let slots = 2 * u64::from(max_services.unwrap_or(1)) * u64::from(m);
                if slots > u64::from(u32::MAX) {
                    let msg = format!(
                        "{m} is too large: 2 x max_services x max_table_size = {slots} table \
                         slots, more than a map holds ({})",
                        u32::MAX
                    );
                    self.report(span, "dataplane.max_table_size", msg);
                    return false;
                }
                true
            });

        let ipip_source_v4 = match &d.ipip_source_v4 {
            None => Some(None),
            Some(s) => match s.get_ref().parse::<Ipv4Addr>() {
                Ok(a) if unusable(IpAddr::V4(a)).is_none() => Some(Some(a)),
                Ok(a) => {
                    let msg = format!("{a} is {}", unusable(IpAddr::V4(a)).unwrap_or_default());
                    self.report(s.span(), "dataplane.ipip_source_v4", msg);
                    None
                }
                Err(_) => {
                    let msg = format!("{:?} is not an IPv4 address", s.get_ref());
                    self.report(s.span(), "dataplane.ipip_source_v4", msg);
                    None
                }
            },
        };
        let ipip_source_v4_vary_bits = self.int(
            d.ipip_source_v4_vary_bits.as_ref(),
            0u8,
            VARY_BITS,
            "dataplane.ipip_source_v4_vary_bits",
        );
        let ipip_source_v6 = match &d.ipip_source_v6 {
            None => Some(None),
            Some(s) => match s.get_ref().parse::<Ipv6Addr>() {
                Ok(a) if unusable(IpAddr::V6(a)).is_none() => Some(Some(a)),
                Ok(a) => {
                    let msg = format!("{a} is {}", unusable(IpAddr::V6(a)).unwrap_or_default());
                    self.report(s.span(), "dataplane.ipip_source_v6", msg);
                    None
                }
                Err(_) => {
                    let msg = format!("{:?} is not an IPv6 address", s.get_ref());
                    self.report(s.span(), "dataplane.ipip_source_v6", msg);
                    None
                }
            },
        };

        let pin_dir = match self.abs_path(d.pin_dir.as_ref(), "dataplane.pin_dir") {
            Some(None) => interface
                .as_ref()
                .map(|i| Path::new(DEFAULT_PIN_ROOT).join(i)),
            other => other.flatten(),
        };

        let limits = Limits {
            max_services,
            max_table_size,
            ipip_source_v4: d.ipip_source_v4.is_some(),
            ipip_source_v6: d.ipip_source_v6.is_some(),
        };
        let config = (|| {
            Some(DataplaneConfig {
                interface: interface?,
                xdp_mode: d.xdp_mode.unwrap_or_default(),
                conntrack_size: conntrack_size?,
                mtu: mtu?,
                max_services: max_services?,
                max_table_size: max_table_size?,
                ipip_source_v4: ipip_source_v4?,
                ipip_source_v4_vary_bits: ipip_source_v4_vary_bits?,
                ipip_source_v6: ipip_source_v6?,
                kernel_log: d.kernel_log.unwrap_or_default(),
                pin_dir: pin_dir?,
                on_exit: d.on_exit.unwrap_or_default(),
            })
        })();
        (config, limits)
    }

    fn admin(&mut self, raw: Option<&Spanned<RawAdmin>>) -> Option<AdminConfig> {
        let Some(raw) = raw else {
            return Some(AdminConfig::default());
        };
        let a = raw.get_ref();
        let listen = match &a.listen {
            None => Some(DEFAULT_ADMIN_LISTEN),
            Some(listen) => match listen.get_ref().parse::<SocketAddr>() {
                Ok(listen) => Some(listen),
                Err(_) => {
                    let msg = format!(
                        "{:?} is not an address and port (\"127.0.0.1:9180\", \"[::1]:9180\")",
                        listen.get_ref()
                    );
                    self.report(listen.span(), "admin.listen", msg);
                    None
                }
            },
        };
        let token_file = self.abs_path(a.token_file.as_ref(), "admin.token_file");
        let state_file = self.abs_path(a.state_file.as_ref(), "admin.state_file");
        let (listen, token_file, state_file) = (listen?, token_file?, state_file?);
        if !listen.ip().is_loopback() && token_file.is_none() {
            let msg = format!(
                "{listen} is not a loopback address: set admin.token_file, a file holding the \
                 token that write requests must carry"
            );
            self.report(raw.span(), "admin.token_file", msg);
            return None;
        }
        Some(AdminConfig {
            listen,
            token_file,
            token_for_reads: a.token_for_reads.unwrap_or(false),
            state_file,
        })
    }

    fn service(&mut self, raw: &Spanned<RawService>, limits: &Limits) -> Option<ServiceConfig> {
        let s = raw.get_ref();
        let name = s.name.get_ref();
        self.service = Some(name.clone());

        let name_ok = valid_service_name(name);
        if !name_ok {
            let msg =
                format!("{name:?} must be 1 to {MAX_NAME_LEN} characters of a-z, 0-9, _ and -");
            self.report(s.name.span(), "name", msg);
        }
        let vip = self.address(&s.vip, "vip");
        let port: Option<u16> = self.int(Some(&s.port), 0, PORT, "port");

        let mode = *s.mode.get_ref();
        if mode == Mode::Ipip {
            let missing = match vip {
                Some(IpAddr::V4(_)) if !limits.ipip_source_v4 => Some("ipip_source_v4"),
                Some(IpAddr::V6(_)) if !limits.ipip_source_v6 => Some("ipip_source_v6"),
                _ => None,
            };
            if let Some(key) = missing {
                let family = if vip.is_some_and(|v| v.is_ipv4()) {
                    "IPv4"
                } else {
                    "IPv6"
                };
                let msg =
                    format!("ipip with an {family} VIP needs dataplane.{key}, the outer source");
                self.report(s.mode.span(), "mode", msg);
            }
        }

        let table_size = self.table_size(raw, limits);
        let slowstart = self.duration(
            s.slowstart.as_ref(),
            Duration::ZERO,
            Duration::ZERO..=MAX_DURATION,
            "slowstart",
        );
        let panic_threshold = match &s.panic_threshold {
            None => Some(None),
            Some(p) => {
                let v = p.get_ref().0;
                if v > 0.0 && v < 1.0 {
                    Some(Some(v))
                } else {
                    let msg = format!("{v} must be greater than 0 and less than 1");
                    self.report(p.span(), "panic_threshold", msg);
                    None
                }
            }
        };

        let service_layers = Layers {
            service: s.health.as_ref().map(Spanned::get_ref),
            backend: None,
        };
        let health_table = s.health.as_ref().map_or(raw.span(), Spanned::span);
        let health = self.health(&service_layers, port, health_table);

        let mut seen: HashMap<IpAddr, usize> = HashMap::new();
        let mut backends = Some(Vec::with_capacity(s.backend.len()));
        for b in &s.backend {
            let built = self.backend(b, vip, &mut seen, s, port, health.as_ref());
            match (built, backends.as_mut()) {
                (Some(b), Some(list)) => list.push(b),
                _ => backends = None,
            }
        }

        Some(ServiceConfig {
            name: name_ok.then(|| name.clone())?,
            vip: vip?,
            port: port?,
            protocol: s.protocol,
            mode,
            table_size: table_size?,
            slowstart: slowstart?,
            panic_threshold: panic_threshold?,
            health: health?,
            backends: backends?,
        })
    }

    fn table_size(&mut self, raw: &Spanned<RawService>, limits: &Limits) -> Option<u32> {
        let s = raw.get_ref();
        // A smaller max_table_size lowers the default with it (it is prime too).
        let default = limits
            .max_table_size
            .map_or(DEFAULT_TABLE_SIZE, |m| m.min(DEFAULT_TABLE_SIZE));
        let size = self.int(
            s.table_size.as_ref(),
            default,
            3..=i64::from(u32::MAX),
            "table_size",
        )?;
        let span = s.table_size.as_ref().map_or(raw.span(), Spanned::span);
        let mut ok = true;
        if !is_prime(size) {
            self.report(span.clone(), "table_size", format!("{size} is not prime"));
            ok = false;
        }
        if let Some(max) = limits.max_table_size
            && size > max
        {
            let msg = format!("{size} is larger than dataplane.max_table_size ({max})");
            self.report(span.clone(), "table_size", msg);
            ok = false;
        }
        let n = s.backend.len();
        if size as usize <= n {
            let msg = format!("{size} must be larger than the number of backends ({n})");
            self.report(span, "table_size", msg);
            ok = false;
        }
        ok.then_some(size)
    }

    fn backend(
        &mut self,
        raw: &Spanned<RawBackend>,
        vip: Option<IpAddr>,
        seen: &mut HashMap<IpAddr, usize>,
        service: &RawService,
        port: Option<u16>,
        service_health: Option<&HealthConfig>,
    ) -> Option<BackendConfig> {
        let b = raw.get_ref();
        let address = self.address(&b.address, "backend.address").filter(|&a| {
            let span = b.address.span();
            if let Some(vip) = vip
                && vip.is_ipv4() != a.is_ipv4()
            {
                let msg = format!("{a} and the VIP {vip} are not of the same family");
                self.report(span, "backend.address", msg);
                return false;
            }
            if let Some(first) = seen.get(&a) {
                let msg = format!("{a} listed twice (first at line {first})");
                self.report(span, "backend.address", msg);
                return false;
            }
            seen.insert(a, line_of(self.text, span.start));
            true
        });
        let weight = self.int(b.weight.as_ref(), DEFAULT_WEIGHT, WEIGHT, "backend.weight");
        let health = match &b.health {
            None => service_health.cloned(),
            Some(over) => {
                let layers = Layers {
                    service: service.health.as_ref().map(Spanned::get_ref),
                    backend: Some(over.get_ref()),
                };
                self.health(&layers, port, over.span())
            }
        };
        Some(BackendConfig {
            address: address?,
            weight: weight?,
            backup: b.backup.unwrap_or(false),
            state: b.state.unwrap_or_default(),
            health: health?,
        })
    }

    /// The effective check of `layers`. `table` is the most specific health table (or the
    /// service), the line for problems with values left at their defaults.
    fn health(
        &mut self,
        layers: &Layers<'_>,
        service_port: Option<u16>,
        table: Range<usize>,
    ) -> Option<HealthConfig> {
        let kind = layers
            .pick(|h| &h.kind)
            .map_or(RawKind::Tcp, |(k, _)| *k.get_ref());

        // The HTTP keys written at this level need an HTTP check at this level; the
        // service's HTTP keys under a backend that switches to tcp are simply unused.
        let (own, own_origin) = match layers.backend {
            Some(b) => (Some(b), Origin::Backend),
            None => (layers.service, Origin::Service),
        };
        if kind != RawKind::Http {
            for (key, span) in own.map(RawHealth::http_keys).unwrap_or_default() {
                let msg = format!("only applies to kind = \"http\" (this check is \"{kind}\")");
                self.report(span, health_field(own_origin, key), msg);
            }
        }

        let port = match layers.pick(|h| &h.port) {
            Some((p, origin)) => self.int(Some(p), 0u16, PORT, &health_field(origin, "port")),
            // Without a valid service port there is nothing to default to; that is reported.
            None => service_port,
        };

        let checked = MIN_CHECK_DURATION..=MAX_DURATION;
        let duration = |v: &mut Self, picked: Option<(&Spanned<String>, Origin)>, default, key| {
            let origin = picked.map_or(Origin::Default, |(_, o)| o);
            let d = v.duration(
                picked.map(|(s, _)| s),
                default,
                checked.clone(),
                &health_field(origin, key),
            );
            (d, picked.map(|(s, _)| s.span()), origin)
        };
        let (interval, interval_span, interval_origin) = duration(
            self,
            layers.pick(|h| &h.interval),
            DEFAULT_INTERVAL,
            "interval",
        );
        let (timeout, timeout_span, timeout_origin) = duration(
            self,
            layers.pick(|h| &h.timeout),
            DEFAULT_TIMEOUT,
            "timeout",
        );
        if let (Some(i), Some(t)) = (interval, timeout)
            && t > i
        {
            // Blame the key written at the more specific level: that is the one that
            // broke a check that held before.
            let msg = format!("timeout {t:?} is longer than interval {i:?}");
            if timeout_origin >= interval_origin {
                let span = timeout_span.unwrap_or(table.clone());
                self.report(span, health_field(timeout_origin, "timeout"), msg);
            } else {
                let span = interval_span.unwrap_or(table.clone());
                self.report(span, health_field(interval_origin, "interval"), msg);
            }
        }
        // The defaults derive from the interval: without a valid one (reported above) only
        // values written out are checked.
        let fast_interval = match (layers.pick(|h| &h.fast_interval), interval) {
            (Some(p), _) => duration(self, Some(p), Duration::ZERO, "fast_interval").0,
            (None, i) => i.map(|i| (i / 4).max(MIN_CHECK_DURATION)),
        };
        let down_interval = match (layers.pick(|h| &h.down_interval), interval) {
            (Some(p), _) => duration(self, Some(p), Duration::ZERO, "down_interval").0,
            (None, i) => i.map(|i| i * 2),
        };

        let count = |v: &mut Self, picked: Option<(&Spanned<i64>, Origin)>, default: u32, key| {
            let origin = picked.map_or(Origin::Default, |(_, o)| o);
            v.int(
                picked.map(|(s, _)| s),
                default,
                RISE_FALL,
                &health_field(origin, key),
            )
        };
        let rise = count(self, layers.pick(|h| &h.rise), 2, "rise");
        let fall = count(self, layers.pick(|h| &h.fall), 3, "fall");

        let jitter = match layers.pick(|h| &h.jitter) {
            None => Some(DEFAULT_JITTER),
            Some((j, origin)) => {
                let v = j.get_ref().0;
                if (0.0..=MAX_JITTER).contains(&v) {
                    Some(v)
                } else {
                    let msg = format!("{v} is out of range 0.0..={MAX_JITTER}");
                    self.report(j.span(), health_field(origin, "jitter"), msg);
                    None
                }
            }
        };
        let initial_up = layers
            .pick(|h| &h.initial)
            .is_some_and(|(i, _)| *i.get_ref() == Initial::Up);

        let kind = match kind {
            RawKind::Tcp => Some(CheckKind::Tcp),
            RawKind::None => Some(CheckKind::None),
            RawKind::Http => self
                .http_check(layers)
                .map(|h| CheckKind::Http(std::sync::Arc::new(h))),
        };

        Some(HealthConfig {
            kind: kind?,
            port: port?,
            interval: interval?,
            timeout: timeout?,
            rise: rise?,
            fall: fall?,
            fast_interval: fast_interval?,
            down_interval: down_interval?,
            jitter: jitter?,
            initial_up,
        })
    }

    fn http_check(&mut self, layers: &Layers<'_>) -> Option<HttpCheck> {
        let path = match layers.pick(|h| &h.path) {
            None => Some("/".to_string()),
            Some((p, origin)) => {
                let v = p.get_ref();
                if v.starts_with('/') && !has_space_or_control(v) {
                    Some(v.clone())
                } else {
                    let msg = format!(
                        "{v:?} must start with '/' and have no spaces or control characters"
                    );
                    self.report(p.span(), health_field(origin, "path"), msg);
                    None
                }
            }
        };
        let host = match layers.pick(|h| &h.host) {
            None => Some(None),
            Some((h, origin)) => {
                let v = h.get_ref();
                if !v.is_empty() && !has_space_or_control(v) {
                    Some(Some(v.clone()))
                } else {
                    let msg =
                        format!("{v:?} must be non-empty, without spaces or control characters");
                    self.report(h.span(), health_field(origin, "host"), msg);
                    None
                }
            }
        };
        let expect_status = match layers.pick(|h| &h.expect_status) {
            None => Some(vec![DEFAULT_EXPECT_STATUS]),
            Some((list, origin)) => {
                let field = health_field(origin, "expect_status");
                if list.get_ref().is_empty() {
                    self.report(
                        list.span(),
                        &field,
                        "must list at least one status or range",
                    );
                }
                let mut ranges = Some(Vec::new());
                for item in list.get_ref() {
                    match parse_status_range(&item.get_ref().0) {
                        Ok(r) => ranges.as_mut().map(|v| v.push(r)).unwrap_or_default(),
                        Err(e) => {
                            self.report(item.span(), &field, e);
                            ranges = None;
                        }
                    }
                }
                ranges.filter(|r| !r.is_empty())
            }
        };
        let body_contains = match layers.pick(|h| &h.body_contains) {
            None => Some(None),
            Some((b, origin)) if b.get_ref().is_empty() => {
                let msg = "must not be empty (leave it out to not check the body)";
                self.report(b.span(), health_field(origin, "body_contains"), msg);
                None
            }
            Some((b, _)) => Some(Some(b.get_ref().clone())),
        };
        Some(HttpCheck {
            path: path?,
            host: host?,
            expect_status: expect_status?,
            body_contains: body_contains?,
        })
    }
}

/// `"NNN"` or `"NNN-NNN"`, within 100..=599, low end first.
fn parse_status_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let bad = || format!("{s:?} is not a status or a range of them (\"200\", \"200-299\")");
    let status = |t: &str| -> Result<u16, String> {
        let v: u16 = if t.len() == 3 && t.bytes().all(|b| b.is_ascii_digit()) {
            t.parse().map_err(|_| bad())?
        } else {
            return Err(bad());
        };
        if STATUS.contains(&v) {
            Ok(v)
        } else {
            Err(format!(
                "{s:?}: {v} is not an HTTP status ({}..={})",
                STATUS.start(),
                STATUS.end()
            ))
        }
    };
    let (lo, hi) = match s.split_once('-') {
        Some((lo, hi)) => (status(lo)?, status(hi)?),
        None => {
            let v = status(s)?;
            (v, v)
        }
    };
    if lo > hi {
        return Err(format!("{s:?} is an empty range (the low end comes first)"));
    }
    Ok(lo..=hi)
}

/// Why `addr` cannot be a VIP, a backend or an encapsulation source, if it cannot.
fn unusable(addr: IpAddr) -> Option<&'static str> {
    if addr.is_unspecified() {
        Some("the unspecified address")
    } else if addr.is_loopback() {
        Some("a loopback address")
    } else if addr.is_multicast() {
        Some("a multicast address")
    } else if addr == IpAddr::V4(Ipv4Addr::BROADCAST) {
        Some("the broadcast address")
    } else {
        None
    }
}

/// The kernel's rule for interface names: `dev_valid_name()` in net/core/dev.c (shorter
/// than IFNAMSIZ = 16, not "." or "..", no '/', ':' or whitespace).
fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

fn valid_service_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn has_space_or_control(s: &str) -> bool {
    s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The 1-based line holding byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.as_bytes()[..offset]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The dotted key a toml error at `span` points at, read back from the source: the last
/// table header, then the key on the error's line (through any inline tables). Best effort,
/// for the message only: `None` when nothing names a key.
fn key_at(text: &str, span: &Range<usize>) -> Option<String> {
    // toml points problems with the root table (a missing `[dataplane]`) at 0..0.
    if span.is_empty() && span.start == 0 {
        return None;
    }
    let start = span.start.min(text.len());
    let end = span.end.clamp(start, text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);

    let header_of = |line: &str| -> Option<Vec<String>> {
        let t = line.trim_start().strip_prefix('[')?;
        let t = t.strip_prefix('[').unwrap_or(t);
        let inner = &t[..t.find(']')?];
        Some(inner.split('.').map(clean_key).collect())
    };
    let mut path: Vec<String> = text[..line_end]
        .lines()
        .rev()
        .find_map(header_of)
        .unwrap_or_default();
    let line = &text[line_start..line_end];
    if header_of(line).is_none() {
        // Follow `key = {` into inline tables up to the error; a span that is itself
        // followed by `=` is a key (an unknown field), otherwise it is the current key's value.
        let mut stack: Vec<String> = Vec::new();
        let mut current: Option<String> = None;
        let mut pending = String::new();
        let mut quote: Option<char> = None;
        let mut escaped = false;
        for c in line[..start - line_start].chars() {
            if let Some(q) = quote {
                if escaped {
                    escaped = false;
                } else if c == '\\' && q == '"' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
                pending.push(c);
                continue;
            }
            match c {
                '"' | '\'' => {
                    quote = Some(c);
                    pending.push(c);
                }
                '#' => break,
                '=' => current = Some(clean_key(&std::mem::take(&mut pending))),
                '{' => {
                    stack.push(current.take().unwrap_or_default());
                    pending.clear();
                }
                '}' => {
                    current = stack.pop();
                    pending.clear();
                }
                ',' | '[' | ']' => pending.clear(),
                _ => pending.push(c),
            }
        }
        let is_key = text[end..line_end].trim_start().starts_with('=');
        let key = if is_key {
            Some(clean_key(&text[start..end]))
        } else {
            current
        };
        path.extend(stack.into_iter().filter(|k| !k.is_empty()));
        path.extend(key.filter(|k| !k.is_empty()));
    }
    (!path.is_empty()).then(|| path.join("."))
}

fn clean_key(k: &str) -> String {
    k.trim().trim_matches(|c| c == '"' || c == '\'').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../examples/gateway.toml");

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("test.toml"))
    }

    /// The issues of a config that must be rejected by validation.
    fn issues(s: &str) -> Vec<Issue> {
        match parse(s) {
            Err(ConfigError::Invalid { issues, .. }) => issues,
            other => panic!("expected validation issues, got {other:?}"),
        }
    }

    /// The one issue with `field` (and that there is exactly one).
    fn only(s: &str, field: &str) -> Issue {
        let all = issues(s);
        let found: Vec<_> = all.iter().filter(|i| i.field == field).collect();
        assert_eq!(found.len(), 1, "one issue with {field} in {all:#?}");
        found[0].clone()
    }

    #[test]
    fn paths_must_be_absolute() {
        let text = "[dataplane]\ninterface = \"eth0\"\npin_dir = \"gw\"\n\
                    [admin]\ntoken_file = \"/a/../b\"\nstate_file = \"x.json\"\n";
        for field in ["dataplane.pin_dir", "admin.token_file", "admin.state_file"] {
            let i = only(text, field);
            assert!(i.message.contains("is not an absolute path"), "{i:?}");
        }
        let c = parse("[dataplane]\ninterface = \"eth1\"\n").unwrap();
        assert_eq!(c.dataplane.pin_dir, Path::new("/sys/fs/bpf/gateway/eth1"));
    }

    #[test]
    fn a_non_loopback_admin_api_needs_a_token() {
        let text = "[dataplane]\ninterface = \"eth0\"\n[admin]\nlisten = \"0.0.0.0:9180\"\n";
        let i = only(text, "admin.token_file");
        assert!(i.message.contains("not a loopback address"), "{i:?}");
        let ok = format!("{text}token_file = \"/etc/gateway/token\"\n");
        assert!(parse(&ok).is_ok());
    }

    /// The 1-based line of the only line containing `needle`.
    fn line(s: &str, needle: &str) -> usize {
        let lines: Vec<usize> = s
            .lines()
            .enumerate()
            .filter(|(_, l)| l.contains(needle))
            .map(|(i, _)| i + 1)
            .collect();
        assert_eq!(lines.len(), 1, "{needle:?} on one line");
        lines[0]
    }

    const DP: &str = "[dataplane]\ninterface = \"eth0\"\nipip_source_v4 = \"198.18.0.2\"\n";

    fn with_dp(rest: &str) -> String {
        format!("{DP}{rest}")
    }

    #[test]
    fn example_parses() {
        let c = Config::parse(EXAMPLE, Path::new("examples/gateway.toml")).unwrap();
        assert_eq!(c.dataplane.interface, "eth0");
        assert_eq!(c.dataplane.ipip_source_v6, Some("fd00::2".parse().unwrap()));
        assert_eq!(c.services.len(), 2);
        let web = &c.services[0];
        assert_eq!(
            (web.name.as_str(), web.mode, web.protocol),
            ("web", Mode::L2dsr, Protocol::Tcp)
        );
        assert!(web.vip.is_ipv4());
        assert!(matches!(web.health.kind, CheckKind::Http(_)));
        assert!(web.backends.len() >= 2);
        let v6 = &c.services[1];
        assert_eq!((v6.mode, v6.protocol), (Mode::Ipip, Protocol::Udp));
        assert!(v6.vip.is_ipv6() && v6.backends.iter().all(|b| b.address.is_ipv6()));
        // Every key in the example is one the parser knows: nothing is silently ignored.
        for b in c.services.iter().flat_map(|s| &s.backends) {
            assert!(is_prime(c.dataplane.max_table_size) && b.weight >= 1);
        }
    }

    #[test]
    fn defaults_are_applied() {
        let c = parse(
            "[dataplane]\ninterface = \"eth0\"\n\n[[service]]\nname = \"a\"\nvip = \"198.18.1.1\"\n\
             port = 80\nprotocol = \"tcp\"\nmode = \"l2dsr\"\n\n[[service.backend]]\n\
             address = \"198.18.0.11\"\n",
        )
        .unwrap();
        let d = &c.dataplane;
        assert_eq!(
            *d,
            DataplaneConfig {
                interface: "eth0".into(),
                xdp_mode: XdpMode::Auto,
                conntrack_size: 1_048_576,
                mtu: 1500,
                max_services: 16,
                max_table_size: 65537,
                ipip_source_v4: None,
                ipip_source_v4_vary_bits: 0,
                ipip_source_v6: None,
                kernel_log: KernelLog::Warn,
                pin_dir: "/sys/fs/bpf/gateway/eth0".into(),
                on_exit: OnExit::Detach,
            }
        );
        assert_eq!(c.admin.listen, "127.0.0.1:9180".parse().unwrap());
        let s = &c.services[0];
        assert_eq!(s.table_size, 65537);
        assert_eq!(s.slowstart, Duration::ZERO);
        assert_eq!(s.panic_threshold, None);
        let health = HealthConfig {
            kind: CheckKind::Tcp,
            port: 80,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 3,
            fast_interval: Duration::from_millis(250),
            down_interval: Duration::from_secs(2),
            jitter: 0.1,
            initial_up: false,
        };
        assert_eq!(s.health, health);
        assert_eq!(
            s.backends,
            vec![BackendConfig {
                address: "198.18.0.11".parse().unwrap(),
                weight: 100,
                backup: false,
                state: AdminState::Ready,
                health,
            }]
        );
    }

    #[test]
    fn http_defaults_and_derived_intervals() {
        let c = parse(&with_dp(
            "[[service]]\nname = \"a\"\nvip = \"198.18.1.1\"\nport = 443\nprotocol = \"tcp\"\n\
             mode = \"l2dsr\"\n[service.health]\nkind = \"http\"\ninterval = \"20ms\"\n\
             timeout = \"20ms\"\n",
        ))
        .unwrap();
        let h = &c.services[0].health;
        assert_eq!(h.port, 443);
        // interval/4 = 5ms is raised to the 10ms floor.
        assert_eq!(h.fast_interval, Duration::from_millis(10));
        assert_eq!(h.down_interval, Duration::from_millis(40));
        assert_eq!(
            h.kind,
            CheckKind::Http(std::sync::Arc::new(HttpCheck {
                path: "/".into(),
                host: None,
                expect_status: vec![200..=399],
                body_contains: None,
            }))
        );
    }

    #[test]
    fn a_service_without_backends_is_fine() {
        let c = parse(&with_dp(
            "[[service]]\nname = \"empty\"\nvip = \"198.18.1.1\"\nport = 80\nprotocol = \"udp\"\nmode = \"ipip\"\n",
        ))
        .unwrap();
        assert!(c.services[0].backends.is_empty());
    }

    #[test]
    fn unknown_key_names_file_line_and_field() {
        let err = parse("[dataplane]\ninterface = \"eth0\"\nintreface = \"x\"\n").unwrap_err();
        let ConfigError::Parse { line, field, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(
            (*line, field.as_deref()),
            (Some(3), Some("dataplane.intreface"))
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with("test.toml:3: dataplane.intreface: unknown field `intreface`"),
            "{msg}"
        );
    }

    #[test]
    fn type_errors_name_the_key_inside_inline_tables() {
        let text = with_dp(
            "[[service]]\nname = \"a\"\nvip = \"198.18.1.1\"\nport = 80\nprotocol = \"tcp\"\n\
             mode = \"l2dsr\"\nbackend = [ { address = \"198.18.0.11\", health = { rise = \"x\" } } ]\n",
        );
        let err = parse(&text).unwrap_err();
        let ConfigError::Parse { line, field, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(*line, Some(line_of(&text, text.find("rise").unwrap())));
        assert_eq!(field.as_deref(), Some("service.backend.health.rise"));
        // An unknown key in a backend's override.
        let err = parse(&text.replace("rise = \"x\"", "rsie = 2")).unwrap_err();
        assert!(
            err.to_string()
                .contains(": service.backend.health.rsie: unknown field"),
            "{err}"
        );
    }

    #[test]
    fn bad_enum_value_is_rejected_with_its_key() {
        let err = parse("[dataplane]\ninterface = \"eth0\"\nxdp_mode = \"fast\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("test.toml:3: dataplane.xdp_mode: unknown variant `fast`"),
            "{msg}"
        );
    }

    #[test]
    fn missing_required_keys_are_named() {
        let err = parse("[dataplane]\nmtu = 1500\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("test.toml:1: dataplane: missing field `interface`"),
            "{err}"
        );
        let err = parse("[admin]\nlisten = \"127.0.0.1:1\"\n").unwrap_err();
        assert_eq!(err.to_string(), "test.toml:1: missing field `dataplane`");
        let err = parse(&with_dp("[[service]]\nname = \"a\"\n")).unwrap_err();
        assert!(
            err.to_string().contains(":4: service: missing field `vip`"),
            "{err}"
        );
    }

    const TWO: &str = r#"[dataplane]
interface = "eth0"

[[service]]
name = "web"
vip = "198.18.1.1"
port = 80
protocol = "tcp"
mode = "l2dsr"

[[service.backend]]
address = "198.18.0.11"

[[service.backend]]
address = "198.18.0.11"

[[service]]
name = "web"
vip = "198.18.1.1"
port = 80
protocol = "tcp"
mode = "l2dsr"
"#;

    #[test]
    fn duplicates_are_reported_where_they_repeat() {
        let all = issues(TWO);
        assert_eq!(all.len(), 3, "{all:#?}");
        let msg = ConfigError::Invalid {
            path: "gateway.toml".into(),
            issues: all.clone(),
        }
        .to_string();
        let lines: Vec<&str> = msg.lines().collect();
        assert_eq!(
            lines,
            [
                "gateway.toml:15: service \"web\": backend.address: 198.18.0.11 listed twice (first at line 12)",
                "gateway.toml:18: service \"web\": name: \"web\" is already the name of the service at line 5",
                "gateway.toml:19: service \"web\": vip: 198.18.1.1 port 80/tcp is already used by service \"web\" (line 5)",
            ]
        );
        // Another protocol on the same VIP and port is a different service.
        let fixed = TWO.replacen("address = \"198.18.0.11\"", "address = \"198.18.0.12\"", 1);
        let fixed = fixed.replacen("name = \"web\"", "name = \"dns\"", 1);
        let fixed = fixed.replacen("protocol = \"tcp\"", "protocol = \"udp\"", 1);
        parse(&fixed).unwrap();
    }

    #[test]
    fn ipv6_backend_duplicates_compare_addresses_not_text() {
        let text = with_dp(
            "[[service]]\nname = \"a\"\nvip = \"fd00:1::1\"\nport = 80\nprotocol = \"tcp\"\n\
             mode = \"l2dsr\"\n[[service.backend]]\naddress = \"fd00::11\"\n\
             [[service.backend]]\naddress = \"fd00:0:0::0011\"\n",
        );
        let i = only(&text, "backend.address");
        assert_eq!(i.line, line(&text, "fd00:0:0::0011"));
        assert!(i.message.contains("listed twice"), "{i}");
    }

    fn service(extra: &str, backends: &str) -> String {
        with_dp(&format!(
            "[[service]]\nname = \"s\"\nvip = \"198.18.1.1\"\nport = 80\nprotocol = \"tcp\"\n\
             mode = \"l2dsr\"\n{extra}\n{backends}"
        ))
    }

    const B1: &str = "[[service.backend]]\naddress = \"198.18.0.11\"\n";

    #[test]
    fn bad_addresses() {
        let text = service("", "[[service.backend]]\naddress = \"198.18.0.300\"\n")
            .replace("vip = \"198.18.1.1\"", "vip = \"0.0.0.0\"");
        let all = issues(&text);
        assert_eq!(all.len(), 2, "{all:#?}");
        assert_eq!(
            (all[0].line, all[0].field.as_str()),
            (line(&text, "0.0.0.0"), "vip")
        );
        assert!(all[0].message.contains("unspecified"), "{}", all[0]);
        assert_eq!(
            (all[1].line, all[1].field.as_str()),
            (line(&text, "198.18.0.300"), "backend.address")
        );

        let text = with_dp("[admin]\nlisten = \"localhost\"\n");
        assert_eq!(only(&text, "admin.listen").line, 5);
        let text = "[dataplane]\ninterface = \"eth0\"\nipip_source_v6 = \"198.18.0.2\"\n";
        assert_eq!(only(text, "dataplane.ipip_source_v6").line, 3);
    }

    #[test]
    fn backend_family_must_match_the_vip() {
        let text = service("", "[[service.backend]]\naddress = \"fd00::11\"\n");
        let i = only(&text, "backend.address");
        assert_eq!(i.line, line(&text, "fd00::11"));
        assert!(i.message.contains("same family"), "{i}");
    }

    #[test]
    fn table_size_rules() {
        let not_prime = service("table_size = 1000", B1);
        let i = only(&not_prime, "table_size");
        assert_eq!(i.line, line(&not_prime, "table_size"));
        assert!(i.message.contains("not prime"), "{i}");

        let too_small = service("table_size = 2", B1);
        assert!(
            only(&too_small, "table_size")
                .message
                .contains("out of range 3..")
        );

        let three: String = (11..=13)
            .map(|n| format!("[[service.backend]]\naddress = \"198.18.0.{n}\"\n"))
            .collect();
        let few = service("table_size = 3", &three);
        assert!(
            only(&few, "table_size")
                .message
                .contains("larger than the number of backends (3)")
        );

        let over = service("table_size = 131071", B1);
        let i = only(&over, "table_size");
        assert!(
            i.message
                .contains("larger than dataplane.max_table_size (65537)"),
            "{i}"
        );
        parse(&over.replace("[dataplane]\n", "[dataplane]\nmax_table_size = 131071\n")).unwrap();

        let not_prime_max =
            with_dp("").replace("[dataplane]\n", "[dataplane]\nmax_table_size = 65536\n");
        assert_eq!(only(&not_prime_max, "dataplane.max_table_size").line, 2);
    }

    #[test]
    fn a_smaller_max_table_size_lowers_the_default_table_size() {
        let text = service("", B1).replace("[dataplane]\n", "[dataplane]\nmax_table_size = 1021\n");
        assert_eq!(parse(&text).unwrap().services[0].table_size, 1021);
    }

    #[test]
    fn weight_out_of_range() {
        let text = service(
            "",
            "[[service.backend]]\naddress = \"198.18.0.11\"\nweight = 0\n",
        );
        let i = only(&text, "backend.weight");
        assert_eq!(i.line, line(&text, "weight"));
        assert_eq!(i.service.as_deref(), Some("s"));
        assert!(i.message.contains("0 is out of range 1..=10000"), "{i}");
        parse(&text.replace("weight = 0", "weight = 10000")).unwrap();
    }

    #[test]
    fn more_services_than_max_services() {
        let mut text = with_dp("").replace("[dataplane]\n", "[dataplane]\nmax_services = 2\n");
        for n in 1..=3 {
            text += &format!("[[service]]\nname = \"s{n}\"\nvip = \"198.18.1.{n}\"\n");
            if n < 3 {
                text += "port = 80\nprotocol = \"tcp\"\nmode = \"l2dsr\"\n";
            }
        }
        // Reported at the first service too many, in line order with its other issues.
        let bad_port = format!("{}port = 0\nprotocol = \"tcp\"\nmode = \"l2dsr\"\n", text);
        let all = issues(&bad_port);
        let got: Vec<(usize, &str)> = all.iter().map(|i| (i.line, i.field.as_str())).collect();
        let header = line(&text, "name = \"s3\"") - 1;
        assert_eq!(got, [(header, "service"), (header + 3, "port")]);
        let text = format!("{text}port = 80\nprotocol = \"tcp\"\nmode = \"l2dsr\"\n");
        let i = only(&text, "service");
        assert_eq!(i.service.as_deref(), Some("s3"));
        assert_eq!(i.line, header);
        assert!(
            i.message
                .contains("3 services, but dataplane.max_services is 2"),
            "{i}"
        );
        assert!(parse(&text.replace("max_services = 2", "max_services = 3")).is_ok());
    }

    #[test]
    fn mtu_range() {
        for (mtu, ok) in [
            (0, true),
            (1280, true),
            (9000, true),
            (1279, false),
            (70000, false),
        ] {
            let text = format!("[dataplane]\ninterface = \"eth0\"\nmtu = {mtu}\n");
            match parse(&text) {
                Ok(c) => assert!(ok && c.dataplane.mtu == mtu, "{mtu}"),
                Err(_) => {
                    assert!(!ok, "{mtu}");
                    assert_eq!(only(&text, "dataplane.mtu").line, 3);
                }
            }
        }
    }

    #[test]
    fn dataplane_ranges() {
        let text = "[dataplane]\ninterface = \"a/b\"\nconntrack_size = 10\nmax_services = 0\n\
                    ipip_source_v4_vary_bits = 17\n";
        let fields: Vec<(usize, String)> = issues(text)
            .into_iter()
            .map(|i| (i.line, i.field))
            .collect();
        assert_eq!(
            fields,
            [
                (2, "dataplane.interface".to_string()),
                (3, "dataplane.conntrack_size".to_string()),
                (4, "dataplane.max_services".to_string()),
                (5, "dataplane.ipip_source_v4_vary_bits".to_string()),
            ]
        );
    }

    #[test]
    fn timeout_longer_than_interval() {
        let text = service(
            "[service.health]\ninterval = \"1s\"\ntimeout = \"2s\"\n",
            B1,
        );
        let i = only(&text, "health.timeout");
        assert_eq!(i.line, line(&text, "timeout"));
        assert!(i.message.contains("longer than interval"), "{i}");
        // Reported once, though every backend inherits the check, one with an override.
        assert_eq!(issues(&text).len(), 1);
        let text = format!(
            "{text}[[service.backend]]\naddress = \"198.18.0.12\"\nhealth = {{ port = 8080 }}\n"
        );
        assert_eq!(issues(&text).len(), 1, "{:#?}", issues(&text));

        // A backend override that shortens the interval below the service's timeout is
        // blamed on the override.
        let text = service(
            "[service.health]\ntimeout = \"800ms\"\n",
            "[[service.backend]]\naddress = \"198.18.0.11\"\nhealth = { interval = \"500ms\" }\n",
        );
        let i = only(&text, "backend.health.interval");
        assert_eq!(i.line, line(&text, "health = {"));
        // A default that breaks the rule is blamed on the key that was written.
        let short = service("[service.health]\ninterval = \"200ms\"\n", "");
        assert_eq!(only(&short, "health.interval").line, line(&short, "200ms"));
        // Equal is fine.
        parse(&text.replace("800ms", "500ms")).unwrap();
    }

    #[test]
    fn check_durations_have_a_floor() {
        let text = service(
            "[service.health]\ninterval = \"5ms\"\ndown_interval = \"1 s\"\n",
            "",
        );
        let all = issues(&text);
        assert_eq!(all.len(), 2, "{all:#?}");
        assert_eq!(
            (all[0].line, all[0].field.as_str()),
            (line(&text, "interval = \"5ms\""), "health.interval")
        );
        assert!(all[0].message.contains("out of range 10ms"), "{}", all[0]);
        assert_eq!(
            (all[1].line, all[1].field.as_str()),
            (line(&text, "1 s"), "health.down_interval")
        );
        assert!(all[1].message.contains("unknown unit"), "{}", all[1]);
        let text = service("slowstart = \"2h\"\n", "");
        assert!(
            only(&text, "slowstart")
                .message
                .contains("out of range 0ns..=3600s")
        );
    }

    #[test]
    fn http_only_keys_need_an_http_check() {
        let text = service(
            "[service.health]\npath = \"/healthz\"\nexpect_status = [\"200\"]\n",
            "",
        );
        let all = issues(&text);
        let fields: Vec<(usize, &str)> = all.iter().map(|i| (i.line, i.field.as_str())).collect();
        assert_eq!(
            fields,
            [
                (line(&text, "path ="), "health.path"),
                (line(&text, "expect_status"), "health.expect_status")
            ]
        );
        assert!(all[0].message.contains("kind = \"http\""), "{}", all[0]);
        // A backend that switches an http service to tcp simply does not use them...
        let http = text.replace("[service.health]\n", "[service.health]\nkind = \"http\"\n");
        let c = parse(&format!("{http}{B1}health = {{ kind = \"tcp\" }}\n")).unwrap();
        assert_eq!(c.services[0].backends[0].health.kind, CheckKind::Tcp);
        // ...but may not set them itself.
        let text = service("", &format!("{B1}health = {{ host = \"example.org\" }}\n"));
        assert_eq!(only(&text, "backend.health.host").line, line(&text, "host"));
    }

    #[test]
    fn ipip_needs_the_matching_source() {
        let v4 = service("", B1).replace("mode = \"l2dsr\"", "mode = \"ipip\"");
        parse(&v4).unwrap();
        let text = v4.replace("ipip_source_v4 = \"198.18.0.2\"\n", "");
        let i = only(&text, "mode");
        assert_eq!(i.line, line(&text, "mode"));
        assert!(i.message.contains("dataplane.ipip_source_v4"), "{i}");

        let v6 = service("", "")
            .replace("mode = \"l2dsr\"", "mode = \"ipip\"")
            .replace("vip = \"198.18.1.1\"", "vip = \"fd00:1::1\"");
        assert!(
            only(&v6, "mode")
                .message
                .contains("dataplane.ipip_source_v6")
        );
        // A bad source is reported as bad, not again as missing.
        let bad = v4.replace("\"198.18.0.2\"", "\"nope\"");
        let all = issues(&bad);
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_eq!(all[0].field, "dataplane.ipip_source_v4");
    }

    #[test]
    fn status_ranges() {
        assert_eq!(parse_status_range("200-299"), Ok(200..=299));
        assert_eq!(parse_status_range("204"), Ok(204..=204));
        for bad in [
            "", "2xx", "99", "600", "299-200", "200-", "0200", "200-600", " 200",
        ] {
            assert!(parse_status_range(bad).is_err(), "{bad:?}");
        }
        let text = service(
            "[service.health]\nkind = \"http\"\nexpect_status = [\n  \"200-299\",\n  204,\n  \"300-200\",\n  \"700\",\n]\n",
            "",
        );
        let all = issues(&text);
        let lines: Vec<usize> = all.iter().map(|i| i.line).collect();
        assert_eq!(lines, [line(&text, "300-200"), line(&text, "700")]);
        assert!(all.iter().all(|i| i.field == "health.expect_status"));
        let ok = text.replace("  \"300-200\",\n  \"700\",\n", "");
        let CheckKind::Http(h) = &parse(&ok).unwrap().services[0].health.kind else {
            panic!("not http")
        };
        assert_eq!(h.expect_status, [200..=299, 204..=204]);
        let empty = service(
            "[service.health]\nkind = \"http\"\nexpect_status = []\n",
            "",
        );
        assert_eq!(
            only(&empty, "health.expect_status").line,
            line(&empty, "expect_status")
        );
    }

    #[test]
    fn several_problems_are_all_reported() {
        let text = r#"[dataplane]
interface = "eth0"
mtu = 100

[[service]]
name = "Web"
vip = "198.18.1.1"
port = 0
protocol = "tcp"
mode = "l2dsr"
panic_threshold = 1.0

[service.health]
timeout = "nope"
jitter = 0.9

[[service.backend]]
address = "fd00::11"
weight = 20000
"#;
        let all = issues(text);
        let got: Vec<(usize, &str)> = all.iter().map(|i| (i.line, i.field.as_str())).collect();
        assert_eq!(
            got,
            [
                (3, "dataplane.mtu"),
                (6, "name"),
                (8, "port"),
                (11, "panic_threshold"),
                (14, "health.timeout"),
                (15, "health.jitter"),
                (18, "backend.address"),
                (19, "backend.weight"),
            ]
        );
        let err = parse(text).unwrap_err().to_string();
        assert_eq!(err.lines().count(), 8, "{err}");
        assert!(err.lines().all(|l| l.starts_with("test.toml:")), "{err}");
    }

    #[test]
    fn backend_health_override_merges_with_the_service_check() {
        let text = service(
            "[service.health]\nkind = \"http\"\npath = \"/healthz\"\ninterval = \"2s\"\nrise = 5\n",
            "[[service.backend]]\naddress = \"198.18.0.11\"\n\
             [[service.backend]]\naddress = \"198.18.0.12\"\nhealth = { port = 8080, interval = \"4s\", initial = \"up\" }\n",
        );
        let c = parse(&text).unwrap();
        let s = &c.services[0];
        let (plain, over) = (&s.backends[0].health, &s.backends[1].health);
        assert_eq!(*plain, s.health);
        assert_eq!(
            (plain.port, plain.interval, plain.initial_up),
            (80, Duration::from_secs(2), false)
        );
        assert_eq!(
            (over.port, over.interval, over.initial_up),
            (8080, Duration::from_secs(4), true)
        );
        // Inherited from the service, and defaults derived from the merged interval.
        assert_eq!(over.rise, 5);
        assert_eq!(over.kind, s.health.kind);
        assert_eq!(over.down_interval, Duration::from_secs(8));
        assert_eq!(over.fast_interval, Duration::from_secs(1));
    }

    #[test]
    fn durations_parse() {
        let ms = Duration::from_millis;
        for (s, d) in [
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("250ms", ms(250)),
            ("1s", ms(1000)),
            ("1.5s", ms(1500)),
            ("0.25s", ms(250)),
            ("2m", ms(120_000)),
            ("1h", ms(3_600_000)),
            ("1.5ms", Duration::from_micros(1500)),
        ] {
            assert_eq!(parse_duration(s), Ok(d), "{s}");
        }
        for s in [
            "",
            "1",
            "s",
            "1.s",
            ".5s",
            "-1s",
            "1 s",
            "1sec",
            "1e3ms",
            "1.0000000001s",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn primes() {
        let small: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65537) && is_prime(4_294_967_291));
        assert!(!is_prime(65536) && !is_prime(65535) && !is_prime(4_294_967_295) && !is_prime(25));
    }

    #[test]
    fn load_names_the_file() {
        let path =
            std::env::temp_dir().join(format!("gateway-config-test-{}.toml", std::process::id()));
        std::fs::write(&path, "[dataplane]\ninterface = \"eth0\"\nmtu = 1\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(
            err.starts_with(&format!("{}:3: dataplane.mtu: ", path.display())),
            "{err}"
        );
        let err = Config::load(&path).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
        let chain = format!("{:#}", anyhow::Error::from(err));
        assert_eq!(chain.matches("os error").count(), 1, "{chain}");
    }
}
