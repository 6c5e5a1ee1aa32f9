//! What the controller's integration tests share: the cluster set up for a test, and the
//! controller started in-process on the test's own shard, stopped when its guard is dropped.
//! Each test file includes it with `mod common;` (a directory module, so Cargo does not build it
//! as a test of its own).
//!
//! It lives here rather than in `stackplane_tests` because that crate must not depend on
//! `stackplane-controller`: the controller's tests would link two copies of it.

// Every test binary compiles this module on its own and uses only part of it: what one binary
// leaves unused is used by another.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;

use kube::Client;
use stackplane_controller::leader::{LeaderError, LeaseConfig};
use stackplane_controller::metrics::Metrics;
use stackplane_controller::rollout::RolloutConfig;
use stackplane_controller::tenant::ReconcileConfig;
use stackplane_tests::{install_crds, unique, TEST_SHARD_LABEL};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Logs at `log_filter` (the first call in a test binary wins), connects with `connect` (e.g.
/// `stackplane_tests::kube_client()`), installs the CRDs; the client and a new shard name.
pub async fn cluster(log_filter: &str, connect: impl Future<Output = Client>) -> (Client, String) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(log_filter)
        .try_init();
    let client = connect.await;
    install_crds(&client).await;
    (client, unique("shard"))
}

/// Stops what it was made for when dropped (or sent): the other half of [`Stop::new`].
pub struct Stop(Option<oneshot::Sender<()>>);

impl Stop {
    /// The guard, and the future to hand to what it stops (resolves once the guard is gone).
    pub fn new() -> (Stop, impl Future<Output = ()> + Send + 'static) {
        let (tx, rx) = oneshot::channel::<()>();
        (Stop(Some(tx)), async move {
            let _ = rx.await;
        })
    }
}

impl Drop for Stop {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            let _ = s.send(());
        }
    }
}

/// How [`Controller::start`] runs the controller; the closure passed to it edits these.
pub struct ControllerOptions {
    /// Most Tenants reconciled at once.
    pub concurrency: u16,
    pub reconcile: ReconcileConfig,
    pub rollout: RolloutConfig,
    /// A Lease of the test's own (named after the shard, in `default`, a unique identity,
    /// 6 s valid and renewed 2 s before expiry): no other test's controller competes for it.
    pub lease: LeaseConfig,
    pub metrics: Arc<Metrics>,
}

impl ControllerOptions {
    fn new(shard: &str) -> Self {
        ControllerOptions {
            concurrency: 2,
            reconcile: ReconcileConfig::default(),
            rollout: RolloutConfig::default(),
            lease: LeaseConfig {
                name: shard.to_owned(),
                namespace: "default".into(),
                identity: unique("test"),
                duration_secs: 6,
                grace_secs: 2,
            },
            metrics: Arc::new(Metrics::new()),
        }
    }
}

/// The whole controller (`stackplane_controller::run`: leader election, the Tenant controller,
/// the rollouts, and the backups while it leads), running in-process on the Tenants labelled
/// `TEST_SHARD_LABEL=<shard>` only. Dropping it stops it (it releases its Lease).
pub struct Controller {
    stop: Stop,
    task: JoinHandle<Result<(), LeaderError>>,
}

impl Controller {
    /// Starts a controller for `shard`, with the options `configure` leaves.
    pub fn start(
        client: &Client,
        shard: &str,
        configure: impl FnOnce(&mut ControllerOptions),
    ) -> Controller {
        let mut o = ControllerOptions::new(shard);
        configure(&mut o);
        let config = stackplane_controller::Config {
            concurrency: o.concurrency,
            tenant_selector: Some(format!("{TEST_SHARD_LABEL}={shard}")),
            reconcile: o.reconcile,
            rollout: o.rollout,
            lease: o.lease,
        };
        let (stop, stopped) = Stop::new();
        let task = tokio::spawn(stackplane_controller::run(
            client.clone(),
            config,
            o.metrics,
            stopped,
        ));
        Controller { stop, task }
    }

    /// Asks it to stop; its task, to await how it ended.
    pub fn stop(self) -> JoinHandle<Result<(), LeaderError>> {
        let Controller { stop, task } = self;
        drop(stop);
        task
    }

    /// Kills it as a crash would: its reconciles stop at their next await, and its Lease is not
    /// released.
    pub fn kill(&self) {
        self.task.abort();
    }

    /// Whether it has ended (it never does on its own while the test runs).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Its stop guard alone: it runs until that is dropped, and its end is not awaited.
    pub fn into_stop(self) -> Stop {
        self.stop
    }
}
