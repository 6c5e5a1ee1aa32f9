//! Steps of the local demo (`make demo`, tests/demo.sh) that play Stripe and the kubelets: a
//! paying customer's signed Stripe events, and readiness reported as a node would. (moto is
//! read by tests/harness/moto_demo.py.) Every wait is bounded and says what it was waiting for
//! when it gives up.

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
    /// Sends a signed checkout.session.completed and customer.subscription.created for one
    /// customer to the api's webhook, and prints the tenant's name.
    Subscribe {
        #[arg(long)]
        api: String,
        #[arg(long, env = "STRIPE_WEBHOOK_SECRET", hide_env_values = true)]
        secret: String,
        #[arg(long)]
        platform: String,
        #[arg(long)]
        tier: String,
        #[arg(long)]
        price: String,
        #[arg(long)]
        customer: String,
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: String,
    },
    /// Waits until the tenant is Ready, reporting its Deployments available as kubelets would
    /// (the local control plane has no nodes).
    Ready {
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value_t = 180)]
        timeout_secs: u64,
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
        Cmd::Subscribe {
            api,
            secret,
            platform,
            tier,
            price,
            customer,
            email,
            name,
        } => {
            subscribe(
                &api, &secret, &platform, &tier, &price, &customer, &email, &name,
            )
            .await
        }
        Cmd::Ready {
            tenant,
            timeout_secs,
        } => ready(&tenant, Duration::from_secs(timeout_secs)).await,
    }
}

#[allow(clippy::too_many_arguments)]
async fn subscribe(
    api: &str,
    secret: &str,
    platform: &str,
    tier: &str,
    price: &str,
    customer: &str,
    email: &str,
    name: &str,
) -> anyhow::Result<()> {
    let t = chrono_now();
    let sub = format!("sub_{}", customer.trim_start_matches("cus_"));
    let checkout = json!({
        "id": format!("evt_demo_checkout_{}", t), "object": "event", "api_version": "2025-03-31.basil",
        "created": t, "livemode": false, "type": "checkout.session.completed",
        "data": {"object": {"id": format!("cs_test_demo_{t}"), "object": "checkout.session",
            "mode": "subscription", "customer": customer, "subscription": sub,
            "client_reference_id": "demo-user", "payment_status": "paid",
            "customer_details": {"email": email, "name": name},
            "metadata": {"platform": platform, "tier": tier}}}
    });
    let created = json!({
        "id": format!("evt_demo_subscription_{}", t), "object": "event", "api_version": "2025-03-31.basil",
        "created": t, "livemode": false, "type": "customer.subscription.created",
        "data": {"object": {"id": sub, "object": "subscription", "customer": customer,
            "status": "active", "metadata": {"platform": platform, "tier": tier},
            "items": {"object": "list", "data": [{"id": format!("si_demo_{t}"), "object": "subscription_item",
                "current_period_end": t + 30 * 86_400,
                "price": {"id": price, "object": "price"}}]}}}
    });
    let http = reqwest::Client::new();
    for event in [checkout, created] {
        let payload = event.to_string();
        let signature = stackplane_tests::stripe_signature(&payload, secret, chrono_now());
        let resp = http
            .post(format!("{api}/webhooks/stripe"))
            .header("content-type", "application/json")
            .header("Stripe-Signature", signature)
            .body(payload)
            .send()
            .await
            .with_context(|| format!("POST {api}/webhooks/stripe"))?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        eprintln!(
            "  {} {} -> {status} {body}",
            event["type"].as_str().unwrap_or_default(),
            event["id"].as_str().unwrap_or_default()
        );
        if !status.is_success() {
            bail!("the webhook refused the event");
        }
    }
    println!(
        "{}",
        stackplane_crds::naming::tenant_name(platform, customer)
    );
    Ok(())
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

async fn ready(name: &str, timeout: Duration) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("Kubernetes client")?;
    let tenants: Api<Tenant> = Api::all(client.clone());
    let deadline = Instant::now() + timeout;
    let mut last = String::from("the Tenant does not exist yet (is the billing worker running?)");
    while Instant::now() < deadline {
        if let Some(tenant) = tenants.get_opt(name).await? {
            let status = tenant.status.clone().unwrap_or_default();
            if status.phase == Some(TenantPhase::Ready) {
                eprintln!("  tenant {name} is Ready");
                return Ok(());
            }
            last = describe(&tenant);
            if let Some(ns) = &status.namespace {
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
