//! Runs many checks at once: one task per check, a shared bound on probes in flight, and
//! randomised timing so that thousands of checks do not fire in bursts.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{
    CheckSpec, HealthState, Probe, ProbeResult, SocketPool, SynSockets, TcpSockets, Transition,
};

/// The caller's name for a check.
pub type CheckId = u64;

/// A sensible bound on probes in flight at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;

/// The shortest wait between probes, whatever the spec says, so that a zero interval
/// cannot spin a task.
const MIN_WAIT: Duration = Duration::from_millis(1);

/// One probe's outcome, sent for every probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The check probed.
    pub id: CheckId,
    /// The address probed.
    pub target: SocketAddr,
    /// What the probe found.
    pub result: ProbeResult,
    /// `Some` when this result changed the state.
    pub transition: Option<Transition>,
    /// The data plane's passive report ([`Prober::passive`]), not a probe: it has no
    /// latency to record.
    pub passive: bool,
    /// The state after this result.
    pub up: bool,
}

/// Probes many targets concurrently and reports every result on a channel.
///
/// Each check runs in its own task; at most `max_in_flight` probes run at any moment across
/// all checks (the rest wait for a slot, which delays them but does not count against their
/// timeout). Dropping the `Prober` stops every check. Its methods must be called within a
/// Tokio runtime.
#[derive(Debug)]
pub struct Prober {
    permits: Arc<Semaphore>,
    events: mpsc::Sender<Event>,
    checks: HashMap<CheckId, Running>,
    /// Sockets the TCP checks share.
    sockets: TcpSockets,
    /// Keyed per process, so that agents on different hosts start their checks at different
    /// offsets even for the same targets.
    seeder: RandomState,
    started: u64,
}

/// A check's task and the handles to steer it; dropping it stops the task.
#[derive(Debug)]
struct Running {
    spec: watch::Sender<CheckSpec>,
    /// Passive reports: (failures, answered).
    passive: mpsc::UnboundedSender<(u64, u64)>,
    up: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Prober {
    /// A prober with no checks that sends every result to `events` and runs at most
    /// `max_in_flight` probes at once (at least 1).
    ///
    /// A full `events` channel holds back the check that is sending, so the receiver should
    /// keep up; a dropped receiver only loses the events (`is_up` stays current).
    pub fn new(max_in_flight: usize, events: mpsc::Sender<Event>) -> Self {
        let permits = max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(permits)),
            events,
            checks: HashMap::new(),
            sockets: TcpSockets {
                // One idle socket per probe in flight is enough.
                pool: SocketPool::new(permits),
                syn: match SynSockets::open() {
                    Ok(s) => Some(s),
                    Err(e) => {
                        log::warn!(
                            "TCP checks will make full connections: no raw socket for \
                             half-open checks ({e})"
                        );
                        None
                    }
                },
            },
            seeder: RandomState::new(),
            started: 0,
        }
    }

    /// Starts probing `spec` as `id`, after a random delay in `[0, interval)`. An existing
    /// check with the same id is replaced and starts afresh.
    pub fn add(&mut self, id: CheckId, spec: CheckSpec) {
        let probe = self.sockets.probe_for(&spec.check.kind);
        self.start(id, spec, probe);
    }

    /// Stops the check `id`, aborting a probe in progress. Events it already sent may still
    /// be in the channel.
    pub fn remove(&mut self, id: CheckId) {
        self.checks.remove(&id);
    }

    /// Replaces the spec of `id`. With the same kind and target the check keeps its state and
    /// streak and uses the new timings and thresholds from its next wait; otherwise (or if
    /// `id` is unknown) it starts afresh as [`Prober::add`] does.
    pub fn update(&mut self, id: CheckId, spec: CheckSpec) {
        if !self.retune(id, &spec) {
            self.add(id, spec);
        }
    }

    /// Hands `spec` to the running check `id` if it probes the same kind and target, which
    /// then keeps its state; whether it did.
    fn retune(&mut self, id: CheckId, spec: &CheckSpec) -> bool {
        let Some(running) = self.checks.get(&id) else {
            return false;
        };
        let same = {
            let current = running.spec.borrow();
            current.check.kind == spec.check.kind && current.target == spec.target
        };
        if same {
            running.spec.send_if_modified(|current| {
                let changed = current != spec;
                if changed {
                    current.clone_from(spec);
                }
                changed
            });
        }
        same
    }

    /// Hands check `id` what the data plane saw of its target's answers since the last
    /// report (full-NAT: SYNs refused or unanswered, and answered); `passive_fall` of its
    /// spec decides ([`HealthState::observe_passive`]). A transition is reported like a
    /// probe's, with `passive` set. Unknown ids are ignored.
    pub fn passive(&self, id: CheckId, failures: u64, answered: u64) {
        if let Some(r) = self.checks.get(&id) {
            let _ = r.passive.send((failures, answered));
        }
    }

    /// Whether `id` is up, or `None` if there is no such check.
    pub fn is_up(&self, id: CheckId) -> Option<bool> {
        self.checks.get(&id).map(|r| r.up.load(Ordering::Acquire))
    }

    /// Starts `spec` with the given probe (the tests pass scripted ones).
    fn start(&mut self, id: CheckId, spec: CheckSpec, probe: Box<dyn Probe>) {
        self.started = self.started.wrapping_add(1);
        let rng = XorShift64::new(self.seeder.hash_one((spec.target, self.started)));
        let up = Arc::new(AtomicBool::new(spec.check.initial_up));
        let (spec_tx, spec_rx) = watch::channel(spec);
        let (passive_tx, passive_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(Check {
            id,
            probe,
            spec: spec_rx,
            passive: passive_rx,
            up: Arc::clone(&up),
            permits: Arc::clone(&self.permits),
            events: self.events.clone(),
            rng,
        }));
        // Replacing an entry drops the old one, which aborts its task.
        self.checks.insert(
            id,
            Running {
                spec: spec_tx,
                passive: passive_tx,
                up,
                task,
            },
        );
    }
}

/// What a check's task owns.
struct Check {
    id: CheckId,
    probe: Box<dyn Probe>,
    spec: watch::Receiver<CheckSpec>,
    passive: mpsc::UnboundedReceiver<(u64, u64)>,
    up: Arc<AtomicBool>,
    permits: Arc<Semaphore>,
    events: mpsc::Sender<Event>,
    rng: XorShift64,
}

/// A check's loop: wait, probe under a permit, update the state, report.
async fn run(mut check: Check) {
    let mut spec = check.spec.borrow_and_update().clone();
    let mut state = HealthState::new(spec.check.rise, spec.check.fall, spec.check.initial_up);
    let mut deadline = after(first_delay(spec.check.interval, &mut check.rng));
    loop {
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                changed = check.spec.changed() => {
                    if changed.is_err() {
                        return; // the Prober dropped this check
                    }
                    spec = check.spec.borrow_and_update().clone();
                    state.set_thresholds(spec.check.rise, spec.check.fall);
                    let wait = jittered(
                        state.next_interval(&spec.check),
                        spec.check.jitter,
                        &mut check.rng,
                    );
                    deadline = after(wait);
                }
                Some((failures, answered)) = check.passive.recv() => {
                    let Some(t) = state.observe_passive(failures, answered, spec.check.passive_fall) else {
                        continue;
                    };
                    check.up.store(state.is_up(), Ordering::Release);
                    let what = if failures == 1 { "SYN" } else { "SYNs" };
                    let event = Event {
                        id: check.id,
                        target: spec.target,
                        result: ProbeResult::fail(
                            Duration::ZERO,
                            format!("passive: {failures} {what} refused or unanswered"),
                        ),
                        transition: Some(t),
                        up: state.is_up(),
                        passive: true,
                    };
                    let _ = check.events.send(event).await;
                    // Down now: probe at the down interval from here.
                    deadline = after(jittered(
                        state.next_interval(&spec.check),
                        spec.check.jitter,
                        &mut check.rng,
                    ));
                }
            }
        }

        let Ok(permit) = check.permits.acquire().await else {
            return; // never closed, but there is nothing to do without permits
        };
        let result = check.probe.probe(spec.target, spec.check.timeout).await;
        drop(permit);

        let transition = state.observe(result.ok);
        check.up.store(state.is_up(), Ordering::Release);
        // The receiver logs transitions: it knows which service the check belongs to.
        let event = Event {
            id: check.id,
            target: spec.target,
            result,
            transition,
            up: state.is_up(),
            passive: false,
        };
        // A closed channel only means nobody listens; keep probing for `is_up`.
        let _ = check.events.send(event).await;

        deadline = after(jittered(
            state.next_interval(&spec.check),
            spec.check.jitter,
            &mut check.rng,
        ));
    }
}

/// Probes start on a grid of this step. Thousands of checks then wake in batches (about
/// one in a hundred per step at one-second intervals) instead of one at a time: one
/// timer tick, one epoll wake-up and one burst of packets serve a batch, which costs a
/// fraction of the CPU of the same probes spread evenly, for at most this much delay.
const GRID: Duration = Duration::from_millis(10);

/// The instant `wait` from now, rounded up to the probe grid, saturating far in the future
/// instead of overflowing.
fn after(wait: Duration) -> Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let now = Instant::now();
    let Some(at) = now.checked_add(wait) else {
        return now + Duration::from_secs(100 * 365 * 86_400);
    };
    let epoch = Instant::from_std(*EPOCH.get_or_init(std::time::Instant::now));
    let since = at.saturating_duration_since(epoch).as_nanos();
    let grid = GRID.as_nanos();
    let up = (grid - since % grid) % grid;
    at + Duration::from_nanos(up as u64)
}

/// A uniform random delay in `[0, interval)` (zero for a zero interval).
fn first_delay(interval: Duration, rng: &mut XorShift64) -> Duration {
    let nanos = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rng.next_u64() % nanos)
}

/// `base` spread uniformly by up to `jitter * base` either way (`jitter` clamped to
/// `0..=0.5`, NaN taken as 0), and at least [`MIN_WAIT`].
fn jittered(base: Duration, jitter: f64, rng: &mut XorShift64) -> Duration {
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 0.5)
    };
    let factor = 1.0 + jitter * (2.0 * rng.next_f64() - 1.0);
    let wait = Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(base);
    wait.max(MIN_WAIT)
}

/// Marsaglia's xorshift64: plenty for spreading timers, no crate needed.
#[derive(Debug, Clone)]
struct XorShift64(u64);

impl XorShift64 {
    fn new(seed: u64) -> Self {
        // Zero is xorshift's one fixed point.
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::config::{CheckKind, HealthConfig, HttpCheck};
    use crate::health::ProbeFuture;

    /// The settings the tests start from, of kind `kind`.
    fn settings(kind: CheckKind) -> HealthConfig {
        HealthConfig {
            kind,
            port: 80,
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 2,
            passive_fall: 0,
            fast_interval: Duration::from_secs(1),
            down_interval: Duration::from_secs(30),
            jitter: 0.0,
            initial_up: true,
        }
    }

    fn tcp() -> HealthConfig {
        settings(CheckKind::Tcp)
    }

    /// `check` of `target` (its port included).
    fn spec(check: HealthConfig, target: SocketAddr) -> CheckSpec {
        let check = HealthConfig {
            port: target.port(),
            ..check
        };
        CheckSpec::new(target.ip(), check).expect("a kind that probes")
    }

    fn target() -> SocketAddr {
        "198.18.0.11:80".parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn probes_start_on_the_grid() {
        let mut rng = XorShift64::new(7);
        let mut starts = Vec::new();
        for _ in 0..1000 {
            let wait = jittered(Duration::from_secs(1), 0.5, &mut rng);
            let before = Instant::now();
            let at = after(wait);
            assert!(at >= before + wait && at < before + wait + GRID, "{wait:?}");
            starts.push(at);
        }
        // All on one grid: any two starts differ by a whole number of steps.
        let first = starts[0];
        for s in &starts {
            let d = if *s >= first { *s - first } else { first - *s };
            assert_eq!(d.as_nanos() % GRID.as_nanos(), 0, "{d:?}");
        }
        // ...and spread over many of its steps, not bunched into a few.
        starts.sort();
        starts.dedup();
        assert!(starts.len() > 50, "{} distinct start times", starts.len());
    }

    #[test]
    fn first_delay_is_within_the_interval() {
        let mut rng = XorShift64::new(1);
        let interval = Duration::from_secs(2);
        let delays: Vec<_> = (0..10_000)
            .map(|_| first_delay(interval, &mut rng))
            .collect();
        assert!(delays.iter().all(|d| *d < interval));
        // Spread over the whole interval, not bunched at one end.
        assert!(delays.iter().any(|d| *d < Duration::from_millis(100)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(1900)));
        assert_eq!(first_delay(Duration::ZERO, &mut rng), Duration::ZERO);
        assert!(first_delay(Duration::MAX, &mut rng) < Duration::MAX);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let base = Duration::from_secs(10);
        // (jitter asked, effective bound)
        let cases = [
            (0.1, 0.1),
            (0.5, 0.5),
            (0.9, 0.5),
            (-1.0, 0.0),
            (f64::NAN, 0.0),
        ];
        for (jitter, bound) in cases {
            let mut rng = XorShift64::new(7);
            let lo = base.mul_f64(1.0 - bound);
            let hi = base.mul_f64(1.0 + bound);
            let waits: Vec<_> = (0..10_000)
                .map(|_| jittered(base, jitter, &mut rng))
                .collect();
            assert!(
                waits.iter().all(|w| (lo..=hi).contains(w)),
                "jitter {jitter}"
            );
            if bound > 0.0 {
                // Both sides of the base are used.
                let near = base.mul_f64(bound * 0.9);
                assert!(waits.iter().any(|w| *w < base - near), "jitter {jitter}");
                assert!(waits.iter().any(|w| *w > base + near), "jitter {jitter}");
            } else {
                assert!(waits.iter().all(|w| *w == base), "jitter {jitter}");
            }
        }
        let mut rng = XorShift64::new(7);
        assert_eq!(jittered(Duration::ZERO, 0.5, &mut rng), MIN_WAIT);
        assert!(jittered(Duration::MAX, 0.5, &mut rng) > Duration::ZERO);
    }

    #[test]
    fn xorshift_never_sticks_at_zero() {
        let mut rng = XorShift64::new(0);
        assert!((0..100).all(|_| rng.next_u64() != 0));
        assert!(
            (0..1000)
                .map(|_| rng.next_f64())
                .all(|f| (0.0..1.0).contains(&f))
        );
    }

    /// A probe that answers from a script (then passes) and records when it ran.
    #[derive(Default)]
    struct Scripted {
        results: Mutex<VecDeque<bool>>,
        calls: Arc<Mutex<Vec<Instant>>>,
    }

    impl Scripted {
        fn new(results: &[bool]) -> (Box<Self>, Arc<Mutex<Vec<Instant>>>) {
            let s = Self {
                results: Mutex::new(results.iter().copied().collect()),
                ..Default::default()
            };
            let calls = Arc::clone(&s.calls);
            (Box::new(s), calls)
        }
    }

    impl Probe for Scripted {
        fn probe(&self, _target: SocketAddr, _timeout: Duration) -> ProbeFuture<'_> {
            self.calls.lock().unwrap().push(Instant::now());
            let ok = self.results.lock().unwrap().pop_front().unwrap_or(true);
            let reason = if ok {
                "scripted pass"
            } else {
                "scripted failure"
            };
            Box::pin(async move {
                ProbeResult {
                    ok,
                    latency: Duration::ZERO,
                    reason: reason.into(),
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn timing_follows_the_state_machine() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut prober = Prober::new(4, tx);
        let start = Instant::now();
        let (probe, calls) = Scripted::new(&[true, false, false, false, true, true]);
        prober.start(1, spec(tcp(), target()), probe);

        let mut transitions = Vec::new();
        for _ in 0..6 {
            let e = rx.recv().await.unwrap();
            assert_eq!((e.id, e.target), (1, target()));
            transitions.push(e.transition);
        }
        let down = Some(Transition {
            up: false,
            after: 2,
        });
        let up = Some(Transition { up: true, after: 2 });
        assert_eq!(transitions, [None, None, down, None, None, up]);
        assert_eq!(prober.is_up(1), Some(true));

        let calls = calls.lock().unwrap().clone();
        // Within the interval, rounded up to the probe grid.
        assert!(
            calls[0] - start < Duration::from_secs(10) + GRID,
            "first delay within the interval"
        );
        let gaps: Vec<_> = calls.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
        // After: ok (settled up), fail (pending), fail (down), fail (down), ok (pending).
        assert_eq!(gaps, [10, 1, 30, 30, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn passive_reports_bring_a_passing_check_down() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut prober = Prober::new(4, tx);
        let (probe, _) = Scripted::new(&[]);
        let check = HealthConfig {
            passive_fall: 2,
            ..tcp()
        };
        prober.start(3, spec(check, target()), probe);
        prober.passive(3, 1, 0);
        prober.passive(3, 1, 0);
        let e = rx.recv().await.unwrap();
        assert!(e.passive, "{e:?}");
        assert_eq!(
            e.transition,
            Some(Transition {
                up: false,
                after: 2
            })
        );
        assert!(!e.up && !e.result.ok);
        assert!(e.result.reason.contains("passive"), "{}", e.result.reason);
        assert_eq!(prober.is_up(3), Some(false));
        // The passing probes bring it back (rise 2).
        let mut up = None;
        for _ in 0..4 {
            let e = rx.recv().await.unwrap();
            assert!(!e.passive);
            if e.transition.is_some() {
                up = e.transition;
                break;
            }
        }
        assert_eq!(up, Some(Transition { up: true, after: 2 }));
        // Unknown checks are ignored.
        prober.passive(99, 5, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn events_carry_the_state() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut prober = Prober::new(4, tx);
        let (probe, _) = Scripted::new(&[false, false]);
        prober.start(7, spec(tcp(), target()), probe);
        let first = rx.recv().await.unwrap();
        assert_eq!(
            first,
            Event {
                id: 7,
                target: target(),
                result: ProbeResult::fail(Duration::ZERO, "scripted failure"),
                transition: None,
                up: true,
                passive: false,
            }
        );
        let second = rx.recv().await.unwrap();
        assert_eq!(
            second.transition,
            Some(Transition {
                up: false,
                after: 2
            })
        );
        assert!(!second.up);
        assert_eq!(prober.is_up(7), Some(false));
    }

    #[tokio::test(start_paused = true)]
    async fn update_keeps_state_for_the_same_target() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut prober = Prober::new(4, tx);
        let initial = spec(
            HealthConfig {
                rise: 1,
                fall: 1,
                passive_fall: 0,
                ..tcp()
            },
            target(),
        );
        let (probe, calls) = Scripted::new(&[false, false, false]);
        prober.start(1, initial.clone(), probe);
        assert_eq!(
            rx.recv().await.unwrap().transition,
            Some(Transition {
                up: false,
                after: 1
            })
        );

        // New timings and thresholds, same kind and target: still down, same task.
        let faster = spec(
            HealthConfig {
                down_interval: Duration::from_secs(5),
                rise: 3,
                initial_up: true,
                ..initial.check().clone()
            },
            target(),
        );
        prober.update(1, faster.clone());
        assert_eq!(prober.is_up(1), Some(false));
        let before = Instant::now();
        let e = rx.recv().await.unwrap();
        assert!(!e.up);
        assert!(
            Instant::now() - before <= Duration::from_secs(5) + GRID,
            "new down_interval applies"
        );
        assert_eq!(
            calls.lock().unwrap().len(),
            2,
            "the scripted probe kept running"
        );

        // A different kind or target is a different check: the running one does not take
        // it, and `update` starts it afresh from initial_up, as `add` does (here with a
        // scripted probe: a real one would probe the network).
        let http = HealthConfig {
            kind: CheckKind::Http(Arc::new(HttpCheck {
                path: "/".into(),
                host: None,
                expect_status: vec![],
                body_contains: None,
            })),
            ..faster.check().clone()
        };
        assert!(!prober.retune(1, &spec(http, target())));
        let elsewhere = spec(faster.check().clone(), "198.18.0.12:80".parse().unwrap());
        assert!(!prober.retune(1, &elsewhere));
        assert_eq!(prober.is_up(1), Some(false));
        prober.start(1, elsewhere, Scripted::new(&[]).0);
        assert_eq!(prober.is_up(1), Some(true));
        let e = loop {
            let e = rx.recv().await.unwrap();
            if e.target != target() {
                break e;
            }
        };
        assert!(e.up && e.result.ok);

        // Unknown ids are added.
        assert!(!prober.retune(2, &spec(tcp(), target())));
    }

    #[tokio::test(start_paused = true)]
    async fn remove_and_drop_stop_probing() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut prober = Prober::new(4, tx);
        prober.start(1, spec(tcp(), target()), Scripted::new(&[]).0);
        prober.start(2, spec(tcp(), target()), Scripted::new(&[]).0);
        assert_eq!(rx.recv().await.map(|e| e.result.ok), Some(true));

        prober.remove(1);
        assert_eq!(prober.is_up(1), None);
        while rx.try_recv().is_ok() {}
        // Only check 2 reports from now on.
        for _ in 0..5 {
            assert_eq!(rx.recv().await.unwrap().id, 2);
        }

        // Dropping the prober aborts every task, which drops every sender.
        drop(prober);
        let rest = tokio::time::timeout(Duration::from_secs(3600), async {
            while rx.recv().await.is_some() {}
        })
        .await;
        assert!(rest.is_ok(), "the channel closes once every task is gone");
    }

    /// The next transition, which must be to `up`, with the result that caused it.
    async fn wait_for(rx: &mut mpsc::Receiver<Event>, up: bool) -> (Transition, ProbeResult) {
        loop {
            let e = rx.recv().await.unwrap();
            if let Some(t) = e.transition {
                assert_eq!(t.up, up, "{e:?}");
                return (t, e.result);
            }
        }
    }

    #[tokio::test]
    async fn server_shutdown_brings_the_check_down() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                drop(s);
            }
        });

        let (tx, mut rx) = mpsc::channel(64);
        let mut prober = Prober::new(DEFAULT_MAX_IN_FLIGHT, tx);
        let ms = Duration::from_millis;
        let check = HealthConfig {
            interval: ms(20),
            fast_interval: ms(20),
            down_interval: ms(20),
            timeout: ms(500),
            rise: 2,
            fall: 3,
            passive_fall: 0,
            jitter: 0.2,
            initial_up: false,
            ..tcp()
        };
        prober.add(1, spec(check, addr));

        let (t, _) = tokio::time::timeout(Duration::from_secs(10), wait_for(&mut rx, true))
            .await
            .unwrap();
        assert_eq!(t, Transition { up: true, after: 2 });
        assert_eq!(prober.is_up(1), Some(true));

        // Aborting the server task drops the listener: connections are refused.
        server.abort();
        let _ = server.await;
        let (t, result) = tokio::time::timeout(Duration::from_secs(10), wait_for(&mut rx, false))
            .await
            .unwrap();
        assert_eq!(
            t,
            Transition {
                up: false,
                after: 3
            }
        );
        assert_eq!(
            t.describe(addr, &result.reason),
            format!("{addr} DOWN after 3 failures: connection refused")
        );
        assert_eq!(prober.is_up(1), Some(false));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn in_flight_probes_are_bounded() {
        const MAX: usize = 5;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        {
            let (open, peak) = (Arc::clone(&open), Arc::clone(&peak));
            tokio::spawn(async move {
                while let Ok((mut s, _)) = listener.accept().await {
                    let (open, peak) = (Arc::clone(&open), Arc::clone(&peak));
                    tokio::spawn(async move {
                        // Counted from accept until just before the answer: inside the
                        // window in which the prober must hold a permit for it.
                        let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        let mut buf = [0u8; 1024];
                        let _ = s.read(&mut buf).await;
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        open.fetch_sub(1, Ordering::SeqCst);
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                            .await;
                    });
                }
            });
        }

        let (tx, mut rx) = mpsc::channel(1024);
        let mut prober = Prober::new(MAX, tx);
        let http = CheckKind::Http(Arc::new(HttpCheck {
            path: "/".into(),
            host: None,
            expect_status: vec![],
            body_contains: None,
        }));
        let ms = Duration::from_millis;
        for id in 0..50 {
            let check = HealthConfig {
                interval: ms(50),
                fast_interval: ms(50),
                down_interval: ms(50),
                timeout: Duration::from_secs(5),
                jitter: 0.5,
                ..settings(http.clone())
            };
            prober.add(id, spec(check, addr));
        }
        let received = tokio::time::timeout(Duration::from_secs(20), async {
            for _ in 0..150 {
                let e = rx.recv().await.unwrap();
                assert!(e.result.ok, "{e:?}");
            }
        })
        .await;
        assert!(received.is_ok(), "150 probes within 20s");
        let peak = peak.load(Ordering::SeqCst);
        assert!(
            peak <= MAX,
            "peak {peak} connections in flight, bound {MAX}"
        );
        // Demand (50 checks, 30ms each, every ~50ms) far exceeds the bound, so it is reached.
        assert!(peak >= 2, "peak {peak}: probes never overlapped");
    }
}
