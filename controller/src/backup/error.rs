//! Why a backup reconcile failed, each with a stable category used as a metric label and an
//! event reason.

use crate::cloud::CloudError;

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
    /// A cloud (EC2) call failed, or the check before a create refused it: classified as in
    /// the cloud step (throttling is `aws_retryable`, a refused request `aws_terminal`, ...).
    #[error("cloud: {0}")]
    Cloud(#[from] CloudError),
    /// An object could not be serialized.
    #[error("serialize: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl Error {
    /// A short, stable category: the `error` label of the error metric and the event reason.
    /// A cloud error keeps its own category ([`CloudError::metric_label`]), the same as in the
    /// cloud step.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "backup_kube",
            Error::Status(_) => "backup_status",
            Error::StatusConflict(_) => "backup_status_conflict",
            Error::Finalizer(_) => "backup_finalizer",
            Error::Cloud(e) => e.metric_label(),
            Error::Serialize(_) => "backup_serialize",
        }
    }
}

/// Result of the backup reconciler's steps.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::Retry;

    #[test]
    fn a_cloud_error_keeps_its_category() {
        let throttled = Error::from(CloudError::Retryable {
            operation: "CreateSnapshot",
            code: "RequestLimitExceeded".into(),
            message: "Request limit exceeded.".into(),
        });
        assert_eq!(throttled.metric_label(), "aws_retryable");
        let refused = Error::from(CloudError::Terminal {
            operation: "CreateSnapshot",
            code: "UnauthorizedOperation".into(),
            message: "not allowed".into(),
        });
        assert_eq!(refused.metric_label(), "aws_terminal");
        let gone = Error::from(CloudError::OwnerGone {
            operation: "CreateSnapshot",
            why: "backup b9 no longer exists".into(),
        });
        assert_eq!(gone.metric_label(), "owner_gone");
        let Error::Cloud(e) = &throttled else {
            panic!("not a cloud error: {throttled}");
        };
        assert_eq!(e.retry(), Retry::Retryable);
        assert_eq!(e.code(), Some("RequestLimitExceeded"));
        assert_eq!(
            throttled.to_string(),
            "cloud: CreateSnapshot: RequestLimitExceeded: Request limit exceeded. (will retry)"
        );
    }
}
