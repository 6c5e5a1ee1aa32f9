//! Leader election on a `coordination.k8s.io/v1` Lease (kube-lease-manager): only the holder
//! reconciles and writes status; when it stops renewing, another replica takes the Lease once
//! it expires.

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

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
}

/// A running election: `is_leader` says whether this replica holds the Lease. Dropping the
/// receiver releases the Lease (the background task then ends).
pub struct Election {
    pub is_leader: watch::Receiver<bool>,
    pub task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

/// Starts competing for the Lease in the background.
pub async fn elect(client: Client, config: &LeaseConfig) -> Result<Election, LeaderError> {
    if config.grace_secs == 0 || config.grace_secs >= config.duration_secs {
        return Err(LeaderError::BadTiming {
            duration: config.duration_secs,
            grace: config.grace_secs,
        });
    }
    let manager = LeaseManagerBuilder::new(client, &config.name)
        .with_namespace(&config.namespace)
        .with_identity(&config.identity)
        .with_duration(config.duration_secs)
        .with_grace(config.grace_secs)
        .build()
        .await?;
    let (is_leader, task) = manager.watch().await;
    Ok(Election { is_leader, task })
}
