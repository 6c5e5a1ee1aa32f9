//! The provider interface of the cloud step: the few EC2 and Route53 operations it needs, so
//! the reconciler's decisions do not depend on the SDK and tests can observe the calls.

use std::collections::BTreeMap;

use futures::future::BoxFuture;

use super::error::CloudError;

/// An EC2 instance as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedInstance {
    pub id: String,
    pub instance_type: String,
    /// `pending`, `running`, `stopping`, `stopped`, `shutting-down` or `terminated`.
    pub state: String,
    pub public_ip: Option<String>,
    /// RFC 3339 launch time, to keep the oldest of duplicates.
    pub launch_time: Option<String>,
    pub tags: BTreeMap<String, String>,
}

/// What RunInstances is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    pub image_id: String,
    pub instance_type: String,
    pub volume_size_gib: i32,
    /// Device name of the image's root volume, whose size `volume_size_gib` sets.
    pub root_device_name: Option<String>,
    pub tags: BTreeMap<String, String>,
    /// Idempotency token: AWS returns the same instance for a repeated token.
    pub client_token: String,
}

/// An EBS snapshot as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedSnapshot {
    pub id: String,
    /// `pending`, `completed`, `error`, ...
    pub state: String,
    /// EC2's explanation of an `error` state.
    pub message: Option<String>,
    /// RFC 3339 start time.
    pub start_time: Option<String>,
    pub tags: BTreeMap<String, String>,
}

/// An EBS volume made from a snapshot (a restore).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedVolume {
    pub id: String,
    /// `creating`, `available`, `in-use`, `error`, ...
    pub state: String,
}

/// What CreateSnapshot is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSpec {
    pub volume_id: String,
    pub description: String,
    pub tags: BTreeMap<String, String>,
}

/// What CreateVolume is asked for (a restore from a snapshot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    pub snapshot_id: String,
    pub availability_zone: String,
    pub tags: BTreeMap<String, String>,
}

/// A record set in a hosted zone, with the zone (what the garbage collector lists).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneRecord {
    /// Bare zone id.
    pub zone: String,
    pub record: Record,
}

/// The parts of an AMI the launch needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub id: String,
    pub root_device_name: Option<String>,
}

/// Type of a DNS record the controller manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordType {
    A,
    Cname,
    /// The ownership record beside a tenant's record (see `dns::owner_record`).
    Txt,
}

impl RecordType {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordType::A => "A",
            RecordType::Cname => "CNAME",
            RecordType::Txt => "TXT",
        }
    }
}

/// One resource record set (name, type, TTL, values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Fully qualified, as Route53 returns it (with a trailing dot).
    pub name: String,
    pub record_type: RecordType,
    pub ttl: i64,
    pub values: Vec<String>,
}

/// One change of a change batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordChange {
    /// Fails the whole batch when the record set exists: how a tenant claims a name no one
    /// holds without racing another tenant for it.
    Create(Record),
    Upsert(Record),
    /// Deletes exactly this record set (Route53 needs the current values to delete).
    Delete(Record),
}

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
