//! A Tenant as the controller's cache keeps it: metadata and spec typed, the labels in one
//! sorted slice, the status as the JSON text the API server sent.
//!
//! The cache holds every Tenant for as long as the controller runs, and its status is the
//! largest and most fragmented part of one: measured at 1,429 bytes of JSON per tenant, a typed
//! status is 22 allocations and 1,312 bytes of the allocator's chunks, the same status as text one
//! allocation of about 670. What reads the cache between passes (predicates, the rollout's
//! planner, the backup scheduler) reads metadata and spec; the one reader of the whole status is
//! a reconcile, which parses it once per pass ([`CachedTenant::to_tenant`], microseconds against
//! a pass's planning).
//!
//! The labels are the next largest part: a `BTreeMap` allocates a node of eleven slots for its
//! first entry (about 540 bytes for `String` keys and values), so one label cost a tenant more
//! than its whole spec. The cache keeps them as [`Labels`] and the metadata without them; read
//! them with [`CachedTenant::labels`] (`ResourceExt::labels` of a cached tenant is empty).

use std::borrow::Cow;
use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;
use stackplane_crds::{Tenant, TenantSpec, TenantStatus};

/// Where `kubectl apply` (client-side) keeps the object as last applied.
const KUBECTL_LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A Tenant with its status kept as JSON text and its labels outside its metadata. Deserialized
/// straight from the watch (no typed status is ever built for the cache) and compacted as it
/// is read; the same kind, group, version and URL as [`Tenant`].
#[derive(Clone, Debug, Deserialize)]
#[serde(from = "WireTenant")]
pub struct CachedTenant {
    /// Without `labels` and `managedFields` (see [`CachedTenant::labels`]).
    pub metadata: ObjectMeta,
    pub spec: TenantSpec,
    pub status: Option<Box<RawValue>>,
    labels: Labels,
}

/// A Tenant as the API server sends it, before the cache compacts it.
#[derive(Deserialize)]
struct WireTenant {
    metadata: ObjectMeta,
    spec: TenantSpec,
    #[serde(default)]
    status: Option<Box<RawValue>>,
}

impl From<WireTenant> for CachedTenant {
    /// Drops what the cache never reads (managedFields, a third of a Tenant's size; the copy
    /// of the whole object that `kubectl apply` keeps in an annotation, which doubles a Tenant
    /// applied by hand) and the spare room of its lists (`Vec::clear` keeps the buffer; a
    /// deserialized list keeps its grown capacity), and moves the labels into [`Labels`].
    /// Nothing is written back from the cache as a whole: the metadata and status writes name
    /// only their own fields.
    fn from(wire: WireTenant) -> Self {
        let mut metadata = wire.metadata;
        metadata.managed_fields = None;
        if let Some(annotations) = &mut metadata.annotations {
            annotations.remove(KUBECTL_LAST_APPLIED);
        }
        if let Some(finalizers) = &mut metadata.finalizers {
            finalizers.shrink_to_fit();
        }
        let labels = Labels::from(metadata.labels.take().unwrap_or_default());
        CachedTenant {
            metadata,
            spec: wire.spec,
            status: wire.status,
            labels,
        }
    }
}

impl CachedTenant {
    /// The whole Tenant, for a pass (the only reader of the status).
    pub fn to_tenant(&self) -> Result<Tenant, serde_json::Error> {
        let status = self
            .status
            .as_deref()
            .map(|s| serde_json::from_str::<TenantStatus>(s.get()))
            .transpose()?;
        let mut metadata = self.metadata.clone();
        metadata.labels = (!self.labels.is_empty()).then(|| self.labels.to_map());
        Ok(Tenant {
            metadata,
            spec: self.spec.clone(),
            status,
        })
    }

    /// The Tenant's labels (its metadata holds none in the cache).
    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    /// A hash of the labels, the controller's trigger on a label change (kube's
    /// `predicates::labels` hashes the metadata's, which the cache leaves empty).
    pub fn labels_hash(&self) -> Option<u64> {
        let mut hasher = DefaultHasher::new();
        self.labels.hash(&mut hasher);
        Some(hasher.finish())
    }

    /// The part of the status that `T` names, parsed from the text alone (`None`: no status,
    /// or not a `T`). For readers of a few fields of every tenant, such as the rollout's
    /// planner on each pass.
    pub fn status_part<T: DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_str(self.status.as_deref()?.get()).ok()
    }
}

/// Labels sorted by key in one boxed slice: a label costs its two strings and 32 bytes of the
/// slice, where a `BTreeMap` allocates a node of eleven slots for the first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Labels(Box<[(Box<str>, Box<str>)]>);

impl Labels {
    /// The value of `key`, if the tenant has that label.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_ref().cmp(key))
            .ok()
            .map(|i| self.0[i].1.as_ref())
    }

    /// Key and value of each label, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The labels as the metadata of a typed object holds them.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

impl From<BTreeMap<String, String>> for Labels {
    /// A map iterates in key order, so the slice is sorted as [`Labels::get`] requires.
    fn from(map: BTreeMap<String, String>) -> Self {
        Labels(
            map.into_iter()
                .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
                .collect(),
        )
    }
}

impl From<&Tenant> for CachedTenant {
    /// The cached form of `tenant` (tests, and writers that hold a typed Tenant), compacted as
    /// a watched one is.
    fn from(tenant: &Tenant) -> Self {
        CachedTenant::from(WireTenant {
            metadata: tenant.metadata.clone(),
            spec: tenant.spec.clone(),
            status: tenant
                .status
                .as_ref()
                .and_then(|s| serde_json::value::to_raw_value(s).ok()),
        })
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
        t.metadata.labels = Some(crate::contract::labels::tenant_labels("acme", "crm"));
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
        // All but the managedFields, which the cache never holds.
        let mut read = t.clone();
        read.metadata.managed_fields = None;
        assert_eq!(json_of(&cached.to_tenant().unwrap()), json_of(&read));
        assert_eq!(
            json_of(&CachedTenant::from(&t).to_tenant().unwrap()),
            json_of(&read)
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
    fn the_cache_drops_managed_fields_kubectls_copy_and_spare_room() {
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
        let cached = CachedTenant::from(&t);
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

    #[test]
    fn labels_leave_the_metadata_and_come_back_in_the_tenant() {
        let t = tenant();
        let json = serde_json::to_string(&t).unwrap();
        let cached: CachedTenant = serde_json::from_str(&json).unwrap();
        assert_eq!(cached.metadata.labels, None, "the cache holds them once");
        let labels = cached.labels();
        assert_eq!(labels.get(crate::contract::labels::PLATFORM), Some("crm"));
        assert_eq!(labels.get(crate::contract::labels::TENANT), Some("acme"));
        assert_eq!(labels.get("absent"), None);
        assert_eq!(
            labels.to_map(),
            t.metadata.labels.clone().unwrap(),
            "every label, in key order"
        );
        assert_eq!(
            cached.to_tenant().unwrap().metadata.labels,
            t.metadata.labels
        );
        let mut bare = t.clone();
        bare.metadata.labels = None;
        let cached = CachedTenant::from(&bare);
        assert!(cached.labels().is_empty());
        assert_eq!(cached.to_tenant().unwrap().metadata.labels, None);
    }

    #[test]
    fn label_lookup_finds_each_key_of_many() {
        let map: BTreeMap<String, String> = (0..40)
            .map(|i| (format!("k{i:02}"), format!("v{i}")))
            .collect();
        let labels = Labels::from(map.clone());
        for (k, v) in &map {
            assert_eq!(labels.get(k), Some(v.as_str()), "{k}");
        }
        assert_eq!(labels.get("k40"), None);
        assert_eq!(labels.get(""), None);
    }

    #[test]
    fn a_label_change_changes_the_trigger_hash() {
        let t = tenant();
        let before = CachedTenant::from(&t).labels_hash();
        assert_eq!(CachedTenant::from(&t).labels_hash(), before);
        let mut relabelled = t.clone();
        if let Some(labels) = &mut relabelled.metadata.labels {
            labels.insert(crate::contract::labels::CANARY.into(), "true".into());
        }
        assert_ne!(CachedTenant::from(&relabelled).labels_hash(), before);
        let mut unlabelled = t;
        unlabelled.metadata.labels = None;
        assert_ne!(CachedTenant::from(&unlabelled).labels_hash(), before);
    }
}
