//! The tenant's credentials Secret: the one object whose content is not fully planned. Existing
//! values are kept, missing ones are generated once. What is applied is decided here, for the
//! controller's apply and the plugin's dry run alike; the random values come from the caller
//! (this crate has no randomness).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;

use super::plan::CREDENTIAL_KEYS;

/// Length of a generated credential (alphanumeric characters).
pub const CREDENTIAL_LEN: usize = 32;

/// The credentials: every existing key kept as it is, each missing key from `generate` (a
/// random string of [`CREDENTIAL_LEN`] alphanumeric characters).
pub fn fill(
    existing: Option<&BTreeMap<String, ByteString>>,
    mut generate: impl FnMut() -> String,
) -> BTreeMap<String, ByteString> {
    let mut data = existing.cloned().unwrap_or_default();
    for key in CREDENTIAL_KEYS {
        data.entry(key.to_owned())
            .or_insert_with(|| ByteString(generate().into_bytes()));
    }
    data
}

/// The credentials Secret `name` of namespace `ns` as it is applied, holding `data`.
pub fn secret(
    ns: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
    data: BTreeMap<String, ByteString>,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(ns.to_owned()),
            labels: Some(labels.clone()),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_values_are_kept_and_only_missing_keys_generated() {
        let existing: BTreeMap<String, ByteString> = [
            (CREDENTIAL_KEYS[0].to_owned(), ByteString(b"kept".to_vec())),
            ("extra".to_owned(), ByteString(b"also kept".to_vec())),
        ]
        .into();
        let mut generated = 0;
        let data = fill(Some(&existing), || {
            generated += 1;
            "new".to_owned()
        });
        assert_eq!(generated, 1);
        assert_eq!(data[CREDENTIAL_KEYS[0]].0, b"kept");
        assert_eq!(data[CREDENTIAL_KEYS[1]].0, b"new");
        assert_eq!(data["extra"].0, b"also kept");
        let all_new = fill(None, || "x".to_owned());
        assert_eq!(all_new.len(), CREDENTIAL_KEYS.len());
    }

    #[test]
    fn the_secret_is_opaque_labelled_and_in_the_tenants_namespace() {
        let labels: BTreeMap<String, String> = [("a".to_owned(), "b".to_owned())].into();
        let s = secret(
            "tenant-acme",
            "credentials",
            &labels,
            fill(None, || "x".into()),
        );
        assert_eq!(s.metadata.namespace.as_deref(), Some("tenant-acme"));
        assert_eq!(s.metadata.name.as_deref(), Some("credentials"));
        assert_eq!(s.metadata.labels, Some(labels));
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
    }
}
