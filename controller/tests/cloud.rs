//! The cloud step (EC2 instances, Route53 records) against the real kube-apiserver and moto.
//! Each test has its own Platform, hosted zone, label shard and controller, so tests run in
//! parallel against one cluster and one moto. The controller runs in-process with the real AWS
//! provider wrapped in one that counts calls (and can pause after a launch, to crash the
//! controller at the worst moment).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, Instance};
use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::core::v1::{Event, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use stackplane_controller::cloud::aws::AwsProvider;
use stackplane_controller::cloud::gc::GcMode;
use stackplane_controller::cloud::provider::{
    CloudProvider, ImageInfo, LaunchSpec, ObservedInstance, ObservedSnapshot, ObservedVolume,
    Record, RecordChange, SnapshotSpec, VolumeSpec, ZoneRecord,
};
use stackplane_controller::cloud::{CloudError, CloudSettings, IngressAddress};
use stackplane_controller::metrics::Metrics;
use stackplane_controller::tenant::ReconcileConfig;
use stackplane_core::tenant::adoption;
use stackplane_crds::{DeletionPolicy, Platform, Tenant, TenantPhase, TenantSpec};
use stackplane_tests::{aws_config, eventually_within as eventually, kube_client, unique};
use tokio::sync::Notify;

mod common;

const SHARD: &str = "stackplane.io/test-shard";
const CUSTOMER: &str = "cus_CloudTest42";

/// Calls the controller made, by operation.
#[derive(Debug, Default)]
struct Calls {
    find_instances: AtomicUsize,
    describe_image: AtomicUsize,
    run_instance: AtomicUsize,
    stop_instance: AtomicUsize,
    start_instance: AtomicUsize,
    change_records: AtomicUsize,
    /// ChangeResourceRecordSets calls still to fail with throttling (injected before AWS).
    throttle_changes: AtomicUsize,
    /// Set: before its next CreateSnapshot the volume is detached and deleted in moto, for
    /// real, so EC2 itself refuses the snapshot (a volume deleted out from under a backup).
    delete_volume_before_snapshot: std::sync::atomic::AtomicBool,
    /// What EC2 held when each TerminateInstances was sent: per instance, its volumes and the
    /// snapshots of each (id, state, the `stackplane.io/backup` tag).
    at_termination: std::sync::Mutex<Vec<Termination>>,
}

/// A snapshot as the test reads it from EC2: id, state, its `stackplane.io/backup` tag.
type SnapshotSeen = (String, String, Option<String>);

/// What EC2 held for one instance at the moment the controller asked to terminate it: each
/// attached volume with its snapshots.
#[derive(Debug, Clone)]
struct Termination {
    instance: String,
    volumes: Vec<(String, Vec<SnapshotSeen>)>,
}

fn count(c: &AtomicUsize) -> usize {
    c.load(Ordering::SeqCst)
}

/// The real AWS provider, counting calls; optionally it signals each successful launch and then
/// holds the reconcile for a while before returning (so the test can kill the controller
/// between RunInstances and the status write).
#[derive(Debug)]
struct Observed {
    inner: AwsProvider,
    /// The test's own EC2 client: what it reads and breaks behind the controller's back.
    ec2: aws_sdk_ec2::Client,
    calls: Arc<Calls>,
    after_launch: Option<(Arc<Notify>, Duration)>,
}

impl Observed {
    /// Volumes attached to `instance`, as EC2 reports them.
    async fn volumes_of(&self, instance: &str) -> Vec<String> {
        volumes_of(&self.ec2, instance).await
    }
}

/// Volumes attached to `instance`, as EC2 reports them.
async fn volumes_of(ec2: &aws_sdk_ec2::Client, instance: &str) -> Vec<String> {
    let out = ec2
        .describe_volumes()
        .filters(
            Filter::builder()
                .name("attachment.instance-id")
                .values(instance)
                .build(),
        )
        .send()
        .await
        .expect("DescribeVolumes");
    let mut ids: Vec<String> = out
        .volumes()
        .iter()
        .filter_map(|v| v.volume_id().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

/// Snapshots of `volume`: (id, state, `stackplane.io/backup` tag).
async fn snapshots_of(ec2: &aws_sdk_ec2::Client, volume: &str) -> Vec<SnapshotSeen> {
    let out = ec2
        .describe_snapshots()
        .filters(Filter::builder().name("volume-id").values(volume).build())
        .send()
        .await
        .expect("DescribeSnapshots");
    out.snapshots()
        .iter()
        .map(|s| {
            (
                s.snapshot_id().unwrap_or_default().to_owned(),
                s.state()
                    .map(|st| st.as_str().to_owned())
                    .unwrap_or_default(),
                s.tags()
                    .iter()
                    .find(|t| t.key() == Some("stackplane.io/backup"))
                    .and_then(|t| t.value())
                    .map(str::to_owned),
            )
        })
        .collect()
}

impl CloudProvider for Observed {
    fn find_instances<'a>(
        &'a self,
        tenant: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ObservedInstance>, CloudError>> {
        self.calls.find_instances.fetch_add(1, Ordering::SeqCst);
        self.inner.find_instances(tenant)
    }
    fn describe_image<'a>(
        &'a self,
        image_id: &'a str,
    ) -> BoxFuture<'a, Result<ImageInfo, CloudError>> {
        self.calls.describe_image.fetch_add(1, Ordering::SeqCst);
        self.inner.describe_image(image_id)
    }
    fn run_instance<'a>(
        &'a self,
        spec: &'a LaunchSpec,
    ) -> BoxFuture<'a, Result<ObservedInstance, CloudError>> {
        async move {
            self.calls.run_instance.fetch_add(1, Ordering::SeqCst);
            let r = self.inner.run_instance(spec).await;
            if let (Ok(_), Some((notify, hold))) = (&r, &self.after_launch) {
                notify.notify_one();
                tokio::time::sleep(*hold).await;
            }
            r
        }
        .boxed()
    }
    fn stop_instance<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), CloudError>> {
        self.calls.stop_instance.fetch_add(1, Ordering::SeqCst);
        self.inner.stop_instance(id)
    }
    fn start_instance<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), CloudError>> {
        self.calls.start_instance.fetch_add(1, Ordering::SeqCst);
        self.inner.start_instance(id)
    }
    fn modify_instance_type<'a>(
        &'a self,
        id: &'a str,
        instance_type: &'a str,
    ) -> BoxFuture<'a, Result<(), CloudError>> {
        self.inner.modify_instance_type(id, instance_type)
    }
    fn terminate_instances<'a>(
        &'a self,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<(), CloudError>> {
        async move {
            for id in ids {
                let mut volumes = Vec::new();
                for v in self.volumes_of(id).await {
                    let snapshots = snapshots_of(&self.ec2, &v).await;
                    volumes.push((v, snapshots));
                }
                self.calls
                    .at_termination
                    .lock()
                    .expect("lock")
                    .push(Termination {
                        instance: id.clone(),
                        volumes,
                    });
            }
            self.inner.terminate_instances(ids).await
        }
        .boxed()
    }
    fn tag_instance<'a>(
        &'a self,
        id: &'a str,
        tags: &'a BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<(), CloudError>> {
        self.inner.tag_instance(id, tags)
    }
    fn find_records<'a>(
        &'a self,
        zone: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Record>, CloudError>> {
        self.inner.find_records(zone, name)
    }
    fn change_records<'a>(
        &'a self,
        zone: &'a str,
        changes: &'a [RecordChange],
    ) -> BoxFuture<'a, Result<(), CloudError>> {
        self.calls.change_records.fetch_add(1, Ordering::SeqCst);
        let throttled = self
            .calls
            .throttle_changes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if throttled {
            return futures::future::ready(Err(CloudError::Retryable {
                operation: "ChangeResourceRecordSets",
                code: "Throttling".into(),
                message: "Rate exceeded (injected by the test)".into(),
            }))
            .boxed();
        }
        self.inner.change_records(zone, changes)
    }
    fn managed_instances(&self) -> BoxFuture<'_, Result<Vec<ObservedInstance>, CloudError>> {
        self.inner.managed_instances()
    }
    fn managed_snapshots(&self) -> BoxFuture<'_, Result<Vec<ObservedSnapshot>, CloudError>> {
        self.inner.managed_snapshots()
    }
    fn owner_records(&self) -> BoxFuture<'_, Result<Vec<ZoneRecord>, CloudError>> {
        self.inner.owner_records()
    }
    fn attached_volumes<'a>(
        &'a self,
        instance: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, CloudError>> {
        self.inner.attached_volumes(instance)
    }
    fn instance_zone<'a>(
        &'a self,
        instance: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, CloudError>> {
        self.inner.instance_zone(instance)
    }
    fn find_snapshots<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        volume: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<ObservedSnapshot>, CloudError>> {
        self.inner.find_snapshots(key, value, volume)
    }
    fn create_snapshot<'a>(
        &'a self,
        spec: &'a SnapshotSpec,
    ) -> BoxFuture<'a, Result<ObservedSnapshot, CloudError>> {
        async move {
            if self
                .calls
                .delete_volume_before_snapshot
                .swap(false, Ordering::SeqCst)
            {
                let volume = &spec.volume_id;
                // moto needs the instance named (it answers 500 without it).
                let attached_to = self
                    .ec2
                    .describe_volumes()
                    .volume_ids(volume)
                    .send()
                    .await
                    .expect("DescribeVolumes in moto")
                    .volumes()
                    .iter()
                    .flat_map(|v| v.attachments())
                    .find_map(|a| a.instance_id().map(str::to_owned))
                    .expect("the volume is attached");
                self.ec2
                    .detach_volume()
                    .volume_id(volume)
                    .instance_id(attached_to)
                    .force(true)
                    .send()
                    .await
                    .expect("DetachVolume in moto");
                self.ec2
                    .delete_volume()
                    .volume_id(volume)
                    .send()
                    .await
                    .expect("DeleteVolume in moto");
            }
            self.inner.create_snapshot(spec).await
        }
        .boxed()
    }
    fn delete_snapshot<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), CloudError>> {
        self.inner.delete_snapshot(id)
    }
    fn find_volumes<'a>(
        &'a self,
        tags: &'a [(&'a str, &'a str)],
    ) -> BoxFuture<'a, Result<Vec<ObservedVolume>, CloudError>> {
        self.inner.find_volumes(tags)
    }
    fn create_volume<'a>(
        &'a self,
        spec: &'a VolumeSpec,
    ) -> BoxFuture<'a, Result<ObservedVolume, CloudError>> {
        self.inner.create_volume(spec)
    }
}

struct Env {
    client: Client,
    shard: String,
    platform: String,
    domain: String,
    /// Bare id, as moto created it.
    zone: String,
    ec2: aws_sdk_ec2::Client,
    route53: aws_sdk_route53::Client,
    calls: Arc<Calls>,
    metrics: Arc<Metrics>,
    ingress: Option<IngressAddress>,
    controllers: std::sync::Mutex<Vec<common::Controller>>,
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Ok(c) = self.controllers.lock() {
            for h in c.iter() {
                h.kill();
            }
        }
    }
}

struct Options {
    image: Option<&'static str>,
    ingress: Option<&'static str>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            image: None,
            ingress: Some("lb-1.elb.example.net"),
        }
    }
}

/// A Platform (stackpro-business's stack and dedicated tiers, plus a `shared` tier without an
/// instance) in a new hosted zone of its own, without a controller yet.
async fn setup(opts: Options) -> Env {
    let (client, shard) = common::cluster("stackplane_controller=info", kube_client()).await;
    let aws = aws_config().await;
    let ec2 = aws_sdk_ec2::Client::new(&aws);
    let route53 = aws_sdk_route53::Client::new(&aws);
    let pname = unique("plat");
    let domain = format!("{pname}.stackplane.test");
    let zone = route53
        .create_hosted_zone()
        .name(&domain)
        .caller_reference(unique("ref"))
        .send()
        .await
        .expect("CreateHostedZone in moto")
        .hosted_zone()
        .expect("zone")
        .id()
        .to_owned();
    let bare_zone = zone.trim_start_matches("/hostedzone/").to_owned();
    let image = match opts.image {
        Some(i) => i.to_owned(),
        None => stackplane_tests::moto_image(&ec2).await,
    };
    let mut platform: Platform = stackplane_tests::example_platform("stackpro-business.yaml");
    platform.metadata.name = Some(pname.clone());
    platform.spec.domain = domain.clone();
    // With the prefix Route53 returns: the controller normalises it.
    platform.spec.hosted_zone_id = Some(zone.clone());
    stackplane_tests::cloud_test_platform(&mut platform, &image);
    Api::<Platform>::all(client.clone())
        .create(&PostParams::default(), &platform)
        .await
        .expect("create platform");
    Env {
        client,
        shard,
        platform: pname,
        domain,
        zone: bare_zone,
        ec2,
        route53,
        calls: Arc::new(Calls::default()),
        metrics: Arc::new(Metrics::new()),
        ingress: opts.ingress.map(|i| i.parse().expect("ingress address")),
        controllers: std::sync::Mutex::new(Vec::new()),
    }
}

impl Env {
    /// Starts a controller for this test's shard, with a Lease of its own (a crashed
    /// controller's Lease never blocks the next one).
    async fn spawn_controller(&self, after_launch: Option<(Arc<Notify>, Duration)>) -> usize {
        self.spawn_controller_with(after_launch, |_| {}).await
    }

    /// [`Env::spawn_controller`] with the cloud settings edited (e.g. the garbage collector's).
    async fn spawn_controller_with(
        &self,
        after_launch: Option<(Arc<Notify>, Duration)>,
        configure: impl FnOnce(&mut CloudSettings),
    ) -> usize {
        self.spawn_controller_full(after_launch, configure, |_| {})
            .await
    }

    /// [`Env::spawn_controller_with`] with the reconciler's settings edited too (e.g. how long
    /// it waits for backups and what a failed one does).
    async fn spawn_controller_full(
        &self,
        after_launch: Option<(Arc<Notify>, Duration)>,
        configure: impl FnOnce(&mut CloudSettings),
        reconcile: impl FnOnce(&mut ReconcileConfig),
    ) -> usize {
        let provider = Observed {
            inner: AwsProvider::from_env(Default::default()).await,
            ec2: self.ec2.clone(),
            calls: self.calls.clone(),
            after_launch,
        };
        let mut cloud = CloudSettings::new(Arc::new(provider), self.ingress.clone());
        cloud.progress_requeue = Duration::from_millis(300);
        // Only the garbage collector's own test collects: the others' passes would count (and
        // announce) its orphans in their controllers instead of its.
        cloud.gc.mode = GcMode::Off;
        configure(&mut cloud);
        let controller = common::Controller::start(&self.client, &self.shard, |o| {
            o.concurrency = 8;
            o.reconcile = ReconcileConfig {
                // Short, so drift made behind the controller's back is found quickly.
                requeue: Duration::from_secs(1),
                cloud: Some(cloud),
                // These tests are about cloud resources: deletion does not wait for the final
                // backup (its dump Job would never run here; the tenant tests cover that wait
                // and the hold of a failed one).
                final_backup_timeout: Duration::ZERO,
                on_backup_failure: stackplane_core::tenant::deletion::OnBackupFailure::Delete,
                // Some delete twenty tenants within a minute, on purpose: the mass-deletion
                // guard is the tenant tests' subject.
                max_deletions_per_hour: 1000,
                ..ReconcileConfig::default()
            };
            reconcile(&mut o.reconcile);
            o.lease.name = unique("lease");
            o.metrics = self.metrics.clone();
        });
        let mut c = self.controllers.lock().expect("controllers");
        c.push(controller);
        c.len() - 1
    }

    /// Kills a controller as a crash would: its reconciles stop at their next await.
    fn kill_controller(&self, index: usize) {
        if let Some(h) = self.controllers.lock().expect("controllers").get(index) {
            h.kill();
        }
    }

    async fn create_tenant(&self, tier: &str, edit: impl FnOnce(&mut TenantSpec)) -> String {
        let name = unique("tn");
        let mut spec = TenantSpec::new(self.platform.clone(), tier);
        spec.customer.stripe_customer_id = Some(CUSTOMER.into());
        edit(&mut spec);
        let mut t = Tenant::new(&name, spec);
        t.metadata.labels = Some([(SHARD.to_owned(), self.shard.clone())].into());
        Api::<Tenant>::all(self.client.clone())
            .create(&PostParams::default(), &t)
            .await
            .expect("create tenant");
        name
    }

    async fn tenant(&self, name: &str) -> Option<Tenant> {
        Api::<Tenant>::all(self.client.clone())
            .get_opt(name)
            .await
            .expect("get tenant")
    }

    async fn patch_spec(&self, name: &str, spec: serde_json::Value) {
        Api::<Tenant>::all(self.client.clone())
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "spec": spec })),
            )
            .await
            .expect("patch tenant");
    }

    /// Instances of the tenant that are not terminated, as EC2 reports them.
    async fn instances(&self, tenant: &str) -> Vec<Instance> {
        self.instances_tagged("stackplane.io/tenant", tenant).await
    }

    async fn instances_tagged(&self, key: &str, value: &str) -> Vec<Instance> {
        let out = self
            .ec2
            .describe_instances()
            .filters(
                Filter::builder()
                    .name(format!("tag:{key}"))
                    .values(value)
                    .build(),
            )
            .send()
            .await
            .expect("DescribeInstances");
        out.reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| {
                let state = i
                    .state()
                    .and_then(|s| s.name())
                    .map(|n| n.as_str().to_owned())
                    .unwrap_or_default();
                state != "terminated" && state != "shutting-down"
            })
            .cloned()
            .collect()
    }

    /// Every A and CNAME record set of the zone: (name, type, values).
    async fn records(&self) -> Vec<(String, String, Vec<String>)> {
        let out = self
            .route53
            .list_resource_record_sets()
            .hosted_zone_id(&self.zone)
            .send()
            .await
            .expect("ListResourceRecordSets");
        out.resource_record_sets()
            .iter()
            .filter(|s| matches!(s.r#type(), RrType::A | RrType::Cname))
            .map(|s| {
                (
                    s.name().to_owned(),
                    s.r#type().as_str().to_owned(),
                    s.resource_records()
                        .iter()
                        .map(|r| r.value().to_owned())
                        .collect(),
                )
            })
            .collect()
    }

    /// The ownership TXT records of the zone: (name, values).
    async fn owner_records(&self) -> Vec<(String, Vec<String>)> {
        let out = self
            .route53
            .list_resource_record_sets()
            .hosted_zone_id(&self.zone)
            .send()
            .await
            .expect("ListResourceRecordSets");
        out.resource_record_sets()
            .iter()
            .filter(|s| *s.r#type() == RrType::Txt && s.name().starts_with("_stackplane-owner."))
            .map(|s| {
                (
                    s.name().to_owned(),
                    s.resource_records()
                        .iter()
                        .map(|r| r.value().to_owned())
                        .collect(),
                )
            })
            .collect()
    }

    async fn record(&self, host: &str) -> Option<(String, Vec<String>)> {
        let fqdn = format!("{host}.{}.", self.domain);
        self.records()
            .await
            .into_iter()
            .find(|(n, _, _)| n.eq_ignore_ascii_case(&fqdn))
            .map(|(_, t, v)| (t, v))
    }

    async fn set_record(&self, host: &str, ip: &str) {
        let set = ResourceRecordSet::builder()
            .name(format!("{host}.{}", self.domain))
            .r#type(RrType::A)
            .ttl(60)
            .resource_records(ResourceRecord::builder().value(ip).build().expect("rr"))
            .build()
            .expect("set");
        self.route53
            .change_resource_record_sets()
            .hosted_zone_id(&self.zone)
            .change_batch(
                ChangeBatch::builder()
                    .changes(
                        Change::builder()
                            .action(ChangeAction::Upsert)
                            .resource_record_set(set)
                            .build()
                            .expect("change"),
                    )
                    .build()
                    .expect("batch"),
            )
            .send()
            .await
            .expect("edit record");
    }

    /// Waits until the tenant's `CloudReady` is True and returns the tenant.
    async fn cloud_ready(&self, name: &str) -> Tenant {
        eventually(&format!("{name} CloudReady"), 90, move || async move {
            let t = self.tenant(name).await?;
            let ok = cloud_condition(&t).is_some_and(|c| c.status == "True");
            ok.then_some(t)
        })
        .await
    }
}

fn cloud_condition(t: &Tenant) -> Option<Condition> {
    t.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "CloudReady")
        .cloned()
}

fn tag<'a>(i: &'a Instance, key: &str) -> Option<&'a str> {
    i.tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

fn type_of(i: &Instance) -> String {
    i.instance_type()
        .map(|t| t.as_str().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_tenant_gets_one_tagged_instance_and_its_record() {
    let env = setup(Options::default()).await;
    let env = &env;
    env.spawn_controller(None).await;
    let name = &env.create_tenant("starter", |_| {}).await;
    let t = env.cloud_ready(name).await;
    let uid = t.metadata.uid.clone().expect("uid");
    let st = t.status.expect("status");
    let recorded = st.instance.expect("status.instance");

    let found = env.instances(name).await;
    assert_eq!(found.len(), 1, "exactly one instance: {found:?}");
    let i = &found[0];
    assert_eq!(i.instance_id(), Some(recorded.id.as_str()));
    assert_eq!(type_of(i), "t3.micro");
    assert_eq!(recorded.instance_type, "t3.micro");
    assert_eq!(recorded.state, "running");
    assert_eq!(tag(i, "stackplane.io/tenant"), Some(name.as_str()));
    assert_eq!(tag(i, "ManagedBy"), Some("stackplane"));
    assert_eq!(tag(i, "Customer"), Some(CUSTOMER));
    assert_eq!(tag(i, "Plan"), Some("starter"));
    // What makes the instance the tenant's (and an orphan once the uid is gone).
    assert_eq!(tag(i, "stackplane.io/tenant-uid"), Some(uid.as_str()));
    assert_eq!(tag(i, "stackplane.io/retained"), Some("false"));
    let ip = i.public_ip_address().expect("moto assigns a public IP");
    assert_eq!(recorded.public_ip.as_deref(), Some(ip));

    assert_eq!(
        st.dns_record.as_deref(),
        Some(format!("{name}.{}", env.domain).as_str())
    );
    assert_eq!(
        env.record(name).await,
        Some(("A".to_owned(), vec![ip.to_owned()]))
    );

    // Nothing is rewritten in a loop: reconciles keep running (1 s requeue), AWS calls that
    // change something do not.
    let changes = count(&env.calls.change_records);
    let lookups = count(&env.calls.find_instances);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        count(&env.calls.find_instances) >= lookups + 2,
        "the tenant was reconciled again"
    );
    assert_eq!(count(&env.calls.change_records), changes, "no DNS rewrites");
    assert_eq!(count(&env.calls.run_instance), 1, "one launch");
    assert_eq!(env.instances(name).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_corrected_terminated_instance_replaced_edited_record_restored() {
    let env = setup(Options::default()).await;
    let env = &env;
    env.spawn_controller(None).await;
    let name = &env.create_tenant("starter", |_| {}).await;
    let t = env.cloud_ready(name).await;
    let first = &t.status.and_then(|s| s.instance).expect("instance");
    let ip = &first.public_ip.clone().expect("public ip");

    // A record edited by hand is put back. (The edit is not read back: the controller may
    // already have restored it by then. Its own UPSERT after the edit shows it saw the drift.)
    let changes_before_edit = count(&env.calls.change_records);
    env.set_record(name, "192.0.2.99").await;
    eventually("record restored", 30, move || async move {
        (env.record(name).await == Some(("A".to_owned(), vec![ip.clone()]))).then_some(())
    })
    .await;
    assert!(
        count(&env.calls.change_records) > changes_before_edit,
        "the controller rewrote the edited record"
    );

    // An instance terminated from outside is replaced by exactly one new instance.
    env.ec2
        .terminate_instances()
        .instance_ids(&first.id)
        .send()
        .await
        .expect("terminate from outside");
    let replaced = eventually("replacement instance", 60, move || async move {
        let t = env.tenant(name).await?;
        let i = t.status.clone()?.instance?;
        let ready = cloud_condition(&t).is_some_and(|c| c.status == "True");
        (ready && i.id != first.id).then_some(i)
    })
    .await;
    let found = env.instances(name).await;
    assert_eq!(found.len(), 1, "exactly one live instance: {found:?}");
    assert_eq!(found[0].instance_id(), Some(replaced.id.as_str()));
    assert_eq!(type_of(&found[0]), "t3.micro");
    let new_ip = &replaced.public_ip.clone().expect("new public ip");
    eventually("record follows the new instance", 30, move || async move {
        (env.record(name).await == Some(("A".to_owned(), vec![new_ip.clone()]))).then_some(())
    })
    .await;
    assert_eq!(count(&env.calls.run_instance), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_controller_crashes_during_provisioning_leave_one_instance() {
    let env = setup(Options::default()).await;
    let env = &env;
    let launched = Arc::new(Notify::new());
    // The first controller dies right after RunInstances returned, before it could record the
    // instance anywhere but in EC2.
    let first = env
        .spawn_controller(Some((launched.clone(), Duration::from_secs(2))))
        .await;
    let name = &env.create_tenant("starter", |_| {}).await;
    tokio::time::timeout(Duration::from_secs(60), launched.notified())
        .await
        .expect("the first controller launched an instance");
    env.kill_controller(first);
    let t = env.tenant(name).await.expect("tenant");
    assert!(
        t.status.and_then(|s| s.instance).is_none(),
        "crashed before the instance reached the status"
    );
    // Four more crashes at different points of the next controllers' reconciles.
    for (n, ms) in [150u64, 400, 700, 1000].into_iter().enumerate() {
        let c = env
            .spawn_controller(Some((launched.clone(), Duration::from_secs(2))))
            .await;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        env.kill_controller(c);
        assert!(
            env.instances(name).await.len() <= 1,
            "after crash {}",
            n + 2
        );
    }
    env.spawn_controller(None).await;
    let t = env.cloud_ready(name).await;
    let found = env.instances(name).await;
    assert_eq!(found.len(), 1, "exactly one instance: {found:?}");
    assert_eq!(
        found[0].instance_id().map(str::to_owned),
        t.status.and_then(|s| s.instance).map(|i| i.id)
    );
    assert_eq!(count(&env.calls.run_instance), 1, "launched once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_upgrade_resizes_the_same_instance() {
    let env = setup(Options::default()).await;
    let env = &env;
    env.spawn_controller(None).await;
    let name = &env.create_tenant("starter", |_| {}).await;
    let t = env.cloud_ready(name).await;
    let before = t.status.and_then(|s| s.instance).expect("instance");
    assert_eq!(before.instance_type, "t3.micro");

    env.patch_spec(name, json!({"tier": "business"})).await;
    let after = eventually("resized and running", 60, move || async move {
        let t = env.tenant(name).await?;
        let i = t.status.clone()?.instance?;
        let ready = cloud_condition(&t).is_some_and(|c| c.status == "True");
        (ready && i.instance_type == "t3.small" && i.state == "running").then_some(i)
    })
    .await;
    assert_eq!(after.id, before.id, "same instance");
    let found = env.instances(name).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].instance_id(), Some(before.id.as_str()));
    assert_eq!(type_of(&found[0]), "t3.small");
    assert_eq!(tag(&found[0], "Plan"), Some("business"));
    // A stopped and started instance may get a new address: the record follows.
    let ip = &found[0].public_ip_address().expect("ip").to_owned();
    assert_eq!(after.public_ip.as_deref(), Some(ip.as_str()));
    eventually(
        "record follows the resized instance",
        30,
        move || async move {
            (env.record(name).await == Some(("A".to_owned(), vec![ip.clone()]))).then_some(())
        },
    )
    .await;
    assert_eq!(count(&env.calls.run_instance), 1, "never relaunched");
}

/// Nothing runs that nobody pays for: a suspended tenant's instance is stopped with its disk,
/// its record withdrawn (a stopped instance's address goes back to AWS), and it stays stopped
/// through resyncs, even when someone starts it by hand; resuming starts the same instance and
/// the record follows its new address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_instance_stays_stopped_and_the_same_one_runs_on_resume() {
    let env = setup(Options::default()).await;
    let env = &env;
    env.spawn_controller(None).await;
    let name = &env.create_tenant("starter", |_| {}).await;
    let t = env.cloud_ready(name).await;
    let before = t.status.and_then(|s| s.instance).expect("instance");
    assert!(env.record(name).await.is_some(), "a record while running");

    env.patch_spec(name, json!({"suspended": true})).await;
    let stopped = |why: &'static str| {
        eventually(why, 60, move || async move {
            let t = env.tenant(name).await?;
            let i = t.status.clone()?.instance?;
            let c = cloud_condition(&t)?;
            let settled = c.status == "True" && c.reason == "InstanceStopped";
            (settled && i.state == "stopped").then_some((t, i))
        })
    };
    let (t, parked) = stopped("instance stopped while suspended").await;
    assert_eq!(parked.id, before.id, "the same instance, not a new one");
    assert_eq!(state_of(env, &before.id).await.as_deref(), Some("stopped"));
    assert_eq!(t.status.and_then(|s| s.phase), Some(TenantPhase::Suspended));
    // The disk is kept: stopping never terminates, and nothing else is launched.
    assert_eq!(env.instances(name).await.len(), 1);
    assert_eq!(count(&env.calls.run_instance), 1);
    // The A record is withdrawn; the ownership record keeps the name the tenant's.
    eventually("record withdrawn", 30, move || async move {
        env.record(name).await.is_none().then_some(())
    })
    .await;
    let fqdn = format!("_stackplane-owner.{name}.{}.", env.domain);
    assert!(
        env.owner_records()
            .await
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(&fqdn)),
        "the ownership record stays"
    );

    // Several resyncs later it is still stopped and was never started.
    let lookups = count(&env.calls.find_instances);
    eventually("three more reconciles", 60, move || async move {
        (count(&env.calls.find_instances) >= lookups + 3).then_some(())
    })
    .await;
    assert_eq!(state_of(env, &before.id).await.as_deref(), Some("stopped"));
    assert_eq!(
        count(&env.calls.start_instance),
        0,
        "never started while idle"
    );

    // Started by hand while the tenant is suspended: stopped again.
    let stops = count(&env.calls.stop_instance);
    let id = &before.id;
    env.ec2
        .start_instances()
        .instance_ids(&before.id)
        .send()
        .await
        .expect("StartInstances by hand");
    eventually("stopped again", 60, move || async move {
        (count(&env.calls.stop_instance) > stops
            && state_of(env, id).await.as_deref() == Some("stopped"))
        .then_some(())
    })
    .await;

    // Resumed: the same instance runs again and the record points at its address now.
    env.patch_spec(name, json!({"suspended": false})).await;
    let resumed = eventually("running after resume", 60, move || async move {
        let t = env.tenant(name).await?;
        let i = t.status.clone()?.instance?;
        let ready = cloud_condition(&t).is_some_and(|c| c.status == "True");
        (ready && i.state == "running").then_some(i)
    })
    .await;
    assert_eq!(resumed.id, before.id, "same instance, same disk");
    let found = env.instances(name).await;
    assert_eq!(found.len(), 1);
    let ip = found[0].public_ip_address().expect("ip").to_owned();
    assert_eq!(resumed.public_ip.as_deref(), Some(ip.as_str()));
    let ip = &ip;
    eventually(
        "record follows the started instance",
        30,
        move || async move {
            (env.record(name).await == Some(("A".to_owned(), vec![ip.clone()]))).then_some(())
        },
    )
    .await;
    assert_eq!(count(&env.calls.run_instance), 1, "never relaunched");
}

/// A subscription whose first payment never went through gets no instance; once paid, it does.
/// A cancelled tenant in its retention period has its instance stopped, not terminated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaid_and_cancelled_tenants_run_no_instance() {
    let env = setup(Options::default()).await;
    let env = &env;
    env.spawn_controller(None).await;
    let name = &env
        .create_tenant("starter", |spec| {
            spec.subscription = Some(stackplane_crds::Subscription {
                id: "sub_NeverPaid1".into(),
                status: stackplane_crds::SubscriptionStatus::Incomplete,
                current_period_end: None,
                quantity: None,
                items: Vec::new(),
            });
        })
        .await;
    let t = env.cloud_ready(name).await;
    let c = cloud_condition(&t).expect("CloudReady");
    assert_eq!(c.reason, "InstanceStopped", "{c:?}");
    assert!(c.message.contains("no instance is launched"), "{c:?}");
    assert_eq!(
        t.status.as_ref().and_then(|s| s.phase),
        Some(TenantPhase::Suspended)
    );
    assert!(env.instances(name).await.is_empty(), "nothing launched");
    assert_eq!(count(&env.calls.run_instance), 0);

    // Paid: launched.
    env.patch_spec(
        name,
        json!({"subscription": {"id": "sub_NeverPaid1", "status": "active"}}),
    )
    .await;
    let running = eventually("launched once paid", 60, move || async move {
        let i = env.tenant(name).await?.status?.instance?;
        (i.state == "running").then_some(i)
    })
    .await;

    // Cancelled (retention): stopped, kept.
    env.patch_spec(name, json!({"cancelledAt": "2026-12-01T00:00:00Z"}))
        .await;
    eventually("stopped in retention", 60, move || async move {
        let i = env.tenant(name).await?.status?.instance?;
        (i.state == "stopped").then_some(())
    })
    .await;
    let t = env.tenant(name).await.expect("tenant");
    assert_eq!(t.status.and_then(|s| s.phase), Some(TenantPhase::Cancelled));
    assert_eq!(state_of(env, &running.id).await.as_deref(), Some("stopped"));
    assert_eq!(env.instances(name).await.len(), 1, "kept, not terminated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_subdomain_moves_the_record() {
    let env = setup(Options::default()).await;
    let env = &env;
    env.spawn_controller(None).await;
    let first = unique("first");
    let second = unique("second");
    let f = first.clone();
    let name = &env
        .create_tenant("shared", move |s| s.subdomain = Some(f))
        .await;
    let t = env.cloud_ready(name).await;
    assert!(t.status.as_ref().and_then(|s| s.instance.clone()).is_none());
    assert_eq!(
        t.status.and_then(|s| s.dns_record),
        Some(format!("{first}.{}", env.domain))
    );
    // Shared tier, ingress given as a host name: a CNAME to it.
    assert_eq!(
        env.record(&first).await,
        Some(("CNAME".to_owned(), vec!["lb-1.elb.example.net.".to_owned()]))
    );

    env.patch_spec(name, json!({"subdomain": second})).await;
    let want = &format!("{second}.{}", env.domain);
    eventually("record moved", 30, move || async move {
        let t = env.tenant(name).await?;
        (t.status?.dns_record.as_deref() == Some(want.as_str())).then_some(())
    })
    .await;
    assert!(env.record(&second).await.is_some(), "new record present");
    assert_eq!(env.record(&first).await, None, "old record gone");
    assert_eq!(env.records().await.len(), 1, "nothing else in the zone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_tenant_without_ingress_address_gets_no_record_and_says_so() {
    let env = setup(Options {
        ingress: None,
        ..Options::default()
    })
    .await;
    let env = &env;
    env.spawn_controller(None).await;
    let name = &env.create_tenant("shared", |_| {}).await;
    let t = env.cloud_ready(name).await;
    let c = cloud_condition(&t).expect("condition");
    assert!(
        c.message.contains("no ingress address"),
        "condition says why: {}",
        c.message
    );
    assert!(t.status.and_then(|s| s.dns_record).is_none());
    assert!(env.records().await.is_empty());
    assert!(env.instances(name).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_create_delete_cycles_leave_nothing_behind() {
    let env = setup(Options::default()).await;
    env.spawn_controller(None).await;
    let env = &env;
    let tenants: Api<Tenant> = Api::all(env.client.clone());
    let lanes = (0..4).map(|lane| {
        let tenants = tenants.clone();
        async move {
            for cycle in 0..5 {
                let name = &env.create_tenant("starter", |_| {}).await;
                match (lane + cycle) % 3 {
                    // Deleted while provisioning is under way.
                    0 => tokio::time::sleep(Duration::from_millis(100 * cycle as u64)).await,
                    // Deleted once the instance exists.
                    _ => {
                        eventually("instance recorded", 60, move || async move {
                            env.tenant(name).await?.status?.instance.map(|_| ())
                        })
                        .await;
                    }
                }
                tenants
                    .delete(name, &DeleteParams::default())
                    .await
                    .expect("delete tenant");
                eventually(&format!("{name} deleted"), 120, move || async move {
                    env.tenant(name).await.is_none().then_some(())
                })
                .await;
                assert!(
                    env.instances(name).await.is_empty(),
                    "{name}: no instance left"
                );
            }
        }
    });
    futures::future::join_all(lanes).await;

    let left = env
        .instances_tagged("stackplane.io/platform", &env.platform)
        .await;
    assert!(left.is_empty(), "instances left: {left:?}");
    let records = env.records().await;
    assert!(records.is_empty(), "records left: {records:?}");
    let owners = env.owner_records().await;
    assert!(owners.is_empty(), "ownership records left: {owners:?}");
    assert!(
        count(&env.calls.run_instance) >= 10,
        "instances were really launched and deleted: {}",
        count(&env.calls.run_instance)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_leaves_instance_and_record_and_says_so() {
    let env = setup(Options::default()).await;
    let env = &env;
    env.spawn_controller(None).await;
    let name = &env
        .create_tenant("starter", |s| s.deletion_policy = DeletionPolicy::Retain)
        .await;
    let t = env.cloud_ready(name).await;
    let instance = t.status.and_then(|s| s.instance).expect("instance");
    Api::<Tenant>::all(env.client.clone())
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete");
    eventually("tenant gone", 60, move || async move {
        env.tenant(name).await.is_none().then_some(())
    })
    .await;
    let found = env.instances(name).await;
    assert_eq!(found.len(), 1, "instance retained");
    assert_eq!(found[0].instance_id(), Some(instance.id.as_str()));
    assert!(env.record(name).await.is_some(), "record retained");
    let events = Api::<Event>::all(env.client.clone())
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .expect("events");
    let retained = events
        .items
        .iter()
        .find(|e| e.reason.as_deref() == Some("CloudResourcesRetained"))
        .expect("an Event says what was retained");
    assert!(retained
        .message
        .as_deref()
        .is_some_and(|m| m.contains(&instance.id)));

    // Leave moto clean for the other tests.
    env.ec2
        .terminate_instances()
        .instance_ids(&instance.id)
        .send()
        .await
        .expect("terminate");
}

/// Issue 33: a Tenant released without its stack being deleted (a deletion of the Tenant CRD;
/// here a `Retain` deletion, whose cloud marks are the same, with the namespace marked by the
/// same function the CRD-deletion path uses) and recreated under the same name adopts its
/// instance and DNS record as they were: the same instance, now tagged with the new uid, and
/// no second launch (a new, empty instance would leave the customer's disk behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_tenant_takes_over_the_instance_and_record_its_released_namesake_left() {
    let env = setup(Options::default()).await;
    let env = &env;
    env.spawn_controller(None).await;
    let name = &env
        .create_tenant("starter", |s| s.deletion_policy = DeletionPolicy::Retain)
        .await;
    let before = env.cloud_ready(name).await;
    let old_uid = before.metadata.uid.clone().expect("uid");
    let instance = before
        .status
        .as_ref()
        .and_then(|s| s.instance.clone())
        .expect("instance");
    Api::<Tenant>::all(env.client.clone())
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete");
    eventually("tenant gone", 60, move || async move {
        env.tenant(name).await.is_none().then_some(())
    })
    .await;
    let left = &env.instances(name).await;
    assert_eq!(left.len(), 1, "instance retained: {left:?}");
    assert_eq!(tag(&left[0], "stackplane.io/retained"), Some("true"));
    // What the CRD-deletion path writes onto the namespace (its own test checks it does).
    let namespaces = Api::<Namespace>::all(env.client.clone());
    let ns = format!("tenant-{name}");
    let marks = adoption::orphan_patch(&before).expect("marks");
    namespaces
        .patch(&ns, &PatchParams::default(), &Patch::Merge(&marks))
        .await
        .expect("mark namespace");
    let recreated =
        adoption::tenant_from_namespace(&namespaces.get(&ns).await.expect("ns")).expect("adopt");
    Api::<Tenant>::all(env.client.clone())
        .create(&PostParams::default(), &recreated)
        .await
        .expect("recreate tenant");

    let after = env.cloud_ready(name).await;
    let new_uid = after.metadata.uid.clone().expect("uid");
    assert_ne!(new_uid, old_uid);
    let st = after.status.expect("status");
    assert_eq!(
        st.instance.as_ref().map(|i| i.id.as_str()),
        Some(instance.id.as_str()),
        "the same instance"
    );
    let found = env.instances(name).await;
    assert_eq!(found.len(), 1, "no second instance: {found:?}");
    assert_eq!(
        tag(&found[0], "stackplane.io/tenant-uid"),
        Some(new_uid.as_str())
    );
    // Retained as the recreated tenant's own policy (`Retain`, from the marks) says.
    assert_eq!(tag(&found[0], "stackplane.io/retained"), Some("true"));
    assert_eq!(count(&env.calls.run_instance), 1, "one launch in all");
    let ip = found[0].public_ip_address().expect("public ip");
    assert_eq!(
        env.record(name).await,
        Some(("A".to_owned(), vec![ip.to_owned()])),
        "the record is the new tenant's (not SubdomainTaken)"
    );
    let events = Api::<Event>::all(env.client.clone())
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .expect("events");
    let adopted = events
        .items
        .iter()
        .find(|e| {
            e.reason.as_deref() == Some("CloudResourcesAdopted")
                && e.involved_object.uid.as_deref() == Some(new_uid.as_str())
        })
        .expect("an Event says what was taken over");
    assert!(adopted
        .message
        .as_deref()
        .is_some_and(|m| m.contains(&instance.id) && m.contains(&old_uid)));
    let n = namespaces.get(&ns).await.expect("ns");
    assert!(!adoption::carries_orphan_marks(&n), "marks removed");

    // Leave moto clean for the other tests: the tenant (Retain) and its instance.
    Api::<Tenant>::all(env.client.clone())
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete");
    eventually("tenant gone", 60, move || async move {
        env.tenant(name).await.is_none().then_some(())
    })
    .await;
    env.ec2
        .terminate_instances()
        .instance_ids(&instance.id)
        .send()
        .await
        .expect("terminate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_image_is_a_terminal_condition_without_a_retry_loop() {
    let env = setup(Options {
        image: Some("ami-0badc0ffee0000000"),
        ..Options::default()
    })
    .await;
    let env = &env;
    env.spawn_controller(None).await;
    let name = &env.create_tenant("starter", |_| {}).await;
    let t = eventually(
        "CloudReady False with the AWS code",
        60,
        move || async move {
            let t = env.tenant(name).await?;
            let c = cloud_condition(&t)?;
            (c.status == "False" && c.message.contains("InvalidAMIID")).then_some(t)
        },
    )
    .await;
    let c = cloud_condition(&t).expect("condition");
    assert_eq!(c.reason, "CloudError");
    assert!(c.message.contains("ami-0badc0ffee0000000"), "{}", c.message);
    assert_eq!(t.status.and_then(|s| s.phase), Some(TenantPhase::Failed));

    // The periodic requeue is 1 s in these tests; a terminal error waits much longer.
    let attempts = || count(&env.calls.describe_image) + count(&env.calls.run_instance);
    let before = attempts();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = attempts();
    assert!(
        after - before <= 1,
        "no hot retry loop: {before} launch attempts, then {after} five seconds later"
    );
    assert!(before <= 3, "few attempts before settling: {before}");
    assert_eq!(count(&env.calls.run_instance), 0, "nothing launched");
    assert!(env.instances(name).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_dns_change_is_retried_and_provisioning_resumes() {
    let env = setup(Options::default()).await;
    let env = &env;
    // The instance is launched, then the record's first three writes are throttled: the
    // reconciles in between must find the instance, not launch another.
    env.calls.throttle_changes.store(3, Ordering::SeqCst);
    env.spawn_controller(None).await;
    let name = &env.create_tenant("starter", |_| {}).await;
    let retrying = eventually("CloudRetrying condition", 60, move || async move {
        let t = env.tenant(name).await?;
        let c = cloud_condition(&t)?;
        (c.reason == "CloudRetrying").then_some(c)
    })
    .await;
    assert_eq!(retrying.status, "False");
    assert!(
        retrying.message.contains("Throttling"),
        "{}",
        retrying.message
    );
    let t = env.cloud_ready(name).await;
    assert_eq!(
        count(&env.calls.throttle_changes),
        0,
        "every injected failure was hit"
    );
    assert!(count(&env.calls.change_records) >= 4);
    let found = env.instances(name).await;
    assert_eq!(found.len(), 1, "one instance: {found:?}");
    assert_eq!(count(&env.calls.run_instance), 1, "launched once");
    let ip = t
        .status
        .and_then(|s| s.instance)
        .and_then(|i| i.public_ip)
        .expect("ip");
    assert_eq!(env.record(name).await, Some(("A".to_owned(), vec![ip])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colliding_subdomains_the_holder_keeps_the_record() {
    let env = setup(Options::default()).await;
    let env = &env;
    env.spawn_controller(None).await;
    let sub = unique("shop");
    let s1 = sub.clone();
    let holder = &env
        .create_tenant("shared", move |s| s.subdomain = Some(s1))
        .await;
    let t = env.cloud_ready(holder).await;
    let holder_uid = t.metadata.uid.clone().expect("uid");
    let cname = Some(("CNAME".to_owned(), vec!["lb-1.elb.example.net.".to_owned()]));
    assert_eq!(env.record(&sub).await, cname);
    let owners = env.owner_records().await;
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert!(owners[0].1[0].contains(&holder_uid), "{owners:?}");

    // A dedicated tenant with the same subdomain would point the name at its own instance.
    let s2 = sub.clone();
    let late = &env
        .create_tenant("starter", move |s| s.subdomain = Some(s2))
        .await;
    let refused = eventually("SubdomainTaken", 90, move || async move {
        let t = env.tenant(late).await?;
        let c = cloud_condition(&t)?;
        (c.reason == "SubdomainTaken").then_some(t)
    })
    .await;
    let c = cloud_condition(&refused).expect("condition");
    assert_eq!(c.status, "False");
    let synced = refused
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Synced"))
        .expect("Synced condition");
    assert_eq!(
        (synced.status.as_str(), synced.reason.as_str()),
        ("False", "SubdomainTaken"),
        "a tenant whose subdomain is taken is not synced: {synced:?}"
    );
    assert!(
        c.message.contains(holder.as_str()),
        "names the holder: {}",
        c.message
    );
    assert_eq!(refused.status.and_then(|s| s.dns_record), None);
    // No DNS change: the holder's record and ownership are as they were, also after the late
    // tenant's reconciles went on for a while (1 s requeue).
    let changes = count(&env.calls.change_records);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.record(&sub).await, cname);
    assert_eq!(env.owner_records().await, owners);
    assert_eq!(
        count(&env.calls.change_records),
        changes,
        "no DNS write at all"
    );

    // Deleting the late tenant leaves the holder's record alone.
    Api::<Tenant>::all(env.client.clone())
        .delete(late, &DeleteParams::default())
        .await
        .expect("delete");
    eventually("late tenant gone", 90, move || async move {
        env.tenant(late).await.is_none().then_some(())
    })
    .await;
    assert_eq!(env.record(&sub).await, cname);
    assert_eq!(env.owner_records().await, owners);
    let t = env.tenant(holder).await.expect("holder");
    assert!(cloud_condition(&t).is_some_and(|c| c.status == "True"));
    assert!(env.instances(late).await.is_empty());
}

/// Runs an instance tagged as stackplane tags one, for a tenant uid of the test's choosing.
async fn run_tagged_instance(env: &Env, uid: &str, retained: bool) -> String {
    let image = stackplane_tests::moto_image(&env.ec2).await;
    let tags = [
        ("ManagedBy", "stackplane"),
        ("stackplane.io/tenant", "gone-tenant"),
        ("stackplane.io/tenant-uid", uid),
        ("stackplane.io/platform", env.platform.as_str()),
        (
            "stackplane.io/retained",
            if retained { "true" } else { "false" },
        ),
    ];
    let mut spec = aws_sdk_ec2::types::TagSpecification::builder()
        .resource_type(aws_sdk_ec2::types::ResourceType::Instance);
    for (k, v) in tags {
        spec = spec.tags(aws_sdk_ec2::types::Tag::builder().key(k).value(v).build());
    }
    let out = env
        .ec2
        .run_instances()
        .image_id(image)
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .tag_specifications(spec.build())
        .send()
        .await
        .expect("RunInstances");
    out.instances()[0].instance_id().expect("id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collector_deletes_orphans_and_spares_live_and_retained() {
    let env = setup(Options::default()).await;
    let env = &env;
    // A tenant that exists (no controller of its shard runs): its instance is not an orphan.
    let live = Tenant::new(
        &unique("live"),
        TenantSpec::new(env.platform.clone(), "starter"),
    );
    let live = Api::<Tenant>::all(env.client.clone())
        .create(&PostParams::default(), &live)
        .await
        .expect("create live tenant");
    let live_uid = live.metadata.uid.clone().expect("uid");

    let gone_uid = unique("uid-gone");
    let orphan = run_tagged_instance(env, &gone_uid, false).await;
    let retained = run_tagged_instance(env, &gone_uid, true).await;
    let alive = run_tagged_instance(env, &live_uid, false).await;
    // A snapshot of the orphan's volume, made for a backup that no longer exists.
    let volume = env
        .ec2
        .describe_volumes()
        .filters(
            Filter::builder()
                .name("attachment.instance-id")
                .values(&orphan)
                .build(),
        )
        .send()
        .await
        .expect("DescribeVolumes")
        .volumes()[0]
        .volume_id()
        .expect("volume")
        .to_owned();
    let mut tags = aws_sdk_ec2::types::TagSpecification::builder()
        .resource_type(aws_sdk_ec2::types::ResourceType::Snapshot);
    for (k, v) in [
        ("ManagedBy", "stackplane"),
        ("stackplane.io/backup", "gone-backup"),
        ("stackplane.io/backup-uid", gone_uid.as_str()),
    ] {
        tags = tags.tags(aws_sdk_ec2::types::Tag::builder().key(k).value(v).build());
    }
    let snapshot = env
        .ec2
        .create_snapshot()
        .volume_id(&volume)
        .tag_specifications(tags.build())
        .send()
        .await
        .expect("CreateSnapshot")
        .snapshot_id()
        .expect("snapshot id")
        .to_owned();
    // A record with an ownership record naming the gone tenant.
    let host = unique("orphan");
    env.set_record(&host, "192.0.2.10").await;
    let owner = stackplane_core::cloud::dns::Ownership {
        tenant: "gone-tenant".into(),
        uid: gone_uid.clone(),
        retained: false,
        created: 1_000,
    };
    let txt = ResourceRecordSet::builder()
        .name(format!("_stackplane-owner.{host}.{}", env.domain))
        .r#type(RrType::Txt)
        .ttl(300)
        .resource_records(
            ResourceRecord::builder()
                .value(owner.value())
                .build()
                .expect("rr"),
        )
        .build()
        .expect("set");
    env.route53
        .change_resource_record_sets()
        .hosted_zone_id(&env.zone)
        .change_batch(
            ChangeBatch::builder()
                .changes(
                    Change::builder()
                        .action(ChangeAction::Create)
                        .resource_record_set(txt)
                        .build()
                        .expect("change"),
                )
                .build()
                .expect("batch"),
        )
        .send()
        .await
        .expect("ownership record");

    let lease = unique("lease");
    let l = lease.clone();
    env.spawn_controller_with(None, move |c| {
        c.gc.mode = GcMode::Delete;
        c.gc.interval = Duration::from_secs(1);
        c.gc.grace = Duration::from_secs(1);
        c.gc.regarding = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("coordination.k8s.io/v1".into()),
            kind: Some("Lease".into()),
            name: Some(l),
            namespace: Some("default".into()),
            ..Default::default()
        };
    })
    .await;

    let orphan = &orphan;
    eventually("orphaned instance terminated", 90, move || async move {
        matches!(
            state_of(env, orphan).await.as_deref(),
            Some("terminated" | "shutting-down")
        )
        .then_some(())
    })
    .await;
    let snapshot = &snapshot;
    eventually("orphaned snapshot deleted", 60, move || async move {
        let out = env
            .ec2
            .describe_snapshots()
            .filters(
                Filter::builder()
                    .name("snapshot-id")
                    .values(snapshot)
                    .build(),
            )
            .send()
            .await
            .ok()?;
        out.snapshots().is_empty().then_some(())
    })
    .await;
    let h = &host;
    eventually("orphaned record deleted", 60, move || async move {
        (env.record(h).await.is_none()
            && !env
                .owner_records()
                .await
                .iter()
                .any(|(n, _)| n.contains(h.as_str())))
        .then_some(())
    })
    .await;
    let live_ids: Vec<String> = env
        .instances_tagged("stackplane.io/platform", &env.platform)
        .await
        .iter()
        .filter_map(|i| i.instance_id().map(str::to_owned))
        .collect();
    assert!(
        live_ids.contains(&retained),
        "retained instance kept: {live_ids:?}"
    );
    assert!(
        live_ids.contains(&alive),
        "a live tenant's instance kept: {live_ids:?}"
    );

    // Each deletion is logged, counted and announced in the controller's namespace.
    let text = env.metrics.encode().expect("metrics");
    for kind in ["instance", "snapshot", "record"] {
        // Every (kind, action) series exists from 0: the deletions made these at least 1.
        let series =
            format!("stackplane_cloud_orphans_total{{kind=\"{kind}\",action=\"deleted\"}} ");
        let count: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} in {text}"));
        assert!(count >= 1, "{series}{count} in {text}");
    }
    let events = Api::<Event>::namespaced(env.client.clone(), "default")
        .list(&ListParams::default().fields(&format!("involvedObject.name={lease}")))
        .await
        .expect("events");
    let about = |id: &str| {
        events.items.iter().any(|e| {
            e.reason.as_deref() == Some("OrphanDeleted")
                && e.message.as_deref().is_some_and(|m| m.contains(id))
        })
    };
    assert!(
        about(orphan.as_str()),
        "an Event for the instance: {:?}",
        events.items
    );
    assert!(about(snapshot.as_str()), "an Event for the snapshot");
    assert!(about(host.as_str()), "an Event for the record");

    // Leave moto clean for the other tests.
    env.ec2
        .terminate_instances()
        .instance_ids(&retained)
        .instance_ids(&alive)
        .send()
        .await
        .expect("terminate");
}

/// The state of instance `id` as EC2 reports it.
async fn state_of(env: &Env, id: &str) -> Option<String> {
    let out = env
        .ec2
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .ok()?;
    let i = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .next()?;
    i.state()
        .and_then(|s| s.name())
        .map(|n| n.as_str().to_owned())
}

/// The reconciler's backup settings of the snapshot-before-terminate tests: backups are waited
/// for (long enough for moto, whose snapshots complete at once) and a failed one holds.
fn guarded(r: &mut ReconcileConfig) {
    r.final_backup_timeout = Duration::from_secs(120);
    r.final_backup_poll = Duration::from_secs(1);
    r.on_backup_failure = stackplane_core::tenant::deletion::OnBackupFailure::Hold;
}

async fn tenant_events(env: &Env, name: &str) -> Vec<Event> {
    Api::<Event>::all(env.client.clone())
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .expect("events")
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

/// A data volume of the tenant's instance besides its root volume (in its zone, attached).
async fn attach_data_volume(env: &Env, instance: &str) -> String {
    let zone = env
        .ec2
        .describe_instances()
        .instance_ids(instance)
        .send()
        .await
        .expect("DescribeInstances")
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find_map(|i| i.placement()?.availability_zone().map(str::to_owned))
        .expect("the instance's zone");
    let volume = env
        .ec2
        .create_volume()
        .availability_zone(zone)
        .size(5)
        .send()
        .await
        .expect("CreateVolume")
        .volume_id()
        .expect("volume id")
        .to_owned();
    env.ec2
        .attach_volume()
        .volume_id(&volume)
        .instance_id(instance)
        .device("/dev/sdf")
        .send()
        .await
        .expect("AttachVolume");
    volume
}

/// Issue 33: a downgrade from a dedicated tier to one without an instance terminates the
/// instance only after an EBS snapshot of every volume attached to it exists: at the moment
/// TerminateInstances is sent, EC2 holds a completed snapshot of the root and of the data
/// volume, tagged with the tenant's `pre-terminate` TenantBackup, which is Completed, lists
/// them, and outlives the instance; nothing is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downgrade_snapshots_every_volume_before_the_instance_terminates() {
    let env = setup(Options::default()).await;
    let env = &env;
    env.spawn_controller_full(None, |_| {}, guarded).await;
    let name = &env.create_tenant("starter", |_| {}).await;
    let t = env.cloud_ready(name).await;
    let uid = t.metadata.uid.clone().expect("uid");
    let instance = t.status.and_then(|s| s.instance).expect("instance").id;
    let data = attach_data_volume(env, &instance).await;
    let volumes = volumes_of(&env.ec2, &instance).await;
    assert_eq!(volumes.len(), 2, "root and data volume: {volumes:?}");
    assert!(volumes.contains(&data));

    env.patch_spec(name, json!({"tier": "shared"})).await;
    eventually(
        "instance terminated, tenant on the shared tier",
        90,
        move || async move {
            let t = env.tenant(name).await?;
            let ready = cloud_condition(&t).is_some_and(|c| c.status == "True");
            let recorded = t.status.as_ref()?.instance.is_some();
            (ready && !recorded && env.instances(name).await.is_empty()).then_some(())
        },
    )
    .await;

    let backup_name = stackplane_core::cloud::terminate::backup_name(name, &instance);
    // What EC2 held when the controller asked to terminate the instance.
    let seen = env.calls.at_termination.lock().expect("lock").clone();
    let at = seen
        .iter()
        .find(|t| t.instance == instance)
        .unwrap_or_else(|| panic!("TerminateInstances of {instance}: {seen:?}"));
    let at_volumes: Vec<&String> = at.volumes.iter().map(|(v, _)| v).collect();
    assert_eq!(at_volumes, volumes.iter().collect::<Vec<_>>());
    for (volume, snapshots) in &at.volumes {
        assert!(
            snapshots.iter().any(|(_, state, backup)| state == "completed"
                && backup.as_deref() == Some(backup_name.as_str())),
            "a completed snapshot of {volume} by {backup_name} before the termination: {snapshots:?}"
        );
    }

    // The snapshots outlive the instance, found by the backup's tag, one per volume.
    let out = env
        .ec2
        .describe_snapshots()
        .filters(
            Filter::builder()
                .name("tag:stackplane.io/backup")
                .values(&backup_name)
                .build(),
        )
        .send()
        .await
        .expect("DescribeSnapshots");
    let mut by_volume: Vec<(String, String)> = out
        .snapshots()
        .iter()
        .map(|s| {
            let tags: BTreeMap<&str, &str> = s
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?, t.value()?)))
                .collect();
            assert_eq!(tags.get("stackplane.io/tenant-uid"), Some(&uid.as_str()));
            assert_eq!(tags.get("stackplane.io/tenant"), Some(&name.as_str()));
            assert_eq!(tags.get("ManagedBy"), Some(&"stackplane"));
            (
                s.volume_id().unwrap_or_default().to_owned(),
                s.snapshot_id().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    by_volume.sort();
    assert_eq!(
        by_volume.iter().map(|(v, _)| v).collect::<Vec<_>>(),
        volumes.iter().collect::<Vec<_>>(),
        "one snapshot per volume"
    );

    let backup = Api::<stackplane_crds::TenantBackup>::all(env.client.clone())
        .get(&backup_name)
        .await
        .expect("the pre-terminate TenantBackup");
    assert_eq!(
        backup.spec.reason,
        stackplane_crds::BackupReason::PreTerminate
    );
    assert_eq!(backup.spec.instance.as_deref(), Some(instance.as_str()));
    assert_eq!(backup.spec.tenant, *name);
    assert!(
        backup.metadata.owner_references.is_none(),
        "owned by nothing"
    );
    assert_eq!(
        backup
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("stackplane.io/tenant")),
        Some(name)
    );
    let st = backup.status.expect("backup status");
    assert_eq!(st.phase, Some(stackplane_crds::BackupPhase::Completed));
    let mut parts: Vec<(String, String)> = st
        .parts
        .iter()
        .map(|p| {
            assert_eq!(p.kind, stackplane_crds::BackupPartKind::EbsSnapshot);
            assert_eq!(p.state, stackplane_crds::BackupPartState::Completed);
            (
                p.source.clone().unwrap_or_default(),
                p.id.clone().unwrap_or_default(),
            )
        })
        .collect();
    parts.sort();
    assert_eq!(parts, by_volume, "the backup lists exactly those snapshots");

    let t = env.tenant(name).await.expect("tenant");
    assert!(
        condition(&t, "DeletionHeld").is_none_or(|c| c.status == "False"),
        "nothing held: {:?}",
        condition(&t, "DeletionHeld")
    );
    let events = tenant_events(env, name).await;
    for reason in [
        "PreTerminateBackupRequested",
        "InstanceSnapshotted",
        "InstanceTerminated",
    ] {
        assert!(
            events.iter().any(|e| e.reason.as_deref() == Some(reason)),
            "an Event {reason}: {events:?}"
        );
    }
    // The shared tier's record points at the ingress.
    eventually("record moved to the ingress", 30, move || async move {
        (env.record(name).await
            == Some(("CNAME".to_owned(), vec!["lb-1.elb.example.net.".to_owned()])))
        .then_some(())
    })
    .await;
    // Leave moto clean for the other tests (the data volume was not DeleteOnTermination).
    env.ec2
        .delete_volume()
        .volume_id(&data)
        .send()
        .await
        .expect("DeleteVolume");
}

/// Issue 33: the instance's only volume deleted out from under its pre-terminate backup makes
/// EC2 refuse the snapshot: the backup ends Failed, and the downgrade's termination is held
/// (`DeletionHeld`, reason `PreTerminateBackupFailed`, one Warning Event, the metric) over any
/// number of reconciles, the instance running; the release annotation lets it go, and is used
/// up by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pre_terminate_backup_holds_the_termination_until_released() {
    let env = setup(Options::default()).await;
    let env = &env;
    env.spawn_controller_full(None, |_| {}, guarded).await;
    let name = &env.create_tenant("starter", |_| {}).await;
    let t = env.cloud_ready(name).await;
    let instance = &t.status.and_then(|s| s.instance).expect("instance").id;
    let volumes = volumes_of(&env.ec2, instance).await;
    assert_eq!(volumes.len(), 1, "the root volume: {volumes:?}");
    env.calls
        .delete_volume_before_snapshot
        .store(true, Ordering::SeqCst);

    env.patch_spec(name, json!({"tier": "shared"})).await;
    let held = eventually("termination held", 90, move || async move {
        let t = env.tenant(name).await?;
        condition(&t, "DeletionHeld").filter(|c| c.status == "True")
    })
    .await;
    let backup_name = stackplane_core::cloud::terminate::backup_name(name, instance);
    assert_eq!(held.reason, "PreTerminateBackupFailed");
    assert!(held.message.contains(&backup_name), "{}", held.message);
    let backup = Api::<stackplane_crds::TenantBackup>::all(env.client.clone())
        .get(&backup_name)
        .await
        .expect("the pre-terminate TenantBackup");
    let st = backup.status.expect("status");
    assert_eq!(st.phase, Some(stackplane_crds::BackupPhase::Failed));
    assert_eq!(st.parts.len(), 1);
    assert_eq!(st.parts[0].source.as_deref(), Some(volumes[0].as_str()));
    assert!(
        st.parts[0]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("InvalidVolume.NotFound")),
        "EC2's refusal: {:?}",
        st.parts[0]
    );
    assert_eq!(
        backup
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("stackplane.io/final-backup-outcome"))
            .map(String::as_str),
        Some("Failed")
    );

    // Held over further reconciles (1 s resync): the instance runs, nothing is terminated.
    let lookups = count(&env.calls.find_instances);
    eventually("three more reconciles", 30, move || async move {
        (count(&env.calls.find_instances) >= lookups + 3).then_some(())
    })
    .await;
    let found = env.instances(name).await;
    assert_eq!(found.len(), 1, "the instance is kept: {found:?}");
    assert_eq!(found[0].instance_id(), Some(instance.as_str()));
    assert!(env
        .calls
        .at_termination
        .lock()
        .expect("lock")
        .iter()
        .all(|t| t.instance != *instance));
    let t = env.tenant(name).await.expect("tenant");
    let st = t.status.clone().expect("status");
    assert_eq!(
        st.instance.as_ref().map(|i| i.id.as_str()),
        Some(instance.as_str()),
        "the status still names the kept instance"
    );
    let cloud = cloud_condition(&t).expect("CloudReady");
    assert_eq!(
        (cloud.status.as_str(), cloud.reason.as_str()),
        ("False", "TerminationHeld")
    );
    assert_eq!(
        metric(
            env,
            "stackplane_controller_deletions_held{reason=\"PreTerminateBackupFailed\"}"
        ),
        1.0
    );
    let events = tenant_events(env, name).await;
    let holds: Vec<_> = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("DeletionHeld"))
        .collect();
    assert_eq!(holds.len(), 1, "one DeletionHeld Event: {events:?}");
    assert_eq!(holds[0].type_.as_deref(), Some("Warning"));

    // A person releases it: the instance goes, the hold is lifted, the release is used up.
    Api::<Tenant>::all(env.client.clone())
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {
                "stackplane.io/release-deletion": "true"
            }}})),
        )
        .await
        .expect("release");
    let t = eventually("terminated after the release", 90, move || async move {
        let t = env.tenant(name).await?;
        let lifted = condition(&t, "DeletionHeld").is_some_and(|c| c.status == "False");
        let annotated = t
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key("stackplane.io/release-deletion"));
        (lifted && !annotated && env.instances(name).await.is_empty()).then_some(t)
    })
    .await;
    assert!(t.status.and_then(|s| s.instance).is_none());
    assert_eq!(
        metric(
            env,
            "stackplane_controller_deletions_held{reason=\"PreTerminateBackupFailed\"}"
        ),
        0.0
    );
    let released = tenant_events(env, name)
        .await
        .into_iter()
        .any(|e| e.reason.as_deref() == Some("DeletionReleased"));
    assert!(released, "the release is recorded in an Event");
}

/// Issue 33: the deletion of a dedicated tenant goes through the same gate: its instance is
/// terminated only once the instance's `pre-terminate` backup completed (snapshots of its
/// volume existing when TerminateInstances is sent), and that backup outlives the Tenant. (The
/// final backup's dump Job never runs in this cluster: it times out after 30 s and the operator's
/// `--on-backup-failure=delete` lets the deletion go on; the pre-terminate backup, whose
/// snapshots moto completes at once, finishes in one backup reconcile, far within the same
/// timeout, which is what makes it `Completed` rather than timed out on a loaded machine.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_dedicated_tenant_snapshots_its_instance_first() {
    let env = setup(Options::default()).await;
    let env = &env;
    env.spawn_controller_full(
        None,
        |_| {},
        |r| {
            r.final_backup_timeout = Duration::from_secs(30);
            r.final_backup_poll = Duration::from_secs(1);
        },
    )
    .await;
    let name = &env.create_tenant("starter", |_| {}).await;
    let t = env.cloud_ready(name).await;
    let instance = t.status.and_then(|s| s.instance).expect("instance").id;
    let volumes = volumes_of(&env.ec2, &instance).await;
    assert!(!volumes.is_empty());

    Api::<Tenant>::all(env.client.clone())
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete tenant");
    eventually("tenant gone", 120, move || async move {
        env.tenant(name).await.is_none().then_some(())
    })
    .await;
    assert!(env.instances(name).await.is_empty(), "instance terminated");

    let backup_name = stackplane_core::cloud::terminate::backup_name(name, &instance);
    let seen = env.calls.at_termination.lock().expect("lock").clone();
    let at = seen
        .iter()
        .find(|t| t.instance == instance)
        .unwrap_or_else(|| panic!("TerminateInstances of {instance}: {seen:?}"));
    for volume in &volumes {
        let snapshots = at
            .volumes
            .iter()
            .find(|(v, _)| v == volume)
            .map(|(_, s)| s.clone())
            .unwrap_or_default();
        assert!(
            snapshots
                .iter()
                .any(|(_, state, backup)| state == "completed"
                    && backup.as_deref() == Some(backup_name.as_str())),
            "a completed snapshot of {volume} by {backup_name} before the termination: {seen:?}"
        );
    }
    let backup = Api::<stackplane_crds::TenantBackup>::all(env.client.clone())
        .get(&backup_name)
        .await
        .expect("the pre-terminate backup outlives the Tenant");
    assert_eq!(
        backup.status.and_then(|s| s.phase),
        Some(stackplane_crds::BackupPhase::Completed)
    );
}
