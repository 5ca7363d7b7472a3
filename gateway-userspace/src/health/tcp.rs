//! The TCP check: the target passes when a connection to it completes in time.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{Probe, ProbeFuture, ProbeResult, io_reason, timeout_reason};

/// Passes when a TCP connection to the target completes within the timeout; the
/// connection is closed at once.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpProbe;

impl Probe for TcpProbe {
    fn probe(&self, target: SocketAddr, timeout: Duration) -> ProbeFuture<'_> {
        Box::pin(async move {
            let start = Instant::now();
            let outcome = tokio::time::timeout(timeout, TcpStream::connect(target)).await;
            let latency = start.elapsed();
            match outcome {
                Ok(Ok(_stream)) => ProbeResult::pass(latency, "connected"),
                Ok(Err(e)) => ProbeResult::fail(latency, io_reason(&e)),
                Err(_) => ProbeResult::fail(timeout, timeout_reason(timeout)),
            }
        })
    }
}

// The timeout case is not tested: a connect that neither completes nor fails needs a
// blackholed route (an unroutable address fails fast or hangs depending on the host), and
// a listener with a full backlog still completes handshakes on Linux (SYN cookies), so
// neither is deterministic. The HTTP tests cover the shared timeout wrapper.
#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    const TIMEOUT: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn connect_passes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        let r = TcpProbe.probe(target, TIMEOUT).await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.reason, "connected");
        assert!(r.latency < TIMEOUT);
    }

    #[tokio::test]
    async fn refused_fails() {
        let target = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap()
        };
        let r = TcpProbe.probe(target, TIMEOUT).await;
        assert!(!r.ok);
        assert_eq!(r.reason, "connection refused");
    }
}
