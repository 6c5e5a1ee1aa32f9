//! The public HTTP server: its routes, behind authentication, the audit log and the hardening
//! middleware. `/healthz`, `/readyz` and `/metrics` are on the internal listener
//! ([`crate::health`]).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::audit::{AuditLayer, AuditState, AuditedByHandler};
use crate::caller::{Authenticator, Caller};
use crate::extract::Path;
use crate::http_error::ApiError;
use crate::routes::RouteTable;

pub use crate::state::{AppState, BillingState};

/// What the router is built with besides the shared state.
pub struct RouterOptions {
    pub hardening: crate::hardening::HardeningArgs,
    /// Stripe Checkout and Customer Portal; without it those endpoints answer 503.
    pub checkout: Option<Arc<crate::billing::checkout::Checkout>>,
    /// The tenant API; without it its routes are not served.
    pub tenants: Option<crate::tenants::TenantApi>,
    /// How long a verified tenant token is believed without asking the database: a revoked
    /// token stops working within this time.
    pub token_cache_ttl: Duration,
}

/// Default of [`RouterOptions::token_cache_ttl`] (`--token-cache-ttl`).
pub const DEFAULT_TOKEN_CACHE_TTL: Duration = Duration::from_secs(10);

impl Default for RouterOptions {
    fn default() -> Self {
        Self {
            hardening: Default::default(),
            checkout: None,
            tenants: None,
            token_cache_ttl: DEFAULT_TOKEN_CACHE_TTL,
        }
    }
}

/// The billing routes with default options (no tenant API).
pub fn router(state: AppState) -> Router {
    router_with(state, RouterOptions::default())
}

/// The public routes, wrapped in authentication, the audit log and the hardening middleware.
pub fn router_with(state: AppState, options: RouterOptions) -> Router {
    public(state, options).0
}

/// The public router and every (method, path) it serves.
pub fn public(
    state: AppState,
    options: RouterOptions,
) -> (Router, Vec<(&'static str, &'static str)>) {
    let auth = Authenticator::new(
        &state.billing.secrets.admin_token,
        state.db.clone(),
        options.token_cache_ttl,
    );
    let mut served = Vec::new();
    let mut add = |(router, routes): (Router, Vec<_>)| {
        served.extend(routes);
        router
    };
    let mut authenticated = Router::new()
        .merge(add(RouteTable::default()
            .get(
                "/api/v1/billing/events",
                crate::billing::events::list_events,
            )
            .post("/api/v1/billing/events/{id}/replay", replay_event)
            // Dashboard tokens: served with or without the tenant API, as checkout is.
            .post("/api/v1/tokens", crate::tenants::tokens::issue_role_token)
            .get("/api/v1/tokens", crate::tenants::tokens::list_role_tokens)
            .delete(
                "/api/v1/tokens/{id}",
                crate::tenants::tokens::revoke_role_token,
            )
            .finish(state.clone())))
        .merge(add(crate::billing::checkout::routes(
            options.checkout,
            state.db.clone(),
        )));
    if let Some(api) = options.tenants {
        authenticated = authenticated.merge(add(
            crate::tenants::routes(RouteTable::default()).finish(Arc::new(api))
        ));
    }
    let authenticated = authenticated.route_layer(axum::middleware::from_fn_with_state(
        auth,
        crate::caller::authenticate,
    ));
    let intake = crate::billing::intake::Intake::new(state.db.clone());
    let webhook = add(RouteTable::default()
        .post(
            crate::hardening::WEBHOOK,
            crate::billing::webhook::stripe_webhook,
        )
        .map(|r| {
            r.layer(DefaultBodyLimit::max(
                crate::billing::webhook::MAX_BODY_BYTES,
            ))
            // Deliveries are stored by group commit (`billing::intake`).
            .layer(axum::Extension(intake.clone()))
        })
        .finish(state.clone()));
    let audited = authenticated
        .merge(webhook)
        .route_layer(AuditLayer(AuditState {
            db: state.db.clone(),
            metrics: state.metrics.clone(),
        }));
    let docs = add(RouteTable::default()
        .get("/openapi.json", crate::openapi::serve)
        .finish(()));
    let routes = audited.merge(docs).fallback(no_route);
    (
        crate::hardening::apply(routes, &options.hardening, &state.metrics),
        served,
    )
}

/// A path no route serves.
async fn no_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such endpoint")
}

/// Queue a Stripe event again (admin).
async fn replay_event(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Response {
    use crate::billing::replay::{replay, Replay};
    if let Err(e) = caller.require_admin() {
        return e.into_response();
    }
    // `replay` writes the audit row in its own transaction.
    let mut response = match replay(&state.db, &id, &caller.actor(), "http").await {
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
            return ApiError::unavailable("database error").into_response();
        }
    };
    response.extensions_mut().insert(AuditedByHandler);
    response
}
