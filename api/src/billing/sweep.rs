//! The sweep: every `--billing-sync-interval` seconds, lists every subscription of the account
//! from Stripe (paginated) and brings each customer's Tenants in line, repairing what lost
//! webhooks left wrong (a subscription created while webhooks were off gets its Tenant, one
//! cancelled meanwhile gets `cancelledAt`). Only one replica sweeps at a time: the sweep holds a
//! session-level advisory lock on a connection of its own, released when it ends or when that
//! connection dies with its process.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sqlx::Connection;

use super::error::BillingError;
use super::stripe_api::Read;
use super::stripe_api::StripeApiError;
use super::worker::Worker;
use stackplane_core::billing::parse::SubscriptionObservation;

/// The advisory lock key of the sweep ("stackplane billing sweep").
pub const SWEEP_LOCK: i64 = 0x5350_4253_5745_4550;

/// What a sweep did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SweepReport {
    pub pages: u32,
    /// Stripe API calls, retries included.
    pub calls: u32,
    pub subscriptions: usize,
    pub customers: usize,
    pub tenants_written: u32,
    /// Customers whose sync failed (logged; the next sweep or event tries again).
    pub customers_failed: u32,
    pub list_seconds: f64,
    pub seconds: f64,
}

/// Why a sweep did not run through.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("no Stripe API reader is configured")]
    NoReader,
    #[error(transparent)]
    Stripe(#[from] StripeApiError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("Kubernetes: {0}")]
    Kube(#[from] kube::Error),
}

impl SweepError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            SweepError::NoReader => "no_reader",
            SweepError::Stripe(e) => e.metric_label(),
            SweepError::Database(_) => "database",
            SweepError::Kube(_) => "kubernetes",
        }
    }
}

impl Worker {
    /// One sweep; `Ok(None)` when another replica is sweeping.
    pub async fn sweep(&self) -> Result<Option<SweepReport>, SweepError> {
        let api = self.stripe.clone().ok_or(SweepError::NoReader)?;
        // A connection of its own, closed at the end: the session lock goes with it.
        let mut lock = self.db.acquire().await?.detach();
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(SWEEP_LOCK)
            .fetch_one(&mut lock)
            .await?;
        if !locked {
            self.metrics.sweep("skipped_locked");
            let _ = lock.close().await;
            return Ok(None);
        }
        let result = self.sweep_locked(&api).await;
        let _ = lock.close().await;
        match &result {
            Ok(report) => {
                self.metrics.sweep("completed");
                self.metrics.billing_sweep_seconds.observe(report.seconds);
                tracing::info!(
                    pages = report.pages,
                    calls = report.calls,
                    subscriptions = report.subscriptions,
                    customers = report.customers,
                    tenants_written = report.tenants_written,
                    customers_failed = report.customers_failed,
                    seconds = report.seconds,
                    "billing sweep completed"
                );
            }
            Err(error) => {
                self.metrics.sweep(error.metric_label());
                tracing::warn!(error_kind = error.metric_label(), %error, "billing sweep failed");
            }
        }
        result.map(Some)
    }

    async fn sweep_locked(
        &self,
        api: &super::stripe_api::StripeApi,
    ) -> Result<SweepReport, SweepError> {
        let started = Instant::now();
        // Every event created after the listing started is newer than what it shows.
        let at_ms = chrono::Utc::now().timestamp_millis();
        let listing = api.all_subscriptions().await?;
        let list_seconds = started.elapsed().as_secs_f64();
        let mut by_customer: BTreeMap<String, Vec<SubscriptionObservation>> = BTreeMap::new();
        let subscriptions = listing.subscriptions.len();
        for s in listing.subscriptions {
            by_customer
                .entry(s.customer_id.clone())
                .or_default()
                .push(s);
        }
        // Which Tenants exist: one whose subscription is live but that is missing (the Tenant
        // CRD was deleted and reinstalled) is recreated by this sweep, and adopts its stack.
        let present = std::sync::Arc::new(self.tenant_names().await?);
        let mut report = SweepReport {
            pages: listing.pages,
            calls: listing.calls,
            subscriptions,
            customers: by_customer.len(),
            list_seconds,
            ..Default::default()
        };
        for (customer, subscriptions) in by_customer {
            match self
                .sweep_customer(&customer, at_ms, subscriptions, present.clone())
                .await
            {
                Ok(written) => report.tenants_written += written,
                Err(error) => {
                    report.customers_failed += 1;
                    tracing::warn!(customer_id = %customer, error_kind = error.metric_label(), %error, "sweep: customer not synced");
                }
            }
        }
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    async fn sweep_customer(
        &self,
        customer: &str,
        at_ms: i64,
        subscriptions: Vec<SubscriptionObservation>,
        tenants_present: std::sync::Arc<std::collections::BTreeSet<String>>,
    ) -> Result<u32, BillingError> {
        let mut tx = self.db.begin().await?;
        let read = Read {
            at_ms,
            subscriptions,
            tenants_present: Some(tenants_present),
        };
        let synced = self
            .sync_customer(&mut tx, customer, None, Some(Ok(read)))
            .await?;
        tx.commit().await?;
        Ok(synced.tenants_written)
    }

    /// The names of every Tenant, listed by pages of metadata only.
    async fn tenant_names(&self) -> Result<std::collections::BTreeSet<String>, SweepError> {
        let api: kube::Api<kube::core::PartialObjectMeta<stackplane_crds::Tenant>> =
            kube::Api::all(self.kube.clone());
        let mut names = std::collections::BTreeSet::new();
        let mut params = kube::api::ListParams::default().limit(500);
        loop {
            let page = api.list_metadata(&params).await?;
            names.extend(page.items.iter().map(kube::ResourceExt::name_any));
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => return Ok(names),
            }
        }
    }

    /// Sweeps every `interval` until `shutdown` resolves (the first sweep one interval after
    /// start, so a rolling restart does not make every replica list Stripe at once).
    pub async fn run_sweeps(
        self,
        interval: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = ticks.tick() => {
                    if let Ok(None) = self.sweep().await {
                        tracing::debug!("another replica is sweeping");
                    }
                }
            }
        }
    }
}
