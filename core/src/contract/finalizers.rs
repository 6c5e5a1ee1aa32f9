//! Finalizers stackplane puts on its own resources.

/// On a Tenant: the controller's cleanup (final backup, cloud objects, namespace) runs before
/// the Tenant goes.
pub const TENANT_CLEANUP: &str = "stackplane.io/tenant-cleanup";
/// On a TenantBackup: its snapshots and dumps are deleted (or kept) before it goes.
pub const BACKUP_CLEANUP: &str = "stackplane.io/backup-cleanup";
