//! The EC2 calls of backups behind a small trait, so the part logic runs against a fake in unit
//! tests and against EC2 (or moto) otherwise. Every snapshot and volume made here is tagged, and
//! looked up by its tags before it is made, so a restarted reconcile never makes two.

use std::future::Future;

use aws_sdk_ec2::error::DisplayErrorContext;
use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};

use super::parts::Ec2Object;

/// Tag naming the backup a snapshot belongs to.
pub const TAG_BACKUP: &str = stackplane_crds::labels::BACKUP;
/// Tag naming the tenant a snapshot or volume belongs to.
pub const TAG_TENANT: &str = "stackplane.io/tenant";
/// Tag naming the restore a volume was made by.
pub const TAG_RESTORE: &str = "stackplane.io/restore";
/// Tag naming the snapshot a restored volume was made from.
pub const TAG_SNAPSHOT: &str = "stackplane.io/snapshot";
/// Tag marking everything stackplane made in the account.
pub const TAG_MANAGED_BY: &str = "ManagedBy";
/// Value of [`TAG_MANAGED_BY`].
pub const MANAGED_BY: &str = "stackplane";

/// A failed EC2 call.
#[derive(Debug, thiserror::Error)]
#[error("EC2 {operation}: {message}")]
pub struct Ec2Error {
    pub operation: &'static str,
    pub message: String,
}

impl Ec2Error {
    fn new<E: std::error::Error>(operation: &'static str, error: E) -> Self {
        Ec2Error {
            operation,
            message: DisplayErrorContext(error).to_string(),
        }
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
    /// Starts a snapshot of `volume`, tagged with `tenant` and `backup`.
    fn create_snapshot(
        &self,
        tenant: &str,
        backup: &str,
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

/// [`Ec2`] through `aws-sdk-ec2`.
#[derive(Clone, Debug)]
pub struct AwsEc2 {
    client: aws_sdk_ec2::Client,
}

impl AwsEc2 {
    pub fn new(client: aws_sdk_ec2::Client) -> Self {
        AwsEc2 { client }
    }

    /// A client from the controller's AWS configuration ([`crate::aws::sdk_config`]).
    pub async fn from_env() -> Self {
        AwsEc2::new(aws_sdk_ec2::Client::new(&crate::aws::sdk_config().await))
    }
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

fn tags(resource: ResourceType, pairs: &[(&str, &str)]) -> TagSpecification {
    let mut spec = TagSpecification::builder().resource_type(resource);
    for (k, v) in pairs {
        spec = spec.tags(tag(k, v));
    }
    spec.tags(tag(TAG_MANAGED_BY, MANAGED_BY)).build()
}

fn snapshot_object(s: &aws_sdk_ec2::types::Snapshot) -> Option<Ec2Object> {
    Some(Ec2Object {
        id: s.snapshot_id()?.to_owned(),
        state: s
            .state()
            .map(|st| st.as_str().to_owned())
            .unwrap_or_default(),
        message: s.state_message().map(str::to_owned),
    })
}

fn volume_object(v: &aws_sdk_ec2::types::Volume) -> Option<Ec2Object> {
    Some(Ec2Object {
        id: v.volume_id()?.to_owned(),
        state: v
            .state()
            .map(|st| st.as_str().to_owned())
            .unwrap_or_default(),
        message: None,
    })
}

impl Ec2 for AwsEc2 {
    async fn attached_volumes(&self, instance: &str) -> Result<Vec<String>, Ec2Error> {
        let out = self
            .client
            .describe_volumes()
            .filters(filter("attachment.instance-id", instance))
            .send()
            .await
            .map_err(|e| Ec2Error::new("DescribeVolumes", e))?;
        let mut ids: Vec<String> = out
            .volumes()
            .iter()
            .filter_map(|v| v.volume_id().map(str::to_owned))
            .collect();
        ids.sort();
        Ok(ids)
    }

    async fn instance_zone(&self, instance: &str) -> Result<Option<String>, Ec2Error> {
        let out = self
            .client
            .describe_instances()
            .filters(filter("instance-id", instance))
            .send()
            .await
            .map_err(|e| Ec2Error::new("DescribeInstances", e))?;
        Ok(out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find_map(|i| i.placement()?.availability_zone().map(str::to_owned)))
    }

    async fn find_snapshot(
        &self,
        backup: &str,
        volume: &str,
    ) -> Result<Option<Ec2Object>, Ec2Error> {
        let out = self
            .client
            .describe_snapshots()
            .filters(filter(&format!("tag:{TAG_BACKUP}"), backup))
            .filters(filter("volume-id", volume))
            .send()
            .await
            .map_err(|e| Ec2Error::new("DescribeSnapshots", e))?;
        Ok(out.snapshots().iter().find_map(snapshot_object))
    }

    async fn create_snapshot(
        &self,
        tenant: &str,
        backup: &str,
        volume: &str,
    ) -> Result<Ec2Object, Ec2Error> {
        let out = self
            .client
            .create_snapshot()
            .volume_id(volume)
            .description(format!("stackplane backup {backup} of tenant {tenant}"))
            .tag_specifications(tags(
                ResourceType::Snapshot,
                &[(TAG_TENANT, tenant), (TAG_BACKUP, backup)],
            ))
            .send()
            .await
            .map_err(|e| Ec2Error::new("CreateSnapshot", e))?;
        Ok(Ec2Object {
            id: out.snapshot_id().unwrap_or_default().to_owned(),
            state: out
                .state()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            message: out.state_message().map(str::to_owned),
        })
    }

    async fn snapshots_of(&self, backup: &str) -> Result<Vec<String>, Ec2Error> {
        let out = self
            .client
            .describe_snapshots()
            .filters(filter(&format!("tag:{TAG_BACKUP}"), backup))
            .send()
            .await
            .map_err(|e| Ec2Error::new("DescribeSnapshots", e))?;
        Ok(out
            .snapshots()
            .iter()
            .filter_map(|s| s.snapshot_id().map(str::to_owned))
            .collect())
    }

    async fn delete_snapshot(&self, id: &str) -> Result<(), Ec2Error> {
        match self.client.delete_snapshot().snapshot_id(id).send().await {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .and_then(aws_sdk_ec2::error::ProvideErrorMetadata::code)
                    == Some("InvalidSnapshot.NotFound") =>
            {
                Ok(())
            }
            Err(e) => Err(Ec2Error::new("DeleteSnapshot", e)),
        }
    }

    async fn find_restored_volume(
        &self,
        restore: &str,
        snapshot: &str,
    ) -> Result<Option<Ec2Object>, Ec2Error> {
        let out = self
            .client
            .describe_volumes()
            .filters(filter(&format!("tag:{TAG_RESTORE}"), restore))
            .filters(filter(&format!("tag:{TAG_SNAPSHOT}"), snapshot))
            .send()
            .await
            .map_err(|e| Ec2Error::new("DescribeVolumes", e))?;
        Ok(out.volumes().iter().find_map(volume_object))
    }

    async fn create_volume(
        &self,
        tenant: &str,
        restore: &str,
        snapshot: &str,
        zone: &str,
    ) -> Result<Ec2Object, Ec2Error> {
        let out = self
            .client
            .create_volume()
            .snapshot_id(snapshot)
            .availability_zone(zone)
            .tag_specifications(tags(
                ResourceType::Volume,
                &[
                    (TAG_TENANT, tenant),
                    (TAG_RESTORE, restore),
                    (TAG_SNAPSHOT, snapshot),
                ],
            ))
            .send()
            .await
            .map_err(|e| Ec2Error::new("CreateVolume", e))?;
        Ok(Ec2Object {
            id: out.volume_id().unwrap_or_default().to_owned(),
            state: out
                .state()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            message: None,
        })
    }
}
