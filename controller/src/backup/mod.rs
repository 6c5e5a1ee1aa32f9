//! The TenantBackup reconciler. A backup is carried out in parts (EBS snapshots of a dedicated
//! instance's volumes, CSI VolumeSnapshots of the namespace's claims, a database dump Job), each
//! started and then observed across reconciles: a reconcile never waits, it requeues. A
//! TenantBackup with `spec.restore` restores volumes from an earlier backup's snapshots instead,
//! reporting progress the same way.
//!
//! Volume snapshots on a cluster without the snapshot API are recorded as `Unsupported` parts.
//! With `BackupPhase::from_parts` an unsupported part next to completed ones makes the backup
//! `PartiallyFailed` (the claims' data is not in it, so it must not read `Completed`), and never
//! `Failed` by itself unless nothing else completed.
//!
//! A finished backup is deleted once `status.expiresAt` (its completion plus the tenant's
//! `retentionDays`) has passed; its finalizer deletes its EBS snapshots and VolumeSnapshots.
//! Restores own nothing they made: the restored volumes and claims are the customer's data.

pub mod database;
pub mod ebs;
pub mod error;
pub mod parts;
pub mod restore;
pub mod schedule;
pub mod volume;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use stackplane_core::contract::labels::backup_selector;
use stackplane_core::contract::labels::{MANAGED_BY, MANAGED_BY_VALUE};
use stackplane_crds::naming::{label_value, namespace_name};
use stackplane_crds::{
    BackupPart, BackupPartKind, BackupPhase, BackupReason, Tenant, TenantBackup, TenantBackupStatus,
};

use crate::backoff::Failures;
use crate::cloud::CloudProvider;
use crate::events::EventRecorder;
use crate::metrics::Metrics;
use database::DumpConfig;
use error::{Error, Result};
use schedule::ScheduleConfig;
use stackplane_core::cache::CachedTenant;

/// Finalizer on every TenantBackup: removes its snapshots when it is deleted.
pub const FINALIZER: &str = stackplane_core::contract::finalizers::BACKUP_CLEANUP;
/// Label on every object a backup or restore made in a tenant's namespace: its name. The Tenant
/// reconciler's prune leaves objects with this label alone.
pub const BACKUP_LABEL: &str = stackplane_core::contract::labels::BACKUP;
/// Type of the condition that explains the phase.
pub const READY: &str = stackplane_core::contract::conditions::READY;

/// Settings of the backup reconciler and scheduler.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    /// Most TenantBackups reconciled at once.
    pub concurrency: u16,
    /// Only TenantBackups matching this label selector (sharding; tests). The scheduler's
    /// Tenants are the cache given to [`run`], restricted by whoever fills it.
    pub selector: Option<String>,
    /// The database dump Job.
    pub dump: DumpConfig,
    /// API group of CSI snapshots.
    pub volume_snapshot_group: String,
    /// `volumeSnapshotClassName` of the VolumeSnapshots; `None`: the cluster's default class.
    pub volume_snapshot_class: Option<String>,
    /// How often a backup in progress looks at its parts again.
    pub poll: Duration,
    /// The scheduler of `spec.backup.schedule`.
    pub schedule: ScheduleConfig,
    /// Longest wait for the API server when the backup and its tenant are re-read right
    /// before a snapshot is created.
    pub api_timeout: Duration,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            concurrency: 4,
            selector: None,
            dump: DumpConfig::default(),
            volume_snapshot_group: "snapshot.storage.k8s.io".to_owned(),
            volume_snapshot_class: None,
            poll: Duration::from_secs(5),
            schedule: ScheduleConfig::default(),
            api_timeout: Duration::from_secs(10),
        }
    }
}

/// What every backup reconcile shares.
pub struct Context {
    pub client: Client,
    pub config: BackupConfig,
    /// The controller's cloud provider (the cloud step's); `None` with `--cloud-provider none`:
    /// EBS parts are recorded `Unsupported`.
    pub cloud: Option<Arc<dyn CloudProvider>>,
    pub metrics: Arc<Metrics>,
    pub recorder: EventRecorder,
    failures: Failures,
}

impl Context {
    pub fn new(
        client: Client,
        config: BackupConfig,
        cloud: Option<Arc<dyn CloudProvider>>,
        metrics: Arc<Metrics>,
        recorder: EventRecorder,
    ) -> Self {
        Context {
            client,
            config,
            cloud,
            metrics,
            recorder,
            failures: Failures::default(),
        }
    }

    async fn event(&self, backup: &TenantBackup, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Backup".to_owned(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &backup.object_ref(&())).await {
            tracing::warn!(backup = %backup.name_any(), %error, "cannot publish event");
        }
    }
}

/// Runs the TenantBackup controller and the backup scheduler until `stop` resolves. `cloud`:
/// the controller's cloud provider, `None` without one (`--cloud-provider none`); `tenants`:
/// the Tenants whose schedules the scheduler keeps (the Tenant controller's cache, restricted
/// to the same selector).
pub async fn run(
    client: Client,
    config: BackupConfig,
    cloud: Option<Arc<dyn CloudProvider>>,
    tenants: Store<CachedTenant>,
    metrics: Arc<Metrics>,
    recorder: EventRecorder,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let stop = stop.shared();
    let mut wc = watcher::Config::default();
    if let Some(selector) = &config.selector {
        wc = wc.labels(selector);
    }
    let scheduler = schedule::run(
        client.clone(),
        config.schedule.clone(),
        tenants,
        recorder.clone(),
        stop.clone(),
    );
    let concurrency = config.concurrency;
    let ctx = Arc::new(Context::new(
        client.clone(),
        config,
        cloud,
        metrics,
        recorder,
    ));
    let jobs = watcher::Config::default().labels(&format!("{MANAGED_BY}={MANAGED_BY_VALUE}"));
    let controller = Controller::new(Api::<TenantBackup>::all(client.clone()), wc)
        .with_config(controller::Config::default().concurrency(concurrency))
        // A dump Job's completion is seen at once rather than at the next poll. (Not `owns`: it
        // would look the cluster-scoped owner up in the Job's namespace.)
        .watches(Api::<Job>::all(client), jobs, |job| {
            job.owner_references()
                .iter()
                .find(|o| o.kind == "TenantBackup" && o.controller == Some(true))
                .map(|o| ObjectRef::<TenantBackup>::new(&o.name))
        })
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "backup controller event");
            }
        });
    futures::join!(controller, scheduler);
}

/// Reconciles one TenantBackup.
pub async fn reconcile(backup: Arc<TenantBackup>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let name = backup.name_any();
    let api: Api<TenantBackup> = Api::all(ctx.client.clone());
    let result = finalizer(&api, FINALIZER, backup, |event| async {
        match event {
            Finalizer::Apply(b) => apply(&b, &ctx).await,
            Finalizer::Cleanup(b) => cleanup(&b, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(Box::new(other)),
    });
    match &result {
        Ok(_) => {
            ctx.failures.succeeded(&name);
            tracing::debug!(backup = %name, took_ms = started.elapsed().as_millis() as u64, "backup reconciled");
        }
        Err(error @ Error::StatusConflict(_)) => {
            ctx.metrics.error(error.metric_label());
            tracing::debug!(backup = %name, "status not written: the backup changed since it was read");
        }
        Err(error) => {
            ctx.metrics.error(error.metric_label());
            tracing::warn!(backup = %name, %error, category = error.metric_label(), "backup reconcile failed");
        }
    }
    result
}

/// What the controller does after a failed reconcile: retry with exponential backoff.
pub fn error_policy(backup: Arc<TenantBackup>, error: &Error, ctx: Arc<Context>) -> Action {
    if let Error::StatusConflict(_) = error {
        return Action::requeue(Duration::from_millis(200));
    }
    Action::requeue(ctx.failures.next_delay(&backup.name_any()))
}

/// Labels of what a backup makes in a tenant's namespace.
fn object_labels(tenant: &Tenant, backup: &str) -> BTreeMap<String, String> {
    let mut labels =
        stackplane_core::contract::labels::tenant_labels(&tenant.name_any(), &tenant.spec.platform);
    // A backup's name can be longer than a label value (a scheduled backup of a tenant with a
    // 63-character name is 79): the label holds its fitted form.
    labels.insert(BACKUP_LABEL.to_owned(), label_value(backup));
    labels
}

async fn apply(cached: &TenantBackup, ctx: &Context) -> Result<Action> {
    let name = cached.name_any();
    // The parts recorded in the status decide what is made next, so they are read fresh: a
    // reconcile triggered by a Job event may run before the cache has seen the last status write.
    let api: Api<TenantBackup> = Api::all(ctx.client.clone());
    let Some(backup) = api.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    let backup = &backup;
    let now = Timestamp::now();
    let previous = backup.status.clone().unwrap_or_default();

    if previous.phase.is_some_and(BackupPhase::is_finished) {
        let expires = previous.expires_at.as_ref().map(|t| t.0);
        if parts::is_expired(expires, now) {
            tracing::info!(backup = %name, tenant = %backup.spec.tenant, "backup expired: deleting");
            ctx.event(
                backup,
                EventType::Normal,
                "Expired",
                "retention period over: deleting".into(),
            )
            .await;
            let api: Api<TenantBackup> = Api::all(ctx.client.clone());
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(Action::await_change());
        }
        return Ok(match expires {
            Some(e) => Action::requeue(
                e.duration_since(now)
                    .unsigned_abs()
                    .min(Duration::from_secs(3600))
                    + Duration::from_secs(1),
            ),
            None => Action::await_change(),
        });
    }

    let tenants: Api<Tenant> = Api::all(ctx.client.clone());
    let Some(tenant) = tenants.get_opt(&backup.spec.tenant).await? else {
        return fail(
            ctx,
            backup,
            &previous,
            None,
            "TenantNotFound",
            format!("tenant {} does not exist", backup.spec.tenant),
        )
        .await;
    };

    let progress = match (&backup.spec.restore, backup.spec.reason) {
        (Some(source), _) => {
            restore::progress(ctx, backup, &tenant, source, &previous.parts).await?
        }
        (None, BackupReason::PreTerminate) => {
            pre_terminate_parts(ctx, backup, &tenant, &previous.parts).await?
        }
        (None, _) => Ok(backup_parts(ctx, backup, &tenant, &previous.parts).await?),
    };
    let parts = match progress {
        Ok(parts) => parts,
        Err(refusal) => {
            return fail(
                ctx,
                backup,
                &previous,
                Some(&tenant),
                refusal.reason,
                refusal.message,
            )
            .await
        }
    };
    let phase = BackupPhase::from_parts(&parts);
    let mut status = TenantBackupStatus {
        phase: Some(phase),
        parts,
        started_at: previous.started_at.clone().or(Some(Time(now))),
        observed_generation: backup.metadata.generation,
        ..previous.clone()
    };
    if phase.is_finished() {
        status.completed_at = Some(Time(now));
        status.expires_at = parts::expires_at(now, retention_days(&tenant)).map(Time);
    }
    let (reason, message) = match parts::failure_summary(&status.parts) {
        Some(summary) => (phase_str(phase), summary),
        None => (
            phase_str(phase),
            format!("{} part(s), phase {}", status.parts.len(), phase_str(phase)),
        ),
    };
    status.conditions = vec![condition(
        &previous.conditions,
        phase == BackupPhase::Completed,
        reason,
        message.clone(),
        now,
        backup.metadata.generation,
    )];
    if status != previous {
        write_status(&ctx.client, backup, &status).await?;
    }
    if previous.phase != Some(phase) {
        if phase.is_finished() {
            ctx.metrics.backup_finished(phase_str(phase));
        }
        tracing::info!(backup = %name, tenant = %backup.spec.tenant, phase = phase_str(phase), "backup phase changed");
        let type_ = if matches!(phase, BackupPhase::PartiallyFailed | BackupPhase::Failed) {
            EventType::Warning
        } else {
            EventType::Normal
        };
        ctx.event(backup, type_, phase_str(phase), message).await;
    }
    Ok(if phase.is_finished() {
        match status.expires_at {
            Some(e) => Action::requeue(
                e.0.duration_since(now)
                    .unsigned_abs()
                    .min(Duration::from_secs(3600)),
            ),
            None => Action::await_change(),
        }
    } else {
        Action::requeue(ctx.config.poll)
    })
}

/// The parts of a backup after one more step each. The set of parts is fixed the first time
/// (the volumes attached and the claims present then); later reconciles only advance them, and a
/// finished part is not looked at again.
async fn backup_parts(
    ctx: &Context,
    backup: &TenantBackup,
    tenant: &Tenant,
    previous: &[BackupPart],
) -> Result<Vec<BackupPart>> {
    let name = backup.name_any();
    let tenant_name = tenant.name_any();
    let namespace = namespace_name(&tenant_name);
    let labels = object_labels(tenant, &name);
    let first = previous.is_empty();
    let of_kind = |kind: BackupPartKind| previous.iter().filter(move |p| p.kind == kind);
    let mut out = Vec::new();

    // ebs-snapshot: one per volume of the dedicated instance.
    out.extend(
        ebs_parts(
            ctx,
            backup,
            tenant,
            backup_instance(backup, tenant),
            previous,
        )
        .await?,
    );

    // volume-snapshot: one per claim of the namespace, or an Unsupported record per claim. The
    // dump claim is left out: it holds earlier dumps (this backup's is the database part), and
    // the first reconcile may make it, which must not change the set a retry plans.
    let claims: Vec<String> = if first {
        volume::claims(&ctx.client, &namespace)
            .await?
            .into_iter()
            .filter(|c| *c != ctx.config.dump.claim)
            .collect()
    } else {
        of_kind(BackupPartKind::VolumeSnapshot)
            .filter_map(|p| p.source.clone())
            .collect()
    };
    if !claims.is_empty() {
        let group = &ctx.config.volume_snapshot_group;
        let resource = volume::discover(&ctx.client, group).await?;
        for claim in claims {
            if let Some(done) = of_kind(BackupPartKind::VolumeSnapshot)
                .find(|p| p.source.as_deref() == Some(claim.as_str()) && parts::is_finished(p))
            {
                out.push(done.clone());
                continue;
            }
            let part = match &resource {
                None => parts::volume_snapshot_unsupported(&claim, group),
                Some(ar) => {
                    volume::snapshot(
                        &ctx.client,
                        ar,
                        &namespace,
                        &name,
                        &claim,
                        ctx.config.volume_snapshot_class.as_deref(),
                        &labels,
                    )
                    .await?
                }
            };
            out.push(part);
        }
    }

    // database: the dump Job.
    match of_kind(BackupPartKind::Database).find(|p| parts::is_finished(p)) {
        Some(done) => out.push(done.clone()),
        None => out.push(
            database::dump(&ctx.client, backup, &namespace, &labels, &ctx.config.dump).await?,
        ),
    }
    Ok(out)
}

/// The instance whose volumes `backup` snapshots: the one it names (a `pre-terminate` backup),
/// else the tenant's.
fn backup_instance<'a>(backup: &'a TenantBackup, tenant: &'a Tenant) -> Option<&'a str> {
    backup
        .spec
        .instance
        .as_deref()
        .or_else(|| {
            tenant
                .status
                .as_ref()
                .and_then(|s| s.instance.as_ref())
                .map(|i| i.id.as_str())
        })
        .filter(|id| !id.is_empty())
}

/// The EBS snapshot parts of `backup` (one per volume attached to `instance`) after one more
/// step each; an `Unsupported` record without an AWS client.
async fn ebs_parts(
    ctx: &Context,
    backup: &TenantBackup,
    tenant: &Tenant,
    instance: Option<&str>,
    previous: &[BackupPart],
) -> Result<Vec<BackupPart>> {
    let Some(cloud) = &ctx.cloud else {
        return Ok(ebs::unsupported(instance).into_iter().collect());
    };
    let (name, tenant_name) = (backup.name_any(), tenant.name_any());
    let owner = ebs::SnapshotOwner {
        tenant: &tenant_name,
        tenant_uid: tenant.metadata.uid.as_deref().unwrap_or_default(),
        backup: &name,
        backup_uid: backup.metadata.uid.as_deref().unwrap_or_default(),
    };
    let check = ebs::OwnerStillExists {
        client: &ctx.client,
        backup,
        tenant,
        timeout: ctx.config.api_timeout,
    };
    Ok(ebs::snapshot_volumes(cloud.as_ref(), &owner, instance, previous, &check).await?)
}

/// The parts of a `pre-terminate` backup: the EBS snapshots of every volume attached to the
/// instance about to be terminated, and nothing else (the namespace and its data stay; only
/// the instance's disks are about to go). An instance with no volume to snapshot, or none
/// named, is refused: the backup fails, so the termination it guards is held, not waved
/// through with nothing saved.
async fn pre_terminate_parts(
    ctx: &Context,
    backup: &TenantBackup,
    tenant: &Tenant,
    previous: &[BackupPart],
) -> Result<std::result::Result<Vec<BackupPart>, Refusal>> {
    let Some(instance) = backup_instance(backup, tenant) else {
        return Ok(Err(Refusal {
            reason: "NoInstance",
            message: "a pre-terminate backup names no instance (spec.instance) and the tenant \
                      has none (status.instance)"
                .to_owned(),
        }));
    };
    let parts = ebs_parts(ctx, backup, tenant, Some(instance), previous).await?;
    if parts.is_empty() {
        return Ok(Err(Refusal {
            reason: "NoVolumes",
            message: format!(
                "EC2 reports no volume attached to instance {instance}: nothing to snapshot \
                 before it is terminated"
            ),
        }));
    }
    Ok(Ok(parts))
}

/// Why a backup or restore cannot be carried out at all.
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

async fn fail(
    ctx: &Context,
    backup: &TenantBackup,
    previous: &TenantBackupStatus,
    tenant: Option<&Tenant>,
    reason: &'static str,
    message: String,
) -> Result<Action> {
    let now = Timestamp::now();
    let status = TenantBackupStatus {
        phase: Some(BackupPhase::Failed),
        started_at: previous.started_at.clone().or(Some(Time(now))),
        completed_at: Some(Time(now)),
        expires_at: tenant
            .and_then(|t| parts::expires_at(now, retention_days(t)))
            .map(Time),
        conditions: vec![condition(
            &previous.conditions,
            false,
            reason,
            message.clone(),
            now,
            backup.metadata.generation,
        )],
        observed_generation: backup.metadata.generation,
        ..previous.clone()
    };
    write_status(&ctx.client, backup, &status).await?;
    ctx.metrics.backup_finished(phase_str(BackupPhase::Failed));
    tracing::warn!(backup = %backup.name_any(), tenant = %backup.spec.tenant, reason, %message, "backup failed");
    ctx.event(backup, EventType::Warning, reason, message).await;
    Ok(Action::await_change())
}

/// Deletes what a backup made before its finalizer is removed: its EBS snapshots and its
/// VolumeSnapshots. A restore deletes nothing: what it made is the restored data.
async fn cleanup(backup: &TenantBackup, ctx: &Context) -> Result<Action> {
    let name = backup.name_any();
    if backup.spec.restore.is_some() {
        return Ok(Action::await_change());
    }
    let snapshots = match &ctx.cloud {
        Some(cloud) => ebs::delete_snapshots(cloud.as_ref(), &name).await?,
        None => Vec::new(),
    };
    let namespace = namespace_name(&backup.spec.tenant);
    let mut volume_snapshots = 0;
    if let Some(resource) = volume::discover(&ctx.client, &ctx.config.volume_snapshot_group).await?
    {
        volume_snapshots =
            volume::delete_snapshots(&ctx.client, &resource, &namespace, &backup_selector(&name))
                .await?;
    }
    tracing::info!(backup = %name, ebs_snapshots = snapshots.len(), volume_snapshots, "backup cleaned up");
    Ok(Action::await_change())
}

fn retention_days(tenant: &Tenant) -> Option<i32> {
    tenant.spec.backup.as_ref().and_then(|b| b.retention_days)
}

fn phase_str(phase: BackupPhase) -> &'static str {
    match phase {
        BackupPhase::Pending => "Pending",
        BackupPhase::InProgress => "InProgress",
        BackupPhase::Completed => "Completed",
        BackupPhase::PartiallyFailed => "PartiallyFailed",
        BackupPhase::Failed => "Failed",
    }
}

/// The `Ready` condition, keeping its transition time while its status stays the same.
fn condition(
    previous: &[Condition],
    ready: bool,
    reason: &str,
    message: String,
    now: Timestamp,
    generation: Option<i64>,
) -> Condition {
    let status = if ready { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == READY && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: READY.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time: since,
        observed_generation: generation,
    }
}

/// The server-side apply body of a TenantBackup's status (pure): the controller's fields, its
/// `Ready` condition only, and the resourceVersion it was computed from as a precondition.
pub fn status_body(
    backup: &TenantBackup,
    status: &TenantBackupStatus,
) -> Result<serde_json::Value> {
    let mut own = status.clone();
    own.conditions.retain(|c| c.type_ == READY);
    let mut metadata = json!({ "name": backup.name_any() });
    if let Some(rv) = &backup.metadata.resource_version {
        metadata["resourceVersion"] = json!(rv);
    }
    Ok(json!({
        "apiVersion": <TenantBackup as Resource>::api_version(&()),
        "kind": <TenantBackup as Resource>::kind(&()),
        "metadata": metadata,
        "status": serde_json::to_value(&own)?,
    }))
}

/// Writes the status by server-side apply with the controller's field manager, on the
/// condition that the backup is still at the resourceVersion it was read at.
async fn write_status(
    client: &Client,
    backup: &TenantBackup,
    status: &TenantBackupStatus,
) -> Result<()> {
    let api: Api<TenantBackup> = Api::all(client.clone());
    let body = status_body(backup, status)?;
    let params = PatchParams::apply(crate::k8s::FIELD_MANAGER).force();
    match api
        .patch_status(&backup.name_any(), &params, &Patch::Apply(&body))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if crate::k8s::is_conflict(&e) => Err(Error::StatusConflict(e)),
        Err(e) => Err(Error::Status(e)),
    }
}
