//! The dashboard and SRE API: tenant status from a reflector cache of Tenants, metrics, backups,
//! tenant-scoped tokens and the audit log of every state-changing call.

use std::future::Future;
use std::sync::Arc;

use kube::runtime::reflector::{self, store::Writer, Store};
use kube::Api;
use sqlx::PgPool;
use stackplane_crds::{Tenant, TenantBackup};
use tokio::sync::Mutex;

use crate::routes::RouteTable;

pub mod backups;
pub mod cache;
pub mod hold;
pub mod metrics;
pub mod quota;
pub mod rendered;
pub mod status;
pub mod tokens;

/// Default PromQL of a tenant's bandwidth: bytes sent and received by the pods of its
/// namespace over the window. `{namespace}`, `{tenant}` and `{window}` (e.g. `3600s`) are
/// replaced before the query runs.
pub const DEFAULT_BANDWIDTH_QUERY: &str = "sum(increase(container_network_transmit_bytes_total{namespace=\"{namespace}\"}[{window}])) + sum(increase(container_network_receive_bytes_total{namespace=\"{namespace}\"}[{window}]))";

/// Where tenant metrics come from, beyond Kubernetes and Postgres.
#[derive(clap::Args, Debug, Clone)]
pub struct MetricsSourceArgs {
    /// Base URL of the Prometheus HTTP API that bandwidth is read from (e.g.
    /// `http://prometheus.monitoring:9090`). Without it, bandwidth is reported as unavailable.
    #[arg(long, env = "STACKPLANE_PROMETHEUS_URL")]
    pub prometheus_url: Option<String>,
    /// PromQL template of a tenant's bandwidth in bytes over the window; `{namespace}`,
    /// `{tenant}` and `{window}` are substituted.
    #[arg(long, env = "STACKPLANE_BANDWIDTH_QUERY", default_value = DEFAULT_BANDWIDTH_QUERY)]
    pub bandwidth_query: String,
}

impl Default for MetricsSourceArgs {
    fn default() -> Self {
        Self {
            prometheus_url: None,
            bandwidth_query: DEFAULT_BANDWIDTH_QUERY.to_owned(),
        }
    }
}

/// What the tenant API's handlers share.
#[derive(Clone)]
pub struct TenantApi {
    pub db: PgPool,
    pub kube: kube::Client,
    /// Every Tenant, kept current by a watch: status reads never reach the API server.
    pub tenants: Store<Tenant>,
    /// Every TenantBackup, kept current by a watch.
    pub backups: Store<TenantBackup>,
    pub bandwidth: Option<Arc<metrics::BandwidthSource>>,
    /// Daily backups and restores a tenant token may ask for.
    pub cost_limits: quota::CostLimitArgs,
    /// The status view of each tenant as last rendered, by version.
    pub rendered: rendered::RenderedViews,
}

/// The watches that keep the caches and Postgres records current (Tenant watch → status
/// history, TenantBackup watch → backup records). Each can be started again after it ended
/// (the supervisor does): the cache's writer is shared, and a new watch starts with a fresh
/// list that replaces the cache's content.
pub struct Watches {
    db: PgPool,
    kube: kube::Client,
    tenants: Arc<Mutex<Writer<Tenant>>>,
    backups: Arc<Mutex<Writer<TenantBackup>>>,
}

impl Watches {
    /// One run of the Tenant watch.
    pub fn tenants(&self) -> impl Future<Output = ()> + Send + 'static {
        cache::watch_tenants(
            Api::all(self.kube.clone()),
            self.tenants.clone(),
            self.db.clone(),
        )
    }

    /// One run of the TenantBackup watch.
    pub fn backups(&self) -> impl Future<Output = ()> + Send + 'static {
        cache::watch_backups(
            Api::all(self.kube.clone()),
            self.backups.clone(),
            self.db.clone(),
        )
    }

    /// Both watches, once, unsupervised (tests, benchmarks).
    pub fn run(self) -> impl Future<Output = ()> + Send + 'static {
        let tenants = self.tenants();
        let backups = self.backups();
        async move {
            tokio::join!(tenants, backups);
        }
    }
}

impl TenantApi {
    /// Builds the API state and the watches that keep its caches current. The watches must be
    /// run; [`TenantApi::ready`] waits for the first lists.
    pub fn start(db: PgPool, kube: kube::Client, source: MetricsSourceArgs) -> (Self, Watches) {
        let (tenants, tenant_writer) = reflector::store();
        let (backups, backup_writer) = reflector::store();
        let bandwidth = source
            .prometheus_url
            .filter(|u| !u.trim().is_empty())
            .map(|url| Arc::new(metrics::BandwidthSource::new(url, source.bandwidth_query)));
        let watches = Watches {
            db: db.clone(),
            kube: kube.clone(),
            tenants: Arc::new(Mutex::new(tenant_writer)),
            backups: Arc::new(Mutex::new(backup_writer)),
        };
        let api = Self {
            db,
            kube,
            tenants,
            backups,
            bandwidth,
            cost_limits: quota::CostLimitArgs::default(),
            rendered: rendered::RenderedViews::default(),
        };
        (api, watches)
    }

    /// Waits until both caches hold their first list. False if a watch ended first.
    pub async fn ready(&self) -> bool {
        self.tenants.wait_until_ready().await.is_ok()
            && self.backups.wait_until_ready().await.is_ok()
    }
}

/// The routes of the tenant API, all behind authentication (added by the server). Their state
/// is shared behind one `Arc`: axum clones a route's state for every request, and a
/// `TenantApi` holds a Kubernetes client, a pool and two caches.
pub fn routes(table: RouteTable<Arc<TenantApi>>) -> RouteTable<Arc<TenantApi>> {
    table
        .get("/api/v1/tenants", status::list_tenants)
        .get("/api/v1/tenants/{name}", status::get_tenant)
        .get("/api/v1/platforms/{name}/summary", status::platform_summary)
        .get("/api/v1/platforms/{name}/rollout", status::platform_rollout)
        .get("/api/v1/tenants/{name}/metrics", metrics::tenant_metrics)
        .get("/api/v1/tenants/{name}/backups", backups::list_backups)
        .post("/api/v1/tenants/{name}/backups", backups::create_backup)
        .post(
            "/api/v1/tenants/{name}/backups/{backup}/restore",
            backups::restore_backup,
        )
        .put("/api/v1/tenants/{name}/hold", hold::set_hold)
        .delete("/api/v1/tenants/{name}/hold", hold::release_hold)
        .post("/api/v1/tenants/{name}/tokens", tokens::issue_token)
        .get("/api/v1/tenants/{name}/tokens", tokens::list_tokens)
        .delete("/api/v1/tenants/{name}/tokens/{id}", tokens::revoke_token)
}
