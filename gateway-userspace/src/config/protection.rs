//! `[protection]` and the `[service.protection]` that overrides its source limits.
use std::net::IpAddr;

use toml::Spanned;

use super::{raw::*, types::*, validate::*};

/// Rates in new flows or packets per second (0: no limit).
const RATE: std::ops::RangeInclusive<i64> = 0..=100_000_000;
/// The source-bucket map: from a handful to 16M buckets (48 bytes each).
const SOURCES_SIZE: std::ops::RangeInclusive<i64> = 1024..=16_777_216;
/// Flood guard rate per CPU (0: off).
const FLOOD_RATE: std::ops::RangeInclusive<i64> = 0..=100_000_000;

impl Validator<'_> {
    pub(super) fn protection(
        &mut self,
        raw: Option<&Spanned<RawProtection>>,
    ) -> Option<ProtectionConfig> {
        let Some(raw) = raw else {
            return Some(ProtectionConfig::default());
        };
        let p = raw.get_ref();
        let flood = self.int(
            p.flood_new_flows_per_cpu.as_ref(),
            DEFAULT_FLOOD_NEW_FLOWS_PER_CPU,
            FLOOD_RATE,
            "protection.flood_new_flows_per_cpu",
        );
        let fullnat = self.int(
            p.fullnat_new_flows_per_cpu.as_ref(),
            0,
            FLOOD_RATE,
            "protection.fullnat_new_flows_per_cpu",
        );
        let sources_size = self.int(
            p.sources_size.as_ref(),
            gateway_common::DEFAULT_SOURCES_SIZE,
            SOURCES_SIZE,
            "protection.sources_size",
        );
        let allowlist = self.allowlist(p.allowlist.as_deref().unwrap_or_default());
        let defaults = self.source_limits(&p.limits(), &SourceLimits::default(), "protection.");
        Some(ProtectionConfig {
            flood_new_flows_per_cpu: flood?,
            fullnat_new_flows_per_cpu: fullnat?,
            sources_size: sources_size?,
            allowlist: allowlist?,
            defaults: defaults?,
        })
    }

    /// Source limits: each key of `raw` over `base`. `at` prefixes the keys in messages.
    pub(super) fn source_limits(
        &mut self,
        raw: &RawLimits,
        base: &SourceLimits,
        at: &str,
    ) -> Option<SourceLimits> {
        let mode = raw.mode.as_ref().map_or(base.mode, |m| *m.get_ref());
        let new_flows = self.rate(
            raw.new_flows_per_second.as_ref(),
            raw.new_flows_burst.as_ref(),
            base.new_flows,
            at,
            "new_flows",
        );
        let packets = self.rate(
            raw.packets_per_second.as_ref(),
            raw.packets_burst.as_ref(),
            base.packets,
            at,
            "packets",
        );
        let prefix_v4 = self.int(
            raw.prefix_v4.as_ref(),
            base.prefix_v4,
            1..=32,
            &format!("{at}prefix_v4"),
        );
        let prefix_v6 = self.int(
            raw.prefix_v6.as_ref(),
            base.prefix_v6,
            1..=128,
            &format!("{at}prefix_v6"),
        );
        Some(SourceLimits {
            mode,
            new_flows: new_flows?,
            packets: packets?,
            prefix_v4: prefix_v4?,
            prefix_v6: prefix_v6?,
        })
    }

    /// `{what}_per_second` and `{what}_burst`: a rate of 0 is no limit; the burst defaults to
    /// one second's worth and may not be below it.
    fn rate(
        &mut self,
        per_second: Option<&Spanned<i64>>,
        burst: Option<&Spanned<i64>>,
        base: Option<Rate>,
        at: &str,
        what: &str,
    ) -> Option<Option<Rate>> {
        let rate_key = format!("{at}{what}_per_second");
        let burst_key = format!("{at}{what}_burst");
        let base_rate = base.map_or(0, |r| r.per_second);
        let rate: u32 = self.int(per_second, base_rate, RATE, &rate_key)?;
        // A rate set here starts a fresh burst default; an inherited one keeps its burst.
        let default_burst = match (per_second, base) {
            (None, Some(b)) => b.burst,
            _ => rate,
        };
        let b: u32 = self.int(burst, default_burst, 0..=i64::from(u32::MAX), &burst_key)?;
        if rate == 0 {
            if let Some(burst) = burst {
                let msg = format!("a burst needs {rate_key} (no limit is set)");
                self.report(burst.span(), burst_key, msg);
                return None;
            }
            return Some(None);
        }
        if b < rate {
            let span = burst.or(per_second).map(Spanned::span).unwrap_or(0..0);
            let msg =
                format!("burst {b} is below the rate {rate}: it must hold one second's worth");
            self.report(span, burst_key, msg);
            return None;
        }
        Some(Some(Rate {
            per_second: rate,
            burst: b,
        }))
    }

    fn allowlist(&mut self, raw: &[Spanned<String>]) -> Option<Vec<Prefix>> {
        let field = "protection.allowlist";
        let mut out: Vec<(Prefix, &Spanned<String>)> = Vec::new();
        let mut ok = true;
        for entry in raw {
            let Some(p) = self.prefix(entry, field) else {
                ok = false;
                continue;
            };
            if let Some((other, _)) = out.iter().find(|(o, _)| o.contains(&p) || p.contains(o)) {
                let msg = if *other == p {
                    format!("{p} is listed twice")
                } else {
                    format!("{p} overlaps {other}: list the wider prefix only")
                };
                self.report(entry.span(), field, msg);
                ok = false;
                continue;
            }
            out.push((p, entry));
        }
        if out.len() > gateway_common::MAX_ALLOWLIST as usize {
            let msg = format!(
                "{} prefixes; the data plane holds {}",
                out.len(),
                gateway_common::MAX_ALLOWLIST
            );
            self.report(raw[0].span(), field, msg);
            ok = false;
        }
        ok.then(|| out.into_iter().map(|(p, _)| p).collect())
    }

    /// `addr/len` (or a lone address: a host prefix), host bits zero.
    fn prefix(&mut self, raw: &Spanned<String>, field: &str) -> Option<Prefix> {
        let text = raw.get_ref().trim();
        let (a, l) = text.split_once('/').unwrap_or((text, ""));
        let Ok(addr) = a.parse::<IpAddr>() else {
            let msg = format!("{text:?} is not a prefix (address/length)");
            self.report(raw.span(), field, msg);
            return None;
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = if l.is_empty() {
            max
        } else {
            match l.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => {
                    let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
                    let msg = format!("{text}: an {family} prefix length is 0 to {max}");
                    self.report(raw.span(), field, msg);
                    return None;
                }
            }
        };
        if Prefix::masked(addr, len) != addr {
            let msg = format!(
                "{text} has host bits set (the prefix is {}/{len})",
                Prefix::masked(addr, len)
            );
            self.report(raw.span(), field, msg);
            return None;
        }
        Some(Prefix { addr, len })
    }
}
