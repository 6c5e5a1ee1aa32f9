//! Issue 33, "mistakes delete nothing": `kubectl delete crd tenants.stackplane.io` with Ready
//! tenants running. The API server deletes every Tenant; the controller releases each one
//! without deleting anything, marking its namespace for re-adoption; once the CRD is back, a
//! Tenant recreated from those marks (what `kubectl stackplane adopt` does; the billing sweep
//! recreates live customers' Tenants the same way, see api/tests/billing_truth.rs) adopts the
//! same namespace, volume claim and credentials, and is Ready again.
//!
//! Deleting the CRD deletes every Tenant of the cluster, so this file holds this one test:
//! Cargo runs test binaries one after another, so no other test's Tenants are live meanwhile.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt, ResourceExt};
use serde_json::json;
use stackplane_controller::tenant::ReconcileConfig;
use stackplane_core::contract::labels::{ORPHANED, ORPHANED_BY, TENANT_SPEC};
use stackplane_core::tenant::adoption;
use stackplane_crds::{Platform, Tenant, TenantPhase, TenantSpec};
use stackplane_tests::{eventually, eventually_within, install_crds, kube_client, unique};

mod common;

const SHARD: &str = "stackplane.io/test-shard";

/// What one tenant's stack was before the CRD went.
#[derive(Debug, PartialEq)]
struct Stack {
    namespace_uid: String,
    claim_uid: String,
    credentials: BTreeMap<String, k8s_openapi::ByteString>,
}

async fn stack(c: &Client, ns: &str) -> Stack {
    let namespace = Api::<Namespace>::all(c.clone())
        .get(ns)
        .await
        .expect("namespace");
    let claim = Api::<PersistentVolumeClaim>::namespaced(c.clone(), ns)
        .get("storage")
        .await
        .expect("claim");
    let secret = Api::<Secret>::namespaced(c.clone(), ns)
        .get("credentials")
        .await
        .expect("credentials");
    Stack {
        namespace_uid: namespace.uid().expect("uid"),
        claim_uid: claim.uid().expect("uid"),
        credentials: secret.data.expect("credentials data"),
    }
}

/// Plays the node: every Deployment of `ns` available at its planned replicas.
async fn make_available(c: &Client, ns: &str) {
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), ns);
    let list = eventually("three deployments", || {
        let d = deployments.clone();
        async move {
            let l = d.list(&ListParams::default()).await.ok()?;
            (l.items.len() == 3).then_some(l.items)
        }
    })
    .await;
    for d in &list {
        let n = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = json!({"status": {"replicas": n, "readyReplicas": n,
            "availableReplicas": n, "updatedReplicas": n, "observedGeneration": d.metadata.generation}});
        deployments
            .patch_status(
                &d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&status),
            )
            .await
            .expect("patch deployment status");
    }
}

async fn ready(c: &Client, name: &str) -> Tenant {
    let api = Api::<Tenant>::all(c.clone());
    eventually("Ready", || {
        let api = api.clone();
        async move {
            let t = api.get_opt(name).await.ok()??;
            (t.status.as_ref()?.phase == Some(TenantPhase::Ready)).then_some(t)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_tenant_crd_deletes_nothing_and_recreated_tenants_adopt_their_stacks() {
    let (c, shard) = common::cluster("stackplane_controller=info", kube_client()).await;
    let mut platform: Platform = stackplane_tests::example_platform("video-site.yaml");
    let pname = unique("plat");
    platform.metadata.name = Some(pname.clone());
    Api::<Platform>::all(c.clone())
        .create(&PostParams::default(), &platform)
        .await
        .expect("create platform");
    let metrics = std::sync::Arc::new(stackplane_controller::metrics::Metrics::new());
    let _controller = common::Controller::start(&c, &shard, |o| {
        o.concurrency = 4;
        o.metrics = metrics.clone();
        o.reconcile = ReconcileConfig {
            final_backup_poll: Duration::from_secs(1),
            ..ReconcileConfig::default()
        };
    });
    let tenants: Api<Tenant> = Api::all(c.clone());

    // Three Ready tenants under `deletionPolicy: Delete` (the default), each with a claim.
    let mut names = Vec::new();
    for _ in 0..3 {
        let name = unique("tn");
        let mut t = Tenant::new(&name, TenantSpec::new(pname.clone(), "starter"));
        t.metadata.labels = Some([(SHARD.to_owned(), shard.clone())].into());
        tenants
            .create(&PostParams::default(), &t)
            .await
            .expect("create tenant");
        names.push(name);
    }
    let mut before = BTreeMap::new();
    for name in &names {
        let ns = format!("tenant-{name}");
        make_available(&c, &ns).await;
        ready(&c, name).await;
        before.insert(name.clone(), stack(&c, &ns).await);
    }

    // The Tenants other test binaries left (their controllers are gone) would hold the CRD's
    // deletion forever by their finalizers; in a real cluster every Tenant has its controller.
    for t in tenants
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
    {
        if t.labels().get(SHARD) != Some(&shard) && !t.finalizers().is_empty() {
            let _ = tenants
                .patch(
                    &t.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"metadata": {"finalizers": null}})),
                )
                .await;
        }
    }

    // The mistake.
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    crds.delete(Tenant::crd_name(), &DeleteParams::default())
        .await
        .expect("delete the Tenant CRD");
    eventually_within("the Tenant CRD gone", 90, || {
        let crds = crds.clone();
        async move {
            crds.get_opt(Tenant::crd_name())
                .await
                .ok()
                .and_then(|c| c.is_none().then_some(()))
        }
    })
    .await;

    // Nothing was deleted: each namespace live, its claim and credentials the same, and
    // marked with what re-adoption needs.
    for name in &names {
        let ns = format!("tenant-{name}");
        let n = Api::<Namespace>::all(c.clone())
            .get(&ns)
            .await
            .expect("namespace kept");
        assert!(n.metadata.deletion_timestamp.is_none(), "{ns} terminating");
        assert_eq!(n.labels().get(ORPHANED).map(String::as_str), Some("true"));
        assert_eq!(
            n.annotations().get(ORPHANED_BY).map(String::as_str),
            Some("tenant-crd-deletion")
        );
        assert!(n.annotations().contains_key(TENANT_SPEC));
        assert_eq!(stack(&c, &ns).await, before[name], "{ns}");
    }
    let text = metrics.encode().expect("metrics");
    assert!(
        text.lines()
            .any(|l| l == "stackplane_controller_tenants_orphaned_by_crd_deletion_total 3"),
        "{text}"
    );

    // The CRD back, each Tenant recreated from its namespace's marks as `adopt` does.
    install_crds(&c).await;
    for name in &names {
        let ns = Api::<Namespace>::all(c.clone())
            .get(&format!("tenant-{name}"))
            .await
            .expect("namespace");
        let t = adoption::tenant_from_namespace(&ns).expect("adoptable");
        assert_eq!(&t.name_any(), name);
        assert_eq!(t.labels().get(SHARD), Some(&shard), "labels kept");
        // The new kind's API may take a moment to serve creates after Established.
        eventually("the Tenant recreated", || {
            let tenants = tenants.clone();
            let t = t.clone();
            async move { tenants.create(&PostParams::default(), &t).await.ok() }
        })
        .await;
    }

    // Each adopts its stack untouched and is Ready again; the marks are gone.
    for name in &names {
        let ns = format!("tenant-{name}");
        let t = eventually_within("Ready again", 120, || {
            let tenants = tenants.clone();
            async move {
                let t = tenants.get_opt(name).await.ok()??;
                (t.status.as_ref()?.phase == Some(TenantPhase::Ready)).then_some(t)
            }
        })
        .await;
        assert_ne!(t.uid(), None);
        assert_eq!(stack(&c, &ns).await, before[name], "{ns}: the same stack");
        let n = eventually("the orphan marks removed", || {
            let c = c.clone();
            let ns = ns.clone();
            async move {
                let n = Api::<Namespace>::all(c).get(&ns).await.ok()?;
                (!adoption::carries_orphan_marks(&n)).then_some(n)
            }
        })
        .await;
        assert_eq!(n.uid().as_ref(), Some(&before[name].namespace_uid));
    }
}
