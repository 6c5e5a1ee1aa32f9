//! `GET /metrics` after real signed webhook deliveries, with the billing worker running against
//! the real Postgres and kube-apiserver.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};

use serde_json::json;
use sha2::Sha256;
use stackplane_api::billing::prices::PlatformCache;
use stackplane_api::billing::worker::Worker;
use stackplane_api::config::Secrets;
use stackplane_api::metrics::Metrics;
use stackplane_api::server::{router, AppState, BillingState};

use stackplane_tests::{fresh_database, install_crds, kube_client, unique};

const SECRET: &str = "whsec_metrics_test_secret";

fn sign(payload: &str, t: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("hmac key");
    mac.update(format!("{t}.{payload}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

fn subscription_created(id: &str, price: &str) -> String {
    let u = unique("m").replace('-', "");
    let t = chrono::Utc::now().timestamp();
    json!({
        "id": id, "object": "event", "api_version": "2025-03-31.basil", "created": t,
        "livemode": false, "type": "customer.subscription.created",
        "data": {"object": {"id": format!("sub_{u}"), "object": "subscription",
            "customer": format!("cus_{u}"), "status": "active", "metadata": {},
            "items": {"object": "list", "data": [{"id": "si_1", "object": "subscription_item",
                "current_period_end": t + 2_592_000, "price": {"id": price, "object": "price"}}]}}}
    })
    .to_string()
}

/// The value of the sample whose line starts with `series` (name and labels, exactly).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn metrics_show_webhooks_by_type_and_outcome_queue_depth_and_lag() {
    let kube = kube_client().await;
    install_crds(&kube).await;
    stackplane_tests::apply_example_platform(&kube, "leadsite-io.yaml").await;
    let (db, _) = fresh_database().await;
    stackplane_api::db::migrate(&db).await.expect("migrate");
    let state = AppState {
        db: db.clone(),
        metrics: Metrics::new(),
        billing: Arc::new(BillingState {
            secrets: Secrets::from_values(Some(SECRET), Some("sk_test_x"), Some("admin-x"))
                .expect("secrets"),
            wake: Default::default(),
        }),
    };
    let (prices, driver) = PlatformCache::start(kube.clone());
    tokio::spawn(driver);
    let worker = Worker::new(db.clone(), kube.clone(), prices, state.metrics.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(state.billing.wake.clone(), async {
        let _ = stopped.await;
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let internal = stackplane_api::health::router(stackplane_api::health::Internal {
        db: db.clone(),
        kube: None,
        metrics: state.metrics.clone(),
        health: Default::default(),
    });
    // The queue is sampled in the background; a scrape runs no query.
    tokio::spawn(
        state
            .metrics
            .clone()
            .sample_queue(db.clone(), Duration::from_millis(100)),
    );
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    let internal_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let internal_base = format!("http://{}", internal_listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(internal_listener, internal).await });

    let http = reqwest::Client::new();
    let deliver = |body: String, signature: String| {
        let http = http.clone();
        let url = format!("{base}/webhooks/stripe");
        async move {
            http.post(url)
                .header("Stripe-Signature", signature)
                .body(body)
                .send()
                .await
                .expect("send")
                .status()
                .as_u16()
        }
    };
    let now = chrono::Utc::now().timestamp();
    let good = subscription_created(
        &unique("evt_good").replace('-', ""),
        "price_1LeadsiteIoStarterMonthly",
    );
    let unpriced = subscription_created(
        &unique("evt_unpriced").replace('-', ""),
        &format!("price_{}", unique("nobody").replace('-', "")),
    );
    // A checkout naming a Platform that does not exist (yet): fails, waits for a Platform.
    let waiting = json!({"id": unique("evt_cs").replace('-', ""), "object": "event",
        "type": "checkout.session.completed", "created": now, "data": {"object": {
            "id": "cs_test_w", "object": "checkout.session", "mode": "subscription",
            "customer": "cus_Waiting1", "subscription": "sub_Waiting1", "payment_status": "paid",
            "metadata": {"platform": unique("nowhere"), "tier": "starter"}}}})
    .to_string();
    let other = json!({"id": unique("evt_ch").replace('-', ""), "object": "event",
        "type": "charge.succeeded", "created": now, "data": {"object": {"id": "ch_1", "object": "charge"}}})
    .to_string();
    assert_eq!(deliver(good.clone(), sign(&good, now)).await, 200);
    assert_eq!(deliver(good.clone(), sign(&good, now)).await, 200);
    assert_eq!(deliver(unpriced.clone(), sign(&unpriced, now)).await, 200);
    assert_eq!(deliver(waiting.clone(), sign(&waiting, now)).await, 200);
    assert_eq!(deliver(other.clone(), sign(&other, now)).await, 200);
    assert_eq!(deliver(other.clone(), "t=1,v1=00".into()).await, 400);
    assert_eq!(deliver(other.clone(), sign(&other, now - 600)).await, 400);

    // The worker settles every event: applied, skipped, ignored (the unpriced one: no product
    // sold here), or failed for want of a Platform (the checkout).
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let pending: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM stripe_events WHERE state = 'pending' OR attempts = 0",
            )
            .fetch_one(&db)
            .await
            .expect("count");
            if pending == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the worker processes every event");

    // /metrics is on the internal listener; the sampled queue depth catches up with the queue.
    let scrape = || {
        let http = http.clone();
        let url = format!("{internal_base}/metrics");
        async move {
            let text = http.get(url).send().await.ok()?.text().await.ok()?;
            (sample(&text, "stackplane_billing_queue_depth") == Some(1.0)).then_some(text)
        }
    };
    let text = stackplane_tests::eventually("the sampled queue depth", scrape).await;
    let public = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("send");
    assert_eq!(public.status().as_u16(), 404, "not on the public listener");
    let expect = [
        (
            r#"stackplane_webhook_events_total{event_type="customer.subscription.created",outcome="stored"}"#,
            2.0,
        ),
        (
            r#"stackplane_webhook_events_total{event_type="customer.subscription.created",outcome="duplicate"}"#,
            1.0,
        ),
        (
            r#"stackplane_webhook_events_total{event_type="charge.succeeded",outcome="stored"}"#,
            1.0,
        ),
        (
            r#"stackplane_webhook_events_total{event_type="unknown",outcome="signature_mismatch"}"#,
            1.0,
        ),
        (
            r#"stackplane_webhook_events_total{event_type="unknown",outcome="stale_timestamp"}"#,
            1.0,
        ),
        (
            r#"stackplane_billing_events_processed_total{event_type="customer.subscription.created",outcome="applied"}"#,
            1.0,
        ),
        (
            r#"stackplane_billing_events_processed_total{event_type="charge.succeeded",outcome="skipped"}"#,
            1.0,
        ),
        (
            r#"stackplane_billing_events_processed_total{event_type="customer.subscription.created",outcome="ignored"}"#,
            1.0,
        ),
        // The checkout waits for a Platform that has its platform and tier.
        ("stackplane_billing_queue_depth", 1.0),
        // Applied, skipped and ignored events were timed from receipt to completion.
        ("stackplane_billing_processing_lag_seconds_count", 3.0),
    ];
    for (series, value) in expect {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    assert!(
        sample(
            &text,
            r#"stackplane_billing_events_processed_total{event_type="checkout.session.completed",outcome="unknown_platform_tier"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    let oldest = sample(&text, "stackplane_billing_queue_oldest_seconds").expect("oldest");
    assert!(oldest > 0.0 && oldest < 600.0, "{oldest}");
    let lag_sum = sample(&text, "stackplane_billing_processing_lag_seconds_sum").expect("lag");
    assert!((0.0..60.0).contains(&lag_sum), "{lag_sum}");

    let _ = stop.send(());
    running.await.expect("worker stops");
}
