//! The one registry of the kinds of object a tenant's namespace holds (Stackable's
//! `ClusterResources` idea): each kind once, in the order a stack is applied, with what becomes
//! of an object the plan no longer wants, and the API coordinates a generic client needs (the
//! plugin lists and diffs by them). The controller maps each kind to its typed executors with
//! an exhaustive `match`, so a kind added here without executors does not compile.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    LimitRange, PersistentVolumeClaim, ResourceQuota, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::core::ApiResource;

/// What becomes of an object of a kind once the plan no longer wants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unwanted {
    /// Deleted (it holds no customer data, and the plan can make it again).
    Delete,
    /// Kept and labelled retained (customer data: volume claims).
    Retain,
}

/// A kind of object in a tenant's namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChildKind {
    ResourceQuota,
    LimitRange,
    NetworkPolicy,
    ServiceAccount,
    Role,
    RoleBinding,
    Secret,
    PersistentVolumeClaim,
    Deployment,
    Service,
    Ingress,
}

impl ChildKind {
    /// Every kind, in the order they are applied (what others refer to first: quota before
    /// workloads, the ServiceAccount before its RoleBinding).
    pub const ALL: [ChildKind; 11] = [
        ChildKind::ResourceQuota,
        ChildKind::LimitRange,
        ChildKind::NetworkPolicy,
        ChildKind::ServiceAccount,
        ChildKind::Role,
        ChildKind::RoleBinding,
        ChildKind::Secret,
        ChildKind::PersistentVolumeClaim,
        ChildKind::Deployment,
        ChildKind::Service,
        ChildKind::Ingress,
    ];

    /// The kind, as the API names it.
    pub fn kind(self) -> &'static str {
        self.api().kind
    }

    /// What becomes of an object of this kind the plan no longer wants.
    pub fn unwanted(self) -> Unwanted {
        match self {
            ChildKind::PersistentVolumeClaim => Unwanted::Retain,
            _ => Unwanted::Delete,
        }
    }

    /// Whether the controller watches this kind across all namespaces (by label, for drift).
    /// Not Secrets: a cluster-wide watch needs `list`/`watch` of every Secret in the cluster,
    /// which the controller must not hold (it reads Secrets only in tenant namespaces, through
    /// its per-namespace binding). Drift of an unwatched kind is found by the reconcile itself,
    /// which looks at the tenant's objects of these kinds on every pass (the periodic resync
    /// among them).
    pub fn watched(self) -> bool {
        self != ChildKind::Secret
    }

    /// Whether the controller watches whole objects of this kind (their status feeds the
    /// tenant's), not only their metadata.
    pub fn watched_whole(self) -> bool {
        self == ChildKind::Deployment
    }

    /// The registry entry of the kind the API names `kind`.
    pub fn from_kind(kind: &str) -> Option<ChildKind> {
        ChildKind::ALL.into_iter().find(|k| k.kind() == kind)
    }

    /// Group, version, kind and plural of this kind: what a dynamic client needs.
    pub fn api_resource(self) -> ApiResource {
        let a = self.api();
        ApiResource {
            group: a.group.to_owned(),
            version: a.version.to_owned(),
            api_version: a.api_version.to_owned(),
            kind: a.kind.to_owned(),
            plural: a.plural.to_owned(),
        }
    }

    fn api(self) -> Api {
        match self {
            ChildKind::ResourceQuota => Api::of::<ResourceQuota>(),
            ChildKind::LimitRange => Api::of::<LimitRange>(),
            ChildKind::NetworkPolicy => Api::of::<NetworkPolicy>(),
            ChildKind::ServiceAccount => Api::of::<ServiceAccount>(),
            ChildKind::Role => Api::of::<Role>(),
            ChildKind::RoleBinding => Api::of::<RoleBinding>(),
            ChildKind::Secret => Api::of::<Secret>(),
            ChildKind::PersistentVolumeClaim => Api::of::<PersistentVolumeClaim>(),
            ChildKind::Deployment => Api::of::<Deployment>(),
            ChildKind::Service => Api::of::<Service>(),
            ChildKind::Ingress => Api::of::<Ingress>(),
        }
    }
}

impl std::fmt::Display for ChildKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

/// The API coordinates of a kind, read from its k8s-openapi type (never typed by hand).
struct Api {
    group: &'static str,
    version: &'static str,
    api_version: &'static str,
    kind: &'static str,
    plural: &'static str,
}

impl Api {
    fn of<K: k8s_openapi::Resource>() -> Api {
        Api {
            group: K::GROUP,
            version: K::VERSION,
            api_version: K::API_VERSION,
            kind: K::KIND,
            plural: K::URL_PATH_SEGMENT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_registered_once() {
        let mut kinds: Vec<&str> = ChildKind::ALL.iter().map(|k| k.kind()).collect();
        kinds.sort_unstable();
        let n = kinds.len();
        kinds.dedup();
        assert_eq!(kinds.len(), n, "a kind registered twice");
    }

    #[test]
    fn only_claims_are_retained() {
        for k in ChildKind::ALL {
            let retained = k.unwanted() == Unwanted::Retain;
            assert_eq!(retained, k == ChildKind::PersistentVolumeClaim, "{k}");
        }
    }

    #[test]
    fn secrets_alone_are_not_watched_and_watched_whole_kinds_are_watched() {
        for k in ChildKind::ALL {
            assert_eq!(k.watched(), k != ChildKind::Secret, "{k}");
            if k.watched_whole() {
                assert!(k.watched(), "{k}");
            }
        }
    }

    #[test]
    fn each_kind_is_found_by_its_name() {
        for k in ChildKind::ALL {
            assert_eq!(ChildKind::from_kind(k.kind()), Some(k));
        }
        assert_eq!(ChildKind::from_kind("Namespace"), None);
    }

    #[test]
    fn api_coordinates_come_from_the_types() {
        let d = ChildKind::Deployment.api_resource();
        assert_eq!(
            (d.group.as_str(), d.version.as_str(), d.plural.as_str()),
            ("apps", "v1", "deployments")
        );
        let q = ChildKind::ResourceQuota.api_resource();
        assert_eq!((q.group.as_str(), q.api_version.as_str()), ("", "v1"));
        let i = ChildKind::Ingress.api_resource();
        assert_eq!(i.api_version, "networking.k8s.io/v1");
    }

    #[test]
    fn referenced_kinds_come_before_those_that_refer_to_them() {
        let at = |k: ChildKind| ChildKind::ALL.iter().position(|x| *x == k);
        assert!(at(ChildKind::ResourceQuota) < at(ChildKind::Deployment));
        assert!(at(ChildKind::ServiceAccount) < at(ChildKind::RoleBinding));
        assert!(at(ChildKind::Role) < at(ChildKind::RoleBinding));
        assert!(at(ChildKind::PersistentVolumeClaim) < at(ChildKind::Deployment));
        assert!(at(ChildKind::Secret) < at(ChildKind::Deployment));
    }
}
