//! A Tenant as the controller's cache keeps it: metadata and spec typed, the status as the JSON
//! text the API server sent.
//!
//! The cache holds every Tenant for as long as the controller runs, and its status is the
//! largest and most fragmented part of one: measured at 1,429 bytes of JSON per tenant, a typed
//! status is 22 allocations and 1,312 bytes of the allocator's chunks, the same status as text one
//! allocation of about 670. What reads the cache between passes (predicates, the rollout's
//! planner, the backup scheduler) reads metadata and spec; the one reader of the whole status is
//! a reconcile, which parses it once per pass ([`CachedTenant::to_tenant`], microseconds against
//! a pass's planning).

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use stackplane_crds::{Tenant, TenantSpec, TenantStatus};

/// Where `kubectl apply` (client-side) keeps the object as last applied.
const KUBECTL_LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A Tenant with its status kept as JSON text. Deserialized straight from the watch (no typed
/// status is ever built for the cache); the same kind, group, version and URL as [`Tenant`].
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct CachedTenant {
    pub metadata: ObjectMeta,
    pub spec: TenantSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Box<RawValue>>,
}

impl CachedTenant {
    /// The whole Tenant, for a pass (the only reader of the status).
    pub fn to_tenant(&self) -> Result<Tenant, serde_json::Error> {
        let status = self
            .status
            .as_deref()
            .map(|s| serde_json::from_str::<TenantStatus>(s.get()))
            .transpose()?;
        Ok(Tenant {
            metadata: self.metadata.clone(),
            spec: self.spec.clone(),
            status,
        })
    }

    /// The part of the status that `T` names, parsed from the text alone (`None`: no status,
    /// or not a `T`). For readers of a few fields of every tenant, such as the rollout's
    /// planner on each pass.
    pub fn status_part<T: DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_str(self.status.as_deref()?.get()).ok()
    }

    /// Drops what the cache never reads (managedFields, a third of a Tenant's size; the copy
    /// of the whole object that `kubectl apply` keeps in an annotation, which doubles a Tenant
    /// applied by hand) and the spare room of its lists (`Vec::clear` keeps the buffer; a
    /// deserialized list keeps its grown capacity). Nothing is written back from the cache as
    /// a whole: the metadata and status writes name only their own fields.
    pub fn trim(&mut self) {
        self.metadata.managed_fields = None;
        if let Some(annotations) = &mut self.metadata.annotations {
            annotations.remove(KUBECTL_LAST_APPLIED);
        }
        if let Some(finalizers) = &mut self.metadata.finalizers {
            finalizers.shrink_to_fit();
        }
    }
}

impl From<&Tenant> for CachedTenant {
    /// The cached form of `tenant` (tests, and writers that hold a typed Tenant).
    fn from(tenant: &Tenant) -> Self {
        CachedTenant {
            metadata: tenant.metadata.clone(),
            spec: tenant.spec.clone(),
            status: tenant
                .status
                .as_ref()
                .and_then(|s| serde_json::value::to_raw_value(s).ok()),
        }
    }
}

impl Resource for CachedTenant {
    type DynamicType = ();
    type Scope = <Tenant as Resource>::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        Tenant::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        Tenant::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        Tenant::version(dt)
    }

    fn api_version(dt: &()) -> Cow<'_, str> {
        Tenant::api_version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        Tenant::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn tenant() -> Tenant {
        let mut t = Tenant::new("acme", TenantSpec::new("crm", "starter"));
        t.metadata.managed_fields = Some(vec![Default::default()]);
        let mut finalizers = Vec::with_capacity(8);
        finalizers.push("stackplane.io/tenant-cleanup".to_owned());
        t.metadata.finalizers = Some(finalizers);
        t.status = Some(TenantStatus {
            platform_revision: Some("crm-7f3a".into()),
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "Available".into(),
                message: "every workload is available".into(),
                observed_generation: Some(1),
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            }],
            ..TenantStatus::default()
        });
        t
    }

    /// Tenants compare by their JSON (the derived type has no `PartialEq`).
    fn json_of(t: &Tenant) -> serde_json::Value {
        serde_json::to_value(t).unwrap()
    }

    #[test]
    fn a_watch_event_becomes_the_same_tenant_again() {
        let t = tenant();
        let json = serde_json::to_string(&t).unwrap();
        let cached: CachedTenant = serde_json::from_str(&json).unwrap();
        assert_eq!(json_of(&cached.to_tenant().unwrap()), json_of(&t));
        assert_eq!(
            json_of(&CachedTenant::from(&t).to_tenant().unwrap()),
            json_of(&t)
        );
    }

    #[test]
    fn it_is_the_tenant_kind_at_the_tenant_url() {
        assert_eq!(CachedTenant::kind(&()), "Tenant");
        assert_eq!(CachedTenant::api_version(&()), Tenant::api_version(&()));
        assert_eq!(
            CachedTenant::url_path(&(), None),
            Tenant::url_path(&(), None)
        );
    }

    #[test]
    fn a_part_of_the_status_is_read_without_the_rest() {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Running {
            platform_revision: Option<String>,
        }
        let cached = CachedTenant::from(&tenant());
        let running = cached.status_part::<Running>().unwrap();
        assert_eq!(running.platform_revision.as_deref(), Some("crm-7f3a"));
        let mut fresh = tenant();
        fresh.status = None;
        assert!(CachedTenant::from(&fresh)
            .status_part::<Running>()
            .is_none());
    }

    #[test]
    fn a_status_that_is_not_a_tenant_status_fails_the_pass_not_the_watch() {
        let cached: CachedTenant = serde_json::from_value(serde_json::json!({
            "metadata": ObjectMeta { name: Some("acme".into()), ..Default::default() },
            "spec": TenantSpec::new("crm", "starter"),
            "status": {"conditions": "not a list"},
        }))
        .unwrap();
        assert!(cached.to_tenant().is_err());
    }

    #[test]
    fn trim_drops_managed_fields_kubectls_copy_and_spare_room() {
        let mut t = tenant();
        t.metadata.annotations = Some(
            [
                (
                    KUBECTL_LAST_APPLIED,
                    r#"{"apiVersion":"stackplane.io/v1alpha1"}"#,
                ),
                ("stackplane.io/target-revision", "crm-7f3a"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into(),
        );
        let mut cached = CachedTenant::from(&t);
        cached.trim();
        assert_eq!(cached.metadata.managed_fields, None);
        let annotations = cached.metadata.annotations.as_ref().unwrap();
        assert_eq!(
            annotations.keys().collect::<Vec<_>>(),
            ["stackplane.io/target-revision"],
            "only kubectl's copy is dropped"
        );
        let finalizers = cached.metadata.finalizers.as_ref().unwrap();
        assert_eq!(finalizers.capacity(), finalizers.len());
        let mut read = cached.to_tenant().unwrap();
        read.metadata.managed_fields = t.metadata.managed_fields.clone();
        if let Some(a) = &mut t.metadata.annotations {
            a.remove(KUBECTL_LAST_APPLIED);
        }
        assert_eq!(
            json_of(&read),
            json_of(&t),
            "what the reconciler reads is unchanged"
        );
    }
}
