//! The HTTP server: routes and shared state.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{extract::State, http::StatusCode, routing::get, Router};
use sqlx::PgPool;
use tokio::sync::Notify;

use crate::config::Secrets;
use crate::metrics::Metrics;

/// Billing configuration shared by the handlers.
pub struct BillingState {
    pub secrets: Secrets,
    /// Woken when an event is stored, so an in-process worker picks it up at once.
    pub wake: Arc<Notify>,
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub metrics: Metrics,
    pub billing: Arc<BillingState>,
}

/// What the router is built with besides the shared state.
#[derive(Default)]
pub struct RouterOptions {
    pub hardening: crate::hardening::HardeningArgs,
    /// Stripe Checkout and Customer Portal; without it those endpoints answer 503.
    pub checkout: Option<Arc<crate::billing::checkout::Checkout>>,
    /// The tenant API with `/readyz` and `/openapi.json` ([`crate::tenants::router`]), behind
    /// the same hardening middleware as the billing routes.
    pub tenants: Option<Router>,
}

/// The billing routes with default options (no tenant API).
pub fn router(state: AppState) -> Router {
    router_with(state, RouterOptions::default())
}

/// The routes of the API, wrapped in the hardening middleware.
pub fn router_with(state: AppState, options: RouterOptions) -> Router {
    let routes = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route(
            "/webhooks/stripe",
            post(crate::billing::webhook::stripe_webhook).layer(DefaultBodyLimit::max(
                crate::billing::webhook::MAX_BODY_BYTES,
            )),
        )
        .route("/api/v1/billing/events/{id}/replay", post(replay_event))
        .with_state(state.clone())
        .merge(crate::billing::checkout::routes(state, options.checkout));
    let routes = match options.tenants {
        Some(tenants) => routes.merge(tenants),
        None => routes,
    };
    crate::hardening::apply(routes, &options.hardening)
}

async fn replay_event(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> axum::response::Response {
    use crate::billing::replay::{replay, Replay};
    use crate::http_error::ApiError;
    if let Err(e) = crate::auth::require_admin(&headers, &state.billing.secrets.admin_token) {
        return e.into_response();
    }
    match replay(&state.db, &id, "admin", "http").await {
        Ok(Replay::Queued(previous)) => {
            state.billing.wake.notify_one();
            (
                StatusCode::ACCEPTED,
                axum::Json(
                    serde_json::json!({ "id": id, "state": "pending", "previousState": previous }),
                ),
            )
                .into_response()
        }
        Ok(Replay::AlreadyApplied) => ApiError::new(
            StatusCode::CONFLICT,
            "already_applied",
            "the event is already applied",
        )
        .into_response(),
        Ok(Replay::NotFound) => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such event").into_response()
        }
        Err(error) => {
            tracing::error!(event_id = %id, %error, "replay");
            ApiError::internal("database error").into_response()
        }
    }
}

async fn metrics(State(state): State<AppState>) -> axum::response::Response {
    // A slow or unreachable database must not hang the scrape: the last values are served.
    let refresh = state.metrics.refresh_queue(&state.db);
    match tokio::time::timeout(std::time::Duration::from_secs(2), refresh).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "metrics: reading the billing queue"),
        Err(_) => tracing::warn!("metrics: reading the billing queue timed out"),
    }
    match state.metrics.encode() {
        Ok(text) => (
            [(
                CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
