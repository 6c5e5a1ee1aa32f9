//! Re-adoption of a stack whose Tenant was released because the Tenant CRD was being deleted
//! (pure). The controller writes the marks of [`orphan_patch`] onto the namespace before it
//! releases the Tenant's finalizer; `kubectl stackplane adopt` recreates the Tenant from them
//! ([`tenant_from_namespace`]); a Tenant of the same name (recreated so, or by the billing sweep)
//! adopts the namespace untouched and the controller removes the marks ([`adoption_patch`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use serde_json::{json, Value};
use stackplane_crds::naming::namespace_name;
use stackplane_crds::{Tenant, TenantSpec};

use crate::contract::labels::{
    tenant_labels, ORPHANED, ORPHANED_BY, ORPHANED_BY_CRD_DELETION, ORPHANED_DNS_RECORD,
    ORPHANED_UID, TENANT, TENANT_LABELS, TENANT_SPEC,
};

/// Why a namespace cannot be adopted.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error(
        "namespace {namespace} was not left by a deletion of the Tenant CRD (no annotation \
         {TENANT_SPEC})"
    )]
    NotOrphaned { namespace: String },
    #[error("namespace {namespace} has no label {TENANT}: it is not a tenant's namespace")]
    NoTenantLabel { namespace: String },
    #[error(
        "namespace {namespace} belongs to tenant {tenant}, whose namespace would be {expected}"
    )]
    NameMismatch {
        namespace: String,
        tenant: String,
        expected: String,
    },
    #[error("annotation {annotation} of namespace {namespace} is not valid: {source}")]
    Unreadable {
        namespace: String,
        annotation: &'static str,
        source: serde_json::Error,
    },
}

impl AdoptError {
    /// A short stable category (metrics, exit reasons).
    pub fn metric_label(&self) -> &'static str {
        match self {
            AdoptError::NotOrphaned { .. } => "not_orphaned",
            AdoptError::NoTenantLabel { .. } => "no_tenant_label",
            AdoptError::NameMismatch { .. } => "name_mismatch",
            AdoptError::Unreadable { .. } => "unreadable",
        }
    }
}

/// The merge patch the controller writes onto `tenant`'s namespace before releasing it because
/// the Tenant CRD is being deleted: the tenant's labels (as every stackplane object carries
/// them), [`ORPHANED`], [`ORPHANED_BY`], and the Tenant's spec and labels (JSON) to recreate it
/// from.
pub fn orphan_patch(tenant: &Tenant) -> Result<Value, serde_json::Error> {
    let mut labels = tenant_labels(&tenant.name_any(), &tenant.spec.platform);
    labels.insert(ORPHANED.to_owned(), "true".to_owned());
    let own_labels: BTreeMap<String, String> = tenant.labels().clone();
    let mut annotations = serde_json::Map::new();
    annotations.insert(ORPHANED_BY.to_owned(), json!(ORPHANED_BY_CRD_DELETION));
    annotations.insert(
        TENANT_SPEC.to_owned(),
        json!(serde_json::to_string(&tenant.spec)?),
    );
    annotations.insert(
        TENANT_LABELS.to_owned(),
        json!(serde_json::to_string(&own_labels)?),
    );
    if let Some(uid) = tenant.metadata.uid.as_deref() {
        annotations.insert(ORPHANED_UID.to_owned(), json!(uid));
    }
    if let Some(record) = tenant.status.as_ref().and_then(|s| s.dns_record.as_deref()) {
        annotations.insert(ORPHANED_DNS_RECORD.to_owned(), json!(record));
    }
    Ok(json!({ "metadata": { "labels": labels, "annotations": annotations } }))
}

/// Whether `ns` carries any mark of an orphaning (a CRD deletion's, or the `Retain` label).
pub fn carries_orphan_marks(ns: &Namespace) -> bool {
    ns.labels().contains_key(ORPHANED)
        || [ORPHANED_BY, TENANT_SPEC, TENANT_LABELS]
            .iter()
            .any(|a| ns.annotations().contains_key(*a))
}

/// The merge patch that removes every mark of an orphaning once a Tenant adopted the namespace.
pub fn adoption_patch() -> Value {
    json!({
        "metadata": {
            "labels": { ORPHANED: null },
            "annotations": {
                ORPHANED_BY: null,
                TENANT_SPEC: null,
                TENANT_LABELS: null,
                ORPHANED_UID: null,
                ORPHANED_DNS_RECORD: null,
            }
        }
    })
}

/// The cloud resources an adopting Tenant (uid `new_uid`) takes over from the Tenant the
/// namespace was released by: that Tenant's uid and DNS record, when it had another uid. `None`
/// for a namespace left without them (a `Retain` orphan, or one released before they were
/// recorded) or already taken over.
pub fn cloud_to_take_over(ns: &Namespace, new_uid: &str) -> Option<(String, Option<String>)> {
    let old = ns.annotations().get(ORPHANED_UID)?;
    if old.is_empty() || old == new_uid {
        return None;
    }
    let record = ns.annotations().get(ORPHANED_DNS_RECORD).cloned();
    Some((old.clone(), record))
}

/// The Tenant to create so that it adopts `ns` (left by a deletion of the Tenant CRD): its name
/// from the namespace's tenant label, its spec and labels from the annotations.
pub fn tenant_from_namespace(ns: &Namespace) -> Result<Tenant, AdoptError> {
    let namespace = ns.name_any();
    let Some(spec) = ns.annotations().get(TENANT_SPEC) else {
        return Err(AdoptError::NotOrphaned { namespace });
    };
    let Some(name) = ns.labels().get(TENANT).cloned() else {
        return Err(AdoptError::NoTenantLabel { namespace });
    };
    // The plan derives the namespace from the tenant's name: a label edited by hand must not
    // make a Tenant that would build a second stack elsewhere.
    let expected = namespace_name(&name);
    if expected != namespace {
        return Err(AdoptError::NameMismatch {
            namespace,
            tenant: name,
            expected,
        });
    }
    let spec: TenantSpec = serde_json::from_str(spec).map_err(|source| AdoptError::Unreadable {
        namespace: namespace.clone(),
        annotation: TENANT_SPEC,
        source,
    })?;
    let labels: BTreeMap<String, String> = match ns.annotations().get(TENANT_LABELS) {
        Some(text) => serde_json::from_str(text).map_err(|source| AdoptError::Unreadable {
            namespace: namespace.clone(),
            annotation: TENANT_LABELS,
            source,
        })?,
        None => BTreeMap::new(),
    };
    let mut tenant = Tenant::new(&name, spec);
    if !labels.is_empty() {
        tenant.metadata.labels = Some(labels);
    }
    Ok(tenant)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use stackplane_crds::DeletionPolicy;

    fn tenant() -> Tenant {
        let mut t = Tenant::new("acme", TenantSpec::new("crm", "starter"));
        t.spec.deletion_policy = DeletionPolicy::Delete;
        t.spec.subdomain = Some("shop".into());
        t.metadata.labels = Some([("team".to_owned(), "blue".to_owned())].into());
        t
    }

    /// The namespace as the merge patch leaves it (on a namespace without labels).
    fn patched(patch: &Value) -> Namespace {
        let mut ns: Namespace = serde_json::from_value(patch.clone()).expect("namespace");
        ns.metadata.name = Some("tenant-acme".into());
        ns
    }

    #[test]
    fn the_marks_recreate_the_same_tenant() {
        let t = tenant();
        let ns = patched(&orphan_patch(&t).expect("patch"));
        assert!(carries_orphan_marks(&ns));
        assert_eq!(ns.labels()[ORPHANED], "true");
        assert_eq!(ns.labels()[TENANT], "acme");
        assert_eq!(ns.annotations()[ORPHANED_BY], ORPHANED_BY_CRD_DELETION);
        let back = tenant_from_namespace(&ns).expect("adoptable");
        assert_eq!(back.name_any(), "acme");
        assert_eq!(back.spec, t.spec);
        assert_eq!(back.labels(), t.labels());
    }

    #[test]
    fn the_adoption_patch_removes_every_mark() {
        let p = adoption_patch();
        // A merge patch removes a key by naming it with null.
        let removes = |map: &Value, key: &str| map.get(key).is_some_and(Value::is_null);
        assert!(removes(&p["metadata"]["labels"], ORPHANED));
        for a in [
            ORPHANED_BY,
            TENANT_SPEC,
            TENANT_LABELS,
            ORPHANED_UID,
            ORPHANED_DNS_RECORD,
        ] {
            assert!(removes(&p["metadata"]["annotations"], a), "{a}");
        }
        let plain = Namespace {
            metadata: ObjectMeta {
                name: Some("tenant-acme".into()),
                labels: Some(tenant_labels("acme", "crm")),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        assert!(!carries_orphan_marks(&plain));
    }

    #[test]
    fn what_cannot_be_adopted_says_why() {
        let mut ns = patched(&orphan_patch(&tenant()).expect("patch"));
        ns.metadata.name = Some("tenant-other".into());
        assert!(matches!(
            tenant_from_namespace(&ns),
            Err(AdoptError::NameMismatch { .. })
        ));
        ns.metadata.name = Some("tenant-acme".into());
        ns.metadata
            .annotations
            .as_mut()
            .expect("annotations")
            .insert(TENANT_SPEC.into(), "{not json".into());
        let e = tenant_from_namespace(&ns).expect_err("unreadable");
        assert_eq!(e.metric_label(), "unreadable");
        ns.metadata.annotations = None;
        assert!(matches!(
            tenant_from_namespace(&ns),
            Err(AdoptError::NotOrphaned { .. })
        ));
    }

    #[test]
    fn an_adopting_tenant_takes_over_the_released_tenants_cloud_resources_once() {
        let mut t = tenant();
        t.metadata.uid = Some("uid-old".into());
        t.status = Some(stackplane_crds::TenantStatus {
            dns_record: Some("shop.example.com".into()),
            ..Default::default()
        });
        let ns = patched(&orphan_patch(&t).expect("patch"));
        assert_eq!(
            cloud_to_take_over(&ns, "uid-new"),
            Some(("uid-old".to_owned(), Some("shop.example.com".to_owned())))
        );
        // The same lifecycle (nothing to take over), and a namespace without the uid.
        assert_eq!(cloud_to_take_over(&ns, "uid-old"), None);
        t.metadata.uid = None;
        let without = patched(&orphan_patch(&t).expect("patch"));
        assert_eq!(cloud_to_take_over(&without, "uid-new"), None);
    }
}
