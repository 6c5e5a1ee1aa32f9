//! Who is calling: the admin (`STACKPLANE_ADMIN_TOKEN`), a tenant-scoped token issued by
//! `POST /api/v1/tenants/{name}/tokens`, or a dashboard token issued by `POST /api/v1/tokens`
//! (a customer dashboard's backend: checkout, portal and the status of the tenants of the
//! customers it checked out). No, an unknown, a revoked or an expired token answers 401.
//!
//! There is one authentication path: the [`authenticate`] middleware in front of every
//! `/api/v1` route. It refuses addresses that used up their failed-authentication bucket
//! (429, no token lookup) unless the token is the admin's or a cached one, checks the token, draws from the caller's own bucket, and leaves the
//! [`Caller`] in the request for the handler and in the response for the audit log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::audit::Actor;
use crate::hardening::{Bucket, Gate, LimitKey};
use crate::http_error::ApiError;

/// Timeout of the token lookup in Postgres.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// Most token digests kept in the cache.
const MAX_CACHED: usize = 50_000;

/// The authenticated caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Admin,
    /// A token scoped to one tenant.
    Tenant {
        token_id: Uuid,
        tenant: String,
    },
    /// A customer dashboard's backend: creates checkout and portal sessions and reads the
    /// tenants of the customers its checkouts made (`checkout_customers`), nothing else.
    Dashboard {
        token_id: Uuid,
    },
}

impl Caller {
    /// The verified identity the audit log records for this caller.
    pub fn audit_actor(&self) -> Actor {
        match self {
            Caller::Admin => Actor::Admin,
            Caller::Tenant { token_id, .. } | Caller::Dashboard { token_id } => {
                Actor::Token(*token_id)
            }
        }
    }

    /// The caller's own rate-limit bucket.
    pub fn limit_key(&self) -> LimitKey {
        match self {
            Caller::Admin => LimitKey::Admin,
            Caller::Tenant { token_id, .. } | Caller::Dashboard { token_id } => {
                LimitKey::Token(*token_id)
            }
        }
    }

    /// How the audit log names the caller: `admin` or `token:<id>`.
    pub fn actor(&self) -> String {
        match self {
            Caller::Admin => "admin".to_owned(),
            Caller::Tenant { token_id, .. } | Caller::Dashboard { token_id } => {
                format!("token:{token_id}")
            }
        }
    }

    /// The id of the caller's issued token; none for the admin.
    pub fn token_id(&self) -> Option<Uuid> {
        match self {
            Caller::Admin => None,
            Caller::Tenant { token_id, .. } | Caller::Dashboard { token_id } => Some(*token_id),
        }
    }

    /// Ok when the caller may use a tenant route (metrics, backups) for `tenant`. Another
    /// tenant's name answers 404, exactly as a tenant that does not exist, so a token cannot
    /// probe which tenants exist. A dashboard token has none of these routes (403): it reads a
    /// tenant only through [`Caller::may_read_customer_tenant`].
    pub fn may_read(&self, tenant: &str) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Tenant { tenant: own, .. } if own == tenant => Ok(()),
            Caller::Tenant { .. } => Err(not_found_tenant(tenant)),
            Caller::Dashboard { .. } => Err(forbidden(
                "a dashboard token reads tenants only through GET /api/v1/tenants/{name}",
            )),
        }
    }

    /// Ok when the caller may read `tenant`, whose Stripe customer is `customer`, through the
    /// routes a customer dashboard has (status, portal): as [`Caller::may_read`] for the admin
    /// and tenant tokens; for a dashboard token, when its checkout made that customer
    /// (`checkout_customers`). Any other tenant answers the 404 of one that does not exist.
    pub async fn may_read_customer_tenant(
        &self,
        db: &PgPool,
        tenant: &str,
        customer: Option<&str>,
    ) -> Result<(), ApiError> {
        let Caller::Dashboard { token_id } = self else {
            return self.may_read(tenant);
        };
        let Some(customer) = customer.filter(|c| !c.is_empty()) else {
            return Err(not_found_tenant(tenant));
        };
        if crate::billing::checkout_customers::checked_out_by(db, customer, *token_id).await? {
            Ok(())
        } else {
            Err(not_found_tenant(tenant))
        }
    }

    /// Ok for the admin; 403 for any issued token.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Tenant { .. } | Caller::Dashboard { .. } => {
                Err(forbidden("this endpoint needs the admin token"))
            }
        }
    }

    /// Ok for who creates Checkout Sessions: the admin and dashboard tokens; 403 for a tenant
    /// token.
    pub fn require_checkout(&self) -> Result<(), ApiError> {
        match self {
            Caller::Admin | Caller::Dashboard { .. } => Ok(()),
            Caller::Tenant { .. } => Err(forbidden(
                "checkout needs a dashboard token or the admin token",
            )),
        }
    }
}

fn forbidden(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// The 404 of a tenant that does not exist (or that the caller may not see).
pub fn not_found_tenant(tenant: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no tenant named {tenant:?}"),
    )
}

/// SHA-256 of a token, as stored in `api_tokens.token_hash`.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// What authentication needs: the admin token's digest, the token table and a short-lived
/// cache of verified tenant-token digests.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    admin_digest: [u8; 32],
    db: PgPool,
    ttl: Duration,
    /// Verified tenant tokens: digest → (caller, valid until). Only successes are cached; a
    /// revocation through this process takes effect at once ([`Authenticator::forget_token`]),
    /// one through another replica when the entry expires (at most `ttl`).
    cache: Mutex<HashMap<[u8; 32], (Caller, Instant)>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

impl Authenticator {
    /// `ttl`: how long a verified tenant token is believed without asking the database.
    pub fn new(admin_token: &str, db: PgPool, ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                admin_digest: token_digest(admin_token),
                db,
                ttl,
                cache: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn cached(&self, digest: &[u8; 32]) -> Option<Caller> {
        let cache = self.inner.cache.lock().ok()?;
        let (caller, until) = cache.get(digest)?;
        (*until > Instant::now()).then(|| caller.clone())
    }

    fn remember(&self, digest: [u8; 32], caller: &Caller, expires_at: Option<DateTime<Utc>>) {
        if self.inner.ttl.is_zero() {
            return;
        }
        let mut until = Instant::now() + self.inner.ttl;
        if let Some(expires) = expires_at {
            let left = (expires - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            until = until.min(Instant::now() + left);
        }
        if let Ok(mut cache) = self.inner.cache.lock() {
            if cache.len() >= MAX_CACHED {
                let now = Instant::now();
                cache.retain(|_, (_, until)| *until > now);
                if cache.len() >= MAX_CACHED {
                    cache.clear();
                }
            }
            cache.insert(digest, (caller.clone(), until));
        }
    }

    /// Drops token `id` from the cache: a revocation through this process takes effect with the
    /// next request (another replica's cache still believes it for at most the TTL).
    pub fn forget_token(&self, id: Uuid) {
        if let Ok(mut cache) = self.inner.cache.lock() {
            cache.retain(|_, (caller, _)| caller.token_id() != Some(id));
        }
    }

    /// The caller, when it is known without the database: the admin token, or a tenant token
    /// verified within the cache's lifetime.
    pub fn known(&self, headers: &HeaderMap) -> Option<Caller> {
        let token = crate::auth::bearer(headers).filter(|t| !t.is_empty())?;
        let digest = token_digest(token);
        if digest == self.inner.admin_digest {
            return Some(Caller::Admin);
        }
        self.cached(&digest)
    }

    /// The caller of a request with these headers. Tokens are compared by digest: the admin
    /// token's digest in memory, tenant tokens' digests in the cache or by the database's
    /// unique index. 401 for no or an unknown token; 503 when the database cannot be asked.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let token = crate::auth::bearer(headers)
            .filter(|t| !t.is_empty())
            .ok_or_else(ApiError::unauthorized)?;
        let digest = token_digest(token);
        if digest == self.inner.admin_digest {
            return Ok(Caller::Admin);
        }
        if let Some(caller) = self.cached(&digest) {
            return Ok(caller);
        }
        let lookup = sqlx::query_as::<_, (Uuid, String, Option<String>, Option<DateTime<Utc>>)>(
            "SELECT id, scope, tenant, expires_at FROM api_tokens
             WHERE token_hash = $1 AND scope IN ('tenant', 'dashboard') AND revoked_at IS NULL
               AND (expires_at IS NULL OR expires_at > now())",
        )
        .bind(&digest[..])
        .fetch_optional(&self.inner.db);
        let row = match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
            Ok(Ok(row)) => row,
            Ok(Err(error)) => {
                tracing::error!(%error, "looking up a bearer token");
                return Err(ApiError::unavailable(
                    "cannot check the token now; try again",
                ));
            }
            Err(_) => {
                tracing::error!("looking up a bearer token timed out");
                return Err(ApiError::unavailable(
                    "cannot check the token now; try again",
                ));
            }
        };
        let Some((token_id, scope, tenant, expires_at)) = row else {
            return Err(ApiError::unauthorized());
        };
        let caller = match (scope.as_str(), tenant) {
            ("tenant", Some(tenant)) => Caller::Tenant { token_id, tenant },
            ("dashboard", _) => Caller::Dashboard { token_id },
            _ => return Err(ApiError::unauthorized()),
        };
        self.remember(digest, &caller, expires_at);
        Ok(caller)
    }
}

/// The middleware of every authenticated route (see the module docs).
pub async fn authenticate(
    State(auth): State<Authenticator>,
    mut request: Request,
    next: Next,
) -> Response {
    let gate = Gate::of_request(&request);
    // A caller known without the database passes even from a blocked address (behind a NAT,
    // one guesser must not lock out everyone); anything else from it is refused unlooked-up.
    let caller = match auth.known(request.headers()) {
        Some(caller) => caller,
        None => {
            if let Err(limited) = gate.auth_blocked() {
                return limited.into_response();
            }
            match auth.authenticate(request.headers()).await {
                Ok(caller) => caller,
                Err(error) if error.status == StatusCode::UNAUTHORIZED => {
                    tracing::info!(client = %gate.addr, "authentication failed");
                    return gate.auth_failed(error).into_response();
                }
                Err(error) => return error.into_response(),
            }
        }
    };
    let actor = caller.audit_actor();
    let mut response = match gate.check(Bucket::Identity, caller.limit_key()) {
        Ok(()) => {
            request.extensions_mut().insert(caller);
            // For the token revocation handler, which drops the token from the cache.
            request.extensions_mut().insert(auth.clone());
            next.run(request).await
        }
        Err(limited) => limited.into_response(),
    };
    response.extensions_mut().insert(actor);
    response
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    /// The caller [`authenticate`] verified. A route outside that middleware has none: 401.
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(ApiError::unauthorized)
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
        assert_eq!(
            caller.require_checkout().unwrap_err().status,
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn dashboard_tokens_check_out_and_have_no_admin_or_tenant_routes() {
        let id = Uuid::from_u128(7);
        let dashboard = Caller::Dashboard { token_id: id };
        assert!(dashboard.require_checkout().is_ok());
        assert!(Caller::Admin.require_checkout().is_ok());
        assert_eq!(
            dashboard.require_admin().unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        // Metrics and backups are the tenant's and the admin's, whichever tenant is named.
        assert_eq!(
            dashboard.may_read("a").unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(dashboard.token_id(), Some(id));
        assert_eq!(Caller::Admin.token_id(), None);
        assert_eq!(dashboard.actor(), format!("token:{id}"));
        assert_eq!(dashboard.limit_key(), LimitKey::Token(id));
    }
}
