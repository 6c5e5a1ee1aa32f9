//! A [`CloudProvider`] in memory for the controller's unit tests: instances with their volumes
//! and zones, snapshots and volumes kept with the tags they were created with (and found by
//! them, as EC2 does), and every call recorded. Calls no test needs yet answer with a terminal
//! [`CloudError`] naming the call, not a panic.

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures::future::{BoxFuture, FutureExt};

use super::error::CloudError;
use super::provider::{
    CloudProvider, ImageInfo, LaunchSpec, ObservedInstance, ObservedSnapshot, ObservedVolume,
    Record, RecordChange, SnapshotSpec, VolumeSpec, ZoneRecord,
};

/// A snapshot the fake made, with the volume it is of.
#[derive(Debug, Clone)]
pub struct FakeSnapshot {
    pub volume: String,
    pub snapshot: ObservedSnapshot,
}

/// A volume the fake made, with its tags.
#[derive(Debug, Clone)]
pub struct FakeVolume {
    pub tags: BTreeMap<String, String>,
    pub volume: ObservedVolume,
}

/// An instance of the fake: its availability zone and its attached volumes.
#[derive(Debug, Clone, Default)]
pub struct FakeInstance {
    pub zone: String,
    pub volumes: Vec<String>,
}

#[derive(Debug, Default)]
pub struct FakeCloud {
    pub instances: Mutex<BTreeMap<String, FakeInstance>>,
    pub snapshots: Mutex<Vec<FakeSnapshot>>,
    pub volumes: Mutex<Vec<FakeVolume>>,
    /// Every call, as `Operation argument…`, in order.
    pub calls: Mutex<Vec<String>>,
    /// Errors the next calls return instead of doing anything (first in, first out).
    pub failures: Mutex<Vec<CloudError>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn has_tags(have: &BTreeMap<String, String>, want: &[(&str, &str)]) -> bool {
    want.iter()
        .all(|(k, v)| have.get(*k).map(String::as_str) == Some(*v))
}

impl FakeCloud {
    /// A fake with one instance, `id`, in `zone`, with `volumes` attached.
    pub fn with_instance(id: &str, zone: &str, volumes: &[&str]) -> Self {
        let fake = FakeCloud::default();
        lock(&fake.instances).insert(
            id.to_owned(),
            FakeInstance {
                zone: zone.to_owned(),
                volumes: volumes.iter().map(|v| (*v).to_owned()).collect(),
            },
        );
        fake
    }

    /// The calls made so far.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    /// How many calls of `operation` were made.
    pub fn count(&self, operation: &str) -> usize {
        lock(&self.calls)
            .iter()
            .filter(|c| c.split(' ').next() == Some(operation))
            .count()
    }

    /// The next call fails with `error`.
    pub fn fail_next(&self, error: CloudError) {
        lock(&self.failures).push(error);
    }

    /// Sets the state EC2 reports for every snapshot made so far (e.g. `completed`).
    pub fn set_snapshot_state(&self, state: &str) {
        for s in lock(&self.snapshots).iter_mut() {
            s.snapshot.state = state.to_owned();
        }
    }

    /// Records the call; its injected failure, if one is pending.
    fn call(&self, call: String) -> Result<(), CloudError> {
        lock(&self.calls).push(call);
        let mut failures = lock(&self.failures);
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.remove(0))
        }
    }

    fn answer<'a, T: Send + 'a>(
        &'a self,
        call: String,
        f: impl FnOnce() -> Result<T, CloudError> + Send + 'a,
    ) -> BoxFuture<'a, Result<T, CloudError>> {
        async move {
            self.call(call)?;
            f()
        }
        .boxed()
    }

    fn unimplemented<'a, T: Send + 'a>(
        &'a self,
        operation: &'static str,
    ) -> BoxFuture<'a, Result<T, CloudError>> {
        self.answer(operation.to_owned(), move || {
            Err(CloudError::Terminal {
                operation,
                code: "NotImplementedByFake".to_owned(),
                message: "the test fake does not implement this call".to_owned(),
            })
        })
    }
}

impl CloudProvider for FakeCloud {
    fn find_instances<'a>(
        &'a self,
        _tenant: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ObservedInstance>, CloudError>> {
        self.unimplemented("DescribeInstances")
    }

    fn describe_image<'a>(
        &'a self,
        _image_id: &'a str,
    ) -> BoxFuture<'a, Result<ImageInfo, CloudError>> {
        self.unimplemented("DescribeImages")
    }

    fn run_instance<'a>(
        &'a self,
        _spec: &'a LaunchSpec,
    ) -> BoxFuture<'a, Result<ObservedInstance, CloudError>> {
        self.unimplemented("RunInstances")
    }

    fn stop_instance<'a>(&'a self, _id: &'a str) -> BoxFuture<'a, Result<(), CloudError>> {
        self.unimplemented("StopInstances")
    }

    fn start_instance<'a>(&'a self, _id: &'a str) -> BoxFuture<'a, Result<(), CloudError>> {
        self.unimplemented("StartInstances")
    }

    fn modify_instance_type<'a>(
        &'a self,
        _id: &'a str,
        _instance_type: &'a str,
    ) -> BoxFuture<'a, Result<(), CloudError>> {
        self.unimplemented("ModifyInstanceAttribute")
    }

    fn terminate_instances<'a>(
        &'a self,
        _ids: &'a [String],
    ) -> BoxFuture<'a, Result<(), CloudError>> {
        self.unimplemented("TerminateInstances")
    }

    fn tag_instance<'a>(
        &'a self,
        _id: &'a str,
        _tags: &'a BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<(), CloudError>> {
        self.unimplemented("CreateTags")
    }

    fn find_records<'a>(
        &'a self,
        _zone: &'a str,
        _name: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Record>, CloudError>> {
        self.unimplemented("ListResourceRecordSets")
    }

    fn change_records<'a>(
        &'a self,
        _zone: &'a str,
        _changes: &'a [RecordChange],
    ) -> BoxFuture<'a, Result<(), CloudError>> {
        self.unimplemented("ChangeResourceRecordSets")
    }

    fn managed_instances(&self) -> BoxFuture<'_, Result<Vec<ObservedInstance>, CloudError>> {
        self.unimplemented("DescribeInstances")
    }

    fn managed_snapshots(&self) -> BoxFuture<'_, Result<Vec<ObservedSnapshot>, CloudError>> {
        self.unimplemented("DescribeSnapshots")
    }

    fn owner_records(&self) -> BoxFuture<'_, Result<Vec<ZoneRecord>, CloudError>> {
        self.unimplemented("ListResourceRecordSets")
    }

    fn attached_volumes<'a>(
        &'a self,
        instance: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, CloudError>> {
        self.answer(format!("DescribeVolumes {instance}"), move || {
            let mut volumes = lock(&self.instances)
                .get(instance)
                .map(|i| i.volumes.clone())
                .unwrap_or_default();
            volumes.sort();
            Ok(volumes)
        })
    }

    fn instance_zone<'a>(
        &'a self,
        instance: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, CloudError>> {
        self.answer(format!("DescribeInstances {instance}"), move || {
            Ok(lock(&self.instances).get(instance).map(|i| i.zone.clone()))
        })
    }

    fn find_snapshots<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        volume: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<ObservedSnapshot>, CloudError>> {
        let call = format!("DescribeSnapshots {key}={value} {}", volume.unwrap_or("*"));
        self.answer(call, move || {
            Ok(lock(&self.snapshots)
                .iter()
                .filter(|s| has_tags(&s.snapshot.tags, &[(key, value)]))
                .filter(|s| volume.is_none_or(|v| s.volume == v))
                .map(|s| s.snapshot.clone())
                .collect())
        })
    }

    fn create_snapshot<'a>(
        &'a self,
        spec: &'a SnapshotSpec,
    ) -> BoxFuture<'a, Result<ObservedSnapshot, CloudError>> {
        self.answer(format!("CreateSnapshot {}", spec.volume_id), move || {
            // As EC2 answers for a volume that does not exist (any more).
            let known = lock(&self.instances)
                .values()
                .any(|i| i.volumes.contains(&spec.volume_id));
            if !known {
                return Err(CloudError::Terminal {
                    operation: "CreateSnapshot",
                    code: "InvalidVolume.NotFound".to_owned(),
                    message: format!("The volume '{}' does not exist.", spec.volume_id),
                });
            }
            let mut all = lock(&self.snapshots);
            let snapshot = ObservedSnapshot {
                id: format!("snap-{}", all.len()),
                state: "pending".to_owned(),
                message: None,
                start_time: None,
                tags: spec.tags.clone(),
            };
            all.push(FakeSnapshot {
                volume: spec.volume_id.clone(),
                snapshot: snapshot.clone(),
            });
            Ok(snapshot)
        })
    }

    fn delete_snapshot<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), CloudError>> {
        self.answer(format!("DeleteSnapshot {id}"), move || {
            lock(&self.snapshots).retain(|s| s.snapshot.id != id);
            Ok(())
        })
    }

    fn find_volumes<'a>(
        &'a self,
        tags: &'a [(&'a str, &'a str)],
    ) -> BoxFuture<'a, Result<Vec<ObservedVolume>, CloudError>> {
        let call = tags
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        self.answer(format!("DescribeVolumes {call}"), move || {
            Ok(lock(&self.volumes)
                .iter()
                .filter(|v| has_tags(&v.tags, tags))
                .map(|v| v.volume.clone())
                .collect())
        })
    }

    fn create_volume<'a>(
        &'a self,
        spec: &'a VolumeSpec,
    ) -> BoxFuture<'a, Result<ObservedVolume, CloudError>> {
        let call = format!(
            "CreateVolume {} {}",
            spec.snapshot_id, spec.availability_zone
        );
        self.answer(call, move || {
            let mut all = lock(&self.volumes);
            let volume = ObservedVolume {
                id: format!("vol-new-{}", all.len()),
                state: "available".to_owned(),
            };
            all.push(FakeVolume {
                tags: spec.tags.clone(),
                volume: volume.clone(),
            });
            Ok(volume)
        })
    }
}
