//! Which PlatformRevision a tenant is planned from, and the Platform as of that revision: the
//! reconciler's first step, and what `kubectl stackplane diff` plans from. One definition for
//! both: the caller hands in how a revision is read (from its cache, or the API server), the
//! decision is made here.
//!
//! In order: the revision the tenant is pinned to (`spec.platformRevision`), the one the
//! rollout moved it to (annotation), the one it runs (`status.platformRevision`), and for a
//! tenant that has none of these the Platform's newest completed revision, else its update
//! revision. A Platform without revisions yet (the rollout has not seen it) is used as it is.

use std::future::Future;

use kube::ResourceExt;
use stackplane_crds::{Platform, PlatformRevision, Tenant};

use super::validate::{self, Invalid, Valid};
use crate::contract::labels::TARGET_REVISION;

/// The Platform to plan `tenant` from and the revision it is as of (`None`: the live spec).
#[derive(Debug, Clone)]
pub struct Source {
    pub platform: Platform,
    pub revision: Option<String>,
}

/// The revision `tenant` should run and whether it is pinned there.
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

/// The source of `tenant`'s plan, given its live Platform; `Err(Invalid)` when it is pinned to
/// a revision that does not exist or belongs to another platform. `get` reads the revision of
/// that name (`None`: there is none); it is called at most once, and only when a revision is
/// [`wanted`]. Its error is the caller's own.
pub async fn resolve<E, F, Fut>(
    tenant: &Tenant,
    live: Platform,
    get: F,
) -> Result<Result<Source, Invalid>, E>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<Option<PlatformRevision>, E>>,
{
    let Some((name, pinned)) = wanted(tenant, &live) else {
        return Ok(Ok(Source {
            platform: live,
            revision: None,
        }));
    };
    let found = get(name.clone())
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

/// `tenant` validated against the source of its plan: `None` when its Platform does not exist,
/// else what [`resolve`] answered.
pub fn validated<'a>(
    tenant: &Tenant,
    source: Option<&'a Result<Source, Invalid>>,
) -> Result<Valid<'a>, Invalid> {
    match source {
        Some(Ok(s)) => validate::validate(tenant, Some(&s.platform)),
        Some(Err(invalid)) => Err(invalid.clone()),
        None => validate::validate(tenant, None),
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::*;
    use stackplane_crds::{PlatformRevisionSpec, PlatformStatus, TenantSpec, TenantStatus};

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

    /// The revision `name` of `platform`, whose template has one tier more than the example.
    fn revision(name: &str, platform: &str) -> PlatformRevision {
        let mut template = example_spec();
        let mut extra = template.tiers[0].clone();
        extra.name = "from-the-revision".into();
        extra.stripe_price_ids.clear();
        template.tiers.push(extra);
        PlatformRevision::new(
            name,
            PlatformRevisionSpec {
                platform: platform.into(),
                revision: 1,
                hash: "h".into(),
                template,
            },
        )
    }

    /// `resolve` with a lookup that answers `found` at once; what it answered and the names it
    /// looked up.
    fn resolved(
        tenant: &Tenant,
        live: Platform,
        found: Option<PlatformRevision>,
    ) -> (Result<Source, Invalid>, Vec<String>) {
        let mut asked = Vec::new();
        let answer = {
            let fut = resolve(tenant, live, |name| {
                asked.push(name);
                std::future::ready(Ok::<_, Infallible>(found))
            });
            match pin!(fut).poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(Ok(answer)) => answer,
                Poll::Ready(Err(never)) => match never {},
                Poll::Pending => unreachable!("the lookup is ready at once"),
            }
        };
        (answer, asked)
    }

    #[test]
    fn a_platform_without_revisions_is_used_as_it_is_without_a_lookup() {
        let t = Tenant::new("t", TenantSpec::new("p", "starter"));
        let (source, asked) = resolved(&t, platform(None, None), Some(revision("x", "p")));
        let source = source.expect("the live spec");
        assert_eq!(source.revision, None);
        assert!(asked.is_empty(), "{asked:?}");
    }

    #[test]
    fn the_wanted_revision_of_the_tenants_platform_is_planned_from() {
        let t = Tenant::new("t", TenantSpec::new("p", "starter"));
        let (source, asked) = resolved(&t, platform(Some("c"), None), Some(revision("c", "p")));
        let source = source.expect("the revision");
        assert_eq!(asked, ["c"]);
        assert_eq!(source.revision.as_deref(), Some("c"));
        assert!(source.platform.spec.tier("from-the-revision").is_some());
        assert_eq!(source.platform.metadata.name.as_deref(), Some("p"));
        let source = Some(Ok(source));
        let valid = validated(&t, source.as_ref()).expect("valid");
        assert_eq!(valid.tier.name, "starter");
    }

    #[test]
    fn a_missing_or_foreign_revision_is_the_live_spec_unless_pinned() {
        let mut t = Tenant::new("t", TenantSpec::new("p", "starter"));
        let (source, _) = resolved(&t, platform(Some("c"), None), None);
        assert_eq!(source.expect("the live spec").revision, None);
        let (source, _) = resolved(&t, platform(Some("c"), None), Some(revision("c", "other")));
        assert_eq!(source.expect("the live spec").revision, None);
        t.spec.platform_revision = Some("c".into());
        let (source, _) = resolved(&t, platform(Some("c"), None), Some(revision("c", "other")));
        let invalid = source.expect_err("a pin to another platform's revision");
        assert!(
            invalid.message.contains("spec.platformRevision \"c\""),
            "{invalid:?}"
        );
        assert_eq!(
            validated(&t, Some(&Err(invalid.clone()))).err(),
            Some(invalid)
        );
    }

    #[test]
    fn a_missing_platform_is_invalid() {
        let t = Tenant::new("t", TenantSpec::new("p", "starter"));
        let invalid = validated(&t, None).expect_err("no platform");
        assert!(invalid.message.contains("does not exist"), "{invalid:?}");
    }
}
