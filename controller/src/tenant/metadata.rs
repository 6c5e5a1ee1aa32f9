//! The controller's own marks on a Tenant's metadata: its finalizer, and the revision a new
//! tenant starts from (so the rollout sees where it starts). Both are written by one merge
//! patch, before anything of the tenant is made, and the pass goes on with the object the
//! API server answered: a new tenant costs one write of its metadata, not one per mark, and
//! no reconcile waits for the echo of its own finalizer.
//!
//! The patch names the resourceVersion read, so it is refused (409) when the Tenant changed
//! since: the finalizer list it writes whole cannot drop another writer's finalizer.

use std::borrow::Cow;

use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{json, Map, Value};
use stackplane_core::contract::labels::{REVISION_MOVED_AT, TARGET_REVISION};
use stackplane_crds::Tenant;

use super::FINALIZER;
use crate::error::{Error, Result};

/// The merge patch that adds what `tenant` lacks of the finalizer and of `revision` as its
/// first target revision (pinned tenants and tenants with a target keep theirs); `None` when
/// it lacks nothing. Pure.
pub fn patch(tenant: &Tenant, revision: Option<&str>, now: &str) -> Option<Value> {
    let mut metadata = Map::new();
    if !tenant.finalizers().iter().any(|f| f == FINALIZER) {
        let mut finalizers = tenant.finalizers().to_vec();
        finalizers.push(FINALIZER.to_owned());
        metadata.insert("finalizers".into(), json!(finalizers));
    }
    let first_revision = revision.filter(|_| {
        tenant.spec.platform_revision.is_none()
            && !tenant.annotations().contains_key(TARGET_REVISION)
    });
    if let Some(revision) = first_revision {
        metadata.insert(
            "annotations".into(),
            json!({ TARGET_REVISION: revision, REVISION_MOVED_AT: now }),
        );
    }
    if metadata.is_empty() {
        return None;
    }
    metadata.insert(
        "resourceVersion".into(),
        json!(tenant.metadata.resource_version),
    );
    Some(json!({ "metadata": metadata }))
}

/// `tenant` with the finalizer and its first revision: as it is when it has them, else as the
/// API server answered the patch that added them. A Tenant changed since it was read gives
/// [`Error::MetadataConflict`] (the next reconcile works from the newer object).
pub async fn ensure<'t>(
    client: &Client,
    tenant: &'t Tenant,
    revision: Option<&str>,
) -> Result<Cow<'t, Tenant>> {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let Some(patch) = patch(tenant, revision, &now) else {
        return Ok(Cow::Borrowed(tenant));
    };
    let params = PatchParams {
        field_manager: Some(crate::k8s::FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    match Api::<Tenant>::all(client.clone())
        .patch(&tenant.name_any(), &params, &Patch::Merge(&patch))
        .await
    {
        Ok(patched) => Ok(Cow::Owned(patched)),
        Err(e) if crate::k8s::is_conflict(&e) => Err(Error::MetadataConflict(e)),
        Err(e) => Err(Error::Kube(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stackplane_crds::TenantSpec;

    fn tenant() -> Tenant {
        let mut t = Tenant::new("t", TenantSpec::new("p", "starter"));
        t.metadata.resource_version = Some("7".into());
        t
    }

    #[test]
    fn a_new_tenant_gets_the_finalizer_and_its_first_revision_in_one_patch() {
        let p = patch(&tenant(), Some("p-abc"), "2026-12-04T00:00:00Z").expect("a patch");
        assert_eq!(
            p,
            json!({"metadata": {
                "resourceVersion": "7",
                "finalizers": [FINALIZER],
                "annotations": {TARGET_REVISION: "p-abc", REVISION_MOVED_AT: "2026-12-04T00:00:00Z"},
            }})
        );
    }

    #[test]
    fn other_finalizers_are_kept_and_the_read_version_is_the_precondition() {
        let mut t = tenant();
        t.metadata.finalizers = Some(vec!["example.com/keep".into()]);
        let p = patch(&t, None, "now").expect("a patch");
        assert_eq!(
            p["metadata"]["finalizers"],
            json!(["example.com/keep", FINALIZER])
        );
        assert_eq!(p["metadata"]["resourceVersion"], json!("7"));
        assert!(p["metadata"].get("annotations").is_none());
    }

    #[test]
    fn nothing_to_write_when_both_marks_are_there_or_not_wanted() {
        let mut t = tenant();
        t.metadata.finalizers = Some(vec![FINALIZER.into()]);
        assert_eq!(patch(&t, None, "now"), None);
        t.metadata.annotations = Some([(TARGET_REVISION.to_owned(), "old".to_owned())].into());
        assert_eq!(patch(&t, Some("new"), "now"), None, "a target is kept");
        t.metadata.annotations = None;
        t.spec.platform_revision = Some("pinned".into());
        assert_eq!(patch(&t, Some("new"), "now"), None, "a pin is kept");
    }

    #[test]
    fn only_the_missing_revision_when_the_finalizer_is_there() {
        let mut t = tenant();
        t.metadata.finalizers = Some(vec![FINALIZER.into()]);
        let p = patch(&t, Some("r1"), "now").expect("a patch");
        assert!(p["metadata"].get("finalizers").is_none());
        assert_eq!(p["metadata"]["annotations"][TARGET_REVISION], json!("r1"));
    }
}
