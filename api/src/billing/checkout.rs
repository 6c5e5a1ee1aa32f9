//! `POST /api/v1/billing/checkout` and `POST /api/v1/billing/portal`: Stripe Checkout Sessions
//! (subscription mode) for a customer dashboard, and Customer Portal sessions for a tenant's
//! customer.
//!
//! Checkout takes a dashboard token or the admin token. A dashboard's session names the
//! dashboard in its metadata (`dashboard`: the token's id), so the customer it makes becomes
//! that dashboard's when the session completes ([`super::checkout_customers`]); the portal and
//! tenant status answer a dashboard only for such customers.
//!
//! A checkout is validated against the Platforms before anything is sent to Stripe: an unknown
//! platform, tier or price is the caller's error and costs no Stripe call. The session carries
//! `client_reference_id` (the dashboard's user) and `{platform, tier}` metadata on the session and
//! on the subscription it creates, which is how the billing worker links the resulting events
//! back to a Platform tier.
//!
//! A checkout reuses its user's Stripe customer (the order and why:
//! [`stackplane_core::billing::checkout_customer`]): by the `userRef` recorded with the customer
//! of an earlier completed checkout of the same dashboard, else, only with `emailVerified: true`,
//! by e-mail among the customers the caller may reuse (a dashboard: its own checkouts'), else
//! none and Stripe makes one. A session for a found customer names it (`customer`) instead of
//! `customer_email`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use kube::Api;
use serde::Deserialize;
use serde_json::json;
use sqlx::PgPool;
use stackplane_core::billing::checkout_customer::{self, CustomerChoice};
use stackplane_core::billing::parse::DASHBOARD_METADATA_KEY;
use stackplane_crds::Tenant;
use stripe_billing::billing_portal_session::CreateBillingPortalSession;
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionLineItems, CreateCheckoutSessionSubscriptionData,
};
use stripe_checkout::CheckoutSessionMode;

use super::checkout_customers;
use super::prices::PlatformCache;
use super::stripe_api::{StripeApi, StripeApiError};
use crate::audit::AuditDetails;
use crate::caller::Caller;
use crate::http_error::ApiError;
use crate::routes::RouteTable;

/// Stripe's limit on `client_reference_id`.
const MAX_USER_REF: usize = 200;
/// How long a request waits for the first list of Platforms after start-up.
const CACHE_READY_WAIT: Duration = Duration::from_secs(5);
/// Per-attempt timeout of calls to Stripe.
const STRIPE_TIMEOUT: Duration = Duration::from_secs(20);

/// Flags of the checkout and portal endpoints.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CheckoutArgs {
    /// Where Stripe sends the customer after a successful checkout. Stripe replaces
    /// `{CHECKOUT_SESSION_ID}` in it. Without it, checkout answers 503.
    #[arg(long, env = "STACKPLANE_CHECKOUT_SUCCESS_URL")]
    pub checkout_success_url: Option<String>,
    /// Where Stripe sends the customer who abandons a checkout. Without it, checkout answers 503.
    #[arg(long, env = "STACKPLANE_CHECKOUT_CANCEL_URL")]
    pub checkout_cancel_url: Option<String>,
    /// Where the Customer Portal sends the customer back. Without it, portal answers 503.
    #[arg(long, env = "STACKPLANE_PORTAL_RETURN_URL")]
    pub portal_return_url: Option<String>,
    /// Base URL of Stripe's API (default `https://api.stripe.com/`); tests point it at a local
    /// stand-in.
    #[arg(long, env = "STRIPE_API_BASE")]
    pub stripe_api_base: Option<String>,
}

/// Why a checkout or portal request failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("invalid request body: {0}")]
    InvalidBody(String),
    #[error("{0}")]
    InvalidField(String),
    #[error("no Platform {0}")]
    UnknownPlatform(String),
    #[error("Platform {platform} has no tier {tier}")]
    UnknownTier { platform: String, tier: String },
    #[error("price {price} does not buy tier {tier} of Platform {platform}")]
    UnknownPrice {
        platform: String,
        tier: String,
        price: String,
    },
    #[error("tier {tier} of Platform {platform} lists no Stripe price")]
    TierWithoutPrice { platform: String, tier: String },
    #[error("no Tenant {0}")]
    UnknownTenant(String),
    #[error("Tenant {0} has no Stripe customer (spec.customer.stripeCustomerId)")]
    NoStripeCustomer(String),
    #[error("{0} is not configured")]
    NotConfigured(&'static str),
    #[error("the Platform cache is not ready yet")]
    CacheNotReady,
    #[error("{0}")]
    Unavailable(String),
    #[error("Stripe: {0}")]
    Stripe(String),
    #[error("looking up the customer to reuse: {0}")]
    CustomerLookup(#[from] StripeApiError),
    #[error("cannot look up the customer to reuse now; try again")]
    CustomerRecords(#[from] checkout_customers::LookupError),
    #[error("Kubernetes: {0}")]
    Kube(#[from] kube::Error),
}

impl CheckoutError {
    /// A short stable category: the JSON error code and a log field.
    pub fn metric_label(&self) -> &'static str {
        match self {
            CheckoutError::InvalidBody(_) => "invalid_body",
            CheckoutError::InvalidField(_) => "invalid_field",
            CheckoutError::UnknownPlatform(_) => "unknown_platform",
            CheckoutError::UnknownTier { .. } => "unknown_tier",
            CheckoutError::UnknownPrice { .. } => "unknown_price",
            CheckoutError::TierWithoutPrice { .. } => "tier_without_price",
            CheckoutError::UnknownTenant(_) => "not_found",
            CheckoutError::NoStripeCustomer(_) => "no_stripe_customer",
            CheckoutError::NotConfigured(_) => "not_configured",
            CheckoutError::CacheNotReady => "not_ready",
            CheckoutError::Unavailable(_) => "unavailable",
            CheckoutError::Stripe(_) => "stripe_error",
            CheckoutError::CustomerLookup(e) => e.metric_label(),
            CheckoutError::CustomerRecords(_) => "unavailable",
            CheckoutError::Kube(_) => "kubernetes",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            CheckoutError::InvalidBody(_) | CheckoutError::InvalidField(_) => {
                StatusCode::BAD_REQUEST
            }
            CheckoutError::UnknownPlatform(_)
            | CheckoutError::UnknownTier { .. }
            | CheckoutError::UnknownPrice { .. }
            | CheckoutError::TierWithoutPrice { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            CheckoutError::UnknownTenant(_) => StatusCode::NOT_FOUND,
            CheckoutError::NoStripeCustomer(_) => StatusCode::CONFLICT,
            CheckoutError::NotConfigured(_)
            | CheckoutError::CacheNotReady
            | CheckoutError::Unavailable(_)
            | CheckoutError::CustomerRecords(_)
            | CheckoutError::CustomerLookup(StripeApiError::CircuitOpen { .. }) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            CheckoutError::CustomerLookup(_) => StatusCode::BAD_GATEWAY,
            CheckoutError::Stripe(_) | CheckoutError::Kube(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

impl IntoResponse for CheckoutError {
    fn into_response(self) -> Response {
        ApiError::new(self.status(), self.metric_label(), self.to_string()).into_response()
    }
}

impl From<stripe::StripeError> for CheckoutError {
    fn from(error: stripe::StripeError) -> Self {
        CheckoutError::Stripe(match error {
            stripe::StripeError::Stripe(api, status) => format!(
                "{} (HTTP {status})",
                api.message
                    .as_deref()
                    .unwrap_or("Stripe refused the request without a message")
            ),
            other => other.to_string(),
        })
    }
}

/// What the checkout and portal endpoints need besides the shared state.
pub struct Checkout {
    stripe: stripe::Client,
    prices: PlatformCache,
    kube: kube::Client,
    success_url: Option<String>,
    cancel_url: Option<String>,
    portal_return_url: Option<String>,
    /// The Stripe reader (rate limit, timeout, circuit) that finds customers by verified e-mail;
    /// without it a checkout with `emailVerified: true` answers 503.
    stripe_api: Option<Arc<StripeApi>>,
}

impl Checkout {
    /// A Stripe client with `secret_key` (pointed at `args.stripe_api_base` when given) and the
    /// caches the endpoints read.
    pub fn new(
        args: &CheckoutArgs,
        secret_key: &str,
        prices: PlatformCache,
        kube: kube::Client,
    ) -> Result<Self, stripe::StripeError> {
        let mut builder = stripe::ClientBuilder::new(secret_key).timeout(STRIPE_TIMEOUT);
        if let Some(base) = args.stripe_api_base.as_deref().filter(|b| !b.is_empty()) {
            // The client appends `v1/...` to the base as it is.
            let base = if base.ends_with('/') {
                base.to_owned()
            } else {
                format!("{base}/")
            };
            builder = builder.url(base);
        }
        let non_empty = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        Ok(Self {
            stripe: builder.build()?,
            prices,
            kube,
            success_url: non_empty(&args.checkout_success_url),
            cancel_url: non_empty(&args.checkout_cancel_url),
            portal_return_url: non_empty(&args.portal_return_url),
            stripe_api: None,
        })
    }

    /// Finds customers by verified e-mail through `api` (shared with the billing worker, so
    /// one rate limit and one circuit cover every Stripe read).
    pub fn with_stripe_api(mut self, api: Arc<StripeApi>) -> Self {
        self.stripe_api = Some(api);
        self
    }
}

/// State of the billing session routes.
#[derive(Clone)]
struct SessionState {
    checkout: Option<Arc<Checkout>>,
    /// Which customers each dashboard checked out.
    db: PgPool,
}

/// The checkout and portal routes (authenticated by the server); without `checkout` they
/// answer 503. The router and the routes it serves.
pub fn routes(
    checkout: Option<Arc<Checkout>>,
    db: PgPool,
) -> (Router, Vec<(&'static str, &'static str)>) {
    RouteTable::default()
        .post("/api/v1/billing/checkout", create_checkout)
        .post("/api/v1/billing/portal", create_portal)
        .finish(SessionState { checkout, db })
}

/// Body of `POST /api/v1/billing/checkout`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckoutRequest {
    pub platform: String,
    pub tier: String,
    pub email: String,
    /// The dashboard's reference of its user: the session's `client_reference_id`.
    pub user_ref: String,
    /// One of the tier's `stripePriceIds` (e.g. a yearly price); default: the tier's first.
    #[serde(default)]
    pub price: Option<String>,
    /// The dashboard asserts it verified `email` (default false). Only then may the checkout
    /// reuse a customer found by that address.
    #[serde(default)]
    pub email_verified: bool,
}

/// Body of `POST /api/v1/billing/portal`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortalRequest {
    pub tenant: String,
}

/// The price a checkout sells, checked against the Platform's tier.
pub fn choose_price(
    platform: &str,
    tier: &str,
    tier_prices: &[String],
    requested: Option<&str>,
) -> Result<String, CheckoutError> {
    match requested {
        Some(price) if tier_prices.iter().any(|p| p == price) => Ok(price.to_owned()),
        Some(price) => Err(CheckoutError::UnknownPrice {
            platform: platform.to_owned(),
            tier: tier.to_owned(),
            price: price.to_owned(),
        }),
        None => tier_prices
            .first()
            .cloned()
            .ok_or_else(|| CheckoutError::TierWithoutPrice {
                platform: platform.to_owned(),
                tier: tier.to_owned(),
            }),
    }
}

/// Field checks that need no cluster: what Stripe would refuse anyway.
pub fn validate_fields(req: &CheckoutRequest) -> Result<(), CheckoutError> {
    let field = |m: &str| Err(CheckoutError::InvalidField(m.to_owned()));
    if req.platform.trim().is_empty() || req.tier.trim().is_empty() {
        return field("platform and tier are required");
    }
    let email = req.email.trim();
    if email.len() > 512 || !email.contains('@') || email.starts_with('@') || email.ends_with('@') {
        return field("email is not an email address");
    }
    if req.user_ref.trim().is_empty() || req.user_ref.len() > MAX_USER_REF {
        return field("userRef is required and at most 200 characters");
    }
    Ok(())
}

fn configured(state: &SessionState) -> Result<&Checkout, CheckoutError> {
    state
        .checkout
        .as_deref()
        .ok_or(CheckoutError::NotConfigured("Stripe checkout"))
}

/// The response with what the audit row should say besides method, route and status.
fn with_details(mut response: Response, details: serde_json::Value) -> Response {
    response.extensions_mut().insert(AuditDetails(details));
    response
}

async fn create_checkout(
    State(state): State<SessionState>,
    caller: Caller,
    body: Result<Json<CheckoutRequest>, JsonRejection>,
) -> Response {
    if let Err(e) = caller.require_checkout() {
        return e.into_response();
    }
    let req = match body {
        Ok(Json(req)) => req,
        Err(rejection) => return json_rejection(rejection),
    };
    let dashboard = match caller {
        Caller::Dashboard { token_id } => Some(token_id),
        _ => None,
    };
    match checkout_session(&state, &req, dashboard).await {
        Ok((id, url, choice)) => {
            tracing::info!(platform = %req.platform, tier = %req.tier, session = %id, customer_from = choice.label(), customer_id = ?choice.customer(), "checkout session created");
            with_details(
                (StatusCode::CREATED, Json(json!({ "id": id, "url": url }))).into_response(),
                json!({ "platform": req.platform, "tier": req.tier, "userRef": req.user_ref, "session": id,
                    "emailVerified": req.email_verified, "customerFrom": choice.label(), "customer": choice.customer() }),
            )
        }
        Err(error) => {
            tracing::warn!(platform = %req.platform, tier = %req.tier, error_kind = error.metric_label(), %error, "checkout refused");
            let details = json!({ "platform": req.platform, "tier": req.tier, "userRef": req.user_ref, "error": error.metric_label() });
            with_details(error.into_response(), details)
        }
    }
}

/// The customer `req`'s session is for (see [`checkout_customer`]); `dashboard`: the dashboard
/// token asking (`None`: the admin).
async fn find_customer(
    state: &SessionState,
    checkout: &Checkout,
    req: &CheckoutRequest,
    dashboard: Option<uuid::Uuid>,
) -> Result<CustomerChoice, CheckoutError> {
    let user_ref = req.user_ref.trim();
    let by_reference = checkout_customers::customer_of_user(&state.db, dashboard, user_ref).await?;
    if !checkout_customer::email_lookup_allowed(by_reference.as_deref(), req.email_verified) {
        return Ok(checkout_customer::choose(
            by_reference,
            req.email_verified,
            &[],
            |_| false,
        ));
    }
    let api = checkout
        .stripe_api
        .as_deref()
        .ok_or(CheckoutError::NotConfigured(
            "the Stripe API reader (customers by verified e-mail)",
        ))?;
    let by_email = api.customers_by_email(req.email.trim()).await?;
    let ids: Vec<String> = by_email.iter().map(|c| c.id.clone()).collect();
    let reusable = checkout_customers::reusable_by(&state.db, dashboard, &ids).await?;
    Ok(checkout_customer::choose(None, true, &by_email, |c| {
        reusable.iter().any(|r| r == c)
    }))
}

/// A Checkout Session for `req`; `dashboard`: the dashboard token asking, named in the
/// session's metadata (not the subscription's: only the completed session links a customer).
/// The session's id and url, and where its customer came from.
async fn checkout_session(
    state: &SessionState,
    req: &CheckoutRequest,
    dashboard: Option<uuid::Uuid>,
) -> Result<(String, String, CustomerChoice), CheckoutError> {
    let checkout = configured(state)?;
    validate_fields(req)?;
    let (Some(success_url), Some(cancel_url)) = (&checkout.success_url, &checkout.cancel_url)
    else {
        return Err(CheckoutError::NotConfigured(
            "--checkout-success-url / --checkout-cancel-url",
        ));
    };
    if tokio::time::timeout(CACHE_READY_WAIT, checkout.prices.ready())
        .await
        .ok()
        != Some(true)
    {
        return Err(CheckoutError::CacheNotReady);
    }
    let Some(tier_prices) = checkout.prices.tier_prices(&req.platform, &req.tier) else {
        return Err(if checkout.prices.has_platform(&req.platform) {
            CheckoutError::UnknownTier {
                platform: req.platform.clone(),
                tier: req.tier.clone(),
            }
        } else {
            CheckoutError::UnknownPlatform(req.platform.clone())
        });
    };
    let price = choose_price(&req.platform, &req.tier, &tier_prices, req.price.as_deref())?;
    let metadata = HashMap::from([
        ("platform".to_owned(), req.platform.clone()),
        ("tier".to_owned(), req.tier.clone()),
    ]);
    let mut item = CreateCheckoutSessionLineItems::new();
    item.price = Some(price);
    item.quantity = Some(1);
    let mut subscription = CreateCheckoutSessionSubscriptionData::new();
    subscription.metadata = Some(metadata.clone());
    let mut metadata = metadata;
    if let Some(dashboard) = dashboard {
        metadata.insert(DASHBOARD_METADATA_KEY.to_owned(), dashboard.to_string());
    }
    let choice = find_customer(state, checkout, req, dashboard).await?;
    let session = CreateCheckoutSession::new()
        .mode(CheckoutSessionMode::Subscription)
        .client_reference_id(req.user_ref.trim());
    // Stripe takes one or the other: a named customer keeps its own address.
    let session = match choice.customer() {
        Some(customer) => session.customer(customer),
        None => session.customer_email(req.email.trim()),
    };
    let session = session
        .line_items(vec![item])
        .subscription_data(subscription)
        .metadata(metadata)
        .success_url(success_url.as_str())
        .cancel_url(cancel_url.as_str())
        .send(&checkout.stripe)
        .await?;
    let url = session
        .url
        .ok_or_else(|| CheckoutError::Stripe("the Checkout Session has no url".into()))?;
    Ok((session.id.to_string(), url, choice))
}

async fn create_portal(
    State(state): State<SessionState>,
    caller: Caller,
    body: Result<Json<PortalRequest>, JsonRejection>,
) -> Response {
    // The admin, a token of that tenant, or a dashboard that checked out the tenant's customer;
    // any other tenant answers 404, as one that does not exist.
    let req = match body {
        Ok(Json(req)) => req,
        Err(rejection) => return json_rejection(rejection),
    };
    // A name Kubernetes cannot hold is the caller's error (400), never a failed API call. A
    // dashboard's tenant is checked once it is read (its customer decides).
    let named = crate::extract::tenant_name(&req.tenant).and_then(|t| match caller {
        Caller::Dashboard { .. } => Ok(()),
        _ => caller.may_read(t),
    });
    if let Err(e) = named {
        return with_details(e.into_response(), json!({ "tenant": req.tenant }));
    }
    match portal_session(&state, &caller, &req.tenant).await {
        Ok(url) => {
            tracing::info!(tenant = %req.tenant, "portal session created");
            with_details(
                Json(json!({ "url": url })).into_response(),
                json!({ "tenant": req.tenant }),
            )
        }
        Err(error) => {
            tracing::warn!(tenant = %req.tenant, error_kind = error.metric_label(), %error, "portal refused");
            let details = json!({ "tenant": req.tenant, "error": error.metric_label() });
            with_details(error.into_response(), details)
        }
    }
}

async fn portal_session(
    state: &SessionState,
    caller: &Caller,
    tenant: &str,
) -> Result<String, CheckoutError> {
    let checkout = configured(state)?;
    let Some(return_url) = &checkout.portal_return_url else {
        return Err(CheckoutError::NotConfigured("--portal-return-url"));
    };
    if tenant.trim().is_empty() {
        return Err(CheckoutError::InvalidField("tenant is required".into()));
    }
    let api: Api<Tenant> = Api::all(checkout.kube.clone());
    let found = api
        .get_opt(tenant)
        .await?
        .ok_or_else(|| CheckoutError::UnknownTenant(tenant.to_owned()))?;
    if let Caller::Dashboard { .. } = caller {
        // Another's tenant answers exactly as one that does not exist (same code and message).
        let customer = found.spec.customer.stripe_customer_id.as_deref();
        if let Err(denied) = caller
            .may_read_customer_tenant(&state.db, tenant, customer)
            .await
        {
            return Err(if denied.status == StatusCode::NOT_FOUND {
                CheckoutError::UnknownTenant(tenant.to_owned())
            } else {
                CheckoutError::Unavailable(denied.message)
            });
        }
    }
    let customer = found
        .spec
        .customer
        .stripe_customer_id
        .filter(|c| !c.is_empty())
        .ok_or_else(|| CheckoutError::NoStripeCustomer(tenant.to_owned()))?;
    let session = CreateBillingPortalSession::new()
        .customer(customer)
        .return_url(return_url.as_str())
        .send(&checkout.stripe)
        .await?;
    Ok(session.url)
}

/// A malformed or oversized JSON body, in the API's error shape.
fn json_rejection(rejection: JsonRejection) -> Response {
    let status = rejection.status();
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "payload_too_large"
    } else {
        "invalid_body"
    };
    ApiError::new(status, code, rejection.body_text()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prices() -> Vec<String> {
        vec!["price_monthly".into(), "price_yearly".into()]
    }

    #[test]
    fn the_first_price_is_the_default_and_a_requested_one_must_be_the_tiers() {
        assert_eq!(
            choose_price("p", "t", &prices(), None).unwrap(),
            "price_monthly"
        );
        assert_eq!(
            choose_price("p", "t", &prices(), Some("price_yearly")).unwrap(),
            "price_yearly"
        );
        let err = choose_price("p", "t", &prices(), Some("price_other")).unwrap_err();
        assert_eq!(err.metric_label(), "unknown_price");
        assert!(err.to_string().contains("price_other"));
        let err = choose_price("p", "t", &[], None).unwrap_err();
        assert_eq!(err.metric_label(), "tier_without_price");
    }

    #[test]
    fn fields_are_checked_before_anything_is_sent() {
        let ok = CheckoutRequest {
            platform: "tackle".into(),
            tier: "starter".into(),
            email: "ada@example.com".into(),
            user_ref: "user-42".into(),
            price: None,
            email_verified: false,
        };
        assert!(validate_fields(&ok).is_ok());
        for bad in [
            CheckoutRequest {
                email: "not-an-email".into(),
                ..clone(&ok)
            },
            CheckoutRequest {
                user_ref: " ".into(),
                ..clone(&ok)
            },
            CheckoutRequest {
                user_ref: "x".repeat(201),
                ..clone(&ok)
            },
            CheckoutRequest {
                tier: "".into(),
                ..clone(&ok)
            },
        ] {
            let err = validate_fields(&bad).unwrap_err();
            assert_eq!(err.metric_label(), "invalid_field", "{bad:?}");
        }
    }

    fn clone(r: &CheckoutRequest) -> CheckoutRequest {
        CheckoutRequest {
            platform: r.platform.clone(),
            tier: r.tier.clone(),
            email: r.email.clone(),
            user_ref: r.user_ref.clone(),
            price: r.price.clone(),
            email_verified: r.email_verified,
        }
    }
}
