//! Validation of the file as written into the types of [`super::types`]: every problem is
//! collected with its line and key.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::{Range, RangeInclusive},
    path::{Path, PathBuf},
    time::Duration,
};

use gateway_common::{
    DEFAULT_CONNTRACK_SIZE, DEFAULT_NAT_SIZE, DEFAULT_TABLE_SIZE, MAX_BACKENDS, MAX_SERVICES,
    MAX_SNAT_ADDRS,
};
use toml::Spanned;

use super::{
    error::{Issue, line_of},
    health::Layers,
    raw::*,
    types::*,
};
use crate::maglev::is_prime;

// Defaults and limits (docs/config.md lists them too)

pub(super) const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 9180);
pub(super) const CONNTRACK_SIZE: RangeInclusive<i64> = 1024..=67_108_864;
pub(super) const DEFAULT_MTU: u32 = 1500;
pub(super) const DEFAULT_SNAT_PORTS: RangeInclusive<u16> = 1024..=65535;
/// The IPv6 minimum link MTU (RFC 8200 section 5); also safe for IPv4.
pub(super) const MIN_MTU: i64 = 1280;
pub(super) const MAX_MTU: i64 = 65535;
pub(super) const DEFAULT_MAX_SERVICES: u32 = 16;
pub(super) const VARY_BITS: RangeInclusive<i64> = 0..=16;
pub const WEIGHT: RangeInclusive<i64> = 1..=10_000;
pub(super) const DEFAULT_WEIGHT: u32 = 100;
pub(super) const PORT: RangeInclusive<i64> = 1..=65535;
pub(super) const RISE_FALL: RangeInclusive<i64> = 1..=100;
pub(super) const PASSIVE_FALL: RangeInclusive<i64> = 0..=100;
pub(super) const DEFAULT_PASSIVE_FALL: u32 = 3;
pub(super) const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
pub(super) const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);
/// `dataplane.idle_timeout`: long enough for an idle connection of a pool that sends no
/// keepalives for a while; the cost of a long one is only that a changed slot keeps using
/// conntrack that much longer.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
pub(super) const MIN_CHECK_DURATION: Duration = Duration::from_millis(10);
pub(super) const MAX_DURATION: Duration = Duration::from_secs(3600);
pub(super) const DEFAULT_JITTER: f64 = 0.1;
pub(super) const MAX_JITTER: f64 = 0.5;
pub(super) const STATUS: RangeInclusive<u16> = 100..=599;
pub(super) const DEFAULT_EXPECT_STATUS: RangeInclusive<u16> = 200..=399;
pub(super) const MAX_NAME_LEN: usize = 32;

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

/// Walks the raw config, collecting issues. Each step returns `None` only after reporting
/// why, so a config comes out exactly when there are no issues.
pub(super) struct Validator<'a> {
    pub(super) text: &'a str,
    /// The service being validated, named in its issues.
    pub(super) service: Option<String>,
    pub(super) issues: Vec<Issue>,
}

/// What services need to know of `[dataplane]`; `None` where the value itself is invalid
/// (and already reported), which skips the checks that depend on it.
pub(super) struct Limits {
    pub(super) max_services: Option<u32>,
    pub(super) max_table_size: Option<u32>,
    /// Whether the key is present at all: a bad address is reported once, as bad, and not
    /// again as missing.
    pub(super) ipip_source_v4: bool,
    pub(super) ipip_source_v6: bool,
    /// Whether `snat_v4` / `snat_v6` hold an address (full-NAT services need their family's).
    pub(super) snat_v4: bool,
    pub(super) snat_v6: bool,
    /// Whether there is a `[bgp]` section (services may then set `communities` and `med`).
    pub(super) bgp: bool,
    /// `[protection]`'s source limits, which a service's own override (`None`: invalid).
    pub(super) protection: Option<SourceLimits>,
}

impl Validator<'_> {
    pub(super) fn report(
        &mut self,
        span: Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
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
    pub(super) fn abs_path(
        &mut self,
        v: Option<&Spanned<String>>,
        field: &str,
    ) -> Option<Option<PathBuf>> {
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

    pub(super) fn int<T: TryFrom<i64>>(
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
    pub(super) fn duration(
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

    /// An optional address of one family (`A`, described as `what`) that a packet can
    /// carry: `dataplane.ipip_source_v4`, `bgp.next_hop_v6`, ... `None` when it is invalid
    /// (reported).
    pub(super) fn family_address<A>(
        &mut self,
        raw: Option<&Spanned<String>>,
        field: &str,
        what: &str,
    ) -> Option<Option<A>>
    where
        A: std::str::FromStr + Copy + std::fmt::Display + Into<IpAddr>,
    {
        let Some(s) = raw else {
            return Some(None);
        };
        let msg = match s.get_ref().parse::<A>() {
            Ok(a) => match unusable(a.into()) {
                None => return Some(Some(a)),
                Some(why) => format!("{a} is {why}"),
            },
            Err(_) => format!("{:?} is not {what}", s.get_ref()),
        };
        self.report(s.span(), field, msg);
        None
    }

    /// A SNAT pool: addresses of one family, usable, distinct, at most `MAX_SNAT_ADDRS`.
    fn snat_pool<A>(
        &mut self,
        raw: Option<&Vec<Spanned<String>>>,
        field: &str,
        what: &str,
    ) -> Option<Vec<A>>
    where
        A: std::str::FromStr + Copy + std::fmt::Display + Into<IpAddr> + PartialEq,
    {
        let mut out = Some(Vec::new());
        for s in raw.into_iter().flatten() {
            match self.family_address::<A>(Some(s), field, what) {
                Some(Some(a)) => {
                    if out.as_ref().is_some_and(|v| v.contains(&a)) {
                        self.report(s.span(), field, format!("{a} is listed twice"));
                        out = None;
                    } else if let Some(v) = out.as_mut() {
                        v.push(a);
                    }
                }
                _ => out = None,
            }
        }
        if let (Some(v), Some(list)) = (&out, raw)
            && v.len() > MAX_SNAT_ADDRS
        {
            let span = list.first().map(|m| m.span()).unwrap_or_default();
            let msg = format!("{} addresses: at most {MAX_SNAT_ADDRS}", v.len());
            self.report(span, field, msg);
            return None;
        }
        out
    }

    /// An address a service or backend uses: parsed, and one a packet can be sent to.
    pub(super) fn address(&mut self, raw: &Spanned<String>, field: &str) -> Option<IpAddr> {
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

    pub(super) fn config(&mut self, raw: &RawConfig) -> Option<Config> {
        let (dataplane, mut limits) = self.dataplane(&raw.dataplane);
        let admin = self.admin(raw.admin.as_ref());
        let bgp = self.bgp(raw.bgp.as_ref());
        limits.bgp = raw.bgp.is_some();
        let protection = self.protection(raw.protection.as_ref());
        limits.protection = protection.as_ref().map(|p| p.defaults);
        // A route is per VIP: the services that share one agree on its MED.
        let mut meds: HashMap<IpAddr, (Option<i64>, &str, usize)> = HashMap::new();

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
            let snat = dataplane.as_ref().is_some_and(|d| {
                vip.is_some_and(|v| match v {
                    IpAddr::V4(a) => d.snat_v4.contains(&a),
                    IpAddr::V6(a) => d.snat_v6.contains(&a),
                })
            });
            if let (true, Some(vip)) = (snat, vip) {
                let msg = format!(
                    "{vip} is also a SNAT address (dataplane.snat_v4/snat_v6): answers to full-NAT \
                     flows could not be told from traffic for this VIP"
                );
                self.report(s.vip.span(), "vip", msg);
            }
            if let Some(vip) = vip {
                let med = s.med.as_ref().map(|m| *m.get_ref());
                match meds.get(&vip) {
                    Some((other_med, other, at)) if *other_med != med => {
                        let show = |m: Option<i64>| m.map_or("none".to_string(), |m| m.to_string());
                        let msg = format!(
                            "med {} differs from service {other:?}'s ({}, line {at}) on the same \
                             VIP: a route has one MED",
                            show(med),
                            show(*other_med)
                        );
                        let span = s.med.as_ref().map_or(s.vip.span(), Spanned::span);
                        self.report(span, "med", msg);
                    }
                    Some(_) => {}
                    None => {
                        meds.insert(vip, (med, name, line));
                    }
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
            bgp: bgp?,
            protection: protection?,
            services: services?,
        })
    }

    pub(super) fn dataplane(
        &mut self,
        raw: &Spanned<RawDataplane>,
    ) -> (Option<DataplaneConfig>, Limits) {
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

        let mut checks_off = Some(0);
        for name in d.skip_checks.iter().flatten() {
            match gateway_common::CHECK_NAMES
                .iter()
                .find(|(_, n)| n == name.get_ref())
            {
                Some((bit, _)) => checks_off = checks_off.map(|c| c | bit),
                None => {
                    let known: Vec<&str> = gateway_common::CHECK_NAMES
                        .iter()
                        .map(|(_, n)| *n)
                        .collect();
                    let msg = format!(
                        "unknown check {:?} (the checks: {})",
                        name.get_ref(),
                        known.join(", ")
                    );
                    self.report(name.span(), "dataplane.skip_checks", msg);
                    checks_off = None;
                }
            }
        }

        let mut extra_macs = Some(Vec::new());
        for m in d.extra_macs.iter().flatten() {
            match parse_mac(m.get_ref()) {
                Some(mac) if mac[0] & 1 == 0 && mac != [0; 6] => {
                    if let Some(v) = extra_macs.as_mut() {
                        v.push(mac);
                    }
                }
                _ => {
                    let msg = format!(
                        "{:?} is not a unicast MAC address (six hex pairs, like 02:00:5e:00:01:01)",
                        m.get_ref()
                    );
                    self.report(m.span(), "dataplane.extra_macs", msg);
                    extra_macs = None;
                }
            }
        }
        if let (Some(v), Some(list)) = (&extra_macs, &d.extra_macs)
            && v.len() >= gateway_common::MAX_LOCAL_MACS
        {
            let span = list.first().map(|m| m.span()).unwrap_or_default();
            let msg = format!(
                "{} MACs: at most {} besides the interface's own",
                v.len(),
                gateway_common::MAX_LOCAL_MACS - 1
            );
            self.report(span, "dataplane.extra_macs", msg);
            extra_macs = None;
        }

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
                let stride = u64::from(m).div_ceil(32) * 32;
                let slots = 2 * u64::from(max_services.unwrap_or(1)) * stride;
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

        let idle_timeout = self.duration(
            d.idle_timeout.as_ref(),
            DEFAULT_IDLE_TIMEOUT,
            Duration::from_secs(60)..=Duration::from_secs(7 * 24 * 3600),
            "dataplane.idle_timeout",
        );
        let ipip_source_v4 = self.family_address::<Ipv4Addr>(
            d.ipip_source_v4.as_ref(),
            "dataplane.ipip_source_v4",
            "an IPv4 address",
        );
        let ipip_source_v4_vary_bits = self.int(
            d.ipip_source_v4_vary_bits.as_ref(),
            0u8,
            VARY_BITS,
            "dataplane.ipip_source_v4_vary_bits",
        );
        let ipip_source_v6 = self.family_address::<Ipv6Addr>(
            d.ipip_source_v6.as_ref(),
            "dataplane.ipip_source_v6",
            "an IPv6 address",
        );

        let nat_size = self.int(
            d.nat_size.as_ref(),
            DEFAULT_NAT_SIZE,
            CONNTRACK_SIZE,
            "dataplane.nat_size",
        );
        let snat_v4 =
            self.snat_pool::<Ipv4Addr>(d.snat_v4.as_ref(), "dataplane.snat_v4", "an IPv4 address");
        let snat_v6 =
            self.snat_pool::<Ipv6Addr>(d.snat_v6.as_ref(), "dataplane.snat_v6", "an IPv6 address");
        let snat_ports = match &d.snat_ports {
            None => Some(DEFAULT_SNAT_PORTS),
            Some(r) => {
                let parsed = r.get_ref().split_once('-').and_then(|(a, b)| {
                    Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?))
                });
                match parsed {
                    Some((min, max)) if min >= 1 && min <= max => Some(min..=max),
                    _ => {
                        let msg = format!(
                            "{:?} is not a port range (\"first-last\", 1 <= first <= last <= 65535)",
                            r.get_ref()
                        );
                        self.report(r.span(), "dataplane.snat_ports", msg);
                        None
                    }
                }
            }
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
            snat_v4: d.snat_v4.as_ref().is_some_and(|v| !v.is_empty()),
            snat_v6: d.snat_v6.as_ref().is_some_and(|v| !v.is_empty()),
            bgp: false,
            protection: None,
        };
        let config = (|| {
            Some(DataplaneConfig {
                interface: interface?,
                xdp_mode: d.xdp_mode.unwrap_or_default(),
                conntrack_size: conntrack_size?,
                mtu: mtu?,
                idle_timeout: idle_timeout?,
                max_services: max_services?,
                max_table_size: max_table_size?,
                ipip_source_v4: ipip_source_v4?,
                ipip_source_v4_vary_bits: ipip_source_v4_vary_bits?,
                ipip_source_v6: ipip_source_v6?,
                checks_off: checks_off?,
                extra_macs: extra_macs?,
                nat_size: nat_size?,
                snat_v4: snat_v4?,
                snat_v6: snat_v6?,
                snat_ports: snat_ports?,
                kernel_log: d.kernel_log.unwrap_or_default(),
                pin_dir: pin_dir?,
                on_exit: d.on_exit.unwrap_or_default(),
            })
        })();
        (config, limits)
    }

    pub(super) fn admin(&mut self, raw: Option<&Spanned<RawAdmin>>) -> Option<AdminConfig> {
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

    pub(super) fn service(
        &mut self,
        raw: &Spanned<RawService>,
        limits: &Limits,
    ) -> Option<ServiceConfig> {
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
        if mode == Mode::Fullnat {
            let missing = match vip {
                Some(IpAddr::V4(_)) if !limits.snat_v4 => Some(("snat_v4", "IPv4")),
                Some(IpAddr::V6(_)) if !limits.snat_v6 => Some(("snat_v6", "IPv6")),
                _ => None,
            };
            if let Some((key, family)) = missing {
                let msg = format!(
                    "fullnat with an {family} VIP needs dataplane.{key}, the addresses backends \
                     see connections from"
                );
                self.report(s.mode.span(), "mode", msg);
            }
        }
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

        let (communities, med) = self.route_keys(s, limits.bgp);
        let base = limits.protection.unwrap_or_default();
        let protection = match &s.protection {
            Some(p) => self.source_limits(p.get_ref(), &base, "protection."),
            None => Some(base),
        };

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
            communities: communities?,
            med: med?,
            protection: protection?,
        })
    }

    pub(super) fn table_size(&mut self, raw: &Spanned<RawService>, limits: &Limits) -> Option<u32> {
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

    pub(super) fn backend(
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
}

/// Why `addr` cannot be a VIP, a backend or an encapsulation source, if it cannot.
pub(super) fn unusable(addr: IpAddr) -> Option<&'static str> {
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
pub(super) fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

pub(super) fn valid_service_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

pub(super) fn has_space_or_control(s: &str) -> bool {
    s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A MAC address written as six colon-separated hex pairs.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}
