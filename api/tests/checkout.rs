//! Checkout and Customer Portal sessions, against a local stand-in of Stripe's API (there is no
//! Stripe emulator here), the real kube-apiserver (Platforms, Tenants) and the real Postgres.
//! The stand-in records every request as Stripe would receive it and answers with Stripe's
//! documented `checkout.session` / `billing_portal.session` objects. A session's completion is
//! Stripe's signed `checkout.session.completed` delivered to the webhook and applied by the
//! billing worker. The customer-reuse tests put localstripe (driven by the official SDK) behind
//! the stand-in as the Stripe that holds customers and subscriptions: the checkout finds
//! customers by e-mail there, and the worker reads subscriptions back from it.

// The documented checkout.session object is one large json! literal.
#![recursion_limit = "256"]

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::{Form, Json, Router};
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};
use stackplane_api::billing::checkout::{Checkout, CheckoutArgs};
use stackplane_api::billing::prices::PlatformCache;
use stackplane_api::billing::stripe_api::{RetryPolicy, StripeApi};
use stackplane_api::billing::worker::Worker;
use stackplane_api::config::Secrets;
use stackplane_api::metrics::Metrics;
use stackplane_api::server::{router_with, AppState, BillingState, RouterOptions};
use stackplane_api::tenants::{MetricsSourceArgs, TenantApi};
use stackplane_crds::{Platform, Tenant, TenantSpec};
use stackplane_tests::localstripe::LocalStripe;
use stackplane_tests::{eventually, fresh_database, install_crds, kube_client, unique};

const ADMIN: &str = "admin-token-for-checkout-tests";
const WEBHOOK_SECRET: &str = "whsec_checkout";
const STRIPE_KEY: &str = "sk_test_51CheckoutStandIn";
const SUCCESS: &str = "https://dashboard.example.com/billing/success?session={CHECKOUT_SESSION_ID}";
const CANCEL: &str = "https://dashboard.example.com/billing/cancelled";
const RETURN: &str = "https://dashboard.example.com/account";
/// A price the stand-in refuses the way Stripe refuses an archived price.
const REFUSED_PRICE_SUFFIX: &str = "Archived";

/// One request as the stand-in received it.
#[derive(Debug, Clone)]
struct Recorded {
    method: Method,
    path: String,
    params: Vec<(String, String)>,
    authorization: Option<String>,
}

impl Recorded {
    fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

type Log = Arc<Mutex<Vec<Recorded>>>;

fn param(params: &[(String, String)], key: &str) -> Value {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map_or(Value::Null, |(_, v)| json!(v))
}

/// The `metadata[...]` of a request, as the object Stripe stores.
fn metadata(params: &[(String, String)]) -> Value {
    params
        .iter()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix("metadata[")?.strip_suffix(']')?;
            Some((key.to_owned(), json!(v)))
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Stripe's `checkout.session` object as the API documents it, with the request's values.
fn checkout_session(params: &[(String, String)]) -> Value {
    let id = format!("cs_test_{}", unique("a").replace('-', ""));
    let now = chrono::Utc::now().timestamp();
    json!({
        "id": id, "object": "checkout.session", "after_expiration": null,
        "allow_promotion_codes": null, "amount_subtotal": 2900, "amount_total": 2900,
        "automatic_tax": {"enabled": false, "liability": null, "provider": null, "status": null},
        "billing_address_collection": null, "cancel_url": param(params, "cancel_url"),
        "client_reference_id": param(params, "client_reference_id"), "client_secret": null,
        "consent": null, "consent_collection": null, "created": now, "currency": "usd",
        "currency_conversion": null, "custom_fields": [],
        "custom_text": {"after_submit": null, "shipping_address": null, "submit": null,
            "terms_of_service_acceptance": null},
        "customer": null, "customer_creation": "always", "customer_details": null,
        "customer_email": param(params, "customer_email"), "expires_at": now + 86_400,
        "invoice": null, "invoice_creation": null, "livemode": false, "locale": null,
        "metadata": metadata(params),
        "mode": "subscription", "payment_intent": null, "payment_link": null,
        "payment_method_collection": "always", "payment_method_configuration_details": null,
        "payment_method_options": {}, "payment_method_types": ["card"],
        "payment_status": "unpaid", "phone_number_collection": {"enabled": false},
        "recovered_from": null, "saved_payment_method_options": null, "setup_intent": null,
        "shipping_address_collection": null, "shipping_cost": null, "shipping_options": [],
        "status": "open", "submit_type": null, "subscription": null,
        "success_url": param(params, "success_url"), "total_details":
            {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        "ui_mode": "hosted", "url": format!("https://checkout.stripe.com/c/pay/{id}")
    })
}

/// Stripe's `billing_portal.session` object as the API documents it.
fn portal_session(params: &[(String, String)]) -> Value {
    let id = format!("bps_{}", unique("b").replace('-', ""));
    json!({
        "id": id, "object": "billing_portal.session", "configuration": "bpc_1StandInConfig",
        "created": chrono::Utc::now().timestamp(), "customer": param(params, "customer"),
        "flow": null, "livemode": false, "locale": null, "on_behalf_of": null,
        "return_url": param(params, "return_url"),
        "url": format!("https://billing.stripe.com/p/session/test_{id}")
    })
}

async fn stand_in(
    State(log): State<Log>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Form(params): Form<Vec<(String, String)>>,
) -> axum::response::Response {
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    log.lock().expect("log").push(Recorded {
        method,
        path: uri.path().to_owned(),
        params: params.clone(),
        authorization,
    });
    let refused = params
        .iter()
        .any(|(k, v)| k == "line_items[0][price]" && v.ends_with(REFUSED_PRICE_SUFFIX));
    match uri.path() {
        "/v1/checkout/sessions" if refused => {
            let price = param(&params, "line_items[0][price]");
            (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": {
                    "code": "resource_missing", "doc_url": "https://stripe.com/docs/error-codes/resource-missing",
                    "message": format!("No such price: '{}'", price.as_str().unwrap_or_default()),
                    "param": "line_items[0][price]", "type": "invalid_request_error"}})),
            )
                .into_response()
        }
        "/v1/checkout/sessions" => Json(checkout_session(&params)).into_response(),
        "/v1/billing_portal/sessions" => Json(portal_session(&params)).into_response(),
        _ => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": {"message": "Unrecognized request URL", "type": "invalid_request_error"}})),
        )
            .into_response(),
    }
}

struct Env {
    base: String,
    log: Log,
    db: sqlx::PgPool,
    kube: kube::Client,
    platform: String,
    /// The tier `starter`'s prices: monthly, yearly, and one Stripe refuses.
    prices: Vec<String>,
    /// The Platforms as the api sees them, for a billing worker.
    platforms: PlatformCache,
    /// The tenant API the router serves (status reads come from its cache).
    tenants: TenantApi,
    /// The Stripe reader of the customer-reuse tests (localstripe): customers by e-mail for the
    /// checkout, subscriptions for the worker. None: the worker applies payloads.
    reader: Option<Arc<StripeApi>>,
}

impl Env {
    fn recorded(&self) -> Vec<Recorded> {
        self.log.lock().expect("log").clone()
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("send");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn call_delete(&self, path: &str, token: &str) -> (u16, Value) {
        let resp = reqwest::Client::new()
            .delete(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("send");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = reqwest::Client::new().get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("send");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

/// A Platform of our own (a copy of `tackle` with prices unique to this test) in the real
/// cluster, the api pointed at a fresh stand-in.
async fn setup() -> Env {
    setup_with(None).await
}

/// [`setup`], with a Stripe reader of `stripe_truth` (a localstripe) when given.
async fn setup_with(stripe_truth: Option<&str>) -> Env {
    let kube = kube_client().await;
    install_crds(&kube).await;
    let mut platform: Platform = stackplane_tests::example_platform("tackle.yaml");
    let name = unique("tackle");
    let tag = unique("p").replace('-', "");
    let prices = vec![
        format!("price_{tag}StarterMonthly"),
        format!("price_{tag}StarterYearly"),
        format!("price_{tag}Starter{REFUSED_PRICE_SUFFIX}"),
    ];
    platform.metadata.name = Some(name.clone());
    for tier in &mut platform.spec.tiers {
        tier.stripe_price_ids = if tier.name == "starter" {
            prices.clone()
        } else {
            vec![format!("price_{tag}{}", tier.name)]
        };
    }
    Api::<Platform>::all(kube.clone())
        .patch(
            &name,
            &PatchParams::apply("stackplane-tests").force(),
            &Patch::Apply(&platform),
        )
        .await
        .expect("apply platform");

    let (db, _) = fresh_database().await;
    stackplane_api::db::migrate(&db).await.expect("migrate");
    let (cache, driver) = PlatformCache::start(kube.clone());
    tokio::spawn(driver);
    assert!(cache.ready().await);
    let mut changes = cache.changes();
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while cache.tier_prices(&name, "starter").is_none() {
            changes.changed().await.expect("platform watch");
        }
    })
    .await
    .expect("the cache sees the Platform");

    let log: Log = Arc::default();
    let stripe = stackplane_tests::serve_on_free_port(
        Router::new().fallback(stand_in).with_state(log.clone()),
    )
    .await;
    let args = CheckoutArgs {
        checkout_success_url: Some(SUCCESS.into()),
        checkout_cancel_url: Some(CANCEL.into()),
        portal_return_url: Some(RETURN.into()),
        stripe_api_base: Some(stripe),
    };
    let reader = stripe_truth.map(|base| {
        let retry = RetryPolicy {
            attempts: 2,
            first_delay: std::time::Duration::from_millis(100),
            max_delay: std::time::Duration::from_millis(200),
            timeout: std::time::Duration::from_secs(5),
        };
        let rate = std::num::NonZeroU32::new(50).expect("rate");
        Arc::new(
            StripeApi::new(Some(base), STRIPE_KEY, rate, retry, Metrics::new()).expect("reader"),
        )
    });
    let mut checkout =
        Checkout::new(&args, STRIPE_KEY, cache.clone(), kube.clone()).expect("stripe client");
    if let Some(reader) = &reader {
        checkout = checkout.with_stripe_api(reader.clone());
    }
    let (tenants, watches) =
        TenantApi::start(db.clone(), kube.clone(), MetricsSourceArgs::default());
    tokio::spawn(watches.run());
    assert!(tenants.ready().await, "tenant caches fill");
    let state = AppState {
        db: db.clone(),
        metrics: Metrics::new(),
        billing: Arc::new(BillingState {
            secrets: Secrets::from_values(Some(WEBHOOK_SECRET), Some(STRIPE_KEY), Some(ADMIN))
                .expect("secrets"),
            wake: Default::default(),
        }),
    };
    let options = RouterOptions {
        checkout: Some(Arc::new(checkout)),
        tenants: Some(tenants.clone()),
        ..RouterOptions::default()
    };
    let api = stackplane_tests::serve_on_free_port(router_with(state, options)).await;
    Env {
        base: api,
        log,
        db,
        kube,
        platform: name,
        prices,
        platforms: cache,
        tenants,
        reader,
    }
}

async fn cleanup(env: &Env) {
    Api::<Platform>::all(env.kube.clone())
        .delete(&env.platform, &Default::default())
        .await
        .expect("delete platform");
}

#[tokio::test]
async fn checkout_creates_a_subscription_session_linked_to_the_user_and_tier() {
    let env = setup().await;
    let (status, body) = env
        .post(
            "/api/v1/billing/checkout",
            Some(ADMIN),
            json!({"platform": env.platform, "tier": "starter", "email": "ada@example.com",
                "userRef": "dash-user-42"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().expect("id");
    assert!(id.starts_with("cs_test_"), "{body}");
    assert_eq!(
        body["url"].as_str(),
        Some(format!("https://checkout.stripe.com/c/pay/{id}").as_str())
    );

    let recorded = env.recorded();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let r = &recorded[0];
    assert_eq!(r.method, Method::POST);
    assert_eq!(r.path, "/v1/checkout/sessions");
    assert_eq!(
        r.authorization.as_deref(),
        Some(format!("Bearer {STRIPE_KEY}").as_str())
    );
    let expected = [
        ("mode", "subscription"),
        ("client_reference_id", "dash-user-42"),
        ("customer_email", "ada@example.com"),
        ("line_items[0][price]", env.prices[0].as_str()),
        ("line_items[0][quantity]", "1"),
        (
            "subscription_data[metadata][platform]",
            env.platform.as_str(),
        ),
        ("subscription_data[metadata][tier]", "starter"),
        ("metadata[platform]", env.platform.as_str()),
        ("metadata[tier]", "starter"),
        ("success_url", SUCCESS),
        ("cancel_url", CANCEL),
    ];
    for (key, value) in expected {
        assert_eq!(r.param(key), Some(value), "{key} in {:?}", r.params);
    }

    // A price of the tier other than its first one can be chosen.
    let (status, body) = env
        .post(
            "/api/v1/billing/checkout",
            Some(ADMIN),
            json!({"platform": env.platform, "tier": "starter", "email": "ada@example.com",
                "userRef": "dash-user-42", "price": env.prices[1]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        env.recorded()[1].param("line_items[0][price]"),
        Some(env.prices[1].as_str())
    );

    let audit: Vec<(String, String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT actor, action, target, outcome, details->>'userRef' FROM audit_log ORDER BY id",
    )
    .fetch_all(&env.db)
    .await
    .expect("audit");
    assert_eq!(
        audit,
        vec![
            (
                "admin".into(),
                "billing.checkout".into(),
                "/api/v1/billing/checkout".into(),
                "success".into(),
                Some("dash-user-42".into())
            );
            2
        ]
    );
    cleanup(&env).await;
}

#[tokio::test]
async fn bad_checkouts_are_refused_before_anything_reaches_stripe() {
    let env = setup().await;
    let good = json!({"platform": env.platform, "tier": "starter", "email": "ada@example.com",
        "userRef": "dash-user-7"});
    let with = |k: &str, v: Value| {
        let mut b = good.clone();
        b[k] = v;
        b
    };
    let cases = [
        ("no token", None, good.clone(), 401, "unauthorized"),
        (
            "wrong token",
            Some("nope"),
            good.clone(),
            401,
            "unauthorized",
        ),
        (
            "unknown tier",
            Some(ADMIN),
            with("tier", json!("platinum")),
            422,
            "unknown_tier",
        ),
        (
            "unknown platform",
            Some(ADMIN),
            with("platform", json!("no-such-platform")),
            422,
            "unknown_platform",
        ),
        (
            "price of another tier",
            Some(ADMIN),
            with("price", json!("price_1TackleProfessionalMonthly")),
            422,
            "unknown_price",
        ),
        (
            "bad email",
            Some(ADMIN),
            with("email", json!("not-an-address")),
            400,
            "invalid_field",
        ),
        (
            "missing userRef",
            Some(ADMIN),
            json!({"platform": env.platform, "tier": "starter", "email": "a@example.com"}),
            422,
            "invalid_body",
        ),
        (
            "oversized body",
            Some(ADMIN),
            with("userRef", json!("x".repeat(100 * 1024))),
            413,
            "payload_too_large",
        ),
    ];
    for (what, token, body, status, code) in cases {
        let (got, error) = env.post("/api/v1/billing/checkout", token, body).await;
        assert_eq!(got, status, "{what}: {error}");
        assert_eq!(error["error"]["code"], code, "{what}: {error}");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {error}"
        );
    }
    assert!(
        env.recorded().is_empty(),
        "nothing reaches Stripe: {:?}",
        env.recorded()
    );
    // Every refused call wrote its audit row: anonymous for the bad tokens, admin otherwise.
    let audit: Vec<(String, String, String)> =
        sqlx::query_as("SELECT actor, action, outcome FROM audit_log ORDER BY id")
            .fetch_all(&env.db)
            .await
            .expect("audit");
    let expected: Vec<(String, String, String)> = [
        ("anonymous", "denied"),
        ("anonymous", "denied"),
        ("admin", "failed"),
        ("admin", "failed"),
        ("admin", "failed"),
        ("admin", "failed"),
        ("admin", "failed"),
        ("admin", "failed"),
    ]
    .into_iter()
    .map(|(a, o)| (a.to_owned(), "billing.checkout".to_owned(), o.to_owned()))
    .collect();
    assert_eq!(audit, expected);
    cleanup(&env).await;
}

#[tokio::test]
async fn a_stripe_error_answers_502_with_stripes_message() {
    let env = setup().await;
    let (status, body) = env
        .post(
            "/api/v1/billing/checkout",
            Some(ADMIN),
            json!({"platform": env.platform, "tier": "starter", "email": "ada@example.com",
                "userRef": "dash-user-9", "price": env.prices[2]}),
        )
        .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "stripe_error");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains(&format!("No such price: '{}'", env.prices[2])),
        "{message}"
    );
    assert_eq!(env.recorded().len(), 1);
    cleanup(&env).await;
}

#[tokio::test]
async fn portal_sessions_are_for_the_tenants_stripe_customer() {
    let env = setup().await;
    let tenants: Api<Tenant> = Api::all(env.kube.clone());
    let customer = format!("cus_{}", unique("c").replace('-', ""));
    let name = unique("portal");
    let mut spec = TenantSpec::new(&env.platform, "starter");
    spec.customer.stripe_customer_id = Some(customer.clone());
    tenants
        .create(&PostParams::default(), &Tenant::new(&name, spec))
        .await
        .expect("create tenant");
    let bare = unique("portal-bare");
    tenants
        .create(
            &PostParams::default(),
            &Tenant::new(&bare, TenantSpec::new(&env.platform, "starter")),
        )
        .await
        .expect("create tenant");

    let (status, body) = env
        .post(
            "/api/v1/billing/portal",
            Some(ADMIN),
            json!({"tenant": name}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let url = body["url"].as_str().expect("url");
    assert!(
        url.starts_with("https://billing.stripe.com/p/session/test_bps_"),
        "{url}"
    );
    let recorded = env.recorded();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].path, "/v1/billing_portal/sessions");
    assert_eq!(recorded[0].param("customer"), Some(customer.as_str()));
    assert_eq!(recorded[0].param("return_url"), Some(RETURN));
    assert_eq!(
        recorded[0].authorization.as_deref(),
        Some(format!("Bearer {STRIPE_KEY}").as_str())
    );

    let (status, body) = env
        .post(
            "/api/v1/billing/portal",
            Some(ADMIN),
            json!({"tenant": "no-such-tenant"}),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("not_found")),
        "{body}"
    );
    let (status, body) = env
        .post(
            "/api/v1/billing/portal",
            Some(ADMIN),
            json!({"tenant": bare}),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("no_stripe_customer")),
        "{body}"
    );
    let (status, _) = env
        .post("/api/v1/billing/portal", None, json!({"tenant": name}))
        .await;
    assert_eq!(status, 401);
    assert_eq!(
        env.recorded().len(),
        1,
        "only the good request reached Stripe"
    );

    // A tenant's own token opens its portal; for another tenant it answers 404.
    let token = format!("spt_{}", unique("tok").replace('-', ""));
    sqlx::query(
        "INSERT INTO api_tokens (token_hash, prefix, scope, tenant, created_by)
         VALUES ($1, 'spt_', 'tenant', $2, 'test')",
    )
    .bind(&stackplane_api::caller::token_digest(&token)[..])
    .bind(&name)
    .execute(&env.db)
    .await
    .expect("insert token");
    let (status, body) = env
        .post(
            "/api/v1/billing/portal",
            Some(token.as_str()),
            json!({"tenant": name}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = env
        .post(
            "/api/v1/billing/portal",
            Some(token.as_str()),
            json!({"tenant": bare}),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("not_found")),
        "{body}"
    );
    assert_eq!(
        env.recorded().len(),
        2,
        "the other tenant's request never reached Stripe"
    );
    // The portal calls are audited as who made them: the tenant token's calls as the token.
    let token_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM api_tokens WHERE tenant = $1")
        .bind(&name)
        .fetch_one(&env.db)
        .await
        .expect("token id");
    let actors: Vec<(String, String)> = sqlx::query_as(
        "SELECT actor, outcome FROM audit_log WHERE action = 'billing.portal' ORDER BY id",
    )
    .fetch_all(&env.db)
    .await
    .expect("audit");
    let token_actor = format!("token:{token_id}");
    assert_eq!(
        actors
            .iter()
            .filter(|(a, _)| a == &token_actor)
            .cloned()
            .collect::<Vec<_>>(),
        [
            (token_actor.clone(), "success".to_owned()),
            (token_actor.clone(), "denied".to_owned())
        ],
        "{actors:?}"
    );
    assert!(
        actors
            .iter()
            .any(|(a, o)| a == "anonymous" && o == "denied"),
        "{actors:?}"
    );
    assert!(
        actors
            .iter()
            .all(|(a, _)| a == "admin" || a == "anonymous" || a == &token_actor),
        "{actors:?}"
    );

    for t in [&name, &bare] {
        tenants
            .delete(t, &Default::default())
            .await
            .expect("delete tenant");
    }
    cleanup(&env).await;
}

impl Env {
    /// A billing worker, reading back from the Stripe reader when the test has one.
    fn worker(&self) -> Worker {
        let worker = Worker::new(
            self.db.clone(),
            self.kube.clone(),
            self.platforms.clone(),
            Metrics::new(),
        );
        match &self.reader {
            Some(reader) => worker.with_stripe(reader.clone()),
            None => worker,
        }
    }

    /// The admin issues a dashboard token: (token, id).
    async fn dashboard_token(&self, description: &str) -> (String, String) {
        let (status, body) = self
            .post(
                "/api/v1/tokens",
                Some(ADMIN),
                json!({"role": "dashboard", "description": description}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["role"], "dashboard", "{body}");
        assert_eq!(body["tenant"], Value::Null, "{body}");
        let token = body["token"].as_str().expect("token").to_owned();
        assert!(token.starts_with("spd_"), "{token}");
        (token, body["id"].as_str().expect("id").to_owned())
    }

    /// Stripe completes the Checkout Session recorded as `request` (the customer paid, Stripe
    /// made customer `customer`): its signed `checkout.session.completed` reaches the webhook
    /// and a billing worker applies it.
    async fn complete_checkout(&self, request: &Recorded, session_id: &str, customer: &str) {
        let subscription = format!("sub_{}", unique("s").replace('-', ""));
        self.complete_checkout_with(request, session_id, customer, &subscription)
            .await;
    }

    /// [`Env::complete_checkout`] with the subscription the session made.
    async fn complete_checkout_with(
        &self,
        request: &Recorded,
        session_id: &str,
        customer: &str,
        subscription: &str,
    ) {
        let mut session = checkout_session(&request.params);
        session["id"] = json!(session_id);
        session["status"] = json!("complete");
        session["payment_status"] = json!("paid");
        session["customer"] = json!(customer);
        session["subscription"] = json!(subscription);
        session["customer_details"] =
            json!({"email": request.param("customer_email"), "name": null});
        let now = chrono::Utc::now().timestamp();
        let event =
            json!({"id": unique("evt_c"), "object": "event", "api_version": "2025-03-31.basil",
            "type": "checkout.session.completed", "created": now, "livemode": false,
            "data": {"object": session}})
            .to_string();
        let resp = reqwest::Client::new()
            .post(format!("{}/webhooks/stripe", self.base))
            .header("content-type", "application/json")
            .header(
                "Stripe-Signature",
                stackplane_tests::stripe_signature(&event, WEBHOOK_SECRET, now),
            )
            .body(event)
            .send()
            .await
            .expect("deliver");
        assert_eq!(resp.status().as_u16(), 200, "{:?}", resp.text().await);
        let worker = self.worker();
        while let Some((id, outcome)) = worker.process_one().await.expect("process") {
            assert!(outcome.is_ok(), "event {id}: {outcome:?}");
        }
    }
}

#[tokio::test]
async fn a_dashboard_token_checks_out_and_reads_only_its_customers_tenants() {
    let env = setup().await;
    let (dash_a, id_a) = env.dashboard_token("dashboard a").await;
    let (dash_b, id_b) = env.dashboard_token("dashboard b").await;

    // Checkout without the admin token: the session names dashboard A in its metadata only.
    let (status, body) = env
        .post(
            "/api/v1/billing/checkout",
            Some(&dash_a),
            json!({"platform": env.platform, "tier": "starter", "email": "ada@example.com",
                "userRef": "user-1"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let session_id = body["id"].as_str().expect("session id").to_owned();
    let recorded = env.recorded();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let request = &recorded[0];
    assert_eq!(request.param("client_reference_id"), Some("user-1"));
    assert_eq!(request.param("metadata[dashboard]"), Some(id_a.as_str()));
    assert_eq!(
        request.param("subscription_data[metadata][dashboard]"),
        None
    );

    // Stripe completes it: the customer is A's, the worker makes the tenant.
    let customer = format!("cus_{}", unique("d").replace('-', ""));
    env.complete_checkout(request, &session_id, &customer).await;
    let linked: (Option<String>, Option<String>, Option<String>) = sqlx::query_as(
        "SELECT client_reference_id, dashboard_id::text, checkout_session_id
         FROM checkout_customers WHERE customer_id = $1",
    )
    .bind(&customer)
    .fetch_one(&env.db)
    .await
    .expect("the customer is recorded");
    assert_eq!(
        linked,
        (Some("user-1".into()), Some(id_a.clone()), Some(session_id))
    );
    let name = stackplane_crds::naming::tenant_name(&env.platform, &customer);
    eventually("the tenant in the api's cache", || async {
        env.tenants
            .tenants
            .get(&kube::runtime::reflector::ObjectRef::new(&name))
            .map(|_| ())
    })
    .await;
    // A tenant of a customer nobody's dashboard checked out.
    let tenants: Api<Tenant> = Api::all(env.kube.clone());
    let other = unique("not-a-dashboards");
    let mut spec = TenantSpec::new(&env.platform, "starter");
    spec.customer.stripe_customer_id = Some(format!("cus_{}", unique("o").replace('-', "")));
    tenants
        .create(&PostParams::default(), &Tenant::new(&other, spec))
        .await
        .expect("create tenant");
    eventually("the other tenant in the api's cache", || async {
        env.tenants
            .tenants
            .get(&kube::runtime::reflector::ObjectRef::new(&other))
            .map(|_| ())
    })
    .await;

    // A reads its customer's tenant and opens its portal.
    let (status, body) = env
        .get(&format!("/api/v1/tenants/{name}"), Some(&dash_a))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], json!(name));
    let (status, body) = env
        .post(
            "/api/v1/billing/portal",
            Some(&dash_a),
            json!({"tenant": name}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(env.recorded()[1].param("customer"), Some(customer.as_str()));

    // Another dashboard's customer, and a customer no dashboard checked out, answer exactly as
    // a tenant that does not exist; nothing reaches Stripe for them.
    let missing = unique("no-such-tenant");
    let (_, nothing) = env
        .get(&format!("/api/v1/tenants/{missing}"), Some(&dash_a))
        .await;
    for (token, tenant) in [(&dash_b, &name), (&dash_a, &other)] {
        let (status, body) = env
            .get(&format!("/api/v1/tenants/{tenant}"), Some(token))
            .await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(
            body["error"]["message"],
            json!(nothing["error"]["message"]
                .as_str()
                .expect("message")
                .replace(&missing, tenant))
        );
    }
    let (_, nothing) = env
        .post(
            "/api/v1/billing/portal",
            Some(&dash_b),
            json!({"tenant": missing}),
        )
        .await;
    for (token, tenant) in [(&dash_b, &name), (&dash_a, &other)] {
        let (status, body) = env
            .post(
                "/api/v1/billing/portal",
                Some(token),
                json!({"tenant": tenant}),
            )
            .await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(
            body["error"]["message"],
            json!(nothing["error"]["message"]
                .as_str()
                .expect("message")
                .replace(&missing, tenant))
        );
    }
    assert_eq!(env.recorded().len(), 2, "{:?}", env.recorded());

    // Admin routes and the tenant token's routes answer 403; no or an unknown token 401.
    for path in [
        "/api/v1/tenants".to_owned(),
        format!("/api/v1/platforms/{}/summary", env.platform),
        format!("/api/v1/tenants/{name}/metrics"),
        format!("/api/v1/tenants/{name}/backups"),
        format!("/api/v1/tenants/{name}/tokens"),
        "/api/v1/tokens".to_owned(),
        "/api/v1/billing/events".to_owned(),
    ] {
        let (status, body) = env.get(&path, Some(&dash_a)).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (403, &json!("forbidden")),
            "{path}: {body}"
        );
    }
    let (status, body) = env
        .post(
            "/api/v1/tokens",
            Some(&dash_a),
            json!({"role": "dashboard"}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    for token in [None, Some("spd_0000")] {
        let (status, body) = env.get(&format!("/api/v1/tenants/{name}"), token).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (401, &json!("unauthorized")),
            "{body}"
        );
    }

    // Only the dashboard role is issued at /api/v1/tokens.
    for role in ["tenant", "admin", "owner"] {
        let (status, body) = env
            .post("/api/v1/tokens", Some(ADMIN), json!({"role": role}))
            .await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (400, &json!("invalid_role")),
            "{role}: {body}"
        );
    }

    // The tokens are stored as digests: the plaintext is nowhere in the database.
    for token in [&dash_a, &dash_b] {
        let (digests, plaintext): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM api_tokens WHERE token_hash = $1 AND scope = 'dashboard'),
                    (SELECT count(*) FROM api_tokens t WHERE strpos(row_to_json(t)::text, $2) > 0)
                  + (SELECT count(*) FROM audit_log a WHERE strpos(row_to_json(a)::text, $2) > 0)",
        )
        .bind(&stackplane_api::caller::token_digest(token)[..])
        .bind(token.as_str())
        .fetch_one(&env.db)
        .await
        .expect("tokens");
        assert_eq!((digests, plaintext), (1, 0));
    }

    // Issuing, the checkout and the portal are audited as who made them.
    let audit: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT actor, action, outcome, details->>'role' FROM audit_log
         WHERE action IN ('token.issue', 'billing.checkout') ORDER BY id",
    )
    .fetch_all(&env.db)
    .await
    .expect("audit");
    let row = |actor: &str, action: &str, outcome: &str, role: Option<&str>| {
        (
            actor.to_owned(),
            action.to_owned(),
            outcome.to_owned(),
            role.map(str::to_owned),
        )
    };
    assert_eq!(
        audit,
        [
            row("admin", "token.issue", "success", Some("dashboard")),
            row("admin", "token.issue", "success", Some("dashboard")),
            row(
                &format!("token:{id_a}"),
                "billing.checkout",
                "success",
                None
            ),
            row(&format!("token:{id_a}"), "token.issue", "denied", None),
            row("admin", "token.issue", "failed", None),
            row("admin", "token.issue", "failed", None),
            row("admin", "token.issue", "failed", None),
        ]
    );

    // A revoked dashboard token stops working at once.
    let (status, _) = env
        .call_delete(&format!("/api/v1/tokens/{id_b}"), ADMIN)
        .await;
    assert_eq!(status, 204);
    let (status, _) = env
        .post(
            "/api/v1/billing/checkout",
            Some(&dash_b),
            json!({"platform": env.platform,
            "tier": "starter", "email": "bob@example.com", "userRef": "user-1"}),
        )
        .await;
    assert_eq!(status, 401);

    for t in [&name, &other] {
        tenants
            .delete(t, &Default::default())
            .await
            .expect("delete tenant");
    }
    cleanup(&env).await;
}

fn text(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {v}"))
        .to_owned()
}

fn billing_condition<'a>(
    t: &'a Tenant,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    t.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
}

impl Env {
    /// A checkout by `token` of the tier's first price; the session request Stripe received.
    async fn checkout(
        &self,
        token: &str,
        email: &str,
        user_ref: &str,
        verified: bool,
    ) -> (String, Recorded) {
        let before = self.recorded().len();
        let (status, body) = self
            .post(
                "/api/v1/billing/checkout",
                Some(token),
                json!({"platform": self.platform, "tier": "starter", "email": email,
                    "userRef": user_ref, "emailVerified": verified}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let recorded = self.recorded();
        assert_eq!(recorded.len(), before + 1, "{recorded:?}");
        let request = recorded[before].clone();
        assert_eq!(request.path, "/v1/checkout/sessions");
        (text(&body, "id"), request)
    }
}

/// The session names `customer` (and then no `customer_email`, which Stripe refuses with it), or,
/// with `None`, carries `email` for Stripe to make a new customer.
fn assert_session_customer(request: &Recorded, customer: Option<&str>, email: &str) {
    assert_eq!(request.param("customer"), customer, "{:?}", request.params);
    let expected_email = if customer.is_some() {
        None
    } else {
        Some(email)
    };
    assert_eq!(
        request.param("customer_email"),
        expected_email,
        "{:?}",
        request.params
    );
}

/// Subscribe, cancel, subscribe again through checkout: the second and third checkouts of the
/// same dashboard user name the customer the first one made, so the cancelled Tenant runs again
/// (not a second, empty one) and paying twice raises `BillingConflict` on it.
#[tokio::test]
async fn resubscribing_through_checkout_reuses_the_customer_and_revives_its_tenant() {
    let ls = LocalStripe::start().await;
    let env = setup_with(Some(&ls.url)).await;
    ls.drive(&["setup", &env.prices[0]]).await;
    let (dash, _) = env.dashboard_token("dashboard").await;

    // The first checkout knows no customer: Stripe makes one from the e-mail.
    let (session, request) = env
        .checkout(&dash, "ada@example.com", "user-1", false)
        .await;
    assert_session_customer(&request, None, "ada@example.com");
    let customer = text(
        &ls.drive(&["customer", "ada@example.com"]).await,
        "customer",
    );
    let first = text(
        &ls.drive(&["subscribe", &customer, &env.prices[0]]).await,
        "subscription",
    );
    env.complete_checkout_with(&request, &session, &customer, &first)
        .await;
    let name = stackplane_crds::naming::tenant_name(&env.platform, &customer);
    let tenants: Api<Tenant> = Api::all(env.kube.clone());
    let t = tenants.get(&name).await.expect("the tenant");
    assert_eq!(
        t.spec.subscription.as_ref().map(|s| s.id.as_str()),
        Some(first.as_str())
    );
    assert!(!t.spec.suspended);

    // Cancelled: the Tenant is suspended and counts down its retention.
    ls.drive(&["cancel", &first]).await;
    env.worker()
        .sweep()
        .await
        .expect("sweep")
        .expect("not locked");
    let t = tenants.get(&name).await.expect("tenant");
    assert!(
        t.spec.suspended && t.spec.cancelled_at.is_some(),
        "{:?}",
        t.spec
    );

    // Re-subscribing through checkout (another address even): the same customer.
    let (session, request) = env
        .checkout(&dash, "ada.new@example.com", "user-1", false)
        .await;
    assert_session_customer(&request, Some(&customer), "ada.new@example.com");
    let second = text(
        &ls.drive(&["subscribe", &customer, &env.prices[0]]).await,
        "subscription",
    );
    env.complete_checkout_with(&request, &session, &customer, &second)
        .await;
    let t = tenants.get(&name).await.expect("the same tenant");
    assert_eq!(
        t.spec.subscription.as_ref().map(|s| s.id.as_str()),
        Some(second.as_str())
    );
    assert!(
        !t.spec.suspended && t.spec.cancelled_at.is_none(),
        "{:?}",
        t.spec
    );

    // Paying twice: a conflict on that Tenant, never a second stack.
    let (session, request) = env
        .checkout(&dash, "ada@example.com", "user-1", false)
        .await;
    assert_session_customer(&request, Some(&customer), "ada@example.com");
    let third = text(
        &ls.drive(&["subscribe", &customer, &env.prices[0]]).await,
        "subscription",
    );
    env.complete_checkout_with(&request, &session, &customer, &third)
        .await;
    let t = tenants.get(&name).await.expect("tenant");
    let conflict = billing_condition(&t, "BillingConflict").expect("BillingConflict");
    assert_eq!(conflict.status, "True");
    assert!(
        conflict.message.contains(&second) && conflict.message.contains(&third),
        "{}",
        conflict.message
    );
    let customers: Vec<String> = sqlx::query_scalar(
        "SELECT customer_id FROM checkout_customers WHERE client_reference_id = 'user-1'",
    )
    .fetch_all(&env.db)
    .await
    .expect("checkout customers");
    assert_eq!(customers, [customer.as_str()]);
    let audit: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT details->>'customerFrom' FROM audit_log WHERE action = 'billing.checkout' ORDER BY id",
    )
    .fetch_all(&env.db)
    .await
    .expect("audit");
    assert_eq!(
        audit,
        [
            Some("new".to_owned()),
            Some("client_reference_id".to_owned()),
            Some("client_reference_id".to_owned())
        ]
    );

    tenants
        .delete(&name, &Default::default())
        .await
        .expect("delete tenant");
    cleanup(&env).await;
}

/// By e-mail only when the dashboard asserts it verified the address, and only a customer the
/// caller may reuse: a stranger typing the victim's address gets a new customer, as does another
/// dashboard; an address nobody has makes a new customer.
#[tokio::test]
async fn a_verified_email_reuses_the_callers_customer_and_an_unverified_one_never_attaches() {
    let ls = LocalStripe::start().await;
    let env = setup_with(Some(&ls.url)).await;
    ls.drive(&["setup", &env.prices[0]]).await;
    let (dash_a, _) = env.dashboard_token("dashboard a").await;
    let (dash_b, _) = env.dashboard_token("dashboard b").await;
    let victim_email = "victim@example.com";

    // Dashboard A's user checked out once: the victim's customer is A's.
    let (session, request) = env.checkout(&dash_a, victim_email, "victim", false).await;
    let victim = text(&ls.drive(&["customer", victim_email]).await, "customer");
    let sub = text(
        &ls.drive(&["subscribe", &victim, &env.prices[0]]).await,
        "subscription",
    );
    env.complete_checkout_with(&request, &session, &victim, &sub)
        .await;
    let name = stackplane_crds::naming::tenant_name(&env.platform, &victim);
    let tenants: Api<Tenant> = Api::all(env.kube.clone());
    tenants.get(&name).await.expect("the victim's tenant");

    // A stranger (another user of A) types the victim's address, unverified: Stripe is not even
    // asked who has it, and the session makes a new customer.
    let lookups = ls.requests("/v1/customers?");
    let (_, request) = env.checkout(&dash_a, victim_email, "stranger", false).await;
    assert_session_customer(&request, None, victim_email);
    assert_eq!(
        ls.requests("/v1/customers?"),
        lookups,
        "no lookup by an unverified address"
    );

    // Verified, by another dashboard: the customer is not B's to reuse.
    let (_, request) = env.checkout(&dash_b, victim_email, "b-user", true).await;
    assert_session_customer(&request, None, victim_email);
    assert_eq!(ls.requests("/v1/customers?"), lookups + 1);

    // Verified, by A for a user it knows by another reference (a second device): reused.
    let (_, request) = env
        .checkout(&dash_a, victim_email, "victim-phone", true)
        .await;
    assert_session_customer(&request, Some(&victim), victim_email);

    // The admin may reuse any customer with a verified address.
    let (_, request) = env
        .checkout(ADMIN, victim_email, "support-ticket-9", true)
        .await;
    assert_session_customer(&request, Some(&victim), victim_email);

    // A verified address nobody has: Stripe makes the customer.
    let (_, request) = env
        .checkout(&dash_a, "nobody@example.com", "new-user", true)
        .await;
    assert_session_customer(&request, None, "nobody@example.com");

    let audit: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT details->>'userRef', details->>'customerFrom' FROM audit_log
         WHERE action = 'billing.checkout' ORDER BY id",
    )
    .fetch_all(&env.db)
    .await
    .expect("audit");
    let row = |u: &str, from: &str| (Some(u.to_owned()), Some(from.to_owned()));
    assert_eq!(
        audit,
        [
            row("victim", "new"),
            row("stranger", "new"),
            row("b-user", "new"),
            row("victim-phone", "verified_email"),
            row("support-ticket-9", "verified_email"),
            row("new-user", "new"),
        ]
    );

    tenants
        .delete(&name, &Default::default())
        .await
        .expect("delete tenant");
    cleanup(&env).await;
}
