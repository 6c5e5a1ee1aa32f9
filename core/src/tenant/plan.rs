//! The desired objects of one tenant: a pure function of the Tenant, its Platform and tier.
//! No network, no clock, no randomness: generated credentials are filled in when the plan is
//! applied, keeping existing ones (`super::credentials`).

use std::collections::BTreeMap;

use super::network;
use crate::children::ChildKind;
use crate::contract::labels::{tenant_labels, COMPONENT, TENANT};
use ipnet::IpNet;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvFromSource, EnvVar, LimitRange, LimitRangeItem,
    LimitRangeSpec, Namespace, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceQuota, ResourceQuotaSpec, ResourceRequirements, SeccompProfile, SecretEnvSource,
    SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, TCPSocketAction, Volume,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, NetworkPolicy, ServiceBackendPort,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use stackplane_crds::naming::namespace_name;
use stackplane_crds::rollout::RolloutPolicy;
use stackplane_crds::{Component, Platform, Tenant, Tier};

/// Name of the tenant's ServiceAccount (and of its Role and RoleBinding).
pub const SERVICE_ACCOUNT: &str = "tenant-workload";
/// Name of the Secret of generated credentials.
pub const CREDENTIALS_SECRET: &str = "credentials";
/// Keys of the credentials Secret, each a generated random string.
pub const CREDENTIAL_KEYS: [&str; 2] = ["admin-password", "session-secret"];
/// Name of the Ingress.
pub const INGRESS: &str = "web";
/// Name of the TLS Secret the Ingress refers to (filled by a certificate manager).
pub const TLS_SECRET: &str = "web-tls";
/// Where a component's volume is mounted.
pub const DATA_MOUNT: &str = "/data";
/// Seconds between readiness probes of a component's port, and the failures in a row that
/// take a ready pod out of its Service.
const READINESS_PERIOD_SECS: i32 = 2;
const READINESS_FAILURES: i32 = 3;
/// Pod Security Standard enforced in every tenant namespace.
pub const POD_SECURITY_LEVEL: &str = "restricted";

/// Settings of the plan that come from the controller's configuration, not from the CRs.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanOptions {
    /// Namespaces whose pods may reach every tenant: the ingress controller's.
    pub ingress_namespaces: LabelSelector,
    /// The cluster's own pod and service ranges: cut out of `internet: true` and of any wider
    /// network a Platform or `backup_egress_cidrs` allows.
    pub cluster_cidrs: Vec<IpNet>,
    /// Networks stackplane's backup Jobs may reach besides DNS and their namespace: the object
    /// store and the tenants' databases. Empty: no such policy.
    pub backup_egress_cidrs: Vec<IpNet>,
    /// The controller's own access to each tenant namespace. `None` (a controller that holds
    /// every permission itself: local development, tests as cluster-admin): no binding planned.
    pub controller_access: Option<ControllerAccess>,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            ingress_namespaces: ingress_namespace_selector(DEFAULT_INGRESS_NAMESPACE),
            cluster_cidrs: Vec::new(),
            backup_egress_cidrs: Vec::new(),
            controller_access: None,
        }
    }
}

/// Who the controller is and the ClusterRole of what it does inside a tenant namespace: each
/// tenant namespace gets a RoleBinding of that ClusterRole to the controller's ServiceAccount
/// (its cluster-wide role holds no Secret access and no namespaced writes, see the chart's
/// controller-rbac.yaml).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerAccess {
    /// The controller's ServiceAccount.
    pub service_account: String,
    /// Its namespace (the controller's own).
    pub namespace: String,
    /// The ClusterRole bound in each tenant namespace.
    pub cluster_role: String,
}

impl ControllerAccess {
    /// The RoleBinding granting the controller `cluster_role` in a tenant namespace. Named
    /// after the ClusterRole: a RoleBinding's roleRef cannot change, so another ClusterRole
    /// (a renamed release) gets a new binding, applied before the old one is pruned.
    fn binding(&self, metadata: ObjectMeta) -> RoleBinding {
        RoleBinding {
            metadata,
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".to_owned(),
                kind: "ClusterRole".to_owned(),
                name: self.cluster_role.clone(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".to_owned(),
                name: self.service_account.clone(),
                namespace: Some(self.namespace.clone()),
                ..Subject::default()
            }]),
        }
    }
}

/// The ingress controller's namespace unless configured otherwise.
pub const DEFAULT_INGRESS_NAMESPACE: &str = "ingress-nginx";

/// The selector of the namespace named `name` (by the label Kubernetes 1.21+ sets, and which
/// an operator of an older cluster sets on the ingress controller's namespace by hand).
pub fn ingress_namespace_selector(name: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(
            network::NAMESPACE_NAME_LABEL.to_owned(),
            name.to_owned(),
        )])),
        ..LabelSelector::default()
    }
}

/// The network flags of the controller (and of the plugin's `diff`, which must plan as the
/// controller does), as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct NetworkFlags {
    /// `--ingress-namespace`.
    pub ingress_namespace: String,
    /// `--ingress-namespace-selector`: replaces `--ingress-namespace` when given.
    pub ingress_namespace_selector: Option<String>,
    /// `--cluster-cidrs` (comma-separated, possibly repeated).
    pub cluster_cidrs: Vec<String>,
    /// `--backup-egress-cidrs` (comma-separated, possibly repeated).
    pub backup_egress_cidrs: Vec<String>,
}

/// A network flag that does not parse, with the flag's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{flag}: {reason}")]
pub struct FlagError {
    pub flag: &'static str,
    pub reason: String,
}

impl PlanOptions {
    /// The options the network flags give, or the first flag that does not parse.
    pub fn from_flags(flags: &NetworkFlags) -> Result<PlanOptions, FlagError> {
        let err = |flag: &'static str| move |reason: String| FlagError { flag, reason };
        let ingress_namespaces = match &flags.ingress_namespace_selector {
            Some(text) => {
                network::parse_label_selector(text).map_err(err("ingress-namespace-selector"))?
            }
            None => {
                if !stackplane_crds::naming::is_dns_label(&flags.ingress_namespace) {
                    return Err(FlagError {
                        flag: "ingress-namespace",
                        reason: format!("{:?} is not a namespace name", flags.ingress_namespace),
                    });
                }
                ingress_namespace_selector(&flags.ingress_namespace)
            }
        };
        Ok(PlanOptions {
            ingress_namespaces,
            cluster_cidrs: network::parse_cidr_list(&flags.cluster_cidrs, false)
                .map_err(err("cluster-cidrs"))?,
            backup_egress_cidrs: network::parse_cidr_list(&flags.backup_egress_cidrs, true)
                .map_err(err("backup-egress-cidrs"))?,
            controller_access: None,
        })
    }
}

/// One namespaced object the tenant should have.
#[allow(clippy::large_enum_variant)] // a few per tenant, built once per reconcile
#[derive(Debug, Clone, PartialEq)]
pub enum Desired {
    ResourceQuota(ResourceQuota),
    LimitRange(LimitRange),
    NetworkPolicy(NetworkPolicy),
    ServiceAccount(ServiceAccount),
    Role(Role),
    RoleBinding(RoleBinding),
    /// The controller's own access to the namespace ([`ControllerAccess`]): applied before
    /// anything else in it, since every other write there goes through it.
    ControllerBinding(RoleBinding),
    /// The credentials Secret, without data: `apply` fills in existing or generated values.
    CredentialsSecret {
        name: String,
        labels: BTreeMap<String, String>,
    },
    PersistentVolumeClaim(PersistentVolumeClaim),
    Deployment(Deployment),
    Service(Service),
    Ingress(Ingress),
}

impl Desired {
    /// The registry entry of the object's kind.
    pub fn child_kind(&self) -> ChildKind {
        match self {
            Desired::ResourceQuota(_) => ChildKind::ResourceQuota,
            Desired::LimitRange(_) => ChildKind::LimitRange,
            Desired::NetworkPolicy(_) => ChildKind::NetworkPolicy,
            Desired::ServiceAccount(_) => ChildKind::ServiceAccount,
            Desired::Role(_) => ChildKind::Role,
            Desired::RoleBinding(_) | Desired::ControllerBinding(_) => ChildKind::RoleBinding,
            Desired::CredentialsSecret { .. } => ChildKind::Secret,
            Desired::PersistentVolumeClaim(_) => ChildKind::PersistentVolumeClaim,
            Desired::Deployment(_) => ChildKind::Deployment,
            Desired::Service(_) => ChildKind::Service,
            Desired::Ingress(_) => ChildKind::Ingress,
        }
    }

    /// Kind of the object, as the API names it.
    pub fn kind(&self) -> &'static str {
        self.child_kind().kind()
    }

    /// Name of the object.
    pub fn name(&self) -> &str {
        let meta = match self {
            Desired::ResourceQuota(o) => &o.metadata,
            Desired::LimitRange(o) => &o.metadata,
            Desired::NetworkPolicy(o) => &o.metadata,
            Desired::ServiceAccount(o) => &o.metadata,
            Desired::Role(o) => &o.metadata,
            Desired::RoleBinding(o) | Desired::ControllerBinding(o) => &o.metadata,
            Desired::CredentialsSecret { name, .. } => return name,
            Desired::PersistentVolumeClaim(o) => &o.metadata,
            Desired::Deployment(o) => &o.metadata,
            Desired::Service(o) => &o.metadata,
            Desired::Ingress(o) => &o.metadata,
        };
        meta.name.as_deref().unwrap_or_default()
    }

    /// The object as the JSON that is applied (by the controller, and by the plugin's dry run).
    /// `Null` for the credentials Secret, whose values are the cluster's: what is applied for it
    /// is [`super::credentials::secret`].
    pub fn to_json(&self) -> serde_json::Result<serde_json::Value> {
        match self {
            Desired::ResourceQuota(o) => serde_json::to_value(o),
            Desired::LimitRange(o) => serde_json::to_value(o),
            Desired::NetworkPolicy(o) => serde_json::to_value(o),
            Desired::ServiceAccount(o) => serde_json::to_value(o),
            Desired::Role(o) => serde_json::to_value(o),
            Desired::RoleBinding(o) | Desired::ControllerBinding(o) => serde_json::to_value(o),
            Desired::PersistentVolumeClaim(o) => serde_json::to_value(o),
            Desired::Deployment(o) => serde_json::to_value(o),
            Desired::Service(o) => serde_json::to_value(o),
            Desired::Ingress(o) => serde_json::to_value(o),
            Desired::CredentialsSecret { .. } => Ok(serde_json::Value::Null),
        }
    }
}

/// A component as this tenant runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedComponent {
    pub name: String,
    pub replicas: i32,
}

/// Everything one tenant should have.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The tenant's namespace (cluster-scoped, applied first).
    pub namespace: Namespace,
    /// The namespaced objects, in the order they are applied.
    pub objects: Vec<Desired>,
    /// Each component and its replicas.
    pub components: Vec<PlannedComponent>,
    /// `https://<subdomain>.<domain>`.
    pub endpoint: String,
}

impl Plan {
    /// Name of the tenant's namespace.
    pub fn namespace_name(&self) -> &str {
        self.namespace.metadata.name.as_deref().unwrap_or_default()
    }

    /// Whether an object of `kind` named `name` is desired.
    pub fn wants(&self, kind: &str, name: &str) -> bool {
        self.objects
            .iter()
            .any(|o| o.kind() == kind && o.name() == name)
    }
}

/// Replicas of `component` in `tier`: the tier's override, else the component's replicas times
/// the tier's multiplier; zero when the tenant is suspended.
pub fn replicas(component: &Component, tier: &Tier, suspended: bool) -> i32 {
    if suspended {
        return 0;
    }
    let overridden = tier
        .component_overrides
        .iter()
        .find(|o| o.name == component.name)
        .and_then(|o| o.replicas);
    overridden.unwrap_or_else(|| {
        component
            .replicas
            .saturating_mul(tier.replicas_multiplier.unwrap_or(1))
    })
}

/// Whether the tenant's workloads are scaled to zero: its stack should not be serving
/// ([`super::serving`]).
pub fn scaled_down(tenant: &Tenant) -> bool {
    super::serving::idle_reason(tenant).is_some()
}

/// The desired objects of `tenant` on `platform` in `tier`.
pub fn plan(tenant: &Tenant, platform: &Platform, tier: &Tier, options: &PlanOptions) -> Plan {
    let tenant_name = tenant.metadata.name.clone().unwrap_or_default();
    let platform_name = platform.metadata.name.clone().unwrap_or_default();
    let ns = namespace_name(&tenant_name);
    let labels = tenant_labels(&tenant_name, &platform_name);
    let meta = |name: &str, extra: &[(&str, &str)]| {
        let mut l = labels.clone();
        for (k, v) in extra {
            l.insert((*k).to_owned(), (*v).to_owned());
        }
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(ns.clone()),
            labels: Some(l),
            ..ObjectMeta::default()
        }
    };

    let mut ns_labels = labels.clone();
    // Kubernetes 1.21+ sets it; 1.20 does not, and namespace selectors (other tenants', the
    // ingress controller's) match namespaces by it.
    ns_labels.insert(network::NAMESPACE_NAME_LABEL.to_owned(), ns.clone());
    for mode in ["enforce", "audit", "warn"] {
        ns_labels.insert(
            format!("pod-security.kubernetes.io/{mode}"),
            POD_SECURITY_LEVEL.to_owned(),
        );
    }
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(ns.clone()),
            labels: Some(ns_labels),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };

    // The controller's binding first: without it the controller may write nothing else here.
    let mut objects: Vec<Desired> = options
        .controller_access
        .iter()
        .map(|access| Desired::ControllerBinding(access.binding(meta(&access.cluster_role, &[]))))
        .collect();
    objects.push(Desired::ResourceQuota(resource_quota(
        meta("tenant-quota", &[]),
        tier,
    )));
    objects.push(Desired::LimitRange(limit_range(meta("tenant-limits", &[]))));
    objects.extend(
        network::policies(
            &meta,
            &platform.spec,
            &options.ingress_namespaces,
            &options.cluster_cidrs,
            &options.backup_egress_cidrs,
        )
        .into_iter()
        .map(Desired::NetworkPolicy),
    );
    objects.push(Desired::ServiceAccount(ServiceAccount {
        metadata: meta(SERVICE_ACCOUNT, &[]),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }));
    objects.push(Desired::Role(Role {
        metadata: meta(SERVICE_ACCOUNT, &[]),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".to_owned()]),
            verbs: ["get", "list", "watch"].map(String::from).to_vec(),
            ..PolicyRule::default()
        }]),
    }));
    objects.push(Desired::RoleBinding(RoleBinding {
        metadata: meta(SERVICE_ACCOUNT, &[]),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name: SERVICE_ACCOUNT.to_owned(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: SERVICE_ACCOUNT.to_owned(),
            namespace: Some(ns.clone()),
            ..Subject::default()
        }]),
    }));
    objects.push(Desired::CredentialsSecret {
        name: CREDENTIALS_SECRET.to_owned(),
        labels: labels.clone(),
    });

    let down = scaled_down(tenant);
    let mut components = Vec::new();
    for c in &platform.spec.components {
        let n = replicas(c, tier, down);
        components.push(PlannedComponent {
            name: c.name.clone(),
            replicas: n,
        });
        let cmeta = meta(&c.name, &[(COMPONENT, &c.name)]);
        if let Some(size) = &c.storage {
            objects.push(Desired::PersistentVolumeClaim(PersistentVolumeClaim {
                metadata: cmeta.clone(),
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([("storage".to_owned(), size.clone())])),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                ..PersistentVolumeClaim::default()
            }));
        }
        let selector = BTreeMap::from([
            (TENANT.to_owned(), tenant_name.clone()),
            (COMPONENT.to_owned(), c.name.clone()),
        ]);
        objects.push(Desired::Deployment(deployment(
            cmeta.clone(),
            c,
            tier,
            n,
            selector.clone(),
            progress_deadline(platform),
        )));
        objects.push(Desired::Service(Service {
            metadata: cmeta,
            spec: Some(ServiceSpec {
                selector: Some(selector),
                ports: Some(vec![ServicePort {
                    name: Some("http".to_owned()),
                    port: c.port,
                    target_port: Some(IntOrString::Int(c.port)),
                    protocol: Some("TCP".to_owned()),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }));
    }

    let host = format!("{}.{}", tenant.subdomain(), platform.spec.domain);
    if let Some(front) = platform.spec.components.first() {
        objects.push(Desired::Ingress(Ingress {
            metadata: meta(INGRESS, &[]),
            spec: Some(IngressSpec {
                tls: Some(vec![IngressTLS {
                    hosts: Some(vec![host.clone()]),
                    secret_name: Some(TLS_SECRET.to_owned()),
                }]),
                rules: Some(vec![IngressRule {
                    host: Some(host.clone()),
                    http: Some(HTTPIngressRuleValue {
                        paths: vec![HTTPIngressPath {
                            path: Some("/".to_owned()),
                            path_type: "Prefix".to_owned(),
                            backend: IngressBackend {
                                service: Some(IngressServiceBackend {
                                    name: front.name.clone(),
                                    port: Some(ServiceBackendPort {
                                        number: Some(front.port),
                                        ..ServiceBackendPort::default()
                                    }),
                                }),
                                ..IngressBackend::default()
                            },
                        }],
                    }),
                }]),
                ..IngressSpec::default()
            }),
            ..Ingress::default()
        }));
    }

    Plan {
        namespace,
        objects,
        components,
        endpoint: format!("https://{host}"),
    }
}

fn resource_quota(metadata: ObjectMeta, tier: &Tier) -> ResourceQuota {
    let q = &tier.quota;
    let hard = BTreeMap::from([
        ("requests.cpu".to_owned(), q.cpu.clone()),
        ("limits.cpu".to_owned(), q.cpu.clone()),
        ("requests.memory".to_owned(), q.memory.clone()),
        ("limits.memory".to_owned(), q.memory.clone()),
        ("requests.storage".to_owned(), q.storage.clone()),
        ("pods".to_owned(), Quantity(q.pods.to_string())),
    ]);
    ResourceQuota {
        metadata,
        spec: Some(ResourceQuotaSpec {
            hard: Some(hard),
            ..ResourceQuotaSpec::default()
        }),
        ..ResourceQuota::default()
    }
}

fn limit_range(metadata: ObjectMeta) -> LimitRange {
    let list = |cpu: &str, mem: &str| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(mem.to_owned())),
        ])
    };
    LimitRange {
        metadata,
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".to_owned(),
                default_request: Some(list("100m", "128Mi")),
                default: Some(list("500m", "512Mi")),
                ..LimitRangeItem::default()
            }],
        }),
    }
}

/// Seconds a component's Deployment may take to make progress before Kubernetes marks it
/// `ProgressDeadlineExceeded` (and the tenant turns `Degraded`): the Platform's rollout
/// `progressDeadline`, the time a tenant has to become healthy (600 s, Kubernetes's own
/// default, without a rollout policy).
fn progress_deadline(platform: &Platform) -> i32 {
    let secs = platform.spec.rollout.as_ref().map_or_else(
        || RolloutPolicy::default().progress_deadline,
        |r| r.progress_deadline,
    );
    i32::try_from(secs).unwrap_or(i32::MAX)
}

fn deployment(
    metadata: ObjectMeta,
    c: &Component,
    tier: &Tier,
    replicas: i32,
    selector: BTreeMap<String, String>,
    progress_deadline_secs: i32,
) -> Deployment {
    let resources = tier
        .component_overrides
        .iter()
        .find(|o| o.name == c.name)
        .and_then(|o| o.resources.clone())
        .or_else(|| c.resources.clone());
    let mut volumes = None;
    let mut mounts = None;
    if c.storage.is_some() {
        volumes = Some(vec![Volume {
            name: "data".to_owned(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: c.name.clone(),
                ..PersistentVolumeClaimVolumeSource::default()
            }),
            ..Volume::default()
        }]);
        mounts = Some(vec![VolumeMount {
            name: "data".to_owned(),
            mount_path: DATA_MOUNT.to_owned(),
            ..VolumeMount::default()
        }]);
    }
    let env: Vec<EnvVar> = c
        .env
        .iter()
        .map(|e| EnvVar {
            name: e.name.clone(),
            value: Some(e.value.clone()),
            ..EnvVar::default()
        })
        .collect();
    let container = Container {
        name: c.name.clone(),
        image: Some(c.image.clone()),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_owned()),
            container_port: c.port,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        env: (!env.is_empty()).then_some(env),
        env_from: Some(vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: CREDENTIALS_SECRET.to_owned(),
                optional: Some(false),
            }),
            ..EnvFromSource::default()
        }]),
        resources: resources.map(|r| ResourceRequirements {
            requests: r.requests,
            limits: r.limits,
            ..ResourceRequirements::default()
        }),
        volume_mounts: mounts,
        // A pod counts as ready (and gets traffic) only once its port accepts connections.
        readiness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("http".to_owned()),
                ..TCPSocketAction::default()
            }),
            period_seconds: Some(READINESS_PERIOD_SECS),
            failure_threshold: Some(READINESS_FAILURES),
            ..Probe::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let pod_labels = metadata.labels.clone();
    Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            progress_deadline_seconds: Some(progress_deadline_secs),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            // A volume can be mounted by one pod at a time: replace, do not surge.
            strategy: c.storage.as_ref().map(|_| DeploymentStrategy {
                type_: Some("Recreate".to_owned()),
                ..DeploymentStrategy::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: pod_labels,
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(SERVICE_ACCOUNT.to_owned()),
                    automount_service_account_token: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_owned(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    volumes,
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::labels::{MANAGED_BY, PLATFORM};

    fn example(file: &str) -> Platform {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/platforms")
            .join(file);
        let text = std::fs::read_to_string(path).expect("example platform");
        serde_saphyr::from_str(&text).expect("a Platform")
    }

    fn tenant(platform: &str, tier: &str) -> Tenant {
        let mut t = Tenant::new(
            "acme",
            stackplane_crds::TenantSpec {
                platform: platform.into(),
                tier: tier.into(),
                customer: stackplane_crds::Customer::default(),
                subscription: None,
                subdomain: None,
                suspended: false,
                paused: false,
                hold: None,
                deletion_policy: stackplane_crds::DeletionPolicy::Delete,
                backup: None,
                cancelled_at: None,
                platform_revision: None,
            },
        );
        t.metadata.generation = Some(1);
        t
    }

    fn plan_for(t: &Tenant, p: &Platform) -> Plan {
        let tier = p.spec.tier(&t.spec.tier).expect("tier");
        plan(t, p, tier, &PlanOptions::default())
    }

    fn deployment<'a>(plan: &'a Plan, name: &str) -> &'a Deployment {
        plan.objects
            .iter()
            .find_map(|o| match o {
                Desired::Deployment(d) if d.metadata.name.as_deref() == Some(name) => Some(d),
                _ => None,
            })
            .expect("deployment")
    }

    #[test]
    fn every_object_is_labelled_and_in_the_tenant_namespace() {
        let p = example("video-site.yaml");
        let plan = plan_for(&tenant("video-site", "starter"), &p);
        assert_eq!(plan.namespace_name(), "tenant-acme");
        assert_eq!(plan.endpoint, "https://acme.videosite.tv");
        let ns_labels = plan.namespace.metadata.labels.as_ref().expect("labels");
        assert_eq!(
            ns_labels["pod-security.kubernetes.io/enforce"],
            "restricted"
        );
        for o in &plan.objects {
            let (ns, labels) = match o {
                Desired::CredentialsSecret { labels, .. } => (Some("tenant-acme"), labels.clone()),
                _ => {
                    let v = serde_json::to_value(
                        match o {
                            Desired::Deployment(d) => serde_json::to_value(d),
                            Desired::Service(s) => serde_json::to_value(s),
                            Desired::PersistentVolumeClaim(s) => serde_json::to_value(s),
                            Desired::Ingress(s) => serde_json::to_value(s),
                            Desired::ResourceQuota(s) => serde_json::to_value(s),
                            Desired::LimitRange(s) => serde_json::to_value(s),
                            Desired::NetworkPolicy(s) => serde_json::to_value(s),
                            Desired::ServiceAccount(s) => serde_json::to_value(s),
                            Desired::Role(s) => serde_json::to_value(s),
                            Desired::RoleBinding(s) | Desired::ControllerBinding(s) => {
                                serde_json::to_value(s)
                            }
                            Desired::CredentialsSecret { .. } => unreachable!(),
                        }
                        .expect("serialize"),
                    )
                    .expect("value");
                    assert_eq!(v["metadata"]["namespace"], "tenant-acme", "{}", o.name());
                    let labels: BTreeMap<String, String> =
                        serde_json::from_value(v["metadata"]["labels"].clone()).expect("labels");
                    (Some("tenant-acme"), labels)
                }
            };
            assert!(ns.is_some());
            assert_eq!(labels[MANAGED_BY], "stackplane", "{}", o.name());
            assert_eq!(labels[TENANT], "acme", "{}", o.name());
            assert_eq!(labels[PLATFORM], "video-site", "{}", o.name());
        }
        // storage only has a volume; three deployments and services; one ingress.
        let count = |k: &str| plan.objects.iter().filter(|o| o.kind() == k).count();
        assert_eq!(count("Deployment"), 3);
        assert_eq!(count("Service"), 3);
        assert_eq!(count("PersistentVolumeClaim"), 1);
        assert!(plan.wants("PersistentVolumeClaim", "storage"));
        assert_eq!(count("Ingress"), 1);
        // Deny both ways, same namespace, ingress controller, DNS; video-site declares no egress.
        assert_eq!(count("NetworkPolicy"), 5);
    }

    #[test]
    fn replicas_follow_tier_overrides_multiplier_and_suspension() {
        let p = example("video-site.yaml");
        let starter = plan_for(&tenant("video-site", "starter"), &p);
        assert_eq!(
            deployment(&starter, "transcoder")
                .spec
                .as_ref()
                .and_then(|s| s.replicas),
            Some(1)
        );
        let studio = plan_for(&tenant("video-site", "studio"), &p);
        assert_eq!(
            deployment(&studio, "transcoder")
                .spec
                .as_ref()
                .and_then(|s| s.replicas),
            Some(6)
        );
        let lg = example("leadgen-pro.yaml");
        let pro = plan_for(&tenant("leadgen-pro", "professional"), &lg);
        assert_eq!(
            deployment(&pro, "api")
                .spec
                .as_ref()
                .and_then(|s| s.replicas),
            Some(2)
        );
        let mut suspended = tenant("leadgen-pro", "professional");
        suspended.spec.suspended = true;
        let down = plan_for(&suspended, &lg);
        assert!(down.components.iter().all(|c| c.replicas == 0));
        assert!(
            down.wants("Secret", CREDENTIALS_SECRET),
            "data kept while suspended"
        );
    }

    #[test]
    fn quota_comes_from_the_tier_and_service_account_has_no_token() {
        let lg = example("leadgen-pro.yaml");
        let plan = plan_for(&tenant("leadgen-pro", "enterprise"), &lg);
        let quota = plan
            .objects
            .iter()
            .find_map(|o| match o {
                Desired::ResourceQuota(q) => Some(q),
                _ => None,
            })
            .expect("quota");
        let hard = quota
            .spec
            .as_ref()
            .and_then(|s| s.hard.as_ref())
            .expect("hard");
        assert_eq!(hard["requests.cpu"], Quantity("8".into()));
        assert_eq!(hard["pods"], Quantity("40".into()));
        let sa = plan
            .objects
            .iter()
            .find_map(|o| match o {
                Desired::ServiceAccount(s) => Some(s),
                _ => None,
            })
            .expect("service account");
        assert_eq!(sa.automount_service_account_token, Some(false));
    }

    fn with_access() -> PlanOptions {
        PlanOptions {
            controller_access: Some(ControllerAccess {
                service_account: "stackplane-controller".into(),
                namespace: "stackplane-system".into(),
                cluster_role: "stackplane-controller-tenant".into(),
            }),
            ..PlanOptions::default()
        }
    }

    #[test]
    fn the_controller_binds_itself_first_in_each_tenant_namespace() {
        let p = example("leadgen-pro.yaml");
        let t = tenant("leadgen-pro", "professional");
        let tier = p.spec.tier("professional").expect("tier");
        let plan = plan(&t, &p, tier, &with_access());
        let Some(Desired::ControllerBinding(binding)) = plan.objects.first() else {
            panic!(
                "the controller's binding comes first: {:?}",
                plan.objects.first()
            );
        };
        assert_eq!(
            binding.metadata.name.as_deref(),
            Some("stackplane-controller-tenant")
        );
        assert_eq!(binding.metadata.namespace.as_deref(), Some("tenant-acme"));
        assert_eq!(
            binding.metadata.labels.as_ref().map(|l| l[TENANT].as_str()),
            Some("acme"),
            "labelled like every child: pruned and diffed with them"
        );
        assert_eq!(
            (
                binding.role_ref.kind.as_str(),
                binding.role_ref.name.as_str()
            ),
            ("ClusterRole", "stackplane-controller-tenant")
        );
        let subjects = binding.subjects.as_deref().unwrap_or_default();
        assert_eq!(subjects.len(), 1);
        assert_eq!(
            (
                subjects[0].kind.as_str(),
                subjects[0].name.as_str(),
                subjects[0].namespace.as_deref()
            ),
            (
                "ServiceAccount",
                "stackplane-controller",
                Some("stackplane-system")
            )
        );
        assert_eq!(plan.objects[0].child_kind(), ChildKind::RoleBinding);
        assert!(plan.wants("RoleBinding", "stackplane-controller-tenant"));
        // It comes before the Secret (and every other object the binding lets it write).
        let secret = plan
            .objects
            .iter()
            .position(|o| o.child_kind() == ChildKind::Secret)
            .expect("a Secret");
        assert!(secret > 0);
        // The rest of the plan is the same as without the binding.
        let without = plan_for(&t, &p);
        assert_eq!(&plan.objects[1..], &without.objects[..]);
        assert!(!without
            .objects
            .iter()
            .any(|o| matches!(o, Desired::ControllerBinding(_))));
    }

    #[test]
    fn the_namespace_carries_its_name_label_and_the_ingress_selector_comes_from_the_flags() {
        let p = example("tackle.yaml");
        let t = tenant("tackle", &p.spec.tiers[0].name);
        let planned = plan_for(&t, &p);
        let labels = planned.namespace.metadata.labels.as_ref().expect("labels");
        assert_eq!(labels[network::NAMESPACE_NAME_LABEL], "tenant-acme");

        let flags = |selector: Option<&str>| NetworkFlags {
            ingress_namespace: "ingress-nginx".into(),
            ingress_namespace_selector: selector.map(str::to_owned),
            cluster_cidrs: vec!["10.244.0.0/16,10.96.0.0/12".into()],
            backup_egress_cidrs: vec!["192.0.2.0/24".into()],
        };
        let by_name = PlanOptions::from_flags(&flags(None)).expect("options");
        assert_eq!(
            by_name.ingress_namespaces,
            PlanOptions::default().ingress_namespaces
        );
        assert_eq!(by_name.cluster_cidrs.len(), 2);
        let by_selector =
            PlanOptions::from_flags(&flags(Some("app.kubernetes.io/name=ingress-nginx")))
                .expect("options");
        let plan = plan(&t, &p, &p.spec.tiers[0], &by_selector);
        let from_ingress = plan
            .objects
            .iter()
            .find_map(|o| match o {
                Desired::NetworkPolicy(n)
                    if n.metadata.name.as_deref() == Some(network::ALLOW_INGRESS_CONTROLLER) =>
                {
                    n.spec.as_ref()?.ingress.as_ref()?[0].from.clone()
                }
                _ => None,
            })
            .expect("allow-ingress-controller");
        assert_eq!(
            from_ingress[0].namespace_selector,
            Some(by_selector.ingress_namespaces.clone())
        );
        assert!(plan.wants("NetworkPolicy", network::ALLOW_BACKUP_EGRESS));

        let err = PlanOptions::from_flags(&flags(Some("tier in (edge"))).expect_err("bad");
        assert_eq!(err.flag, "ingress-namespace-selector");
        let mut bad = flags(None);
        bad.backup_egress_cidrs = vec!["169.254.169.254/32".into()];
        let err = PlanOptions::from_flags(&bad).expect_err("link-local");
        assert!(
            err.to_string().starts_with("--backup-egress-cidrs: "),
            "{err}"
        );
    }

    #[test]
    fn plan_is_deterministic() {
        let p = example("clientcontact.yaml");
        let tier = p.spec.tiers[0].name.clone();
        let t = tenant("clientcontact", &tier);
        assert_eq!(plan_for(&t, &p), plan_for(&t, &p));
    }
}
