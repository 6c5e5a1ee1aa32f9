//! Issued bearer tokens: tenant-scoped ones (`/api/v1/tenants/{name}/tokens`) and dashboard
//! ones (`/api/v1/tokens`). Issued by the admin (shown once, stored as a SHA-256 hash in
//! `api_tokens` with their scope), listed without their secret, revoked.

use crate::extract::Path;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;
use uuid::Uuid;

use super::TenantApi;
use crate::audit::AuditDetails;
use crate::caller::{not_found_tenant, token_digest, Caller};
use crate::extract::{tenant_name, JsonBody};
use crate::http_error::ApiError;
use crate::state::AppState;

/// Prefix of every tenant token, so a leaked one is recognisable (secret scanners, logs).
pub const TOKEN_PREFIX: &str = "spt_";
/// Prefix of every dashboard token: recognisable, and told apart from a tenant's.
pub const DASHBOARD_TOKEN_PREFIX: &str = "spd_";

/// The role `POST /api/v1/tokens` issues. Tenant tokens have their own route (they name a
/// tenant); the admin token is configuration, never issued.
pub const DASHBOARD_ROLE: &str = "dashboard";

/// A new random token: `prefix` and 32 random bytes in hex.
pub fn new_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// Body of `POST /api/v1/tenants/{name}/tokens`; every field is optional.
#[derive(Deserialize, Debug, Default, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssueToken {
    /// What the token is for (at most 256 characters).
    pub description: Option<String>,
    /// When the token stops working; must be in the future. Never, when absent.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Body of `POST /api/v1/tokens`.
#[derive(Deserialize, Debug, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssueRoleToken {
    /// The token's role: `dashboard` (a customer dashboard's backend). Tenant tokens are
    /// issued at `POST /api/v1/tenants/{name}/tokens`.
    pub role: String,
    /// What the token is for, e.g. which dashboard (at most 256 characters).
    pub description: Option<String>,
    /// When the token stops working; must be in the future. Never, when absent.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A token as listed: everything but the secret.
#[derive(Serialize, Debug, ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub id: Uuid,
    /// `tenant` or `dashboard`.
    pub role: String,
    /// The tenant of a tenant token.
    pub tenant: Option<String>,
    /// The first characters of the token, to tell tokens apart.
    pub prefix: String,
    pub description: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A newly issued token. `token` is shown here once and never again.
#[derive(Serialize, Debug, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuedToken {
    pub token: String,
    #[serde(flatten)]
    pub info: TokenInfo,
}

fn db_error(error: sqlx::Error) -> ApiError {
    tracing::error!(%error, "api_tokens");
    ApiError::internal("database error")
}

/// Issue a token scoped to one tenant (admin).
#[utoipa::path(post, path = "/api/v1/tenants/{name}/tokens", tag = "tokens",
    params(("name" = String, Path, description = "Tenant name")),
    request_body(content = IssueToken, description = "optional"),
    security(("bearer" = [])),
    responses((status = 201, body = IssuedToken), (status = 400, body = crate::http_error::ErrorBody),
        (status = 403, body = crate::http_error::ErrorBody), (status = 404, body = crate::http_error::ErrorBody),
        (status = 422, body = crate::http_error::ErrorBody)))]
pub async fn issue_token(
    State(api): State<Arc<TenantApi>>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<IssueToken>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let name = tenant_name(&name)?;
    check_issue(body.description.as_deref(), body.expires_at)?;
    if api
        .tenants
        .get(&kube::runtime::reflector::ObjectRef::new(name))
        .is_none()
    {
        return Err(not_found_tenant(name));
    }
    let issued = insert_token(
        &api.db,
        NewToken {
            scope: "tenant",
            prefix: TOKEN_PREFIX,
            tenant: Some(name),
            description: body.description.as_deref(),
            created_by: &caller.actor(),
            expires_at: body.expires_at,
        },
    )
    .await?;
    tracing::info!(tenant = %name, token_id = %issued.info.id, "token issued");
    Ok(issued_response(issued))
}

/// Issue a token of a role that names no tenant: `dashboard` (admin).
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens",
    request_body = IssueRoleToken,
    security(("bearer" = [])),
    responses((status = 201, body = IssuedToken), (status = 400, body = crate::http_error::ErrorBody),
        (status = 403, body = crate::http_error::ErrorBody), (status = 422, body = crate::http_error::ErrorBody)))]
pub async fn issue_role_token(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<IssueRoleToken>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    check_role(&body.role)?;
    check_issue(body.description.as_deref(), body.expires_at)?;
    let issued = insert_token(
        &state.db,
        NewToken {
            scope: DASHBOARD_ROLE,
            prefix: DASHBOARD_TOKEN_PREFIX,
            tenant: None,
            description: body.description.as_deref(),
            created_by: &caller.actor(),
            expires_at: body.expires_at,
        },
    )
    .await?;
    tracing::info!(role = DASHBOARD_ROLE, token_id = %issued.info.id, "token issued");
    Ok(issued_response(issued))
}

/// The dashboard tokens, without their secrets (admin).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    security(("bearer" = [])),
    responses((status = 200, body = Vec<TokenInfo>), (status = 403, body = crate::http_error::ErrorBody)))]
pub async fn list_role_tokens(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    caller.require_admin()?;
    let tokens = sqlx::query_as(
        "SELECT id, scope AS role, tenant, prefix, description, created_by, created_at, expires_at, revoked_at
         FROM api_tokens WHERE scope = 'dashboard' ORDER BY created_at, id",
    )
    .fetch_all(&state.db)
    .await
    .map_err(db_error)?;
    Ok(Json(tokens))
}

/// Revoke a dashboard token (admin). Revoking a revoked token again is not an error.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens",
    params(("id" = Uuid, Path, description = "Token id")),
    security(("bearer" = [])),
    responses((status = 204), (status = 403, body = crate::http_error::ErrorBody),
        (status = 404, body = crate::http_error::ErrorBody)))]
pub async fn revoke_role_token(
    State(state): State<AppState>,
    caller: Caller,
    auth: Option<axum::Extension<crate::caller::Authenticator>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such token");
    let id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let revoked: Option<(Uuid,)> = sqlx::query_as(
        "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, now())
         WHERE id = $1 AND scope = 'dashboard' RETURNING id",
    )
    .bind(id)
    .fetch_optional(&state.db)
    .await
    .map_err(db_error)?;
    if revoked.is_none() {
        return Err(not_found());
    }
    if let Some(axum::Extension(auth)) = auth {
        auth.forget_token(id);
    }
    tracing::info!(role = DASHBOARD_ROLE, token_id = %id, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// 400 for any role but `dashboard`, saying where the others come from.
pub fn check_role(role: &str) -> Result<(), ApiError> {
    let refuse = |message: String| {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_role",
            message,
        ))
    };
    match role {
        DASHBOARD_ROLE => Ok(()),
        "tenant" => {
            refuse("tenant tokens are issued at POST /api/v1/tenants/{name}/tokens".to_owned())
        }
        "admin" => {
            refuse("the admin token is STACKPLANE_ADMIN_TOKEN; it is never issued".to_owned())
        }
        other => refuse(format!(
            "unknown role {other:?}; this endpoint issues role \"dashboard\""
        )),
    }
}

/// The checks every issued token's request passes: a description of at most 256 characters,
/// an expiry in the future.
fn check_issue(
    description: Option<&str>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(), ApiError> {
    if description.is_some_and(|d| d.chars().count() > 256) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "description is longer than 256 characters",
        ));
    }
    if expires_at.is_some_and(|t| t <= Utc::now()) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "expiresAt is not in the future",
        ));
    }
    Ok(())
}

/// A token to issue.
struct NewToken<'a> {
    scope: &'static str,
    prefix: &'static str,
    tenant: Option<&'a str>,
    description: Option<&'a str>,
    created_by: &'a str,
    expires_at: Option<DateTime<Utc>>,
}

/// Stores a new random token of `new` by its digest; the secret itself is only returned.
async fn insert_token(db: &sqlx::PgPool, new: NewToken<'_>) -> Result<IssuedToken, ApiError> {
    let token = new_token(new.prefix);
    let prefix: String = token.chars().take(new.prefix.len() + 6).collect();
    let info: TokenInfo = sqlx::query_as(
        "INSERT INTO api_tokens (token_hash, prefix, scope, tenant, description, created_by, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         RETURNING id, scope AS role, tenant, prefix, description, created_by, created_at, expires_at, revoked_at",
    )
    .bind(&token_digest(&token)[..])
    .bind(&prefix)
    .bind(new.scope)
    .bind(new.tenant)
    .bind(new.description)
    .bind(new.created_by)
    .bind(new.expires_at)
    .fetch_one(db)
    .await
    .map_err(db_error)?;
    Ok(IssuedToken { token, info })
}

/// 201 with the token, and the audit row's details (never the secret).
fn issued_response(issued: IssuedToken) -> Response {
    let details = AuditDetails(serde_json::json!({
        "tokenId": issued.info.id, "prefix": issued.info.prefix, "role": issued.info.role,
    }));
    let mut response = (StatusCode::CREATED, Json(issued)).into_response();
    response.extensions_mut().insert(details);
    response
}

/// The tokens of a tenant, without their secrets (admin).
#[utoipa::path(get, path = "/api/v1/tenants/{name}/tokens", tag = "tokens",
    params(("name" = String, Path, description = "Tenant name")),
    security(("bearer" = [])),
    responses((status = 200, body = Vec<TokenInfo>), (status = 403, body = crate::http_error::ErrorBody)))]
pub async fn list_tokens(
    State(api): State<Arc<TenantApi>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    caller.require_admin()?;
    let name = tenant_name(&name)?;
    let tokens = sqlx::query_as(
        "SELECT id, scope AS role, tenant, prefix, description, created_by, created_at, expires_at, revoked_at
         FROM api_tokens WHERE tenant = $1 ORDER BY created_at, id",
    )
    .bind(name)
    .fetch_all(&api.db)
    .await
    .map_err(db_error)?;
    Ok(Json(tokens))
}

/// Revoke a tenant's token (admin). Revoking a revoked token again is not an error.
#[utoipa::path(delete, path = "/api/v1/tenants/{name}/tokens/{id}", tag = "tokens",
    params(("name" = String, Path, description = "Tenant name"), ("id" = Uuid, Path, description = "Token id")),
    security(("bearer" = [])),
    responses((status = 204), (status = 403, body = crate::http_error::ErrorBody),
        (status = 404, body = crate::http_error::ErrorBody)))]
pub async fn revoke_token(
    State(api): State<Arc<TenantApi>>,
    caller: Caller,
    auth: Option<axum::Extension<crate::caller::Authenticator>>,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let name = tenant_name(&name)?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such token");
    let id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let revoked: Option<(Uuid,)> = sqlx::query_as(
        "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, now())
         WHERE id = $1 AND tenant = $2 AND scope = 'tenant' RETURNING id",
    )
    .bind(id)
    .bind(name)
    .fetch_optional(&api.db)
    .await
    .map_err(db_error)?;
    match revoked {
        Some(_) => {
            // Refused from the next request on, not only once the token cache's entry expires.
            if let Some(axum::Extension(auth)) = auth {
                auth.forget_token(id);
            }
            tracing::info!(tenant = %name, token_id = %id, "token revoked");
            Ok(StatusCode::NO_CONTENT)
        }
        None => Err(not_found()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_prefixed() {
        let a = new_token(TOKEN_PREFIX);
        let b = new_token(TOKEN_PREFIX);
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
        assert!(new_token(DASHBOARD_TOKEN_PREFIX).starts_with("spd_"));
    }

    #[test]
    fn only_the_dashboard_role_is_issued_here_and_the_others_say_where_they_come_from() {
        assert!(check_role("dashboard").is_ok());
        for (role, says) in [
            ("tenant", "/api/v1/tenants/{name}/tokens"),
            ("admin", "STACKPLANE_ADMIN_TOKEN"),
            ("Dashboard", "unknown role"),
            ("", "unknown role"),
        ] {
            let err = check_role(role).unwrap_err();
            assert_eq!(
                (err.status, err.code),
                (StatusCode::BAD_REQUEST, "invalid_role")
            );
            assert!(err.message.contains(says), "{role}: {}", err.message);
        }
    }
}
