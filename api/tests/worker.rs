//! The billing worker against the real Postgres and kube-apiserver the harness starts.

use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::json;
use stackplane_api::billing::prices::{PlatformCache, PriceIndex};
use stackplane_api::billing::worker::Worker;
use stackplane_api::db::MIGRATOR;
use stackplane_api::metrics::Metrics;
use stackplane_crds::{Platform, SubscriptionStatus, Tenant};
use stackplane_tests::{fresh_database, install_crds, kube_client, unique};

fn example(name: &str) -> Platform {
    stackplane_tests::example_platform(&format!("{name}.yaml"))
}

async fn apply_platform(client: &kube::Client, p: &Platform) {
    let api: Api<Platform> = Api::all(client.clone());
    let mut p = p.clone();
    p.metadata.managed_fields = None;
    api.patch(
        &p.metadata.name.clone().expect("name"),
        &PatchParams::apply("stackplane-tests").force(),
        &Patch::Apply(&p),
    )
    .await
    .expect("apply platform");
}

async fn setup() -> (Worker, sqlx::PgPool, kube::Client) {
    let client = kube_client().await;
    install_crds(&client).await;
    let (pool, _) = fresh_database().await;
    MIGRATOR.run(&pool).await.expect("migrate");
    let (prices, driver) = PlatformCache::start(client.clone());
    tokio::spawn(driver);
    assert!(prices.ready().await);
    let worker = Worker::new(pool.clone(), client.clone(), prices, Metrics::new());
    (worker, pool, client)
}

async fn store(pool: &sqlx::PgPool, event: &serde_json::Value) {
    sqlx::query("INSERT INTO stripe_events (id, event_type, created, payload) VALUES ($1, $2, to_timestamp($3), $4)")
        .bind(event["id"].as_str())
        .bind(event["type"].as_str())
        .bind(event["created"].as_f64())
        .bind(event)
        .execute(pool)
        .await
        .expect("store event");
}

async fn drain(worker: &Worker) {
    while worker.process_one().await.expect("process").is_some() {}
}

fn ids() -> (String, String) {
    let u = unique("x").replace('-', "");
    (format!("cus_{u}"), format!("sub_{u}"))
}

#[tokio::test]
async fn checkout_and_subscription_created_make_the_tenant() {
    let (worker, pool, client) = setup().await;
    apply_platform(&client, &example("leadsite-io")).await;
    let (cus, sub) = ids();
    let t = chrono::Utc::now().timestamp();
    store(&pool, &json!({"id": unique("evt_c"), "object": "event", "type": "checkout.session.completed", "created": t + 1,
        "data": {"object": {"id": "cs_test_1", "object": "checkout.session", "mode": "subscription",
            "customer": cus, "subscription": sub, "client_reference_id": "user-42", "payment_status": "paid",
            "customer_details": {"email": "ada@example.com", "name": "Ada"},
            "metadata": {"platform": "leadsite-io", "tier": "starter"}}}})).await;
    store(&pool, &json!({"id": unique("evt_s"), "object": "event", "type": "customer.subscription.created", "created": t,
        "data": {"object": {"id": sub, "object": "subscription", "customer": cus, "status": "active", "metadata": {},
            "items": {"object": "list", "data": [{"id": "si_1", "current_period_end": t + 2_592_000,
                "price": {"id": "price_1LeadsiteIoProfessionalMonthly"}}]}}}})).await;
    drain(&worker).await;
    let name = stackplane_crds::naming::tenant_name("leadsite-io", &cus);
    let tenant = Api::<Tenant>::all(client.clone())
        .get(&name)
        .await
        .expect("tenant exists");
    assert_eq!(tenant.spec.platform, "leadsite-io");
    assert_eq!(tenant.spec.tier, "professional");
    assert_eq!(
        tenant.spec.customer.stripe_customer_id.as_deref(),
        Some(cus.as_str())
    );
    assert_eq!(
        tenant.spec.customer.email.as_deref(),
        Some("ada@example.com")
    );
    let s = tenant.spec.subscription.expect("subscription");
    assert_eq!(s.id, sub);
    assert_eq!(s.status, SubscriptionStatus::Active);
    assert!(!tenant.spec.suspended);
    let states: Vec<String> = sqlx::query_scalar("SELECT state FROM stripe_events ORDER BY 1")
        .fetch_all(&pool)
        .await
        .expect("states");
    assert_eq!(states, ["applied", "applied"]);
}

/// An event whose price no Platform lists, of a subscription never seen, is no product sold here:
/// stored `ignored` (acknowledged), not retried when a Platform later lists the price (that is
/// the sweep's job), and applied when a person replays it.
#[tokio::test]
async fn an_unpriced_event_of_an_unknown_subscription_is_ignored_until_replayed() {
    let (worker, pool, client) = setup().await;
    let (cus, sub) = ids();
    let price = format!("price_{}", unique("p").replace('-', ""));
    let t = chrono::Utc::now().timestamp();
    let event_id = unique("evt_s");
    store(&pool, &json!({"id": event_id, "object": "event", "type": "customer.subscription.created", "created": t,
        "data": {"object": {"id": sub, "object": "subscription", "customer": cus, "status": "active",
            "items": {"object": "list", "data": [{"id": "si_1", "price": {"id": price}}]}}}})).await;
    drain(&worker).await;
    let (state, kind, outcome): (String, Option<String>, Option<String>) =
        sqlx::query_as("SELECT state, error_kind, outcome FROM stripe_events")
            .fetch_one(&pool)
            .await
            .expect("row");
    assert_eq!((state.as_str(), kind.as_deref()), ("ignored", None));
    assert!(outcome
        .unwrap_or_default()
        .contains("no price a Platform lists"));

    let mut platform = example("tackle");
    let pname = unique("tackle");
    platform.metadata.name = Some(pname.clone());
    platform.spec.tiers[0].stripe_price_ids.push(price.clone());
    let mut changes = worker.prices.changes();
    apply_platform(&client, &platform).await;
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while worker.prices.resolve_price(&price).is_none() {
            changes.changed().await.expect("watch");
        }
    })
    .await
    .expect("platform seen");
    assert_eq!(worker.retry_platform_failures().await.expect("retry"), 0);
    drain(&worker).await;
    let state: String = sqlx::query_scalar("SELECT state FROM stripe_events")
        .fetch_one(&pool)
        .await
        .expect("row");
    assert_eq!(state, "ignored", "never retried in bulk");

    stackplane_api::billing::replay::replay(&pool, &event_id, "admin", "test")
        .await
        .expect("replay");
    drain(&worker).await;
    let state: String = sqlx::query_scalar("SELECT state FROM stripe_events")
        .fetch_one(&pool)
        .await
        .expect("row");
    assert_eq!(state, "applied");
    let name = stackplane_crds::naming::tenant_name(&pname, &cus);
    Api::<Tenant>::all(client.clone())
        .get(&name)
        .await
        .expect("tenant exists");
    Api::<Platform>::all(client)
        .delete(&pname, &Default::default())
        .await
        .expect("cleanup");
}

fn lifecycle(cus: &str, sub: &str, t: i64) -> Vec<serde_json::Value> {
    let ev = |n: i64, ty: &str, status: &str, price: &str| {
        json!({"id": format!("evt_{sub}_{n}"), "object": "event", "type": ty, "created": t + n * 10,
            "data": {"object": {"id": sub, "object": "subscription", "customer": cus, "status": status,
                "ended_at": if ty.ends_with("deleted") { json!(t + n * 10) } else { json!(null) },
                "current_period_end": t + 2_592_000,
                "items": {"object": "list", "data": [{"id": "si_1", "price": {"id": price}}]}}}})
    };
    vec![
        ev(
            0,
            "customer.subscription.created",
            "active",
            "price_1LeadsiteIoStarterMonthly",
        ),
        ev(
            1,
            "customer.subscription.updated",
            "active",
            "price_1LeadsiteIoEnterpriseMonthly",
        ),
        ev(
            2,
            "customer.subscription.updated",
            "past_due",
            "price_1LeadsiteIoEnterpriseMonthly",
        ),
        ev(
            3,
            "customer.subscription.updated",
            "active",
            "price_1LeadsiteIoEnterpriseMonthly",
        ),
        ev(
            4,
            "customer.subscription.deleted",
            "canceled",
            "price_1LeadsiteIoEnterpriseMonthly",
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

#[tokio::test]
async fn every_order_of_a_subscription_lifecycle_gives_the_same_tenant() {
    let (worker, pool, client) = setup().await;
    apply_platform(&client, &example("leadsite-io")).await;
    let tenants = Api::<Tenant>::all(client.clone());
    let t = chrono::Utc::now().timestamp();
    let mut first: Option<serde_json::Value> = None;
    let perms = permutations(5);
    assert_eq!(perms.len(), 120);
    for order in perms {
        let (cus, sub) = ids();
        let events = lifecycle(&cus, &sub, t);
        for i in &order {
            store(&pool, &events[*i]).await;
            drain(&worker).await;
        }
        let name = stackplane_crds::naming::tenant_name("leadsite-io", &cus);
        let tenant = tenants.get(&name).await.expect("tenant");
        let mut spec = serde_json::to_value(&tenant.spec).expect("spec");
        spec["customer"] = json!(null);
        spec["subscription"]["id"] = json!(null);
        assert_eq!(tenant.spec.tier, "enterprise", "order {order:?}");
        assert_eq!(
            tenant.spec.subscription.as_ref().map(|s| s.status),
            Some(SubscriptionStatus::Canceled)
        );
        assert!(
            tenant.spec.suspended && tenant.spec.cancelled_at.is_some(),
            "order {order:?}"
        );
        match &first {
            None => first = Some(spec),
            Some(f) => assert_eq!(&spec, f, "order {order:?}"),
        }
        tenants
            .delete(&name, &Default::default())
            .await
            .expect("delete tenant");
    }
}

#[tokio::test]
async fn concurrent_workers_claim_an_event_once() {
    let (worker, pool, client) = setup().await;
    apply_platform(&client, &example("leadsite-io")).await;
    let (cus, sub) = ids();
    store(
        &pool,
        &lifecycle(&cus, &sub, chrono::Utc::now().timestamp())[0],
    )
    .await;
    let runs = (0..8).map(|_| {
        let w = worker.clone();
        async move { w.process_one().await.expect("process") }
    });
    let results = futures::future::join_all(runs).await;
    assert_eq!(
        results.iter().filter(|r| r.is_some()).count(),
        1,
        "{results:?}"
    );
    let (state, attempts): (String, i32) =
        sqlx::query_as("SELECT state, attempts FROM stripe_events")
            .fetch_one(&pool)
            .await
            .expect("row");
    assert_eq!((state.as_str(), attempts), ("applied", 1));
    let name = stackplane_crds::naming::tenant_name("leadsite-io", &cus);
    let tenant = Api::<Tenant>::all(client).get(&name).await.expect("tenant");
    assert_eq!(tenant.metadata.generation, Some(1));
}

#[tokio::test]
async fn a_worker_dying_mid_event_leaves_it_to_be_applied_exactly_once() {
    let (worker, pool, client) = setup().await;
    apply_platform(&client, &example("leadsite-io")).await;
    let (cus, sub) = ids();
    let event = lifecycle(&cus, &sub, chrono::Utc::now().timestamp())[0].clone();
    store(&pool, &event).await;
    // A worker claims the event and dies before committing: its transaction holds the row lock.
    let mut dying = pool.begin().await.expect("begin");
    let claimed: Option<String> = sqlx::query_scalar(
        "SELECT id FROM stripe_events WHERE state = 'pending' FOR UPDATE SKIP LOCKED",
    )
    .fetch_optional(&mut *dying)
    .await
    .expect("claim");
    assert!(claimed.is_some());
    // While it is held, another worker skips it.
    assert!(worker.process_one().await.expect("process").is_none());
    drop(dying);
    // After the crash (rollback), a new worker applies it.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let restarted = Worker {
        metrics: Metrics::new(),
        ..worker.clone()
    };
    drain(&restarted).await;
    let (state, attempts): (String, i32) =
        sqlx::query_as("SELECT state, attempts FROM stripe_events")
            .fetch_one(&pool)
            .await
            .expect("row");
    assert_eq!((state.as_str(), attempts), ("applied", 1));
    let name = stackplane_crds::naming::tenant_name("leadsite-io", &cus);
    let tenant = Api::<Tenant>::all(client).get(&name).await.expect("tenant");
    assert_eq!(tenant.metadata.generation, Some(1));
}

/// With `Worker::run` running (nothing calls its retry trigger directly), a checkout naming a
/// Platform that does not exist yet fails and is recorded; the Platform, applied later, makes
/// the worker apply the event by itself, even when the event's backoff is far in the future.
#[tokio::test]
async fn the_running_worker_applies_a_checkout_once_its_platform_exists() {
    let (worker, pool, client) = setup().await;
    let (cus, sub) = ids();
    let price = format!("price_{}", unique("p").replace('-', ""));
    let event_id = unique("evt_loop");
    let t = chrono::Utc::now().timestamp();
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.clone().run(wake.clone(), async {
        let _ = stopped.await;
    }));
    let pname = unique("tackle");
    store(&pool, &json!({"id": event_id, "object": "event", "type": "checkout.session.completed", "created": t,
        "data": {"object": {"id": "cs_test_1", "object": "checkout.session", "mode": "subscription",
            "customer": cus, "subscription": sub, "payment_status": "paid",
            "customer_details": {"email": "later@example.com"},
            "metadata": {"platform": pname, "tier": "starter"}}}})).await;
    wake.notify_one();

    let row = |pool: sqlx::PgPool| async move {
        sqlx::query_as::<_, (String, Option<String>, Option<String>, i32)>(
            "SELECT state, error_kind, last_error, attempts FROM stripe_events",
        )
        .fetch_one(&pool)
        .await
        .expect("row")
    };
    let wait_for = |want: &'static str| {
        let pool = pool.clone();
        async move {
            tokio::time::timeout(std::time::Duration::from_secs(30), async {
                loop {
                    let r = row(pool.clone()).await;
                    if r.0 == want {
                        return r;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("the event never became {want}"))
        }
    };
    let (_, kind, error, attempts) = wait_for("failed").await;
    assert_eq!(kind.as_deref(), Some("unknown_platform_tier"));
    assert!(error.unwrap_or_default().contains(&pname));
    assert!(attempts >= 1);
    // As after many failures: the next attempt is an hour away. Only the Platform change can
    // bring it forward.
    sqlx::query("UPDATE stripe_events SET next_attempt_at = now() + interval '1 hour'")
        .execute(&pool)
        .await
        .expect("push back");
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(
        row(pool.clone()).await.0,
        "failed",
        "still waiting for a Platform"
    );

    let mut platform = example("tackle");
    platform.metadata.name = Some(pname.clone());
    platform.spec.tiers[0].stripe_price_ids = vec![price.clone()];
    for tier in platform.spec.tiers.iter_mut().skip(1) {
        tier.stripe_price_ids = vec![format!("{price}{}", tier.name)];
    }
    apply_platform(&client, &platform).await;
    let (_, kind, error, _) = wait_for("applied").await;
    assert_eq!((kind, error), (None, None));
    let name = stackplane_crds::naming::tenant_name(&pname, &cus);
    let tenant = Api::<Tenant>::all(client.clone())
        .get(&name)
        .await
        .expect("tenant exists");
    assert_eq!(tenant.spec.tier, platform.spec.tiers[0].name);

    let _ = stop.send(());
    running.await.expect("worker stops");
    Api::<Tenant>::all(client.clone())
        .delete(&name, &Default::default())
        .await
        .expect("cleanup tenant");
    Api::<Platform>::all(client)
        .delete(&pname, &Default::default())
        .await
        .expect("cleanup platform");
}

fn sub_event(
    id: &str,
    ty: &str,
    created: i64,
    (cus, sub): (&str, &str),
    status: &str,
    sub_created: i64,
) -> serde_json::Value {
    json!({"id": id, "object": "event", "type": ty, "created": created, "livemode": false,
        "data": {"object": {"id": sub, "object": "subscription", "customer": cus, "status": status,
            "created": sub_created, "trial_end": created + 259_200,
            "ended_at": if ty.ends_with("deleted") { json!(created) } else { json!(null) },
            "items": {"object": "list", "data": [{"id": "si_1", "current_period_end": created + 2_592_000,
                "price": {"id": "price_1LeadsiteIoStarterMonthly"}}]}}}})
}

/// The governing subscription on webhook payloads alone (no Stripe reads): whatever order
/// the old subscription's created and deleted and the new one's created arrive in, the Tenant
/// ends up running the new subscription, its `cancelledAt` cleared.
#[tokio::test]
async fn every_order_of_old_created_old_deleted_new_created_runs_the_new_subscription() {
    let (worker, pool, client) = setup().await;
    apply_platform(&client, &example("leadsite-io")).await;
    let tenants = Api::<Tenant>::all(client.clone());
    let t = chrono::Utc::now().timestamp();
    for order in permutations(3) {
        let (cus, old) = ids();
        let new = format!("{old}new");
        let events = [
            sub_event(
                &unique("evt_oc"),
                "customer.subscription.created",
                t,
                (&cus, &old),
                "active",
                t,
            ),
            sub_event(
                &unique("evt_od"),
                "customer.subscription.deleted",
                t + 100,
                (&cus, &old),
                "canceled",
                t,
            ),
            sub_event(
                &unique("evt_nc"),
                "customer.subscription.created",
                t + 200,
                (&cus, &new),
                "active",
                t + 200,
            ),
        ];
        for i in &order {
            store(&pool, &events[*i]).await;
            drain(&worker).await;
        }
        let name = stackplane_crds::naming::tenant_name("leadsite-io", &cus);
        let tenant = tenants.get(&name).await.expect("tenant");
        let s = tenant.spec.subscription.as_ref().expect("subscription");
        assert_eq!(s.id, new, "order {order:?}");
        assert_eq!(s.status, SubscriptionStatus::Active, "order {order:?}");
        assert!(
            !tenant.spec.suspended && tenant.spec.cancelled_at.is_none(),
            "order {order:?}: {:?}",
            tenant.spec
        );
        tenants
            .delete(&name, &Default::default())
            .await
            .expect("delete tenant");
    }
}

/// Paused and resumed suspend and resume (data kept); trial_will_end records an Event on the
/// Tenant and `TrialEnding` with the date; invoice.payment_action_required marks the payment
/// overdue with that reason; an event of the other Stripe mode is failed and never applied.
#[tokio::test]
async fn events_a_subscription_business_sends() {
    let (worker, pool, client) = setup().await;
    apply_platform(&client, &example("leadsite-io")).await;
    let worker = worker.with_livemode(Some(false));
    let tenants = Api::<Tenant>::all(client.clone());
    let (cus, sub) = ids();
    let name = stackplane_crds::naming::tenant_name("leadsite-io", &cus);
    let t = chrono::Utc::now().timestamp();
    let ev = |n: i64, ty: &str, status: &str| {
        sub_event(
            &format!("evt_{sub}_{n}"),
            ty,
            t + n,
            (&cus, &sub),
            status,
            t,
        )
    };
    store(&pool, &ev(0, "customer.subscription.created", "trialing")).await;
    store(
        &pool,
        &ev(1, "customer.subscription.trial_will_end", "trialing"),
    )
    .await;
    drain(&worker).await;
    let tenant = tenants.get(&name).await.expect("tenant");
    let trial = tenant
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "TrialEnding"))
        .expect("TrialEnding");
    assert_eq!(trial.status, "True");
    let end = chrono::DateTime::from_timestamp(t + 1 + 259_200, 0)
        .expect("time")
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert!(
        trial.message.contains(&end),
        "{} should name {end}",
        trial.message
    );
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "default");
    let listed = events.list(&Default::default()).await.expect("events");
    assert!(
        listed
            .items
            .iter()
            .any(|e| e.involved_object.name.as_deref() == Some(name.as_str())
                && e.reason.as_deref() == Some("TrialWillEnd")),
        "a TrialWillEnd Event about {name}"
    );

    store(&pool, &ev(2, "customer.subscription.paused", "paused")).await;
    drain(&worker).await;
    let tenant = tenants.get(&name).await.expect("tenant");
    assert!(tenant.spec.suspended && tenant.spec.cancelled_at.is_none());
    store(&pool, &ev(3, "customer.subscription.resumed", "active")).await;
    drain(&worker).await;
    let tenant = tenants.get(&name).await.expect("tenant");
    assert!(!tenant.spec.suspended && tenant.spec.cancelled_at.is_none());
    assert!(
        tenant.status.as_ref().is_some_and(|s| s
            .conditions
            .iter()
            .any(|c| c.type_ == "TrialEnding" && c.status == "False")),
        "no trial ending once active"
    );

    store(&pool, &json!({"id": format!("evt_{sub}_4"), "object": "event", "type": "invoice.payment_action_required",
        "created": t + 4, "livemode": false,
        "data": {"object": {"id": "in_1", "object": "invoice", "customer": cus, "subscription": sub}}})).await;
    drain(&worker).await;
    let tenant = tenants.get(&name).await.expect("tenant");
    let notes = tenant.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        notes
            .get(stackplane_core::contract::labels::PAYMENT_OVERDUE)
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(
        notes
            .get(stackplane_core::contract::labels::PAYMENT_OVERDUE_REASON)
            .map(String::as_str),
        Some("payment_action_required")
    );
    assert!(!tenant.spec.suspended);

    let live_id = format!("evt_{sub}_live");
    let mut live = ev(5, "customer.subscription.deleted", "canceled");
    live["id"] = json!(live_id);
    live["livemode"] = json!(true);
    store(&pool, &live).await;
    drain(&worker).await;
    let (state, kind, error, due_later): (String, Option<String>, Option<String>, bool) = sqlx::query_as(
        "SELECT state, error_kind, last_error, next_attempt_at > now() + interval '1 year' FROM stripe_events WHERE id = $1",
    )
    .bind(&live_id)
    .fetch_one(&pool)
    .await
    .expect("row");
    assert_eq!(
        (state.as_str(), kind.as_deref()),
        ("failed", Some("livemode_mismatch"))
    );
    assert!(
        error.unwrap_or_default().contains("livemode"),
        "a clear error"
    );
    assert!(due_later, "never retried by itself");
    let tenant = tenants.get(&name).await.expect("tenant");
    assert!(tenant.spec.cancelled_at.is_none(), "never applied");
    tenants
        .delete(&name, &Default::default())
        .await
        .expect("cleanup");
}
