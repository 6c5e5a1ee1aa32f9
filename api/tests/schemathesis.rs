//! schemathesis (from the harness's virtualenv) against the served `/openapi.json` of a real
//! server (real Postgres and kube-apiserver behind it): no 5xx other than the documented 503s,
//! and every response matches the document (status code, content type, schema). Also: the
//! document and the router list the same operations.

use std::process::Command;
use std::sync::Arc;

use kube::api::PostParams;
use kube::Api;
use stackplane_api::config::Secrets;
use stackplane_api::hardening::HardeningArgs;
use stackplane_api::metrics::Metrics;
use stackplane_api::server::{public, AppState, BillingState, RouterOptions};
use stackplane_api::tenants::{MetricsSourceArgs, TenantApi};
use stackplane_crds::{Tenant, TenantSpec};
use stackplane_tests::{fresh_database, install_crds, kube_client, required_env, unique};

const ADMIN: &str = "schemathesis-admin-token";

async fn serve() -> (String, Vec<(&'static str, &'static str)>) {
    let kube = kube_client().await;
    install_crds(&kube).await;
    let (db, _) = fresh_database().await;
    stackplane_api::db::migrate(&db).await.expect("migrate");
    Api::<Tenant>::all(kube.clone())
        .create(
            &PostParams::default(),
            &Tenant::new(&unique("st"), TenantSpec::new("tackle", "starter")),
        )
        .await
        .expect("a tenant");
    let (api, watches) = TenantApi::start(db.clone(), kube, MetricsSourceArgs::default());
    tokio::spawn(watches.run());
    assert!(api.ready().await);
    let state = AppState {
        db,
        metrics: Metrics::new(),
        billing: Arc::new(BillingState {
            secrets: Secrets::from_values(Some("whsec_st"), Some("sk_test_st"), Some(ADMIN))
                .expect("secrets"),
            wake: Default::default(),
        }),
    };
    let big = std::num::NonZeroU32::new(1_000_000).expect("non-zero");
    let (app, routes) = public(
        state,
        RouterOptions {
            hardening: HardeningArgs {
                rate_limit_per_second: big,
                rate_limit_burst: big,
                address_rate_limit_per_second: big,
                address_rate_limit_burst: big,
                auth_failures_per_minute: big,
                auth_failures_burst: big,
                webhook_invalid_per_minute: big,
                webhook_invalid_burst: big,
                ..HardeningArgs::default()
            },
            tenants: Some(api),
            ..RouterOptions::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
    });
    (base, routes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_lists_exactly_the_routes_served() {
    let (_, routes) = serve().await;
    let mut served: Vec<(String, String)> = routes
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    served.sort();
    assert_eq!(
        served,
        stackplane_api::openapi::operations(),
        "served routes (left) and documented operations (right) differ"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_undocumented_response() {
    let schemathesis = required_env("STACKPLANE_SCHEMATHESIS");
    let (base, _) = serve().await;
    let report = std::env::temp_dir().join(format!("{}.ndjson", unique("schemathesis")));
    let out = tokio::task::spawn_blocking({
        let report = report.clone();
        move || {
            Command::new(&schemathesis)
                .arg("run")
                .arg(format!("{base}/openapi.json"))
                .args([
                    "--checks",
                    "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
                    "--max-examples",
                    "25",
                    "--phases",
                    "examples,coverage,fuzzing",
                    "--workers",
                    "2",
                    "--seed",
                    "20261201",
                    "--request-timeout",
                    "20",
                    "--header",
                    &format!("Authorization: Bearer {ADMIN}"),
                    "--report",
                    "ndjson",
                    "--report-ndjson-path",
                ])
                .arg(&report)
                .env("NO_COLOR", "1")
                .output()
                .expect("run schemathesis")
        }
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let events = std::fs::read_to_string(&report).unwrap_or_default();
    // Each scenario event names the test cases it ran; count them.
    let cases: usize = events
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|e| {
            e.get("ScenarioFinished")
                .and_then(|s| s["recorder"]["cases"].as_object())
                .map(|c| c.len())
        })
        .sum();
    eprintln!("schemathesis: {cases} test cases\n{stdout}");
    assert!(
        out.status.success(),
        "schemathesis failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(cases > 0, "schemathesis ran no test case:\n{stdout}");
}
