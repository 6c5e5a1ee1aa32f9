//! The cloud garbage collector, run by the leader: every `--cloud-gc-interval` it lists what
//! stackplane made in AWS (instances and snapshots tagged `ManagedBy=stackplane`, the ownership
//! records beside tenant DNS records) and deletes — or, with `--cloud-gc report`, only reports —
//! what belongs to an owner that no longer exists, once it is older than `--cloud-gc-grace`.
//!
//! The re-read before each create ([`super::owner`]) leaves a window of one round trip; a
//! controller killed between a create and its cleanup leaves more. This is what makes "nothing
//! leaks" hold anyway. Owners: an instance and a record belong to a Tenant (by uid; an instance
//! from before uid tags, by name), a snapshot to its TenantBackup (by uid, else by name): a
//! backup outlives its tenant — the final `pre-delete` backup is the point — so a snapshot is
//! garbage only once its backup is gone. What a `deletionPolicy: Retain` tenant left behind is
//! tagged retained and never touched.
//!
//! Safety: owners are listed from the API server first, then AWS; a resource counts only if it
//! was created more than the grace period before the owners were listed, so a tenant created
//! during a pass cannot lose the instance launched for it. A failed listing skips the pass.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Client};
use stackplane_crds::{Tenant, TenantBackup};

use super::error::CloudError;
use super::provider::{
    CloudProvider, ObservedInstance, ObservedSnapshot, RecordChange, ZoneRecord,
};
use crate::events::EventRecorder;
use crate::metrics::Metrics;
use stackplane_core::cloud::dns::{self, Ownership};
use stackplane_core::cloud::tags;

/// What the collector does with an orphan (`--cloud-gc`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcMode {
    /// Delete orphans (and log, count and announce each).
    Delete,
    /// Only log, count and announce them.
    Report,
    /// Do not look.
    Off,
}

/// Settings of the collector.
#[derive(Debug, Clone)]
pub struct GcConfig {
    pub mode: GcMode,
    /// Time between passes (`--cloud-gc-interval`).
    pub interval: Duration,
    /// Minimum age of an orphan (`--cloud-gc-grace`).
    pub grace: Duration,
    /// Longest wait for one Kubernetes call.
    pub api_timeout: Duration,
    /// The object the collector's Events are about: the controller's Lease, so they land in
    /// the controller's namespace.
    pub regarding: ObjectReference,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            mode: GcMode::Delete,
            interval: Duration::from_secs(600),
            grace: Duration::from_secs(900),
            api_timeout: Duration::from_secs(30),
            regarding: ObjectReference::default(),
        }
    }
}

/// The kinds of resources collected (the metric's `kind` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Instance,
    Record,
    Snapshot,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Instance => "instance",
            Kind::Record => "record",
            Kind::Snapshot => "snapshot",
        }
    }
}

/// One orphan found by a pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Orphan {
    pub kind: Kind,
    /// Instance id, snapshot id, or the record's name.
    pub id: String,
    /// Whose it was, for the log line and the Event.
    pub owner: String,
    /// The record's zone and ownership record (records only).
    pub record: Option<ZoneRecord>,
}

/// The owners that exist, from one listing of the API server.
#[derive(Debug, Default, Clone)]
pub struct Owners {
    pub tenant_uids: HashSet<String>,
    pub tenant_names: HashSet<String>,
    pub backup_uids: HashSet<String>,
    pub backup_names: HashSet<String>,
    /// When the listing was taken, in Unix seconds.
    pub listed_at: i64,
}

fn unix(rfc3339: Option<&str>) -> Option<i64> {
    rfc3339?.parse::<Timestamp>().ok().map(|t| t.as_second())
}

/// Whether something created at `created` (Unix seconds) is older than `grace` when the owners
/// were listed. Unknown age: not old enough (never delete what cannot be dated).
fn old_enough(created: Option<i64>, owners: &Owners, grace: Duration) -> bool {
    let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
    created.is_some_and(|c| c.saturating_add(grace) < owners.listed_at)
}

fn retained(tags: &std::collections::BTreeMap<String, String>) -> bool {
    tags.get(tags::RETAINED).is_some_and(|v| v == "true")
}

/// The instance's owner, if that owner is gone.
fn orphaned_instance(i: &ObservedInstance, owners: &Owners) -> Option<String> {
    if retained(&i.tags) {
        return None;
    }
    let name = i.tags.get(tags::TENANT).cloned().unwrap_or_default();
    match i.tags.get(tags::TENANT_UID).filter(|u| !u.is_empty()) {
        Some(uid) => {
            (!owners.tenant_uids.contains(uid)).then(|| format!("tenant {name} (uid {uid})"))
        }
        None if !name.is_empty() => {
            (!owners.tenant_names.contains(&name)).then(|| format!("tenant {name}"))
        }
        None => None,
    }
}

/// The snapshot's owner (its backup), if that backup is gone.
fn orphaned_snapshot(s: &ObservedSnapshot, owners: &Owners) -> Option<String> {
    if retained(&s.tags) {
        return None;
    }
    let name = s.tags.get(tags::BACKUP).cloned().unwrap_or_default();
    match s.tags.get(tags::BACKUP_UID).filter(|u| !u.is_empty()) {
        Some(uid) => {
            (!owners.backup_uids.contains(uid)).then(|| format!("backup {name} (uid {uid})"))
        }
        None if !name.is_empty() => {
            (!owners.backup_names.contains(&name)).then(|| format!("backup {name}"))
        }
        // Not made by a backup (no backup tag): not ours to judge.
        None => None,
    }
}

/// The pure decision of one pass: which of the listed resources are orphans.
pub fn orphans(
    owners: &Owners,
    grace: Duration,
    instances: &[ObservedInstance],
    snapshots: &[ObservedSnapshot],
    records: &[ZoneRecord],
) -> Vec<Orphan> {
    let mut out = Vec::new();
    for i in instances {
        if let Some(owner) = orphaned_instance(i, owners) {
            if old_enough(unix(i.launch_time.as_deref()), owners, grace) {
                out.push(Orphan {
                    kind: Kind::Instance,
                    id: i.id.clone(),
                    owner,
                    record: None,
                });
            }
        }
    }
    for s in snapshots {
        if let Some(owner) = orphaned_snapshot(s, owners) {
            if old_enough(unix(s.start_time.as_deref()), owners, grace) {
                out.push(Orphan {
                    kind: Kind::Snapshot,
                    id: s.id.clone(),
                    owner,
                    record: None,
                });
            }
        }
    }
    for r in records {
        let Some(o) = Ownership::of(std::slice::from_ref(&r.record)) else {
            continue;
        };
        let Some(name) = dns::owned_name(&r.record.name) else {
            continue;
        };
        if o.retained || owners.tenant_uids.contains(&o.uid) {
            continue;
        }
        if old_enough(Some(o.created), owners, grace) {
            out.push(Orphan {
                kind: Kind::Record,
                id: name.trim_end_matches('.').to_owned(),
                owner: format!("tenant {} (uid {})", o.tenant, o.uid),
                record: Some(r.clone()),
            });
        }
    }
    out
}

/// Why a pass did not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("listing {what} from the API server: {message}")]
    Kube { what: &'static str, message: String },
    #[error(transparent)]
    Cloud(#[from] CloudError),
}

impl GcError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            GcError::Kube { .. } => "gc_kube",
            GcError::Cloud(e) => e.metric_label(),
        }
    }
}

/// Every Tenant and TenantBackup of the cluster (all shards: another shard's tenant owns its
/// resources as much as this one's).
async fn owners(client: &Client, timeout: Duration) -> Result<Owners, GcError> {
    let listed_at = Timestamp::now().as_second();
    let tenants = list_meta::<Tenant>(client, timeout, "tenants").await?;
    let backups = list_meta::<TenantBackup>(client, timeout, "tenant backups").await?;
    let mut o = Owners {
        listed_at,
        ..Owners::default()
    };
    for m in tenants {
        o.tenant_uids.extend(m.uid);
        o.tenant_names.extend(m.name);
    }
    for m in backups {
        o.backup_uids.extend(m.uid);
        o.backup_names.extend(m.name);
    }
    Ok(o)
}

async fn list_meta<K>(
    client: &Client,
    timeout: Duration,
    what: &'static str,
) -> Result<Vec<kube::api::ObjectMeta>, GcError>
where
    K: kube::Resource<Scope = kube::core::ClusterResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(client.clone());
    match tokio::time::timeout(timeout, api.list_metadata(&ListParams::default())).await {
        Ok(Ok(list)) => Ok(list.items.into_iter().map(|m| m.metadata).collect()),
        Ok(Err(e)) => Err(GcError::Kube {
            what,
            message: e.to_string(),
        }),
        Err(_) => Err(GcError::Kube {
            what,
            message: format!("no answer within {}s", timeout.as_secs()),
        }),
    }
}

/// Deletes one orphan.
async fn delete(provider: &dyn CloudProvider, orphan: &Orphan) -> Result<(), CloudError> {
    match orphan.kind {
        Kind::Instance => {
            provider
                .terminate_instances(std::slice::from_ref(&orphan.id))
                .await
        }
        Kind::Snapshot => provider.delete_snapshot(&orphan.id).await,
        Kind::Record => {
            let Some(zr) = &orphan.record else {
                return Ok(());
            };
            let name = dns::normalize_name(&orphan.id);
            let existing = provider.find_records(&zr.zone, &name).await?;
            let mut changes = dns::deletions(&existing);
            changes.push(RecordChange::Delete(zr.record.clone()));
            provider.change_records(&zr.zone, &changes).await
        }
    }
}

/// One pass: lists, decides, acts. Returns the orphans found.
pub async fn collect_once(
    client: &Client,
    provider: &dyn CloudProvider,
    config: &GcConfig,
    metrics: &Metrics,
    recorder: &EventRecorder,
) -> Result<Vec<Orphan>, GcError> {
    let owners = owners(client, config.api_timeout).await?;
    let instances = provider.managed_instances().await?;
    let snapshots = provider.managed_snapshots().await?;
    let records = provider.owner_records().await?;
    let found = orphans(&owners, config.grace, &instances, &snapshots, &records);
    for orphan in &found {
        let kind = orphan.kind.as_str();
        let (action, event_type, reason, note) = match config.mode {
            GcMode::Delete => match delete(provider, orphan).await {
                Ok(()) => {
                    tracing::warn!(kind, id = %orphan.id, owner = %orphan.owner, "deleted orphaned cloud resource");
                    (
                        "deleted",
                        EventType::Normal,
                        "OrphanDeleted",
                        format!(
                            "deleted {kind} {}: its owner {} no longer exists",
                            orphan.id, orphan.owner
                        ),
                    )
                }
                Err(error) => {
                    tracing::warn!(kind, id = %orphan.id, owner = %orphan.owner, %error, "cannot delete orphaned cloud resource");
                    (
                        "failed",
                        EventType::Warning,
                        "OrphanDeleteFailed",
                        format!(
                            "cannot delete {kind} {} of {}: {error}",
                            orphan.id, orphan.owner
                        ),
                    )
                }
            },
            _ => {
                tracing::warn!(kind, id = %orphan.id, owner = %orphan.owner, "orphaned cloud resource (--cloud-gc report: left in place)");
                (
                    "reported",
                    EventType::Warning,
                    "OrphanFound",
                    format!("{kind} {} belongs to {}, which no longer exists (--cloud-gc report: left in place)", orphan.id, orphan.owner),
                )
            }
        };
        metrics.cloud_orphan(kind, action);
        let event = Event {
            type_: event_type,
            reason: reason.to_owned(),
            note: Some(note),
            action: "CloudGarbageCollection".to_owned(),
            secondary: None,
        };
        if let Err(error) = recorder.publish(&event, &config.regarding).await {
            tracing::warn!(%error, "cannot publish the garbage collector's event");
        }
    }
    Ok(found)
}

/// The collector of this leader: [`run`] with the cloud step's provider and settings, its
/// Events about the controller's Lease; nothing without a cloud provider.
pub async fn for_leader(
    client: Client,
    cloud: Option<&super::CloudSettings>,
    lease: &crate::leader::LeaseConfig,
    metrics: Arc<Metrics>,
    recorder: EventRecorder,
    stop: impl Future<Output = ()> + Send,
) {
    let Some(cloud) = cloud else {
        return;
    };
    let mut config = cloud.gc.clone();
    if config.regarding.name.is_none() {
        config.regarding = ObjectReference {
            api_version: Some("coordination.k8s.io/v1".to_owned()),
            kind: Some("Lease".to_owned()),
            name: Some(lease.name.clone()),
            namespace: Some(lease.namespace.clone()),
            ..ObjectReference::default()
        };
    }
    run(
        client,
        cloud.provider.clone(),
        config,
        metrics,
        recorder,
        stop,
    )
    .await
}

/// Runs a pass every `config.interval` until `stop` resolves (the first one at once).
pub async fn run(
    client: Client,
    provider: Arc<dyn CloudProvider>,
    config: GcConfig,
    metrics: Arc<Metrics>,
    recorder: EventRecorder,
    stop: impl Future<Output = ()> + Send,
) {
    if config.mode == GcMode::Off {
        return;
    }
    let passes = async {
        let mut tick = tokio::time::interval(config.interval.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match collect_once(&client, provider.as_ref(), &config, &metrics, &recorder).await {
                Ok(found) => {
                    tracing::debug!(orphans = found.len(), "cloud garbage collection pass done")
                }
                Err(error) => {
                    metrics.error(error.metric_label());
                    tracing::warn!(%error, category = error.metric_label(), "cloud garbage collection pass skipped");
                }
            }
        }
    };
    tokio::select! {
        _ = stop => {},
        _ = passes => {},
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::cloud::provider::{Record, RecordType};

    const NOW: i64 = 1_800_000_000;
    const GRACE: Duration = Duration::from_secs(900);

    fn owners() -> Owners {
        Owners {
            tenant_uids: ["u-live".to_owned()].into(),
            tenant_names: ["live".to_owned()].into(),
            backup_uids: ["b-live".to_owned()].into(),
            backup_names: ["bk-live".to_owned()].into(),
            listed_at: NOW,
        }
    }

    fn rfc(secs: i64) -> Option<String> {
        Timestamp::from_second(secs).ok().map(|t| t.to_string())
    }

    fn instance(id: &str, tags: &[(&str, &str)], launched: i64) -> ObservedInstance {
        ObservedInstance {
            id: id.into(),
            instance_type: "t3.micro".into(),
            state: "running".into(),
            public_ip: None,
            launch_time: rfc(launched),
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn snapshot(id: &str, tags: &[(&str, &str)], started: i64) -> ObservedSnapshot {
        ObservedSnapshot {
            id: id.into(),
            state: "completed".into(),
            message: None,
            start_time: rfc(started),
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn owner_record(host: &str, uid: &str, retained: bool, created: i64) -> ZoneRecord {
        let o = Ownership {
            tenant: host.into(),
            uid: uid.into(),
            retained,
            created,
        };
        ZoneRecord {
            zone: "Z1".into(),
            record: dns::owner_record(&format!("{host}.example.com"), &o),
        }
    }

    #[test]
    fn instances_of_gone_tenants_past_grace_are_orphans() {
        let old = NOW - 1000;
        let found = orphans(
            &owners(),
            GRACE,
            &[
                instance(
                    "i-live",
                    &[(tags::TENANT, "live"), (tags::TENANT_UID, "u-live")],
                    old,
                ),
                // Same name as a live tenant, but an earlier one's uid: an orphan.
                instance(
                    "i-earlier",
                    &[(tags::TENANT, "live"), (tags::TENANT_UID, "u-old")],
                    old,
                ),
                instance(
                    "i-gone",
                    &[(tags::TENANT, "gone"), (tags::TENANT_UID, "u-gone")],
                    old,
                ),
                // Too young: launched within the grace period before the owners were listed.
                instance(
                    "i-young",
                    &[(tags::TENANT, "gone"), (tags::TENANT_UID, "u-gone")],
                    NOW - 10,
                ),
                instance(
                    "i-kept",
                    &[
                        (tags::TENANT, "gone"),
                        (tags::TENANT_UID, "u-gone"),
                        (tags::RETAINED, "true"),
                    ],
                    old,
                ),
                // From before uid tags: judged by name.
                instance("i-legacy-live", &[(tags::TENANT, "live")], old),
                instance("i-legacy-gone", &[(tags::TENANT, "gone")], old),
            ],
            &[],
            &[],
        );
        let ids: Vec<&str> = found.iter().map(|o| o.id.as_str()).collect();
        assert_eq!(ids, vec!["i-earlier", "i-gone", "i-legacy-gone"]);
        assert!(found.iter().all(|o| o.kind == Kind::Instance));
        // No launch time: cannot be dated, never collected.
        let mut undated = instance("i-x", &[(tags::TENANT_UID, "u-gone")], old);
        undated.launch_time = None;
        assert!(orphans(&owners(), GRACE, &[undated], &[], &[]).is_empty());
    }

    #[test]
    fn snapshots_follow_their_backup_not_their_tenant() {
        let old = NOW - 1000;
        let found = orphans(
            &owners(),
            GRACE,
            &[],
            &[
                // The tenant is gone, its final backup is not: kept.
                snapshot(
                    "snap-final",
                    &[(tags::TENANT_UID, "u-gone"), (tags::BACKUP_UID, "b-live")],
                    old,
                ),
                snapshot(
                    "snap-gone",
                    &[(tags::TENANT_UID, "u-live"), (tags::BACKUP_UID, "b-gone")],
                    old,
                ),
                snapshot("snap-legacy", &[(tags::BACKUP, "bk-gone")], old),
                snapshot("snap-foreign", &[(tags::MANAGED_BY, "stackplane")], old),
            ],
            &[],
        );
        let ids: Vec<&str> = found.iter().map(|o| o.id.as_str()).collect();
        assert_eq!(ids, vec!["snap-gone", "snap-legacy"]);
    }

    #[test]
    fn records_of_gone_tenants_are_orphans_unless_retained() {
        let old = NOW - 1000;
        let foreign = ZoneRecord {
            zone: "Z1".into(),
            record: Record {
                name: "_stackplane-owner.x.example.com.".into(),
                record_type: RecordType::Txt,
                ttl: 300,
                values: vec!["\"something else\"".into()],
            },
        };
        let found = orphans(
            &owners(),
            GRACE,
            &[],
            &[],
            &[
                owner_record("live", "u-live", false, old),
                owner_record("gone", "u-gone", false, old),
                owner_record("kept", "u-kept", true, old),
                owner_record("young", "u-young", false, NOW),
                foreign,
            ],
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].kind, Kind::Record);
        assert_eq!(found[0].id, "gone.example.com");
    }
}
