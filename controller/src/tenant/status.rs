//! Writes the Tenant's status (computed by `stackplane_core::tenant::status`) by server-side
//! apply of the status subresource.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use stackplane_core::tenant::status::{apply_body, legacy_status_owners};
use stackplane_crds::{Tenant, TenantStatus};

use crate::error::{Error, Result};

/// Writes `status` by server-side apply on the status subresource with the controller's field
/// manager, on the condition that the Tenant is still at the resourceVersion it was read at: a
/// replica working from an older copy (a leader handing over, a lagging cache) gets
/// [`Error::StatusConflict`] instead of overwriting newer data. Returns the resourceVersion
/// the write made.
pub async fn write(
    client: &Client,
    tenant: &Tenant,
    status: &TenantStatus,
) -> Result<Option<String>> {
    let api: Api<Tenant> = Api::all(client.clone());
    let stripped;
    let tenant = match legacy_status_owners(tenant) {
        None => tenant,
        Some(kept) => {
            stripped = strip_legacy_owners(&api, tenant, kept).await?;
            &stripped
        }
    };
    let body = apply_body(tenant, status)?;
    let params = PatchParams::apply(crate::k8s::FIELD_MANAGER).force();
    match api
        .patch_status(&tenant.name_any(), &params, &Patch::Apply(&body))
        .await
    {
        Ok(written) => Ok(written.metadata.resource_version),
        Err(e) if crate::k8s::is_conflict(&e) => Err(Error::StatusConflict(e)),
        Err(e) => Err(Error::Status(e)),
    }
}

/// Replaces the Tenant's managedFields with `kept`, on the condition that it is still at the
/// resourceVersion read; returns the Tenant as it is afterwards.
async fn strip_legacy_owners(
    api: &Api<Tenant>,
    tenant: &Tenant,
    kept: Vec<ManagedFieldsEntry>,
) -> Result<Tenant> {
    // A merge patch naming the resourceVersion is refused (409) unless the Tenant is still at it;
    // a list in a merge patch replaces the whole list.
    let patch = json!({ "metadata": {
        "resourceVersion": tenant.metadata.resource_version,
        "managedFields": kept,
    }});
    let params = PatchParams {
        field_manager: Some(crate::k8s::FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    match api
        .patch(&tenant.name_any(), &params, &Patch::Merge(&patch))
        .await
    {
        Ok(t) => {
            tracing::info!(tenant = %tenant.name_any(), "status ownership moved to server-side apply");
            Ok(t)
        }
        Err(e) if crate::k8s::is_conflict(&e) => Err(Error::StatusConflict(e)),
        Err(e) => Err(Error::Status(e)),
    }
}

/// The writer against a mocked API server.
#[cfg(test)]
mod mocked_api {
    use http::StatusCode;
    use serde_json::json;
    use stackplane_core::contract::field_managers;
    use stackplane_crds::TenantSpec;

    use super::*;
    use crate::mock_api;

    fn tenant() -> Tenant {
        let mut t = Tenant::new("acme", TenantSpec::new("tackle", "starter"));
        t.metadata.resource_version = Some("42".into());
        t
    }

    #[tokio::test]
    async fn writes_one_forced_apply_of_the_status_at_the_version_read() {
        let (client, server) = mock_api::pair();
        let calls = server.serve(|call| {
            // The Tenant as the server stores it after the write.
            let mut stored = serde_json::to_value(tenant()).expect("json");
            stored["metadata"]["resourceVersion"] = json!("43");
            stored["status"] = call.body["status"].clone();
            (StatusCode::OK, stored)
        });
        let written = write(&client, &tenant(), &TenantStatus::default())
            .await
            .expect("write");
        drop(client);
        let calls = calls.await.expect("server");
        assert_eq!(written.as_deref(), Some("43"));
        assert_eq!(calls.len(), 1, "{calls:?}");
        let c = &calls[0];
        assert_eq!(c.method, "PATCH");
        assert_eq!(c.path, "/apis/stackplane.io/v1alpha1/tenants/acme/status");
        assert!(c.has_param("fieldManager", field_managers::CONTROLLER));
        assert!(c.has_param("force", "true"));
        assert_eq!(c.body["metadata"]["resourceVersion"], "42");
    }

    #[tokio::test]
    async fn a_stale_read_is_a_conflict_not_an_overwrite() {
        let (client, server) = mock_api::pair();
        let calls = server.serve(|_| mock_api::conflict());
        let err = write(&client, &tenant(), &TenantStatus::default())
            .await
            .expect_err("refused");
        drop(client);
        assert!(matches!(err, Error::StatusConflict(_)), "{err:?}");
        assert_eq!(
            calls.await.expect("server").len(),
            1,
            "written once, never retried"
        );
    }
}
