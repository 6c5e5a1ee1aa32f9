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
}

impl RecordType {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordType::A => "A",
            RecordType::Cname => "CNAME",
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
    Upsert(Record),
    /// Deletes exactly this record set (Route53 needs the current values to delete).
    Delete(Record),
}

/// The cloud operations of the controller. Every method is one idempotent-enough API call;
/// none waits for a state change.
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
}
