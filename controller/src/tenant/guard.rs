//! Observation for the two "mistakes delete nothing" inputs of the deletion decision
//! (`stackplane_core::tenant::deletion`): whether the Tenant CRD is being deleted, and whether a
//! deleting tenant is beyond the mass-deletion guard's budget. The decision itself is core's.

use std::collections::BTreeSet;
use std::sync::Mutex;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::Timestamp;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, CustomResourceExt, ResourceExt};
use stackplane_core::cache::CachedTenant;
use stackplane_core::contract::conditions::DELETION_HELD;
use stackplane_core::tenant::deletion::{self, Entered, HoldReason, GUARD_WINDOW};
use stackplane_crds::{Tenant, TenantStatus};

use super::Context;
use crate::error::Result;

/// What the controller watches of the Tenant CRD: its metadata only (a CRD's schema is large),
/// selected by name, so its ClusterRole needs `get`/`list`/`watch` on that one CRD.
pub type CrdMeta = PartialObjectMeta<CustomResourceDefinition>;

/// Deletions this process let go on (they may have finished and left the Tenants' cache
/// since), kept for the guard's window.
#[derive(Debug, Default)]
pub struct RecentDeletions(Mutex<BTreeSet<Entered>>);

impl RecentDeletions {
    /// Records that `entered` went on to its destruction; forgets what left the window.
    pub fn went(&self, entered: Entered, now: Timestamp) {
        if let Ok(mut set) = self.0.lock() {
            let since = now.checked_sub(GUARD_WINDOW).unwrap_or(now);
            set.retain(|e| e.at > since);
            set.insert(entered);
        }
    }

    fn all(&self) -> Vec<Entered> {
        self.0
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// The name of the Tenant CRD.
pub fn tenant_crd_name() -> String {
    Tenant::crd_name().to_owned()
}

/// Whether the Tenant CRD has a deletionTimestamp. The watched copy answers when it says so;
/// otherwise, since what follows may destroy data and the watch may lag the Tenants' own,
/// the API server is asked (`confirm`). A CRD that is gone altogether counts as deleting.
pub async fn tenant_crd_deleting(ctx: &Context, confirm: bool) -> Result<bool> {
    let name = tenant_crd_name();
    if let Some(store) = &ctx.tenant_crd {
        let cached = store.get(&ObjectRef::new(&name));
        if cached.is_some_and(|c| c.metadata.deletion_timestamp.is_some()) {
            return Ok(true);
        }
    }
    if !confirm {
        return Ok(false);
    }
    let api: Api<CustomResourceDefinition> = Api::all(ctx.client.clone());
    let fresh = api.get_metadata_opt(&name).await?;
    Ok(fresh.is_none_or(|c| c.metadata.deletion_timestamp.is_some()))
}

/// When `tenant` entered deletion, as the guard counts it.
pub fn entered(tenant: &Tenant) -> Option<Entered> {
    Some(Entered {
        at: tenant.metadata.deletion_timestamp.as_ref()?.0,
        name: tenant.name_any(),
    })
}

/// Every counted deletion this controller knows of: the Tenants deleting now (its cache, which
/// its selector bounds) and those this process let go on within the window.
fn counted(ctx: &Context) -> BTreeSet<Entered> {
    let mut all: BTreeSet<Entered> = ctx.recent_deletions.all().into_iter().collect();
    if let Some(store) = &ctx.tenants {
        all.extend(
            store
                .state()
                .iter()
                .filter(|t| deletion::counts_toward_guard(t.spec.deletion_policy, false))
                .filter_map(|t| cached_entered(t)),
        );
    }
    all
}

/// Whether `tenant` (deleting) waits for a person
/// (`stackplane_core::tenant::deletion::beyond_budget`).
pub fn beyond_budget(ctx: &Context, tenant: &Tenant, status: &TenantStatus) -> bool {
    let Some(me) = entered(tenant) else {
        return false;
    };
    let others: Vec<Entered> = counted(ctx).into_iter().collect();
    let already_held = status.conditions.iter().any(|c| {
        c.type_ == DELETION_HELD
            && c.status == "True"
            && c.reason == HoldReason::MassDeletion.as_str()
    });
    deletion::beyond_budget(
        &me,
        &others,
        ctx.config.max_deletions_per_hour,
        already_held,
    )
}

fn cached_entered(t: &CachedTenant) -> Option<Entered> {
    Some(Entered {
        at: t.metadata.deletion_timestamp.as_ref()?.0,
        name: t.name_any(),
    })
}
