//! `Tenant`: one customer's subscription to one platform, and the stack that serves it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::DNS1123_LABEL;

/// One customer's subscription to one platform. The controller turns it into an isolated stack:
/// a namespace with quota, limits, network isolation and RBAC, the platform's workloads, and
/// for dedicated tiers an EC2 instance and a DNS record.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "stackplane.io",
    version = "v1alpha1",
    kind = "Tenant",
    doc = "One customer's subscription to one platform, reconciled into an isolated stack.",
    plural = "tenants",
    shortname = "tn",
    category = "stackplane",
    status = "TenantStatus",
    printcolumn = r#"{"name":"Platform","type":"string","jsonPath":".spec.platform"}"#,
    printcolumn = r#"{"name":"Tier","type":"string","jsonPath":".spec.tier"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","priority":1,"jsonPath":".status.endpoint"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","priority":1,"jsonPath":".status.platformRevision"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TenantSpec {
    /// Name of the Platform the customer subscribes to.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS1123_LABEL))]
    pub platform: String,

    /// Name of the tier within the platform (`spec.tiers[].name` of the Platform).
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS1123_LABEL))]
    pub tier: String,

    /// The paying customer.
    pub customer: Customer,

    /// The Stripe subscription this tenant follows. Empty for tenants created by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<Subscription>,

    /// Host label under the platform's domain: the stack is served at `<subdomain>.<domain>`.
    /// Defaults to the tenant's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS1123_LABEL))]
    pub subdomain: Option<String>,

    /// Scale every workload to zero and keep data and secrets (unpaid, paused or cancelled
    /// subscriptions).
    #[serde(default)]
    pub suspended: bool,

    /// Stop reconciling this tenant: nothing is created, changed or deleted until unpaused.
    #[serde(default)]
    pub paused: bool,

    /// An operator's suspension (abuse, a chargeback, a legal request): the stack is scaled to
    /// zero and its dedicated instance stopped while it is set, whatever the subscription says.
    /// Written only by people (the api's `PUT`/`DELETE /api/v1/tenants/{name}/hold`,
    /// `kubectl stackplane hold|release`, a direct edit) and, when enabled, by dispute handling;
    /// never by billing's subscription sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<TenantHold>,

    /// What deleting the Tenant does to its namespace and cloud resources: `Delete` (the
    /// default) removes them after a final backup; `Retain` leaves them, labelled as orphaned.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Scheduled backups of the tenant's data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupPolicy>,

    /// When the subscription ended. The tenant is suspended and deleted once the platform's
    /// `cancellationRetentionDays` have passed, after a final backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_at: Option<Time>,

    /// Pin the tenant to this PlatformRevision: rollouts pass it by until the field is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub platform_revision: Option<String>,
}

/// Why an operator holds a tenant (`spec.hold`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantHold {
    /// A short word for why (`abuse`, `dispute`, `legal`, ...): shown in the `Held` condition.
    #[schemars(length(min = 1, max = HOLD_REASON_MAX_LEN))]
    pub reason: String,
    /// Free text for the next person: a ticket, who asked, when to look again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = HOLD_NOTE_MAX_LEN))]
    pub note: Option<String>,
}

/// Longest `spec.hold.reason` the CRD (and the api) accept.
pub const HOLD_REASON_MAX_LEN: usize = 64;
/// Longest `spec.hold.note` the CRD (and the api) accept.
pub const HOLD_NOTE_MAX_LEN: usize = 1024;

/// The customer as Stripe knows them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Customer {
    /// Stripe customer id, `cus_...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^cus_[A-Za-z0-9]+$"))]
    pub stripe_customer_id: Option<String>,
    /// Billing e-mail address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 254))]
    pub email: Option<String>,
    /// Customer or company name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub name: Option<String>,
}

/// The Stripe subscription behind a tenant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    /// Stripe subscription id, `sub_...`.
    #[schemars(regex(pattern = "^sub_[A-Za-z0-9]+$"))]
    pub id: String,
    /// Status of the subscription as Stripe last reported it (`active`, `trialing`, `past_due`,
    /// `unpaid`, `paused`, `canceled`, `incomplete`, `incomplete_expired`).
    pub status: SubscriptionStatus,
    /// End of the period already paid for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_period_end: Option<Time>,
    /// Quantity of the item whose tier the tenant runs. Changes nothing in the stack (yet); it
    /// feeds the economics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub quantity: Option<i64>,
    /// The subscription's items on this tenant's platform (a bundle's other items are other
    /// tenants'): price, quantity, item id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<SubscriptionItem>,
}

/// One item of a subscription.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionItem {
    /// Stripe price id (`price_...`, or an older plan id).
    #[schemars(length(min = 1, max = 255))]
    pub price: String,
    /// How many of the price the customer buys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub quantity: Option<i64>,
    /// Stripe subscription item id, `si_...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub id: Option<String>,
}

/// Stripe's subscription statuses.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    Incomplete,
    IncompleteExpired,
    Trialing,
    Active,
    PastDue,
    Canceled,
    Unpaid,
    Paused,
}

/// What deleting a Tenant does to what it owns.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete the namespace, the instance and the DNS record (after a final backup).
    #[default]
    Delete,
    /// Leave the namespace (labelled as orphaned), the instance and the DNS record in place.
    Retain,
}

/// Scheduled backups.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupPolicy {
    /// Cron expression (five fields, UTC) of scheduled backups, e.g. `0 3 * * *`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 9, max = 128))]
    pub schedule: Option<String>,
    /// Days a backup is kept before it and its snapshots are removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3650))]
    pub retention_days: Option<i32>,
}

/// Lifecycle phase of a tenant.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum TenantPhase {
    /// Accepted, nothing created yet.
    Pending,
    /// Objects and cloud resources are being created.
    Provisioning,
    /// Every component is available.
    Ready,
    /// Provisioned, but something is not available or a cloud operation failed.
    Degraded,
    /// Workloads scaled to zero; data and secrets kept.
    Suspended,
    /// The subscription ended; the tenant waits out the retention period.
    Cancelled,
    /// The Tenant is being deleted.
    Deleting,
    /// The tenant cannot be provisioned without a change (invalid spec, terminal cloud error).
    Failed,
}

impl TenantPhase {
    /// Every phase, for metrics that report a count per phase.
    pub const ALL: [TenantPhase; 8] = [
        TenantPhase::Pending,
        TenantPhase::Provisioning,
        TenantPhase::Ready,
        TenantPhase::Degraded,
        TenantPhase::Suspended,
        TenantPhase::Cancelled,
        TenantPhase::Deleting,
        TenantPhase::Failed,
    ];

    /// The phase as written in `status.phase`.
    pub fn as_str(self) -> &'static str {
        match self {
            TenantPhase::Pending => "Pending",
            TenantPhase::Provisioning => "Provisioning",
            TenantPhase::Ready => "Ready",
            TenantPhase::Degraded => "Degraded",
            TenantPhase::Suspended => "Suspended",
            TenantPhase::Cancelled => "Cancelled",
            TenantPhase::Deleting => "Deleting",
            TenantPhase::Failed => "Failed",
        }
    }
}

/// What the controller observed of a tenant.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// Lifecycle phase: Pending, Provisioning, Ready, Degraded, Suspended, Cancelled, Deleting
    /// or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<TenantPhase>,
    /// Latest observations: `Ready`, `Synced`, `CloudReady`, `Paused`, `PaymentOverdue`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::conditions")]
    pub conditions: Vec<Condition>,
    /// The tenant's namespace, `tenant-<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// URL the stack is served at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The dedicated EC2 instance, for dedicated tiers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceStatus>,
    /// Fully qualified name of the tenant's DNS record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_record: Option<String>,
    /// Readiness of each component.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<ComponentStatus>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Since when the tenant has been Ready without interruption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_since: Option<Time>,
    /// Volume claims of the tenant's namespace that the Platform no longer names (a component
    /// or its `storage` removed). They are kept, labelled `stackplane.io/retained=true`, and
    /// deleted only with the namespace when the tenant is deleted under `deletionPolicy:
    /// Delete`, after its final backup.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retained_volumes: Vec<String>,
    /// The PlatformRevision the tenant runs: its plan was applied and every Deployment rolled
    /// out to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_revision: Option<String>,
}

/// The dedicated EC2 instance of a tenant.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// EC2 instance id, `i-...`.
    pub id: String,
    /// EC2 instance type.
    #[serde(rename = "type")]
    pub instance_type: String,
    /// EC2 instance state (`pending`, `running`, `stopping`, `stopped`, ...).
    pub state: String,
    /// Public IPv4 address, once assigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
}

/// Readiness of one component.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    /// Component name.
    pub name: String,
    /// Replicas that are ready.
    pub ready_replicas: i32,
    /// Replicas wanted.
    pub replicas: i32,
}

impl TenantSpec {
    /// The spec of a tenant on `tier` of `platform` with every optional field left out: running,
    /// not paused, `deletionPolicy: Delete`, no customer details, no subscription.
    pub fn new(platform: impl Into<String>, tier: impl Into<String>) -> Self {
        TenantSpec {
            platform: platform.into(),
            tier: tier.into(),
            customer: Customer::default(),
            subscription: None,
            subdomain: None,
            suspended: false,
            paused: false,
            hold: None,
            deletion_policy: DeletionPolicy::default(),
            backup: None,
            cancelled_at: None,
            platform_revision: None,
        }
    }
}

impl Tenant {
    /// The host label of the tenant: `spec.subdomain`, or the tenant's name.
    pub fn subdomain(&self) -> &str {
        match self.spec.subdomain.as_deref() {
            Some(s) => s,
            None => self.metadata.name.as_deref().unwrap_or_default(),
        }
    }
}
