//! `PlatformRevision`: one immutable snapshot of a Platform's template. The controller makes
//! one for each distinct `Platform.spec` (the rollout policy aside); a tenant's stack is planned
//! from the revision it runs, not from the live Platform.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::platform::PlatformSpec;

/// An immutable snapshot of a Platform's template, created by the controller. Never edited:
/// a changed Platform gets a new revision.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "stackplane.io",
    version = "v1alpha1",
    kind = "PlatformRevision",
    doc = "An immutable snapshot of a Platform's template; tenants are planned from the revision they run.",
    plural = "platformrevisions",
    shortname = "platrev",
    category = "stackplane",
    printcolumn = r#"{"name":"Platform","type":"string","jsonPath":".spec.platform"}"#,
    printcolumn = r#"{"name":"Revision","type":"integer","jsonPath":".spec.revision"}"#,
    printcolumn = r#"{"name":"Hash","type":"string","jsonPath":".spec.hash"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PlatformRevisionSpec {
    /// The Platform this is a revision of.
    pub platform: String,
    /// Sequence number within the platform: 1 for the first revision, then one more each time.
    pub revision: i64,
    /// Hash of the template (hex, 16 characters).
    pub hash: String,
    /// The Platform's spec at this revision (without its rollout policy).
    pub template: PlatformSpec,
}

/// Length of the hash in a revision's name and `spec.hash`.
const HASH_LEN: usize = 16;

/// The template of `spec`: the spec without its rollout policy, which says how a revision
/// rolls out and is not part of it.
pub fn template(spec: &PlatformSpec) -> PlatformSpec {
    PlatformSpec {
        rollout: None,
        ..spec.clone()
    }
}

/// Stable hash of the template of `spec` (its JSON form; serde writes fields in declaration
/// order and maps sorted, so equal templates hash equally).
pub fn template_hash(spec: &PlatformSpec) -> String {
    let json = serde_json::to_vec(&template(spec)).unwrap_or_default();
    hex::encode(Sha256::digest(&json))[..HASH_LEN].to_owned()
}

/// Name of the revision of `platform` with template hash `hash`: `<platform>-<hash>`.
pub fn revision_name(platform: &str, hash: &str) -> String {
    format!("{platform}-{hash}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rollout_policy_is_not_part_of_the_template_hash() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/platforms/tackle.yaml");
        let p: crate::Platform =
            serde_saphyr::from_str(&std::fs::read_to_string(path).expect("read")).expect("parse");
        let mut with_policy = p.spec.clone();
        with_policy.rollout = Some(crate::rollout::RolloutPolicy::default());
        assert_eq!(template_hash(&p.spec), template_hash(&with_policy));
        let mut changed = p.spec.clone();
        changed.components[0].image.push_str("-2");
        assert_ne!(template_hash(&p.spec), template_hash(&changed));
        assert_eq!(template_hash(&p.spec).len(), HASH_LEN);
    }
}
