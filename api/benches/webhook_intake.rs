//! Webhook intake throughput and latency at 64 concurrent senders against the real Postgres
//! (`DATABASE_URL` from the test harness), next to Postgres's own single-row INSERT rate measured
//! in the same run: 64 connections, one autocommitted INSERT of the same row shape each.
//!
//! Run: `source $run/env.sh && cargo bench -p stackplane-api --bench webhook_intake`
//! (`BENCH_EVENTS_PER_SENDER`, default 300, sets the size of each phase).
//!
//! The intake phase runs the real router (signature check, envelope parse, idempotent INSERT,
//! JSON answer) over loopback HTTP with its production pool (16 connections); the senders are
//! in the same process and share the machine's cores with the server and Postgres. Rate limits
//! are raised out of the way: this measures intake, not the limiter. No billing worker runs.

// The event below is one large json! literal.
#![recursion_limit = "256"]

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use stackplane_api::config::Secrets;
use stackplane_api::hardening::HardeningArgs;
use stackplane_api::metrics::Metrics;
use stackplane_api::server::{router_with, AppState, BillingState, RouterOptions};

const SENDERS: usize = 64;
const SECRET: &str = "whsec_bench_secret";

fn sign(payload: &str, t: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("hmac key");
    mac.update(format!("{t}.{payload}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// A `customer.subscription.updated` event shaped as Stripe sends it (~1.5 KB).
fn event(run: &str, sender: usize, n: usize, t: i64) -> (String, String) {
    let id = format!("evt_{run}{sender:02}x{n:05}");
    let body = serde_json::json!({
        "id": id, "object": "event", "api_version": "2025-03-31.basil", "created": t,
        "livemode": false, "pending_webhooks": 1,
        "request": {"id": format!("req_{run}{sender}{n}"), "idempotency_key": null},
        "type": "customer.subscription.updated",
        "data": {
            "object": {
                "id": format!("sub_{run}{sender:02}{n:05}"), "object": "subscription",
                "customer": format!("cus_{run}{sender:02}{n:05}"), "status": "active",
                "cancel_at_period_end": false, "collection_method": "charge_automatically",
                "currency": "usd", "created": t - 86_400, "start_date": t - 86_400,
                "metadata": {"platform": "leadsite-io", "tier": "professional"},
                "items": {"object": "list", "has_more": false, "url": "/v1/subscription_items",
                    "data": [{"id": format!("si_{run}{n}"), "object": "subscription_item",
                        "current_period_start": t - 86_400, "current_period_end": t + 2_505_600,
                        "quantity": 1, "metadata": {},
                        "price": {"id": "price_1LeadsiteIoProfessionalMonthly", "object": "price",
                            "active": true, "currency": "usd", "unit_amount": 9900,
                            "recurring": {"interval": "month", "interval_count": 1,
                                "usage_type": "licensed"},
                            "product": "prod_LeadsiteIo", "type": "recurring"}}]}
            },
            "previous_attributes": {"status": "past_due"}
        }
    })
    .to_string();
    let signature = sign(&body, t);
    (body, signature)
}

struct Figures {
    count: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Figures {
    fn per_second(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile(&self, p: f64) -> Duration {
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i]
    }
    fn print(&self, what: &str) {
        println!(
            "{what}: {} in {:.2} s = {:.0}/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.count,
            self.elapsed.as_secs_f64(),
            self.per_second(),
            self.percentile(0.50).as_secs_f64() * 1000.0,
            self.percentile(0.99).as_secs_f64() * 1000.0,
            self.latencies
                .last()
                .copied()
                .unwrap_or_default()
                .as_secs_f64()
                * 1000.0,
        );
    }
}

fn collect(elapsed: Duration, per_sender: Vec<Vec<Duration>>) -> Figures {
    let mut latencies: Vec<Duration> = per_sender.into_iter().flatten().collect();
    latencies.sort();
    Figures {
        count: latencies.len(),
        elapsed,
        latencies,
    }
}

async fn intake(db: sqlx::PgPool, run: &str, per_sender: usize) -> Figures {
    let state = AppState {
        db: db.clone(),
        metrics: Metrics::new(),
        billing: Arc::new(BillingState {
            secrets: Secrets::from_values(Some(SECRET), Some("sk_test_bench"), Some("bench"))
                .expect("secrets"),
            wake: Default::default(),
        }),
    };
    let unlimited = NonZeroU32::MAX;
    let options = RouterOptions {
        hardening: HardeningArgs {
            webhook_rate_limit_per_second: unlimited,
            webhook_rate_limit_burst: unlimited,
            ..HardeningArgs::default()
        },
        ..RouterOptions::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "http://{}/webhooks/stripe",
        listener.local_addr().expect("addr")
    );
    let app = router_with(state, options).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Signed up front: signing is Stripe's work, not the intake's.
    let t = chrono::Utc::now().timestamp();
    let batches: Vec<Vec<(String, String)>> = (0..SENDERS)
        .map(|s| (0..per_sender).map(|n| event(run, s, n, t)).collect())
        .collect();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(SENDERS)
        .build()
        .expect("client");
    // Warm-up: connections and the server's pool.
    for (body, sig) in batches[0].iter().take(1) {
        http.post(&url)
            .header("Stripe-Signature", sig)
            .body(body.clone())
            .send()
            .await
            .expect("warm-up");
    }
    let started = Instant::now();
    let senders = batches.into_iter().map(|batch| {
        let http = http.clone();
        let url = url.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(batch.len());
            for (body, sig) in batch {
                let sent = Instant::now();
                let resp = http
                    .post(&url)
                    .header("Stripe-Signature", sig)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("send");
                assert_eq!(resp.status().as_u16(), 200, "intake refused an event");
                resp.bytes().await.expect("body");
                latencies.push(sent.elapsed());
            }
            latencies
        })
    });
    let per_sender = futures::future::join_all(senders)
        .await
        .into_iter()
        .map(|r| r.expect("sender"))
        .collect();
    let figures = collect(started.elapsed(), per_sender);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM stripe_events")
        .fetch_one(&db)
        .await
        .expect("count");
    // The warm-up event is sent twice (once as a duplicate), so every event is stored once.
    assert_eq!(
        stored as usize, figures.count,
        "every event stored exactly once"
    );
    figures
}

async fn postgres_inserts(url: &str, run: &str, per_sender: usize) -> Figures {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(SENDERS as u32)
        .min_connections(SENDERS as u32)
        .connect(url)
        .await
        .expect("connect");
    sqlx::query(
        "CREATE TABLE bench_scratch (id TEXT PRIMARY KEY, event_type TEXT NOT NULL, \
         created TIMESTAMPTZ NOT NULL, payload JSONB NOT NULL)",
    )
    .execute(&pool)
    .await
    .expect("scratch table");
    let t = chrono::Utc::now().timestamp();
    let batches: Vec<Vec<(String, serde_json::Value)>> = (0..SENDERS)
        .map(|s| {
            (0..per_sender)
                .map(|n| {
                    let (body, _) = event(&format!("{run}pg"), s, n, t);
                    let value: serde_json::Value = serde_json::from_str(&body).expect("json");
                    (value["id"].as_str().unwrap_or_default().to_owned(), value)
                })
                .collect()
        })
        .collect();
    let started = Instant::now();
    let writers = batches.into_iter().map(|batch| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut conn = pool.acquire().await.expect("connection");
            let mut latencies = Vec::with_capacity(batch.len());
            for (id, payload) in batch {
                let sent = Instant::now();
                sqlx::query(
                    "INSERT INTO bench_scratch (id, event_type, created, payload) \
                     VALUES ($1, 'customer.subscription.updated', to_timestamp($2), $3) \
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(&id)
                .bind(t as f64)
                .bind(&payload)
                .execute(&mut *conn)
                .await
                .expect("insert");
                latencies.push(sent.elapsed());
            }
            latencies
        })
    });
    let per_writer = futures::future::join_all(writers)
        .await
        .into_iter()
        .map(|r| r.expect("writer"))
        .collect();
    let figures = collect(started.elapsed(), per_writer);
    pool.close().await;
    figures
}

#[tokio::main]
async fn main() {
    let per_sender: usize = std::env::var("BENCH_EVENTS_PER_SENDER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let (db, db_url) = stackplane_tests::fresh_database().await;
    stackplane_api::db::migrate(&db).await.expect("migrate");
    db.close().await;
    let run = stackplane_tests::unique("b").replace('-', "");
    println!(
        "webhook intake benchmark: {SENDERS} concurrent senders x {per_sender} events, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let baseline = postgres_inserts(&db_url, &run, per_sender).await;
    baseline.print("postgres single-row INSERT (64 connections)");
    let pool = stackplane_api::db::connect(&db_url).await.expect("connect");
    let api = intake(pool, &run, per_sender).await;
    api.print("POST /webhooks/stripe (64 senders, api pool of 16)");
    println!(
        "intake / postgres insert rate: {:.2}",
        api.per_second() / baseline.per_second()
    );
}
