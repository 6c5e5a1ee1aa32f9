//! Two controller processes sharing one Lease: only the holder reconciles; when it is killed,
//! the other takes over and finishes the work.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use kube::Client;
use stackplane_crds::{Platform, Tenant};
use stackplane_tests::{install_crds, kube_client, unique};

use stackplane_tests::TEST_SHARD_LABEL as SHARD;

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(identity: &str, lease: &str, shard: &str, log: &std::path::Path) -> Proc {
    let out = std::fs::File::create(log).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_stackplane-controller"))
        .args([
            "--metrics-listen",
            "127.0.0.1:0",
            "--lease-name",
            lease,
            "--lease-duration",
            "4",
            "--lease-grace",
            "1",
            "--identity",
            identity,
            "--tenant-selector",
            &format!("{SHARD}={shard}"),
        ])
        .env("RUST_LOG", "stackplane_controller=info")
        .stdout(Stdio::from(out.try_clone().expect("clone")))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("spawn controller");
    Proc(child)
}

async fn synced(c: &Client, name: &str) -> bool {
    Api::<Tenant>::all(c.clone())
        .get(name)
        .await
        .ok()
        .and_then(|t| t.status)
        .is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Synced" && c.status == "True")
        })
}

async fn holder(c: &Client, lease: &str) -> Option<String> {
    Api::<Lease>::namespaced(c.clone(), "default")
        .get(lease)
        .await
        .ok()?
        .spec?
        .holder_identity
}

async fn wait(what: &str, secs: u64, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_reconciles_and_the_other_takes_over() {
    let c = kube_client().await;
    install_crds(&c).await;
    let mut platform: Platform = stackplane_tests::example_platform("leadgen-pro.yaml");
    let pname = unique("plat");
    platform.metadata.name = Some(pname.clone());
    Api::<Platform>::all(c.clone())
        .create(&PostParams::default(), &platform)
        .await
        .expect("create platform");

    let shard = unique("shard");
    let lease = unique("lease");
    let dir = std::env::temp_dir().join(&shard);
    std::fs::create_dir_all(&dir).expect("dir");
    let (a, b) = (format!("a-{shard}"), format!("b-{shard}"));
    let mut procs = vec![
        (a.clone(), spawn(&a, &lease, &shard, &dir.join("a.log"))),
        (b.clone(), spawn(&b, &lease, &shard, &dir.join("b.log"))),
    ];
    wait("a lease holder", 30, async || {
        holder(&c, &lease).await.is_some()
    })
    .await;
    let first = stackplane_tests::create_sharded_tenant(&c, &pname, &shard).await;
    wait("first tenant Synced", 30, async || synced(&c, &first).await).await;
    let leader = holder(&c, &lease).await.expect("holder");
    let follower = if leader == a { b.clone() } else { a.clone() };
    let follower_log =
        std::fs::read_to_string(dir.join(format!("{}.log", &follower[..1]))).expect("follower log");
    assert!(
        !follower_log.contains(&first),
        "the follower must not reconcile: {follower_log}"
    );

    // Kill the leader (no lease release); the follower takes over within the lease duration.
    let idx = procs
        .iter()
        .position(|(id, _)| *id == leader)
        .expect("leader proc");
    let (_, mut dead) = procs.remove(idx);
    dead.0.kill().expect("kill leader");
    let _ = dead.0.wait();
    let second = stackplane_tests::create_sharded_tenant(&c, &pname, &shard).await;
    wait("second tenant Synced by the follower", 30, async || {
        synced(&c, &second).await
    })
    .await;
    assert_eq!(holder(&c, &lease).await, Some(follower));
}
