//! The Tenant's status, computed (pure) from what was planned and what the Deployments report:
//! conditions, phase, components, and the body of the server-side apply that writes it (the
//! controller's `tenant::status::write` sends it).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ManagedFieldsEntry, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde_json::json;
use stackplane_crds::{ComponentStatus, SubscriptionStatus, Tenant, TenantPhase, TenantStatus};

use super::deployment::DeploymentReport;
use super::plan::PlannedComponent;
use super::serving::{idle_reason, IdleReason};

use crate::contract::conditions::{
    CANCELLATION_SCHEDULED, COLLECTION_PAUSED, CONTROLLER_OWNED, HELD, PAYMENT_OVERDUE, READY,
    REASON_NOT_HELD, REASON_OPERATOR_HOLD,
};
use crate::contract::field_managers::BILLING as BILLING_FIELD_MANAGER;
use crate::contract::labels::PAYMENT_OVERDUE as PAYMENT_OVERDUE_ANNOTATION;

/// A condition as the controller wants it; `lastTransitionTime` is filled in by [`conditions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Want {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Want {
            type_,
            status,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
}

/// The conditions of `previous` with `wants` set; a condition's `lastTransitionTime` changes
/// only when its status changes.
pub fn conditions(
    previous: &[Condition],
    wants: &[Want],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = previous
        .iter()
        .filter(|c| !wants.iter().any(|w| w.type_ == c.type_))
        .cloned()
        .collect();
    for w in wants {
        let status = if w.status { "True" } else { "False" };
        let last = previous
            .iter()
            .find(|c| c.type_ == w.type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        out.push(Condition {
            type_: w.type_.to_owned(),
            status: status.to_owned(),
            reason: w.reason.clone(),
            // The API server rejects an empty message (it is serialized as null).
            message: if w.message.is_empty() {
                w.reason.clone()
            } else {
                w.message.clone()
            },
            last_transition_time: last,
            observed_generation: generation,
        });
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// Readiness of each planned component from its Deployment's report (none: no such Deployment).
pub fn component_status(
    planned: &[PlannedComponent],
    deployments: &[DeploymentReport],
) -> Vec<ComponentStatus> {
    planned
        .iter()
        .map(|c| {
            let ready = report_of(deployments, &c.name)
                .map(|d| d.ready_replicas.min(d.available_replicas))
                .unwrap_or(0);
            ComponentStatus {
                name: c.name.clone(),
                ready_replicas: ready,
                replicas: c.replicas,
            }
        })
        .collect()
}

fn report_of<'a>(deployments: &'a [DeploymentReport], name: &str) -> Option<&'a DeploymentReport> {
    deployments.iter().find(|d| &*d.name == name)
}

/// Whether every planned component's Deployment rolled out to its current spec: the
/// Deployment controller observed its generation (a node that reports no generation is taken
/// at its word) and updated the wanted number of replicas.
pub fn rolled_out(planned: &[PlannedComponent], deployments: &[DeploymentReport]) -> bool {
    planned.iter().all(|c| {
        let Some(d) = report_of(deployments, &c.name) else {
            return false;
        };
        let observed = d
            .observed_generation
            .is_none_or(|g| Some(g) >= d.generation);
        observed && (c.replicas == 0 || d.updated_replicas >= c.replicas)
    })
}

/// A component whose Deployment stopped making progress: Kubernetes marked it
/// `Progressing=False ProgressDeadlineExceeded` because its pods did not become ready (a
/// failing readiness probe, an image that cannot run) within the deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stalled {
    pub name: String,
    /// The Deployment controller's explanation.
    pub message: String,
}

/// The planned components whose Deployment reports `ProgressDeadlineExceeded` for its current
/// generation (a condition left from an older spec does not count: the new one may progress).
pub fn stalled(planned: &[PlannedComponent], deployments: &[DeploymentReport]) -> Vec<Stalled> {
    planned
        .iter()
        .filter(|c| c.replicas > 0)
        .filter_map(|c| {
            let d = report_of(deployments, &c.name)?;
            if d.observed_generation
                .is_some_and(|g| Some(g) < d.generation)
            {
                return None;
            }
            Some(Stalled {
                name: c.name.clone(),
                message: d.deadline_exceeded.as_deref()?.to_owned(),
            })
        })
        .collect()
}

/// Whether every component has all its replicas ready.
pub fn all_ready(components: &[ComponentStatus]) -> bool {
    components.iter().all(|c| c.ready_replicas >= c.replicas)
}

/// The phase of a provisioned tenant.
pub fn phase(
    tenant: &Tenant,
    components: &[ComponentStatus],
    stalled: &[Stalled],
    previous: Option<&TenantStatus>,
) -> TenantPhase {
    match idle_reason(tenant) {
        Some(IdleReason::Cancelled) => return TenantPhase::Cancelled,
        // A first payment that never went through stops the stack as a suspension does.
        // An operator's hold is a suspension too; the `Held` condition tells them apart.
        Some(IdleReason::Suspended | IdleReason::Incomplete | IdleReason::Held) => {
            return TenantPhase::Suspended
        }
        None => {}
    }
    if all_ready(components) {
        TenantPhase::Ready
    } else if !stalled.is_empty()
        || previous.and_then(|s| s.ready_since.as_ref()).is_some()
        || previous.and_then(|s| s.phase) == Some(TenantPhase::Degraded)
    {
        TenantPhase::Degraded
    } else {
        TenantPhase::Provisioning
    }
}

/// The Ready condition matching `phase`.
pub fn ready_condition(
    phase: TenantPhase,
    components: &[ComponentStatus],
    stalled: &[Stalled],
) -> Want {
    let waiting: Vec<String> = components
        .iter()
        .filter(|c| c.ready_replicas < c.replicas)
        .map(|c| format!("{} ({}/{})", c.name, c.ready_replicas, c.replicas))
        .collect();
    match phase {
        TenantPhase::Ready => Want::new(
            READY,
            true,
            "AllComponentsAvailable",
            "every component is available",
        ),
        TenantPhase::Suspended => {
            Want::new(READY, false, "Suspended", "workloads are scaled to zero")
        }
        TenantPhase::Cancelled => Want::new(
            READY,
            false,
            "Cancelled",
            "the subscription ended; workloads are scaled to zero",
        ),
        _ if !stalled.is_empty() => {
            let named: Vec<String> = stalled
                .iter()
                .map(|s| {
                    let counts = components
                        .iter()
                        .find(|c| c.name == s.name)
                        .map(|c| format!(" ({}/{})", c.ready_replicas, c.replicas))
                        .unwrap_or_default();
                    format!("{}{counts}: {}", s.name, s.message)
                })
                .collect();
            Want::new(
                READY,
                false,
                "ComponentsStalled",
                format!("no progress within the deadline: {}", named.join("; ")),
            )
        }
        _ => Want::new(
            READY,
            false,
            "ComponentsUnavailable",
            format!("waiting for: {}", waiting.join(", ")),
        ),
    }
}

/// The `PaymentOverdue` condition: True while billing says the subscription is `past_due`
/// (its annotation, or the subscription status it wrote). The stack keeps running either way.
pub fn payment_overdue_condition(tenant: &Tenant) -> Want {
    let annotated = tenant
        .annotations()
        .get(PAYMENT_OVERDUE_ANNOTATION)
        .is_some_and(|v| v == "true");
    let past_due = tenant
        .spec
        .subscription
        .as_ref()
        .is_some_and(|s| s.status == SubscriptionStatus::PastDue);
    let action_required = tenant
        .annotations()
        .get(crate::contract::labels::PAYMENT_OVERDUE_REASON)
        .is_some_and(|v| v == "payment_action_required");
    if annotated && action_required {
        Want::new(
            PAYMENT_OVERDUE,
            true,
            "PaymentActionRequired",
            "the customer must authenticate a payment: the stack keeps running meanwhile",
        )
    } else if annotated || past_due {
        Want::new(
            PAYMENT_OVERDUE,
            true,
            "SubscriptionPastDue",
            "the subscription is past due: the stack keeps running until Stripe gives up",
        )
    } else {
        Want::new(
            PAYMENT_OVERDUE,
            false,
            "PaymentCurrent",
            "no payment is overdue",
        )
    }
}

/// The `Held` condition: True while `spec.hold` is set. The reason is always
/// [`REASON_OPERATOR_HOLD`]; the hold's free-text reason and note are in the message.
pub fn held_condition(tenant: &Tenant) -> Want {
    match &tenant.spec.hold {
        Some(hold) => {
            let note = hold
                .note
                .as_deref()
                .filter(|n| !n.is_empty())
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            Want::new(
                HELD,
                true,
                REASON_OPERATOR_HOLD,
                format!(
                    "held by an operator: {}{note}; workloads are scaled to zero until spec.hold is removed",
                    hold.reason
                ),
            )
        }
        None => Want::new(HELD, false, REASON_NOT_HELD, "spec.hold is not set"),
    }
}

/// What the controller announces about a hold after a status write: the hold appeared
/// (`HoldSet`), went away (`HoldReleased`), or nothing changed. `was_held` is the previous
/// status's `Held` condition, so a hold set or removed by any writer (the api, the plugin, a
/// direct edit) is announced once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldChange {
    Set,
    Released,
}

/// The [`HoldChange`] between the previous status and `held` (from [`held_condition`]).
pub fn hold_change(previous: &[Condition], held: &Want) -> Option<HoldChange> {
    let was_held = previous
        .iter()
        .any(|c| c.type_ == HELD && c.status == "True");
    match (was_held, held.status) {
        (false, true) => Some(HoldChange::Set),
        (true, false) => Some(HoldChange::Released),
        _ => None,
    }
}

/// The `CancellationScheduled` condition: True while billing's annotation names the date a
/// scheduled cancellation (`cancel_at`, `cancel_at_period_end`) takes effect. The stack runs
/// until then; Stripe then cancels the subscription and billing sets `cancelledAt`.
pub fn cancellation_scheduled_condition(tenant: &Tenant) -> Want {
    match tenant
        .annotations()
        .get(crate::contract::labels::CANCELLATION_SCHEDULED)
        .filter(|v| !v.is_empty())
    {
        Some(at) => Want::new(
            CANCELLATION_SCHEDULED,
            true,
            "CancelAt",
            format!("the subscription is cancelled at {at}: the stack runs until then"),
        ),
        None => Want::new(
            CANCELLATION_SCHEDULED,
            false,
            "NoCancellationScheduled",
            "no cancellation is scheduled",
        ),
    }
}

/// The `CollectionPaused` condition: True while billing's annotation says Stripe does not
/// collect the subscription's invoices (`pause_collection`). Not a suspension: the stack runs.
pub fn collection_paused_condition(tenant: &Tenant) -> Want {
    let annotations = tenant.annotations();
    match annotations
        .get(crate::contract::labels::COLLECTION_PAUSED)
        .filter(|v| !v.is_empty())
    {
        Some(behavior) => {
            let until = annotations
                .get(crate::contract::labels::COLLECTION_RESUMES_AT)
                .map(|at| format!(" until {at}"))
                .unwrap_or_default();
            Want::new(
                COLLECTION_PAUSED,
                true,
                "PauseCollection",
                format!(
                    "payment collection is paused ({behavior}){until}: the stack keeps running"
                ),
            )
        }
        None => Want::new(
            COLLECTION_PAUSED,
            false,
            "Collecting",
            "payment collection is not paused",
        ),
    }
}

/// The conditions the controller writes from what billing states on the Tenant (annotations
/// and the subscription): `PaymentOverdue`, `CancellationScheduled`, `CollectionPaused`.
pub fn billing_notice_conditions(tenant: &Tenant) -> [Want; 3] {
    [
        payment_overdue_condition(tenant),
        cancellation_scheduled_condition(tenant),
        collection_paused_condition(tenant),
    ]
}

/// The server-side apply body of `status` for `tenant` (pure): only the fields and condition
/// types the controller owns, and the resourceVersion the status was computed from as a
/// precondition. A field the controller set before and leaves out now is removed by the API
/// server (it owned it); fields of other field managers are untouched.
pub fn apply_body(tenant: &Tenant, status: &TenantStatus) -> serde_json::Result<serde_json::Value> {
    let mut own = status.clone();
    own.conditions
        .retain(|c| CONTROLLER_OWNED.contains(&c.type_.as_str()));
    let mut metadata = json!({ "name": tenant.name_any() });
    if let Some(rv) = &tenant.metadata.resource_version {
        metadata["resourceVersion"] = json!(rv);
    }
    Ok(json!({
        "apiVersion": <Tenant as kube::Resource>::api_version(&()),
        "kind": <Tenant as kube::Resource>::kind(&()),
        "metadata": metadata,
        "status": serde_json::to_value(&own)?,
    }))
}

/// Before status was applied, this controller wrote it with merge patches (an `Update` entry
/// of the client's default field manager owns those fields). Fields co-owned that way would
/// outlive the controller's apply (`readySince`, `instance`, `dnsRecord` left stale), so the
/// first write after an upgrade drops such entries. Returns the entries to keep, or `None`
/// when there is no such entry (every later write).
pub fn legacy_status_owners(tenant: &Tenant) -> Option<Vec<ManagedFieldsEntry>> {
    let entries = tenant.metadata.managed_fields.as_ref()?;
    let legacy = |m: &ManagedFieldsEntry| {
        m.operation.as_deref() == Some("Update")
            && m.manager.as_deref() != Some(BILLING_FIELD_MANAGER)
            && m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.get("f:status").is_some())
    };
    if !entries.iter().any(legacy) {
        return None;
    }
    Some(entries.iter().filter(|m| !legacy(m)).cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_changes_only_with_status() {
        let t0 = Timestamp::from_second(1_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let t1 = Timestamp::from_second(2_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let first = conditions(&[], &[Want::new(READY, false, "A", "")], Some(1), t0);
        let same = conditions(&first, &[Want::new(READY, false, "B", "m")], Some(2), t1);
        assert_eq!(same[0].last_transition_time, Time(t0));
        assert_eq!(same[0].reason, "B");
        let flipped = conditions(&same, &[Want::new(READY, true, "C", "")], Some(2), t1);
        assert_eq!(flipped[0].last_transition_time, Time(t1));
        assert_eq!(flipped[0].status, "True");
    }

    fn with_subscription(status: Option<SubscriptionStatus>, annotation: Option<&str>) -> Tenant {
        let mut spec = stackplane_crds::TenantSpec::new("crm", "starter");
        spec.subscription = status.map(|status| stackplane_crds::Subscription {
            id: "sub_1".into(),
            status,
            current_period_end: None,
            quantity: None,
            items: Vec::new(),
        });
        let mut t = Tenant::new("acme", spec);
        if let Some(v) = annotation {
            t.metadata.annotations =
                Some([(PAYMENT_OVERDUE_ANNOTATION.to_owned(), v.to_owned())].into());
        }
        t
    }

    #[test]
    fn scheduled_cancellation_and_paused_collection_follow_billings_annotations() {
        use crate::contract::labels::{
            CANCELLATION_SCHEDULED as CANCEL_AT, COLLECTION_PAUSED as PAUSED_WITH,
            COLLECTION_RESUMES_AT,
        };
        let mut t = with_subscription(Some(SubscriptionStatus::Active), None);
        let [overdue, cancel, paused] = billing_notice_conditions(&t);
        assert!(!overdue.status && !cancel.status && !paused.status);
        assert_eq!(cancel.type_, CANCELLATION_SCHEDULED);
        assert_eq!(paused.type_, COLLECTION_PAUSED);
        t.metadata.annotations = Some(
            [
                (CANCEL_AT.to_owned(), "2027-01-31T00:00:00Z".to_owned()),
                (PAUSED_WITH.to_owned(), "void".to_owned()),
                (
                    COLLECTION_RESUMES_AT.to_owned(),
                    "2027-02-01T00:00:00Z".to_owned(),
                ),
            ]
            .into(),
        );
        let [overdue, cancel, paused] = billing_notice_conditions(&t);
        assert!(!overdue.status);
        assert!(cancel.status && cancel.message.contains("2027-01-31T00:00:00Z"));
        assert_eq!(cancel.reason, "CancelAt");
        assert!(paused.status && paused.message.contains("void"));
        assert!(paused.message.contains("2027-02-01T00:00:00Z"));
        // Both are the controller's to write.
        assert!(CONTROLLER_OWNED.contains(&CANCELLATION_SCHEDULED));
        assert!(CONTROLLER_OWNED.contains(&COLLECTION_PAUSED));
    }

    #[test]
    fn payment_overdue_follows_what_billing_wrote() {
        use SubscriptionStatus as S;
        let cases = [
            (Some(S::PastDue), Some("true"), true),
            (Some(S::PastDue), None, true),
            (Some(S::Active), Some("true"), true),
            (Some(S::Active), None, false),
            (Some(S::Trialing), Some("false"), false),
            (Some(S::Unpaid), None, false),
            (None, None, false),
        ];
        for (status, annotation, overdue) in cases {
            let want = payment_overdue_condition(&with_subscription(status, annotation));
            assert_eq!(want.type_, PAYMENT_OVERDUE);
            assert_eq!(want.status, overdue, "{status:?} {annotation:?}");
            let reason = if overdue {
                "SubscriptionPastDue"
            } else {
                "PaymentCurrent"
            };
            assert_eq!(want.reason, reason);
        }
    }

    #[test]
    fn the_apply_body_holds_only_own_conditions_and_the_read_resource_version() {
        let mut t = with_subscription(None, None);
        t.metadata.resource_version = Some("42".into());
        let now = Timestamp::from_second(1_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let billing = Condition {
            type_: "BillingSynced".into(),
            status: "True".into(),
            reason: "Synced".into(),
            message: "m".into(),
            last_transition_time: Time(now),
            observed_generation: None,
        };
        let st = TenantStatus {
            conditions: conditions(
                &[billing],
                &[Want::new(READY, true, "A", "m")],
                Some(1),
                now,
            ),
            ..TenantStatus::default()
        };
        assert_eq!(st.conditions.len(), 2, "computed status keeps what it read");
        let body = apply_body(&t, &st).expect("body");
        assert_eq!(body["metadata"]["resourceVersion"], "42");
        assert_eq!(body["kind"], "Tenant");
        let types: Vec<&str> = body["status"]["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .filter_map(|c| c["type"].as_str())
            .collect();
        assert_eq!(types, vec![READY]);
    }

    #[test]
    fn merge_patch_owners_of_the_status_are_dropped_once() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1;
        let entry =
            |manager: &str, operation: &str, fields: serde_json::Value| ManagedFieldsEntry {
                manager: Some(manager.into()),
                operation: Some(operation.into()),
                fields_v1: Some(FieldsV1(fields)),
                ..ManagedFieldsEntry::default()
            };
        let mut t = with_subscription(None, None);
        t.metadata.managed_fields = Some(vec![
            entry(
                "kube-rs",
                "Update",
                json!({"f:status": {"f:readySince": {}}}),
            ),
            entry(
                "kube-rs",
                "Update",
                json!({"f:metadata": {"f:finalizers": {}}}),
            ),
            entry("stackplane-billing", "Update", json!({"f:status": {}})),
            entry("stackplane-billing", "Apply", json!({"f:status": {}})),
            entry("stackplane-controller", "Apply", json!({"f:status": {}})),
        ]);
        let kept = legacy_status_owners(&t).expect("one legacy owner");
        assert_eq!(kept.len(), 4);
        assert!(kept
            .iter()
            .all(|m| !(m.manager.as_deref() == Some("kube-rs")
                && m.fields_v1
                    .as_ref()
                    .is_some_and(|f| f.0.get("f:status").is_some()))));
        t.metadata.managed_fields = Some(kept);
        assert!(legacy_status_owners(&t).is_none(), "nothing left to drop");
    }

    #[test]
    fn payment_action_required_is_the_reason_billing_gave() {
        let mut t = with_subscription(Some(SubscriptionStatus::Active), Some("true"));
        t.metadata.annotations.get_or_insert_default().insert(
            crate::contract::labels::PAYMENT_OVERDUE_REASON.to_owned(),
            "payment_action_required".to_owned(),
        );
        let want = payment_overdue_condition(&t);
        assert!(want.status);
        assert_eq!(want.reason, "PaymentActionRequired");
    }

    #[test]
    fn an_overdue_tenant_keeps_running() {
        let t = with_subscription(Some(SubscriptionStatus::PastDue), Some("true"));
        let components = [ComponentStatus {
            name: "api".into(),
            ready_replicas: 1,
            replicas: 1,
        }];
        assert_eq!(phase(&t, &components, &[], None), TenantPhase::Ready);
        assert!(!crate::tenant::plan::scaled_down(&t));
    }

    fn deployment(name: &str, generation: i64, observed: i64, reason: &str) -> DeploymentReport {
        let d: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({
            "metadata": { "name": name, "generation": generation },
            "status": {
                "observedGeneration": observed,
                "conditions": [{
                    "type": "Progressing", "status": if reason == "NewReplicaSetAvailable" { "True" } else { "False" },
                    "reason": reason, "message": format!("ReplicaSet \"{name}-1\" has timed out progressing."),
                }],
            },
        }))
        .expect("a Deployment");
        DeploymentReport::of(&d)
    }

    #[test]
    fn a_stalled_component_makes_a_never_ready_tenant_degraded_and_is_named() {
        let planned = [
            PlannedComponent {
                name: "api".into(),
                replicas: 1,
            },
            PlannedComponent {
                name: "web".into(),
                replicas: 1,
            },
        ];
        let deployments = [
            deployment("api", 1, 1, "NewReplicaSetAvailable"),
            deployment("web", 2, 2, "ProgressDeadlineExceeded"),
        ];
        let found = stalled(&planned, &deployments);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name, "web");
        let components = [
            ComponentStatus {
                name: "api".into(),
                ready_replicas: 1,
                replicas: 1,
            },
            ComponentStatus {
                name: "web".into(),
                ready_replicas: 0,
                replicas: 1,
            },
        ];
        let t = with_subscription(Some(SubscriptionStatus::Active), None);
        assert_eq!(phase(&t, &components, &[], None), TenantPhase::Provisioning);
        let degraded = phase(&t, &components, &found, None);
        assert_eq!(degraded, TenantPhase::Degraded);
        let want = ready_condition(degraded, &components, &found);
        assert_eq!(want.reason, "ComponentsStalled");
        assert!(
            want.message.contains("web (0/1): ReplicaSet"),
            "{}",
            want.message
        );
        assert!(!want.message.contains("api"), "{}", want.message);
    }

    #[test]
    fn a_deadline_of_an_older_generation_or_a_scaled_down_component_is_not_a_stall() {
        let planned = [PlannedComponent {
            name: "web".into(),
            replicas: 1,
        }];
        let older = [deployment("web", 3, 2, "ProgressDeadlineExceeded")];
        assert!(stalled(&planned, &older).is_empty());
        let idle = [PlannedComponent {
            name: "web".into(),
            replicas: 0,
        }];
        let current = [deployment("web", 2, 2, "ProgressDeadlineExceeded")];
        assert!(stalled(&idle, &current).is_empty());
    }

    #[test]
    fn a_hold_is_a_suspension_with_its_own_condition() {
        let mut t = with_subscription(Some(SubscriptionStatus::Active), None);
        let off = held_condition(&t);
        assert_eq!((off.type_, off.status), (HELD, false));
        assert_eq!(off.reason, REASON_NOT_HELD);
        assert_eq!(phase(&t, &[], &[], None), TenantPhase::Ready);

        t.spec.hold = Some(stackplane_crds::TenantHold {
            reason: "abuse".into(),
            note: Some("ticket 42".into()),
        });
        let on = held_condition(&t);
        assert_eq!((on.type_, on.status), (HELD, true));
        assert_eq!(on.reason, REASON_OPERATOR_HOLD);
        assert!(on.message.contains("abuse") && on.message.contains("ticket 42"));
        assert_eq!(phase(&t, &[], &[], None), TenantPhase::Suspended);
        assert!(CONTROLLER_OWNED.contains(&HELD));
    }

    #[test]
    fn a_hold_is_announced_once_when_it_appears_and_when_it_goes() {
        let now = Timestamp::from_second(1_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let mut t = with_subscription(None, None);
        let none: Vec<Condition> = Vec::new();
        // A tenant that was never held: nothing to say.
        assert_eq!(hold_change(&none, &held_condition(&t)), None);
        let released = conditions(&none, &[held_condition(&t)], None, now);
        assert_eq!(hold_change(&released, &held_condition(&t)), None);

        t.spec.hold = Some(stackplane_crds::TenantHold {
            reason: "dispute".into(),
            note: None,
        });
        assert_eq!(
            hold_change(&released, &held_condition(&t)),
            Some(HoldChange::Set)
        );
        // First sight of a tenant created held (no Held condition yet) is a set too.
        assert_eq!(
            hold_change(&none, &held_condition(&t)),
            Some(HoldChange::Set)
        );
        let held = conditions(&released, &[held_condition(&t)], None, now);
        assert_eq!(hold_change(&held, &held_condition(&t)), None);

        t.spec.hold = None;
        assert_eq!(
            hold_change(&held, &held_condition(&t)),
            Some(HoldChange::Released)
        );
    }
}
