//! The one tolerant parser of what Stripe sends: webhook event payloads and API responses
//! (`GET /v1/subscriptions`). Both carry the same subscription object, so both go through
//! [`parse_subscription`].
//!
//! Why `serde_json::Value` and not async-stripe's generated types: those types follow one API
//! version strictly (a subscription item without `price`, as older versions and localstripe
//! send, or `current_period_end` on the subscription instead of on its items, fails the whole
//! object). Billing needs a handful of fields and must read every version an account may be
//! pinned to, so it reads those fields where any version puts them and refuses, with a clear
//! error, only an object it cannot map (no id, no customer, no or an unknown status).

use serde_json::Value;
use stackplane_crds::SubscriptionStatus;

/// A payload that is not the Stripe object it claims to be: the event is stored as failed with
/// this message (a permanent error; retrying cannot help).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event payload is not a Stripe event: {0}")]
pub struct MalformedEvent(pub String);

impl MalformedEvent {
    /// The stable category of the error: a metric label, stored as `stripe_events.error_kind`.
    pub fn metric_label(&self) -> &'static str {
        "malformed_event"
    }
}

/// The event types the worker acts on; every other type is stored and acknowledged.
pub const HANDLED_EVENT_TYPES: [&str; 17] = [
    "checkout.session.completed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "customer.subscription.trial_will_end",
    "invoice.payment_failed",
    "invoice.payment_action_required",
    "invoice.paid",
    // A schedule's phases change the subscription (price, quantity, cancellation) later, with
    // or without a `customer.subscription.*` event of their own: each triggers a read-back.
    "subscription_schedule.aborted",
    "subscription_schedule.canceled",
    "subscription_schedule.completed",
    "subscription_schedule.created",
    "subscription_schedule.expiring",
    "subscription_schedule.released",
    "subscription_schedule.updated",
];

/// The envelope of a stored Stripe event.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedEvent {
    pub id: String,
    pub event_type: String,
    /// `event.created`, seconds since the epoch.
    pub created: i64,
    /// `event.livemode`; `None` when the payload does not say.
    pub livemode: Option<bool>,
    pub observation: Observation,
}

/// What one event says.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// `customer.subscription.*`: the whole subscription as of the event.
    Subscription(SubscriptionObservation),
    /// `checkout.session.completed` in subscription mode.
    Checkout(CheckoutObservation),
    /// `invoice.paid` / `invoice.payment_failed` / `invoice.payment_action_required` of a
    /// subscription's invoice.
    Invoice(InvoiceObservation),
    /// `subscription_schedule.*`: says nothing the worker applies by itself; it triggers a
    /// read of the customer's subscriptions.
    Schedule(ScheduleObservation),
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
            Observation::Schedule(s) => s.subscription_id.as_deref(),
            Observation::Ignored(_) => None,
        }
    }

    /// The Stripe customer the observation concerns.
    pub fn customer_id(&self) -> Option<&str> {
        match self {
            Observation::Subscription(s) => Some(&s.customer_id),
            Observation::Checkout(c) => Some(&c.customer_id),
            Observation::Invoice(i) => Some(&i.customer_id),
            Observation::Schedule(s) => Some(&s.customer_id),
            Observation::Ignored(_) => None,
        }
    }
}

/// A subscription as an event payload or the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionObservation {
    pub subscription_id: String,
    pub customer_id: String,
    pub status: SubscriptionStatus,
    /// Price ids of the subscription's items, in order (`price.id`, or `plan.id` in older API
    /// versions).
    pub price_ids: Vec<String>,
    /// The items themselves (same order as `price_ids`).
    pub items: Vec<ItemObservation>,
    pub current_period_end: Option<i64>,
    /// When the subscription ended (`ended_at`, else `canceled_at`); only used once it has.
    pub ended_at: Option<i64>,
    /// `subscription.created`: orders a customer's subscriptions ("the newest").
    pub created: Option<i64>,
    /// `trial_end`, while there is a trial.
    pub trial_end: Option<i64>,
    /// Set for `customer.subscription.trial_will_end`.
    pub trial_will_end: bool,
    /// When a scheduled cancellation takes effect: `cancel_at`, else (`cancel_at_period_end`)
    /// the end of the current period. Only while the subscription has not ended.
    pub cancel_at: Option<i64>,
    /// `pause_collection`: invoices are not collected, the service goes on.
    pub collection_paused: Option<CollectionPause>,
}

/// One item of a subscription: a price and how many of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemObservation {
    /// `si_…`; absent in payloads that carry no item ids.
    pub id: Option<String>,
    pub price: String,
    pub quantity: Option<u64>,
}

/// A subscription's `pause_collection`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CollectionPause {
    /// `keep_as_draft`, `mark_uncollectible` or `void`.
    pub behavior: String,
    /// When collection resumes by itself, if set.
    #[serde(default)]
    pub resumes_at: Option<i64>,
}

/// What a `subscription_schedule.*` event names.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleObservation {
    pub schedule_id: Option<String>,
    pub customer_id: String,
    /// The subscription the schedule manages, once it has one.
    pub subscription_id: Option<String>,
}

/// The metadata key of a Checkout Session that names the `dashboard` token which created it
/// (its id); absent for sessions the admin created. The worker links the session's new Stripe
/// customer to that dashboard (`checkout_customers`).
pub const DASHBOARD_METADATA_KEY: &str = "dashboard";

#[derive(Debug, Clone, PartialEq)]
pub struct CheckoutObservation {
    /// The Checkout Session's id (`cs_…`).
    pub session_id: Option<String>,
    pub subscription_id: String,
    pub customer_id: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub client_reference_id: Option<String>,
    pub platform: Option<String>,
    pub tier: Option<String>,
    /// `metadata.dashboard`: the id of the dashboard token that created the session.
    pub dashboard: Option<String>,
    pub paid: bool,
}

/// What an invoice event says about its subscription's payments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvoiceOutcome {
    Paid,
    PaymentFailed,
    /// The customer must authenticate the payment (3-D Secure, ...).
    ActionRequired,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InvoiceObservation {
    pub subscription_id: String,
    pub customer_id: String,
    pub outcome: InvoiceOutcome,
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
/// subscription or (newer versions) on its items; items with `price` or (older versions) only
/// `plan`; an invoice's subscription at `subscription` or (newer versions) at
/// `parent.subscription_details.subscription`.
pub fn parse_event(payload: &Value) -> Result<ParsedEvent, MalformedEvent> {
    let bad = |what: &str| MalformedEvent(what.to_owned());
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
        | "customer.subscription.deleted"
        | "customer.subscription.paused"
        | "customer.subscription.resumed"
        | "customer.subscription.trial_will_end" => {
            let mut s = parse_subscription(object)?;
            if event_type == "customer.subscription.deleted" {
                s.status = SubscriptionStatus::Canceled;
            }
            s.trial_will_end = event_type == "customer.subscription.trial_will_end";
            Observation::Subscription(s)
        }
        "checkout.session.completed" => parse_checkout(object)?,
        t if t.starts_with("subscription_schedule.") => {
            Observation::Schedule(ScheduleObservation {
                schedule_id: str_at(object, &["id"]).map(str::to_owned),
                customer_id: id_at(object, "customer").ok_or_else(|| {
                    MalformedEvent("subscription schedule: no customer".to_owned())
                })?,
                subscription_id: id_at(object, "subscription"),
            })
        }
        "invoice.paid" => parse_invoice(object, InvoiceOutcome::Paid)?,
        "invoice.payment_failed" => parse_invoice(object, InvoiceOutcome::PaymentFailed)?,
        "invoice.payment_action_required" => parse_invoice(object, InvoiceOutcome::ActionRequired)?,
        _ => Observation::Ignored("event type not handled"),
    };
    Ok(ParsedEvent {
        id,
        event_type,
        created,
        livemode: payload.get("livemode").and_then(Value::as_bool),
        observation,
    })
}

/// Reads a subscription object, from an event's `data.object` or an API list's `data[]`.
pub fn parse_subscription(object: &Value) -> Result<SubscriptionObservation, MalformedEvent> {
    let bad = |what: &str| MalformedEvent(format!("subscription: {what}"));
    let subscription_id = str_at(object, &["id"])
        .ok_or_else(|| bad("no id"))?
        .to_owned();
    let bad = |what: &str| MalformedEvent(format!("subscription {subscription_id}: {what}"));
    let customer_id = id_at(object, "customer").ok_or_else(|| bad("no customer"))?;
    let status = str_at(object, &["status"]).ok_or_else(|| bad("no status"))?;
    let status = parse_status(status).ok_or_else(|| bad(&format!("unknown status {status:?}")))?;
    let raw_items: &[Value] = object
        .get("items")
        .and_then(|i| i.get("data"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let items: Vec<ItemObservation> = raw_items
        .iter()
        .filter_map(|item| {
            let price = id_at(item, "price")
                .or_else(|| str_at(item, &["plan", "id"]).map(str::to_owned))?;
            Some(ItemObservation {
                id: str_at(item, &["id"]).map(str::to_owned),
                price,
                quantity: item.get("quantity").and_then(Value::as_u64),
            })
        })
        .collect();
    let price_ids = items.iter().map(|i| i.price.clone()).collect();
    let current_period_end = i64_at(object, &["current_period_end"]).or_else(|| {
        raw_items
            .iter()
            .filter_map(|i| i64_at(i, &["current_period_end"]))
            .max()
    });
    let ended_at = i64_at(object, &["ended_at"]).or_else(|| i64_at(object, &["canceled_at"]));
    // Newer API versions set `cancel_at` to the period's end with `cancel_at_period_end`;
    // older ones set only the flag.
    let cancel_at = i64_at(object, &["cancel_at"]).or_else(|| {
        object
            .get("cancel_at_period_end")
            .and_then(Value::as_bool)
            .filter(|b| *b)
            .and(current_period_end)
    });
    let collection_paused = object
        .get("pause_collection")
        .filter(|p| p.is_object())
        .map(|p| CollectionPause {
            behavior: str_at(p, &["behavior"])
                .unwrap_or("keep_as_draft")
                .to_owned(),
            resumes_at: i64_at(p, &["resumes_at"]),
        });
    Ok(SubscriptionObservation {
        subscription_id,
        customer_id,
        status,
        price_ids,
        current_period_end,
        ended_at,
        created: i64_at(object, &["created"]).or_else(|| i64_at(object, &["start_date"])),
        trial_end: i64_at(object, &["trial_end"]),
        trial_will_end: false,
        items,
        cancel_at,
        collection_paused,
    })
}

fn parse_checkout(object: &Value) -> Result<Observation, MalformedEvent> {
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
        .ok_or_else(|| MalformedEvent("checkout session: no customer".to_owned()))?;
    let paid = str_at(object, &["payment_status"])
        .is_none_or(|s| s == "paid" || s == "no_payment_required");
    Ok(Observation::Checkout(CheckoutObservation {
        session_id: str_at(object, &["id"]).map(str::to_owned),
        subscription_id,
        customer_id,
        email: str_at(object, &["customer_details", "email"])
            .or_else(|| str_at(object, &["customer_email"]))
            .map(str::to_owned),
        name: str_at(object, &["customer_details", "name"]).map(str::to_owned),
        client_reference_id: str_at(object, &["client_reference_id"]).map(str::to_owned),
        platform: str_at(object, &["metadata", "platform"]).map(str::to_owned),
        tier: str_at(object, &["metadata", "tier"]).map(str::to_owned),
        dashboard: str_at(object, &["metadata", DASHBOARD_METADATA_KEY]).map(str::to_owned),
        paid,
    }))
}

fn parse_invoice(object: &Value, outcome: InvoiceOutcome) -> Result<Observation, MalformedEvent> {
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
        .ok_or_else(|| MalformedEvent("invoice: no customer".to_owned()))?;
    Ok(Observation::Invoice(InvoiceObservation {
        subscription_id,
        customer_id,
        outcome,
    }))
}

/// One page of `GET /v1/subscriptions`: the subscriptions, whether more follow, and the id to
/// continue after.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionPage {
    pub subscriptions: Vec<SubscriptionObservation>,
    pub has_more: bool,
    pub last_id: Option<String>,
}

/// Reads a list response of subscriptions. An element that cannot be mapped fails the page:
/// skipping it would make a sweep or a read treat that subscription as absent.
pub fn parse_subscription_page(body: &Value) -> Result<SubscriptionPage, MalformedEvent> {
    let data = body
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| MalformedEvent("subscription list: no data".to_owned()))?;
    let subscriptions = data
        .iter()
        .map(parse_subscription)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SubscriptionPage {
        last_id: data
            .last()
            .and_then(|s| str_at(s, &["id"]))
            .map(str::to_owned),
        has_more: body
            .get("has_more")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        subscriptions,
    })
}

/// A Stripe customer a listing returned: its id and when it was made (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerObservation {
    pub id: String,
    pub created: i64,
}

/// Reads a list response of customers (`GET /v1/customers?email=`). Deleted customers are left
/// out (Stripe lists none, but a deleted one can never be reused); an element without an id
/// fails the page.
pub fn parse_customer_page(body: &Value) -> Result<Vec<CustomerObservation>, MalformedEvent> {
    let data = body
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| MalformedEvent("customer list: no data".to_owned()))?;
    data.iter()
        .filter(|c| c.get("deleted").and_then(Value::as_bool) != Some(true))
        .map(|c| {
            let id = str_at(c, &["id"])
                .ok_or_else(|| MalformedEvent("customer list: a customer without id".to_owned()))?;
            Ok(CustomerObservation {
                id: id.to_owned(),
                created: c.get("created").and_then(Value::as_i64).unwrap_or(i64::MAX),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn current_and_older_api_versions_read_the_same() {
        // 2025 versions: items carry `price` and `current_period_end`.
        let current = json!({"id": "sub_1", "object": "subscription", "customer": "cus_A",
            "status": "active", "created": 100,
            "items": {"data": [{"id": "si_1", "price": {"id": "price_x"}, "current_period_end": 500}]}});
        // Older versions (and localstripe): only `plan` on items, `current_period_end` on the
        // subscription, an expanded customer.
        let older = json!({"id": "sub_1", "object": "subscription", "customer": {"id": "cus_A"},
            "status": "active", "created": 100, "current_period_end": 500,
            "items": {"data": [{"id": "si_1", "plan": {"id": "price_x"}}]}});
        let a = parse_subscription(&current).unwrap();
        let b = parse_subscription(&older).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.price_ids, ["price_x"]);
        assert_eq!(a.current_period_end, Some(500));
        assert_eq!(a.created, Some(100));
    }

    #[test]
    fn what_cannot_be_mapped_is_refused_with_a_clear_error() {
        let err =
            parse_subscription(&json!({"id": "sub_1", "customer": "cus_A", "status": "frozen"}))
                .unwrap_err();
        assert_eq!(err.metric_label(), "malformed_event");
        assert!(
            err.to_string().contains("sub_1") && err.to_string().contains("frozen"),
            "{err}"
        );
        let err = parse_subscription(&json!({"id": "sub_1", "status": "active"})).unwrap_err();
        assert!(err.to_string().contains("no customer"), "{err}");
        let page = json!({"object": "list", "has_more": false,
            "data": [{"id": "sub_1", "customer": "cus_A", "status": "active"}, {"id": "sub_2"}]});
        assert!(parse_subscription_page(&page).is_err());
    }

    #[test]
    fn pages_say_where_to_continue() {
        let page = json!({"object": "list", "has_more": true, "data": [
            {"id": "sub_1", "customer": "cus_A", "status": "active"},
            {"id": "sub_2", "customer": "cus_B", "status": "canceled", "ended_at": 9}]});
        let p = parse_subscription_page(&page).unwrap();
        assert!(p.has_more);
        assert_eq!(p.last_id.as_deref(), Some("sub_2"));
        assert_eq!(p.subscriptions[1].ended_at, Some(9));
    }

    #[test]
    fn subscription_business_events_are_read() {
        let ev = |ty: &str, status: &str| {
            json!({"id": "evt_1", "type": ty, "created": 5, "livemode": true,
                "data": {"object": {"id": "sub_1", "customer": "cus_A", "status": status, "trial_end": 77}}})
        };
        let e = parse_event(&ev("customer.subscription.trial_will_end", "trialing")).unwrap();
        assert_eq!(e.livemode, Some(true));
        match e.observation {
            Observation::Subscription(s) => assert!(s.trial_will_end && s.trial_end == Some(77)),
            other => panic!("{other:?}"),
        }
        let e = parse_event(&ev("customer.subscription.paused", "paused")).unwrap();
        assert!(
            matches!(e.observation, Observation::Subscription(ref s) if s.status == SubscriptionStatus::Paused)
        );
        let e = parse_event(&json!({"id": "evt_2", "type": "invoice.payment_action_required",
            "created": 6, "data": {"object": {"id": "in_1", "customer": "cus_A", "subscription": "sub_1"}}}))
        .unwrap();
        assert!(matches!(
            e.observation,
            Observation::Invoice(InvoiceObservation {
                outcome: InvoiceOutcome::ActionRequired,
                ..
            })
        ));
        assert!(HANDLED_EVENT_TYPES.contains(&"invoice.payment_action_required"));
    }

    #[test]
    fn a_checkout_names_its_session_and_the_dashboard_that_made_it() {
        let ev = |metadata: serde_json::Value| {
            json!({"id": "evt_c", "type": "checkout.session.completed", "created": 5,
                "data": {"object": {"id": "cs_test_1", "object": "checkout.session",
                    "mode": "subscription", "customer": "cus_A", "subscription": "sub_1",
                    "client_reference_id": "user-7", "payment_status": "paid",
                    "metadata": metadata}}})
        };
        let checkout = |e: ParsedEvent| match e.observation {
            Observation::Checkout(c) => c,
            other => panic!("{other:?}"),
        };
        let c = checkout(
            parse_event(&ev(json!({"platform": "crm", "tier": "starter",
                DASHBOARD_METADATA_KEY: "7d1f0a52-0000-4000-8000-000000000001"})))
            .unwrap(),
        );
        assert_eq!(c.session_id.as_deref(), Some("cs_test_1"));
        assert_eq!(c.client_reference_id.as_deref(), Some("user-7"));
        assert_eq!(
            c.dashboard.as_deref(),
            Some("7d1f0a52-0000-4000-8000-000000000001")
        );
        // The admin's sessions carry no dashboard.
        let c = checkout(parse_event(&ev(json!({"platform": "crm", "tier": "starter"}))).unwrap());
        assert_eq!(c.dashboard, None);
    }

    #[test]
    fn items_flags_and_schedules_are_read() {
        let s = parse_subscription(&json!({"id": "sub_1", "customer": "cus_A", "status": "active",
            "cancel_at_period_end": true, "cancel_at": null,
            "pause_collection": {"behavior": "mark_uncollectible", "resumes_at": null},
            "items": {"data": [
                {"id": "si_1", "price": {"id": "price_a"}, "quantity": 2, "current_period_end": 700},
                {"id": "si_2", "plan": {"id": "price_b"}}]}}))
        .unwrap();
        assert_eq!(
            s.items,
            [
                ItemObservation {
                    id: Some("si_1".into()),
                    price: "price_a".into(),
                    quantity: Some(2)
                },
                ItemObservation {
                    id: Some("si_2".into()),
                    price: "price_b".into(),
                    quantity: None
                }
            ]
        );
        assert_eq!(s.cancel_at, Some(700), "the period's end");
        assert_eq!(
            s.collection_paused,
            Some(CollectionPause {
                behavior: "mark_uncollectible".into(),
                resumes_at: None
            })
        );
        let e = parse_event(&json!({"id": "evt_s", "type": "subscription_schedule.updated",
            "created": 5, "data": {"object": {"id": "sub_sched_1", "object": "subscription_schedule",
                "customer": "cus_A", "subscription": "sub_1"}}}))
        .unwrap();
        assert_eq!(e.observation.customer_id(), Some("cus_A"));
        assert_eq!(e.observation.subscription_id(), Some("sub_1"));
        assert!(HANDLED_EVENT_TYPES.contains(&"subscription_schedule.released"));
        // A schedule not started yet has no subscription.
        let e = parse_event(
            &json!({"id": "evt_s", "type": "subscription_schedule.created",
            "created": 5, "data": {"object": {"id": "sub_sched_1", "customer": "cus_A",
                "subscription": null}}}),
        )
        .unwrap();
        assert_eq!(e.observation.subscription_id(), None);
    }
}
