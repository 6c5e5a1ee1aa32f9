//! The bearer token of a request. Authentication itself is [`crate::caller::authenticate`].

use axum::http::HeaderMap;

/// The bearer token of a request, if any (`Authorization: Bearer <token>`).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}
