//! `kubectl-stackplane` (the built binary) against the real kube-apiserver, with the controller
//! running in-process on this test's own tenants.

use std::process::Output;

use k8s_openapi::api::core::v1::ResourceQuota;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::{json, Value};
use stackplane_crds::{Platform, Tenant, TenantBackup};
use stackplane_tests::{create_sharded_tenant, eventually, install_crds, kube_client, unique};

// The controller's own start-up helper (a dev-dependency: the plugin itself never links it).
#[path = "../../controller/tests/common/mod.rs"]
mod common;

async fn plugin(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-stackplane"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("run kubectl-stackplane")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A Platform and a Tenant of this test, and the controller reconciling only them until it is
/// dropped.
async fn tenant_with_controller() -> (Client, String, common::Controller) {
    let (client, shard) = common::cluster("stackplane_controller=info", kube_client()).await;
    let pname = unique("plat");
    let platform: Platform = stackplane_tests::example_platform_copy("leadsite-io.yaml", &pname);
    Api::<Platform>::all(client.clone())
        .create(&PostParams::default(), &platform)
        .await
        .expect("create platform");
    let controller = common::Controller::start(&client, &shard, |_| {});
    let name = create_sharded_tenant(&client, &pname, &shard).await;
    (client, name, controller)
}

#[tokio::test]
async fn status_and_diff_of_a_reconciled_tenant_then_of_a_hand_edit() {
    let (client, name, controller) = tenant_with_controller().await;
    let tenants: Api<Tenant> = Api::all(client.clone());
    // Reconciled: its objects are applied and its status names them (no node runs the pods
    // here, so it stays Provisioning).
    let t = eventually("the tenant's objects are applied", || {
        let tenants = tenants.clone();
        let name = name.clone();
        async move {
            let t = tenants.get_opt(&name).await.ok().flatten()?;
            let st = t.status.as_ref()?;
            (st.namespace.is_some() && !st.components.is_empty()).then_some(t)
        }
    })
    .await;
    let ns = t
        .status
        .as_ref()
        .and_then(|s| s.namespace.clone())
        .expect("namespace");

    let out = plugin(&["status", &name]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let screen = stdout(&out);
    assert!(screen.starts_with(&format!("Tenant {name}  ")), "{screen}");
    assert!(screen.contains(&format!("Namespace/{ns}")), "{screen}");
    assert!(screen.contains("ResourceQuota/"), "{screen}");
    assert!(screen.contains("Deployment/"), "{screen}");
    assert!(
        screen.contains("0/1 available") || screen.contains("available"),
        "{screen}"
    );
    assert!(screen.contains("\nConditions\n"), "{screen}");
    assert!(screen.contains("\nBilling\n"), "{screen}");
    assert!(
        !screen.contains("\x1b["),
        "no colour when not a terminal: {screen}"
    );

    let out = plugin(&["status", &name, "-o", "json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(report["tenant"], json!(name));
    assert_eq!(report["namespace"], json!(ns));
    let kinds: Vec<&str> = report["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .filter_map(|o| o["kind"].as_str())
        .collect();
    for kind in [
        "ResourceQuota",
        "LimitRange",
        "NetworkPolicy",
        "ServiceAccount",
        "Deployment",
    ] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    let out = plugin(&["status", &name, "-o", "yaml"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("tenant: {name}")),
        "{}",
        stdout(&out)
    );

    let out = plugin(&["rollout", "status", &t.spec.platform]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with(&format!("Platform {}  current ", t.spec.platform)),
        "{}",
        stdout(&out)
    );

    // In sync: the diff is empty.
    let out = plugin(&["diff", &name]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "",
        "a reconciled tenant has nothing to change"
    );

    // The controller stops; a person raises the quota by hand: the diff shows what a reconcile
    // would put back, and only that.
    drop(controller);
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns);
    let quota = quotas
        .list(&Default::default())
        .await
        .expect("quotas")
        .items
        .into_iter()
        .next()
        .expect("a quota");
    let qname = quota.metadata.name.clone().expect("name");
    let planned_pods = quota
        .spec
        .as_ref()
        .and_then(|s| s.hard.as_ref())
        .and_then(|h| h.get("pods"))
        .map(|q| q.0.clone())
        .expect("the plan sets a pod quota");
    quotas
        .patch(
            &qname,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"hard": {"pods": "999"}}})),
        )
        .await
        .expect("edit the quota");
    let out = plugin(&["diff", &name]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let d = stdout(&out);
    assert!(
        d.starts_with(&format!(
            "--- live ResourceQuota/{qname}\n+++ planned ResourceQuota/{qname}\n"
        )),
        "{d}"
    );
    let minus: Vec<&str> = d
        .lines()
        .filter(|l| l.starts_with('-') && !l.starts_with("---"))
        .collect();
    let plus: Vec<&str> = d
        .lines()
        .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
        .collect();
    assert_eq!(minus.len(), 1, "{d}");
    assert_eq!(plus.len(), 1, "{d}");
    assert!(minus[0].contains("pods") && minus[0].contains("999"), "{d}");
    assert!(
        plus[0].contains("pods") && plus[0].contains(&planned_pods),
        "{d}"
    );
    // A dry run: the quota is still the hand-edited one.
    let still = quotas.get(&qname).await.expect("quota");
    let pods = still
        .spec
        .and_then(|s| s.hard)
        .and_then(|h| h.get("pods").map(|q| q.0.clone()));
    assert_eq!(pods.as_deref(), Some("999"), "diff wrote nothing");

    // A backup, then a restore from it; a restore from another tenant's backup is refused.
    let out = plugin(&["backup", &name]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let created = stdout(&out);
    let backup = created
        .strip_prefix("tenantbackup/")
        .and_then(|s| s.split_whitespace().next())
        .expect("the backup's name")
        .to_owned();
    let b = Api::<TenantBackup>::all(client.clone())
        .get(&backup)
        .await
        .expect("the backup exists");
    assert_eq!(b.spec.tenant, name);
    assert!(b.spec.restore.is_none());
    let out = plugin(&["restore", &name, "--from", &backup]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = plugin(&["restore", &name, "--from", "no-such-backup"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no TenantBackup named \"no-such-backup\""),
        "{}",
        stderr(&out)
    );

    // The Events the controller published about the tenant.
    let out = plugin(&["events", &name, "-o", "json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let events: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert!(events.as_array().is_some_and(|e| !e.is_empty()), "{events}");
}

#[tokio::test]
async fn errors_say_what_to_do() {
    let client = kube_client().await;
    install_crds(&client).await;
    let out = plugin(&["status", "no-such-tenant"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no Tenant named \"no-such-tenant\""),
        "{}",
        stderr(&out)
    );
    let out = plugin(&["rollout", "status", "no-such-platform"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no Platform named"),
        "{}",
        stderr(&out)
    );
    let out = plugin(&["--kubeconfig", "/nonexistent/kubeconfig", "status", "x"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot load a kubeconfig"),
        "{}",
        stderr(&out)
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-stackplane"))
        .args(["replay", "evt_1"])
        .env_remove("STACKPLANE_API_URL")
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("STACKPLANE_API_URL"),
        "{}",
        stderr(&out)
    );
    // hold and release go through the api: without its address they say which variable to set,
    // and a missing reason or a bad tenant name is refused before any call.
    for args in [
        &["hold", "t1", "--reason", "abuse"][..],
        &["release", "t1"][..],
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-stackplane"))
            .args(args)
            .env_remove("STACKPLANE_API_URL")
            .output()
            .await
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&out).contains("STACKPLANE_API_URL"),
            "{}",
            stderr(&out)
        );
    }
    let out = plugin(&["hold", "t1"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--reason"), "{}", stderr(&out));
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-stackplane"))
        .args(["hold", "t1", "--reason", " "])
        .env("STACKPLANE_API_URL", "http://127.0.0.1:9")
        .env("STACKPLANE_API_TOKEN", "t")
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--reason is required"),
        "{}",
        stderr(&out)
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-stackplane"))
        .args(["release", "Not_A_Name"])
        .env("STACKPLANE_API_URL", "http://127.0.0.1:9")
        .env("STACKPLANE_API_TOKEN", "t")
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("not a tenant name"),
        "{}",
        stderr(&out)
    );
    // The collector's Events about the controller's Lease are what `orphans` lists.
    let ns = unique("ctl");
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).expect("namespace"),
        )
        .await
        .expect("create namespace");
    let out = plugin(&["orphans", "--controller-namespace", &ns]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "no orphaned cloud resources reported\n");
    let event: k8s_openapi::api::core::v1::Event = serde_json::from_value(json!({
        "metadata": {"name": unique("gc"), "namespace": ns},
        "involvedObject": {"kind": "Lease", "name": "stackplane-controller", "namespace": ns,
            "apiVersion": "coordination.k8s.io/v1"},
        "reason": "OrphanFound", "type": "Warning",
        "message": "instance i-0abc belongs to tn-gone, which no longer exists",
        "lastTimestamp": "2026-12-01T00:00:00Z",
    }))
    .expect("event");
    Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &event)
        .await
        .expect("create event");
    let out = plugin(&["orphans", "--controller-namespace", &ns]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = stdout(&out);
    assert!(
        listed.contains("OrphanFound") && listed.contains("i-0abc"),
        "{listed}"
    );

    let out = plugin(&["completions", "bash"]).await;
    assert!(out.status.success());
    assert!(stdout(&out).contains("kubectl-stackplane"));
}

/// `adopt NAMESPACE|TENANT` recreates a Tenant from the marks the controller writes onto the
/// namespace when a deletion of the Tenant CRD releases it (here written as it writes them, onto
/// a stack its `Retain` Tenant left: deleting the CRD itself is `controller/tests/crd_deletion.rs`,
/// which needs a test binary of its own). The recreated Tenant adopts the namespace: the same
/// credentials, the marks removed. What cannot be adopted says why, with exit code 2.
#[tokio::test]
async fn adopt_recreates_the_tenant_a_crd_deletion_left_and_it_adopts_its_namespace() {
    let (client, name, _controller) = tenant_with_controller().await;
    let tenants: Api<Tenant> = Api::all(client.clone());
    let ns = format!("tenant-{name}");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    let credentials = eventually("credentials", || {
        let secrets = secrets.clone();
        async move { secrets.get("credentials").await.ok()?.data }
    })
    .await;
    tenants
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"deletionPolicy": "Retain"}})),
        )
        .await
        .expect("Retain");
    let t = eventually("deletionPolicy Retain", || {
        let tenants = tenants.clone();
        let name = name.clone();
        async move {
            let t = tenants.get(&name).await.ok()?;
            (t.spec.deletion_policy == stackplane_crds::DeletionPolicy::Retain).then_some(t)
        }
    })
    .await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let marks = stackplane_core::tenant::adoption::orphan_patch(&t).expect("marks");
    namespaces
        .patch(&ns, &PatchParams::default(), &Patch::Merge(&marks))
        .await
        .expect("mark");
    tenants
        .delete(&name, &Default::default())
        .await
        .expect("delete");
    eventually("the tenant gone, its namespace kept", || {
        let tenants = tenants.clone();
        let name = name.clone();
        async move { tenants.get_opt(&name).await.ok()?.is_none().then_some(()) }
    })
    .await;

    let out = plugin(&["adopt", &name]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("tenant/{name} created: the controller adopts its namespace as it is\n")
    );
    let back = tenants.get(&name).await.expect("recreated");
    assert_eq!(back.spec.platform, t.spec.platform);
    assert_eq!(
        back.metadata.labels, t.metadata.labels,
        "the shard label came back"
    );
    let adopted = eventually("the namespace adopted: marks removed", || {
        let namespaces = namespaces.clone();
        let ns = ns.clone();
        async move {
            let n = namespaces.get(&ns).await.ok()?;
            (!stackplane_core::tenant::adoption::carries_orphan_marks(&n)).then_some(n)
        }
    })
    .await;
    assert!(adopted.metadata.deletion_timestamp.is_none());
    assert_eq!(
        secrets.get("credentials").await.expect("credentials").data,
        Some(credentials),
        "the same credentials"
    );

    // Adopted already: the Tenant exists.
    let out = plugin(&["adopt", &ns]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("exists already"), "{}", stderr(&out));
    // A namespace without the marks, and none at all.
    let out = plugin(&["adopt", "default"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot adopt"), "{}", stderr(&out));
    let out = plugin(&["adopt", &unique("nothing")]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no namespace"), "{}", stderr(&out));
}
