//! Background tasks that must keep running (the Tenant and TenantBackup watches, the Platform
//! watch, the billing worker, the queue sampler): each is started again with backoff when it
//! ends or panics, and [`Health`] says which are down, for `/healthz`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A task that ran at least this long is healthy again: its backoff starts over.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// Longest wait between two starts of a task.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Whether each supervised task is running.
#[derive(Clone, Default)]
pub struct Health {
    tasks: Arc<Mutex<BTreeMap<&'static str, bool>>>,
}

impl Health {
    fn set(&self, name: &'static str, running: bool) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.insert(name, running);
        }
    }

    /// The tasks that are not running now, by name.
    pub fn down(&self) -> Vec<&'static str> {
        match self.tasks.lock() {
            Ok(tasks) => tasks
                .iter()
                .filter(|(_, running)| !**running)
                .map(|(name, _)| *name)
                .collect(),
            // A poisoned map means a panic while holding it: report that honestly.
            Err(_) => vec!["supervisor"],
        }
    }

    /// Every supervised task, by name.
    pub fn tasks(&self) -> Vec<&'static str> {
        self.tasks
            .lock()
            .map(|t| t.keys().copied().collect())
            .unwrap_or_default()
    }
}

/// Wait before the `failures`-th restart in a row: 1 s doubling, at most [`MAX_BACKOFF`].
pub fn backoff(failures: u32) -> Duration {
    let secs = 1u64 << failures.saturating_sub(1).min(6);
    Duration::from_secs(secs).min(MAX_BACKOFF)
}

/// Runs `make()` as task `name`, and again (after [`backoff`]) each time it ends or panics.
pub fn supervise<F, Fut>(health: &Health, name: &'static str, mut make: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let health = health.clone();
    health.set(name, true);
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            health.set(name, true);
            let started = Instant::now();
            let ended = tokio::spawn(make()).await;
            health.set(name, false);
            match ended {
                Ok(()) => tracing::error!(task = name, "background task ended; restarting"),
                Err(error) => {
                    tracing::error!(task = name, %error, "background task panicked; restarting")
                }
            }
            if started.elapsed() >= HEALTHY_AFTER {
                failures = 0;
            }
            failures += 1;
            tokio::time::sleep(backoff(failures)).await;
        }
    });
}

/// Runs `task` once as task `name`: it cannot be started again (its state cannot be rebuilt),
/// so when it ends the task stays down and `/healthz` fails until the process is restarted.
pub fn supervise_once<Fut>(health: &Health, name: &'static str, task: Fut)
where
    Fut: Future<Output = ()> + Send + 'static,
{
    let health = health.clone();
    health.set(name, true);
    tokio::spawn(async move {
        let ended = tokio::spawn(task).await;
        health.set(name, false);
        tracing::error!(
            task = name,
            panicked = ended.is_err(),
            "background task ended; /healthz fails until a restart"
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(50), MAX_BACKOFF);
    }
}
