//! An upgrade from the previous release's CRDs, on the real API server, through the chart's own
//! hook: the rendered RBAC, and `stackplane-controller crds apply` run with exactly that RBAC.
//!
//! Its own test binary because it puts the cluster's CRDs back to an older release (cargo runs
//! test binaries one after another, so no other test sees them). The previous release is the
//! CRD YAML of commit 5fb7fb2 (tests/fixtures/crds-5fb7fb2/): before PlatformRevision (a new
//! kind), Platform `spec.rollout` and Tenant `spec.platformRevision` (new fields).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt, ResourceExt};
use serde_json::{json, Value};
use stackplane_crds::{Platform, PlatformRevision, Tenant, TenantBackup};
use stackplane_tests::chart::{chart_dir, ci_values, helm_ok, parse_docs};
use stackplane_tests::{
    eventually, impersonating_kubeconfig, kube_client, unique, workspace_binary, workspace_root,
};

const PREVIOUS_RELEASE: &str = "tests/fixtures/crds-5fb7fb2";

fn crds(client: &Client) -> Api<CustomResourceDefinition> {
    Api::all(client.clone())
}

fn dynamic<K: CustomResourceExt>(client: &Client) -> Api<DynamicObject> {
    Api::all_with(client.clone(), &K::api_resource())
}

async fn established(client: &Client, name: &str) -> bool {
    crds(client)
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|c| c.status)
        .and_then(|s| s.conditions)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        })
}

/// Puts the cluster's CRDs back to the previous release's, as Helm's `crds/` folder installed
/// them then (created, never applied since): each known CRD replaced whole, the new kind gone.
async fn install_previous_release(client: &Client) {
    let api = crds(client);
    let new_kind = PlatformRevision::crd_name();
    if api.get_opt(new_kind).await.expect("get CRD").is_some() {
        api.delete(new_kind, &DeleteParams::default())
            .await
            .expect("delete the new kind's CRD");
        eventually("the PlatformRevision CRD gone", || async {
            api.get_opt(new_kind)
                .await
                .expect("get CRD")
                .is_none()
                .then_some(())
        })
        .await;
    }
    let dir = workspace_root().join(PREVIOUS_RELEASE);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "the previous release had three CRDs");
    for path in files {
        let text = std::fs::read_to_string(&path).expect("read fixture");
        let mut crd: CustomResourceDefinition =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = crd.name_any();
        let params = PostParams {
            field_manager: Some("helm".into()),
            ..PostParams::default()
        };
        match api.get_opt(&name).await.expect("get CRD") {
            Some(live) => {
                crd.metadata.resource_version = live.metadata.resource_version;
                api.replace(&name, &params, &crd)
                    .await
                    .unwrap_or_else(|e| panic!("replace {name}: {e}"));
            }
            None => {
                api.create(&params, &crd)
                    .await
                    .unwrap_or_else(|e| panic!("create {name}: {e}"));
            }
        }
        eventually(&format!("{name} Established"), || async {
            established(client, &name).await.then_some(())
        })
        .await;
    }
    // The old schema is in force once the API server prunes what it does not declare.
    let tenants = dynamic::<Tenant>(client);
    let probe = unique("probe");
    eventually("the previous Tenant schema in force", || async {
        let created = tenants
            .create(
                &PostParams::default(),
                &tenant_object(&probe, Some("rev-1")),
            )
            .await
            .expect("create probe Tenant");
        let pruned = created.data["spec"].get("platformRevision").is_none();
        tenants
            .delete(&probe, &DeleteParams::default())
            .await
            .expect("delete probe Tenant");
        eventually("probe Tenant gone", || async {
            tenants
                .get_opt(&probe)
                .await
                .expect("get probe")
                .is_none()
                .then_some(())
        })
        .await;
        pruned.then_some(())
    })
    .await;
}

fn tenant_object(name: &str, platform_revision: Option<&str>) -> DynamicObject {
    let mut spec = json!({
        "platform": "leadsite-io", "tier": "business", "subdomain": name,
        "deletionPolicy": "Retain",
        "customer": {"stripeCustomerId": "cus_Upgrade123", "email": "owner@example.com", "name": "Upgrade Ltd"},
        "subscription": {"id": "sub_Upgrade123", "status": "active"},
    });
    if let Some(rev) = platform_revision {
        spec["platformRevision"] = json!(rev);
    }
    serde_json::from_value(json!({
        "apiVersion": "stackplane.io/v1alpha1", "kind": "Tenant",
        "metadata": {"name": name, "labels": {"stackplane.io/test": "crd-upgrade"},
                     "annotations": {"stackplane.io/note": "created under the previous CRDs"}},
        "spec": spec,
    }))
    .expect("Tenant object")
}

fn platform_object(name: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "stackplane.io/v1alpha1", "kind": "Platform",
        "metadata": {"name": name},
        "spec": {
            "displayName": "Upgrade", "domain": format!("{name}.example.com"),
            "components": [{"name": "api", "image": "example/api:1", "port": 8080}],
            "tiers": [{"name": "business", "quota": {"cpu": "2", "memory": "2Gi", "storage": "10Gi", "pods": 10}}],
        },
    }))
    .expect("Platform object")
}

/// Every object of a kind, by name: what an upgrade must leave exactly as it was (uid,
/// resourceVersion, labels, annotations, spec, status).
async fn snapshot(api: &Api<DynamicObject>) -> BTreeMap<String, Value> {
    api.list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|o| {
            let value = json!({
                "uid": o.metadata.uid, "resourceVersion": o.metadata.resource_version,
                "labels": o.metadata.labels, "annotations": o.metadata.annotations,
                "spec": o.data.get("spec"), "status": o.data.get("status"),
            });
            (o.name_any(), value)
        })
        .collect()
}

/// Whether `small` is `big` with some object fields left out (at any depth).
fn contained(small: &Value, big: &Value) -> bool {
    match (small, big) {
        (Value::Object(s), Value::Object(b)) => s
            .iter()
            .all(|(k, v)| b.get(k).is_some_and(|bv| contained(v, bv))),
        (Value::Array(s), Value::Array(b)) => {
            s.len() == b.len() && s.iter().zip(b).all(|(x, y)| contained(x, y))
        }
        _ => small == big,
    }
}

fn has_property(crd: &CustomResourceDefinition, pointer: &str) -> bool {
    let schema = serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref()),
    )
    .expect("schema JSON");
    schema.pointer(pointer).is_some()
}

/// The chart's CRD hook as rendered: (its RBAC objects, the Job's container args).
fn rendered_crd_hook(release: &str, namespace: &str) -> (Vec<Value>, Vec<String>) {
    let chart = chart_dir();
    let values = ci_values();
    let all = parse_docs(&helm_ok(&[
        "render",
        chart.to_str().unwrap_or_default(),
        "-f",
        values.to_str().unwrap_or_default(),
        "--name",
        release,
        "--namespace",
        namespace,
        "--hooks",
    ]));
    let without_hooks = parse_docs(&helm_ok(&[
        "render",
        chart.to_str().unwrap_or_default(),
        "-f",
        values.to_str().unwrap_or_default(),
        "--name",
        release,
        "--namespace",
        namespace,
    ]));
    // Uninstall deletes the release's objects: no CRD may be one of them (nor a hook).
    for doc in all.iter().chain(&without_hooks) {
        assert_ne!(
            doc["kind"], "CustomResourceDefinition",
            "a CRD among the release's objects would be deleted by `helm uninstall`"
        );
    }
    let hook: Vec<Value> = all
        .into_iter()
        .filter(|d| d["metadata"]["labels"]["app.kubernetes.io/component"] == "crds")
        .collect();
    for doc in &hook {
        let hook_events = doc["metadata"]["annotations"]["helm.sh/hook"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(hook_events, "pre-install,pre-upgrade", "{doc}");
    }
    let role = hook
        .iter()
        .find(|d| d["kind"] == "ClusterRole")
        .expect("the hook's ClusterRole");
    let verbs: Vec<&str> = role["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .flat_map(|r| r["verbs"].as_array().expect("verbs").iter())
        .filter_map(Value::as_str)
        .collect();
    assert!(
        !verbs.contains(&"delete") && !verbs.contains(&"deletecollection"),
        "the CRD hook may never delete a CRD: {verbs:?}"
    );
    let job = hook
        .iter()
        .find(|d| d["kind"] == "Job")
        .expect("the hook's Job");
    let args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("Job args")
        .iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    let rbac = hook.into_iter().filter(|d| d["kind"] != "Job").collect();
    (rbac, args)
}

/// Creates the hook's ServiceAccount, ClusterRole and ClusterRoleBinding as rendered; returns
/// the ServiceAccount's name.
async fn create_hook_rbac(client: &Client, namespace: &str, rbac: &[Value]) -> String {
    let discovery = kube::Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    let mut account = None;
    for doc in rbac {
        let obj: DynamicObject = serde_json::from_value(doc.clone()).expect("rendered object");
        let (group, version) = doc["apiVersion"]
            .as_str()
            .and_then(|v| v.split_once('/'))
            .unwrap_or(("", doc["apiVersion"].as_str().unwrap_or_default()));
        let kind = doc["kind"].as_str().unwrap_or_default();
        let (ar, caps) = discovery
            .resolve_gvk(&kube::api::GroupVersionKind::gvk(group, version, kind))
            .unwrap_or_else(|| panic!("the cluster does not serve {kind}"));
        let api: Api<DynamicObject> = match caps.scope {
            kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &ar),
            kube::discovery::Scope::Namespaced => {
                Api::namespaced_with(client.clone(), namespace, &ar)
            }
        };
        api.create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("create {kind} {}: {e}", obj.name_any()));
        if kind == "ServiceAccount" {
            account = Some(obj.name_any());
        }
    }
    account.expect("the hook renders a ServiceAccount")
}

/// Runs `stackplane-controller` with `args` as the ServiceAccount; (success, stderr+stdout).
fn run_controller(binary: &Path, kubeconfig: &Path, args: &[String]) -> (bool, String) {
    let out = Command::new(binary)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info")
        .output()
        .expect("run stackplane-controller");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ),
    )
}

#[tokio::test]
async fn an_upgrade_from_the_previous_release_loses_no_tenant_and_keeps_new_fields() {
    let client = kube_client().await;
    install_previous_release(&client).await;

    // Live data under the previous release: Tenants with spec, labels, annotations and status,
    // a Platform, a TenantBackup.
    let tenants = dynamic::<Tenant>(&client);
    let platforms = dynamic::<Platform>(&client);
    let backups = dynamic::<TenantBackup>(&client);
    let names: Vec<String> = (0..3).map(|_| unique("upg")).collect();
    for name in &names {
        tenants
            .create(&PostParams::default(), &tenant_object(name, None))
            .await
            .unwrap_or_else(|e| panic!("create Tenant {name}: {e}"));
        let status = json!({"status": {"phase": "Ready", "namespace": format!("tenant-{name}"),
            "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "serving",
                            "lastTransitionTime": "2026-12-01T00:00:00Z"}]}});
        tenants
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap_or_else(|e| panic!("status of {name}: {e}"));
    }
    let platform = unique("upgplat");
    platforms
        .create(&PostParams::default(), &platform_object(&platform))
        .await
        .expect("create Platform");
    let backup = unique("upgtb");
    let backup_obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "stackplane.io/v1alpha1", "kind": "TenantBackup",
        "metadata": {"name": backup}, "spec": {"tenant": names[0], "reason": "pre-delete"},
    }))
    .expect("TenantBackup object");
    backups
        .create(&PostParams::default(), &backup_obj)
        .await
        .expect("create TenantBackup");
    let before = (
        snapshot(&tenants).await,
        snapshot(&platforms).await,
        snapshot(&backups).await,
    );
    assert!(names.iter().all(|n| before.0.contains_key(n)));

    // The upgrade: the chart's hook RBAC as rendered, and its Job's command run with exactly it.
    let namespace = unique("crdhook");
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": namespace}})).expect("namespace"),
        )
        .await
        .expect("create namespace");
    let release = unique("rel");
    let (rbac, args) = rendered_crd_hook(&release, &namespace);
    assert!(
        args.ends_with(&["crds".to_owned(), "apply".to_owned()]),
        "{args:?}"
    );
    let account = create_hook_rbac(&client, &namespace, &rbac).await;
    let dir = std::env::temp_dir().join(unique("crdhook"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kubeconfig = dir.join("kubeconfig");
    let binary = workspace_binary("stackplane-controller", "stackplane-controller");
    impersonating_kubeconfig(&namespace, &account, &kubeconfig);
    // RBAC takes effect asynchronously: poll the hook until it succeeds (it is idempotent).
    let mut last = String::new();
    eventually("the CRD hook to succeed with the chart's RBAC", || {
        let (ok, out) = run_controller(&binary, &kubeconfig, &args);
        last = out;
        async move { ok.then_some(()) }
    })
    .await;
    assert!(
        last.contains("every CRD is applied and Established"),
        "{last}"
    );

    // The CRDs are the new ones: the new kind installed, the new fields declared, the apply
    // owned by stackplane-crds.
    let api = crds(&client);
    let tenant_crd = api.get(Tenant::crd_name()).await.expect("Tenant CRD");
    assert!(has_property(
        &tenant_crd,
        "/properties/spec/properties/platformRevision"
    ));
    assert!(tenant_crd
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .any(|m| m.manager.as_deref() == Some(stackplane_core::contract::field_managers::CRDS)));
    let platform_crd = api.get(Platform::crd_name()).await.expect("Platform CRD");
    assert!(has_property(
        &platform_crd,
        "/properties/spec/properties/rollout"
    ));
    assert!(established(&client, PlatformRevision::crd_name()).await);

    // Nothing lost or changed: every Tenant, Platform and TenantBackup as it was, down to its
    // resourceVersion.
    let after = (
        snapshot(&tenants).await,
        snapshot(&platforms).await,
        snapshot(&backups).await,
    );
    // Objects other tests stored under the newer CRDs show fields the old schema hid (the API
    // server prunes on read as well as on write): those come back, so what was visible before
    // must be contained in what is visible after, unchanged, with the same uid and
    // resourceVersion (nothing was rewritten).
    for (kind, before, after) in [
        ("Tenant", &before.0, &after.0),
        ("Platform", &before.1, &after.1),
        ("TenantBackup", &before.2, &after.2),
    ] {
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>(),
            "{kind}s lost or added by the upgrade"
        );
        for (name, was) in before {
            assert!(
                contained(was, &after[name]),
                "{kind} {name} changed by the upgrade:\nbefore: {was}\nafter: {}",
                after[name]
            );
        }
    }

    // A new field written now is kept (it was pruned under the previous CRDs).
    let pin = json!({"spec": {"platformRevision": "leadsite-io-abc123"}});
    tenants
        .patch(&names[0], &PatchParams::default(), &Patch::Merge(&pin))
        .await
        .expect("pin a Tenant");
    let typed: Api<Tenant> = Api::all(client.clone());
    let read = typed.get(&names[0]).await.expect("read Tenant");
    assert_eq!(
        read.spec.platform_revision.as_deref(),
        Some("leadsite-io-abc123")
    );
    assert_eq!(
        read.spec.customer.email.as_deref(),
        Some("owner@example.com")
    );

    // A second upgrade to the same CRDs is a no-op that succeeds.
    let (ok, out) = run_controller(&binary, &kubeconfig, &args);
    assert!(ok, "second apply failed: {out}");

    // An older binary's CRDs would prune a field the installed ones declare: refused, and
    // nothing changes, unless asked for. Simulated by an installed Tenant CRD that declares
    // one more field than this binary's.
    let mut newer = api.get(Tenant::crd_name()).await.expect("Tenant CRD");
    let mut schema = serde_json::to_value(&newer.spec.versions[0].schema).expect("schema");
    schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["futureHold"] =
        json!({"type": "string"});
    newer.spec.versions[0].schema = serde_json::from_value(schema).expect("schema");
    newer.metadata.managed_fields = None;
    let newer = api
        .replace(Tenant::crd_name(), &PostParams::default(), &newer)
        .await
        .expect("install a newer Tenant CRD");
    let (ok, out) = run_controller(&binary, &kubeconfig, &args);
    assert!(!ok, "an apply that prunes a field must be refused: {out}");
    assert!(out.contains("spec.futureHold"), "{out}");
    let unchanged = api.get(Tenant::crd_name()).await.expect("Tenant CRD");
    assert_eq!(
        unchanged.metadata.resource_version, newer.metadata.resource_version,
        "a refused apply changed the CRD"
    );
    let mut allowed = args.clone();
    allowed.push("--allow-field-removal".into());
    let (ok, out) = run_controller(&binary, &kubeconfig, &allowed);
    assert!(ok, "a knowing downgrade failed: {out}");
    let _ = std::fs::remove_dir_all(&dir);
}
