//! The backup reconciler and scheduler against the real kube-apiserver and moto, run in-process
//! and restricted to the test's own Tenants and TenantBackups by a label selector. No kubelet
//! and no CSI snapshot controller run here: the tests patch a Job's, a VolumeSnapshot's and a
//! claim's status as a node, a snapshot controller and a provisioner would.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use kube::runtime::reflector::{self, reflector};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use serde_json::json;
use stackplane_controller::backup::schedule::ScheduleConfig;
use stackplane_controller::backup::{self, BackupConfig};
use stackplane_controller::cloud::aws::AwsProvider;
use stackplane_controller::events::EventRecorder;
use stackplane_controller::metrics::Metrics;
use stackplane_core::cache::CachedTenant;
use stackplane_core::contract::labels::backup_selector;
use stackplane_crds::naming::{label_value, namespace_name};
use stackplane_crds::{
    BackupPartKind, BackupPartState, BackupPhase, BackupPolicy, BackupReason, Tenant, TenantBackup,
    TenantBackupSpec, TenantSpec,
};
use stackplane_tests::{aws_config, eventually, kube_client, unique};

mod common;

const SHARD: &str = "stackplane.io/test-shard";

struct Env {
    client: Client,
    ec2: aws_sdk_ec2::Client,
    shard: String,
    /// Stops what runs for the test when it ends.
    _stop: common::Stop,
}

async fn start(configure: impl FnOnce(&mut BackupConfig)) -> Env {
    let (client, shard) = common::cluster("stackplane_controller=debug", kube_client()).await;
    let aws = aws_config().await;
    let ec2 = aws_sdk_ec2::Client::new(&aws);
    let mut config = BackupConfig {
        selector: Some(format!("{SHARD}={shard}")),
        poll: Duration::from_millis(500),
        schedule: ScheduleConfig {
            tick: Duration::from_millis(500),
            starting_deadline: Duration::from_secs(5),
        },
        ..BackupConfig::default()
    };
    configure(&mut config);
    let recorder = EventRecorder::new(client.clone(), "stackplane-backup-test", "test");
    let (stop, stopped) = common::Stop::new();
    // The scheduler reads the Tenant controller's cache; here the test fills one of its own,
    // with the same selector.
    let (tenants, writer) = reflector::store::<CachedTenant>();
    let cache = reflector(
        writer,
        watcher(
            Api::<CachedTenant>::all(client.clone()),
            watcher::Config::default().labels(&format!("{SHARD}={shard}")),
        )
        .default_backoff(),
    )
    .for_each(|_| futures::future::ready(()));
    let backups = backup::run(
        client.clone(),
        config,
        Some(Arc::new(AwsProvider::new(&aws))),
        tenants,
        Arc::new(Metrics::new()),
        recorder,
        stopped,
    );
    tokio::spawn(async move {
        // The cache's stream never ends: it lives as long as the backups run.
        futures::future::select(Box::pin(backups), Box::pin(cache)).await;
    });
    Env {
        client,
        ec2,
        shard,
        _stop: stop,
    }
}

/// The whole controller (`stackplane_controller::run`: leader election, the Tenant controller,
/// and the backup controller and scheduler while it leads), restricted to a shard.
async fn start_leader() -> Env {
    let (client, shard) = common::cluster("stackplane_controller=debug", kube_client()).await;
    let ec2 = aws_sdk_ec2::Client::new(&aws_config().await);
    let mut reconcile = stackplane_controller::tenant::ReconcileConfig::default();
    reconcile.backup.poll = Duration::from_millis(500);
    let controller = common::Controller::start(&client, &shard, |o| {
        o.concurrency = 2;
        o.reconcile = reconcile;
    });
    Env {
        client,
        ec2,
        shard,
        _stop: controller.into_stop(),
    }
}

fn shard_labels(env: &Env) -> std::collections::BTreeMap<String, String> {
    [(SHARD.to_owned(), env.shard.clone())].into()
}

/// A Tenant (no Tenant controller runs: nothing else touches it) and its namespace.
async fn create_tenant(env: &Env, policy: Option<BackupPolicy>) -> String {
    create_tenant_named(env, &unique("tn"), policy).await
}

async fn create_tenant_named(env: &Env, name: &str, policy: Option<BackupPolicy>) -> String {
    let name = name.to_owned();
    let mut spec = TenantSpec::new("crm", "enterprise");
    spec.backup = policy;
    let mut t = Tenant::new(&name, spec);
    t.metadata.labels = Some(shard_labels(env));
    Api::<Tenant>::all(env.client.clone())
        .create(&PostParams::default(), &t)
        .await
        .expect("create tenant");
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": { "name": namespace_name(&name) }
    }))
    .expect("namespace");
    Api::<Namespace>::all(env.client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    name
}

/// Runs an instance in moto and records it in the tenant's status, as the cloud step would.
async fn give_instance(env: &Env, tenant: &str) -> (String, String) {
    let image = stackplane_tests::moto_image(&env.ec2).await;
    let out = env
        .ec2
        .run_instances()
        .image_id(image)
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .expect("run instance");
    let instance = &out.instances()[0];
    let id = instance.instance_id().expect("id").to_owned();
    let zone = instance
        .placement()
        .and_then(|p| p.availability_zone())
        .expect("zone")
        .to_owned();
    let status =
        json!({"status": {"instance": {"id": id, "type": "t3.micro", "state": "running"}}});
    Api::<Tenant>::all(env.client.clone())
        .patch_status(tenant, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch tenant status");
    (id, zone)
}

async fn create_backup(env: &Env, tenant: &str, restore: Option<&str>) -> String {
    let name = unique("tb");
    let mut b = TenantBackup::new(
        &name,
        TenantBackupSpec {
            tenant: tenant.to_owned(),
            reason: BackupReason::Manual,
            restore: restore.map(str::to_owned),
            instance: None,
        },
    );
    b.metadata.labels = Some(shard_labels(env));
    Api::<TenantBackup>::all(env.client.clone())
        .create(&PostParams::default(), &b)
        .await
        .expect("create backup");
    name
}

async fn get_backup(client: &Client, name: &str) -> Option<TenantBackup> {
    Api::<TenantBackup>::all(client.clone())
        .get_opt(name)
        .await
        .expect("get backup")
}

async fn wait_phase(env: &Env, name: &str, phase: BackupPhase) -> TenantBackup {
    eventually(&format!("backup {name} {phase:?}"), || async {
        let b = get_backup(&env.client, name).await?;
        let st = b.status.as_ref()?;
        if st.phase.is_some_and(BackupPhase::is_finished) && st.phase != Some(phase) {
            panic!(
                "backup {name} finished {:?}, wanted {phase:?}: {st:?}",
                st.phase
            );
        }
        (st.phase == Some(phase)).then_some(b)
    })
    .await
}

/// Sets the dump Job's outcome as the node running it would.
async fn finish_dump_job(env: &Env, tenant: &str, backup: &str, outcome: &str, reason: &str) {
    let ns = namespace_name(tenant);
    let jobs: Api<Job> = Api::namespaced(env.client.clone(), &ns);
    let job = eventually("the dump job", || {
        let jobs = jobs.clone();
        async move {
            let l = jobs
                .list(&ListParams::default().labels(&backup_selector(backup)))
                .await
                .ok()?;
            l.items.into_iter().next()
        }
    })
    .await;
    assert_eq!(job.labels()["app.kubernetes.io/managed-by"], "stackplane");
    assert_eq!(job.labels()["stackplane.io/tenant"], tenant);
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let (succeeded, failed) = if outcome == "Complete" {
        (1, 0)
    } else {
        (0, 3)
    };
    let status = json!({"status": {
        "startTime": now,
        "succeeded": succeeded,
        "failed": failed,
        "conditions": [{"type": outcome, "status": "True", "reason": reason, "message": format!("{reason} (set by the test)"), "lastProbeTime": now, "lastTransitionTime": now}],
    }});
    jobs.patch_status(
        &job.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .expect("patch job status");
}

fn snapshot_tags(s: &aws_sdk_ec2::types::Snapshot) -> std::collections::HashMap<String, String> {
    s.tags()
        .iter()
        .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_backup_completes_restores_and_expires() {
    let env = start(|_| {}).await;
    let tenant = create_tenant(
        &env,
        Some(BackupPolicy {
            schedule: None,
            retention_days: Some(7),
        }),
    )
    .await;
    let (instance, zone) = give_instance(&env, &tenant).await;
    let name = create_backup(&env, &tenant, None).await;
    finish_dump_job(&env, &tenant, &name, "Complete", "Completed").await;
    let b = wait_phase(&env, &name, BackupPhase::Completed).await;

    let st = b.status.expect("status");
    let ebs: Vec<_> = st
        .parts
        .iter()
        .filter(|p| p.kind == BackupPartKind::EbsSnapshot)
        .collect();
    assert_eq!(ebs.len(), 1, "one volume (the root volume): {:?}", st.parts);
    assert!(st
        .parts
        .iter()
        .all(|p| p.state == BackupPartState::Completed));
    assert!(
        st.parts
            .iter()
            .all(|p| p.kind != BackupPartKind::VolumeSnapshot),
        "the namespace had no claim when the backup started"
    );
    let started = st.started_at.expect("startedAt").0;
    let completed = st.completed_at.expect("completedAt").0;
    let expires = st.expires_at.expect("expiresAt").0;
    assert!(started <= completed);
    assert_eq!(
        expires.duration_since(completed),
        k8s_openapi::jiff::SignedDuration::from_hours(7 * 24)
    );

    let snapshot_id = ebs[0].id.clone().expect("snapshot id");
    let volumes = env
        .ec2
        .describe_volumes()
        .filters(
            Filter::builder()
                .name("attachment.instance-id")
                .values(&instance)
                .build(),
        )
        .send()
        .await
        .expect("volumes");
    let volume_id = volumes.volumes()[0].volume_id().expect("volume").to_owned();
    assert_eq!(ebs[0].source.as_deref(), Some(volume_id.as_str()));
    let snaps = env
        .ec2
        .describe_snapshots()
        .snapshot_ids(&snapshot_id)
        .send()
        .await
        .expect("snapshot exists in moto");
    let snap = &snaps.snapshots()[0];
    assert_eq!(snap.volume_id(), Some(volume_id.as_str()));
    let tags = snapshot_tags(snap);
    assert_eq!(tags["stackplane.io/tenant"], tenant);
    assert_eq!(tags["stackplane.io/backup"], name);
    assert_eq!(tags["ManagedBy"], "stackplane");
    // A reconcile after completion made no second snapshot.
    let tagged = env
        .ec2
        .describe_snapshots()
        .filters(
            Filter::builder()
                .name("tag:stackplane.io/backup")
                .values(&name)
                .build(),
        )
        .send()
        .await
        .expect("by tag");
    assert_eq!(tagged.snapshots().len(), 1);

    // Restore: a new volume from the snapshot, in the instance's zone.
    let restore = create_backup(&env, &tenant, Some(&name)).await;
    let r = wait_phase(&env, &restore, BackupPhase::Completed).await;
    let parts = r.status.expect("status").parts;
    assert_eq!(parts.len(), 1, "{parts:?}");
    assert_eq!(parts[0].source.as_deref(), Some(snapshot_id.as_str()));
    let new_volume = parts[0].id.clone().expect("restored volume id");
    let vols = env
        .ec2
        .describe_volumes()
        .volume_ids(&new_volume)
        .send()
        .await
        .expect("restored volume exists in moto");
    let vol = &vols.volumes()[0];
    assert_eq!(vol.snapshot_id(), Some(snapshot_id.as_str()));
    assert_eq!(vol.availability_zone(), Some(zone.as_str()));
    assert!(vol
        .tags()
        .iter()
        .any(|t| t.key() == Some("stackplane.io/restore") && t.value() == Some(restore.as_str())));

    // Expiry: move expiresAt into the past, as time passing would.
    let past = json!({"status": {"expiresAt": "2020-01-01T00:00:00Z"}});
    Api::<TenantBackup>::all(env.client.clone())
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&past))
        .await
        .expect("expire");
    eventually("the expired backup to be deleted", || async {
        get_backup(&env.client, &name).await.is_none().then_some(())
    })
    .await;
    let gone = env
        .ec2
        .describe_snapshots()
        .filters(
            Filter::builder()
                .name("tag:stackplane.io/backup")
                .values(&name)
                .build(),
        )
        .send()
        .await
        .expect("by tag");
    assert!(
        gone.snapshots().is_empty(),
        "snapshot left in moto: {:?}",
        gone.snapshots()
    );
    let by_id = env
        .ec2
        .describe_snapshots()
        .snapshot_ids(&snapshot_id)
        .send()
        .await;
    assert!(
        by_id
            .as_ref()
            .map(|o| o.snapshots().is_empty())
            .unwrap_or(true),
        "snapshot {snapshot_id} still described: {by_id:?}"
    );
    // The restored volume is the customer's data: expiry of the source leaves it.
    let vols = env
        .ec2
        .describe_volumes()
        .volume_ids(&new_volume)
        .send()
        .await
        .expect("restored volume kept");
    assert_eq!(vols.volumes().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_dump_makes_the_backup_partially_failed() {
    let env = start(|_| {}).await;
    let tenant = create_tenant(&env, None).await;
    give_instance(&env, &tenant).await;
    let name = create_backup(&env, &tenant, None).await;
    finish_dump_job(&env, &tenant, &name, "Failed", "BackoffLimitExceeded").await;
    let b = wait_phase(&env, &name, BackupPhase::PartiallyFailed).await;
    let st = b.status.expect("status");
    let db = st
        .parts
        .iter()
        .find(|p| p.kind == BackupPartKind::Database)
        .expect("database part");
    assert_eq!(db.state, BackupPartState::Failed);
    assert!(
        db.message
            .as_deref()
            .unwrap_or_default()
            .contains("BackoffLimitExceeded"),
        "{db:?}"
    );
    assert!(st
        .parts
        .iter()
        .any(|p| p.kind == BackupPartKind::EbsSnapshot && p.state == BackupPartState::Completed));
    let ready = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason, "PartiallyFailed");
    assert!(
        ready.message.contains("BackoffLimitExceeded"),
        "{}",
        ready.message
    );
    assert!(
        st.expires_at.is_none(),
        "no retentionDays: kept until deleted"
    );
}

async fn create_claim(env: &Env, tenant: &str, name: &str) {
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "1Gi" } } },
    }))
    .expect("claim");
    Api::<PersistentVolumeClaim>::namespaced(env.client.clone(), &format!("tenant-{tenant}"))
        .create(&PostParams::default(), &claim)
        .await
        .expect("create claim");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_snapshots_unsupported_are_recorded_not_skipped() {
    // A group nobody serves stands for a cluster without the snapshot API (1.20 has none built
    // in; another test installs the real group's CRD in this shared cluster).
    let env = start(|c| c.volume_snapshot_group = "snapshot.unserved.stackplane.test".into()).await;
    let tenant = create_tenant(&env, None).await;
    create_claim(&env, &tenant, "data").await;
    let name = create_backup(&env, &tenant, None).await;
    finish_dump_job(&env, &tenant, &name, "Complete", "Completed").await;
    let b = wait_phase(&env, &name, BackupPhase::PartiallyFailed).await;
    let st = b.status.expect("status");
    let vs = st
        .parts
        .iter()
        .find(|p| p.kind == BackupPartKind::VolumeSnapshot)
        .expect("a volume-snapshot part for the claim");
    assert_eq!(vs.state, BackupPartState::Unsupported);
    assert_eq!(vs.source.as_deref(), Some("data"));
    assert!(
        vs.message
            .as_deref()
            .unwrap_or_default()
            .contains("unsupported"),
        "{vs:?}"
    );
    assert!(st
        .parts
        .iter()
        .any(|p| p.kind == BackupPartKind::Database && p.state == BackupPartState::Completed));
}

/// A minimal VolumeSnapshot CRD (snapshot.storage.k8s.io/v1), as the external-snapshotter
/// installs it, without its schema.
async fn install_volume_snapshot_crd(client: &Client) -> ApiResource {
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": "volumesnapshots.snapshot.storage.k8s.io",
            // *.k8s.io groups need it; the external-snapshotter's CRD carries this one.
            "annotations": { "api-approved.kubernetes.io": "https://github.com/kubernetes-csi/external-snapshotter/pull/419" },
        },
        "spec": {
            "group": "snapshot.storage.k8s.io",
            "names": { "kind": "VolumeSnapshot", "plural": "volumesnapshots", "singular": "volumesnapshot", "listKind": "VolumeSnapshotList" },
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": { "status": {} },
                "schema": { "openAPIV3Schema": { "type": "object", "x-kubernetes-preserve-unknown-fields": true } },
            }],
        },
    }))
    .expect("crd");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(
        "volumesnapshots.snapshot.storage.k8s.io",
        &PatchParams::apply("stackplane-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply VolumeSnapshot CRD");
    tokio::time::timeout(
        Duration::from_secs(30),
        kube::runtime::wait::await_condition(
            api,
            "volumesnapshots.snapshot.storage.k8s.io",
            kube::runtime::conditions::is_crd_established(),
        ),
    )
    .await
    .expect("established in time")
    .expect("watch");
    // Discovery can lag the Established condition by a moment.
    eventually("snapshot API discoverable", || async {
        backup::volume::discover(client, "snapshot.storage.k8s.io")
            .await
            .ok()
            .flatten()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_snapshots_back_up_and_restore_claims() {
    let probe = kube_client().await;
    let resource = install_volume_snapshot_crd(&probe).await;
    let env = start(|_| {}).await;
    let tenant = create_tenant(&env, None).await;
    let ns = format!("tenant-{tenant}");
    create_claim(&env, &tenant, "data").await;
    let name = create_backup(&env, &tenant, None).await;
    let snapshots: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), &ns, &resource);
    let snap_name = backup::volume::snapshot_name(&name, "data");
    let snap = eventually("the VolumeSnapshot", || async {
        snapshots.get_opt(&snap_name).await.ok().flatten()
    })
    .await;
    assert_eq!(
        snap.data["spec"]["source"]["persistentVolumeClaimName"],
        "data"
    );
    assert_eq!(snap.labels()["stackplane.io/backup"], name);
    finish_dump_job(&env, &tenant, &name, "Complete", "Completed").await;
    // What a CSI snapshot controller would report, for every snapshot of the backup (the dump
    // claim the dump Job made may be one of them).
    let mine = format!("stackplane.io/backup={name}");
    let b = eventually("the backup Completed", || async {
        for s in snapshots
            .list(&ListParams::default().labels(&mine))
            .await
            .ok()?
            .items
        {
            snapshots
                .patch_status(
                    &s.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"status": {"readyToUse": true, "restoreSize": "1Gi"}})),
                )
                .await
                .ok()?;
        }
        let b = get_backup(&env.client, &name).await?;
        let phase = b.status.as_ref()?.phase;
        assert!(
            phase.is_none_or(|p| p == BackupPhase::Completed || !p.is_finished()),
            "{:?}",
            b.status
        );
        (phase == Some(BackupPhase::Completed)).then_some(b)
    })
    .await;
    let parts = b.status.expect("status").parts;
    assert!(parts
        .iter()
        .any(|p| p.kind == BackupPartKind::VolumeSnapshot
            && p.id.as_deref() == Some(snap_name.as_str())));

    let restore = create_backup(&env, &tenant, Some(&name)).await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(env.client.clone(), &ns);
    let restored_name = backup::volume::restored_claim_name(&restore, "data");
    let restored = eventually("the restored claim", || async {
        claims.get_opt(&restored_name).await.ok().flatten()
    })
    .await;
    let source = restored
        .spec
        .as_ref()
        .and_then(|s| s.data_source.clone())
        .expect("dataSource");
    assert_eq!(source.kind, "VolumeSnapshot");
    assert_eq!(source.name, snap_name);
    assert_eq!(source.api_group.as_deref(), Some("snapshot.storage.k8s.io"));
    let still = get_backup(&env.client, &restore).await.expect("restore");
    assert_ne!(
        still.status.and_then(|s| s.phase),
        Some(BackupPhase::Completed),
        "not before Bound"
    );
    // What a provisioner would report.
    claims
        .patch_status(
            &restored_name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"phase": "Bound"}})),
        )
        .await
        .expect("bind claim");
    wait_phase(&env, &restore, BackupPhase::Completed).await;

    let r = get_backup(&env.client, &restore).await.expect("restore");
    let restored_parts = r.status.expect("status").parts;
    assert!(restored_parts
        .iter()
        .any(|p| p.id.as_deref() == Some(restored_name.as_str())
            && p.state == BackupPartState::Completed));

    // Deleting the backup deletes its VolumeSnapshots (finalizer).
    Api::<TenantBackup>::all(env.client.clone())
        .delete(&name, &Default::default())
        .await
        .expect("delete backup");
    eventually("the VolumeSnapshot to be deleted", || async {
        snapshots
            .get_opt(&snap_name)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_creates_one_backup_per_occurrence_and_bad_cron_is_reported() {
    let env = start(|_| {}).await;
    let tenant = create_tenant(
        &env,
        Some(BackupPolicy {
            schedule: Some("*/3 * * * * *".into()),
            retention_days: Some(1),
        }),
    )
    .await;
    let broken = create_tenant(
        &env,
        Some(BackupPolicy {
            schedule: Some("every day at noon".into()),
            retention_days: None,
        }),
    )
    .await;
    // A second replica's scheduler with the same selector must not double the backups.
    let second = start(|c| c.selector = Some(format!("{SHARD}={}", env.shard))).await;
    let backups: Api<TenantBackup> = Api::all(env.client.clone());
    let selector = format!("stackplane.io/tenant={tenant}");
    let first = eventually("a scheduled backup", || async {
        let l = backups
            .list(&ListParams::default().labels(&selector))
            .await
            .ok()?;
        l.items.into_iter().next()
    })
    .await;
    assert_eq!(first.spec.reason, BackupReason::Scheduled);
    assert_eq!(first.spec.tenant, tenant);
    assert_eq!(
        first.labels()[SHARD],
        env.shard,
        "carries the tenant's labels"
    );
    tokio::time::sleep(Duration::from_secs(7)).await;
    let list = backups
        .list(&ListParams::default().labels(&selector))
        .await
        .expect("list")
        .items;
    assert!(
        list.len() >= 2,
        "a 3-second schedule fired at least twice in 7s: {}",
        list.len()
    );
    let mut times = Vec::new();
    for b in &list {
        let stamp = b
            .name_any()
            .strip_prefix(&format!("{tenant}-"))
            .expect("named after the tenant")
            .to_owned();
        let secs: u32 = stamp[stamp.len() - 2..].parse().expect("seconds");
        assert_eq!(secs % 3, 0, "{} is not an occurrence of */3", b.name_any());
        times.push(stamp);
    }
    times.sort();
    times.dedup();
    assert_eq!(times.len(), list.len(), "one backup per occurrence");
    let first_time = times.first().cloned().expect("one");
    let last_time = times.last().cloned().expect("one");
    let span = |s: &str| -> i64 {
        let t: k8s_openapi::jiff::civil::DateTime =
            k8s_openapi::jiff::civil::DateTime::strptime("%Y%m%d-%H%M%S", s).expect("stamp");
        t.to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC)
            .expect("utc")
            .timestamp()
            .as_second()
    };
    let occurrences = (span(&last_time) - span(&first_time)) / 3 + 1;
    assert_eq!(
        occurrences as usize,
        list.len(),
        "no occurrence skipped or doubled: {times:?}"
    );

    // Where Events about cluster-scoped objects are stored (see `stackplane_controller::events`).
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(
        env.client.clone(),
        stackplane_controller::events::CLUSTER_SCOPED_EVENT_NAMESPACE,
    );
    let event = eventually("an InvalidBackupSchedule event", || async {
        let l = events.list(&ListParams::default()).await.ok()?;
        l.items.into_iter().find(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(broken.as_str())
                && e.reason.as_deref() == Some(backup::schedule::INVALID_SCHEDULE)
        })
    })
    .await;
    assert!(event.note.unwrap_or_default().contains("every day at noon"));
    let none = backups
        .list(&ListParams::default().labels(&format!("stackplane.io/tenant={broken}")))
        .await
        .expect("list");
    assert!(none.items.is_empty());
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_runs_the_backup_controller() {
    let env = start_leader().await;
    let tenant = create_tenant(&env, None).await;
    let name = create_backup(&env, &tenant, None).await;
    finish_dump_job(&env, &tenant, &name, "Complete", "Completed").await;
    let b = wait_phase(&env, &name, BackupPhase::Completed).await;
    assert!(b.finalizers().iter().any(|f| f == backup::FINALIZER));
    let parts = b.status.expect("status").parts;
    assert_eq!(
        parts.len(),
        1,
        "a shared tenant without claims: the dump only: {parts:?}"
    );
    assert_eq!(parts[0].kind, BackupPartKind::Database);
}

/// Issue 12, item 3: no derived label value or object name exceeds Kubernetes' limits. A
/// tenant with a 63-character name (the longest there is) gets a manual, a scheduled and a
/// pre-delete backup, each completed: their names are up to 79 characters (the final backup's is
/// cut to 63 with its lifecycle's suffix kept), their label values and Job names are cut with a
/// stable hash suffix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_scheduled_and_final_backups_of_a_63_character_tenant_complete() {
    let env = start_leader().await;
    let mut name = format!("{}-", unique("tn"));
    while name.len() < 63 {
        name.push('x');
    }
    assert_eq!(name.len(), 63);
    create_tenant_named(
        &env,
        &name,
        Some(BackupPolicy {
            schedule: Some("*/3 * * * * *".into()),
            retention_days: Some(1),
        }),
    )
    .await;
    let ns = namespace_name(&name);
    let jobs: Api<Job> = Api::namespaced(env.client.clone(), &ns);
    let check_job = |backup: String| {
        let jobs = jobs.clone();
        async move {
            let l = jobs
                .list(&ListParams::default().labels(&backup_selector(&backup)))
                .await
                .expect("list jobs");
            let job = l.items.into_iter().next().expect("the dump job");
            let job_name = job.name_any();
            assert!(
                job_name.len() <= 63 && job_name.ends_with("-dump"),
                "{job_name}"
            );
            assert_eq!(job.labels()["stackplane.io/backup"], label_value(&backup));
            assert_eq!(job.labels()["stackplane.io/tenant"], backup.split_at(63).0);
        }
    };

    // manual
    let manual = create_backup(&env, &name, None).await;
    finish_dump_job(&env, &name, &manual, "Complete", "Completed").await;
    wait_phase(&env, &manual, BackupPhase::Completed).await;

    // scheduled: named <tenant>-<time>, 79 characters
    let backups: Api<TenantBackup> = Api::all(env.client.clone());
    let selector = format!("stackplane.io/tenant={name}");
    let scheduled = eventually("a scheduled backup", || async {
        let l = backups
            .list(&ListParams::default().labels(&selector))
            .await
            .ok()?;
        l.items
            .into_iter()
            .find(|b| b.spec.reason == BackupReason::Scheduled)
    })
    .await
    .name_any();
    assert_eq!(scheduled.len(), 79, "{scheduled}");
    finish_dump_job(&env, &name, &scheduled, "Complete", "Completed").await;
    wait_phase(&env, &scheduled, BackupPhase::Completed).await;
    check_job(scheduled).await;

    // pre-delete: the Tenant controller requests it when the tenant is deleted
    let uid = Api::<Tenant>::all(env.client.clone())
        .get(&name)
        .await
        .expect("get tenant")
        .metadata
        .uid
        .expect("uid");
    Api::<Tenant>::all(env.client.clone())
        .delete(&name, &Default::default())
        .await
        .expect("delete tenant");
    let final_name = stackplane_core::tenant::deletion::final_backup_name(&name, &uid);
    assert_eq!(final_name.len(), 63, "{final_name}");
    assert!(final_name.ends_with(&format!("-pre-delete-{}", &uid[..8])));
    eventually("the final backup", || async {
        get_backup(&env.client, &final_name).await
    })
    .await;
    finish_dump_job(&env, &name, &final_name, "Complete", "Completed").await;
    let done = wait_phase(&env, &final_name, BackupPhase::Completed).await;
    assert_eq!(done.spec.reason, BackupReason::PreDelete);
    eventually(
        "tenant and namespace gone after the final backup",
        || async {
            let t = Api::<Tenant>::all(env.client.clone())
                .get_opt(&name)
                .await
                .ok()?;
            let n = Api::<Namespace>::all(env.client.clone())
                .get_opt(&ns)
                .await
                .ok()?;
            (t.is_none() && n.is_none()).then_some(())
        },
    )
    .await;
}
