//! Labels and annotations every object stackplane creates carries. The controller prunes by
//! them and the API selects by them, so they are part of the contract.

/// `app.kubernetes.io/managed-by`.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY`] on everything stackplane creates.
pub const MANAGED_BY_VALUE: &str = "stackplane";
/// Name of the Tenant an object belongs to.
pub const TENANT: &str = "stackplane.io/tenant";
/// Name of the Platform of that Tenant.
pub const PLATFORM: &str = "stackplane.io/platform";
/// Name of the component a workload object belongs to.
pub const COMPONENT: &str = "stackplane.io/component";
/// Set on a namespace left behind by a Tenant deleted with `deletionPolicy: Retain`, or
/// released because the Tenant CRD was being deleted ([`ORPHANED_BY`]).
pub const ORPHANED: &str = "stackplane.io/orphaned";
/// Annotation on a namespace whose Tenant was released without deleting anything because the
/// Tenant CRD itself was being deleted; its value is [`ORPHANED_BY_CRD_DELETION`]. Removed once
/// a Tenant of the same name adopts the namespace again.
pub const ORPHANED_BY: &str = "stackplane.io/orphaned-by";
/// The value of [`ORPHANED_BY`] for a namespace released by a deletion of the Tenant CRD.
pub const ORPHANED_BY_CRD_DELETION: &str = "tenant-crd-deletion";
/// Annotation on such a namespace: the Tenant's spec (JSON), what `kubectl stackplane adopt`
/// recreates the Tenant from.
pub const TENANT_SPEC: &str = "stackplane.io/tenant-spec";
/// Annotation next to [`TENANT_SPEC`]: the Tenant's own labels (JSON object).
pub const TENANT_LABELS: &str = "stackplane.io/tenant-labels";
/// Annotation next to [`TENANT_SPEC`]: the uid of the released Tenant. Its dedicated instance
/// and DNS ownership record are tagged with that uid; a Tenant of the same name that adopts the
/// namespace takes them over (a new uid) rather than launching a new, empty instance.
pub const ORPHANED_UID: &str = "stackplane.io/orphaned-uid";
/// Annotation next to [`ORPHANED_UID`]: the DNS record (`status.dnsRecord`) the released
/// Tenant owned, whose ownership record is handed over with the instance.
pub const ORPHANED_DNS_RECORD: &str = "stackplane.io/orphaned-dns-record";
/// Set (`true`) on a volume claim the Platform no longer names: the controller keeps it rather
/// than pruning customer data; it goes only with the tenant's namespace.
pub const RETAINED: &str = "stackplane.io/retained";
/// Label (and EC2 tag) naming the TenantBackup an object or snapshot belongs to. Its value is
/// [`stackplane_crds::naming::label_value`] of the backup's name (names may be longer than a label).
pub const BACKUP: &str = "stackplane.io/backup";
/// Annotation billing sets on a Tenant whose subscription is `past_due`; the controller turns
/// it into the `PaymentOverdue` condition.
pub const PAYMENT_OVERDUE: &str = "stackplane.io/payment-overdue";
/// Annotation billing sets next to [`PAYMENT_OVERDUE`] when the reason is more than `past_due`
/// (e.g. `payment_action_required`: the customer must authenticate a payment); the controller
/// puts it in the `PaymentOverdue` condition's reason.
pub const PAYMENT_OVERDUE_REASON: &str = "stackplane.io/payment-overdue-reason";
/// Annotation billing sets on a Tenant whose subscription is cancelled at a later date
/// (`cancel_at`, `cancel_at_period_end`): that date, RFC 3339. The controller turns it into the
/// `CancellationScheduled` condition; the stack runs until then.
pub const CANCELLATION_SCHEDULED: &str = "stackplane.io/cancellation-scheduled";
/// Annotation billing sets on a Tenant whose subscription's collection is paused
/// (`pause_collection`): its behavior (`keep_as_draft`, `mark_uncollectible`, `void`). The
/// controller turns it into the `CollectionPaused` condition; it is not a suspension.
pub const COLLECTION_PAUSED: &str = "stackplane.io/collection-paused";
/// Annotation next to [`COLLECTION_PAUSED`]: when collection resumes by itself, RFC 3339.
pub const COLLECTION_RESUMES_AT: &str = "stackplane.io/collection-resumes-at";

/// Label (`true`) of a tenant that takes part in a rollout's `canary: true` waves.
pub const CANARY: &str = "stackplane.io/canary";
/// Annotation the rollout sets on a Tenant: the PlatformRevision the tenant is to run.
pub const TARGET_REVISION: &str = "stackplane.io/target-revision";
/// Annotation set with [`TARGET_REVISION`]: when the tenant was moved (RFC 3339).
pub const REVISION_MOVED_AT: &str = "stackplane.io/revision-moved-at";
/// Annotation (`"true"`) a person sets on a Tenant to release a held deletion (condition
/// `DeletionHeld`): its data is destroyed although its final backup failed or timed out.
pub const RELEASE_DELETION: &str = "stackplane.io/release-deletion";
/// Annotation the controller puts on a final backup when it stops waiting for it, with how the
/// wait ended (`Completed`, `Failed`, `TimedOut`, ...): the record of what the tenant's data was
/// destroyed after, and what makes the Event about it appear once.
pub const FINAL_BACKUP_OUTCOME: &str = "stackplane.io/final-backup-outcome";
/// Label on a final backup: the uid of the Tenant lifecycle it belongs to.
pub const TENANT_UID: &str = "stackplane.io/tenant-uid";
/// Annotation on a Platform asking the rollout to `pause`, `resume` or `rollback`; the
/// controller acts on it and removes it.
pub const ROLLOUT_CONTROL: &str = "stackplane.io/rollout";

/// The labels of an object belonging to `tenant` of `platform`.
pub fn tenant_labels(tenant: &str, platform: &str) -> std::collections::BTreeMap<String, String> {
    [
        (MANAGED_BY, MANAGED_BY_VALUE),
        (TENANT, tenant),
        (PLATFORM, platform),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Label selector of every object of `tenant`.
pub fn tenant_selector(tenant: &str) -> String {
    format!("{MANAGED_BY}={MANAGED_BY_VALUE},{TENANT}={tenant}")
}

/// Label selector of every object made for the TenantBackup `backup`.
pub fn backup_selector(backup: &str) -> String {
    format!("{BACKUP}={}", stackplane_crds::naming::label_value(backup))
}
