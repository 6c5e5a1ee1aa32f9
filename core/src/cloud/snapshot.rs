//! What a backup asks EC2 for: the tags and description of a backup's EBS snapshots and of the
//! volumes a restore makes from them. The backup reconciler looks both up by these tags before
//! it creates one, so a restarted reconcile never makes two; the garbage collector keeps a
//! snapshot while the backup its tags name exists.

use std::collections::BTreeMap;

use super::model::{SnapshotSpec, VolumeSpec};
use super::tags;

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

    /// The CreateSnapshot request of the owner's snapshot of `volume`.
    pub fn snapshot_spec(&self, volume: &str) -> SnapshotSpec {
        SnapshotSpec {
            volume_id: volume.to_owned(),
            description: format!(
                "stackplane backup {} of tenant {}",
                self.backup, self.tenant
            ),
            tags: self.tags(),
        }
    }
}

/// The tag pairs a volume made by `restore` from `snapshot` is found by.
pub fn restored_volume_tags<'a>(restore: &'a str, snapshot: &'a str) -> [(&'a str, &'a str); 2] {
    [(tags::RESTORE, restore), (tags::SNAPSHOT, snapshot)]
}

/// The CreateVolume request of the volume `restore` makes from `snapshot` in `zone`, for
/// `tenant`: tagged with all three (and [`tags::MANAGED_BY`]), so it is found again by
/// [`restored_volume_tags`].
pub fn restored_volume_spec(tenant: &str, restore: &str, snapshot: &str, zone: &str) -> VolumeSpec {
    VolumeSpec {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_tagged_with_its_backup_and_tenant() {
        let owner = SnapshotOwner {
            tenant: "acme",
            tenant_uid: "u-t",
            backup: "b1",
            backup_uid: "u-b",
        };
        let spec = owner.snapshot_spec("vol-a");
        assert_eq!(spec.volume_id, "vol-a");
        assert_eq!(spec.description, "stackplane backup b1 of tenant acme");
        assert_eq!(spec.tags, owner.tags());
        assert_eq!(spec.tags.get(tags::BACKUP).map(String::as_str), Some("b1"));
        assert_eq!(
            spec.tags.get(tags::BACKUP_UID).map(String::as_str),
            Some("u-b")
        );
        assert_eq!(
            spec.tags.get(tags::TENANT_UID).map(String::as_str),
            Some("u-t")
        );
        assert_eq!(
            spec.tags.get(tags::MANAGED_BY).map(String::as_str),
            Some(tags::MANAGED_BY_VALUE)
        );
    }

    #[test]
    fn a_restored_volume_is_found_by_the_tags_it_is_made_with() {
        let spec = restored_volume_spec("acme", "r1", "snap-0", "us-east-1a");
        assert_eq!(spec.snapshot_id, "snap-0");
        assert_eq!(spec.availability_zone, "us-east-1a");
        for (k, v) in restored_volume_tags("r1", "snap-0") {
            assert_eq!(spec.tags.get(k).map(String::as_str), Some(v), "{k}");
        }
        assert_eq!(
            spec.tags.get(tags::TENANT).map(String::as_str),
            Some("acme")
        );
    }
}
