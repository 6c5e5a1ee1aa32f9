//! Stripe webhook intake against the real Postgres the harness starts.

use std::sync::Arc;

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use stackplane_api::config::Secrets;
use stackplane_api::db::MIGRATOR;
use stackplane_api::metrics::Metrics;
use stackplane_api::server::{router, AppState, BillingState};
use stackplane_tests::{fresh_database, unique};

const SECRET_A: &str = "whsec_test_old_secret";
const SECRET_B: &str = "whsec_test_new_secret";

/// `Stripe-Signature` exactly as Stripe computes it.
fn sign(payload: &str, secret: &str, t: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac key");
    mac.update(format!("{t}.{payload}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn start() -> (String, sqlx::PgPool) {
    let (pool, _) = fresh_database().await;
    MIGRATOR.run(&pool).await.expect("migrate");
    let secrets = Secrets::from_values(
        Some(&format!("{SECRET_A},{SECRET_B}")),
        Some("sk_test_123"),
        Some("admin-token-for-tests"),
    )
    .expect("secrets");
    let state = AppState {
        db: pool.clone(),
        metrics: Metrics::new(),
        billing: Arc::new(BillingState {
            secrets,
            wake: Default::default(),
        }),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    (format!("http://{addr}"), pool)
}

fn subscription_event(id: &str, created: i64) -> String {
    json!({
        "id": id, "object": "event", "api_version": "2025-03-31.basil", "created": created,
        "livemode": false, "pending_webhooks": 1, "request": {"id": null, "idempotency_key": null},
        "type": "customer.subscription.created",
        "data": {"object": {
            "id": "sub_1TestSub", "object": "subscription", "customer": "cus_TestCustomer",
            "status": "active", "metadata": {},
            "items": {"object": "list", "data": [{"id": "si_1", "object": "subscription_item",
                "current_period_end": created + 2_592_000,
                "price": {"id": "price_1LeadsiteIoStarterMonthly", "object": "price"}}]}
        }}
    })
    .to_string()
}

async fn post(base: &str, body: String, signature: Option<String>) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/webhooks/stripe"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(s) = signature {
        req = req.header("Stripe-Signature", s);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

async fn stored(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM stripe_events")
        .fetch_one(pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn rejected_deliveries_answer_4xx_with_a_reason_and_store_nothing() {
    let (base, pool) = start().await;
    let payload = subscription_event(&unique("evt").replace('-', ""), now());
    let t = now();
    let cases = [
        (
            "missing signature",
            payload.clone(),
            None,
            400,
            "missing_signature",
        ),
        (
            "bad signature",
            payload.clone(),
            Some(format!("t={t},v1={}", "ab".repeat(32))),
            400,
            "signature_mismatch",
        ),
        (
            "wrong secret",
            payload.clone(),
            Some(sign(&payload, "whsec_someone_else", t)),
            400,
            "signature_mismatch",
        ),
        (
            "stale timestamp",
            payload.clone(),
            Some(sign(&payload, SECRET_A, t - 301)),
            400,
            "stale_timestamp",
        ),
        (
            "malformed JSON",
            "{not json".to_owned(),
            Some(sign("{not json", SECRET_A, t)),
            400,
            "malformed_json",
        ),
    ];
    for (what, body, sig, status, code) in cases {
        let (got, error) = post(&base, body, sig).await;
        assert_eq!(got, status, "{what}: {error}");
        assert_eq!(error["error"]["code"], code, "{what}: {error}");
        assert!(error["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(300 * 1024));
    let (got, error) = post(&base, big.clone(), Some(sign(&big, SECRET_A, t))).await;
    assert_eq!(got, 413, "oversized: {error}");
    assert_eq!(stored(&pool).await, 0, "nothing stored on rejection");
}

#[tokio::test]
async fn events_signed_with_either_secret_are_stored() {
    let (base, pool) = start().await;
    for secret in [SECRET_A, SECRET_B] {
        let payload = subscription_event(&unique("evt").replace('-', ""), now());
        let (got, body) = post(&base, payload.clone(), Some(sign(&payload, secret, now()))).await;
        assert_eq!(got, 200, "{body}");
    }
    assert_eq!(stored(&pool).await, 2);
    let sub: Option<String> =
        sqlx::query_scalar("SELECT subscription_id FROM stripe_events LIMIT 1")
            .fetch_one(&pool)
            .await
            .expect("read");
    assert_eq!(sub.as_deref(), Some("sub_1TestSub"));
}

#[tokio::test]
async fn the_same_event_delivered_ten_times_concurrently_is_stored_once() {
    let (base, pool) = start().await;
    let payload = subscription_event(&unique("evt").replace('-', ""), now());
    let sig = sign(&payload, SECRET_B, now());
    let sends = (0..10).map(|_| post(&base, payload.clone(), Some(sig.clone())));
    let results = futures::future::join_all(sends).await;
    assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
    let duplicates = results
        .iter()
        .filter(|(_, b)| b["duplicate"] == true)
        .count();
    assert_eq!(duplicates, 9, "{results:?}");
    assert_eq!(stored(&pool).await, 1);
    // Each delivery has its audit row, written by the intake's statement with the event: the
    // one stored, nine duplicates (within one batch or against the stored row).
    let id = serde_json::from_str::<serde_json::Value>(&payload).expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let rows: Vec<(String, String, Option<String>, bool)> = sqlx::query_as(
        "SELECT actor, outcome, target, (details->>'duplicate')::bool FROM audit_log
         WHERE action = 'stripe.webhook' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .expect("audit");
    assert_eq!(rows.len(), 10, "{rows:?}");
    assert!(
        rows.iter()
            .all(|(a, o, t, _)| a == "stripe" && o == "success" && t.as_deref() == Some(&id)),
        "{rows:?}"
    );
    assert_eq!(rows.iter().filter(|r| !r.3).count(), 1, "{rows:?}");
}

#[tokio::test]
async fn replay_requires_the_admin_token_requeues_and_writes_the_audit_log() {
    let (base, pool) = start().await;
    let id = unique("evt").replace('-', "");
    let payload = subscription_event(&id, now());
    let (got, _) = post(
        &base,
        payload.clone(),
        Some(sign(&payload, SECRET_A, now())),
    )
    .await;
    assert_eq!(got, 200);
    sqlx::query("UPDATE stripe_events SET state = 'failed', last_error = 'x', next_attempt_at = now() + interval '1 hour'")
        .execute(&pool)
        .await
        .expect("fail it");
    let http = reqwest::Client::new();
    let url = format!("{base}/api/v1/billing/events/{id}/replay");
    assert_eq!(
        http.post(&url)
            .send()
            .await
            .expect("send")
            .status()
            .as_u16(),
        401
    );
    let resp = http
        .post(&url)
        .bearer_auth("admin-token-for-tests")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 202);
    let (state, due): (String, bool) =
        sqlx::query_as("SELECT state, next_attempt_at <= now() FROM stripe_events")
            .fetch_one(&pool)
            .await
            .expect("row");
    assert_eq!((state.as_str(), due), ("pending", true));
    // One row per call: the refused one as anonymous (by the audit middleware), the replay
    // as the admin (by the replay itself, in its transaction).
    let audit: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT actor, target, outcome FROM audit_log WHERE action = 'billing.replay' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .expect("audit rows");
    assert_eq!(
        audit,
        [
            (
                "anonymous".into(),
                format!("/api/v1/billing/events/{id}/replay"),
                "denied".into()
            ),
            ("admin".into(), id.clone(), "success".into())
        ]
    );
    let missing = http
        .post(format!("{base}/api/v1/billing/events/evt_nope/replay"))
        .bearer_auth("admin-token-for-tests")
        .send()
        .await
        .expect("send");
    assert_eq!(missing.status().as_u16(), 404);
}

/// `GET /api/v1/billing/events` lists the failed events (admin only, bad filters answer 400), and
/// `kubectl stackplane events --failed` and `replay` work against the same server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_events_are_listed_and_replayed_through_the_plugin() {
    let (base, pool) = start().await;
    let failed = unique("evt").replace('-', "");
    let parked = unique("evt").replace('-', "");
    for id in [&failed, &parked] {
        let payload = subscription_event(id, now());
        let (got, _) = post(
            &base,
            payload.clone(),
            Some(sign(&payload, SECRET_A, now())),
        )
        .await;
        assert_eq!(got, 200);
    }
    sqlx::query("UPDATE stripe_events SET state = 'failed', attempts = 3, error_kind = 'kube', last_error = 'the API server refused', next_attempt_at = now() + interval '1 hour' WHERE id = $1")
        .bind(&failed)
        .execute(&pool)
        .await
        .expect("fail one");
    sqlx::query("UPDATE stripe_events SET state = 'failed', attempts = 1, error_kind = 'unknown_price', last_error = 'no Platform lists price_x', next_attempt_at = 'infinity' WHERE id = $1")
        .bind(&parked)
        .execute(&pool)
        .await
        .expect("park one");
    let http = reqwest::Client::new();
    let url = format!("{base}/api/v1/billing/events");
    let anonymous = http.get(&url).send().await.expect("send");
    assert_eq!(anonymous.status().as_u16(), 401);
    let listed: serde_json::Value = http
        .get(&url)
        .bearer_auth("admin-token-for-tests")
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let items = listed["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{listed}");
    let by_id = |id: &str| {
        items
            .iter()
            .find(|e| e["id"] == json!(id))
            .unwrap_or_else(|| panic!("{id} in {listed}"))
            .clone()
    };
    let one = by_id(&failed);
    assert_eq!(one["attempts"], json!(3));
    assert_eq!(one["errorKind"], json!("kube"));
    assert_eq!(one["lastError"], json!("the API server refused"));
    assert!(one["nextAttemptAt"].is_string(), "{one}");
    assert!(
        by_id(&parked)["nextAttemptAt"].is_null(),
        "never due by itself"
    );
    for bad in [
        "state=lost",
        "limit=0",
        "limit=501",
        "limit=x",
        "colour=red",
    ] {
        let resp = http
            .get(format!("{url}?{bad}"))
            .bearer_auth("admin-token-for-tests")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status().as_u16(), 400, "{bad}");
    }

    let plugin = stackplane_tests::workspace_binary("kubectl-stackplane", "kubectl-stackplane");
    // Off the runtime's thread: the server this test serves must keep answering meanwhile.
    let run = |args: &[&str]| {
        let mut command = std::process::Command::new(&plugin);
        command
            .args(args)
            .env("STACKPLANE_API_URL", &base)
            .env("STACKPLANE_API_TOKEN", "admin-token-for-tests");
        async move {
            tokio::task::spawn_blocking(move || command.output().expect("run kubectl-stackplane"))
                .await
                .expect("join")
        }
    };
    let out = run(&["events", "--failed", "-o", "json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(shown["items"].as_array().map(Vec::len), Some(2), "{shown}");
    let out = run(&["events", "--failed"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&failed) && text.contains("kube: the API server refused"),
        "{text}"
    );
    let out = run(&["replay", &parked]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state: String = sqlx::query_scalar("SELECT state FROM stripe_events WHERE id = $1")
        .bind(&parked)
        .fetch_one(&pool)
        .await
        .expect("row");
    assert_eq!(state, "pending", "the replay queued it");
    let out = run(&["replay", "evt nope"]).await;
    assert_eq!(out.status.code(), Some(2));
}
