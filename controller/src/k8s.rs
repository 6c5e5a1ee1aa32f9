//! What every Kubernetes call of the reconcilers shares: the field manager they apply with and
//! how they read the API server's answers. (The time limit of each call is the client's own
//! layer, `crate::kube_client`, so a hung API server fails a reconcile instead of holding one
//! of the controller's workers forever.)

use std::fmt::Debug;

use kube::core::NamespaceResourceScope;
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A namespaced Kubernetes type the controller reads and writes with typed `Api`s.
pub trait Child:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + k8s_openapi::Resource
    + Serialize
    + DeserializeOwned
    + Clone
    + Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Child for K where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + k8s_openapi::Resource
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug
        + Send
        + Sync
        + 'static
{
}

/// Field manager of everything the controller writes (objects and status, by server-side
/// apply). Other writers of the same objects use their own (`stackplane-billing`).
pub const FIELD_MANAGER: &str = stackplane_core::contract::field_managers::CONTROLLER;

/// Whether `error` is the API server's 404.
pub fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(s) if s.code == 404)
}

/// Whether `error` is the API server's 409 (a conflict: stale resourceVersion, or a name taken).
pub fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(s) if s.code == 409)
}
