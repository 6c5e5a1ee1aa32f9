//! Leader election on a `coordination.k8s.io/v1` Lease (kube-lease-manager): only the holder
//! reconciles and writes status; when it stops renewing, another replica takes the Lease once
//! it expires.
//!
//! kube-lease-manager's own `watch()` loop logs a failed Lease call and retries it, but keeps
//! reporting the last known state: a leader whose renewals are refused would go on reconciling
//! after its Lease expired and another replica took it. So the campaign here drives
//! `LeaseManager::changed()` itself: a failed Lease call makes this replica step down at once
//! (it cannot prove it still holds the Lease), marks it unhealthy (`crate::health`) and starts
//! over with a new manager after a backoff. A new manager sees at once whether the Lease is
//! still this replica's, so a transient error costs a restart of the controller, not the
//! leadership; creating the Lease is retried the same way, never fatal and never silent.
//!
//! Each replica writes the Lease under a field manager of its own ([`lease_field_manager`]).
//! kube-lease-manager takes a free Lease by a server-side apply of `holderIdentity` without
//! `force`: the API server refuses the second of two replicas applying at once (409, the field
//! is owned by another manager) only if their managers differ. With one manager for every
//! replica both applies succeeded, and two replicas that started together could each read its
//! own name back and lead at once (seen in `tests/leader.rs`: both reconciled the same tenant).

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::health::Health;
use crate::k8s::FIELD_MANAGER;

/// Where and how the Lease is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Name of the Lease.
    pub name: String,
    /// Namespace of the Lease.
    pub namespace: String,
    /// This replica's identity (the Lease's `holderIdentity` while it leads).
    pub identity: String,
    /// Seconds a Lease stays valid after its last renewal.
    pub duration_secs: u64,
    /// Seconds before expiry at which the holder renews.
    pub grace_secs: u64,
}

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lease grace ({grace}s) must be positive and shorter than its duration ({duration}s)")]
    BadTiming { duration: u64, grace: u64 },
    #[error("lease: {0}")]
    Lease(#[from] LeaseManagerError),
    /// The election task ended while the controller still needed it.
    #[error("leader election stopped unexpectedly")]
    ElectionStopped,
    /// The Tenant controller's stream ended while this replica still led.
    #[error("the controller stream stopped unexpectedly while leading")]
    ControllerStopped,
}

impl LeaderError {
    /// A short, stable category for logs and metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            LeaderError::BadTiming { .. } => "bad_timing",
            LeaderError::Lease(_) => "lease",
            LeaderError::ElectionStopped => "election_stopped",
            LeaderError::ControllerStopped => "controller_stopped",
        }
    }
}

/// A running election: `is_leader` says whether this replica holds the Lease. Dropping every
/// receiver ends the campaign, which releases the Lease.
pub struct Election {
    pub is_leader: watch::Receiver<bool>,
    pub task: JoinHandle<()>,
}

/// Longest pause between two attempts after a failed Lease call.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Longest wait for releasing the Lease at shutdown, or for one attempt to build a manager.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts competing for the Lease in the background.
pub async fn elect(
    client: Client,
    config: &LeaseConfig,
    health: Arc<Health>,
) -> Result<Election, LeaderError> {
    if config.grace_secs == 0 || config.grace_secs >= config.duration_secs {
        return Err(LeaderError::BadTiming {
            duration: config.duration_secs,
            grace: config.grace_secs,
        });
    }
    let (tx, is_leader) = watch::channel(false);
    let task = tokio::spawn(campaign(client, config.clone(), tx, health));
    Ok(Election { is_leader, task })
}

/// Longest field manager name the API server accepts.
const MAX_FIELD_MANAGER_LEN: usize = 128;

/// The field manager under which the replica `identity` writes the Lease: unique per identity
/// (see the module's comment), readable when it fits, else named by a hash of the identity.
pub fn lease_field_manager(identity: &str) -> String {
    let named = |suffix: &str| format!("{FIELD_MANAGER}-lease-{suffix}");
    let readable = named(identity);
    if readable.len() <= MAX_FIELD_MANAGER_LEN {
        return readable;
    }
    named(&hex::encode(&Sha256::digest(identity.as_bytes())[..16]))
}

/// Delay before attempt `failures + 1` after consecutive failures.
fn retry_delay(failures: u32) -> Duration {
    crate::backoff::backoff(failures).min(MAX_RETRY)
}

async fn build(client: &Client, config: &LeaseConfig) -> Result<LeaseManager, LeaseManagerError> {
    let built = LeaseManagerBuilder::new(client.clone(), &config.name)
        .with_namespace(&config.namespace)
        .with_identity(&config.identity)
        .with_duration(config.duration_secs)
        .with_grace(config.grace_secs)
        .with_field_manager(lease_field_manager(&config.identity))
        .build();
    match tokio::time::timeout(CALL_TIMEOUT, built).await {
        Ok(result) => result,
        Err(_) => Err(LeaseManagerError::InconsistentState(format!(
            "no answer from the Kubernetes API within {CALL_TIMEOUT:?}"
        ))),
    }
}

/// Competes for the Lease until every receiver of `tx` is gone; then releases it.
async fn campaign(
    client: Client,
    config: LeaseConfig,
    tx: watch::Sender<bool>,
    health: Arc<Health>,
) {
    let lease = format!("{}/{}", config.namespace, config.name);
    let mut failures = 0u32;
    loop {
        let manager = tokio::select! {
            _ = tx.closed() => return,
            built = build(&client, &config) => built,
        };
        let manager = match manager {
            Ok(m) => m,
            Err(error) => {
                failures = failures.saturating_add(1);
                health.lease_failing(&error);
                tracing::warn!(%lease, %error, attempt = failures, "cannot create or read the leader-election Lease; retrying");
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(retry_delay(failures)) => continue,
                }
            }
        };
        health.lease_ok();
        loop {
            let changed = tokio::select! {
                _ = tx.closed() => {
                    match tokio::time::timeout(CALL_TIMEOUT, manager.release()).await {
                        Ok(Ok(())) => tracing::info!(%lease, "lease released"),
                        Ok(Err(error)) => tracing::warn!(%lease, %error, "releasing the lease failed"),
                        Err(_) => tracing::warn!(%lease, "lease not released within {CALL_TIMEOUT:?}"),
                    }
                    return;
                }
                changed = manager.changed() => changed,
            };
            match changed {
                Ok(leading) => {
                    failures = 0;
                    health.lease_ok();
                    tx.send_replace(leading);
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    health.lease_failing(&error);
                    let was_leading = tx.send_replace(false);
                    tracing::error!(%lease, %error, was_leading, attempt = failures, "leader election cannot reach its Lease: stepped down, retrying");
                    break;
                }
            }
        }
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(retry_delay(failures)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_replica_writes_the_lease_under_its_own_field_manager() {
        assert_eq!(
            lease_field_manager("controller-7d9f-abcde"),
            "stackplane-controller-lease-controller-7d9f-abcde"
        );
        assert_ne!(lease_field_manager("a"), lease_field_manager("b"));
        // Identities too long to be named in full differ by a hash, and fit.
        let long = "x".repeat(253);
        let other = format!("{}y", "x".repeat(252));
        for identity in [&long, &other] {
            assert!(lease_field_manager(identity).len() <= MAX_FIELD_MANAGER_LEN);
        }
        assert_ne!(lease_field_manager(&long), lease_field_manager(&other));
    }

    #[test]
    fn retries_back_off_and_stay_bounded() {
        assert!(retry_delay(1) <= Duration::from_secs(2));
        assert!(retry_delay(50) <= MAX_RETRY);
        assert!(retry_delay(50) >= Duration::from_secs(20));
    }
}
