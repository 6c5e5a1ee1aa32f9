//! Billing truth against a real Stripe peer: localstripe (a stateful fake Stripe that signs and
//! sends its own webhooks), driven with the official `stripe` Python SDK, with the real
//! kube-apiserver and Postgres the harness starts. Each test runs its own localstripe, so a
//! sweep (which lists every subscription) sees only the test's own.
//!
//! localstripe never sends `customer.subscription.updated`: a plan change reaches the Tenant
//! through the sweep here (or, in production, through the read after any other event).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use kube::Api;
use serde_json::Value;
use stackplane_api::billing::prices::PlatformCache;
use stackplane_api::billing::stripe_api::{RetryPolicy, StripeApi};
use stackplane_api::billing::worker::Worker;
use stackplane_api::config::Secrets;
use stackplane_api::metrics::Metrics;
use stackplane_api::server::{router, AppState, BillingState};
use stackplane_crds::{SubscriptionStatus, Tenant};
use stackplane_tests::localstripe::LocalStripe;
use stackplane_tests::{eventually, fresh_database, install_crds, kube_client};

const SECRET: &str = "whsec_billing_truth_tests";
const STARTER: &str = "price_1LeadsiteIoStarterMonthly";
const PROFESSIONAL: &str = "price_1LeadsiteIoProfessionalMonthly";
const ENTERPRISE: &str = "price_1LeadsiteIoEnterpriseMonthly";
const TACKLE_STARTER: &str = "price_1TackleStarterMonthly";

async fn apply_examples(client: &kube::Client) {
    for file in ["leadsite-io.yaml", "tackle.yaml"] {
        stackplane_tests::apply_example_platform(client, file).await;
    }
}

/// The api (webhook + worker) of one test, reading Stripe at `stripe_base`.
struct Billing {
    worker: Worker,
    url: String,
    db: sqlx::PgPool,
    metrics: Metrics,
    kube: kube::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    running: Option<tokio::task::JoinHandle<()>>,
}

fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        attempts: 2,
        first_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(200),
        timeout: Duration::from_secs(5),
    }
}

fn reader(base: &str, metrics: &Metrics) -> Arc<StripeApi> {
    Arc::new(
        StripeApi::new(
            Some(base),
            "sk_test_stackplane",
            std::num::NonZeroU32::new(50).expect("rate"),
            quick_retries(),
            metrics.clone(),
        )
        .expect("reader"),
    )
}

impl Billing {
    async fn start(stripe_base: &str) -> Self {
        // The worker's log, shown for a failing test.
        let _ = tracing_subscriber::fmt()
            .with_env_filter("stackplane_api=info")
            .with_test_writer()
            .try_init();
        let kube = kube_client().await;
        install_crds(&kube).await;
        apply_examples(&kube).await;
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
        let worker = Worker::new(db.clone(), kube.clone(), prices, metrics.clone())
            .with_stripe(reader(stripe_base, &metrics))
            .with_livemode(Some(false));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(worker.clone().run(state.billing.wake.clone(), async {
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
            metrics,
            kube,
            stop: Some(stop),
            running: Some(running),
        }
    }

    fn tenants(&self) -> Api<Tenant> {
        Api::all(self.kube.clone())
    }

    /// The Tenant `name` once `check` holds for it.
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

    /// Every stored event settled (applied, skipped or failed at least once).
    async fn settled(&self) {
        let db = self.db.clone();
        eventually("every stored event processed", || {
            let db = db.clone();
            async move {
                let open: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM stripe_events WHERE state = 'pending' OR attempts = 0",
                )
                .fetch_one(&db)
                .await
                .ok()?;
                (open == 0).then_some(())
            }
        })
        .await;
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

fn text(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {v}"))
        .to_owned()
}

async fn customer(ls: &LocalStripe, email: &str) -> (String, String) {
    let c = text(&ls.drive(&["customer", email]).await, "customer");
    let tenant = stackplane_crds::naming::tenant_name("leadsite-io", &c);
    (c, tenant)
}

/// Subscribe → Tenant on the right tier; change the plan → tier follows (sweep: localstripe
/// sends no `.updated`); cancel → `cancelledAt`; subscribe again → the same Tenant runs again,
/// following the new subscription. Also counts the Stripe calls each webhook event costs.
#[tokio::test]
async fn subscribe_change_cancel_and_subscribe_again_against_localstripe() {
    let ls = LocalStripe::start().await;
    let b = Billing::start(&ls.url).await;
    ls.drive(&["setup", STARTER, PROFESSIONAL, ENTERPRISE, TACKLE_STARTER])
        .await;
    ls.drive(&["webhook", &format!("{}/webhooks/stripe", b.url), SECRET])
        .await;
    let (cus, name) = customer(&ls, "ada@example.com").await;

    let first = text(
        &ls.drive(&["subscribe", &cus, STARTER]).await,
        "subscription",
    );
    let t = b
        .tenant_when("the tenant of the first subscription", &name, |t| {
            sub_id(t) == Some(first.as_str())
        })
        .await;
    assert_eq!(t.spec.platform, "leadsite-io");
    assert_eq!(t.spec.tier, "starter");
    assert!(!t.spec.suspended && t.spec.cancelled_at.is_none());
    let t = b
        .tenant_when("BillingSynced=True", &name, |t| {
            condition(t, "BillingSynced").is_some_and(|c| c.status == "True")
        })
        .await;
    let synced = condition(&t, "BillingSynced").expect("BillingSynced");
    assert!(synced.message.contains(&first), "{}", synced.message);
    assert!(
        synced.message.contains("read from Stripe at"),
        "{}",
        synced.message
    );

    ls.drive(&["change", &first, PROFESSIONAL]).await;
    let report = b.worker.sweep().await.expect("sweep").expect("not locked");
    assert!(report.tenants_written >= 1, "{report:?}");
    let t = b.tenants().get(&name).await.expect("tenant");
    assert_eq!(t.spec.tier, "professional");

    ls.drive(&["cancel", &first]).await;
    let t = b
        .tenant_when("cancelledAt after the deletion", &name, |t| {
            t.spec.cancelled_at.is_some()
        })
        .await;
    assert!(t.spec.suspended);
    assert_eq!(
        t.spec.subscription.as_ref().map(|s| s.status),
        Some(SubscriptionStatus::Canceled)
    );

    let second = text(
        &ls.drive(&["subscribe", &cus, ENTERPRISE]).await,
        "subscription",
    );
    assert_ne!(first, second);
    let t = b
        .tenant_when("the same tenant running the new subscription", &name, |t| {
            sub_id(t) == Some(second.as_str()) && t.spec.cancelled_at.is_none()
        })
        .await;
    assert!(!t.spec.suspended);
    assert_eq!(t.spec.tier, "enterprise");
    assert_eq!(
        t.spec.subscription.as_ref().map(|s| s.status),
        Some(SubscriptionStatus::Active)
    );

    // Stripe calls per webhook event: every event of this customer triggered one read.
    b.settled().await;
    let handled: Vec<String> = stackplane_core::billing::parse::HANDLED_EVENT_TYPES
        .iter()
        .map(|t| (*t).to_owned())
        .collect();
    let (events, all): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE event_type = ANY($1)), count(*) FROM stripe_events",
    )
    .bind(&handled)
    .fetch_one(&b.db)
    .await
    .expect("count");
    let reads = ls.requests("/v1/subscriptions?") as i64;
    eprintln!(
        "stripe calls per webhook event: {reads} GET /v1/subscriptions for {events} handled events \
         ({all} events stored; others are acknowledged without a read) and 1 sweep"
    );
    assert!(events >= 3, "created, deleted, created at least");
    assert_eq!(
        reads,
        events + 1,
        "one read per handled event, one page for the sweep"
    );
}

/// A subscription created while no webhook is configured gets its Tenant after one sweep; one
/// cancelled meanwhile gets `cancelledAt` after the next.
#[tokio::test]
async fn a_sweep_repairs_what_webhooks_that_were_off_left_wrong() {
    let ls = LocalStripe::start().await;
    let b = Billing::start(&ls.url).await;
    ls.drive(&["setup", STARTER]).await;
    let (cus, name) = customer(&ls, "off@example.com").await;
    let sub = text(
        &ls.drive(&["subscribe", &cus, STARTER]).await,
        "subscription",
    );
    assert!(b.tenants().get_opt(&name).await.expect("get").is_none());

    let report = b.worker.sweep().await.expect("sweep").expect("not locked");
    eprintln!("sweep: {report:?}");
    assert_eq!((report.subscriptions, report.customers), (1, 1));
    let t = b
        .tenants()
        .get(&name)
        .await
        .expect("the sweep made the tenant");
    assert_eq!(sub_id(&t), Some(sub.as_str()));
    assert!(!t.spec.suspended);

    ls.drive(&["cancel", &sub]).await;
    let report = b.worker.sweep().await.expect("sweep").expect("not locked");
    assert_eq!(report.tenants_written, 1, "{report:?}");
    let t = b.tenants().get(&name).await.expect("tenant");
    assert!(t.spec.cancelled_at.is_some() && t.spec.suspended);

    // A sweep that finds nothing changed writes nothing.
    let report = b.worker.sweep().await.expect("sweep").expect("not locked");
    assert_eq!(report.tenants_written, 0, "{report:?}");

    // While another replica holds the sweep lock, this one does not sweep.
    let mut other = b.db.acquire().await.expect("connection");
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(stackplane_api::billing::sweep::SWEEP_LOCK)
        .execute(&mut *other)
        .await
        .expect("lock");
    assert!(b.worker.sweep().await.expect("sweep").is_none());
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(stackplane_api::billing::sweep::SWEEP_LOCK)
        .execute(&mut *other)
        .await
        .expect("unlock");
    assert!(b.worker.sweep().await.expect("sweep").is_some());
}

/// Two live subscriptions on one platform: the Tenant follows the newest, `BillingConflict`
/// names both, `stackplane_billing_conflicts` counts the pair. A subscription whose price moves
/// to another platform cancels the old platform's Tenant when nothing else governs it.
#[tokio::test]
async fn two_subscriptions_conflict_and_a_platform_move_cancels_the_old_tenant() {
    let ls = LocalStripe::start().await;
    let b = Billing::start(&ls.url).await;
    ls.drive(&["setup", STARTER, ENTERPRISE, TACKLE_STARTER])
        .await;
    let (cus, name) = customer(&ls, "twice@example.com").await;
    let a = text(
        &ls.drive(&["subscribe", &cus, STARTER]).await,
        "subscription",
    );
    let c = text(
        &ls.drive(&["subscribe", &cus, ENTERPRISE]).await,
        "subscription",
    );
    b.worker.sweep().await.expect("sweep").expect("not locked");

    // The newest by Stripe's `created` (ids break a tie within one second).
    let listed: Vec<(i64, String)> = {
        let r: Value = reqwest::Client::new()
            .get(format!(
                "{}/v1/subscriptions?customer={cus}&status=all",
                ls.url
            ))
            .bearer_auth("sk_test_x")
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        r["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|s| (s["created"].as_i64().unwrap_or(0), text(s, "id")))
            .collect()
    };
    let newest = listed.iter().max().map(|(_, id)| id.clone()).expect("two");
    let t = b.tenants().get(&name).await.expect("tenant");
    assert_eq!(sub_id(&t), Some(newest.as_str()));
    let conflict = condition(&t, "BillingConflict").expect("BillingConflict");
    assert_eq!(conflict.status, "True");
    assert!(
        conflict.message.contains(&a) && conflict.message.contains(&c),
        "{}",
        conflict.message
    );
    let synced = condition(&t, "BillingSynced").expect("BillingSynced");
    assert_eq!(
        (synced.status.as_str(), synced.reason.as_str()),
        ("False", "Conflict")
    );
    b.metrics.refresh_queue(&b.db).await.expect("refresh");
    let text_metrics = b.metrics.encode().expect("encode");
    assert!(
        text_metrics.contains("stackplane_billing_conflicts 1"),
        "{text_metrics}"
    );

    // Both move to tackle: leadsite-io's Tenant has no subscription left and is cancelled.
    ls.drive(&["change", &a, TACKLE_STARTER]).await;
    b.worker.sweep().await.expect("sweep").expect("not locked");
    let t = b.tenants().get(&name).await.expect("tenant");
    assert!(
        t.spec.cancelled_at.is_none(),
        "the other live subscription still governs it"
    );
    assert_eq!(sub_id(&t), Some(c.as_str()));
    ls.drive(&["change", &c, TACKLE_STARTER]).await;
    b.worker.sweep().await.expect("sweep").expect("not locked");
    let t = b.tenants().get(&name).await.expect("tenant");
    assert!(
        t.spec.cancelled_at.is_some() && t.spec.suspended,
        "{:?}",
        t.spec
    );
    let tackle = stackplane_crds::naming::tenant_name("tackle", &cus);
    let moved = b.tenants().get(&tackle).await.expect("tackle tenant");
    assert!(!moved.spec.suspended && moved.spec.cancelled_at.is_none());
}

/// Stripe unreachable: the event's payload is applied and `BillingSynced=False` says why; once
/// Stripe answers again the worker's re-read makes it True, without another event.
#[tokio::test]
async fn stripe_unreachable_then_back() {
    let ls = LocalStripe::start().await;
    // A port nothing listens on: connection refused, as when Stripe is unreachable.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", l.local_addr().expect("addr"))
    };
    let mut down = Billing::start(&dead).await;
    ls.drive(&["setup", STARTER]).await;
    ls.drive(&["webhook", &format!("{}/webhooks/stripe", down.url), SECRET])
        .await;
    let (cus, name) = customer(&ls, "outage@example.com").await;
    let sub = text(
        &ls.drive(&["subscribe", &cus, STARTER]).await,
        "subscription",
    );
    let t = down
        .tenant_when(
            "BillingSynced=False while Stripe is unreachable",
            &name,
            |t| condition(t, "BillingSynced").is_some_and(|c| c.status == "False"),
        )
        .await;
    let synced = condition(&t, "BillingSynced").expect("condition");
    assert_eq!(synced.reason, "StripeUnreachable");
    assert_eq!(sub_id(&t), Some(sub.as_str()), "the payload was applied");
    assert!(!t.spec.suspended);
    let queued: i64 =
        sqlx::query_scalar("SELECT count(*) FROM billing_resync WHERE customer_id = $1")
            .bind(&cus)
            .fetch_one(&down.db)
            .await
            .expect("count");
    // Queued durably before the Tenant was written, so already visible here.
    assert_eq!(queued, 1, "the read is retried later");

    // Stripe is back: a worker on the same database reading localstripe picks the re-read up.
    let back = Worker::new(
        down.db.clone(),
        down.kube.clone(),
        down.worker.prices.clone(),
        down.metrics.clone(),
    )
    .with_stripe(reader(&ls.url, &down.metrics));
    down.stop_worker().await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(back.run(Default::default(), async {
        let _ = stopped.await;
    }));
    let t = down
        .tenant_when("BillingSynced=True once Stripe answers", &name, |t| {
            condition(t, "BillingSynced").is_some_and(|c| c.status == "True")
        })
        .await;
    assert!(condition(&t, "BillingSynced")
        .expect("condition")
        .message
        .contains(&sub));
    // The re-read leaves the queue when its transaction commits, which is after the Tenant write.
    let db = down.db.clone();
    eventually("the re-read leaves the queue", || {
        let db = db.clone();
        async move {
            let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM billing_resync")
                .fetch_one(&db)
                .await
                .ok()?;
            (queued == 0).then_some(())
        }
    })
    .await;
    let _ = stop.send(());
}

impl Billing {
    /// Stops this test's worker loop and waits until it has (the webhook keeps answering).
    async fn stop_worker(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(running) = self.running.take() {
            running.await.expect("worker loop");
        }
    }
}

/// The figure of the issue: one sweep over 10,000 subscriptions against localstripe (seeded in
/// process), first creating every Tenant, then finding nothing to change. Ignored by default:
/// `tests/run.sh -p stackplane-api --release --test billing_truth -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement: minutes, run on demand"]
async fn sweep_of_ten_thousand_subscriptions() {
    let count: usize = std::env::var("STACKPLANE_SWEEP_SUBSCRIPTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let n = count.to_string();
    let ls = LocalStripe::start_with(&["--seed", &n, "--seed-price", STARTER]).await;
    let b = Billing::start(&ls.url).await;
    let first = b.worker.sweep().await.expect("sweep").expect("not locked");
    eprintln!("first sweep ({count} subscriptions, creates every Tenant): {first:?}");
    assert_eq!(first.subscriptions, count);
    assert_eq!(first.tenants_written as usize, count);
    let second = b.worker.sweep().await.expect("sweep").expect("not locked");
    eprintln!("second sweep (nothing changed): {second:?}");
    assert_eq!(second.tenants_written, 0);
    let pages = count.div_ceil(100) as u32;
    assert_eq!((first.pages, second.pages), (pages, pages));
}

/// Issue 33: after the Tenant CRD was deleted and reinstalled, the Tenants are gone while
/// billing remembers writing them. One sweep recreates the Tenant of the live subscription
/// (which then adopts its stack, see controller/tests/crd_deletion.rs), never the one whose
/// subscription ended (retention deletes those; `kubectl stackplane adopt` is for the rest).
#[tokio::test]
async fn a_sweep_recreates_the_missing_tenant_of_a_live_subscription_only() {
    let ls = LocalStripe::start().await;
    let b = Billing::start(&ls.url).await;
    ls.drive(&["setup", STARTER]).await;
    let (live_cus, live) = customer(&ls, "live@example.com").await;
    let (ended_cus, ended) = customer(&ls, "ended@example.com").await;
    let live_sub = text(
        &ls.drive(&["subscribe", &live_cus, STARTER]).await,
        "subscription",
    );
    let ended_sub = text(
        &ls.drive(&["subscribe", &ended_cus, STARTER]).await,
        "subscription",
    );
    b.worker.sweep().await.expect("sweep").expect("not locked");
    ls.drive(&["cancel", &ended_sub]).await;
    b.worker.sweep().await.expect("sweep").expect("not locked");
    let t = b.tenants().get(&ended).await.expect("ended tenant");
    assert!(t.spec.cancelled_at.is_some());
    assert_eq!(
        sub_id(&b.tenants().get(&live).await.expect("live")),
        Some(live_sub.as_str())
    );

    // What a deletion of the CRD leaves: no Tenants (none has a finalizer here).
    for name in [&live, &ended] {
        b.tenants()
            .delete(name, &Default::default())
            .await
            .expect("delete");
    }
    let report = b.worker.sweep().await.expect("sweep").expect("not locked");
    assert_eq!(report.tenants_written, 1, "{report:?}");
    let back = b
        .tenants()
        .get(&live)
        .await
        .expect("the live tenant recreated");
    assert_eq!(sub_id(&back), Some(live_sub.as_str()));
    assert!(!back.spec.suspended && back.spec.cancelled_at.is_none());
    assert!(
        b.tenants().get_opt(&ended).await.expect("get").is_none(),
        "an ended subscription's Tenant stays gone"
    );
    // Nothing missing any more: nothing written.
    let report = b.worker.sweep().await.expect("sweep").expect("not locked");
    assert_eq!(report.tenants_written, 0, "{report:?}");
}
