//! CSI VolumeSnapshots of a tenant's volume claims, and claims restored from them. The snapshot
//! API is an add-on (Kubernetes 1.20 serves none by itself), so it is discovered on every use:
//! a cluster that gains it later is used without a restart.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::discovery::ApiResource;
use kube::{Client, ResourceExt};
use serde_json::json;
use stackplane_crds::naming::dns_label;
use stackplane_crds::BackupPart;

use super::error::Result;
use super::parts;

/// The VolumeSnapshot resource the API server serves in `group` (`v1` or `v1beta1`), if any.
pub async fn discover(client: &Client, group: &str) -> Result<Option<ApiResource>> {
    let found = match kube::discovery::group(client, group).await {
        Ok(g) => g,
        Err(kube::Error::Discovery(_)) => return Ok(None),
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(found
        .recommended_kind("VolumeSnapshot")
        .map(|(ar, _)| ar)
        .filter(|ar| ar.version == "v1" || ar.version == "v1beta1"))
}

/// Name of the VolumeSnapshot of `claim` taken by `backup`.
pub fn snapshot_name(backup: &str, claim: &str) -> String {
    dns_label(&format!("{backup}-{claim}"))
}

/// Name of the claim restored by `restore` from the snapshot of `claim`.
pub fn restored_claim_name(restore: &str, claim: &str) -> String {
    dns_label(&format!("{claim}-{restore}"))
}

/// Names of the volume claims of a namespace (not those being deleted), sorted.
pub async fn claims(client: &Client, namespace: &str) -> Result<Vec<String>> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let mut names: Vec<String> = api
        .list_metadata(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .filter_map(|c| c.metadata.name)
        .collect();
    names.sort();
    Ok(names)
}

/// Creates the VolumeSnapshot of `claim` if it does not exist yet and returns its part.
#[allow(clippy::too_many_arguments)]
pub async fn snapshot(
    client: &Client,
    resource: &ApiResource,
    namespace: &str,
    backup: &str,
    claim: &str,
    class: Option<&str>,
    labels: &BTreeMap<String, String>,
) -> Result<BackupPart> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
    let name = snapshot_name(backup, claim);
    let existing = match api.get_opt(&name).await? {
        Some(s) => s,
        None => {
            let mut spec = json!({ "source": { "persistentVolumeClaimName": claim } });
            if let Some(class) = class {
                spec["volumeSnapshotClassName"] = json!(class);
            }
            let mut object = DynamicObject::new(&name, resource).within(namespace);
            object.metadata.labels = Some(labels.clone());
            object.data = json!({ "spec": spec });
            match api.create(&PostParams::default(), &object).await {
                Ok(created) => {
                    tracing::info!(backup, namespace, claim, snapshot = %name, "volume snapshot created");
                    created
                }
                Err(kube::Error::Api(s)) if s.code == 409 => api.get(&name).await?,
                Err(kube::Error::Api(s)) if matches!(s.code, 403 | 404 | 422) => {
                    return Ok(parts::failed_part(
                        stackplane_crds::BackupPartKind::VolumeSnapshot,
                        Some(claim),
                        format!("VolumeSnapshot {name} refused: {}", s.message),
                    ))
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    Ok(parts::volume_snapshot_part(
        claim,
        &name,
        existing.data.get("status"),
    ))
}

/// Deletes every VolumeSnapshot of `backup` in `namespace`; returns how many.
pub async fn delete_snapshots(
    client: &Client,
    resource: &ApiResource,
    namespace: &str,
    selector: &str,
) -> Result<usize> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
    let list = api
        .list_metadata(&ListParams::default().labels(selector))
        .await?;
    let mut deleted = 0;
    for item in list.items {
        let name = item.name_any();
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => deleted += 1,
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(deleted)
}

/// Creates a claim from the VolumeSnapshot `snapshot` of `claim` (same class, access modes
/// and size as the original claim, or the snapshot's restore size when the original is gone)
/// and returns its part: complete once the claim is Bound.
#[allow(clippy::too_many_arguments)]
pub async fn restore_claim(
    client: &Client,
    resource: &ApiResource,
    namespace: &str,
    restore: &str,
    claim: &str,
    snapshot: &str,
    labels: &BTreeMap<String, String>,
) -> Result<BackupPart> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let name = restored_claim_name(restore, claim);
    if let Some(existing) = claims.get_opt(&name).await? {
        let phase = existing.status.as_ref().and_then(|s| s.phase.as_deref());
        return Ok(parts::restored_claim_part(snapshot, &name, phase));
    }
    let original = claims.get_opt(claim).await?;
    let snapshots: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
    let restore_size = snapshots
        .get_opt(snapshot)
        .await?
        .and_then(|s| s.data.pointer("/status/restoreSize").cloned());
    let original_spec = original.and_then(|c| c.spec);
    let size = original_spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| json!(q.0))
        .or(restore_size);
    let Some(size) = size else {
        return Ok(parts::failed_part(
            stackplane_crds::BackupPartKind::VolumeSnapshot,
            Some(snapshot),
            format!("neither claim {claim} nor VolumeSnapshot {snapshot} says how large the restored volume must be"),
        ));
    };
    let access_modes = original_spec
        .as_ref()
        .and_then(|s| s.access_modes.clone())
        .unwrap_or_else(|| vec!["ReadWriteOnce".to_owned()]);
    let mut spec = json!({
        "accessModes": access_modes,
        "resources": { "requests": { "storage": size } },
        "dataSource": { "apiGroup": resource.group, "kind": "VolumeSnapshot", "name": snapshot },
    });
    if let Some(class) = original_spec.and_then(|s| s.storage_class_name) {
        spec["storageClassName"] = json!(class);
    }
    let body = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": { "name": name, "namespace": namespace, "labels": labels },
        "spec": spec,
    });
    let object: PersistentVolumeClaim = serde_json::from_value(body)?;
    match claims.create(&PostParams::default(), &object).await {
        Ok(_) => {
            tracing::info!(restore, namespace, claim = %name, snapshot, "restored claim created");
            Ok(parts::restored_claim_part(snapshot, &name, None))
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            Ok(parts::restored_claim_part(snapshot, &name, None))
        }
        Err(kube::Error::Api(s)) if matches!(s.code, 403 | 404 | 422) => Ok(parts::failed_part(
            stackplane_crds::BackupPartKind::VolumeSnapshot,
            Some(snapshot),
            format!("claim {name} refused: {}", s.message),
        )),
        Err(e) => Err(e.into()),
    }
}
