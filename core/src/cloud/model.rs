//! What the cloud reports and what it is asked for: the values the instance and DNS decisions
//! ([`super::instance`], [`super::dns`]) read and return. The calls that carry them are the
//! controller's `CloudProvider`; nothing here touches the network.

use std::collections::BTreeMap;

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
