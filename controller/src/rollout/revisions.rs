//! A Platform's revisions: the one for its current spec made when missing, and those no tenant
//! runs or moves to collected beyond the history limit.

use std::collections::HashSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use stackplane_core::contract::labels::{MANAGED_BY, MANAGED_BY_VALUE, PLATFORM};
use stackplane_crds::revision::{revision_name, template, template_hash};
use stackplane_crds::{Platform, PlatformRevision, PlatformRevisionSpec};

use crate::k8s::is_conflict;

/// The revisions of `platform` the API server holds.
pub async fn of_platform(client: &Client, platform: &str) -> kube::Result<Vec<PlatformRevision>> {
    let api: Api<PlatformRevision> = Api::all(client.clone());
    let mut revisions = api
        .list(&ListParams::default().labels(&format!(
            "{MANAGED_BY}={MANAGED_BY_VALUE},{PLATFORM}={platform}"
        )))
        .await?
        .items;
    revisions.retain(|r| r.spec.platform == platform);
    revisions.sort_by_key(|r| r.spec.revision);
    Ok(revisions)
}

/// The revision of `platform`'s current spec, created (with the next sequence number) when
/// it does not exist yet; and whether it was created now.
pub async fn ensure(
    client: &Client,
    platform: &Platform,
    existing: &[PlatformRevision],
) -> kube::Result<(PlatformRevision, bool)> {
    let pname = platform.name_any();
    let hash = template_hash(&platform.spec);
    let name = revision_name(&pname, &hash);
    if let Some(r) = existing.iter().find(|r| r.name_any() == name) {
        return Ok((r.clone(), false));
    }
    let next = existing.iter().map(|r| r.spec.revision).max().unwrap_or(0) + 1;
    let mut revision = PlatformRevision::new(
        &name,
        PlatformRevisionSpec {
            platform: pname.clone(),
            revision: next,
            hash,
            template: template(&platform.spec),
        },
    );
    revision.metadata.labels = Some(
        [
            (MANAGED_BY.to_owned(), MANAGED_BY_VALUE.to_owned()),
            (PLATFORM.to_owned(), pname.clone()),
        ]
        .into(),
    );
    // Deleting the Platform deletes its revisions.
    revision.metadata.owner_references = platform.controller_owner_ref(&()).map(|o| {
        vec![OwnerReference {
            controller: Some(false),
            block_owner_deletion: Some(false),
            ..o
        }]
    });
    let api: Api<PlatformRevision> = Api::all(client.clone());
    match api.create(&PostParams::default(), &revision).await {
        Ok(created) => Ok((created, true)),
        // Another replica (or an earlier pass whose answer was lost) made it.
        Err(e) if is_conflict(&e) => Ok((api.get(&name).await?, false)),
        Err(e) => Err(e),
    }
}

/// The revisions to delete: those not in `in_use`, beyond the newest `keep` of them.
pub fn collectable(
    revisions: &[PlatformRevision],
    in_use: &HashSet<String>,
    keep: u32,
) -> Vec<String> {
    let mut unused: Vec<&PlatformRevision> = revisions
        .iter()
        .filter(|r| !in_use.contains(&r.name_any()))
        .collect();
    unused.sort_by_key(|r| std::cmp::Reverse(r.spec.revision));
    unused
        .into_iter()
        .skip(keep as usize)
        .map(|r| r.name_any())
        .collect()
}

/// Deletes the revisions [`collectable`] names; says which it deleted.
pub async fn collect(
    client: &Client,
    revisions: &[PlatformRevision],
    in_use: &HashSet<String>,
    keep: u32,
) -> kube::Result<Vec<String>> {
    let api: Api<PlatformRevision> = Api::all(client.clone());
    let mut deleted = Vec::new();
    for name in collectable(revisions, in_use, keep) {
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => deleted.push(name),
            Err(e) if crate::k8s::is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// The revision named `name`, from the cache or else the API server.
pub async fn get(
    client: &Client,
    cache: Option<&Store<PlatformRevision>>,
    name: &str,
) -> kube::Result<Option<PlatformRevision>> {
    if let Some(r) = cache.and_then(|c| c.get(&kube::runtime::reflector::ObjectRef::new(name))) {
        return Ok(Some((*r).clone()));
    }
    Api::<PlatformRevision>::all(client.clone())
        .get_opt(name)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revision(n: i64) -> PlatformRevision {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/platforms/tackle.yaml");
        let p: Platform =
            serde_saphyr::from_str(&std::fs::read_to_string(path).expect("read")).expect("parse");
        PlatformRevision::new(
            &format!("tackle-{n}"),
            PlatformRevisionSpec {
                platform: "tackle".into(),
                revision: n,
                hash: format!("{n}"),
                template: p.spec,
            },
        )
    }

    #[test]
    fn collects_the_oldest_unused_beyond_the_limit_and_never_one_in_use() {
        let all: Vec<PlatformRevision> = (1..=6).map(revision).collect();
        let in_use: HashSet<String> = ["tackle-1".to_owned(), "tackle-6".to_owned()].into();
        let mut gone = collectable(&all, &in_use, 2);
        gone.sort();
        assert_eq!(gone, vec!["tackle-2", "tackle-3"]);
        assert!(collectable(&all, &in_use, 10).is_empty());
        assert_eq!(collectable(&all, &HashSet::new(), 0).len(), 6);
    }
}
