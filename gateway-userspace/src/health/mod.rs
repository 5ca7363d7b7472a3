//! Health probing: one module per probe kind behind [`Probe`], the rise/fall state machine
//! ([`HealthState`]) and the scheduler that runs many checks at once ([`Prober`]).
//!
//! This module knows nothing about services or admin drain: it reports, per check, whether
//! the target answers. The caller combines that with its own configuration and drain state.
//! A check is the config's own [`HealthConfig`] with the address it probes ([`CheckSpec`]);
//! a backend of kind `none` has none, as nothing probes it.

mod http;
mod scheduler;
mod state;
mod syn;
mod tcp;

use std::borrow::Cow;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{CheckKind, HealthConfig, HttpCheck};

pub use http::{HttpProbe, MAX_BODY};
pub use scheduler::{CheckId, DEFAULT_MAX_IN_FLIGHT, Event, Prober};
pub use state::{HealthState, Transition};
pub use syn::{SynProbe, SynSockets};
pub use tcp::{SocketPool, TcpProbe};

/// One check the prober runs: the address probed and the config's check (kind, timings,
/// thresholds), as validated.
///
/// Only a check that probes has one: a backend of kind `none` runs no probe, and whoever
/// holds it counts it up (so no `CheckSpec` is of kind `none`).
#[derive(Debug, Clone, PartialEq)]
pub struct CheckSpec {
    /// The backend's address and the check's port.
    target: SocketAddr,
    check: HealthConfig,
}

impl CheckSpec {
    /// The check of the backend at `addr`, or `None` if `check` is of kind `none`.
    pub fn new(addr: IpAddr, check: HealthConfig) -> Option<Self> {
        if matches!(check.kind, CheckKind::None) {
            return None;
        }
        Some(Self {
            target: SocketAddr::new(addr, check.port),
            check,
        })
    }

    /// The address probed.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// What is probed and how often, and the thresholds that judge the results.
    pub fn check(&self) -> &HealthConfig {
        &self.check
    }

    /// The same check, starting `up` or down whatever the config says (a backend adopted
    /// from a previous agent starts where that agent left it).
    pub fn starting(mut self, up: bool) -> Self {
        self.check.initial_up = up;
        self
    }
}

/// The sockets a prober's TCP checks share: raw sockets for half-open checks where the
/// agent may open them, and a pool for the full connects they fall back to.
#[derive(Debug, Clone)]
pub struct TcpSockets {
    /// Idle sockets for full connects.
    pub pool: Arc<SocketPool>,
    /// Raw sockets for half-open checks; `None` without CAP_NET_RAW.
    pub syn: Option<Arc<SynSockets>>,
}

impl TcpSockets {
    /// The probe for a check of `kind`: for TCP, half-open where there are raw sockets
    /// ([`SynProbe`]), else a full connect ([`TcpProbe`]).
    fn probe_for(&self, kind: &CheckKind) -> Box<dyn Probe> {
        match kind {
            CheckKind::Tcp => {
                let connect = TcpProbe::new(self.pool.clone());
                match &self.syn {
                    Some(syn) => Box::new(SynProbe::new(syn.clone(), connect)),
                    None => Box::new(connect),
                }
            }
            CheckKind::Http(check) => Box::new(HttpProbe::new(Arc::clone(check))),
            CheckKind::None => unreachable!("CheckSpec::new makes no check of kind none"),
        }
    }
}

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// Whether the target passed.
    pub ok: bool,
    /// Time from the start of the probe to its verdict (the timeout when it timed out).
    pub latency: Duration,
    /// A short human-readable account, e.g. `connection refused`, `timeout after 500ms`,
    /// `status 503`, `body lacks "ok"`, `HTTP 200`. For logs only: never branch on it.
    /// Borrowed when fixed, as most are, so a passing probe allocates nothing for it.
    pub reason: Cow<'static, str>,
}

impl ProbeResult {
    /// A passing result.
    pub fn pass(latency: Duration, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            ok: true,
            latency,
            reason: reason.into(),
        }
    }

    /// A failing result.
    pub fn fail(latency: Duration, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            ok: false,
            latency,
            reason: reason.into(),
        }
    }
}

/// The future a [`Probe`] returns.
pub type ProbeFuture<'a> = Pin<Box<dyn Future<Output = ProbeResult> + Send + 'a>>;

/// One kind of health probe.
///
/// Implementations enforce `timeout` over the whole exchange themselves and turn every
/// failure, including malformed answers, into a failing [`ProbeResult`]; they never panic on
/// what the target sends.
pub trait Probe: Send + Sync {
    /// Probes `target` once.
    fn probe(&self, target: SocketAddr, timeout: Duration) -> ProbeFuture<'_>;
}

/// A short reason for an I/O error, without the `(os error N)` suffix for the common cases.
pub(crate) fn io_reason(e: &io::Error) -> Cow<'static, str> {
    use io::ErrorKind as K;
    let short = match e.kind() {
        K::ConnectionRefused => "connection refused",
        K::ConnectionReset => "connection reset",
        K::ConnectionAborted => "connection aborted",
        K::BrokenPipe => "broken pipe",
        K::HostUnreachable => "host unreachable",
        K::NetworkUnreachable => "network unreachable",
        K::AddrNotAvailable => "address not available",
        K::UnexpectedEof => "unexpected end of stream",
        _ => return e.to_string().into(),
    };
    short.into()
}

/// The reason given for a probe that ran out of time.
pub(crate) fn timeout_reason(timeout: Duration) -> String {
    format!("timeout after {}", fmt_duration(timeout))
}

/// `500ms`, `2s`, `1500ms`; sub-millisecond values fall back to `Debug` (`250µs`).
fn fmt_duration(d: Duration) -> String {
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{d:?}")
    } else if d.subsec_nanos() == 0 && !d.is_zero() {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        let cases = [
            (Duration::from_millis(500), "500ms"),
            (Duration::from_secs(2), "2s"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::ZERO, "0ms"),
            (Duration::from_micros(250), "250µs"),
        ];
        for (d, want) in cases {
            assert_eq!(fmt_duration(d), want, "{d:?}");
        }
        assert_eq!(
            timeout_reason(Duration::from_millis(500)),
            "timeout after 500ms"
        );
    }

    #[test]
    fn io_reasons_are_short() {
        let e = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(io_reason(&e), "connection refused");
        let e = io::Error::other("odd");
        assert_eq!(io_reason(&e), "odd");
    }
}
