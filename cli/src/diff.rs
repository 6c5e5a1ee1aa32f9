//! `diff <tenant>`: what a reconcile would change now. The tenant's plan is computed as the
//! reconciler computes it (`stackplane_core`: the revision it is planned from, validation, the
//! plan), applied to the cluster as the controller applies it, as a server-side apply dry run
//! (`crate::dry_run`), and each object the server would return is compared with the live one: a
//! unified diff, empty when in sync.

use kube::{Api, Client};
use serde_json::Value;
use similar::TextDiff;
use stackplane_core::tenant::plan::{self, Plan, PlanOptions};
use stackplane_core::tenant::revision;
use stackplane_core::tenant::validate::Invalid;
use stackplane_crds::{Platform, PlatformRevision, Tenant};

use crate::dry_run::{dry_run, DryRun};
use crate::error::{CliError, Result};
use crate::status::get_tenant;

/// The unified diff of every object whose applied form differs from the live one.
pub async fn diff(client: &Client, name: &str, options: &PlanOptions) -> Result<String> {
    let tenant = get_tenant(client, name).await?;
    let plan = plan_now(client, &tenant, options)
        .await?
        .map_err(|invalid| CliError::Invalid(invalid.message))?;
    let compared = dry_run(client, &plan).await?;
    Ok(compared.iter().map(object_diff).collect())
}

/// The plan the reconciler would apply for `tenant` now, or why the tenant is invalid: its
/// Platform and the revision it is planned from read from the API server, the decision
/// `stackplane_core::tenant::revision`'s (as the controller's, which reads its caches first).
pub async fn plan_now(
    client: &Client,
    tenant: &Tenant,
    options: &PlanOptions,
) -> Result<std::result::Result<Plan, Invalid>> {
    let live = Api::<Platform>::all(client.clone())
        .get_opt(&tenant.spec.platform)
        .await?;
    let source = match live {
        Some(live) => Some(
            revision::resolve(tenant, live, |name| async move {
                Api::<PlatformRevision>::all(client.clone())
                    .get_opt(&name)
                    .await
            })
            .await?,
        ),
        None => None,
    };
    Ok(revision::validated(tenant, source.as_ref())
        .map(|valid| plan::plan(tenant, valid.platform, valid.tier, options)))
}

/// One object's diff; empty when the apply changes nothing that matters.
pub fn object_diff(object: &DryRun) -> String {
    let before = object.live.as_ref().map(comparable);
    let after = comparable(&object.applied);
    if before.as_ref() == Some(&after) {
        return String::new();
    }
    let text = |v: Option<&Value>| {
        v.map_or_else(String::new, |v| {
            serde_saphyr::to_string(v).unwrap_or_else(|e| format!("# unprintable: {e}\n"))
        })
    };
    let (old, new) = (text(before.as_ref()), text(Some(&after)));
    let label = format!("{}/{}", object.kind, object.name);
    let old_label = if before.is_some() {
        format!("live {label}")
    } else {
        "/dev/null".to_owned()
    };
    TextDiff::from_lines(&old, &new)
        .unified_diff()
        .context_radius(3)
        .header(&old_label, &format!("planned {label}"))
        .to_string()
}

/// What a diff compares: the object without what the server alone writes (resource version,
/// managed fields, status, …), and a Secret's values replaced by a digest of them, so a diff
/// never prints a credential.
pub fn comparable(object: &Value) -> Value {
    let mut v = object.clone();
    if let Some(obj) = v.as_object_mut() {
        obj.remove("status");
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            for field in [
                "managedFields",
                "resourceVersion",
                "generation",
                "uid",
                "creationTimestamp",
                "selfLink",
            ] {
                meta.remove(field);
            }
            if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
                // Written by the API server for Deployments, not by the plan.
                annotations.remove("deployment.kubernetes.io/revision");
                if annotations.is_empty() {
                    meta.remove("annotations");
                }
            }
        }
        if obj.get("kind").and_then(Value::as_str) == Some("Secret") {
            if let Some(data) = obj.get_mut("data").and_then(Value::as_object_mut) {
                for value in data.values_mut() {
                    let len = value.as_str().map_or(0, str::len);
                    *value = Value::String(format!("<{len} bytes, hidden>"));
                }
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dry(live: Option<Value>, applied: Value) -> DryRun {
        DryRun {
            kind: "ResourceQuota",
            name: "quota".into(),
            live,
            applied,
        }
    }

    #[test]
    fn in_sync_is_empty_whatever_the_server_fields_say() {
        let live = json!({"kind": "ResourceQuota", "metadata": {"name": "quota", "resourceVersion": "1",
            "managedFields": [{"manager": "x"}]}, "spec": {"hard": {"pods": "10"}}, "status": {"used": {}}});
        let applied = json!({"kind": "ResourceQuota", "metadata": {"name": "quota", "resourceVersion": "2"},
            "spec": {"hard": {"pods": "10"}}});
        assert_eq!(object_diff(&dry(Some(live), applied)), "");
    }

    #[test]
    fn a_changed_field_is_shown_as_a_unified_diff() {
        let live = json!({"kind": "ResourceQuota", "metadata": {"name": "quota"}, "spec": {"hard": {"pods": "99"}}});
        let applied = json!({"kind": "ResourceQuota", "metadata": {"name": "quota"}, "spec": {"hard": {"pods": "10"}}});
        let d = object_diff(&dry(Some(live), applied));
        assert!(
            d.starts_with("--- live ResourceQuota/quota\n+++ planned ResourceQuota/quota\n"),
            "{d}"
        );
        assert!(
            d.contains("\n-    pods: \"99\"\n+    pods: \"10\"\n"),
            "{d}"
        );
    }

    #[test]
    fn a_missing_object_is_all_added_and_secrets_never_print_their_values() {
        let applied = json!({"kind": "Secret", "metadata": {"name": "creds"}, "data": {"password": "c2VjcmV0"}});
        let d = object_diff(&dry(None, applied));
        assert!(d.starts_with("--- /dev/null\n"), "{d}");
        assert!(!d.contains("c2VjcmV0"), "{d}");
        assert!(d.contains("<8 bytes, hidden>"), "{d}");
    }
}
