//! `kubectl-stackplane`: kubectl finds it on PATH as the `stackplane` plugin.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use kubectl_stackplane::api::{self, ApiTarget};
use kubectl_stackplane::error::{CliError, Result};
use kubectl_stackplane::ops::{self, RolloutAction};
use kubectl_stackplane::output::{shown, Format, Paint};
use kubectl_stackplane::{diff, status};
use stackplane_core::tenant::plan::{ControllerAccess, NetworkFlags, PlanOptions};

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-stackplane",
    bin_name = "kubectl stackplane",
    version,
    about = "Day-2 operations of stackplane tenants"
)]
struct Cli {
    /// Kubeconfig to use (default: KUBECONFIG, ~/.kube/config, or the in-cluster account).
    #[arg(long, global = true, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Seconds one Kubernetes request may take.
    #[arg(long, global = true, default_value_t = 30)]
    timeout: u64,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Text)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Phase, conditions, billing, objects and their health, cloud, last backups and Events.
    Status { tenant: String },
    /// What a reconcile would change now, as a unified diff (empty when in sync).
    Diff {
        tenant: String,
        #[command(flatten)]
        network: NetworkArgs,
        /// The controller's --service-account, its namespace and its --tenant-cluster-role:
        /// with them the diff covers the controller's RoleBinding in the tenant's namespace.
        #[arg(long, env = "STACKPLANE_SERVICE_ACCOUNT", requires_all = ["controller_namespace", "tenant_cluster_role"])]
        service_account: Option<String>,
        #[arg(
            long,
            env = "STACKPLANE_CONTROLLER_NAMESPACE",
            requires = "service_account"
        )]
        controller_namespace: Option<String>,
        #[arg(
            long,
            env = "STACKPLANE_TENANT_CLUSTER_ROLE",
            requires = "service_account"
        )]
        tenant_cluster_role: Option<String>,
    },
    /// Takes a manual backup of the tenant (a TenantBackup the controller carries out).
    Backup { tenant: String },
    /// Restores the tenant from one of its completed backups.
    Restore {
        tenant: String,
        #[arg(long = "from")]
        from: String,
    },
    /// The Events about a tenant, newest first; with --failed, the Stripe events that failed
    /// (through the api).
    Events {
        #[arg(required_unless_present = "failed")]
        tenant: Option<String>,
        #[arg(long, conflicts_with = "tenant")]
        failed: bool,
        /// How many failed events (newest first).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: u32,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Queues a stored Stripe event to be applied again (through the api).
    Replay {
        event: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Recreates the Tenant of a namespace left by a deletion of the Tenant CRD (from the
    /// namespace's stackplane.io/tenant-spec annotation); the controller adopts the stack as
    /// it is. NAMESPACE or TENANT: a namespace name, or the name of the tenant it belonged to.
    Adopt {
        #[arg(value_name = "NAMESPACE|TENANT")]
        target: String,
    },
    /// Holds a tenant (through the api): workloads scaled to zero and its dedicated instance
    /// stopped, whatever its subscription says, until released. Audit-logged.
    Hold {
        tenant: String,
        /// Why, in a word or two: abuse, dispute, legal (at most 64 characters).
        #[arg(long)]
        reason: String,
        /// Free text for the next person: a ticket, who asked.
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Releases a tenant's hold (through the api), whoever set it. Audit-logged.
    Release {
        tenant: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// What the cloud garbage collector found or deleted (its Events, newest first).
    Orphans {
        /// The controller's namespace (where its Lease is).
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        controller_namespace: String,
    },
    /// A Platform's rollout: where it stands, or pause, resume or roll it back.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Shell completions, e.g. `kubectl-stackplane completions bash > /etc/bash_completion.d/kubectl-stackplane`.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand, Debug)]
enum RolloutCommand {
    Status { platform: String },
    Pause { platform: String },
    Resume { platform: String },
    Rollback { platform: String },
}

/// The controller's network flags: the network policies are planned from them, so `diff` must
/// be given the controller's values (the same environment variables work).
#[derive(clap::Args, Debug)]
struct NetworkArgs {
    /// The controller's --ingress-namespace.
    #[arg(
        long,
        env = "STACKPLANE_INGRESS_NAMESPACE",
        default_value = stackplane_core::tenant::plan::DEFAULT_INGRESS_NAMESPACE
    )]
    ingress_namespace: String,
    /// The controller's --ingress-namespace-selector.
    #[arg(long, env = "STACKPLANE_INGRESS_NAMESPACE_SELECTOR")]
    ingress_namespace_selector: Option<String>,
    /// The controller's --cluster-cidrs.
    #[arg(long, env = "STACKPLANE_CLUSTER_CIDRS", value_delimiter = ',')]
    cluster_cidrs: Vec<String>,
    /// The controller's --backup-egress-cidrs.
    #[arg(long, env = "STACKPLANE_BACKUP_EGRESS_CIDRS", value_delimiter = ',')]
    backup_egress_cidrs: Vec<String>,
}

impl NetworkArgs {
    fn flags(&self) -> NetworkFlags {
        NetworkFlags {
            ingress_namespace: self.ingress_namespace.clone(),
            ingress_namespace_selector: self.ingress_namespace_selector.clone(),
            cluster_cidrs: self.cluster_cidrs.clone(),
            backup_egress_cidrs: self.backup_egress_cidrs.clone(),
        }
    }
}

#[derive(clap::Args, Debug)]
struct ApiArgs {
    /// The api's public address, e.g. https://api.example.com.
    #[arg(long, env = "STACKPLANE_API_URL")]
    api_url: Option<String>,
    /// The admin token.
    #[arg(long, env = "STACKPLANE_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(text) => {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(text.as_bytes());
        }
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(error.exit_code());
        }
    }
}

async fn client(cli: &Cli) -> Result<kube::Client> {
    let timeout = Duration::from_secs(cli.timeout.max(1));
    kubectl_stackplane::client::connect(cli.kubeconfig.as_deref(), timeout).await
}

async fn run(cli: Cli) -> Result<String> {
    let format = cli.output;
    match &cli.command {
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "kubectl-stackplane", &mut out);
            Ok(String::from_utf8_lossy(&out).into_owned())
        }
        Command::Replay { event, api } => {
            let target = ApiTarget {
                url: api.api_url.clone(),
                token: api.token.clone(),
            };
            let answer = api::replay(&target, event).await?;
            shown(format, format!("{}\n", answer), &answer)
        }
        Command::Hold {
            tenant,
            reason,
            note,
            api,
        } => {
            let target = ApiTarget {
                url: api.api_url.clone(),
                token: api.token.clone(),
            };
            let answer = api::hold(&target, tenant, reason, note.as_deref()).await?;
            shown(
                format,
                format!("tenant/{tenant} held ({reason})\n"),
                &answer,
            )
        }
        Command::Release { tenant, api } => {
            let target = ApiTarget {
                url: api.api_url.clone(),
                token: api.token.clone(),
            };
            let answer = api::release(&target, tenant).await?;
            shown(format, format!("tenant/{tenant} released\n"), &answer)
        }
        Command::Status { tenant } => {
            let client = client(&cli).await?;
            let report = status::gather(&client, tenant).await?;
            shown(
                format,
                status::render(&report, Paint::for_stdout()),
                &report,
            )
        }
        Command::Diff {
            tenant,
            network,
            service_account,
            controller_namespace,
            tenant_cluster_role,
        } => {
            let mut options = PlanOptions::from_flags(&network.flags())
                .map_err(|e| CliError::BadArgument(e.to_string()))?;
            options.controller_access =
                match (service_account, controller_namespace, tenant_cluster_role) {
                    (Some(sa), Some(ns), Some(role)) => Some(ControllerAccess {
                        service_account: sa.clone(),
                        namespace: ns.clone(),
                        cluster_role: role.clone(),
                    }),
                    _ => None,
                };
            let client = client(&cli).await?;
            diff::diff(&client, tenant, &options).await
        }
        Command::Backup { tenant } => {
            let client = client(&cli).await?;
            let name = ops::backup(&client, tenant).await?;
            Ok(format!("tenantbackup/{name} created\n"))
        }
        Command::Restore { tenant, from } => {
            let client = client(&cli).await?;
            let name = ops::restore(&client, tenant, from).await?;
            Ok(format!(
                "tenantbackup/{name} created (restore from {from})\n"
            ))
        }
        Command::Events {
            tenant: None,
            limit,
            api,
            ..
        } => {
            let target = ApiTarget {
                url: api.api_url.clone(),
                token: api.token.clone(),
            };
            let listed = api::failed_events(&target, *limit).await?;
            let text = listed["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    format!(
                        "{} {:<36} {:<32} attempts {} {}: {}\n",
                        e["receivedAt"].as_str().unwrap_or("-"),
                        e["id"].as_str().unwrap_or("-"),
                        e["type"].as_str().unwrap_or("-"),
                        e["attempts"],
                        e["errorKind"].as_str().unwrap_or("-"),
                        e["lastError"].as_str().unwrap_or("")
                    )
                })
                .collect();
            shown(format, text, &listed)
        }
        Command::Events {
            tenant: Some(tenant),
            ..
        } => {
            let client = client(&cli).await?;
            status::get_tenant(&client, tenant).await?;
            let events = status::tenant_events(&client, tenant).await?;
            let text = events
                .iter()
                .map(|e| {
                    format!(
                        "{} {:<8} {:<20} {}\n",
                        e.time.as_deref().unwrap_or("-"),
                        e.type_,
                        e.reason,
                        e.message
                    )
                })
                .collect();
            shown(format, text, &events)
        }
        Command::Adopt { target } => {
            let client = client(&cli).await?;
            let name = ops::adopt(&client, target).await?;
            Ok(format!(
                "tenant/{name} created: the controller adopts its namespace as it is\n"
            ))
        }
        Command::Orphans {
            controller_namespace,
        } => {
            let client = client(&cli).await?;
            let found = ops::orphans(&client, controller_namespace).await?;
            let text = if found.is_empty() {
                "no orphaned cloud resources reported\n".to_owned()
            } else {
                found
                    .iter()
                    .map(|o| {
                        format!(
                            "{} {:<18} {}\n",
                            o.time.as_deref().unwrap_or("-"),
                            o.reason,
                            o.message
                        )
                    })
                    .collect()
            };
            shown(format, text, &found)
        }
        Command::Rollout { command } => {
            let client = client(&cli).await?;
            let (platform, action) = match command {
                RolloutCommand::Status { platform } => {
                    let report = ops::rollout_status(&client, platform).await?;
                    return shown(format, ops::render_rollout(&report), &report);
                }
                RolloutCommand::Pause { platform } => (platform, RolloutAction::Pause),
                RolloutCommand::Resume { platform } => (platform, RolloutAction::Resume),
                RolloutCommand::Rollback { platform } => (platform, RolloutAction::Rollback),
            };
            ops::rollout_control(&client, platform, action).await?;
            Ok(format!("platform/{platform}: {action:?} requested\n"))
        }
    }
}
