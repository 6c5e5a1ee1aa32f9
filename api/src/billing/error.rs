//! Errors of the billing intake and worker.

/// Why an event could not be processed (yet).
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error("event payload is not a Stripe event: {0}")]
    MalformedEvent(String),
    #[error("no Platform lists Stripe price {0}")]
    UnknownPrice(String),
    #[error("no Platform {platform} with tier {tier} (from checkout metadata)")]
    UnknownPlatformTier { platform: String, tier: String },
    #[error("subscription {0} has no price a Platform lists and no platform/tier metadata")]
    NoPlatform(String),
    #[error("Kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot encode state: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(
        "event livemode={event} does not match the {key} mode of STRIPE_SECRET_KEY: never applied"
    )]
    LivemodeMismatch { event: bool, key: &'static str },
    #[error("event of connected account {0}, which STRIPE_CONNECT_ACCOUNTS does not list: never applied (add the account and replay the event to apply it)")]
    ConnectAccountNotAllowed(String),
}

impl From<stackplane_core::billing::parse::MalformedEvent> for BillingError {
    fn from(e: stackplane_core::billing::parse::MalformedEvent) -> Self {
        BillingError::MalformedEvent(e.0)
    }
}

impl BillingError {
    /// A short stable category: a metric label, stored as `stripe_events.error_kind`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            BillingError::MalformedEvent(_) => "malformed_event",
            BillingError::UnknownPrice(_) => "unknown_price",
            BillingError::UnknownPlatformTier { .. } => "unknown_platform_tier",
            BillingError::NoPlatform(_) => "no_platform",
            BillingError::Kube(_) => "kubernetes",
            BillingError::Database(_) => "database",
            BillingError::Encode(_) => "encode",
            BillingError::LivemodeMismatch { .. } => "livemode_mismatch",
            BillingError::ConnectAccountNotAllowed(_) => "connect_account_not_allowed",
        }
    }

    /// Whether retrying can never help: the event stays failed until replayed by hand.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            BillingError::LivemodeMismatch { .. } | BillingError::ConnectAccountNotAllowed(_)
        )
    }

    /// Whether the error waits on the Platforms: retried as soon as a Platform changes.
    pub fn waits_on_platforms(&self) -> bool {
        matches!(
            self,
            BillingError::UnknownPrice(_)
                | BillingError::UnknownPlatformTier { .. }
                | BillingError::NoPlatform(_)
        )
    }
}

/// The `error_kind`s retried when the Platforms change.
pub const PLATFORM_ERROR_KINDS: [&str; 3] =
    ["unknown_price", "unknown_platform_tier", "no_platform"];
