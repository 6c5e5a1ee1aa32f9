//! Postgres blinks in the middle of Stripe's deliveries: 2,000 signed deliveries from 32
//! senders, Postgres (a private cluster of this test's own) stopped part-way and started again,
//! every delivery that got a non-2xx answer redelivered, as Stripe does. Every event
//! acknowledged with 2xx is stored and applied exactly once, none twice. While the database is
//! down the webhook answers 503 and the status API keeps serving from its cache.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::PostParams;
use kube::Api;
use serde_json::{json, Value};
use stackplane_api::billing::prices::PlatformCache;
use stackplane_api::billing::worker::Worker;
use stackplane_api::config::Secrets;
use stackplane_api::hardening::HardeningArgs;
use stackplane_api::metrics::Metrics;
use stackplane_api::server::{router_with, AppState, BillingState, RouterOptions};
use stackplane_api::tenants::{MetricsSourceArgs, TenantApi};
use stackplane_crds::{Tenant, TenantSpec};
use stackplane_tests::{
    eventually_within, install_crds, kube_client, stripe_signature, unique, PrivatePostgres,
};

const SECRET: &str = "whsec_outage_test";
const ADMIN: &str = "outage-admin-token";
const DELIVERIES: usize = 2000;
const SENDERS: usize = 32;
/// Subscription events among the deliveries: each makes a Tenant (applied by the worker).
const SUBSCRIPTIONS: usize = 20;
const PRICE: &str = "price_1LeadsiteIoStarterMonthly";

fn event(i: usize, run: &str) -> (String, String) {
    let now = chrono::Utc::now().timestamp();
    let id = format!("evt_{run}_{i:04}");
    let body = if i < SUBSCRIPTIONS {
        let cus = format!("cus_{run}{i:02}");
        json!({"id": id, "object": "event", "api_version": "2025-03-31.basil", "created": now,
            "livemode": false, "type": "customer.subscription.created",
            "data": {"object": {"id": format!("sub_{run}{i:02}"), "object": "subscription",
                "customer": cus, "status": "active", "metadata": {},
                "items": {"object": "list", "data": [{"id": "si_1", "object": "subscription_item",
                    "current_period_end": now + 2_592_000, "price": {"id": PRICE, "object": "price"}}]}}}})
    } else {
        json!({"id": id, "object": "event", "type": "charge.succeeded", "created": now,
            "livemode": false, "data": {"object": {"id": format!("ch_{i}"), "object": "charge"}}})
    };
    (id, body.to_string())
}

/// One delivery, signed now; the HTTP status (0 when the connection failed) and whether the
/// answer said the event was a duplicate.
async fn deliver(http: &reqwest::Client, url: &str, body: &str) -> (u16, bool) {
    let sig = stripe_signature(body, SECRET, chrono::Utc::now().timestamp());
    match http
        .post(url)
        .header("stripe-signature", sig)
        .body(body.to_owned())
        .send()
        .await
    {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            (status, body["duplicate"] == true)
        }
        Err(_) => (0, false),
    }
}

fn processed_total(metrics: &Metrics, outcomes: &[&str]) -> f64 {
    let text = metrics.encode().expect("metrics");
    text.lines()
        .filter(|l| l.starts_with("stackplane_billing_events_processed_total{"))
        .filter(|l| {
            outcomes
                .iter()
                .any(|o| l.contains(&format!("outcome=\"{o}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_blinks_during_deliveries_and_nothing_is_lost_or_applied_twice() {
    let kube = kube_client().await;
    install_crds(&kube).await;
    stackplane_tests::apply_example_platform(&kube, "leadsite-io.yaml").await;

    let pg = PrivatePostgres::start();
    let db = stackplane_api::db::connect(&pg.url)
        .await
        .expect("connect to the private Postgres");
    stackplane_api::db::migrate(&db).await.expect("migrate");

    // A tenant whose status is read from the cache while the database is down.
    let watched = unique("outage-tn");
    Api::<Tenant>::all(kube.clone())
        .create(
            &PostParams::default(),
            &Tenant::new(&watched, TenantSpec::new("leadsite-io", "starter")),
        )
        .await
        .expect("create tenant");
    let (tenants, watches) =
        TenantApi::start(db.clone(), kube.clone(), MetricsSourceArgs::default());
    tokio::spawn(watches.run());
    assert!(tenants.ready().await);

    let metrics = Metrics::new();
    let state = AppState {
        db: db.clone(),
        metrics: metrics.clone(),
        billing: Arc::new(BillingState {
            secrets: Secrets::from_values(Some(SECRET), Some("sk_test_outage"), Some(ADMIN))
                .expect("secrets"),
            wake: Default::default(),
        }),
    };
    let (prices, driver) = PlatformCache::start(kube.clone());
    tokio::spawn(driver);
    // No Stripe reader: the payloads are the state (this test is about intake, not Stripe).
    let worker = Worker::new(db.clone(), kube.clone(), prices, metrics.clone());
    tokio::spawn(worker.run(state.billing.wake.clone(), std::future::pending()));
    let app = router_with(
        state,
        RouterOptions {
            hardening: HardeningArgs {
                request_timeout: 10,
                ..HardeningArgs::default()
            },
            tenants: Some(tenants.clone()),
            token_cache_ttl: Duration::from_secs(600),
            ..RouterOptions::default()
        },
    );
    let base = stackplane_tests::serve_on_free_port(app).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    // A tenant token, used once before the outage (so it is in the token cache).
    let issued: Value = http
        .post(format!("{base}/api/v1/tenants/{watched}/tokens"))
        .bearer_auth(ADMIN)
        .json(&json!({}))
        .send()
        .await
        .expect("issue")
        .json()
        .await
        .expect("json");
    let token = issued["token"].as_str().expect("token").to_owned();
    let status_of = |bearer: String| {
        let http = http.clone();
        let url = format!("{base}/api/v1/tenants/{watched}");
        async move {
            http.get(url)
                .bearer_auth(bearer)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    assert_eq!(status_of(token.clone()).await, 200);

    let run = unique("o").replace('-', "");
    let events: Vec<(String, String)> = (0..DELIVERIES).map(|i| event(i, &run)).collect();
    let url = format!("{base}/webhooks/stripe");
    let acknowledged = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let refused = Arc::new(Mutex::new(BTreeMap::<String, u16>::new()));
    let duplicates = Arc::new(AtomicUsize::new(0));
    let acked_count = Arc::new(AtomicUsize::new(0));
    let refused_count = Arc::new(AtomicUsize::new(0));

    // The outage: Postgres stops once a third of the deliveries are acknowledged and starts
    // again once 100 deliveries were refused while it was down.
    let outage = {
        let (acked_count, refused_count) = (acked_count.clone(), refused_count.clone());
        let token = token.clone();
        let pg = &pg;
        async move {
            eventually_within("a third of the deliveries acknowledged", 300, || {
                let n = acked_count.load(Ordering::SeqCst);
                async move { (n >= DELIVERIES / 3).then_some(()) }
            })
            .await;
            tokio::task::block_in_place(|| pg.stop());
            let refused_before = refused_count.load(Ordering::SeqCst);
            // While it is down, status is served from the cache, for the admin and for a
            // tenant token verified before.
            let during = (status_of(ADMIN.to_owned()).await, status_of(token).await);
            eventually_within("100 deliveries refused during the outage", 300, || {
                let n = refused_count.load(Ordering::SeqCst);
                async move { (n >= refused_before + 100).then_some(()) }
            })
            .await;
            tokio::task::block_in_place(|| pg.resume());
            during
        }
    };
    let senders =
        futures::stream::iter(events.iter().cloned()).for_each_concurrent(SENDERS, |(id, body)| {
            let (http, url) = (http.clone(), url.clone());
            let (acknowledged, refused, duplicates) =
                (acknowledged.clone(), refused.clone(), duplicates.clone());
            let (acked_count, refused_count) = (acked_count.clone(), refused_count.clone());
            async move {
                let (status, duplicate) = deliver(&http, &url, &body).await;
                if (200..300).contains(&status) {
                    acknowledged.lock().expect("lock").insert(id);
                    acked_count.fetch_add(1, Ordering::SeqCst);
                    if duplicate {
                        duplicates.fetch_add(1, Ordering::SeqCst);
                    }
                } else {
                    refused.lock().expect("lock").insert(id, status);
                    refused_count.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
    let (during, ()) = tokio::join!(outage, senders);
    assert_eq!(
        during,
        (200, 200),
        "status is served from the cache while Postgres is down (admin, tenant token)"
    );
    let refused_first: BTreeMap<String, u16> = refused.lock().expect("lock").clone();
    let statuses: BTreeSet<u16> = refused_first.values().copied().collect();
    assert!(
        statuses.iter().all(|s| *s == 503),
        "while the database is down the webhook answers 503 (Stripe retries): {statuses:?}"
    );
    assert!(
        !refused_first.is_empty(),
        "the outage refused some deliveries"
    );

    // Stripe redelivers what got non-2xx until it is acknowledged.
    let mut pending: Vec<String> = refused_first.keys().cloned().collect();
    let bodies: BTreeMap<String, String> = events.iter().cloned().collect();
    for round in 0..20 {
        if pending.is_empty() {
            break;
        }
        let mut still = Vec::new();
        for id in &pending {
            let (status, duplicate) = deliver(&http, &url, &bodies[id]).await;
            if (200..300).contains(&status) {
                acknowledged.lock().expect("lock").insert(id.clone());
                if duplicate {
                    duplicates.fetch_add(1, Ordering::SeqCst);
                }
            } else {
                still.push(id.clone());
            }
        }
        eprintln!(
            "redelivery round {round}: {} of {} still refused",
            still.len(),
            pending.len()
        );
        pending = still;
        if !pending.is_empty() {
            // Stripe's retries are spaced out; so are these (the database is still starting).
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    assert!(
        pending.is_empty(),
        "every delivery is acknowledged in the end: {pending:?}"
    );
    let acknowledged = acknowledged.lock().expect("lock").clone();
    assert_eq!(acknowledged.len(), DELIVERIES);

    // Stored: every acknowledged event, once.
    let stored: Vec<(String, String, i32)> = sqlx::query_as(
        "SELECT id, state, attempts FROM stripe_events WHERE id LIKE $1 ORDER BY id",
    )
    .bind(format!("evt_{run}_%"))
    .fetch_all(&db)
    .await
    .expect("stored events");
    let stored_ids: BTreeSet<String> = stored.iter().map(|(id, _, _)| id.clone()).collect();
    assert_eq!(
        stored_ids, acknowledged,
        "every acknowledged event is stored"
    );
    assert_eq!(stored.len(), DELIVERIES, "each once");

    // Applied: the worker finishes every event, and each exactly once.
    let done = eventually_within("the worker processes every event", 300, || {
        let db = db.clone();
        let run = run.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM stripe_events WHERE id LIKE $1 AND state IN ('applied', 'skipped')",
            )
            .bind(format!("evt_{run}_%"))
            .fetch_one(&db)
            .await
            .ok()?;
            (n as usize == DELIVERIES).then_some(n)
        }
    })
    .await;
    let applied: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM stripe_events WHERE id LIKE $1 AND state = 'applied'",
    )
    .bind(format!("evt_{run}_%"))
    .fetch_one(&db)
    .await
    .expect("applied");
    assert_eq!(
        applied as usize, SUBSCRIPTIONS,
        "each subscription event made its Tenant"
    );
    let processings = processed_total(&metrics, &["applied", "skipped"]);
    assert_eq!(
        processings, DELIVERIES as f64,
        "each event was processed once, none twice"
    );
    let tenant_api: Api<Tenant> = Api::all(kube.clone());
    for i in 0..SUBSCRIPTIONS {
        let name = format!("leadsite-io-{run}{i:02}");
        assert!(
            tenant_api.get_opt(&name).await.expect("get").is_some(),
            "tenant {name}"
        );
    }
    eprintln!(
        "outage figures: deliveries={DELIVERIES} senders={SENDERS} refused_during_outage={} \
         acknowledged={} stored={} processed={done} (applied={applied}, skipped={}) \
         processings_counted={processings} duplicates_answered={}",
        refused_first.len(),
        acknowledged.len(),
        stored.len(),
        done - applied,
        duplicates.load(Ordering::SeqCst),
    );
}
