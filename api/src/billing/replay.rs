//! Replaying events: makes a failed (or skipped, or pending) event due now and records who asked
//! in the audit log. An applied event is refused: its state is already in force.

use sqlx::PgPool;

/// What a replay request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// Queued again; the state it had.
    Queued(String),
    AlreadyApplied,
    NotFound,
}

/// Queues `event_id` again and writes the audit log (`billing.replay`).
pub async fn replay(
    db: &PgPool,
    event_id: &str,
    actor: &str,
    via: &str,
) -> Result<Replay, sqlx::Error> {
    let mut tx = db.begin().await?;
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM stripe_events WHERE id = $1 FOR UPDATE")
            .bind(event_id)
            .fetch_optional(&mut *tx)
            .await?;
    let result = match state {
        None => Replay::NotFound,
        Some(s) if s == "applied" => Replay::AlreadyApplied,
        Some(s) => {
            sqlx::query(
                "UPDATE stripe_events SET state = 'pending', next_attempt_at = now() WHERE id = $1",
            )
            .bind(event_id)
            .execute(&mut *tx)
            .await?;
            Replay::Queued(s)
        }
    };
    let (outcome, detail) = match &result {
        Replay::Queued(previous) => (
            "success",
            serde_json::json!({ "via": via, "previousState": previous }),
        ),
        Replay::AlreadyApplied => (
            "denied",
            serde_json::json!({ "via": via, "reason": "already applied" }),
        ),
        Replay::NotFound => (
            "failed",
            serde_json::json!({ "via": via, "reason": "no such event" }),
        ),
    };
    sqlx::query("INSERT INTO audit_log (actor, action, target, outcome, details) VALUES ($1, 'billing.replay', $2, $3, $4)")
        .bind(actor)
        .bind(event_id)
        .bind(outcome)
        .bind(detail)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(event_id = %event_id, actor, outcome, "billing event replay");
    Ok(result)
}
