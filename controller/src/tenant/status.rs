//! The Tenant's status: computed from what was planned and what the Deployments report, and
//! written with a merge patch on the status subresource.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use stackplane_crds::{ComponentStatus, SubscriptionStatus, Tenant, TenantPhase, TenantStatus};

use super::plan::PlannedComponent;
use crate::error::{Error, Result};

pub const READY: &str = "Ready";
pub const SYNCED: &str = "Synced";
pub const PAUSED: &str = "Paused";
pub const PAYMENT_OVERDUE: &str = "PaymentOverdue";
pub const INVALID_SPEC: &str = "InvalidSpec";

/// The billing worker's `past_due` annotation (defined once, in `stackplane_crds::labels`).
pub const PAYMENT_OVERDUE_ANNOTATION: &str = stackplane_crds::labels::PAYMENT_OVERDUE;

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

/// Readiness of each planned component from its Deployment (`None`: no such Deployment).
pub fn component_status(
    planned: &[PlannedComponent],
    deployments: &[Deployment],
) -> Vec<ComponentStatus> {
    planned
        .iter()
        .map(|c| {
            let ready = deployments
                .iter()
                .find(|d| d.metadata.name.as_deref() == Some(&c.name))
                .and_then(|d| d.status.as_ref())
                .map(|s| {
                    s.ready_replicas
                        .unwrap_or(0)
                        .min(s.available_replicas.unwrap_or(0))
                })
                .unwrap_or(0);
            ComponentStatus {
                name: c.name.clone(),
                ready_replicas: ready,
                replicas: c.replicas,
            }
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
    previous: Option<&TenantStatus>,
) -> TenantPhase {
    if tenant.spec.cancelled_at.is_some() {
        TenantPhase::Cancelled
    } else if tenant.spec.suspended {
        TenantPhase::Suspended
    } else if all_ready(components) {
        TenantPhase::Ready
    } else if previous.and_then(|s| s.ready_since.as_ref()).is_some()
        || previous.and_then(|s| s.phase) == Some(TenantPhase::Degraded)
    {
        TenantPhase::Degraded
    } else {
        TenantPhase::Provisioning
    }
}

/// The Ready condition matching `phase`.
pub fn ready_condition(phase: TenantPhase, components: &[ComponentStatus]) -> Want {
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
        .get(stackplane_crds::labels::PAYMENT_OVERDUE_REASON)
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

/// Writes `status` with a merge patch on the status subresource. Fields this controller owns
/// and that are now empty are cleared explicitly (a merge patch keeps what it does not name),
/// `instance` and `dnsRecord` included: `status` carries them over unless the cloud step changed them.
pub async fn write(client: &Client, tenant: &Tenant, status: &TenantStatus) -> Result<()> {
    let api: Api<Tenant> = Api::all(client.clone());
    let mut body = serde_json::to_value(status)?;
    if let Some(map) = body.as_object_mut() {
        for key in [
            "readySince",
            "endpoint",
            "namespace",
            "instance",
            "dnsRecord",
        ] {
            map.entry(key).or_insert(serde_json::Value::Null);
        }
        map.entry("components").or_insert(json!([]));
    }
    let patch = json!({ "status": body });
    api.patch_status(
        &tenant.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(Error::Status)?;
    Ok(())
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
        });
        let mut t = Tenant::new("acme", spec);
        if let Some(v) = annotation {
            t.metadata.annotations =
                Some([(PAYMENT_OVERDUE_ANNOTATION.to_owned(), v.to_owned())].into());
        }
        t
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
    fn payment_action_required_is_the_reason_billing_gave() {
        let mut t = with_subscription(Some(SubscriptionStatus::Active), Some("true"));
        t.metadata.annotations.get_or_insert_default().insert(
            stackplane_crds::labels::PAYMENT_OVERDUE_REASON.to_owned(),
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
        assert_eq!(phase(&t, &components, None), TenantPhase::Ready);
        assert!(!super::super::plan::scaled_down(&t));
    }
}
