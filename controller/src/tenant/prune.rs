//! What a tenant's namespace holds, carries the tenant's labels and is no longer in its plan
//! (a component removed from the Platform, ...): deleted, except volume claims. One function
//! per policy, generic over the kind; `super::children` says which kind gets which and runs
//! them all. A claim holds
//! customer data, so one the Platform stopped naming is never deleted implicitly: it is
//! labelled `stackplane.io/retained=true`, listed in `status.retainedVolumes` and goes only
//! with the tenant's namespace (deletion policy `Delete`, after the final backup). A claim the
//! plan names again loses the label.

use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use stackplane_core::contract::labels::{BACKUP, RETAINED};

use crate::error::{Error, Result};
use crate::k8s::{is_not_found, Child, FIELD_MANAGER};
use stackplane_core::tenant::plan::Plan;

/// What pruning did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Objects deleted.
    pub deleted: usize,
    /// Every claim kept although the plan does not name it, sorted.
    pub retained: Vec<String>,
    /// The claims among them that this prune labelled retained (one Event each).
    pub newly_retained: Vec<String>,
}

impl Pruned {
    /// Adds what pruning another kind did.
    pub fn add(&mut self, other: Pruned) {
        self.deleted += other.deleted;
        self.retained.extend(other.retained);
        self.newly_retained.extend(other.newly_retained);
    }
}

/// The tenant's objects of kind `K` that are the plan's to judge, by name and labels.
async fn candidates<K: Child>(
    client: &Client,
    ns: &str,
    selector: &str,
) -> Result<Vec<(String, bool)>> {
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let list = api
        .list_metadata(&ListParams::default().labels(selector))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|item| item.metadata.deletion_timestamp.is_none())
        .filter_map(|item| {
            let labels = item.metadata.labels.unwrap_or_default();
            // What a backup or restore made (dump claim, restored claims) is not the plan's.
            if labels.contains_key(BACKUP) {
                return None;
            }
            let retained = labels.get(RETAINED).is_some_and(|v| v == "true");
            item.metadata.name.map(|n| (n, retained))
        })
        .collect())
}

/// Deletes the tenant's objects of kind `K` that the plan does not want.
pub fn delete_unwanted<'a, K: Child>(
    client: &'a Client,
    ns: &'a str,
    selector: &'a str,
    plan: &'a Plan,
) -> futures::future::BoxFuture<'a, Result<Pruned>> {
    Box::pin(async move {
        let kind = <K as k8s_openapi::Resource>::KIND;
        let api: Api<K> = Api::namespaced(client.clone(), ns);
        let mut pruned = Pruned::default();
        for (name, _) in candidates::<K>(client, ns, selector).await? {
            if plan.wants(kind, &name) {
                continue;
            }
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {
                    tracing::info!(namespace = %ns, kind = %kind, object = %name, "pruned");
                    pruned.deleted += 1;
                }
                Err(e) if is_not_found(&e) => {}
                Err(source) => return Err(Error::Prune { kind, name, source }),
            }
        }
        Ok(pruned)
    })
}

/// Labels the tenant's objects of kind `K` that the plan does not want as retained (and
/// removes the label from those it wants again); deletes nothing.
pub fn retain_unwanted<'a, K: Child>(
    client: &'a Client,
    ns: &'a str,
    selector: &'a str,
    plan: &'a Plan,
) -> futures::future::BoxFuture<'a, Result<Pruned>> {
    Box::pin(async move {
        let kind = <K as k8s_openapi::Resource>::KIND;
        let api: Api<K> = Api::namespaced(client.clone(), ns);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let mut pruned = Pruned::default();
        for (name, labelled) in candidates::<K>(client, ns, selector).await? {
            let wanted = plan.wants(kind, &name);
            let label = match (wanted, labelled) {
                (true, true) => serde_json::Value::Null,
                (false, false) => json!("true"),
                (wanted, _) => {
                    if !wanted {
                        pruned.retained.push(name);
                    }
                    continue;
                }
            };
            let patch = json!({ "metadata": { "labels": { RETAINED: label } } });
            match api.patch(&name, &params, &Patch::Merge(&patch)).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => continue,
                Err(source) => return Err(Error::Prune { kind, name, source }),
            }
            if wanted {
                tracing::info!(namespace = %ns, kind = %kind, object = %name, "planned again: no longer retained");
            } else {
                pruned.retained.push(name.clone());
                pruned.newly_retained.push(name);
            }
        }
        Ok(pruned)
    })
}
