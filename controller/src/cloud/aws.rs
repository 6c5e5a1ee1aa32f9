//! [`CloudProvider`] on AWS: EC2 for instances, Route53 for records. The SDK configuration
//! (region, endpoint, credentials) comes from [`crate::aws::sdk_config`].

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{
    AttributeValue, BlockDeviceMapping, EbsBlockDevice, Filter, InstanceType, ResourceType, Tag,
    TagSpecification, VolumeType,
};
use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};
use futures::future::BoxFuture;
use futures::FutureExt;

use super::error::CloudError;
use super::provider::{
    CloudProvider, ImageInfo, LaunchSpec, ObservedInstance, ObservedSnapshot, ObservedVolume,
    Record, RecordChange, RecordType, SnapshotSpec, VolumeSpec, ZoneRecord,
};
use stackplane_core::cloud::instance::ACTIVE_STATES;
use stackplane_core::cloud::tags;

/// EC2 and Route53 clients from one SDK configuration: the only AWS client of the controller,
/// shared by the cloud step, the backup reconciler and the garbage collector.
#[derive(Debug, Clone)]
pub struct AwsProvider {
    ec2: aws_sdk_ec2::Client,
    route53: aws_sdk_route53::Client,
}

impl AwsProvider {
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        AwsProvider {
            ec2: aws_sdk_ec2::Client::new(config),
            route53: aws_sdk_route53::Client::new(config),
        }
    }

    /// A provider configured from the environment (the SDK's standard chain), every call
    /// bounded by `timeouts`.
    pub async fn from_env(timeouts: crate::aws::AwsTimeouts) -> Self {
        Self::new(&crate::aws::sdk_config(timeouts).await)
    }
}

fn observed(i: &aws_sdk_ec2::types::Instance) -> Option<ObservedInstance> {
    Some(ObservedInstance {
        id: i.instance_id()?.to_owned(),
        instance_type: i
            .instance_type()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
        state: i
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_owned())
            .unwrap_or_else(|| "pending".to_owned()),
        public_ip: i.public_ip_address().map(str::to_owned),
        launch_time: i.launch_time().map(|t| t.to_string()),
        tags: i
            .tags()
            .iter()
            .filter_map(|t| {
                Some((
                    t.key()?.to_owned(),
                    t.value().unwrap_or_default().to_owned(),
                ))
            })
            .collect(),
    })
}

fn ec2_tags(tags: &BTreeMap<String, String>) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

/// The tags of a resource an EC2 call creates, given with the call itself, so the resource never
/// exists untagged (an untagged instance would be invisible to the lookup by tags: a leak).
fn tagged(kind: ResourceType, tags: &BTreeMap<String, String>) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(kind)
        .set_tags(Some(ec2_tags(tags)))
        .build()
}

/// A field EC2 documents as always present in a successful answer of `operation`.
fn required(
    value: Option<&str>,
    operation: &'static str,
    what: &'static str,
) -> Result<String, CloudError> {
    value
        .map(str::to_owned)
        .ok_or(CloudError::Incomplete { operation, what })
}

fn rr_type(t: RecordType) -> RrType {
    match t {
        RecordType::A => RrType::A,
        RecordType::Cname => RrType::Cname,
        RecordType::Txt => RrType::Txt,
    }
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

fn managed_filter() -> Filter {
    filter(&format!("tag:{}", tags::MANAGED_BY), tags::MANAGED_BY_VALUE)
}

fn active_filter() -> Filter {
    Filter::builder()
        .name("instance-state-name")
        .set_values(Some(
            ACTIVE_STATES.iter().map(|s| (*s).to_owned()).collect(),
        ))
        .build()
}

fn tag_map(tags: &[Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_owned(),
                t.value().unwrap_or_default().to_owned(),
            ))
        })
        .collect()
}

fn snapshot(s: &aws_sdk_ec2::types::Snapshot) -> Option<ObservedSnapshot> {
    Some(ObservedSnapshot {
        id: s.snapshot_id()?.to_owned(),
        state: s
            .state()
            .map(|st| st.as_str().to_owned())
            .unwrap_or_default(),
        message: s.state_message().map(str::to_owned),
        start_time: s.start_time().map(|t| t.to_string()),
        tags: tag_map(s.tags()),
    })
}

fn volume(v: &aws_sdk_ec2::types::Volume) -> Option<ObservedVolume> {
    Some(ObservedVolume {
        id: v.volume_id()?.to_owned(),
        state: v
            .state()
            .map(|st| st.as_str().to_owned())
            .unwrap_or_default(),
    })
}

fn record(s: &ResourceRecordSet) -> Option<Record> {
    let record_type = match s.r#type() {
        RrType::A => RecordType::A,
        RrType::Cname => RecordType::Cname,
        RrType::Txt => RecordType::Txt,
        _ => return None,
    };
    Some(Record {
        name: s.name().to_owned(),
        record_type,
        ttl: s.ttl().unwrap_or_default(),
        values: s
            .resource_records()
            .iter()
            .map(|r| r.value().to_owned())
            .collect(),
    })
}

impl AwsProvider {
    async fn describe_instances(
        &self,
        filters: Vec<Filter>,
    ) -> Result<Vec<ObservedInstance>, CloudError> {
        const OP: &str = "DescribeInstances";
        let mut pages = self
            .ec2
            .describe_instances()
            .set_filters(Some(filters))
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| CloudError::from_sdk(OP, &e))?;
            for r in page.reservations() {
                out.extend(r.instances().iter().filter_map(observed));
            }
        }
        // Filters are applied by the server; moto and AWS agree, but a state filter that
        // a server ignored must not let a terminated instance count as the tenant's.
        out.retain(|i| ACTIVE_STATES.contains(&i.state.as_str()));
        Ok(out)
    }

    async fn describe_snapshots(
        &self,
        filters: Vec<Filter>,
    ) -> Result<Vec<ObservedSnapshot>, CloudError> {
        const OP: &str = "DescribeSnapshots";
        let mut pages = self
            .ec2
            .describe_snapshots()
            .owner_ids("self")
            .set_filters(Some(filters))
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| CloudError::from_sdk(OP, &e))?;
            out.extend(page.snapshots().iter().filter_map(snapshot));
        }
        Ok(out)
    }
}

fn record_set(r: &Record) -> Result<ResourceRecordSet, CloudError> {
    let config = |e: aws_sdk_route53::error::BuildError| CloudError::Config(e.to_string());
    let mut b = ResourceRecordSet::builder()
        .name(&r.name)
        .r#type(rr_type(r.record_type))
        .ttl(r.ttl);
    for v in &r.values {
        b = b.resource_records(ResourceRecord::builder().value(v).build().map_err(config)?);
    }
    b.build().map_err(config)
}

impl CloudProvider for AwsProvider {
    fn find_instances<'a>(
        &'a self,
        tenant: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ObservedInstance>, CloudError>> {
        async move {
            self.describe_instances(vec![
                filter(&format!("tag:{}", tags::TENANT), tenant),
                managed_filter(),
                active_filter(),
            ])
            .await
        }
        .boxed()
    }

    fn describe_image<'a>(
        &'a self,
        image_id: &'a str,
    ) -> BoxFuture<'a, Result<ImageInfo, CloudError>> {
        async move {
            const OP: &str = "DescribeImages";
            let out = self
                .ec2
                .describe_images()
                .image_ids(image_id)
                .send()
                .await
                .map_err(|e| CloudError::from_sdk(OP, &e))?;
            let image = out
                .images()
                .iter()
                .find(|i| i.image_id() == Some(image_id))
                .ok_or_else(|| CloudError::Terminal {
                    operation: OP,
                    code: "InvalidAMIID.NotFound".to_owned(),
                    message: format!("The image id '[{image_id}]' does not exist"),
                })?;
            Ok(ImageInfo {
                id: image_id.to_owned(),
                root_device_name: image.root_device_name().map(str::to_owned),
            })
        }
        .boxed()
    }

    fn run_instance<'a>(
        &'a self,
        spec: &'a LaunchSpec,
    ) -> BoxFuture<'a, Result<ObservedInstance, CloudError>> {
        async move {
            const OP: &str = "RunInstances";
            let mut req = self
                .ec2
                .run_instances()
                .image_id(&spec.image_id)
                .instance_type(InstanceType::from(spec.instance_type.as_str()))
                .min_count(1)
                .max_count(1)
                .client_token(&spec.client_token)
                .tag_specifications(tagged(ResourceType::Instance, &spec.tags))
                .tag_specifications(tagged(ResourceType::Volume, &spec.tags));
            if let Some(device) = &spec.root_device_name {
                req = req.block_device_mappings(
                    BlockDeviceMapping::builder()
                        .device_name(device)
                        .ebs(
                            EbsBlockDevice::builder()
                                .volume_size(spec.volume_size_gib)
                                .volume_type(VolumeType::Gp3)
                                .delete_on_termination(true)
                                .build(),
                        )
                        .build(),
                );
            }
            let out = req.send().await.map_err(|e| CloudError::from_sdk(OP, &e))?;
            out.instances()
                .iter()
                .find_map(observed)
                .ok_or(CloudError::Incomplete {
                    operation: OP,
                    what: "instance id",
                })
        }
        .boxed()
    }

    fn stop_instance<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), CloudError>> {
        async move {
            self.ec2
                .stop_instances()
                .instance_ids(id)
                .send()
                .await
                .map_err(|e| CloudError::from_sdk("StopInstances", &e))?;
            Ok(())
        }
        .boxed()
    }

    fn start_instance<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), CloudError>> {
        async move {
            self.ec2
                .start_instances()
                .instance_ids(id)
                .send()
                .await
                .map_err(|e| CloudError::from_sdk("StartInstances", &e))?;
            Ok(())
        }
        .boxed()
    }

    fn modify_instance_type<'a>(
        &'a self,
        id: &'a str,
        instance_type: &'a str,
    ) -> BoxFuture<'a, Result<(), CloudError>> {
        async move {
            self.ec2
                .modify_instance_attribute()
                .instance_id(id)
                .instance_type(AttributeValue::builder().value(instance_type).build())
                .send()
                .await
                .map_err(|e| CloudError::from_sdk("ModifyInstanceAttribute", &e))?;
            Ok(())
        }
        .boxed()
    }

    fn terminate_instances<'a>(
        &'a self,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<(), CloudError>> {
        async move {
            if ids.is_empty() {
                return Ok(());
            }
            self.ec2
                .terminate_instances()
                .set_instance_ids(Some(ids.to_vec()))
                .send()
                .await
                .map_err(|e| CloudError::from_sdk("TerminateInstances", &e))?;
            Ok(())
        }
        .boxed()
    }

    fn tag_instance<'a>(
        &'a self,
        id: &'a str,
        tags: &'a BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<(), CloudError>> {
        async move {
            self.ec2
                .create_tags()
                .resources(id)
                .set_tags(Some(ec2_tags(tags)))
                .send()
                .await
                .map_err(|e| CloudError::from_sdk("CreateTags", &e))?;
            Ok(())
        }
        .boxed()
    }

    fn find_records<'a>(
        &'a self,
        zone: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Record>, CloudError>> {
        async move {
            const OP: &str = "ListResourceRecordSets";
            // Record sets are sorted by name, then type: starting at `name`, the few sets of
            // that name come first.
            let out = self
                .route53
                .list_resource_record_sets()
                .hosted_zone_id(zone)
                .start_record_name(name)
                .max_items(10)
                .send()
                .await
                .map_err(|e| CloudError::from_sdk(OP, &e))?;
            let wanted = stackplane_core::cloud::dns::normalize_name(name);
            Ok(out
                .resource_record_sets()
                .iter()
                .filter(|s| stackplane_core::cloud::dns::normalize_name(s.name()) == wanted)
                .filter_map(record)
                .collect())
        }
        .boxed()
    }

    fn change_records<'a>(
        &'a self,
        zone: &'a str,
        changes: &'a [RecordChange],
    ) -> BoxFuture<'a, Result<(), CloudError>> {
        async move {
            if changes.is_empty() {
                return Ok(());
            }
            let config = |e: aws_sdk_route53::error::BuildError| CloudError::Config(e.to_string());
            let mut batch = ChangeBatch::builder().comment("stackplane-controller");
            for c in changes {
                let (action, record) = match c {
                    RecordChange::Create(r) => (ChangeAction::Create, r),
                    RecordChange::Upsert(r) => (ChangeAction::Upsert, r),
                    RecordChange::Delete(r) => (ChangeAction::Delete, r),
                };
                batch = batch.changes(
                    Change::builder()
                        .action(action)
                        .resource_record_set(record_set(record)?)
                        .build()
                        .map_err(config)?,
                );
            }
            self.route53
                .change_resource_record_sets()
                .hosted_zone_id(zone)
                .change_batch(batch.build().map_err(config)?)
                .send()
                .await
                .map_err(|e| CloudError::from_sdk("ChangeResourceRecordSets", &e))?;
            Ok(())
        }
        .boxed()
    }

    fn managed_instances(&self) -> BoxFuture<'_, Result<Vec<ObservedInstance>, CloudError>> {
        async move {
            self.describe_instances(vec![managed_filter(), active_filter()])
                .await
        }
        .boxed()
    }

    fn managed_snapshots(&self) -> BoxFuture<'_, Result<Vec<ObservedSnapshot>, CloudError>> {
        async move { self.describe_snapshots(vec![managed_filter()]).await }.boxed()
    }

    fn owner_records(&self) -> BoxFuture<'_, Result<Vec<ZoneRecord>, CloudError>> {
        async move {
            let mut zones = Vec::new();
            let mut marker: Option<String> = None;
            loop {
                let page = self
                    .route53
                    .list_hosted_zones()
                    .set_marker(marker.clone())
                    .send()
                    .await
                    .map_err(|e| CloudError::from_sdk("ListHostedZones", &e))?;
                zones.extend(
                    page.hosted_zones()
                        .iter()
                        .map(|z| stackplane_core::cloud::dns::normalize_zone_id(z.id())),
                );
                match page.next_marker() {
                    Some(m) if page.is_truncated() => marker = Some(m.to_owned()),
                    _ => break,
                }
            }
            let mut out = Vec::new();
            for zone in zones {
                let mut start: Option<(String, RrType)> = None;
                loop {
                    let mut req = self
                        .route53
                        .list_resource_record_sets()
                        .hosted_zone_id(&zone);
                    if let Some((name, t)) = &start {
                        req = req.start_record_name(name).start_record_type(t.clone());
                    }
                    let page = req
                        .send()
                        .await
                        .map_err(|e| CloudError::from_sdk("ListResourceRecordSets", &e))?;
                    out.extend(
                        page.resource_record_sets()
                            .iter()
                            .filter(|s| {
                                *s.r#type() == RrType::Txt
                                    && stackplane_core::cloud::dns::owned_name(s.name()).is_some()
                            })
                            .filter_map(record)
                            .map(|record| ZoneRecord {
                                zone: zone.clone(),
                                record,
                            }),
                    );
                    match (
                        page.is_truncated(),
                        page.next_record_name(),
                        page.next_record_type(),
                    ) {
                        (true, Some(n), Some(t)) => start = Some((n.to_owned(), t.clone())),
                        _ => break,
                    }
                }
            }
            Ok(out)
        }
        .boxed()
    }

    fn attached_volumes<'a>(
        &'a self,
        instance: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, CloudError>> {
        async move {
            let out = self
                .ec2
                .describe_volumes()
                .filters(filter("attachment.instance-id", instance))
                .send()
                .await
                .map_err(|e| CloudError::from_sdk("DescribeVolumes", &e))?;
            let mut ids: Vec<String> = out
                .volumes()
                .iter()
                .filter_map(|v| v.volume_id().map(str::to_owned))
                .collect();
            ids.sort();
            Ok(ids)
        }
        .boxed()
    }

    fn instance_zone<'a>(
        &'a self,
        instance: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, CloudError>> {
        async move {
            let out = self
                .ec2
                .describe_instances()
                .filters(filter("instance-id", instance))
                .send()
                .await
                .map_err(|e| CloudError::from_sdk("DescribeInstances", &e))?;
            Ok(out
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .find_map(|i| i.placement()?.availability_zone().map(str::to_owned)))
        }
        .boxed()
    }

    fn find_snapshots<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        volume: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<ObservedSnapshot>, CloudError>> {
        async move {
            let mut filters = vec![filter(&format!("tag:{key}"), value)];
            if let Some(v) = volume {
                filters.push(filter("volume-id", v));
            }
            self.describe_snapshots(filters).await
        }
        .boxed()
    }

    fn create_snapshot<'a>(
        &'a self,
        spec: &'a SnapshotSpec,
    ) -> BoxFuture<'a, Result<ObservedSnapshot, CloudError>> {
        async move {
            const OP: &str = "CreateSnapshot";
            let out = self
                .ec2
                .create_snapshot()
                .volume_id(&spec.volume_id)
                .description(&spec.description)
                .tag_specifications(tagged(ResourceType::Snapshot, &spec.tags))
                .send()
                .await
                .map_err(|e| CloudError::from_sdk(OP, &e))?;
            Ok(ObservedSnapshot {
                id: required(out.snapshot_id(), OP, "snapshot id")?,
                state: out
                    .state()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default(),
                message: out.state_message().map(str::to_owned),
                start_time: out.start_time().map(|t| t.to_string()),
                tags: spec.tags.clone(),
            })
        }
        .boxed()
    }

    fn delete_snapshot<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), CloudError>> {
        async move {
            match self.ec2.delete_snapshot().snapshot_id(id).send().await {
                Ok(_) => Ok(()),
                Err(e)
                    if e.as_service_error()
                        .and_then(aws_sdk_ec2::error::ProvideErrorMetadata::code)
                        == Some("InvalidSnapshot.NotFound") =>
                {
                    Ok(())
                }
                Err(e) => Err(CloudError::from_sdk("DeleteSnapshot", &e)),
            }
        }
        .boxed()
    }

    fn find_volumes<'a>(
        &'a self,
        tags: &'a [(&'a str, &'a str)],
    ) -> BoxFuture<'a, Result<Vec<ObservedVolume>, CloudError>> {
        async move {
            let filters = tags
                .iter()
                .map(|(k, v)| filter(&format!("tag:{k}"), v))
                .collect();
            let out = self
                .ec2
                .describe_volumes()
                .set_filters(Some(filters))
                .send()
                .await
                .map_err(|e| CloudError::from_sdk("DescribeVolumes", &e))?;
            Ok(out.volumes().iter().filter_map(volume).collect())
        }
        .boxed()
    }

    fn create_volume<'a>(
        &'a self,
        spec: &'a VolumeSpec,
    ) -> BoxFuture<'a, Result<ObservedVolume, CloudError>> {
        async move {
            const OP: &str = "CreateVolume";
            let out = self
                .ec2
                .create_volume()
                .snapshot_id(&spec.snapshot_id)
                .availability_zone(&spec.availability_zone)
                .tag_specifications(tagged(ResourceType::Volume, &spec.tags))
                .send()
                .await
                .map_err(|e| CloudError::from_sdk(OP, &e))?;
            Ok(ObservedVolume {
                id: required(out.volume_id(), OP, "volume id")?,
                state: out
                    .state()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default(),
            })
        }
        .boxed()
    }
}
