//! Retry pacing shared by the Tenant and TenantBackup reconcilers: consecutive failures per
//! object and an exponential backoff from them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Exponential backoff with jitter: 1 s doubling per consecutive failure, at most 5 min, then
/// ±20 % at random.
pub fn backoff(failures: u32) -> Duration {
    let base = 1u64 << failures.saturating_sub(1).min(9);
    let secs = (base as f64).min(300.0);
    let jitter = 0.8 + rand::random::<f64>() * 0.4;
    Duration::from_secs_f64(secs * jitter)
}

/// Consecutive failed reconciles per object name.
#[derive(Debug, Default)]
pub struct Failures(Mutex<HashMap<String, u32>>);

impl Failures {
    /// Records one more failure of `name`; returns how many in a row.
    pub fn failed(&self, name: &str) -> u32 {
        let Ok(mut f) = self.0.lock() else {
            return 1;
        };
        let n = f.entry(name.to_owned()).or_default();
        *n = n.saturating_add(1);
        *n
    }

    /// Forgets the failures of `name` after a successful reconcile.
    pub fn succeeded(&self, name: &str) {
        if let Ok(mut f) = self.0.lock() {
            f.remove(name);
        }
    }

    /// Whether `name` is in backoff: a pass failed (not a conflict or a wait, which requeue
    /// without a count) and none has succeeded since.
    pub fn failing(&self, name: &str) -> bool {
        self.0.lock().map(|f| f.contains_key(name)).unwrap_or(false)
    }

    /// The backoff after one more failure of `name`.
    pub fn next_delay(&self, name: &str) -> Duration {
        backoff(self.failed(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) <= Duration::from_secs_f64(1.2));
        assert!(backoff(4) >= Duration::from_secs_f64(6.4));
        assert!(backoff(100) <= Duration::from_secs(360));
        assert!(backoff(100) >= Duration::from_secs(240));
    }

    #[test]
    fn failures_count_per_name_and_reset() {
        let f = Failures::default();
        assert_eq!(f.failed("a"), 1);
        assert_eq!(f.failed("a"), 2);
        assert_eq!(f.failed("b"), 1);
        assert!(f.failing("a"));
        f.succeeded("a");
        assert!(!f.failing("a"));
        assert_eq!(f.failed("a"), 1);
    }
}
