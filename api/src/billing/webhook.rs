//! `POST /webhooks/stripe`: verifies the signature against every configured secret, stores the
//! event idempotently and answers once it is stored.
//!
//! The signature is checked here (Stripe's scheme: HMAC-SHA256 of `t.payload`, any `v1`, 300 s
//! tolerance) rather than by async-stripe's `Webhook::construct_event`, which can only verify
//! by also deserializing the whole event into the SDK's types, the most expensive step of a
//! delivery; the worker reads the event's shape later. The tests check this verifier against
//! the SDK's own signatures.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use super::intake::{EventRow, Intake, StoreError};
use crate::audit::{Actor, AuditedByHandler};
use crate::hardening::{Bucket, Gate};
use crate::http_error::ApiError;
use crate::state::AppState;

/// Longest wait for the database to take a delivery before answering 503.
const STORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Largest accepted webhook body.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Why a delivery was refused; `code()` is the JSON error code and metric outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the Stripe-Signature header is missing")]
    MissingSignature,
    #[error("the Stripe-Signature header is not `t=<unix>,v1=<hex>`")]
    InvalidSignatureHeader,
    #[error(
        "no v1 signature matches any configured webhook secret (bad signature or unknown secret)"
    )]
    SignatureMismatch,
    #[error("the signature timestamp is outside the 300 s tolerance")]
    StaleTimestamp,
    #[error("the body is not a Stripe event: {0}")]
    MalformedJson(String),
    #[error("the body exceeds {MAX_BODY_BYTES} bytes")]
    PayloadTooLarge,
}

impl Rejection {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Rejection::MissingSignature => "missing_signature",
            Rejection::InvalidSignatureHeader => "invalid_signature_header",
            Rejection::SignatureMismatch => "signature_mismatch",
            Rejection::StaleTimestamp => "stale_timestamp",
            Rejection::MalformedJson(_) => "malformed_json",
            Rejection::PayloadTooLarge => "payload_too_large",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Rejection::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Largest distance between the signature's timestamp and now, in seconds.
pub const TOLERANCE_SECS: i64 = 300;

/// Checks `header` against every secret at time `now`; Ok when one of them signed `payload`
/// within the tolerance. A signature that matches but is too old is `StaleTimestamp`.
pub fn verify(payload: &str, header: &str, secrets: &[String], now: i64) -> Result<(), Rejection> {
    let mut timestamp = None;
    let mut has_v1 = false;
    let mut candidates = Vec::new();
    for (key, value) in header.split(',').filter_map(|p| p.split_once('=')) {
        match key.trim() {
            "t" => match value.trim().parse::<i64>() {
                Ok(t) => timestamp = Some(t),
                Err(_) => return Err(Rejection::InvalidSignatureHeader),
            },
            // A candidate that is not hex can match nothing; the others are still tried.
            "v1" => {
                has_v1 = true;
                candidates.extend(hex::decode(value.trim()).ok());
            }
            _ => {}
        }
    }
    let Some(t) = timestamp.filter(|_| has_v1) else {
        return Err(Rejection::InvalidSignatureHeader);
    };
    let signed_by = |secret: &String| {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
            return false;
        };
        // The signed text is `<t>.<payload>` with `t` as the integer it is (as the SDK does).
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        // `verify_slice` compares in constant time.
        candidates
            .iter()
            .any(|candidate| mac.clone().verify_slice(candidate).is_ok())
    };
    if !secrets.iter().any(signed_by) {
        return Err(Rejection::SignatureMismatch);
    }
    if (now - t).abs() > TOLERANCE_SECS {
        return Err(Rejection::StaleTimestamp);
    }
    Ok(())
}

/// The envelope fields stored with an event.
struct Envelope {
    id: String,
    event_type: String,
    created: i64,
    livemode: bool,
    subscription_id: Option<String>,
}

fn envelope(payload: &str) -> Result<Envelope, Rejection> {
    let value: Value =
        serde_json::from_str(payload).map_err(|e| Rejection::MalformedJson(e.to_string()))?;
    let field = |k: &str| value.get(k).and_then(Value::as_str).map(str::to_owned);
    let id = field("id").ok_or_else(|| Rejection::MalformedJson("no event id".into()))?;
    let event_type = field("type").ok_or_else(|| Rejection::MalformedJson("no type".into()))?;
    let created = value
        .get("created")
        .and_then(Value::as_i64)
        .ok_or_else(|| Rejection::MalformedJson("no created".into()))?;
    let subscription_id = stackplane_core::billing::parse::parse_event(&value)
        .ok()
        .and_then(|e| e.observation.subscription_id().map(str::to_owned));
    Ok(Envelope {
        id,
        event_type,
        created,
        livemode: value
            .get("livemode")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        subscription_id,
    })
}

fn reject(state: &AppState, r: Rejection) -> Response {
    state.metrics.webhook("unknown", r.metric_label());
    tracing::warn!(reason = r.metric_label(), "stripe webhook rejected");
    ApiError::new(r.status(), r.metric_label(), r.to_string()).into_response()
}

/// The handler of `POST /webhooks/stripe`. The signature is checked first; only then does the
/// delivery draw from a rate-limit bucket: the generous one of valid deliveries, or the tight
/// per-address one of everything else, so a scanner cannot starve Stripe's deliveries.
pub async fn stripe_webhook(
    State(state): State<AppState>,
    Extension(intake): Extension<Intake>,
    gate: Gate,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let payload = match verified_payload(&state, &headers, body).await {
        Ok(payload) => payload,
        Err(r) => {
            if let Err(limited) = gate.check_address(Bucket::WebhookInvalid) {
                state.metrics.webhook("unknown", "rate_limited");
                return limited.into_response();
            }
            return reject(&state, r);
        }
    };
    let mut response = match gate.check_address(Bucket::WebhookValid) {
        Ok(()) => {
            let request_id = crate::hardening::request_id(&headers);
            store(&state, &intake, payload, request_id, gate.addr.to_string()).await
        }
        Err(limited) => {
            state.metrics.webhook("unknown", "rate_limited");
            limited.into_response()
        }
    };
    response.extensions_mut().insert(Actor::Stripe);
    response
}

/// The body of a delivery whose signature one of the configured secrets made.
async fn verified_payload(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<String, Rejection> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(Rejection::PayloadTooLarge);
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return Err(Rejection::PayloadTooLarge);
    };
    let Some(signature) = headers.get("stripe-signature") else {
        return Err(Rejection::MissingSignature);
    };
    let Ok(signature) = signature.to_str() else {
        return Err(Rejection::InvalidSignatureHeader);
    };
    let Ok(payload) = std::str::from_utf8(&bytes) else {
        return Err(Rejection::MalformedJson("not UTF-8".into()));
    };
    let now = chrono::Utc::now().timestamp();
    verify(
        payload,
        signature,
        &state.billing.secrets.webhook_secrets,
        now,
    )?;
    Ok(payload.to_owned())
}

/// Stores a verified delivery (with the next group commit, `super::intake`, which writes its
/// audit row too) and answers once it is stored; 503 while the database cannot take it
/// (Stripe retries; the audit middleware then writes the failed call's row). `request_id` and
/// `client` are for the audit row.
async fn store(
    state: &AppState,
    intake: &Intake,
    payload: String,
    request_id: Option<String>,
    client: String,
) -> Response {
    let event = match envelope(&payload) {
        Ok(e) => e,
        Err(r) => return reject(state, r),
    };
    let (id, event_type) = (event.id.clone(), event.event_type.clone());
    let row = EventRow {
        id: event.id,
        event_type: event.event_type,
        created: event.created,
        livemode: event.livemode,
        subscription_id: event.subscription_id,
        payload,
        request_id,
        client,
    };
    let stored = match tokio::time::timeout(STORE_TIMEOUT, intake.store(row)).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Timeout),
    };
    match stored {
        Ok(new) => {
            let duplicate = !new;
            let outcome = if duplicate { "duplicate" } else { "stored" };
            state.metrics.webhook(&event_type, outcome);
            tracing::info!(event_id = %id, event_type = %event_type, outcome, "stripe event received");
            state.billing.wake.notify_one();
            let mut response = (
                StatusCode::OK,
                Json(json!({ "received": true, "duplicate": duplicate })),
            )
                .into_response();
            response.extensions_mut().insert(AuditedByHandler);
            response
        }
        Err(error) => {
            state.metrics.webhook(&event_type, "store_failed");
            tracing::error!(event_id = %id, %error, "storing stripe event");
            ApiError::unavailable("the event could not be stored now; Stripe will retry")
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stripe_webhook::Webhook;

    const PAYLOAD: &str =
        r#"{"id":"evt_1","object":"event","type":"charge.succeeded","created":1}"#;

    fn secrets() -> Vec<String> {
        vec!["whsec_old".into(), "whsec_new".into()]
    }

    #[test]
    fn either_secret_verifies_and_others_are_refused() {
        for s in ["whsec_old", "whsec_new"] {
            let h = Webhook::generate_test_header(PAYLOAD, s, Some(1000));
            assert_eq!(verify(PAYLOAD, &h, &secrets(), 1000), Ok(()));
        }
        let h = Webhook::generate_test_header(PAYLOAD, "whsec_other", Some(1000));
        assert_eq!(
            verify(PAYLOAD, &h, &secrets(), 1000),
            Err(Rejection::SignatureMismatch)
        );
        let h = Webhook::generate_test_header(PAYLOAD, "whsec_new", Some(1000));
        assert_eq!(
            verify(PAYLOAD, &h, &secrets(), 1301),
            Err(Rejection::StaleTimestamp)
        );
        assert_eq!(
            verify(PAYLOAD, "garbage", &secrets(), 1000),
            Err(Rejection::InvalidSignatureHeader)
        );
        assert_eq!(
            verify(&PAYLOAD.replace("evt_1", "evt_2"), &h, &secrets(), 1000),
            Err(Rejection::SignatureMismatch)
        );
    }

    /// Stripe sends one `v1=` per secret during a rotation; the matching one may be anywhere.
    #[test]
    fn a_matching_v1_signature_is_found_first_middle_or_last() {
        let v1 = |secret: &str| {
            let h = Webhook::generate_test_header(PAYLOAD, secret, Some(1000));
            h.split(',')
                .find(|p| p.starts_with("v1="))
                .map(str::to_owned)
                .unwrap()
        };
        let (good, x, y) = (v1("whsec_new"), v1("whsec_x"), v1("whsec_y"));
        for header in [
            format!("t=1000,{good},{x},{y}"),
            format!("t=1000,{x},{good},{y}"),
            format!("t=1000,{x},{y},{good}"),
            format!("t=1000,{x},v0=abc,{good}"),
        ] {
            assert_eq!(
                verify(PAYLOAD, &header, &secrets(), 1000),
                Ok(()),
                "{header}"
            );
        }
        let none = format!("t=1000,{x},{y}");
        assert_eq!(
            verify(PAYLOAD, &none, &secrets(), 1000),
            Err(Rejection::SignatureMismatch)
        );
    }

    /// The verifier agrees with the official SDK's on every header it is given: signed by
    /// either secret or another, at any distance from now, tampered or not.
    #[test]
    fn agrees_with_the_sdk() {
        use stripe_webhook::WebhookError;
        let sdk = |payload: &str, header: &str, now: i64| {
            let mut stale = false;
            for secret in secrets() {
                match Webhook::construct_event_with_timestamp(payload, header, &secret, now) {
                    Ok(_) | Err(WebhookError::BadParse(_)) => return Ok(()),
                    Err(WebhookError::BadTimestamp(_)) => stale = true,
                    Err(_) => {}
                }
            }
            Err(stale)
        };
        proptest::proptest!(|(secret in proptest::sample::select(vec!["whsec_old", "whsec_new", "whsec_x"]),
                              signed_at in 0i64..2000, now in 0i64..2000, tamper: bool,
                              extra in proptest::sample::select(vec!["", ",v1=00ff", ",v0=abc", ",v1=zz"]))| {
            let payload = PAYLOAD;
            let header = format!("{}{extra}", Webhook::generate_test_header(payload, secret, Some(signed_at)));
            let sent = if tamper { payload.replace("evt_1", "evt_9") } else { payload.to_owned() };
            let ours = verify(&sent, &header, &secrets(), now);
            match sdk(&sent, &header, now) {
                Ok(()) => proptest::prop_assert_eq!(ours, Ok(())),
                Err(true) => proptest::prop_assert_eq!(ours, Err(Rejection::StaleTimestamp)),
                Err(false) => proptest::prop_assert_eq!(ours, Err(Rejection::SignatureMismatch)),
            }
        });
    }
}
