//! Prometheus metrics of the api, served at `GET /metrics`.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// The event type, or `unknown` when the request was rejected before it was read.
    pub event_type: String,
    /// `stored`, `duplicate` or the rejection reason.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BucketLabels {
    /// The rate-limit bucket family (`address`, `failed_auth`, `identity`, ...).
    pub bucket: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProcessedLabels {
    pub event_type: String,
    /// `applied`, `skipped` or the error category.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

/// Every metric of the api, shared: a clone is one reference count (the state of every request
/// and middleware holds one, so cloning is on the path of every request).
#[derive(Clone)]
pub struct Metrics(Arc<MetricSet>);

impl std::ops::Deref for Metrics {
    type Target = MetricSet;
    fn deref(&self) -> &MetricSet {
        &self.0
    }
}

/// The metrics themselves (reached through [`Metrics`]).
pub struct MetricSet {
    registry: Registry,
    pub webhook_events: Family<WebhookLabels, Counter>,
    pub processed_events: Family<ProcessedLabels, Counter>,
    pub queue_depth: Gauge,
    /// Age of the oldest event still waiting: the lag an operator sees when the worker is stuck.
    pub queue_oldest_seconds: Gauge<f64, AtomicU64>,
    pub processing_lag: Histogram,
    /// Calls to the Stripe API by outcome (`ok`, `rate_limited`, `server_error`, ...).
    pub stripe_api_calls: Family<OutcomeLabels, Counter>,
    /// 1 while this replica's circuit breaker refuses Stripe calls (see `billing::stripe_api`).
    pub stripe_circuit_open: Gauge,
    /// (platform, customer) pairs with more than one live subscription.
    pub billing_conflicts: Gauge,
    /// Sweeps by outcome (`completed`, `failed`, `skipped_locked`).
    pub billing_sweeps: Family<OutcomeLabels, Counter>,
    pub billing_sweep_seconds: Histogram,
    /// Request handlers that panicked (answered as a JSON 500).
    pub panics: Counter,
    /// Audit rows that could not be written.
    pub audit_write_failures: Counter,
    /// Requests answered 429, by bucket.
    pub rate_limited: Family<BucketLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("stackplane");
        let webhook_events = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhook_events",
            "Stripe webhook deliveries by event type and outcome",
            webhook_events.clone(),
        );
        let processed_events = Family::<ProcessedLabels, Counter>::default();
        registry.register(
            "billing_events_processed",
            "Stripe events processed by the billing worker, by type and outcome",
            processed_events.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "billing_queue_depth",
            "Stripe events pending or failed, waiting for the billing worker",
            queue_depth.clone(),
        );
        let queue_oldest_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "billing_queue_oldest_seconds",
            "Age of the oldest Stripe event pending or failed (0 when the queue is empty)",
            queue_oldest_seconds.clone(),
        );
        let processing_lag = Histogram::new(exponential_buckets(0.005, 2.0, 16));
        registry.register(
            "billing_processing_lag_seconds",
            "Time from receiving a Stripe event to the worker finishing it",
            processing_lag.clone(),
        );
        let stripe_api_calls = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "stripe_api_calls",
            "Calls to the Stripe API (reads after events and sweeps), by outcome",
            stripe_api_calls.clone(),
        );
        let stripe_circuit_open = Gauge::default();
        registry.register(
            "stripe_circuit_open",
            "1 while Stripe API calls are refused after consecutive timeouts or 5xx answers \
             (events apply from their payloads until a probe succeeds), else 0",
            stripe_circuit_open.clone(),
        );
        let billing_conflicts = Gauge::default();
        registry.register(
            "billing_conflicts",
            "Tenants (platform, customer) with more than one live Stripe subscription",
            billing_conflicts.clone(),
        );
        let billing_sweeps = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "billing_sweeps",
            "Billing sweeps (every subscription read from Stripe), by outcome",
            billing_sweeps.clone(),
        );
        let billing_sweep_seconds = Histogram::new(exponential_buckets(0.5, 2.0, 14));
        registry.register(
            "billing_sweep_seconds",
            "Duration of a completed billing sweep",
            billing_sweep_seconds.clone(),
        );
        let panics = Counter::default();
        registry.register(
            "api_panics",
            "Request handlers that panicked; each was answered with a JSON 500",
            panics.clone(),
        );
        let audit_write_failures = Counter::default();
        registry.register(
            "audit_write_failures",
            "Audit log rows that could not be written (the call itself was answered)",
            audit_write_failures.clone(),
        );
        let rate_limited = Family::<BucketLabels, Counter>::default();
        registry.register(
            "api_rate_limited",
            "Requests answered 429 by a rate limit, by bucket",
            rate_limited.clone(),
        );
        Self(Arc::new(MetricSet {
            registry,
            panics,
            audit_write_failures,
            rate_limited,
            stripe_api_calls,
            stripe_circuit_open,
            billing_conflicts,
            billing_sweeps,
            billing_sweep_seconds,
            webhook_events,
            processed_events,
            queue_depth,
            queue_oldest_seconds,
            processing_lag,
        }))
    }

    /// Samples the billing queue every `every` until the future is dropped, so a scrape never
    /// runs a query: `/metrics` shows the last sample.
    pub async fn sample_queue(self, db: sqlx::PgPool, every: std::time::Duration) {
        loop {
            match tokio::time::timeout(
                every.max(std::time::Duration::from_secs(1)),
                self.refresh_queue(&db),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "sampling the billing queue"),
                Err(_) => tracing::warn!("sampling the billing queue timed out"),
            }
            tokio::time::sleep(every).await;
        }
    }
}

impl MetricSet {
    pub fn webhook(&self, event_type: &str, outcome: &str) {
        self.webhook_events
            .get_or_create(&WebhookLabels {
                event_type: event_type.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn processed(&self, event_type: &str, outcome: &str) {
        self.processed_events
            .get_or_create(&ProcessedLabels {
                event_type: event_type.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn stripe_call(&self, outcome: &str) {
        self.stripe_api_calls
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn panic(&self) {
        self.panics.inc();
    }

    pub fn rate_limited(&self, bucket: &str) {
        self.rate_limited
            .get_or_create(&BucketLabels {
                bucket: bucket.to_owned(),
            })
            .inc();
    }

    pub fn sweep(&self, outcome: &str) {
        self.billing_sweeps
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Reads the billing queue's depth and oldest entry from the database, so every replica's
    /// scrape shows the shared queue whether or not its worker has run lately.
    pub async fn refresh_queue(&self, db: &sqlx::PgPool) -> Result<(), sqlx::Error> {
        let (depth, oldest): (i64, Option<f64>) = sqlx::query_as(
            "SELECT count(*), EXTRACT(EPOCH FROM now() - min(received_at))::float8 \
             FROM stripe_events WHERE state IN ('pending', 'failed')",
        )
        .fetch_one(db)
        .await?;
        // Depth and age together, before the next query's await: a scrape in between would
        // otherwise show the new depth with the previous age (a waiting event 0 s old).
        self.queue_depth.set(depth);
        self.queue_oldest_seconds
            .set(oldest.unwrap_or(0.0).max(0.0));
        // Every replica shows the shared count, like the queue depth.
        let conflicts: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT 1 FROM subscription_state \
             WHERE platform IS NOT NULL AND status NOT IN ('canceled', 'incomplete_expired') \
             GROUP BY customer_id, platform HAVING count(*) > 1) AS c",
        )
        .fetch_one(db)
        .await?;
        self.billing_conflicts.set(conflicts);
        Ok(())
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
