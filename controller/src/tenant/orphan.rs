//! A stack released because the Tenant CRD was being deleted, and adopted again: the
//! execution of `Next::Orphan` (keep everything, mark the namespace with what re-adoption needs)
//! and the removal of those marks once a Tenant of the same name applied its plan there. The
//! marks themselves are `stackplane_core::tenant::adoption`'s.

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use stackplane_core::tenant::adoption;
use stackplane_crds::naming::namespace_name;
use stackplane_crds::{Platform, Tenant};

use super::Context;
use crate::error::{Error, Result};

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(crate::k8s::FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

/// Keeps everything of `tenant` (its cloud resources marked retained, so the garbage collector
/// never takes them for orphans) and writes onto its namespace the labels and annotations
/// `kubectl stackplane adopt` recreates it from. No Event: the Tenant's kind is going; the log
/// line and the metric (alert `StackplaneTenantCrdDeleted`) say it instead.
pub async fn release(ctx: &Context, tenant: &Tenant) -> Result<()> {
    let name = tenant.name_any();
    if let Some(settings) = &ctx.config.cloud {
        let platform = Api::<Platform>::all(ctx.client.clone())
            .get_opt(&tenant.spec.platform)
            .await?;
        crate::cloud::retain(settings, tenant, platform.as_ref()).await?;
    }
    let ns = namespace_name(&name);
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    if namespaces.get_metadata_opt(&ns).await?.is_some() {
        let patch = adoption::orphan_patch(tenant).map_err(Error::Serialize)?;
        namespaces
            .patch(&ns, &params(), &Patch::Merge(&patch))
            .await?;
    }
    ctx.metrics.tenant_orphaned();
    tracing::warn!(
        tenant = %name,
        namespace = %ns,
        retained = crate::cloud::retained(tenant).unwrap_or_default(),
        "the Tenant CRD is being deleted: tenant released, nothing deleted; its namespace is \
         marked for re-adoption (kubectl stackplane adopt, or the billing sweep)"
    );
    Ok(())
}

/// Removes the marks of an orphaning from `tenant`'s namespace once its plan was applied there
/// (the stack is adopted), with an Event saying so.
pub async fn adopted(ctx: &Context, tenant: &Tenant, ns: &str) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    // The released Tenant's instance and DNS record first, while the marks still say whose they
    // were: the cloud step of this pass (after this) then finds them as this tenant's, rather
    // than launching a new, empty instance. A failure fails the pass before that step.
    if let Some(settings) = &ctx.config.cloud {
        let uid = tenant.metadata.uid.as_deref().unwrap_or_default();
        let left = namespaces.get_opt(ns).await?;
        if let Some((old_uid, record)) = left
            .as_ref()
            .and_then(|n| adoption::cloud_to_take_over(n, uid))
        {
            let platform = Api::<Platform>::all(ctx.client.clone())
                .get_opt(&tenant.spec.platform)
                .await?;
            let taken = crate::cloud::take_over(
                settings,
                tenant,
                platform.as_ref(),
                &old_uid,
                record.as_deref(),
            )
            .await?;
            if !taken.is_empty() {
                tracing::info!(tenant = %tenant.name_any(), old_uid = %old_uid, taken = %taken.join(", "), "cloud resources taken over");
                ctx.event(
                    tenant,
                    EventType::Normal,
                    "CloudResourcesAdopted",
                    format!(
                        "{} of the earlier Tenant of this name (uid {old_uid}) taken over as they were",
                        taken.join(", ")
                    ),
                )
                .await;
            }
        }
    }
    namespaces
        .patch(ns, &params(), &Patch::Merge(&adoption::adoption_patch()))
        .await?;
    tracing::info!(tenant = %tenant.name_any(), namespace = %ns, "orphaned namespace adopted");
    ctx.event(
        tenant,
        EventType::Normal,
        "Adopted",
        format!("namespace {ns}, left by an earlier Tenant of this name, adopted as it was"),
    )
    .await;
    Ok(())
}
