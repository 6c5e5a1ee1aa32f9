//! Where a tenant's plan comes from, read without side effects: the reconciler's first step.
//! The decision is `stackplane_core::tenant::revision`'s; what is read here is the Platform and
//! the revision it names, from the controller's caches when they hold them.

use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};
use stackplane_core::tenant::revision::{self, Source};
use stackplane_core::tenant::validate::Invalid;
use stackplane_crds::{Platform, PlatformRevision, Tenant};

use crate::error::Result;

/// The Platform spec `tenant` is planned from (its revision's, or the live one); `None` when its
/// Platform does not exist, `Err(Invalid)` when its pin names no revision of that Platform.
/// The Platform and the revision come from `platforms` and `revisions` when they hold them (the
/// controller's watches keep them current), else from the API server (one the cache has not
/// seen yet).
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
        Some(live) => Some(
            revision::resolve(tenant, live, |name| async move {
                crate::rollout::revisions::get(client, revisions, &name).await
            })
            .await?,
        ),
        None => None,
    })
}
