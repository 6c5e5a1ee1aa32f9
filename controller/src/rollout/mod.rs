//! Fleet rollouts: a changed Platform becomes a new `PlatformRevision`, which reaches the
//! platform's tenants in health-gated waves (`Platform.spec.rollout`). One pass per Platform:
//!
//! `revision → control annotation → tenants' health → plan (pure, [`waves::step`]) → moves →
//! status → revisions collected`
//!
//! A tenant is moved by annotating it with the revision it is to run
//! ([`TARGET_REVISION`](stackplane_core::contract::labels::TARGET_REVISION)); the Tenant reconciler plans
//! from that revision and reports in `status.platformRevision` once its Deployments rolled out.
//! Everything the rollout needs to resume lives in the Platform's status and the tenants'
//! annotations, so a restarted controller goes on where the last one stopped.

pub mod revisions;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Deserialize;
use serde_json::json;
use stackplane_core::contract::labels::{REVISION_MOVED_AT, ROLLOUT_CONTROL, TARGET_REVISION};
use stackplane_crds::{Platform, RolloutPhase, Tenant, TenantPhase};

use crate::events::EventRecorder;
use crate::metrics::Metrics;
use stackplane_core::cache::CachedTenant;
use stackplane_core::rollout::waves;
use waves::{Control, Health, Part, TenantView};

/// Field manager of the Platform status the rollout writes.
pub const FIELD_MANAGER: &str = stackplane_core::contract::field_managers::ROLLOUT;

/// Settings of the rollout controller.
#[derive(Debug, Clone)]
pub struct RolloutConfig {
    /// Roll out only Platforms matching this label selector. `None`: the controller's tenant
    /// selector, or every Platform when it has none (a sharded controller rolls out the
    /// Platforms labelled like its tenants).
    pub platform_selector: Option<String>,
    /// How often a rollout in progress is looked at (tenants' health changes are not watched).
    pub poll: Duration,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            platform_selector: None,
            poll: Duration::from_secs(2),
        }
    }
}

/// Errors of one rollout pass.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl RolloutError {
    /// Stable label of the error for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            RolloutError::Kube(_) => "rollout_kube",
        }
    }
}

/// What every rollout pass shares.
pub struct RolloutContext {
    client: Client,
    tenants: Store<CachedTenant>,
    metrics: Arc<Metrics>,
    recorder: EventRecorder,
    poll: Duration,
    /// Moves this controller made that the tenant cache may not show yet: tenant → (revision,
    /// when). Without it a pass right after a move would see the tenant unmoved and count
    /// (and move) it again.
    recent_moves: Mutex<HashMap<String, (String, Timestamp)>>,
}

/// Rolls out the Platforms `selector` matches, until `stop`. `tenants` must be the Tenant
/// controller's cache (its selector decides which tenants a rollout sees).
pub async fn run(
    client: Client,
    config: &RolloutConfig,
    selector: Option<String>,
    tenants: Store<CachedTenant>,
    metrics: Arc<Metrics>,
    recorder: EventRecorder,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    // A pass over an empty cache would see a platform without tenants and call it done.
    if tenants.wait_until_ready().await.is_err() {
        tracing::warn!("rollouts not started: the tenant cache never filled");
        return;
    }
    let mut wc = watcher::Config::default();
    if let Some(s) = &selector {
        wc = wc.labels(s);
    }
    let ctx = Arc::new(RolloutContext {
        client: client.clone(),
        tenants,
        metrics,
        recorder,
        poll: config.poll,
        recent_moves: Mutex::new(HashMap::new()),
    });
    Controller::new(Api::<Platform>::all(client), wc)
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

fn error_policy(platform: Arc<Platform>, error: &RolloutError, ctx: Arc<RolloutContext>) -> Action {
    ctx.metrics.error(error.metric_label());
    tracing::warn!(platform = %platform.name_any(), %error, "rollout pass failed");
    Action::requeue(ctx.poll.max(Duration::from_secs(5)))
}

/// One pass over one Platform.
async fn reconcile(
    cached: Arc<Platform>,
    ctx: Arc<RolloutContext>,
) -> Result<Action, RolloutError> {
    let name = cached.name_any();
    let api: Api<Platform> = Api::all(ctx.client.clone());
    // The status this pass continues from must be the last one written, not the cache's.
    let Some(platform) = api.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    if platform.metadata.deletion_timestamp.is_some()
        || !stackplane_core::tenant::validate::platform_problems(&platform.spec).is_empty()
    {
        return Ok(Action::await_change());
    }
    let policy = platform.spec.rollout.clone().unwrap_or_default();
    let all_revisions = revisions::of_platform(&ctx.client, &name).await?;
    let (update, created) = revisions::ensure(&ctx.client, &platform, &all_revisions).await?;
    let update_name = update.name_any();
    if created {
        tracing::info!(platform = %name, revision = %update_name, sequence = update.spec.revision, "new platform revision");
        event(
            &ctx,
            &platform,
            EventType::Normal,
            "RevisionCreated",
            format!("revision {} ({update_name})", update.spec.revision),
        )
        .await;
    }
    let status = platform.status.clone().unwrap_or_default();
    let valid = valid_condition(&api, &platform, &status).await?;
    let current = status.current_revision.clone();
    let control_value = platform.annotations().get(ROLLOUT_CONTROL).cloned();
    let control = control_value.as_deref().and_then(Control::parse);
    let now = Timestamp::now();
    let tenants: Vec<Arc<CachedTenant>> = ctx
        .tenants
        .state()
        .into_iter()
        .filter(|t| t.spec.platform == name)
        .collect();
    let views: Vec<TenantView> = {
        let mut recent = ctx
            .recent_moves
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tenants.iter().map(|t| view(t, &mut recent)).collect()
    };
    tracing::debug!(
        platform = %name,
        tenants = views.len(),
        taking_part = views.iter().filter(|v| v.part == Part::Takes).count(),
        "rollout pass"
    );
    let decision = waves::step(&waves::Inputs {
        policy: &policy,
        update: &update_name,
        current: current.as_deref(),
        tenants: &views,
        previous: status.rollout.as_ref(),
        control,
        now,
    });
    let tenant_api: Api<Tenant> = Api::all(ctx.client.clone());
    for m in &decision.moves {
        let patch = json!({"metadata": {"annotations": {
            TARGET_REVISION: m.to,
            REVISION_MOVED_AT: now.to_string(),
        }}});
        tenant_api
            .patch(&m.tenant, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        ctx.recent_moves
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(m.tenant.clone(), (m.to.clone(), now));
        tracing::info!(platform = %name, tenant = %m.tenant, revision = %m.to, "tenant moved");
    }
    let phase = decision.status.phase;
    let new_current = if phase == RolloutPhase::Complete {
        Some(update_name.clone())
    } else {
        current.clone()
    };
    let body = json!({
        "apiVersion": Platform::api_version(&()),
        "kind": Platform::kind(&()),
        "status": {
            "observedGeneration": platform.metadata.generation,
            "tenants": tenants.len(),
            "currentRevision": new_current,
            "updateRevision": update_name,
            "rollout": decision.status,
            "conditions": [valid],
        }
    });
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    if control_value.is_some() {
        let patch = json!({"metadata": {"annotations": {ROLLOUT_CONTROL: null}}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        if control.is_none() {
            event(
                &ctx,
                &platform,
                EventType::Warning,
                "UnknownRolloutControl",
                format!(
                    "{ROLLOUT_CONTROL}={:?} is not pause, resume or rollback; removed",
                    control_value.unwrap_or_default()
                ),
            )
            .await;
        }
    }
    for n in &decision.notices {
        let type_ = if n.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        tracing::info!(platform = %name, revision = %update_name, reason = n.reason, message = %n.message, "rollout");
        event(&ctx, &platform, type_, n.reason, n.message.clone()).await;
    }
    record_metrics(&ctx, &name, &update_name, &views, &decision);
    // Revisions no tenant runs, moves to or is pinned to, beyond the history limit.
    let mut in_use: HashSet<String> = [update_name.clone()].into();
    in_use.extend(new_current);
    for v in &views {
        in_use.extend(v.tenant.spec.platform_revision.clone());
        in_use.extend(v.tenant.annotations().get(TARGET_REVISION).cloned());
        in_use.extend(v.running.clone());
    }
    in_use.extend(decision.moves.iter().map(|m| m.to.clone()));
    let gone = revisions::collect(
        &ctx.client,
        &all_revisions,
        &in_use,
        policy.revision_history_limit,
    )
    .await?;
    if !gone.is_empty() {
        tracing::info!(platform = %name, revisions = ?gone, "old revisions collected");
    }
    Ok(match phase {
        RolloutPhase::Progressing => Action::requeue(ctx.poll),
        _ => Action::requeue(ctx.poll.max(Duration::from_secs(30))),
    })
}

/// The Platform's `Valid` condition as to prices: False, reason `PriceConflict`, naming the
/// owner, when it lists a price another Platform listed first. The controller has no record of
/// when each Platform first listed a price (the api keeps one in Postgres), so it applies the
/// same rule, `stackplane_core::billing::prices::owner`, without first-seen times: creation
/// time, then name (see that module for why both agree in the normal case). Every Platform is
/// listed, not only those this shard rolls out, since a copy may carry another shard's labels.
async fn valid_condition(
    api: &Api<Platform>,
    platform: &Platform,
    status: &stackplane_crds::PlatformStatus,
) -> Result<serde_json::Value, RolloutError> {
    use stackplane_core::billing::prices;
    use stackplane_core::contract::conditions::{REASON_PRICE_CONFLICT, VALID};
    let all = api.list(&Default::default()).await?;
    let all: Vec<&Platform> = all.items.iter().collect();
    let conflicts = prices::conflicts(platform, &all, |_, _| None);
    let (state, reason, message) = if conflicts.is_empty() {
        (
            "True",
            "Valid",
            "no price of this Platform is listed by another Platform first".to_owned(),
        )
    } else {
        (
            "False",
            REASON_PRICE_CONFLICT,
            prices::conflict_message(&conflicts),
        )
    };
    if !conflicts.is_empty() {
        tracing::warn!(platform = %platform.name_any(), owners = ?conflicts.iter().map(|c| &c.owner).collect::<Vec<_>>(), "price conflict");
    }
    // The transition time stays while the status does.
    let since = status
        .conditions
        .iter()
        .find(|c| c.type_ == VALID && c.status == state)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::now()));
    Ok(json!({
        "type": VALID,
        "status": state,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": platform.metadata.generation,
    }))
}

/// What the planner sees of `t`. A tenant without a target revision yet is left to the Tenant
/// reconciler, which gives it the Platform's newest completed revision first.
fn view(t: &Arc<CachedTenant>, recent: &mut HashMap<String, (String, Timestamp)>) -> TenantView {
    let name = t.metadata.name.as_deref().unwrap_or_default();
    let annotations = t.annotations();
    let status = t.status_part::<Progress>();
    let running = status.as_ref().and_then(|s| s.platform_revision.clone());
    let mut target = annotations.get(TARGET_REVISION).cloned();
    let mut moved_at = annotations
        .get(REVISION_MOVED_AT)
        .and_then(|s| s.parse::<Timestamp>().ok());
    if let Some((to, at)) = recent.get(name) {
        if target.as_ref() == Some(to) {
            // The cache shows the move now.
            recent.remove(name);
        } else {
            target = Some(to.clone());
            moved_at = Some(*at);
        }
    }
    let moved_at = moved_at.or_else(|| t.metadata.creation_timestamp.as_ref().map(|c| c.0));
    let part = if t.spec.platform_revision.is_some() {
        Part::Pinned
    } else if t.spec.paused || t.metadata.deletion_timestamp.is_some() || target.is_none() {
        Part::Skipped
    } else {
        Part::Takes
    };
    TenantView {
        tenant: t.clone(),
        part,
        target,
        running,
        moved_at,
        phase: status.as_ref().and_then(|s| s.phase),
        ready_since: status.and_then(|s| s.ready_since.map(|r| r.0)),
    }
}

/// What the planner reads of a tenant's status (the rest of it stays unparsed in the cache).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Progress {
    platform_revision: Option<String>,
    phase: Option<TenantPhase>,
    ready_since: Option<Time>,
}

fn record_metrics(
    ctx: &RolloutContext,
    platform: &str,
    revision: &str,
    views: &[TenantView],
    decision: &waves::Decision,
) {
    let mut counts = [
        ("old", 0),
        ("moving", 0),
        ("healthy", 0),
        ("failed", 0),
        ("pinned", 0),
    ];
    for (t, h) in views.iter().zip(&decision.health) {
        let i = match (t.part, h) {
            (Part::Pinned, _) => 4,
            (_, Health::Old) => 0,
            (_, Health::Moving) => 1,
            (_, Health::Healthy) => 2,
            (_, Health::Failed) => 3,
        };
        counts[i].1 += 1;
    }
    ctx.metrics.rollout(platform, revision, &counts);
}

async fn event(
    ctx: &RolloutContext,
    platform: &Platform,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let e = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Rollout".to_owned(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&e, &platform.object_ref(&())).await {
        tracing::warn!(platform = %platform.name_any(), %error, "cannot publish event");
    }
}
