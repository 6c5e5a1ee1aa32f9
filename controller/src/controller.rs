//! Wiring: the Tenant controller (watches, concurrency) run while this replica leads.

use std::future::Future;
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{predicates, watcher, Predicate, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use stackplane_core::contract::labels::{MANAGED_BY, MANAGED_BY_VALUE};
use stackplane_crds::{Platform, PlatformRevision, TenantBackup};
use tokio::sync::{oneshot, watch};

use crate::events::EventRecorder;
use crate::leader::{self, LeaderError, LeaseConfig};
use crate::metrics::Metrics;
use crate::tenant::applied::drift_triggers;
use crate::tenant::{self, Context, ReconcileConfig};
use stackplane_core::cache::CachedTenant;

/// The Tenant that an object of a tenant belongs to (defined with the registry of child kinds).
pub use crate::tenant::children::tenant_of;

/// Name the controller reports in Events.
pub const CONTROLLER_NAME: &str = "stackplane-controller";

/// Objects per page of the watches' (re-)lists. A page is held whole, managedFields included,
/// until its objects are trimmed: after a restart at 10,000 tenants a dozen watches list at once,
/// and at kube's default of 500 those pages were the controller's largest allocations. The extra
/// list requests (about 100 per kind at 10,000 tenants) are a fraction of one resync's.
const LIST_PAGE: u32 = 100;

/// Configuration of [`run`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Most Tenants reconciled at once.
    pub concurrency: u16,
    /// Only Tenants matching this label selector (sharding; tests). `None`: every Tenant.
    pub tenant_selector: Option<String>,
    pub reconcile: ReconcileConfig,
    pub lease: LeaseConfig,
    pub rollout: crate::rollout::RolloutConfig,
}

/// Competes for the Lease and reconciles Tenants while it holds it, until `shutdown`
/// resolves; then releases the Lease. Returns an error (after logging it and marking the
/// process unhealthy) when the election or the controller stream stops on its own: the
/// process must then exit rather than stay up, healthy-looking and idle.
pub async fn run(
    client: Client,
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), LeaderError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopper = tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let election = leader::elect(client.clone(), &config.lease, metrics.health().clone()).await?;
    let mut is_leader = election.is_leader;
    let mut outcome = Ok(());
    loop {
        let mut stop = stop_rx.clone();
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            r = is_leader.wait_for(|l| *l) => if r.is_err() {
                tracing::error!("leader election ended unexpectedly");
                metrics.health().stopped("leader election", "its task ended");
                outcome = Err(LeaderError::ElectionStopped);
                break;
            },
        }
        tracing::info!(identity = %config.lease.identity, lease = %config.lease.name, "became leader");
        metrics.set_leader(true);
        let (lost_tx, lost_rx) = oneshot::channel::<()>();
        let mut leader_watch = is_leader.clone();
        let mut stop_watch = stop_rx.clone();
        let watcher_task = tokio::spawn(async move {
            tokio::select! {
                _ = leader_watch.wait_for(|l| !*l) => {},
                _ = stop_watch.wait_for(|s| *s) => {},
            }
            let _ = lost_tx.send(());
        });
        run_controller(client.clone(), &config, metrics.clone(), async move {
            let _ = lost_rx.await;
        })
        .await;
        watcher_task.abort();
        metrics.set_leader(false);
        if *stop_rx.borrow() {
            break;
        }
        if *is_leader.borrow() {
            // Neither shutdown nor a lost Lease ended it: the stream itself stopped.
            tracing::error!(identity = %config.lease.identity, "the controller stream stopped while leading");
            metrics
                .health()
                .stopped("controller stream", "it ended while leading");
            outcome = Err(LeaderError::ControllerStopped);
            break;
        }
        tracing::warn!(identity = %config.lease.identity, "lost leadership; stopped reconciling");
    }
    // Closing the channel ends the campaign, which releases the Lease.
    drop(is_leader);
    match tokio::time::timeout(std::time::Duration::from_secs(15), election.task).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "lease task failed"),
        Err(_) => tracing::warn!("leader election did not end within 15s"),
    }
    stopper.abort();
    outcome
}

/// What of a Platform its tenants' reconciles depend on: the spec's generation and which
/// revisions are current and being rolled out (where a new tenant starts).
type PlatformKey = (Option<i64>, Option<String>, Option<String>);

fn platform_key(p: &Platform) -> PlatformKey {
    let status = p.status.as_ref();
    (
        p.metadata.generation,
        status.and_then(|s| s.current_revision.clone()),
        status.and_then(|s| s.update_revision.clone()),
    )
}

async fn run_controller(
    client: Client,
    config: &Config,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let mut wc = watcher::Config::default().page_size(LIST_PAGE);
    if let Some(selector) = &config.tenant_selector {
        wc = wc.labels(selector);
    }
    let recorder = EventRecorder::new(
        client.clone(),
        CONTROLLER_NAME,
        config.lease.identity.clone(),
    );
    // The backup side stops with the Tenant controller, also when its stream ends on its own
    // (so `run` sees the end instead of waiting on the backups forever).
    let (ended_tx, ended_rx) = oneshot::channel::<()>();
    let stop = futures::future::select(Box::pin(stop), Box::pin(ended_rx.map(|_| ())))
        .map(|_| ())
        .shared();
    // The Tenants' cache holds them in their compact form (`CachedTenant`: status as text, no
    // managedFields), and only what can change a reconcile's outcome triggers one: spec
    // (generation), labels, annotations (rollout moves, billing marks), finalizers and
    // deletion. The controller's own status writes do not re-reconcile the tenant.
    let (tenants, tenants_writer) = kube::runtime::reflector::store::<CachedTenant>();
    let tenant_events = kube::runtime::reflector(
        tenants_writer,
        watcher(Api::<CachedTenant>::all(client.clone()), wc).default_backoff(),
    )
    .applied_objects()
    .predicate_filter(
        predicates::generation
            .combine(CachedTenant::labels_hash)
            .combine(predicates::annotations)
            .combine(predicates::finalizers)
            .combine(|t: &CachedTenant| {
                t.metadata
                    .deletion_timestamp
                    .as_ref()
                    .map(|d| d.0.as_second() as u64)
            }),
        Default::default(),
    );
    let mut backup_config = config.reconcile.backup.clone();
    backup_config.selector = config.tenant_selector.clone();
    // One cloud provider for the cloud step, backups and the garbage collector; none with
    // `--cloud-provider none`.
    let provider = config.reconcile.cloud.as_ref().map(|c| c.provider.clone());
    let backups = crate::backup::run(
        client.clone(),
        backup_config,
        provider,
        tenants.clone(),
        metrics.clone(),
        recorder.clone(),
        stop.clone(),
    );
    let cloud_gc = crate::cloud::gc::for_leader(
        client.clone(),
        config.reconcile.cloud.as_ref(),
        &config.lease,
        metrics.clone(),
        recorder.clone(),
        stop.clone(),
    );
    // The PlatformRevisions, cached for the reconciler (each tenant is planned from one) and
    // the rollouts.
    let (revisions, revisions_writer) = kube::runtime::reflector::store::<PlatformRevision>();
    let revisions_cache = kube::runtime::reflector(
        revisions_writer,
        watcher(
            Api::<PlatformRevision>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .take_until(stop.clone())
    .for_each(|_| futures::future::ready(()));
    // The Platforms, cached for the reconciler (a reconcile no longer reads its Platform) and
    // the trigger of their tenants' reconciles below.
    let (platforms, platforms_writer) = kube::runtime::reflector::store::<Platform>();
    let platform_events = kube::runtime::reflector(
        platforms_writer,
        watcher(
            Api::<Platform>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(|p| p.metadata.managed_fields = None),
    )
    .applied_objects();
    // The Tenant CRD's metadata (watched by name): a CRD being deleted turns every Tenant's
    // cleanup into a release that destroys nothing (`tenant::guard`).
    let (tenant_crd, tenant_crd_writer) =
        kube::runtime::reflector::store::<tenant::guard::CrdMeta>();
    let tenant_crd_cache = kube::runtime::reflector(
        tenant_crd_writer,
        watcher(
            Api::<tenant::guard::CrdMeta>::all(client.clone()),
            watcher::Config::default().fields(&format!(
                "metadata.name={}",
                tenant::guard::tenant_crd_name()
            )),
        ),
    )
    .default_backoff()
    .take_until(stop.clone())
    .for_each(|_| futures::future::ready(()));
    let ctx = Context::new(
        client.clone(),
        config.reconcile.clone(),
        metrics.clone(),
        recorder.clone(),
    )
    .with_revisions(revisions.clone())
    .with_platforms(platforms)
    .with_tenants(tenants.clone())
    .with_tenant_crd(tenant_crd);
    let applied = ctx.applied.clone();
    let reports = ctx.reports.clone();
    let passes = ctx.passes.clone();
    let failures = ctx.failures.clone();
    let ctx = Arc::new(ctx);
    let controller = Controller::for_stream(tenant_events, tenants.clone())
        .with_config(controller::Config::default().concurrency(config.concurrency))
        // The periodic resync: each tenant once per period, spread over it (no timer per tenant).
        .reconcile_on(tenant::resync::sweep(
            tenants.clone(),
            passes,
            failures,
            config.reconcile.requeue,
        ));
    let rollouts = crate::rollout::run(
        client.clone(),
        &config.rollout,
        config
            .rollout
            .platform_selector
            .clone()
            .or_else(|| config.tenant_selector.clone()),
        tenants.clone(),
        metrics,
        recorder,
        stop.clone(),
    );
    // Only a spec change (a new generation) or new revisions concern the tenants; the
    // rollout's progress writes would otherwise re-reconcile every tenant of the platform
    // every few seconds.
    let seen = std::sync::Mutex::new(std::collections::HashMap::<String, PlatformKey>::new());
    let children = watcher::Config::default()
        .labels(&format!("{MANAGED_BY}={MANAGED_BY_VALUE}"))
        .page_size(LIST_PAGE);
    let c = &client;
    // A changed Platform re-plans its tenants (each from the revision it runs or is moved to).
    let mut controller = controller
        .watches_stream(platform_events, move |platform| {
            let name = platform.name_any();
            let key = platform_key(&platform);
            let before = seen
                .lock()
                .map(|mut s| s.insert(name.clone(), key.clone()))
                .unwrap_or_default();
            if before == Some(key) {
                return Vec::new();
            }
            tenants
                .state()
                .into_iter()
                .filter(|t| t.spec.platform == name)
                .map(|t| ObjectRef::from_obj(&*t))
                .collect::<Vec<_>>()
        })
        // Drift: the namespace and every watched child kind is watched by label (metadata
        // only) and mapped back to its Tenant.
        .watches_stream(
            drift_triggers(
                "Namespace",
                watcher(
                    Api::<PartialObjectMeta<Namespace>>::all(c.clone()),
                    children.clone(),
                ),
                applied.clone(),
                false,
            ),
            |o| tenant::children::tenant_of(&o),
        );
    // Kinds the registry does not watch (Secrets: no cluster-wide Secret access) are checked by
    // the reconcile itself (`tenant::children::unwatched_drift`).
    for kind in tenant::children::all_ops().filter(|k| k.kind.watched()) {
        controller = (kind.watch)(
            controller,
            c.clone(),
            children.clone(),
            applied.clone(),
            reports.clone(),
        );
    }
    let tenants_controller = controller
        // A finished final backup lets a cancelled or deleting tenant go on at once.
        .watches(Api::<TenantBackup>::all(c.clone()), children, |b| {
            Some(ObjectRef::new(&b.spec.tenant))
        })
        .graceful_shutdown_on(stop)
        .run(tenant::reconcile, tenant::error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok(_) => {}
                // Reconcile failures are logged by the reconciler itself.
                Err(controller::Error::ReconcilerFailed(..)) => {}
                // A trigger for a tenant this cache does not hold: the child watches list every
                // stackplane object, so a sharded controller hears of other shards' tenants, and
                // every controller of a deleted tenant's last children. Expected, not a fault.
                Err(controller::Error::ObjectNotFound(object)) => {
                    tracing::debug!(%object, "trigger for a tenant not in this controller's cache")
                }
                Err(error) => tracing::warn!(%error, "controller stream error"),
            }
        })
        .map(move |()| {
            let _ = ended_tx.send(());
        });
    // Backups are reconciled, and orphans collected, by the same leader, for as long as it leads.
    futures::join!(
        tenants_controller,
        backups,
        cloud_gc,
        rollouts,
        revisions_cache,
        tenant_crd_cache
    );
}
