//! What backups and restores need of EC2, as a narrow trait so the part logic runs against a
//! fake in unit tests. In the controller it is the cloud step's provider
//! ([`crate::cloud::CloudProvider`], one AWS client and one list of tags for both), or nothing
//! at all with `--cloud-provider none`. Every snapshot and volume made here is tagged, and
//! looked up by its tags before it is made, so a restarted reconcile never makes two.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use crate::cloud::provider::{SnapshotSpec, VolumeSpec};
use crate::cloud::{CloudError, CloudProvider};
use stackplane_core::cloud::tags;

use super::parts::Ec2Object;

/// A failed EC2 call.
#[derive(Debug, thiserror::Error)]
#[error("EC2 {operation}: {message}")]
pub struct Ec2Error {
    pub operation: &'static str,
    pub message: String,
}

impl From<CloudError> for Ec2Error {
    fn from(e: CloudError) -> Self {
        Ec2Error {
            operation: e.operation(),
            message: e.to_string(),
        }
    }
}

/// Whose a snapshot is: its backup and tenant, by name and uid (the garbage collector keeps
/// a snapshot while its backup exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotOwner<'a> {
    pub tenant: &'a str,
    pub tenant_uid: &'a str,
    pub backup: &'a str,
    pub backup_uid: &'a str,
}

impl SnapshotOwner<'_> {
    /// The tags of the owner's snapshots.
    pub fn tags(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (tags::TENANT.to_owned(), self.tenant.to_owned()),
            (tags::TENANT_UID.to_owned(), self.tenant_uid.to_owned()),
            (tags::BACKUP.to_owned(), self.backup.to_owned()),
            (tags::BACKUP_UID.to_owned(), self.backup_uid.to_owned()),
            (
                tags::MANAGED_BY.to_owned(),
                tags::MANAGED_BY_VALUE.to_owned(),
            ),
        ])
    }
}

/// The EC2 operations backups and restores need.
pub trait Ec2: Send + Sync + 'static {
    /// Ids of the EBS volumes attached to `instance`, sorted.
    fn attached_volumes(
        &self,
        instance: &str,
    ) -> impl Future<Output = Result<Vec<String>, Ec2Error>> + Send;
    /// The availability zone of `instance`, `None` when EC2 does not know the instance.
    fn instance_zone(
        &self,
        instance: &str,
    ) -> impl Future<Output = Result<Option<String>, Ec2Error>> + Send;
    /// The snapshot of `volume` tagged with `backup`, if one exists.
    fn find_snapshot(
        &self,
        backup: &str,
        volume: &str,
    ) -> impl Future<Output = Result<Option<Ec2Object>, Ec2Error>> + Send;
    /// Starts a snapshot of `volume`, tagged with its owner.
    fn create_snapshot(
        &self,
        owner: &SnapshotOwner<'_>,
        volume: &str,
    ) -> impl Future<Output = Result<Ec2Object, Ec2Error>> + Send;
    /// Ids of every snapshot tagged with `backup`.
    fn snapshots_of(
        &self,
        backup: &str,
    ) -> impl Future<Output = Result<Vec<String>, Ec2Error>> + Send;
    /// Deletes a snapshot; one already gone is not an error.
    fn delete_snapshot(&self, id: &str) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    /// The volume made by `restore` from `snapshot`, if one exists.
    fn find_restored_volume(
        &self,
        restore: &str,
        snapshot: &str,
    ) -> impl Future<Output = Result<Option<Ec2Object>, Ec2Error>> + Send;
    /// Creates a volume from `snapshot` in `zone`, tagged with `tenant`, `restore` and `snapshot`.
    fn create_volume(
        &self,
        tenant: &str,
        restore: &str,
        snapshot: &str,
        zone: &str,
    ) -> impl Future<Output = Result<Ec2Object, Ec2Error>> + Send;
}

fn snapshot_object(s: crate::cloud::provider::ObservedSnapshot) -> Ec2Object {
    Ec2Object {
        id: s.id,
        state: s.state,
        message: s.message,
    }
}

fn volume_object(v: crate::cloud::provider::ObservedVolume) -> Ec2Object {
    Ec2Object {
        id: v.id,
        state: v.state,
        message: None,
    }
}

/// Backups through the controller's cloud provider.
impl<P: CloudProvider + ?Sized + 'static> Ec2 for Arc<P> {
    async fn attached_volumes(&self, instance: &str) -> Result<Vec<String>, Ec2Error> {
        Ok(self.as_ref().attached_volumes(instance).await?)
    }

    async fn instance_zone(&self, instance: &str) -> Result<Option<String>, Ec2Error> {
        Ok(self.as_ref().instance_zone(instance).await?)
    }

    async fn find_snapshot(
        &self,
        backup: &str,
        volume: &str,
    ) -> Result<Option<Ec2Object>, Ec2Error> {
        let found = self
            .as_ref()
            .find_snapshots(tags::BACKUP, backup, Some(volume))
            .await?;
        Ok(found.into_iter().next().map(snapshot_object))
    }

    async fn create_snapshot(
        &self,
        owner: &SnapshotOwner<'_>,
        volume: &str,
    ) -> Result<Ec2Object, Ec2Error> {
        let spec = SnapshotSpec {
            volume_id: volume.to_owned(),
            description: format!(
                "stackplane backup {} of tenant {}",
                owner.backup, owner.tenant
            ),
            tags: owner.tags(),
        };
        Ok(snapshot_object(self.as_ref().create_snapshot(&spec).await?))
    }

    async fn snapshots_of(&self, backup: &str) -> Result<Vec<String>, Ec2Error> {
        let found = self
            .as_ref()
            .find_snapshots(tags::BACKUP, backup, None)
            .await?;
        Ok(found.into_iter().map(|s| s.id).collect())
    }

    async fn delete_snapshot(&self, id: &str) -> Result<(), Ec2Error> {
        Ok(self.as_ref().delete_snapshot(id).await?)
    }

    async fn find_restored_volume(
        &self,
        restore: &str,
        snapshot: &str,
    ) -> Result<Option<Ec2Object>, Ec2Error> {
        let found = self
            .as_ref()
            .find_volumes(&[(tags::RESTORE, restore), (tags::SNAPSHOT, snapshot)])
            .await?;
        Ok(found.into_iter().next().map(volume_object))
    }

    async fn create_volume(
        &self,
        tenant: &str,
        restore: &str,
        snapshot: &str,
        zone: &str,
    ) -> Result<Ec2Object, Ec2Error> {
        let spec = VolumeSpec {
            snapshot_id: snapshot.to_owned(),
            availability_zone: zone.to_owned(),
            tags: BTreeMap::from([
                (tags::TENANT.to_owned(), tenant.to_owned()),
                (tags::RESTORE.to_owned(), restore.to_owned()),
                (tags::SNAPSHOT.to_owned(), snapshot.to_owned()),
                (
                    tags::MANAGED_BY.to_owned(),
                    tags::MANAGED_BY_VALUE.to_owned(),
                ),
            ]),
        };
        Ok(volume_object(self.as_ref().create_volume(&spec).await?))
    }
}
