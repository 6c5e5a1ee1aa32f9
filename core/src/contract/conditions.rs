//! Condition types (and the reasons other writers or readers match on) of the Tenant and
//! TenantBackup status. `status.conditions` is a list-map keyed by type: each type has one
//! writer (its field manager), named beside it.

/// Tenant: the stack serves (controller). Also the TenantBackup's one condition (controller).
pub const READY: &str = "Ready";
/// Tenant: the desired objects are applied (controller).
pub const SYNCED: &str = "Synced";
/// Tenant: `spec.paused` stops reconciliation (controller).
pub const PAUSED: &str = "Paused";
/// Tenant: the subscription is `past_due` or waits on the customer (controller, from billing's
/// annotations [`crate::contract::labels::PAYMENT_OVERDUE`]).
pub const PAYMENT_OVERDUE: &str = "PaymentOverdue";
/// Tenant: the subscription is cancelled at a later date; the stack runs until then
/// (controller, from billing's annotation [`crate::contract::labels::CANCELLATION_SCHEDULED`]).
pub const CANCELLATION_SCHEDULED: &str = "CancellationScheduled";
/// Tenant: Stripe does not collect the subscription's invoices (`pause_collection`); the stack
/// runs (controller, from billing's annotation [`crate::contract::labels::COLLECTION_PAUSED`]).
pub const COLLECTION_PAUSED: &str = "CollectionPaused";
/// Tenant: `spec.hold` is set, an operator's suspension (controller). Reason
/// [`REASON_OPERATOR_HOLD`] while held, the hold's reason and note in the message.
pub const HELD: &str = "Held";
/// Reason of `Held=True`. One fixed word: the hold's own reason is free text (`abuse`,
/// `dispute`, ...) and a condition reason must be CamelCase, so it goes in the message.
pub const REASON_OPERATOR_HOLD: &str = "OperatorHold";
/// Reason of `Held=False`.
pub const REASON_NOT_HELD: &str = "NotHeld";
/// Event reason when the controller first sees `spec.hold` set.
pub const EVENT_HOLD_SET: &str = "HoldSet";
/// Event reason when the controller sees `spec.hold` removed.
pub const EVENT_HOLD_RELEASED: &str = "HoldReleased";
/// Tenant: the dedicated instance and DNS record are as planned (controller).
pub const CLOUD_READY: &str = "CloudReady";
/// Tenant: its deletion destroys nothing until a person releases it (annotation
/// [`crate::contract::labels::RELEASE_DELETION`]), e.g. its final backup failed (controller).
pub const DELETION_HELD: &str = "DeletionHeld";
/// Tenant: the governing subscription was read back from Stripe (billing).
pub const BILLING_SYNCED: &str = "BillingSynced";
/// Tenant: more than one live subscription governs it (billing).
pub const BILLING_CONFLICT: &str = "BillingConflict";
/// Tenant: the trial ends soon (billing).
pub const TRIAL_ENDING: &str = "TrialEnding";

/// The condition types the controller writes. Every other type on a Tenant's status belongs
/// to another writer and is never part of the controller's apply, so the controller can
/// neither remove nor overwrite it.
pub const CONTROLLER_OWNED: [&str; 9] = [
    READY,
    SYNCED,
    PAUSED,
    PAYMENT_OVERDUE,
    HELD,
    CANCELLATION_SCHEDULED,
    COLLECTION_PAUSED,
    CLOUD_READY,
    DELETION_HELD,
];

/// The condition types billing writes (field manager
/// [`crate::contract::field_managers::BILLING`]).
pub const BILLING_OWNED: [&str; 3] = [BILLING_SYNCED, BILLING_CONFLICT, TRIAL_ENDING];

/// Platform: whether it can be used as it is (controller, field manager of the rollout).
pub const VALID: &str = "Valid";
/// Reason of a Platform's `Valid=False` when it lists a price another Platform listed first
/// (`stackplane_core::billing::prices::owner`); the message names that Platform.
pub const REASON_PRICE_CONFLICT: &str = "PriceConflict";

/// Reason of `Ready=False` (and of its Event) when the spec cannot be planned.
pub const REASON_INVALID_SPEC: &str = "InvalidSpec";
/// Reason of the Event about an unparsable backup schedule.
pub const REASON_INVALID_BACKUP_SCHEDULE: &str = "InvalidBackupSchedule";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_condition_type_has_one_writer() {
        for t in CONTROLLER_OWNED {
            assert!(!BILLING_OWNED.contains(&t), "{t} has two writers");
        }
    }
}
