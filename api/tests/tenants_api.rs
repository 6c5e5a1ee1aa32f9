//! The tenant API against the real kube-apiserver and Postgres the harness starts. Tenants are
//! created directly in the API server and their status written with `patch_status`, as the
//! controller would.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use stackplane_api::config::Secrets;
use stackplane_api::db::MIGRATOR;
use stackplane_api::hardening::HardeningArgs;
use stackplane_api::health::Internal;
use stackplane_api::metrics::Metrics;
use stackplane_api::server::{router_with, AppState, BillingState, RouterOptions};
use stackplane_api::supervisor::Health;
use stackplane_api::tenants::quota::CostLimitArgs;
use stackplane_api::tenants::{MetricsSourceArgs, TenantApi};
use stackplane_crds::{Tenant, TenantBackup, TenantPhase, TenantSpec};
use stackplane_tests::{fresh_database, install_crds, kube_client, unique};

const ADMIN: &str = "admin-token-for-tenant-api-tests";

struct Env {
    base: String,
    /// The internal listener: /healthz, /readyz, /metrics.
    internal: String,
    http: reqwest::Client,
    db: PgPool,
    kube: Client,
    api: TenantApi,
    metrics: Metrics,
}

/// Limits that the tests' many calls from one address never reach (the limits have their own
/// tests).
fn generous() -> HardeningArgs {
    let big = std::num::NonZeroU32::new(100_000).expect("non-zero");
    HardeningArgs {
        rate_limit_per_second: big,
        rate_limit_burst: big,
        address_rate_limit_per_second: big,
        address_rate_limit_burst: big,
        auth_failures_per_minute: big,
        auth_failures_burst: big,
        ..HardeningArgs::default()
    }
}

struct Setup {
    source: MetricsSourceArgs,
    cost_limits: CostLimitArgs,
    token_cache_ttl: Duration,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            source: MetricsSourceArgs::default(),
            cost_limits: CostLimitArgs::default(),
            // Revocation is checked on the next request here; the cache has its own test.
            token_cache_ttl: Duration::ZERO,
        }
    }
}

async fn start_with(source: MetricsSourceArgs) -> Env {
    start_setup(Setup {
        source,
        ..Setup::default()
    })
    .await
}

async fn start_setup(setup: Setup) -> Env {
    let kube = kube_client().await;
    install_crds(&kube).await;
    let (db, _) = fresh_database().await;
    MIGRATOR.run(&db).await.expect("migrate");
    let (mut api, watches) = TenantApi::start(db.clone(), kube.clone(), setup.source);
    api.cost_limits = setup.cost_limits;
    tokio::spawn(watches.run());
    assert!(api.ready().await, "caches fill");
    let metrics = Metrics::new();
    let state = AppState {
        db: db.clone(),
        metrics: metrics.clone(),
        billing: Arc::new(BillingState {
            secrets: Secrets::from_values(
                Some("whsec_tenants"),
                Some("sk_test_tenants"),
                Some(ADMIN),
            )
            .expect("secrets"),
            wake: Default::default(),
        }),
    };
    let app = router_with(
        state,
        RouterOptions {
            hardening: generous(),
            tenants: Some(api.clone()),
            token_cache_ttl: setup.token_cache_ttl,
            ..RouterOptions::default()
        },
    );
    let internal = stackplane_api::health::router(Internal {
        db: db.clone(),
        kube: Some(kube.clone()),
        metrics: metrics.clone(),
        health: Health::default(),
    });
    Env {
        base: stackplane_tests::serve_on_free_port(app).await,
        internal: stackplane_tests::serve_on_free_port(internal).await,
        http: reqwest::Client::new(),
        db,
        kube,
        api,
        metrics,
    }
}

async fn start() -> Env {
    start_with(MetricsSourceArgs::default()).await
}

impl Env {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, &str)>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some((content_type, body)) = body {
            req = req
                .header("content-type", content_type)
                .body(body.to_owned());
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
        };
        (status, value)
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, token, None).await
    }

    async fn post(&self, path: &str, token: Option<&str>, body: &str) -> (StatusCode, Value) {
        self.call(
            reqwest::Method::POST,
            path,
            token,
            Some(("application/json", body)),
        )
        .await
    }

    /// Creates a Tenant and writes its status as the controller would; waits until the cache
    /// shows it.
    async fn tenant(&self, name: &str, platform: &str, tier: &str, phase: Option<TenantPhase>) {
        let api: Api<Tenant> = Api::all(self.kube.clone());
        api.create(
            &PostParams::default(),
            &Tenant::new(name, TenantSpec::new(platform, tier)),
        )
        .await
        .expect("create tenant");
        if let Some(phase) = phase {
            self.set_phase(name, phase).await;
        } else {
            self.wait_cached(name, None).await;
        }
    }

    async fn set_phase(&self, name: &str, phase: TenantPhase) {
        let api: Api<Tenant> = Api::all(self.kube.clone());
        let ready = if phase == TenantPhase::Ready {
            "True"
        } else {
            "False"
        };
        let status = json!({"status": {
            "phase": phase.as_str(),
            "namespace": format!("tenant-{name}"),
            "endpoint": format!("https://{name}.example.com"),
            "dnsRecord": format!("{name}.example.com"),
            "components": [{"name": "api", "readyReplicas": 2, "replicas": 2}],
            "instance": {"id": "i-0abc", "type": "t3.small", "state": "running", "publicIp": "203.0.113.7"},
            "conditions": [{"type": "Ready", "status": ready, "reason": phase.as_str(),
                "message": "as scripted", "lastTransitionTime": "2026-11-21T00:00:00Z"}],
        }});
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("patch status");
        self.wait_cached(name, Some(phase)).await;
    }

    async fn wait_cached(&self, name: &str, phase: Option<TenantPhase>) {
        for _ in 0..200 {
            if let Some(t) = self.api.tenants.get(&ObjectRef::new(name)) {
                if phase.is_none() || t.status.as_ref().and_then(|s| s.phase) == phase {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("tenant {name} not in the cache with phase {phase:?} within 10s");
    }

    /// Issues a token for `tenant` through the API; returns (token, id).
    async fn token(&self, tenant: &str) -> (String, String) {
        let (status, body) = self
            .post(
                &format!("/api/v1/tenants/{tenant}/tokens"),
                Some(ADMIN),
                r#"{"description": "dashboard"}"#,
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (
            body["token"].as_str().expect("token").to_owned(),
            body["id"].as_str().expect("id").to_owned(),
        )
    }

    async fn audit(&self) -> Vec<(String, String, String, String)> {
        sqlx::query_as("SELECT actor, action, target, outcome FROM audit_log ORDER BY id")
            .fetch_all(&self.db)
            .await
            .expect("audit rows")
    }
}

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn tenant_token_reads_only_its_own_tenant_until_revoked() {
    let env = start().await;
    let platform = unique("plat");
    let (a, b) = (unique("tn-a"), unique("tn-b"));
    env.tenant(&a, &platform, "starter", Some(TenantPhase::Ready))
        .await;
    env.tenant(&b, &platform, "starter", Some(TenantPhase::Ready))
        .await;
    let (token, id) = env.token(&a).await;

    // Stored as its SHA-256 only.
    let (hash, prefix): (Vec<u8>, String) =
        sqlx::query_as("SELECT token_hash, prefix FROM api_tokens WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&env.db)
            .await
            .expect("token row");
    assert_eq!(hash, Sha256::digest(token.as_bytes()).to_vec());
    assert!(token.starts_with(&prefix) && prefix.len() < token.len());

    // Own status, metrics and backups.
    let (status, body) = env.get(&format!("/api/v1/tenants/{a}"), Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["name"], a.as_str());
    assert_eq!(body["phase"], "Ready");
    assert_eq!(body["platform"], platform.as_str());
    assert_eq!(body["tier"], "starter");
    assert_eq!(body["subdomain"], a.as_str());
    assert_eq!(body["endpoint"], format!("https://{a}.example.com"));
    assert_eq!(body["dnsRecord"], format!("{a}.example.com"));
    assert_eq!(body["instance"]["id"], "i-0abc");
    assert_eq!(body["instance"]["type"], "t3.small");
    assert_eq!(body["components"][0]["readyReplicas"], 2);
    assert_eq!(body["conditions"][0]["type"], "Ready");
    assert_eq!(body["conditions"][0]["status"], "True");
    let (status, body) = env
        .get(
            &format!("/api/v1/tenants/{a}/metrics?window=1h"),
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["bandwidth"]["available"], false);
    assert!(body["bandwidth"]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("STACKPLANE_PROMETHEUS_URL")));
    assert!(
        body["bandwidth"].get("bytes").is_none(),
        "never invented: {body}"
    );
    assert_eq!(body["storage"]["available"], true);
    let (status, body) = env
        .get(&format!("/api/v1/tenants/{a}/backups"), Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!([]));

    // Another tenant answers exactly as a missing one: 404.
    let (_, missing) = env
        .get("/api/v1/tenants/no-such-tenant", Some(&token))
        .await;
    for path in [
        format!("/api/v1/tenants/{b}"),
        format!("/api/v1/tenants/{b}/metrics"),
        format!("/api/v1/tenants/{b}/backups"),
    ] {
        let (status, body) = env.get(&path, Some(&token)).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
        assert_eq!(
            body["error"]["message"]
                .as_str()
                .map(|m| m.replace(&b, "X")),
            missing["error"]["message"]
                .as_str()
                .map(|m| m.replace("no-such-tenant", "X"))
        );
    }
    let (status, body) = env
        .post(&format!("/api/v1/tenants/{b}/backups"), Some(&token), "{}")
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    // Admin-only endpoints.
    let (status, body) = env.get("/api/v1/tenants", Some(&token)).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let (status, body) = env
        .post(&format!("/api/v1/tenants/{a}/tokens"), Some(&token), "{}")
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");

    // No token, an unknown one, then the revoked one: 401.
    let (status, body) = env.get(&format!("/api/v1/tenants/{a}"), None).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, body) = env
        .get(&format!("/api/v1/tenants/{a}"), Some("spt_0000"))
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, _) = env
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/tenants/{a}/tokens/{id}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = env.get(&format!("/api/v1/tenants/{a}"), Some(&token)).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    // The admin still sees both.
    for t in [&a, &b] {
        let (status, _) = env.get(&format!("/api/v1/tenants/{t}"), Some(ADMIN)).await;
        assert_eq!(status, StatusCode::OK);
    }
    // Revoking a token of another tenant's name finds nothing.
    let (status, body) = env
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/tenants/{b}/tokens/{id}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    let audit = env.audit().await;
    let row = |action: &str, outcome: &str, actor: &str| {
        audit
            .iter()
            .any(|(ac, an, _, o)| an == action && o == outcome && ac == actor)
    };
    assert!(row("token.issue", "success", "admin"), "{audit:?}");
    assert!(row("token.revoke", "success", "admin"), "{audit:?}");
    assert!(row("token.revoke", "denied", "admin"), "{audit:?}");
    assert!(
        row("backup.create", "denied", &format!("token:{id}")),
        "{audit:?}"
    );
    assert!(
        row("token.issue", "denied", &format!("token:{id}")),
        "{audit:?}"
    );
    assert!(
        audit
            .iter()
            .all(|(_, _, target, _)| target.starts_with("/api/v1/tenants/")),
        "{audit:?}"
    );
}

#[tokio::test]
async fn admin_lists_filters_pages_and_summarizes() {
    let env = start().await;
    let p1 = unique("plat");
    let p2 = unique("plat");
    let phases = [
        TenantPhase::Ready,
        TenantPhase::Ready,
        TenantPhase::Degraded,
        TenantPhase::Provisioning,
        TenantPhase::Ready,
    ];
    let mut names = Vec::new();
    for (i, phase) in phases.iter().enumerate() {
        let name = format!("{p1}-t{i}");
        let tier = if i % 2 == 0 { "starter" } else { "pro" };
        env.tenant(&name, &p1, tier, Some(*phase)).await;
        names.push(name);
    }
    env.tenant(&format!("{p1}-unobserved"), &p1, "starter", None)
        .await;
    names.push(format!("{p1}-unobserved"));
    names.sort();
    env.tenant(&format!("{p2}-x"), &p2, "starter", Some(TenantPhase::Ready))
        .await;

    let list = |q: String| {
        let env = &env;
        async move {
            let (status, body) = env.get(&format!("/api/v1/tenants?{q}"), Some(ADMIN)).await;
            assert_eq!(status, StatusCode::OK, "{q}: {body}");
            body
        }
    };
    let names_of = |body: &Value| -> Vec<String> {
        body["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|t| t["name"].as_str().expect("name").to_owned())
            .collect()
    };
    let all = list(format!("platform={p1}")).await;
    assert_eq!(names_of(&all), names);
    assert_eq!(all["total"], 6);
    assert!(all["continue"].is_null());
    let ready = list(format!("platform={p1}&phase=Ready")).await;
    assert_eq!(
        names_of(&ready),
        [format!("{p1}-t0"), format!("{p1}-t1"), format!("{p1}-t4")]
    );
    let pro = list(format!("platform={p1}&tier=pro")).await;
    assert_eq!(names_of(&pro), [format!("{p1}-t1"), format!("{p1}-t3")]);

    // Pages of 4 cover everything once, in order; a tenant created between pages does not
    // shift the next page.
    let first = list(format!("platform={p1}&limit=4")).await;
    assert_eq!(names_of(&first), names[..4]);
    let cont = first["continue"].as_str().expect("continue").to_owned();
    env.tenant(&format!("{p1}-a-late"), &p1, "starter", None)
        .await;
    let second = list(format!("platform={p1}&limit=4&continue={cont}")).await;
    assert_eq!(names_of(&second), names[4..]);
    assert!(second["continue"].is_null());

    for (q, code) in [
        ("phase=Sleeping", "invalid_query"),
        ("limit=0", "invalid_query"),
        ("limit=many", "invalid_query"),
        ("colour=blue", "invalid_query"),
        ("continue=Not_A_Name", "invalid_query"),
    ] {
        let (status, body) = env.get(&format!("/api/v1/tenants?{q}"), Some(ADMIN)).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, code);
    }

    let (status, summary) = env
        .get(&format!("/api/v1/platforms/{p1}/summary"), Some(ADMIN))
        .await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(summary["total"], 7);
    assert_eq!(summary["byPhase"]["Ready"], 3);
    assert_eq!(summary["byPhase"]["Degraded"], 1);
    assert_eq!(summary["byPhase"]["Provisioning"], 1);
    assert_eq!(summary["byPhase"]["Unknown"], 2);
    assert_eq!(summary["byPhase"]["Failed"], 0);
    assert_eq!(summary["byTier"]["starter"], 5);
    assert_eq!(summary["byTier"]["pro"], 2);
    let (status, body) = env
        .get(
            "/api/v1/platforms/no-such-platform-here/summary",
            Some(ADMIN),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = env
        .get(&format!("/api/v1/platforms/{p1}/summary"), None)
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn a_platforms_rollout_is_served_to_the_admin_only() {
    let env = start().await;
    let name = unique("plat");
    let platform = stackplane_tests::example_platform_copy("tackle.yaml", &name);
    let api = kube::Api::<stackplane_crds::Platform>::all(env.kube.clone());
    api.create(&kube::api::PostParams::default(), &platform)
        .await
        .expect("create platform");
    let status = serde_json::json!({"status": {
        "currentRevision": format!("{name}-aaaa"),
        "updateRevision": format!("{name}-bbbb"),
        "rollout": {"revision": format!("{name}-bbbb"), "wave": 2, "waves": 3, "total": 30,
            "updated": 12, "healthy": 10, "failed": 0, "phase": "Progressing",
            "message": "wave 2/3 (starter): 10 of 10 healthy"}}});
    api.patch_status(
        &name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&status),
    )
    .await
    .expect("write platform status");
    let (code, body) = env
        .get(&format!("/api/v1/platforms/{name}/rollout"), Some(ADMIN))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["updateRevision"], format!("{name}-bbbb"));
    assert_eq!(body["currentRevision"], format!("{name}-aaaa"));
    assert_eq!(body["rollout"]["phase"], "Progressing");
    assert_eq!(body["rollout"]["updated"], 12);
    let (code, body) = env
        .get(
            "/api/v1/platforms/no-such-platform-here/rollout",
            Some(ADMIN),
        )
        .await;
    assert_error(code, &body, StatusCode::NOT_FOUND, "not_found");
    let (code, body) = env
        .get(&format!("/api/v1/platforms/{name}/rollout"), None)
        .await;
    assert_error(code, &body, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn bad_input_is_refused_and_nothing_is_written() {
    let env = start().await;
    let name = unique("tn");
    env.tenant(&name, &unique("plat"), "starter", Some(TenantPhase::Ready))
        .await;
    let backups = format!("/api/v1/tenants/{name}/backups");
    let tokens = format!("/api/v1/tenants/{name}/tokens");
    let cases: Vec<(String, &str, &str, StatusCode, &str)> = vec![
        (
            backups.clone(),
            "application/json",
            "{not json",
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            backups.clone(),
            "application/json",
            r#"{"reason": "scheduled"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            backups.clone(),
            "text/plain",
            "please back up",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            format!("{backups}/x/restore"),
            "application/json",
            r#"{"force": true}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "/api/v1/tenants/Bad_Name/backups".into(),
            "application/json",
            "{}",
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            format!("{backups}/Not..A..Name/restore"),
            "application/json",
            "{}",
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            tokens.clone(),
            "application/json",
            r#"{"scope": "admin"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            tokens.clone(),
            "application/json",
            r#"{"description": 42}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            tokens.clone(),
            "application/json",
            r#"{"expiresAt": "2001-01-01T00:00:00Z"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            tokens.clone(),
            "application/json",
            r#"{"description": "#,
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "/api/v1/tenants/-x-/tokens".into(),
            "application/json",
            "{}",
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
    ];
    for (path, content_type, body, want, code) in &cases {
        let (status, answer) = env
            .call(
                reqwest::Method::POST,
                path,
                Some(ADMIN),
                Some((content_type, body)),
            )
            .await;
        assert!(status.is_client_error(), "{path} {body}: {status}");
        assert_error(status, &answer, *want, code);
    }
    let (status, body) = env.get("/api/v1/tenants/UPPER", Some(ADMIN)).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_name");

    // Nothing written: no TenantBackup, no token, and no audit row claiming success.
    let crs = Api::<TenantBackup>::all(env.kube.clone())
        .list(
            &ListParams::default()
                .labels(&stackplane_core::contract::labels::tenant_selector(&name)),
        )
        .await
        .expect("list backups");
    assert!(crs.items.is_empty(), "{:?}", crs.items);
    let (records, tokens_n): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM backup_records WHERE tenant = $1), (SELECT count(*) FROM api_tokens)",
    )
    .bind(&name)
    .fetch_one(&env.db)
    .await
    .expect("counts");
    assert_eq!((records, tokens_n), (0, 0));
    let audit = env.audit().await;
    assert_eq!(
        audit.len(),
        cases.len(),
        "one row per refused call: {audit:?}"
    );
    assert!(
        audit
            .iter()
            .all(|(actor, _, _, outcome)| outcome == "failed" && actor == "admin"),
        "{audit:?}"
    );
}

#[tokio::test]
async fn uptime_after_scripted_phase_transitions() {
    let env = start().await;
    let name = unique("tn");
    env.tenant(
        &name,
        &unique("plat"),
        "starter",
        Some(TenantPhase::Provisioning),
    )
    .await;
    // Scripted history with controlled timestamps: Provisioning from -10m, Ready at +5m,
    // Degraded at +35m, Ready at +45m (minutes from `base`).
    let base = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let at = |minutes: i64| base + chrono::Duration::minutes(minutes);
    for (minutes, phase) in [
        (-10, "Provisioning"),
        (5, "Ready"),
        (35, "Degraded"),
        (45, "Ready"),
    ] {
        sqlx::query("INSERT INTO tenant_status_history (tenant, platform, phase, observed_at) VALUES ($1, 'p', $2, $3)")
            .bind(&name)
            .bind(phase)
            .bind(at(minutes))
            .execute(&env.db)
            .await
            .expect("history row");
    }
    let metrics = |window: &str, end: DateTime<Utc>| {
        let path = format!(
            "/api/v1/tenants/{name}/metrics?window={window}&end={}",
            end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        let env = &env;
        async move {
            let (status, body) = env.get(&path, Some(ADMIN)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["uptime"].clone()
        }
    };
    // [0, 60m]: Ready 5→35 and 45→60 = 45 of 60 minutes.
    let u = metrics("1h", at(60)).await;
    assert_eq!(u["fraction"], 0.75, "{u}");
    assert_eq!(u["readySeconds"], 2700.0);
    assert_eq!(u["observedSeconds"], 3600.0);
    // [-60m, 60m]: the 50 minutes before the first record are not observed: 45 of 70.
    let u = metrics("2h", at(60)).await;
    assert_eq!(u["observedSeconds"], 4200.0, "{u}");
    assert_eq!(u["fraction"], 2700.0 / 4200.0);
    // [-2h, -1h]: no history at all.
    let u = metrics("1h", at(-60)).await;
    assert!(u["fraction"].is_null(), "{u}");
    // Windows are validated, by characters: `1é` (a two-byte last character) is refused, not
    // split inside the character.
    for window in ["1fortnight", "1%C3%A9", "%C3%A9", "1d%F0%9F%98%80"] {
        let (status, body) = env
            .get(
                &format!("/api/v1/tenants/{name}/metrics?window={window}"),
                Some(ADMIN),
            )
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_query");
    }
    // An end near the end of time minus the window is refused too, not overflowed.
    let (status, body) = env
        .get(
            &format!("/api/v1/tenants/{name}/metrics?window=400d&end=-262143-01-01T00:00:00Z"),
            Some(ADMIN),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let text = env.metrics.encode().expect("metrics");
    assert!(
        text.contains("stackplane_api_panics_total 0"),
        "no request panicked:\n{text}"
    );
}

/// Instance-hours come from the same history: only the time the instance was `running` counts
/// (a suspended tenant's stopped instance bills no compute), and rows are written by
/// `record_phase` when the instance's state changes even if the phase does not.
#[tokio::test]
async fn instance_hours_count_running_time_only() {
    let env = start().await;
    let name = unique("tn");
    env.tenant(&name, &unique("plat"), "starter", Some(TenantPhase::Ready))
        .await;
    // Same phase, new instance state: a row; the same pair again: none. (Under a name of its
    // own: the api's Tenant watch records `name`'s status at a time of its choosing.)
    let direct = format!("{name}-direct");
    let record = |phase: &'static str, state: &'static str| {
        stackplane_api::history::record_phase(&env.db, &direct, "p", phase, Some(state), None)
    };
    assert!(record("Ready", "running").await.expect("record"));
    assert!(!record("Ready", "running").await.expect("record"));
    assert!(record("Suspended", "stopping").await.expect("record"));
    assert!(record("Suspended", "stopped").await.expect("record"));
    // Scripted times, long before the rows the watch writes now: running 0→20m, stopped
    // 20→50m, running 50→60m.
    let base = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
    let at = |minutes: i64| base + chrono::Duration::minutes(minutes);
    for (minutes, phase, state) in [
        (0, "Ready", "running"),
        (20, "Suspended", "stopped"),
        (50, "Ready", "running"),
    ] {
        sqlx::query(
            "INSERT INTO tenant_status_history (tenant, platform, phase, instance_state, observed_at)
             VALUES ($1, 'p', $2, $3, $4)",
        )
        .bind(&name)
        .bind(phase)
        .bind(state)
        .bind(at(minutes))
        .execute(&env.db)
        .await
        .expect("history row");
    }
    let path = format!(
        "/api/v1/tenants/{name}/metrics?window=1h&end={}",
        at(60).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let (status, body) = env.get(&path, Some(ADMIN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let i = &body["instance"];
    assert_eq!(i["runningSeconds"], 1800.0, "{body}");
    assert_eq!(i["hours"], 0.5, "{body}");
    // Uptime reads the same rows: Ready for the same 30 minutes.
    assert_eq!(body["uptime"]["readySeconds"], 1800.0, "{body}");
}

#[tokio::test]
async fn tenant_tokens_have_daily_backup_and_restore_limits_and_the_admin_has_none() {
    let env = start_setup(Setup {
        cost_limits: CostLimitArgs {
            tenant_backups_per_day: 2,
            tenant_restores_per_day: 1,
        },
        ..Setup::default()
    })
    .await;
    let name = unique("tn-cost");
    env.tenant(&name, &unique("plat"), "starter", Some(TenantPhase::Ready))
        .await;
    let (token, id) = env.token(&name).await;
    let backups = format!("/api/v1/tenants/{name}/backups");
    // Concurrent requests never go over the limit.
    let tries = (0..5).map(|_| env.post(&backups, Some(&token), "{}"));
    let answers = futures::future::join_all(tries).await;
    let accepted = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::ACCEPTED)
        .count();
    assert_eq!(accepted, 2, "{answers:?}");
    let (status, body) = answers
        .iter()
        .find(|(s, _)| *s == StatusCode::TOO_MANY_REQUESTS)
        .cloned()
        .expect("a refused backup");
    assert_error(
        status,
        &body,
        StatusCode::TOO_MANY_REQUESTS,
        "quota_exceeded",
    );
    let message = body["error"]["message"].as_str().unwrap_or_default();
    let tomorrow = (Utc::now().date_naive() + chrono::Days::new(1)).to_string();
    assert!(message.contains("at most 2 backups"), "{message}");
    assert!(
        message.contains(&format!("{tomorrow}T00:00:00+00:00")),
        "{message}"
    );
    let resp = env
        .http
        .post(format!("{}{backups}", env.base))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: i64 = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=86_400).contains(&retry_after), "{retry_after}");
    // The admin is not limited.
    for _ in 0..3 {
        let (status, body) = env.post(&backups, Some(ADMIN), "{}").await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    // Restores: one per day for the token, from a completed backup.
    let api: Api<TenantBackup> = Api::all(env.kube.clone());
    let source = answers
        .iter()
        .find(|(s, _)| *s == StatusCode::ACCEPTED)
        .and_then(|(_, b)| b["name"].as_str().map(str::to_owned))
        .expect("an accepted backup");
    api.patch_status(
        &source,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Completed"}})),
    )
    .await
    .expect("complete the backup");
    stackplane_tests::eventually("the completed backup in the cache", || {
        let store = env.api.backups.clone();
        let source = source.clone();
        async move {
            store
                .get(&ObjectRef::new(&source))
                .filter(|b| {
                    b.status.as_ref().and_then(|s| s.phase)
                        == Some(stackplane_crds::BackupPhase::Completed)
                })
                .map(|_| ())
        }
    })
    .await;
    let restore = format!("/api/v1/tenants/{name}/backups/{source}/restore");
    let (status, body) = env.post(&restore, Some(&token), "{}").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, body) = env.post(&restore, Some(&token), "{}").await;
    assert_error(
        status,
        &body,
        StatusCode::TOO_MANY_REQUESTS,
        "quota_exceeded",
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("at most 1 restores"),
        "{body}"
    );
    let (status, body) = env.post(&restore, Some(ADMIN), "{}").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // Refused requests are audited, as the token.
    let audit = env.audit().await;
    let refused = audit
        .iter()
        .filter(|(actor, action, _, outcome)| {
            actor == &format!("token:{id}") && action.starts_with("backup.") && outcome == "failed"
        })
        .count();
    assert_eq!(refused, 5, "3 + 1 backups and 1 restore refused: {audit:?}");
}

#[tokio::test]
async fn a_revoked_token_stops_working_within_the_cache_ttl() {
    let env = start_setup(Setup {
        token_cache_ttl: Duration::from_secs(2),
        ..Setup::default()
    })
    .await;
    let name = unique("tn-ttl");
    env.tenant(&name, &unique("plat"), "starter", Some(TenantPhase::Ready))
        .await;
    let (token, id) = env.token(&name).await;
    let path = format!("/api/v1/tenants/{name}");
    // Believed from the cache: the database is not asked while the entry lives.
    let (status, _) = env.get(&path, Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = env
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/tenants/{name}/tokens/{id}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // Once the TTL has passed, the database is asked again and the token is refused.
    stackplane_tests::eventually_within("the revoked token refused", 30, || async {
        let (status, _) = env.get(&path, Some(&token)).await;
        (status == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;

    // Within the TTL the cached verification is believed: with a TTL of 10 minutes the revoked
    // token still reads (that is the documented window), and the database is not asked.
    let env = start_setup(Setup {
        token_cache_ttl: Duration::from_secs(600),
        ..Setup::default()
    })
    .await;
    let name = unique("tn-ttl");
    let path = format!("/api/v1/tenants/{name}");
    env.tenant(&name, &unique("plat"), "starter", Some(TenantPhase::Ready))
        .await;
    let (token, id) = env.token(&name).await;
    let (status, _) = env.get(&path, Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    sqlx::query("UPDATE api_tokens SET revoked_at = now() WHERE id = $1::uuid")
        .bind(&id)
        .execute(&env.db)
        .await
        .expect("revoke");
    let (status, _) = env.get(&path, Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "served from the token cache");
}

/// A revocation through the API drops the token from this process's cache: refused from the
/// next request even with a TTL of 10 minutes (another replica believes it for at most its TTL,
/// which the test above covers), while another cached token of the same tenant still works.
#[tokio::test]
async fn a_token_revoked_through_the_api_is_refused_at_once() {
    let env = start_setup(Setup {
        token_cache_ttl: Duration::from_secs(600),
        ..Setup::default()
    })
    .await;
    let name = unique("tn-revoke");
    env.tenant(&name, &unique("plat"), "starter", Some(TenantPhase::Ready))
        .await;
    let (token, id) = env.token(&name).await;
    let (other, _) = env.token(&name).await;
    let path = format!("/api/v1/tenants/{name}");
    for t in [&token, &other] {
        let (status, _) = env.get(&path, Some(t)).await;
        assert_eq!(status, StatusCode::OK, "cached now");
    }
    let (status, _) = env
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/tenants/{name}/tokens/{id}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = env.get(&path, Some(&token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "revoked: refused at once");
    let (status, _) = env.get(&path, Some(&other)).await;
    assert_eq!(status, StatusCode::OK, "the tenant's other token is kept");
}

#[tokio::test]
async fn a_failed_audit_write_is_logged_and_counted_never_dropped_silently() {
    let env = start().await;
    let name = unique("tn-audit");
    env.tenant(&name, &unique("plat"), "starter", Some(TenantPhase::Ready))
        .await;
    // The audit table refuses writes; the call itself is still answered.
    sqlx::query("ALTER TABLE audit_log ADD CONSTRAINT audit_blocked CHECK (false) NOT VALID")
        .execute(&env.db)
        .await
        .expect("block audit writes");
    let (status, body) = env
        .post(
            &format!("/api/v1/tenants/{name}/backups"),
            Some(ADMIN),
            "{}",
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, _) = env.post("/api/v1/tenants/x/backups", None, "{}").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let text = env.metrics.encode().expect("metrics");
    assert!(
        text.contains("stackplane_audit_write_failures_total 2"),
        "both lost rows are counted:\n{text}"
    );
}

#[tokio::test]
async fn healthz_fails_while_a_supervised_task_is_down_and_recovers_when_it_runs_again() {
    let env = start().await;
    let health = Health::default();
    let internal = stackplane_tests::serve_on_free_port(stackplane_api::health::router(Internal {
        db: env.db.clone(),
        kube: Some(env.kube.clone()),
        metrics: env.metrics.clone(),
        health: health.clone(),
    }))
    .await;
    // The real watches, supervised, and a task that fails its first run then keeps running.
    let (_, watches) = TenantApi::start(
        env.db.clone(),
        env.kube.clone(),
        MetricsSourceArgs::default(),
    );
    let watches = Arc::new(watches);
    let w = watches.clone();
    stackplane_api::supervisor::supervise(&health, "tenant-watch", move || w.tenants());
    let (release, released) = tokio::sync::watch::channel(false);
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = runs.clone();
    stackplane_api::supervisor::supervise(&health, "flaky", move || {
        let mut released = released.clone();
        let run = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            if run == 0 {
                // The first run ends once the test has seen the service healthy.
                let _ = released.wait_for(|r| *r).await;
                return;
            }
            std::future::pending::<()>().await;
        }
    });
    let healthz = || async {
        let resp = env
            .http
            .get(format!("{internal}/healthz"))
            .send()
            .await
            .ok()?;
        let status = resp.status();
        let body: Value = resp.json().await.ok()?;
        Some((status, body))
    };
    let (status, body) = healthz().await.expect("healthz");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"status": "ok", "down": []}));
    release.send(true).expect("release");
    let body = stackplane_tests::eventually("healthz naming the ended task", || async {
        let (status, body) = healthz().await?;
        (status == StatusCode::SERVICE_UNAVAILABLE).then_some(body)
    })
    .await;
    assert_eq!(body, json!({"status": "down", "down": ["flaky"]}));
    // Restarted with backoff: healthy again.
    stackplane_tests::eventually("healthz ok after the restart", || async {
        let (status, _) = healthz().await?;
        (status == StatusCode::OK).then_some(())
    })
    .await;
    assert!(runs.load(std::sync::atomic::Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn phase_transitions_are_recorded_once() {
    let env = start().await;
    let name = unique("tn");
    env.tenant(
        &name,
        &unique("plat"),
        "starter",
        Some(TenantPhase::Provisioning),
    )
    .await;
    env.set_phase(&name, TenantPhase::Ready).await;
    env.set_phase(&name, TenantPhase::Degraded).await;
    let mut rows: Vec<(String, Option<String>)> = Vec::new();
    for _ in 0..100 {
        rows = sqlx::query_as(
            "SELECT phase, previous_phase FROM tenant_status_history WHERE tenant = $1 ORDER BY observed_at, id",
        )
        .bind(&name)
        .fetch_all(&env.db)
        .await
        .expect("history");
        if rows.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        rows,
        [
            ("Provisioning".to_owned(), None),
            ("Ready".to_owned(), Some("Provisioning".to_owned())),
            ("Degraded".to_owned(), Some("Ready".to_owned())),
        ]
    );
    // A second writer (another replica) seeing the same status (phase and instance state, as
    // `env.tenant` wrote it) concurrently writes nothing new.
    let writes = (0..8).map(|_| {
        stackplane_api::history::record_phase(
            &env.db,
            &name,
            "p",
            "Degraded",
            Some("running"),
            None,
        )
    });
    let written = futures::future::join_all(writes).await;
    assert!(
        written.iter().all(|w| matches!(w, Ok(false))),
        "{written:?}"
    );
    // Concurrent writers of a new phase: exactly one row.
    let writes = (0..8).map(|_| {
        stackplane_api::history::record_phase(
            &env.db,
            &name,
            "p",
            "Suspended",
            Some("running"),
            None,
        )
    });
    let written = futures::future::join_all(writes).await;
    assert_eq!(
        written.iter().filter(|w| matches!(w, Ok(true))).count(),
        1,
        "{written:?}"
    );
}

#[tokio::test]
async fn backups_are_requested_recorded_and_restored() {
    let env = start().await;
    let platform = unique("plat");
    let name = unique("tn");
    env.tenant(&name, &platform, "starter", Some(TenantPhase::Ready))
        .await;
    let (token, token_id) = env.token(&name).await;
    let backups_path = format!("/api/v1/tenants/{name}/backups");

    let (status, created) = env.post(&backups_path, Some(&token), "").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let backup = created["name"].as_str().expect("name").to_owned();
    assert_eq!(created["phase"], "Pending");
    let crs: Api<TenantBackup> = Api::all(env.kube.clone());
    let cr = crs.get(&backup).await.expect("the TenantBackup exists");
    assert_eq!(cr.spec.tenant, name);
    assert_eq!(cr.spec.reason, stackplane_crds::BackupReason::Manual);
    assert_eq!(cr.spec.restore, None);
    let labels = cr.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("stackplane")
    );
    assert_eq!(labels.get("stackplane.io/tenant"), Some(&name));
    assert_eq!(labels.get("stackplane.io/platform"), Some(&platform));
    let (phase, reason): (String, String) =
        sqlx::query_as("SELECT phase, reason FROM backup_records WHERE name = $1")
            .bind(&backup)
            .fetch_one(&env.db)
            .await
            .expect("recorded");
    assert_eq!((phase.as_str(), reason.as_str()), ("Pending", "manual"));

    // A restore from an unfinished backup is refused; from an unknown one, 404.
    let (status, body) = env
        .post(
            &format!("{backups_path}/{backup}/restore"),
            Some(&token),
            "{}",
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "not_restorable");
    let (status, body) = env
        .post(&format!("{backups_path}/nope/restore"), Some(&token), "{}")
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    // The backup reconciler completes it.
    let status = json!({"status": {
        "phase": "Completed",
        "parts": [{"kind": "ebs-snapshot", "id": "snap-0123", "source": "vol-1", "state": "Completed"},
                  {"kind": "database", "id": "dump-job", "state": "Completed"}],
        "startedAt": "2026-11-21T01:00:00Z",
        "completedAt": "2026-11-21T01:02:00Z",
        "expiresAt": "2026-12-21T01:02:00Z",
    }});
    crs.patch_status(&backup, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch backup status");
    let mut record: (String, Value, Option<DateTime<Utc>>) = Default::default();
    for _ in 0..100 {
        record =
            sqlx::query_as("SELECT phase, parts, completed_at FROM backup_records WHERE name = $1")
                .bind(&backup)
                .fetch_one(&env.db)
                .await
                .expect("record");
        if record.0 == "Completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(record.0, "Completed", "the watch records the status");
    assert_eq!(record.1[0]["id"], "snap-0123");
    assert_eq!(
        record.2,
        Some(Utc.with_ymd_and_hms(2026, 11, 21, 1, 2, 0).unwrap())
    );

    let (status, restore) = env
        .post(
            &format!("{backups_path}/{backup}/restore"),
            Some(&token),
            "{}",
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{restore}");
    let restore_name = restore["name"].as_str().expect("name").to_owned();
    assert_eq!(restore["restoreFrom"], backup.as_str());
    let restore_cr = crs.get(&restore_name).await.expect("restore CR");
    assert_eq!(restore_cr.spec.restore.as_deref(), Some(backup.as_str()));
    crs.patch_status(
        &restore_name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": {"phase": "InProgress",
            "parts": [{"kind": "ebs-snapshot", "id": "vol-restored", "source": "snap-0123", "state": "InProgress"}]}})),
    )
    .await
    .expect("patch restore status");

    // The list shows both, the restore's progress from the live object.
    let mut list = Value::Null;
    for _ in 0..100 {
        let (status, body) = env.get(&backups_path, Some(&token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        list = body;
        let restore = list
            .as_array()
            .and_then(|l| l.iter().find(|b| b["name"] == restore_name.as_str()));
        if restore.is_some_and(|r| r["phase"] == "InProgress") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let items = list.as_array().expect("array");
    assert_eq!(items.len(), 2, "{list}");
    let find = |n: &str| {
        items
            .iter()
            .find(|b| b["name"] == n)
            .cloned()
            .expect("listed")
    };
    assert_eq!(find(&restore_name)["phase"], "InProgress");
    assert_eq!(find(&restore_name)["restoreFrom"], backup.as_str());
    assert_eq!(find(&backup)["phase"], "Completed");
    assert_eq!(find(&backup)["parts"][0]["kind"], "ebs-snapshot");

    // The record outlives the object.
    crs.delete(&backup, &DeleteParams::default())
        .await
        .expect("delete CR");
    let mut gone = false;
    for _ in 0..100 {
        if env.api.backups.get(&ObjectRef::new(&backup)).is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the cache drops the deleted TenantBackup");
    let (_, body) = env.get(&backups_path, Some(&token)).await;
    let old = body
        .as_array()
        .and_then(|l| l.iter().find(|b| b["name"] == backup.as_str()).cloned())
        .expect("still listed from Postgres");
    assert_eq!(old["live"], false);
    assert_eq!(old["phase"], "Completed");

    let audit = env.audit().await;
    let actor = format!("token:{token_id}");
    let success: Vec<_> = audit
        .iter()
        .filter(|(a, _, _, o)| a == &actor && o == "success")
        .map(|(_, action, target, _)| (action.as_str(), target.as_str()))
        .collect();
    assert_eq!(
        success,
        [
            ("backup.create", backups_path.as_str()),
            (
                "backup.restore",
                format!("{backups_path}/{backup}/restore").as_str()
            ),
        ],
        "{audit:?}"
    );
    let details: Value = sqlx::query_scalar(
        "SELECT details FROM audit_log WHERE action = 'backup.create' AND outcome = 'success'",
    )
    .fetch_one(&env.db)
    .await
    .expect("details");
    assert_eq!(details["backup"], backup.as_str());
    assert_eq!(details["status"], 202);
}

/// A Prometheus HTTP API answering one instant vector, remembering the queries it was asked.
async fn fake_prometheus(value: &'static str) -> (String, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let app = axum::Router::new().route(
        "/api/v1/query",
        axum::routing::get(
            move |axum::extract::Query(q): axum::extract::Query<
                std::collections::HashMap<String, String>,
            >| {
                let seen = seen2.clone();
                async move {
                    seen.lock()
                        .expect("lock")
                        .push(q.get("query").cloned().unwrap_or_default());
                    axum::Json(json!({"status": "success", "data": {"resultType": "vector",
                        "result": [{"metric": {}, "value": [1_700_000_000.0, value]}]}}))
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

#[tokio::test]
async fn metrics_report_storage_and_configured_bandwidth() {
    let (prometheus, seen) = fake_prometheus("123456789").await;
    let env = start_with(MetricsSourceArgs {
        prometheus_url: Some(prometheus),
        bandwidth_query: "sum(increase(net_bytes{namespace=\"{namespace}\"}[{window}]))".into(),
    })
    .await;
    let name = unique("tn");
    env.tenant(&name, &unique("plat"), "starter", Some(TenantPhase::Ready))
        .await;
    let namespace = format!("tenant-{name}");
    Api::<Namespace>::all(env.kube.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": namespace}})).expect("ns"),
        )
        .await
        .expect("namespace");
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(env.kube.clone(), &namespace);
    for (claim, size) in [("data", "1Gi"), ("uploads", "500M")] {
        pvcs.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": claim}, "spec": {
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}}))
            .expect("pvc"),
        )
        .await
        .expect("create pvc");
    }
    pvcs.patch_status(
        "data",
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": {"phase": "Bound", "capacity": {"storage": "2Gi"}}})),
    )
    .await
    .expect("bind pvc");

    let (status, body) = env
        .get(
            &format!("/api/v1/tenants/{name}/metrics?window=24h"),
            Some(ADMIN),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let gib = 1024.0 * 1024.0 * 1024.0;
    assert_eq!(body["storage"]["available"], true);
    assert_eq!(body["storage"]["requestedBytes"], gib + 500e6);
    assert_eq!(body["storage"]["capacityBytes"], 2.0 * gib);
    assert_eq!(body["storage"]["volumes"].as_array().map(Vec::len), Some(2));
    assert_eq!(body["bandwidth"]["available"], true, "{body}");
    assert_eq!(body["bandwidth"]["bytes"], 123456789.0);
    assert_eq!(
        seen.lock().expect("lock").as_slice(),
        [format!(
            "sum(increase(net_bytes{{namespace=\"{namespace}\"}}[86400s]))"
        )]
    );
    // The tenant's own uptime comes from what the watch recorded: Ready since it was seen.
    assert!(body["uptime"]["observedSeconds"].as_f64().is_some());
}

#[tokio::test]
async fn readyz_checks_database_and_kubernetes_and_openapi_is_served() {
    let env = start().await;
    let url = |path: &str| format!("{}{path}", env.internal);
    let resp = env.http.get(url("/readyz")).send().await.expect("readyz");
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body, json!({"database": "ok", "kubernetes": "ok"}));
    let (status, doc) = env.get("/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    assert!(doc["paths"]["/api/v1/tenants/{name}/backups"]["post"].is_object());
    // Internal endpoints are not on the public listener.
    for path in ["/readyz", "/healthz", "/metrics"] {
        let (status, body) = env.get(path, None).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "no_route");
    }
    env.db.close().await;
    let resp = env.http.get(url("/readyz")).send().await.expect("readyz");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = resp.json().await.expect("json");
    // Which check failed, and nothing of the backend's error text.
    assert_eq!(body, json!({"database": "failed", "kubernetes": "ok"}));
}

/// Issue 33: the controller's `pre-terminate` backup (the EBS snapshots of an instance about to
/// be terminated) is recorded like any other — the reason the migration admits — and listed
/// with its reason.
#[tokio::test]
async fn pre_terminate_backups_are_recorded_and_listed() {
    let env = start().await;
    let platform = unique("plat");
    let name = unique("tn");
    env.tenant(&name, &platform, "starter", Some(TenantPhase::Ready))
        .await;
    let (token, _) = env.token(&name).await;
    let backup = format!("{name}-pre-terminate-i-0123456789abcdef0");
    let crs: Api<TenantBackup> = Api::all(env.kube.clone());
    let cr = TenantBackup::new(
        &backup,
        stackplane_crds::TenantBackupSpec {
            tenant: name.clone(),
            reason: stackplane_crds::BackupReason::PreTerminate,
            restore: None,
            instance: Some("i-0123456789abcdef0".into()),
        },
    );
    crs.create(&PostParams::default(), &cr)
        .await
        .expect("create the pre-terminate TenantBackup");
    let mut record: Option<(String, String)> = None;
    for _ in 0..100 {
        record = sqlx::query_as("SELECT phase, reason FROM backup_records WHERE name = $1")
            .bind(&backup)
            .fetch_optional(&env.db)
            .await
            .expect("query");
        if record.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        record,
        Some(("Pending".to_owned(), "pre-terminate".to_owned())),
        "the watch records it"
    );
    let (status, body) = env
        .get(&format!("/api/v1/tenants/{name}/backups"), Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed = body
        .as_array()
        .and_then(|l| l.iter().find(|b| b["name"] == backup.as_str()).cloned())
        .unwrap_or_else(|| panic!("listed: {body}"));
    assert_eq!(listed["reason"], "pre-terminate");
    crs.delete(&backup, &DeleteParams::default())
        .await
        .expect("delete CR");
}

/// `PUT`/`DELETE /api/v1/tenants/{name}/hold`: admin only, the reason required and bounded
/// (clear 400s), 404 for an unknown tenant, the hold written whole under the `stackplane-holds`
/// field manager (a second hold without a note drops the first one's note), released whoever
/// set it, and every call in the audit log.
#[tokio::test]
async fn an_operator_holds_and_releases_a_tenant_and_each_call_is_audited() {
    let env = start().await;
    let name = unique("held");
    env.tenant(&name, "leadsite-io", "starter", Some(TenantPhase::Ready))
        .await;
    let path = format!("/api/v1/tenants/{name}/hold");
    let put = |token: Option<&'static str>, body: &'static str| {
        let path = path.clone();
        let env = &env;
        async move {
            env.call(
                reqwest::Method::PUT,
                &path,
                token,
                Some(("application/json", body)),
            )
            .await
        }
    };
    let tenants: Api<Tenant> = Api::all(env.kube.clone());

    // A tenant's own token may not hold it.
    let (tenant_token, _) = env.token(&name).await;
    let (status, body) = env
        .call(
            reqwest::Method::PUT,
            &path,
            Some(&tenant_token),
            Some(("application/json", r#"{"reason": "abuse"}"#)),
        )
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let (status, body) = env
        .call(reqwest::Method::DELETE, &path, Some(&tenant_token), None)
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");

    // Bad bodies: 400 with what is wrong, nothing written.
    for bad in [
        r#"{}"#,
        r#"{"reason": ""}"#,
        r#"{"reason": "   ", "note": "n"}"#,
        r#"{"reason": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
    ] {
        let (status, body) = put(Some(ADMIN), bad).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_hold");
    }
    let (status, _) = put(Some(ADMIN), r#"{"reason": "abuse", "until": "never"}"#).await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown fields are refused"
    );
    let t = tenants.get(&name).await.expect("get");
    assert!(t.spec.hold.is_none(), "nothing written for a bad body");

    // Unknown tenant: 404 for both.
    let missing = format!("/api/v1/tenants/{}/hold", unique("nobody"));
    let (status, body) = env
        .call(
            reqwest::Method::PUT,
            &missing,
            Some(ADMIN),
            Some(("application/json", r#"{"reason": "abuse"}"#)),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = env
        .call(reqwest::Method::DELETE, &missing, Some(ADMIN), None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    // Held.
    let (status, body) = put(Some(ADMIN), r#"{"reason": "abuse", "note": "ticket 42"}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"tenant": name, "reason": "abuse", "note": "ticket 42"})
    );
    let t = tenants.get(&name).await.expect("get");
    let hold = t.spec.hold.clone().expect("held");
    assert_eq!(
        (hold.reason.as_str(), hold.note.as_deref()),
        ("abuse", Some("ticket 42"))
    );
    let managers: Vec<String> = t
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.pointer("/f:spec/f:hold").is_some())
        })
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(managers, vec!["stackplane-holds".to_owned()]);
    assert!(!t.spec.suspended, "a hold is not billing's field");

    // Held again with another reason and no note: written whole.
    let (status, body) = put(Some(ADMIN), r#"{"reason": "legal"}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let hold = tenants
        .get(&name)
        .await
        .expect("get")
        .spec
        .hold
        .expect("held");
    assert_eq!((hold.reason.as_str(), hold.note), ("legal", None));

    // Released, twice (the second is not an error).
    for _ in 0..2 {
        let (status, body) = env
            .call(reqwest::Method::DELETE, &path, Some(ADMIN), None)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }
    assert!(tenants.get(&name).await.expect("get").spec.hold.is_none());

    // A hold set by a direct edit is released the same way.
    tenants
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"hold": {"reason": "dispute"}}})),
        )
        .await
        .expect("edit");
    let (status, _) = env
        .call(reqwest::Method::DELETE, &path, Some(ADMIN), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(tenants.get(&name).await.expect("get").spec.hold.is_none());

    let rows: Vec<(String, String, String)> = env
        .audit()
        .await
        .into_iter()
        .filter(|(_, action, _, _)| action.starts_with("tenant."))
        .map(|(actor, action, _, outcome)| (actor, action, outcome))
        .collect();
    let count = |action: &str, outcome: &str| {
        rows.iter()
            .filter(|(_, a, o)| a == action && o == outcome)
            .count()
    };
    assert_eq!(count("tenant.hold", "denied"), 2, "{rows:?}");
    assert_eq!(count("tenant.hold", "failed"), 5, "{rows:?}");
    assert_eq!(count("tenant.hold", "success"), 2, "{rows:?}");
    assert_eq!(count("tenant.release", "denied"), 2, "{rows:?}");
    assert_eq!(count("tenant.release", "success"), 3, "{rows:?}");
    let details: Vec<Value> = sqlx::query_scalar(
        "SELECT details FROM audit_log WHERE action = 'tenant.hold' AND outcome = 'success' ORDER BY id",
    )
    .fetch_all(&env.db)
    .await
    .expect("details");
    assert!(
        details.iter().any(|d| d["reason"] == "abuse"),
        "{details:?}"
    );
}
