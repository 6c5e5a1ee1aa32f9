//! The CRDs against a real kube-apiserver: installation, the example Platforms, round-trips of
//! Tenants and TenantBackups, and the schema rejecting what it should.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{CustomResourceExt, ResourceExt};
use serde_json::json;
use stackplane_crds::{
    BackupPhase, BackupReason, Customer, DeletionPolicy, Platform, Tenant, TenantBackup,
    TenantBackupSpec, TenantPhase, TenantSpec,
};
use stackplane_tests::{example_platform_files, install_crds, kube_client, unique};

const PLATFORMS: [&str; 8] = [
    "aileadstrategies",
    "clientcontact",
    "leadgen-pro",
    "leadsite-ai",
    "leadsite-io",
    "stackpro-business",
    "tackle",
    "video-site",
];

#[tokio::test]
async fn every_crd_installs_and_becomes_established() {
    let client = kube_client().await;
    install_crds(&client).await;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (crd, short) in [
        (Platform::crd_name(), "plat"),
        (Tenant::crd_name(), "tn"),
        (TenantBackup::crd_name(), "tb"),
    ] {
        let installed = api.get(crd).await.expect("get CRD");
        let accepted = installed
            .status
            .and_then(|s| s.accepted_names)
            .expect("CRD has accepted names");
        assert_eq!(accepted.short_names, Some(vec![short.to_owned()]), "{crd}");
        assert_eq!(
            accepted.categories,
            Some(vec!["stackplane".to_owned()]),
            "{crd}"
        );
    }
}

#[tokio::test]
async fn every_example_platform_applies_and_reads_back_unchanged() {
    let client = kube_client().await;
    install_crds(&client).await;
    let api: Api<Platform> = Api::all(client.clone());
    let files = example_platform_files();
    let names: Vec<String> = files
        .iter()
        .map(|(file, _)| file.trim_end_matches(".yaml").to_owned())
        .collect();
    assert_eq!(
        names, PLATFORMS,
        "one example per platform of docs/architecture.md"
    );

    for (file, text) in files {
        let platform: Platform = serde_saphyr::from_str(&text)
            .unwrap_or_else(|e| panic!("{file} is not a Platform: {e}"));
        let name = platform.name_any();
        assert_eq!(
            format!("{name}.yaml"),
            file,
            "file named after its Platform"
        );
        let applied = api
            .patch(
                &name,
                &PatchParams::apply("stackplane-tests").force(),
                &Patch::Apply(&platform),
            )
            .await
            .unwrap_or_else(|e| panic!("apply {file}: {e}"));
        assert_eq!(
            applied.spec, platform.spec,
            "{file} changed on the way through the API server"
        );
    }

    let stackpro = api
        .get("stackpro-business")
        .await
        .expect("get stackpro-business");
    let types: Vec<_> = ["starter", "business", "enterprise"]
        .iter()
        .map(|t| {
            stackpro
                .spec
                .tier(t)
                .and_then(|t| t.dedicated_instance.as_ref())
                .map(|d| d.instance_type.clone())
        })
        .collect();
    assert_eq!(
        types,
        [
            Some("t3.micro".into()),
            Some("t3.small".into()),
            Some("t3.medium".into())
        ]
    );
}

fn tenant(name: &str) -> Tenant {
    Tenant::new(
        name,
        TenantSpec {
            customer: Customer {
                stripe_customer_id: Some("cus_RoundTrip123".into()),
                email: Some("owner@example.com".into()),
                name: Some("Round Trip Ltd".into()),
            },
            deletion_policy: DeletionPolicy::Retain,
            ..TenantSpec::new("leadsite-io", "starter")
        },
    )
}

#[tokio::test]
async fn tenant_round_trips_through_create_status_read_and_delete() {
    let client = kube_client().await;
    install_crds(&client).await;
    let api: Api<Tenant> = Api::all(client.clone());
    let name = unique("rt");

    let created = api
        .create(&PostParams::default(), &tenant(&name))
        .await
        .expect("create Tenant");
    assert_eq!(created.spec, tenant(&name).spec);
    assert!(created.status.is_none(), "a new Tenant has no status");

    let status = json!({
        "status": {
            "phase": "Provisioning",
            "namespace": format!("tenant-{name}"),
            "observedGeneration": created.metadata.generation,
            "conditions": [{
                "type": "Ready", "status": "False", "reason": "Provisioning",
                "message": "creating the stack", "lastTransitionTime": "2026-11-21T00:00:00Z",
            }],
            "components": [{"name": "api", "readyReplicas": 0, "replicas": 2}],
        }
    });
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch Tenant status");

    let read = api.get(&name).await.expect("read Tenant");
    let st = read.status.expect("status was written");
    assert_eq!(st.phase, Some(TenantPhase::Provisioning));
    assert_eq!(
        st.namespace.as_deref(),
        Some(format!("tenant-{name}").as_str())
    );
    assert_eq!(st.conditions.len(), 1);
    assert_eq!(st.conditions[0].reason, "Provisioning");
    assert_eq!(st.components[0].replicas, 2);
    assert_eq!(
        read.spec,
        tenant(&name).spec,
        "a status patch leaves the spec alone"
    );
    assert_eq!(
        read.metadata.generation, created.metadata.generation,
        "status is a subresource"
    );

    api.delete(&name, &DeleteParams::default())
        .await
        .expect("delete Tenant");
    assert!(api
        .get_opt(&name)
        .await
        .expect("get after delete")
        .is_none());
}

#[tokio::test]
async fn api_server_fills_in_schema_defaults() {
    let client = kube_client().await;
    install_crds(&client).await;
    let api = dynamic_tenants(&client);
    let name = unique("defaults");
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "stackplane.io/v1alpha1", "kind": "Tenant",
        "metadata": {"name": name},
        "spec": {"platform": "tackle", "tier": "starter", "customer": {}},
    }))
    .expect("object");
    api.create(&PostParams::default(), &obj)
        .await
        .expect("create minimal Tenant");
    let typed: Api<Tenant> = Api::all(client.clone());
    let read = typed.get(&name).await.expect("read");
    assert_eq!(read.spec.deletion_policy, DeletionPolicy::Delete);
    assert!(!read.spec.suspended && !read.spec.paused);
    typed
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete");
}

#[tokio::test]
async fn tenant_backup_round_trips() {
    let client = kube_client().await;
    install_crds(&client).await;
    let api: Api<TenantBackup> = Api::all(client.clone());
    let name = unique("tb");
    let backup = TenantBackup::new(
        &name,
        TenantBackupSpec {
            tenant: "leadsite-io-abc".into(),
            reason: BackupReason::PreDelete,
            restore: None,
            instance: None,
        },
    );
    api.create(&PostParams::default(), &backup)
        .await
        .expect("create TenantBackup");
    let status = json!({"status": {
        "phase": "PartiallyFailed",
        "startedAt": "2026-11-21T01:00:00Z",
        "completedAt": "2026-11-21T01:05:00Z",
        "parts": [
            {"kind": "ebs-snapshot", "id": "snap-0123", "source": "vol-0123", "state": "Completed"},
            {"kind": "volume-snapshot", "state": "Unsupported", "message": "snapshot.storage.k8s.io is not served"},
        ],
    }});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch TenantBackup status");
    let read = api.get(&name).await.expect("read TenantBackup");
    assert_eq!(read.spec.reason, BackupReason::PreDelete);
    let st = read.status.expect("status");
    assert_eq!(st.phase, Some(BackupPhase::PartiallyFailed));
    assert_eq!(
        BackupPhase::from_parts(&st.parts),
        BackupPhase::PartiallyFailed
    );
    assert_eq!(st.parts[0].id.as_deref(), Some("snap-0123"));
    api.delete(&name, &DeleteParams::default())
        .await
        .expect("delete TenantBackup");
    assert!(api
        .get_opt(&name)
        .await
        .expect("get after delete")
        .is_none());
}

fn dynamic_tenants(client: &kube::Client) -> Api<DynamicObject> {
    Api::all_with(client.clone(), &Tenant::api_resource())
}

/// Creates `spec` as a Tenant and returns the API server's rejection message.
async fn rejection(client: &kube::Client, spec: serde_json::Value) -> String {
    let name = unique("invalid");
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "stackplane.io/v1alpha1", "kind": "Tenant",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("object");
    match dynamic_tenants(client)
        .create(&PostParams::default(), &obj)
        .await
    {
        Ok(_) => panic!("the API server accepted an invalid Tenant {name}"),
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            status.message
        }
        Err(other) => panic!("unexpected error: {other}"),
    }
}

#[tokio::test]
async fn schema_rejects_invalid_tenants_with_a_clear_message() {
    let client = kube_client().await;
    install_crds(&client).await;
    let valid = json!({"platform": "tackle", "tier": "starter", "customer": {}});

    let mut bad_enum = valid.clone();
    bad_enum["deletionPolicy"] = json!("Destroy");
    let msg = rejection(&client, bad_enum).await;
    assert!(
        msg.contains("spec.deletionPolicy") && msg.contains("Unsupported value: \"Destroy\""),
        "{msg}"
    );

    let mut bad_name = valid.clone();
    bad_name["platform"] = json!("Lead_Site");
    let msg = rejection(&client, bad_name).await;
    assert!(
        msg.contains("spec.platform") && msg.contains("should match"),
        "{msg}"
    );

    let mut bad_subdomain = valid.clone();
    bad_subdomain["subdomain"] = json!("-shop");
    let msg = rejection(&client, bad_subdomain).await;
    assert!(msg.contains("spec.subdomain"), "{msg}");

    let mut bad_status = valid.clone();
    bad_status["subscription"] = json!({"id": "sub_123", "status": "bankrupt"});
    let msg = rejection(&client, bad_status).await;
    assert!(
        msg.contains("spec.subscription.status") && msg.contains("Unsupported value"),
        "{msg}"
    );

    let mut bad_customer = valid.clone();
    bad_customer["customer"] = json!({"stripeCustomerId": "customer-1"});
    let msg = rejection(&client, bad_customer).await;
    assert!(msg.contains("spec.customer.stripeCustomerId"), "{msg}");

    let mut no_tier = valid;
    no_tier.as_object_mut().map(|o| o.remove("tier"));
    let msg = rejection(&client, no_tier).await;
    assert!(
        msg.contains("spec.tier") && msg.contains("Required value"),
        "{msg}"
    );
}

#[tokio::test]
async fn schema_enforces_minimums_on_platforms() {
    let client = kube_client().await;
    install_crds(&client).await;
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &Platform::api_resource());
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "stackplane.io/v1alpha1", "kind": "Platform",
        "metadata": {"name": unique("badplat")},
        "spec": {
            "displayName": "Bad", "domain": "bad.example.com",
            "components": [{"name": "api", "image": "example/api:1", "port": 0}],
            "tiers": [{"name": "starter", "quota": {"cpu": "1", "memory": "1Gi", "storage": "1Gi", "pods": 0}}],
        },
    }))
    .expect("object");
    let err = api
        .create(&PostParams::default(), &obj)
        .await
        .expect_err("invalid Platform accepted");
    let msg = err.to_string();
    // Kubernetes 1.20 names list items without their index.
    assert!(
        msg.contains("spec.components.port in body should be greater than or equal to 1"),
        "{msg}"
    );
    assert!(
        msg.contains("spec.tiers.quota.pods in body should be greater than or equal to 1"),
        "{msg}"
    );
}
