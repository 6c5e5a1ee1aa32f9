//! Whether a tenant's stack should be serving. One answer for everything that costs money
//! while it runs: the workloads (scaled to zero) and the dedicated instance (stopped, its disk
//! kept). Data is never touched here: an idle stack keeps every volume, Secret and record
//! ownership, so resuming gives the customer back the same stack.

use stackplane_crds::{SubscriptionStatus, Tenant};

/// Why a tenant's stack does not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleReason {
    /// The subscription ended: kept through the platform's retention period, not served.
    Cancelled,
    /// `spec.suspended`: billing (unpaid, paused) or a person.
    Suspended,
    /// `spec.hold`: an operator's suspension, whatever the subscription says.
    Held,
    /// The first payment never went through (`incomplete`, `incomplete_expired`): nobody has
    /// paid for this stack yet, whatever `spec.suspended` says.
    Incomplete,
}

impl IdleReason {
    /// A stable word for messages, Events and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            IdleReason::Cancelled => "cancelled",
            IdleReason::Suspended => "suspended",
            IdleReason::Held => "held",
            IdleReason::Incomplete => "incomplete",
        }
    }
}

/// Why `tenant`'s stack should not run, or `None` when it should. A cancellation comes first:
/// a held tenant whose subscription ended is in its retention period (phase `Cancelled`, its
/// deletion clock running); its `Held` condition still says it is held.
pub fn idle_reason(tenant: &Tenant) -> Option<IdleReason> {
    if tenant.spec.cancelled_at.is_some() {
        return Some(IdleReason::Cancelled);
    }
    // An operator's hold outranks everything billing states: the subscription may be active.
    if tenant.spec.hold.is_some() {
        return Some(IdleReason::Held);
    }
    if tenant.spec.suspended {
        return Some(IdleReason::Suspended);
    }
    let unpaid = tenant.spec.subscription.as_ref().is_some_and(|s| {
        matches!(
            s.status,
            SubscriptionStatus::Incomplete | SubscriptionStatus::IncompleteExpired
        )
    });
    unpaid.then_some(IdleReason::Incomplete)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use stackplane_crds::{Subscription, TenantHold, TenantSpec};

    fn tenant(status: Option<SubscriptionStatus>, suspended: bool, cancelled: bool) -> Tenant {
        held_tenant(status, suspended, cancelled, false)
    }

    fn held_tenant(
        status: Option<SubscriptionStatus>,
        suspended: bool,
        cancelled: bool,
        held: bool,
    ) -> Tenant {
        let mut t = Tenant::new("t", TenantSpec::new("p", "starter"));
        t.spec.hold = held.then(|| TenantHold {
            reason: "abuse".into(),
            note: None,
        });
        t.spec.suspended = suspended;
        t.spec.cancelled_at = cancelled.then(|| Time(k8s_openapi::jiff::Timestamp::now()));
        t.spec.subscription = status.map(|status| Subscription {
            id: "sub_1".into(),
            status,
            current_period_end: None,
            quantity: None,
            items: Vec::new(),
        });
        t
    }

    /// Every subscription status × suspended × cancelled: the whole rule as one table.
    #[test]
    fn every_status_suspension_and_cancellation() {
        use IdleReason as R;
        use SubscriptionStatus as S;
        let statuses = [
            (None, None),
            (Some(S::Active), None),
            (Some(S::Trialing), None),
            // Overdue still runs: Stripe is retrying the payment (PaymentOverdue says so).
            (Some(S::PastDue), None),
            (Some(S::Incomplete), Some(R::Incomplete)),
            (Some(S::IncompleteExpired), Some(R::Incomplete)),
            // Billing suspends these; on their own they do not stop a stack.
            (Some(S::Unpaid), None),
            (Some(S::Paused), None),
            (Some(S::Canceled), None),
        ];
        for (status, by_status) in statuses {
            for suspended in [false, true] {
                for cancelled in [false, true] {
                    let want = if cancelled {
                        Some(R::Cancelled)
                    } else if suspended {
                        Some(R::Suspended)
                    } else {
                        by_status
                    };
                    assert_eq!(
                        idle_reason(&tenant(status, suspended, cancelled)),
                        want,
                        "{status:?} suspended={suspended} cancelled={cancelled}"
                    );
                }
            }
        }
    }

    /// A hold stops the stack under every subscription status and suspension; only a
    /// cancellation (retention, phase `Cancelled`) outranks it.
    #[test]
    fn a_hold_stops_the_stack_whatever_billing_says() {
        use SubscriptionStatus as S;
        let statuses = [
            None,
            Some(S::Active),
            Some(S::Trialing),
            Some(S::PastDue),
            Some(S::Incomplete),
            Some(S::IncompleteExpired),
            Some(S::Unpaid),
            Some(S::Paused),
            Some(S::Canceled),
        ];
        for status in statuses {
            for suspended in [false, true] {
                for cancelled in [false, true] {
                    let want = if cancelled {
                        IdleReason::Cancelled
                    } else {
                        IdleReason::Held
                    };
                    assert_eq!(
                        idle_reason(&held_tenant(status, suspended, cancelled, true)),
                        Some(want),
                        "{status:?} suspended={suspended} cancelled={cancelled}"
                    );
                }
            }
        }
    }
}
