//! Billing follows Stripe's subscription model (issue 34, items 1–3), on the real kube-apiserver
//! and Postgres:
//! - localstripe (driven with the official `stripe` Python SDK; taught multi-item subscriptions by
//!   `tests/harness/localstripe_server.py`) for bundles, item changes through
//!   `Subscription.modify(items=…)`, quantities, a move to a retired price, a price two Platforms
//!   list, and a product nobody sells;
//! - Stripe-signed fixtures in the current API version posted to the webhook, with the read-back
//!   served by a stand-in of `GET /v1/subscriptions` showing the same subscription, for what
//!   localstripe cannot do: trials, a trial ending without a payment method (`paused`),
//!   `cancel_at_period_end`, `pause_collection`, `incomplete_expired` and subscription schedules.
//!
//! localstripe sends no `customer.subscription.updated`: item changes reach the Tenants through
//! the sweep here (in production, through the read after any event of the customer).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use serde_json::{json, Value};
use stackplane_api::billing::prices::{PlatformCache, PriceIndex};
use stackplane_api::billing::stripe_api::{RetryPolicy, StripeApi};
use stackplane_api::billing::worker::Worker;
use stackplane_api::config::Secrets;
use stackplane_api::metrics::Metrics;
use stackplane_api::server::{router, AppState, BillingState};
use stackplane_core::contract::labels;
use stackplane_crds::{Platform, SubscriptionStatus, Tenant};
use stackplane_tests::localstripe::LocalStripe;
use stackplane_tests::{eventually, fresh_database, install_crds, kube_client, unique};

const SECRET: &str = "whsec_billing_model_tests";
const STARTER: &str = "price_1LeadsiteIoStarterMonthly";
const PROFESSIONAL: &str = "price_1LeadsiteIoProfessionalMonthly";
const ENTERPRISE: &str = "price_1LeadsiteIoEnterpriseMonthly";
const TACKLE_STARTER: &str = "price_1TackleStarterMonthly";
/// The API version the fixtures follow (items carry `price` and `current_period_end`).
const API_VERSION: &str = "2025-03-31.basil";

/// The api (webhook + worker) of one test, reading Stripe at `stripe_base`.
struct Billing {
    worker: Worker,
    url: String,
    db: sqlx::PgPool,
    kube: kube::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Billing {
    async fn start(stripe_base: &str) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("stackplane_api=info")
            .with_test_writer()
            .try_init();
        let kube = kube_client().await;
        install_crds(&kube).await;
        for file in ["leadsite-io.yaml", "tackle.yaml"] {
            stackplane_tests::apply_example_platform(&kube, file).await;
        }
        let (db, _) = fresh_database().await;
        stackplane_api::db::migrate(&db).await.expect("migrate");
        let metrics = Metrics::new();
        let state = AppState {
            db: db.clone(),
            metrics: metrics.clone(),
            billing: Arc::new(BillingState {
                secrets: Secrets::from_values(
                    Some(SECRET),
                    Some("sk_test_stackplane"),
                    Some("admin-x"),
                )
                .expect("secrets"),
                wake: Default::default(),
            }),
        };
        let (prices, driver) = PlatformCache::start(kube.clone());
        tokio::spawn(driver);
        assert!(prices.ready().await);
        let reader = StripeApi::new(
            Some(stripe_base),
            "sk_test_stackplane",
            std::num::NonZeroU32::new(50).expect("rate"),
            RetryPolicy {
                attempts: 2,
                first_delay: Duration::from_millis(100),
                max_delay: Duration::from_millis(200),
                timeout: Duration::from_secs(5),
            },
            metrics.clone(),
        )
        .expect("reader");
        let worker = Worker::new(db.clone(), kube.clone(), prices, metrics.clone())
            .with_stripe(Arc::new(reader))
            .with_livemode(Some(false));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(worker.clone().run(state.billing.wake.clone(), async {
            let _ = stopped.await;
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, router(state)).await });
        Billing {
            worker,
            url,
            db,
            kube,
            stop: Some(stop),
        }
    }

    fn tenants(&self) -> Api<Tenant> {
        Api::all(self.kube.clone())
    }

    async fn tenant_when(&self, what: &str, name: &str, check: impl Fn(&Tenant) -> bool) -> Tenant {
        let api = self.tenants();
        eventually(what, || {
            let api = api.clone();
            let name = name.to_owned();
            let check = &check;
            async move { api.get_opt(&name).await.ok().flatten().filter(|t| check(t)) }
        })
        .await
    }

    async fn sweep(&self) {
        let report = self
            .worker
            .sweep()
            .await
            .expect("sweep")
            .expect("not locked");
        eprintln!("sweep: {report:?}");
    }

    /// Posts a Stripe-signed event (as Stripe signs it) to the webhook.
    async fn deliver(&self, event: &Value) {
        let body = event.to_string();
        let now = chrono::Utc::now().timestamp();
        let resp = reqwest::Client::new()
            .post(format!("{}/webhooks/stripe", self.url))
            .header("content-type", "application/json")
            .header(
                "Stripe-Signature",
                stackplane_tests::stripe_signature(&body, SECRET, now),
            )
            .body(body)
            .send()
            .await
            .expect("deliver");
        assert_eq!(resp.status().as_u16(), 200, "{:?}", resp.text().await);
    }

    /// The state of stored event `id` once it was processed at least `attempts` times.
    async fn event_state(&self, id: &str, attempts: i32) -> (String, i32, Option<String>) {
        let db = self.db.clone();
        eventually(&format!("event {id} processed {attempts} times"), || {
            let db = db.clone();
            let id = id.to_owned();
            async move {
                let row: (String, i32, Option<String>) = sqlx::query_as(
                    "SELECT state, attempts, outcome FROM stripe_events WHERE id = $1",
                )
                .bind(&id)
                .fetch_optional(&db)
                .await
                .ok()??;
                (row.1 >= attempts && row.0 != "pending").then_some(row)
            }
        })
        .await
    }
}

impl Drop for Billing {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn condition<'a>(t: &'a Tenant, type_: &str) -> Option<&'a Condition> {
    t.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
}

fn sub_id(t: &Tenant) -> Option<&str> {
    t.spec.subscription.as_ref().map(|s| s.id.as_str())
}

fn items(t: &Tenant) -> Vec<(String, Option<i64>)> {
    t.spec
        .subscription
        .as_ref()
        .map(|s| {
            s.items
                .iter()
                .map(|i| (i.price.clone(), i.quantity))
                .collect()
        })
        .unwrap_or_default()
}

fn text(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {v}"))
        .to_owned()
}

fn annotation<'a>(t: &'a Tenant, key: &str) -> Option<&'a str> {
    t.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// A price id of this run (the CRD allows only `price_` and letters or digits).
fn price(prefix: &str) -> String {
    format!("price_{}", unique(prefix).replace('-', ""))
}

/// A Platform of this test: leadsite-io's template under `name`, its tiers selling `tiers`.
async fn create_platform(kube: &kube::Client, name: &str, tiers: &[&[&str]]) -> Platform {
    let mut p = stackplane_tests::example_platform("leadsite-io.yaml");
    p.metadata = kube::api::ObjectMeta {
        name: Some(name.to_owned()),
        ..Default::default()
    };
    p.spec.tiers.truncate(tiers.len());
    for (tier, prices) in p.spec.tiers.iter_mut().zip(tiers) {
        tier.stripe_price_ids = prices.iter().map(|s| (*s).to_owned()).collect();
    }
    Api::<Platform>::all(kube.clone())
        .create(&PostParams::default(), &p)
        .await
        .unwrap_or_else(|e| panic!("create platform {name}: {e}"))
}

async fn delete_platform(kube: &kube::Client, name: &str) {
    let _ = Api::<Platform>::all(kube.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

/// A bundle provisions a Tenant per platform its items are on; quantities land in
/// `spec.subscription.items`; two items on one platform run the higher tier; removing an item
/// ends that platform's Tenant only (cancelled, kept for the retention period).
#[tokio::test]
async fn a_bundle_provisions_a_tenant_per_platform_and_removing_an_item_ends_that_one_only() {
    let ls = LocalStripe::start().await;
    let b = Billing::start(&ls.url).await;
    ls.drive(&["setup", STARTER, PROFESSIONAL, ENTERPRISE, TACKLE_STARTER])
        .await;
    ls.drive(&["webhook", &format!("{}/webhooks/stripe", b.url), SECRET])
        .await;
    let cus = text(
        &ls.drive(&["customer", "bundle@example.com"]).await,
        "customer",
    );
    let lead = stackplane_crds::naming::tenant_name("leadsite-io", &cus);
    let tackle = stackplane_crds::naming::tenant_name("tackle", &cus);

    let tackle_item = format!("{TACKLE_STARTER}:3");
    let sub = text(
        &ls.drive(&["bundle", &cus, PROFESSIONAL, &tackle_item])
            .await,
        "subscription",
    );
    let t = b
        .tenant_when("the leadsite-io tenant of the bundle", &lead, |t| {
            sub_id(t) == Some(sub.as_str())
        })
        .await;
    assert_eq!(
        (t.spec.platform.as_str(), t.spec.tier.as_str()),
        ("leadsite-io", "professional")
    );
    assert_eq!(items(&t), [(PROFESSIONAL.to_owned(), Some(1))]);
    let t = b
        .tenant_when("the tackle tenant of the same bundle", &tackle, |t| {
            sub_id(t) == Some(sub.as_str())
        })
        .await;
    assert_eq!(
        (t.spec.platform.as_str(), t.spec.tier.as_str()),
        ("tackle", "starter")
    );
    assert_eq!(items(&t), [(TACKLE_STARTER.to_owned(), Some(3))]);
    assert_eq!(
        t.spec.subscription.as_ref().and_then(|s| s.quantity),
        Some(3)
    );
    let si = t.spec.subscription.as_ref().map(|s| s.items[0].id.clone());
    assert!(si.flatten().is_some_and(|id| id.starts_with("si_")));
    assert!(!t.spec.suspended);

    // A second item on leadsite-io, a lower tier, and a quantity change: the higher tier runs,
    // both items are listed.
    ls.drive(&[
        "items",
        &sub,
        &format!("+{STARTER}:2"),
        &format!("={TACKLE_STARTER}:5"),
    ])
    .await;
    b.sweep().await;
    let t = b.tenants().get(&lead).await.expect("lead tenant");
    assert_eq!(
        t.spec.tier, "professional",
        "the higher of starter and professional"
    );
    let mut listed = items(&t);
    listed.sort();
    assert_eq!(
        listed,
        [
            (PROFESSIONAL.to_owned(), Some(1)),
            (STARTER.to_owned(), Some(2))
        ]
    );
    let t = b.tenants().get(&tackle).await.expect("tackle tenant");
    assert_eq!(items(&t), [(TACKLE_STARTER.to_owned(), Some(5))]);
    // And an enterprise item lifts it further, whatever the order of the items.
    ls.drive(&["items", &sub, &format!("+{ENTERPRISE}")]).await;
    b.sweep().await;
    let t = b.tenants().get(&lead).await.expect("lead tenant");
    assert_eq!(t.spec.tier, "enterprise");

    // Removing the tackle item ends the tackle Tenant only.
    ls.drive(&["items", &sub, &format!("~{TACKLE_STARTER}")])
        .await;
    b.sweep().await;
    let t = b
        .tenants()
        .get(&tackle)
        .await
        .expect("tackle tenant kept for retention");
    assert!(
        t.spec.cancelled_at.is_some() && t.spec.suspended,
        "{:?}",
        t.spec
    );
    let synced = condition(&t, "BillingSynced").expect("BillingSynced");
    assert!(synced.message.contains("removed"), "{}", synced.message);
    let t = b.tenants().get(&lead).await.expect("lead tenant");
    assert!(
        t.spec.cancelled_at.is_none() && !t.spec.suspended,
        "{:?}",
        t.spec
    );
    assert_eq!(sub_id(&t), Some(sub.as_str()));

    // Cancelling the subscription (its `.deleted` webhook) ends the rest.
    ls.drive(&["cancel", &sub]).await;
    let t = b
        .tenant_when("the leadsite-io tenant cancelled", &lead, |t| {
            t.spec.cancelled_at.is_some()
        })
        .await;
    assert!(t.spec.suspended);
}

/// A subscription moved to a price no Platform lists keeps its tier and still follows its
/// status: `BillingSynced=False, UnknownPrice` while it runs, and its cancellation reaches the
/// Tenant.
#[tokio::test]
async fn a_subscription_moved_to_a_retired_price_still_follows_its_status() {
    let ls = LocalStripe::start().await;
    let b = Billing::start(&ls.url).await;
    let (starter, retired) = (price("s"), price("r"));
    let platform = unique("retire");
    create_platform(&b.kube, &platform, &[&[&starter]]).await;
    eventually("the cache has the platform", || async {
        b.worker.prices.has_platform(&platform).then_some(())
    })
    .await;
    ls.drive(&["setup", &starter, &retired]).await;
    ls.drive(&["webhook", &format!("{}/webhooks/stripe", b.url), SECRET])
        .await;
    let cus = text(
        &ls.drive(&["customer", "retired@example.com"]).await,
        "customer",
    );
    let name = stackplane_crds::naming::tenant_name(&platform, &cus);
    let sub = text(
        &ls.drive(&["subscribe", &cus, &starter]).await,
        "subscription",
    );
    b.tenant_when("the tenant of the subscription", &name, |t| {
        sub_id(t) == Some(sub.as_str())
    })
    .await;

    ls.drive(&["change", &sub, &retired]).await;
    b.sweep().await;
    let t = b.tenants().get(&name).await.expect("tenant");
    assert_eq!(t.spec.tier, "starter", "the last known tier");
    assert!(!t.spec.suspended && t.spec.cancelled_at.is_none());
    assert_eq!(items(&t), [(retired.clone(), Some(1))]);
    let synced = condition(&t, "BillingSynced").expect("BillingSynced");
    assert_eq!(
        (synced.status.as_str(), synced.reason.as_str()),
        ("False", "UnknownPrice")
    );
    assert!(synced.message.contains(&retired), "{}", synced.message);

    ls.drive(&["cancel", &sub]).await;
    let t = b
        .tenant_when("the cancellation reached the tenant", &name, |t| {
            t.spec.cancelled_at.is_some()
        })
        .await;
    assert!(t.spec.suspended);
    assert_eq!(
        t.spec.subscription.as_ref().map(|s| s.status),
        Some(SubscriptionStatus::Canceled)
    );
    let failed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM stripe_events WHERE state = 'failed'")
            .fetch_one(&b.db)
            .await
            .expect("count");
    assert_eq!(failed, 0, "no event fails on the retired price");
    delete_platform(&b.kube, &platform).await;
}

/// A copy of a Platform listing the same prices (created later, its name first in the
/// alphabet) takes no customer: the original's Tenants stay after the next event and a sweep,
/// and a new customer of those prices gets the original's Tenant. Adding a price to an older
/// Platform later takes no customer from the younger one that listed it first.
#[tokio::test]
async fn a_copied_platform_takes_no_customer_from_the_original() {
    let ls = LocalStripe::start().await;
    let b = Billing::start(&ls.url).await;
    let (starter, pro, young_price) = (price("s"), price("p"), price("y"));
    let id = unique("x").replace('-', "");
    let (original, copy, young) = (
        format!("zz-orig-{id}"),
        format!("aa-copy-{id}"),
        format!("young-{id}"),
    );
    create_platform(&b.kube, &original, &[&[&starter], &[&pro]]).await;
    eventually("the cache has the original", || async {
        b.worker.prices.has_platform(&original).then_some(())
    })
    .await;
    b.worker
        .prices
        .record_listings(&b.db)
        .await
        .expect("record");
    ls.drive(&["setup", &starter, &pro, &young_price]).await;
    ls.drive(&["webhook", &format!("{}/webhooks/stripe", b.url), SECRET])
        .await;
    let first = text(
        &ls.drive(&["customer", "first@example.com"]).await,
        "customer",
    );
    let first_tenant = stackplane_crds::naming::tenant_name(&original, &first);
    let sub = text(
        &ls.drive(&["subscribe", &first, &starter]).await,
        "subscription",
    );
    b.tenant_when("the original's tenant", &first_tenant, |t| {
        sub_id(t) == Some(sub.as_str())
    })
    .await;

    create_platform(&b.kube, &copy, &[&[&starter], &[&pro]]).await;
    eventually("the cache has the copy", || async {
        b.worker.prices.has_platform(&copy).then_some(())
    })
    .await;
    b.worker
        .prices
        .record_listings(&b.db)
        .await
        .expect("record");
    assert_eq!(
        b.worker.prices.resolve_price(&starter).map(|r| r.platform),
        Some(original.clone())
    );

    // The next event (a second customer) and a sweep: everyone stays with the original.
    let second = text(
        &ls.drive(&["customer", "second@example.com"]).await,
        "customer",
    );
    let second_tenant = stackplane_crds::naming::tenant_name(&original, &second);
    let sub2 = text(
        &ls.drive(&["subscribe", &second, &pro]).await,
        "subscription",
    );
    let t = b
        .tenant_when(
            "the second customer's tenant on the original",
            &second_tenant,
            |t| sub_id(t) == Some(sub2.as_str()),
        )
        .await;
    assert_eq!(t.spec.tier, "professional");
    b.sweep().await;
    for (cus, name) in [(&first, &first_tenant), (&second, &second_tenant)] {
        let t = b.tenants().get(name).await.expect("tenant");
        assert!(
            t.spec.cancelled_at.is_none() && !t.spec.suspended,
            "{name}: {:?}",
            t.spec
        );
        let on_copy = stackplane_crds::naming::tenant_name(&copy, cus);
        assert!(
            b.tenants().get_opt(&on_copy).await.expect("get").is_none(),
            "no tenant on the copy for {cus}"
        );
    }

    // A younger Platform sells young_price first; the original (older) lists it later.
    create_platform(&b.kube, &young, &[&[&young_price]]).await;
    eventually("the cache has the young platform", || async {
        b.worker.prices.has_platform(&young).then_some(())
    })
    .await;
    b.worker
        .prices
        .record_listings(&b.db)
        .await
        .expect("record");
    let third = text(
        &ls.drive(&["customer", "third@example.com"]).await,
        "customer",
    );
    let third_tenant = stackplane_crds::naming::tenant_name(&young, &third);
    let sub3 = text(
        &ls.drive(&["subscribe", &third, &young_price]).await,
        "subscription",
    );
    b.tenant_when(
        "the third customer's tenant on the young platform",
        &third_tenant,
        |t| sub_id(t) == Some(sub3.as_str()),
    )
    .await;
    let platforms: Api<Platform> = Api::all(b.kube.clone());
    let mut p = platforms.get(&original).await.expect("original");
    p.spec.tiers[1].stripe_price_ids.push(young_price.clone());
    platforms
        .replace(&original, &PostParams::default(), &p)
        .await
        .expect("add the price to the original");
    eventually("the cache sees the original list it", || async {
        let listed = b.worker.prices.tier_prices(&original, "professional")?;
        listed.contains(&young_price).then_some(())
    })
    .await;
    b.worker
        .prices
        .record_listings(&b.db)
        .await
        .expect("record");
    assert_eq!(
        b.worker
            .prices
            .resolve_price(&young_price)
            .map(|r| r.platform),
        Some(young.clone())
    );
    b.sweep().await;
    let t = b.tenants().get(&third_tenant).await.expect("tenant");
    assert!(
        t.spec.cancelled_at.is_none() && !t.spec.suspended,
        "{:?}",
        t.spec
    );
    let moved = stackplane_crds::naming::tenant_name(&original, &third);
    assert!(b.tenants().get_opt(&moved).await.expect("get").is_none());

    for p in [&copy, &young, &original] {
        delete_platform(&b.kube, p).await;
    }
}

/// An event of a product nobody sells here is stored `ignored`: acknowledged, not retried when
/// a Platform changes (no Stripe read either), and replayable by hand.
#[tokio::test]
async fn an_event_of_a_product_nobody_sells_is_ignored_and_not_retried() {
    let ls = LocalStripe::start().await;
    let b = Billing::start(&ls.url).await;
    let foreign = price("f");
    ls.drive(&["setup", &foreign]).await;
    ls.drive(&["webhook", &format!("{}/webhooks/stripe", b.url), SECRET])
        .await;
    let cus = text(
        &ls.drive(&["customer", "elsewhere@example.com"]).await,
        "customer",
    );
    ls.drive(&["subscribe", &cus, &foreign]).await;
    let db = b.db.clone();
    let event: String = eventually("the subscription's created event", || {
        let db = db.clone();
        async move {
            sqlx::query_scalar(
                "SELECT id FROM stripe_events WHERE event_type = 'customer.subscription.created'",
            )
            .fetch_optional(&db)
            .await
            .ok()?
        }
    })
    .await;
    let (state, attempts, outcome) = b.event_state(&event, 1).await;
    assert_eq!((state.as_str(), attempts), ("ignored", 1), "{outcome:?}");
    assert!(outcome.is_some_and(|o| o.contains("no price a Platform lists")));

    // A Platform change: the worker re-queues what waits on Platforms, never this.
    let platform = unique("unrelated");
    create_platform(&b.kube, &platform, &[&[&price("u")]]).await;
    eventually("the cache has the platform", || async {
        b.worker.prices.has_platform(&platform).then_some(())
    })
    .await;
    assert_eq!(b.worker.retry_platform_failures().await.expect("retry"), 0);
    while b.worker.process_one().await.expect("process").is_some() {}
    let (state, attempts, _) = b.event_state(&event, 1).await;
    assert_eq!((state.as_str(), attempts), ("ignored", 1), "not retried");

    // A person replays it: processed once more, ignored again.
    let replayed = stackplane_api::billing::replay::replay(&b.db, &event, "admin", "test")
        .await
        .expect("replay");
    assert!(matches!(
        replayed,
        stackplane_api::billing::replay::Replay::Queued(ref s) if s == "ignored"
    ));
    let (state, attempts, _) = b.event_state(&event, 2).await;
    assert_eq!((state.as_str(), attempts), ("ignored", 2));
    delete_platform(&b.kube, &platform).await;
}

/// The stand-in of Stripe's `GET /v1/subscriptions`: what it serves per customer, and how many
/// reads it answered.
#[derive(Clone, Default)]
struct StandIn {
    subscriptions: Arc<Mutex<HashMap<String, Vec<Value>>>>,
    reads: Arc<Mutex<usize>>,
}

impl StandIn {
    fn serve(&self, customer: &str, subscriptions: Vec<Value>) {
        self.subscriptions
            .lock()
            .expect("lock")
            .insert(customer.to_owned(), subscriptions);
    }

    fn reads(&self) -> usize {
        *self.reads.lock().expect("lock")
    }
}

async fn list_subscriptions(
    State(s): State<StandIn>,
    Query(q): Query<HashMap<String, String>>,
) -> Json<Value> {
    *s.reads.lock().expect("lock") += 1;
    let data = q
        .get("customer")
        .and_then(|c| s.subscriptions.lock().expect("lock").get(c).cloned())
        .unwrap_or_default();
    Json(json!({"object": "list", "url": "/v1/subscriptions", "has_more": false, "data": data}))
}

/// A subscription as Stripe's current API version shows it.
fn subscription(id: &str, customer: &str, status: &str, price: &str, now: i64) -> Value {
    json!({
        "id": id, "object": "subscription", "customer": customer, "status": status,
        "created": now - 86_400, "start_date": now - 86_400, "livemode": false,
        "cancel_at": null, "cancel_at_period_end": false, "canceled_at": null, "ended_at": null,
        "pause_collection": null, "trial_start": null, "trial_end": null,
        "trial_settings": {"end_behavior": {"missing_payment_method": "pause"}},
        "items": {"object": "list", "has_more": false, "data": [{
            "id": format!("si_{}", &id[4..]), "object": "subscription_item", "quantity": 1,
            "current_period_start": now - 86_400, "current_period_end": now + 29 * 86_400,
            "price": {"id": price, "object": "price", "type": "recurring"}
        }]},
        "metadata": {}
    })
}

fn event(type_: &str, object: &Value, created: i64) -> Value {
    json!({"id": format!("evt_{}", unique("m").replace('-', "")), "object": "event",
        "api_version": API_VERSION, "type": type_, "created": created, "livemode": false,
        "pending_webhooks": 1, "request": {"id": null, "idempotency_key": null},
        "data": {"object": object}})
}

/// What localstripe cannot play, from Stripe-signed fixtures with the read-back served by a
/// stand-in: a trial (runs, `TrialEnding` carries its end), its end without a payment method
/// (`paused`: suspended), `cancel_at_period_end` (runs, `CancellationScheduled` with the date),
/// `pause_collection` (runs, `CollectionPaused`), a schedule's event (triggers a read-back that
/// applies what Stripe shows), and `incomplete_expired` (ended).
#[tokio::test]
async fn trials_scheduled_cancellations_paused_collection_and_schedules_from_fixtures() {
    let stand_in = StandIn::default();
    let app = Router::new()
        .route("/v1/subscriptions", get(list_subscriptions))
        .with_state(stand_in.clone());
    let base = stackplane_tests::serve_on_free_port(app).await;
    let b = Billing::start(&base).await;
    let now = chrono::Utc::now().timestamp();
    let cus = format!("cus_{}", unique("t").replace('-', ""));
    let sid = format!("sub_{}", unique("t").replace('-', ""));
    let name = stackplane_crds::naming::tenant_name("leadsite-io", &cus);
    let rfc = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0)
            .expect("time")
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let notices = |t: &Tenant| {
        let [_, cancel, paused] = stackplane_core::tenant::status::billing_notice_conditions(t);
        (cancel, paused)
    };

    // Trialing: runs; TrialEnding says until when.
    let trial_end = now + 7 * 86_400;
    let mut s = subscription(&sid, &cus, "trialing", STARTER, now);
    s["trial_start"] = json!(now - 86_400);
    s["trial_end"] = json!(trial_end);
    stand_in.serve(&cus, vec![s.clone()]);
    b.deliver(&event("customer.subscription.created", &s, now - 10))
        .await;
    let t = b
        .tenant_when("the trialing tenant", &name, |t| {
            condition(t, "TrialEnding").is_some_and(|c| c.reason == "Trialing")
        })
        .await;
    assert!(!t.spec.suspended);
    let trial = condition(&t, "TrialEnding").expect("TrialEnding");
    assert_eq!(trial.status, "False");
    assert!(trial.message.contains(&rfc(trial_end)), "{}", trial.message);

    // The trial ends without a payment method: Stripe pauses the subscription → suspended.
    s["status"] = json!("paused");
    stand_in.serve(&cus, vec![s.clone()]);
    b.deliver(&event("customer.subscription.paused", &s, now - 9))
        .await;
    b.tenant_when("the paused subscription suspends the tenant", &name, |t| {
        t.spec.suspended
    })
    .await;

    // Paid and then cancelled at the period's end: runs until then.
    let period_end = now + 29 * 86_400;
    s["status"] = json!("active");
    s["cancel_at_period_end"] = json!(true);
    s["cancel_at"] = json!(period_end);
    s["canceled_at"] = json!(now - 5);
    stand_in.serve(&cus, vec![s.clone()]);
    b.deliver(&event("customer.subscription.updated", &s, now - 8))
        .await;
    let t = b
        .tenant_when("the scheduled cancellation", &name, |t| {
            annotation(t, labels::CANCELLATION_SCHEDULED).is_some()
        })
        .await;
    assert!(
        !t.spec.suspended && t.spec.cancelled_at.is_none(),
        "{:?}",
        t.spec
    );
    assert_eq!(
        annotation(&t, labels::CANCELLATION_SCHEDULED),
        Some(rfc(period_end).as_str())
    );
    let (cancel, paused) = notices(&t);
    assert!(cancel.status && cancel.message.contains(&rfc(period_end)));
    assert!(!paused.status);

    // The cancellation withdrawn, collection paused: runs, CollectionPaused.
    let resumes = now + 14 * 86_400;
    s["cancel_at_period_end"] = json!(false);
    s["cancel_at"] = Value::Null;
    s["canceled_at"] = Value::Null;
    s["pause_collection"] = json!({"behavior": "void", "resumes_at": resumes});
    stand_in.serve(&cus, vec![s.clone()]);
    b.deliver(&event("customer.subscription.updated", &s, now - 7))
        .await;
    let t = b
        .tenant_when("paused collection", &name, |t| {
            annotation(t, labels::COLLECTION_PAUSED).is_some()
                && annotation(t, labels::CANCELLATION_SCHEDULED).is_none()
        })
        .await;
    assert!(!t.spec.suspended);
    assert_eq!(annotation(&t, labels::COLLECTION_PAUSED), Some("void"));
    let (cancel, paused) = notices(&t);
    assert!(!cancel.status);
    assert!(
        paused.status && paused.message.contains(&rfc(resumes)),
        "{}",
        paused.message
    );

    // A schedule's phase changes the quantity and resumes collection; Stripe sends the
    // schedule's event: the read-back applies what Stripe shows.
    s["pause_collection"] = Value::Null;
    s["items"]["data"][0]["quantity"] = json!(7);
    s["schedule"] = json!("sub_sched_1");
    stand_in.serve(&cus, vec![s.clone()]);
    let reads = stand_in.reads();
    let schedule = json!({"id": "sub_sched_1", "object": "subscription_schedule",
        "customer": cus, "subscription": sid, "status": "active", "phases": []});
    b.deliver(&event("subscription_schedule.updated", &schedule, now - 6))
        .await;
    // Billing applies the spec, then removes the annotations it no longer sends (a second
    // write): wait for both.
    b.tenant_when(
        "the schedule's change read back, collection no longer paused",
        &name,
        |t| {
            t.spec.subscription.as_ref().and_then(|s| s.quantity) == Some(7)
                && annotation(t, labels::COLLECTION_PAUSED).is_none()
                && annotation(t, labels::COLLECTION_RESUMES_AT).is_none()
        },
    )
    .await;
    assert!(stand_in.reads() > reads, "the schedule's event read Stripe");

    // A first payment never made: incomplete, then incomplete_expired — ended.
    let cus2 = format!("cus_{}", unique("i").replace('-', ""));
    let sid2 = format!("sub_{}", unique("i").replace('-', ""));
    let name2 = stackplane_crds::naming::tenant_name("leadsite-io", &cus2);
    let mut s2 = subscription(&sid2, &cus2, "incomplete", STARTER, now);
    stand_in.serve(&cus2, vec![s2.clone()]);
    b.deliver(&event("customer.subscription.created", &s2, now - 5))
        .await;
    b.tenant_when("the incomplete tenant", &name2, |t| t.spec.suspended)
        .await;
    s2["status"] = json!("incomplete_expired");
    s2["ended_at"] = json!(now - 1);
    stand_in.serve(&cus2, vec![s2.clone()]);
    b.deliver(&event("customer.subscription.updated", &s2, now - 4))
        .await;
    let t = b
        .tenant_when("incomplete_expired has ended", &name2, |t| {
            t.spec.cancelled_at.is_some()
        })
        .await;
    assert!(t.spec.suspended);
}
