//! The final backup of a tenant: before a tenant's data goes (retention over, or a Tenant
//! deleted with `deletionPolicy: Delete`), the controller requests a `TenantBackup` with
//! `reason: pre-delete` and waits, by requeueing and never blocking a worker, until the backup
//! reconciler finishes it (`Completed`, `PartiallyFailed` or `Failed`) or the timeout passes.
//! What follows (destroy, or hold until a person releases it) is decided by
//! `stackplane_core::tenant::deletion`; this module reads, creates and annotates the backup.
//!
//! The backup is named (and labelled) by the tenant's uid: one per lifecycle, so a tenant of the
//! same name deleted again gets a backup of its own.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use stackplane_core::contract::labels::{tenant_labels, FINAL_BACKUP_OUTCOME, TENANT_UID};
use stackplane_core::tenant::deletion::{assess, final_backup_name, FinalBackup, Outcome};
use stackplane_crds::{BackupReason, Tenant, TenantBackup, TenantBackupSpec};

use crate::error::{Error, Result};

/// Name of the final backup of this lifecycle of `tenant`.
pub fn backup_name(tenant: &Tenant) -> String {
    final_backup_name(
        &tenant.name_any(),
        tenant.metadata.uid.as_deref().unwrap_or_default(),
    )
}

/// The final backup object of `tenant`, labelled like every object stackplane creates and with
/// the tenant's uid. It has no owner reference: it must outlive the Tenant.
pub fn desired(tenant: &Tenant) -> TenantBackup {
    guard_backup(tenant, backup_name(tenant), BackupReason::PreDelete, None)
}

/// A backup the controller takes before it destroys something of `tenant` (its final backup,
/// or the `pre-terminate` backup of `instance`): labelled like every object stackplane creates
/// and with the tenant's uid, and without an owner reference, so it outlives the Tenant.
pub fn guard_backup(
    tenant: &Tenant,
    backup: String,
    reason: BackupReason,
    instance: Option<String>,
) -> TenantBackup {
    let name = tenant.name_any();
    let mut labels: std::collections::BTreeMap<String, String> = tenant
        .labels()
        .clone()
        .into_iter()
        .chain(tenant_labels(&name, &tenant.spec.platform))
        .collect();
    if let Some(uid) = &tenant.metadata.uid {
        labels.insert(TENANT_UID.to_owned(), uid.clone());
    }
    TenantBackup {
        metadata: ObjectMeta {
            name: Some(backup),
            // The tenant's own labels too: a controller sharded by `--tenant-selector` selects
            // backups by the same labels, so the shard that owns the tenant carries it out.
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: TenantBackupSpec {
            tenant: name,
            reason,
            restore: None,
            instance,
        },
        status: None,
    }
}

/// Where the final backup of this lifecycle of `tenant` stands.
pub async fn observe(
    client: &Client,
    tenant: &Tenant,
    timeout: Duration,
    poll: Duration,
) -> Result<FinalBackup> {
    let api: Api<TenantBackup> = Api::all(client.clone());
    let name = backup_name(tenant);
    let Some(existing) = api.get_opt(&name).await? else {
        return Ok(FinalBackup::Absent);
    };
    let uid_label = existing.labels().get(TENANT_UID);
    if existing.spec.tenant != tenant.name_any()
        || existing.spec.reason != BackupReason::PreDelete
        || uid_label.map(String::as_str) != tenant.metadata.uid.as_deref()
    {
        return Err(Error::FinalBackupConflict { backup: name });
    }
    Ok(assess(&existing, Timestamp::now(), timeout, poll))
}

/// Requests the final backup of `tenant` (an existing one, created by an earlier reconcile whose
/// answer was lost, is taken as it). Returns its name.
pub async fn request(client: &Client, tenant: &Tenant) -> Result<String> {
    let name = create(client, &desired(tenant)).await?;
    tracing::info!(tenant = %tenant.name_any(), backup = %name, "final backup requested");
    Ok(name)
}

/// Creates `backup` (an existing one of that name, made by an earlier reconcile whose answer
/// was lost, is taken as it: the caller checks it is what it asked for). Returns its name.
pub async fn create(client: &Client, backup: &TenantBackup) -> Result<String> {
    let api: Api<TenantBackup> = Api::all(client.clone());
    match api.create(&PostParams::default(), backup).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(backup.name_any())
}

/// Records on the backup (final or `pre-terminate`) how the wait for it ended.
pub async fn record_outcome(client: &Client, backup: &str, outcome: Outcome) -> Result<()> {
    let api: Api<TenantBackup> = Api::all(client.clone());
    let patch =
        json!({ "metadata": { "annotations": { FINAL_BACKUP_OUTCOME: outcome.as_str() } } });
    let params = PatchParams {
        field_manager: Some(crate::k8s::FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    api.patch(backup, &params, &Patch::Merge(&patch)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use stackplane_crds::TenantSpec;

    #[test]
    fn the_backup_is_named_by_the_lifecycle_labelled_and_not_owned_by_the_tenant() {
        let mut tenant = Tenant::new("acme", TenantSpec::new("crm", "starter"));
        tenant.metadata.uid = Some("0123abcd-ef01-2345-6789-abcdef012345".into());
        let b = desired(&tenant);
        assert_eq!(b.name_any(), "acme-pre-delete-0123abcd");
        assert_eq!(b.spec.reason, BackupReason::PreDelete);
        assert_eq!(b.spec.tenant, "acme");
        assert_eq!(b.labels()["app.kubernetes.io/managed-by"], "stackplane");
        assert_eq!(b.labels()["stackplane.io/tenant"], "acme");
        assert_eq!(b.labels()["stackplane.io/platform"], "crm");
        assert_eq!(
            b.labels()[TENANT_UID],
            "0123abcd-ef01-2345-6789-abcdef012345"
        );
        assert!(b.metadata.owner_references.is_none());
    }
}
