//! The hardening middleware on a real server (free port, real Postgres behind it): rate limits
//! trip and recover, security headers and request ids are on every response, and the request
//! id is in the log lines of the request.

use std::io::Write;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use stackplane_api::config::Secrets;
use stackplane_api::hardening::HardeningArgs;
use stackplane_api::metrics::Metrics;
use stackplane_api::server::{router_with, AppState, BillingState, RouterOptions};
use stackplane_tests::fresh_database;

const ADMIN: &str = "hardening-admin-token";

async fn serve(args: HardeningArgs) -> String {
    logs();
    let (db, _) = fresh_database().await;
    stackplane_api::db::migrate(&db).await.expect("migrate");
    let state = AppState {
        db,
        metrics: Metrics::new(),
        billing: Arc::new(BillingState {
            secrets: Secrets::from_values(Some("whsec_h"), Some("sk_test_h"), Some(ADMIN))
                .expect("secrets"),
            wake: Default::default(),
        }),
    };
    let app = router_with(
        state,
        RouterOptions {
            hardening: args,
            checkout: None,
            tenants: None,
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    format!("http://{addr}")
}

fn tight() -> HardeningArgs {
    HardeningArgs {
        rate_limit_per_second: NonZeroU32::MIN,
        rate_limit_burst: NonZeroU32::new(3).expect("3"),
        ..HardeningArgs::default()
    }
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
async fn the_rate_limit_trips_with_retry_after_and_recovers_after_the_period() {
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

    // Other clients and routes are not starved: another bearer token has its own bucket, the
    // Stripe webhook its own limit, and probes none.
    let other = http
        .post(&url)
        .bearer_auth("some-other-token")
        .send()
        .await
        .expect("send");
    assert_eq!(other.status().as_u16(), 401);
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
    for _ in 0..5 {
        let probe = http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .expect("send");
        assert_eq!(probe.status().as_u16(), 200);
    }

    tokio::time::sleep(Duration::from_secs(retry_after) + Duration::from_millis(100)).await;
    let recovered = http.post(&url).send().await.expect("send");
    assert_eq!(recovered.status().as_u16(), 401, "the bucket refilled");
}

#[tokio::test]
async fn the_webhook_has_its_own_limit() {
    let base = serve(HardeningArgs {
        webhook_rate_limit_per_second: NonZeroU32::MIN,
        webhook_rate_limit_burst: NonZeroU32::new(2).expect("2"),
        ..HardeningArgs::default()
    })
    .await;
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let resp = http
            .post(format!("{base}/webhooks/stripe"))
            .body("{}")
            .send()
            .await
            .expect("send");
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(statuses, [400, 400, 429]);
    let api = http
        .post(format!("{base}/api/v1/billing/events/evt_none/replay"))
        .send()
        .await
        .expect("send");
    assert_eq!(api.status().as_u16(), 401, "the API keeps its own budget");
}

#[tokio::test]
async fn responses_carry_security_headers_and_a_request_id_that_is_logged() {
    let logs = logs();
    let base = serve(HardeningArgs::default()).await;
    let http = reqwest::Client::new();
    for path in [
        "/healthz",
        "/metrics",
        "/api/v1/billing/events/evt_none/replay",
    ] {
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
