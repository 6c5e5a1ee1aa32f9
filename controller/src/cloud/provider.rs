//! The provider interface of the cloud step: the few EC2 and Route53 operations it needs, so
//! the reconciler's decisions (in `stackplane_core::cloud`) do not depend on the SDK and tests can
//! observe the calls.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
pub use stackplane_core::cloud::model::{
    ImageInfo, LaunchSpec, ObservedInstance, ObservedSnapshot, ObservedVolume, Record,
    RecordChange, RecordType, SnapshotSpec, VolumeSpec, ZoneRecord,
};

use super::error::CloudError;

/// The cloud operations of the controller: the cloud step's, the backup reconciler's and the
/// garbage collector's, behind one interface built once from one SDK configuration (or not at
/// all, with `--cloud-provider none`). Every method is one idempotent-enough API call (or one
/// paginated listing); none waits for a state change.
pub trait CloudProvider: std::fmt::Debug + Send + Sync {
    /// The tenant's instances that are not terminated (or terminating), found by tags.
    fn find_instances<'a>(
        &'a self,
        tenant: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ObservedInstance>, CloudError>>;

    /// The image, or `InvalidAMIID.*` when it does not exist.
    fn describe_image<'a>(
        &'a self,
        image_id: &'a str,
    ) -> BoxFuture<'a, Result<ImageInfo, CloudError>>;

    /// Launches one instance.
    fn run_instance<'a>(
        &'a self,
        spec: &'a LaunchSpec,
    ) -> BoxFuture<'a, Result<ObservedInstance, CloudError>>;

    fn stop_instance<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), CloudError>>;

    fn start_instance<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), CloudError>>;

    /// Changes the type of a stopped instance.
    fn modify_instance_type<'a>(
        &'a self,
        id: &'a str,
        instance_type: &'a str,
    ) -> BoxFuture<'a, Result<(), CloudError>>;

    fn terminate_instances<'a>(
        &'a self,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<(), CloudError>>;

    /// Adds or overwrites tags of an instance.
    fn tag_instance<'a>(
        &'a self,
        id: &'a str,
        tags: &'a BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<(), CloudError>>;

    /// The record sets named `name` (normalised, with trailing dot) in `zone` (bare id).
    fn find_records<'a>(
        &'a self,
        zone: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Record>, CloudError>>;

    /// Applies `changes` in one atomic change batch.
    fn change_records<'a>(
        &'a self,
        zone: &'a str,
        changes: &'a [RecordChange],
    ) -> BoxFuture<'a, Result<(), CloudError>>;

    /// Every instance tagged `ManagedBy=stackplane` that is not terminated (or terminating).
    fn managed_instances(&self) -> BoxFuture<'_, Result<Vec<ObservedInstance>, CloudError>>;

    /// Every snapshot of this account tagged `ManagedBy=stackplane`.
    fn managed_snapshots(&self) -> BoxFuture<'_, Result<Vec<ObservedSnapshot>, CloudError>>;

    /// The ownership TXT records (`dns::OWNER_PREFIX`) of every hosted zone of the account.
    fn owner_records(&self) -> BoxFuture<'_, Result<Vec<ZoneRecord>, CloudError>>;

    /// Ids of the EBS volumes attached to `instance`, sorted.
    fn attached_volumes<'a>(
        &'a self,
        instance: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, CloudError>>;

    /// The availability zone of `instance`, `None` when EC2 does not know the instance.
    fn instance_zone<'a>(
        &'a self,
        instance: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, CloudError>>;

    /// The snapshots tagged `key=value` (e.g. a backup's), optionally only those of `volume`.
    fn find_snapshots<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        volume: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<ObservedSnapshot>, CloudError>>;

    /// Starts a snapshot.
    fn create_snapshot<'a>(
        &'a self,
        spec: &'a SnapshotSpec,
    ) -> BoxFuture<'a, Result<ObservedSnapshot, CloudError>>;

    /// Deletes a snapshot; one already gone is not an error.
    fn delete_snapshot<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), CloudError>>;

    /// The volumes tagged with every pair of `tags`.
    fn find_volumes<'a>(
        &'a self,
        tags: &'a [(&'a str, &'a str)],
    ) -> BoxFuture<'a, Result<Vec<ObservedVolume>, CloudError>>;

    /// Creates a volume from a snapshot.
    fn create_volume<'a>(
        &'a self,
        spec: &'a VolumeSpec,
    ) -> BoxFuture<'a, Result<ObservedVolume, CloudError>>;
}
