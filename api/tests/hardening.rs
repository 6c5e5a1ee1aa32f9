//! The hardening middleware on a real server (free port, real Postgres behind it): rate limits
//! trip and recover, security headers and request ids are on every response, and the request
//! id is in the log lines of the request.

use std::io::Write;

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use stackplane_api::config::Secrets;
use stackplane_api::hardening::HardeningArgs;
use stackplane_api::metrics::Metrics;
use stackplane_api::server::{router_with, AppState, BillingState, RouterOptions};
use stackplane_tests::fresh_database;

const ADMIN: &str = "hardening-admin-token";
const SECRET: &str = "whsec_h";

struct Server {
    base: String,
    db: sqlx::PgPool,
    metrics: Metrics,
}

async fn serve(args: HardeningArgs) -> String {
    start(args).await.base
}

async fn start(args: HardeningArgs) -> Server {
    logs();
    let (db, _) = fresh_database().await;
    stackplane_api::db::migrate(&db).await.expect("migrate");
    let metrics = Metrics::new();
    let state = AppState {
        db: db.clone(),
        metrics: metrics.clone(),
        billing: Arc::new(BillingState {
            secrets: Secrets::from_values(Some(SECRET), Some("sk_test_h"), Some(ADMIN))
                .expect("secrets"),
            wake: Default::default(),
        }),
    };
    let app = router_with(
        state,
        RouterOptions {
            hardening: args,
            ..RouterOptions::default()
        },
    );
    Server {
        base: stackplane_tests::serve_on_free_port(app).await,
        db,
        metrics,
    }
}

fn tight() -> HardeningArgs {
    HardeningArgs {
        address_rate_limit_per_second: NonZeroU32::MIN,
        address_rate_limit_burst: NonZeroU32::new(3).expect("3"),
        ..HardeningArgs::default()
    }
}

/// The harness's loopback peer is the "ingress controller": its X-Forwarded-For is believed.
fn behind_ingress(args: HardeningArgs) -> HardeningArgs {
    HardeningArgs {
        trusted_proxies: vec!["127.0.0.0/8".parse().expect("cidr")],
        ..args
    }
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).map(str::trim))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A log sink the test can read.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The process-wide log of this test binary. Global, not per test: tracing caches per call site
/// whether anyone listens, and tests on other threads without a subscriber would turn the
/// middleware's call sites off for a test-local one.
fn logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        logs
    })
}

#[tokio::test]
async fn the_address_limit_trips_with_retry_after_and_recovers_after_the_period() {
    let base = serve(tight()).await;
    let http = reqwest::Client::new();
    // A state-changing endpoint; without a token it answers 401 until the limit trips.
    let url = format!("{base}/api/v1/billing/events/evt_none/replay");
    for i in 0..3 {
        let resp = http.post(&url).send().await.expect("send");
        assert_eq!(
            resp.status().as_u16(),
            401,
            "request {i} is within the burst"
        );
    }
    let limited = http.post(&url).send().await.expect("send");
    assert_eq!(limited.status().as_u16(), 429);
    let retry_after: u64 = limited
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in whole seconds");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert!(limited.headers().contains_key("x-request-id"));
    assert_eq!(
        limited
            .headers()
            .get("x-content-type-options")
            .map(|v| v.as_bytes()),
        Some(&b"nosniff"[..])
    );
    let body: serde_json::Value = limited.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));

    // A guessed bearer token gets no bucket of its own: still the address's, still 429.
    let other = http
        .post(&url)
        .bearer_auth("some-other-token")
        .send()
        .await
        .expect("send");
    assert_eq!(other.status().as_u16(), 429);
    // The Stripe webhook is judged before it is limited.
    let webhook = http
        .post(format!("{base}/webhooks/stripe"))
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(
        webhook.status().as_u16(),
        400,
        "the webhook is judged, not throttled"
    );
    tokio::time::sleep(Duration::from_secs(retry_after) + Duration::from_millis(100)).await;
    let recovered = http.post(&url).send().await.expect("send");
    assert_eq!(recovered.status().as_u16(), 401, "the bucket refilled");
}

fn signed(event_id: &str) -> (String, String) {
    let payload = serde_json::json!({
        "id": event_id, "object": "event", "type": "invoice.paid",
        "created": chrono::Utc::now().timestamp(), "livemode": false,
        "data": {"object": {"object": "invoice", "id": "in_1"}}
    })
    .to_string();
    let sig = stackplane_tests::stripe_signature(&payload, SECRET, chrono::Utc::now().timestamp());
    (payload, sig)
}

#[tokio::test]
async fn a_scanner_on_the_webhook_cannot_starve_stripes_deliveries() {
    // Without trusted proxies every client is the ingress controller's address: the scanner
    // and Stripe share it.
    let server = start(HardeningArgs {
        webhook_invalid_per_minute: NonZeroU32::MIN,
        webhook_invalid_burst: NonZeroU32::new(2).expect("2"),
        webhook_rate_limit_per_second: NonZeroU32::MIN,
        webhook_rate_limit_burst: NonZeroU32::new(50).expect("50"),
        ..HardeningArgs::default()
    })
    .await;
    let http = reqwest::Client::new();
    let url = format!("{}/webhooks/stripe", server.base);
    let mut scanner = Vec::new();
    for i in 0..6 {
        let (payload, _) = signed(&format!("evt_forged_{i}"));
        let resp = http
            .post(&url)
            .header(
                "stripe-signature",
                format!("t={},v1=00", chrono::Utc::now().timestamp()),
            )
            .body(payload)
            .send()
            .await
            .expect("send");
        scanner.push(resp.status().as_u16());
    }
    assert_eq!(scanner, [400, 400, 429, 429, 429, 429]);
    // Stripe's validly signed deliveries from the same address are stored, every one.
    for i in 0..20 {
        let (payload, sig) = signed(&format!("evt_real_{i}"));
        let resp = http
            .post(&url)
            .header("stripe-signature", sig)
            .body(payload)
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status().as_u16(), 200, "delivery {i}");
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM stripe_events")
        .fetch_one(&server.db)
        .await
        .expect("count");
    assert_eq!(stored, 20, "only the real deliveries are stored");
    let text = server.metrics.encode().expect("metrics");
    assert_eq!(
        sample(
            &text,
            "stackplane_api_rate_limited_total{bucket=\"webhook_invalid\"}"
        ),
        4.0,
        "{text}"
    );
    // Stripe's deliveries are audited as Stripe's; the scanner's refused ones as anonymous.
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT actor, outcome FROM audit_log WHERE action = 'stripe.webhook' ORDER BY id",
    )
    .fetch_all(&server.db)
    .await
    .expect("audit");
    assert_eq!(
        rows.iter()
            .filter(|(a, o)| a == "stripe" && o == "success")
            .count(),
        20
    );
    assert_eq!(
        rows.iter().filter(|(a, _)| a == "anonymous").count(),
        6,
        "{rows:?}"
    );
}

#[tokio::test]
async fn guessed_tokens_get_429_per_address_and_the_admin_keeps_working() {
    let server = start(behind_ingress(HardeningArgs {
        auth_failures_per_minute: NonZeroU32::MIN,
        auth_failures_burst: NonZeroU32::new(3).expect("3"),
        ..HardeningArgs::default()
    }))
    .await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/billing/events/evt_none/replay", server.base);
    let from = |client: &'static str, token: String| {
        http.post(&url)
            .header("x-forwarded-for", client)
            .bearer_auth(token)
            .send()
    };
    let mut guesser = Vec::new();
    for i in 0..6 {
        let resp = from("203.0.113.5", format!("spt_guess_{i}"))
            .await
            .expect("send");
        if resp.status().as_u16() == 429 {
            assert!(resp.headers().contains_key("retry-after"));
        }
        guesser.push(resp.status().as_u16());
    }
    assert_eq!(guesser, [401, 401, 401, 429, 429, 429]);
    // Another client behind the same ingress has its own failure bucket.
    let other = from("203.0.113.6", "spt_typo".to_owned())
        .await
        .expect("send");
    assert_eq!(other.status().as_u16(), 401);
    // The admin from the guesser's own address still gets through (known without a lookup).
    let admin = from("203.0.113.5", ADMIN.to_owned()).await.expect("send");
    assert_eq!(
        admin.status().as_u16(),
        404,
        "reached the handler: no such event"
    );
    // X-Forwarded-For from a peer that is not a trusted proxy is not believed.
    let direct = start(HardeningArgs {
        auth_failures_per_minute: NonZeroU32::MIN,
        auth_failures_burst: NonZeroU32::new(2).expect("2"),
        ..HardeningArgs::default()
    })
    .await;
    let url = format!("{}/api/v1/billing/events/evt_none/replay", direct.base);
    let mut spoofed = Vec::new();
    for i in 0..3 {
        let resp = http
            .post(&url)
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .bearer_auth(format!("spt_guess_{i}"))
            .send()
            .await
            .expect("send");
        spoofed.push(resp.status().as_u16());
    }
    assert_eq!(spoofed, [401, 401, 429], "one bucket: the peer's");
    // Every refused POST is in the audit log as anonymous, the admin's as admin (written by
    // the replay itself, in its transaction: it has no status detail).
    let rows: Vec<(String, String, Option<i64>)> = sqlx::query_as(
        "SELECT actor, outcome, (details->>'status')::bigint FROM audit_log ORDER BY id",
    )
    .fetch_all(&server.db)
    .await
    .expect("audit");
    assert_eq!(rows.len(), 8, "{rows:?}");
    let count = |actor: &str, outcome: &str, status: Option<i64>| {
        rows.iter()
            .filter(|(a, o, s)| a == actor && o == outcome && *s == status)
            .count()
    };
    assert_eq!(count("anonymous", "denied", Some(401)), 4, "{rows:?}");
    assert_eq!(count("anonymous", "failed", Some(429)), 3, "{rows:?}");
    assert_eq!(count("admin", "failed", None), 1, "{rows:?}");
}

#[tokio::test]
async fn after_authentication_the_bucket_is_the_callers() {
    let server = start(behind_ingress(HardeningArgs {
        rate_limit_per_second: NonZeroU32::MIN,
        rate_limit_burst: NonZeroU32::new(3).expect("3"),
        ..HardeningArgs::default()
    }))
    .await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/billing/events/evt_none/replay", server.base);
    let mut statuses = Vec::new();
    // The admin from four different addresses: one caller, one bucket.
    for i in 0..4 {
        let resp = http
            .post(&url)
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("send");
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(statuses, [404, 404, 404, 429]);
    // Anonymous callers are not charged to the admin's bucket.
    let anonymous = http.post(&url).send().await.expect("send");
    assert_eq!(anonymous.status().as_u16(), 401);
}

#[tokio::test]
async fn a_panicking_handler_answers_a_json_500_and_is_counted() {
    let metrics = Metrics::new();
    let app = axum::Router::new()
        .route(
            "/boom",
            axum::routing::get(|| async {
                let empty: Vec<u8> = Vec::new();
                // An out-of-bounds index, as a byte-offset parser would make.
                format!("{}", empty[usize::from(empty.is_empty())])
            }),
        )
        .route(
            "/slow",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
    let args = HardeningArgs {
        request_timeout: 1,
        ..HardeningArgs::default()
    };
    let base = stackplane_tests::serve_on_free_port(stackplane_api::hardening::apply(
        app, &args, &metrics,
    ))
    .await;
    let http = reqwest::Client::new();
    let resp = http.get(format!("{base}/boom")).send().await.expect("send");
    assert_eq!(resp.status().as_u16(), 500);
    let body: serde_json::Value = resp.json().await.expect("a JSON body");
    assert_eq!(body["error"]["code"], "internal", "{body}");
    let text = metrics.encode().expect("metrics");
    assert_eq!(sample(&text, "stackplane_api_panics_total"), 1.0, "{text}");
    // The server is still there, and a request over --request-timeout answers 503.
    let resp = http.get(format!("{base}/slow")).send().await.expect("send");
    assert_eq!(resp.status().as_u16(), 503);
    let body: serde_json::Value = resp.json().await.expect("a JSON body");
    assert_eq!(body["error"]["code"], "timeout", "{body}");
}

#[tokio::test]
async fn responses_carry_security_headers_and_a_request_id_that_is_logged() {
    let logs = logs();
    let base = serve(HardeningArgs::default()).await;
    let http = reqwest::Client::new();
    for path in ["/openapi.json", "/api/v1/billing/events/evt_none/replay"] {
        let resp = if path.starts_with("/api") {
            http.post(format!("{base}{path}")).send().await
        } else {
            http.get(format!("{base}{path}")).send().await
        }
        .expect("send");
        let h = resp.headers();
        let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(
            get("x-content-type-options").as_deref(),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(get("x-frame-options").as_deref(), Some("DENY"), "{path}");
        assert_eq!(
            get("referrer-policy").as_deref(),
            Some("no-referrer"),
            "{path}"
        );
        assert_eq!(get("cache-control").as_deref(), Some("no-store"), "{path}");
        assert!(
            get("strict-transport-security").is_some_and(|v| v.starts_with("max-age=")),
            "{path}"
        );
        let id = get("x-request-id").expect("a generated request id");
        assert_eq!(id.len(), 36, "a UUID: {id}");
    }

    let resp = http
        .post(format!("{base}/api/v1/billing/events/evt_none/replay"))
        .header("x-request-id", "dash-req-0042")
        .send()
        .await
        .expect("send");
    assert_eq!(
        resp.headers().get("x-request-id").map(|v| v.as_bytes()),
        Some(&b"dash-req-0042"[..]),
        "a caller's id is kept"
    );
    let text = String::from_utf8(logs.0.lock().expect("log").clone()).expect("utf8");
    assert!(
        text.lines()
            .any(|l| l.contains("request_id=dash-req-0042") && l.contains("/api/v1/billing/events")),
        "the request's log lines carry its id:\n{text}"
    );
}

#[tokio::test]
async fn json_bodies_over_the_limit_are_refused_with_413() {
    let base = serve(HardeningArgs {
        max_json_body_bytes: 1024,
        ..HardeningArgs::default()
    })
    .await;
    let resp = reqwest::Client::new()
        .post(format!("{base}/api/v1/billing/checkout"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"platform": "x".repeat(4096), "tier": "t", "email": "a@b.c", "userRef": "u"}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 413);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
}
