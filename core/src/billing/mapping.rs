//! Pure logic of the billing worker: the ordering of what events and Stripe API reads say about
//! one subscription, their merge into that subscription's state, and the Tenant that state asks
//! for. Parsing is in [`super::parse`]; choosing which subscription governs a Tenant is in
//! [`super::governing`]. Nothing here touches the network.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use stackplane_crds::SubscriptionStatus;

use super::parse::{
    CollectionPause, InvoiceOutcome, Observation, ParsedEvent, SubscriptionObservation,
};
use super::prices::PriceRef;

/// The billing worker's `past_due` annotation (defined once, in `stackplane_crds::labels`).
pub const PAYMENT_OVERDUE_ANNOTATION: &str = crate::contract::labels::PAYMENT_OVERDUE;
/// Why payment is overdue, next to [`PAYMENT_OVERDUE_ANNOTATION`].
pub const PAYMENT_OVERDUE_REASON_ANNOTATION: &str = crate::contract::labels::PAYMENT_OVERDUE_REASON;
/// The reason written when an invoice needs the customer to authenticate a payment.
pub const PAYMENT_ACTION_REQUIRED: &str = "payment_action_required";
/// Billing's annotation of a scheduled cancellation (its date, RFC 3339).
pub const CANCELLATION_SCHEDULED_ANNOTATION: &str = crate::contract::labels::CANCELLATION_SCHEDULED;
/// Billing's annotation of paused collection (its behavior).
pub const COLLECTION_PAUSED_ANNOTATION: &str = crate::contract::labels::COLLECTION_PAUSED;
/// When paused collection resumes by itself (RFC 3339), next to the one above.
pub const COLLECTION_RESUMES_AT_ANNOTATION: &str = crate::contract::labels::COLLECTION_RESUMES_AT;
/// Every annotation billing may set on a Tenant: one it stops asking for is removed.
pub const BILLING_ANNOTATIONS: [&str; 5] = [
    PAYMENT_OVERDUE_ANNOTATION,
    PAYMENT_OVERDUE_REASON_ANNOTATION,
    CANCELLATION_SCHEDULED_ANNOTATION,
    COLLECTION_PAUSED_ANNOTATION,
    COLLECTION_RESUMES_AT_ANNOTATION,
];

/// Status precedence of a state read from the Stripe API: above every event status, so a read
/// supersedes every event created up to the second it was made in.
pub const API_READ_RANK: i32 = 100;
/// The event id recorded for a state read from the Stripe API.
pub const API_READ_ID: &str = "stripe-api";

/// Whether a subscription in `status` has ended (it never runs again).
pub fn is_ended(status: SubscriptionStatus) -> bool {
    matches!(
        status,
        SubscriptionStatus::Canceled | SubscriptionStatus::IncompleteExpired
    )
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

fn yes() -> bool {
    true
}

/// One item of a subscription and what it buys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemSnapshot {
    /// `si_…`, when known.
    #[serde(default)]
    pub id: Option<String>,
    /// The price; `None` for the baseline a checkout makes before the subscription is seen.
    #[serde(default)]
    pub price: Option<String>,
    #[serde(default)]
    pub quantity: Option<u64>,
    pub platform: String,
    pub tier: String,
    /// Position of the tier in the Platform's `spec.tiers` (later is higher).
    #[serde(default)]
    pub tier_rank: u32,
    /// False when no Platform lists the price any more: `platform` and `tier` are the last
    /// known, so the subscription's status still reaches that Tenant.
    #[serde(default = "yes")]
    pub listed: bool,
}

impl ItemSnapshot {
    /// The one item a checkout's metadata names, before its subscription is seen.
    pub fn from_checkout(platform: String, tier: String) -> Self {
        Self {
            id: None,
            price: None,
            quantity: None,
            platform,
            tier,
            tier_rank: 0,
            listed: true,
        }
    }
}

/// The merged state of one subscription, stored in `subscription_state.snapshot`. A bundle's
/// snapshot spans several platforms (its `items`); [`Snapshot::per_platform`] splits it into
/// the state each platform's Tenant follows, whose `platform` and `tier` are that Tenant's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub subscription_id: String,
    pub customer_id: String,
    /// The platform of the first item (of this platform's items, in a per-platform view).
    pub platform: String,
    /// The highest tier among the items on `platform`.
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
    /// `subscription.created`: which of a customer's subscriptions is the newest (unknown sorts
    /// as the oldest).
    #[serde(default)]
    pub created: Option<i64>,
    /// The trial's end, once `customer.subscription.trial_will_end` announced it.
    #[serde(default)]
    pub trial_end_notice: Option<i64>,
    /// `created` of the `invoice.payment_action_required` not yet followed by `invoice.paid`.
    #[serde(default)]
    pub payment_action_required: Option<i64>,
    /// The items whose prices a Platform lists (or listed: see [`ItemSnapshot::listed`]).
    /// Empty in states stored before bundles: `platform` and `tier` are then the one item.
    #[serde(default)]
    pub items: Vec<ItemSnapshot>,
    /// `trial_end` as last read.
    #[serde(default)]
    pub trial_end: Option<i64>,
    /// When a scheduled cancellation (`cancel_at`, `cancel_at_period_end`) takes effect.
    #[serde(default)]
    pub cancel_at: Option<i64>,
    /// `pause_collection`, while set.
    #[serde(default)]
    pub collection_paused: Option<CollectionPause>,
}

impl Snapshot {
    /// Whether the subscription has ended.
    pub fn ended(&self) -> bool {
        is_ended(self.status)
    }

    /// The items, or for a state stored before bundles, its one (platform, tier).
    pub fn items_or_primary(&self) -> Vec<ItemSnapshot> {
        if self.items.is_empty() {
            vec![ItemSnapshot::from_checkout(
                self.platform.clone(),
                self.tier.clone(),
            )]
        } else {
            self.items.clone()
        }
    }

    /// What each platform's Tenant follows of this subscription: one view per platform its
    /// items are on, in platform order, with that platform's items and the highest of their
    /// tiers (later in `spec.tiers`; the first item wins a tie).
    pub fn per_platform(&self) -> Vec<Snapshot> {
        let mut by_platform: std::collections::BTreeMap<&str, Vec<&ItemSnapshot>> =
            Default::default();
        let items = self.items_or_primary();
        for item in &items {
            by_platform.entry(&item.platform).or_default().push(item);
        }
        by_platform
            .into_iter()
            .map(|(platform, items)| {
                let top = items.iter().fold(items[0], |best, i| {
                    if i.tier_rank > best.tier_rank {
                        i
                    } else {
                        best
                    }
                });
                let mut view = self.clone();
                view.platform = platform.to_owned();
                view.tier = top.tier.clone();
                view.items = items.into_iter().cloned().collect();
                view
            })
            .collect()
    }

    /// Prices of the items no Platform lists any more.
    pub fn unlisted_prices(&self) -> Vec<String> {
        self.items
            .iter()
            .filter(|i| !i.listed)
            .filter_map(|i| i.price.clone())
            .collect()
    }
}

/// The items of `s` with what each buys, given `resolve` (price → what a Platform sells). A
/// price no Platform lists keeps what it bought before, so a retired price never freezes a
/// subscription: the same item (by id), else the same price, else — an item replaced by one on
/// a retired price (a new item id) — a platform the subscription was on that no item covers any
/// more. `None` when no item buys anything, now or before: nothing stackplane sells.
pub fn resolve_items(
    s: &SubscriptionObservation,
    previous: Option<&Snapshot>,
    resolve: impl Fn(&str) -> Option<PriceRef>,
) -> Option<Vec<ItemSnapshot>> {
    let before = previous.map(Snapshot::items_or_primary).unwrap_or_default();
    let mut out: Vec<ItemSnapshot> = Vec::new();
    let mut unplaced = Vec::new();
    for item in &s.items {
        let make = |platform: String, tier: String, tier_rank: u32, listed: bool| ItemSnapshot {
            id: item.id.clone(),
            price: Some(item.price.clone()),
            quantity: item.quantity,
            platform,
            tier,
            tier_rank,
            listed,
        };
        if let Some(r) = resolve(&item.price) {
            out.push(make(r.platform, r.tier, r.tier_rank, true));
            continue;
        }
        let known = before
            .iter()
            .find(|b| b.id.is_some() && b.id == item.id)
            .or_else(|| {
                before
                    .iter()
                    .find(|b| b.price.as_deref() == Some(item.price.as_str()))
            });
        match known {
            Some(k) => out.push(make(k.platform.clone(), k.tier.clone(), k.tier_rank, false)),
            None => unplaced.push(make(String::new(), String::new(), 0, false)),
        }
    }
    for mut item in unplaced {
        let uncovered = before
            .iter()
            .find(|b| !out.iter().any(|o| o.platform == b.platform));
        if let Some(k) = uncovered {
            item.platform = k.platform.clone();
            item.tier = k.tier.clone();
            item.tier_rank = k.tier_rank;
            out.push(item);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// [`resolve_items`] for the subscription `event` carries.
pub fn resolve_event_items(
    current: Option<&Applied>,
    event: &ParsedEvent,
    resolve: impl Fn(&str) -> Option<PriceRef>,
) -> Option<Vec<ItemSnapshot>> {
    match &event.observation {
        Observation::Subscription(s) => resolve_items(s, current.map(|c| &c.snapshot), resolve),
        _ => None,
    }
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
    /// What the subscription's items (these prices) buy: [`resolve_event_items`].
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
        Observation::Invoice(i) => match i.outcome {
            InvoiceOutcome::Paid => status_rank(SubscriptionStatus::Active),
            InvoiceOutcome::PaymentFailed | InvoiceOutcome::ActionRequired => {
                status_rank(SubscriptionStatus::PastDue)
            }
        },
        _ => 0,
    };
    OrderKey {
        created: event.created,
        rank,
        event_id: event.id.clone(),
    }
}

/// Whether a superseded `trial_will_end` still has news: the trial's end, for a subscription
/// that is still trialing.
fn trial_notice_news(s: &SubscriptionObservation, current: &Snapshot) -> bool {
    s.trial_will_end
        && current.status == SubscriptionStatus::Trialing
        && s.trial_end.is_some()
        && current.trial_end_notice != s.trial_end
}

/// What must be resolved before `event` can be merged into `current` (pure: decides whether
/// the event is stale first, so a stale event with an unknown price never fails).
pub fn needs(current: Option<&Applied>, event: &ParsedEvent) -> Needs {
    let key = order_key(event);
    match (&event.observation, current) {
        (Observation::Ignored(reason), _) => Needs::Nothing(reason),
        (Observation::Schedule(_), _) => {
            Needs::Nothing("subscription schedule: the read of the customer applies it")
        }
        (Observation::Subscription(s), Some(c)) if key <= c.key => {
            if trial_notice_news(s, &c.snapshot) {
                Needs::Merge
            } else {
                Needs::Nothing("superseded by a newer event")
            }
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
        (Observation::Invoice(_), Some(c)) if c.snapshot.ended() => {
            Needs::Nothing("invoice does not change a subscription that has ended")
        }
        (Observation::Invoice(_), Some(_)) => Needs::Merge,
    }
}

/// The snapshot of subscription `s` with `items` (resolved, never empty), keeping what only
/// other events tell (customer details from checkout, notices) from `previous`.
fn subscription_snapshot(
    s: &SubscriptionObservation,
    previous: Option<&Snapshot>,
    items: Vec<ItemSnapshot>,
    seen_at: i64,
) -> Snapshot {
    let ended = is_ended(s.status);
    let platform = items
        .first()
        .map(|i| i.platform.clone())
        .unwrap_or_default();
    let tier = items
        .iter()
        .filter(|i| i.platform == platform)
        .fold(None::<&ItemSnapshot>, |best, i| match best {
            Some(b) if b.tier_rank >= i.tier_rank => Some(b),
            _ => Some(i),
        })
        .map(|i| i.tier.clone())
        .unwrap_or_default();
    let notice = if s.trial_will_end {
        s.trial_end
    } else {
        previous.and_then(|p| p.trial_end_notice)
    };
    Snapshot {
        subscription_id: s.subscription_id.clone(),
        customer_id: s.customer_id.clone(),
        platform,
        tier,
        status: s.status,
        email: previous.and_then(|p| p.email.clone()),
        name: previous.and_then(|p| p.name.clone()),
        client_reference_id: previous.and_then(|p| p.client_reference_id.clone()),
        current_period_end: s.current_period_end,
        cancelled_at: ended.then(|| s.ended_at.unwrap_or(seen_at)),
        // Never a delivery time: which event arrived first must not decide "the newest".
        created: s.created.or(previous.and_then(|p| p.created)),
        trial_end_notice: notice,
        payment_action_required: if ended {
            None
        } else {
            previous.and_then(|p| p.payment_action_required)
        },
        items,
        trial_end: s.trial_end,
        cancel_at: if ended { None } else { s.cancel_at },
        collection_paused: if ended {
            None
        } else {
            s.collection_paused.clone()
        },
    }
}

/// Merges `event` into `current`, given the items resolved for it when [`needs`] asked (for a
/// checkout: its one [`ItemSnapshot::from_checkout`]). `None` when nothing changes.
pub fn merge(
    current: Option<&Applied>,
    event: &ParsedEvent,
    resolved: Option<Vec<ItemSnapshot>>,
) -> Option<Applied> {
    let key = order_key(event);
    match &event.observation {
        Observation::Subscription(s) => {
            if let Some(cur) = current.filter(|c| key <= c.key) {
                // Superseded: only a trial notice still counts.
                let mut snapshot = cur.snapshot.clone();
                if trial_notice_news(s, &snapshot) {
                    snapshot.trial_end_notice = s.trial_end;
                }
                return (snapshot != cur.snapshot).then(|| Applied {
                    snapshot,
                    key: cur.key.clone(),
                });
            }
            let resolved = resolved?;
            let snapshot =
                subscription_snapshot(s, current.map(|c| &c.snapshot), resolved, event.created);
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
                let items = resolved.filter(|i| !i.is_empty())?;
                let (platform, tier) = (items[0].platform.clone(), items[0].tier.clone());
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
                    created: None,
                    trial_end_notice: None,
                    payment_action_required: None,
                    items,
                    trial_end: None,
                    cancel_at: None,
                    collection_paused: None,
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
            let mut snapshot = cur.snapshot.clone();
            // The status follows only an invoice newer than what set it, and only in the statuses
            // payments move between; the payment-action notice follows every invoice, because
            // a Stripe read made after the invoice says nothing about it.
            let newer = key.created > cur.key.created;
            let movable = matches!(
                snapshot.status,
                SubscriptionStatus::Active
                    | SubscriptionStatus::Trialing
                    | SubscriptionStatus::PastDue
                    | SubscriptionStatus::Unpaid
            );
            match i.outcome {
                InvoiceOutcome::Paid => {
                    if newer && movable {
                        snapshot.status = SubscriptionStatus::Active;
                    }
                    if snapshot
                        .payment_action_required
                        .is_some_and(|at| at <= event.created)
                    {
                        snapshot.payment_action_required = None;
                    }
                }
                InvoiceOutcome::PaymentFailed => {
                    if newer && movable {
                        snapshot.status = SubscriptionStatus::PastDue;
                    }
                }
                // The status is Stripe's to move (past_due on a renewal, incomplete on a first
                // payment); the invoice says why.
                InvoiceOutcome::ActionRequired => {
                    if snapshot
                        .payment_action_required
                        .is_none_or(|at| at < event.created)
                    {
                        snapshot.payment_action_required = Some(event.created);
                    }
                }
            }
            let key = if newer && snapshot.status != cur.snapshot.status {
                key
            } else {
                cur.key.clone()
            };
            (snapshot != cur.snapshot).then_some(Applied { snapshot, key })
        }
        Observation::Schedule(_) | Observation::Ignored(_) => None,
    }
}

/// The key of a state read from the Stripe API at `read_at_ms` (milliseconds): after every
/// event created up to that second and after every earlier read.
pub fn read_key(read_at_ms: i64) -> OrderKey {
    OrderKey {
        created: read_at_ms.div_euclid(1000),
        rank: API_READ_RANK,
        event_id: format!("{API_READ_ID}:{read_at_ms:013}"),
    }
}

/// Merges a subscription as the Stripe API showed it at `read_at_ms` into `current`: the read
/// is the truth as of then, so it supersedes every event created up to that second. `None` when
/// `current` is newer (an event created later, or a later read, e.g. while a sweep pages).
pub fn merge_read(
    current: Option<&Applied>,
    s: &SubscriptionObservation,
    read_at_ms: i64,
    resolved: Vec<ItemSnapshot>,
) -> Option<Applied> {
    let key = read_key(read_at_ms);
    if current.is_some_and(|c| c.key >= key) {
        return None;
    }
    Some(Applied {
        snapshot: subscription_snapshot(
            s,
            current.map(|c| &c.snapshot),
            resolved,
            read_at_ms.div_euclid(1000),
        ),
        key,
    })
}

/// The spec fields billing owns on a Tenant (status mapping of docs/architecture.md):
/// `active`/`trialing` run; `past_due` runs with the payment-overdue annotation;
/// `unpaid`/`paused`/`incomplete` are suspended (`paused` is also how a trial that ends without
/// a payment method shows); `canceled`/`incomplete_expired` are suspended with `cancelledAt`
/// set. A scheduled cancellation and paused collection run, each with its annotation.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredTenant {
    pub name: String,
    pub suspended: bool,
    pub payment_overdue: bool,
    /// Why, when it is not simply `past_due`.
    pub payment_overdue_reason: Option<&'static str>,
    pub cancelled_at: Option<String>,
    /// When a scheduled cancellation takes effect (RFC 3339), while the subscription runs.
    pub cancellation_scheduled: Option<String>,
    /// `pause_collection`'s behavior and when it resumes (RFC 3339), while set.
    pub collection_paused: Option<(String, Option<String>)>,
}

/// RFC 3339 (UTC, seconds) of a Unix time.
pub fn rfc3339(ts: i64) -> Option<String> {
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
    let action_required = snapshot.payment_action_required.is_some() && !ended;
    DesiredTenant {
        name: stackplane_crds::naming::tenant_name(&snapshot.platform, &snapshot.customer_id),
        suspended,
        payment_overdue: snapshot.status == S::PastDue || action_required,
        payment_overdue_reason: action_required.then_some(PAYMENT_ACTION_REQUIRED),
        cancelled_at: if ended {
            snapshot.cancelled_at.and_then(rfc3339)
        } else {
            None
        },
        cancellation_scheduled: (!ended)
            .then_some(snapshot.cancel_at)
            .flatten()
            .and_then(rfc3339),
        collection_paused: snapshot
            .collection_paused
            .as_ref()
            .filter(|_| !ended)
            .map(|p| (p.behavior.clone(), p.resumes_at.and_then(rfc3339))),
    }
}

/// The governing item of a per-platform view: the first on its tier.
fn governing_item(snapshot: &Snapshot) -> Option<&ItemSnapshot> {
    snapshot
        .items
        .iter()
        .find(|i| i.platform == snapshot.platform && i.tier == snapshot.tier)
}

/// The server-side apply body of the Tenant for `snapshot` (a per-platform view, see
/// [`Snapshot::per_platform`]): only the fields billing owns.
pub fn tenant_apply_body(snapshot: &Snapshot) -> (String, Value) {
    let desired = desired_tenant(snapshot);
    let labels = crate::contract::labels::tenant_labels(&desired.name, &snapshot.platform);
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
    // This platform's items (a bundle's other items are other Tenants'); quantity changes
    // nothing in the stack yet, it feeds the economics.
    let items: Vec<Value> = snapshot
        .items
        .iter()
        .filter(|i| i.platform == snapshot.platform)
        .filter_map(|i| {
            let mut item = json!({ "price": i.price.as_ref()? });
            if let Some(id) = &i.id {
                item["id"] = json!(id);
            }
            if let Some(q) = i.quantity {
                item["quantity"] = json!(q);
            }
            Some(item)
        })
        .collect();
    if !items.is_empty() {
        subscription["items"] = json!(items);
    }
    if let Some(q) = governing_item(snapshot).and_then(|i| i.quantity) {
        subscription["quantity"] = json!(q);
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
    let mut annotations = serde_json::Map::new();
    if desired.payment_overdue {
        annotations.insert(PAYMENT_OVERDUE_ANNOTATION.into(), json!("true"));
        if let Some(reason) = desired.payment_overdue_reason {
            annotations.insert(PAYMENT_OVERDUE_REASON_ANNOTATION.into(), json!(reason));
        }
    }
    if let Some(at) = &desired.cancellation_scheduled {
        annotations.insert(CANCELLATION_SCHEDULED_ANNOTATION.into(), json!(at));
    }
    if let Some((behavior, resumes)) = &desired.collection_paused {
        annotations.insert(COLLECTION_PAUSED_ANNOTATION.into(), json!(behavior));
        if let Some(at) = resumes {
            annotations.insert(COLLECTION_RESUMES_AT_ANNOTATION.into(), json!(at));
        }
    }
    let mut metadata = json!({ "name": desired.name, "labels": labels });
    if !annotations.is_empty() {
        metadata["annotations"] = Value::Object(annotations);
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
    use crate::billing::parse::parse_event;

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

    fn resolve(price: &str) -> Option<PriceRef> {
        let (tier, tier_rank) = match price {
            "price_s" => ("starter", 0),
            "price_p" => ("professional", 1),
            "price_e" => ("enterprise", 2),
            "price_t" => {
                return Some(PriceRef {
                    platform: "tackle".into(),
                    tier: "starter".into(),
                    tier_rank: 0,
                })
            }
            _ => return None,
        };
        Some(PriceRef {
            platform: "leadsite-io".to_owned(),
            tier: tier.to_owned(),
            tier_rank,
        })
    }

    /// Applies events in order the way the worker does, returning the final snapshot.
    fn run(events: &[ParsedEvent]) -> Option<Applied> {
        let mut state: Option<Applied> = None;
        for e in events {
            let resolved = match needs(state.as_ref(), e) {
                Needs::Nothing(_) => continue,
                Needs::Price(_) => resolve_event_items(state.as_ref(), e, resolve),
                Needs::PlatformTier { platform, tier } => {
                    Some(vec![ItemSnapshot::from_checkout(platform, tier)])
                }
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

    #[test]
    fn a_read_supersedes_events_up_to_its_second_and_earlier_reads() {
        let created = lifecycle()[0].clone();
        let state = run(std::slice::from_ref(&created)).unwrap();
        let Observation::Subscription(mut seen) = lifecycle()[1].observation.clone() else {
            unreachable!()
        };
        seen.status = SubscriptionStatus::PastDue;
        let resolved = resolve_items(&seen, Some(&state.snapshot), resolve).unwrap();
        assert_eq!(resolved[0].tier, "professional");
        let read = merge_read(Some(&state), &seen, 110_500, resolved.clone()).unwrap();
        assert_eq!(read.snapshot.status, SubscriptionStatus::PastDue);
        // An event created in that second or before no longer applies...
        let late = lifecycle()[1].clone();
        assert!(matches!(needs(Some(&read), &late), Needs::Nothing(_)));
        // ...an older read never does, a later one in the same second does.
        assert!(merge_read(Some(&read), &seen, 110_400, resolved.clone()).is_none());
        assert!(merge_read(Some(&read), &seen, 110_900, resolved).is_some());
        // An event created after the read applies.
        assert!(matches!(
            needs(Some(&read), &lifecycle()[2]),
            Needs::Price(_)
        ));
    }

    #[test]
    fn payment_action_required_marks_overdue_until_paid() {
        let created = lifecycle()[0].clone();
        let inv = |id: &str, ty: &str, t: i64| {
            parse_event(&json!({"id": id, "type": ty, "created": t,
                "data": {"object": {"id": "in_1", "customer": "cus_ABC", "subscription": "sub_1"}}}))
            .unwrap()
        };
        let s = run(&[
            created.clone(),
            inv("evt_a", "invoice.payment_action_required", 105),
        ])
        .unwrap()
        .snapshot;
        let d = desired_tenant(&s);
        assert!(d.payment_overdue && !d.suspended);
        assert_eq!(d.payment_overdue_reason, Some(PAYMENT_ACTION_REQUIRED));
        let (_, body) = tenant_apply_body(&s);
        assert_eq!(
            body["metadata"]["annotations"][PAYMENT_OVERDUE_REASON_ANNOTATION],
            PAYMENT_ACTION_REQUIRED
        );
        let s = run(&[
            created,
            inv("evt_a", "invoice.payment_action_required", 105),
            inv("evt_p", "invoice.paid", 106),
        ])
        .unwrap()
        .snapshot;
        assert!(!desired_tenant(&s).payment_overdue);
    }

    fn bundle_event(
        id: &str,
        created: i64,
        status: &str,
        items: Value,
        extra: Value,
    ) -> ParsedEvent {
        let mut object = json!({"id": "sub_b", "object": "subscription", "customer": "cus_ABC",
            "status": status, "created": 90, "items": {"object": "list", "data": items}});
        if let (Some(o), Some(e)) = (object.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        parse_event(
            &json!({"id": id, "type": "customer.subscription.updated", "created": created,
            "data": {"object": object}}),
        )
        .unwrap()
    }

    fn item(id: &str, price: &str, quantity: u64) -> Value {
        json!({"id": id, "price": {"id": price}, "quantity": quantity, "current_period_end": 999})
    }

    /// Every status and flag, as the Tenant sees it: runs, suspended, ended, and the annotations.
    #[test]
    fn every_status_and_flag_maps_to_the_tenant() {
        use SubscriptionStatus as S;
        let cases = [
            ("active", S::Active, false, false),
            ("trialing", S::Trialing, false, false),
            ("past_due", S::PastDue, false, false),
            ("unpaid", S::Unpaid, true, false),
            // A trial that ended without a payment method (`missing_payment_method: pause`).
            ("paused", S::Paused, true, false),
            ("incomplete", S::Incomplete, true, false),
            ("incomplete_expired", S::IncompleteExpired, true, true),
            ("canceled", S::Canceled, true, true),
        ];
        for (text, status, suspended, ended) in cases {
            let e = bundle_event(
                "evt_1",
                100,
                text,
                json!([item("si_1", "price_s", 1)]),
                json!({"cancel_at_period_end": true, "cancel_at": 500,
                    "pause_collection": {"behavior": "void", "resumes_at": 600},
                    "ended_at": if ended { json!(140) } else { Value::Null }}),
            );
            let s = run(&[e]).unwrap().snapshot;
            assert_eq!(s.status, status);
            let d = desired_tenant(&s);
            assert_eq!(d.suspended, suspended, "{text}");
            assert_eq!(d.cancelled_at.is_some(), ended, "{text}");
            assert_eq!(d.payment_overdue, status == S::PastDue, "{text}");
            // A scheduled cancellation and paused collection say something only while the
            // subscription has not ended.
            assert_eq!(d.cancellation_scheduled.is_some(), !ended, "{text}");
            assert_eq!(d.collection_paused.is_some(), !ended, "{text}");
            let (_, body) = tenant_apply_body(&s);
            let annotations = &body["metadata"]["annotations"];
            assert_eq!(
                annotations.get(CANCELLATION_SCHEDULED_ANNOTATION).is_some(),
                !ended,
                "{text}"
            );
            if !ended {
                assert_eq!(
                    annotations[CANCELLATION_SCHEDULED_ANNOTATION],
                    "1970-01-01T00:08:20Z"
                );
                assert_eq!(annotations[COLLECTION_PAUSED_ANNOTATION], "void");
                assert_eq!(
                    annotations[COLLECTION_RESUMES_AT_ANNOTATION],
                    "1970-01-01T00:10:00Z"
                );
                assert_eq!(body["spec"]["suspended"], suspended);
            }
        }
        // Without the flags: no annotations at all.
        let e = bundle_event(
            "evt_1",
            100,
            "active",
            json!([item("si_1", "price_s", 1)]),
            json!({}),
        );
        let (_, body) = tenant_apply_body(&run(&[e]).unwrap().snapshot);
        assert!(body["metadata"].get("annotations").is_none(), "{body}");
        // `cancel_at_period_end` alone (older API versions): the period's end.
        let e = bundle_event(
            "evt_1",
            100,
            "active",
            json!([item("si_1", "price_s", 1)]),
            json!({"cancel_at_period_end": true}),
        );
        let s = run(&[e]).unwrap().snapshot;
        assert_eq!(s.cancel_at, Some(999));
    }

    #[test]
    fn a_bundle_gives_each_platform_its_items_and_the_higher_tier() {
        let e = bundle_event(
            "evt_1",
            100,
            "active",
            json!([
                item("si_1", "price_p", 1),
                item("si_2", "price_t", 3),
                item("si_3", "price_s", 2),
                item("si_4", "price_other", 1)
            ]),
            json!({}),
        );
        let s = run(&[e]).unwrap().snapshot;
        // The product nobody sells here is no item of any Tenant.
        assert_eq!(s.items.len(), 3);
        let views = s.per_platform();
        assert_eq!(views.len(), 2);
        let lead = views.iter().find(|v| v.platform == "leadsite-io").unwrap();
        assert_eq!(
            lead.tier, "professional",
            "the higher of professional and starter"
        );
        let (name, body) = tenant_apply_body(lead);
        assert!(name.starts_with("leadsite-io-"));
        assert_eq!(
            body["spec"]["subscription"]["items"],
            json!([{"price": "price_p", "id": "si_1", "quantity": 1},
                {"price": "price_s", "id": "si_3", "quantity": 2}])
        );
        assert_eq!(body["spec"]["subscription"]["quantity"], 1);
        let tackle = views.iter().find(|v| v.platform == "tackle").unwrap();
        let (_, body) = tenant_apply_body(tackle);
        assert_eq!(body["spec"]["tier"], "starter");
        assert_eq!(body["spec"]["subscription"]["quantity"], 3);
        // An item order does not change the tier.
        let e = bundle_event(
            "evt_2",
            110,
            "active",
            json!([item("si_3", "price_s", 2), item("si_1", "price_p", 1)]),
            json!({}),
        );
        let s = run(&[e]).unwrap().snapshot;
        assert_eq!(s.per_platform()[0].tier, "professional");
    }

    #[test]
    fn a_retired_price_keeps_the_last_known_tier() {
        let before = bundle_event(
            "evt_1",
            100,
            "active",
            json!([item("si_1", "price_p", 1)]),
            json!({}),
        );
        let state = run(std::slice::from_ref(&before)).unwrap();
        // The same item moved to a retired price; then a new item on another retired price
        // replacing it; then cancelled.
        let Observation::Subscription(same_item) = bundle_event(
            "evt_2",
            110,
            "active",
            json!([item("si_1", "price_gone", 1)]),
            json!({}),
        )
        .observation
        else {
            unreachable!()
        };
        let items = resolve_items(&same_item, Some(&state.snapshot), resolve).unwrap();
        assert_eq!(
            (items[0].tier.as_str(), items[0].listed),
            ("professional", false)
        );
        let replaced = bundle_event(
            "evt_3",
            120,
            "unpaid",
            json!([item("si_9", "price_gone2", 1)]),
            json!({}),
        );
        let cancelled = bundle_event(
            "evt_4",
            130,
            "canceled",
            json!([item("si_9", "price_gone2", 1)]),
            json!({"ended_at": 130}),
        );
        let s = run(&[before.clone(), replaced.clone()]).unwrap().snapshot;
        assert_eq!(
            (s.platform.as_str(), s.tier.as_str()),
            ("leadsite-io", "professional")
        );
        assert_eq!(s.unlisted_prices(), ["price_gone2"]);
        assert!(
            desired_tenant(&s).suspended,
            "unpaid still reaches the tenant"
        );
        let s = run(&[before, replaced, cancelled]).unwrap().snapshot;
        assert!(desired_tenant(&s).cancelled_at.is_some());
        // Nothing known before and nothing listed: not stackplane's.
        let Observation::Subscription(foreign) = bundle_event(
            "evt_5",
            100,
            "active",
            json!([item("si_1", "price_gone", 1)]),
            json!({}),
        )
        .observation
        else {
            unreachable!()
        };
        assert_eq!(resolve_items(&foreign, None, resolve), None);
    }
}
