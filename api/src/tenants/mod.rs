//! The dashboard and SRE API: tenant status from a reflector cache of Tenants, metrics, backups,
//! tenant-scoped tokens and the audit log of every state-changing call.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use kube::runtime::reflector::{self, Store};
use kube::Api;
use sqlx::PgPool;
use stackplane_crds::{Tenant, TenantBackup};

use crate::audit::AuditState;
use crate::caller::Authenticator;

pub mod backups;
pub mod cache;
pub mod metrics;
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
    pub auth: Authenticator,
    /// Every Tenant, kept current by a watch: status reads never reach the API server.
    pub tenants: Store<Tenant>,
    /// Every TenantBackup, kept current by a watch.
    pub backups: Store<TenantBackup>,
    pub bandwidth: Option<Arc<metrics::BandwidthSource>>,
}

impl FromRef<TenantApi> for Authenticator {
    fn from_ref(api: &TenantApi) -> Self {
        api.auth.clone()
    }
}

impl FromRef<TenantApi> for AuditState {
    fn from_ref(api: &TenantApi) -> Self {
        AuditState {
            db: api.db.clone(),
            auth: api.auth.clone(),
        }
    }
}

impl TenantApi {
    /// Builds the API state and the future that keeps its caches and Postgres records current
    /// (Tenant watch → status history, TenantBackup watch → backup records). The future must
    /// be spawned; [`TenantApi::ready`] waits for the first lists.
    pub fn start(
        db: PgPool,
        kube: kube::Client,
        admin_token: &str,
        source: MetricsSourceArgs,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (tenants, tenant_writer) = reflector::store();
        let (backups, backup_writer) = reflector::store();
        let bandwidth = source
            .prometheus_url
            .filter(|u| !u.trim().is_empty())
            .map(|url| Arc::new(metrics::BandwidthSource::new(url, source.bandwidth_query)));
        let driver = {
            let tenants = cache::watch_tenants(Api::all(kube.clone()), tenant_writer, db.clone());
            let backups = cache::watch_backups(Api::all(kube.clone()), backup_writer, db.clone());
            async move {
                tokio::join!(tenants, backups);
            }
        };
        let api = Self {
            auth: Authenticator::new(admin_token, db.clone()),
            db,
            kube,
            tenants,
            backups,
            bandwidth,
        };
        (api, driver)
    }

    /// Waits until both caches hold their first list. False if a watch ended first.
    pub async fn ready(&self) -> bool {
        self.tenants.wait_until_ready().await.is_ok()
            && self.backups.wait_until_ready().await.is_ok()
    }
}

/// The routes of the tenant API, `/readyz` and `/openapi.json`.
pub fn router(api: TenantApi) -> Router {
    let audited = Router::new()
        .route("/api/v1/tenants", get(status::list_tenants))
        .route("/api/v1/tenants/{name}", get(status::get_tenant))
        .route(
            "/api/v1/platforms/{name}/summary",
            get(status::platform_summary),
        )
        .route(
            "/api/v1/tenants/{name}/metrics",
            get(metrics::tenant_metrics),
        )
        .route(
            "/api/v1/tenants/{name}/backups",
            get(backups::list_backups).post(backups::create_backup),
        )
        .route(
            "/api/v1/tenants/{name}/backups/{backup}/restore",
            post(backups::restore_backup),
        )
        .route(
            "/api/v1/tenants/{name}/tokens",
            post(tokens::issue_token).get(tokens::list_tokens),
        )
        .route(
            "/api/v1/tenants/{name}/tokens/{id}",
            delete(tokens::revoke_token),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            AuditState::from_ref(&api),
            crate::audit::audit,
        ));
    audited
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(crate::openapi::serve))
        .with_state(api)
}

/// Readiness of one dependency.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ok`, or why the database cannot be used.
    pub database: String,
    /// `ok`, or why the Kubernetes API server cannot be reached.
    pub kubernetes: String,
}

const READY_TIMEOUT: Duration = Duration::from_secs(3);

/// Ready when the database answers a query and the Kubernetes API server answers `/version`.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn readyz(State(api): State<TenantApi>) -> impl IntoResponse {
    let database =
        match tokio::time::timeout(READY_TIMEOUT, sqlx::query("SELECT 1").execute(&api.db)).await {
            Ok(Ok(_)) => "ok".to_owned(),
            Ok(Err(error)) => format!("unreachable: {error}"),
            Err(_) => "unreachable: timed out".to_owned(),
        };
    let kubernetes = match tokio::time::timeout(READY_TIMEOUT, api.kube.apiserver_version()).await {
        Ok(Ok(_)) => "ok".to_owned(),
        Ok(Err(error)) => format!("unreachable: {error}"),
        Err(_) => "unreachable: timed out".to_owned(),
    };
    let status = if database == "ok" && kubernetes == "ok" {
        StatusCode::OK
    } else {
        tracing::warn!(%database, %kubernetes, "not ready");
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            database,
            kubernetes,
        }),
    )
}
