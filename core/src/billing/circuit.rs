//! The circuit breaker of the Stripe API calls: after `threshold` consecutive outage-like
//! failures (timeouts, connection errors, 5xx) the circuit opens and calls are refused at once
//! for `cool_down`, so a hanging Stripe costs each event nothing instead of a timeout per
//! attempt; events then apply from their payloads. After the cool-down one call at a time is let
//! through as a probe: its success closes the circuit, its failure opens it again.
//!
//! Pure: the caller passes the time and reports each call's outcome.

use std::time::{Duration, Instant};

/// When the circuit opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitPolicy {
    /// Consecutive outage-like failures that open the circuit (at least 1).
    pub threshold: u32,
    /// How long an open circuit refuses calls before letting a probe through.
    pub cool_down: Duration,
}

impl Default for CircuitPolicy {
    fn default() -> Self {
        Self {
            threshold: 3,
            cool_down: Duration::from_secs(30),
        }
    }
}

/// What one finished call tells the circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// Stripe answered (any status that is not a 5xx: a 4xx or 429 is Stripe working).
    Answered,
    /// A timeout, a connection error or a 5xx: Stripe is not working.
    Outage,
}

/// Whether a call may be made now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: call.
    Call,
    /// Half-open: this call is the probe; its outcome closes or reopens the circuit.
    Probe,
    /// Open (or a probe is in flight): do not call; retry after this long at the earliest.
    Refuse { retry_after: Duration },
}

/// A change of the circuit's state, for logs and the open-circuit metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// A probe was let through at `since`; a probe that never reports (its task was cancelled)
    /// is given up after a cool-down, and another is let through.
    Probing {
        since: Instant,
    },
}

/// The breaker's state.
#[derive(Debug, Clone)]
pub struct Circuit {
    policy: CircuitPolicy,
    consecutive_outages: u32,
    state: State,
}

impl Circuit {
    pub fn new(policy: CircuitPolicy) -> Self {
        Self {
            policy: CircuitPolicy {
                threshold: policy.threshold.max(1),
                ..policy
            },
            consecutive_outages: 0,
            state: State::Closed,
        }
    }

    /// Whether calls are being refused (open, or half-open with a probe in flight).
    pub fn is_open(&self) -> bool {
        !matches!(self.state, State::Closed)
    }

    /// Consecutive outage-like failures seen so far.
    pub fn consecutive_outages(&self) -> u32 {
        self.consecutive_outages
    }

    /// Asks whether a call may be made at `now`.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            State::Closed => Admission::Call,
            State::Open { until } if now >= until => {
                self.state = State::Probing { since: now };
                Admission::Probe
            }
            State::Open { until } => Admission::Refuse {
                retry_after: until.saturating_duration_since(now),
            },
            State::Probing { since } => {
                let given_up = since + self.policy.cool_down;
                if now >= given_up {
                    self.state = State::Probing { since: now };
                    Admission::Probe
                } else {
                    Admission::Refuse {
                        retry_after: given_up.saturating_duration_since(now),
                    }
                }
            }
        }
    }

    /// Records the outcome of a call made at `now` (admitted as a call or a probe).
    pub fn record(&mut self, outcome: CallOutcome, now: Instant) -> Option<Transition> {
        match outcome {
            CallOutcome::Answered => {
                self.consecutive_outages = 0;
                if self.is_open() {
                    self.state = State::Closed;
                    return Some(Transition::Closed);
                }
                None
            }
            CallOutcome::Outage => {
                self.consecutive_outages = self.consecutive_outages.saturating_add(1);
                let trips = match self.state {
                    State::Closed => self.consecutive_outages >= self.policy.threshold,
                    // A failed probe reopens at once; a call admitted before the circuit
                    // opened and failing after it changes nothing.
                    State::Probing { .. } => true,
                    State::Open { .. } => false,
                };
                if !trips {
                    return None;
                }
                let was_open = self.is_open();
                self.state = State::Open {
                    until: now + self.policy.cool_down,
                };
                (!was_open).then_some(Transition::Opened)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CircuitPolicy {
        CircuitPolicy {
            threshold: 3,
            cool_down: Duration::from_secs(30),
        }
    }

    #[test]
    fn opens_after_threshold_consecutive_outages_only() {
        let t0 = Instant::now();
        let mut c = Circuit::new(policy());
        assert_eq!(c.record(CallOutcome::Outage, t0), None);
        assert_eq!(c.record(CallOutcome::Outage, t0), None);
        // An answer (even a 4xx) resets the count.
        assert_eq!(c.record(CallOutcome::Answered, t0), None);
        assert_eq!(c.record(CallOutcome::Outage, t0), None);
        assert_eq!(c.record(CallOutcome::Outage, t0), None);
        assert_eq!(c.admit(t0), Admission::Call);
        assert_eq!(c.record(CallOutcome::Outage, t0), Some(Transition::Opened));
        assert!(c.is_open());
        assert_eq!(
            c.admit(t0 + Duration::from_secs(10)),
            Admission::Refuse {
                retry_after: Duration::from_secs(20)
            }
        );
    }

    #[test]
    fn late_failures_of_calls_admitted_before_opening_do_not_extend_it() {
        let t0 = Instant::now();
        let mut c = Circuit::new(policy());
        for _ in 0..3 {
            c.record(CallOutcome::Outage, t0);
        }
        assert_eq!(
            c.record(CallOutcome::Outage, t0 + Duration::from_secs(20)),
            None
        );
        assert_eq!(
            c.admit(t0 + Duration::from_secs(30)),
            Admission::Probe,
            "the cool-down counts from the opening"
        );
    }

    #[test]
    fn one_probe_after_the_cool_down_closes_or_reopens() {
        let t0 = Instant::now();
        let mut c = Circuit::new(policy());
        for _ in 0..3 {
            c.record(CallOutcome::Outage, t0);
        }
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(c.admit(t1), Admission::Probe);
        // While the probe is in flight every other call is refused.
        assert!(matches!(c.admit(t1), Admission::Refuse { .. }));
        assert_eq!(c.record(CallOutcome::Outage, t1), None, "still open");
        assert!(matches!(
            c.admit(t1 + Duration::from_secs(29)),
            Admission::Refuse { .. }
        ));
        let t2 = t1 + Duration::from_secs(30);
        assert_eq!(c.admit(t2), Admission::Probe);
        assert_eq!(
            c.record(CallOutcome::Answered, t2),
            Some(Transition::Closed)
        );
        assert!(!c.is_open());
        assert_eq!(c.admit(t2), Admission::Call);
        assert_eq!(c.consecutive_outages(), 0);
    }

    #[test]
    fn a_probe_that_never_reports_is_given_up_after_a_cool_down() {
        let t0 = Instant::now();
        let mut c = Circuit::new(policy());
        for _ in 0..3 {
            c.record(CallOutcome::Outage, t0);
        }
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(c.admit(t1), Admission::Probe);
        assert!(matches!(
            c.admit(t1 + Duration::from_secs(29)),
            Admission::Refuse { .. }
        ));
        assert_eq!(c.admit(t1 + Duration::from_secs(30)), Admission::Probe);
    }

    #[test]
    fn a_threshold_of_zero_acts_as_one() {
        let t0 = Instant::now();
        let mut c = Circuit::new(CircuitPolicy {
            threshold: 0,
            cool_down: Duration::from_secs(1),
        });
        assert_eq!(c.admit(t0), Admission::Call);
        assert_eq!(c.record(CallOutcome::Outage, t0), Some(Transition::Opened));
    }
}
