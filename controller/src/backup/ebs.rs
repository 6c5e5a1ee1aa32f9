//! The EBS parts: snapshots of a dedicated instance's volumes for a backup, and volumes made
//! from those snapshots for a restore. Each call advances every unfinished part by one step;
//! what exists is found by its tags first, so a retried or restarted reconcile never makes two.
//! The calls go to the controller's one [`CloudProvider`] (the cloud step's), and a failed one
//! comes back as its [`CloudError`], classified (throttling, refused request, ...) as in the
//! cloud step.

use std::future::Future;
use std::time::Duration;

use kube::Client;
pub use stackplane_core::cloud::snapshot::SnapshotOwner;
use stackplane_core::cloud::snapshot::{restored_volume_spec, restored_volume_tags};
use stackplane_core::cloud::tags;
use stackplane_crds::{BackupPart, BackupPartKind, BackupPartState, Tenant, TenantBackup};

use super::parts::{self, Ec2Object};
use crate::cloud::owner::{self, Owner};
use crate::cloud::{CloudError, CloudProvider, Retry};

/// The check made right before a snapshot is created.
pub trait BeforeCreate: Send + Sync {
    fn confirm(&self) -> impl Future<Output = Result<(), CloudError>> + Send;
}

/// The backup and its tenant, read again from the API server (not the cache): a snapshot is
/// made only for a backup that still exists as the same object, of a tenant that still exists
/// ([`owner::confirm_backup`], the check the cloud step makes before its creates).
pub struct OwnerStillExists<'a> {
    pub client: &'a Client,
    pub backup: &'a TenantBackup,
    pub tenant: &'a Tenant,
    pub timeout: Duration,
}

impl BeforeCreate for OwnerStillExists<'_> {
    async fn confirm(&self) -> Result<(), CloudError> {
        owner::confirm_backup(
            self.client,
            Owner::of_backup(self.backup),
            Owner::of_tenant(self.tenant),
            self.timeout,
            "CreateSnapshot",
        )
        .await
    }
}

/// Why EBS parts cannot be carried out without an AWS client.
const NO_CLOUD: &str = "EBS snapshots are unsupported: the controller runs with \
     --cloud-provider none (no AWS client, no AWS call)";

/// The EBS part of a backup (or restore) when the controller has no AWS client: recorded as
/// `Unsupported`, which keeps the backup from reading `Completed`. `source`: the instance (or
/// snapshot) the part would have been about; none, no part.
pub fn unsupported(source: Option<&str>) -> Option<BackupPart> {
    let source = source.filter(|s| !s.is_empty())?;
    Some(BackupPart {
        kind: BackupPartKind::EbsSnapshot,
        id: None,
        source: Some(source.to_owned()),
        state: BackupPartState::Unsupported,
        message: Some(NO_CLOUD.to_owned()),
        size_bytes: None,
    })
}

fn finished<'a>(previous: &'a [BackupPart], source: &str) -> Option<&'a BackupPart> {
    previous.iter().find(|p| {
        p.kind == BackupPartKind::EbsSnapshot
            && p.source.as_deref() == Some(source)
            && parts::is_finished(p)
    })
}

/// The EBS snapshot parts of `backup` after one more step each. The volumes are those attached
/// to `instance` when the backup first ran (`previous` has no part yet); later calls keep that
/// set. No instance: no EBS part (a shared tenant has no volumes of its own).
pub async fn snapshot_volumes<C: BeforeCreate>(
    cloud: &dyn CloudProvider,
    owner: &SnapshotOwner<'_>,
    instance: Option<&str>,
    previous: &[BackupPart],
    check: &C,
) -> Result<Vec<BackupPart>, CloudError> {
    let (tenant, backup) = (owner.tenant, owner.backup);
    let volumes: Vec<String> = if previous.is_empty() {
        match instance.filter(|id| !id.is_empty()) {
            Some(id) => cloud.attached_volumes(id).await?,
            None => Vec::new(),
        }
    } else {
        previous
            .iter()
            .filter(|p| p.kind == BackupPartKind::EbsSnapshot)
            .filter_map(|p| p.source.clone())
            .collect()
    };
    let mut out = Vec::with_capacity(volumes.len());
    for volume in volumes {
        if let Some(done) = finished(previous, &volume) {
            out.push(done.clone());
            continue;
        }
        let found = cloud
            .find_snapshots(tags::BACKUP, backup, Some(&volume))
            .await?;
        let snapshot: Ec2Object = match found.into_iter().next() {
            Some(s) => s.into(),
            None => {
                check.confirm().await?;
                match cloud.create_snapshot(&owner.snapshot_spec(&volume)).await {
                    Ok(s) => {
                        let s: Ec2Object = s.into();
                        tracing::info!(backup, tenant, volume = %volume, snapshot = %s.id, "EBS snapshot started");
                        s
                    }
                    // EC2 refuses this snapshot for good (the volume is gone, no permission):
                    // the part fails, so the backup ends instead of retrying until a timeout.
                    // Throttling and other transient errors are retried by the reconcile.
                    Err(e) if e.retry() == Retry::Terminal => {
                        tracing::warn!(backup, tenant, volume = %volume, error = %e, "EBS snapshot refused");
                        out.push(parts::failed_part(
                            BackupPartKind::EbsSnapshot,
                            Some(&volume),
                            e.to_string(),
                        ));
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        out.push(parts::ebs_snapshot_part(&volume, &snapshot));
    }
    Ok(out)
}

/// The parts of `restore` that make a volume from each of `snapshots`, in the availability zone
/// of the tenant's `instance`, after one more step each.
pub async fn restore_volumes(
    cloud: &dyn CloudProvider,
    tenant: &str,
    restore: &str,
    instance: Option<&str>,
    snapshots: &[String],
    previous: &[BackupPart],
) -> Result<Vec<BackupPart>, CloudError> {
    if snapshots.is_empty() {
        return Ok(Vec::new());
    }
    let instance = instance.filter(|id| !id.is_empty());
    let zone = match instance {
        Some(id) => cloud.instance_zone(id).await?,
        None => None,
    };
    let mut out = Vec::with_capacity(snapshots.len());
    for snapshot in snapshots {
        if let Some(done) = finished(previous, snapshot) {
            out.push(done.clone());
            continue;
        }
        let Some(zone) = &zone else {
            let why = match instance {
                Some(id) => format!("EC2 does not know the tenant's instance {id}: no availability zone to restore into"),
                None => "the tenant has no instance (status.instance.id): no availability zone to restore into".to_owned(),
            };
            out.push(parts::failed_part(
                BackupPartKind::EbsSnapshot,
                Some(snapshot),
                why,
            ));
            continue;
        };
        let found = cloud
            .find_volumes(&restored_volume_tags(restore, snapshot))
            .await?;
        let volume: Ec2Object = match found.into_iter().next() {
            Some(v) => v.into(),
            None => {
                let spec = restored_volume_spec(tenant, restore, snapshot, zone);
                let v: Ec2Object = cloud.create_volume(&spec).await?.into();
                tracing::info!(restore, tenant, snapshot = %snapshot, volume = %v.id, "volume restored from EBS snapshot");
                v
            }
        };
        out.push(parts::ebs_restore_part(snapshot, &volume));
    }
    Ok(out)
}

/// Deletes every EBS snapshot of `backup` (found by its tag); returns their ids.
pub async fn delete_snapshots(
    cloud: &dyn CloudProvider,
    backup: &str,
) -> Result<Vec<String>, CloudError> {
    let found = cloud.find_snapshots(tags::BACKUP, backup, None).await?;
    let mut deleted = Vec::with_capacity(found.len());
    for snapshot in found {
        cloud.delete_snapshot(&snapshot.id).await?;
        tracing::info!(backup, snapshot = %snapshot.id, "EBS snapshot deleted");
        deleted.push(snapshot.id);
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::error::Error;
    use crate::cloud::fake::FakeCloud;

    /// EC2 in memory: one instance with two volumes; snapshots and volumes found by their tags.
    fn fake_ec2() -> FakeCloud {
        FakeCloud::with_instance("i-1", "us-east-1a", &["vol-a", "vol-b"])
    }

    /// Counts the checks; refuses once `refuse` is set.
    #[derive(Default)]
    struct Check {
        calls: std::sync::atomic::AtomicUsize,
        refuse: std::sync::atomic::AtomicBool,
    }

    impl BeforeCreate for Check {
        async fn confirm(&self) -> Result<(), CloudError> {
            use std::sync::atomic::Ordering;
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.refuse.load(Ordering::SeqCst) {
                return Err(CloudError::OwnerGone {
                    operation: "CreateSnapshot",
                    why: "backup b9 no longer exists".into(),
                });
            }
            Ok(())
        }
    }

    fn owner(backup: &str) -> SnapshotOwner<'_> {
        SnapshotOwner {
            tenant: "acme",
            tenant_uid: "u-t",
            backup,
            backup_uid: "u-b",
        }
    }

    #[tokio::test]
    async fn nothing_is_created_once_the_owner_is_gone() {
        use std::sync::atomic::Ordering;
        let ec2 = fake_ec2();
        let check = Check::default();
        check.refuse.store(true, Ordering::SeqCst);
        let r = snapshot_volumes(&ec2, &owner("b9"), Some("i-1"), &[], &check).await;
        assert!(r.is_err());
        assert!(ec2.snapshots.lock().expect("lock").is_empty());
        // The refusal keeps its category through the backup's error.
        let e = Error::from(r.expect_err("refused"));
        assert_eq!(e.metric_label(), "owner_gone");
        assert_eq!(ec2.count("CreateSnapshot"), 0);
        // An existing snapshot is only observed: no check, no create.
        check.refuse.store(false, Ordering::SeqCst);
        snapshot_volumes(&ec2, &owner("b9"), Some("i-1"), &[], &check)
            .await
            .expect("made");
        let before = check.calls.load(Ordering::SeqCst);
        snapshot_volumes(&ec2, &owner("b9"), Some("i-1"), &[], &check)
            .await
            .expect("found");
        assert_eq!(check.calls.load(Ordering::SeqCst), before);
        assert_eq!(unsupported(None), None);
        let part = unsupported(Some("i-1")).expect("part");
        assert_eq!(part.state, BackupPartState::Unsupported);
        assert!(part
            .message
            .is_some_and(|m| m.contains("--cloud-provider none")));
    }

    #[tokio::test]
    async fn snapshots_are_made_once_and_followed_to_completion() {
        let check = Check::default();
        let ec2 = fake_ec2();
        let first = snapshot_volumes(&ec2, &owner("b1"), Some("i-1"), &[], &check)
            .await
            .expect("first");
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|p| p.state == BackupPartState::InProgress));
        // Each volume's snapshot is looked up by the backup's tag before one is made.
        let find = |v: &str| format!("DescribeSnapshots {}=b1 {v}", tags::BACKUP);
        assert_eq!(
            ec2.calls(),
            vec![
                "DescribeVolumes i-1".to_owned(),
                find("vol-a"),
                "CreateSnapshot vol-a".to_owned(),
                find("vol-b"),
                "CreateSnapshot vol-b".to_owned(),
            ]
        );
        // Tagged with its owner, so the look-up (and the garbage collector) finds it.
        for s in ec2.snapshots.lock().expect("lock").iter() {
            assert_eq!(s.snapshot.tags, owner("b1").tags());
        }
        // A restart (no recorded parts) finds the snapshots by tag instead of making new ones.
        let again = snapshot_volumes(&ec2, &owner("b1"), Some("i-1"), &[], &check)
            .await
            .expect("again");
        assert_eq!(again, first);
        assert_eq!(ec2.snapshots.lock().expect("lock").len(), 2);
        ec2.set_snapshot_state("completed");
        let done = snapshot_volumes(&ec2, &owner("b1"), Some("i-1"), &again, &check)
            .await
            .expect("done");
        assert!(done.iter().all(|p| p.state == BackupPartState::Completed));
        assert_eq!(ec2.snapshots.lock().expect("lock").len(), 2);
        assert_eq!(ec2.count("CreateSnapshot"), 2);
        // A shared tenant (no instance) has no EBS part.
        assert!(snapshot_volumes(&ec2, &owner("b2"), None, &[], &check)
            .await
            .expect("none")
            .is_empty());
    }

    #[tokio::test]
    async fn restores_make_one_volume_per_snapshot_and_fail_without_a_zone() {
        let ec2 = fake_ec2();
        let snaps = vec!["snap-0".to_owned(), "snap-1".to_owned()];
        let first = restore_volumes(&ec2, "acme", "r1", Some("i-1"), &snaps, &[])
            .await
            .expect("first");
        assert!(first.iter().all(|p| p.state == BackupPartState::Completed));
        let again = restore_volumes(&ec2, "acme", "r1", Some("i-1"), &snaps, &[])
            .await
            .expect("again");
        assert_eq!(again, first);
        assert_eq!(ec2.volumes.lock().expect("lock").len(), 2);
        assert_eq!(ec2.count("CreateVolume"), 2);
        assert!(ec2
            .calls()
            .contains(&"CreateVolume snap-0 us-east-1a".to_owned()));
        for v in ec2.volumes.lock().expect("lock").iter() {
            assert_eq!(v.tags.get(tags::RESTORE).map(String::as_str), Some("r1"));
            assert_eq!(v.tags.get(tags::TENANT).map(String::as_str), Some("acme"));
        }
        let orphan = restore_volumes(&ec2, "acme", "r2", None, &snaps, &[])
            .await
            .expect("orphan");
        assert!(orphan.iter().all(|p| p.state == BackupPartState::Failed));
        assert!(
            ec2.volumes.lock().expect("lock").len() == 2,
            "no volume without a zone"
        );
    }

    #[tokio::test]
    async fn a_throttled_call_fails_the_pass_as_retryable_and_makes_nothing() {
        let ec2 = fake_ec2();
        ec2.fail_next(CloudError::Retryable {
            operation: "DescribeVolumes",
            code: "RequestLimitExceeded".into(),
            message: "Request limit exceeded.".into(),
        });
        let e = snapshot_volumes(&ec2, &owner("b1"), Some("i-1"), &[], &Check::default())
            .await
            .expect_err("throttled");
        assert_eq!(e.retry(), crate::cloud::Retry::Retryable);
        assert_eq!(Error::from(e).metric_label(), "aws_retryable");
        assert_eq!(ec2.count("CreateSnapshot"), 0);
        // The next pass goes through.
        let parts = snapshot_volumes(&ec2, &owner("b1"), Some("i-1"), &[], &Check::default())
            .await
            .expect("retried");
        assert_eq!(parts.len(), 2);
    }

    /// A volume deleted out from under the backup: EC2 refuses its snapshot for good, so the
    /// part fails (and the backup can end) instead of being retried until a timeout; the other
    /// volume's snapshot is made, and nothing is asked again for the failed part.
    #[tokio::test]
    async fn a_refused_snapshot_fails_its_part_and_the_others_go_on() {
        let ec2 = fake_ec2();
        let check = Check::default();
        let first = snapshot_volumes(&ec2, &owner("b1"), Some("i-1"), &[], &check)
            .await
            .expect("first");
        // vol-b's part is still to be made (as after a crash between the status write and the
        // create) when the volume goes.
        let mut previous = first.clone();
        previous[1].id = None;
        previous[1].state = BackupPartState::Pending;
        ec2.snapshots
            .lock()
            .expect("lock")
            .retain(|s| s.volume != "vol-b");
        ec2.instances
            .lock()
            .expect("lock")
            .get_mut("i-1")
            .expect("instance")
            .volumes
            .retain(|v| v != "vol-b");
        let parts = snapshot_volumes(&ec2, &owner("b1"), Some("i-1"), &previous, &check)
            .await
            .expect("a refusal is a failed part, not an error");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].state, BackupPartState::InProgress);
        assert_eq!(parts[1].state, BackupPartState::Failed);
        assert_eq!(parts[1].source.as_deref(), Some("vol-b"));
        assert!(parts[1]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("InvalidVolume.NotFound")));
        let creates = ec2.count("CreateSnapshot");
        ec2.set_snapshot_state("completed");
        let done = snapshot_volumes(&ec2, &owner("b1"), Some("i-1"), &parts, &check)
            .await
            .expect("done");
        assert_eq!(done[0].state, BackupPartState::Completed);
        assert_eq!(done[1], parts[1]);
        assert_eq!(ec2.count("CreateSnapshot"), creates);
        assert_eq!(
            stackplane_crds::BackupPhase::from_parts(&done),
            stackplane_crds::BackupPhase::PartiallyFailed
        );
    }

    #[tokio::test]
    async fn a_backup_deletes_its_own_snapshots_only() {
        let ec2 = fake_ec2();
        let check = Check::default();
        snapshot_volumes(&ec2, &owner("b1"), Some("i-1"), &[], &check)
            .await
            .expect("b1");
        snapshot_volumes(&ec2, &owner("b2"), Some("i-1"), &[], &check)
            .await
            .expect("b2");
        let deleted = delete_snapshots(&ec2, "b1").await.expect("deleted");
        assert_eq!(deleted, vec!["snap-0".to_owned(), "snap-1".to_owned()]);
        let left: Vec<String> = ec2
            .snapshots
            .lock()
            .expect("lock")
            .iter()
            .map(|s| s.snapshot.id.clone())
            .collect();
        assert_eq!(left, vec!["snap-2".to_owned(), "snap-3".to_owned()]);
    }
}
