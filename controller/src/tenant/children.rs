//! The registry of the kinds of object a tenant's namespace holds: the one list that apply,
//! prune and the controller's watches all read. A kind added here is applied, pruned (or, for
//! claims, retained) and watched for drift; a kind missing here is none of these, and the unit
//! tests below fail when the plan makes an object of a kind that is not registered.

use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    LimitRange, PersistentVolumeClaim, ResourceQuota, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, Resource, ResourceExt};
use stackplane_core::contract::labels::{tenant_selector, TENANT};

use super::applied::{drift_triggers, written_by_others, Applied};
use super::prune::{self, Pruned};
use super::reports::{DeploymentReport, DeploymentReports};
use crate::error::Result;
use stackplane_core::cache::CachedTenant;
use stackplane_core::children::{ChildKind, Unwanted};
use stackplane_core::tenant::plan::Plan;

use crate::k8s::Child;

/// Server-side apply of one planned object (as JSON) into namespace `ns` with the given
/// parameters. Of the API server's answer only a Deployment's report is kept (its status as of
/// the apply, which the tenant's status reads next); the rest is dropped unread.
pub type ApplyFn = for<'a> fn(
    &'a Client,
    &'a str,
    &'a str,
    &'a serde_json::Value,
    &'a PatchParams,
) -> BoxFuture<'a, kube::Result<Option<DeploymentReport>>>;
/// Prune (or retain) what the plan does not want, among the tenant's objects of one kind.
pub type PruneFn =
    for<'a> fn(&'a Client, &'a str, &'a str, &'a Plan) -> BoxFuture<'a, Result<Pruned>>;
/// Adds a watch of one kind (by the given label selector) to the Tenant controller; drift it
/// sees is marked in the [`Applied`] state, and what Deployments report is kept in the
/// [`DeploymentReports`].
pub type WatchFn = fn(
    Controller<CachedTenant>,
    Client,
    watcher::Config,
    Arc<Applied>,
    Arc<DeploymentReports>,
) -> Controller<CachedTenant>;

/// Whether the planned object of one kind named `name` in namespace `ns` drifted: it is
/// missing, being deleted, or was last written by someone else (`super::applied`). How the
/// reconcile finds drift of the kinds no watch covers.
pub type DriftFn = for<'a> fn(&'a Client, &'a str, &'a str) -> BoxFuture<'a, kube::Result<bool>>;

/// The typed executors of one kind of the registry (`stackplane_core::children`).
pub struct KindOps {
    pub kind: ChildKind,
    pub apply: ApplyFn,
    pub prune: PruneFn,
    pub watch: WatchFn,
    pub drifted: DriftFn,
}

impl KindOps {
    const fn of<K: Child>(kind: ChildKind, unwanted: Unwanted) -> KindOps {
        KindOps {
            kind,
            apply: apply_kind::<K>,
            prune: match unwanted {
                Unwanted::Delete => prune::delete_unwanted::<K> as PruneFn,
                Unwanted::Retain => prune::retain_unwanted::<K> as PruneFn,
            },
            watch: watch_kind::<K>,
            drifted: drifted_kind::<K>,
        }
    }
}

/// The executors of `kind`. Exhaustive: a kind added to the registry without executors does
/// not compile. Whether an unwanted object is deleted or retained, and which kinds are watched
/// whole, is the registry's word.
pub fn ops(kind: ChildKind) -> KindOps {
    let u = kind.unwanted();
    let ops = match kind {
        ChildKind::ResourceQuota => KindOps::of::<ResourceQuota>(kind, u),
        ChildKind::LimitRange => KindOps::of::<LimitRange>(kind, u),
        ChildKind::NetworkPolicy => KindOps::of::<NetworkPolicy>(kind, u),
        ChildKind::ServiceAccount => KindOps::of::<ServiceAccount>(kind, u),
        ChildKind::Role => KindOps::of::<Role>(kind, u),
        ChildKind::RoleBinding => KindOps::of::<RoleBinding>(kind, u),
        ChildKind::Secret => KindOps::of::<Secret>(kind, u),
        ChildKind::PersistentVolumeClaim => KindOps::of::<PersistentVolumeClaim>(kind, u),
        ChildKind::Deployment => KindOps::of::<Deployment>(kind, u),
        ChildKind::Service => KindOps::of::<Service>(kind, u),
        ChildKind::Ingress => KindOps::of::<Ingress>(kind, u),
    };
    if kind.watched_whole() {
        KindOps {
            watch: watch_deployments,
            ..ops
        }
    } else {
        ops
    }
}

/// The executors of every kind, in the registry's (apply) order.
pub fn all_ops() -> impl Iterator<Item = KindOps> {
    ChildKind::ALL.into_iter().map(ops)
}

/// Prunes every registered kind of the tenant's namespace: deletes what the plan no longer
/// wants, retains claims (see `super::prune`).
pub async fn prune(client: &Client, tenant: &str, plan: &Plan) -> Result<Pruned> {
    let ns = plan.namespace_name();
    let selector = tenant_selector(tenant);
    let mut pruned = Pruned::default();
    for kind in all_ops() {
        pruned.add((kind.prune)(client, ns, &selector, plan).await?);
    }
    pruned.retained.sort();
    Ok(pruned)
}

/// Whether any planned object of a kind the controller does not watch (Secrets, see
/// `ChildKind::watched`) drifted: one metadata read per such object. The reconcile asks this
/// when the plan is otherwise up to date, so such drift is set right on the tenant's next pass
/// (the periodic resync at the latest) instead of by a watch event. A read that fails counts as
/// drift: the apply that follows reports the error.
pub async fn unwatched_drift(client: &Client, plan: &Plan) -> bool {
    let ns = plan.namespace_name();
    for object in plan.objects.iter().filter(|o| !o.child_kind().watched()) {
        let kind = object.child_kind();
        match (ops(kind).drifted)(client, ns, object.name()).await {
            Ok(false) => {}
            Ok(true) => {
                tracing::info!(namespace = %ns, kind = %kind, object = %object.name(), "unwatched object drifted");
                return true;
            }
            Err(error) => {
                tracing::warn!(namespace = %ns, kind = %kind, object = %object.name(), %error, "reading an unwatched object failed");
                return true;
            }
        }
    }
    false
}

/// The Tenant that an object of a tenant belongs to, from its `stackplane.io/tenant` label.
pub fn tenant_of<K: Resource>(object: &K) -> Option<ObjectRef<CachedTenant>> {
    object.labels().get(TENANT).map(|t| ObjectRef::new(t))
}

fn apply_kind<'a, K: Child>(
    client: &'a Client,
    ns: &'a str,
    name: &'a str,
    object: &'a serde_json::Value,
    params: &'a PatchParams,
) -> BoxFuture<'a, kube::Result<Option<DeploymentReport>>> {
    Box::pin(async move {
        let api: Api<K> = Api::namespaced(client.clone(), ns);
        let applied = api.patch(name, params, &Patch::Apply(object)).await?;
        // The one kind whose answer is read; `Any` tells it apart without a trait every kind
        // would implement.
        Ok((&applied as &dyn std::any::Any)
            .downcast_ref::<Deployment>()
            .map(DeploymentReport::of))
    })
}

fn drifted_kind<'a, K: Child>(
    client: &'a Client,
    ns: &'a str,
    name: &'a str,
) -> BoxFuture<'a, kube::Result<bool>> {
    Box::pin(async move {
        let api: Api<K> = Api::namespaced(client.clone(), ns);
        Ok(match api.get_metadata_opt(name).await? {
            None => true,
            Some(o) => {
                o.metadata.deletion_timestamp.is_some() || written_by_others(o.managed_fields())
            }
        })
    })
}

/// Metadata only: the reconcile reads what it needs itself, so the watch only has to say which
/// tenant to look at (and whether it drifted), and never holds a full object.
fn watch_kind<K: Child>(
    controller: Controller<CachedTenant>,
    client: Client,
    config: watcher::Config,
    applied: Arc<Applied>,
    _: Arc<DeploymentReports>,
) -> Controller<CachedTenant> {
    let events = watcher(Api::<PartialObjectMeta<K>>::all(client), config);
    let kind = <K as k8s_openapi::Resource>::KIND;
    controller.watches_stream(drift_triggers(kind, events, applied, false), |o| {
        tenant_of(&o)
    })
}

/// Deployments are watched whole, because the tenant's status reads their status: each event's
/// report is kept (a few numbers, not the object) and the event goes on as metadata. A report
/// that changed triggers the tenant.
fn watch_deployments(
    controller: Controller<CachedTenant>,
    client: Client,
    config: watcher::Config,
    applied: Arc<Applied>,
    reports: Arc<DeploymentReports>,
) -> Controller<CachedTenant> {
    let events = reports.track(watcher(Api::<Deployment>::all(client), config));
    controller.watches_stream(drift_triggers("Deployment", events, applied, true), |o| {
        tenant_of(&o)
    })
}
