//! The half-open TCP check: send a SYN from a raw socket, pass on the SYN-ACK, fail on a
//! reset or on silence.
//!
//! A full connect tells the prober nothing more: `connect(2)` succeeds the moment the
//! SYN-ACK arrives, before the final ACK is even sent, and a backend's application is not
//! involved in either case (its kernel completes handshakes on its own). What the full
//! connect adds is cost on both ends: the prober's socket and its state machine, a fourth
//! packet, and on the backend a child socket that is created, queued for `accept(2)`, and
//! torn down by the prober's reset (and logged by servers that log connections). Over one
//! veth pair at 10,000 probes a second, where the sender is billed for both ends' kernel
//! work, a bare loop of half-open probes cost 16% of a core in system time and one of
//! connects-and-resets 44% (measured by hand on this project's health bench bed; the bench
//! itself, `cargo xtask bench health`, measures the agent).
//!
//! The exchange: the SYN leaves from one of a few source ports that the prober holds bound
//! (and never listens on), so no local connection can use them; the backend answers with a
//! SYN-ACK (or a reset if nothing listens); the prober's kernel, finding no socket for the
//! SYN-ACK, answers it with a reset, which frees the backend's half-open entry. A raw
//! socket receives a copy of every TCP segment, so a socket filter passes only segments to
//! the held ports. A reply is matched by (backend, port, our port, acknowledged sequence).
//!
//! It needs CAP_NET_RAW; without it (or without IPv6), checks fall back to full connects.
//!
//! [`wire`] builds the SYN and reads replies (pure functions), [`raw`] holds the sockets
//! (socket filter, source address, send and receive), and this module is the probe: it
//! claims a four-tuple, sends, matches replies to the probes that wait for them, and falls
//! back to a full connect.

mod raw;
mod wire;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::Socket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Probe, ProbeFuture, ProbeResult, TcpProbe, io_reason, timeout_reason};
use raw::{RawSocket, hold_port, source_for};
use wire::{Answer, Tuple, parse_reply, syn_segment};

/// Source ports held for probes. Each check takes them in turn, and no two probes in flight
/// share a four-tuple (checks of one target in several services). A four-tuple's SYN always
/// carries the same sequence number: should the prober's reset of an earlier attempt be
/// lost (a firewall dropping it), the backend still holds that attempt in SYN-RECV for up
/// to a minute, and answers a SYN with the same sequence number with its SYN-ACK again,
/// where a new one would get no answer (checked by hand with tcpdump: a retransmitted SYN
/// got the SYN-ACK at once, one with another sequence number nothing).
const PORTS: usize = 8;

/// Replies read in one go before the reader lets other tasks run.
const READ_BUDGET: usize = 256;

/// Probes in flight by four-tuple: the sequence number of the SYN, and who waits.
type Pending = Arc<Mutex<HashMap<Tuple, (u32, oneshot::Sender<Answer>)>>>;

/// Counts for tests and diagnostics.
#[derive(Debug, Default)]
struct Counts {
    /// Segments read that answered a probe in flight.
    matched: AtomicU64,
    /// Segments read that answered nothing in flight (late, or not ours).
    unmatched: AtomicU64,
}

/// The raw sockets, held ports and probes in flight shared by every half-open check of one
/// prober. Dropping the last reference stops its reader tasks.
#[derive(Debug)]
pub struct SynSockets {
    v4: Arc<RawSocket>,
    /// `None` where IPv6 is unavailable: IPv6 checks then connect.
    v6: Option<Arc<RawSocket>>,
    ports: Vec<u16>,
    /// The sockets that hold `ports` (bound, never listening: a SYN-ACK to them finds no
    /// socket, so the kernel resets it).
    _held: Vec<Socket>,
    pending: Pending,
    /// Kept for the tests, which check that the filter keeps other traffic out.
    #[cfg_attr(not(test), allow(dead_code))]
    counts: Arc<Counts>,
    next: AtomicU64,
    /// Keys the sequence numbers and the checks' first turns (per agent: unpredictable).
    keys: std::collections::hash_map::RandomState,
    readers: Vec<JoinHandle<()>>,
}

impl Drop for SynSockets {
    fn drop(&mut self) {
        for r in &self.readers {
            r.abort();
        }
    }
}

impl SynSockets {
    /// Opens the raw sockets and holds the source ports; must run within a Tokio runtime.
    /// Fails without CAP_NET_RAW.
    pub fn open() -> io::Result<Arc<Self>> {
        let mut held = Vec::with_capacity(PORTS);
        let mut ports = Vec::with_capacity(PORTS);
        for _ in 0..PORTS {
            let (s, port) = hold_port()?;
            ports.push(port);
            held.push(s);
        }
        let pending: Pending = Arc::default();
        let counts = Arc::new(Counts::default());
        let v4 = Arc::new(RawSocket::open(false, &ports)?);
        let v6 = match RawSocket::open(true, &ports) {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                log::info!("IPv6 TCP checks will connect (no raw IPv6 socket: {e})");
                None
            }
        };
        let mut readers = vec![tokio::spawn(read_replies(
            Arc::clone(&v4),
            false,
            Arc::clone(&pending),
            Arc::clone(&counts),
        ))];
        if let Some(v6) = &v6 {
            readers.push(tokio::spawn(read_replies(
                Arc::clone(v6),
                true,
                Arc::clone(&pending),
                Arc::clone(&counts),
            )));
        }
        Ok(Arc::new(Self {
            v4,
            v6,
            ports,
            _held: held,
            pending,
            counts,
            next: AtomicU64::new(0),
            keys: Default::default(),
            readers,
        }))
    }

    /// The raw socket for a target's family, if there is one.
    fn socket(&self, v6: bool) -> Option<&RawSocket> {
        if v6 {
            self.v6.as_deref()
        } else {
            Some(&self.v4)
        }
    }

    /// A random number.
    fn random(&self) -> u32 {
        self.keys
            .hash_one(self.next.fetch_add(1, Ordering::Relaxed)) as u32
    }

    /// Registers a probe of `target`: from the first held port, starting at the check's
    /// `turn`, whose four-tuple no probe in flight uses (moving the turn past it). Returns
    /// the four-tuple and the SYN's sequence number, or `None` if every port is in use.
    fn claim(
        &self,
        target: SocketAddr,
        turn: &AtomicU32,
        waiter: oneshot::Sender<Answer>,
    ) -> Option<(Tuple, u32)> {
        let first = turn.load(Ordering::Relaxed) as usize;
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let n = self.ports.len();
        let i = (0..n).find(|i| {
            let port = self.ports[(first + i) % n];
            !pending.contains_key(&(target.ip(), target.port(), port))
        })?;
        let tuple = (target.ip(), target.port(), self.ports[(first + i) % n]);
        // Keyed per agent, so unpredictable off-path (nobody can forge an answer), and the
        // same for every SYN of this four-tuple (see PORTS).
        let seq = self.keys.hash_one(tuple) as u32;
        pending.insert(tuple, (seq, waiter));
        turn.store(((first + i + 1) % n) as u32, Ordering::Relaxed);
        Some((tuple, seq))
    }
}

/// Reads the segments that pass the filter and answers the probes they belong to.
async fn read_replies(socket: Arc<RawSocket>, v6: bool, pending: Pending, counts: Arc<Counts>) {
    let on_reply = |data: &[u8], from: Option<IpAddr>| {
        let Some((tuple, seq, answer)) = parse_reply(data, from, v6) else {
            counts.unmatched.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let waiter = {
            let mut pending = pending.lock().unwrap_or_else(|e| e.into_inner());
            match pending.get(&tuple) {
                Some((s, _)) if *s == seq => pending.remove(&tuple).map(|(_, tx)| tx),
                _ => None,
            }
        };
        match waiter {
            Some(tx) => {
                counts.matched.fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(answer);
            }
            None => {
                counts.unmatched.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    loop {
        match socket.recv_some(READ_BUDGET, on_reply).await {
            // Still readable: come back after the others ran.
            Ok(true) => tokio::task::yield_now().await,
            Ok(false) => {}
            Err(_) => return,
        }
    }
}

/// Removes a probe's entry when the probe ends, however it ends (answered, timed out or
/// aborted with its check), unless a later probe already holds the four-tuple.
struct InFlight<'a> {
    pending: &'a Pending,
    tuple: Tuple,
    seq: u32,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending
            .get(&self.tuple)
            .is_some_and(|(s, _)| *s == self.seq)
        {
            pending.remove(&self.tuple);
        }
    }
}

/// Passes when the target answers a SYN with a SYN-ACK within the timeout; one per check.
/// Targets of a family without a raw socket are checked with `fallback`.
#[derive(Debug)]
pub struct SynProbe {
    sockets: Arc<SynSockets>,
    fallback: TcpProbe,
    /// The IPv4 source for this check's target (0 until known), looked up again after a
    /// probe fails to send or times out: a changed route may have changed it.
    source: AtomicU32,
    /// Where the next probe starts looking for a free held port.
    turn: AtomicU32,
}

impl SynProbe {
    /// A probe sending from `sockets`; `fallback` serves families they lack.
    pub fn new(sockets: Arc<SynSockets>, fallback: TcpProbe) -> Self {
        let turn = sockets.random() % PORTS as u32;
        Self {
            sockets,
            fallback,
            source: AtomicU32::new(0),
            turn: AtomicU32::new(turn),
        }
    }

    async fn send(
        &self,
        socket: &RawSocket,
        target: SocketAddr,
        port: u16,
        seq: u32,
    ) -> io::Result<()> {
        match target.ip() {
            IpAddr::V4(dst) => {
                let mut known = self.source.load(Ordering::Relaxed);
                if known == 0 {
                    known = source_for(target)?.into();
                    self.source.store(known, Ordering::Relaxed);
                }
                let src = Ipv4Addr::from(known);
                let segment = syn_segment(Some(src), target, port, seq);
                socket.send_v4(&segment, dst, src).await
            }
            IpAddr::V6(dst) => {
                let segment = syn_segment(None, target, port, seq);
                socket.send_v6(&segment, dst).await
            }
        }
    }
}

impl Probe for SynProbe {
    fn probe(&self, target: SocketAddr, timeout: Duration) -> ProbeFuture<'_> {
        Box::pin(async move {
            let Some(socket) = self.sockets.socket(target.is_ipv6()) else {
                return self.fallback.probe(target, timeout).await;
            };
            let start = Instant::now();
            let (tx, rx) = oneshot::channel();
            let Some((tuple, seq)) = self.sockets.claim(target, &self.turn, tx) else {
                // As many probes of this target in flight as held ports: this one connects.
                return self.fallback.probe(target, timeout).await;
            };
            let _in_flight = InFlight {
                pending: &self.sockets.pending,
                tuple,
                seq,
            };
            let exchange = async {
                self.send(socket, target, tuple.2, seq).await?;
                rx.await.map_err(|_| io::Error::other("prober stopped"))
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(Ok(Answer::Accepted)) => ProbeResult::pass(start.elapsed(), "SYN-ACK"),
                Ok(Ok(Answer::Refused)) => ProbeResult::fail(start.elapsed(), "connection refused"),
                Ok(Err(e)) => {
                    self.source.store(0, Ordering::Relaxed);
                    ProbeResult::fail(start.elapsed(), io_reason(&e))
                }
                Err(_) => {
                    self.source.store(0, Ordering::Relaxed);
                    ProbeResult::fail(timeout, timeout_reason(timeout))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::SocketPool;
    use tokio::net::TcpListener;

    const TIMEOUT: Duration = Duration::from_secs(2);

    /// The shared sockets, or `None` (with the reason printed) without CAP_NET_RAW.
    fn open() -> Option<Arc<SynSockets>> {
        match SynSockets::open() {
            Ok(s) => Some(s),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                crate::testing::skip(
                    "half-open probe test",
                    &format!("raw sockets need CAP_NET_RAW ({e})"),
                );
                None
            }
            Err(e) => panic!("opening raw sockets: {e}"),
        }
    }

    fn probe(sockets: &Arc<SynSockets>) -> SynProbe {
        SynProbe::new(Arc::clone(sockets), TcpProbe::new(SocketPool::new(4)))
    }

    /// A live listener passes without a connection ever reaching accept; a closed port is
    /// refused; both families; and unrelated TCP traffic never reaches the raw sockets.
    #[tokio::test]
    async fn half_open_probes_judge_live_and_closed_ports() {
        let Some(sockets) = open() else { return };
        let p = probe(&sockets);
        let mut listeners = vec![TcpListener::bind("127.0.0.1:0").await.unwrap()];
        match TcpListener::bind("[::1]:0").await {
            Ok(l) if sockets.v6.is_some() => listeners.push(l),
            other => eprintln!("no IPv6 here ({other:?}): IPv4 only"),
        }
        for listener in &listeners {
            let target = listener.local_addr().unwrap();
            for _ in 0..3 {
                let r = p.probe(target, TIMEOUT).await;
                assert!(r.ok, "{target}: {r:?}");
                assert_eq!(r.reason, "SYN-ACK");
            }
            // Nothing completed a handshake: there is nothing to accept.
            let accepted =
                tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
            assert!(accepted.is_err(), "{target}: a probe made a connection");
        }
        // Ordinary traffic, including to the same listener, is filtered out in the kernel.
        let target = listeners[0].local_addr().unwrap();
        let _conn = tokio::net::TcpStream::connect(target).await.unwrap();
        let _ = listeners[0].accept().await.unwrap();
        let matched = sockets.counts.matched.load(Ordering::Relaxed);
        for listener in listeners {
            let target = listener.local_addr().unwrap();
            drop(listener);
            let r = p.probe(target, TIMEOUT).await;
            assert!(!r.ok, "{target}: {r:?}");
            assert_eq!(r.reason, "connection refused", "{target}");
        }
        let counts = &sockets.counts;
        assert!(counts.matched.load(Ordering::Relaxed) > matched);
        assert_eq!(counts.unmatched.load(Ordering::Relaxed), 0);
        assert!(sockets.pending.lock().unwrap().is_empty());
    }

    /// Many probes at once, to several listeners from every held port, each answered by
    /// its own reply.
    #[tokio::test]
    async fn concurrent_probes_are_matched_to_their_replies() {
        let Some(sockets) = open() else { return };
        let mut targets = Vec::new();
        let mut listeners = Vec::new();
        for _ in 0..4 {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            targets.push(l.local_addr().unwrap());
            listeners.push(l);
        }
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let probes: Vec<_> = (0..200).map(|_| probe(&sockets)).collect();
        let runs = probes.iter().enumerate().map(|(i, p)| {
            let target = if i % 5 == 4 { closed } else { targets[i % 4] };
            async move { (target, p.probe(target, TIMEOUT).await) }
        });
        let results = futures_join_all(runs).await;
        for (target, r) in results {
            assert_eq!(r.ok, target != closed, "{target}: {r:?}");
        }
        assert!(sockets.pending.lock().unwrap().is_empty());
    }

    /// Checks of one target running at once never share a four-tuple: each takes a held
    /// port no other probe in flight uses, and past that many the probe connects instead.
    #[tokio::test]
    async fn probes_of_one_target_at_once_take_distinct_ports() {
        let Some(sockets) = open() else { return };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        let probes: Vec<_> = (0..PORTS + 3).map(|_| probe(&sockets)).collect();
        let results = futures_join_all(probes.iter().map(|p| p.probe(target, TIMEOUT))).await;
        let mut reasons: Vec<_> = results.iter().map(|r| r.reason.to_string()).collect();
        reasons.sort();
        let mut want = vec!["SYN-ACK".to_owned(); PORTS];
        want.extend(vec!["connected".to_owned(); 3]);
        want.sort();
        assert_eq!(reasons, want, "{results:?}");
        // One check alone walks the ports in turn.
        let p = probe(&sockets);
        let mut used = std::collections::BTreeSet::new();
        for _ in 0..PORTS {
            let before = p.turn.load(Ordering::Relaxed);
            assert!(p.probe(target, TIMEOUT).await.ok);
            used.insert(before);
        }
        assert_eq!(used.len(), PORTS, "{used:?}");
        assert!(sockets.pending.lock().unwrap().is_empty());
    }

    /// Every SYN of a four-tuple carries the same sequence number, and different four-tuples
    /// different ones.
    #[tokio::test]
    async fn a_four_tuple_always_carries_the_same_sequence_number() {
        let Some(sockets) = open() else { return };
        let target: SocketAddr = "198.18.0.11:80".parse().unwrap();
        let turn = AtomicU32::new(0);
        let mut seen = HashMap::new();
        for _ in 0..3 * PORTS {
            let (tx, _rx) = oneshot::channel();
            let (tuple, seq) = sockets.claim(target, &turn, tx).unwrap();
            sockets.pending.lock().unwrap().remove(&tuple);
            if let Some(before) = seen.insert(tuple, seq) {
                assert_eq!(before, seq, "{tuple:?}");
            }
        }
        assert_eq!(seen.len(), PORTS);
        let distinct: std::collections::HashSet<_> = seen.values().collect();
        assert_eq!(distinct.len(), PORTS);
    }

    /// Runs futures concurrently on this task (no extra crate for one test).
    async fn futures_join_all<F: std::future::Future>(
        futs: impl Iterator<Item = F>,
    ) -> Vec<F::Output> {
        let mut set = Vec::new();
        for f in futs {
            set.push(Box::pin(f));
        }
        let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut done = true;
            for (i, f) in set.iter_mut().enumerate() {
                if out[i].is_none() {
                    match f.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => out[i] = Some(v),
                        std::task::Poll::Pending => done = false,
                    }
                }
            }
            if done {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        out.into_iter().map(Option::unwrap).collect()
    }
}
