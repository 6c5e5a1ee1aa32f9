//! The billing worker: claims stored events with `FOR UPDATE SKIP LOCKED` (several workers per
//! replica, `--billing-workers`, and several replicas are safe); for each, reads the customer's
//! subscriptions from Stripe (the event is only the trigger; its payload is the fallback when
//! Stripe cannot be read or the circuit breaker is open) and brings the customer's Tenants in
//! line ([`super::sync`]) in one short transaction that also marks the event done, so a crash
//! before commit leaves the event to be processed again. No transaction is open and no row is
//! locked while Stripe is called: the claim is a lease (see [`Worker::process_one`]). Customers
//! Stripe could not be read for are read again later, with backoff.

use std::collections::BTreeSet;
use std::num::NonZeroUsize;
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

/// Flags of the billing worker.
#[derive(clap::Args, Debug, Clone)]
pub struct BillingWorkerArgs {
    /// Billing workers in this replica: events of different customers are applied concurrently
    /// (events of one customer still one at a time, under the customer's lock).
    #[arg(long, env = "STACKPLANE_BILLING_WORKERS", default_value_t = NonZeroUsize::new(4).expect("4 > 0"))]
    pub billing_workers: NonZeroUsize,
    /// Connect: the connected accounts (`acct_…`, comma-separated) whose events are applied;
    /// their read-back sends `Stripe-Account`. An event of another account is stored as failed.
    #[arg(long, env = "STRIPE_CONNECT_ACCOUNTS", value_delimiter = ',')]
    pub stripe_connect_accounts: Vec<String>,
}

impl Default for BillingWorkerArgs {
    fn default() -> Self {
        Self {
            billing_workers: NonZeroUsize::new(4).expect("4 > 0"),
            stripe_connect_accounts: Vec::new(),
        }
    }
}

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
    /// The event was taken from this worker between its claim and its apply (replayed, or its
    /// lease ran out and another worker claimed it): nothing was written.
    ClaimLost,
}

/// How long a claimed event (or queued customer re-read) belongs to the worker that claimed
/// it: longer than the slowest Stripe read (4 attempts of 10 s and their backoff), so only a
/// worker that died leaves it to another.
pub const CLAIM_LEASE: Duration = Duration::from_secs(300);

/// An event id and the lease a claim of it wrote (its `next_attempt_at`).
pub type Lease = (String, DateTime<Utc>);

/// What the claim statement returns: id, type, payload, received_at, lease.
type ClaimRow = (String, String, Value, DateTime<Utc>, DateTime<Utc>);

/// One leased event.
struct Claim {
    id: String,
    event_type: String,
    payload: Value,
    received_at: DateTime<Utc>,
    /// The `next_attempt_at` the claim wrote: the lease's token.
    lease: DateTime<Utc>,
}

/// An event ready to apply.
enum Prepared {
    /// Nothing to apply; the outcome is recorded.
    Done(Outcome),
    Sync {
        event: Box<parse::ParsedEvent>,
        customer: String,
        read: Option<Result<super::stripe_api::Read, super::stripe_api::StripeApiError>>,
    },
}

/// Whether `claim` still holds its event, locking the row for the rest of `tx`.
async fn still_claimed(
    tx: &mut Transaction<'_, Postgres>,
    claim: &Claim,
) -> Result<bool, sqlx::Error> {
    let held: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM stripe_events WHERE id = $1 AND state IN ('pending', 'failed') \
         AND next_attempt_at = $2 FOR UPDATE",
    )
    .bind(&claim.id)
    .bind(claim.lease)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(held.is_some())
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
    /// See [`CLAIM_LEASE`].
    pub claim_lease: Duration,
    /// Claims of events whose settling failed for the database: released when it answers.
    /// Shared by the clones of one worker (the loops of [`Worker::run_workers`]).
    pub unsettled: Arc<std::sync::Mutex<Vec<Lease>>>,
    /// Connect: the connected accounts (`acct_…`) whose events are applied
    /// (`STRIPE_CONNECT_ACCOUNTS`); an event of any other account fails for good.
    pub connect_accounts: Arc<BTreeSet<String>>,
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
            claim_lease: CLAIM_LEASE,
            unsettled: Arc::default(),
            connect_accounts: Arc::default(),
        }
    }

    /// Reads the customer's subscriptions from `api` after each event.
    pub fn with_stripe(mut self, api: Arc<StripeApi>) -> Self {
        self.stripe = Some(api);
        self
    }

    /// Applies the events of these connected accounts (Connect); see
    /// [`Worker::connect_accounts`].
    pub fn with_connect_accounts<I: IntoIterator<Item = String>>(mut self, accounts: I) -> Self {
        self.connect_accounts = Arc::new(
            accounts
                .into_iter()
                .map(|a| a.trim().to_owned())
                .filter(|a| !a.is_empty())
                .collect(),
        );
        self
    }

    /// Refuses events whose `livemode` differs from `livemode`.
    pub fn with_livemode(mut self, livemode: Option<bool>) -> Self {
        self.livemode = livemode;
        self
    }

    /// Processes one due event; `None` when none is due.
    ///
    /// Claim → call Stripe → apply: the claim is one autocommitted statement that leases the
    /// event (pushes its `next_attempt_at` [`Worker::claim_lease`] ahead, so other workers pass
    /// it by); the Stripe read runs with no transaction open and no row locked; the apply is one
    /// short transaction that first re-checks the lease (a replay, or a lease that ran out and
    /// another worker's claim, took the event away: this worker's result is dropped). A worker
    /// that dies between claim and apply leaves the event due again when the lease ends.
    pub async fn process_one(
        &self,
    ) -> Result<Option<(String, Result<Outcome, BillingError>)>, sqlx::Error> {
        self.release_unsettled().await?;
        let Some(claim) = self.claim_event().await? else {
            return Ok(None);
        };
        let (id, lease) = (claim.id.clone(), claim.lease);
        let settled = self.settle(claim).await;
        if settled.is_err() {
            // The database failed under the claim: released as soon as it answers again
            // rather than when the lease ends.
            if let Ok(mut unsettled) = self.unsettled.lock() {
                unsettled.push((id, lease));
            }
        }
        settled
    }

    /// Makes the events whose claim this worker could not settle (the database failed) due
    /// again now, while they still carry this worker's lease.
    async fn release_unsettled(&self) -> Result<(), sqlx::Error> {
        let pending: Vec<Lease> = match self.unsettled.lock() {
            Ok(mut u) => std::mem::take(&mut *u),
            Err(_) => return Ok(()),
        };
        for (i, (id, lease)) in pending.iter().enumerate() {
            let released = sqlx::query(
                "UPDATE stripe_events SET next_attempt_at = now() \
                 WHERE id = $1 AND next_attempt_at = $2 AND state IN ('pending', 'failed')",
            )
            .bind(id)
            .bind(lease)
            .execute(&self.db)
            .await;
            if let Err(error) = released {
                if let Ok(mut u) = self.unsettled.lock() {
                    u.extend(pending[i..].iter().cloned());
                }
                return Err(error);
            }
            tracing::info!(event_id = %id, "released a claim the database failed under");
        }
        Ok(())
    }

    /// Prepares, applies and records one claimed event.
    async fn settle(
        &self,
        claim: Claim,
    ) -> Result<Option<(String, Result<Outcome, BillingError>)>, sqlx::Error> {
        let prepared = self.prepare(&claim.payload).await;
        let mut tx = self.db.begin().await?;
        if !still_claimed(&mut tx, &claim).await? {
            tx.rollback().await?;
            tracing::info!(event_id = %claim.id, event_type = %claim.event_type, "stripe event claimed again elsewhere (replayed or lease ended); result dropped");
            return Ok(Some((claim.id, Ok(Outcome::ClaimLost))));
        }
        let result = match prepared {
            Ok(prepared) => self.apply(&mut tx, prepared).await,
            Err(error) => Err(error),
        };
        let Claim {
            id,
            event_type,
            received_at,
            lease,
            ..
        } = claim;
        match &result {
            Ok(outcome) => {
                let (state, detail) = match outcome {
                    Outcome::Skipped(why) => ("skipped", *why),
                    Outcome::Ignored(why) => ("ignored", *why),
                    Outcome::Applied | Outcome::ClaimLost => ("applied", "applied"),
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
                // Only while this worker still holds the lease (see above).
                let attempts: Option<i32> = sqlx::query_scalar(
                    "UPDATE stripe_events SET state = 'failed', attempts = attempts + 1, \
                     last_error = $2, error_kind = $3, \
                     next_attempt_at = CASE WHEN $4 THEN 'infinity'::timestamptz ELSE now() END \
                     WHERE id = $1 AND state IN ('pending', 'failed') AND next_attempt_at = $5 \
                     RETURNING attempts",
                )
                .bind(&id)
                .bind(error.to_string())
                .bind(error.metric_label())
                // Never due again by itself; a replay by hand queues it once more.
                .bind(error.is_permanent())
                .bind(lease)
                .fetch_optional(&self.db)
                .await?;
                let Some(attempts) = attempts else {
                    tracing::info!(event_id = %id, event_type = %event_type, error_kind = error.metric_label(), "stripe event failed after its lease was taken over; result dropped");
                    return Ok(Some((id, result)));
                };
                if !error.is_permanent() {
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

    /// Leases the next due event, in one autocommitted statement.
    async fn claim_event(&self) -> Result<Option<Claim>, sqlx::Error> {
        let row: Option<ClaimRow> = sqlx::query_as(
            "UPDATE stripe_events SET next_attempt_at = now() + make_interval(secs => $1) \
             WHERE id = (SELECT id FROM stripe_events \
                 WHERE state IN ('pending', 'failed') AND next_attempt_at <= now() \
                 ORDER BY next_attempt_at, created LIMIT 1 FOR UPDATE SKIP LOCKED) \
             RETURNING id, event_type, payload, received_at, next_attempt_at",
        )
        .bind(self.claim_lease.as_secs_f64())
        .fetch_optional(&self.db)
        .await?;
        Ok(
            row.map(|(id, event_type, payload, received_at, lease)| Claim {
                id,
                event_type,
                payload,
                received_at,
                lease,
            }),
        )
    }

    /// Everything before the apply that needs no transaction: parse, the mode check, and the
    /// Stripe read (a failed read queues the customer's re-read, durably, before any Tenant can
    /// say `StripeUnreachable`).
    async fn prepare(&self, payload: &Value) -> Result<Prepared, BillingError> {
        let event = parse::parse_event(payload)?;
        if let (Some(key), Some(event_live)) = (self.livemode, event.livemode) {
            if key != event_live {
                return Err(BillingError::LivemodeMismatch {
                    event: event_live,
                    key: if key { "live" } else { "test" },
                });
            }
        }
        // Connect: an event of a connected account is applied only for the accounts listed,
        // and its read-back is made on that account.
        let account = payload.get("account").and_then(Value::as_str);
        if let Some(account) = account {
            if !self.connect_accounts.contains(account) {
                return Err(BillingError::ConnectAccountNotAllowed(account.to_owned()));
            }
        }
        let Some(customer) = event.observation.customer_id().map(str::to_owned) else {
            return Ok(Prepared::Done(Outcome::Skipped("event type not handled")));
        };
        if let parse::Observation::Ignored(why) = event.observation {
            return Ok(Prepared::Done(Outcome::Skipped(why)));
        }
        let read = self.read_customer(&customer, account).await;
        if let Some(Err(error)) = &read {
            let mut conn = self.db.acquire().await?;
            Self::schedule_resync(&mut conn, &customer, account, error).await?;
        }
        Ok(Prepared::Sync {
            event: Box::new(event),
            customer,
            read,
        })
    }

    /// Applies a prepared event in `tx` (which holds the event's row lock).
    async fn apply(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        prepared: Prepared,
    ) -> Result<Outcome, BillingError> {
        let (event, customer, read) = match prepared {
            Prepared::Done(outcome) => return Ok(outcome),
            Prepared::Sync {
                event,
                customer,
                read,
            } => (event, customer, read),
        };
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
    /// Claimed as events are (a lease on `due_at`), so no lock is held across the read.
    pub async fn resync_one(&self) -> Result<Option<String>, BillingError> {
        let claimed: Option<(String, DateTime<Utc>, Option<String>)> = sqlx::query_as(
            "UPDATE billing_resync SET due_at = now() + make_interval(secs => $1) \
             WHERE customer_id = (SELECT customer_id FROM billing_resync WHERE due_at <= now() \
                 ORDER BY due_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
             RETURNING customer_id, due_at, account",
        )
        .bind(self.claim_lease.as_secs_f64())
        .fetch_optional(&self.db)
        .await?;
        let Some((customer, lease, account)) = claimed else {
            return Ok(None);
        };
        let read = self.read_customer(&customer, account.as_deref()).await;
        if let Some(Err(error)) = &read {
            // Replaces the lease with the next backoff.
            let mut conn = self.db.acquire().await?;
            Self::schedule_resync(&mut conn, &customer, account.as_deref(), error).await?;
        }
        let mut tx = self.db.begin().await?;
        self.resync_in(&mut tx, &customer, read, Some(lease))
            .await?;
        tx.commit().await?;
        Ok(Some(customer))
    }

    /// Reads `customer` from Stripe now and applies what it shows (a failed read is queued).
    pub async fn resync_customer(&self, customer: &str) -> Result<(), BillingError> {
        let read = self.read_customer(customer, None).await;
        if let Some(Err(error)) = &read {
            let mut conn = self.db.acquire().await?;
            Self::schedule_resync(&mut conn, customer, None, error).await?;
        }
        let mut tx = self.db.begin().await?;
        self.resync_in(&mut tx, customer, read, None).await?;
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

    /// Runs `workers` loops of [`Worker::run`] until `shutdown` resolves; each finishes the event
    /// it is applying before it returns.
    pub async fn run_workers(
        self,
        workers: NonZeroUsize,
        wake: std::sync::Arc<tokio::sync::Notify>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let loops = futures::future::join_all((0..workers.get()).map(|_| {
            let mut stopped = stopped.clone();
            self.clone().run(wake.clone(), async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
        }));
        tokio::pin!(loops);
        tokio::select! {
            _ = &mut loops => return,
            () = shutdown => {}
        }
        let _ = stop.send(true);
        loops.await;
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
