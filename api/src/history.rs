//! Tenant status history (`tenant_status_history`): one row per transition of a tenant's phase
//! or of its dedicated instance's state, recorded by the api as it watches Tenants, and what is
//! computed from it: uptime, and the hours the instance ran (what EC2 bills, for economics).
//!
//! Uptime over a window is the fraction of the *observed* part of the window the tenant spent
//! in phase `Ready`. Time is observed from the first recorded phase on: the part of the window
//! before the tenant's first history row (before it existed, or before the api first saw it)
//! counts neither as up nor as down. A tenant with no history up to the window's end has no
//! uptime (`null`), never an invented one. The phase in force at the window's start is the last
//! one recorded at or before it.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// The phase that counts as up.
pub const UP_PHASE: &str = "Ready";

/// The instance state EC2 bills compute time for.
pub const BILLED_INSTANCE_STATE: &str = "running";

/// One recorded change of the phase or of the instance's state.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PhaseChange {
    pub phase: String,
    pub observed_at: DateTime<Utc>,
    /// The dedicated instance's state as `status.instance.state` gave it; `None` without one.
    pub instance_state: Option<String>,
}

/// Uptime over a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Uptime {
    /// Seconds of the window spent Ready.
    pub ready_seconds: f64,
    /// Seconds of the window covered by history.
    pub observed_seconds: f64,
}

impl Uptime {
    /// `ready / observed`, or `None` when nothing of the window was observed.
    pub fn fraction(&self) -> Option<f64> {
        (self.observed_seconds > 0.0).then(|| self.ready_seconds / self.observed_seconds)
    }
}

/// Uptime over `[start, end]` given the phase in force at `start` (`before`: the last change at
/// or before `start`, if any) and the changes inside `(start, end]` in time order.
pub fn uptime(
    before: Option<&PhaseChange>,
    changes: &[PhaseChange],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Uptime {
    let (ready_seconds, observed_seconds) =
        time_in(before, changes, start, end, |c| c.phase == UP_PHASE);
    Uptime {
        ready_seconds,
        observed_seconds,
    }
}

/// Seconds of `[start, end]` the tenant's dedicated instance was running (billed by EC2), from
/// the same history as [`uptime`] and with the same rule for time before the first row.
pub fn instance_running_seconds(
    before: Option<&PhaseChange>,
    changes: &[PhaseChange],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> f64 {
    time_in(before, changes, start, end, |c| {
        c.instance_state.as_deref() == Some(BILLED_INSTANCE_STATE)
    })
    .0
}

/// (Seconds of the window in a state that `counts`, seconds observed) over `[start, end]`.
fn time_in(
    before: Option<&PhaseChange>,
    changes: &[PhaseChange],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    counts: impl Fn(&PhaseChange) -> bool,
) -> (f64, f64) {
    let (mut matching, mut observed) = (0.0, 0.0);
    let mut current: Option<(DateTime<Utc>, &PhaseChange)> = before.map(|b| (start, b));
    let mut add = |from: DateTime<Utc>, to: DateTime<Utc>, state: &PhaseChange| {
        let seconds = (to - from).num_milliseconds().max(0) as f64 / 1000.0;
        observed += seconds;
        if counts(state) {
            matching += seconds;
        }
    };
    for change in changes {
        let at = change.observed_at.clamp(start, end);
        if let Some((since, state)) = current {
            add(since, at, state);
        }
        current = Some((at, change));
    }
    if let Some((since, state)) = current {
        add(since, end, state);
    }
    (matching, observed)
}

/// Records that `tenant` is in `phase` with its instance in `instance_state`, unless that is
/// already its last recorded row. Several
/// api replicas see the same transition: a transaction-scoped advisory lock per tenant makes
/// the check and the insert atomic, so exactly one of them writes the row. Returns whether a
/// row was written.
pub async fn record_phase(
    db: &PgPool,
    tenant: &str,
    platform: &str,
    phase: &str,
    instance_state: Option<&str>,
    reason: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended('tenant_status_history:' || $1, 0))",
    )
    .bind(tenant)
    .execute(&mut *tx)
    .await?;
    let written = sqlx::query(
        "INSERT INTO tenant_status_history
             (tenant, platform, phase, previous_phase, reason, instance_state)
         SELECT $1, $2, $3, last.phase, $4, $5
         FROM (SELECT NULL) AS one
         LEFT JOIN LATERAL (SELECT phase, instance_state FROM tenant_status_history
                            WHERE tenant = $1 ORDER BY observed_at DESC, id DESC LIMIT 1) AS last
           ON true
         WHERE last.phase IS DISTINCT FROM $3 OR last.instance_state IS DISTINCT FROM $5",
    )
    .bind(tenant)
    .bind(platform)
    .bind(phase)
    .bind(reason)
    .bind(instance_state)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(written == 1)
}

/// The history of `tenant` over `[start, end]`: the row in force at `start` and the rows
/// inside the window, in time order.
async fn tenant_history(
    db: &PgPool,
    tenant: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<(Option<PhaseChange>, Vec<PhaseChange>), sqlx::Error> {
    let before: Option<PhaseChange> = sqlx::query_as(
        "SELECT phase, observed_at, instance_state FROM tenant_status_history
         WHERE tenant = $1 AND observed_at <= $2 ORDER BY observed_at DESC, id DESC LIMIT 1",
    )
    .bind(tenant)
    .bind(start)
    .fetch_optional(db)
    .await?;
    let changes: Vec<PhaseChange> = sqlx::query_as(
        "SELECT phase, observed_at, instance_state FROM tenant_status_history
         WHERE tenant = $1 AND observed_at > $2 AND observed_at <= $3 ORDER BY observed_at, id",
    )
    .bind(tenant)
    .bind(start)
    .bind(end)
    .fetch_all(db)
    .await?;
    Ok((before, changes))
}

/// Uptime of `tenant` over `[start, end]`, and the seconds its dedicated instance ran, from the
/// database.
pub async fn tenant_uptime(
    db: &PgPool,
    tenant: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<(Uptime, f64), sqlx::Error> {
    let (before, changes) = tenant_history(db, tenant, start, end).await?;
    Ok((
        uptime(before.as_ref(), &changes, start, end),
        instance_running_seconds(before.as_ref(), &changes, start, end),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(minute: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + minute * 60, 0).unwrap()
    }

    fn change(minute: i64, phase: &str) -> PhaseChange {
        PhaseChange {
            phase: phase.into(),
            observed_at: t(minute),
            instance_state: None,
        }
    }

    fn instance(minute: i64, phase: &str, state: &str) -> PhaseChange {
        PhaseChange {
            instance_state: Some(state.into()),
            ..change(minute, phase)
        }
    }

    /// Running 0→20 and 50→60, stopped (suspended) in between: 30 of 60 minutes billed; the
    /// phase does not matter, only the instance's state.
    #[test]
    fn instance_time_counts_running_only() {
        let before = instance(-5, "Ready", "running");
        let changes = [
            instance(20, "Suspended", "stopping"),
            instance(22, "Suspended", "stopped"),
            instance(48, "Ready", "pending"),
            instance(50, "Ready", "running"),
        ];
        let running = instance_running_seconds(Some(&before), &changes, t(0), t(60));
        assert_eq!(running, 30.0 * 60.0);
        // A shared-tier tenant (no instance state ever) ran no instance.
        let shared = [change(10, "Ready")];
        assert_eq!(instance_running_seconds(None, &shared, t(0), t(60)), 0.0);
    }

    #[test]
    fn phase_in_force_at_start_counts_from_start() {
        let before = change(-30, "Ready");
        let changes = [change(45, "Degraded"), change(55, "Ready")];
        let u = uptime(Some(&before), &changes, t(0), t(60));
        assert_eq!(u.observed_seconds, 3600.0);
        assert_eq!(u.ready_seconds, 50.0 * 60.0);
        assert_eq!(u.fraction(), Some(50.0 / 60.0));
    }

    #[test]
    fn time_before_the_first_record_is_not_observed() {
        let changes = [
            change(20, "Provisioning"),
            change(30, "Ready"),
            change(50, "Degraded"),
        ];
        let u = uptime(None, &changes, t(0), t(60));
        assert_eq!(u.observed_seconds, 40.0 * 60.0);
        assert_eq!(u.ready_seconds, 20.0 * 60.0);
        assert_eq!(u.fraction(), Some(0.5));
    }

    #[test]
    fn no_history_has_no_uptime() {
        let u = uptime(None, &[], t(0), t(60));
        assert_eq!(u.fraction(), None);
    }

    #[test]
    fn steady_state_is_whole_window() {
        let u = uptime(Some(&change(-1000, "Ready")), &[], t(0), t(60));
        assert_eq!(u.fraction(), Some(1.0));
        let u = uptime(Some(&change(-1000, "Suspended")), &[], t(0), t(60));
        assert_eq!(u.fraction(), Some(0.0));
    }
}
