//! The committed CRD YAML must be exactly what the Rust types generate.

#[test]
fn committed_crd_yaml_matches_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for crd in stackplane_crds::all_crds() {
        let path = dir.join(stackplane_crds::crd_file_name(&crd));
        let want = stackplane_crds::crd_yaml(&crd).expect("serialise CRD");
        let have = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "read {}: {e}; run `cargo run -p stackplane-crds --bin crdgen`",
                path.display()
            )
        });
        assert!(
            have == want,
            "{} differs from what the types generate; run `cargo run -p stackplane-crds --bin crdgen` and commit",
            path.display()
        );
    }
}

#[test]
fn every_crd_is_cluster_scoped_with_status_and_category() {
    for crd in stackplane_crds::all_crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        assert_eq!(crd.spec.scope, "Cluster", "{name}");
        assert_eq!(crd.spec.group, "stackplane.io", "{name}");
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["stackplane".to_owned()][..]),
            "{name}"
        );
        assert!(
            crd.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|s| !s.is_empty()),
            "{name}"
        );
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        // A PlatformRevision is an immutable snapshot: nothing is observed about it.
        let has_status = version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some();
        assert_eq!(
            has_status,
            name != "platformrevisions.stackplane.io",
            "{name}: status subresource"
        );
        assert!(
            version
                .additional_printer_columns
                .as_ref()
                .is_some_and(|c| c.len() >= 2),
            "{name}"
        );
    }
}
