//! The `pre-terminate` backups of a tenant's dedicated instances: the gate the cloud step and the
//! deletion ask before they terminate an instance (`crate::cloud::terminate`). For each instance
//! it observes that instance's backup, asks `stackplane_core::cloud::terminate::decide`, and
//! carries out what destroys nothing: requests a missing backup (a `TenantBackup` with
//! `reason: pre-terminate` and `spec.instance`, which the backup reconciler fills with the EBS
//! snapshots of the instance's volumes) and records how the wait ended on it. It never waits:
//! an instance whose backup runs is kept, and the tenant is reconciled again (the TenantBackup
//! watch, or `retry_in`).
//!
//! Like a final backup, a pre-terminate backup is labelled with the tenant (and its uid) and
//! owned by nothing: it outlives the instance and the Tenant.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client, ResourceExt};
use stackplane_core::cloud::terminate::{self, Step};
use stackplane_core::contract::labels::TENANT_UID;
use stackplane_core::tenant::deletion::{self, assess, FinalBackup, OnBackupFailure};
use stackplane_crds::{BackupReason, Tenant, TenantBackup};

use super::final_backup;
use crate::cloud::terminate::{BeforeTerminate, Clearance, Kept};
use crate::cloud::{CloudError, Note};
use crate::error::Error;

/// The gate: the Tenant reconciler's client and the backup settings it shares with the final
/// backup (`--final-backup-timeout`, `--on-backup-failure`).
pub struct PreTerminateGate<'a> {
    pub client: &'a Client,
    /// Longest wait for a pre-terminate backup; past it the backup counts as failed.
    pub timeout: Duration,
    /// How soon an unfinished backup is looked at again (the TenantBackup watch is usually
    /// sooner).
    pub poll: Duration,
    pub on_backup_failure: OnBackupFailure,
}

/// The `pre-terminate` backup object of `instance` of `tenant`.
pub fn desired(tenant: &Tenant, instance: &str) -> TenantBackup {
    final_backup::guard_backup(
        tenant,
        terminate::backup_name(&tenant.name_any(), instance),
        BackupReason::PreTerminate,
        Some(instance.to_owned()),
    )
}

fn kube_error(e: impl std::fmt::Display) -> CloudError {
    CloudError::Kube {
        operation: "TenantBackup",
        message: e.to_string(),
    }
}

impl PreTerminateGate<'_> {
    /// Where the pre-terminate backup of `instance` stands. A TenantBackup of that name that is
    /// not this tenant's pre-terminate backup of this instance is an error (never taken for it).
    async fn observe(&self, tenant: &Tenant, instance: &str) -> Result<FinalBackup, CloudError> {
        let api: Api<TenantBackup> = Api::all(self.client.clone());
        let name = terminate::backup_name(&tenant.name_any(), instance);
        let Some(existing) = api.get_opt(&name).await.map_err(kube_error)? else {
            return Ok(FinalBackup::Absent);
        };
        let uid = existing.labels().get(TENANT_UID).map(String::as_str);
        if existing.spec.tenant != tenant.name_any()
            || existing.spec.reason != BackupReason::PreTerminate
            || existing.spec.instance.as_deref() != Some(instance)
            || uid != tenant.metadata.uid.as_deref()
        {
            return Err(CloudError::Config(format!(
                "TenantBackup {name} exists but is not the pre-terminate backup of instance \
                 {instance} of this tenant: the instance is not terminated"
            )));
        }
        Ok(assess(&existing, Timestamp::now(), self.timeout, self.poll))
    }
}

impl BeforeTerminate for PreTerminateGate<'_> {
    async fn clear(&self, tenant: &Tenant, instances: &[String]) -> Result<Clearance, CloudError> {
        let name = tenant.name_any();
        let released = deletion::released(tenant);
        let mut out = Clearance::default();
        for instance in instances {
            let observed = self.observe(tenant, instance).await?;
            // How the wait ended, recorded on the backup once (and announced once).
            if let FinalBackup::Over {
                name: backup,
                outcome,
                recorded: false,
            } = &observed
            {
                final_backup::record_outcome(self.client, backup, *outcome)
                    .await
                    .map_err(|e: Error| kube_error(e))?;
                tracing::info!(tenant = %name, %instance, %backup, outcome = outcome.as_str(), "pre-terminate backup done");
                out.notes.push(if outcome.succeeded() {
                    Note {
                        warning: false,
                        reason: "InstanceSnapshotted",
                        message: format!(
                            "pre-terminate backup {backup} holds the snapshots of every volume \
                             of {instance}: it can be terminated"
                        ),
                    }
                } else {
                    Note {
                        warning: true,
                        reason: "PreTerminateBackupFailed",
                        message: format!(
                            "pre-terminate backup {backup} of {instance}: {}",
                            outcome.as_str()
                        ),
                    }
                });
            }
            let backup = terminate::backup_name(&name, instance);
            match terminate::decide(&observed, released, self.on_backup_failure) {
                Step::RequestBackup => {
                    final_backup::create(self.client, &desired(tenant, instance))
                        .await
                        .map_err(|e: Error| kube_error(e))?;
                    tracing::info!(tenant = %name, %instance, %backup, "pre-terminate backup requested");
                    out.notes.push(Note {
                        warning: false,
                        reason: "PreTerminateBackupRequested",
                        message: format!(
                            "{instance} is terminated once its pre-terminate backup {backup} \
                             (EBS snapshots of its volumes) completes"
                        ),
                    });
                    out.kept.push(Kept {
                        instance: instance.clone(),
                        backup,
                        held: None,
                    });
                    out.retry_in = Some(self.poll.min(self.timeout));
                }
                Step::WaitForBackup { retry_in } => {
                    out.kept.push(Kept {
                        instance: instance.clone(),
                        backup,
                        held: None,
                    });
                    out.retry_in = Some(out.retry_in.map_or(retry_in, |r| r.min(retry_in)));
                }
                Step::Hold { reason } => {
                    out.kept.push(Kept {
                        instance: instance.clone(),
                        backup,
                        held: Some(reason),
                    });
                }
                Step::Terminate { overridden } => {
                    if overridden {
                        let by = if released {
                            format!(
                                "annotation {}",
                                stackplane_core::contract::labels::RELEASE_DELETION
                            )
                        } else {
                            "--on-backup-failure=delete".to_owned()
                        };
                        tracing::warn!(tenant = %name, %instance, %backup, released_by = %by, "instance terminated without a completed pre-terminate backup");
                        out.overridden = true;
                    }
                    out.cleared.push(instance.clone());
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stackplane_crds::TenantSpec;

    #[test]
    fn one_backup_per_instance_labelled_and_not_owned_by_the_tenant() {
        let mut tenant = Tenant::new("acme", TenantSpec::new("crm", "business"));
        tenant.metadata.uid = Some("0123abcd-ef01-2345-6789-abcdef012345".into());
        tenant.metadata.labels = Some([("shard".to_owned(), "a".to_owned())].into());
        let b = desired(&tenant, "i-0123456789abcdef0");
        assert_eq!(b.name_any(), "acme-pre-terminate-i-0123456789abcdef0");
        assert_eq!(b.spec.reason, BackupReason::PreTerminate);
        assert_eq!(b.spec.instance.as_deref(), Some("i-0123456789abcdef0"));
        assert_eq!(b.spec.tenant, "acme");
        assert_eq!(b.labels()["stackplane.io/tenant"], "acme");
        assert_eq!(b.labels()["app.kubernetes.io/managed-by"], "stackplane");
        // The tenant's own labels: a sharded controller carries out its own tenants' backups.
        assert_eq!(b.labels()["shard"], "a");
        assert_eq!(
            b.labels()[TENANT_UID],
            "0123abcd-ef01-2345-6789-abcdef012345"
        );
        assert!(b.metadata.owner_references.is_none());
        assert_ne!(
            desired(&tenant, "i-0123456789abcdef1").name_any(),
            b.name_any()
        );
    }
}
