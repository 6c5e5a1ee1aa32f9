//! The OpenAPI document of the public listener, generated from the handlers' annotations and
//! served at `GET /openapi.json`. The billing and webhook operations are described here (their
//! handlers take raw bodies and answer in several shapes); a test compares the document with
//! the routes the server serves.

use std::sync::OnceLock;

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::http_error::{ErrorBody, ErrorDetail};
use crate::tenants;

struct BearerAuth;

/// The answers every operation can give besides its own, from the layers in front of the
/// handlers: 429 (rate limits) and 503 (timeout, database unavailable) everywhere; 401 where a
/// token is needed; 400 where path or query parameters are read (`invalid_name`,
/// `invalid_path`, `invalid_query`) and 404 where a path names something; 400, 413, 415 and
/// 422 where a JSON body is read.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let ops = [
                item.get.as_mut(),
                item.post.as_mut(),
                item.put.as_mut(),
                item.patch.as_mut(),
                item.delete.as_mut(),
            ];
            for op in ops.into_iter().flatten() {
                let mut add = |code: &str, description: &str| {
                    op.responses
                        .responses
                        .entry(code.to_owned())
                        .or_insert_with(|| error(description).into());
                };
                add("429", "rate limited (Retry-After)");
                add(
                    "503",
                    "timed out, or the database is unavailable (Retry-After)",
                );
                if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                    add("401", "no, an unknown, a revoked or an expired token");
                }
                let params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
                if params || path.contains('{') {
                    add("400", "an invalid path or query parameter");
                }
                if path.contains('{') {
                    add("404", "not found");
                }
                if op.request_body.is_some() {
                    add("400", "malformed JSON");
                    add("413", "the body is too large");
                    add("415", "the body is not application/json");
                    add("422", "the body has the wrong shape");
                }
            }
        }
    }
}

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Answer of an accepted webhook delivery.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct WebhookReceived {
    pub received: bool,
    /// Whether the event was stored before (Stripe delivers more than once).
    pub duplicate: bool,
}

/// Answer of a created Checkout Session.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct CheckoutSession {
    pub id: String,
    /// Where to send the customer.
    pub url: String,
}

/// Answer of a created Customer Portal session.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct PortalSession {
    pub url: String,
}

/// Answer of a queued replay.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "camelCase")]
pub struct ReplayQueued {
    pub id: String,
    pub state: String,
    pub previous_state: String,
}

/// A Stripe event delivery, signed with `Stripe-Signature`; verified, stored idempotently and
/// processed later. 503 while the database cannot store it (Stripe retries).
#[utoipa::path(post, path = "/webhooks/stripe", tag = "billing",
    params(("Stripe-Signature" = String, Header, description = "`t=<unix>,v1=<hex>`")),
    request_body(content = serde_json::Value, description = "a Stripe event", content_type = "application/json"),
    responses((status = 200, body = WebhookReceived),
        (status = 400, description = "bad signature, stale timestamp, malformed event", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
#[allow(dead_code)]
fn stripe_webhook() {}

/// A Stripe Checkout Session for a platform tier (a dashboard token, or the admin). A
/// dashboard's session is named in its metadata; the customer it makes becomes that
/// dashboard's when it completes. 403 for a tenant token.
#[utoipa::path(post, path = "/api/v1/billing/checkout", tag = "billing",
    request_body = crate::billing::checkout::CheckoutRequest,
    security(("bearer" = [])),
    responses((status = 201, body = CheckoutSession), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 502, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
#[allow(dead_code)]
fn checkout() {}

/// A Customer Portal session for a tenant's Stripe customer (admin, the tenant's token, or a
/// dashboard token for the customers it checked out; any other tenant answers 404).
#[utoipa::path(post, path = "/api/v1/billing/portal", tag = "billing",
    request_body = crate::billing::checkout::PortalRequest,
    security(("bearer" = [])),
    responses((status = 200, body = PortalSession), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 502, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
#[allow(dead_code)]
fn portal() {}

/// Queue a stored Stripe event again (admin).
#[utoipa::path(post, path = "/api/v1/billing/events/{id}/replay", tag = "billing",
    params(("id" = String, Path, description = "Stripe event id (`evt_…`)")),
    security(("bearer" = [])),
    responses((status = 202, body = ReplayQueued), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
#[allow(dead_code)]
fn replay() {}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "the OpenAPI document", body = serde_json::Value)))]
#[allow(dead_code)]
fn openapi_json() {}

#[derive(OpenApi)]
#[openapi(
    info(title = "stackplane API", description = "Status, metrics and backups of every tenant of every platform, Stripe billing and its webhook. Bearer tokens: the admin token sees all tenants; a tenant-scoped token sees only its tenant (another tenant's name answers 404); a dashboard token (POST /api/v1/tokens) creates checkout and portal sessions and reads the status of the tenants of the customers it checked out (any other answers 404; admin routes 403). Rate limits answer 429 with Retry-After. /healthz, /readyz and /metrics are on the internal listener, not here."),
    paths(
        tenants::status::get_tenant,
        tenants::status::list_tenants,
        tenants::status::platform_summary,
        tenants::status::platform_rollout,
        tenants::metrics::tenant_metrics,
        tenants::backups::list_backups,
        tenants::backups::create_backup,
        tenants::backups::restore_backup,
        tenants::hold::set_hold,
        tenants::hold::release_hold,
        tenants::tokens::issue_token,
        tenants::tokens::list_tokens,
        tenants::tokens::revoke_token,
        tenants::tokens::issue_role_token,
        tenants::tokens::list_role_tokens,
        tenants::tokens::revoke_role_token,
        stripe_webhook,
        checkout,
        portal,
        crate::billing::events::list_events,
        replay,
        openapi_json,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&BearerAuth, &CommonResponses),
    tags((name = "tenants"), (name = "backups"), (name = "tokens"), (name = "billing"), (name = "meta"))
)]
pub struct ApiDoc;

/// The document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

/// `GET /openapi.json`.
pub async fn serve() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(document())
}

/// Every (method, path) the document describes, sorted.
pub fn operations() -> Vec<(String, String)> {
    let doc = serde_json::to_value(document()).unwrap_or_default();
    let mut ops: Vec<(String, String)> = doc["paths"]
        .as_object()
        .into_iter()
        .flatten()
        .flat_map(|(path, item)| {
            item.as_object()
                .into_iter()
                .flatten()
                .filter(|(method, _)| {
                    matches!(method.as_str(), "get" | "post" | "put" | "patch" | "delete")
                })
                .map(|(method, _)| (method.clone(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    ops.sort();
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_has_schemas_and_security() {
        let doc = serde_json::to_value(document()).unwrap();
        assert!(doc["components"]["schemas"]["TenantView"].is_object());
        assert!(doc["components"]["schemas"]["CheckoutRequest"].is_object());
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
        assert!(
            doc["paths"]["/readyz"].is_null(),
            "internal endpoints are not public"
        );
    }
}
