//! The billing worker: claims stored events with `FOR UPDATE SKIP LOCKED` (several replicas are
//! safe), merges each into its subscription's state under a per-subscription advisory lock, and
//! server-side applies the Tenant (field manager `stackplane-billing`) in the same transaction's
//! lifetime, so a crash before commit leaves the event to be processed again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use stackplane_crds::Tenant;

use super::error::{BillingError, PLATFORM_ERROR_KINDS};
use super::mapping::{self, Applied, Needs, OrderKey, Snapshot};
use super::prices::{PlatformCache, PriceIndex};
use crate::metrics::Metrics;

/// Field manager of every Tenant field billing owns.
pub const FIELD_MANAGER: &str = "stackplane-billing";

/// How one event ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Skipped(&'static str),
}

/// Exponential backoff with jitter: 2 s doubling per attempt, capped at 10 min, times [0.5, 1).
pub fn backoff(attempts: i32) -> Duration {
    let base = 2u64.saturating_pow(attempts.clamp(1, 20) as u32).min(600);
    Duration::from_millis((base * 1000) / 2 + fastrand::u64(0..base * 500))
}

/// The worker.
#[derive(Clone)]
pub struct Worker {
    pub db: PgPool,
    pub kube: kube::Client,
    pub prices: PlatformCache,
    pub metrics: Metrics,
}

type Claimed = (String, String, Value, DateTime<Utc>);

impl Worker {
    /// Processes one due event; `None` when none is due.
    pub async fn process_one(
        &self,
    ) -> Result<Option<(String, Result<Outcome, BillingError>)>, sqlx::Error> {
        let mut tx = self.db.begin().await?;
        let row: Option<Claimed> = sqlx::query_as(
            "SELECT id, event_type, payload, received_at FROM stripe_events \
             WHERE state IN ('pending', 'failed') AND next_attempt_at <= now() \
             ORDER BY next_attempt_at, created LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some((id, event_type, payload, received_at)) = row else {
            return Ok(None);
        };
        let result = self.handle(&mut tx, &payload).await;
        match &result {
            Ok(outcome) => {
                let (state, detail) = match outcome {
                    Outcome::Applied => ("applied", "applied"),
                    Outcome::Skipped(why) => ("skipped", *why),
                };
                sqlx::query(
                    "UPDATE stripe_events SET state = $2, outcome = $3, attempts = attempts + 1, \
                     last_error = NULL, error_kind = NULL, processed_at = now() WHERE id = $1",
                )
                .bind(&id)
                .bind(state)
                .bind(detail)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                self.metrics.processed(&event_type, state);
                let lag = (Utc::now() - received_at).num_milliseconds().max(0) as f64 / 1000.0;
                self.metrics.processing_lag.observe(lag);
                tracing::info!(event_id = %id, event_type = %event_type, outcome = state, "stripe event processed");
            }
            Err(error) => {
                drop(tx);
                let attempts: i32 = sqlx::query_scalar(
                    "UPDATE stripe_events SET state = 'failed', attempts = attempts + 1, \
                     last_error = $2, error_kind = $3 WHERE id = $1 AND state IN ('pending', 'failed') \
                     RETURNING attempts",
                )
                .bind(&id)
                .bind(error.to_string())
                .bind(error.metric_label())
                .fetch_optional(&self.db)
                .await?
                .unwrap_or(1);
                let delay = backoff(attempts);
                sqlx::query("UPDATE stripe_events SET next_attempt_at = now() + make_interval(secs => $2) WHERE id = $1 AND state = 'failed'")
                    .bind(&id)
                    .bind(delay.as_secs_f64())
                    .execute(&self.db)
                    .await?;
                self.metrics.processed(&event_type, error.metric_label());
                tracing::warn!(event_id = %id, event_type = %event_type, error_kind = error.metric_label(), %error, attempts, "stripe event failed; will retry");
            }
        }
        Ok(Some((id, result)))
    }

    async fn handle(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        payload: &Value,
    ) -> Result<Outcome, BillingError> {
        let event = mapping::parse_event(payload)?;
        let Some(sub) = event.observation.subscription_id().map(str::to_owned) else {
            return Ok(Outcome::Skipped("event type not handled"));
        };
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(&sub)
            .execute(&mut **tx)
            .await?;
        let row: Option<(Value, DateTime<Utc>, i32, String)> = sqlx::query_as(
            "SELECT snapshot, event_created, status_rank, event_id FROM subscription_state WHERE subscription_id = $1",
        )
        .bind(&sub)
        .fetch_optional(&mut **tx)
        .await?;
        let current = match row {
            Some((snapshot, created, rank, event_id)) => Some(Applied {
                snapshot: serde_json::from_value::<Snapshot>(snapshot)?,
                key: OrderKey {
                    created: created.timestamp(),
                    rank,
                    event_id,
                },
            }),
            None => None,
        };
        let resolved = match mapping::needs(current.as_ref(), &event) {
            Needs::Nothing(why) => return Ok(Outcome::Skipped(why)),
            Needs::Price(prices) => {
                let found = prices.iter().find_map(|p| self.prices.resolve_price(p));
                match found {
                    Some(r) => Some(r),
                    None if prices.is_empty() => return Err(BillingError::NoPlatform(sub)),
                    None => return Err(BillingError::UnknownPrice(prices.join(","))),
                }
            }
            Needs::PlatformTier { platform, tier } => {
                if !self.prices.has_tier(&platform, &tier) {
                    return Err(BillingError::UnknownPlatformTier { platform, tier });
                }
                Some((platform, tier))
            }
            Needs::Merge => None,
        };
        let Some(next) = mapping::merge(current.as_ref(), &event, resolved) else {
            return Ok(Outcome::Skipped("nothing changes"));
        };
        let (name, body) = mapping::tenant_apply_body(&next.snapshot);
        let api: Api<Tenant> = Api::all(self.kube.clone());
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
        sqlx::query(
            "INSERT INTO subscription_state (subscription_id, tenant, customer_id, status, event_id, event_created, status_rank, snapshot, updated_at) \
             VALUES ($1, $2, $3, $4, $5, to_timestamp($6), $7, $8, now()) \
             ON CONFLICT (subscription_id) DO UPDATE SET tenant = $2, customer_id = $3, status = $4, event_id = $5, \
             event_created = to_timestamp($6), status_rank = $7, snapshot = $8, updated_at = now()",
        )
        .bind(&sub)
        .bind(&name)
        .bind(&next.snapshot.customer_id)
        .bind(serde_json::to_value(next.snapshot.status)?.as_str().unwrap_or_default().to_owned())
        .bind(&event.id)
        .bind(next.key.created as f64)
        .bind(next.key.rank)
        .bind(serde_json::to_value(&next.snapshot)?)
        .execute(&mut **tx)
        .await?;
        tracing::info!(event_id = %event.id, subscription_id = %sub, tenant = %name, "tenant applied");
        Ok(Outcome::Applied)
    }

    /// Makes events that failed for want of a Platform due now.
    pub async fn retry_platform_failures(&self) -> Result<u64, sqlx::Error> {
        let kinds: Vec<String> = PLATFORM_ERROR_KINDS
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        Ok(sqlx::query("UPDATE stripe_events SET next_attempt_at = now() WHERE state = 'failed' AND error_kind = ANY($1)")
            .bind(kinds)
            .execute(&self.db)
            .await?
            .rows_affected())
    }

    /// Runs until `shutdown` resolves: drains due events, then waits for a wake-up, a Platform
    /// change or the poll interval.
    pub async fn run(
        self,
        wake: std::sync::Arc<tokio::sync::Notify>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut changes = self.prices.changes();
        if !self.prices.ready().await {
            tracing::error!("platform cache never became ready");
        }
        loop {
            loop {
                match self.process_one().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(error) => {
                        tracing::warn!(%error, "billing queue unreachable");
                        break;
                    }
                }
            }
            if let Err(error) = self.metrics.refresh_queue(&self.db).await {
                tracing::warn!(%error, "reading the billing queue depth");
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = wake.notified() => {}
                _ = changes.changed() => {
                    if let Err(error) = self.retry_platform_failures().await {
                        tracing::warn!(%error, "re-queueing events waiting on Platforms");
                    }
                }
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
