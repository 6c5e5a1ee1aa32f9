//! Whether applying this binary's CRDs over the installed ones would lose data.
//!
//! The API server prunes every field a structural schema does not declare, on the next write of
//! each object. A CRD applied by an *older* binary (a chart downgrade, a stale image) that lacks a
//! property the installed CRD has would therefore silently drop that field from every object
//! written afterwards (a Tenant's hold, its pin). `stackplane-controller crds apply` refuses such
//! an apply unless a person asks for it (`--allow-field-removal`).

use serde_json::Value;

/// The schema paths (`spec.platformRevision`, `spec.tiers[].quota`) the installed CRD declares
/// and the new one does not, over every version the new CRD also serves, in order. Empty when
/// the new CRD only adds (the upgrade case). Both arguments are whole CRD objects as JSON.
pub fn removed_fields(installed: &Value, new: &Value) -> Vec<String> {
    let mut removed = Vec::new();
    let versions = |crd: &Value| -> Vec<(String, Value)> {
        crd.pointer("/spec/versions")
            .and_then(Value::as_array)
            .map(|vs| {
                vs.iter()
                    .filter_map(|v| {
                        let name = v.get("name")?.as_str()?.to_owned();
                        let schema = v.pointer("/schema/openAPIV3Schema")?.clone();
                        Some((name, schema))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let new_versions = versions(new);
    for (name, old_schema) in versions(installed) {
        if let Some((_, new_schema)) = new_versions.iter().find(|(n, _)| *n == name) {
            compare(&old_schema, new_schema, "", &mut removed);
        }
    }
    removed
}

fn compare(old: &Value, new: &Value, path: &str, removed: &mut Vec<String>) {
    // A schema that keeps unknown fields prunes nothing below it.
    if new.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    if let Some(old_props) = old.get("properties").and_then(Value::as_object) {
        let new_props = new.get("properties").and_then(Value::as_object);
        for (key, old_child) in old_props {
            let child_path = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            match new_props.and_then(|p| p.get(key)) {
                Some(new_child) => compare(old_child, new_child, &child_path, removed),
                None => removed.push(child_path),
            }
        }
    }
    if let (Some(old_items), Some(new_items)) = (old.get("items"), new.get("items")) {
        compare(old_items, new_items, &format!("{path}[]"), removed);
    }
    if let (Some(old_extra), Some(new_extra)) = (
        old.get("additionalProperties"),
        new.get("additionalProperties"),
    ) {
        compare(old_extra, new_extra, &format!("{path}{{}}"), removed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crd(version: &str, spec_props: Value) -> Value {
        json!({"spec": {"versions": [{"name": version, "schema": {"openAPIV3Schema": {
            "type": "object",
            "properties": {"spec": {"type": "object", "properties": spec_props}},
        }}}]}})
    }

    #[test]
    fn an_upgrade_that_only_adds_removes_nothing() {
        let old = crd("v1alpha1", json!({"tier": {"type": "string"}}));
        let new = crd(
            "v1alpha1",
            json!({"tier": {"type": "string"}, "platformRevision": {"type": "string"}}),
        );
        assert!(removed_fields(&old, &new).is_empty());
    }

    #[test]
    fn a_downgrade_names_every_field_it_would_prune() {
        let old = crd(
            "v1alpha1",
            json!({
                "tier": {"type": "string"},
                "platformRevision": {"type": "string"},
                "tiers": {"type": "array", "items": {"type": "object", "properties": {
                    "name": {"type": "string"}, "quota": {"type": "object"},
                }}},
                "labels": {"type": "object", "additionalProperties": {"type": "object", "properties": {
                    "a": {"type": "string"}, "b": {"type": "string"},
                }}},
            }),
        );
        let new = crd(
            "v1alpha1",
            json!({
                "tier": {"type": "string"},
                "tiers": {"type": "array", "items": {"type": "object", "properties": {
                    "name": {"type": "string"},
                }}},
                "labels": {"type": "object", "additionalProperties": {"type": "object", "properties": {
                    "a": {"type": "string"},
                }}},
            }),
        );
        assert_eq!(
            removed_fields(&old, &new),
            [
                "spec.labels{}.b",
                "spec.platformRevision",
                "spec.tiers[].quota"
            ]
        );
    }

    #[test]
    fn a_subtree_that_preserves_unknown_fields_loses_nothing() {
        let old = crd(
            "v1alpha1",
            json!({"values": {"type": "object", "properties": {"a": {"type": "string"}}}}),
        );
        let new = crd(
            "v1alpha1",
            json!({"values": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}),
        );
        assert!(removed_fields(&old, &new).is_empty());
    }

    #[test]
    fn versions_the_new_crd_does_not_serve_are_not_compared() {
        // Removing a stored version is refused by the API server itself.
        let old = crd("v1alpha0", json!({"gone": {"type": "string"}}));
        let new = crd("v1alpha1", json!({}));
        assert!(removed_fields(&old, &new).is_empty());
    }

    #[test]
    fn the_same_crd_removes_nothing() {
        let same = crd(
            "v1alpha1",
            json!({"a": {"type": "object", "properties": {"b": {"type": "string"}}}}),
        );
        assert!(removed_fields(&same, &same).is_empty());
    }
}
