//! Cost limits of tenant tokens: backups (EBS snapshots, dump Jobs) and restores cost real
//! money, so a tenant token may ask for at most `--tenant-backups-per-day` backups and
//! `--tenant-restores-per-day` restores per tenant and UTC day. The admin is not limited.
//!
//! The count lives in Postgres (`tenant_daily_usage`), taken with one atomic
//! `INSERT … ON CONFLICT DO UPDATE … WHERE used < limit`, so concurrent requests on several
//! replicas never go over the limit; a slot whose TenantBackup could not be created is given
//! back.

use axum::http::StatusCode;
use chrono::{DateTime, Days, NaiveDate, Utc};
use sqlx::PgPool;

use crate::http_error::ApiError;

/// Flags of the cost limits.
#[derive(clap::Args, Debug, Clone)]
pub struct CostLimitArgs {
    /// Backups a tenant token may request per tenant and UTC day.
    #[arg(long, env = "STACKPLANE_TENANT_BACKUPS_PER_DAY", default_value_t = 10)]
    pub tenant_backups_per_day: u32,
    /// Restores a tenant token may request per tenant and UTC day.
    #[arg(long, env = "STACKPLANE_TENANT_RESTORES_PER_DAY", default_value_t = 3)]
    pub tenant_restores_per_day: u32,
}

impl Default for CostLimitArgs {
    fn default() -> Self {
        Self {
            tenant_backups_per_day: 10,
            tenant_restores_per_day: 3,
        }
    }
}

/// What is limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Backup,
    Restore,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Backup => "backup",
            Kind::Restore => "restore",
        }
    }
}

impl CostLimitArgs {
    pub fn limit(&self, kind: Kind) -> u32 {
        match kind {
            Kind::Backup => self.tenant_backups_per_day,
            Kind::Restore => self.tenant_restores_per_day,
        }
    }
}

/// When the count of `day` starts again: the next midnight UTC.
pub fn resets_at(day: NaiveDate) -> DateTime<Utc> {
    day.checked_add_days(Days::new(1))
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The 429 of a used-up limit: the limit and when it resets, in the message and `Retry-After`.
pub fn exceeded(tenant: &str, kind: Kind, limit: u32, now: DateTime<Utc>) -> ApiError {
    let reset = resets_at(now.date_naive());
    let secs = (reset - now).num_seconds().max(1) as u64;
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "quota_exceeded",
        format!(
            "a tenant token may request at most {limit} {}s of tenant {tenant:?} per day; the limit resets at {}",
            kind.as_str(),
            reset.to_rfc3339()
        ),
    )
    .retry_after(secs)
}

fn db_error(error: sqlx::Error) -> ApiError {
    tracing::error!(%error, "tenant_daily_usage");
    ApiError::unavailable("cannot check the daily limit now; try again")
}

/// Takes one of today's `limit` slots of `kind` for `tenant`; 429 when none is left.
pub async fn take(
    db: &PgPool,
    tenant: &str,
    kind: Kind,
    limit: u32,
    now: DateTime<Utc>,
) -> Result<NaiveDate, ApiError> {
    let day = now.date_naive();
    if limit == 0 {
        return Err(exceeded(tenant, kind, limit, now));
    }
    let used: Option<i32> = sqlx::query_scalar(
        "INSERT INTO tenant_daily_usage (tenant, kind, day, used) VALUES ($1, $2, $3, 1)
         ON CONFLICT (tenant, kind, day) DO UPDATE SET used = tenant_daily_usage.used + 1
         WHERE tenant_daily_usage.used < $4
         RETURNING used",
    )
    .bind(tenant)
    .bind(kind.as_str())
    .bind(day)
    .bind(i64::from(limit))
    .fetch_optional(db)
    .await
    .map_err(db_error)?;
    match used {
        Some(_) => Ok(day),
        None => Err(exceeded(tenant, kind, limit, now)),
    }
}

/// Gives back a slot taken on `day` whose request did not go through.
pub async fn give_back(db: &PgPool, tenant: &str, kind: Kind, day: NaiveDate) {
    let result = sqlx::query(
        "UPDATE tenant_daily_usage SET used = used - 1
         WHERE tenant = $1 AND kind = $2 AND day = $3 AND used > 0",
    )
    .bind(tenant)
    .bind(kind.as_str())
    .bind(day)
    .execute(db)
    .await;
    if let Err(error) = result {
        tracing::warn!(%tenant, kind = kind.as_str(), %error, "giving back a daily slot");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_limit_resets_at_the_next_midnight_utc() {
        let now = Utc.with_ymd_and_hms(2026, 12, 31, 22, 30, 0).unwrap();
        assert_eq!(
            resets_at(now.date_naive()),
            Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()
        );
        let err = exceeded("a", Kind::Restore, 3, now);
        assert_eq!(err.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(err.retry_after, Some(5400));
        assert!(
            err.message.contains("at most 3 restores"),
            "{}",
            err.message
        );
        assert!(
            err.message.contains("2027-01-01T00:00:00+00:00"),
            "{}",
            err.message
        );
    }
}
