//! Where a tenant's plan comes from, read without side effects: the reconciler's first step, and
//! what `kubectl stackplane diff` compares with the cluster.

use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};
use stackplane_crds::{Platform, PlatformRevision, Tenant};

use super::revision::{self, Source};
use crate::error::Result;
use stackplane_core::tenant::plan::{self, Plan, PlanOptions};
use stackplane_core::tenant::validate::{self, Invalid};

/// The Platform spec `tenant` is planned from (its revision's, or the live one); `None` when its
/// Platform does not exist, `Err(Invalid)` when its pin names no revision of that Platform.
/// The Platform comes from `platforms` when it holds it (the controller's watch keeps it
/// current), else from the API server (a Platform the cache has not seen yet).
pub async fn source(
    client: &Client,
    platforms: Option<&Store<Platform>>,
    revisions: Option<&Store<PlatformRevision>>,
    tenant: &Tenant,
) -> Result<Option<std::result::Result<Source, Invalid>>> {
    let cached = platforms
        .and_then(|s| s.get(&ObjectRef::new(&tenant.spec.platform)))
        .map(|p| (*p).clone());
    let live = match cached {
        Some(p) => Some(p),
        None => {
            Api::<Platform>::all(client.clone())
                .get_opt(&tenant.spec.platform)
                .await?
        }
    };
    Ok(match live {
        Some(live) => Some(revision::resolve(client, revisions, tenant, live).await?),
        None => None,
    })
}

/// The plan the reconciler would apply for `tenant` now, or why the tenant is invalid.
pub async fn plan_now(
    client: &Client,
    tenant: &Tenant,
    options: &PlanOptions,
) -> Result<std::result::Result<Plan, Invalid>> {
    let source = source(client, None, None, tenant).await?;
    let checked = match &source {
        Some(Ok(s)) => validate::validate(tenant, Some(&s.platform)),
        Some(Err(invalid)) => Err(invalid.clone()),
        None => validate::validate(tenant, None),
    };
    Ok(checked.map(|valid| plan::plan(tenant, valid.platform, valid.tier, options)))
}
