//! `GET /api/v1/billing/events`: the stored Stripe events in one state (failed by default),
//! newest first: what SRE replays (`kubectl stackplane events --failed`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::caller::Caller;
use crate::extract::QueryParams;
use crate::http_error::ApiError;
use crate::state::AppState;

/// Most events one answer lists.
pub const MAX_LIMIT: i64 = 500;

#[derive(Deserialize, Debug, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// `pending`, `applied`, `skipped` or `failed` (the default).
    pub state: Option<String>,
    /// How many (1 to 500, default 100), newest first.
    pub limit: Option<i64>,
}

/// One stored event, without its payload.
#[derive(Serialize, Debug, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoredEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub state: String,
    pub attempts: i32,
    pub error_kind: Option<String>,
    pub last_error: Option<String>,
    pub received_at: DateTime<Utc>,
    /// When the worker tries it next (`null`: never by itself; a replay queues it).
    pub next_attempt_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, Debug, ToSchema)]
pub struct EventList {
    pub items: Vec<StoredEvent>,
}

type Row = (
    String,
    String,
    String,
    i32,
    Option<String>,
    Option<String>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

/// The stored events in one state (admin).
#[utoipa::path(get, path = "/api/v1/billing/events", tag = "billing", params(EventsQuery),
    security(("bearer" = [])),
    responses((status = 200, body = EventList), (status = 400, body = crate::http_error::ErrorBody),
        (status = 401, body = crate::http_error::ErrorBody), (status = 403, body = crate::http_error::ErrorBody),
        (status = 503, body = crate::http_error::ErrorBody)))]
pub async fn list_events(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<EventsQuery>,
) -> Result<Json<EventList>, ApiError> {
    caller.require_admin()?;
    let wanted = query.state.as_deref().unwrap_or("failed");
    if !matches!(
        wanted,
        "pending" | "applied" | "skipped" | "failed" | "ignored"
    ) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("state {wanted:?} is not pending, applied, skipped, failed or ignored"),
        ));
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("limit must be 1 to {MAX_LIMIT}"),
        ));
    }
    // 'infinity' (never due by itself) has no DateTime: answered as null.
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, event_type, state, attempts, error_kind, last_error, received_at, \
         CASE WHEN isfinite(next_attempt_at) THEN next_attempt_at END \
         FROM stripe_events WHERE state = $1 ORDER BY received_at DESC, id LIMIT $2",
    )
    .bind(wanted)
    .bind(limit)
    .fetch_all(&state.db)
    .await
    .map_err(|error| {
        tracing::error!(%error, "listing stored events");
        ApiError::unavailable("database error")
    })?;
    let items = rows
        .into_iter()
        .map(
            |(id, event_type, state, attempts, error_kind, last_error, received_at, next)| {
                StoredEvent {
                    id,
                    event_type,
                    state,
                    attempts,
                    error_kind,
                    last_error,
                    received_at,
                    next_attempt_at: next,
                }
            },
        )
        .collect();
    Ok(Json(EventList { items }))
}
