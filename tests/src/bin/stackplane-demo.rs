//! Steps of the local demo (`make demo`, tests/demo.sh) that play the kubelets: readiness
//! reported as a node would, and the tenant's name. (Stripe is played by localstripe through
//! tests/harness/stripe_driver.py, moto is read by tests/harness/moto_demo.py.) Every wait is
//! bounded and says what it was waiting for when it gives up.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;
use stackplane_crds::{Tenant, TenantPhase};

#[derive(Parser)]
#[command(name = "stackplane-demo", about = "Steps of the local stackplane demo")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Prints the name of the Tenant that billing gives a customer on a platform.
    TenantName {
        #[arg(long)]
        platform: String,
        #[arg(long)]
        customer: String,
    },
    /// Prints the name of a tenant's namespace.
    NamespaceName {
        #[arg(long)]
        tenant: String,
    },
    /// Waits until the tenant is Ready and billing has checked it against Stripe
    /// (`BillingSynced=True`). Without `--real-node` it reports the tenant's Deployments
    /// available as kubelets would (a control plane without nodes); with it, the node's
    /// kubelet and the readiness probes decide.
    Ready {
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value_t = 180)]
        timeout_secs: u64,
        #[arg(long)]
        real_node: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse().command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::TenantName { platform, customer } => {
            println!(
                "{}",
                stackplane_crds::naming::tenant_name(&platform, &customer)
            );
            Ok(())
        }
        Cmd::NamespaceName { tenant } => {
            println!("{}", stackplane_crds::naming::namespace_name(&tenant));
            Ok(())
        }
        Cmd::Ready {
            tenant,
            timeout_secs,
            real_node,
        } => ready(&tenant, Duration::from_secs(timeout_secs), real_node).await,
    }
}

async fn ready(name: &str, timeout: Duration, real_node: bool) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("Kubernetes client")?;
    let tenants: Api<Tenant> = Api::all(client.clone());
    let deadline = Instant::now() + timeout;
    let mut last = String::from("the Tenant does not exist yet (is the billing worker running?)");
    while Instant::now() < deadline {
        if let Some(tenant) = tenants.get_opt(name).await? {
            let status = tenant.status.clone().unwrap_or_default();
            let billing_synced = status
                .conditions
                .iter()
                .any(|c| c.type_ == "BillingSynced" && c.status == "True");
            if status.phase == Some(TenantPhase::Ready) && billing_synced {
                eprintln!("  tenant {name} is Ready and BillingSynced");
                return Ok(());
            }
            last = describe(&tenant);
            if let Some(ns) = status.namespace.as_ref().filter(|_| !real_node) {
                mark_available(&Api::<Deployment>::namespaced(client.clone(), ns)).await?;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bail!(
        "tenant {name} was not Ready after {}s; last seen: {last}",
        timeout.as_secs()
    )
}

/// Reports every Deployment available with its desired replicas, as a node would.
async fn mark_available(deployments: &Api<Deployment>) -> anyhow::Result<()> {
    for d in deployments.list(&ListParams::default()).await?.items {
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let have = d
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0);
        if want > 0 && have != want {
            let status = json!({"status": {"observedGeneration": d.metadata.generation,
                "replicas": want, "readyReplicas": want, "availableReplicas": want, "updatedReplicas": want}});
            deployments
                .patch_status(
                    &d.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&status),
                )
                .await?;
        }
    }
    Ok(())
}

fn describe(tenant: &Tenant) -> String {
    let Some(status) = &tenant.status else {
        return "no status yet (is the controller running?)".into();
    };
    let conditions: Vec<String> = status
        .conditions
        .iter()
        .filter(|c| c.status != "True" || c.type_ == "Ready")
        .map(|c| format!("{}={} ({}: {})", c.type_, c.status, c.reason, c.message))
        .collect();
    format!(
        "phase {:?}; {}",
        status.phase.map(|p| p.as_str()),
        conditions.join("; ")
    )
}
