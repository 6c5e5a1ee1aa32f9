//! The controller binary, as it runs in production, against the real kube-apiserver and moto
//! (or a stand-in AWS endpoint): churn with SIGKILLs leaves nothing in AWS, a hung AWS endpoint
//! is bounded by the timeout flags, `--cloud-provider none` makes no AWS call at all.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use aws_sdk_route53::types::RrType;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use rand::{Rng, SeedableRng};
use serde_json::json;
use stackplane_crds::{
    BackupPartKind, BackupPartState, BackupPhase, BackupReason, Platform, Tenant, TenantBackup,
    TenantBackupSpec, TenantSpec,
};
use stackplane_tests::{
    aws_config, eventually_within as eventually, install_crds, kube_client, unique,
};

const SHARD: &str = "stackplane.io/test-shard";

/// A controller process; killed (SIGKILL) when dropped.
struct Proc {
    child: Child,
}

impl Proc {
    /// SIGKILL: no lease release, no cleanup, reconciles cut wherever they are.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Env {
    client: Client,
    shard: String,
    lease: String,
    platform: String,
    /// Bare id of the platform's hosted zone, when it has one.
    zone: Option<String>,
    logs: std::path::PathBuf,
}

/// A stackpro-business Platform of the test's own (with a `shared` tier without instance), in
/// a new moto hosted zone when `zone`. No volumes: the test cluster runs no pvc-protection
/// controller, so a namespace holding a claim would never finish terminating.
async fn setup(zone: bool) -> Env {
    let client = kube_client().await;
    install_crds(&client).await;
    let pname = unique("plat");
    let domain = format!("{pname}.stackplane.test");
    let mut platform: Platform = stackplane_tests::example_platform("stackpro-business.yaml");
    platform.metadata.name = Some(pname.clone());
    platform.spec.domain = domain.clone();
    platform.spec.hosted_zone_id = None;
    let mut bare_zone = None;
    let aws = aws_config().await;
    let ec2 = aws_sdk_ec2::Client::new(&aws);
    if zone {
        let route53 = aws_sdk_route53::Client::new(&aws);
        let id = route53
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
        bare_zone = Some(id.trim_start_matches("/hostedzone/").to_owned());
        platform.spec.hosted_zone_id = Some(id);
    }
    let image = stackplane_tests::moto_image(&ec2).await;
    stackplane_tests::cloud_test_platform(&mut platform, &image);
    Api::<Platform>::all(client.clone())
        .create(&PostParams::default(), &platform)
        .await
        .expect("create platform");
    let shard = unique("shard");
    let logs = std::env::temp_dir().join(&shard);
    std::fs::create_dir_all(&logs).expect("log dir");
    Env {
        client,
        shard,
        lease: unique("lease"),
        platform: pname,
        zone: bare_zone,
        logs,
    }
}

impl Env {
    /// Starts `stackplane-controller` for this test's shard, with `args` added and `envs` set.
    fn spawn(&self, n: usize, args: &[&str], envs: &[(&str, String)]) -> Proc {
        let log = self.logs.join(format!("controller-{n}.log"));
        eprintln!("controller {n} logs to {}", log.display());
        let out = std::fs::File::create(&log).expect("log file");
        let identity = format!("{}-{n}", self.shard);
        let selector = format!("{SHARD}={}", self.shard);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stackplane-controller"));
        cmd.args([
            "--metrics-listen",
            "127.0.0.1:0",
            "--lease-name",
            &self.lease,
            "--lease-duration",
            "3",
            "--lease-grace",
            "1",
            "--identity",
            &identity,
            "--tenant-selector",
            &selector,
            "--requeue-seconds",
            "2",
            // Deletion does not wait for the final backup (its dump Job never runs here), and
            // the operator knowingly lets it go ahead without one.
            "--final-backup-timeout",
            "0",
            "--on-backup-failure",
            "delete",
            // Twenty-four tenants are deleted at once on purpose: the mass-deletion guard is
            // the tenant tests' subject.
            "--max-deletions-per-hour",
            "1000",
        ])
        .args(args)
        .env("RUST_LOG", "stackplane_controller=info")
        .stdout(Stdio::from(out.try_clone().expect("clone")))
        .stderr(Stdio::from(out));
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Proc {
            child: cmd.spawn().expect("spawn controller"),
        }
    }

    async fn create_tenant(&self, tier: &str) -> String {
        let name = unique("tn");
        let mut t = Tenant::new(&name, TenantSpec::new(self.platform.clone(), tier));
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
}

fn condition(t: &Tenant, type_: &str) -> Option<Condition> {
    t.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

/// A TCP listener standing in for AWS: it accepts connections and never answers. Returns its
/// URL and the number of connections accepted so far.
async fn silent_endpoint() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            // Kept open, never read or written: a hung endpoint, not a refused one.
            held.push(socket);
        }
    });
    (url, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_aws_endpoint_is_bounded_and_other_tenants_reconcile() {
    let env = setup(false).await;
    let env = &env;
    let (url, accepted) = silent_endpoint().await;
    // Two reconcile slots: without time limits the first two cloud tenants would hold both
    // forever, and no other tenant would ever be reconciled.
    let _controller = env.spawn(
        0,
        &[
            "--concurrency",
            "2",
            "--aws-operation-timeout",
            "3",
            "--aws-attempt-timeout",
            "1",
            "--cloud-gc",
            "off",
        ],
        &[("AWS_ENDPOINT_URL", url)],
    );
    let mut dedicated = Vec::new();
    for _ in 0..4 {
        dedicated.push(env.create_tenant("starter").await);
    }
    let a = accepted.clone();
    eventually("AWS calls hanging on the endpoint", 60, move || {
        let a = a.clone();
        async move { (a.load(Ordering::SeqCst) >= 2).then_some(()) }
    })
    .await;
    let mut shared = Vec::new();
    for _ in 0..3 {
        shared.push(env.create_tenant("shared").await);
    }
    for name in &shared {
        eventually(
            &format!("{name} synced while AWS hangs"),
            90,
            move || async move {
                let t = env.tenant(name).await?;
                let synced = condition(&t, "Synced")?.status == "True";
                let cloud = condition(&t, "CloudReady")?.status == "True";
                (synced && cloud).then_some(())
            },
        )
        .await;
    }
    for name in &dedicated {
        let c = eventually(
            &format!("{name} reports the timeout"),
            90,
            move || async move {
                let t = env.tenant(name).await?;
                let c = condition(&t, "CloudReady")?;
                (c.status == "False" && c.reason == "CloudRetrying").then_some(c)
            },
        )
        .await;
        assert!(
            c.message.contains("Timeout") || c.message.contains("timed out"),
            "the condition says the call timed out: {}",
            c.message
        );
    }
    assert!(
        accepted.load(Ordering::SeqCst) >= 4,
        "the cloud tenants' calls went to the hung endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_provider_none_makes_no_aws_call_and_ebs_parts_are_unsupported() {
    let env = setup(false).await;
    let env = &env;
    // Where AWS calls would go: it counts every connection.
    let (url, accepted) = silent_endpoint().await;
    let _controller = env.spawn(
        0,
        &["--cloud-provider", "none"],
        &[("AWS_ENDPOINT_URL", url)],
    );
    let name = &env.create_tenant("starter").await;
    let t = eventually("tenant synced", 90, move || async move {
        let t = env.tenant(name).await?;
        (condition(&t, "Synced")?.status == "True").then_some(t)
    })
    .await;
    assert!(
        condition(&t, "CloudReady").is_none(),
        "no cloud step at all"
    );
    assert!(t.status.as_ref().and_then(|s| s.instance.clone()).is_none());

    // Paused, so no reconcile rewrites the status written next.
    Api::<Tenant>::all(env.client.clone())
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"paused": true}})),
        )
        .await
        .expect("pause");
    eventually("tenant paused", 60, move || async move {
        let t = env.tenant(name).await?;
        (condition(&t, "Paused")?.status == "True").then_some(())
    })
    .await;
    // An instance an earlier controller (with AWS) recorded: the backup would snapshot it.
    let status = json!({"status": {"instance": {"id": "i-0123456789abcdef0", "type": "t3.micro", "state": "running"}}});
    Api::<Tenant>::all(env.client.clone())
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch tenant status");
    let backup = unique("tb");
    let mut b = TenantBackup::new(
        &backup,
        TenantBackupSpec {
            tenant: name.clone(),
            reason: BackupReason::Manual,
            restore: None,
            instance: None,
        },
    );
    b.metadata.labels = Some([(SHARD.to_owned(), env.shard.clone())].into());
    Api::<TenantBackup>::all(env.client.clone())
        .create(&PostParams::default(), &b)
        .await
        .expect("create backup");
    // The dump Job's outcome, as the node running it would set it.
    let jobs: Api<Job> = Api::namespaced(env.client.clone(), &format!("tenant-{name}"));
    let b2 = &backup;
    let job = eventually("the dump job", 60, || {
        let jobs = jobs.clone();
        async move {
            jobs.list(&ListParams::default().labels(&format!("stackplane.io/backup={b2}")))
                .await
                .ok()?
                .items
                .into_iter()
                .next()
        }
    })
    .await;
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let done = json!({"status": {"startTime": now, "succeeded": 1, "conditions": [{"type": "Complete", "status": "True", "reason": "Completed", "lastProbeTime": now, "lastTransitionTime": now}]}});
    jobs.patch_status(
        &job.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&done),
    )
    .await
    .expect("patch job status");
    let finished = eventually("backup finished", 60, move || async move {
        let b = Api::<TenantBackup>::all(env.client.clone())
            .get_opt(b2)
            .await
            .ok()??;
        b.status
            .clone()?
            .phase
            .filter(|p| p.is_finished())
            .map(|_| b)
    })
    .await;
    let st = finished.status.expect("status");
    assert_eq!(st.phase, Some(BackupPhase::PartiallyFailed), "{st:?}");
    let ebs = st
        .parts
        .iter()
        .find(|p| p.kind == BackupPartKind::EbsSnapshot)
        .expect("an EBS part");
    assert_eq!(ebs.state, BackupPartState::Unsupported);
    assert!(
        ebs.message
            .as_deref()
            .is_some_and(|m| m.contains("--cloud-provider none")),
        "{ebs:?}"
    );
    assert!(st
        .parts
        .iter()
        .any(|p| p.kind == BackupPartKind::Database && p.state == BackupPartState::Completed));
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "no connection to the AWS endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_with_two_sigkills_leaves_nothing_in_aws() {
    let env = setup(true).await;
    let env = &env;
    let zone = env.zone.clone().expect("zone");
    let aws = aws_config().await;
    let ec2 = aws_sdk_ec2::Client::new(&aws);
    let route53 = aws_sdk_route53::Client::new(&aws);
    let seed: u64 = std::env::var("CHURN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("churn seed {seed} (CHURN_SEED={seed} repeats this run)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let delays: Vec<u64> = (0..24).map(|_| rng.gen_range(0..=3000)).collect();
    let kills: [u64; 2] = [rng.gen_range(1000..=3000), rng.gen_range(4000..=6000)];
    let args = [
        "--ingress-address",
        "lb-1.elb.example.net",
        "--cloud-gc-interval",
        "2",
        "--cloud-gc-grace",
        "3",
    ];
    let mut controller = env.spawn(0, &args, &[]);
    let started = tokio::time::Instant::now();

    let tenants: Api<Tenant> = Api::all(env.client.clone());
    let names = futures::future::join_all(delays.iter().enumerate().map(|(i, delay)| {
        let tenants = tenants.clone();
        async move {
            // Every third tenant shared (record only), the others dedicated (instance too).
            let tier = if i % 3 == 0 { "shared" } else { "starter" };
            tokio::time::sleep(Duration::from_millis(i as u64 * 150)).await;
            let name = env.create_tenant(tier).await;
            tokio::time::sleep(Duration::from_millis(*delay)).await;
            tenants
                .delete(&name, &DeleteParams::default())
                .await
                .expect("delete tenant");
            name
        }
    }));
    let killer = async {
        for (n, at) in kills.iter().enumerate() {
            tokio::time::sleep_until(started + Duration::from_millis(*at)).await;
            controller.kill();
            eprintln!("controller {n} SIGKILLed at {at} ms");
            controller = env.spawn(n + 1, &args, &[]);
        }
    };
    let (names, ()) = futures::join!(names, killer);

    for name in &names {
        eventually(&format!("{name} gone"), 180, move || async move {
            env.tenant(name).await.is_none().then_some(())
        })
        .await;
    }
    // The final backups outlive their tenants (their snapshots are the customers' data);
    // their retention over, they go, and their snapshots with them.
    let backups: Api<TenantBackup> = Api::all(env.client.clone());
    let ours = backups
        .list(&ListParams::default().labels(&format!("{SHARD}={}", env.shard)))
        .await
        .expect("list backups");
    for b in &ours.items {
        backups
            .delete(&b.name_any(), &DeleteParams::default())
            .await
            .expect("delete backup");
    }
    for b in &ours.items {
        let name = b.name_any();
        eventually(&format!("backup {name} gone"), 120, || {
            let backups = backups.clone();
            let name = name.clone();
            async move { backups.get_opt(&name).await.ok()?.is_none().then_some(()) }
        })
        .await;
    }

    // Nothing of these tenants is left in moto, asked directly (after the garbage collector
    // has had its passes: every 2 s, for what is older than 3 s).
    let ec2 = &ec2;
    let route53 = &route53;
    let zone = &zone;
    let names = &names;
    let left = eventually("nothing left in moto", 120, move || async move {
        let instances = ec2
            .describe_instances()
            .filters(
                Filter::builder()
                    .name("tag:ManagedBy")
                    .values("stackplane")
                    .build(),
            )
            .filters(
                Filter::builder()
                    .name("tag:stackplane.io/platform")
                    .values(&env.platform)
                    .build(),
            )
            .send()
            .await
            .expect("DescribeInstances");
        let live: Vec<String> = instances
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| {
                !matches!(
                    i.state().and_then(|s| s.name()).map(|n| n.as_str()),
                    Some("terminated" | "shutting-down")
                )
            })
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .collect();
        let records: Vec<String> = route53
            .list_resource_record_sets()
            .hosted_zone_id(zone)
            .send()
            .await
            .expect("ListResourceRecordSets")
            .resource_record_sets()
            .iter()
            .filter(|s| matches!(s.r#type(), RrType::A | RrType::Cname | RrType::Txt))
            .map(|s| s.name().to_owned())
            .collect();
        let mut snapshots = Vec::new();
        for name in names {
            let out = ec2
                .describe_snapshots()
                .owner_ids("self")
                .filters(
                    Filter::builder()
                        .name("tag:stackplane.io/tenant")
                        .values(name)
                        .build(),
                )
                .send()
                .await
                .expect("DescribeSnapshots");
            snapshots.extend(
                out.snapshots()
                    .iter()
                    .filter_map(|s| s.snapshot_id().map(str::to_owned)),
            );
        }
        eprintln!("left: instances {live:?}, records {records:?}, snapshots {snapshots:?}");
        (live.is_empty() && records.is_empty() && snapshots.is_empty()).then_some(())
    })
    .await;
    let () = left;
}
