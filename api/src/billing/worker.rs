//! The billing worker: claims stored events with `FOR UPDATE SKIP LOCKED` (several replicas are
//! safe); for each, reads the customer's subscriptions from Stripe (the event is only the
//! trigger; its payload is the fallback when Stripe cannot be read) and brings the customer's
//! Tenants in line ([`super::sync`]) within the event's transaction, so a crash before commit
//! leaves the event to be processed again. Customers Stripe could not be read for are read
//! again later, with backoff.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};

use super::error::{BillingError, PLATFORM_ERROR_KINDS};
use super::prices::PlatformCache;
use super::stripe_api::StripeApi;
use crate::metrics::Metrics;
use stackplane_core::billing::parse;

/// Field manager of every Tenant field billing owns: spec and metadata, and (status
/// subresource) its own condition types.
pub const FIELD_MANAGER: &str = stackplane_core::contract::field_managers::BILLING;

/// How one event ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Skipped(&'static str),
    /// Not a product stackplane sells (stored `ignored`: replayable, never retried in bulk).
    Ignored(&'static str),
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
    /// The Stripe API reader; without it only webhook payloads are applied.
    pub stripe: Option<Arc<StripeApi>>,
    /// The mode of `STRIPE_SECRET_KEY` (true: live); events of the other mode are refused.
    pub livemode: Option<bool>,
}

/// The mode of a Stripe secret or restricted key: `Some(true)` for `sk_live_`/`rk_live_`,
/// `Some(false)` for `sk_test_`/`rk_test_`, `None` otherwise.
pub fn key_livemode(secret_key: &str) -> Option<bool> {
    let k = secret_key.trim();
    if k.starts_with("sk_live_") || k.starts_with("rk_live_") {
        Some(true)
    } else if k.starts_with("sk_test_") || k.starts_with("rk_test_") {
        Some(false)
    } else {
        None
    }
}

type Claimed = (String, String, Value, DateTime<Utc>);

impl Worker {
    /// A worker applying webhook payloads only, with no mode check; see [`Worker::with_stripe`]
    /// and [`Worker::with_livemode`].
    pub fn new(db: PgPool, kube: kube::Client, prices: PlatformCache, metrics: Metrics) -> Self {
        Self {
            db,
            kube,
            prices,
            metrics,
            stripe: None,
            livemode: None,
        }
    }

    /// Reads the customer's subscriptions from `api` after each event.
    pub fn with_stripe(mut self, api: Arc<StripeApi>) -> Self {
        self.stripe = Some(api);
        self
    }

    /// Refuses events whose `livemode` differs from `livemode`.
    pub fn with_livemode(mut self, livemode: Option<bool>) -> Self {
        self.livemode = livemode;
        self
    }

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
                    Outcome::Ignored(why) => ("ignored", *why),
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
                if error.is_permanent() {
                    // Never due again by itself; a replay by hand queues it once more.
                    sqlx::query("UPDATE stripe_events SET next_attempt_at = 'infinity' WHERE id = $1 AND state = 'failed'")
                        .bind(&id)
                        .execute(&self.db)
                        .await?;
                } else {
                    let delay = backoff(attempts);
                    sqlx::query("UPDATE stripe_events SET next_attempt_at = now() + make_interval(secs => $2) WHERE id = $1 AND state = 'failed'")
                        .bind(&id)
                        .bind(delay.as_secs_f64())
                        .execute(&self.db)
                        .await?;
                }
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
        let event = parse::parse_event(payload)?;
        if let (Some(key), Some(event_live)) = (self.livemode, event.livemode) {
            if key != event_live {
                return Err(BillingError::LivemodeMismatch {
                    event: event_live,
                    key: if key { "live" } else { "test" },
                });
            }
        }
        let Some(customer) = event.observation.customer_id().map(str::to_owned) else {
            return Ok(Outcome::Skipped("event type not handled"));
        };
        if let parse::Observation::Ignored(why) = event.observation {
            return Ok(Outcome::Skipped(why));
        }
        let read = self.read_customer(&customer).await;
        if let Some(Err(error)) = &read {
            // Committed on its own before `tx` takes the customer's lock (a re-read of another
            // replica may hold this customer's queue row while it waits for that lock).
            let mut conn = self.db.acquire().await?;
            Self::schedule_resync(&mut conn, &customer, error).await?;
        }
        let synced = self
            .sync_customer(tx, &customer, Some(&event), read)
            .await?;
        if let parse::Observation::Checkout(checkout) = &event.observation {
            // In the event's transaction, under the customer's lock the sync took: the customer
            // is its dashboard's exactly when the event is applied, whatever the sync decided.
            super::checkout_customers::record(tx, checkout).await?;
        }
        tracing::info!(event_id = %event.id, customer_id = %customer, subscriptions_changed = synced.subscriptions_changed, tenants_written = synced.tenants_written, "stripe event synced");
        Ok(match synced.skipped {
            Some(why) if synced.ignored => Outcome::Ignored(why),
            Some(why) => Outcome::Skipped(why),
            None => Outcome::Applied,
        })
    }

    /// Reads one customer whose Stripe read failed and is due again; `None` when none is due.
    /// The customer stays queued (with a longer backoff) while Stripe still cannot be read.
    pub async fn resync_one(&self) -> Result<Option<String>, BillingError> {
        let mut tx = self.db.begin().await?;
        let due: Option<String> = sqlx::query_scalar(
            "SELECT customer_id FROM billing_resync WHERE due_at <= now() \
             ORDER BY due_at LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(customer) = due else {
            return Ok(None);
        };
        let read = self.read_customer(&customer).await;
        if let Some(Err(error)) = &read {
            // Its queue row exists and is locked by `tx`: the longer backoff commits with the sync,
            // and a rolled-back sync leaves the row due as it was.
            Self::schedule_resync(&mut tx, &customer, error).await?;
        }
        self.resync_in(&mut tx, &customer, read).await?;
        tx.commit().await?;
        Ok(Some(customer))
    }

    /// Reads `customer` from Stripe now and applies what it shows (a failed read is queued).
    pub async fn resync_customer(&self, customer: &str) -> Result<(), BillingError> {
        let read = self.read_customer(customer).await;
        if let Some(Err(error)) = &read {
            let mut conn = self.db.acquire().await?;
            Self::schedule_resync(&mut conn, customer, error).await?;
        }
        let mut tx = self.db.begin().await?;
        self.resync_in(&mut tx, customer, read).await?;
        tx.commit().await?;
        Ok(())
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
        if let Err(error) = self.prices.record_listings(&self.db).await {
            tracing::warn!(%error, "recording which Platforms list which prices");
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
            loop {
                match self.resync_one().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(error) => {
                        tracing::warn!(error_kind = error.metric_label(), %error, "re-reading a customer from Stripe");
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
                    if let Err(error) = self.prices.record_listings(&self.db).await {
                        tracing::warn!(%error, "recording which Platforms list which prices");
                    }
                    if let Err(error) = self.retry_platform_failures().await {
                        tracing::warn!(%error, "re-queueing events waiting on Platforms");
                    }
                }
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
