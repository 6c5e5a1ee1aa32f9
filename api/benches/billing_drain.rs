//! The billing queue's drain rate with the Stripe API hanging, and the Stripe calls each event
//! costs with Stripe healthy. Prints one table (`stackplane_tests::bench`).
//!
//! Phase 1: `BENCH_DRAIN_EVENTS` (default 1,000) new-subscription events queued in Postgres,
//! the Stripe API base a TCP peer that accepts and never answers
//! (`stackplane_tests::hanging`), the production retry policy (4 attempts of 10 s) and circuit
//! breaker (3 consecutive failures, 30 s cool-down), `BENCH_BILLING_WORKERS` workers (default
//! 4, the `--billing-workers` default): events drained per second from the start (the first
//! timeouts included) to the last event processed, and after the circuit opened. Every event
//! makes a Tenant on the harness's kube-apiserver (deleted at the end).
//!
//! Phase 2: localstripe seeded with `BENCH_HEALTHY_EVENTS` (default 200) customers with one
//! subscription each, one `customer.subscription.updated` event queued per subscription:
//! Stripe calls per event (localstripe's own access log).
//!
//! Run: `source $run/env.sh && cargo bench --workspace --bench billing_drain`. Under
//! `cargo test --workspace --bench billing_drain` (make test's smoke run): 20 and 10 events.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::DeleteParams;
use kube::Api;
use serde_json::json;
use stackplane_api::billing::prices::PlatformCache;
use stackplane_api::billing::stripe_api::{RetryPolicy, StripeApi};
use stackplane_api::billing::worker::Worker;
use stackplane_api::metrics::Metrics;
use stackplane_core::billing::circuit::CircuitPolicy;
use stackplane_crds::Tenant;
use stackplane_tests::bench::{self, knob, Row};
use stackplane_tests::hanging::HangingPeer;
use stackplane_tests::localstripe::LocalStripe;
use stackplane_tests::{fresh_database, install_crds, kube_client, unique};

const PRICE: &str = "price_1LeadsiteIoStarterMonthly";

fn event(
    id: &str,
    event_type: &str,
    sub: &str,
    customer: &str,
    t: i64,
) -> (String, String, serde_json::Value) {
    let body = json!({"id": id, "object": "event", "api_version": "2025-03-31.basil",
        "created": t, "livemode": false, "type": event_type,
        "data": {"object": {"id": sub, "object": "subscription", "customer": customer,
            "status": "active", "created": t - 60, "metadata": {},
            "items": {"object": "list", "data": [{"id": format!("si_{sub}"),
                "object": "subscription_item", "quantity": 1,
                "current_period_end": t + 2_592_000,
                "price": {"id": PRICE, "object": "price"}}]}}}});
    (id.to_owned(), event_type.to_owned(), body)
}

async fn queue(db: &sqlx::PgPool, events: &[(String, String, serde_json::Value)]) {
    let mut tx = db.begin().await.expect("begin");
    for (id, event_type, body) in events {
        sqlx::query("INSERT INTO stripe_events (id, event_type, created, payload) VALUES ($1, $2, to_timestamp($3), $4)")
            .bind(id)
            .bind(event_type)
            .bind(body["created"].as_f64())
            .bind(body)
            .execute(&mut *tx)
            .await
            .expect("queue event");
    }
    tx.commit().await.expect("commit");
}

async fn unprocessed(db: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM stripe_events WHERE state = 'pending' OR attempts = 0")
        .fetch_one(db)
        .await
        .expect("count")
}

/// Runs `workers` billing workers reading Stripe through `api` until every queued event is
/// processed; the elapsed time, and (time, events processed) when the circuit first opened.
async fn drain(
    worker: Worker,
    workers: NonZeroUsize,
    api: &StripeApi,
    total: i64,
) -> (Duration, Option<(Duration, i64)>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let db = worker.db.clone();
    let started = Instant::now();
    let running = tokio::spawn(worker.run_workers(workers, Default::default(), async {
        let _ = stopped.await;
    }));
    let mut opened = None;
    let deadline = started + Duration::from_secs(1800);
    loop {
        let left = unprocessed(&db).await;
        if opened.is_none() && api.circuit_open() {
            opened = Some((started.elapsed(), total - left));
        }
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} events still queued after 30 min"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    let _ = stop.send(());
    running.await.expect("workers");
    (elapsed, opened)
}

async fn delete_tenants(kube: &kube::Client, names: Vec<String>) {
    let api: Api<Tenant> = Api::all(kube.clone());
    futures::stream::iter(names)
        .for_each_concurrent(16, |name| {
            let api = api.clone();
            async move {
                let _ = api.delete(&name, &DeleteParams::default()).await;
            }
        })
        .await;
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let hanging_events = knob("BENCH_DRAIN_EVENTS", 1000, 20);
    let healthy_events = knob("BENCH_HEALTHY_EVENTS", 200, 10);
    let workers =
        NonZeroUsize::new(knob("BENCH_BILLING_WORKERS", 4, 4)).expect("BENCH_BILLING_WORKERS > 0");
    let kube = kube_client().await;
    install_crds(&kube).await;
    stackplane_tests::apply_example_platform(&kube, "leadsite-io.yaml").await;
    let (prices, driver) = PlatformCache::start(kube.clone());
    tokio::spawn(driver);
    assert!(prices.ready().await);
    let rate = NonZeroU32::new(20).expect("the --stripe-api-rate default");

    // Phase 1: Stripe hangs.
    let (db, _) = fresh_database().await;
    stackplane_api::db::migrate(&db).await.expect("migrate");
    let peer = HangingPeer::start().await;
    let metrics = Metrics::new();
    let hanging = Arc::new(
        StripeApi::new(
            Some(&peer.url),
            "sk_test_bench",
            rate,
            RetryPolicy::default(),
            metrics.clone(),
        )
        .expect("reader")
        .with_circuit(CircuitPolicy::default()),
    );
    let run = unique("d").replace('-', "");
    let t = chrono::Utc::now().timestamp();
    let events: Vec<_> = (0..hanging_events)
        .map(|i| {
            event(
                &format!("evt_{run}_{i:05}"),
                "customer.subscription.created",
                &format!("sub_{run}{i:05}"),
                &format!("cus_{run}{i:05}"),
                t,
            )
        })
        .collect();
    queue(&db, &events).await;
    let load_hanging = bench::loadavg();
    let worker = Worker::new(db.clone(), kube.clone(), prices.clone(), metrics.clone())
        .with_stripe(hanging.clone())
        .with_livemode(Some(false));
    let (elapsed, opened) = drain(worker, workers, &hanging, hanging_events as i64).await;
    let applied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM stripe_events WHERE state = 'applied'")
            .fetch_one(&db)
            .await
            .expect("count");
    assert_eq!(applied, hanging_events as i64, "every event applied");
    let calls = peer.accepted();
    let overall = hanging_events as f64 / elapsed.as_secs_f64();
    let (open_at, after_open) = match opened {
        Some((at, done)) => {
            let rest = (hanging_events as i64 - done) as f64;
            let secs = (elapsed - at).as_secs_f64();
            (at, (secs > 0.0).then(|| rest / secs))
        }
        None => (elapsed, None),
    };
    assert!(overall > 0.0, "no drain rate");
    let names: Vec<String> = (0..hanging_events)
        .map(|i| stackplane_crds::naming::tenant_name("leadsite-io", &format!("cus_{run}{i:05}")))
        .collect();
    delete_tenants(&kube, names).await;

    // Phase 2: Stripe healthy (localstripe, seeded).
    let (db, _) = fresh_database().await;
    stackplane_api::db::migrate(&db).await.expect("migrate");
    let seeded = healthy_events.to_string();
    let ls = LocalStripe::start_with(&["--seed", &seeded, "--seed-price", PRICE]).await;
    let metrics = Metrics::new();
    let healthy = Arc::new(
        StripeApi::new(
            Some(&ls.url),
            "sk_test_bench",
            NonZeroU32::new(100).expect("rate"),
            RetryPolicy::default(),
            metrics.clone(),
        )
        .expect("reader"),
    );
    let listing = healthy.all_subscriptions().await.expect("list localstripe");
    assert_eq!(listing.subscriptions.len(), healthy_events);
    let t = chrono::Utc::now().timestamp();
    let events: Vec<_> = listing
        .subscriptions
        .iter()
        .enumerate()
        .map(|(i, s)| {
            event(
                &format!("evt_{run}_h{i:05}"),
                "customer.subscription.updated",
                &s.subscription_id,
                &s.customer_id,
                t,
            )
        })
        .collect();
    let customers: Vec<String> = listing
        .subscriptions
        .iter()
        .map(|s| s.customer_id.clone())
        .collect();
    queue(&db, &events).await;
    let before = ls.requests("/v1/subscriptions?");
    let load_healthy = bench::loadavg();
    let worker = Worker::new(db.clone(), kube.clone(), prices.clone(), metrics.clone())
        .with_stripe(healthy.clone())
        .with_livemode(Some(false));
    let (healthy_elapsed, _) = drain(worker, workers, &healthy, healthy_events as i64).await;
    let reads = ls.requests("/v1/subscriptions?") - before;
    let per_event = reads as f64 / healthy_events as f64;
    assert!(
        reads >= healthy_events,
        "{reads} reads for {healthy_events} events"
    );
    delete_tenants(
        &kube,
        customers
            .iter()
            .map(|c| stackplane_crds::naming::tenant_name("leadsite-io", c))
            .collect(),
    )
    .await;

    let rows = [
        Row::new(
            format!(
                "events drained, Stripe API hanging (accepts, never answers), {hanging_events} queued, {workers} workers, first event to last"
            ),
            format!("{overall:.1}/s ({:.1} s)", elapsed.as_secs_f64()),
        )
        .target("≥ 50/s")
        .load(load_hanging.clone()),
        Row::new(
            "… of which: until the circuit opened (production policy: 10 s timeout, 3 failures)",
            format!("{:.1} s", open_at.as_secs_f64()),
        )
        .load(load_hanging.clone()),
        Row::new(
            "… after the circuit opened",
            after_open.map_or("-".into(), |r| format!("{r:.1}/s")),
        )
        .load(load_hanging),
        Row::new(
            format!("Stripe calls made while hanging, {hanging_events} events"),
            format!("{calls}"),
        ),
        Row::new(
            format!("Stripe calls per event, Stripe healthy (localstripe), {healthy_events} events, {workers} workers"),
            format!(
                "{per_event:.2} ({reads} GET /v1/subscriptions; drained at {:.1}/s)",
                healthy_events as f64 / healthy_elapsed.as_secs_f64()
            ),
        )
        .target("1")
        .load(load_healthy),
    ];
    bench::print_table("Billing queue: Stripe hanging and healthy", &rows);
}
