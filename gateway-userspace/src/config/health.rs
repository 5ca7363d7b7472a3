//! The health keys: a service's `[service.health]` with a backend's `health = {...}` over
//! it, validated into one [`HealthConfig`] per backend.
use std::{
    ops::{Range, RangeInclusive},
    time::Duration,
};

use toml::Spanned;

use super::{raw::*, types::*, validate::*};

/// Where a health key's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Origin {
    Default,
    Service,
    Backend,
}

/// The service's `[service.health]` and a backend's `health = {...}` over it.
pub(super) struct Layers<'a> {
    pub(super) service: Option<&'a RawHealth>,
    pub(super) backend: Option<&'a RawHealth>,
}

impl<'a> Layers<'a> {
    pub(super) fn pick<T>(
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

pub(super) fn health_field(origin: Origin, key: &str) -> String {
    match origin {
        Origin::Backend => format!("backend.health.{key}"),
        Origin::Service | Origin::Default => format!("health.{key}"),
    }
}

impl Validator<'_> {
    /// The effective check of `layers`. `table` is the most specific health table (or the
    /// service), the line for problems with values left at their defaults.
    pub(super) fn health(
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
        let passive_fall = {
            let picked = layers.pick(|h| &h.passive_fall);
            let origin = picked.map_or(Origin::Default, |(_, o)| o);
            self.int(
                picked.map(|(s, _)| s),
                DEFAULT_PASSIVE_FALL,
                PASSIVE_FALL,
                &health_field(origin, "passive_fall"),
            )
        };

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
            passive_fall: passive_fall?,
            fast_interval: fast_interval?,
            down_interval: down_interval?,
            jitter: jitter?,
            initial_up,
        })
    }

    pub(super) fn http_check(&mut self, layers: &Layers<'_>) -> Option<HttpCheck> {
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
pub(super) fn parse_status_range(s: &str) -> Result<RangeInclusive<u16>, String> {
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
