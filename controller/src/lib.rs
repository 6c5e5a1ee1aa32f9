//! The stackplane controller: reconciles `Tenant`s into isolated per-customer stacks.

use std::net::SocketAddr;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::runtime::wait::Condition;
use kube::{Api, Client, ResourceExt};

pub mod telemetry;

/// Flags of `stackplane-controller`, each with an environment fallback.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "stackplane-controller", version, about)]
pub struct Args {
    /// Address of the Prometheus metrics and health endpoints.
    #[arg(
        long,
        env = "STACKPLANE_METRICS_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    pub metrics_listen: SocketAddr,

    /// Most Tenants reconciled at the same time.
    #[arg(long, env = "STACKPLANE_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// Log format.
    #[arg(long, env = "STACKPLANE_LOG_FORMAT", value_enum, default_value_t = telemetry::LogFormat::Text)]
    pub log_format: telemetry::LogFormat,
}

/// Errors of the controller's start-up checks.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("CRD {name} is not installed or not Established; apply crds/ first")]
    CrdMissing { name: String },
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// Fails unless every stackplane CRD is installed and Established.
pub async fn require_crds(client: &Client) -> Result<(), StartupError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in stackplane_crds::all_crds() {
        let name = crd.name_any();
        let established = api.get_opt(&name).await?.is_some_and(|c| {
            kube::runtime::conditions::is_crd_established().matches_object(Some(&c))
        });
        if !established {
            return Err(StartupError::CrdMissing { name });
        }
    }
    Ok(())
}
