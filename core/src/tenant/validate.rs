//! Checks that a Tenant can be provisioned: its Platform exists and is usable, and its tier exists.
//! Pure: the caller looks the Platform up.

use stackplane_crds::{Platform, PlatformSpec, Tenant, Tier};

/// Why a Tenant cannot be provisioned as it is; the message goes into the `InvalidSpec` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub message: String,
}

/// The Platform and tier of a valid Tenant.
#[derive(Debug, Clone, Copy)]
pub struct Valid<'a> {
    pub platform: &'a Platform,
    pub tier: &'a Tier,
}

/// Everything wrong with a Platform spec that its OpenAPI schema cannot say: the spec's own
/// checks and its egress rules'. Empty when its tenants can be planned.
pub fn platform_problems(spec: &PlatformSpec) -> Vec<String> {
    let mut problems = spec.problems();
    problems.extend(super::network::egress_problems(spec));
    problems
}

/// Validates `tenant` against its Platform (`None` when no such Platform exists).
pub fn validate<'a>(tenant: &Tenant, platform: Option<&'a Platform>) -> Result<Valid<'a>, Invalid> {
    // The name is the value of the `stackplane.io/tenant` label on every object of the tenant,
    // and a label value has at most 63 characters (names made from Stripe are cut to fit).
    let name = tenant.metadata.name.as_deref().unwrap_or_default();
    if !stackplane_crds::naming::is_dns_label(name) {
        return Err(Invalid {
            message: format!(
                "tenant name {name:?} must be a DNS-1123 label of at most {} characters",
                stackplane_crds::naming::MAX_NAME_LEN
            ),
        });
    }
    let Some(platform) = platform else {
        return Err(Invalid {
            message: format!("platform {:?} does not exist", tenant.spec.platform),
        });
    };
    let problems = platform_problems(&platform.spec);
    if !problems.is_empty() {
        return Err(Invalid {
            message: format!(
                "platform {:?} is not usable: {}",
                tenant.spec.platform,
                problems.join("; ")
            ),
        });
    }
    let Some(tier) = platform.spec.tier(&tenant.spec.tier) else {
        let known: Vec<&str> = platform
            .spec
            .tiers
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        return Err(Invalid {
            message: format!(
                "tier {:?} does not exist in platform {:?} (tiers: {})",
                tenant.spec.tier,
                tenant.spec.platform,
                known.join(", ")
            ),
        });
    };
    Ok(Valid { platform, tier })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform() -> Platform {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/platforms/tackle.yaml");
        serde_saphyr::from_str(&std::fs::read_to_string(path).expect("read")).expect("Platform")
    }

    fn tenant(tier: &str) -> Tenant {
        Tenant::new("t", stackplane_crds::TenantSpec::new("tackle", tier))
    }

    #[test]
    fn missing_platform_tier_or_problems_are_invalid() {
        let p = platform();
        let tier = p.spec.tiers[0].name.clone();
        assert!(validate(&tenant(&tier), Some(&p)).is_ok());
        assert!(validate(&tenant(&tier), None).is_err());
        let err = validate(&tenant("nope"), Some(&p)).expect_err("unknown tier");
        assert!(err.message.contains("\"nope\""), "{}", err.message);
        let mut bad = p.clone();
        bad.spec.components.push(bad.spec.components[0].clone());
        assert!(validate(&tenant(&tier), Some(&bad)).is_err());
    }

    #[test]
    fn egress_that_could_reach_the_metadata_endpoint_is_invalid() {
        let mut p = platform();
        let tier = p.spec.tiers[0].name.clone();
        p.spec.egress = vec![stackplane_crds::EgressRule {
            cidrs: vec!["169.254.169.254/32".into()],
            ..Default::default()
        }];
        let err = validate(&tenant(&tier), Some(&p)).expect_err("link-local");
        assert!(
            err.message.contains("egress[0]") && err.message.contains("never reachable"),
            "{}",
            err.message
        );
        assert_eq!(platform_problems(&p.spec).len(), 1);
    }

    #[test]
    fn names_longer_than_a_label_value_are_invalid() {
        let p = platform();
        let tier = p.spec.tiers[0].name.clone();
        let mut t = tenant(&tier);
        t.metadata.name = Some("t".repeat(63));
        assert!(validate(&t, Some(&p)).is_ok());
        t.metadata.name = Some("t".repeat(64));
        let err = validate(&t, Some(&p)).expect_err("too long");
        assert!(err.message.contains("63"), "{}", err.message);
    }
}
