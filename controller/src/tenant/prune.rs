//! Deletes what a tenant's namespace holds, carries the tenant's labels and is no longer in its
//! plan (a component removed from the Platform, ...).

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    LimitRange, PersistentVolumeClaim, ResourceQuota, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, ListParams};
use kube::core::NamespaceResourceScope;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use stackplane_crds::labels::tenant_selector;

use super::plan::Plan;
use crate::error::{Error, Result};

/// Deletes every labelled object of the tenant that `plan` does not want; returns how many.
pub async fn prune(client: &Client, tenant: &str, plan: &Plan) -> Result<usize> {
    let ns = plan.namespace_name();
    let selector = tenant_selector(tenant);
    let mut pruned = 0;
    pruned += prune_kind::<ResourceQuota>(client, ns, &selector, plan).await?;
    pruned += prune_kind::<LimitRange>(client, ns, &selector, plan).await?;
    pruned += prune_kind::<NetworkPolicy>(client, ns, &selector, plan).await?;
    pruned += prune_kind::<ServiceAccount>(client, ns, &selector, plan).await?;
    pruned += prune_kind::<Role>(client, ns, &selector, plan).await?;
    pruned += prune_kind::<RoleBinding>(client, ns, &selector, plan).await?;
    pruned += prune_kind::<Secret>(client, ns, &selector, plan).await?;
    pruned += prune_kind::<Deployment>(client, ns, &selector, plan).await?;
    pruned += prune_kind::<Service>(client, ns, &selector, plan).await?;
    pruned += prune_kind::<PersistentVolumeClaim>(client, ns, &selector, plan).await?;
    pruned += prune_kind::<Ingress>(client, ns, &selector, plan).await?;
    Ok(pruned)
}

async fn prune_kind<K>(client: &Client, ns: &str, selector: &str, plan: &Plan) -> Result<usize>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + k8s_openapi::Resource
        + DeserializeOwned
        + Clone
        + Debug,
{
    let kind = K::kind(&());
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let list = api
        .list_metadata(&ListParams::default().labels(selector))
        .await?;
    let mut pruned = 0;
    for item in list.items {
        let Some(name) = item.metadata.name else {
            continue;
        };
        // What a backup or restore made (dump claim, restored claims) is not the plan's to prune.
        let made_by_backup = item
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(crate::backup::BACKUP_LABEL));
        if item.metadata.deletion_timestamp.is_some() || made_by_backup || plan.wants(&kind, &name)
        {
            continue;
        }
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {
                tracing::info!(namespace = %ns, kind = %kind, object = %name, "pruned");
                pruned += 1;
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => {
                return Err(Error::Prune {
                    kind: <K as k8s_openapi::Resource>::KIND,
                    name,
                    source,
                })
            }
        }
    }
    Ok(pruned)
}
