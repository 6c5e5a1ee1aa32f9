//! `Platform`: a product that can be sold, and the template of one tenant's stack.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::{DNS1123_LABEL, DNS1123_SUBDOMAIN};

/// Resource names (`cpu`, `memory`, ...) to quantities, as in a container's requests and limits.
pub type ResourceList = BTreeMap<String, Quantity>;

/// A product sold on Stripe subscriptions (lead generation, CRM, video, ...) and the template
/// of the isolated stack each of its tenants gets: components, tiers and their quotas.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "stackplane.io",
    version = "v1alpha1",
    kind = "Platform",
    doc = "A product sold on Stripe subscriptions and the template of the stack each of its tenants gets.",
    plural = "platforms",
    shortname = "plat",
    category = "stackplane",
    status = "PlatformStatus",
    printcolumn = r#"{"name":"Display Name","type":"string","jsonPath":".spec.displayName"}"#,
    printcolumn = r#"{"name":"Domain","type":"string","jsonPath":".spec.domain"}"#,
    printcolumn = r#"{"name":"Tenants","type":"integer","jsonPath":".status.tenants"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".status.updateRevision"}"#,
    printcolumn = r#"{"name":"Rollout","type":"string","jsonPath":".status.rollout.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PlatformSpec {
    /// Product name as customers see it in the dashboard, e.g. "Lead Site AI".
    #[schemars(length(min = 1, max = 128))]
    pub display_name: String,

    /// DNS domain of the platform. Every tenant is served at `<subdomain>.<domain>`.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS1123_SUBDOMAIN))]
    pub domain: String,

    /// Route53 hosted zone that holds `domain`, e.g. `Z0123456789ABC`. Without it, tenants of
    /// this platform get no DNS record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^(/hostedzone/)?[A-Z0-9]+$"))]
    pub hosted_zone_id: Option<String>,

    /// Days a cancelled tenant's data is kept before the tenant is deleted.
    #[serde(default = "default_cancellation_retention_days")]
    #[schemars(range(min = 0, max = 3650))]
    pub cancellation_retention_days: u32,

    /// The workloads of one tenant's stack. Each becomes a Deployment and a Service named after
    /// the component, and a PersistentVolumeClaim when it has storage.
    #[schemars(length(min = 1))]
    pub components: Vec<Component>,

    /// The plans that can be bought. Stripe prices map to exactly one tier.
    #[schemars(length(min = 1))]
    pub tiers: Vec<Tier>,

    /// How a change of this spec reaches the tenants: in health-gated waves (the default: one
    /// wave of every tenant) or at once. Not part of a revision: changing it moves no tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutPolicy>,

    /// Where the tenants' pods may connect outside their own namespace. Every tenant namespace
    /// denies egress by default and allows only DNS (port 53), its own pods, and these
    /// destinations. Link-local addresses (169.254.0.0/16, where the cloud metadata endpoint
    /// answers with the node's credentials, and fe80::/10) are never reachable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
}

/// One kind of destination the tenants' pods may reach: some networks, or the internet.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressRule {
    /// Destination networks in CIDR notation, e.g. `203.0.113.0/24` or `2001:db8::/32` (a single
    /// address is `/32` or `/128`). A network inside link-local is refused; a wider one reaches
    /// everything in it but link-local and the cluster's own pod and service ranges. Leave empty
    /// when `internet` is true.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cidrs: Vec<String>,

    /// Every address outside the cluster: 0.0.0.0/0 and ::/0 except link-local and the
    /// cluster's own pod and service ranges (the controller's `--cluster-cidrs`). For
    /// components that call third-party APIs, scrape or send email. `cidrs` must then be empty.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub internet: bool,

    /// Destination ports of these networks. Empty: every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<EgressPort>,
}

/// A destination port of an egress rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct EgressPort {
    /// Port number, e.g. 443.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// `TCP` (the default) or `UDP`.
    #[serde(default)]
    pub protocol: EgressProtocol,
}

/// The transport protocol of an egress port.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum EgressProtocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

impl EgressProtocol {
    /// The protocol as a NetworkPolicy port names it.
    pub fn as_str(self) -> &'static str {
        match self {
            EgressProtocol::Tcp => "TCP",
            EgressProtocol::Udp => "UDP",
        }
    }
}

fn default_cancellation_retention_days() -> u32 {
    30
}

/// One workload of a tenant's stack.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Component {
    /// Name of the component; also the name of its Deployment, Service and volume claim.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS1123_LABEL))]
    pub name: String,

    /// Container image, e.g. `ghcr.io/leadsite/api:2.4.1`.
    #[schemars(length(min = 1))]
    pub image: String,

    /// Port the container listens on; the component's Service exposes it.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Replicas before the tier's multiplier or override is applied.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,

    /// Environment variables of the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,

    /// CPU and memory requests and limits of the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,

    /// Size of a persistent volume for the component (e.g. `10Gi`). Without it, no volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Quantity>,
}

fn default_replicas() -> i32 {
    1
}

/// A plain environment variable.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct EnvVar {
    /// Variable name.
    #[schemars(length(min = 1), regex(pattern = "^[A-Za-z_][A-Za-z0-9_]*$"))]
    pub name: String,
    /// Variable value (may be empty).
    pub value: String,
}

/// Requests and limits of a container.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Resources {
    /// Minimum resources the container is scheduled with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<ResourceList>,
    /// Maximum resources the container may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceList>,
}

/// A plan customers subscribe to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tier {
    /// Name of the tier, e.g. `starter`, `professional`, `enterprise`.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS1123_LABEL))]
    pub name: String,

    /// Stripe price ids (`price_...`) that buy this tier. A price belongs to one tier of one
    /// platform.
    #[serde(default)]
    #[schemars(inner(regex(pattern = "^price_[A-Za-z0-9]+$")))]
    pub stripe_price_ids: Vec<String>,

    /// Resource quota of the tenant's namespace.
    pub quota: TierQuota,

    /// Multiplies every component's replicas (a larger tier runs more copies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 20))]
    pub replicas_multiplier: Option<i32>,

    /// Per-component replicas or resources that replace the component's defaults in this tier.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub component_overrides: Vec<ComponentOverride>,

    /// A dedicated EC2 instance for each tenant of this tier. Without it, tenants share the
    /// cluster only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedicated_instance: Option<DedicatedInstance>,
}

/// The namespace quota of a tier.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct TierQuota {
    /// Total CPU requests of the namespace, e.g. `2` or `500m`.
    pub cpu: Quantity,
    /// Total memory requests of the namespace, e.g. `4Gi`.
    pub memory: Quantity,
    /// Total storage requested by the namespace's volume claims, e.g. `50Gi`.
    pub storage: Quantity,
    /// Maximum number of pods in the namespace.
    #[schemars(range(min = 1, max = 10000))]
    pub pods: i32,
}

/// Replaces a component's defaults within one tier.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct ComponentOverride {
    /// Name of the component in `spec.components`.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS1123_LABEL))]
    pub name: String,
    /// Replicas of the component in this tier (the multiplier does not apply on top).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: Option<i32>,
    /// Requests and limits of the component in this tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

/// The EC2 instance a dedicated tier gives each tenant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DedicatedInstance {
    /// EC2 instance type, e.g. `t3.small`.
    #[schemars(regex(pattern = "^[a-z][a-z0-9-]*[0-9][a-z0-9-]*\\.[a-z0-9]+$"))]
    pub instance_type: String,
    /// AMI the instance boots from, e.g. `ami-0abcdef1234567890`.
    #[schemars(regex(pattern = "^ami-[0-9a-f]+$"))]
    pub image_id: String,
    /// Size of the instance's root volume in GiB.
    #[serde(rename = "volumeSizeGiB", default = "default_volume_size_gib")]
    #[schemars(range(min = 8, max = 16384))]
    pub volume_size_gib: i32,
}

fn default_volume_size_gib() -> i32 {
    20
}

/// What the controller observed of a Platform.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlatformStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Number of tenants of this platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<i32>,
    /// Latest observations: `Valid` says whether the template is usable (e.g. no price in two tiers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::conditions")]
    pub conditions: Vec<Condition>,
    /// The newest revision whose rollout completed: new tenants start on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,
    /// The revision of the current spec, the one being rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_revision: Option<String>,
    /// Progress of the rollout of `updateRevision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutStatus>,
}

impl PlatformSpec {
    /// The tier with this name.
    pub fn tier(&self, name: &str) -> Option<&Tier> {
        self.tiers.iter().find(|t| t.name == name)
    }

    /// The tier a Stripe price buys, if any.
    pub fn tier_for_price(&self, price_id: &str) -> Option<&Tier> {
        self.tiers
            .iter()
            .find(|t| t.stripe_price_ids.iter().any(|p| p == price_id))
    }
}

impl PlatformSpec {
    /// Problems the OpenAPI schema cannot express: duplicate component or tier names, a price
    /// sold by two tiers, an override naming no component. Empty when the spec is usable.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for c in &self.components {
            if !seen.insert(c.name.as_str()) {
                problems.push(format!("component {:?} is defined twice", c.name));
            }
        }
        let mut tiers = std::collections::BTreeSet::new();
        let mut prices = BTreeMap::new();
        for t in &self.tiers {
            if !tiers.insert(t.name.as_str()) {
                problems.push(format!("tier {:?} is defined twice", t.name));
            }
            for p in &t.stripe_price_ids {
                if let Some(other) = prices.insert(p.as_str(), t.name.as_str()) {
                    problems.push(format!(
                        "price {p:?} is sold by tiers {other:?} and {:?}",
                        t.name
                    ));
                }
            }
            for o in &t.component_overrides {
                if !seen.contains(o.name.as_str()) {
                    problems.push(format!(
                        "tier {:?} overrides component {:?}, which does not exist",
                        t.name, o.name
                    ));
                }
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform_yaml(file: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/platforms")
            .join(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    fn examples() -> Vec<(String, Platform)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/platforms");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("examples/platforms")
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|f| f.ends_with(".yaml"))
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|f| {
                let p: Platform = serde_saphyr::from_str(&platform_yaml(&f))
                    .unwrap_or_else(|e| panic!("{f}: {e}"));
                (f, p)
            })
            .collect()
    }

    #[test]
    fn examples_are_consistent_and_sell_each_price_once() {
        let mut owners = BTreeMap::new();
        let all = examples();
        assert_eq!(all.len(), 8);
        for (file, p) in &all {
            assert_eq!(p.spec.problems(), Vec::<String>::new(), "{file}");
            for t in &p.spec.tiers {
                assert!(
                    !t.stripe_price_ids.is_empty(),
                    "{file}: tier {} sells no price",
                    t.name
                );
                for price in &t.stripe_price_ids {
                    let owner = format!("{file}/{}", t.name);
                    if let Some(prev) = owners.insert(price.clone(), owner.clone()) {
                        panic!("price {price} sold by {prev} and {owner}");
                    }
                }
            }
        }
    }

    #[test]
    fn problems_name_what_is_wrong() {
        let (_, mut p) = examples().into_iter().next().expect("an example");
        let mut dup = p.spec.tiers[0].clone();
        dup.component_overrides.push(ComponentOverride {
            name: "nope".into(),
            replicas: Some(1),
            resources: None,
        });
        p.spec.tiers.push(dup);
        let problems = p.spec.problems();
        assert!(
            problems.iter().any(|m| m.contains("defined twice")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|m| m.contains("sold by tiers")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|m| m.contains("\"nope\", which does not exist")),
            "{problems:?}"
        );
    }

    #[test]
    fn price_lookup_finds_the_tier() {
        let (_, p) = examples()
            .into_iter()
            .find(|(f, _)| f == "stackpro-business.yaml")
            .expect("stackpro-business example");
        let tier = &p.spec.tiers[1];
        let price = &tier.stripe_price_ids[0];
        assert_eq!(
            p.spec.tier_for_price(price).map(|t| &t.name),
            Some(&tier.name)
        );
        assert!(p.spec.tier_for_price("price_unknown").is_none());
        assert_eq!(p.spec.tier(&tier.name), Some(tier));
    }
}
