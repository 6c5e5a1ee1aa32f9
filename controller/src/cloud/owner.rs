//! The last check before anything is created in AWS: the owner, read from the API server (not
//! the reconciler's cache, which can be seconds behind), still exists as the same object.
//!
//! A reconcile works from a cached Tenant. Between the cache's copy and the moment RunInstances
//! is sent, the Tenant may have been deleted, its cleanup run (finding nothing to delete) and
//! its finalizer removed; what the reconcile then creates belongs to no one and bills forever.
//! Reading the Tenant once more, right before the create, shrinks that window from the cache's
//! lag to one round trip; the garbage collector (`super::gc`) removes what still slips through.

use std::time::Duration;

use kube::{Api, Client};
use stackplane_crds::{Tenant, TenantBackup};

use super::error::CloudError;

/// Whether the owner may be in the middle of its deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleting {
    /// Refuse: an instance or a record for a tenant that is going away would outlive it.
    Refuse,
    /// Allow: the final `pre-delete` backup is taken while its tenant is being deleted.
    Allow,
}

/// What a create is for: the object that must still exist, read fresh.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub name: &'a str,
    /// The uid the reconcile saw; `None` never matches (an object without uid is not stored).
    pub uid: Option<&'a str>,
}

impl<'a> Owner<'a> {
    pub fn of_tenant(tenant: &'a Tenant) -> Self {
        Owner {
            name: tenant.metadata.name.as_deref().unwrap_or_default(),
            uid: tenant.metadata.uid.as_deref(),
        }
    }

    pub fn of_backup(backup: &'a TenantBackup) -> Self {
        Owner {
            name: backup.metadata.name.as_deref().unwrap_or_default(),
            uid: backup.metadata.uid.as_deref(),
        }
    }
}

/// Why a fresh copy does not let the create go ahead, or `None` when it does.
fn refusal(
    kind: &str,
    owner: Owner<'_>,
    fresh: Option<(&Option<String>, bool)>,
    deleting: Deleting,
) -> Option<String> {
    let name = owner.name;
    let Some((uid, being_deleted)) = fresh else {
        return Some(format!("{kind} {name} no longer exists"));
    };
    if uid.as_deref() != owner.uid || owner.uid.is_none() {
        return Some(format!(
            "{kind} {name} was deleted and created again (uid {} is not {})",
            uid.as_deref().unwrap_or("-"),
            owner.uid.unwrap_or("-")
        ));
    }
    if being_deleted && deleting == Deleting::Refuse {
        return Some(format!("{kind} {name} is being deleted"));
    }
    None
}

async fn get_fresh<K>(
    client: &Client,
    name: &str,
    timeout: Duration,
    operation: &'static str,
) -> Result<Option<K>, CloudError>
where
    K: kube::Resource<Scope = kube::core::ClusterResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(client.clone());
    match tokio::time::timeout(timeout, api.get_opt(name)).await {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(e)) => Err(CloudError::Kube {
            operation,
            message: format!("re-reading {name} before a create: {e}"),
        }),
        Err(_) => Err(CloudError::Kube {
            operation,
            message: format!(
                "re-reading {name} before a create: no answer within {}s",
                timeout.as_secs()
            ),
        }),
    }
}

/// Confirms, from the API server, that the tenant exists with the uid the reconcile saw (and,
/// with [`Deleting::Refuse`], is not being deleted), right before `operation` creates something
/// for it. `Err(OwnerGone)`: create nothing.
pub async fn confirm_tenant(
    client: &Client,
    tenant: Owner<'_>,
    deleting: Deleting,
    timeout: Duration,
    operation: &'static str,
) -> Result<(), CloudError> {
    let fresh: Option<Tenant> = get_fresh(client, tenant.name, timeout, operation).await?;
    let state = fresh
        .as_ref()
        .map(|t| (&t.metadata.uid, t.metadata.deletion_timestamp.is_some()));
    match refusal("tenant", tenant, state, deleting) {
        None => Ok(()),
        Some(why) => {
            tracing::warn!(tenant = %tenant.name, operation, %why, "not creating a cloud resource for a tenant that is gone");
            Err(CloudError::OwnerGone { operation, why })
        }
    }
}

/// [`confirm_tenant`] for a backup's snapshot: the backup exists as the same object and is not
/// being deleted (its cleanup deletes its snapshots), and its tenant exists (it may be being
/// deleted: that is when the final backup runs).
pub async fn confirm_backup(
    client: &Client,
    backup: Owner<'_>,
    tenant: Owner<'_>,
    timeout: Duration,
    operation: &'static str,
) -> Result<(), CloudError> {
    let fresh: Option<TenantBackup> = get_fresh(client, backup.name, timeout, operation).await?;
    let state = fresh
        .as_ref()
        .map(|b| (&b.metadata.uid, b.metadata.deletion_timestamp.is_some()));
    if let Some(why) = refusal("backup", backup, state, Deleting::Refuse) {
        tracing::warn!(backup = %backup.name, operation, %why, "not creating a snapshot for a backup that is gone");
        return Err(CloudError::OwnerGone { operation, why });
    }
    confirm_tenant(client, tenant, Deleting::Allow, timeout, operation).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(uid: Option<&str>) -> Owner<'_> {
        Owner { name: "acme", uid }
    }

    #[test]
    fn same_live_object_passes() {
        let uid = Some("u1".to_owned());
        assert_eq!(
            refusal(
                "tenant",
                owner(Some("u1")),
                Some((&uid, false)),
                Deleting::Refuse
            ),
            None
        );
        assert_eq!(
            refusal(
                "tenant",
                owner(Some("u1")),
                Some((&uid, true)),
                Deleting::Allow
            ),
            None
        );
    }

    #[test]
    fn gone_recreated_or_deleting_is_refused() {
        let uid = Some("u1".to_owned());
        let other = Some("u2".to_owned());
        let gone = refusal("tenant", owner(Some("u1")), None, Deleting::Allow);
        assert!(gone.is_some_and(|w| w.contains("no longer exists")));
        let recreated = refusal(
            "tenant",
            owner(Some("u1")),
            Some((&other, false)),
            Deleting::Allow,
        );
        assert!(recreated.is_some_and(|w| w.contains("created again")));
        let deleting = refusal(
            "tenant",
            owner(Some("u1")),
            Some((&uid, true)),
            Deleting::Refuse,
        );
        assert!(deleting.is_some_and(|w| w.contains("being deleted")));
        // A reconcile that never saw a uid cannot prove anything: refused.
        assert!(refusal("tenant", owner(None), Some((&None, false)), Deleting::Allow).is_some());
    }
}
