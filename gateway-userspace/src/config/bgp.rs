//! `[bgp]` and its `[[bgp.neighbor]]`s, and the keys a service adds to its route
//! (`communities`, `med`).
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use toml::Spanned;

use super::{raw::*, types::*, validate::*};

pub(super) const LOCAL_AS: std::ops::RangeInclusive<i64> = 1..=4_294_967_295;
/// The 2-byte stand-in for 4-byte AS numbers (RFC 6793): never a real AS.
const AS_TRANS: u32 = 23456;
pub(super) const DEFAULT_ANNOUNCE_AFTER: Duration = Duration::from_secs(2);
pub(super) const DEFAULT_AGENT_GRACE: Duration = Duration::from_secs(10);
pub(super) const DEFAULT_WITHDRAW_WAIT: Duration = Duration::from_secs(2);
pub(super) const DEFAULT_HOLD_TIME: Duration = Duration::from_secs(9);
/// BGP's smallest non-zero hold time (RFC 4271 4.2) and its largest.
const HOLD_TIME: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(3)..=Duration::from_secs(65535);
const MAX_PASSWORD_LEN: usize = 80;
const MAX_COMMUNITIES: usize = 32;

impl Validator<'_> {
    pub(super) fn bgp(&mut self, raw: Option<&Spanned<RawBgp>>) -> Option<Option<BgpConfig>> {
        let Some(raw) = raw else {
            return Some(None);
        };
        let b = raw.get_ref();
        let local_as = self.asn(&b.local_as, "bgp.local_as");
        let router_id = match b.router_id.get_ref().parse::<Ipv4Addr>() {
            Ok(id) if !id.is_unspecified() => Some(id),
            _ => {
                let msg = format!(
                    "{:?} is not a router id (a non-zero IPv4 address)",
                    b.router_id.get_ref()
                );
                self.report(b.router_id.span(), "bgp.router_id", msg);
                None
            }
        };
        let next_hop_v4 = self.family_address::<Ipv4Addr>(
            b.next_hop_v4.as_ref(),
            "bgp.next_hop_v4",
            "an IPv4 address",
        );
        let next_hop_v6 = self.family_address::<Ipv6Addr>(
            b.next_hop_v6.as_ref(),
            "bgp.next_hop_v6",
            "an IPv6 address",
        );
        let communities = self.communities(b.communities.as_ref(), "bgp.communities");
        let range = Duration::ZERO..=MAX_DURATION;
        let announce_after = self.duration(
            b.announce_after.as_ref(),
            DEFAULT_ANNOUNCE_AFTER,
            range.clone(),
            "bgp.announce_after",
        );
        let withdraw_after = self.duration(
            b.withdraw_after.as_ref(),
            Duration::ZERO,
            range,
            "bgp.withdraw_after",
        );
        let agent_grace = self.duration(
            b.agent_grace.as_ref(),
            DEFAULT_AGENT_GRACE,
            Duration::from_secs(1)..=MAX_DURATION,
            "bgp.agent_grace",
        );
        let withdraw_wait = self.duration(
            b.withdraw_wait.as_ref(),
            DEFAULT_WITHDRAW_WAIT,
            Duration::ZERO..=Duration::from_secs(60),
            "bgp.withdraw_wait",
        );
        let bird_dir = self.abs_path(b.bird_dir.as_ref(), "bgp.bird_dir");
        let bird_socket = self.abs_path(b.bird_socket.as_ref(), "bgp.bird_socket");

        if b.neighbor.is_empty() {
            self.report(
                raw.span(),
                "bgp.neighbor",
                "[bgp] needs at least one [[bgp.neighbor]]",
            );
        }
        let mut seen: HashMap<IpAddr, usize> = HashMap::new();
        let mut neighbors = Some(Vec::new());
        for n in &b.neighbor {
            let built = self.neighbor(n, &mut seen);
            match (built, neighbors.as_mut()) {
                (Some(n), Some(list)) => list.push(n),
                _ => neighbors = None,
            }
        }
        Some(Some(BgpConfig {
            local_as: local_as?,
            router_id: router_id?,
            neighbors: neighbors.filter(|n| !n.is_empty())?,
            next_hop_v4: next_hop_v4?,
            next_hop_v6: next_hop_v6?,
            communities: communities?,
            announce_after: announce_after?,
            withdraw_after: withdraw_after?,
            agent_grace: agent_grace?,
            withdraw_wait: withdraw_wait?,
            bird_dir: bird_dir?,
            bird_socket: bird_socket?,
            announce_snat: b.announce_snat.unwrap_or(true),
        }))
    }

    fn asn(&mut self, raw: &Spanned<i64>, field: &str) -> Option<u32> {
        let asn: u32 = self.int(Some(raw), 0, LOCAL_AS, field)?;
        if asn == AS_TRANS {
            let msg = format!("{AS_TRANS} is AS_TRANS (RFC 6793), not an AS of its own");
            self.report(raw.span(), field, msg);
            return None;
        }
        Some(asn)
    }

    /// A list of communities: parsed, without repeats, at most `MAX_COMMUNITIES`.
    pub(super) fn communities(
        &mut self,
        raw: Option<&Vec<Spanned<String>>>,
        field: &str,
    ) -> Option<Vec<Community>> {
        let Some(list) = raw else {
            return Some(Vec::new());
        };
        let mut out = Some(Vec::with_capacity(list.len()));
        for (i, c) in list.iter().enumerate() {
            let parsed = match c.get_ref().parse::<Community>() {
                Ok(p) => p,
                Err(e) => {
                    self.report(c.span(), field, e);
                    out = None;
                    continue;
                }
            };
            if i == MAX_COMMUNITIES {
                let msg = format!("more than {MAX_COMMUNITIES} communities");
                self.report(c.span(), field, msg);
                out = None;
            }
            if let Some(v) = out.as_mut() {
                if v.contains(&parsed) {
                    self.report(c.span(), field, format!("{parsed} is listed twice"));
                    out = None;
                } else {
                    v.push(parsed);
                }
            }
        }
        out
    }

    fn neighbor(
        &mut self,
        raw: &Spanned<RawNeighbor>,
        seen: &mut HashMap<IpAddr, usize>,
    ) -> Option<BgpNeighbor> {
        let n = raw.get_ref();
        let address = self.address(&n.address, "bgp.neighbor.address");
        if let Some(a) = address {
            let line = super::error::line_of(self.text, n.address.span().start);
            if let Some(first) = seen.get(&a) {
                let msg = format!("{a} is already the neighbor at line {first}");
                self.report(n.address.span(), "bgp.neighbor.address", msg);
            } else {
                seen.insert(a, line);
            }
        }
        let asn = self.asn(&n.asn, "bgp.neighbor.as");
        let password = match &n.password {
            None => Some(None),
            Some(p) => {
                let text = p.get_ref();
                let printable = text
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
                if !text.is_empty() && text.len() <= MAX_PASSWORD_LEN && printable {
                    Some(Some(text.clone()))
                } else {
                    let msg = format!(
                        "the password must be 1 to {MAX_PASSWORD_LEN} printable ASCII \
                         characters without spaces, '\"' or '\\'"
                    );
                    self.report(p.span(), "bgp.neighbor.password", msg);
                    None
                }
            }
        };
        let hold_time = self.whole_seconds(
            n.hold_time.as_ref(),
            DEFAULT_HOLD_TIME,
            HOLD_TIME,
            "bgp.neighbor.hold_time",
        );
        let keepalive = match (hold_time, &n.keepalive) {
            (Some(h), None) => Some(h / 3),
            (h, Some(k)) => {
                let max = h.map_or(*HOLD_TIME.end(), |h| h - Duration::from_secs(1));
                self.whole_seconds(
                    Some(k),
                    Duration::ZERO,
                    Duration::from_secs(1)..=max,
                    "bgp.neighbor.keepalive",
                )
            }
            (None, None) => None,
        };
        Some(BgpNeighbor {
            address: address?,
            asn: asn?,
            password: password?,
            hold_time: hold_time?,
            keepalive: keepalive?,
        })
    }

    /// A duration that BIRD takes in whole seconds.
    fn whole_seconds(
        &mut self,
        raw: Option<&Spanned<String>>,
        default: Duration,
        range: std::ops::RangeInclusive<Duration>,
        field: &str,
    ) -> Option<Duration> {
        let d = self.duration(raw, default, range, field)?;
        if d.subsec_nanos() != 0 {
            let span = raw.map(Spanned::span).unwrap_or_default();
            self.report(
                span,
                field,
                format!("{d:?} is not a whole number of seconds"),
            );
            return None;
        }
        Some(d)
    }

    /// A service's `communities` and `med`: only with `[bgp]`.
    pub(super) fn route_keys(
        &mut self,
        s: &RawService,
        bgp: bool,
    ) -> (Option<Vec<Community>>, Option<Option<u32>>) {
        if !bgp {
            let mut ok = true;
            if let Some(c) = &s.communities {
                let span = c.first().map(Spanned::span).unwrap_or_default();
                self.report(span, "communities", "communities need a [bgp] section");
                ok = false;
            }
            if let Some(m) = &s.med {
                self.report(m.span(), "med", "med needs a [bgp] section");
                ok = false;
            }
            return (ok.then(Vec::new), ok.then_some(None));
        }
        let communities = self.communities(s.communities.as_ref(), "communities");
        let med = match &s.med {
            None => Some(None),
            Some(m) => self
                .int::<u32>(Some(m), 0, 0..=i64::from(u32::MAX), "med")
                .map(Some),
        };
        (communities, med)
    }
}
