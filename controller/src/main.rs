//! `stackplane-controller`: reconciles Tenants into per-customer stacks.

use clap::Parser;
use stackplane_controller::{telemetry, Args};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(args.log_format);
    tracing::info!(
        metrics_listen = %args.metrics_listen,
        concurrency = args.concurrency,
        "starting stackplane-controller"
    );

    let client = kube::Client::try_default().await?;
    let version = client.apiserver_version().await?;
    tracing::info!(
        server_version = %version.git_version,
        "connected to Kubernetes"
    );
    // Refuse to run against a cluster without the CRDs rather than failing every watch later.
    stackplane_controller::require_crds(&client).await?;

    telemetry::shutdown_signal().await;
    tracing::info!("shutting down");
    Ok(())
}
