//! Snapshot before terminate: every `TerminateInstances` of the cloud step and of a deletion goes
//! through [`terminate`], which terminates only the instances a [`BeforeTerminate`] gate clears
//! (the Tenant reconciler's: each instance's `pre-terminate` backup completed, or a person
//! released the hold). The others stay, waiting for their backup or held, and the caller says so
//! in the tenant's status. The decision itself is `stackplane_core::cloud::terminate`.

use std::future::Future;
use std::time::Duration;

use stackplane_core::tenant::deletion::HoldReason;
use stackplane_crds::Tenant;

use super::{CloudError, CloudSettings, Note};

/// Asked before any instance of a tenant is terminated.
pub trait BeforeTerminate: Send + Sync {
    /// Which of `instances` (the tenant's, each to be terminated) may go now. Requests what is
    /// missing (a backup) on the way; never waits.
    fn clear<'a>(
        &'a self,
        tenant: &'a Tenant,
        instances: &'a [String],
    ) -> impl Future<Output = Result<Clearance, CloudError>> + Send + 'a;
}

/// An instance kept for now, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub instance: String,
    /// The `pre-terminate` backup it waits for (or whose failure holds it).
    pub backup: String,
    /// `None`: waiting for the backup; `Some`: held until a person releases it.
    pub held: Option<HoldReason>,
}

/// The gate's answer for a tenant's instances.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Clearance {
    /// May be terminated now.
    pub cleared: Vec<String>,
    /// Not yet: waiting for a backup, or held.
    pub kept: Vec<Kept>,
    /// How soon to look again at the instances that wait.
    pub retry_in: Option<Duration>,
    /// A cleared instance goes although its backup did not complete (a release, or
    /// `--on-backup-failure=delete`).
    pub overridden: bool,
    /// Events for the tenant (backup requested, instance snapshotted, backup failed).
    pub notes: Vec<Note>,
}

impl Clearance {
    /// Every instance cleared, with nothing asked (no gate: nothing to protect).
    pub fn all(instances: &[String]) -> Self {
        Clearance {
            cleared: instances.to_vec(),
            ..Clearance::default()
        }
    }

    /// The first hold, for the `DeletionHeld` condition: its reason and backup.
    pub fn held(&self) -> Option<(HoldReason, &str)> {
        self.kept
            .iter()
            .find_map(|k| k.held.map(|r| (r, k.backup.as_str())))
    }

    /// The instances kept, for a condition's message: `i-1 (waits for its pre-terminate backup
    /// b1)`, ...
    pub fn describe_kept(&self) -> String {
        self.kept
            .iter()
            .map(|k| match k.held {
                None => format!(
                    "instance {} waits for its pre-terminate backup {}",
                    k.instance, k.backup
                ),
                Some(_) => format!(
                    "instance {} is not terminated: its pre-terminate backup {} did not \
                     complete (condition DeletionHeld)",
                    k.instance, k.backup
                ),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Terminates the instances of `tenant` among `ids` that `gate` clears; returns the clearance
/// (what was terminated is `cleared`). One TerminateInstances call for all of them.
pub async fn terminate<G: BeforeTerminate>(
    settings: &CloudSettings,
    gate: &G,
    tenant: &Tenant,
    ids: &[String],
) -> Result<Clearance, CloudError> {
    if ids.is_empty() {
        return Ok(Clearance::default());
    }
    let clearance = gate.clear(tenant, ids).await?;
    if !clearance.cleared.is_empty() {
        settings
            .provider
            .terminate_instances(&clearance.cleared)
            .await?;
        tracing::info!(
            tenant = %tenant.metadata.name.as_deref().unwrap_or_default(),
            instances = ?clearance.cleared,
            overridden = clearance.overridden,
            "terminated instances after their pre-terminate backups"
        );
    }
    Ok(clearance)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_hold_and_every_kept_instance_are_said() {
        let c = Clearance {
            kept: vec![
                Kept {
                    instance: "i-1".into(),
                    backup: "b1".into(),
                    held: None,
                },
                Kept {
                    instance: "i-2".into(),
                    backup: "b2".into(),
                    held: Some(HoldReason::PreTerminateBackupFailed),
                },
            ],
            ..Clearance::default()
        };
        assert_eq!(c.held(), Some((HoldReason::PreTerminateBackupFailed, "b2")));
        let said = c.describe_kept();
        assert!(
            said.contains("i-1 waits for its pre-terminate backup b1"),
            "{said}"
        );
        assert!(said.contains("i-2 is not terminated"), "{said}");
        assert_eq!(
            Clearance::all(&["i-3".into()]).cleared,
            vec!["i-3".to_owned()]
        );
        assert_eq!(Clearance::all(&[]).held(), None);
    }
}
