//! The Tenant conditions billing owns (pure): `BillingSynced`, `BillingConflict` and
//! `TrialEnding`. They are written by server-side apply of the status subresource with field
//! manager `stackplane-billing`, which owns only these condition types (`status.conditions` is a
//! list-map keyed by `type`), so the controller's conditions are never sent nor taken over.

use serde_json::{json, Value};
use stackplane_crds::SubscriptionStatus;

use super::governing::Governing;
use super::mapping::rfc3339;

pub use crate::contract::conditions::{BILLING_CONFLICT, BILLING_SYNCED, TRIAL_ENDING};

/// How the customer's state was learned this time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncState {
    /// Read from the Stripe API at this time (milliseconds).
    Read { at_ms: i64 },
    /// The read failed; the webhook payload was applied and the read is retried.
    Unreachable { error: String },
    /// No Stripe reader is configured (webhook payloads only).
    NoReader,
}

/// One condition billing wants, before `lastTransitionTime` is decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantCondition {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    /// The message without the read time, which changes on every read.
    pub message: String,
    /// Appended to the message when written.
    pub read_at: Option<String>,
}

impl WantCondition {
    fn new(type_: &'static str, status: bool, reason: &'static str, message: String) -> Self {
        Self {
            type_,
            status,
            reason,
            message,
            read_at: None,
        }
    }

    /// The message as written.
    pub fn full_message(&self) -> String {
        match &self.read_at {
            Some(at) => format!("{}; read from Stripe at {at}", self.message),
            None => self.message.clone(),
        }
    }
}

/// The conditions for the Tenant `g` governs. Prices of its items that no Platform lists any
/// more make `BillingSynced=False`, reason `UnknownPrice`: the Tenant keeps its last known tier
/// and still follows the subscription's status.
pub fn billing_conditions(g: &Governing, sync: &SyncState) -> Vec<WantCondition> {
    let unknown_prices = g.snapshot.unlisted_prices();
    let id = &g.snapshot.subscription_id;
    let conflict = g.conflict();
    let synced = match sync {
        SyncState::Unreachable { error } => WantCondition::new(
            BILLING_SYNCED,
            false,
            "StripeUnreachable",
            format!(
                "Stripe could not be read ({error}); applied subscription {id} from the webhook \
                 payload; the read is retried"
            ),
        ),
        SyncState::NoReader => WantCondition::new(
            BILLING_SYNCED,
            false,
            "NotRead",
            format!("no Stripe API reader is configured; subscription {id} from webhook payloads"),
        ),
        SyncState::Read { .. } if !unknown_prices.is_empty() => WantCondition::new(
            BILLING_SYNCED,
            false,
            "UnknownPrice",
            format!(
                "no Platform lists price {} of subscription {id}: the tenant keeps its last known \
                 tier, {}, and follows the subscription's status",
                unknown_prices.join(", "),
                g.snapshot.tier
            ),
        ),
        SyncState::Read { .. } if conflict => WantCondition::new(
            BILLING_SYNCED,
            false,
            "Conflict",
            format!(
                "live subscriptions {}: following the newest, {id}",
                g.live.join(", ")
            ),
        ),
        SyncState::Read { at_ms } => {
            let message = if g.moved_away {
                format!(
                    "no subscription of the customer is on platform {} any more (the item of \
                     {id} was removed or its price moved); cancelled",
                    g.platform
                )
            } else {
                format!("governing subscription {id}")
            };
            let mut c = WantCondition::new(BILLING_SYNCED, true, "StripeRead", message);
            c.read_at = rfc3339(at_ms.div_euclid(1000));
            c
        }
    };
    let mut out = vec![synced];
    out.push(if conflict {
        WantCondition::new(
            BILLING_CONFLICT,
            true,
            "MultipleLiveSubscriptions",
            format!(
                "the customer pays for {} live subscriptions on platform {}: {}; the Tenant \
                 follows the newest, {id}",
                g.live.len(),
                g.platform,
                g.live.join(", ")
            ),
        )
    } else {
        WantCondition::new(
            BILLING_CONFLICT,
            false,
            "SingleSubscription",
            format!("one governing subscription: {id}"),
        )
    });
    // Always sent (False when there is no trial ending): a condition type billing stops sending
    // is not reliably removed by the Kubernetes 1.20 API server.
    let trial_end = (g.snapshot.status == SubscriptionStatus::Trialing)
        .then_some(g.snapshot.trial_end_notice)
        .flatten()
        .and_then(rfc3339);
    // A trial not announced as ending yet still says when it ends.
    let trial_runs_until = (g.snapshot.status == SubscriptionStatus::Trialing)
        .then_some(g.snapshot.trial_end)
        .flatten()
        .and_then(rfc3339);
    out.push(match (trial_end, trial_runs_until) {
        (Some(end), _) => WantCondition::new(
            TRIAL_ENDING,
            true,
            "TrialWillEnd",
            format!("the trial of subscription {id} ends at {end}"),
        ),
        (None, Some(end)) => WantCondition::new(
            TRIAL_ENDING,
            false,
            "Trialing",
            format!("subscription {id} is trialing until {end}"),
        ),
        (None, None) => WantCondition::new(
            TRIAL_ENDING,
            false,
            "NoTrialEnding",
            format!("subscription {id} has no trial about to end"),
        ),
    });
    out
}

/// What decides whether the conditions changed: everything but the read time.
pub fn fingerprint(conditions: &[WantCondition]) -> Value {
    Value::Array(
        conditions
            .iter()
            .map(|c| json!([c.type_, c.status, c.reason, c.message]))
            .collect(),
    )
}

/// The status apply body of Tenant `name`: the conditions, each keeping the
/// `lastTransitionTime` it had in `previous` (the conditions last written) while its status is
/// unchanged.
pub fn status_body(name: &str, conditions: &[WantCondition], previous: &Value, now: &str) -> Value {
    let previous_time = |type_: &str, status: &str| {
        previous.as_array().and_then(|list| {
            list.iter()
                .find(|c| c["type"] == type_ && c["status"] == status)
                .and_then(|c| c["lastTransitionTime"].as_str())
                .map(str::to_owned)
        })
    };
    let list: Vec<Value> = conditions
        .iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" };
            json!({
                "type": c.type_,
                "status": status,
                "reason": c.reason,
                "message": c.full_message(),
                "lastTransitionTime": previous_time(c.type_, status).unwrap_or_else(|| now.to_owned()),
            })
        })
        .collect();
    json!({
        "apiVersion": "stackplane.io/v1alpha1",
        "kind": "Tenant",
        "metadata": { "name": name },
        "status": { "conditions": list },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::mapping::Snapshot;

    fn governing(live: &[&str], status: SubscriptionStatus) -> Governing {
        Governing {
            platform: "crm".into(),
            snapshot: Snapshot {
                subscription_id: live.first().copied().unwrap_or("sub_x").into(),
                customer_id: "cus_A".into(),
                platform: "crm".into(),
                tier: "starter".into(),
                status,
                email: None,
                name: None,
                client_reference_id: None,
                current_period_end: None,
                cancelled_at: None,
                created: Some(1),
                trial_end_notice: Some(1_900_000_000),
                payment_action_required: None,
                items: Vec::new(),
                trial_end: Some(1_900_000_000),
                cancel_at: None,
                collection_paused: None,
            },
            live: live.iter().map(|s| (*s).to_owned()).collect(),
            moved_away: false,
        }
    }

    fn find<'a>(cs: &'a [WantCondition], t: &str) -> Option<&'a WantCondition> {
        cs.iter().find(|c| c.type_ == t)
    }

    #[test]
    fn a_read_is_synced_with_the_subscription_and_the_time() {
        let g = governing(&["sub_a"], SubscriptionStatus::Active);
        let cs = billing_conditions(
            &g,
            &SyncState::Read {
                at_ms: 1_800_000_000_000,
            },
        );
        let synced = find(&cs, BILLING_SYNCED).unwrap();
        assert!(synced.status);
        assert_eq!(
            synced.full_message(),
            "governing subscription sub_a; read from Stripe at 2027-01-15T08:00:00Z"
        );
        assert!(!find(&cs, BILLING_CONFLICT).unwrap().status);
        assert!(!find(&cs, TRIAL_ENDING).unwrap().status, "not trialing");
    }

    #[test]
    fn a_conflict_names_both_subscriptions() {
        let g = governing(&["sub_new", "sub_old"], SubscriptionStatus::Active);
        let cs = billing_conditions(&g, &SyncState::Read { at_ms: 0 });
        let conflict = find(&cs, BILLING_CONFLICT).unwrap();
        assert!(conflict.status);
        assert!(conflict.message.contains("sub_new") && conflict.message.contains("sub_old"));
        let synced = find(&cs, BILLING_SYNCED).unwrap();
        assert_eq!((synced.status, synced.reason), (false, "Conflict"));
    }

    #[test]
    fn unreachable_and_unknown_prices_say_why() {
        let g = governing(&["sub_a"], SubscriptionStatus::Trialing);
        let cs = billing_conditions(
            &g,
            &SyncState::Unreachable {
                error: "connection refused".into(),
            },
        );
        let synced = find(&cs, BILLING_SYNCED).unwrap();
        assert_eq!((synced.status, synced.reason), (false, "StripeUnreachable"));
        assert!(synced.message.contains("connection refused"));
        let trial = find(&cs, TRIAL_ENDING).unwrap();
        assert!(trial.status && trial.message.contains("2030-03-17T17:46:40Z"));
        let mut g = g;
        g.snapshot.items = vec![crate::billing::mapping::ItemSnapshot {
            id: Some("si_1".into()),
            price: Some("price_gone".into()),
            quantity: Some(1),
            platform: "crm".into(),
            tier: "starter".into(),
            tier_rank: 0,
            listed: false,
        }];
        let cs = billing_conditions(&g, &SyncState::Read { at_ms: 0 });
        let synced = find(&cs, BILLING_SYNCED).unwrap();
        assert_eq!(synced.reason, "UnknownPrice");
        assert!(synced.message.contains("price_gone"));
    }

    #[test]
    fn transition_times_are_kept_while_the_status_is_unchanged() {
        let g = governing(&["sub_a"], SubscriptionStatus::Active);
        let cs = billing_conditions(&g, &SyncState::Read { at_ms: 0 });
        let first = status_body("t", &cs, &Value::Null, "2026-01-01T00:00:00Z");
        let list = &first["status"]["conditions"];
        let again = status_body("t", &cs, list, "2026-02-01T00:00:00Z");
        assert_eq!(again["status"]["conditions"], *list);
        let g = governing(&["sub_b", "sub_a"], SubscriptionStatus::Active);
        let cs2 = billing_conditions(&g, &SyncState::Read { at_ms: 0 });
        let changed = status_body("t", &cs2, list, "2026-02-01T00:00:00Z");
        let conflict = changed["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == BILLING_CONFLICT)
            .unwrap();
        assert_eq!(conflict["lastTransitionTime"], "2026-02-01T00:00:00Z");
        assert_ne!(fingerprint(&cs), fingerprint(&cs2));
    }
}
