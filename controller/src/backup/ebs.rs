//! The EBS parts: snapshots of a dedicated instance's volumes for a backup, and volumes made
//! from those snapshots for a restore. Each call advances every unfinished part by one step;
//! what exists is found by its tags first, so a retried or restarted reconcile never makes two.

use std::future::Future;
use std::time::Duration;

use kube::Client;
use stackplane_crds::{BackupPart, BackupPartKind, BackupPartState, Tenant, TenantBackup};

use super::ec2::{Ec2, Ec2Error, SnapshotOwner};
use super::parts;
use crate::cloud::owner::{self, Owner};

/// The check made right before a snapshot is created.
pub trait BeforeCreate: Send + Sync {
    fn confirm(&self) -> impl Future<Output = Result<(), Ec2Error>> + Send;
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
    async fn confirm(&self) -> Result<(), Ec2Error> {
        owner::confirm_backup(
            self.client,
            Owner::of_backup(self.backup),
            Owner::of_tenant(self.tenant),
            self.timeout,
            "CreateSnapshot",
        )
        .await
        .map_err(Ec2Error::from)
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
pub async fn snapshot_volumes<E: Ec2, C: BeforeCreate>(
    ec2: &E,
    owner: &SnapshotOwner<'_>,
    instance: Option<&str>,
    previous: &[BackupPart],
    check: &C,
) -> Result<Vec<BackupPart>, Ec2Error> {
    let (tenant, backup) = (owner.tenant, owner.backup);
    let volumes: Vec<String> = if previous.is_empty() {
        match instance.filter(|id| !id.is_empty()) {
            Some(id) => ec2.attached_volumes(id).await?,
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
        let snapshot = match ec2.find_snapshot(backup, &volume).await? {
            Some(s) => s,
            None => {
                check.confirm().await?;
                let s = ec2.create_snapshot(owner, &volume).await?;
                tracing::info!(backup, tenant, volume = %volume, snapshot = %s.id, "EBS snapshot started");
                s
            }
        };
        out.push(parts::ebs_snapshot_part(&volume, &snapshot));
    }
    Ok(out)
}

/// The parts of `restore` that make a volume from each of `snapshots`, in the availability zone
/// of the tenant's `instance`, after one more step each.
pub async fn restore_volumes<E: Ec2>(
    ec2: &E,
    tenant: &str,
    restore: &str,
    instance: Option<&str>,
    snapshots: &[String],
    previous: &[BackupPart],
) -> Result<Vec<BackupPart>, Ec2Error> {
    if snapshots.is_empty() {
        return Ok(Vec::new());
    }
    let instance = instance.filter(|id| !id.is_empty());
    let zone = match instance {
        Some(id) => ec2.instance_zone(id).await?,
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
        let volume = match ec2.find_restored_volume(restore, snapshot).await? {
            Some(v) => v,
            None => {
                let v = ec2.create_volume(tenant, restore, snapshot, zone).await?;
                tracing::info!(restore, tenant, snapshot = %snapshot, volume = %v.id, "volume restored from EBS snapshot");
                v
            }
        };
        out.push(parts::ebs_restore_part(snapshot, &volume));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::backup::parts::Ec2Object;

    /// EC2 in memory: one instance with two volumes; snapshots and volumes keyed by their tags.
    #[derive(Default)]
    struct FakeEc2 {
        snapshots: Mutex<Vec<(String, String, Ec2Object)>>,
        volumes: Mutex<Vec<(String, String, Ec2Object)>>,
        snapshot_state: Mutex<String>,
    }

    impl Ec2 for FakeEc2 {
        async fn attached_volumes(&self, instance: &str) -> Result<Vec<String>, Ec2Error> {
            Ok(if instance == "i-1" {
                vec!["vol-a".into(), "vol-b".into()]
            } else {
                vec![]
            })
        }
        async fn instance_zone(&self, instance: &str) -> Result<Option<String>, Ec2Error> {
            Ok((instance == "i-1").then(|| "us-east-1a".to_owned()))
        }
        async fn find_snapshot(
            &self,
            backup: &str,
            volume: &str,
        ) -> Result<Option<Ec2Object>, Ec2Error> {
            let state = self.snapshot_state.lock().expect("lock").clone();
            Ok(self
                .snapshots
                .lock()
                .expect("lock")
                .iter()
                .find(|(b, v, _)| b == backup && v == volume)
                .map(|(_, _, s)| Ec2Object { state, ..s.clone() }))
        }
        async fn create_snapshot(
            &self,
            owner: &SnapshotOwner<'_>,
            volume: &str,
        ) -> Result<Ec2Object, Ec2Error> {
            let backup = owner.backup;
            let mut all = self.snapshots.lock().expect("lock");
            let s = Ec2Object {
                id: format!("snap-{}", all.len()),
                state: "pending".into(),
                message: None,
            };
            all.push((backup.into(), volume.into(), s.clone()));
            Ok(s)
        }
        async fn snapshots_of(&self, backup: &str) -> Result<Vec<String>, Ec2Error> {
            Ok(self
                .snapshots
                .lock()
                .expect("lock")
                .iter()
                .filter(|(b, _, _)| b == backup)
                .map(|(_, _, s)| s.id.clone())
                .collect())
        }
        async fn delete_snapshot(&self, id: &str) -> Result<(), Ec2Error> {
            self.snapshots
                .lock()
                .expect("lock")
                .retain(|(_, _, s)| s.id != id);
            Ok(())
        }
        async fn find_restored_volume(
            &self,
            restore: &str,
            snapshot: &str,
        ) -> Result<Option<Ec2Object>, Ec2Error> {
            Ok(self
                .volumes
                .lock()
                .expect("lock")
                .iter()
                .find(|(r, s, _)| r == restore && s == snapshot)
                .map(|(_, _, v)| v.clone()))
        }
        async fn create_volume(
            &self,
            _tenant: &str,
            restore: &str,
            snapshot: &str,
            _zone: &str,
        ) -> Result<Ec2Object, Ec2Error> {
            let mut all = self.volumes.lock().expect("lock");
            let v = Ec2Object {
                id: format!("vol-new-{}", all.len()),
                state: "available".into(),
                message: None,
            };
            all.push((restore.into(), snapshot.into(), v.clone()));
            Ok(v)
        }
    }

    /// Counts the checks; refuses once `refuse` is set.
    #[derive(Default)]
    struct Check {
        calls: std::sync::atomic::AtomicUsize,
        refuse: std::sync::atomic::AtomicBool,
    }

    impl BeforeCreate for Check {
        async fn confirm(&self) -> Result<(), Ec2Error> {
            use std::sync::atomic::Ordering;
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.refuse.load(Ordering::SeqCst) {
                return Err(Ec2Error {
                    operation: "CreateSnapshot",
                    message: "backup b9 no longer exists".into(),
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
        let ec2 = FakeEc2::default();
        let check = Check::default();
        check.refuse.store(true, Ordering::SeqCst);
        let r = snapshot_volumes(&ec2, &owner("b9"), Some("i-1"), &[], &check).await;
        assert!(r.is_err());
        assert!(ec2.snapshots.lock().expect("lock").is_empty());
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
        let ec2 = FakeEc2::default();
        *ec2.snapshot_state.lock().expect("lock") = "pending".into();
        let first = snapshot_volumes(&ec2, &owner("b1"), Some("i-1"), &[], &check)
            .await
            .expect("first");
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|p| p.state == BackupPartState::InProgress));
        // A restart (no recorded parts) finds the snapshots by tag instead of making new ones.
        let again = snapshot_volumes(&ec2, &owner("b1"), Some("i-1"), &[], &check)
            .await
            .expect("again");
        assert_eq!(again, first);
        assert_eq!(ec2.snapshots.lock().expect("lock").len(), 2);
        *ec2.snapshot_state.lock().expect("lock") = "completed".into();
        let done = snapshot_volumes(&ec2, &owner("b1"), Some("i-1"), &again, &check)
            .await
            .expect("done");
        assert!(done.iter().all(|p| p.state == BackupPartState::Completed));
        assert_eq!(ec2.snapshots.lock().expect("lock").len(), 2);
        // A shared tenant (no instance) has no EBS part.
        assert!(snapshot_volumes(&ec2, &owner("b2"), None, &[], &check)
            .await
            .expect("none")
            .is_empty());
    }

    #[tokio::test]
    async fn restores_make_one_volume_per_snapshot_and_fail_without_a_zone() {
        let ec2 = FakeEc2::default();
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
        let orphan = restore_volumes(&ec2, "acme", "r2", None, &snaps, &[])
            .await
            .expect("orphan");
        assert!(orphan.iter().all(|p| p.state == BackupPartState::Failed));
        assert!(
            ec2.volumes.lock().expect("lock").len() == 2,
            "no volume without a zone"
        );
    }
}
