//! The tags stackplane puts on everything it makes in AWS: one list, read by the cloud step,
//! the backup reconciler and the cloud garbage collector.

/// The tenant's name.
pub const TENANT: &str = crate::contract::labels::TENANT;
/// The tenant's uid: what makes a resource the tenant's, also across a delete and a re-create
/// under the same name. The garbage collector deletes what carries a uid no Tenant has.
pub const TENANT_UID: &str = "stackplane.io/tenant-uid";
/// The tenant's platform.
pub const PLATFORM: &str = crate::contract::labels::PLATFORM;
/// `true` on what a `deletionPolicy: Retain` tenant leaves behind: the garbage collector never
/// touches it. `false` otherwise (a tag value can be compared; a missing tag cannot be told
/// from an old controller's resource).
pub const RETAINED: &str = crate::contract::labels::RETAINED;
/// The backup a snapshot belongs to (its name).
pub const BACKUP: &str = crate::contract::labels::BACKUP;
/// The uid of the backup a snapshot belongs to: snapshots outlive their tenant (the final
/// `pre-delete` backup is the point), so they are collected when their backup is gone.
pub const BACKUP_UID: &str = "stackplane.io/backup-uid";
/// The restore a volume was made by.
pub const RESTORE: &str = "stackplane.io/restore";
/// The snapshot a restored volume was made from.
pub const SNAPSHOT: &str = "stackplane.io/snapshot";
/// Marks everything stackplane made in the account.
pub const MANAGED_BY: &str = "ManagedBy";
/// Value of [`MANAGED_BY`].
pub const MANAGED_BY_VALUE: &str = "stackplane";
/// The tenant's Stripe customer (for the bill's cost allocation).
pub const CUSTOMER: &str = "Customer";
/// The tenant's tier.
pub const PLAN: &str = "Plan";
/// The EC2 console's name column.
pub const NAME: &str = "Name";

/// The value of [`RETAINED`] for a deletion policy.
pub fn retained_value(policy: stackplane_crds::DeletionPolicy) -> &'static str {
    match policy {
        stackplane_crds::DeletionPolicy::Retain => "true",
        stackplane_crds::DeletionPolicy::Delete => "false",
    }
}
