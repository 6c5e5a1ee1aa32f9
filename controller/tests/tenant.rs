//! The Tenant controller against the real kube-apiserver, run in-process and restricted to the
//! test's own Tenants by a label selector and a Lease of its own.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    Event as CoreEvent, Namespace, PersistentVolumeClaim, ResourceQuota, Secret, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{IPBlock, NetworkPolicy};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use stackplane_controller::tenant::ReconcileConfig;
use stackplane_core::contract::labels::BACKUP;
use stackplane_core::tenant::network;
use stackplane_core::tenant::plan::{NetworkFlags, PlanOptions};
use stackplane_crds::{
    BackupReason, EgressPort, EgressProtocol, EgressRule, Platform, Subscription,
    SubscriptionStatus, Tenant, TenantBackup, TenantPhase, TenantSpec,
};
use stackplane_tests::{eventually, eventually_within, kube_client, unique};

mod common;

const SHARD: &str = "stackplane.io/test-shard";

struct Env {
    client: Client,
    shard: String,
    platform: String,
    /// The metrics of the controller under test.
    metrics: std::sync::Arc<stackplane_controller::metrics::Metrics>,
    _controller: common::Controller,
}

/// The reconciler's settings in these tests: the final backup is looked at every second.
fn test_config() -> ReconcileConfig {
    ReconcileConfig {
        final_backup_poll: Duration::from_secs(1),
        // Another test file installs a VolumeSnapshot CRD into the shared cluster, and no
        // snapshot controller would ever finish those snapshots: these tests look at the
        // tenant's side of the final backup, so its volume parts are "unsupported" here.
        backup: stackplane_controller::backup::BackupConfig {
            volume_snapshot_group: "snapshot.unserved.stackplane.test".into(),
            poll: Duration::from_secs(1),
            ..Default::default()
        },
        ..ReconcileConfig::default()
    }
}

async fn start(example: &str) -> Env {
    start_with(example, test_config()).await
}

async fn start_with(example: &str, reconcile: ReconcileConfig) -> Env {
    start_edited(example, reconcile, |_| {}).await
}

/// [`start_with`] on the example Platform as `edit` leaves it.
async fn start_edited(
    example: &str,
    reconcile: ReconcileConfig,
    edit: impl FnOnce(&mut Platform),
) -> Env {
    let (client, shard) = common::cluster("stackplane_controller=debug", kube_client()).await;
    let mut platform: Platform = stackplane_tests::example_platform(example);
    edit(&mut platform);
    let pname = unique("plat");
    platform.metadata.name = Some(pname.clone());
    Api::<Platform>::all(client.clone())
        .create(&PostParams::default(), &platform)
        .await
        .expect("create platform");
    let metrics = std::sync::Arc::new(stackplane_controller::metrics::Metrics::new());
    let controller = common::Controller::start(&client, &shard, |o| {
        o.concurrency = 4;
        o.reconcile = reconcile;
        o.metrics = metrics.clone();
    });
    Env {
        client,
        shard,
        platform: pname,
        metrics,
        _controller: controller,
    }
}

async fn create_tenant(env: &Env, tier: &str) -> String {
    create_tenant_with(env, tier, |_| {}).await
}

async fn create_tenant_with(env: &Env, tier: &str, edit: impl FnOnce(&mut Tenant)) -> String {
    create_tenant_named(env, &unique("tn"), tier, edit).await
}

async fn create_tenant_named(
    env: &Env,
    name: &str,
    tier: &str,
    edit: impl FnOnce(&mut Tenant),
) -> String {
    let name = name.to_owned();
    let mut t = Tenant::new(&name, TenantSpec::new(env.platform.clone(), tier));
    t.metadata.labels = Some([(SHARD.to_owned(), env.shard.clone())].into());
    edit(&mut t);
    Api::<Tenant>::all(env.client.clone())
        .create(&PostParams::default(), &t)
        .await
        .expect("create tenant");
    name
}

/// The Events about a Tenant, found the way `kubectl describe` finds them (every namespace).
async fn tenant_events(c: &Client, name: &str) -> Vec<CoreEvent> {
    Api::<CoreEvent>::all(c.clone())
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind=Tenant,involvedObject.name={name}"
        )))
        .await
        .expect("list events")
        .items
}

fn condition(t: &Tenant, type_: &str) -> Option<Condition> {
    t.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

/// The final backup the controller requested for this lifecycle of `tenant` (which must still
/// exist), once it exists.
async fn final_backup(c: &Client, tenant: &str) -> TenantBackup {
    let uid = tenant_uid(c, tenant).await;
    final_backup_of(c, tenant, &uid).await
}

async fn tenant_uid(c: &Client, tenant: &str) -> String {
    Api::<Tenant>::all(c.clone())
        .get(tenant)
        .await
        .expect("get tenant")
        .metadata
        .uid
        .expect("uid")
}

/// The final backup of the lifecycle `uid` of `tenant`, once it exists.
async fn final_backup_of(c: &Client, tenant: &str, uid: &str) -> TenantBackup {
    let api = Api::<TenantBackup>::all(c.clone());
    let name = stackplane_core::tenant::deletion::final_backup_name(tenant, uid);
    eventually("the final backup", || {
        let api = api.clone();
        let name = name.clone();
        async move { api.get_opt(&name).await.ok()? }
    })
    .await
}

/// Plays the node that runs the final backup's dump Job: marks the Job complete, so the backup
/// reconciler (running in the controller under test) finishes the backup.
async fn finish_backup(c: &Client, tenant: &str, backup: &str) {
    end_dump_job(c, tenant, backup, true).await
}

/// Marks the backup's dump Job complete (`succeeded`) or failed.
async fn end_dump_job(c: &Client, tenant: &str, backup: &str, succeeded: bool) {
    let jobs: Api<Job> = Api::namespaced(c.clone(), &format!("tenant-{tenant}"));
    let job = eventually("the dump job", || {
        let jobs = jobs.clone();
        async move {
            let l = jobs
                .list(
                    &ListParams::default()
                        .labels(&stackplane_core::contract::labels::backup_selector(backup)),
                )
                .await
                .ok()?;
            l.items.into_iter().next()
        }
    })
    .await;
    let now = Timestamp::now().to_string();
    let status = if succeeded {
        json!({"status": {
            "startTime": now,
            "succeeded": 1,
            "conditions": [{"type": "Complete", "status": "True", "reason": "Completed",
                "lastProbeTime": now, "lastTransitionTime": now}],
        }})
    } else {
        json!({"status": {
            "startTime": now,
            "failed": 3,
            "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                "message": "set by the test", "lastProbeTime": now, "lastTransitionTime": now}],
        }})
    };
    jobs.patch_status(
        &job.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .expect("patch job status");
}

async fn tenant_gone(c: &Client, name: &str) -> bool {
    Api::<Tenant>::all(c.clone())
        .get_opt(name)
        .await
        .expect("get tenant")
        .is_none()
}

async fn tenant(client: &Client, name: &str) -> Tenant {
    Api::<Tenant>::all(client.clone())
        .get(name)
        .await
        .expect("get tenant")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_gets_its_stack_and_becomes_ready() {
    let env = start("leadgen-pro.yaml").await;
    let name = create_tenant(&env, "professional").await;
    let ns = format!("tenant-{name}");
    let c = env.client.clone();

    let deployments: Api<Deployment> = Api::namespaced(c.clone(), &ns);
    let list = eventually("two deployments", || {
        let d = deployments.clone();
        async move {
            let l = d.list(&ListParams::default()).await.ok()?;
            (l.items.len() == 2).then_some(l.items)
        }
    })
    .await;
    for d in &list {
        assert_eq!(
            d.spec.as_ref().and_then(|s| s.replicas),
            Some(2),
            "professional multiplier"
        );
        assert_eq!(d.labels()["stackplane.io/tenant"], name);
    }
    let nsobj = Api::<Namespace>::all(c.clone())
        .get(&ns)
        .await
        .expect("namespace");
    assert_eq!(
        nsobj.labels()["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    let sa = Api::<ServiceAccount>::namespaced(c.clone(), &ns)
        .get("tenant-workload")
        .await
        .expect("sa");
    assert_eq!(sa.automount_service_account_token, Some(false));
    let secret = eventually("credentials", || {
        let s = Api::<Secret>::namespaced(c.clone(), &ns);
        async move { s.get("credentials").await.ok() }
    })
    .await;
    let quota = eventually("quota", || {
        let q = Api::<ResourceQuota>::namespaced(c.clone(), &ns);
        async move { q.get("tenant-quota").await.ok() }
    })
    .await;
    assert_eq!(
        quota.spec.and_then(|s| s.hard).expect("hard")["pods"].0,
        "20"
    );

    let t = eventually("Provisioning", || {
        let c = c.clone();
        let name = name.clone();
        async move {
            let t = tenant(&c, &name).await;
            (t.status.as_ref()?.phase == Some(TenantPhase::Provisioning)).then_some(t)
        }
    })
    .await;
    assert_eq!(
        t.status.as_ref().and_then(|s| s.endpoint.clone()),
        Some(format!("https://{name}.leadgen.pro"))
    );

    // Make the Deployments available, as a node would.
    for d in &list {
        let status = json!({"status": {"replicas": 2, "readyReplicas": 2, "availableReplicas": 2, "updatedReplicas": 2}});
        deployments
            .patch_status(
                &d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&status),
            )
            .await
            .expect("patch deployment status");
    }
    let t = eventually("Ready", || {
        let c = c.clone();
        let name = name.clone();
        async move {
            let t = tenant(&c, &name).await;
            (t.status.as_ref()?.phase == Some(TenantPhase::Ready)).then_some(t)
        }
    })
    .await;
    let st = t.status.clone().expect("status");
    assert!(st.ready_since.is_some());
    assert_eq!(st.observed_generation, t.metadata.generation);
    let overdue = condition(&t, "PaymentOverdue").expect("PaymentOverdue condition");
    assert_eq!(
        (overdue.status.as_str(), overdue.reason.as_str()),
        ("False", "PaymentCurrent")
    );

    // The phase transitions were stored as Events the API server accepted.
    let events = eventually("Provisioning and Ready events", || {
        let c = c.clone();
        let name = name.clone();
        async move {
            let events = tenant_events(&c, &name).await;
            let has = |r: &str| events.iter().any(|e| e.reason.as_deref() == Some(r));
            (has("Provisioning") && has("Ready")).then_some(events)
        }
    })
    .await;
    for e in &events {
        assert_eq!(e.metadata.namespace.as_deref(), Some("kube-system"));
        assert_eq!(e.involved_object.namespace, None);
        assert_eq!(e.involved_object.uid, t.metadata.uid);
        assert_eq!(
            e.reporting_component.as_deref(),
            Some("stackplane-controller")
        );
        assert_eq!(e.type_.as_deref(), Some("Normal"));
    }

    // A quota edited by hand is restored; the credentials stay the same across reconciles.
    let hand = json!({"pods": "1"});
    Api::<ResourceQuota>::namespaced(c.clone(), &ns)
        .patch(
            "tenant-quota",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"hard": hand}})),
        )
        .await
        .expect("edit quota");
    eventually("quota restored", || {
        let q = Api::<ResourceQuota>::namespaced(c.clone(), &ns);
        async move {
            let q = q.get("tenant-quota").await.ok()?;
            (q.spec?.hard?["pods"].0 == "20").then_some(())
        }
    })
    .await;
    let again = Api::<Secret>::namespaced(c.clone(), &ns)
        .get("credentials")
        .await
        .expect("secret");
    assert_eq!(secret.data, again.data, "credentials never change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tier_is_invalid_spec_and_nothing_is_created() {
    let env = start("tackle.yaml").await;
    let name = create_tenant(&env, "no-such-tier").await;
    let c = env.client.clone();
    let t = eventually("InvalidSpec", || {
        let c = c.clone();
        let name = name.clone();
        async move {
            let t = tenant(&c, &name).await;
            let ready = t
                .status
                .as_ref()?
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready")?
                .clone();
            (ready.reason == "InvalidSpec").then_some(t)
        }
    })
    .await;
    assert_eq!(t.status.and_then(|s| s.phase), Some(TenantPhase::Failed));
    let ns = Api::<Namespace>::all(c.clone())
        .get_opt(&format!("tenant-{name}"))
        .await
        .expect("get");
    assert!(ns.is_none(), "nothing created for an invalid tenant");
}

/// The network flags of the egress tests: the harness's pod and service ranges, a backup
/// network, the ingress controller's namespace by a selector.
fn egress_config() -> ReconcileConfig {
    let flags = NetworkFlags {
        ingress_namespace: "unused".into(),
        ingress_namespace_selector: Some("app.kubernetes.io/name=ingress-nginx".into()),
        cluster_cidrs: vec!["10.244.0.0/16,10.96.0.0/12".into()],
        backup_egress_cidrs: vec!["192.0.2.0/24".into()],
    };
    ReconcileConfig {
        plan: PlanOptions::from_flags(&flags).expect("network flags"),
        ..test_config()
    }
}

/// The NetworkPolicies the API server stored in `ns`, once there are `count` of them.
async fn stored_policies(c: &Client, ns: &str, count: usize) -> Vec<NetworkPolicy> {
    let api: Api<NetworkPolicy> = Api::namespaced(c.clone(), ns);
    eventually(&format!("{count} network policies in {ns}"), || {
        let api = api.clone();
        async move {
            let l = api.list(&ListParams::default()).await.ok()?;
            (l.items.len() == count).then_some(l.items)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_namespace_denies_egress_but_dns_and_what_its_platform_declares() {
    let env = start_edited("leadsite-ai.yaml", egress_config(), |p| {
        // leadsite-ai declares `internet: true` on 443; a private network on 5432 beside it,
        // wider than the cluster's pod range and than link-local.
        p.spec.egress.push(EgressRule {
            cidrs: vec!["10.0.0.0/8".into(), "169.0.0.0/8".into()],
            ports: vec![EgressPort {
                port: 5432,
                protocol: EgressProtocol::Tcp,
            }],
            ..EgressRule::default()
        });
    })
    .await;
    let c = env.client.clone();
    let name = create_tenant(&env, "starter").await;
    let ns = format!("tenant-{name}");
    // deny ingress, deny egress, same namespace, ingress controller, DNS, platform, backups.
    let policies = stored_policies(&c, &ns, 7).await;

    let nsobj = Api::<Namespace>::all(c.clone())
        .get(&ns)
        .await
        .expect("namespace");
    assert_eq!(
        nsobj.labels().get(network::NAMESPACE_NAME_LABEL),
        Some(&ns),
        "1.20 does not set it; the controller does"
    );
    let named = |n: &str| {
        policies
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(n))
            .and_then(|p| p.spec.clone())
            .unwrap_or_else(|| panic!("policy {n}"))
    };
    let deny = named(network::DEFAULT_DENY_EGRESS);
    assert_eq!(deny.policy_types, Some(vec!["Egress".to_owned()]));
    assert_eq!(deny.pod_selector, Some(Default::default()), "every pod");
    assert_eq!(deny.egress, None, "no rule: nothing allowed");
    let from_ingress = named(network::ALLOW_INGRESS_CONTROLLER)
        .ingress
        .expect("rules")[0]
        .from
        .clone()
        .expect("peers");
    assert_eq!(
        from_ingress[0]
            .namespace_selector
            .as_ref()
            .and_then(|s| s.match_labels.clone()),
        Some(
            [(
                "app.kubernetes.io/name".to_owned(),
                "ingress-nginx".to_owned()
            )]
            .into()
        )
    );
    // What the API server kept of the ipBlocks (it refuses an `except` outside its `cidr`).
    let blocks: Vec<IPBlock> = named(network::ALLOW_PLATFORM_EGRESS)
        .egress
        .expect("rules")
        .into_iter()
        .flat_map(|r| r.to.unwrap_or_default())
        .filter_map(|peer| peer.ip_block)
        .collect();
    let except = |cidr: &str| {
        blocks
            .iter()
            .find(|b| b.cidr == cidr)
            .and_then(|b| b.except.clone())
            .unwrap_or_else(|| panic!("an ipBlock {cidr} with exceptions: {blocks:?}"))
    };
    assert_eq!(
        except("0.0.0.0/0"),
        ["169.254.0.0/16", "10.244.0.0/16", "10.96.0.0/12"]
    );
    assert_eq!(except("::/0"), ["fe80::/10", "fd00:ec2::254/128"]);
    assert_eq!(except("10.0.0.0/8"), ["10.244.0.0/16", "10.96.0.0/12"]);
    assert_eq!(except("169.0.0.0/8"), ["169.254.0.0/16"]);

    // What the stored policies allow, as a conforming network plugin enforces them (the
    // harness's bridge network enforces nothing, so this reads the objects, not packets).
    let api_pods = eventually("the api Deployment", || {
        let d = Api::<Deployment>::namespaced(c.clone(), &ns);
        async move { d.get("api").await.ok()?.spec?.template.metadata?.labels }
    })
    .await;
    let component = api_pods;
    let backup_job: BTreeMap<String, String> =
        [(BACKUP.to_owned(), "some-backup".to_owned())].into();
    let allows = |pod: &BTreeMap<String, String>, addr: &str, port: i32, protocol: &str| {
        network::egress_allowed(&policies, pod, addr.parse().expect("ip"), port, protocol)
    };
    for pod in [&component, &backup_job] {
        assert!(allows(pod, "10.96.0.10", 53, "UDP"), "DNS over UDP");
        assert!(allows(pod, "10.96.0.10", 53, "TCP"), "DNS over TCP");
        for port in [80, 443, 5432, 8080] {
            assert!(
                !allows(pod, "169.254.169.254", port, "TCP"),
                "metadata :{port}"
            );
            assert!(
                !allows(pod, "fd00:ec2::254", port, "TCP"),
                "IPv6 metadata :{port}"
            );
        }
        assert!(
            !allows(pod, "10.244.7.9", 8080, "TCP"),
            "another tenant's pod"
        );
        assert!(
            !allows(pod, "10.96.0.1", 443, "TCP"),
            "the cluster's services"
        );
        assert!(allows(pod, "203.0.113.9", 443, "TCP"), "internet on 443");
        assert!(!allows(pod, "203.0.113.9", 22, "TCP"), "internet on 22");
        assert!(
            allows(pod, "10.20.0.5", 5432, "TCP"),
            "the declared network"
        );
        assert!(
            allows(pod, "169.1.2.3", 5432, "TCP"),
            "the declared network"
        );
    }
    assert!(
        allows(&backup_job, "192.0.2.5", 9000, "TCP"),
        "object store"
    );
    assert!(
        !allows(&component, "192.0.2.5", 9000, "TCP"),
        "backups' only"
    );

    // An existing tenant (its namespace from before: no egress policies) gets them back on
    // its next reconcile, which a deleted child triggers.
    let api: Api<NetworkPolicy> = Api::namespaced(c.clone(), &ns);
    for n in [network::DEFAULT_DENY_EGRESS, network::ALLOW_DNS] {
        api.delete(n, &Default::default()).await.expect("delete");
    }
    stored_policies(&c, &ns, 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_allowing_the_metadata_endpoint_is_invalid_spec() {
    let env = start_edited("tackle.yaml", test_config(), |p| {
        p.spec.egress = vec![EgressRule {
            cidrs: vec!["169.254.169.254/32".into()],
            ..EgressRule::default()
        }];
    })
    .await;
    let c = env.client.clone();
    let name = create_tenant(&env, "starter").await;
    let ready = eventually("InvalidSpec", || {
        let c = c.clone();
        let name = name.clone();
        async move {
            let ready = condition(&tenant(&c, &name).await, "Ready")?;
            (ready.reason == "InvalidSpec").then_some(ready)
        }
    })
    .await;
    assert!(
        ready.message.contains("egress[0]") && ready.message.contains("never reachable"),
        "{}",
        ready.message
    );
    let ns = Api::<Namespace>::all(c.clone())
        .get_opt(&format!("tenant-{name}"))
        .await
        .expect("get");
    assert!(ns.is_none(), "nothing created for an invalid platform");
}

async fn replicas(c: &Client, ns: &str) -> Vec<i32> {
    Api::<Deployment>::namespaced(c.clone(), ns)
        .list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .iter()
                .filter_map(|d| d.spec.as_ref()?.replicas)
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_resume_and_delete_with_each_policy() {
    let env = start("leadgen-pro.yaml").await;
    let c = env.client.clone();
    let tenants: Api<Tenant> = Api::all(c.clone());
    let keep = create_tenant(&env, "starter").await;
    let gone = create_tenant(&env, "starter").await;
    let ns_keep = format!("tenant-{keep}");
    let ns_gone = format!("tenant-{gone}");
    eventually("deployments", || {
        let c = c.clone();
        let ns = ns_keep.clone();
        async move { (replicas(&c, &ns).await == vec![1, 1]).then_some(()) }
    })
    .await;

    let suspend = |on: bool| json!({"spec": {"suspended": on}});
    tenants
        .patch(
            &keep,
            &PatchParams::default(),
            &Patch::Merge(&suspend(true)),
        )
        .await
        .expect("suspend");
    eventually("scaled to zero and Suspended", || {
        let c = c.clone();
        let ns = ns_keep.clone();
        let keep = keep.clone();
        async move {
            let t = tenant(&c, &keep).await;
            (replicas(&c, &ns).await == vec![0, 0]
                && t.status?.phase == Some(TenantPhase::Suspended))
            .then_some(())
        }
    })
    .await;
    assert!(Api::<Secret>::namespaced(c.clone(), &ns_keep)
        .get_opt("credentials")
        .await
        .expect("get")
        .is_some());
    tenants
        .patch(
            &keep,
            &PatchParams::default(),
            &Patch::Merge(&suspend(false)),
        )
        .await
        .expect("resume");
    eventually("scaled back", || {
        let c = c.clone();
        let ns = ns_keep.clone();
        async move { (replicas(&c, &ns).await == vec![1, 1]).then_some(()) }
    })
    .await;

    // Retain: the namespace stays, labelled as orphaned; Delete: the namespace goes.
    tenants
        .patch(
            &keep,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"deletionPolicy": "Retain"}})),
        )
        .await
        .expect("retain");
    eventually("gone to be ready", || {
        let c = c.clone();
        let ns = ns_gone.clone();
        async move { (replicas(&c, &ns).await.len() == 2).then_some(()) }
    })
    .await;
    tenants
        .delete(&keep, &Default::default())
        .await
        .expect("delete keep");
    tenants
        .delete(&gone, &Default::default())
        .await
        .expect("delete gone");
    eventually("retained namespace labelled orphan", || {
        let c = c.clone();
        let ns = ns_keep.clone();
        let keep = keep.clone();
        async move {
            let n = Api::<Namespace>::all(c.clone()).get(&ns).await.ok()?;
            let tenant_gone = Api::<Tenant>::all(c).get_opt(&keep).await.ok()?.is_none();
            (n.labels().get("stackplane.io/orphaned").map(String::as_str) == Some("true")
                && tenant_gone)
                .then_some(())
        }
    })
    .await;
    // Delete: the final backup is requested first; play the backup reconciler and finish it.
    let backup = final_backup(&c, &gone).await;
    assert_eq!(backup.spec.reason, BackupReason::PreDelete);
    finish_backup(&c, &backup.spec.tenant, &backup.name_any()).await;
    eventually("deleted namespace and tenant gone", || {
        let c = c.clone();
        let ns = ns_gone.clone();
        let gone = gone.clone();
        async move {
            let n = Api::<Namespace>::all(c.clone()).get_opt(&ns).await.ok()?;
            let t = Api::<Tenant>::all(c).get_opt(&gone).await.ok()?;
            (n.is_none() && t.is_none()).then_some(())
        }
    })
    .await;
    // Retain keeps the data: no final backup.
    assert!(Api::<TenantBackup>::all(c.clone())
        .list(&ListParams::default().labels(&format!("stackplane.io/tenant={keep}")))
        .await
        .expect("list backups")
        .items
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_child_restored_tier_change_followed_removed_component_pruned() {
    let env = start("leadgen-pro.yaml").await;
    let c = env.client.clone();
    let name = create_tenant(&env, "starter").await;
    let ns = format!("tenant-{name}");
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), &ns);
    eventually("deployments", || {
        let c = c.clone();
        let ns = ns.clone();
        async move { (replicas(&c, &ns).await == vec![1, 1]).then_some(()) }
    })
    .await;

    deployments
        .delete("worker", &Default::default())
        .await
        .expect("delete worker");
    eventually("worker restored", || {
        let d = deployments.clone();
        async move {
            let w = d.get_opt("worker").await.ok()??;
            w.metadata.deletion_timestamp.is_none().then_some(())
        }
    })
    .await;

    Api::<Tenant>::all(c.clone())
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"tier": "enterprise"}})),
        )
        .await
        .expect("change tier");
    eventually("enterprise quota and replicas", || {
        let c = c.clone();
        let ns = ns.clone();
        async move {
            let q = Api::<ResourceQuota>::namespaced(c.clone(), &ns)
                .get("tenant-quota")
                .await
                .ok()?;
            (q.spec?.hard?["pods"].0 == "40" && replicas(&c, &ns).await == vec![4, 4]).then_some(())
        }
    })
    .await;

    // Remove the worker from the Platform: its Deployment and Service are pruned.
    let platforms: Api<Platform> = Api::all(c.clone());
    let mut p = platforms.get(&env.platform).await.expect("platform");
    p.spec.components.retain(|x| x.name != "worker");
    platforms
        .replace(&env.platform, &PostParams::default(), &p)
        .await
        .expect("replace platform");
    eventually("worker pruned", || {
        let d = deployments.clone();
        let s = Api::<k8s_openapi::api::core::v1::Service>::namespaced(c.clone(), &ns);
        async move {
            let dep = d.get_opt("worker").await.ok()?;
            let svc = s.get_opt("worker").await.ok()?;
            (dep.is_none() && svc.is_none()).then_some(())
        }
    })
    .await;
}

/// An unchanged tenant is not applied again on every reconcile (`tenant::applied`), so a hand
/// edit of one of its objects must itself bring the apply back: the edit is repaired, also a
/// second time, and a label the controller does not own survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_edited_child_is_repaired() {
    let env = start("leadgen-pro.yaml").await;
    let c = env.client.clone();
    let name = create_tenant(&env, "starter").await;
    let ns = format!("tenant-{name}");
    eventually("synced", || {
        let c = c.clone();
        let name = name.clone();
        async move {
            let t = tenant(&c, &name).await;
            (condition(&t, "Synced")?.status == "True").then_some(())
        }
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), &ns);
    let quotas: Api<ResourceQuota> = Api::namespaced(c.clone(), &ns);
    for round in 0..2 {
        let edit = json!({"metadata": {"labels": {"hand": format!("edit-{round}")}},
                          "spec": {"replicas": 7}});
        deployments
            .patch("worker", &PatchParams::default(), &Patch::Merge(&edit))
            .await
            .expect("hand edit");
        quotas
            .patch(
                "tenant-quota",
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"hard": {"pods": "999"}}})),
            )
            .await
            .expect("hand edit of the quota");
        eventually("hand edits repaired", || {
            let d = deployments.clone();
            let q = quotas.clone();
            async move {
                let w = d.get("worker").await.ok()?;
                let quota = q.get("tenant-quota").await.ok()?;
                let replicas = w.spec?.replicas?;
                let pods = quota.spec?.hard?.get("pods")?.0.clone();
                (replicas == 1 && pods != "999").then_some(())
            }
        })
        .await;
        let w = deployments.get("worker").await.expect("worker");
        assert_eq!(
            w.labels().get("hand").map(String::as_str),
            Some(format!("edit-{round}").as_str()),
            "a label the controller does not own is left alone"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_tenant_is_left_alone_and_says_so() {
    let env = start("leadgen-pro.yaml").await;
    let c = env.client.clone();
    let name = create_tenant(&env, "starter").await;
    let ns = format!("tenant-{name}");
    eventually("deployments", || {
        let c = c.clone();
        let ns = ns.clone();
        async move { (replicas(&c, &ns).await == vec![1, 1]).then_some(()) }
    })
    .await;
    let tenants: Api<Tenant> = Api::all(c.clone());
    let t = tenants
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"paused": true, "tier": "enterprise"}})),
        )
        .await
        .expect("pause and change tier");
    let generation = t.metadata.generation;
    eventually("Paused condition for the new generation", || {
        let c = c.clone();
        let name = name.clone();
        async move {
            let t = tenant(&c, &name).await;
            let p = t
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Paused")?;
            (p.status == "True" && p.observed_generation == generation).then_some(())
        }
    })
    .await;
    assert_eq!(
        replicas(&c, &ns).await,
        vec![1, 1],
        "nothing changed while paused"
    );
    tenants
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"paused": false}})),
        )
        .await
        .expect("unpause");
    eventually("enterprise replicas after unpausing", || {
        let c = c.clone();
        let ns = ns.clone();
        async move { (replicas(&c, &ns).await == vec![4, 4]).then_some(()) }
    })
    .await;
}

/// Marks every Deployment of `ns` available with `n` replicas, as a node would.
async fn make_available(c: &Client, ns: &str, n: i32) {
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), ns);
    let list = deployments
        .list(&ListParams::default())
        .await
        .expect("list deployments");
    for d in &list.items {
        let status = json!({"status": {"replicas": n, "readyReplicas": n, "availableReplicas": n, "updatedReplicas": n}});
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

/// An operator's hold, set by a direct edit of `spec.hold` on a tenant whose subscription is
/// active: the stack scales to zero (phase `Suspended`, `Held=True`, Event `HoldSet`); billing's
/// own server-side apply of an active subscription (its real body, under its field manager,
/// forced) leaves the hold in place; removing the hold brings the stack back to `Ready`
/// (`Held=False`, Event `HoldReleased`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_hold_suspends_until_released_and_billing_leaves_it() {
    use stackplane_core::billing::mapping::{tenant_apply_body, Snapshot};
    let env = start("leadgen-pro.yaml").await;
    let c = env.client.clone();
    let tenants: Api<Tenant> = Api::all(c.clone());
    // The Tenant billing would write for this active subscription, named as billing names it.
    let customer = format!("cus_{}", unique("hold").replace('-', ""));
    let snapshot: Snapshot = serde_json::from_value(json!({
        "subscription_id": "sub_hold1",
        "customer_id": customer,
        "platform": env.platform,
        "tier": "starter",
        "status": "active",
    }))
    .expect("snapshot");
    let (name, billing_body) = tenant_apply_body(&snapshot);
    assert!(
        billing_body["spec"].get("hold").is_none(),
        "billing never sends spec.hold: {billing_body}"
    );
    create_tenant_named(&env, &name, "starter", |t| {
        t.spec.subscription = Some(Subscription {
            id: "sub_hold1".into(),
            status: SubscriptionStatus::Active,
            current_period_end: None,
            quantity: None,
            items: Vec::new(),
        });
    })
    .await;
    let ns = format!("tenant-{name}");
    eventually("deployments", || {
        let c = c.clone();
        let ns = ns.clone();
        async move { (replicas(&c, &ns).await == vec![1, 1]).then_some(()) }
    })
    .await;
    make_available(&c, &ns, 1).await;
    eventually("Ready and not held", || {
        let c = c.clone();
        let name = name.clone();
        async move {
            let t = tenant(&c, &name).await;
            let held = condition(&t, "Held")?;
            (t.status?.phase == Some(TenantPhase::Ready) && held.status == "False").then_some(())
        }
    })
    .await;

    // A direct edit, as `kubectl edit` would send it.
    tenants
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"hold": {"reason": "abuse", "note": "ticket 42"}}})),
        )
        .await
        .expect("hold");
    let held = eventually("scaled to zero, Suspended, Held", || {
        let c = c.clone();
        let ns = ns.clone();
        let name = name.clone();
        async move {
            let t = tenant(&c, &name).await;
            let held = condition(&t, "Held").filter(|h| h.status == "True")?;
            (replicas(&c, &ns).await == vec![0, 0]
                && t.status?.phase == Some(TenantPhase::Suspended))
            .then_some(held)
        }
    })
    .await;
    assert_eq!(held.reason, "OperatorHold");
    assert!(
        held.message.contains("abuse") && held.message.contains("ticket 42"),
        "{}",
        held.message
    );
    let t = tenant(&c, &name).await;
    assert!(!t.spec.suspended, "a hold is not billing's suspension");
    assert_eq!(
        condition(&t, "Ready").map(|r| r.status),
        Some("False".to_owned())
    );
    eventually("a HoldSet warning event", || {
        let c = c.clone();
        let name = name.clone();
        async move {
            tenant_events(&c, &name)
                .await
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("HoldSet") && e.type_.as_deref() == Some("Warning")
                })
                .then_some(())
        }
    })
    .await;

    // Billing applies the active subscription (suspended: false) as it does on every event
    // and refresh: the hold is not billing's field and stays.
    tenants
        .patch(
            &name,
            &PatchParams::apply(stackplane_core::contract::field_managers::BILLING).force(),
            &Patch::Apply(&billing_body),
        )
        .await
        .expect("billing apply");
    let t = tenant(&c, &name).await;
    assert_eq!(
        t.spec.hold.as_ref().map(|h| h.reason.as_str()),
        Some("abuse"),
        "billing's apply left the hold"
    );
    assert!(!t.spec.suspended);
    assert_eq!(
        t.spec.subscription.as_ref().map(|s| s.status),
        Some(SubscriptionStatus::Active)
    );

    // Released: the stack comes back.
    tenants
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"hold": null}})),
        )
        .await
        .expect("release");
    eventually("scaled back", || {
        let c = c.clone();
        let ns = ns.clone();
        async move { (replicas(&c, &ns).await == vec![1, 1]).then_some(()) }
    })
    .await;
    make_available(&c, &ns, 1).await;
    let released = eventually("Ready, Held=False", || {
        let c = c.clone();
        let name = name.clone();
        async move {
            let t = tenant(&c, &name).await;
            let held = condition(&t, "Held").filter(|h| h.status == "False")?;
            (t.status?.phase == Some(TenantPhase::Ready)).then_some(held)
        }
    })
    .await;
    assert_eq!(released.reason, "NotHeld");
    eventually("a HoldReleased event", || {
        let c = c.clone();
        let name = name.clone();
        async move {
            tenant_events(&c, &name)
                .await
                .iter()
                .any(|e| e.reason.as_deref() == Some("HoldReleased"))
                .then_some(())
        }
    })
    .await;
    let sets = tenant_events(&c, &name)
        .await
        .iter()
        .filter(|e| e.reason.as_deref() == Some("HoldSet"))
        .count();
    assert_eq!(sets, 1, "the hold is announced once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_due_tenant_runs_with_payment_overdue_until_paid() {
    let env = start("leadgen-pro.yaml").await;
    let c = env.client.clone();
    // What the billing worker writes for a `past_due` subscription.
    let name = create_tenant_with(&env, "starter", |t| {
        t.spec.subscription = Some(Subscription {
            id: "sub_overdue1".into(),
            status: SubscriptionStatus::PastDue,
            current_period_end: None,
            quantity: None,
            items: Vec::new(),
        });
        t.metadata.annotations = Some(
            [(
                "stackplane.io/payment-overdue".to_owned(),
                "true".to_owned(),
            )]
            .into(),
        );
    })
    .await;
    let ns = format!("tenant-{name}");
    let overdue = eventually("PaymentOverdue=True", || {
        let c = c.clone();
        let name = name.clone();
        async move {
            let t = tenant(&c, &name).await;
            condition(&t, "PaymentOverdue").filter(|p| p.status == "True")
        }
    })
    .await;
    assert_eq!(overdue.reason, "SubscriptionPastDue");
    eventually("the stack keeps running", || {
        let c = c.clone();
        let ns = ns.clone();
        async move { (replicas(&c, &ns).await == vec![1, 1]).then_some(()) }
    })
    .await;
    let t = tenant(&c, &name).await;
    assert!(!t.spec.suspended);
    assert_eq!(
        t.status.and_then(|s| s.phase),
        Some(TenantPhase::Provisioning)
    );
    eventually("a PaymentOverdue warning event", || {
        let c = c.clone();
        let name = name.clone();
        async move {
            tenant_events(&c, &name)
                .await
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("PaymentOverdue")
                        && e.type_.as_deref() == Some("Warning")
                })
                .then_some(())
        }
    })
    .await;

    // Paid: billing sets the status back and its server-side apply drops the annotation.
    Api::<Tenant>::all(c.clone())
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({
                "metadata": {"annotations": {"stackplane.io/payment-overdue": null}},
                "spec": {"subscription": {"status": "active"}}
            })),
        )
        .await
        .expect("mark paid");
    let settled = eventually("PaymentOverdue=False", || {
        let c = c.clone();
        let name = name.clone();
        async move {
            let t = tenant(&c, &name).await;
            condition(&t, "PaymentOverdue").filter(|p| p.status == "False")
        }
    })
    .await;
    assert_eq!(settled.reason, "PaymentCurrent");
    assert!(settled.last_transition_time.0 >= overdue.last_transition_time.0);
}

/// What billing writes for a subscription cancelled at the period's end with its collection
/// paused: the stack runs, the controller writes `CancellationScheduled` and `CollectionPaused`
/// from billing's annotations, and clears both once billing drops them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_cancellation_and_paused_collection_run_with_their_conditions() {
    let env = start("leadgen-pro.yaml").await;
    let c = env.client.clone();
    let name = create_tenant_with(&env, "starter", |t| {
        t.spec.subscription = Some(Subscription {
            id: "sub_cancelat1".into(),
            status: SubscriptionStatus::Active,
            current_period_end: None,
            quantity: Some(2),
            items: Vec::new(),
        });
        t.metadata.annotations = Some(
            [
                (
                    "stackplane.io/cancellation-scheduled".to_owned(),
                    "2027-01-31T00:00:00Z".to_owned(),
                ),
                (
                    "stackplane.io/collection-paused".to_owned(),
                    "keep_as_draft".to_owned(),
                ),
            ]
            .into(),
        );
    })
    .await;
    let t = eventually(
        "CancellationScheduled=True and CollectionPaused=True",
        || {
            let c = c.clone();
            let name = name.clone();
            async move {
                let t = tenant(&c, &name).await;
                let both = condition(&t, "CancellationScheduled")
                    .is_some_and(|p| p.status == "True")
                    && condition(&t, "CollectionPaused").is_some_and(|p| p.status == "True");
                both.then_some(t)
            }
        },
    )
    .await;
    let cancel = condition(&t, "CancellationScheduled").expect("CancellationScheduled");
    assert_eq!(cancel.reason, "CancelAt");
    assert!(
        cancel.message.contains("2027-01-31T00:00:00Z"),
        "{}",
        cancel.message
    );
    let paused = condition(&t, "CollectionPaused").expect("CollectionPaused");
    assert!(
        paused.message.contains("keep_as_draft"),
        "{}",
        paused.message
    );
    assert!(!t.spec.suspended);
    let ns = format!("tenant-{name}");
    eventually("the stack keeps running", || {
        let c = c.clone();
        let ns = ns.clone();
        async move { (replicas(&c, &ns).await == vec![1, 1]).then_some(()) }
    })
    .await;

    Api::<Tenant>::all(c.clone())
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {
                "stackplane.io/cancellation-scheduled": null,
                "stackplane.io/collection-paused": null,
            }}})),
        )
        .await
        .expect("drop the annotations");
    eventually("both conditions False", || {
        let c = c.clone();
        let name = name.clone();
        async move {
            let t = tenant(&c, &name).await;
            let both = condition(&t, "CancellationScheduled").is_some_and(|p| p.status == "False")
                && condition(&t, "CollectionPaused").is_some_and(|p| p.status == "False");
            both.then_some(())
        }
    })
    .await;
}

/// A Platform of the test with no retention: a cancelled tenant is due for deletion at once.
async fn without_retention(env: &Env) {
    Api::<Platform>::all(env.client.clone())
        .patch(
            &env.platform,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"cancellationRetentionDays": 0}})),
        )
        .await
        .expect("retention 0");
}

async fn create_cancelled_tenant(env: &Env) -> String {
    create_tenant_with(env, "starter", |t| {
        t.spec.suspended = true;
        t.spec.cancelled_at = Some(Time(Timestamp::now()));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_tenant_is_deleted_after_retention_once_its_final_backup_finished() {
    let env = start("leadgen-pro.yaml").await;
    let c = env.client.clone();
    without_retention(&env).await;
    let name = create_cancelled_tenant(&env).await;
    let ns = format!("tenant-{name}");

    let backup = final_backup(&c, &name).await;
    assert_eq!(backup.spec.tenant, name);
    assert_eq!(backup.spec.reason, BackupReason::PreDelete);
    assert_eq!(
        backup.labels()["app.kubernetes.io/managed-by"],
        "stackplane"
    );
    assert_eq!(backup.labels()["stackplane.io/tenant"], name);
    assert_eq!(backup.labels()["stackplane.io/platform"], env.platform);
    assert!(
        backup.metadata.owner_references.is_none(),
        "outlives the tenant"
    );

    // While the backup runs the tenant stays, Cancelled, with its workloads scaled to zero.
    let t = eventually("Cancelled", || {
        let c = c.clone();
        let name = name.clone();
        async move {
            let t = tenant(&c, &name).await;
            (t.status.as_ref()?.phase == Some(TenantPhase::Cancelled)).then_some(t)
        }
    })
    .await;
    assert!(t.metadata.deletion_timestamp.is_none());
    assert_eq!(replicas(&c, &ns).await, vec![0, 0]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t = tenant(&c, &name).await;
    assert!(
        t.metadata.deletion_timestamp.is_none(),
        "not deleted while the final backup is in progress"
    );

    finish_backup(&c, &backup.spec.tenant, &backup.name_any()).await;
    eventually("tenant and namespace gone", || {
        let c = c.clone();
        let name = name.clone();
        let ns = ns.clone();
        async move {
            let n = Api::<Namespace>::all(c.clone()).get_opt(&ns).await.ok()?;
            (tenant_gone(&c, &name).await && n.is_none()).then_some(())
        }
    })
    .await;
    let kept = Api::<TenantBackup>::all(c.clone())
        .get(&backup.name_any())
        .await
        .expect("the final backup outlives the tenant");
    assert_eq!(
        kept.annotations()["stackplane.io/final-backup-outcome"],
        "Completed"
    );
    let events = tenant_events(&c, &name).await;
    let reasons: Vec<_> = events.iter().filter_map(|e| e.reason.as_deref()).collect();
    for want in [
        "FinalBackupRequested",
        "FinalBackupDone",
        "RetentionExpired",
    ] {
        assert_eq!(
            reasons.iter().filter(|r| **r == want).count(),
            1,
            "one {want} event in {reasons:?}"
        );
    }
}

/// The value of the series `series` (name and labels as exposed) in the controller's metrics.
fn metric(env: &Env, series: &str) -> f64 {
    let text = env.metrics.encode().expect("encode metrics");
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

/// Makes the controller reconcile `name` `times` more times (an annotation change triggers a
/// reconcile) and waits until it has.
async fn reconcile_again(env: &Env, name: &str, times: u32) {
    for i in 0..times {
        let before = metric(env, "stackplane_controller_reconciles_total");
        Api::<Tenant>::all(env.client.clone())
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"annotations": {"test/poke": i.to_string()}}})),
            )
            .await
            .expect("poke");
        eventually("one more reconcile", || async {
            (metric(env, "stackplane_controller_reconciles_total") > before).then_some(())
        })
        .await;
    }
}

async fn release_deletion(c: &Client, name: &str) {
    Api::<Tenant>::all(c.clone())
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"metadata": {"annotations": {"stackplane.io/release-deletion": "true"}}}),
            ),
        )
        .await
        .expect("release");
}

/// The tenant once its `DeletionHeld` condition is True.
async fn held(c: &Client, name: &str) -> (Tenant, Condition) {
    eventually("DeletionHeld=True", || async {
        let t = tenant(c, name).await;
        let held = condition(&t, "DeletionHeld").filter(|c| c.status == "True")?;
        Some((t, held))
    })
    .await
}

async fn namespace_live(c: &Client, ns: &str) -> bool {
    Api::<Namespace>::all(c.clone())
        .get_opt(ns)
        .await
        .expect("get namespace")
        .is_some_and(|n| n.metadata.deletion_timestamp.is_none())
}

/// Issue 33: a final backup that ends `Failed` holds the deletion (condition, Warning Event,
/// metric) over any number of reconciles, destroying nothing; the release annotation lets it go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_final_backup_holds_the_deletion_until_released() {
    let env = start("leadgen-pro.yaml").await;
    let c = env.client.clone();
    let name = create_tenant(&env, "starter").await;
    let ns = format!("tenant-{name}");
    eventually("two deployments", || async {
        (replicas(&c, &ns).await.len() == 2).then_some(())
    })
    .await;
    Api::<Tenant>::all(c.clone())
        .delete(&name, &Default::default())
        .await
        .expect("delete tenant");
    let backup = final_backup(&c, &name).await;
    end_dump_job(&c, &name, &backup.name_any(), false).await;

    let (t, cond) = held(&c, &name).await;
    assert_eq!(cond.reason, "FinalBackupFailed");
    assert!(
        cond.message.contains(&backup.name_any()),
        "{}",
        cond.message
    );
    assert_eq!(
        t.status.as_ref().and_then(|s| s.phase),
        Some(TenantPhase::Deleting)
    );
    let outcome = Api::<TenantBackup>::all(c.clone())
        .get(&backup.name_any())
        .await
        .expect("backup");
    assert!(
        ["Failed", "PartiallyFailed"]
            .contains(&outcome.annotations()["stackplane.io/final-backup-outcome"].as_str()),
        "{:?}",
        outcome.annotations()
    );
    reconcile_again(&env, &name, 3).await;
    assert!(namespace_live(&c, &ns).await, "nothing deleted while held");
    assert_eq!(replicas(&c, &ns).await.len(), 2);
    assert!(!tenant_gone(&c, &name).await);
    assert_eq!(
        metric(
            &env,
            "stackplane_controller_deletions_held{reason=\"FinalBackupFailed\"}"
        ),
        1.0
    );
    let events = tenant_events(&c, &name).await;
    let warnings: Vec<_> = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("DeletionHeld"))
        .collect();
    assert_eq!(warnings.len(), 1, "one DeletionHeld event: {events:?}");
    assert_eq!(warnings[0].type_.as_deref(), Some("Warning"));

    release_deletion(&c, &name).await;
    eventually("namespace and tenant gone after the release", || async {
        let n = Api::<Namespace>::all(c.clone()).get_opt(&ns).await.ok()?;
        (n.is_none() && tenant_gone(&c, &name).await).then_some(())
    })
    .await;
    assert_eq!(
        metric(
            &env,
            "stackplane_controller_deletions_held{reason=\"FinalBackupFailed\"}"
        ),
        0.0
    );
    let released = tenant_events(&c, &name)
        .await
        .into_iter()
        .any(|e| e.reason.as_deref() == Some("DeletionReleased"));
    assert!(released, "the release is recorded in an Event");
}

/// Issue 33: the retention path goes through the same gate: a final backup nobody finishes
/// times out and holds the deletion of a cancelled tenant, which stays until released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_final_backup_holds_the_retention_deletion_until_released() {
    const TIMEOUT: Duration = Duration::from_secs(5);
    let env = start_with(
        "leadgen-pro.yaml",
        ReconcileConfig {
            final_backup_timeout: TIMEOUT,
            ..test_config()
        },
    )
    .await;
    let c = env.client.clone();
    without_retention(&env).await;
    let name = create_cancelled_tenant(&env).await;
    let ns = format!("tenant-{name}");
    let backup = final_backup(&c, &name).await;
    let requested = backup
        .metadata
        .creation_timestamp
        .clone()
        .expect("creationTimestamp")
        .0;
    // Nobody finishes the backup: past the timeout the deletion is held, not done.
    let (t, cond) = held(&c, &name).await;
    let waited = Timestamp::now().duration_since(requested).unsigned_abs();
    // creationTimestamp has whole seconds.
    assert!(
        waited + Duration::from_secs(1) >= TIMEOUT,
        "held after {waited:?}, before the {TIMEOUT:?} timeout"
    );
    assert_eq!(cond.reason, "FinalBackupTimedOut");
    assert!(
        t.metadata.deletion_timestamp.is_none(),
        "the tenant is not deleted"
    );
    reconcile_again(&env, &name, 3).await;
    assert!(!tenant_gone(&c, &name).await);
    assert!(t.metadata.deletion_timestamp.is_none());
    assert!(namespace_live(&c, &ns).await, "nothing deleted while held");
    let kept = Api::<TenantBackup>::all(c.clone())
        .get(&backup.name_any())
        .await
        .expect("backup");
    assert_eq!(
        kept.annotations()["stackplane.io/final-backup-outcome"],
        "TimedOut"
    );
    let warned = tenant_events(&c, &name).await.into_iter().any(|e| {
        e.reason.as_deref() == Some("FinalBackupDone") && e.type_.as_deref() == Some("Warning")
    });
    assert!(warned, "a timed-out final backup is a Warning event");

    release_deletion(&c, &name).await;
    eventually("tenant and namespace gone after the release", || async {
        let n = Api::<Namespace>::all(c.clone()).get_opt(&ns).await.ok()?;
        (n.is_none() && tenant_gone(&c, &name).await).then_some(())
    })
    .await;
}

/// Issue 32 item 3: a tenant of the same name deleted again gets a final backup of its own
/// lifecycle; the earlier lifecycle's `Completed` one does not stand in for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_lifecycle_of_the_same_name_gets_its_own_final_backup() {
    let env = start("leadgen-pro.yaml").await;
    let c = env.client.clone();
    let name = create_tenant(&env, "starter").await;
    let ns = format!("tenant-{name}");
    let gone = || async {
        let n = Api::<Namespace>::all(c.clone()).get_opt(&ns).await.ok()?;
        (n.is_none() && tenant_gone(&c, &name).await).then_some(())
    };
    eventually("the first stack", || async {
        (replicas(&c, &ns).await.len() == 2).then_some(())
    })
    .await;
    let first_uid = tenant_uid(&c, &name).await;
    Api::<Tenant>::all(c.clone())
        .delete(&name, &Default::default())
        .await
        .expect("delete tenant");
    let first = final_backup_of(&c, &name, &first_uid).await;
    finish_backup(&c, &name, &first.name_any()).await;
    eventually("the first lifecycle gone", gone).await;

    create_tenant_named(&env, &name, "starter", |_| {}).await;
    eventually("the second stack", || async {
        (replicas(&c, &ns).await.len() == 2).then_some(())
    })
    .await;
    let second_uid = tenant_uid(&c, &name).await;
    assert_ne!(first_uid, second_uid);
    Api::<Tenant>::all(c.clone())
        .delete(&name, &Default::default())
        .await
        .expect("delete tenant again");
    let second = final_backup_of(&c, &name, &second_uid).await;
    assert_ne!(second.name_any(), first.name_any());
    assert_eq!(second.labels()["stackplane.io/tenant-uid"], second_uid);
    // The second lifecycle waits for its own backup, although the first one's is Completed.
    reconcile_again(&env, &name, 2).await;
    assert!(
        namespace_live(&c, &ns).await,
        "waits for this lifecycle's backup"
    );
    let first_now = Api::<TenantBackup>::all(c.clone())
        .get(&first.name_any())
        .await
        .expect("the first lifecycle's backup is kept");
    assert_eq!(
        first_now.status.and_then(|s| s.phase),
        Some(stackplane_crds::BackupPhase::Completed)
    );
    finish_backup(&c, &name, &second.name_any()).await;
    eventually("the second lifecycle gone", gone).await;
    let done = Api::<TenantBackup>::all(c.clone())
        .get(&second.name_any())
        .await
        .expect("the second backup");
    assert_eq!(
        done.annotations()["stackplane.io/final-backup-outcome"],
        "Completed"
    );
}

/// Issue 33: `spec.paused` promises nothing is done until unpaused; a paused tenant deleted
/// keeps its namespace (no final backup is even requested) until it is unpaused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_tenant_deleted_keeps_its_namespace_until_unpaused() {
    let env = start("leadgen-pro.yaml").await;
    let c = env.client.clone();
    let name = create_tenant(&env, "starter").await;
    let ns = format!("tenant-{name}");
    eventually("two deployments", || async {
        (replicas(&c, &ns).await.len() == 2).then_some(())
    })
    .await;
    let tenants = Api::<Tenant>::all(c.clone());
    tenants
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"paused": true}})),
        )
        .await
        .expect("pause");
    eventually("Paused", || async {
        condition(&tenant(&c, &name).await, "Paused").filter(|c| c.status == "True")
    })
    .await;
    let uid = tenant_uid(&c, &name).await;
    tenants
        .delete(&name, &Default::default())
        .await
        .expect("delete tenant");
    let cond = eventually("Deleting and still Paused", || async {
        let t = tenant(&c, &name).await;
        let paused = condition(&t, "Paused").filter(|c| c.status == "True")?;
        (t.status?.phase == Some(TenantPhase::Deleting)).then_some(paused)
    })
    .await;
    assert!(cond.message.contains("deletion waits"), "{}", cond.message);
    reconcile_again(&env, &name, 3).await;
    assert!(
        namespace_live(&c, &ns).await,
        "nothing deleted while paused"
    );
    assert_eq!(replicas(&c, &ns).await.len(), 2);
    let backup = stackplane_core::tenant::deletion::final_backup_name(&name, &uid);
    assert!(
        Api::<TenantBackup>::all(c.clone())
            .get_opt(&backup)
            .await
            .expect("get")
            .is_none(),
        "not even the final backup is requested while paused"
    );

    tenants
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"paused": false}})),
        )
        .await
        .expect("unpause");
    let backup = final_backup_of(&c, &name, &uid).await;
    finish_backup(&c, &name, &backup.name_any()).await;
    eventually("namespace and tenant gone once unpaused", || async {
        let n = Api::<Namespace>::all(c.clone()).get_opt(&ns).await.ok()?;
        (n.is_none() && tenant_gone(&c, &name).await).then_some(())
    })
    .await;
}

/// Issue 33: the retention step's delete names the uid and resourceVersion it read: a tenant
/// re-subscribed (billing clears `cancelledAt`) after that read is not deleted. The race made
/// deterministic: the read is taken, the re-subscription lands, then the delete runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_never_deletes_a_tenant_resubscribed_after_it_was_read() {
    let (c, _shard) = common::cluster("stackplane_controller=debug", kube_client()).await;
    let tenants = Api::<Tenant>::all(c.clone());
    let name = unique("tn");
    // No controller selects it (a shard of its own): only the executor under test acts.
    let mut t = Tenant::new(&name, TenantSpec::new("no-platform", "starter"));
    t.metadata.labels = Some([(SHARD.to_owned(), unique("none"))].into());
    t.spec.cancelled_at = Some(Time(Timestamp::from_second(1_600_000_000).expect("ts")));
    tenants
        .create(&PostParams::default(), &t)
        .await
        .expect("create");
    let read = tenants.get(&name).await.expect("read");
    // The re-subscription lands between the read and the delete.
    tenants
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"cancelledAt": null}})),
        )
        .await
        .expect("re-subscribe");
    let now = Timestamp::now();
    let done = stackplane_controller::tenant::delete_if_due(&tenants, Some(&read), 30, now)
        .await
        .expect("delete_if_due");
    assert_eq!(
        done,
        stackplane_controller::tenant::RetentionDeleted::Changed
    );
    assert!(
        !tenant_gone(&c, &name).await,
        "the re-subscribed tenant is kept"
    );
    // Looking again from a fresh read: no longer cancelled, kept.
    let fresh = tenants.get(&name).await.expect("read");
    let done = stackplane_controller::tenant::delete_if_due(&tenants, Some(&fresh), 30, now)
        .await
        .expect("delete_if_due");
    assert_eq!(done, stackplane_controller::tenant::RetentionDeleted::Kept);
    assert!(!tenant_gone(&c, &name).await);
    // Still cancelled and due at the read: deleted.
    tenants
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"cancelledAt": "2020-09-13T12:26:40Z"}})),
        )
        .await
        .expect("cancel again");
    let fresh = tenants.get(&name).await.expect("read");
    let done = stackplane_controller::tenant::delete_if_due(&tenants, Some(&fresh), 30, now)
        .await
        .expect("delete_if_due");
    assert_eq!(
        done,
        stackplane_controller::tenant::RetentionDeleted::Deleted
    );
    eventually("deleted", || async {
        tenant_gone(&c, &name).await.then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_tenant_with_storage_removes_its_namespace_and_volume_claims() {
    let env = start("video-site.yaml").await;
    let c = env.client.clone();
    let name = create_tenant(&env, "starter").await;
    let ns = format!("tenant-{name}");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), &ns);
    let claim = eventually("the storage volume claim", || {
        let claims = claims.clone();
        async move { claims.get_opt("storage").await.ok()? }
    })
    .await;
    // Admission protects every claim; only the pvc-protection controller releases it.
    assert!(claim
        .finalizers()
        .iter()
        .any(|f| f == "kubernetes.io/pvc-protection"));

    Api::<Tenant>::all(c.clone())
        .delete(&name, &Default::default())
        .await
        .expect("delete tenant");
    let backup = final_backup(&c, &name).await;
    finish_backup(&c, &backup.spec.tenant, &backup.name_any()).await;
    // No snapshot controller here: the claim's part is Unsupported, so the backup is
    // PartiallyFailed and the deletion held, the claim kept; a person releases it.
    let (_, cond) = held(&c, &name).await;
    assert_eq!(cond.reason, "FinalBackupFailed");
    assert!(claims.get("storage").await.is_ok(), "kept while held");
    release_deletion(&c, &name).await;
    eventually("namespace, claim and tenant gone", || {
        let c = c.clone();
        let name = name.clone();
        let ns = ns.clone();
        async move {
            let n = Api::<Namespace>::all(c.clone()).get_opt(&ns).await.ok()?;
            (n.is_none() && tenant_gone(&c, &name).await).then_some(())
        }
    })
    .await;
}

/// Item 2 of issue 12: a claim the Platform stops naming is never pruned. It is labelled
/// retained, listed in the status, announced by an Event, survives reconciles, and goes only
/// with the namespace when the tenant is deleted under `Delete`, after the final backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_the_platform_stops_naming_is_retained_until_the_tenant_is_deleted() {
    let env = start("video-site.yaml").await;
    let c = env.client.clone();
    let name = create_tenant(&env, "starter").await;
    let ns = format!("tenant-{name}");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), &ns);
    eventually("the storage volume claim", || {
        let claims = claims.clone();
        async move { claims.get_opt("storage").await.ok()? }
    })
    .await;

    // The Platform drops the storage component altogether.
    let platforms: Api<Platform> = Api::all(c.clone());
    let mut p = platforms.get(&env.platform).await.expect("platform");
    p.spec.components.retain(|x| x.name != "storage");
    platforms
        .replace(&env.platform, &PostParams::default(), &p)
        .await
        .expect("replace platform");
    // Its Deployment is pruned (the controller did act on the change) ...
    eventually("the storage Deployment pruned", || {
        let d = deployments.clone();
        async move { d.get_opt("storage").await.ok()?.is_none().then_some(()) }
    })
    .await;
    // ... its claim is kept, labelled and listed.
    eventually("storage listed in status.retainedVolumes", || {
        let c = c.clone();
        let name = name.clone();
        async move {
            let t = tenant(&c, &name).await;
            let listed = t.status.as_ref()?.retained_volumes == vec!["storage".to_owned()];
            listed.then_some(())
        }
    })
    .await;
    let claim = claims.get("storage").await.expect("the claim still exists");
    assert!(
        claim.metadata.deletion_timestamp.is_none(),
        "not being deleted"
    );
    assert_eq!(
        claim
            .labels()
            .get("stackplane.io/retained")
            .map(String::as_str),
        Some("true")
    );
    let event = eventually("a VolumeRetained event", || {
        let c = c.clone();
        let name = name.clone();
        async move {
            tenant_events(&c, &name)
                .await
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("VolumeRetained"))
        }
    })
    .await;
    assert!(event.message.unwrap_or_default().contains("storage"));

    // Further reconciles (a spec change) leave it alone.
    Api::<Tenant>::all(c.clone())
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"tier": "creator"}})),
        )
        .await
        .expect("change tier");
    eventually("the tier change observed", || {
        let c = c.clone();
        let name = name.clone();
        async move {
            let t = tenant(&c, &name).await;
            let st = t.status?;
            (st.observed_generation == t.metadata.generation).then_some(())
        }
    })
    .await;
    let claim = claims
        .get("storage")
        .await
        .expect("still there after a reconcile");
    assert!(claim.metadata.deletion_timestamp.is_none());

    // Deleting the tenant: the claim stays while the final backup runs ...
    Api::<Tenant>::all(c.clone())
        .delete(&name, &Default::default())
        .await
        .expect("delete tenant");
    let backup = final_backup(&c, &name).await;
    let claim = claims
        .get("storage")
        .await
        .expect("kept until the final backup is done");
    assert!(claim.metadata.deletion_timestamp.is_none());
    // ... and goes with the namespace once it finished and (its volume part Unsupported here:
    // PartiallyFailed, held) a person released the hold.
    finish_backup(&c, &backup.spec.tenant, &backup.name_any()).await;
    let (_, cond) = held(&c, &name).await;
    assert_eq!(cond.reason, "FinalBackupFailed");
    assert!(
        claims.get("storage").await.is_ok(),
        "the retained claim is kept while held"
    );
    release_deletion(&c, &name).await;
    eventually("namespace, retained claim and tenant gone", || {
        let c = c.clone();
        let name = name.clone();
        let ns = ns.clone();
        async move {
            let n = Api::<Namespace>::all(c.clone()).get_opt(&ns).await.ok()?;
            (n.is_none() && tenant_gone(&c, &name).await).then_some(())
        }
    })
    .await;
    let done = Api::<TenantBackup>::all(c.clone())
        .get(&backup.name_any())
        .await
        .expect("the final backup outlives the tenant");
    assert!(done
        .status
        .and_then(|s| s.phase)
        .is_some_and(|p| p.is_finished()));
}

/// Item 5 of issue 12: the status is written by server-side apply with the controller's field
/// manager, so conditions another writer (billing) applied survive the controller's writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_of_another_field_manager_survive_a_reconcile() {
    let env = start("leadgen-pro.yaml").await;
    let c = env.client.clone();
    let name = create_tenant(&env, "starter").await;
    eventually("Synced", || {
        let c = c.clone();
        let name = name.clone();
        async move {
            let t = tenant(&c, &name).await;
            condition(&t, "Synced").filter(|c| c.status == "True")
        }
    })
    .await;
    // The billing worker's write: SSA of its own conditions with its own field manager.
    let now = Timestamp::now().to_string();
    let billing = json!({
        "apiVersion": "stackplane.io/v1alpha1",
        "kind": "Tenant",
        "metadata": { "name": name },
        "status": { "conditions": [
            { "type": "BillingSynced", "status": "True", "reason": "InSync",
              "message": "written by billing", "lastTransitionTime": now },
            { "type": "TrialEnding", "status": "False", "reason": "NoTrial",
              "message": "written by billing", "lastTransitionTime": now },
        ]},
    });
    Api::<Tenant>::all(c.clone())
        .patch_status(
            &name,
            &PatchParams::apply("stackplane-billing").force(),
            &Patch::Apply(&billing),
        )
        .await
        .expect("billing's status apply");
    // A change that makes the controller rewrite its own conditions and phase.
    Api::<Tenant>::all(c.clone())
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"suspended": true}})),
        )
        .await
        .expect("suspend");
    let t = eventually("Suspended written by the controller", || {
        let c = c.clone();
        let name = name.clone();
        async move {
            let t = tenant(&c, &name).await;
            let ready = condition(&t, "Ready")?;
            (t.status.as_ref()?.phase == Some(TenantPhase::Suspended)
                && ready.reason == "Suspended")
                .then_some(t)
        }
    })
    .await;
    for type_ in ["BillingSynced", "TrialEnding"] {
        let kept =
            condition(&t, type_).unwrap_or_else(|| panic!("{type_} was removed: {:?}", t.status));
        assert_eq!(kept.message, "written by billing");
    }
    // Each writer owns its own conditions.
    let managers: Vec<String> = t
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.operation.as_deref() == Some("Apply"))
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.iter().any(|m| m == "stackplane-controller"),
        "{managers:?}"
    );
    assert!(
        managers.iter().any(|m| m == "stackplane-billing"),
        "{managers:?}"
    );

    // A writer holding an older copy (a leader handing over) is refused, not merged in.
    let stale = t.clone();
    Api::<Tenant>::all(c.clone())
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {"test/bump": "1"}}})),
        )
        .await
        .expect("bump the resourceVersion");
    let mut old_status = stale.status.clone().expect("status");
    old_status.phase = Some(TenantPhase::Ready);
    let err = stackplane_controller::tenant::status::write(&c, &stale, &old_status)
        .await
        .expect_err("a write from a stale copy must be refused");
    assert!(
        matches!(err, stackplane_controller::error::Error::StatusConflict(_)),
        "{err}"
    );
    let now = tenant(&c, &name).await;
    assert_eq!(
        now.status.and_then(|s| s.phase),
        Some(TenantPhase::Suspended),
        "the stale phase was not written"
    );
}

/// Issue 33, the mass-deletion guard: twenty tenants deleted at once (a bad script, a wrong
/// selector). Counted by (deletionTimestamp, name), the first ten go; the other ten wait with
/// `DeletionHeld` (reason `MassDeletion`), destroying nothing and not even requesting a final
/// backup, over further reconciles, until a person releases each one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_tenants_deleted_at_once_stop_at_the_mass_deletion_guard_until_released() {
    let env = start_with(
        "leadgen-pro.yaml",
        ReconcileConfig {
            max_deletions_per_hour: 10,
            // The ten within the budget go on without waiting for a dump Job nobody runs here.
            final_backup_timeout: Duration::from_secs(1),
            on_backup_failure: stackplane_core::tenant::deletion::OnBackupFailure::Delete,
            ..test_config()
        },
    )
    .await;
    let c = env.client.clone();
    let prefix = unique("mass");
    let names: Vec<String> = (0..20).map(|i| format!("{prefix}-{i:02}")).collect();
    for name in &names {
        create_tenant_named(&env, name, "starter", |_| {}).await;
    }
    // Each has its finalizer and a namespace: something its deletion would destroy.
    for name in &names {
        let ns = format!("tenant-{name}");
        eventually_within("the tenant's namespace", 120, || async {
            namespace_live(&c, &ns).await.then_some(())
        })
        .await;
    }
    let tenants = Api::<Tenant>::all(c.clone());
    let mut uids = BTreeMap::new();
    for name in &names {
        uids.insert(name.clone(), tenant_uid(&c, name).await);
    }
    // In name order: each deletionTimestamp is no earlier than the one before.
    for name in &names {
        tenants
            .delete(name, &Default::default())
            .await
            .expect("delete tenant");
    }

    for name in &names[..10] {
        eventually_within("the first ten gone", 120, || async {
            tenant_gone(&c, name).await.then_some(())
        })
        .await;
    }
    for name in &names[10..] {
        let (t, cond) = held(&c, name).await;
        assert_eq!(cond.reason, "MassDeletion", "{name}");
        assert!(
            cond.message.contains("--max-deletions-per-hour=10"),
            "{}",
            cond.message
        );
        assert_eq!(
            t.status.as_ref().and_then(|s| s.phase),
            Some(TenantPhase::Deleting)
        );
    }
    reconcile_again(&env, &names[15], 2).await;
    for name in &names[10..] {
        assert!(
            namespace_live(&c, &format!("tenant-{name}")).await,
            "{name}: nothing deleted while held"
        );
        let backup = stackplane_core::tenant::deletion::final_backup_name(name, &uids[name]);
        assert!(
            Api::<TenantBackup>::all(c.clone())
                .get_opt(&backup)
                .await
                .expect("get")
                .is_none(),
            "{name}: not even the final backup is requested while held"
        );
    }
    assert_eq!(
        metric(
            &env,
            "stackplane_controller_deletions_held{reason=\"MassDeletion\"}"
        ),
        10.0
    );

    // A person releases one: it goes (its final backup first); the others stay held.
    release_deletion(&c, &names[10]).await;
    let ns = format!("tenant-{}", names[10]);
    eventually_within("the released tenant gone", 120, || async {
        let n = Api::<Namespace>::all(c.clone()).get_opt(&ns).await.ok()?;
        (n.is_none() && tenant_gone(&c, &names[10]).await).then_some(())
    })
    .await;
    for name in &names[11..] {
        let t = tenant(&c, name).await;
        let cond = condition(&t, "DeletionHeld").expect("DeletionHeld");
        assert_eq!(
            (cond.status.as_str(), cond.reason.as_str()),
            ("True", "MassDeletion")
        );
        assert!(namespace_live(&c, &format!("tenant-{name}")).await);
    }
    assert_eq!(
        metric(
            &env,
            "stackplane_controller_deletions_held{reason=\"MassDeletion\"}"
        ),
        9.0
    );
}
