//! `stackplane-controller`: reconciles Tenants into per-customer stacks.

use std::sync::Arc;

use clap::Parser;
use stackplane_controller::{metrics, telemetry, Args};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(args.log_format);
    // A network flag that does not parse stops the start, naming the flag.
    let mut config = args.config()?;
    // The one AWS client of the process (cloud step, backups, garbage collector); with
    // `--cloud-provider none` none is built, so no AWS call can be made.
    if args.cloud_provider == stackplane_controller::CloudProviderKind::Aws {
        let provider =
            stackplane_controller::cloud::aws::AwsProvider::from_env(args.aws_timeouts()).await;
        config.reconcile.cloud = Some(args.cloud_settings(Arc::new(provider)));
    }
    tracing::info!(
        metrics_listen = %args.metrics_listen,
        concurrency = args.concurrency,
        identity = %config.lease.identity,
        lease = %config.lease.name,
        cloud_provider = ?args.cloud_provider,
        cloud_gc = ?args.cloud_gc,
        cluster_cidrs = ?config.reconcile.plan.cluster_cidrs,
        backup_egress_cidrs = ?config.reconcile.plan.backup_egress_cidrs,
        "starting stackplane-controller"
    );

    let client = stackplane_controller::kube_client::build(std::time::Duration::from_secs(
        args.kube_timeout,
    ))
    .await?;
    let version = client.apiserver_version().await?;
    tracing::info!(
        server_version = %version.git_version,
        "connected to Kubernetes"
    );
    // Refuse to run against a cluster without the CRDs rather than failing every watch later.
    stackplane_controller::require_crds(&client).await?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait_stop = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let metrics = Arc::new(metrics::Metrics::new());
    let (bound, server) = metrics::serve(args.metrics_listen, metrics.clone(), wait_stop()).await?;
    tracing::info!(metrics_listen = %bound, "serving /metrics and /healthz");

    let mut controller = tokio::spawn(stackplane_controller::run(
        client,
        config,
        metrics,
        wait_stop(),
    ));
    // Either a signal asks for a shutdown, or the controller stops on its own: then the
    // process exits non-zero (after the reason is logged), so its supervisor restarts it.
    let ended_early = tokio::select! {
        _ = telemetry::shutdown_signal() => None,
        ended = &mut controller => Some(ended),
    };
    let result = match ended_early {
        None => {
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
            controller.await
        }
        Some(ended) => {
            let _ = stop_tx.send(true);
            ended
        }
    };
    let outcome = match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => {
            tracing::error!(%error, category = error.metric_label(), "the controller stopped; exiting");
            Err(anyhow::Error::new(error))
        }
        Err(error) => {
            tracing::error!(%error, "the controller task failed; exiting");
            Err(anyhow::Error::new(error))
        }
    };
    server.await?;
    outcome
}
