//! Webhook intake throughput and latency at 64 concurrent senders against the real Postgres
//! (`DATABASE_URL` from the test harness), next to Postgres's own single-row INSERT rate measured
//! in the same run: 64 connections, one autocommitted INSERT of the same row shape each.
//!
//! Run: `source $run/env.sh && cargo bench --workspace --bench webhook_intake`
//! (`BENCH_EVENTS_PER_SENDER`, default 300, sets the size of each phase; under `cargo test
//! --workspace --bench webhook_intake`, make test's smoke run, 5).
//!
//! The intake phase runs the real router (signature check, envelope parse, idempotent INSERT by
//! group commit, JSON answer) over loopback HTTP with its production pool (16 connections); the
//! senders are an external load generator (`wrk`, 64 connections, every event signed up front
//! and sent once) sharing the machine's cores with the server and Postgres. Rate limits are
//! raised out of the way: this measures intake, not the limiter. No billing worker runs.

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
use stackplane_tests::bench::{self, knob, Row};

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

async fn intake(db: sqlx::PgPool, run: &str, per_sender: usize) -> bench::Wrk {
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

    // Signed up front (signing is Stripe's work, not the intake's), one line per event for the
    // load generator: `signature<TAB>body`.
    let t = chrono::Utc::now().timestamp();
    let file = bench::scratch_file("events.tsv");
    let mut lines = String::new();
    let mut expected = 0usize;
    for s in 0..SENDERS {
        for n in 0..per_sender {
            let (body, sig) = event(run, s, n, t);
            lines.push_str(&sig);
            lines.push('\t');
            lines.push_str(&body);
            lines.push('\n');
            expected += 1;
        }
    }
    std::fs::write(&file, lines).expect("events file");
    let path = file.to_string_lossy().into_owned();
    let counter = db.clone();
    let runtime = tokio::runtime::Handle::current();
    let wrk = tokio::task::spawn_blocking(move || {
        // Stopped once every event is stored (wrk's `-d` is only an upper bound).
        bench::wrk_until(&url, SENDERS, 600, SCRIPT, &[&path, "2"], || {
            runtime
                .block_on(
                    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM stripe_events")
                        .fetch_one(&counter),
                )
                .is_ok_and(|n| n as usize >= expected)
        })
    })
    .await
    .expect("wrk");
    bench::clean_scratch();
    assert_eq!(
        wrk.status_errors + wrk.socket_errors,
        0,
        "intake refused events: {wrk:?}"
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM stripe_events")
        .fetch_one(&db)
        .await
        .expect("count");
    // Each thread may send up to its connections' worth again after its share (duplicates,
    // answered without a row): every event is stored exactly once.
    assert_eq!(stored as usize, expected, "every event stored exactly once");
    assert!(
        wrk.requests as usize >= expected,
        "every event sent: {wrk:?}"
    );
    wrk
}

/// Each of wrk's 2 threads reads its half of the events file and sends each event once (wrk
/// is stopped once all are stored; a request sent past the end repeats an event: a duplicate,
/// not a new row).
const SCRIPT: &str = r#"
local reqs = {}
local threads = 0
local sent = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end
function init(args)
  local nthreads = tonumber(args[2])
  local i = 0
  for line in io.lines(args[1]) do
    if i % nthreads == id then
      local sig, body = line:match("^([^\t]*)\t(.*)$")
      reqs[#reqs + 1] = wrk.format("POST", "/webhooks/stripe",
        {["Stripe-Signature"] = sig, ["Content-Type"] = "application/json"}, body)
    end
    i = i + 1
  end
end
function request()
  sent = sent + 1
  return reqs[((sent - 1) % #reqs) + 1]
end
"#;

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
    let per_sender = knob("BENCH_EVENTS_PER_SENDER", 300, 5);
    let (db, db_url) = stackplane_tests::fresh_database().await;
    stackplane_api::db::migrate(&db).await.expect("migrate");
    db.close().await;
    let run = stackplane_tests::unique("b").replace('-', "");
    let load_pg = bench::loadavg();
    let baseline = postgres_inserts(&db_url, &run, per_sender).await;
    let pool = stackplane_api::db::connect(&db_url).await.expect("connect");
    let load_api = bench::loadavg();
    let api = intake(pool, &run, per_sender).await;
    assert!(
        baseline.count > 0 && baseline.per_second() > 0.0,
        "no baseline"
    );
    assert!(
        api.per_second() > 0.0 && api.p99_us > 0,
        "no intake figures: {api:?}"
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let rows = [
        Row::new(
            format!(
                "Postgres single-row INSERT, {SENDERS} connections, {} rows (baseline)",
                baseline.count
            ),
            format!(
                "{:.0}/s (p50 {:.2} ms, p99 {:.2} ms)",
                baseline.per_second(),
                ms(baseline.percentile(0.50)),
                ms(baseline.percentile(0.99))
            ),
        )
        .load(load_pg),
        Row::new(
            format!(
                "POST /webhooks/stripe, {SENDERS} senders (wrk), {} events",
                SENDERS * per_sender
            ),
            api.describe().replace("req/s", "events/s"),
        )
        .baseline(
            format!("{:.0}/s INSERT", baseline.per_second()),
            api.per_second() / baseline.per_second(),
        )
        .target(">= 0.5")
        .load(load_api),
    ];
    bench::print_table("webhook_intake", &rows);
}
