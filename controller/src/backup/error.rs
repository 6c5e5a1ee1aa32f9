//! Why a backup reconcile failed, each with a stable category used as a metric label and an
//! event reason.

use super::ec2::Ec2Error;

/// Why a backup reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Writing the TenantBackup's status failed.
    #[error("status: {0}")]
    Status(#[source] kube::Error),
    /// The TenantBackup changed since it was read: the status computed from it was not written.
    #[error("status not written, the backup changed since it was read: {0}")]
    StatusConflict(#[source] kube::Error),
    /// Adding or removing the finalizer, or the clean-up behind it, failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// A call to EC2 failed.
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    /// An object could not be serialized.
    #[error("serialize: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl Error {
    /// A short, stable category: the `error` label of the error metric and the event reason.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "backup_kube",
            Error::Status(_) => "backup_status",
            Error::StatusConflict(_) => "backup_status_conflict",
            Error::Finalizer(_) => "backup_finalizer",
            Error::Ec2(_) => "backup_ec2",
            Error::Serialize(_) => "backup_serialize",
        }
    }
}

/// Result of the backup reconciler's steps.
pub type Result<T, E = Error> = std::result::Result<T, E>;
