//! Reads subscriptions from the Stripe API, the source of truth webhooks only trigger reads of:
//! `GET /v1/subscriptions?status=all` (one customer's, or every one for the sweep), paginated;
//! and customers by e-mail (`GET /v1/customers?email=`) for a checkout that reuses its customer.
//!
//! Every call waits for the process-wide rate limit (`--stripe-api-rate`), has its own timeout,
//! and is retried with exponential backoff and jitter on 429, 409 (Stripe's lock timeouts),
//! 5xx, timeouts and connection errors, unless Stripe says otherwise with `Stripe-Should-Retry`.
//! Consecutive timeouts, connection errors and 5xx open a circuit
//! ([`stackplane_core::billing::circuit`]): while it is open calls are refused at once
//! ([`StripeApiError::CircuitOpen`]) and callers apply webhook payloads instead, so a hanging
//! Stripe never holds the billing queue; one probe per cool-down closes it again.
//! Responses go through the one tolerant parser ([`stackplane_core::billing::parse`]).
//!
//! A plain HTTP client rather than async-stripe's typed list call: the typed response refuses
//! subscriptions of older API versions (see [`stackplane_core::billing::parse`]), and billing needs the raw JSON.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::Value;

use crate::metrics::Metrics;
use stackplane_core::billing::circuit::{
    Admission, CallOutcome, Circuit, CircuitPolicy, Transition,
};
use stackplane_core::billing::parse::{
    parse_customer_page, parse_subscription_page, CustomerObservation, SubscriptionObservation,
};

/// Stripe's production API.
pub const DEFAULT_API_BASE: &str = "https://api.stripe.com/";
/// Stripe's largest page.
pub const PAGE_SIZE: u32 = 100;

/// Flags of the Stripe reads and the sweep.
#[derive(clap::Args, Debug, Clone)]
pub struct StripeSyncArgs {
    /// Calls per second to the Stripe API, across the reads after events and the sweep (Stripe's
    /// own limit is 100/s in live mode, 25/s in test mode).
    #[arg(long, env = "STACKPLANE_STRIPE_API_RATE", default_value_t = NonZeroU32::new(20).expect("20 > 0"))]
    pub stripe_api_rate: NonZeroU32,
    /// Seconds between sweeps that list every subscription and repair what lost webhooks left
    /// wrong; 0 turns the sweep off.
    #[arg(long, env = "STACKPLANE_BILLING_SYNC_INTERVAL", default_value_t = 3600)]
    pub billing_sync_interval: u64,
    /// Consecutive Stripe timeouts, connection errors or 5xx answers that open the circuit:
    /// events then apply from their payloads (`BillingSynced=False`, `StripeUnreachable`)
    /// without calling Stripe until a probe succeeds.
    #[arg(long, env = "STACKPLANE_STRIPE_CIRCUIT_FAILURES", default_value_t = 3)]
    pub stripe_circuit_failures: u32,
    /// Seconds an open circuit refuses Stripe calls before one probe is let through.
    #[arg(
        long,
        env = "STACKPLANE_STRIPE_CIRCUIT_COOL_DOWN",
        default_value_t = 30
    )]
    pub stripe_circuit_cool_down: u64,
}

impl Default for StripeSyncArgs {
    fn default() -> Self {
        Self {
            stripe_api_rate: NonZeroU32::new(20).expect("20 > 0"),
            billing_sync_interval: 3600,
            stripe_circuit_failures: 3,
            stripe_circuit_cool_down: 30,
        }
    }
}

impl StripeSyncArgs {
    /// The circuit breaker these flags ask for.
    pub fn circuit(&self) -> CircuitPolicy {
        CircuitPolicy {
            threshold: self.stripe_circuit_failures.max(1),
            cool_down: Duration::from_secs(self.stripe_circuit_cool_down),
        }
    }
}

/// How calls are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per call, the first included.
    pub attempts: u32,
    /// Delay before the first retry; doubles with each one.
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// Timeout of each attempt.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 4,
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
            timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (1-based): doubling, capped, times [0.5, 1).
    pub fn delay(&self, retry: u32) -> Duration {
        let full = self
            .first_delay
            .saturating_mul(2u32.saturating_pow(retry.saturating_sub(1)))
            .min(self.max_delay);
        full.mul_f64(0.5 + fastrand::f64() / 2.0)
    }
}

/// Whether a failed attempt is retried: `Stripe-Should-Retry` decides when Stripe sent it;
/// otherwise transport errors and timeouts (`status` None), 409, 429 and 5xx are retried.
pub fn should_retry(status: Option<u16>, stripe_should_retry: Option<bool>) -> bool {
    if let Some(decided) = stripe_should_retry {
        return decided;
    }
    match status {
        None => true,
        Some(s) => s == 409 || s == 429 || s >= 500,
    }
}

/// Why a read from Stripe failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StripeApiError {
    #[error("Stripe API unreachable after {attempts} attempts: {message}")]
    Unreachable { attempts: u32, message: String },
    #[error("Stripe API answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("Stripe API response cannot be read: {0}")]
    Malformed(String),
    /// Refused without a call. The message stays the same while the circuit is open, so the
    /// `BillingSynced` condition it ends up in is not rewritten on every re-read.
    #[error(
        "Stripe API not called: the circuit is open after consecutive timeouts or 5xx answers"
    )]
    CircuitOpen { retry_after: Duration },
}

impl StripeApiError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            StripeApiError::Unreachable { .. } => "stripe_unreachable",
            StripeApiError::Status { .. } => "stripe_error_status",
            StripeApiError::Malformed(_) => "stripe_malformed",
            StripeApiError::CircuitOpen { .. } => "stripe_circuit_open",
        }
    }
}

/// The subscriptions one listing returned, and what it cost.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub subscriptions: Vec<SubscriptionObservation>,
    pub pages: u32,
    /// HTTP requests made, retries included.
    pub calls: u32,
}

/// The Stripe API reader shared by the worker and the sweep.
pub struct StripeApi {
    http: reqwest::Client,
    base: String,
    secret_key: String,
    limiter: DefaultDirectRateLimiter,
    retry: RetryPolicy,
    circuit: Mutex<Circuit>,
    metrics: Metrics,
}

impl std::fmt::Debug for StripeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeApi")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl StripeApi {
    /// A reader of `base` (default [`DEFAULT_API_BASE`]) with `secret_key`.
    pub fn new(
        base: Option<&str>,
        secret_key: &str,
        rate: NonZeroU32,
        retry: RetryPolicy,
        metrics: Metrics,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(retry.timeout)
            .timeout(retry.timeout)
            .build()?;
        let base = base.unwrap_or(DEFAULT_API_BASE).trim_end_matches('/');
        Ok(Self {
            http,
            base: base.to_owned(),
            secret_key: secret_key.to_owned(),
            limiter: RateLimiter::direct(Quota::per_second(rate)),
            retry,
            circuit: Mutex::new(Circuit::new(CircuitPolicy::default())),
            metrics,
        })
    }

    /// Uses `policy` for the circuit breaker (default: [`CircuitPolicy::default`]).
    pub fn with_circuit(self, policy: CircuitPolicy) -> Self {
        Self {
            circuit: Mutex::new(Circuit::new(policy)),
            ..self
        }
    }

    /// Whether the circuit is open (calls refused) right now.
    pub fn circuit_open(&self) -> bool {
        self.circuit.lock().map(|c| c.is_open()).unwrap_or(false)
    }

    fn admit(&self) -> Admission {
        match self.circuit.lock() {
            Ok(mut c) => c.admit(Instant::now()),
            // A panic while holding this lock cannot leave the counters unusable: call.
            Err(poisoned) => poisoned.into_inner().admit(Instant::now()),
        }
    }

    fn record(&self, outcome: CallOutcome) {
        let transition = match self.circuit.lock() {
            Ok(mut c) => c.record(outcome, Instant::now()),
            Err(poisoned) => poisoned.into_inner().record(outcome, Instant::now()),
        };
        match transition {
            Some(Transition::Opened) => {
                self.metrics.stripe_circuit_open.set(1);
                tracing::warn!(
                    base = %self.base,
                    "Stripe API circuit opened: events apply from their payloads until a probe succeeds"
                );
            }
            Some(Transition::Closed) => {
                self.metrics.stripe_circuit_open.set(0);
                tracing::info!(base = %self.base, "Stripe API circuit closed: Stripe answers again");
            }
            None => {}
        }
    }

    /// Every subscription of `customer`, in every status.
    pub async fn customer_subscriptions(&self, customer: &str) -> Result<Listing, StripeApiError> {
        self.list(Some(customer), None).await
    }

    /// Every subscription of `customer` of the connected `account` (Connect: sent as the
    /// `Stripe-Account` header), or of the platform account when `account` is `None`.
    pub async fn customer_subscriptions_on(
        &self,
        customer: &str,
        account: Option<&str>,
    ) -> Result<Listing, StripeApiError> {
        self.list(Some(customer), account).await
    }

    /// Every subscription of the account, in every status (the sweep).
    pub async fn all_subscriptions(&self) -> Result<Listing, StripeApiError> {
        self.list(None, None).await
    }

    /// Stripe's customers with exactly this e-mail address (`GET /v1/customers?email=`, one
    /// page of [`PAGE_SIZE`]: more customers than that with one address are not looked at).
    pub async fn customers_by_email(
        &self,
        email: &str,
    ) -> Result<Vec<CustomerObservation>, StripeApiError> {
        let query = [
            ("email", email.to_owned()),
            ("limit", PAGE_SIZE.to_string()),
        ];
        let (body, _) = self.get("/v1/customers", &query, None).await?;
        parse_customer_page(&body).map_err(|e| StripeApiError::Malformed(e.to_string()))
    }

    async fn list(
        &self,
        customer: Option<&str>,
        account: Option<&str>,
    ) -> Result<Listing, StripeApiError> {
        let mut listing = Listing::default();
        let mut after: Option<String> = None;
        loop {
            let mut query: Vec<(&str, String)> = vec![
                ("status", "all".to_owned()),
                ("limit", PAGE_SIZE.to_string()),
            ];
            if let Some(c) = customer {
                query.push(("customer", c.to_owned()));
            }
            if let Some(a) = &after {
                query.push(("starting_after", a.clone()));
            }
            let (body, calls) = self.get("/v1/subscriptions", &query, account).await?;
            listing.calls += calls;
            listing.pages += 1;
            let page = parse_subscription_page(&body)
                .map_err(|e| StripeApiError::Malformed(e.to_string()))?;
            listing.subscriptions.extend(page.subscriptions);
            match (page.has_more, page.last_id) {
                (true, Some(last)) => after = Some(last),
                _ => return Ok(listing),
            }
        }
    }

    /// One GET with rate limit, timeout and retries; the JSON body and the attempts made.
    async fn get(
        &self,
        path: &str,
        query: &[(&str, String)],
        account: Option<&str>,
    ) -> Result<(Value, u32), StripeApiError> {
        let url = format!("{}{path}", self.base);
        let mut attempt = 0;
        loop {
            attempt += 1;
            if let Admission::Refuse { retry_after } = self.admit() {
                self.metrics.stripe_call("circuit_open");
                return Err(StripeApiError::CircuitOpen { retry_after });
            }
            self.limiter.until_ready().await;
            let mut request = self
                .http
                .get(&url)
                .bearer_auth(&self.secret_key)
                .query(query);
            if let Some(account) = account {
                request = request.header("Stripe-Account", account);
            }
            let sent = request.send().await;
            let (status, should, message) = match sent {
                Ok(response) if response.status().is_success() => {
                    match response.json::<Value>().await {
                        Ok(body) => {
                            self.metrics.stripe_call("ok");
                            self.record(CallOutcome::Answered);
                            return Ok((body, attempt));
                        }
                        Err(e) => (None, None, format!("reading the body: {e}")),
                    }
                }
                Ok(response) => {
                    let status = response.status().as_u16();
                    let should = response
                        .headers()
                        .get("stripe-should-retry")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<bool>().ok());
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    let message = body
                        .pointer("/error/message")
                        .and_then(Value::as_str)
                        .unwrap_or("no error message")
                        .to_owned();
                    (Some(status), should, message)
                }
                Err(e) => (None, None, e.to_string()),
            };
            let outcome = match status {
                Some(429) => "rate_limited",
                Some(s) if s >= 500 => "server_error",
                Some(_) => "client_error",
                None => "unreachable",
            };
            self.metrics.stripe_call(outcome);
            self.record(match status {
                Some(s) if s < 500 => CallOutcome::Answered,
                _ => CallOutcome::Outage,
            });
            // Once the circuit is open a retry would only be refused: give up now.
            let retry = should_retry(status, should)
                && attempt < self.retry.attempts
                && !self.circuit_open();
            tracing::warn!(path, status, attempt, retry, error = %message, "Stripe API call failed");
            if !retry {
                return Err(match status {
                    Some(status) if status != 429 && status < 500 => {
                        StripeApiError::Status { status, message }
                    }
                    _ => StripeApiError::Unreachable {
                        attempts: attempt,
                        message,
                    },
                });
            }
            tokio::time::sleep(self.retry.delay(attempt)).await;
        }
    }
}

/// The customer's subscriptions as the Stripe API showed them.
#[derive(Debug, Clone)]
pub struct Read {
    /// When the read started, in milliseconds.
    pub at_ms: i64,
    pub subscriptions: Vec<SubscriptionObservation>,
    /// The sweep's list of the Tenants that exist (`None` for a single customer's read): a
    /// Tenant billing applied before but missing from it is written again although nothing
    /// changed — recreated after the Tenant CRD was deleted and reinstalled (it then adopts
    /// its stack), or after a hand deletion. A subscription that ended never recreates one.
    pub tenants_present: Option<std::sync::Arc<std::collections::BTreeSet<String>>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_follow_stripe_should_retry_then_the_status() {
        assert!(should_retry(None, None), "timeouts and connection errors");
        assert!(should_retry(Some(429), None));
        assert!(should_retry(Some(500), None));
        assert!(should_retry(Some(503), None));
        assert!(should_retry(Some(409), None));
        assert!(!should_retry(Some(400), None));
        assert!(!should_retry(Some(401), None));
        assert!(!should_retry(Some(404), None));
        assert!(!should_retry(Some(500), Some(false)), "Stripe said no");
        assert!(should_retry(Some(400), Some(true)), "Stripe said yes");
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let p = RetryPolicy::default();
        for _ in 0..100 {
            let d1 = p.delay(1);
            assert!(d1 >= Duration::from_millis(250) && d1 < Duration::from_millis(500));
            let d3 = p.delay(3);
            assert!(d3 >= Duration::from_millis(1000) && d3 < Duration::from_millis(2000));
            let d10 = p.delay(10);
            assert!(d10 >= Duration::from_secs(4) && d10 < Duration::from_secs(8));
        }
    }
}
