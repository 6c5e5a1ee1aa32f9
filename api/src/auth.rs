//! Bearer-token checks. For now only the admin token (`STACKPLANE_ADMIN_TOKEN`) is known.

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::http_error::ApiError;

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Ok when the request carries the admin token (compared by digest, so in constant time with
/// respect to the token).
pub fn require_admin(headers: &HeaderMap, admin_token: &str) -> Result<(), ApiError> {
    let Some(token) = bearer(headers) else {
        return Err(ApiError::unauthorized());
    };
    if Sha256::digest(token.as_bytes()) == Sha256::digest(admin_token.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}
