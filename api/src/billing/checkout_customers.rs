//! `checkout_customers`: the Stripe customer each completed Checkout Session made, with the
//! dashboard user (`client_reference_id`) and the dashboard token it was made for. The worker
//! records it from `checkout.session.completed`; a dashboard token's reads are checked against
//! it ("the customers it checked out"). It is also the (dashboard, user) → customer lookup of a
//! checkout that reuses its user's customer ([`customer_of_user`], [`reusable_by`]).
//!
//! The dashboard is named by the session itself (`metadata.dashboard`, set by the checkout
//! endpoint), not by a claim on the `client_reference_id`: two dashboards may both have a user
//! `user-1`, and neither can reach the other's, because ownership is per session.

use std::time::Duration;

use sqlx::{PgPool, Postgres, Transaction};
use stackplane_core::billing::parse::CheckoutObservation;
use uuid::Uuid;

use crate::http_error::ApiError;

/// Timeout of the ownership lookups of a dashboard's read or checkout.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// Records the customer of a completed checkout, in the event's transaction. The first record
/// of a customer stands (a replayed or redelivered event changes nothing). A `dashboard` that
/// is no dashboard token of this installation (another installation sharing the Stripe
/// account, a hand-made session) records the customer as nobody's dashboard's.
pub async fn record(
    tx: &mut Transaction<'_, Postgres>,
    checkout: &CheckoutObservation,
) -> Result<(), sqlx::Error> {
    let dashboard = checkout
        .dashboard
        .as_deref()
        .and_then(|d| Uuid::parse_str(d).ok());
    let recorded = sqlx::query(
        "INSERT INTO checkout_customers (customer_id, client_reference_id, dashboard_id, checkout_session_id)
         VALUES ($1, $2, (SELECT id FROM api_tokens WHERE id = $3 AND scope = 'dashboard'), $4)
         ON CONFLICT (customer_id) DO NOTHING",
    )
    .bind(&checkout.customer_id)
    .bind(&checkout.client_reference_id)
    .bind(dashboard)
    .bind(&checkout.session_id)
    .execute(&mut **tx)
    .await?;
    if recorded.rows_affected() > 0 {
        tracing::info!(customer_id = %checkout.customer_id, dashboard_id = ?dashboard, session = ?checkout.session_id, "checkout customer recorded");
    }
    Ok(())
}

/// Whether dashboard token `dashboard` checked out Stripe customer `customer`. 503 when the
/// database cannot be asked.
pub async fn checked_out_by(
    db: &PgPool,
    customer: &str,
    dashboard: Uuid,
) -> Result<bool, ApiError> {
    let lookup = sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM checkout_customers WHERE customer_id = $1 AND dashboard_id = $2)",
    )
    .bind(customer)
    .bind(dashboard)
    .fetch_one(db);
    match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
        Ok(Ok(owned)) => Ok(owned),
        Ok(Err(error)) => {
            tracing::error!(%error, customer_id = %customer, "looking up a checkout customer");
            Err(ApiError::unavailable(
                "cannot check the caller's customers now; try again",
            ))
        }
        Err(_) => {
            tracing::error!(customer_id = %customer, "looking up a checkout customer timed out");
            Err(ApiError::unavailable(
                "cannot check the caller's customers now; try again",
            ))
        }
    }
}

/// Why a checkout's customer lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("looking up checkout customers: {0}")]
    Database(#[from] sqlx::Error),
    #[error("looking up checkout customers timed out")]
    Timeout,
}

impl LookupError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            LookupError::Database(_) => "database",
            LookupError::Timeout => "timeout",
        }
    }
}

/// The customer recorded with the first completed checkout of user `user_ref` made by
/// `dashboard` (`None`: the admin's checkouts, which name no dashboard). Two dashboards' users
/// of one name never share a customer.
pub async fn customer_of_user(
    db: &PgPool,
    dashboard: Option<Uuid>,
    user_ref: &str,
) -> Result<Option<String>, LookupError> {
    let lookup = sqlx::query_scalar::<_, String>(
        "SELECT customer_id FROM checkout_customers
         WHERE dashboard_id IS NOT DISTINCT FROM $1 AND client_reference_id = $2
         ORDER BY created_at, customer_id LIMIT 1",
    )
    .bind(dashboard)
    .bind(user_ref)
    .fetch_optional(db);
    tokio::time::timeout(LOOKUP_TIMEOUT, lookup)
        .await
        .map_err(|_| LookupError::Timeout)?
        .map_err(LookupError::from)
}

/// Which of `customers` the caller may reuse: for a dashboard, those its own checkouts made;
/// the admin (`None`) may reuse any.
pub async fn reusable_by(
    db: &PgPool,
    dashboard: Option<Uuid>,
    customers: &[String],
) -> Result<Vec<String>, LookupError> {
    let Some(dashboard) = dashboard else {
        return Ok(customers.to_vec());
    };
    let lookup = sqlx::query_scalar::<_, String>(
        "SELECT customer_id FROM checkout_customers WHERE dashboard_id = $1 AND customer_id = ANY($2)",
    )
    .bind(dashboard)
    .bind(customers)
    .fetch_all(db);
    tokio::time::timeout(LOOKUP_TIMEOUT, lookup)
        .await
        .map_err(|_| LookupError::Timeout)?
        .map_err(LookupError::from)
}
