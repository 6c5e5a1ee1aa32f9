//! Schema fragments shared by the CRDs: patterns and Kubernetes list semantics that schemars
//! cannot derive on its own.

/// A DNS-1123 label: lowercase alphanumerics and '-', starting and ending alphanumeric.
pub(crate) const DNS1123_LABEL: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// A DNS-1123 subdomain: dot-separated labels.
pub(crate) const DNS1123_SUBDOMAIN: &str =
    "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// Conditions as a map keyed by `type`, so server-side apply merges them per type.
pub(crate) fn conditions(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema =
        generator.subschema_for::<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}

/// Drops the `default` schemars derives from `#[serde(default)]` on a string: the API server
/// of Kubernetes 1.20 rejects `default: ""` in a CRD ("must be of type string: \"null\"").
pub(crate) fn no_default(schema: &mut schemars::Schema) {
    schema.remove("default");
}
