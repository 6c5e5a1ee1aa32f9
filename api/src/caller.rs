//! Who is calling: the admin (`STACKPLANE_ADMIN_TOKEN`) or a tenant-scoped token issued by
//! `POST /api/v1/tenants/{name}/tokens`. No, an unknown, a revoked or an expired token answers
//! 401.

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::http_error::ApiError;

/// The authenticated caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Admin,
    /// A token scoped to one tenant.
    Tenant {
        token_id: Uuid,
        tenant: String,
    },
}

impl Caller {
    /// How the audit log names the caller: `admin` or `token:<id>`.
    pub fn actor(&self) -> String {
        match self {
            Caller::Admin => "admin".to_owned(),
            Caller::Tenant { token_id, .. } => format!("token:{token_id}"),
        }
    }

    /// Ok when the caller may see `tenant`. Another tenant's name answers 404, exactly as a
    /// tenant that does not exist, so a token cannot probe which tenants exist.
    pub fn may_read(&self, tenant: &str) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Tenant { tenant: own, .. } if own == tenant => Ok(()),
            Caller::Tenant { .. } => Err(not_found_tenant(tenant)),
        }
    }

    /// Ok for the admin; 403 for a tenant token.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Tenant { .. } => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this endpoint needs the admin token",
            )),
        }
    }
}

/// The 404 of a tenant that does not exist (or that the caller may not see).
pub fn not_found_tenant(tenant: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no tenant named {tenant:?}"),
    )
}

/// What authentication needs: the admin token's digest and the token table.
#[derive(Clone)]
pub struct Authenticator {
    admin_digest: [u8; 32],
    db: PgPool,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

/// SHA-256 of a token, as stored in `api_tokens.token_hash`.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Authenticator {
    pub fn new(admin_token: &str, db: PgPool) -> Self {
        Self {
            admin_digest: token_digest(admin_token),
            db,
        }
    }

    /// The caller of a request with these headers. Tokens are compared by digest: the admin
    /// token's digest in memory, tenant tokens' digests by the database's unique index.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let token = crate::auth::bearer(headers)
            .filter(|t| !t.is_empty())
            .ok_or_else(ApiError::unauthorized)?;
        let digest = token_digest(token);
        if digest == self.admin_digest {
            return Ok(Caller::Admin);
        }
        let row: Option<(Uuid, String)> = sqlx::query_as(
            "SELECT id, tenant FROM api_tokens
             WHERE token_hash = $1 AND scope = 'tenant' AND revoked_at IS NULL
               AND (expires_at IS NULL OR expires_at > now())",
        )
        .bind(&digest[..])
        .fetch_optional(&self.db)
        .await
        .map_err(|error| {
            tracing::error!(%error, "looking up a bearer token");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "cannot check the token now; try again",
            )
        })?;
        match row {
            Some((token_id, tenant)) => Ok(Caller::Tenant { token_id, tenant }),
            None => Err(ApiError::unauthorized()),
        }
    }
}

impl<S> FromRequestParts<S> for Caller
where
    Authenticator: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // The audit middleware authenticates state-changing calls first and leaves the caller here.
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let caller = Authenticator::from_ref(state)
            .authenticate(&parts.headers)
            .await?;
        parts.extensions.insert(caller.clone());
        Ok(caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_tokens_see_only_their_tenant() {
        let caller = Caller::Tenant {
            token_id: Uuid::nil(),
            tenant: "a".into(),
        };
        assert!(caller.may_read("a").is_ok());
        assert_eq!(
            caller.may_read("b").unwrap_err().status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            caller.require_admin().unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        assert!(Caller::Admin.may_read("b").is_ok());
        assert_eq!(caller.actor(), format!("token:{}", Uuid::nil()));
    }
}
