//! The TCP check: the target passes when a connection to it completes in time.
//!
//! At thousands of checks a second the socket's life costs more than the handshake:
//! creating it, registering it with epoll, closing it. So checks of one prober share a
//! pool of sockets: after a passing check the connection is dissolved with
//! `connect(AF_UNSPEC)` (which resets it, like SO_LINGER 0, and leaves the socket ready to
//! connect again; see connect(2)) and the socket goes back to the pool, still registered.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, Type};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{Probe, ProbeFuture, ProbeResult, io_reason, timeout_reason};

/// Idle, unconnected sockets for reuse, per address family; at most `cap` of each.
#[derive(Debug)]
pub struct SocketPool {
    idle: Mutex<(Vec<TcpStream>, Vec<TcpStream>)>,
    cap: usize,
}

impl SocketPool {
    /// A pool keeping at most `cap` idle sockets per family (the probes that can run at
    /// once is a good size).
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new((Vec::new(), Vec::new())),
            cap,
        })
    }

    fn take(&self, v6: bool) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if v6 { idle.1.pop() } else { idle.0.pop() }
    }

    fn put(&self, v6: bool, s: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = if v6 { &mut idle.1 } else { &mut idle.0 };
        if list.len() < self.cap {
            list.push(s);
        }
    }

    /// Idle sockets held (IPv4, IPv6).
    pub fn idle(&self) -> (usize, usize) {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        (idle.0.len(), idle.1.len())
    }
}

/// Passes when a TCP connection to the target completes within the timeout; the
/// connection is then reset at once: a graceful close would cost a FIN exchange per probe
/// and leave a TIME_WAIT socket behind, thousands a second at scale.
#[derive(Debug, Clone)]
pub struct TcpProbe {
    pool: Arc<SocketPool>,
}

impl TcpProbe {
    /// A probe that takes its sockets from `pool` and returns them there.
    pub fn new(pool: Arc<SocketPool>) -> Self {
        Self { pool }
    }
}

/// A new non-blocking socket for `target`'s family, registered with the runtime. Linger 0
/// makes a close reset the connection, for sockets that are dropped rather than pooled.
fn new_socket(target: SocketAddr) -> io::Result<TcpStream> {
    let s = Socket::new(
        Domain::for_address(target),
        Type::STREAM.nonblocking(),
        None,
    )?;
    s.set_linger(Some(Duration::ZERO))?;
    TcpStream::from_std(std::net::TcpStream::from(s))
}

/// Connects `s` (a fresh or a dissolved socket) to `target`.
async fn connect(s: &TcpStream, target: SocketAddr) -> io::Result<()> {
    let sock = SockRef::from(s);
    match sock.connect(&target.into()) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    loop {
        // A reused socket's readiness may be left over from its last connection, so a
        // wake-up is checked with poll(2) (which, unlike getpeername, takes no socket
        // lock), and cleared when the connect is still in progress: a connecting TCP
        // socket is not writable.
        s.writable().await?;
        if !settled(s)? {
            let _ = s.try_io(Interest::WRITABLE, || {
                Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
            });
            continue;
        }
        return match sock.take_error()? {
            Some(e) => Err(e),
            None => Ok(()),
        };
    }
}

/// Whether the socket's connect has ended, in success or failure (it polls writable, or
/// with an error or hang-up).
fn settled(s: &TcpStream) -> io::Result<bool> {
    let mut fd = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let rc = unsafe { libc::poll(&mut fd, 1, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd.revents & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) != 0)
}

/// Resets the connection and leaves the socket unconnected (connect(2) with AF_UNSPEC).
fn dissolve(s: &TcpStream) -> io::Result<()> {
    // SAFETY: a zeroed sockaddr with family AF_UNSPEC and its true length, on an fd the
    // stream owns for the duration of the call.
    let rc = unsafe {
        let mut addr: libc::sockaddr = std::mem::zeroed();
        addr.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
        libc::connect(
            s.as_raw_fd(),
            &addr,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // The reset leaves ECONNRESET pending on the socket: clear it for the next user.
    SockRef::from(s).take_error()?;
    Ok(())
}

impl Probe for TcpProbe {
    fn probe(&self, target: SocketAddr, timeout: Duration) -> ProbeFuture<'_> {
        Box::pin(async move {
            let start = Instant::now();
            let v6 = target.is_ipv6();
            let s = match self.pool.take(v6) {
                Some(s) => s,
                None => match new_socket(target) {
                    Ok(s) => s,
                    Err(e) => return ProbeResult::fail(start.elapsed(), io_reason(&e)),
                },
            };
            let outcome = tokio::time::timeout(timeout, connect(&s, target)).await;
            let latency = start.elapsed();
            match outcome {
                Ok(Ok(())) => {
                    // A socket that cannot be dissolved is closed (with a reset) instead.
                    if dissolve(&s).is_ok() {
                        self.pool.put(v6, s);
                    }
                    ProbeResult::pass(latency, "connected")
                }
                // Failed and timed-out sockets are closed, not reused: closing is the sure
                // way to abandon a connect in progress.
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
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    const TIMEOUT: Duration = Duration::from_secs(2);

    fn probe() -> TcpProbe {
        TcpProbe::new(SocketPool::new(4))
    }

    /// An address nothing listens on (any more).
    async fn refused_target() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    #[tokio::test]
    async fn connect_passes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        let r = probe().probe(target, TIMEOUT).await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.reason, "connected");
        assert!(r.latency < TIMEOUT);
        // The probe resets rather than closes: the server reads a reset, not an EOF.
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1];
        let read = conn.read(&mut buf).await;
        assert_eq!(
            read.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionReset)
        );
    }

    #[tokio::test]
    async fn refused_fails() {
        let target = refused_target().await;
        let r = probe().probe(target, TIMEOUT).await;
        assert!(!r.ok);
        assert_eq!(r.reason, "connection refused");
    }

    /// One pooled socket serves probe after probe, to live and dead targets of both
    /// families, and every verdict is still right.
    #[tokio::test]
    async fn a_pooled_socket_is_reused_and_judges_each_target_afresh() {
        let pool = SocketPool::new(4);
        let p = TcpProbe::new(pool.clone());
        let live4 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live6 = match TcpListener::bind("[::1]:0").await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("no IPv6 loopback here ({e}): IPv4 only");
                None
            }
        };
        let dead4 = refused_target().await;
        let mut seen = 0;
        for round in 0..20 {
            let r = p.probe(live4.local_addr().unwrap(), TIMEOUT).await;
            assert!(r.ok, "round {round}: {r:?}");
            let (mut conn, _) = live4.accept().await.unwrap();
            let mut buf = [0u8; 1];
            assert!(conn.read(&mut buf).await.is_err(), "reset, round {round}");
            seen += 1;
            assert_eq!(pool.idle().0, 1, "the socket went back to the pool");
            if round % 3 == 0 {
                let r = p.probe(dead4, TIMEOUT).await;
                assert!(
                    !r.ok,
                    "round {round}: a dead target passed on a reused socket"
                );
                assert_eq!(r.reason, "connection refused");
            }
            if let Some(l6) = &live6 {
                let r = p.probe(l6.local_addr().unwrap(), TIMEOUT).await;
                assert!(r.ok, "round {round} v6: {r:?}");
                let _ = l6.accept().await.unwrap();
                assert_eq!(pool.idle().1, 1);
            }
        }
        assert_eq!(seen, 20);
        // At most `cap` sockets are kept, whatever was in flight.
        let many: Vec<_> = (0..8)
            .map(|_| new_socket(live4.local_addr().unwrap()).unwrap())
            .collect();
        for s in many {
            pool.put(false, s);
        }
        assert_eq!(pool.idle().0, 4);
    }
}
