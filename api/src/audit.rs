//! The audit log: one `audit_log` row for every state-changing call (who, what, when, outcome),
//! written by a middleware around the routes, so no handler can forget it and calls refused
//! before their handler ran (bad token, malformed body, a caller over its limit) are logged
//! too. Only calls refused by the per-address limit, before anything is known about them, are
//! not written (they are counted in `stackplane_api_rate_limited_total`): a flood must not turn
//! into database writes.

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use sqlx::PgPool;

use crate::metrics::Metrics;

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
        ("POST", "/api/v1/tokens") => "token.issue",
        ("DELETE", "/api/v1/tokens/{id}") => "token.revoke",
        ("PUT", "/api/v1/tenants/{name}/hold") => "tenant.hold",
        ("DELETE", "/api/v1/tenants/{name}/hold") => "tenant.release",
        ("POST", "/api/v1/tenants/{name}/backups") => "backup.create",
        ("POST", "/api/v1/tenants/{name}/backups/{backup}/restore") => "backup.restore",
        ("POST", "/api/v1/billing/checkout") => "billing.checkout",
        ("POST", "/api/v1/billing/portal") => "billing.portal",
        ("POST", "/api/v1/billing/events/{id}/replay") => "billing.replay",
        ("POST", "/webhooks/stripe") => "stripe.webhook",
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

/// Who made a call, as the audit log names it: the identity that was verified, never assumed.
/// Whoever verifies it (authentication, the webhook's signature check) puts it in the response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    Admin,
    Token(uuid::Uuid),
    /// A webhook delivery whose signature checked out.
    Stripe,
    Anonymous,
}

impl Actor {
    /// `admin`, `token:<id>`, `stripe` or `anonymous`.
    pub fn name(&self) -> String {
        match self {
            Actor::Admin => "admin".to_owned(),
            Actor::Token(id) => format!("token:{id}"),
            Actor::Stripe => "stripe".to_owned(),
            Actor::Anonymous => "anonymous".to_owned(),
        }
    }
}

/// Put in a response by a handler that wrote the call's audit row itself (in its own
/// transaction): the middleware then writes none, so each call has exactly one row.
#[derive(Clone, Copy, Debug)]
pub struct AuditedByHandler;

/// State the audit middleware needs.
#[derive(Clone)]
pub struct AuditState {
    pub db: PgPool,
    pub metrics: Metrics,
}

/// Timeout of one audit write: a database that hangs must not hang the answer.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// The audit middleware as a layer (a `route_layer` outside authentication, so the matched
/// route is known and refused calls pass through it): every state-changing call is run by
/// [`audit`], which writes its row. Reads go straight to the route, with no allocation of their
/// own (a `from_fn` middleware would box every read too, and reads are most requests).
#[derive(Clone)]
pub struct AuditLayer(pub AuditState);

impl<S> tower::Layer<S> for AuditLayer {
    type Service = Audited<S>;
    fn layer(&self, inner: S) -> Audited<S> {
        Audited {
            inner,
            state: self.0.clone(),
        }
    }
}

/// A route behind [`AuditLayer`].
#[derive(Clone)]
pub struct Audited<S> {
    inner: S,
    state: AuditState,
}

type BoxedCall = futures::future::BoxFuture<'static, Result<Response, std::convert::Infallible>>;

impl<S> tower::Service<Request> for Audited<S>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures::future::Either<S::Future, BoxedCall>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
            return futures::future::Either::Left(self.inner.call(req));
        }
        // The service that was made ready runs this call; its clone stays for the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let state = self.state.clone();
        futures::future::Either::Right(Box::pin(async move { Ok(audit(state, req, inner).await) }))
    }
}

/// Runs a state-changing call on `route_service` and writes its audit row. A row that cannot be
/// written is logged and counted (`stackplane_audit_write_failures_total`).
async fn audit<S>(state: AuditState, req: Request, route_service: S) -> Response
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>,
{
    use tower::ServiceExt;
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let target = req.uri().path().to_owned();
    let client = crate::hardening::Gate::of_request(&req).addr;
    let request_id = crate::hardening::request_id(req.headers());
    let response = match route_service.oneshot(req).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    if response.extensions().get::<AuditedByHandler>().is_some() {
        return response;
    }
    let actor = response
        .extensions()
        .get::<Actor>()
        .cloned()
        .unwrap_or(Actor::Anonymous);
    let status = response.status();
    let request_id = request_id.or_else(|| crate::hardening::request_id(response.headers()));
    let mut details = serde_json::json!({
        "method": method.as_str(),
        "route": route,
        "status": status.as_u16(),
        "client": client.to_string(),
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
        actor: actor.name(),
        action: action(&method, &route),
        target: Some(target),
        outcome: outcome(status),
        request_id,
        details,
    };
    let written = tokio::time::timeout(WRITE_TIMEOUT, write(&state.db, &entry)).await;
    let failure = match written {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error.to_string()),
        Err(_) => Some("timed out".to_owned()),
    };
    if let Some(error) = failure {
        // The call itself has happened; losing its audit row is logged loudly and counted
        // rather than turning a done change into an error answer.
        state.metrics.audit_write_failures.inc();
        tracing::error!(%error, actor = %entry.actor, action = %entry.action, target = ?entry.target, outcome = entry.outcome, "writing the audit log failed");
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
