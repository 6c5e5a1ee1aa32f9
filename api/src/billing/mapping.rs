//! Pure logic of the billing worker: a Stripe event → what it says about a subscription, the
//! ordering of such observations, their merge into the subscription's state, and the Tenant that
//! state asks for. Nothing here touches the network.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use stackplane_crds::SubscriptionStatus;

use super::error::BillingError;

/// The billing worker's `past_due` annotation (defined once, in `stackplane_crds::labels`).
pub const PAYMENT_OVERDUE_ANNOTATION: &str = stackplane_crds::labels::PAYMENT_OVERDUE;

/// The event types the worker acts on; every other type is stored and acknowledged.
pub const HANDLED_EVENT_TYPES: [&str; 6] = [
    "checkout.session.completed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "invoice.payment_failed",
    "invoice.paid",
];

/// The envelope of a stored Stripe event.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedEvent {
    pub id: String,
    pub event_type: String,
    /// `event.created`, seconds since the epoch.
    pub created: i64,
    pub observation: Observation,
}

/// What one event says.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// `customer.subscription.*`: the whole subscription as of the event.
    Subscription(SubscriptionObservation),
    /// `checkout.session.completed` in subscription mode.
    Checkout(CheckoutObservation),
    /// `invoice.paid` / `invoice.payment_failed` of a subscription's invoice.
    Invoice(InvoiceObservation),
    /// Nothing the worker acts on; the reason is recorded.
    Ignored(&'static str),
}

impl Observation {
    /// The subscription the observation concerns.
    pub fn subscription_id(&self) -> Option<&str> {
        match self {
            Observation::Subscription(s) => Some(&s.subscription_id),
            Observation::Checkout(c) => Some(&c.subscription_id),
            Observation::Invoice(i) => Some(&i.subscription_id),
            Observation::Ignored(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionObservation {
    pub subscription_id: String,
    pub customer_id: String,
    pub status: SubscriptionStatus,
    /// Price ids of the subscription's items, in order.
    pub price_ids: Vec<String>,
    pub current_period_end: Option<i64>,
    /// When the subscription ended (`ended_at`, else `canceled_at`); only used once it has.
    pub ended_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckoutObservation {
    pub subscription_id: String,
    pub customer_id: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub client_reference_id: Option<String>,
    pub platform: Option<String>,
    pub tier: Option<String>,
    pub paid: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InvoiceObservation {
    pub subscription_id: String,
    pub customer_id: String,
    pub paid: bool,
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for key in path {
        cur = cur.get(key)?;
    }
    cur.as_str().filter(|s| !s.is_empty())
}

fn i64_at(v: &Value, path: &[&str]) -> Option<i64> {
    let mut cur = v;
    for key in path {
        cur = cur.get(key)?;
    }
    cur.as_i64()
}

/// An id field that may be a string or an expanded object with an `id`.
fn id_at(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(o) => o.get("id")?.as_str().map(str::to_owned),
        _ => None,
    }
}

fn parse_status(s: &str) -> Option<SubscriptionStatus> {
    serde_json::from_value(Value::String(s.to_owned())).ok()
}

/// Reads what a Stripe event says. Tolerant of API versions: `current_period_end` on the
/// subscription or (newer versions) on its items; an invoice's subscription at `subscription`
/// or (newer versions) at `parent.subscription_details.subscription`.
pub fn parse_event(payload: &Value) -> Result<ParsedEvent, BillingError> {
    let bad = |what: &str| BillingError::MalformedEvent(what.to_owned());
    let id = str_at(payload, &["id"])
        .ok_or_else(|| bad("no id"))?
        .to_owned();
    let event_type = str_at(payload, &["type"])
        .ok_or_else(|| bad("no type"))?
        .to_owned();
    let created = i64_at(payload, &["created"]).ok_or_else(|| bad("no created"))?;
    let object = payload
        .get("data")
        .and_then(|d| d.get("object"))
        .ok_or_else(|| bad("no data.object"))?;
    let observation = match event_type.as_str() {
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.deleted" => {
            Observation::Subscription(parse_subscription(object, &event_type)?)
        }
        "checkout.session.completed" => parse_checkout(object)?,
        "invoice.paid" | "invoice.payment_failed" => {
            parse_invoice(object, event_type == "invoice.paid")?
        }
        _ => Observation::Ignored("event type not handled"),
    };
    Ok(ParsedEvent {
        id,
        event_type,
        created,
        observation,
    })
}

fn parse_subscription(
    object: &Value,
    event_type: &str,
) -> Result<SubscriptionObservation, BillingError> {
    let bad = |what: &str| BillingError::MalformedEvent(format!("subscription: {what}"));
    let subscription_id = str_at(object, &["id"])
        .ok_or_else(|| bad("no id"))?
        .to_owned();
    let customer_id = id_at(object, "customer").ok_or_else(|| bad("no customer"))?;
    let status = str_at(object, &["status"]).ok_or_else(|| bad("no status"))?;
    let mut status = parse_status(status).ok_or_else(|| bad("unknown status"))?;
    if event_type == "customer.subscription.deleted" {
        status = SubscriptionStatus::Canceled;
    }
    let items: &[Value] = object
        .get("items")
        .and_then(|i| i.get("data"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let price_ids = items
        .iter()
        .filter_map(|item| {
            id_at(item, "price").or_else(|| str_at(item, &["plan", "id"]).map(str::to_owned))
        })
        .collect();
    let current_period_end = i64_at(object, &["current_period_end"]).or_else(|| {
        items
            .iter()
            .filter_map(|i| i64_at(i, &["current_period_end"]))
            .max()
    });
    let ended_at = i64_at(object, &["ended_at"]).or_else(|| i64_at(object, &["canceled_at"]));
    Ok(SubscriptionObservation {
        subscription_id,
        customer_id,
        status,
        price_ids,
        current_period_end,
        ended_at,
    })
}

fn parse_checkout(object: &Value) -> Result<Observation, BillingError> {
    if str_at(object, &["mode"]).is_some_and(|m| m != "subscription") {
        return Ok(Observation::Ignored(
            "checkout session not in subscription mode",
        ));
    }
    let Some(subscription_id) = id_at(object, "subscription") else {
        return Ok(Observation::Ignored(
            "checkout session without subscription",
        ));
    };
    let customer_id = id_at(object, "customer")
        .ok_or_else(|| BillingError::MalformedEvent("checkout session: no customer".to_owned()))?;
    let paid = str_at(object, &["payment_status"])
        .is_none_or(|s| s == "paid" || s == "no_payment_required");
    Ok(Observation::Checkout(CheckoutObservation {
        subscription_id,
        customer_id,
        email: str_at(object, &["customer_details", "email"])
            .or_else(|| str_at(object, &["customer_email"]))
            .map(str::to_owned),
        name: str_at(object, &["customer_details", "name"]).map(str::to_owned),
        client_reference_id: str_at(object, &["client_reference_id"]).map(str::to_owned),
        platform: str_at(object, &["metadata", "platform"]).map(str::to_owned),
        tier: str_at(object, &["metadata", "tier"]).map(str::to_owned),
        paid,
    }))
}

fn parse_invoice(object: &Value, paid: bool) -> Result<Observation, BillingError> {
    let subscription_id = id_at(object, "subscription").or_else(|| {
        object
            .get("parent")
            .and_then(|p| p.get("subscription_details"))
            .and_then(|d| id_at(d, "subscription"))
    });
    let Some(subscription_id) = subscription_id else {
        return Ok(Observation::Ignored("invoice without subscription"));
    };
    let customer_id = id_at(object, "customer")
        .ok_or_else(|| BillingError::MalformedEvent("invoice: no customer".to_owned()))?;
    Ok(Observation::Invoice(InvoiceObservation {
        subscription_id,
        customer_id,
        paid,
    }))
}

/// Precedence of statuses that share an `event.created` second: later in a subscription's life
/// wins, terminal states win over everything.
pub fn status_rank(status: SubscriptionStatus) -> i32 {
    match status {
        SubscriptionStatus::Incomplete => 0,
        SubscriptionStatus::Trialing => 1,
        SubscriptionStatus::Active => 2,
        SubscriptionStatus::PastDue => 3,
        SubscriptionStatus::Unpaid => 4,
        SubscriptionStatus::Paused => 5,
        SubscriptionStatus::IncompleteExpired => 6,
        SubscriptionStatus::Canceled => 7,
    }
}

/// Orders the observations of one subscription: `event.created`, then status precedence, then
/// the event id (so any two distinct events are ordered and every delivery order converges).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderKey {
    pub created: i64,
    pub rank: i32,
    pub event_id: String,
}

impl Ord for OrderKey {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.created, self.rank, &self.event_id).cmp(&(other.created, other.rank, &other.event_id))
    }
}

impl PartialOrd for OrderKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The merged state of one subscription, stored in `subscription_state.snapshot`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub subscription_id: String,
    pub customer_id: String,
    pub platform: String,
    pub tier: String,
    pub status: SubscriptionStatus,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub client_reference_id: Option<String>,
    #[serde(default)]
    pub current_period_end: Option<i64>,
    /// When the subscription ended, once it has.
    #[serde(default)]
    pub cancelled_at: Option<i64>,
}

/// The state applied last: the snapshot and the key of the event that set its status.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub snapshot: Snapshot,
    pub key: OrderKey,
}

/// What the worker needs resolved before it can merge an observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Needs {
    /// Nothing to do: the reason is recorded.
    Nothing(&'static str),
    /// (platform, tier) of one of these prices.
    Price(Vec<String>),
    /// Check that the platform has the tier (checkout metadata).
    PlatformTier { platform: String, tier: String },
    /// No resolution needed.
    Merge,
}

/// The key an observation would be ordered by.
pub fn order_key(event: &ParsedEvent) -> OrderKey {
    let rank = match &event.observation {
        Observation::Subscription(s) => status_rank(s.status),
        Observation::Invoice(i) if i.paid => status_rank(SubscriptionStatus::Active),
        Observation::Invoice(_) => status_rank(SubscriptionStatus::PastDue),
        _ => 0,
    };
    OrderKey {
        created: event.created,
        rank,
        event_id: event.id.clone(),
    }
}

/// What must be resolved before `event` can be merged into `current` (pure: decides whether
/// the event is stale first, so a stale event with an unknown price never fails).
pub fn needs(current: Option<&Applied>, event: &ParsedEvent) -> Needs {
    let key = order_key(event);
    match (&event.observation, current) {
        (Observation::Ignored(reason), _) => Needs::Nothing(reason),
        (Observation::Subscription(_), Some(c)) if key <= c.key => {
            Needs::Nothing("superseded by a newer event")
        }
        (Observation::Subscription(s), _) => Needs::Price(s.price_ids.clone()),
        (Observation::Checkout(_), Some(_)) => Needs::Merge,
        (Observation::Checkout(c), None) => match (&c.platform, &c.tier) {
            (Some(p), Some(t)) => Needs::PlatformTier {
                platform: p.clone(),
                tier: t.clone(),
            },
            _ => Needs::Nothing(
                "checkout without platform/tier metadata; waiting for the subscription",
            ),
        },
        (Observation::Invoice(_), None) => Needs::Nothing(
            "invoice of a subscription not seen yet; its subscription events carry the status",
        ),
        (Observation::Invoice(_), Some(c)) if key.created <= c.key.created => {
            Needs::Nothing("superseded by a newer event")
        }
        (Observation::Invoice(_), Some(c)) => match c.snapshot.status {
            SubscriptionStatus::Active
            | SubscriptionStatus::Trialing
            | SubscriptionStatus::PastDue
            | SubscriptionStatus::Unpaid => Needs::Merge,
            _ => Needs::Nothing("invoice does not change a subscription in this status"),
        },
    }
}

/// Merges `event` into `current`, given the (platform, tier) resolved for it when [`needs`]
/// asked for one. `None` when nothing changes.
pub fn merge(
    current: Option<&Applied>,
    event: &ParsedEvent,
    resolved: Option<(String, String)>,
) -> Option<Applied> {
    let key = order_key(event);
    match &event.observation {
        Observation::Subscription(s) => {
            let (platform, tier) = resolved?;
            let previous = current.map(|c| &c.snapshot);
            let ended = matches!(
                s.status,
                SubscriptionStatus::Canceled | SubscriptionStatus::IncompleteExpired
            );
            let snapshot = Snapshot {
                subscription_id: s.subscription_id.clone(),
                customer_id: s.customer_id.clone(),
                platform,
                tier,
                status: s.status,
                email: previous.and_then(|p| p.email.clone()),
                name: previous.and_then(|p| p.name.clone()),
                client_reference_id: previous.and_then(|p| p.client_reference_id.clone()),
                current_period_end: s.current_period_end,
                cancelled_at: ended.then(|| s.ended_at.unwrap_or(event.created)),
            };
            Some(Applied { snapshot, key })
        }
        Observation::Checkout(c) => match current {
            Some(cur) => {
                let mut snapshot = cur.snapshot.clone();
                snapshot.email = c.email.clone().or(snapshot.email);
                snapshot.name = c.name.clone().or(snapshot.name);
                snapshot.client_reference_id = c
                    .client_reference_id
                    .clone()
                    .or(snapshot.client_reference_id);
                (snapshot != cur.snapshot).then(|| Applied {
                    snapshot,
                    key: cur.key.clone(),
                })
            }
            None => {
                let (platform, tier) = resolved?;
                let snapshot = Snapshot {
                    subscription_id: c.subscription_id.clone(),
                    customer_id: c.customer_id.clone(),
                    platform,
                    tier,
                    status: if c.paid {
                        SubscriptionStatus::Active
                    } else {
                        SubscriptionStatus::Incomplete
                    },
                    email: c.email.clone(),
                    name: c.name.clone(),
                    client_reference_id: c.client_reference_id.clone(),
                    current_period_end: None,
                    cancelled_at: None,
                };
                // Lowest possible key: any event of the subscription itself supersedes it.
                Some(Applied {
                    snapshot,
                    key: OrderKey {
                        created: 0,
                        rank: 0,
                        event_id: String::new(),
                    },
                })
            }
        },
        Observation::Invoice(i) => {
            let cur = current?;
            let status = if i.paid {
                SubscriptionStatus::Active
            } else {
                SubscriptionStatus::PastDue
            };
            let mut snapshot = cur.snapshot.clone();
            snapshot.status = status;
            Some(Applied { snapshot, key })
        }
        Observation::Ignored(_) => None,
    }
}

/// The spec fields billing owns on a Tenant (status mapping of DESIGN.md):
/// `active`/`trialing` run; `past_due` runs with the payment-overdue annotation;
/// `unpaid`/`paused`/`incomplete` are suspended; `canceled`/`incomplete_expired` are suspended
/// with `cancelledAt` set.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredTenant {
    pub name: String,
    pub suspended: bool,
    pub payment_overdue: bool,
    pub cancelled_at: Option<String>,
}

fn rfc3339(ts: i64) -> Option<String> {
    chrono::DateTime::from_timestamp(ts, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// What `snapshot` asks of the Tenant.
pub fn desired_tenant(snapshot: &Snapshot) -> DesiredTenant {
    use SubscriptionStatus as S;
    let (suspended, ended) = match snapshot.status {
        S::Active | S::Trialing | S::PastDue => (false, false),
        S::Unpaid | S::Paused | S::Incomplete => (true, false),
        S::Canceled | S::IncompleteExpired => (true, true),
    };
    DesiredTenant {
        name: stackplane_crds::naming::tenant_name(&snapshot.platform, &snapshot.customer_id),
        suspended,
        payment_overdue: snapshot.status == S::PastDue,
        cancelled_at: if ended {
            snapshot.cancelled_at.and_then(rfc3339)
        } else {
            None
        },
    }
}

/// The server-side apply body of the Tenant for `snapshot`: only the fields billing owns.
pub fn tenant_apply_body(snapshot: &Snapshot) -> (String, Value) {
    let desired = desired_tenant(snapshot);
    let labels = stackplane_crds::labels::tenant_labels(&desired.name, &snapshot.platform);
    let mut customer = json!({ "stripeCustomerId": snapshot.customer_id });
    if let Some(email) = &snapshot.email {
        customer["email"] = json!(email);
    }
    if let Some(name) = &snapshot.name {
        customer["name"] = json!(name);
    }
    let mut subscription = json!({ "id": snapshot.subscription_id, "status": snapshot.status });
    if let Some(end) = snapshot.current_period_end.and_then(rfc3339) {
        subscription["currentPeriodEnd"] = json!(end);
    }
    let mut spec = json!({
        "platform": snapshot.platform,
        "tier": snapshot.tier,
        "customer": customer,
        "subscription": subscription,
        "suspended": desired.suspended,
    });
    if let Some(at) = &desired.cancelled_at {
        spec["cancelledAt"] = json!(at);
    }
    let mut metadata = json!({ "name": desired.name, "labels": labels });
    if desired.payment_overdue {
        metadata["annotations"] = json!({ PAYMENT_OVERDUE_ANNOTATION: "true" });
    }
    let body = json!({
        "apiVersion": "stackplane.io/v1alpha1",
        "kind": "Tenant",
        "metadata": metadata,
        "spec": spec,
    });
    (desired.name, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub_event(id: &str, ty: &str, created: i64, status: &str, price: &str) -> ParsedEvent {
        let payload = json!({
            "id": id, "object": "event", "type": ty, "created": created,
            "data": {"object": {
                "id": "sub_1", "object": "subscription", "customer": "cus_ABC", "status": status,
                "items": {"object": "list", "data": [{"id": "si_1", "price": {"id": price},
                    "current_period_end": created + 2_592_000}]},
                "ended_at": if ty.ends_with("deleted") { json!(created) } else { Value::Null },
                "metadata": {}
            }}
        });
        parse_event(&payload).unwrap()
    }

    fn resolve(price: &str) -> Option<(String, String)> {
        let tier = match price {
            "price_s" => "starter",
            "price_p" => "professional",
            _ => return None,
        };
        Some(("leadsite-io".to_owned(), tier.to_owned()))
    }

    /// Applies events in order the way the worker does, returning the final snapshot.
    fn run(events: &[ParsedEvent]) -> Option<Applied> {
        let mut state: Option<Applied> = None;
        for e in events {
            let resolved = match needs(state.as_ref(), e) {
                Needs::Nothing(_) => continue,
                Needs::Price(p) => p.iter().find_map(|p| resolve(p)),
                Needs::PlatformTier { platform, tier } => Some((platform, tier)),
                Needs::Merge => None,
            };
            if let Some(next) = merge(state.as_ref(), e, resolved) {
                state = Some(next);
            }
        }
        state
    }

    fn lifecycle() -> Vec<ParsedEvent> {
        vec![
            sub_event(
                "evt_1",
                "customer.subscription.created",
                100,
                "active",
                "price_s",
            ),
            sub_event(
                "evt_2",
                "customer.subscription.updated",
                110,
                "active",
                "price_p",
            ),
            sub_event(
                "evt_3",
                "customer.subscription.updated",
                120,
                "past_due",
                "price_p",
            ),
            sub_event(
                "evt_4",
                "customer.subscription.updated",
                130,
                "active",
                "price_p",
            ),
            sub_event(
                "evt_5",
                "customer.subscription.deleted",
                140,
                "canceled",
                "price_p",
            ),
        ]
    }

    fn permutations(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![vec![]];
        }
        let mut out = Vec::new();
        for p in permutations(n - 1) {
            for i in 0..=p.len() {
                let mut q = p.clone();
                q.insert(i, n - 1);
                out.push(q);
            }
        }
        out
    }

    #[test]
    fn every_delivery_order_converges_to_the_same_state() {
        let events = lifecycle();
        let expected = run(&events).unwrap().snapshot;
        assert_eq!(expected.status, SubscriptionStatus::Canceled);
        assert_eq!(expected.tier, "professional");
        let perms = permutations(events.len());
        assert_eq!(perms.len(), 120);
        for p in perms {
            let ordered: Vec<_> = p.iter().map(|&i| events[i].clone()).collect();
            assert_eq!(run(&ordered).unwrap().snapshot, expected, "order {p:?}");
        }
    }

    #[test]
    fn same_second_uses_status_precedence() {
        let a = sub_event(
            "evt_b",
            "customer.subscription.updated",
            100,
            "active",
            "price_s",
        );
        let b = sub_event(
            "evt_a",
            "customer.subscription.updated",
            100,
            "past_due",
            "price_s",
        );
        assert!(order_key(&b) > order_key(&a));
        assert_eq!(
            run(&[b.clone(), a.clone()]).unwrap().snapshot.status,
            SubscriptionStatus::PastDue
        );
        assert_eq!(
            run(&[a, b]).unwrap().snapshot.status,
            SubscriptionStatus::PastDue
        );
    }

    #[test]
    fn stale_event_with_unknown_price_is_not_resolved() {
        let new = sub_event(
            "evt_2",
            "customer.subscription.updated",
            200,
            "active",
            "price_s",
        );
        let old = sub_event(
            "evt_1",
            "customer.subscription.created",
            100,
            "active",
            "price_unknown",
        );
        let state = run(&[new]);
        assert!(matches!(needs(state.as_ref(), &old), Needs::Nothing(_)));
        assert_eq!(
            needs(None, &old),
            Needs::Price(vec!["price_unknown".into()])
        );
    }

    #[test]
    fn status_mapping_follows_design() {
        let mut s = run(&lifecycle()[..1]).unwrap().snapshot;
        let d = desired_tenant(&s);
        assert_eq!(d.name, "leadsite-io-abc");
        assert!(!d.suspended && !d.payment_overdue && d.cancelled_at.is_none());
        s.status = SubscriptionStatus::PastDue;
        let d = desired_tenant(&s);
        assert!(!d.suspended && d.payment_overdue);
        for st in [SubscriptionStatus::Unpaid, SubscriptionStatus::Paused] {
            s.status = st;
            let d = desired_tenant(&s);
            assert!(d.suspended && d.cancelled_at.is_none());
        }
        let done = run(&lifecycle()).unwrap().snapshot;
        let d = desired_tenant(&done);
        assert!(d.suspended);
        assert_eq!(d.cancelled_at.as_deref(), Some("1970-01-01T00:02:20Z"));
        let (_, body) = tenant_apply_body(&done);
        assert_eq!(body["spec"]["cancelledAt"], "1970-01-01T00:02:20Z");
        assert_eq!(body["spec"]["subscription"]["status"], "canceled");
    }

    #[test]
    fn checkout_creates_a_baseline_that_subscription_events_supersede() {
        let checkout = parse_event(&json!({
            "id": "evt_c", "type": "checkout.session.completed", "created": 150,
            "data": {"object": {"id": "cs_1", "object": "checkout.session", "mode": "subscription",
                "customer": "cus_ABC", "subscription": "sub_1", "client_reference_id": "user-7",
                "payment_status": "paid", "customer_details": {"email": "a@example.com"},
                "metadata": {"platform": "leadsite-io", "tier": "starter"}}}
        }))
        .unwrap();
        let created = lifecycle()[0].clone();
        let a = run(&[checkout.clone(), created.clone()]).unwrap().snapshot;
        let b = run(&[created, checkout]).unwrap().snapshot;
        assert_eq!(a, b);
        assert_eq!(a.email.as_deref(), Some("a@example.com"));
        assert_eq!(a.client_reference_id.as_deref(), Some("user-7"));
        assert_eq!(a.status, SubscriptionStatus::Active);
    }

    #[test]
    fn invoices_move_between_active_and_past_due_only_when_newer() {
        let created = lifecycle()[0].clone();
        let failed = parse_event(&json!({
            "id": "evt_i", "type": "invoice.payment_failed", "created": 105,
            "data": {"object": {"id": "in_1", "customer": "cus_ABC",
                "parent": {"subscription_details": {"subscription": "sub_1"}}}}
        }))
        .unwrap();
        let s = run(&[created.clone(), failed.clone()]).unwrap().snapshot;
        assert_eq!(s.status, SubscriptionStatus::PastDue);
        let deleted = lifecycle()[4].clone();
        let s = run(&[created, deleted, failed]).unwrap().snapshot;
        assert_eq!(s.status, SubscriptionStatus::Canceled);
    }

    #[test]
    fn other_types_are_ignored_and_garbage_is_malformed() {
        let e = parse_event(
            &json!({"id": "evt_x", "type": "charge.succeeded", "created": 1,
            "data": {"object": {}}}),
        )
        .unwrap();
        assert!(matches!(e.observation, Observation::Ignored(_)));
        let err = parse_event(&json!({"id": "evt_x"})).unwrap_err();
        assert_eq!(err.metric_label(), "malformed_event");
    }
}
