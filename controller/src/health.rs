//! What `/healthz` answers: whether the loops that must run do. A replica is healthy while its
//! leader election can talk to its Lease (leading or standing by) and, when it leads, while its
//! controller stream runs. A replica whose Lease calls fail is unhealthy (it cannot lead and
//! cannot tell who does) until they succeed again; one whose election or controller stream has
//! stopped for good is unhealthy for the rest of its life, and the process exits non-zero.

use std::sync::Mutex;
use std::time::Instant;

/// The liveness of one controller process.
#[derive(Debug, Default)]
pub struct Health {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The last Lease call failed: since when, and why.
    lease_failing: Option<(Instant, String)>,
    /// A loop that must run has stopped: which, and why.
    stopped: Option<String>,
}

impl Health {
    /// A Lease call (create, read, acquire, renew) succeeded.
    pub fn lease_ok(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.lease_failing = None;
        }
    }

    /// A Lease call failed with `error` (retried by the election).
    pub fn lease_failing(&self, error: impl std::fmt::Display) {
        if let Ok(mut s) = self.state.lock() {
            let since = s
                .lease_failing
                .as_ref()
                .map_or_else(Instant::now, |(t, _)| *t);
            s.lease_failing = Some((since, error.to_string()));
        }
    }

    /// A loop that must run (`what`) stopped for good.
    pub fn stopped(&self, what: &str, why: impl std::fmt::Display) {
        if let Ok(mut s) = self.state.lock() {
            s.stopped
                .get_or_insert_with(|| format!("{what} stopped: {why}"));
        }
    }

    /// `Ok` when healthy, else why not.
    pub fn check(&self) -> Result<(), String> {
        let Ok(s) = self.state.lock() else {
            return Err("health state poisoned".to_owned());
        };
        if let Some(why) = &s.stopped {
            return Err(why.clone());
        }
        if let Some((since, error)) = &s.lease_failing {
            return Err(format!(
                "leader election cannot reach its Lease for {}s: {error}",
                since.elapsed().as_secs()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_failures_are_unhealthy_until_a_call_succeeds() {
        let h = Health::default();
        assert!(h.check().is_ok());
        h.lease_failing("403 forbidden");
        let why = h.check().expect_err("unhealthy");
        assert!(why.contains("403 forbidden"), "{why}");
        h.lease_ok();
        assert!(h.check().is_ok());
    }

    #[test]
    fn a_stopped_loop_stays_unhealthy() {
        let h = Health::default();
        h.stopped("controller stream", "ended");
        h.lease_ok();
        let why = h.check().expect_err("unhealthy");
        assert!(why.contains("controller stream stopped"), "{why}");
        h.stopped("leader election", "later");
        assert!(h
            .check()
            .expect_err("first reason kept")
            .contains("controller stream"));
    }
}
