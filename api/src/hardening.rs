//! Middleware every public response goes through: request ids, security headers, a catch-panic
//! layer, a per-request timeout, the client's address, the per-address rate limit and a default
//! body limit for JSON endpoints.
//!
//! Rate limits are GCRA buckets (the `governor` crate), in five families:
//! - **address**: every request but the webhook, keyed by the client address, before anything
//!   else is looked at (so a flood never reaches authentication or the database);
//! - **failed authentication**: a tight per-address bucket that each 401 draws from; when it is
//!   empty the address is answered 429 without a token lookup until the bucket refills;
//! - **identity**: after authentication, keyed by the verified caller (admin, token id), so
//!   dashboard users behind one NAT do not share a bucket and a guessed token gets none;
//! - **valid webhook** and **invalid webhook**: the Stripe webhook verifies the signature first
//!   and only then draws from a generous (valid) or a tight (invalid) per-address bucket, so a
//!   scanner posting to `/webhooks/stripe` never pushes Stripe's own deliveries into 429.
//!
//! The client address is the peer's, or the one `X-Forwarded-For` names when the peer is one of
//! `--trusted-proxies` (the ingress controller); a header from anyone else is ignored.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::header::{
    CACHE_CONTROL, REFERRER_POLICY, STRICT_TRANSPORT_SECURITY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::http_error::ApiError;
use crate::metrics::Metrics;

/// The header that carries a request's id, in and out.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request id in `headers`, if any (set on every request by the hardening middleware).
pub fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The Stripe webhook: limited by its handler, after the signature is checked.
pub const WEBHOOK: &str = "/webhooks/stripe";
/// Idle buckets are forgotten every this many requests, so the key maps stay bounded.
const SWEEP_EVERY: u64 = 4096;
/// Most addresses remembered as blocked after failed authentications.
const MAX_BLOCKED: usize = 100_000;

fn nz(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN)
}

/// Flags of the hardening middleware.
#[derive(clap::Args, Debug, Clone)]
pub struct HardeningArgs {
    /// Sustained requests per second allowed to one verified caller (admin or tenant token).
    #[arg(long, env = "STACKPLANE_RATE_LIMIT_PER_SECOND", default_value = "20")]
    pub rate_limit_per_second: NonZeroU32,
    /// Requests one verified caller may make in a burst before the sustained rate applies.
    #[arg(long, env = "STACKPLANE_RATE_LIMIT_BURST", default_value = "200")]
    pub rate_limit_burst: NonZeroU32,
    /// Sustained requests per second from one client address, before authentication.
    #[arg(
        long,
        env = "STACKPLANE_ADDRESS_RATE_LIMIT_PER_SECOND",
        default_value = "50"
    )]
    pub address_rate_limit_per_second: NonZeroU32,
    /// Requests one client address may make in a burst, before authentication.
    #[arg(
        long,
        env = "STACKPLANE_ADDRESS_RATE_LIMIT_BURST",
        default_value = "500"
    )]
    pub address_rate_limit_burst: NonZeroU32,
    /// Failed authentications (401) one address may make per minute, sustained.
    #[arg(
        long,
        env = "STACKPLANE_AUTH_FAILURES_PER_MINUTE",
        default_value = "10"
    )]
    pub auth_failures_per_minute: NonZeroU32,
    /// Failed authentications one address may make in a burst; then it is answered 429.
    #[arg(long, env = "STACKPLANE_AUTH_FAILURES_BURST", default_value = "10")]
    pub auth_failures_burst: NonZeroU32,
    /// Sustained validly signed Stripe deliveries per second from one address.
    #[arg(
        long,
        env = "STACKPLANE_WEBHOOK_RATE_LIMIT_PER_SECOND",
        default_value = "500"
    )]
    pub webhook_rate_limit_per_second: NonZeroU32,
    /// Validly signed Stripe deliveries one address may make in a burst.
    #[arg(
        long,
        env = "STACKPLANE_WEBHOOK_RATE_LIMIT_BURST",
        default_value = "2000"
    )]
    pub webhook_rate_limit_burst: NonZeroU32,
    /// Badly signed webhook deliveries one address may make per minute, sustained.
    #[arg(
        long,
        env = "STACKPLANE_WEBHOOK_INVALID_PER_MINUTE",
        default_value = "30"
    )]
    pub webhook_invalid_per_minute: NonZeroU32,
    /// Badly signed webhook deliveries one address may make in a burst.
    #[arg(long, env = "STACKPLANE_WEBHOOK_INVALID_BURST", default_value = "10")]
    pub webhook_invalid_burst: NonZeroU32,
    /// Proxies (CIDRs, comma-separated) whose `X-Forwarded-For` is believed, e.g. the ingress
    /// controller's pod network. Default none: the peer address is the client.
    #[arg(
        long,
        env = "STACKPLANE_TRUSTED_PROXIES",
        value_delimiter = ',',
        num_args = 0..
    )]
    pub trusted_proxies: Vec<IpNet>,
    /// Longest time one request may take, in seconds; then it is answered 503.
    #[arg(long, env = "STACKPLANE_REQUEST_TIMEOUT", default_value_t = 30)]
    pub request_timeout: u64,
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
        Self {
            rate_limit_per_second: nz(20),
            rate_limit_burst: nz(200),
            address_rate_limit_per_second: nz(50),
            address_rate_limit_burst: nz(500),
            auth_failures_per_minute: nz(10),
            auth_failures_burst: nz(10),
            webhook_rate_limit_per_second: nz(500),
            webhook_rate_limit_burst: nz(2000),
            webhook_invalid_per_minute: nz(30),
            webhook_invalid_burst: nz(10),
            trusted_proxies: Vec::new(),
            request_timeout: 30,
            max_json_body_bytes: 64 * 1024,
            hsts_max_age: 63_072_000,
        }
    }
}

/// A family of rate-limit buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    Address,
    FailedAuth,
    Identity,
    WebhookValid,
    WebhookInvalid,
}

impl Bucket {
    /// A short stable name, the `bucket` label of `stackplane_api_rate_limited_total`.
    pub fn metric_label(self) -> &'static str {
        match self {
            Bucket::Address => "address",
            Bucket::FailedAuth => "failed_auth",
            Bucket::Identity => "identity",
            Bucket::WebhookValid => "webhook_valid",
            Bucket::WebhookInvalid => "webhook_invalid",
        }
    }
}

/// The address a request comes from (see the module docs), put in the request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// The client address of a request from `peer` with these `X-Forwarded-For` values: the peer
/// unless it is a trusted proxy; then the right-most forwarded address that is not itself a
/// trusted proxy (the left-most ones are whatever the client claimed). Malformed entries end
/// the walk: nothing left of them can be believed.
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded_for: impl IntoIterator<Item = &'a str>,
    trusted: &[IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let entries: Vec<&str> = forwarded_for
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for entry in entries.iter().rev() {
        match entry.parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

fn forwarded_for(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
}

/// Whose tokens a bucket holds: an address, or a verified caller. Copied, never allocated: a
/// request draws from two buckets, and string keys were two allocations each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKey {
    Address(IpAddr),
    Admin,
    Token(uuid::Uuid),
}

/// The rate limiters of one server.
pub struct RateLimits {
    buckets: HashMap<Bucket, DefaultKeyedRateLimiter<LimitKey>>,
    /// Addresses whose failed-authentication bucket is empty, until when: answered 429 with no
    /// token lookup.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
    clock: DefaultClock,
    seen: AtomicU64,
    metrics: Metrics,
}

impl RateLimits {
    pub fn new(args: &HardeningArgs, metrics: Metrics) -> Self {
        let per_second =
            |rate: NonZeroU32, burst: NonZeroU32| Quota::per_second(rate).allow_burst(burst);
        let per_minute =
            |rate: NonZeroU32, burst: NonZeroU32| Quota::per_minute(rate).allow_burst(burst);
        let buckets = HashMap::from([
            (
                Bucket::Address,
                RateLimiter::keyed(per_second(
                    args.address_rate_limit_per_second,
                    args.address_rate_limit_burst,
                )),
            ),
            (
                Bucket::FailedAuth,
                RateLimiter::keyed(per_minute(
                    args.auth_failures_per_minute,
                    args.auth_failures_burst,
                )),
            ),
            (
                Bucket::Identity,
                RateLimiter::keyed(per_second(
                    args.rate_limit_per_second,
                    args.rate_limit_burst,
                )),
            ),
            (
                Bucket::WebhookValid,
                RateLimiter::keyed(per_second(
                    args.webhook_rate_limit_per_second,
                    args.webhook_rate_limit_burst,
                )),
            ),
            (
                Bucket::WebhookInvalid,
                RateLimiter::keyed(per_minute(
                    args.webhook_invalid_per_minute,
                    args.webhook_invalid_burst,
                )),
            ),
        ]);
        Self {
            buckets,
            blocked: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
            seen: AtomicU64::new(0),
            metrics,
        }
    }

    /// Takes a token from `key`'s bucket of `bucket`: Ok, or how long to wait (counted).
    pub fn check(&self, bucket: Bucket, key: LimitKey) -> Result<(), Duration> {
        if self.seen.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            for limiter in self.buckets.values() {
                limiter.retain_recent();
            }
            let now = Instant::now();
            if let Ok(mut blocked) = self.blocked.lock() {
                blocked.retain(|_, until| *until > now);
            }
        }
        let Some(limiter) = self.buckets.get(&bucket) else {
            return Ok(());
        };
        let result = limiter
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()));
        if result.is_err() {
            self.metrics.rate_limited(bucket.metric_label());
        }
        result
    }

    /// How long `ip` stays refused after using up its failed-authentication bucket, if it is.
    pub fn auth_blocked(&self, ip: IpAddr) -> Option<Duration> {
        let blocked = self.blocked.lock().ok()?;
        let until = *blocked.get(&ip)?;
        let left = until.checked_duration_since(Instant::now())?;
        self.metrics.rate_limited(Bucket::FailedAuth.metric_label());
        Some(left)
    }

    /// Records a failed authentication from `ip`: Ok while its bucket has tokens; otherwise the
    /// address is blocked for the wait, which is returned.
    pub fn auth_failed(&self, ip: IpAddr) -> Result<(), Duration> {
        let wait = self.check(Bucket::FailedAuth, LimitKey::Address(ip)).err();
        match wait {
            None => Ok(()),
            Some(wait) => {
                if let Ok(mut blocked) = self.blocked.lock() {
                    if blocked.len() >= MAX_BLOCKED {
                        let now = Instant::now();
                        blocked.retain(|_, until| *until > now);
                    }
                    if blocked.len() < MAX_BLOCKED {
                        blocked.insert(ip, Instant::now() + wait);
                    }
                }
                Err(wait)
            }
        }
    }
}

/// Whole seconds to announce in `Retry-After` (at least 1: 0 would invite an immediate retry).
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// The 429 answer of an empty bucket.
pub fn too_many(bucket: Bucket, wait: Duration) -> ApiError {
    let secs = retry_after_secs(wait);
    tracing::warn!(
        bucket = bucket.metric_label(),
        retry_after = secs,
        "rate limited"
    );
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many requests; retry after {secs} s"),
    )
    .retry_after(secs)
}

/// The limits and the client address of a request, for the handlers and middleware that draw
/// from the buckets after looking at the request (authentication, the webhook). Outside the
/// hardening middleware (some tests) there are no limits and the address is unspecified.
#[derive(Clone)]
pub struct Gate {
    pub addr: IpAddr,
    limits: Option<Arc<RateLimits>>,
}

impl Gate {
    /// Takes a token from the bucket of this address in `bucket`.
    pub fn check_address(&self, bucket: Bucket) -> Result<(), ApiError> {
        self.check(bucket, LimitKey::Address(self.addr))
    }

    /// Takes a token from `key`'s bucket in `bucket`.
    pub fn check(&self, bucket: Bucket, key: LimitKey) -> Result<(), ApiError> {
        match &self.limits {
            Some(limits) => limits.check(bucket, key).map_err(|w| too_many(bucket, w)),
            None => Ok(()),
        }
    }

    /// 429 while this address is blocked for failed authentications.
    pub fn auth_blocked(&self) -> Result<(), ApiError> {
        match self.limits.as_ref().and_then(|l| l.auth_blocked(self.addr)) {
            Some(wait) => Err(too_many(Bucket::FailedAuth, wait)),
            None => Ok(()),
        }
    }

    /// A failed authentication: the 401 it is, or 429 once the address used up its bucket.
    pub fn auth_failed(&self, unauthorized: ApiError) -> ApiError {
        match self.limits.as_ref().map(|l| l.auth_failed(self.addr)) {
            Some(Err(wait)) => too_many(Bucket::FailedAuth, wait),
            _ => unauthorized,
        }
    }

    fn of(extensions: &axum::http::Extensions) -> Self {
        Gate {
            addr: extensions
                .get::<ClientAddr>()
                .map(|a| a.0)
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            limits: extensions.get::<Arc<RateLimits>>().cloned(),
        }
    }

    /// The gate of a request that went through the hardening middleware.
    pub fn of_request(request: &Request) -> Self {
        Self::of(request.extensions())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Gate {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Gate::of(&parts.extensions))
    }
}

/// State of the admission middleware.
#[derive(Clone)]
struct Outer {
    limits: Arc<RateLimits>,
    trusted: Arc<[IpNet]>,
    /// Longest time one request may take.
    timeout: Duration,
}

/// Finds the client address, hands the limits on, applies the per-address limit to every
/// route but the webhook (which limits after checking the signature), and runs the request
/// within the timeout. (One middleware, not two: each `from_fn` costs allocations per request.)
async fn admit(State(outer): State<Outer>, mut request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let ip = client_ip(peer, forwarded_for(request.headers()), &outer.trusted);
    request.extensions_mut().insert(ClientAddr(ip));
    request.extensions_mut().insert(outer.limits.clone());
    if request.uri().path() != WEBHOOK {
        if let Err(wait) = outer.limits.check(Bucket::Address, LimitKey::Address(ip)) {
            return too_many(Bucket::Address, wait).into_response();
        }
    }
    time_limit(outer.timeout, next.run(request)).await
}

/// Answers 503 when a request takes longer than `limit`; the handler's future is dropped.
async fn time_limit(limit: Duration, run: impl std::future::Future<Output = Response>) -> Response {
    match tokio::time::timeout(limit, run).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(timeout_secs = limit.as_secs(), "request timed out");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!("the request took longer than {} s", limit.as_secs()),
            )
            .retry_after(5)
            .into_response()
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

/// The layer both listeners share: a panic in a handler becomes a JSON 500 and is counted.
pub fn panic_layer(
    metrics: &Metrics,
) -> CatchPanicLayer<
    impl Fn(Box<dyn std::any::Any + Send>) -> Response + Clone + Send + Sync + 'static,
> {
    let metrics = metrics.clone();
    CatchPanicLayer::custom(move |panic: Box<dyn std::any::Any + Send>| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        metrics.panic();
        tracing::error!(panic = %message, "a request handler panicked");
        ApiError::internal("internal error").into_response()
    })
}

/// `router` behind [`panic_layer`].
pub fn catch_panics(router: Router, metrics: &Metrics) -> Router {
    router.layer(panic_layer(metrics))
}

/// The security headers every answer carries, each unless the handler set it.
#[derive(Clone)]
struct SecurityHeaders(Arc<[(HeaderName, HeaderValue)]>);

impl SecurityHeaders {
    fn new(hsts_max_age: u64) -> Self {
        let mut headers = vec![
            (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
            (CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ];
        // 0 leaves HSTS out (plain-HTTP development set-ups).
        if hsts_max_age > 0 {
            let value =
                HeaderValue::from_str(&format!("max-age={hsts_max_age}; includeSubDomains"))
                    .unwrap_or_else(|_| {
                        HeaderValue::from_static("max-age=63072000; includeSubDomains")
                    });
            headers.push((STRICT_TRANSPORT_SECURITY, value));
        }
        Self(headers.into())
    }

    fn add_to<B>(&self, mut response: axum::http::Response<B>) -> axum::http::Response<B> {
        let map = response.headers_mut();
        for (name, value) in self.0.iter() {
            if !map.contains_key(name) {
                map.insert(name.clone(), value.clone());
            }
        }
        response
    }
}

/// Wraps every route of `router` in the hardening middleware.
///
/// The layers are composed into one stack and applied with a single `Router::layer`: axum
/// boxes each `layer` call's service separately and clones every box for every request, so
/// one stack is one allocation per request instead of one per layer.
pub fn apply(router: Router, args: &HardeningArgs, metrics: &Metrics) -> Router {
    let outer = Outer {
        limits: Arc::new(RateLimits::new(args, metrics.clone())),
        trusted: args.trusted_proxies.clone().into(),
        timeout: Duration::from_secs(args.request_timeout.max(1)),
    };
    let headers = SecurityHeaders::new(args.hsts_max_age);
    // Outermost first: the id is set before the span is made, and copied onto the response
    // (including a 429) on the way out; the security headers are on every answer, the 429s of
    // the address limit and the 500s of a panic (in a handler or in admission) among them.
    let stack = tower::ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .map_response(move |response| headers.add_to(response))
        .layer(panic_layer(metrics))
        .layer(axum::middleware::from_fn_with_state(outer, admit))
        .layer(DefaultBodyLimit::max(args.max_json_body_bytes));
    router.layer(stack)
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
    fn buckets_are_separate() {
        let args = HardeningArgs {
            address_rate_limit_per_second: NonZeroU32::MIN,
            address_rate_limit_burst: NonZeroU32::MIN,
            webhook_rate_limit_per_second: NonZeroU32::MIN,
            webhook_rate_limit_burst: NonZeroU32::MIN,
            ..HardeningArgs::default()
        };
        let limits = RateLimits::new(&args, Metrics::new());
        let (local, other) = (
            LimitKey::Address(Ipv4Addr::LOCALHOST.into()),
            LimitKey::Address(Ipv4Addr::new(10, 0, 0, 1).into()),
        );
        assert!(limits.check(Bucket::Address, local).is_ok());
        assert!(limits.check(Bucket::Address, local).is_err());
        assert!(
            limits.check(Bucket::WebhookValid, local).is_ok(),
            "api use leaves the webhook's budget"
        );
        assert!(limits.check(Bucket::Address, other).is_ok());
    }

    #[test]
    fn failed_authentications_block_an_address_until_its_bucket_refills() {
        let args = HardeningArgs {
            auth_failures_burst: nz(2),
            ..HardeningArgs::default()
        };
        let limits = RateLimits::new(&args, Metrics::new());
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(limits.auth_blocked(ip).is_none());
        assert!(limits.auth_failed(ip).is_ok());
        assert!(limits.auth_failed(ip).is_ok());
        assert!(limits.auth_failed(ip).is_err());
        assert!(limits.auth_blocked(ip).is_some());
        assert!(limits.auth_blocked("192.0.2.8".parse().unwrap()).is_none());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let stranger: IpAddr = "198.51.100.1".parse().unwrap();
        let client: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(client_ip(stranger, ["203.0.113.9"], &trusted), stranger);
        assert_eq!(client_ip(proxy, ["203.0.113.9"], &trusted), client);
        // A client-supplied left-most entry is skipped: the right-most untrusted one counts.
        assert_eq!(
            client_ip(proxy, ["1.2.3.4, 203.0.113.9, 10.9.9.9"], &trusted),
            client
        );
        assert_eq!(
            client_ip(proxy, ["1.2.3.4", "203.0.113.9"], &trusted),
            client
        );
        assert_eq!(client_ip(proxy, ["garbage"], &trusted), proxy);
        assert_eq!(client_ip(proxy, Vec::<&str>::new(), &trusted), proxy);
        assert_eq!(client_ip(proxy, ["203.0.113.9"], &[]), proxy);
    }
}
