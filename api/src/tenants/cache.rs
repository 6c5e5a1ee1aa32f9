//! The watches behind the tenant API: Tenants and TenantBackups reflected into in-memory
//! stores, phase transitions written to the status history, and backup progress written to
//! `backup_records` (which outlive their TenantBackups).

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, ResourceExt};
use sqlx::PgPool;
use stackplane_crds::{Tenant, TenantBackup};
use tokio::sync::mpsc;

/// A tenant's phase as one watch event showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseObservation {
    pub tenant: String,
    pub platform: String,
    pub phase: String,
    /// Reason of the `Ready` condition, if any.
    pub reason: Option<String>,
    /// The dedicated instance's state (`status.instance.state`), if the tenant has one.
    pub instance_state: Option<String>,
}

/// The phase of a Tenant, when its status has one.
pub fn observe(tenant: &Tenant) -> Option<PhaseObservation> {
    let status = tenant.status.as_ref()?;
    let phase = status.phase?;
    Some(PhaseObservation {
        tenant: tenant.name_any(),
        platform: tenant.spec.platform.clone(),
        phase: phase.as_str().to_owned(),
        reason: status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.reason.clone()),
        instance_state: status.instance.as_ref().map(|i| i.state.clone()),
    })
}

const QUEUE: usize = 1024;

/// A cache's writer, held by one run of its watch at a time (so a restarted watch writes into
/// the same cache the handlers read).
pub type SharedWriter<K> = std::sync::Arc<tokio::sync::Mutex<Writer<K>>>;
const ATTEMPTS: u32 = 5;

/// Watches Tenants into `writer` and records each phase transition in the history.
/// Ends only if the watch stream ends; the supervisor then runs it again.
pub async fn watch_tenants(api: Api<Tenant>, writer: SharedWriter<Tenant>, db: PgPool) {
    let (tx, rx) = mpsc::channel(QUEUE);
    // Writes run beside the watch so a slow database never holds back the cache.
    let recorder = record_phases(db, rx);
    let watch = async move {
        let mut writer = writer.lock().await;
        let stream = watcher(api);
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Ok(event) = &event {
                writer.apply_watcher_event(event);
            }
            match event {
                Ok(Event::Apply(tenant) | Event::InitApply(tenant)) => {
                    if let Some(observation) = observe(&tenant) {
                        if tx.send(observation).await.is_err() {
                            break;
                        }
                    }
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "watching Tenants"),
            }
        }
    };
    tokio::join!(watch, recorder);
}

fn watcher<K>(api: Api<K>) -> impl futures::Stream<Item = Result<Event<K>, watcher::Error>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(api, watcher::Config::default()).default_backoff()
}

async fn record_phases(db: PgPool, mut rx: mpsc::Receiver<PhaseObservation>) {
    // What this replica last wrote or found recorded, to skip the database for the many watch
    // events that do not change the phase. The database decides across replicas.
    let mut last: HashMap<String, (String, Option<String>)> = HashMap::new();
    while let Some(o) = rx.recv().await {
        let state = (o.phase.clone(), o.instance_state.clone());
        if last.get(&o.tenant) == Some(&state) {
            continue;
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match crate::history::record_phase(
                &db,
                &o.tenant,
                &o.platform,
                &o.phase,
                o.instance_state.as_deref(),
                o.reason.as_deref(),
            )
            .await
            {
                Ok(written) => {
                    if written {
                        tracing::info!(tenant = %o.tenant, phase = %o.phase, instance_state = ?o.instance_state, "status transition recorded");
                    }
                    last.insert(o.tenant.clone(), state);
                    break;
                }
                Err(error) if attempt < ATTEMPTS => {
                    tracing::warn!(tenant = %o.tenant, %error, attempt, "recording a phase transition; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt))).await;
                }
                Err(error) => {
                    tracing::error!(tenant = %o.tenant, phase = %o.phase, %error, "recording a phase transition failed");
                    break;
                }
            }
        }
    }
}

enum BackupChange {
    Seen(Box<TenantBackup>),
    Deleted(Box<TenantBackup>),
}

/// Watches TenantBackups into `writer` and keeps `backup_records` in step with them.
/// Ends only if the watch stream ends; the supervisor then runs it again.
pub async fn watch_backups(api: Api<TenantBackup>, writer: SharedWriter<TenantBackup>, db: PgPool) {
    let (tx, mut rx) = mpsc::channel::<BackupChange>(QUEUE);
    let recorder = async move {
        while let Some(change) = rx.recv().await {
            let (name, result) = match &change {
                BackupChange::Seen(b) => {
                    (b.name_any(), super::backups::upsert_record(&db, b).await)
                }
                BackupChange::Deleted(b) => {
                    (b.name_any(), super::backups::mark_removed(&db, b).await)
                }
            };
            if let Err(error) = result {
                tracing::error!(backup = %name, %error, "writing the backup record");
            }
        }
    };
    let watch = async move {
        let mut writer = writer.lock().await;
        let stream = watcher(api);
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Ok(event) = &event {
                writer.apply_watcher_event(event);
            }
            let change = match event {
                Ok(Event::Apply(b) | Event::InitApply(b)) => BackupChange::Seen(Box::new(b)),
                Ok(Event::Delete(b)) => BackupChange::Deleted(Box::new(b)),
                Ok(_) => continue,
                Err(error) => {
                    tracing::warn!(%error, "watching TenantBackups");
                    continue;
                }
            };
            if tx.send(change).await.is_err() {
                break;
            }
        }
    };
    tokio::join!(watch, recorder);
}
