//! Connect: events that carry `account` (a connected account's events, delivered to a Connect
//! webhook endpoint) are applied only for the accounts `STRIPE_CONNECT_ACCOUNTS` lists, and
//! their read-back is made on that account (`Stripe-Account`). Others are stored as failed with
//! a clear error and never applied or retried by themselves. Stripe-signed fixtures (localstripe
//! has no Connect), delivered to the real webhook endpoint; the Stripe API is a stand-in
//! answering `GET /v1/subscriptions` as the connected account would, recording the header of
//! each call. Real kube-apiserver and Postgres from the harness.

use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::Json;
use kube::Api;
use serde_json::{json, Value};
use stackplane_api::billing::prices::PlatformCache;
use stackplane_api::billing::stripe_api::{RetryPolicy, StripeApi};
use stackplane_api::billing::worker::{Outcome, Worker};
use stackplane_api::config::Secrets;
use stackplane_api::metrics::Metrics;
use stackplane_api::server::{router, AppState, BillingState};
use stackplane_crds::Tenant;
use stackplane_tests::{
    fresh_database, install_crds, kube_client, serve_on_free_port, stripe_signature, unique,
};

const SECRET: &str = "whsec_connect_tests";
const PRICE: &str = "price_1LeadsiteIoStarterMonthly";
const LISTED: &str = "acct_1ConnectListed";
const OTHER: &str = "acct_1ConnectStranger";

/// (customer queried, `Stripe-Account` sent) of each call the stand-in answered.
type Calls = Arc<Mutex<Vec<(String, Option<String>)>>>;

fn subscription(sub: &str, customer: &str, now: i64) -> Value {
    json!({"id": sub, "object": "subscription", "customer": customer, "status": "active",
        "created": now - 60, "metadata": {},
        "items": {"object": "list", "has_more": false, "data": [{"id": format!("si_{sub}"),
            "object": "subscription_item", "quantity": 1, "current_period_end": now + 2_592_000,
            "price": {"id": PRICE, "object": "price"}}]}})
}

/// A stand-in of `GET /v1/subscriptions`: every customer has one active subscription
/// `sub_<customer id without cus_>`.
async fn stand_in(calls: Calls) -> String {
    async fn list(
        State(calls): State<Calls>,
        headers: HeaderMap,
        Query(q): Query<std::collections::HashMap<String, String>>,
    ) -> Json<Value> {
        let customer = q.get("customer").cloned().unwrap_or_default();
        let account = headers
            .get("stripe-account")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        calls
            .lock()
            .expect("calls")
            .push((customer.clone(), account));
        let sub = format!("sub_{}", customer.trim_start_matches("cus_"));
        Json(
            json!({"object": "list", "has_more": false, "url": "/v1/subscriptions",
            "data": [subscription(&sub, &customer, chrono::Utc::now().timestamp())]}),
        )
    }
    serve_on_free_port(
        axum::Router::new()
            .route("/v1/subscriptions", get(list))
            .with_state(calls),
    )
    .await
}

fn event(id: &str, customer: &str, account: Option<&str>) -> Value {
    let now = chrono::Utc::now().timestamp();
    let sub = format!("sub_{}", customer.trim_start_matches("cus_"));
    let mut e = json!({"id": id, "object": "event", "api_version": "2025-03-31.basil",
        "created": now, "livemode": false, "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "type": "customer.subscription.created",
        "data": {"object": subscription(&sub, customer, now)}});
    if let Some(a) = account {
        e["account"] = json!(a);
    }
    e
}

#[tokio::test]
async fn connect_events_apply_only_for_listed_accounts_and_read_back_on_them() {
    let kube = kube_client().await;
    install_crds(&kube).await;
    stackplane_tests::apply_example_platform(&kube, "leadsite-io.yaml").await;
    let (db, _) = fresh_database().await;
    stackplane_api::db::migrate(&db).await.expect("migrate");
    let calls: Calls = Arc::default();
    let stripe_base = stand_in(calls.clone()).await;
    let metrics = Metrics::new();
    let state = AppState {
        db: db.clone(),
        metrics: metrics.clone(),
        billing: Arc::new(BillingState {
            secrets: Secrets::from_values(Some(SECRET), Some("sk_test_connect"), Some("admin-c"))
                .expect("secrets"),
            wake: Default::default(),
        }),
    };
    let api = serve_on_free_port(router(state)).await;
    let (prices, driver) = PlatformCache::start(kube.clone());
    tokio::spawn(driver);
    assert!(prices.ready().await);
    let reader = StripeApi::new(
        Some(&stripe_base),
        "sk_test_connect",
        std::num::NonZeroU32::new(50).expect("rate"),
        RetryPolicy::default(),
        metrics.clone(),
    )
    .expect("reader");
    let worker = Worker::new(db.clone(), kube.clone(), prices, metrics)
        .with_stripe(Arc::new(reader))
        .with_livemode(Some(false))
        .with_connect_accounts([LISTED.to_owned(), " ".to_owned()]);

    let run = unique("c").replace('-', "");
    let (own, listed, other) = (
        format!("cus_{run}own"),
        format!("cus_{run}listed"),
        format!("cus_{run}other"),
    );
    let http = reqwest::Client::new();
    for (id, customer, account) in [
        (format!("evt_{run}_own"), &own, None),
        (format!("evt_{run}_listed"), &listed, Some(LISTED)),
        (format!("evt_{run}_other"), &other, Some(OTHER)),
    ] {
        let body = event(&id, customer, account).to_string();
        let sig = stripe_signature(&body, SECRET, chrono::Utc::now().timestamp());
        let resp = http
            .post(format!("{api}/webhooks/stripe"))
            .header("stripe-signature", sig)
            .body(body)
            .send()
            .await
            .expect("deliver");
        assert_eq!(resp.status().as_u16(), 200, "{id}: stored and acknowledged");
    }
    let mut outcomes = Vec::new();
    while let Some((id, outcome)) = worker.process_one().await.expect("process") {
        outcomes.push((id, outcome.map_err(|e| e.metric_label())));
    }
    outcomes.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        outcomes,
        vec![
            (format!("evt_{run}_listed"), Ok(Outcome::Applied)),
            (
                format!("evt_{run}_other"),
                Err("connect_account_not_allowed")
            ),
            (format!("evt_{run}_own"), Ok(Outcome::Applied)),
        ]
    );

    // Read back on the right account; nothing read for the refused one.
    let mut seen = calls.lock().expect("calls").clone();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (listed.clone(), Some(LISTED.to_owned())),
            (own.clone(), None),
        ]
    );
    let tenants: Api<Tenant> = Api::all(kube.clone());
    for customer in [&own, &listed] {
        let name = stackplane_crds::naming::tenant_name("leadsite-io", customer);
        let t = tenants.get(&name).await.expect("tenant");
        let synced = t
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "BillingSynced"))
            .expect("BillingSynced");
        assert_eq!(synced.status, "True", "{name}: {}", synced.message);
    }
    let refused = stackplane_crds::naming::tenant_name("leadsite-io", &other);
    assert!(tenants.get_opt(&refused).await.expect("get").is_none());

    // Stored as failed, saying why, and never due again by itself.
    let (state, kind, error, parked): (String, String, String, bool) = sqlx::query_as(
        "SELECT state, error_kind, last_error, next_attempt_at = 'infinity' FROM stripe_events WHERE id = $1",
    )
    .bind(format!("evt_{run}_other"))
    .fetch_one(&db)
    .await
    .expect("row");
    assert_eq!(
        (state.as_str(), kind.as_str(), parked),
        ("failed", "connect_account_not_allowed", true)
    );
    assert!(
        error.contains(OTHER) && error.contains("STRIPE_CONNECT_ACCOUNTS"),
        "{error}"
    );
}

/// A connected account's customer whose read failed is read again on the same account.
#[tokio::test]
async fn a_connected_customers_re_read_is_made_on_its_account() {
    let kube = kube_client().await;
    install_crds(&kube).await;
    stackplane_tests::apply_example_platform(&kube, "leadsite-io.yaml").await;
    let (db, _) = fresh_database().await;
    stackplane_api::db::migrate(&db).await.expect("migrate");
    let calls: Calls = Arc::default();
    let stripe_base = stand_in(calls.clone()).await;
    let (prices, driver) = PlatformCache::start(kube.clone());
    tokio::spawn(driver);
    assert!(prices.ready().await);
    let run = unique("r").replace('-', "");
    let customer = format!("cus_{run}conn");
    sqlx::query(
        "INSERT INTO billing_resync (customer_id, attempts, last_error, account) VALUES ($1, 1, 'timed out', $2)",
    )
    .bind(&customer)
    .bind(LISTED)
    .execute(&db)
    .await
    .expect("queue");
    let metrics = Metrics::new();
    let reader = StripeApi::new(
        Some(&stripe_base),
        "sk_test_connect",
        std::num::NonZeroU32::new(50).expect("rate"),
        RetryPolicy::default(),
        metrics.clone(),
    )
    .expect("reader");
    let worker = Worker::new(db.clone(), kube.clone(), prices, metrics)
        .with_stripe(Arc::new(reader))
        .with_connect_accounts([LISTED.to_owned()]);
    assert_eq!(
        worker.resync_one().await.expect("resync"),
        Some(customer.clone())
    );
    assert_eq!(
        calls.lock().expect("calls").clone(),
        vec![(customer.clone(), Some(LISTED.to_owned()))]
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM billing_resync")
        .fetch_one(&db)
        .await
        .expect("count");
    assert_eq!(left, 0, "read, so off the queue");
    let name = stackplane_crds::naming::tenant_name("leadsite-io", &customer);
    Api::<Tenant>::all(kube)
        .get(&name)
        .await
        .expect("the read made the tenant");
}
