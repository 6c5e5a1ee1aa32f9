//! `TenantBackup`: one backup of one tenant, or one restore from an earlier backup.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::{DNS1123_LABEL, DNS1123_SUBDOMAIN};

/// One backup of one tenant: EBS snapshots of a dedicated instance's volumes, CSI volume
/// snapshots of the tenant's volume claims, and a database dump. With `spec.restore` it is a
/// restore of the tenant from an earlier backup instead.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "stackplane.io",
    version = "v1alpha1",
    kind = "TenantBackup",
    doc = "One backup of one tenant, or a restore of it from an earlier backup.",
    plural = "tenantbackups",
    shortname = "tb",
    category = "stackplane",
    status = "TenantBackupStatus",
    printcolumn = r#"{"name":"Tenant","type":"string","jsonPath":".spec.tenant"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".spec.reason"}"#,
    printcolumn = r#"{"name":"Restore From","type":"string","priority":1,"jsonPath":".spec.restore"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Completed","type":"date","jsonPath":".status.completedAt"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TenantBackupSpec {
    /// Name of the Tenant to back up (or restore).
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS1123_LABEL))]
    pub tenant: String,

    /// Why the backup was taken: `manual` (the default), `scheduled`, `pre-delete` or
    /// `pre-terminate`.
    #[serde(default)]
    pub reason: BackupReason,

    /// The dedicated instance whose volumes are snapshotted: set on the `pre-terminate` backup
    /// the controller takes before it terminates that instance (such a backup holds only the
    /// EBS snapshots of the instance's volumes). Unset: the tenant's `status.instance`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub instance: Option<String>,

    /// Name of a completed TenantBackup of the same tenant to restore from. When set, this
    /// object is a restore, not a backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS1123_SUBDOMAIN))]
    pub restore: Option<String>,
}

/// Why a backup was taken.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BackupReason {
    /// Requested by the customer or SRE.
    #[default]
    Manual,
    /// Taken by `spec.backup.schedule` of the tenant.
    Scheduled,
    /// The final backup before a tenant is deleted.
    PreDelete,
    /// The EBS snapshots of a dedicated instance's volumes, taken before the controller
    /// terminates it (deletion, downgrade, tier or Platform change).
    PreTerminate,
}

/// Progress of a backup or restore.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum BackupPhase {
    /// Accepted, nothing started.
    Pending,
    /// Parts are being taken.
    InProgress,
    /// Every part completed.
    Completed,
    /// Some parts completed, others failed or are unsupported: see `status.parts`.
    PartiallyFailed,
    /// No part completed.
    Failed,
}

/// What a part of a backup copies.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BackupPartKind {
    /// EBS snapshot of a volume of the tenant's dedicated instance.
    EbsSnapshot,
    /// CSI VolumeSnapshot of a volume claim in the tenant's namespace.
    VolumeSnapshot,
    /// Dump of the tenant's database, taken by a Job.
    Database,
}

/// State of one part.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum BackupPartState {
    Pending,
    InProgress,
    Completed,
    Failed,
    /// The cluster or tier does not offer this kind of part (e.g. no snapshot API).
    Unsupported,
}

/// One piece of a backup.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupPart {
    /// What this part copies.
    pub kind: BackupPartKind,
    /// Id of what was made: snapshot id, VolumeSnapshot name or Job name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// What the part copies from: volume id or volume claim name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// State of the part.
    pub state: BackupPartState,
    /// Why the part failed or is unsupported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Bytes the part holds, when known: a database dump's size, as its Job reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub size_bytes: Option<i64>,
}

/// What the backup reconciler observed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantBackupStatus {
    /// Progress of the backup. Never `Completed` when a part failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BackupPhase>,
    /// The pieces of the backup and their states.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<BackupPart>,
    /// When work on the backup started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the last part finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// When the backup and its snapshots are removed (from the tenant's `retentionDays`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// Latest observations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::conditions")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl BackupPhase {
    /// The phase a backup is in given the states of its parts. A failed part never yields
    /// `Completed`; unsupported parts count as not completed.
    pub fn from_parts(parts: &[BackupPart]) -> BackupPhase {
        use BackupPartState as S;
        if parts.is_empty() {
            return BackupPhase::Pending;
        }
        if parts
            .iter()
            .any(|p| matches!(p.state, S::Pending | S::InProgress))
        {
            return if parts.iter().all(|p| p.state == S::Pending) {
                BackupPhase::Pending
            } else {
                BackupPhase::InProgress
            };
        }
        let completed = parts.iter().filter(|p| p.state == S::Completed).count();
        match completed {
            n if n == parts.len() => BackupPhase::Completed,
            0 => BackupPhase::Failed,
            _ => BackupPhase::PartiallyFailed,
        }
    }

    /// Whether the backup will change no more.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            BackupPhase::Completed | BackupPhase::PartiallyFailed | BackupPhase::Failed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(state: BackupPartState) -> BackupPart {
        BackupPart {
            kind: BackupPartKind::Database,
            id: None,
            source: None,
            state,
            message: None,
            size_bytes: None,
        }
    }

    #[test]
    fn phase_follows_parts() {
        use BackupPartState as S;
        let cases = [
            (vec![], BackupPhase::Pending),
            (vec![S::Pending, S::Pending], BackupPhase::Pending),
            (vec![S::Completed, S::Pending], BackupPhase::InProgress),
            (vec![S::Completed, S::Completed], BackupPhase::Completed),
            (vec![S::Completed, S::Failed], BackupPhase::PartiallyFailed),
            (
                vec![S::Completed, S::Unsupported],
                BackupPhase::PartiallyFailed,
            ),
            (vec![S::Failed, S::Unsupported], BackupPhase::Failed),
        ];
        for (states, want) in cases {
            let parts: Vec<_> = states.iter().copied().map(part).collect();
            assert_eq!(BackupPhase::from_parts(&parts), want, "parts {states:?}");
        }
    }
}
