//! Request extractors whose rejections are JSON errors (`{"error": {"code", "message"}}`)
//! instead of axum's plain-text ones.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::http_error::ApiError;

/// A JSON request body. An empty body reads as `{}`, so requests whose fields are all optional
/// need no body; any other body must be `application/json`. Syntax errors answer 400, bodies
/// of the wrong shape (unknown or missing fields, wrong types) 422.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| {
                let v = v.trim();
                v.eq_ignore_ascii_case("application/json") || v.ends_with("+json")
            });
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            ApiError::new(rejection.status(), "unreadable_body", rejection.body_text())
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return parse(b"{}").map(JsonBody);
        }
        if is_json != Some(true) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the request body must be application/json",
            ));
        }
        parse(&bytes).map(JsonBody)
    }
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|error| {
        use serde_json::error::Category;
        match error.classify() {
            Category::Data => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                error.to_string(),
            ),
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", error.to_string())
            }
        }
    })
}

/// Query parameters; unknown or malformed ones answer 400.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<T, S> FromRequestParts<S> for QueryParams<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| QueryParams(q.0))
            .map_err(|rejection| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    rejection.body_text(),
                )
            })
    }
}

/// Path parameters; ones that cannot be read (e.g. percent-encoded bytes that are not UTF-8)
/// answer 400 in the JSON error shape.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|rejection| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_path",
                    rejection.body_text(),
                )
            })
    }
}

/// A tenant name from the path, refused with 400 unless it is a DNS-1123 label.
pub fn tenant_name(name: &str) -> Result<&str, ApiError> {
    if stackplane_crds::naming::is_dns_label(name) {
        Ok(name)
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_name",
            format!("{name:?} is not a valid name: lowercase letters, digits and '-', at most 63 characters, starting and ending with a letter or digit"),
        ))
    }
}

/// Whether `name` is a DNS-1123 subdomain (the names of TenantBackups), as Kubernetes checks
/// it: at most 253 characters, dot-separated parts of lowercase letters, digits and '-' that
/// start and end with a letter or digit (no length limit per part).
pub fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomains() {
        assert!(is_dns_subdomain("a-b.c-1"));
        assert!(!is_dns_subdomain("A"));
        assert!(!is_dns_subdomain("a..b"));
        assert!(!is_dns_subdomain(""));
        assert!(!is_dns_subdomain(&"a".repeat(254)));
        assert!(is_dns_subdomain(&"a".repeat(100)));
        assert!(!is_dns_subdomain("a-.b"));
    }

    #[test]
    fn names() {
        assert!(tenant_name("leadsite-io-abc").is_ok());
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            let err = tenant_name(bad).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(err.code, "invalid_name");
        }
    }
}
