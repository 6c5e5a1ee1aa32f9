//! The Tenant reconciler: `validate → plan → apply → prune → cloud → status`, behind a
//! finalizer that implements the deletion policy.

pub mod apply;
pub mod final_backup;
pub mod plan;
pub mod prune;
pub mod status;
pub mod validate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use stackplane_crds::labels::{tenant_selector, ORPHANED};
use stackplane_crds::naming::namespace_name;
use stackplane_crds::{DeletionPolicy, Platform, Tenant, TenantPhase, TenantStatus};

use crate::error::{Error, Result};
use crate::events::EventRecorder;
use crate::metrics::Metrics;
use final_backup::Gate;
use plan::PlanOptions;
use status::{Want, INVALID_SPEC, PAUSED, READY, SYNCED};

/// Finalizer the controller puts on every Tenant.
pub const FINALIZER: &str = "stackplane.io/tenant-cleanup";

/// Settings of the reconciler.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    pub plan: PlanOptions,
    /// Requeue interval of a healthy tenant (drift the watches missed is corrected by then).
    pub requeue: Duration,
    /// How often a deleting tenant checks whether its namespace is gone.
    pub deletion_poll: Duration,
    /// Longest wait for the final `pre-delete` backup before a tenant's data is deleted anyway.
    pub final_backup_timeout: Duration,
    /// How often an unfinished final backup is looked at (a TenantBackup watch usually
    /// triggers the reconcile sooner).
    pub final_backup_poll: Duration,
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
    /// Consecutive failures per tenant, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
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
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn failed(&self, tenant: &str) -> u32 {
        let Ok(mut f) = self.failures.lock() else {
            return 1;
        };
        let n = f.entry(tenant.to_owned()).or_default();
        *n = n.saturating_add(1);
        *n
    }

    fn succeeded(&self, tenant: &str) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(tenant);
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

/// Exponential backoff with jitter: 1 s doubling per consecutive failure, at most 5 min, then
/// ±20 % at random.
pub fn backoff(failures: u32) -> Duration {
    let base = 1u64 << failures.saturating_sub(1).min(9);
    let secs = (base as f64).min(300.0);
    let jitter = 0.8 + rand::random::<f64>() * 0.4;
    Duration::from_secs_f64(secs * jitter)
}

/// Reconciles one Tenant.
pub async fn reconcile(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let name = tenant.name_any();
    let api: Api<Tenant> = Api::all(ctx.client.clone());
    let result = finalizer(&api, FINALIZER, tenant, |event| async {
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
    });
    ctx.metrics.reconciled(started.elapsed());
    match &result {
        Ok(_) => {
            ctx.succeeded(&name);
            tracing::debug!(tenant = %name, took_ms = started.elapsed().as_millis() as u64, "reconciled");
        }
        Err(Error::NamespaceTerminating { .. } | Error::FinalBackupPending { .. }) => {}
        Err(error) => {
            ctx.metrics.error(error.metric_label());
            tracing::warn!(tenant = %name, error = %error, category = error.metric_label(), "reconcile failed");
        }
    }
    result
}

/// What the controller does after a failed reconcile.
pub fn error_policy(tenant: Arc<Tenant>, error: &Error, ctx: Arc<Context>) -> Action {
    match error {
        Error::NamespaceTerminating { .. } => return Action::requeue(ctx.config.deletion_poll),
        Error::FinalBackupPending { retry_in, .. } => return Action::requeue(*retry_in),
        _ => {}
    }
    let n = ctx.failed(&tenant.name_any());
    Action::requeue(backoff(n))
}

async fn apply_tenant(tenant: &Tenant, ctx: &Context) -> Result<Action> {
    let name = tenant.name_any();
    let previous = tenant.status.clone().unwrap_or_default();
    let now = Timestamp::now();
    let generation = tenant.metadata.generation;

    if tenant.spec.paused {
        let mut st = previous.clone();
        st.conditions = status::conditions(
            &previous.conditions,
            &[Want::new(
                PAUSED,
                true,
                "PausedBySpec",
                "spec.paused is true: nothing is changed",
            )],
            generation,
            now,
        );
        if st != previous {
            status::write(&ctx.client, tenant, &st).await?;
            ctx.event(
                tenant,
                EventType::Normal,
                "Paused",
                "reconciliation paused".into(),
            )
            .await;
            tracing::info!(tenant = %name, "paused");
        }
        return Ok(Action::requeue(ctx.config.requeue));
    }

    // validate
    let platforms: Api<Platform> = Api::all(ctx.client.clone());
    let platform = platforms.get_opt(&tenant.spec.platform).await?;
    let valid = match validate::validate(tenant, platform.as_ref()) {
        Ok(v) => v,
        Err(invalid) => {
            let mut st = previous.clone();
            st.phase = Some(TenantPhase::Failed);
            st.observed_generation = generation;
            st.ready_since = None;
            st.conditions = status::conditions(
                &previous.conditions,
                &[
                    Want::new(READY, false, INVALID_SPEC, invalid.message.clone()),
                    Want::new(SYNCED, false, INVALID_SPEC, invalid.message.clone()),
                    Want::new(PAUSED, false, "NotPaused", "spec.paused is false"),
                    status::payment_overdue_condition(tenant),
                ],
                generation,
                now,
            );
            if st != previous {
                status::write(&ctx.client, tenant, &st).await?;
                ctx.event(
                    tenant,
                    EventType::Warning,
                    INVALID_SPEC,
                    invalid.message.clone(),
                )
                .await;
                tracing::warn!(tenant = %name, reason = %invalid.message, "invalid spec");
            }
            ctx.metrics.phase(&name, Some(TenantPhase::Failed));
            // A Platform change re-triggers this tenant through the Platform watch.
            return Ok(Action::requeue(ctx.config.requeue));
        }
    };

    // cancelled and past retention: delete the Tenant (the finalizer then applies the policy).
    let mut requeue = ctx.config.requeue;
    if let Some(cancelled) = &tenant.spec.cancelled_at {
        let retention = SignedDuration::from_hours(
            24 * i64::from(valid.platform.spec.cancellation_retention_days),
        );
        let deadline = cancelled.0.checked_add(retention).unwrap_or(cancelled.0);
        if now >= deadline {
            // The final `pre-delete` backup first; while it runs the tenant stays Cancelled.
            match final_backup_gate(tenant, ctx).await? {
                Gate::Waiting { retry_in, .. } => requeue = requeue.min(retry_in),
                Gate::Passed { .. } => {
                    let api: Api<Tenant> = Api::all(ctx.client.clone());
                    // The cached copy can predate this controller's own delete (reconciles of
                    // one tenant never overlap, but the cache may lag): ask the API server.
                    let fresh = api.get_opt(&name).await?;
                    if fresh.is_none_or(|t| t.metadata.deletion_timestamp.is_some()) {
                        return Ok(Action::await_change());
                    }
                    tracing::info!(tenant = %name, "retention period over: deleting the tenant");
                    ctx.event(
                        tenant,
                        EventType::Normal,
                        "RetentionExpired",
                        "cancelled and retention period over: deleting".into(),
                    )
                    .await;
                    api.delete(&name, &DeleteParams::default()).await?;
                    return Ok(Action::await_change());
                }
            }
        } else {
            let left = deadline.duration_since(now).unsigned_abs();
            requeue = requeue.min(left + Duration::from_secs(1));
        }
    }

    // plan (pure)
    let plan = plan::plan(tenant, valid.platform, valid.tier, &ctx.config.plan);

    // apply + prune
    let synced = async {
        apply::apply(&ctx.client, &plan).await?;
        prune::prune(&ctx.client, &name, &plan).await
    }
    .await;
    if let Err(error) = synced {
        let mut st = previous.clone();
        st.conditions = status::conditions(
            &previous.conditions,
            &[Want::new(SYNCED, false, "ApplyFailed", error.to_string())],
            generation,
            now,
        );
        if st != previous {
            status::write(&ctx.client, tenant, &st).await?;
            ctx.event(tenant, EventType::Warning, "ApplyFailed", error.to_string())
                .await;
        }
        return Err(error);
    }

    // cloud: the dedicated instance and the DNS record, after the cluster objects exist.
    let cloud = match &ctx.config.cloud {
        Some(settings) => Some(
            crate::cloud::sync(settings, &ctx.client, tenant, valid.platform, valid.tier).await,
        ),
        None => None,
    };
    if let Some(c) = &cloud {
        for note in &c.notes {
            ctx.event(tenant, note.event_type(), note.reason, note.message.clone())
                .await;
        }
    }

    // status
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), plan.namespace_name());
    let observed = deployments
        .list(&ListParams::default().labels(&tenant_selector(&name)))
        .await?
        .items;
    let components = status::component_status(&plan.components, &observed);
    let mut phase = status::phase(tenant, &components, Some(&previous));
    let mut wants = vec![
        status::ready_condition(phase, &components),
        Want::new(SYNCED, true, "Applied", "every object is applied"),
        Want::new(PAUSED, false, "NotPaused", "spec.paused is false"),
        status::payment_overdue_condition(tenant),
    ];
    if let Some(c) = &cloud {
        let was_ready =
            previous.ready_since.is_some() || previous.phase == Some(TenantPhase::Degraded);
        let adjusted = crate::cloud::phase(phase, &c.state, was_ready);
        if adjusted != phase && status::all_ready(&components) {
            wants[0] = Want::new(READY, false, "CloudNotReady", c.message.clone());
        }
        phase = adjusted;
        wants.push(Want::new(
            crate::cloud::CLOUD_READY,
            c.ready,
            c.reason,
            c.message.clone(),
        ));
    }
    let mut st = TenantStatus {
        phase: Some(phase),
        conditions: status::conditions(&previous.conditions, &wants, generation, now),
        namespace: Some(plan.namespace_name().to_owned()),
        endpoint: Some(plan.endpoint.clone()),
        components,
        observed_generation: generation,
        ready_since: None,
        ..previous.clone()
    };
    if let Some(c) = &cloud {
        st.instance = c.instance.clone();
        st.dns_record = c.dns_record.clone();
    }
    if phase == TenantPhase::Ready {
        st.ready_since = previous.ready_since.clone().or(Some(Time(now)));
    }
    if st != previous {
        status::write(&ctx.client, tenant, &st).await?;
    }
    payment_overdue_event(tenant, &previous, &st, ctx).await;
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
                let took = now.duration_since(created.0).unsigned_abs();
                ctx.metrics.became_ready(took);
            }
        }
    }
    ctx.metrics.phase(&name, Some(phase));
    match cloud.map(|c| c.state) {
        // Retried with the controller's backoff; the condition already says what failed.
        Some(crate::cloud::CloudState::Failed(e))
            if e.retry() == crate::cloud::Retry::Retryable =>
        {
            return Err(Error::Cloud(e))
        }
        // Terminal: counted, and looked at again only after the long requeue or a spec change,
        // never in a hot loop.
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
    Ok(Action::requeue(requeue))
}

/// Implements the deletion policy; the finalizer is removed when this returns `Ok`.
async fn cleanup(tenant: &Tenant, ctx: &Context) -> Result<Action> {
    let name = tenant.name_any();
    let ns = namespace_name(&name);
    let previous = tenant.status.clone().unwrap_or_default();
    if previous.phase != Some(TenantPhase::Deleting) {
        let st = TenantStatus {
            phase: Some(TenantPhase::Deleting),
            ..previous.clone()
        };
        status::write(&ctx.client, tenant, &st).await?;
        ctx.event(
            tenant,
            EventType::Normal,
            "Deleting",
            format!("deletion policy {:?}", tenant.spec.deletion_policy),
        )
        .await;
    }
    ctx.metrics.phase(&name, Some(TenantPhase::Deleting));
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    match tenant.spec.deletion_policy {
        DeletionPolicy::Delete => {
            let existing = namespaces.get_opt(&ns).await?;
            // The final backup, unless there is no data left to back up.
            let has_data = existing
                .as_ref()
                .is_some_and(|n| n.metadata.deletion_timestamp.is_none())
                || previous.instance.is_some();
            if has_data {
                if let Gate::Waiting {
                    backup, retry_in, ..
                } = final_backup_gate(tenant, ctx).await?
                {
                    return Err(Error::FinalBackupPending { backup, retry_in });
                }
            }
            // Cloud resources go only once the final backup lets the deletion proceed.
            if let Some(settings) = &ctx.config.cloud {
                let platform = Api::<Platform>::all(ctx.client.clone())
                    .get_opt(&tenant.spec.platform)
                    .await?;
                let done = crate::cloud::delete(settings, tenant, platform.as_ref()).await?;
                if !done.is_empty() {
                    ctx.event(
                        tenant,
                        EventType::Normal,
                        "CloudResourcesDeleted",
                        done.join("; "),
                    )
                    .await;
                }
            }
            match existing {
                None => {}
                Some(existing) => {
                    if existing.metadata.deletion_timestamp.is_none() {
                        namespaces.delete(&ns, &DeleteParams::background()).await?;
                        tracing::info!(tenant = %name, namespace = %ns, "deleting namespace");
                    }
                    return Err(Error::NamespaceTerminating { namespace: ns });
                }
            }
        }
        DeletionPolicy::Retain => {
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
                namespaces
                    .patch(&ns, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                tracing::info!(tenant = %name, namespace = %ns, "namespace retained as orphan");
            }
        }
    }
    ctx.metrics.phase(&name, None);
    tracing::info!(tenant = %name, "tenant cleaned up");
    Ok(Action::await_change())
}

/// Requests the tenant's final backup and says whether the wait for it is over, with an Event
/// when it is requested and when the wait ends.
pub async fn final_backup_gate(tenant: &Tenant, ctx: &Context) -> Result<Gate> {
    let gate = final_backup::ensure(
        &ctx.client,
        tenant,
        ctx.config.final_backup_timeout,
        ctx.config.final_backup_poll,
    )
    .await?;
    let name = tenant.name_any();
    match &gate {
        Gate::Waiting {
            backup,
            requested: true,
            ..
        } => {
            ctx.event(
                tenant,
                EventType::Normal,
                "FinalBackupRequested",
                format!("final backup {backup} requested; the tenant is deleted once it finishes"),
            )
            .await;
        }
        Gate::Waiting { backup, phase, .. } => {
            tracing::debug!(tenant = %name, backup = %backup, phase = ?phase, "waiting for the final backup");
        }
        Gate::Passed {
            backup,
            outcome,
            first,
        } => {
            // Both the retention path and the finalizer pass this gate; say so once.
            if *first {
                let type_ = match outcome {
                    final_backup::Outcome::Finished(stackplane_crds::BackupPhase::Completed) => {
                        EventType::Normal
                    }
                    _ => EventType::Warning,
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
        }
    }
    Ok(gate)
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
            .any(|c| c.type_ == status::PAYMENT_OVERDUE && c.status == "True")
    };
    match (overdue(previous), overdue(now)) {
        (false, true) => {
            ctx.event(
                tenant,
                EventType::Warning,
                status::PAYMENT_OVERDUE,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) <= Duration::from_secs_f64(1.2));
        assert!(backoff(4) >= Duration::from_secs_f64(6.4));
        assert!(backoff(100) <= Duration::from_secs(360));
        assert!(backoff(100) >= Duration::from_secs(240));
    }
}
