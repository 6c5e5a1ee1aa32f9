//! Wiring: the Tenant controller (watches, concurrency) run while this replica leads.

use std::future::Future;
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    LimitRange, Namespace, PersistentVolumeClaim, ResourceQuota, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use stackplane_crds::labels::{MANAGED_BY, MANAGED_BY_VALUE, TENANT};
use stackplane_crds::{Platform, Tenant, TenantBackup};
use tokio::sync::{oneshot, watch};

use crate::events::EventRecorder;
use crate::leader::{self, LeaderError, LeaseConfig};
use crate::metrics::Metrics;
use crate::tenant::{self, Context, ReconcileConfig};

/// Name the controller reports in Events.
pub const CONTROLLER_NAME: &str = "stackplane-controller";

/// Configuration of [`run`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Most Tenants reconciled at once.
    pub concurrency: u16,
    /// Only Tenants matching this label selector (sharding; tests). `None`: every Tenant.
    pub tenant_selector: Option<String>,
    pub reconcile: ReconcileConfig,
    pub lease: LeaseConfig,
}

/// The Tenant that an object of a tenant belongs to, from its `stackplane.io/tenant` label.
pub fn tenant_of<K: Resource>(object: &K) -> Option<ObjectRef<Tenant>> {
    object.labels().get(TENANT).map(|t| ObjectRef::new(t))
}

/// Competes for the Lease and reconciles Tenants while it holds it, until `shutdown`
/// resolves; then releases the Lease.
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
    let election = leader::elect(client.clone(), &config.lease).await?;
    let mut is_leader = election.is_leader;
    loop {
        let mut stop = stop_rx.clone();
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            r = is_leader.wait_for(|l| *l) => if r.is_err() {
                tracing::error!("leader election ended unexpectedly");
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
        tracing::warn!(identity = %config.lease.identity, "lost leadership; stopped reconciling");
    }
    // Closing the channel makes the lease manager release the Lease.
    drop(is_leader);
    match tokio::time::timeout(std::time::Duration::from_secs(5), election.task).await {
        Ok(Ok(Ok(_))) => tracing::info!("lease released"),
        Ok(Ok(Err(error))) => tracing::warn!(%error, "releasing the lease failed"),
        Ok(Err(error)) => tracing::warn!(%error, "lease task failed"),
        Err(_) => tracing::warn!("lease not released within 5s"),
    }
    stopper.abort();
    Ok(())
}

async fn run_controller(
    client: Client,
    config: &Config,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let mut wc = watcher::Config::default();
    if let Some(selector) = &config.tenant_selector {
        wc = wc.labels(selector);
    }
    let recorder = EventRecorder::new(
        client.clone(),
        CONTROLLER_NAME,
        config.lease.identity.clone(),
    );
    let stop = stop.shared();
    let mut backup_config = config.reconcile.backup.clone();
    backup_config.selector = config.tenant_selector.clone();
    // One cloud provider for the cloud step, backups and the garbage collector; none with
    // `--cloud-provider none`.
    let provider = config.reconcile.cloud.as_ref().map(|c| c.provider.clone());
    let backups = crate::backup::run(
        client.clone(),
        backup_config,
        provider,
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
    let ctx = Arc::new(Context::new(
        client.clone(),
        config.reconcile.clone(),
        metrics,
        recorder,
    ));
    let controller = Controller::new(Api::<Tenant>::all(client.clone()), wc)
        .with_config(controller::Config::default().concurrency(config.concurrency));
    let tenants = controller.store();
    let children = watcher::Config::default().labels(&format!("{MANAGED_BY}={MANAGED_BY_VALUE}"));
    let c = &client;
    let tenants_controller = controller
        // A changed Platform rolls out to every tenant of that platform.
        .watches(
            Api::<Platform>::all(c.clone()),
            watcher::Config::default(),
            move |platform| {
                let name = platform.name_any();
                tenants
                    .state()
                    .into_iter()
                    .filter(|t| t.spec.platform == name)
                    .map(|t| ObjectRef::from_obj(&*t))
                    .collect::<Vec<_>>()
            },
        )
        // Drift: every child is watched by label and mapped back to its Tenant.
        .watches(Api::<Namespace>::all(c.clone()), children.clone(), |o| {
            tenant_of(&o)
        })
        .watches(
            Api::<ResourceQuota>::all(c.clone()),
            children.clone(),
            |o| tenant_of(&o),
        )
        .watches(Api::<LimitRange>::all(c.clone()), children.clone(), |o| {
            tenant_of(&o)
        })
        .watches(
            Api::<NetworkPolicy>::all(c.clone()),
            children.clone(),
            |o| tenant_of(&o),
        )
        .watches(
            Api::<ServiceAccount>::all(c.clone()),
            children.clone(),
            |o| tenant_of(&o),
        )
        .watches(Api::<Role>::all(c.clone()), children.clone(), |o| {
            tenant_of(&o)
        })
        .watches(Api::<RoleBinding>::all(c.clone()), children.clone(), |o| {
            tenant_of(&o)
        })
        .watches(Api::<Secret>::all(c.clone()), children.clone(), |o| {
            tenant_of(&o)
        })
        .watches(
            Api::<PersistentVolumeClaim>::all(c.clone()),
            children.clone(),
            |o| tenant_of(&o),
        )
        .watches(Api::<Deployment>::all(c.clone()), children.clone(), |o| {
            tenant_of(&o)
        })
        .watches(Api::<Service>::all(c.clone()), children.clone(), |o| {
            tenant_of(&o)
        })
        .watches(Api::<Ingress>::all(c.clone()), children.clone(), |o| {
            tenant_of(&o)
        })
        // A finished final backup lets a cancelled or deleting tenant go on at once.
        .watches(Api::<TenantBackup>::all(c.clone()), children, |b| {
            Some(ObjectRef::new(&b.spec.tenant))
        })
        .graceful_shutdown_on(stop)
        .run(tenant::reconcile, tenant::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "controller event");
            }
        });
    // Backups are reconciled, and orphans collected, by the same leader, for as long as it leads.
    futures::join!(tenants_controller, backups, cloud_gc);
}
