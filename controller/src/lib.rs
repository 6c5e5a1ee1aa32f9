//! The stackplane controller: reconciles `Tenant`s into isolated per-customer stacks.

use std::net::SocketAddr;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::runtime::wait::Condition;
use kube::{Api, Client, ResourceExt};

pub mod aws;
pub mod backoff;
pub mod backup;
pub mod cloud;
pub mod controller;
pub mod crds;
pub mod error;
pub mod events;
pub mod health;
pub mod k8s;
pub mod kube_client;
pub mod leader;
pub mod metrics;
#[cfg(test)]
mod mock_api;
pub mod rollout;
pub mod telemetry;
pub mod tenant;

pub use controller::{run, Config};

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

    /// Namespace of the ingress controller; its pods may reach every tenant. Matched by its
    /// `kubernetes.io/metadata.name` label, which Kubernetes sets from 1.21 on (label it by
    /// hand on older clusters).
    #[arg(
        long,
        env = "STACKPLANE_INGRESS_NAMESPACE",
        default_value = stackplane_core::tenant::plan::DEFAULT_INGRESS_NAMESPACE
    )]
    pub ingress_namespace: String,

    /// The controller's own ServiceAccount (in POD_NAMESPACE). With --tenant-cluster-role, each
    /// tenant namespace gets a RoleBinding of that ClusterRole to it, applied before anything
    /// else there (the chart sets both). Unset: no binding (a controller holding every
    /// permission itself, e.g. cluster-admin in development).
    #[arg(
        long,
        env = "STACKPLANE_SERVICE_ACCOUNT",
        requires = "tenant_cluster_role"
    )]
    pub service_account: Option<String>,

    /// The ClusterRole of what the controller does inside a tenant namespace, bound there to
    /// --service-account (the controller's own ClusterRole must allow `bind` on it).
    #[arg(
        long,
        env = "STACKPLANE_TENANT_CLUSTER_ROLE",
        requires = "service_account"
    )]
    pub tenant_cluster_role: Option<String>,

    /// Label selector of the namespaces whose pods may reach every tenant (e.g.
    /// `app.kubernetes.io/name=ingress-nginx`); replaces --ingress-namespace.
    #[arg(long, env = "STACKPLANE_INGRESS_NAMESPACE_SELECTOR")]
    pub ingress_namespace_selector: Option<String>,

    /// The cluster's pod and service CIDRs (comma-separated): never reachable from tenants
    /// through a Platform's `internet: true` or a wider declared network.
    #[arg(long, env = "STACKPLANE_CLUSTER_CIDRS", value_delimiter = ',')]
    pub cluster_cidrs: Vec<String>,

    /// Networks stackplane's backup Jobs (pods labelled stackplane.io/backup) may reach from a
    /// tenant namespace (comma-separated CIDRs): the object store and the tenants' databases.
    #[arg(long, env = "STACKPLANE_BACKUP_EGRESS_CIDRS", value_delimiter = ',')]
    pub backup_egress_cidrs: Vec<String>,

    /// Reconcile only Tenants matching this label selector (sharding). Default: every Tenant.
    #[arg(long, env = "STACKPLANE_TENANT_SELECTOR")]
    pub tenant_selector: Option<String>,

    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "STACKPLANE_LEASE_NAME",
        default_value = "stackplane-controller"
    )]
    pub lease_name: String,

    /// The controller's own namespace: the leader-election Lease's, and its ServiceAccount's.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,

    /// Seconds the Lease stays valid without renewal: how long a dead leader blocks others.
    #[arg(long, env = "STACKPLANE_LEASE_DURATION", default_value_t = 15)]
    pub lease_duration: u64,

    /// Seconds before expiry at which the leader renews the Lease.
    #[arg(long, env = "STACKPLANE_LEASE_GRACE", default_value_t = 5)]
    pub lease_grace: u64,

    /// Identity of this replica in the Lease. Default: the pod (host) name and process id.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Cloud provider of dedicated instances and DNS records: `aws` (EC2 and Route53 through
    /// the SDK's standard chain: AWS_REGION, AWS_ENDPOINT_URL, credentials) or `none`.
    #[arg(long, env = "STACKPLANE_CLOUD_PROVIDER", value_enum, default_value_t = CloudProviderKind::Aws)]
    pub cloud_provider: CloudProviderKind,

    /// Address the DNS records of tenants without a dedicated instance point at: an IPv4
    /// address (A record) or a host name such as a load balancer's (CNAME). Unset: such
    /// tenants get no record.
    #[arg(long, env = "STACKPLANE_INGRESS_ADDRESS")]
    pub ingress_address: Option<cloud::IngressAddress>,

    /// Resync period in seconds: every Tenant is reconciled once per period, the tenants spread
    /// evenly over it (drift the watches missed is corrected by then).
    #[arg(long, env = "STACKPLANE_REQUEUE_SECONDS", default_value_t = 300)]
    pub requeue_seconds: u64,

    /// Seconds to wait for a tenant's final `pre-delete` backup (or an instance's
    /// `pre-terminate` backup) to finish; past them it counts as failed (the outcome is
    /// recorded on the backup and in an Event).
    #[arg(long, env = "STACKPLANE_FINAL_BACKUP_TIMEOUT", default_value_t = 1800)]
    pub final_backup_timeout: u64,

    /// What a final (or pre-terminate) backup that failed or timed out does to the tenant's
    /// deletion (or the instance's termination): `hold`
    /// (destroy nothing, condition DeletionHeld, until a person sets the annotation
    /// stackplane.io/release-deletion="true") or `delete` (destroy anyway, knowingly).
    #[arg(long, env = "STACKPLANE_ON_BACKUP_FAILURE", default_value = "hold")]
    pub on_backup_failure: stackplane_core::tenant::deletion::OnBackupFailure,

    /// Most tenants entering deletion within an hour whose cleanup may destroy data: beyond
    /// it, a deletion (oldest deletionTimestamp first, then name) waits, destroying nothing,
    /// with condition DeletionHeld (reason MassDeletion) until a person sets the annotation
    /// stackplane.io/release-deletion="true" on it. Counted from the Tenants' deletion
    /// timestamps (retention deletions included); 0 holds every one.
    #[arg(long, env = "STACKPLANE_MAX_DELETIONS_PER_HOUR", default_value_t = 10)]
    pub max_deletions_per_hour: u32,

    /// Image of the Job that dumps a tenant's database for a backup.
    #[arg(long, env = "STACKPLANE_BACKUP_DUMP_IMAGE", default_value_t = backup::database::DumpConfig::default().image)]
    pub backup_dump_image: String,

    /// Shell command of the dump Job; it sees STACKPLANE_TENANT, STACKPLANE_BACKUP, DUMP_DIR and
    /// the keys of the tenant's --backup-dump-secret.
    #[arg(long, env = "STACKPLANE_BACKUP_DUMP_COMMAND", default_value_t = backup::database::DumpConfig::default().command)]
    pub backup_dump_command: String,

    /// Secret in the tenant's namespace whose keys (e.g. DATABASE_URL) the dump Job sees.
    #[arg(long, env = "STACKPLANE_BACKUP_DUMP_SECRET", default_value_t = backup::database::DumpConfig::default().secret)]
    pub backup_dump_secret: String,

    /// VolumeSnapshotClass of backups' volume snapshots. Default: the cluster's default class.
    #[arg(long, env = "STACKPLANE_VOLUME_SNAPSHOT_CLASS")]
    pub volume_snapshot_class: Option<String>,

    /// What the leader does with cloud resources tagged ManagedBy=stackplane whose tenant (or,
    /// for snapshots, backup) no longer exists: `delete`, `report` (log, Event, metric only) or
    /// `off`. Resources of `deletionPolicy: Retain` tenants are never touched.
    #[arg(long, env = "STACKPLANE_CLOUD_GC", value_enum, default_value_t = cloud::gc::GcMode::Delete)]
    pub cloud_gc: cloud::gc::GcMode,

    /// Seconds between two passes of the cloud garbage collector.
    #[arg(long, env = "STACKPLANE_CLOUD_GC_INTERVAL", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub cloud_gc_interval: u64,

    /// Seconds an orphaned cloud resource must have existed before it is collected.
    #[arg(long, env = "STACKPLANE_CLOUD_GC_GRACE", default_value_t = 900)]
    pub cloud_gc_grace: u64,

    /// Roll out only the Platforms matching this label selector. Default: those matching
    /// --tenant-selector, or every Platform without one.
    #[arg(long, env = "STACKPLANE_ROLLOUT_PLATFORM_SELECTOR")]
    pub rollout_platform_selector: Option<String>,

    /// Seconds between two looks at a rollout in progress.
    #[arg(long, env = "STACKPLANE_ROLLOUT_POLL", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    pub rollout_poll: u64,

    /// Seconds a Kubernetes API request (other than a watch) may take before it fails.
    #[arg(long, env = "STACKPLANE_KUBE_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub kube_timeout: u64,

    /// Seconds one AWS operation may take, retries included.
    #[arg(long, env = "STACKPLANE_AWS_OPERATION_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub aws_operation_timeout: u64,

    /// Seconds one attempt of an AWS operation may take (connecting included).
    #[arg(long, env = "STACKPLANE_AWS_ATTEMPT_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub aws_attempt_timeout: u64,

    /// A one-off task instead of running the controller.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// `stackplane-controller`'s one-off tasks (without one, it runs the controller).
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// The CRDs built into this binary.
    #[command(subcommand)]
    Crds(CrdsCommand),
}

/// `stackplane-controller crds ...`
#[derive(clap::Subcommand, Debug, Clone)]
pub enum CrdsCommand {
    /// Server-side apply every CRD (create or update, never delete) and wait until each is
    /// Established: the chart's pre-install/pre-upgrade hook.
    Apply(CrdsApplyArgs),
}

/// Flags of `stackplane-controller crds apply`.
#[derive(clap::Args, Debug, Clone)]
pub struct CrdsApplyArgs {
    /// Apply even when a new schema lacks a property an installed CRD declares: the API server
    /// then prunes that field from every object written afterwards (a knowing downgrade).
    #[arg(long)]
    pub allow_field_removal: bool,

    /// Seconds each CRD may take to become Established once applied.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub establish_timeout: u64,
}

impl Args {
    /// The time limits of every AWS call.
    pub fn aws_timeouts(&self) -> aws::AwsTimeouts {
        aws::AwsTimeouts {
            operation: std::time::Duration::from_secs(self.aws_operation_timeout),
            attempt: std::time::Duration::from_secs(self.aws_attempt_timeout),
        }
    }

    /// The cloud step's settings (and the garbage collector's) around `provider`.
    pub fn cloud_settings(
        &self,
        provider: std::sync::Arc<dyn cloud::CloudProvider>,
    ) -> cloud::CloudSettings {
        let mut settings = cloud::CloudSettings::new(provider, self.ingress_address.clone());
        settings.gc.mode = self.cloud_gc;
        settings.gc.interval = std::time::Duration::from_secs(self.cloud_gc_interval);
        settings.gc.grace = std::time::Duration::from_secs(self.cloud_gc_grace);
        settings
    }

    /// The controller's access to tenant namespaces, when both of its flags are set.
    pub fn controller_access(&self) -> Option<stackplane_core::tenant::plan::ControllerAccess> {
        Some(stackplane_core::tenant::plan::ControllerAccess {
            service_account: self.service_account.clone()?,
            namespace: self.lease_namespace.clone(),
            cluster_role: self.tenant_cluster_role.clone()?,
        })
    }

    /// The network flags, as the plan reads them (the plugin's `diff` takes the same).
    pub fn network_flags(&self) -> stackplane_core::tenant::plan::NetworkFlags {
        stackplane_core::tenant::plan::NetworkFlags {
            ingress_namespace: self.ingress_namespace.clone(),
            ingress_namespace_selector: self.ingress_namespace_selector.clone(),
            cluster_cidrs: self.cluster_cidrs.clone(),
            backup_egress_cidrs: self.backup_egress_cidrs.clone(),
        }
    }

    /// The controller's configuration from the flags, or the flag that does not parse.
    pub fn config(&self) -> Result<Config, stackplane_core::tenant::plan::FlagError> {
        let identity = self.identity.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "stackplane-controller".to_owned());
            format!("{host}-{}", std::process::id())
        });
        let plan = stackplane_core::tenant::plan::PlanOptions::from_flags(&self.network_flags())?;
        Ok(Config {
            concurrency: self.concurrency,
            tenant_selector: self.tenant_selector.clone(),
            reconcile: tenant::ReconcileConfig {
                plan: stackplane_core::tenant::plan::PlanOptions {
                    controller_access: self.controller_access(),
                    ..plan
                },
                requeue: std::time::Duration::from_secs(self.requeue_seconds.max(1)),
                final_backup_timeout: std::time::Duration::from_secs(self.final_backup_timeout),
                on_backup_failure: self.on_backup_failure,
                max_deletions_per_hour: self.max_deletions_per_hour,
                backup: backup::BackupConfig {
                    concurrency: self.concurrency,
                    dump: backup::database::DumpConfig {
                        image: self.backup_dump_image.clone(),
                        command: self.backup_dump_command.clone(),
                        secret: self.backup_dump_secret.clone(),
                        ..Default::default()
                    },
                    volume_snapshot_class: self.volume_snapshot_class.clone(),
                    ..Default::default()
                },
                ..tenant::ReconcileConfig::default()
            },
            rollout: rollout::RolloutConfig {
                platform_selector: self.rollout_platform_selector.clone(),
                poll: std::time::Duration::from_secs(self.rollout_poll),
            },
            lease: leader::LeaseConfig {
                name: self.lease_name.clone(),
                namespace: self.lease_namespace.clone(),
                identity,
                duration_secs: self.lease_duration,
                grace_secs: self.lease_grace,
            },
        })
    }
}

/// Which cloud provider the controller uses.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudProviderKind {
    /// AWS: EC2 instances and Route53 records.
    Aws,
    /// No cloud resources: no instances, no DNS records, no `CloudReady` condition.
    None,
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
