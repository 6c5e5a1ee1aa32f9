//! Two controller processes sharing one Lease: only the holder reconciles; when it is killed,
//! the other takes over and finishes the work. And two elections started at the same moment on
//! a free Lease: never both leading.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use kube::Client;
use stackplane_controller::health::Health;
use stackplane_controller::leader::{elect, LeaseConfig};
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

/// Holds back each server-side apply this client sends (the request that takes a free Lease)
/// by `delay`, so that its replica applies on a stale read: it saw the Lease free, and the
/// other replica takes it in the meantime. On a loaded machine the same happens by chance.
#[derive(Clone, Copy)]
struct DelayApplies {
    delay: Duration,
}

impl<S> tower::Layer<S> for DelayApplies {
    type Service = Delayed<S>;

    fn layer(&self, inner: S) -> Delayed<S> {
        Delayed {
            inner,
            delay: self.delay,
        }
    }
}

#[derive(Clone)]
struct Delayed<S> {
    inner: S,
    delay: Duration,
}

impl<S, B> tower::Service<http::Request<B>> for Delayed<S>
where
    S: tower::Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let apply = req.method() == http::Method::PATCH
            && req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/apply-patch"));
        let delay = if apply { self.delay } else { Duration::ZERO };
        // The service that was polled ready goes with the call; a clone stays for the next.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            inner.call(req).await
        })
    }
}

/// A client whose server-side applies wait `delay` before they are sent.
async fn client_delaying_applies(delay: Duration) -> Client {
    let config = kube::Config::infer().await.expect("kubeconfig");
    kube::client::ClientBuilder::try_from(config)
        .expect("client")
        .with_layer(&tower::buffer::BufferLayer::new(64))
        .with_layer(&DelayApplies { delay })
        .build()
}

/// Two replicas that start together on a free Lease both try to take it. Each round starts two
/// elections at the same moment on a new Lease, the second one's applies held back by 300 ms,
/// so that it applies after the first has taken the Lease on what it read before. Both are
/// sampled every 10 ms for 2 s (past the loser's conflict backoff and its re-read): at no sample
/// may both lead, and at the end exactly one leads, the one the Lease names. Before each replica
/// had a field manager of its own, the late apply succeeded and both led (and
/// `only_the_leader_reconciles_...` failed so one run in several, both processes reconciling
/// one tenant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_never_both_lead() {
    let c = kube_client().await;
    let late = client_delaying_applies(Duration::from_millis(300)).await;
    for round in 0..5 {
        let lease = unique("lease");
        let config = |id: &str| LeaseConfig {
            name: lease.clone(),
            namespace: "default".into(),
            identity: format!("{id}-{lease}"),
            duration_secs: 15,
            grace_secs: 5,
        };
        let (a, b) = (config("a"), config("b"));
        let (ea, eb) = tokio::join!(
            elect(c.clone(), &a, Arc::new(Health::default())),
            elect(late.clone(), &b, Arc::new(Health::default())),
        );
        let (ea, eb) = (ea.expect("elect a"), eb.expect("elect b"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while tokio::time::Instant::now() < deadline {
            let both = *ea.is_leader.borrow() && *eb.is_leader.borrow();
            assert!(!both, "round {round}: both replicas lead {lease}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let leader = match (*ea.is_leader.borrow(), *eb.is_leader.borrow()) {
            (true, false) => a.identity.clone(),
            (false, true) => b.identity.clone(),
            other => panic!("round {round}: exactly one must lead after 2 s, got {other:?}"),
        };
        assert_eq!(holder(&c, &lease).await, Some(leader), "round {round}");
        drop((ea, eb));
    }
}
