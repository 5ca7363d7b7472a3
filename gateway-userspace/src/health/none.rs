//! The "none" check: no probing, always up.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Probe, ProbeFuture, ProbeResult};

/// A probe that always passes at once, for backends that are not health-checked.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoneProbe;

impl Probe for NoneProbe {
    fn probe(&self, _target: SocketAddr, _timeout: Duration) -> ProbeFuture<'_> {
        Box::pin(async { ProbeResult::pass(Duration::ZERO, "not checked") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn always_passes_at_once() {
        let r = NoneProbe
            .probe("192.0.2.1:80".parse().unwrap(), Duration::ZERO)
            .await;
        assert_eq!(r, ProbeResult::pass(Duration::ZERO, "not checked"));
    }
}
