//! The audit log: one `audit_log` row for every state-changing call (who, what, when, outcome),
//! written by a middleware around the routes, so no handler can forget it and calls refused
//! before their handler ran (bad token, malformed body) are logged too.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sqlx::PgPool;

use crate::caller::{Authenticator, Caller};

/// Extra details a handler attaches to its response for the audit row (e.g. the id of the
/// token it issued). Never secrets.
#[derive(Clone, Debug)]
pub struct AuditDetails(pub serde_json::Value);

/// How an answer is written down: 2xx `success`; refused for who the caller is or is not
/// (401, 403, 404) `denied`; everything else `failed`.
pub fn outcome(status: StatusCode) -> &'static str {
    if status.is_success() {
        "success"
    } else if matches!(
        status,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
    ) {
        "denied"
    } else {
        "failed"
    }
}

/// The stable name of the action of a route, e.g. `backup.create`.
pub fn action(method: &Method, route: &str) -> String {
    let name = match (method.as_str(), route) {
        ("POST", "/api/v1/tenants/{name}/tokens") => "token.issue",
        ("DELETE", "/api/v1/tenants/{name}/tokens/{id}") => "token.revoke",
        ("POST", "/api/v1/tenants/{name}/backups") => "backup.create",
        ("POST", "/api/v1/tenants/{name}/backups/{backup}/restore") => "backup.restore",
        _ => return format!("{method} {route}"),
    };
    name.to_owned()
}

/// One row of the audit log.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub outcome: &'static str,
    pub request_id: Option<String>,
    pub details: serde_json::Value,
}

/// Writes one audit row.
pub async fn write(db: &PgPool, entry: &AuditEntry) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_log (actor, action, target, outcome, request_id, details)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&entry.actor)
    .bind(&entry.action)
    .bind(&entry.target)
    .bind(entry.outcome)
    .bind(&entry.request_id)
    .bind(&entry.details)
    .execute(db)
    .await
    .map(|_| ())
}

/// State the audit middleware needs.
#[derive(Clone)]
pub struct AuditState {
    pub db: PgPool,
    pub auth: Authenticator,
}

/// Middleware (a `route_layer`, so the matched route is known): authenticates state-changing
/// calls, runs them, and writes their audit row. Reads pass through untouched.
pub async fn audit(State(state): State<AuditState>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    if matches!(method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let target = req.uri().path().to_owned();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (actor, response) = match state.auth.authenticate(req.headers()).await {
        Ok(caller) => {
            let actor = caller.actor();
            req.extensions_mut().insert::<Caller>(caller);
            (actor, next.run(req).await)
        }
        Err(error) => ("anonymous".to_owned(), error.into_response()),
    };
    let status = response.status();
    let request_id = request_id.or_else(|| {
        response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    let mut details = serde_json::json!({
        "method": method.as_str(),
        "route": route,
        "status": status.as_u16(),
    });
    if let (Some(AuditDetails(extra)), Some(map)) = (
        response.extensions().get::<AuditDetails>(),
        details.as_object_mut(),
    ) {
        if let Some(extra) = extra.as_object() {
            map.extend(extra.clone());
        }
    }
    let entry = AuditEntry {
        actor,
        action: action(&method, &route),
        target: Some(target),
        outcome: outcome(status),
        request_id,
        details,
    };
    if let Err(error) = write(&state.db, &entry).await {
        // The call itself has happened; losing its audit row is logged loudly rather than
        // turning a done change into an error answer.
        tracing::error!(%error, action = %entry.action, target = ?entry.target, outcome = entry.outcome, "writing the audit log");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_by_status() {
        assert_eq!(outcome(StatusCode::CREATED), "success");
        assert_eq!(outcome(StatusCode::NO_CONTENT), "success");
        assert_eq!(outcome(StatusCode::UNAUTHORIZED), "denied");
        assert_eq!(outcome(StatusCode::NOT_FOUND), "denied");
        assert_eq!(outcome(StatusCode::UNPROCESSABLE_ENTITY), "failed");
        assert_eq!(outcome(StatusCode::INTERNAL_SERVER_ERROR), "failed");
    }

    #[test]
    fn actions_are_named() {
        assert_eq!(
            action(&Method::POST, "/api/v1/tenants/{name}/backups"),
            "backup.create"
        );
        assert_eq!(action(&Method::PUT, "/x"), "PUT /x");
    }
}
