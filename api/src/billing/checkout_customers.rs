//! `checkout_customers`: the Stripe customer each completed Checkout Session made, with the
//! dashboard user (`client_reference_id`) and the dashboard token it was made for. The worker
//! records it from `checkout.session.completed`; a dashboard token's reads are checked against
//! it ("the customers it checked out"). It is also the (dashboard, user) → customer lookup a
//! checkout that reuses its user's customer will need.
//!
//! The dashboard is named by the session itself (`metadata.dashboard`, set by the checkout
//! endpoint), not by a claim on the `client_reference_id`: two dashboards may both have a user
//! `user-1`, and neither can reach the other's, because ownership is per session.

use std::time::Duration;

use sqlx::{PgPool, Postgres, Transaction};
use stackplane_core::billing::parse::CheckoutObservation;
use uuid::Uuid;

use crate::http_error::ApiError;

/// Timeout of the ownership lookup of a dashboard's read.
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
