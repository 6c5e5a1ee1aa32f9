//! Which PlatformRevision a tenant is planned from, and the Platform as of that revision.
//!
//! In order: the revision the tenant is pinned to (`spec.platformRevision`), the one the
//! rollout moved it to (annotation), the one it runs (`status.platformRevision`), and for a
//! tenant that has none of these the Platform's newest completed revision, else its update
//! revision. A Platform without revisions yet (the rollout has not seen it) is used as it is.

use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use stackplane_core::contract::labels::TARGET_REVISION;
use stackplane_crds::{Platform, PlatformRevision, Tenant};

use stackplane_core::tenant::validate::Invalid;

/// The Platform to plan `tenant` from and the revision it is as of (`None`: the live spec).
#[derive(Debug, Clone)]
pub struct Source {
    pub platform: Platform,
    pub revision: Option<String>,
}

/// The revision `tenant` should run and whether it is pinned there (pure).
pub fn wanted(tenant: &Tenant, live: &Platform) -> Option<(String, bool)> {
    if let Some(pin) = &tenant.spec.platform_revision {
        return Some((pin.clone(), true));
    }
    let status = live.status.as_ref();
    tenant
        .annotations()
        .get(TARGET_REVISION)
        .cloned()
        .or_else(|| tenant.status.as_ref()?.platform_revision.clone())
        .or_else(|| status?.current_revision.clone())
        .or_else(|| status?.update_revision.clone())
        .map(|r| (r, false))
}

/// `live` as of `revision`: its metadata and status, the revision's template.
pub fn as_of(live: &Platform, revision: &PlatformRevision) -> Platform {
    Platform {
        metadata: live.metadata.clone(),
        spec: revision.spec.template.clone(),
        status: live.status.clone(),
    }
}

/// The source of `tenant`'s plan; `Err(Invalid)` when it is pinned to a revision that does
/// not exist or belongs to another platform.
pub async fn resolve(
    client: &Client,
    cache: Option<&Store<PlatformRevision>>,
    tenant: &Tenant,
    live: Platform,
) -> kube::Result<Result<Source, Invalid>> {
    let Some((name, pinned)) = wanted(tenant, &live) else {
        return Ok(Ok(Source {
            platform: live,
            revision: None,
        }));
    };
    let found = crate::rollout::revisions::get(client, cache, &name)
        .await?
        .filter(|r| r.spec.platform == tenant.spec.platform);
    Ok(match (found, pinned) {
        (Some(r), _) => Ok(Source {
            platform: as_of(&live, &r),
            revision: Some(name),
        }),
        (None, true) => Err(Invalid {
            message: format!(
                "spec.platformRevision {name:?} is not a revision of platform {:?}",
                tenant.spec.platform
            ),
        }),
        // Collected or never made: the live spec, until the rollout moves the tenant.
        (None, false) => Ok(Source {
            platform: live,
            revision: None,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use stackplane_crds::{PlatformStatus, TenantSpec, TenantStatus};

    fn platform(current: Option<&str>, update: Option<&str>) -> Platform {
        let mut p = Platform::new("p", example_spec());
        p.status = Some(PlatformStatus {
            current_revision: current.map(str::to_owned),
            update_revision: update.map(str::to_owned),
            ..PlatformStatus::default()
        });
        p
    }

    fn example_spec() -> stackplane_crds::PlatformSpec {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/platforms/tackle.yaml");
        let p: Platform =
            serde_saphyr::from_str(&std::fs::read_to_string(path).expect("read")).expect("parse");
        p.spec
    }

    #[test]
    fn pin_then_move_then_running_then_current_then_update() {
        let mut t = Tenant::new("t", TenantSpec::new("p", "starter"));
        assert_eq!(wanted(&t, &platform(None, None)), None);
        assert_eq!(
            wanted(&t, &platform(None, Some("u"))),
            Some(("u".into(), false))
        );
        assert_eq!(
            wanted(&t, &platform(Some("c"), Some("u"))),
            Some(("c".into(), false))
        );
        t.status = Some(TenantStatus {
            platform_revision: Some("r".into()),
            ..TenantStatus::default()
        });
        assert_eq!(
            wanted(&t, &platform(Some("c"), Some("u"))),
            Some(("r".into(), false))
        );
        t.metadata.annotations = Some([(TARGET_REVISION.to_owned(), "m".to_owned())].into());
        assert_eq!(
            wanted(&t, &platform(Some("c"), Some("u"))),
            Some(("m".into(), false))
        );
        t.spec.platform_revision = Some("pin".into());
        assert_eq!(
            wanted(&t, &platform(Some("c"), Some("u"))),
            Some(("pin".into(), true))
        );
    }
}
