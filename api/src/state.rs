//! What every handler of the public listener can reach. Its own module, so the billing handlers
//! and the router that mounts them do not import each other.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::Notify;

use crate::config::Secrets;
use crate::metrics::Metrics;

/// Billing configuration shared by the handlers.
pub struct BillingState {
    pub secrets: Secrets,
    /// Woken when an event is stored, so an in-process worker picks it up at once.
    pub wake: Arc<Notify>,
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub metrics: Metrics,
    pub billing: Arc<BillingState>,
}
