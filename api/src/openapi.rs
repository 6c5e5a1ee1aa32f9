//! The OpenAPI document of the API, generated from the handlers' annotations and served at
//! `GET /openapi.json`.

use std::sync::OnceLock;

use axum::Json;
use serde::Serialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::tenants;

/// The error body of every failed call.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `not_found`, `invalid_body`, `unauthorized`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "stackplane API", description = "Status, metrics and backups of every tenant of every platform. Bearer tokens: the admin token sees all tenants; a tenant-scoped token sees only its tenant (another tenant's name answers 404)."),
    paths(
        tenants::status::get_tenant,
        tenants::status::list_tenants,
        tenants::status::platform_summary,
        tenants::metrics::tenant_metrics,
        tenants::backups::list_backups,
        tenants::backups::create_backup,
        tenants::backups::restore_backup,
        tenants::tokens::issue_token,
        tenants::tokens::list_tokens,
        tenants::tokens::revoke_token,
        tenants::readyz,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&BearerAuth),
    tags((name = "tenants"), (name = "backups"), (name = "tokens"), (name = "health"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_lists_every_route() {
        let doc = serde_json::to_value(document()).unwrap();
        for path in [
            "/api/v1/tenants",
            "/api/v1/tenants/{name}",
            "/api/v1/tenants/{name}/metrics",
            "/api/v1/tenants/{name}/backups",
            "/api/v1/tenants/{name}/backups/{backup}/restore",
            "/api/v1/tenants/{name}/tokens",
            "/api/v1/tenants/{name}/tokens/{id}",
            "/api/v1/platforms/{name}/summary",
            "/readyz",
        ] {
            assert!(
                doc["paths"][path].is_object(),
                "{path} missing from the document"
            );
        }
        assert!(doc["components"]["schemas"]["TenantView"].is_object());
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    }
}
