//! Restores: volumes made from a finished backup's snapshots. EBS snapshots become new volumes
//! in the availability zone of the tenant's instance (tagged, looked up by tag before made; they
//! are left unattached: swapping an instance's volumes needs it stopped, which is an operator's
//! decision); VolumeSnapshots become new claims in the tenant's namespace. The database dump is
//! not replayed.

use kube::api::Api;
use kube::ResourceExt;
use stackplane_crds::naming::namespace_name;
use stackplane_crds::{
    BackupPart, BackupPartKind, BackupPartState, BackupPhase, Tenant, TenantBackup,
};

use super::error::Result;
use super::{object_labels, parts, volume, Context, Refusal};

/// The parts of a restore after one more step each, or why it cannot be done.
pub async fn progress(
    ctx: &Context,
    restore: &TenantBackup,
    tenant: &Tenant,
    source_name: &str,
    previous: &[BackupPart],
) -> Result<std::result::Result<Vec<BackupPart>, Refusal>> {
    let name = restore.name_any();
    let tenant_name = tenant.name_any();
    let backups: Api<TenantBackup> = Api::all(ctx.client.clone());
    let Some(source) = backups.get_opt(source_name).await? else {
        return Ok(Err(Refusal {
            reason: "SourceNotFound",
            message: format!("backup {source_name} to restore from does not exist"),
        }));
    };
    if source.spec.tenant != tenant_name {
        return Ok(Err(Refusal {
            reason: "SourceOfAnotherTenant",
            message: format!(
                "backup {source_name} belongs to tenant {}, not {tenant_name}",
                source.spec.tenant
            ),
        }));
    }
    if source.spec.restore.is_some() {
        return Ok(Err(Refusal {
            reason: "SourceIsARestore",
            message: format!("{source_name} is a restore, not a backup"),
        }));
    }
    let source_status = source.status.clone().unwrap_or_default();
    match source_status.phase {
        Some(BackupPhase::Completed | BackupPhase::PartiallyFailed) => {}
        Some(BackupPhase::Failed) => {
            return Ok(Err(Refusal {
                reason: "SourceFailed",
                message: format!("backup {source_name} failed: nothing to restore"),
            }))
        }
        // Not finished yet: wait for it (the restore stays Pending).
        _ => return Ok(Ok(Vec::new())),
    }
    let completed = |kind: BackupPartKind| {
        source_status
            .parts
            .iter()
            .filter(move |p| p.kind == kind && p.state == BackupPartState::Completed)
            .filter_map(|p| Some((p.id.clone()?, p.source.clone())))
    };
    let ebs: Vec<(String, Option<String>)> = completed(BackupPartKind::EbsSnapshot).collect();
    let claims: Vec<(String, Option<String>)> = completed(BackupPartKind::VolumeSnapshot).collect();
    if ebs.is_empty() && claims.is_empty() {
        return Ok(Err(Refusal {
            reason: "NothingToRestore",
            message: format!(
                "backup {source_name} has no completed snapshot to restore volumes from"
            ),
        }));
    }
    let finished = |kind: BackupPartKind, source: &str| {
        previous
            .iter()
            .find(|p| {
                p.kind == kind && p.source.as_deref() == Some(source) && parts::is_finished(p)
            })
            .cloned()
    };
    let mut out = Vec::new();

    let instance = tenant
        .status
        .as_ref()
        .and_then(|s| s.instance.as_ref())
        .map(|i| i.id.as_str());
    let snapshots: Vec<String> = ebs.iter().map(|(id, _)| id.clone()).collect();
    match &ctx.cloud {
        Some(cloud) => out.extend(
            super::ebs::restore_volumes(
                cloud.as_ref(),
                &tenant_name,
                &name,
                instance,
                &snapshots,
                previous,
            )
            .await?,
        ),
        None => out.extend(
            snapshots
                .iter()
                .filter_map(|s| super::ebs::unsupported(Some(s.as_str()))),
        ),
    }

    if !claims.is_empty() {
        let namespace = namespace_name(&tenant_name);
        let group = &ctx.config.volume_snapshot_group;
        let resource = volume::discover(&ctx.client, group).await?;
        let labels = object_labels(tenant, &name);
        for (snapshot, claim) in &claims {
            if let Some(done) = finished(BackupPartKind::VolumeSnapshot, snapshot) {
                out.push(done);
                continue;
            }
            let claim = claim.clone().unwrap_or_else(|| snapshot.clone());
            let part = match &resource {
                None => {
                    let mut p = parts::volume_snapshot_unsupported(&claim, group);
                    p.source = Some(snapshot.clone());
                    p
                }
                Some(ar) => {
                    volume::restore_claim(
                        &ctx.client,
                        ar,
                        &namespace,
                        &name,
                        &claim,
                        snapshot,
                        &labels,
                    )
                    .await?
                }
            };
            out.push(part);
        }
    }
    Ok(Ok(out))
}
