//! Prometheus metrics of the controller and the HTTP server that exposes them (`/metrics`,
//! `/healthz`, which answers from `crate::health`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use stackplane_crds::TenantPhase;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HoldLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceStateLabels {
    state: String,
}

/// How many tenants are in each state, kept by deltas: a change sets only the two series it
/// touches (a full count per reconcile was a scan of every tenant, 10,000 at a time).
struct Tally<L> {
    family: Family<L, Gauge>,
    label: fn(&str) -> L,
    current: Mutex<HashMap<String, String>>,
}

impl<L> Tally<L>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    fn new(label: fn(&str) -> L) -> Self {
        Tally {
            family: Family::default(),
            label,
            current: Mutex::new(HashMap::new()),
        }
    }

    /// Records `tenant` in `state` (`None`: in none, e.g. gone).
    fn set(&self, tenant: &str, state: Option<&str>) {
        let Ok(mut current) = self.current.lock() else {
            return;
        };
        let before = match state {
            // Unchanged (most reconciles): nothing to count again.
            Some(s) if current.get(tenant).map(String::as_str) == Some(s) => return,
            Some(s) => current.insert(tenant.to_owned(), s.to_owned()),
            None => current.remove(tenant),
        };
        for (s, delta) in [(before.as_deref(), -1), (state, 1)] {
            if let Some(s) = s {
                self.family.get_or_create(&(self.label)(s)).inc_by(delta);
            }
        }
    }
}

/// The phases a TenantBackup ends in.
pub const FINISHED_BACKUP_PHASES: [&str; 3] = ["Completed", "PartiallyFailed", "Failed"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RolloutLabels {
    platform: String,
    revision: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OrphanLabels {
    kind: String,
    action: String,
}

/// The controller's metrics.
pub struct Metrics {
    registry: Registry,
    /// Metrics named without the controller's prefix (`stackplane_cloud_…`): what the cloud
    /// garbage collector found, a figure about the AWS account rather than this process.
    cloud_registry: Registry,
    cloud_orphans: Family<OrphanLabels, Counter>,
    reconciles: Counter,
    reconcile_duration: Histogram,
    errors: Family<ErrorLabels, Counter>,
    tenants: Tally<PhaseLabels>,
    cloud_instances: Tally<InstanceStateLabels>,
    deletions_held: Tally<HoldLabels>,
    tenants_orphaned: Counter,
    creation_to_ready: Histogram,
    leader: Gauge,
    rollout_tenants: Family<RolloutLabels, Gauge>,
    backups_finished: Family<PhaseLabels, Counter>,
    /// The revision each platform's rollout series are labelled with (old series are removed).
    rollout_revisions: Mutex<HashMap<String, String>>,
    health: Arc<crate::health::Health>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the prefix `stackplane_controller`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("stackplane_controller");
        let reconciles = Counter::default();
        registry.register("reconciles", "Tenant reconciles run", reconciles.clone());
        let reconcile_duration =
            Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]);
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one Tenant reconcile",
            reconcile_duration.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed Tenant reconciles by error category",
            errors.clone(),
        );
        let tenants = Tally::new(|phase| PhaseLabels {
            phase: phase.to_owned(),
        });
        registry.register(
            "tenants",
            "Tenants this controller reconciled, by phase",
            tenants.family.clone(),
        );
        // Crossplane-style buckets: provisioning takes seconds to many minutes.
        let creation_to_ready = Histogram::new([
            1.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
        ]);
        registry.register(
            "tenant_creation_to_ready_seconds",
            "Time from a Tenant's creation until it first became Ready",
            creation_to_ready.clone(),
        );
        registry.register(
            "kube_requests",
            "Requests (not watches) sent to the Kubernetes API server",
            crate::kube_client::REQUESTS.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        let rollout_tenants = Family::<RolloutLabels, Gauge>::default();
        registry.register(
            "rollout_tenants",
            "Tenants of a platform's rollout by state (old, moving, healthy, failed, pinned), \
             for the revision being rolled out",
            rollout_tenants.clone(),
        );
        let backups_finished = Family::<PhaseLabels, Counter>::default();
        registry.register(
            "backups_finished",
            "TenantBackups (backups and restores) that reached a final phase, by phase \
             (Completed, PartiallyFailed, Failed)",
            backups_finished.clone(),
        );
        // Every final phase from 0, so that increase() sees the first failure.
        for phase in FINISHED_BACKUP_PHASES {
            backups_finished
                .get_or_create(&PhaseLabels {
                    phase: phase.to_owned(),
                })
                .inc_by(0);
        }
        for phase in TenantPhase::ALL {
            tenants
                .family
                .get_or_create(&PhaseLabels {
                    phase: phase.as_str().to_owned(),
                })
                .set(0);
        }
        let deletions_held = Tally::new(|reason| HoldLabels {
            reason: reason.to_owned(),
        });
        registry.register(
            "deletions_held",
            "Tenants whose deletion destroys nothing until a person releases it (condition \
             DeletionHeld), by reason",
            deletions_held.family.clone(),
        );
        // Every reason from 0, so an alert's expression has a series before the first hold.
        for reason in stackplane_core::tenant::deletion::HoldReason::ALL {
            deletions_held
                .family
                .get_or_create(&HoldLabels {
                    reason: reason.as_str().to_owned(),
                })
                .set(0);
        }
        let tenants_orphaned = Counter::default();
        registry.register(
            "tenants_orphaned_by_crd_deletion",
            "Tenants released without deleting anything because the Tenant CRD was being \
             deleted; their namespaces wait to be adopted again",
            tenants_orphaned.clone(),
        );
        let mut cloud_registry = Registry::with_prefix("stackplane_cloud");
        let cloud_orphans = Family::<OrphanLabels, Counter>::default();
        cloud_registry.register(
            "orphans",
            "Cloud resources tagged ManagedBy=stackplane whose owner is gone, by kind \
             (instance, record, snapshot) and action (deleted, reported, failed)",
            cloud_orphans.clone(),
        );
        let cloud_instances = Tally::new(|state| InstanceStateLabels {
            state: state.to_owned(),
        });
        cloud_registry.register(
            "instances",
            "Dedicated instances of the tenants this controller reconciled, by the state EC2 \
             reports (running, stopped, ...)",
            cloud_instances.family.clone(),
        );
        // The states that matter for cost from 0, so a dashboard shows them before the first.
        for state in ["pending", "running", "stopping", "stopped"] {
            cloud_instances
                .family
                .get_or_create(&InstanceStateLabels {
                    state: state.to_owned(),
                })
                .set(0);
        }
        // Every (kind, action) from 0, so that increase() sees the first orphan of each.
        for kind in ["instance", "record", "snapshot"] {
            for action in ["deleted", "reported", "failed"] {
                cloud_orphans
                    .get_or_create(&OrphanLabels {
                        kind: kind.to_owned(),
                        action: action.to_owned(),
                    })
                    .inc_by(0);
            }
        }
        Metrics {
            registry,
            cloud_registry,
            cloud_orphans,
            reconciles,
            reconcile_duration,
            errors,
            tenants,
            cloud_instances,
            deletions_held,
            tenants_orphaned,
            creation_to_ready,
            leader,
            rollout_tenants,
            backups_finished,
            rollout_revisions: Mutex::new(HashMap::new()),
            health: Arc::new(crate::health::Health::default()),
        }
    }

    /// Records one reconcile and how long it took.
    pub fn reconciled(&self, took: Duration) {
        self.reconciles.inc();
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    /// Records a failed reconcile.
    pub fn error(&self, category: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                error: category.to_owned(),
            })
            .inc();
    }

    /// Records the phase of a tenant (`None`: the tenant is gone).
    pub fn phase(&self, tenant: &str, phase: Option<TenantPhase>) {
        self.tenants.set(tenant, phase.map(TenantPhase::as_str));
    }

    /// Records the state EC2 reports for a tenant's dedicated instance (`None`: it has none, or
    /// the tenant is gone).
    pub fn instance_state(&self, tenant: &str, state: Option<&str>) {
        self.cloud_instances.set(tenant, state);
    }

    /// Records why a tenant's deletion is held (`None`: it is not, or the tenant is gone).
    pub fn deletion_held(&self, tenant: &str, reason: Option<&str>) {
        self.deletions_held.set(tenant, reason);
    }

    /// Records a tenant released because the Tenant CRD was being deleted.
    pub fn tenant_orphaned(&self) {
        self.tenants_orphaned.inc();
    }

    /// Records the time from a tenant's creation until it became Ready.
    pub fn became_ready(&self, since_creation: Duration) {
        self.creation_to_ready.observe(since_creation.as_secs_f64());
    }

    /// Records whether this replica leads.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Records how many tenants of `platform` are in each rollout state for `revision`.
    pub fn rollout(&self, platform: &str, revision: &str, counts: &[(&str, i64)]) {
        let labels = |revision: &str, state: &str| RolloutLabels {
            platform: platform.to_owned(),
            revision: revision.to_owned(),
            state: state.to_owned(),
        };
        if let Ok(mut revisions) = self.rollout_revisions.lock() {
            if let Some(old) = revisions.insert(platform.to_owned(), revision.to_owned()) {
                if old != revision {
                    for (state, _) in counts {
                        self.rollout_tenants.remove(&labels(&old, state));
                    }
                }
            }
        }
        for (state, n) in counts {
            self.rollout_tenants
                .get_or_create(&labels(revision, state))
                .set(*n);
        }
    }

    /// Records a TenantBackup that reached the final phase `phase` (`Completed`,
    /// `PartiallyFailed`, `Failed`).
    pub fn backup_finished(&self, phase: &str) {
        self.backups_finished
            .get_or_create(&PhaseLabels {
                phase: phase.to_owned(),
            })
            .inc();
    }

    /// What `/healthz` answers (kept here because the metrics server serves both).
    pub fn health(&self) -> &Arc<crate::health::Health> {
        &self.health
    }

    /// Records one orphaned cloud resource the garbage collector acted on.
    pub fn cloud_orphan(&self, kind: &str, action: &str) {
        self.cloud_orphans
            .get_or_create(&OrphanLabels {
                kind: kind.to_owned(),
                action: action.to_owned(),
            })
            .inc();
    }

    /// The metrics in Prometheus' text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode_registry(&mut out, &self.registry)?;
        encode_registry(&mut out, &self.cloud_registry)?;
        encode_eof(&mut out)?;
        Ok(out)
    }
}

async fn metrics_handler(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    match metrics.encode() {
        Ok(body) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot encode metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// 200 `ok` while the loops that must run do; 503 with the reason otherwise.
async fn healthz(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    match metrics.health().check() {
        Ok(()) => (StatusCode::OK, "ok".to_owned()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// Binds `addr` and serves `/metrics` and `/healthz` until `shutdown` resolves. Returns the
/// bound address (useful with port 0) and the server's task.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .with_state(metrics);
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(%error, "metrics server failed");
        }
    });
    Ok((local, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(series))
    }

    /// Instances by state follow each tenant's latest state, and a gone tenant leaves none.
    #[test]
    fn instances_by_state_follow_each_tenant() {
        let m = Metrics::new();
        m.instance_state("a", Some("running"));
        m.instance_state("b", Some("running"));
        m.instance_state("a", Some("stopped"));
        m.instance_state("a", Some("stopped"));
        let text = m.encode().expect("encode");
        let running = r#"stackplane_cloud_instances{state="running"}"#;
        let stopped = r#"stackplane_cloud_instances{state="stopped"}"#;
        assert_eq!(line(&text, running), Some(format!("{running} 1").as_str()));
        assert_eq!(line(&text, stopped), Some(format!("{stopped} 1").as_str()));
        m.instance_state("a", None);
        m.instance_state("b", None);
        let text = m.encode().expect("encode");
        assert_eq!(line(&text, running), Some(format!("{running} 0").as_str()));
        assert_eq!(line(&text, stopped), Some(format!("{stopped} 0").as_str()));
    }
}
