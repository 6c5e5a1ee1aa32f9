//! Backups and restores of a tenant: requested as TenantBackup objects (carried out by the
//! controller's backup reconciler), listed from `backup_records` merged with the live objects.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::extract::Path;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use stackplane_crds::{BackupPhase, BackupReason, Tenant, TenantBackup, TenantBackupSpec};
use utoipa::ToSchema;

use super::quota::{self, Kind};
use super::status::time;
use super::TenantApi;
use crate::audit::AuditDetails;
use crate::caller::Caller;
use crate::extract::{is_dns_subdomain, JsonBody};
use crate::http_error::ApiError;

/// Timeout of the call that creates a TenantBackup.
const KUBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Body of `POST …/backups` and `POST …/restore`: nothing to set today; an empty body or `{}`.
/// Unknown fields are refused, so a client expecting an option that does not exist learns it.
#[derive(Deserialize, Debug, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {}

/// A backup or restore.
#[derive(Serialize, Debug, Clone, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupView {
    pub name: String,
    pub tenant: String,
    /// `manual`, `scheduled`, `pre-delete` or `pre-terminate`.
    pub reason: String,
    /// For a restore: the backup it restores from.
    pub restore_from: Option<String>,
    /// `Pending`, `InProgress`, `Completed`, `PartiallyFailed` or `Failed`.
    pub phase: String,
    /// The parts (kind, id, source, state, message).
    #[schema(value_type = Vec<Object>)]
    pub parts: serde_json::Value,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// When retention removed the backup and its snapshots.
    pub deleted_at: Option<DateTime<Utc>>,
    pub created_at: Option<DateTime<Utc>>,
    /// Whether the TenantBackup object still exists.
    pub live: bool,
}

fn reason_str(reason: BackupReason) -> &'static str {
    match reason {
        BackupReason::Manual => "manual",
        BackupReason::Scheduled => "scheduled",
        BackupReason::PreDelete => "pre-delete",
        BackupReason::PreTerminate => "pre-terminate",
    }
}

fn phase_str(phase: BackupPhase) -> &'static str {
    match phase {
        BackupPhase::Pending => "Pending",
        BackupPhase::InProgress => "InProgress",
        BackupPhase::Completed => "Completed",
        BackupPhase::PartiallyFailed => "PartiallyFailed",
        BackupPhase::Failed => "Failed",
    }
}

impl BackupView {
    fn of(b: &TenantBackup) -> Self {
        let status = b.status.clone().unwrap_or_default();
        BackupView {
            name: b.name_any(),
            tenant: b.spec.tenant.clone(),
            reason: reason_str(b.spec.reason).to_owned(),
            restore_from: b.spec.restore.clone(),
            phase: phase_str(status.phase.unwrap_or(BackupPhase::Pending)).to_owned(),
            parts: serde_json::to_value(&status.parts).unwrap_or_default(),
            started_at: status.started_at.as_ref().map(time),
            completed_at: status.completed_at.as_ref().map(time),
            expires_at: status.expires_at.as_ref().map(time),
            deleted_at: None,
            created_at: b.metadata.creation_timestamp.as_ref().map(time),
            live: true,
        }
    }
}

#[derive(sqlx::FromRow)]
struct RecordRow {
    name: String,
    tenant: String,
    reason: String,
    restore_from: Option<String>,
    phase: String,
    parts: serde_json::Value,
    started_at: Option<DateTime<Utc>>,
    completed_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    deleted_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

impl From<RecordRow> for BackupView {
    fn from(r: RecordRow) -> Self {
        BackupView {
            name: r.name,
            tenant: r.tenant,
            reason: r.reason,
            restore_from: r.restore_from,
            phase: r.phase,
            parts: r.parts,
            started_at: r.started_at,
            completed_at: r.completed_at,
            expires_at: r.expires_at,
            deleted_at: r.deleted_at,
            created_at: Some(r.created_at),
            live: false,
        }
    }
}

/// Writes what a TenantBackup shows into its record. A finished phase is never replaced by an
/// unfinished one, so a replica whose watch lags cannot move a record backwards.
pub async fn upsert_record(db: &PgPool, b: &TenantBackup) -> Result<(), sqlx::Error> {
    let view = BackupView::of(b);
    sqlx::query(
        "INSERT INTO backup_records (name, tenant, platform, reason, restore_from, phase, parts,
                                     started_at, completed_at, expires_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, COALESCE($11, now()))
         ON CONFLICT (name) DO UPDATE SET
             phase = EXCLUDED.phase,
             parts = EXCLUDED.parts,
             platform = COALESCE(backup_records.platform, EXCLUDED.platform),
             started_at = COALESCE(EXCLUDED.started_at, backup_records.started_at),
             completed_at = COALESCE(EXCLUDED.completed_at, backup_records.completed_at),
             expires_at = COALESCE(EXCLUDED.expires_at, backup_records.expires_at),
             updated_at = now()
         WHERE backup_records.phase NOT IN ('Completed', 'PartiallyFailed', 'Failed')
            OR EXCLUDED.phase IN ('Completed', 'PartiallyFailed', 'Failed')",
    )
    .bind(&view.name)
    .bind(&view.tenant)
    .bind(b.labels().get(stackplane_core::contract::labels::PLATFORM))
    .bind(&view.reason)
    .bind(&view.restore_from)
    .bind(&view.phase)
    .bind(&view.parts)
    .bind(view.started_at)
    .bind(view.completed_at)
    .bind(view.expires_at)
    .bind(view.created_at)
    .execute(db)
    .await
    .map(|_| ())
}

/// A TenantBackup is gone: if its retention had passed, retention removed it (and its
/// snapshots), which its record now says. Deleted early (by hand), the record stays as it was.
pub async fn mark_removed(db: &PgPool, b: &TenantBackup) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE backup_records SET deleted_at = COALESCE(deleted_at, now()), updated_at = now()
         WHERE name = $1 AND expires_at IS NOT NULL AND expires_at <= now()",
    )
    .bind(b.name_any())
    .execute(db)
    .await
    .map(|_| ())
}

fn db_error(error: sqlx::Error) -> ApiError {
    tracing::error!(%error, "backup_records");
    ApiError::internal("database error")
}

/// Backups and restores of `tenant`: records merged with the live objects (which are newer),
/// newest first.
async fn backups_of(api: &TenantApi, tenant: &str) -> Result<Vec<BackupView>, ApiError> {
    let rows: Vec<RecordRow> = sqlx::query_as(
        "SELECT name, tenant, reason, restore_from, phase, parts, started_at, completed_at,
                expires_at, deleted_at, created_at
         FROM backup_records WHERE tenant = $1",
    )
    .bind(tenant)
    .fetch_all(&api.db)
    .await
    .map_err(db_error)?;
    let mut by_name: BTreeMap<String, BackupView> = rows
        .into_iter()
        .map(|r| (r.name.clone(), BackupView::from(r)))
        .collect();
    for b in api
        .backups
        .state()
        .iter()
        .filter(|b| b.spec.tenant == tenant)
    {
        let live = BackupView::of(b);
        let deleted_at = by_name.get(&live.name).and_then(|r| r.deleted_at);
        by_name.insert(live.name.clone(), BackupView { deleted_at, ..live });
    }
    let mut all: Vec<BackupView> = by_name.into_values().collect();
    all.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.name.cmp(&b.name)));
    Ok(all)
}

/// Backups and restores of a tenant, newest first.
#[utoipa::path(get, path = "/api/v1/tenants/{name}/backups", tag = "backups",
    params(("name" = String, Path, description = "Tenant name")),
    security(("bearer" = [])),
    responses((status = 200, body = Vec<BackupView>), (status = 401, body = crate::http_error::ErrorBody),
        (status = 403, body = crate::http_error::ErrorBody), (status = 404, body = crate::http_error::ErrorBody)))]
pub async fn list_backups(
    State(api): State<Arc<TenantApi>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<BackupView>>, ApiError> {
    api.visible_tenant(&caller, &name)?;
    backups_of(&api, &name).await.map(Json)
}

/// Name of a new backup or restore of `tenant`: unique, sortable by time, a DNS-1123 subdomain.
pub fn new_backup_name(tenant: &str, kind: &str, now: DateTime<Utc>) -> String {
    format!(
        "{tenant}-{kind}-{}-{:04x}",
        now.format("%Y%m%d%H%M%S"),
        fastrand::u16(..)
    )
}

async fn create(
    api: &TenantApi,
    caller: &Caller,
    tenant: &Tenant,
    restore: Option<String>,
) -> Result<Response, ApiError> {
    let tenant_name = tenant.name_any();
    let kind = if restore.is_some() {
        Kind::Restore
    } else {
        Kind::Backup
    };
    // Tenant tokens pay for what they ask within a daily limit; the admin is not limited.
    let slot = match caller {
        Caller::Admin => None,
        Caller::Tenant { .. } | Caller::Dashboard { .. } => {
            let limit = api.cost_limits.limit(kind);
            Some(quota::take(&api.db, &tenant_name, kind, limit, Utc::now()).await?)
        }
    };
    let result = create_object(api, tenant, &tenant_name, kind, restore).await;
    if let (Err(_), Some(day)) = (&result, slot) {
        quota::give_back(&api.db, &tenant_name, kind, day).await;
    }
    result
}

async fn create_object(
    api: &TenantApi,
    tenant: &Tenant,
    tenant_name: &str,
    kind: Kind,
    restore: Option<String>,
) -> Result<Response, ApiError> {
    let tenant_name = tenant_name.to_owned();
    let kind = match kind {
        Kind::Backup => "manual",
        Kind::Restore => "restore",
    };
    let name = new_backup_name(&tenant_name, kind, Utc::now());
    let backup = TenantBackup {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(stackplane_core::contract::labels::tenant_labels(
                &tenant_name,
                &tenant.spec.platform,
            )),
            ..Default::default()
        },
        spec: TenantBackupSpec {
            tenant: tenant_name.clone(),
            reason: BackupReason::Manual,
            restore,
            instance: None,
        },
        status: None,
    };
    let backups = Api::<TenantBackup>::all(api.kube.clone());
    let params = PostParams::default();
    let create = backups.create(&params, &backup);
    let created = tokio::time::timeout(KUBE_TIMEOUT, create)
        .await
        .map_err(|_| {
            tracing::error!(tenant = %tenant_name, backup = %name, "creating a TenantBackup timed out");
            ApiError::unavailable("the Kubernetes API server did not answer in time")
        })?
        .map_err(|error| {
            tracing::error!(tenant = %tenant_name, backup = %name, %error, "creating a TenantBackup");
            match error {
                kube::Error::Api(s) if s.code == 409 => ApiError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    "a backup of that name exists; try again",
                ),
                _ => ApiError::internal("cannot create the TenantBackup"),
            }
        })?;
    // Recorded now, not only when the watch sees it, so the record exists even if this replica
    // stops before that.
    if let Err(error) = upsert_record(&api.db, &created).await {
        tracing::error!(backup = %name, %error, "recording a new backup; the watch will retry");
    }
    tracing::info!(tenant = %tenant_name, backup = %name, kind, "backup requested");
    let mut response = (StatusCode::ACCEPTED, Json(BackupView::of(&created))).into_response();
    response
        .extensions_mut()
        .insert(AuditDetails(serde_json::json!({ "backup": name })));
    Ok(response)
}

/// Request a backup of a tenant.
#[utoipa::path(post, path = "/api/v1/tenants/{name}/backups", tag = "backups",
    params(("name" = String, Path, description = "Tenant name")),
    request_body(content = BackupRequest, description = "optional; `{}`"),
    security(("bearer" = [])),
    responses((status = 202, body = BackupView), (status = 400, body = crate::http_error::ErrorBody),
        (status = 401, body = crate::http_error::ErrorBody), (status = 403, body = crate::http_error::ErrorBody), (status = 404, body = crate::http_error::ErrorBody),
        (status = 422, body = crate::http_error::ErrorBody),
        (status = 429, description = "a tenant token used up today's backups (--tenant-backups-per-day); Retry-After says when the limit resets", body = crate::http_error::ErrorBody)))]
pub async fn create_backup(
    State(api): State<Arc<TenantApi>>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(BackupRequest {}): JsonBody<BackupRequest>,
) -> Result<Response, ApiError> {
    let tenant = api.visible_tenant(&caller, &name)?;
    create(&api, &caller, &tenant, None).await
}

/// Restore a tenant from one of its backups; `GET …/backups` shows the restore's progress.
#[utoipa::path(post, path = "/api/v1/tenants/{name}/backups/{backup}/restore", tag = "backups",
    params(("name" = String, Path, description = "Tenant name"), ("backup" = String, Path, description = "Backup to restore from")),
    request_body(content = BackupRequest, description = "optional; `{}`"),
    security(("bearer" = [])),
    responses((status = 202, body = BackupView), (status = 400, body = crate::http_error::ErrorBody),
        (status = 403, body = crate::http_error::ErrorBody), (status = 404, body = crate::http_error::ErrorBody), (status = 409, body = crate::http_error::ErrorBody),
        (status = 429, description = "a tenant token used up today's restores (--tenant-restores-per-day); Retry-After says when the limit resets", body = crate::http_error::ErrorBody)))]
pub async fn restore_backup(
    State(api): State<Arc<TenantApi>>,
    caller: Caller,
    Path((name, backup)): Path<(String, String)>,
    JsonBody(BackupRequest {}): JsonBody<BackupRequest>,
) -> Result<Response, ApiError> {
    let tenant = api.visible_tenant(&caller, &name)?;
    if !is_dns_subdomain(&backup) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_name",
            format!("{backup:?} is not a valid backup name"),
        ));
    }
    let source = match api.backups.get(&ObjectRef::new(&backup)) {
        Some(b) if b.spec.tenant == name => Some(BackupView::of(&b)),
        Some(_) => None,
        None => backups_of(&api, &name)
            .await?
            .into_iter()
            .find(|b| b.name == backup),
    };
    let Some(source) = source else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("tenant {name:?} has no backup {backup:?}"),
        ));
    };
    let restorable = source.restore_from.is_none()
        && source.deleted_at.is_none()
        && matches!(source.phase.as_str(), "Completed" | "PartiallyFailed");
    if !restorable {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_restorable",
            format!(
                "backup {backup:?} cannot be restored from: it is {}{}{}",
                source.phase,
                if source.restore_from.is_some() {
                    ", a restore"
                } else {
                    ""
                },
                if source.deleted_at.is_some() {
                    ", removed by retention"
                } else {
                    ""
                },
            ),
        ));
    }
    create(&api, &caller, &tenant, Some(backup)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn backup_names_are_subdomains() {
        let now = Utc.with_ymd_and_hms(2026, 11, 21, 3, 4, 5).unwrap();
        let name = new_backup_name(&"a".repeat(63), "restore", now);
        assert!(is_dns_subdomain(&name), "{name}");
        assert!(name.contains("-restore-20261121030405-"));
    }
}
