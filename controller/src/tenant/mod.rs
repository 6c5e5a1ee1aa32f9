//! The Tenant reconciler, behind a finalizer that implements the deletion policy. One
//! reconcile is the pipeline of [`apply_tenant`], one function per step:
//!
//! `paused? → revision → validate → retention → plan → apply + prune → cloud → status`
//!
//! The plan comes from the PlatformRevision the tenant runs or is moved to (`revision`, decided
//! by `stackplane_core::tenant::revision` from what `desired` reads), so a changed Platform
//! reaches a tenant only when its rollout moves it (`crate::rollout`).
//!
//! Only apply, prune, cloud and status touch the network; `plan` is pure. Every Kubernetes call
//! is time-limited by the client (`crate::kube_client`) and the status is written by server-side apply with a
//! resourceVersion precondition (`status::write`).

pub mod applied;
pub mod apply;
pub mod children;
pub mod desired;
pub mod final_backup;
pub mod guard;
pub mod metadata;
pub mod orphan;
pub mod pre_terminate;
pub mod prune;
pub mod reports;
pub mod resync;
pub mod status;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use stackplane_core::contract::labels::ORPHANED;
use stackplane_crds::naming::namespace_name;
use stackplane_crds::{DeletionPolicy, Platform, Tenant, TenantPhase, TenantStatus};

use crate::backoff::Failures;
use crate::error::{Error, Result};
use crate::events::EventRecorder;
use crate::metrics::Metrics;
use plan::{Plan, PlanOptions};
use prune::Pruned;
use stackplane_core::cache::CachedTenant;
use stackplane_core::contract::conditions::{
    DELETION_HELD, EVENT_HOLD_RELEASED, EVENT_HOLD_SET, PAUSED, PAYMENT_OVERDUE, READY,
    REASON_INVALID_SPEC as INVALID_SPEC, SYNCED,
};
use stackplane_core::contract::labels::RELEASE_DELETION;
use stackplane_core::tenant::deletion::{
    self, Deletion, FinalBackup, HoldReason, Next, OnBackupFailure, RetentionDelete, Trigger,
};
use stackplane_core::tenant::status::{self as computed, Want};
use stackplane_core::tenant::{plan, revision, validate};
use validate::Valid;

/// Finalizer the controller puts on every Tenant.
pub const FINALIZER: &str = stackplane_core::contract::finalizers::TENANT_CLEANUP;

/// How soon a pass skipped because the cache was behind this controller's own write looks
/// again (the echo is usually milliseconds away; a status echo triggers nothing by itself).
const STALE_CACHE_RETRY: Duration = Duration::from_millis(100);

/// Settings of the reconciler.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    pub plan: PlanOptions,
    /// Resync period: every tenant is reconciled at least once per period (drift the watches
    /// missed is corrected by then), by the sweep of `resync`.
    pub requeue: Duration,
    /// How often a deleting tenant checks whether its namespace is gone.
    pub deletion_poll: Duration,
    /// Longest wait for the final `pre-delete` backup; past it the backup counts as failed
    /// (what follows is `on_backup_failure`).
    pub final_backup_timeout: Duration,
    /// What a final backup that failed or timed out does to the deletion: hold it until a
    /// person releases it (the default), or destroy anyway.
    pub on_backup_failure: OnBackupFailure,
    /// How often an unfinished final backup is looked at (a TenantBackup watch usually
    /// triggers the reconcile sooner).
    pub final_backup_poll: Duration,
    /// The mass-deletion guard: most deletions that may destroy data entering within an hour;
    /// beyond it they wait for a person (`guard`).
    pub max_deletions_per_hour: u32,
    /// EC2 instances and DNS records (`crate::cloud`). `None`: the cloud step is skipped.
    pub cloud: Option<crate::cloud::CloudSettings>,
    /// The backup reconciler and scheduler, run alongside (`tenant_selector` applies to them).
    pub backup: crate::backup::BackupConfig,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            plan: PlanOptions::default(),
            requeue: Duration::from_secs(300),
            deletion_poll: Duration::from_secs(2),
            final_backup_timeout: Duration::from_secs(1800),
            final_backup_poll: Duration::from_secs(15),
            on_backup_failure: OnBackupFailure::Hold,
            max_deletions_per_hour: 10,
            cloud: None,
            backup: crate::backup::BackupConfig::default(),
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub config: ReconcileConfig,
    pub metrics: Arc<Metrics>,
    pub recorder: EventRecorder,
    /// Consecutive failures per tenant, for exponential backoff (the resync sweep leaves a
    /// failing tenant to it).
    pub failures: Arc<Failures>,
    /// The PlatformRevisions, cached (`None`: each is read from the API server).
    revisions: Option<kube::runtime::reflector::Store<stackplane_crds::PlatformRevision>>,
    /// The Platforms, cached (`None`: each reconcile reads its tenant's from the API server).
    platforms: Option<kube::runtime::reflector::Store<Platform>>,
    /// What was last applied to each tenant: an unchanged plan is not applied again.
    pub applied: Arc<applied::Applied>,
    /// What the tenants' Deployments report, kept by the Deployment watch.
    pub reports: Arc<reports::DeploymentReports>,
    /// When each tenant's last pass finished: the resync sweep skips a tenant that just had one.
    pub passes: Arc<resync::RecentPasses>,
    /// The Tenants, cached: the mass-deletion guard counts the deleting ones (`None`: no guard
    /// beyond what this process let go on).
    tenants: Option<kube::runtime::reflector::Store<CachedTenant>>,
    /// The Tenant CRD's metadata, watched (`None`: asked of the API server each time).
    tenant_crd: Option<kube::runtime::reflector::Store<guard::CrdMeta>>,
    /// Deletions this process let go on, for the guard's window.
    pub recent_deletions: Arc<guard::RecentDeletions>,
}

impl Context {
    pub fn new(
        client: Client,
        config: ReconcileConfig,
        metrics: Arc<Metrics>,
        recorder: EventRecorder,
    ) -> Self {
        Context {
            client,
            config,
            metrics,
            recorder,
            failures: Arc::default(),
            revisions: None,
            platforms: None,
            applied: Arc::default(),
            reports: Arc::default(),
            passes: Arc::default(),
            tenants: None,
            tenant_crd: None,
            recent_deletions: Arc::default(),
        }
    }

    /// The same context counting deletions from `cache` (the controller's Tenants).
    pub fn with_tenants(mut self, cache: kube::runtime::reflector::Store<CachedTenant>) -> Self {
        self.tenants = Some(cache);
        self
    }

    /// The same context reading the Tenant CRD's metadata from `cache`.
    pub fn with_tenant_crd(
        mut self,
        cache: kube::runtime::reflector::Store<guard::CrdMeta>,
    ) -> Self {
        self.tenant_crd = Some(cache);
        self
    }

    /// The same context reading Platforms from `cache`.
    pub fn with_platforms(mut self, cache: kube::runtime::reflector::Store<Platform>) -> Self {
        self.platforms = Some(cache);
        self
    }

    /// The same context reading PlatformRevisions from `cache`.
    pub fn with_revisions(
        mut self,
        cache: kube::runtime::reflector::Store<stackplane_crds::PlatformRevision>,
    ) -> Self {
        self.revisions = Some(cache);
        self
    }

    /// The gate every instance termination passes: its `pre-terminate` backup first, waited
    /// for and held by the final backup's settings.
    fn pre_terminate_gate(&self) -> pre_terminate::PreTerminateGate<'_> {
        pre_terminate::PreTerminateGate {
            client: &self.client,
            timeout: self.config.final_backup_timeout,
            poll: self.config.final_backup_poll,
            on_backup_failure: self.config.on_backup_failure,
        }
    }

    async fn event(&self, tenant: &Tenant, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &tenant.object_ref(&())).await {
            tracing::warn!(tenant = %tenant.name_any(), %error, "cannot publish event");
        }
    }
}

/// Reconciles one Tenant, from the cache's form of it.
pub async fn reconcile(cached: Arc<CachedTenant>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let name = cached.name_any();
    let tenant = match cached.to_tenant() {
        Ok(t) => Arc::new(t),
        Err(error) => {
            let error = Error::Serialize(error);
            ctx.metrics.error(error.metric_label());
            tracing::warn!(tenant = %name, error = %error, category = error.metric_label(), "the tenant's status cannot be read");
            return Err(error);
        }
    };
    let api: Api<Tenant> = Api::all(ctx.client.clone());
    // A live tenant's pass adds the finalizer itself, in the same write as its first revision
    // (`metadata`), and goes on; kube's helper runs the clean-up of a deleting one and removes
    // the finalizer after it.
    let result = if tenant.metadata.deletion_timestamp.is_none() {
        apply_tenant(&tenant, &ctx).await
    } else {
        finalizer(&api, FINALIZER, tenant, |event| async {
            match event {
                Finalizer::Apply(t) => apply_tenant(&t, &ctx).await,
                Finalizer::Cleanup(t) => cleanup(&t, &ctx).await,
            }
        })
        .await
        .map_err(|e| match e {
            kube::runtime::finalizer::Error::ApplyFailed(e)
            | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
            other => Error::Finalizer(Box::new(other)),
        })
    };
    ctx.metrics.reconciled(started.elapsed());
    match &result {
        Ok(_) => {
            ctx.failures.succeeded(&name);
            ctx.passes.passed(&name);
            tracing::debug!(tenant = %name, took_ms = started.elapsed().as_millis() as u64, "reconciled");
        }
        Err(
            Error::NamespaceTerminating { .. }
            | Error::FinalBackupPending { .. }
            | Error::PreTerminateBackupPending { .. }
            | Error::DeletionHeld { .. }
            | Error::DeletionPaused,
        ) => {}
        Err(error @ (Error::StatusConflict(_) | Error::MetadataConflict(_))) => {
            // Not a failure: the tenant changed (or another writer wrote) since it was read;
            // the next reconcile works from the newer object.
            ctx.metrics.error(error.metric_label());
            tracing::debug!(tenant = %name, "status not written: the tenant changed since it was read");
        }
        Err(error) => {
            ctx.metrics.error(error.metric_label());
            tracing::warn!(tenant = %name, error = %error, category = error.metric_label(), "reconcile failed");
        }
    }
    result
}

/// What the controller does after a failed reconcile.
pub fn error_policy(tenant: Arc<CachedTenant>, error: &Error, ctx: Arc<Context>) -> Action {
    match error {
        Error::NamespaceTerminating { .. } => return Action::requeue(ctx.config.deletion_poll),
        Error::FinalBackupPending { retry_in, .. }
        | Error::PreTerminateBackupPending { retry_in, .. } => return Action::requeue(*retry_in),
        // A release (annotation) or an unpause (spec) triggers the reconcile through the watch;
        // the resync period is the safety net.
        Error::DeletionHeld { .. } | Error::DeletionPaused => {
            return Action::requeue(ctx.config.requeue)
        }
        Error::StatusConflict(_) | Error::MetadataConflict(_) => {
            return Action::requeue(Duration::from_millis(200))
        }
        _ => {}
    }
    Action::requeue(ctx.failures.next_delay(&tenant.name_any()))
}

/// One pass of the pipeline over one tenant: what every step reads.
struct Pass<'a> {
    tenant: &'a Tenant,
    name: String,
    /// The status as read: each step starts from it and [`Pass::write`] compares with it.
    previous: TenantStatus,
    now: Timestamp,
    generation: Option<i64>,
}

impl<'a> Pass<'a> {
    fn new(tenant: &'a Tenant) -> Self {
        Pass {
            tenant,
            name: tenant.name_any(),
            previous: tenant.status.clone().unwrap_or_default(),
            now: Timestamp::now(),
            generation: tenant.metadata.generation,
        }
    }

    /// The previous conditions with `wants` set.
    fn conditions(
        &self,
        wants: &[Want],
    ) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
        computed::conditions(&self.previous.conditions, wants, self.generation, self.now)
    }

    /// Writes `st` unless it is what was read; says whether it wrote.
    async fn write(&self, ctx: &Context, st: &TenantStatus) -> Result<bool> {
        if *st == self.previous {
            return Ok(false);
        }
        let written = status::write(&ctx.client, self.tenant, st).await?;
        let uid = self.tenant.metadata.uid.as_deref().unwrap_or_default();
        ctx.applied.wrote(&self.name, uid, written.as_deref());
        Ok(true)
    }
}

/// The pipeline of a tenant that is not being deleted.
async fn apply_tenant(tenant: &Tenant, ctx: &Context) -> Result<Action> {
    // The cache has not yet seen this controller's own last status write (the echo of a write
    // of the same pass triggered this one): a pass from the older copy would only be refused.
    let uid = tenant.metadata.uid.as_deref().unwrap_or_default();
    if ctx.applied.behind_own_write(
        &tenant.name_any(),
        uid,
        tenant.metadata.resource_version.as_deref(),
    ) {
        return Ok(Action::requeue(STALE_CACHE_RETRY));
    }
    if tenant.spec.paused {
        let tenant = metadata::ensure(&ctx.client, tenant, None).await?;
        return paused_step(&Pass::new(&tenant), ctx).await;
    }
    let source = desired::source(
        &ctx.client,
        ctx.platforms.as_ref(),
        ctx.revisions.as_ref(),
        tenant,
    )
    .await?;
    let checked = revision::validated(tenant, source.as_ref());
    let revision = source
        .as_ref()
        .and_then(|s| s.as_ref().ok()?.revision.clone());
    // Before anything of the tenant is made: its finalizer (and where it starts, for the
    // rollout). The rest of the pass works from the object this write answered.
    let tenant = &*metadata::ensure(&ctx.client, tenant, revision.as_deref()).await?;
    let pass = Pass::new(tenant);
    let Some(valid) = validate_step(&pass, ctx, checked).await? else {
        // A Platform change re-triggers this tenant through the Platform watch.
        return Ok(Action::await_change());
    };
    let (requeue, held) = match retention_step(&pass, ctx, &valid).await? {
        Retention::Deleted => return Ok(Action::await_change()),
        Retention::Kept { requeue, held } => (requeue, held),
    };
    let plan = plan::plan(tenant, valid.platform, valid.tier, &ctx.config.plan);
    let pruned = sync_step(&pass, ctx, &plan).await?;
    let cloud = cloud_step(&pass, ctx, &valid).await?;
    let held = hold_step(&pass, ctx, held, cloud.as_ref());
    status_step(&pass, ctx, &plan, &pruned, cloud.as_ref(), revision, held).await?;
    next_reconcile(ctx, requeue, cloud)
}

/// `spec.paused`: nothing is changed; only the `Paused` condition is set.
async fn paused_step(pass: &Pass<'_>, ctx: &Context) -> Result<Action> {
    let st = TenantStatus {
        conditions: pass.conditions(&[Want::new(
            PAUSED,
            true,
            "PausedBySpec",
            "spec.paused is true: nothing is changed",
        )]),
        ..pass.previous.clone()
    };
    if pass.write(ctx, &st).await? {
        ctx.event(
            pass.tenant,
            EventType::Normal,
            "Paused",
            "reconciliation paused".into(),
        )
        .await;
        tracing::info!(tenant = %pass.name, "paused");
    }
    Ok(Action::await_change())
}

/// validate: the Platform and tier, or `Failed` with `InvalidSpec` (and `None`).
async fn validate_step<'p>(
    pass: &Pass<'_>,
    ctx: &Context,
    checked: std::result::Result<Valid<'p>, validate::Invalid>,
) -> Result<Option<Valid<'p>>> {
    let invalid = match checked {
        Ok(v) => return Ok(Some(v)),
        Err(invalid) => invalid,
    };
    let st = TenantStatus {
        phase: Some(TenantPhase::Failed),
        observed_generation: pass.generation,
        ready_since: None,
        conditions: pass.conditions(&[
            Want::new(READY, false, INVALID_SPEC, invalid.message.clone()),
            Want::new(SYNCED, false, INVALID_SPEC, invalid.message.clone()),
            Want::new(PAUSED, false, "NotPaused", "spec.paused is false"),
            computed::payment_overdue_condition(pass.tenant),
            computed::cancellation_scheduled_condition(pass.tenant),
            computed::collection_paused_condition(pass.tenant),
        ]),
        ..pass.previous.clone()
    };
    if pass.write(ctx, &st).await? {
        ctx.event(
            pass.tenant,
            EventType::Warning,
            INVALID_SPEC,
            invalid.message.clone(),
        )
        .await;
        tracing::warn!(tenant = %pass.name, reason = %invalid.message, "invalid spec");
    }
    ctx.metrics.phase(&pass.name, Some(TenantPhase::Failed));
    Ok(None)
}

/// What the retention step decided.
enum Retention {
    /// The tenant was deleted (the finalizer applies the deletion policy next).
    Deleted,
    /// The tenant stays; look at it again within `requeue`. `held`: the `DeletionHeld`
    /// condition the status step writes.
    Kept {
        requeue: Duration,
        held: Option<Want>,
    },
}

/// retention: a tenant cancelled and past its platform's retention period is deleted, after
/// its final `pre-delete` backup (while that runs the tenant stays `Cancelled`; a failed one
/// holds the deletion), and only if a fresh read shows it still cancelled (`delete_if_due`).
/// A hold it no longer finds is lifted by [`hold_step`], which also weighs the cloud step's.
async fn retention_step(pass: &Pass<'_>, ctx: &Context, valid: &Valid<'_>) -> Result<Retention> {
    let requeue = ctx.config.requeue;
    let Some(cancelled) = &pass.tenant.spec.cancelled_at else {
        return Ok(Retention::Kept {
            requeue,
            held: None,
        });
    };
    let days = valid.platform.spec.cancellation_retention_days;
    let retention = SignedDuration::from_hours(24 * i64::from(days));
    let deadline = cancelled.0.checked_add(retention).unwrap_or(cancelled.0);
    if pass.now < deadline {
        let left = deadline.duration_since(pass.now).unsigned_abs();
        return Ok(Retention::Kept {
            requeue: requeue.min(left + Duration::from_secs(1)),
            held: None,
        });
    }
    match final_backup_gate(
        pass.tenant,
        ctx,
        Trigger::RetentionOver,
        true,
        Guards::default(),
    )
    .await?
    {
        Next::WaitForBackup { retry_in, .. } => Ok(Retention::Kept {
            requeue: requeue.min(retry_in),
            held: None,
        }),
        Next::Hold { reason, backup } => Ok(Retention::Kept {
            requeue,
            held: Some(held_condition(ctx, reason, backup.as_deref())),
        }),
        // Not reached for a live, unpaused tenant (the pipeline stops before retention when
        // paused; Retain and Orphan apply only in the finalizer): keep it.
        Next::WaitForUnpause | Next::Retain | Next::Orphan | Next::RequestBackup => {
            Ok(Retention::Kept {
                requeue,
                held: None,
            })
        }
        Next::Destroy { .. } => {
            let api: Api<Tenant> = Api::all(ctx.client.clone());
            // The cached copy can predate this controller's own delete or billing's
            // re-subscription: ask the API server.
            let fresh = api.get_opt(&pass.name).await?;
            match delete_if_due(&api, fresh.as_ref(), days, Timestamp::now()).await? {
                RetentionDeleted::Deleted => {
                    tracing::info!(tenant = %pass.name, "retention period over: tenant deleted");
                    ctx.event(
                        pass.tenant,
                        EventType::Normal,
                        "RetentionExpired",
                        "cancelled and retention period over: deleting".into(),
                    )
                    .await;
                    Ok(Retention::Deleted)
                }
                RetentionDeleted::AlreadyGoing => Ok(Retention::Deleted),
                RetentionDeleted::Kept => Ok(Retention::Kept {
                    requeue,
                    held: None,
                }),
                // Changed since the read (a re-subscription, billing's marks): the watch brings
                // the newer object; look again soon in any case.
                RetentionDeleted::Changed => Ok(Retention::Kept {
                    requeue: requeue.min(ctx.config.deletion_poll),
                    held: None,
                }),
            }
        }
    }
}

/// What [`delete_if_due`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionDeleted {
    /// The Tenant was deleted.
    Deleted,
    /// Gone or already being deleted.
    AlreadyGoing,
    /// No longer cancelled (re-subscribed) or not due: kept.
    Kept,
    /// It changed between `fresh` and the delete (the preconditions refused it): kept; look
    /// again.
    Changed,
}

/// Deletes the Tenant `fresh` (a read from the API server) if it is still cancelled and past
/// its retention (`stackplane_core::tenant::deletion::retention_delete`), on the condition
/// that it is still that object at that resourceVersion: a re-subscription that lands between
/// the read and the delete makes the API server refuse it (409), and it is kept.
pub async fn delete_if_due(
    api: &Api<Tenant>,
    fresh: Option<&Tenant>,
    retention_days: u32,
    now: Timestamp,
) -> Result<RetentionDeleted> {
    let (uid, resource_version) = match deletion::retention_delete(fresh, retention_days, now) {
        RetentionDelete::Delete {
            uid,
            resource_version,
        } => (uid, resource_version),
        RetentionDelete::AlreadyGoing => return Ok(RetentionDeleted::AlreadyGoing),
        RetentionDelete::Keep => return Ok(RetentionDeleted::Kept),
    };
    let name = fresh.map(ResourceExt::name_any).unwrap_or_default();
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid),
            resource_version: Some(resource_version),
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => Ok(RetentionDeleted::Deleted),
        Err(e) if crate::k8s::is_conflict(&e) => {
            tracing::info!(tenant = %name, "tenant changed since it was read: not deleted by retention");
            Ok(RetentionDeleted::Changed)
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(RetentionDeleted::AlreadyGoing),
        Err(e) => Err(e.into()),
    }
}

/// The `DeletionHeld=True` condition of a hold (`backup`: the backup that failed; none for a
/// mass-deletion hold, which holds before any backup).
fn held_condition(ctx: &Context, reason: HoldReason, backup: Option<&str>) -> Want {
    let backup = backup.unwrap_or("of this lifecycle");
    let what = if reason.timed_out() {
        "did not finish in time"
    } else {
        "failed"
    };
    let message = match reason {
        HoldReason::MassDeletion => format!(
            "more tenants entered deletion within an hour than --max-deletions-per-hour={}: \
             nothing of this tenant is deleted, not even a final backup taken, until a person \
             releases it (annotation {RELEASE_DELETION}=\"true\"); see the runbook \
             deletion-held.md for a mass deletion made by mistake",
            ctx.config.max_deletions_per_hour
        ),
        HoldReason::FinalBackupFailed | HoldReason::FinalBackupTimedOut => format!(
            "final backup {backup} {what}: nothing is deleted until a person releases it \
             (annotation {RELEASE_DELETION}=\"true\") or a new final backup completes \
             (delete the failed TenantBackup {backup} to request one)"
        ),
        HoldReason::PreTerminateBackupFailed | HoldReason::PreTerminateBackupTimedOut => format!(
            "pre-terminate backup {backup} (EBS snapshots of the instance's volumes) {what}: the \
             instance is not terminated until a person releases it (annotation \
             {RELEASE_DELETION}=\"true\") or a new pre-terminate backup completes (delete the \
             failed TenantBackup {backup} to request one)"
        ),
    };
    Want::new(DELETION_HELD, true, reason.as_str(), message)
}

/// The `DeletionHeld` condition of a live tenant: the retention step's hold (its final
/// backup), else the cloud step's (an instance's `pre-terminate` backup), else, if the status
/// still says held, the hold lifted. The metric follows. `None`: no change (the cloud step
/// failed before it could say, so a hold it set stays as it is).
fn hold_step(
    pass: &Pass<'_>,
    ctx: &Context,
    retention: Option<Want>,
    cloud: Option<&crate::cloud::CloudOutcome>,
) -> Option<Want> {
    if retention.is_some() {
        return retention;
    }
    if let Some(c) = cloud {
        if let Some((reason, backup)) = c.termination.held() {
            ctx.metrics.deletion_held(&pass.name, Some(reason.as_str()));
            return Some(held_condition(ctx, reason, Some(backup)));
        }
        if matches!(c.state, crate::cloud::CloudState::Failed(_)) && is_held(&pass.previous) {
            return None;
        }
    }
    if !is_held(&pass.previous) {
        return None;
    }
    ctx.metrics.deletion_held(&pass.name, None);
    Some(Want::new(
        DELETION_HELD,
        false,
        "NotHeld",
        "nothing is held: the tenant is not due for deletion and no instance waits to be \
         terminated (its backup completed, or the hold was released)",
    ))
}

/// apply + prune: the plan's objects applied, the rest pruned (claims retained, not deleted).
/// On failure `Synced=False` says why. Skipped when this plan was applied last and nothing of
/// the tenant changed since (`applied`, and a look at the kinds no watch covers); the claims
/// retained are then those the status lists.
async fn sync_step(pass: &Pass<'_>, ctx: &Context, plan: &Plan) -> Result<Pruned> {
    let uid = pass.tenant.uid().unwrap_or_default();
    let fingerprint = apply::fingerprint(plan)?;
    if ctx.applied.up_to_date(&pass.name, &uid, fingerprint)
        && !children::unwatched_drift(&ctx.client, plan).await
    {
        return Ok(Pruned {
            retained: pass.previous.retained_volumes.clone(),
            ..Pruned::default()
        });
    }
    // A tenant never synced (no status, no Synced condition: no apply of it ever finished or
    // failed) whose namespace this apply made has nothing of an older plan to prune: its
    // first apply saves a list per kind. (A namespace older than the tenant, e.g. one a
    // `Retain` tenant of the same name left behind, is pruned as always.)
    let never_synced = !ctx.applied.knows(&pass.name)
        && pass.previous.namespace.is_none()
        && !pass.previous.conditions.iter().any(|c| c.type_ == SYNCED);
    let since = ctx.applied.epoch();
    let synced = async {
        let applied = apply::apply(&ctx.client, plan).await?;
        ctx.reports.record(plan.namespace_name(), &applied.reports);
        // Every object of the plan is in place in a namespace an earlier Tenant of this name
        // left: the stack is this tenant's now, its data and credentials as they were.
        if applied.namespace_orphaned {
            orphan::adopted(ctx, pass.tenant, plan.namespace_name()).await?;
        }
        let ns_created = applied.namespace_created;
        let tenant_created = pass.tenant.metadata.creation_timestamp.as_ref();
        let fresh_namespace = matches!(
            (&ns_created, tenant_created),
            (Some(ns), Some(t)) if ns.0 >= t.0
        );
        if never_synced && fresh_namespace {
            return Ok(Pruned::default());
        }
        children::prune(&ctx.client, &pass.name, plan).await
    }
    .await;
    match &synced {
        Ok(_) => ctx.applied.record(&pass.name, &uid, fingerprint, since),
        Err(_) => ctx.applied.forget(&pass.name),
    }
    let error = match synced {
        Ok(pruned) => {
            for claim in &pruned.newly_retained {
                tracing::info!(tenant = %pass.name, claim = %claim, "volume claim no longer planned: retained");
                ctx.event(
                    pass.tenant,
                    EventType::Normal,
                    "VolumeRetained",
                    format!(
                        "claim {claim} is no longer named by the Platform: kept (label {}=true); \
                         it is deleted only with the tenant's namespace, after the final backup",
                        stackplane_core::contract::labels::RETAINED
                    ),
                )
                .await;
            }
            return Ok(pruned);
        }
        Err(error) => error,
    };
    let st = TenantStatus {
        conditions: pass.conditions(&[Want::new(SYNCED, false, "ApplyFailed", error.to_string())]),
        ..pass.previous.clone()
    };
    if pass.write(ctx, &st).await? {
        ctx.event(
            pass.tenant,
            EventType::Warning,
            "ApplyFailed",
            error.to_string(),
        )
        .await;
    }
    Err(error)
}

/// cloud: the dedicated instance and the DNS record, after the cluster objects exist. `None`
/// without a cloud provider. An instance is terminated only after its `pre-terminate` backup
/// ([`pre_terminate`]); a release that let one go is used up (the annotation removed), so it
/// never waves a later termination through.
async fn cloud_step(
    pass: &Pass<'_>,
    ctx: &Context,
    valid: &Valid<'_>,
) -> Result<Option<crate::cloud::CloudOutcome>> {
    let Some(settings) = ctx.config.cloud.as_ref() else {
        return Ok(None);
    };
    let outcome = crate::cloud::sync(
        settings,
        &ctx.client,
        &ctx.pre_terminate_gate(),
        pass.tenant,
        valid.platform,
        valid.tier,
    )
    .await;
    for note in &outcome.notes {
        ctx.event(
            pass.tenant,
            note.event_type(),
            note.reason,
            note.message.clone(),
        )
        .await;
    }
    if outcome.termination.overridden && deletion::released(pass.tenant) {
        consume_release(pass, ctx).await?;
    }
    Ok(Some(outcome))
}

/// Removes the release annotation of a live tenant once the termination it released went
/// ahead: it released the holds there were, not the ones to come.
async fn consume_release(pass: &Pass<'_>, ctx: &Context) -> Result<()> {
    let patch = json!({ "metadata": { "annotations": { RELEASE_DELETION: null } } });
    let params = PatchParams {
        field_manager: Some(crate::k8s::FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    Api::<Tenant>::all(ctx.client.clone())
        .patch(&pass.name, &params, &Patch::Merge(&patch))
        .await?;
    tracing::warn!(tenant = %pass.name, "instance terminated by a release: release annotation removed");
    ctx.event(
        pass.tenant,
        EventType::Warning,
        "DeletionReleased",
        format!(
            "released by annotation {RELEASE_DELETION}: the instance was terminated without a \
             completed pre-terminate backup; the annotation is removed, so later terminations \
             are held again"
        ),
    )
    .await;
    Ok(())
}

/// status: phase, conditions and what was observed, written when it changed; Events on a
/// phase change.
async fn status_step(
    pass: &Pass<'_>,
    ctx: &Context,
    plan: &Plan,
    pruned: &Pruned,
    cloud: Option<&crate::cloud::CloudOutcome>,
    revision: Option<String>,
    held: Option<Want>,
) -> Result<()> {
    let (tenant, name, previous) = (pass.tenant, &pass.name, &pass.previous);
    // From the Deployment watch, and from this pass's own apply when it applied (its answers
    // are newer than any echo the watch may not have delivered yet).
    let observed = ctx.reports.of(plan.namespace_name());
    let components = computed::component_status(&plan.components, &observed);
    let stalled = computed::stalled(&plan.components, &observed);
    let mut phase = computed::phase(tenant, &components, &stalled, Some(previous));
    let mut wants = vec![
        computed::ready_condition(phase, &components, &stalled),
        Want::new(SYNCED, true, "Applied", "every object is applied"),
        Want::new(PAUSED, false, "NotPaused", "spec.paused is false"),
    ];
    // Appended, so the indices above stay as they are.
    wants.extend(computed::billing_notice_conditions(tenant));
    if let Some(c) = cloud {
        let was_ready =
            previous.ready_since.is_some() || previous.phase == Some(TenantPhase::Degraded);
        let adjusted = crate::cloud::phase(phase, &c.state, was_ready);
        if adjusted != phase && computed::all_ready(&components) {
            wants[0] = Want::new(READY, false, "CloudNotReady", c.message.clone());
        }
        phase = adjusted;
        if let crate::cloud::CloudState::Failed(e) = &c.state {
            if e.spec_cannot_be_applied() {
                wants[1] = Want::new(SYNCED, false, c.reason, c.message.clone());
            }
        }
        wants.push(Want::new(
            crate::cloud::CLOUD_READY,
            c.ready,
            c.reason,
            c.message.clone(),
        ));
    }
    wants.extend(held.clone());
    let operator_hold = computed::held_condition(tenant);
    let hold_change = computed::hold_change(&previous.conditions, &operator_hold);
    wants.push(operator_hold.clone());
    let mut st = TenantStatus {
        phase: Some(phase),
        conditions: pass.conditions(&wants),
        namespace: Some(plan.namespace_name().to_owned()),
        endpoint: Some(plan.endpoint.clone()),
        components,
        observed_generation: pass.generation,
        ready_since: None,
        retained_volumes: pruned.retained.clone(),
        // The revision counts as run once every Deployment rolled out to its plan.
        platform_revision: match revision {
            Some(r) if computed::rolled_out(&plan.components, &observed) => Some(r),
            _ => previous.platform_revision.clone(),
        },
        ..previous.clone()
    };
    if let Some(c) = cloud {
        st.instance = c.instance.clone();
        st.dns_record = c.dns_record.clone();
    }
    if phase == TenantPhase::Ready {
        st.ready_since = previous.ready_since.clone().or(Some(Time(pass.now)));
    }
    if pass.write(ctx, &st).await? {
        announce_hold(ctx, tenant, is_held(previous), held.as_ref()).await;
        // After the write, so a pass from a stale copy (refused) announces nothing.
        if let Some(change) = hold_change {
            announce_operator_hold(ctx, tenant, change, &operator_hold).await;
        }
    }
    payment_overdue_event(tenant, previous, &st, ctx).await;
    if previous.phase != Some(phase) {
        tracing::info!(tenant = %name, phase = phase.as_str(), "phase changed");
        ctx.event(
            tenant,
            EventType::Normal,
            phase.as_str(),
            format!("phase {}", phase.as_str()),
        )
        .await;
        let first_ready = phase == TenantPhase::Ready
            && matches!(
                previous.phase,
                None | Some(TenantPhase::Pending) | Some(TenantPhase::Provisioning)
            );
        if first_ready {
            if let Some(created) = tenant.metadata.creation_timestamp.as_ref() {
                let took = pass.now.duration_since(created.0).unsigned_abs();
                ctx.metrics.became_ready(took);
            }
        }
    }
    ctx.metrics.phase(name, Some(phase));
    if cloud.is_some() {
        let state = st.instance.as_ref().map(|i| i.state.as_str());
        ctx.metrics.instance_state(name, state);
    }
    Ok(())
}

/// When to look at a synced tenant again, from the cloud step's outcome.
fn next_reconcile(
    ctx: &Context,
    mut requeue: Duration,
    cloud: Option<crate::cloud::CloudOutcome>,
) -> Result<Action> {
    match cloud.map(|c| c.state) {
        // Retried with the controller's backoff; the condition already says what failed.
        Some(crate::cloud::CloudState::Failed(e))
            if e.retry() == crate::cloud::Retry::Retryable =>
        {
            return Err(Error::Cloud(e))
        }
        // Terminal: counted, and tried again only after `terminal_requeue` (the resync's passes
        // before then reuse the remembered outcome) or on a spec change, never in a hot loop.
        Some(crate::cloud::CloudState::Failed(e)) => {
            ctx.metrics.error(e.metric_label());
            if let Some(s) = &ctx.config.cloud {
                requeue = s.terminal_requeue;
            }
        }
        Some(crate::cloud::CloudState::Progressing) => {
            if let Some(s) = &ctx.config.cloud {
                requeue = requeue.min(s.progress_requeue);
            }
        }
        _ => {}
    }
    Ok(look_again(ctx, requeue))
}

/// A tenant is looked at again by the resync sweep (`resync`) at least once per resync period
/// without a timer of its own; it gets one only when it must be looked at sooner.
fn look_again(ctx: &Context, within: Duration) -> Action {
    if within < ctx.config.requeue {
        Action::requeue(within)
    } else {
        Action::await_change()
    }
}

/// Implements the deletion policy; the finalizer is removed when this returns `Ok`. What it
/// does next is `stackplane_core::tenant::deletion::decide`'s answer: every Tenant of a CRD
/// being deleted is released destroying nothing, a paused tenant waits, a deletion beyond the
/// mass-deletion guard waits for a person, a failed final backup holds, and nothing (namespace
/// or cloud resource) is destroyed before.
async fn cleanup(tenant: &Tenant, ctx: &Context) -> Result<Action> {
    let name = tenant.name_any();
    let ns = namespace_name(&name);
    let previous = tenant.status.clone().unwrap_or_default();
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let existing = match tenant.spec.deletion_policy {
        DeletionPolicy::Delete if !tenant.spec.paused => namespaces.get_opt(&ns).await?,
        _ => None,
    };
    let terminating = existing
        .as_ref()
        .is_some_and(|n| n.metadata.deletion_timestamp.is_some());
    // The final backup, unless there is no data left to back up.
    let has_data = existing.is_some() && !terminating || previous.instance.is_some();
    // Asked of the API server unless the destruction is already under way (the namespace
    // terminating): the watch of the CRD may lag the Tenants' own.
    let tenant_crd_deleting = guard::tenant_crd_deleting(ctx, !terminating).await?;
    let guards = Guards {
        tenant_crd_deleting,
        beyond_budget: !tenant_crd_deleting && guard::beyond_budget(ctx, tenant, &previous),
    };
    let mut next = final_backup_gate(tenant, ctx, Trigger::TenantDeleted, has_data, guards).await?;
    // Cloud resources go only once the final backup lets the deletion proceed, and each
    // instance only after its own pre-terminate backup: a failed one holds the deletion too.
    let mut cloud_deleted = None;
    if let (Next::Destroy { .. }, Some(settings)) = (&next, &ctx.config.cloud) {
        let platform = Api::<Platform>::all(ctx.client.clone())
            .get_opt(&tenant.spec.platform)
            .await?;
        let gate = ctx.pre_terminate_gate();
        let deleted = crate::cloud::delete(settings, &gate, tenant, platform.as_ref()).await?;
        for note in &deleted.termination.notes {
            ctx.event(tenant, note.event_type(), note.reason, note.message.clone())
                .await;
        }
        if let Some((reason, backup)) = deleted.termination.held() {
            ctx.metrics.deletion_held(&name, Some(reason.as_str()));
            next = Next::Hold {
                reason,
                backup: Some(backup.to_owned()),
            };
        }
        cloud_deleted = Some(deleted);
    }
    // The Tenant's kind is going: no status to write, no Event to attach.
    if next != Next::Orphan {
        deleting_status(tenant, ctx, &previous, &next).await?;
    }
    match next {
        Next::WaitForUnpause => return Err(Error::DeletionPaused),
        Next::Hold { reason, .. } => {
            return Err(Error::DeletionHeld {
                reason: reason.as_str(),
            })
        }
        Next::WaitForBackup { backup, retry_in } => {
            return Err(Error::FinalBackupPending { backup, retry_in })
        }
        // The gate requests the backup itself and answers `WaitForBackup`.
        Next::RequestBackup => {
            return Err(Error::FinalBackupPending {
                backup: final_backup::backup_name(tenant),
                retry_in: ctx.config.final_backup_poll,
            })
        }
        Next::Orphan => orphan::release(ctx, tenant).await?,
        Next::Destroy { .. } => {
            // Counted by the guard after it leaves the cache, for the rest of the window.
            if let Some(entered) = guard::entered(tenant) {
                ctx.recent_deletions.went(entered, Timestamp::now());
            }
            if let Some(deleted) = cloud_deleted {
                if !deleted.done.is_empty() {
                    ctx.event(
                        tenant,
                        EventType::Normal,
                        "CloudResourcesDeleted",
                        deleted.done.join("; "),
                    )
                    .await;
                }
                // An instance waits for its pre-terminate backup: nothing else goes yet.
                if let Some(kept) = deleted.termination.kept.first() {
                    return Err(Error::PreTerminateBackupPending {
                        backup: kept.backup.clone(),
                        retry_in: deleted
                            .termination
                            .retry_in
                            .unwrap_or(ctx.config.final_backup_poll),
                    });
                }
            }
            if let Some(existing) = existing {
                if existing.metadata.deletion_timestamp.is_none() {
                    namespaces.delete(&ns, &DeleteParams::background()).await?;
                    tracing::info!(tenant = %name, namespace = %ns, "deleting namespace");
                }
                return Err(Error::NamespaceTerminating { namespace: ns });
            }
        }
        Next::Retain => {
            // Marked retained first, so the cloud garbage collector never takes them for orphans.
            if let Some(settings) = &ctx.config.cloud {
                let platform = Api::<Platform>::all(ctx.client.clone())
                    .get_opt(&tenant.spec.platform)
                    .await?;
                crate::cloud::retain(settings, tenant, platform.as_ref()).await?;
            }
            if let Some(kept) = crate::cloud::retained(tenant) {
                ctx.event(
                    tenant,
                    EventType::Normal,
                    "CloudResourcesRetained",
                    format!("deletionPolicy Retain: {kept} left in place"),
                )
                .await;
                tracing::info!(tenant = %name, retained = %kept, "cloud resources retained");
            }
            if namespaces.get_opt(&ns).await?.is_some() {
                let patch = json!({ "metadata": { "labels": { ORPHANED: "true" } } });
                let params = PatchParams {
                    field_manager: Some(crate::k8s::FIELD_MANAGER.to_owned()),
                    ..PatchParams::default()
                };
                namespaces
                    .patch(&ns, &params, &Patch::Merge(&patch))
                    .await?;
                tracing::info!(tenant = %name, namespace = %ns, "namespace retained as orphan");
            }
        }
    }
    ctx.metrics.phase(&name, None);
    ctx.metrics.instance_state(&name, None);
    ctx.metrics.deletion_held(&name, None);
    ctx.applied.forget(&name);
    tracing::info!(tenant = %name, "tenant cleaned up");
    Ok(Action::await_change())
}

/// The status of a deleting tenant: phase `Deleting`, and the `Paused` and `DeletionHeld`
/// conditions saying why nothing is destroyed yet. One write, and only when it changed.
async fn deleting_status(
    tenant: &Tenant,
    ctx: &Context,
    previous: &TenantStatus,
    next: &Next,
) -> Result<()> {
    let mut wants = vec![if tenant.spec.paused {
        Want::new(
            PAUSED,
            true,
            "PausedBySpec",
            "spec.paused is true: the deletion waits, destroying nothing, until it is unpaused",
        )
    } else {
        Want::new(PAUSED, false, "NotPaused", "spec.paused is false")
    }];
    let was_held = is_held(previous);
    let held = match next {
        Next::Hold { reason, backup } => Some(held_condition(ctx, *reason, backup.as_deref())),
        _ if was_held => Some(Want::new(
            DELETION_HELD,
            false,
            "Released",
            "the backup completed or the hold was released: the deletion proceeds",
        )),
        _ => None,
    };
    wants.extend(held.clone());
    let generation = tenant.metadata.generation;
    let st = TenantStatus {
        phase: Some(TenantPhase::Deleting),
        conditions: computed::conditions(
            &previous.conditions,
            &wants,
            generation,
            Timestamp::now(),
        ),
        ..previous.clone()
    };
    // Conditions carry their transition time: compare what they say, not when.
    let same = |a: &TenantStatus, b: &TenantStatus| {
        a.phase == b.phase
            && a.conditions.len() == b.conditions.len()
            && a.conditions.iter().zip(&b.conditions).all(|(x, y)| {
                (&x.type_, &x.status, &x.reason, &x.message)
                    == (&y.type_, &y.status, &y.reason, &y.message)
            })
    };
    if same(&st, previous) {
        return Ok(());
    }
    status::write(&ctx.client, tenant, &st).await?;
    announce_hold(ctx, tenant, was_held, held.as_ref()).await;
    if previous.phase != Some(TenantPhase::Deleting) {
        ctx.event(
            tenant,
            EventType::Normal,
            "Deleting",
            format!("deletion policy {:?}", tenant.spec.deletion_policy),
        )
        .await;
    }
    ctx.metrics
        .phase(&tenant.name_any(), Some(TenantPhase::Deleting));
    Ok(())
}

/// The inputs of the deletion decision that "mistakes delete nothing" adds (observed by
/// `guard`); the retention path has none of them (it only deletes the Tenant, whose finalizer
/// is then guarded).
#[derive(Debug, Clone, Copy, Default)]
pub struct Guards {
    pub tenant_crd_deleting: bool,
    pub beyond_budget: bool,
}

/// Asks `stackplane_core::tenant::deletion` what the cleanup (or retention) of `tenant` does
/// next, reading its final backup only when that matters, and carries out what destroys
/// nothing: requests the backup (answering [`Next::WaitForBackup`] instead of
/// [`Next::RequestBackup`]), records how the wait ended on the backup, and announces a hold or
/// its release (Events, metric). The destruction itself is the caller's.
pub async fn final_backup_gate(
    tenant: &Tenant,
    ctx: &Context,
    trigger: Trigger,
    has_data: bool,
    guards: Guards,
) -> Result<Next> {
    let name = tenant.name_any();
    let mut input = Deletion::of(tenant, trigger);
    input.has_data = has_data;
    input.tenant_crd_deleting = guards.tenant_crd_deleting;
    input.beyond_budget = guards.beyond_budget;
    input.on_backup_failure = ctx.config.on_backup_failure;
    let mut next = deletion::decide(&input);
    if next == Next::RequestBackup {
        input.final_backup = final_backup::observe(
            &ctx.client,
            tenant,
            ctx.config.final_backup_timeout,
            ctx.config.final_backup_poll,
        )
        .await?;
        next = deletion::decide(&input);
    }
    // How the wait ended, recorded on the backup once: both paths pass here.
    if let FinalBackup::Over {
        name: backup,
        outcome,
        recorded: false,
    } = &input.final_backup
    {
        final_backup::record_outcome(&ctx.client, backup, *outcome).await?;
        let type_ = if outcome.succeeded() {
            EventType::Normal
        } else {
            EventType::Warning
        };
        tracing::info!(tenant = %name, backup = %backup, outcome = outcome.as_str(), "final backup done");
        ctx.event(
            tenant,
            type_,
            "FinalBackupDone",
            format!("final backup {backup}: {}", outcome.as_str()),
        )
        .await;
    }
    match &next {
        Next::RequestBackup => {
            let backup = final_backup::request(&ctx.client, tenant).await?;
            ctx.event(
                tenant,
                EventType::Normal,
                "FinalBackupRequested",
                format!("final backup {backup} requested; the tenant is deleted once it completes"),
            )
            .await;
            next = Next::WaitForBackup {
                backup,
                retry_in: ctx
                    .config
                    .final_backup_poll
                    .min(ctx.config.final_backup_timeout),
            };
        }
        Next::WaitForBackup { backup, .. } => {
            tracing::debug!(tenant = %name, backup = %backup, "waiting for the final backup");
        }
        Next::Hold { reason, .. } => {
            ctx.metrics.deletion_held(&name, Some(reason.as_str()));
        }
        Next::Destroy {
            overridden: true, ..
        } => {
            ctx.metrics.deletion_held(&name, None);
            let by = if input.released {
                format!("annotation {RELEASE_DELETION}")
            } else {
                "--on-backup-failure=delete".to_owned()
            };
            tracing::warn!(tenant = %name, released_by = %by, "deletion proceeds without a completed final backup");
        }
        Next::Destroy { .. } | Next::Retain | Next::Orphan | Next::WaitForUnpause => {
            ctx.metrics.deletion_held(&name, None);
        }
    }
    Ok(next)
}

/// The Event of a hold set or lifted, once: called after the status write that changed the
/// `DeletionHeld` condition succeeded (a pass from a stale copy is refused before it).
async fn announce_hold(ctx: &Context, tenant: &Tenant, was_held: bool, held: Option<&Want>) {
    let name = tenant.name_any();
    match held {
        Some(want) if want.status && !was_held => {
            tracing::warn!(tenant = %name, reason = %want.reason, "deletion held");
            ctx.event(
                tenant,
                EventType::Warning,
                DELETION_HELD,
                want.message.clone(),
            )
            .await;
        }
        Some(want) if !want.status && was_held => {
            tracing::warn!(tenant = %name, "deletion hold lifted");
            ctx.event(
                tenant,
                EventType::Warning,
                "DeletionReleased",
                if deletion::released(tenant) {
                    format!(
                        "released by annotation {RELEASE_DELETION}: the tenant's data is deleted"
                    )
                } else {
                    format!("the hold was lifted: {}", want.message)
                },
            )
            .await;
        }
        _ => {}
    }
}

/// The Event of an operator's hold (`spec.hold`) appearing or going, whoever wrote it (the api,
/// the plugin, a direct edit, dispute handling).
async fn announce_operator_hold(
    ctx: &Context,
    tenant: &Tenant,
    change: computed::HoldChange,
    held: &Want,
) {
    let name = tenant.name_any();
    match change {
        computed::HoldChange::Set => {
            let reason = tenant.spec.hold.as_ref().map(|h| h.reason.as_str());
            tracing::warn!(tenant = %name, hold_reason = reason.unwrap_or_default(), "operator hold set");
            ctx.event(
                tenant,
                EventType::Warning,
                EVENT_HOLD_SET,
                held.message.clone(),
            )
            .await;
        }
        computed::HoldChange::Released => {
            tracing::info!(tenant = %name, "operator hold released");
            ctx.event(
                tenant,
                EventType::Normal,
                EVENT_HOLD_RELEASED,
                "spec.hold was removed: the stack resumes".into(),
            )
            .await;
        }
    }
}

/// Whether the status says the tenant's deletion is held.
fn is_held(status: &TenantStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == DELETION_HELD && c.status == "True")
}

/// A Warning Event when a payment becomes overdue and a Normal one when it is settled.
async fn payment_overdue_event(
    tenant: &Tenant,
    previous: &TenantStatus,
    now: &TenantStatus,
    ctx: &Context,
) {
    let overdue = |s: &TenantStatus| {
        s.conditions
            .iter()
            .any(|c| c.type_ == PAYMENT_OVERDUE && c.status == "True")
    };
    match (overdue(previous), overdue(now)) {
        (false, true) => {
            ctx.event(
                tenant,
                EventType::Warning,
                PAYMENT_OVERDUE,
                "the subscription is past due; the stack keeps running".into(),
            )
            .await;
        }
        (true, false) => {
            ctx.event(
                tenant,
                EventType::Normal,
                "PaymentSettled",
                "no payment is overdue any more".into(),
            )
            .await;
        }
        _ => {}
    }
}
