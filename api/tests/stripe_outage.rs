//! Stripe hangs: its API base is a TCP peer that accepts and never answers. The billing queue
//! never stalls behind it: no transaction is open and no row is locked while a worker waits on
//! Stripe, the circuit breaker stops calling Stripe after a few timeouts, and every queued
//! event gets its Tenant from its payload (`BillingSynced=False`, `StripeUnreachable`) with the
//! customer's re-read queued for later. Real kube-apiserver and Postgres from the harness.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use kube::Api;
use serde_json::json;
use stackplane_api::billing::prices::PlatformCache;
use stackplane_api::billing::stripe_api::{RetryPolicy, StripeApi};
use stackplane_api::billing::worker::{Outcome, Worker};
use stackplane_api::metrics::Metrics;
use stackplane_core::billing::circuit::CircuitPolicy;
use stackplane_crds::Tenant;
use stackplane_tests::hanging::HangingPeer;
use stackplane_tests::{eventually, fresh_database, install_crds, kube_client, unique};

const PRICE: &str = "price_1LeadsiteIoStarterMonthly";

/// A `customer.subscription.created` event of a new customer, as Stripe sends it.
fn new_subscription(run: &str, i: usize) -> serde_json::Value {
    let now = chrono::Utc::now().timestamp();
    json!({"id": format!("evt_{run}_{i:03}"), "object": "event", "api_version": "2025-03-31.basil",
        "created": now, "livemode": false, "type": "customer.subscription.created",
        "data": {"object": {"id": format!("sub_{run}{i:03}"), "object": "subscription",
            "customer": format!("cus_{run}{i:03}"), "status": "active", "created": now,
            "metadata": {},
            "items": {"object": "list", "data": [{"id": format!("si_{run}{i:03}"),
                "object": "subscription_item", "quantity": 1,
                "current_period_end": now + 2_592_000,
                "price": {"id": PRICE, "object": "price"}}]}}}})
}

async fn store(db: &sqlx::PgPool, event: &serde_json::Value) {
    sqlx::query("INSERT INTO stripe_events (id, event_type, created, payload) VALUES ($1, $2, to_timestamp($3), $4)")
        .bind(event["id"].as_str())
        .bind(event["type"].as_str())
        .bind(event["created"].as_f64())
        .bind(event)
        .execute(db)
        .await
        .expect("store event");
}

struct Setup {
    db: sqlx::PgPool,
    kube: kube::Client,
    prices: PlatformCache,
    metrics: Metrics,
}

async fn setup() -> Setup {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("stackplane_api=info")
        .with_test_writer()
        .try_init();
    let kube = kube_client().await;
    install_crds(&kube).await;
    stackplane_tests::apply_example_platform(&kube, "leadsite-io.yaml").await;
    let (db, _) = fresh_database().await;
    stackplane_api::db::migrate(&db).await.expect("migrate");
    let (prices, driver) = PlatformCache::start(kube.clone());
    tokio::spawn(driver);
    assert!(prices.ready().await);
    Setup {
        db,
        kube,
        prices,
        metrics: Metrics::new(),
    }
}

fn reader(base: &str, metrics: &Metrics, retry: RetryPolicy, circuit: CircuitPolicy) -> StripeApi {
    StripeApi::new(
        Some(base),
        "sk_test_outage",
        NonZeroU32::new(100).expect("rate"),
        retry,
        metrics.clone(),
    )
    .expect("reader")
    .with_circuit(circuit)
}

fn gauge(metrics: &Metrics, name: &str) -> Option<f64> {
    let text = metrics.encode().expect("encode");
    text.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

const THRESHOLD: u32 = 3;
const WORKERS: usize = 4;
const EVENTS: usize = 20;

/// 20 new subscriptions queued while Stripe hangs, 4 workers: every one gets its Tenant from
/// its payload. Stripe was called only until the circuit opened — at most the threshold plus
/// the calls already in flight on the other workers (`THRESHOLD + WORKERS - 1`), not once per
/// event, and no event waited on a retry; each customer's re-read is queued for later.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_signups_get_their_tenants_while_stripe_hangs() {
    let s = setup().await;
    let stripe = HangingPeer::start().await;
    let retry = RetryPolicy {
        attempts: 4,
        first_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(200),
        timeout: Duration::from_secs(2),
    };
    // A cool-down longer than the test: no probe is let through, so the count of calls below
    // is exact, not a race with the clock.
    let circuit = CircuitPolicy {
        threshold: THRESHOLD,
        cool_down: Duration::from_secs(3600),
    };
    let worker = Worker::new(
        s.db.clone(),
        s.kube.clone(),
        s.prices.clone(),
        s.metrics.clone(),
    )
    .with_stripe(Arc::new(reader(&stripe.url, &s.metrics, retry, circuit)))
    .with_livemode(Some(false));
    let run = unique("h").replace('-', "");
    for i in 0..EVENTS {
        store(&s.db, &new_subscription(&run, i)).await;
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_workers(
        NonZeroUsize::new(WORKERS).expect("workers"),
        Default::default(),
        async {
            let _ = stopped.await;
        },
    ));

    let tenants: Api<Tenant> = Api::all(s.kube.clone());
    let names: Vec<String> = (0..EVENTS)
        .map(|i| stackplane_crds::naming::tenant_name("leadsite-io", &format!("cus_{run}{i:03}")))
        .collect();
    for name in &names {
        let t = eventually(&format!("tenant {name} from its payload"), || {
            let (tenants, name) = (tenants.clone(), name.clone());
            async move {
                let t = tenants.get_opt(&name).await.ok().flatten()?;
                let synced = t
                    .status
                    .as_ref()?
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "BillingSynced")?
                    .clone();
                (synced.status == "False").then_some((t, synced))
            }
        })
        .await;
        let (tenant, synced) = t;
        assert_eq!(synced.reason, "StripeUnreachable", "{}", synced.message);
        assert_eq!(tenant.spec.tier, "starter");
        assert!(!tenant.spec.suspended);
    }
    let (applied, attempts): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'applied'), coalesce(sum(attempts), 0) FROM stripe_events",
    )
    .fetch_one(&s.db)
    .await
    .expect("count");
    assert_eq!(applied, EVENTS as i64, "every event applied");
    assert_eq!(
        attempts, EVENTS as i64,
        "each in one attempt: none waited for a retry"
    );
    let calls = stripe.accepted();
    eprintln!("Stripe calls (connections to the hanging peer) for {EVENTS} events: {calls}");
    assert!(
        (THRESHOLD as usize..=THRESHOLD as usize + WORKERS - 1).contains(&calls),
        "{calls} calls: the circuit opens after {THRESHOLD} timeouts; only calls already in flight follow"
    );
    assert_eq!(
        gauge(&s.metrics, "stackplane_stripe_circuit_open"),
        Some(1.0)
    );
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM billing_resync")
        .fetch_one(&s.db)
        .await
        .expect("count");
    assert_eq!(
        queued, EVENTS as i64,
        "every customer's read is retried later"
    );
    let _ = stop.send(());
    running.await.expect("the workers stop");
}

/// While a worker waits on a hanging Stripe: no session of the database is idle in a
/// transaction, the event's row is not locked (another session locks it with NOWAIT), and the
/// event is leased (another worker passes it by). A replay meanwhile hands the event to another
/// worker, which applies it from its payload; the first worker's late result is dropped
/// (`ClaimLost`), so the event is applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_transaction_or_row_lock_is_held_while_stripe_is_called() {
    let s = setup().await;
    let stripe = HangingPeer::start().await;
    let retry = RetryPolicy {
        attempts: 1,
        first_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(100),
        timeout: Duration::from_secs(600),
    };
    let hung = Worker::new(
        s.db.clone(),
        s.kube.clone(),
        s.prices.clone(),
        s.metrics.clone(),
    )
    .with_stripe(Arc::new(reader(
        &stripe.url,
        &s.metrics,
        retry,
        CircuitPolicy::default(),
    )));
    let run = unique("l").replace('-', "");
    let event = new_subscription(&run, 0);
    let id = event["id"].as_str().expect("id").to_owned();
    store(&s.db, &event).await;
    let waiting = tokio::spawn({
        let hung = hung.clone();
        async move { hung.process_one().await.expect("process") }
    });
    eventually("the worker is waiting on Stripe", || {
        let n = stripe.accepted();
        async move { (n == 1).then_some(()) }
    })
    .await;

    let idle_in_transaction: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND state LIKE 'idle in transaction%'",
    )
    .fetch_one(&s.db)
    .await
    .expect("pg_stat_activity");
    assert_eq!(
        idle_in_transaction, 0,
        "a transaction is open across the Stripe call"
    );
    let mut tx = s.db.begin().await.expect("begin");
    let locked: Option<String> =
        sqlx::query_scalar("SELECT id FROM stripe_events WHERE id = $1 FOR UPDATE NOWAIT")
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await
            .expect("the event's row is not locked while Stripe is called");
    assert_eq!(locked.as_deref(), Some(id.as_str()));
    tx.rollback().await.expect("rollback");

    // Leased: another worker finds nothing due.
    let other = Worker::new(
        s.db.clone(),
        s.kube.clone(),
        s.prices.clone(),
        Metrics::new(),
    );
    assert!(other.process_one().await.expect("process").is_none());

    // A replay makes it due now; the other worker (no Stripe reader) applies the payload.
    let replayed = stackplane_api::billing::replay::replay(&s.db, &id, "test", "test")
        .await
        .expect("replay");
    assert_eq!(
        replayed,
        stackplane_api::billing::replay::Replay::Queued("pending".into())
    );
    let (applied_id, outcome) = other
        .process_one()
        .await
        .expect("process")
        .expect("due after the replay");
    assert_eq!(applied_id, id);
    assert_eq!(outcome.expect("applied"), Outcome::Applied);

    // Stripe drops the connection: the first worker's read fails, its claim is gone.
    stripe.close_all();
    let (late_id, late) = waiting
        .await
        .expect("the waiting worker")
        .expect("it had claimed the event");
    assert_eq!(late_id, id);
    assert_eq!(late.expect("no error"), Outcome::ClaimLost);
    let (state, attempts): (String, i32) =
        sqlx::query_as("SELECT state, attempts FROM stripe_events WHERE id = $1")
            .bind(&id)
            .fetch_one(&s.db)
            .await
            .expect("row");
    assert_eq!((state.as_str(), attempts), ("applied", 1));
    let name = stackplane_crds::naming::tenant_name("leadsite-io", &format!("cus_{run}000"));
    let tenant = Api::<Tenant>::all(s.kube.clone())
        .get(&name)
        .await
        .expect("tenant");
    assert_eq!(tenant.spec.tier, "starter");
}
