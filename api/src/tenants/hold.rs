//! An operator's hold on a tenant (`spec.hold`): `PUT`/`DELETE /api/v1/tenants/{name}/hold`,
//! admin only, audit-logged by the middleware (`tenant.hold`, `tenant.release`). The hold is
//! written with a merge patch under the field manager
//! [`stackplane_core::contract::field_managers::HOLDS`]: billing never sends `spec.hold`, so
//! its server-side apply neither removes nor takes it over. Releasing removes the hold whoever
//! set it (this api, the plugin, a direct edit, dispute handling): a person decided.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde::{Deserialize, Serialize};
use serde_json::json;
use stackplane_core::contract::field_managers::HOLDS as FIELD_MANAGER;
use stackplane_crds::{Tenant, HOLD_NOTE_MAX_LEN, HOLD_REASON_MAX_LEN};
use utoipa::ToSchema;

use super::TenantApi;
use crate::audit::AuditDetails;
use crate::caller::{not_found_tenant, Caller};
use crate::extract::{tenant_name, JsonBody, Path};
use crate::http_error::ApiError;

/// Timeout of the patch that writes `spec.hold`.
const KUBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Body of `PUT /api/v1/tenants/{name}/hold`.
#[derive(Deserialize, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    /// Why, in a word or two (`abuse`, `dispute`, `legal`): required, at most 64 characters.
    /// Optional in the schema only so that its absence answers a clear 400.
    pub reason: Option<String>,
    /// Free text for the next person (a ticket, who asked): at most 1024 characters.
    pub note: Option<String>,
}

/// The hold as written.
#[derive(Serialize, Debug, ToSchema)]
pub struct HoldView {
    pub tenant: String,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_hold", message)
}

/// The hold's reason and note, checked: a reason is required, both are bounded as the CRD
/// bounds them (so the API server never refuses what this accepts), and an empty note is none.
pub fn check(body: &HoldRequest) -> Result<(String, Option<String>), ApiError> {
    let reason = body.reason.as_deref().map(str::trim).unwrap_or_default();
    if reason.is_empty() {
        return Err(invalid("reason is required, e.g. {\"reason\": \"abuse\"}"));
    }
    if reason.chars().count() > HOLD_REASON_MAX_LEN {
        return Err(invalid(format!(
            "reason is longer than {HOLD_REASON_MAX_LEN} characters; put details in note"
        )));
    }
    if reason.chars().any(char::is_control) {
        return Err(invalid("reason must not contain control characters"));
    }
    let note = body
        .note
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty());
    if note.is_some_and(|n| n.chars().count() > HOLD_NOTE_MAX_LEN) {
        return Err(invalid(format!(
            "note is longer than {HOLD_NOTE_MAX_LEN} characters"
        )));
    }
    Ok((reason.to_owned(), note.map(str::to_owned)))
}

/// Sends `patch` to the Tenant `name` under the holds field manager; 404 when it does not exist.
async fn patch_tenant(
    api: &TenantApi,
    name: &str,
    patch: serde_json::Value,
) -> Result<(), ApiError> {
    let tenants = Api::<Tenant>::all(api.kube.clone());
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let patch = Patch::Merge(&patch);
    let sent = tenants.patch(name, &params, &patch);
    match tokio::time::timeout(KUBE_TIMEOUT, sent).await {
        Err(_) => {
            tracing::error!(tenant = %name, "patching spec.hold timed out");
            Err(ApiError::unavailable(
                "the Kubernetes API server did not answer in time",
            ))
        }
        Ok(Err(kube::Error::Api(s))) if s.code == 404 => Err(not_found_tenant(name)),
        Ok(Err(error)) => {
            tracing::error!(tenant = %name, %error, "patching spec.hold");
            Err(ApiError::internal("cannot write the tenant's hold"))
        }
        Ok(Ok(_)) => Ok(()),
    }
}

/// Hold a tenant: its workloads scale to zero and its dedicated instance stops until the hold
/// is released, whatever its subscription says (admin).
#[utoipa::path(put, path = "/api/v1/tenants/{name}/hold", tag = "tenants",
    params(("name" = String, Path, description = "Tenant name")),
    request_body = HoldRequest,
    security(("bearer" = [])),
    responses((status = 200, body = HoldView), (status = 400, body = crate::http_error::ErrorBody),
        (status = 403, body = crate::http_error::ErrorBody), (status = 404, body = crate::http_error::ErrorBody),
        (status = 422, body = crate::http_error::ErrorBody)))]
pub async fn set_hold(
    State(api): State<Arc<TenantApi>>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<HoldRequest>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let name = tenant_name(&name)?;
    let (reason, note) = check(&body)?;
    // `note: null` replaces a note an earlier hold had: the hold is written whole.
    let patch = json!({ "spec": { "hold": { "reason": reason, "note": note } } });
    patch_tenant(&api, name, patch).await?;
    tracing::warn!(tenant = %name, hold_reason = %reason, actor = %caller.actor(), "tenant held");
    let mut response = Json(HoldView {
        tenant: name.to_owned(),
        reason: reason.clone(),
        note,
    })
    .into_response();
    response
        .extensions_mut()
        .insert(AuditDetails(json!({ "reason": reason })));
    Ok(response)
}

/// Release a tenant's hold, whoever set it; releasing a tenant that is not held is not an
/// error (admin).
#[utoipa::path(delete, path = "/api/v1/tenants/{name}/hold", tag = "tenants",
    params(("name" = String, Path, description = "Tenant name")),
    security(("bearer" = [])),
    responses((status = 204), (status = 403, body = crate::http_error::ErrorBody),
        (status = 404, body = crate::http_error::ErrorBody)))]
pub async fn release_hold(
    State(api): State<Arc<TenantApi>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let name = tenant_name(&name)?;
    patch_tenant(&api, name, json!({ "spec": { "hold": null } })).await?;
    tracing::info!(tenant = %name, actor = %caller.actor(), "tenant hold released");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(reason: Option<&str>, note: Option<&str>) -> HoldRequest {
        HoldRequest {
            reason: reason.map(str::to_owned),
            note: note.map(str::to_owned),
        }
    }

    #[test]
    fn a_reason_is_required_and_both_are_bounded() {
        assert!(check(&req(None, None)).is_err());
        assert!(check(&req(Some("  "), Some("n"))).is_err());
        assert!(check(&req(Some(&"x".repeat(HOLD_REASON_MAX_LEN + 1)), None)).is_err());
        assert!(check(&req(Some("a\nb"), None)).is_err());
        assert!(check(&req(
            Some("abuse"),
            Some(&"n".repeat(HOLD_NOTE_MAX_LEN + 1))
        ))
        .is_err());
        assert_eq!(
            check(&req(Some(" abuse "), Some(""))).ok(),
            Some(("abuse".to_owned(), None))
        );
        assert_eq!(
            check(&req(
                Some(&"x".repeat(HOLD_REASON_MAX_LEN)),
                Some("ticket 42")
            ))
            .ok(),
            Some((
                "x".repeat(HOLD_REASON_MAX_LEN),
                Some("ticket 42".to_owned())
            ))
        );
    }
}
