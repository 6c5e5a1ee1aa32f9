//! Tenant-scoped bearer tokens: issued by the admin (shown once, stored as a SHA-256 hash),
//! listed without their secret, revoked.

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

/// Prefix of every tenant token, so a leaked one is recognisable (secret scanners, logs).
pub const TOKEN_PREFIX: &str = "spt_";

/// A new random token: the prefix and 32 random bytes in hex.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
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

/// A token as listed: everything but the secret.
#[derive(Serialize, Debug, ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub id: Uuid,
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
    if let Some(d) = &body.description {
        if d.chars().count() > 256 {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                "description is longer than 256 characters",
            ));
        }
    }
    if body.expires_at.is_some_and(|t| t <= Utc::now()) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "expiresAt is not in the future",
        ));
    }
    if api
        .tenants
        .get(&kube::runtime::reflector::ObjectRef::new(name))
        .is_none()
    {
        return Err(not_found_tenant(name));
    }
    let token = new_token();
    let prefix: String = token.chars().take(TOKEN_PREFIX.len() + 6).collect();
    let info: TokenInfo = sqlx::query_as(
        "INSERT INTO api_tokens (token_hash, prefix, scope, tenant, description, created_by, expires_at)
         VALUES ($1, $2, 'tenant', $3, $4, $5, $6)
         RETURNING id, tenant, prefix, description, created_by, created_at, expires_at, revoked_at",
    )
    .bind(&token_digest(&token)[..])
    .bind(&prefix)
    .bind(name)
    .bind(&body.description)
    .bind(caller.actor())
    .bind(body.expires_at)
    .fetch_one(&api.db)
    .await
    .map_err(db_error)?;
    tracing::info!(tenant = %name, token_id = %info.id, "token issued");
    let details = AuditDetails(serde_json::json!({ "tokenId": info.id, "prefix": info.prefix }));
    let mut response = (StatusCode::CREATED, Json(IssuedToken { token, info })).into_response();
    response.extensions_mut().insert(details);
    Ok(response)
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
        "SELECT id, tenant, prefix, description, created_by, created_at, expires_at, revoked_at
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
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
    }
}
