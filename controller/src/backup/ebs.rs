//! The EBS parts: snapshots of a dedicated instance's volumes for a backup, and volumes made
//! from those snapshots for a restore. Each call advances every unfinished part by one step;
//! what exists is found by its tags first, so a retried or restarted reconcile never makes two.

use stackplane_crds::{BackupPart, BackupPartKind};

use super::ec2::{Ec2, Ec2Error};
use super::parts;

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
pub async fn snapshot_volumes<E: Ec2>(
    ec2: &E,
    tenant: &str,
    backup: &str,
    instance: Option<&str>,
    previous: &[BackupPart],
) -> Result<Vec<BackupPart>, Ec2Error> {
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
                let s = ec2.create_snapshot(tenant, backup, &volume).await?;
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
    use stackplane_crds::BackupPartState;

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
            _tenant: &str,
            backup: &str,
            volume: &str,
        ) -> Result<Ec2Object, Ec2Error> {
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

    #[tokio::test]
    async fn snapshots_are_made_once_and_followed_to_completion() {
        let ec2 = FakeEc2::default();
        *ec2.snapshot_state.lock().expect("lock") = "pending".into();
        let first = snapshot_volumes(&ec2, "acme", "b1", Some("i-1"), &[])
            .await
            .expect("first");
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|p| p.state == BackupPartState::InProgress));
        // A restart (no recorded parts) finds the snapshots by tag instead of making new ones.
        let again = snapshot_volumes(&ec2, "acme", "b1", Some("i-1"), &[])
            .await
            .expect("again");
        assert_eq!(again, first);
        assert_eq!(ec2.snapshots.lock().expect("lock").len(), 2);
        *ec2.snapshot_state.lock().expect("lock") = "completed".into();
        let done = snapshot_volumes(&ec2, "acme", "b1", Some("i-1"), &again)
            .await
            .expect("done");
        assert!(done.iter().all(|p| p.state == BackupPartState::Completed));
        assert_eq!(ec2.snapshots.lock().expect("lock").len(), 2);
        // A shared tenant (no instance) has no EBS part.
        assert!(snapshot_volumes(&ec2, "acme", "b2", None, &[])
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
