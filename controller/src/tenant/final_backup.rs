//! The final backup of a tenant: before a tenant's data goes (retention over, or a Tenant
//! deleted with `deletionPolicy: Delete`), the controller requests a `TenantBackup` with
//! `reason: pre-delete` and waits, by requeueing and never blocking a worker, until the backup
//! reconciler finishes it (`Completed`, `PartiallyFailed` or `Failed`) or the timeout passes.
//!
//! A failed final backup does not keep a tenant forever: the customer's subscription has ended
//! and its data is due to go; the outcome is recorded in an Event and the backup's own status.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use stackplane_core::contract::labels::tenant_labels;
use stackplane_crds::{BackupPhase, BackupReason, Tenant, TenantBackup, TenantBackupSpec};

use crate::error::{Error, Result};

/// Suffix of the final backup's name.
const SUFFIX: &str = "-pre-delete";

/// Annotation the controller puts on the final backup when it stops waiting for it, with the
/// [`Outcome`]: the record that the tenant's data was deleted after this backup, and what makes
/// the Event about it appear once although the retention path and the finalizer both pass here.
pub const OUTCOME_ANNOTATION: &str = "stackplane.io/final-backup-outcome";

/// Name of the final backup of `tenant`: the same for every reconcile, so a restarted
/// controller finds the backup it requested instead of requesting another.
pub fn backup_name(tenant: &str) -> String {
    format!("{tenant}{SUFFIX}")
}

/// Where the final backup of a tenant stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// The backup is running (or not yet picked up): look again within `retry_in`.
    Waiting {
        backup: String,
        phase: Option<BackupPhase>,
        retry_in: Duration,
        /// This call created the backup.
        requested: bool,
    },
    /// The tenant's data may go.
    Passed {
        backup: String,
        outcome: Outcome,
        /// This call is the first to pass (it recorded the outcome on the backup).
        first: bool,
    },
}

/// How the wait for the final backup ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The backup reached this terminal phase.
    Finished(BackupPhase),
    /// The backup did not finish within the timeout.
    TimedOut,
}

impl Outcome {
    /// A short word for logs and Events.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Finished(BackupPhase::Completed) => "Completed",
            Outcome::Finished(BackupPhase::PartiallyFailed) => "PartiallyFailed",
            Outcome::Finished(BackupPhase::Failed) => "Failed",
            Outcome::Finished(BackupPhase::Pending | BackupPhase::InProgress) => "Unfinished",
            Outcome::TimedOut => "TimedOut",
        }
    }
}

/// Whether the wait for an existing backup is over (pure). The timeout runs from the backup's
/// creation, so it survives controller restarts.
pub fn assess(backup: &TenantBackup, now: Timestamp, timeout: Duration, poll: Duration) -> Gate {
    let name = backup.name_any();
    let phase = backup.status.as_ref().and_then(|s| s.phase);
    if let Some(p) = phase.filter(|p| p.is_finished()) {
        return Gate::Passed {
            backup: name,
            outcome: Outcome::Finished(p),
            first: !recorded(backup),
        };
    }
    let created = backup
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(now);
    let waited = now.duration_since(created).unsigned_abs();
    match timeout.checked_sub(waited) {
        Some(left) if !left.is_zero() => Gate::Waiting {
            backup: name,
            phase,
            retry_in: poll.min(left),
            requested: false,
        },
        _ => Gate::Passed {
            backup: name,
            outcome: Outcome::TimedOut,
            first: !recorded(backup),
        },
    }
}

fn recorded(backup: &TenantBackup) -> bool {
    backup.annotations().contains_key(OUTCOME_ANNOTATION)
}

/// The final backup object of `tenant`, labelled like every object stackplane creates. It has
/// no owner reference: it must outlive the Tenant.
pub fn desired(tenant: &Tenant) -> TenantBackup {
    let name = tenant.name_any();
    TenantBackup {
        metadata: ObjectMeta {
            name: Some(backup_name(&name)),
            // The tenant's own labels too: a controller sharded by `--tenant-selector` selects
            // backups by the same labels, so the shard that owns the tenant carries it out.
            labels: Some(
                tenant
                    .labels()
                    .clone()
                    .into_iter()
                    .chain(tenant_labels(&name, &tenant.spec.platform))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        spec: TenantBackupSpec {
            tenant: name,
            reason: BackupReason::PreDelete,
            restore: None,
        },
        status: None,
    }
}

/// Requests the final backup of `tenant` unless it exists, and says whether the wait for it
/// is over. Call it again after `retry_in` while it answers [`Gate::Waiting`].
pub async fn ensure(
    client: &Client,
    tenant: &Tenant,
    timeout: Duration,
    poll: Duration,
) -> Result<Gate> {
    let api: Api<TenantBackup> = Api::all(client.clone());
    let name = backup_name(&tenant.name_any());
    let existing = match api.get_opt(&name).await? {
        Some(b) => b,
        None => {
            let created = match api.create(&PostParams::default(), &desired(tenant)).await {
                Ok(b) => b,
                // Created by an earlier reconcile whose answer was lost: use that one.
                Err(kube::Error::Api(e)) if e.code == 409 => api.get(&name).await?,
                Err(e) => return Err(e.into()),
            };
            tracing::info!(tenant = %tenant.name_any(), backup = %name, "final backup requested");
            return Ok(match assess(&created, Timestamp::now(), timeout, poll) {
                Gate::Waiting {
                    backup,
                    phase,
                    retry_in,
                    ..
                } => Gate::Waiting {
                    backup,
                    phase,
                    retry_in,
                    requested: true,
                },
                // A zero timeout: record the outcome on the next call, like any other pass.
                Gate::Passed { backup, .. } => Gate::Waiting {
                    backup,
                    phase: None,
                    retry_in: Duration::ZERO,
                    requested: true,
                },
            });
        }
    };
    if existing.spec.tenant != tenant.name_any() || existing.spec.reason != BackupReason::PreDelete
    {
        return Err(Error::FinalBackupConflict { backup: name });
    }
    let gate = assess(&existing, Timestamp::now(), timeout, poll);
    if let Gate::Passed {
        outcome,
        first: true,
        ..
    } = &gate
    {
        let patch =
            json!({ "metadata": { "annotations": { OUTCOME_ANNOTATION: outcome.as_str() } } });
        let params = PatchParams {
            field_manager: Some(crate::k8s::FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        api.patch(&name, &params, &Patch::Merge(&patch)).await?;
    }
    Ok(gate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use stackplane_crds::{TenantBackupStatus, TenantSpec};

    const TIMEOUT: Duration = Duration::from_secs(600);
    const POLL: Duration = Duration::from_secs(10);

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn backup(created: i64, phase: Option<BackupPhase>) -> TenantBackup {
        let tenant = Tenant::new("acme", TenantSpec::new("crm", "starter"));
        let mut b = desired(&tenant);
        b.metadata.creation_timestamp = Some(Time(at(created)));
        b.status = phase.map(|p| TenantBackupStatus {
            phase: Some(p),
            ..TenantBackupStatus::default()
        });
        b
    }

    #[test]
    fn the_backup_is_named_labelled_and_not_owned_by_the_tenant() {
        let tenant = Tenant::new("acme", TenantSpec::new("crm", "starter"));
        let b = desired(&tenant);
        assert_eq!(b.name_any(), "acme-pre-delete");
        assert_eq!(b.spec.reason, BackupReason::PreDelete);
        assert_eq!(b.spec.tenant, "acme");
        assert_eq!(b.labels()["app.kubernetes.io/managed-by"], "stackplane");
        assert_eq!(b.labels()["stackplane.io/tenant"], "acme");
        assert_eq!(b.labels()["stackplane.io/platform"], "crm");
        assert!(b.metadata.owner_references.is_none());
    }

    #[test]
    fn every_terminal_phase_passes_at_once() {
        for p in [
            BackupPhase::Completed,
            BackupPhase::PartiallyFailed,
            BackupPhase::Failed,
        ] {
            assert_eq!(
                assess(&backup(1_000, Some(p)), at(1_001), TIMEOUT, POLL),
                Gate::Passed {
                    backup: "acme-pre-delete".into(),
                    outcome: Outcome::Finished(p),
                    first: true
                }
            );
        }
    }

    #[test]
    fn an_unfinished_backup_waits_until_the_timeout() {
        for p in [
            None,
            Some(BackupPhase::Pending),
            Some(BackupPhase::InProgress),
        ] {
            let early = assess(&backup(1_000, p), at(1_100), TIMEOUT, POLL);
            assert_eq!(
                early,
                Gate::Waiting {
                    backup: "acme-pre-delete".into(),
                    phase: p,
                    retry_in: POLL,
                    requested: false
                }
            );
            // Close to the deadline the retry lands on it rather than after it.
            let close = assess(&backup(1_000, p), at(1_597), TIMEOUT, POLL);
            assert!(
                matches!(close, Gate::Waiting { retry_in, .. } if retry_in == Duration::from_secs(3))
            );
            let late = assess(&backup(1_000, p), at(1_600), TIMEOUT, POLL);
            assert_eq!(
                late,
                Gate::Passed {
                    backup: "acme-pre-delete".into(),
                    outcome: Outcome::TimedOut,
                    first: true
                }
            );
        }
    }

    #[test]
    fn a_recorded_outcome_is_not_the_first_pass() {
        let mut b = backup(1_000, Some(BackupPhase::Completed));
        b.metadata.annotations =
            Some([(OUTCOME_ANNOTATION.to_owned(), "Completed".to_owned())].into());
        assert!(matches!(
            assess(&b, at(1_001), TIMEOUT, POLL),
            Gate::Passed { first: false, .. }
        ));
    }

    #[test]
    fn a_zero_timeout_never_waits() {
        assert!(matches!(
            assess(&backup(1_000, None), at(1_000), Duration::ZERO, POLL),
            Gate::Passed {
                outcome: Outcome::TimedOut,
                ..
            }
        ));
    }
}
