//! The rise/fall state machine: a target changes state only after `rise` consecutive
//! successes (down to up) or `fall` consecutive failures (up to down).

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::HealthConfig;

/// A change of state, reported by [`HealthState::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The new state.
    pub up: bool,
    /// How many consecutive results it took.
    pub after: u32,
}

impl Transition {
    /// The log line for this transition, e.g. `198.18.0.11:80 DOWN after 3 failures:
    /// connection refused` or `198.18.0.11:80 UP after 2 successes`. `reason` (the last
    /// probe's) is only shown for DOWN; the caller prefixes the service name.
    pub fn describe(&self, target: SocketAddr, reason: &str) -> String {
        let n = self.after;
        if self.up {
            let noun = if n == 1 { "success" } else { "successes" };
            format!("{target} UP after {n} {noun}")
        } else {
            let noun = if n == 1 { "failure" } else { "failures" };
            if reason.is_empty() {
                format!("{target} DOWN after {n} {noun}")
            } else {
                format!("{target} DOWN after {n} {noun}: {reason}")
            }
        }
    }
}

/// Up or down, and the streak of results that disagree with it.
///
/// Only consecutive results count: one result that agrees with the current state resets the
/// streak, so a flapping target keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthState {
    up: bool,
    /// Consecutive results opposite to `up`.
    streak: u32,
    rise: u32,
    fall: u32,
    /// Consecutive passive failures (full-NAT SYNs refused or unanswered) with no answered
    /// SYN between them; counted apart from the probes' streak.
    passive_streak: u32,
}

impl HealthState {
    /// A state starting `initial_up`; `rise` and `fall` of 0 are taken as 1.
    pub fn new(rise: u32, fall: u32, initial_up: bool) -> Self {
        Self {
            up: initial_up,
            streak: 0,
            rise: rise.max(1),
            fall: fall.max(1),
            passive_streak: 0,
        }
    }

    /// Records one probe result; returns the transition when this result completes one.
    pub fn observe(&mut self, ok: bool) -> Option<Transition> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak = self.streak.saturating_add(1);
        let needed = if self.up { self.fall } else { self.rise };
        if self.streak < needed {
            return None;
        }
        let after = self.streak;
        self.up = ok;
        self.streak = 0;
        Some(Transition { up: ok, after })
    }

    /// Records what the data plane saw of the target's answers since the last report:
    /// `failures` SYNs refused or left unanswered, `answered` SYNs answered. An answered SYN
    /// ends the streak (the order within one report is unknown: answers are taken to come
    /// first, so a report with both still counts its failures). `passive_fall` such failures
    /// in a row bring an up target down (0: never); a down one comes back through its
    /// probes only.
    pub fn observe_passive(
        &mut self,
        failures: u64,
        answered: u64,
        passive_fall: u32,
    ) -> Option<Transition> {
        if answered > 0 {
            self.passive_streak = 0;
        }
        if !self.up || passive_fall == 0 {
            self.passive_streak = 0;
            return None;
        }
        let add = u32::try_from(failures).unwrap_or(u32::MAX);
        self.passive_streak = self.passive_streak.saturating_add(add);
        if self.passive_streak < passive_fall {
            return None;
        }
        let after = self.passive_streak;
        self.up = false;
        self.streak = 0;
        self.passive_streak = 0;
        Some(Transition { up: false, after })
    }

    /// Changes the thresholds, keeping the state and the running streak (a streak already
    /// past a lowered threshold completes on the next disagreeing result).
    pub fn set_thresholds(&mut self, rise: u32, fall: u32) {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
    }

    /// Whether the target is currently up.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Whether a streak towards a change is in progress.
    pub fn pending(&self) -> bool {
        self.streak > 0
    }

    /// Consecutive results that disagree with the current state.
    pub fn streak(&self) -> u32 {
        self.streak
    }

    /// The wait before the next probe (before jitter): `fast_interval` while a change is
    /// pending, `down_interval` while settled down, `interval` while settled up.
    pub fn next_interval(&self, check: &HealthConfig) -> Duration {
        if self.pending() {
            check.fast_interval
        } else if !self.up {
            check.down_interval
        } else {
            check.interval
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CheckKind;

    fn to(up: bool, after: u32) -> Option<Transition> {
        Some(Transition { up, after })
    }

    #[test]
    fn passive_failures_in_a_row_bring_an_up_target_down_and_answers_end_the_streak() {
        let mut s = HealthState::new(2, 3, true);
        assert_eq!(s.observe_passive(2, 0, 3), None);
        // An answered SYN ends the streak; the failures of that report start a new one.
        assert_eq!(s.observe_passive(1, 5, 3), None);
        assert_eq!(s.observe_passive(1, 0, 3), None);
        assert_eq!(s.observe_passive(1, 0, 3), to(false, 3));
        assert!(!s.is_up());
        // Down: passive reports change nothing; probes bring it back.
        assert_eq!(s.observe_passive(10, 0, 3), None);
        assert_eq!(s.observe(true), None);
        assert_eq!(s.observe(true), to(true, 2));
        // One report with more than enough failures is enough; 0 turns it off.
        assert_eq!(s.observe_passive(7, 0, 0), None);
        assert!(s.is_up());
        assert_eq!(s.observe_passive(7, 0, 3), to(false, 7));
        // A probe streak in progress is ended by the passive fall.
        let mut s = HealthState::new(2, 3, true);
        assert_eq!(s.observe(false), None);
        assert_eq!(s.observe_passive(3, 0, 3), to(false, 3));
        assert!(!s.pending());
    }

    #[test]
    fn sequences() {
        // (name, rise, fall, initial_up, results, expected transition after each result)
        #[allow(clippy::type_complexity)]
        let cases: &[(&str, u32, u32, bool, &[bool], &[Option<Transition>])] = &[
            (
                "up stays up",
                2,
                3,
                true,
                &[true, true, true],
                &[None, None, None],
            ),
            (
                "falls after 3 consecutive failures",
                2,
                3,
                true,
                &[false, false, false],
                &[None, None, to(false, 3)],
            ),
            (
                "rises after 2 consecutive successes",
                2,
                3,
                false,
                &[true, true],
                &[None, to(true, 2)],
            ),
            (
                "flapping never falls: counts are consecutive, not cumulative",
                2,
                3,
                true,
                &[false, false, true, false, false, true, false, false, true],
                &[None, None, None, None, None, None, None, None, None],
            ),
            (
                "flapping never rises",
                2,
                3,
                false,
                &[true, false, true, false, true, false],
                &[None, None, None, None, None, None],
            ),
            (
                "down then up again",
                2,
                2,
                true,
                &[false, false, true, false, true, true],
                &[None, to(false, 2), None, None, None, to(true, 2)],
            ),
            (
                "rise 1 and fall 1 follow every result",
                1,
                1,
                true,
                &[false, true, true, false],
                &[to(false, 1), to(true, 1), None, to(false, 1)],
            ),
            (
                "zero thresholds act as 1",
                0,
                0,
                false,
                &[true, false],
                &[to(true, 1), to(false, 1)],
            ),
            (
                "streak restarts after a transition",
                2,
                2,
                true,
                &[false, false, false, true, false, false],
                &[None, to(false, 2), None, None, None, None],
            ),
        ];
        for &(name, rise, fall, initial, results, want) in cases {
            assert_eq!(results.len(), want.len(), "{name}: bad table row");
            let mut s = HealthState::new(rise, fall, initial);
            let got: Vec<_> = results.iter().map(|&ok| s.observe(ok)).collect();
            assert_eq!(got, want, "{name}");
            // The state is whatever the last transition said (or the initial state).
            let last = want
                .iter()
                .rev()
                .find_map(|t| t.map(|t| t.up))
                .unwrap_or(initial);
            assert_eq!(s.is_up(), last, "{name}: final state");
        }
    }

    #[test]
    fn pending_tracks_the_streak() {
        // (results, pending after each)
        let mut s = HealthState::new(2, 3, true);
        let steps = [
            (false, true),
            (false, true),
            (true, false),
            (false, true),
            (false, true),
        ];
        for (i, (ok, pending)) in steps.into_iter().enumerate() {
            s.observe(ok);
            assert_eq!(s.pending(), pending, "step {i}");
        }
        // The third consecutive failure completes the fall and clears the streak.
        assert_eq!(s.observe(false), to(false, 3));
        assert!(!s.pending());
        assert_eq!(s.streak(), 0);
    }

    #[test]
    fn intervals_follow_the_state() {
        let check = HealthConfig {
            kind: CheckKind::Tcp,
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
        };
        let secs = Duration::from_secs;
        // (result, interval after it)
        let steps = [
            (true, secs(10)),  // settled up
            (false, secs(1)),  // pending fall
            (false, secs(30)), // fell: settled down
            (false, secs(30)), // still down
            (true, secs(1)),   // pending rise
            (false, secs(30)), // streak broken: settled down again
            (true, secs(1)),   // pending rise
            (true, secs(10)),  // rose: settled up
        ];
        let mut s = HealthState::new(check.rise, check.fall, check.initial_up);
        assert_eq!(s.next_interval(&check), secs(10));
        for (i, (ok, want)) in steps.into_iter().enumerate() {
            s.observe(ok);
            assert_eq!(s.next_interval(&check), want, "step {i}");
        }
        assert_eq!(
            HealthState::new(2, 2, false).next_interval(&check),
            secs(30)
        );
    }

    #[test]
    fn lowered_threshold_keeps_the_streak() {
        let mut s = HealthState::new(2, 5, true);
        for _ in 0..3 {
            assert_eq!(s.observe(false), None);
        }
        s.set_thresholds(2, 2);
        assert!(s.is_up());
        assert_eq!(s.observe(false), to(false, 4));
    }

    #[test]
    fn describe() {
        let target: SocketAddr = "198.18.0.11:80".parse().unwrap();
        let cases = [
            (
                Transition {
                    up: false,
                    after: 3,
                },
                "connection refused",
                "198.18.0.11:80 DOWN after 3 failures: connection refused",
            ),
            (
                Transition { up: true, after: 2 },
                "HTTP 200",
                "198.18.0.11:80 UP after 2 successes",
            ),
            (
                Transition { up: true, after: 1 },
                "connected",
                "198.18.0.11:80 UP after 1 success",
            ),
            (
                Transition {
                    up: false,
                    after: 1,
                },
                "status 503",
                "198.18.0.11:80 DOWN after 1 failure: status 503",
            ),
            (
                Transition {
                    up: false,
                    after: 2,
                },
                "",
                "198.18.0.11:80 DOWN after 2 failures",
            ),
        ];
        for (t, reason, want) in cases {
            assert_eq!(t.describe(target, reason), want);
        }
        let v6: SocketAddr = "[fd00::11]:8080".parse().unwrap();
        assert_eq!(
            Transition {
                up: false,
                after: 3
            }
            .describe(v6, "timeout after 500ms"),
            "[fd00::11]:8080 DOWN after 3 failures: timeout after 500ms"
        );
    }
}
