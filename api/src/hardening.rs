//! Middleware every response goes through: request ids, security headers, rate limits and a
//! default body limit for JSON endpoints.
//!
//! Rate limits are GCRA buckets (the `governor` crate), one per client: the bearer token when the
//! request carries one (so many dashboard users behind one ingress IP do not share a bucket),
//! otherwise the peer address. The Stripe webhook has its own buckets and its own, higher limit,
//! so API traffic can never use up the budget of Stripe's deliveries. Probes and scrapes
//! (`/healthz`, `/readyz`, `/metrics`) are not limited: throttling them would turn load into
//! restarts.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::header::{
    CACHE_CONTROL, REFERRER_POLICY, RETRY_AFTER, STRICT_TRANSPORT_SECURITY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::http_error::ApiError;

/// The header that carries a request's id, in and out.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Paths never rate limited (Kubernetes probes, Prometheus).
const UNLIMITED: [&str; 3] = ["/healthz", "/readyz", "/metrics"];
/// The Stripe webhook, limited separately.
const WEBHOOK: &str = "/webhooks/stripe";
/// Idle buckets are forgotten every this many requests, so the key map stays bounded.
const SWEEP_EVERY: u64 = 4096;

/// Flags of the hardening middleware.
#[derive(clap::Args, Debug, Clone)]
pub struct HardeningArgs {
    /// Sustained requests per second allowed to one client (bearer token, else peer address).
    #[arg(long, env = "STACKPLANE_RATE_LIMIT_PER_SECOND", default_value = "20")]
    pub rate_limit_per_second: NonZeroU32,
    /// Requests one client may make in a burst before the sustained rate applies.
    #[arg(long, env = "STACKPLANE_RATE_LIMIT_BURST", default_value = "200")]
    pub rate_limit_burst: NonZeroU32,
    /// Sustained Stripe webhook deliveries per second from one address.
    #[arg(
        long,
        env = "STACKPLANE_WEBHOOK_RATE_LIMIT_PER_SECOND",
        default_value = "500"
    )]
    pub webhook_rate_limit_per_second: NonZeroU32,
    /// Stripe webhook deliveries one address may make in a burst.
    #[arg(
        long,
        env = "STACKPLANE_WEBHOOK_RATE_LIMIT_BURST",
        default_value = "2000"
    )]
    pub webhook_rate_limit_burst: NonZeroU32,
    /// Largest JSON request body accepted by the API endpoints (the webhook has its own limit).
    #[arg(long, env = "STACKPLANE_MAX_JSON_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_json_body_bytes: usize,
    /// `Strict-Transport-Security` max-age in seconds (0 leaves the header out, e.g. for plain
    /// HTTP development set-ups).
    #[arg(long, env = "STACKPLANE_HSTS_MAX_AGE", default_value_t = 63_072_000)]
    pub hsts_max_age: u64,
}

impl Default for HardeningArgs {
    fn default() -> Self {
        let n = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
        Self {
            rate_limit_per_second: n(20),
            rate_limit_burst: n(200),
            webhook_rate_limit_per_second: n(500),
            webhook_rate_limit_burst: n(2000),
            max_json_body_bytes: 64 * 1024,
            hsts_max_age: 63_072_000,
        }
    }
}

/// Which bucket family a request draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Api,
    Webhook,
}

/// The rate limiters of one server.
pub struct RateLimits {
    api: DefaultKeyedRateLimiter<String>,
    webhook: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
    seen: AtomicU64,
}

impl RateLimits {
    pub fn new(args: &HardeningArgs) -> Self {
        let quota =
            |rate: NonZeroU32, burst: NonZeroU32| Quota::per_second(rate).allow_burst(burst);
        Self {
            api: RateLimiter::keyed(quota(args.rate_limit_per_second, args.rate_limit_burst)),
            webhook: RateLimiter::keyed(quota(
                args.webhook_rate_limit_per_second,
                args.webhook_rate_limit_burst,
            )),
            clock: DefaultClock::default(),
            seen: AtomicU64::new(0),
        }
    }

    /// Ok, or how long `key` must wait.
    fn check(&self, class: Class, key: &String) -> Result<(), Duration> {
        if self.seen.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.api.retain_recent();
            self.webhook.retain_recent();
        }
        let limiter = match class {
            Class::Api => &self.api,
            Class::Webhook => &self.webhook,
        };
        limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

/// Whole seconds to announce in `Retry-After` (at least 1: 0 would invite an immediate retry).
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// The bucket key of a request: its bearer token (hashed: tokens never sit in memory maps in
/// clear) or else its peer address.
fn client_key(request: &Request, class: Class) -> String {
    if class == Class::Api {
        if let Some(token) = crate::auth::bearer(request.headers()) {
            return format!("token:{}", hex_prefix(&Sha256::digest(token.as_bytes())));
        }
    }
    match request.extensions().get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(addr)) => format!("ip:{}", addr.ip()),
        // Served without connection info: every such client shares one bucket.
        None => "ip:unknown".to_owned(),
    }
}

fn hex_prefix(digest: &[u8]) -> String {
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

async fn rate_limit(
    State(limits): State<Arc<RateLimits>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if UNLIMITED.contains(&path) {
        return next.run(request).await;
    }
    let class = if path == WEBHOOK {
        Class::Webhook
    } else {
        Class::Api
    };
    let key = client_key(&request, class);
    match limits.check(class, &key) {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            let secs = retry_after_secs(wait);
            tracing::warn!(class = ?class, retry_after = secs, "rate limited");
            let mut response = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many requests; retry after {secs} s"),
            )
            .into_response();
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
            response
        }
    }
}

/// The span of one request, carrying its id so every log line of the request can be found.
fn request_span(request: &Request) -> tracing::Span {
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %id,
    )
}

/// Wraps every route of `router` in the hardening middleware.
pub fn apply(router: Router, args: &HardeningArgs) -> Router {
    let limits = Arc::new(RateLimits::new(args));
    let static_header = |name: HeaderName, value: &'static str| {
        SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value))
    };
    let mut router = router
        .layer(DefaultBodyLimit::max(args.max_json_body_bytes))
        .layer(axum::middleware::from_fn_with_state(limits, rate_limit))
        .layer(static_header(X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(static_header(X_FRAME_OPTIONS, "DENY"))
        .layer(static_header(REFERRER_POLICY, "no-referrer"))
        .layer(static_header(CACHE_CONTROL, "no-store"));
    if args.hsts_max_age > 0 {
        let value =
            HeaderValue::from_str(&format!("max-age={}; includeSubDomains", args.hsts_max_age))
                .unwrap_or_else(|_| {
                    HeaderValue::from_static("max-age=63072000; includeSubDomains")
                });
        router = router.layer(SetResponseHeaderLayer::if_not_present(
            STRICT_TRANSPORT_SECURITY,
            value,
        ));
    }
    // Layers added last run first: the id is set before the span is made, and copied onto the
    // response (including a 429) on the way out.
    router
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(10)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
    }

    #[test]
    fn webhook_and_api_buckets_are_separate() {
        let args = HardeningArgs {
            rate_limit_per_second: NonZeroU32::MIN,
            rate_limit_burst: NonZeroU32::MIN,
            webhook_rate_limit_per_second: NonZeroU32::MIN,
            webhook_rate_limit_burst: NonZeroU32::MIN,
            ..HardeningArgs::default()
        };
        let limits = RateLimits::new(&args);
        let key = "ip:127.0.0.1".to_owned();
        assert!(limits.check(Class::Api, &key).is_ok());
        assert!(limits.check(Class::Api, &key).is_err());
        assert!(
            limits.check(Class::Webhook, &key).is_ok(),
            "api use leaves the webhook's budget"
        );
        assert!(limits.check(Class::Api, &"ip:10.0.0.1".to_owned()).is_ok());
    }
}
