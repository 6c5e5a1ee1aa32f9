//! The errors of a reconcile, each with a stable category used as a metric label and an event
//! reason.

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Applying a desired object failed.
    #[error("apply {kind} {name}: {source}")]
    Apply {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// Deleting an object no longer desired failed.
    #[error("prune {kind} {name}: {source}")]
    Prune {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// Writing the Tenant's status failed.
    #[error("status: {0}")]
    Status(#[source] kube::Error),
    /// The Tenant changed since it was read (its resourceVersion moved on): the status computed
    /// from it was not written, so a stale reconcile never overwrites a newer one.
    #[error("status not written, the tenant changed since it was read: {0}")]
    StatusConflict(#[source] kube::Error),
    /// The Tenant changed since it was read: the finalizer and first revision computed from it
    /// were not written (the next reconcile works from the newer object).
    #[error("metadata not written, the tenant changed since it was read: {0}")]
    MetadataConflict(#[source] kube::Error),
    /// Adding or removing the finalizer, or the clean-up behind it, failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// An object could not be serialized, or a cached Tenant's status not read back.
    #[error("serialize: {0}")]
    Serialize(#[from] serde_json::Error),
    /// The tenant's namespace is still being deleted (not a failure: the finalizer waits).
    #[error("namespace {namespace} is still terminating")]
    NamespaceTerminating { namespace: String },
    /// The final `pre-delete` backup of a tenant is not finished yet (not a failure: the
    /// finalizer waits for it, up to the final-backup timeout).
    #[error("final backup {backup} is not finished yet")]
    FinalBackupPending {
        backup: String,
        retry_in: std::time::Duration,
    },
    /// A dedicated instance of a deleting tenant waits for its `pre-terminate` backup (not a
    /// failure: the finalizer waits for it, up to the final-backup timeout).
    #[error("pre-terminate backup {backup} is not finished yet")]
    PreTerminateBackupPending {
        backup: String,
        retry_in: std::time::Duration,
    },
    /// The tenant's deletion is held (condition `DeletionHeld`): nothing is destroyed until a
    /// person releases it (not a failure: the finalizer waits).
    #[error("deletion held: {reason}")]
    DeletionHeld { reason: &'static str },
    /// The tenant is paused (`spec.paused`): its deletion waits, destroying nothing, until it
    /// is unpaused (not a failure).
    #[error("deletion waits: the tenant is paused")]
    DeletionPaused,
    /// A TenantBackup with the final backup's name exists but is not that tenant's
    /// `pre-delete` backup.
    #[error("TenantBackup {backup} exists but is not this tenant's pre-delete backup")]
    FinalBackupConflict { backup: String },
    /// A cloud (EC2, Route53) call failed.
    #[error("cloud: {0}")]
    Cloud(#[from] crate::cloud::CloudError),
    /// The controller's RoleBinding in a tenant namespace was applied but the API server did not
    /// grant what it binds within the wait (RBAC is cached: a new binding takes a moment to
    /// apply; a ClusterRole missing what the probe asks for never does).
    #[error("access to namespace {namespace} through ClusterRole {cluster_role} not granted after {waited:?}")]
    AccessNotGranted {
        namespace: String,
        cluster_role: String,
        waited: std::time::Duration,
    },
    /// The object has no name (never for objects read from the API server).
    #[error("object without a name")]
    NoName,
}

impl Error {
    /// A short, stable category: the `error` label of the error metric and the event reason.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Apply { .. } => "apply",
            Error::Prune { .. } => "prune",
            Error::Status(_) => "status",
            Error::StatusConflict(_) => "status_conflict",
            Error::MetadataConflict(_) => "metadata_conflict",
            Error::Finalizer(_) => "finalizer",
            Error::Serialize(_) => "serialize",
            Error::NoName => "no_name",
            Error::Cloud(e) => e.metric_label(),
            Error::NamespaceTerminating { .. } => "namespace_terminating",
            Error::FinalBackupPending { .. } => "final_backup_pending",
            Error::PreTerminateBackupPending { .. } => "pre_terminate_backup_pending",
            Error::FinalBackupConflict { .. } => "final_backup_conflict",
            Error::DeletionHeld { .. } => "deletion_held",
            Error::DeletionPaused => "deletion_paused",
            Error::AccessNotGranted { .. } => "access_not_granted",
        }
    }
}

/// Result of the reconciler's steps.
pub type Result<T, E = Error> = std::result::Result<T, E>;
