//! Load benchmark of `GET /api/v1/tenants/{name}`: N tenants (default 1,000) in the reflector
//! cache, C concurrent keep-alive connections (default 256) for S seconds (default 10) from an
//! external load generator (Debian's `wrk`, a separate process), once with the admin token and
//! once with tenant-scoped tokens (one per connection's tenant: the token cache answers after
//! the first request of each), next to the same server's `/healthz` rate with the same load
//! generator and the same wrk script in the same run (the baseline; `/healthz` with wrk's
//! built-in request, no Lua per request, is printed beside it). Prints one table
//! (`stackplane_tests::bench`).
//!
//! Runs against the harness (KUBECONFIG, DATABASE_URL):
//!   run=$(tests/harness/up.sh) && source "$run/env.sh"
//!   cargo bench --workspace --bench status_load
//! Knobs: BENCH_TENANTS, BENCH_CONNECTIONS, BENCH_SECONDS. Under `cargo test --workspace
//! --bench status_load` (make test) it is a smoke run: 50 tenants, 16 connections, 2 s.

use std::sync::Arc;
use std::time::Instant;

use futures::{stream, StreamExt};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::Api;
use serde_json::json;
use stackplane_api::config::Secrets;
use stackplane_api::db::MIGRATOR;
use stackplane_api::hardening::HardeningArgs;
use stackplane_api::metrics::Metrics;
use stackplane_api::server::{router_with, AppState, BillingState, RouterOptions};
use stackplane_api::tenants::{MetricsSourceArgs, TenantApi};
use stackplane_crds::{Tenant, TenantSpec};
use stackplane_tests::bench::{self, knob, lua_string, Row};
use stackplane_tests::{fresh_database, install_crds, kube_client, unique};

const ADMIN: &str = "bench-admin-token";

/// A wrk script sending GET `/api/v1/tenants/<name>` round-robin over `pairs` of (token,
/// tenant name), each thread from its own offset. With `healthz`, the same script (the same Lua
/// work per request, the same headers) sends GET `/healthz` instead: the baseline then pays
/// the load generator's per-request cost exactly as the measured rows do.
fn script(pairs: &[(String, String)], healthz: bool) -> String {
    let path = if healthz {
        r#""/healthz""#
    } else {
        r#""/api/v1/tenants/" .. p[2]"#
    };
    let table: Vec<String> = pairs
        .iter()
        .map(|(t, n)| format!("{{{}, {}}}", lua_string(t), lua_string(n)))
        .collect();
    format!(
        r#"
local pairs_ = {{ {} }}
local i = 0
local threads = 0
function setup(thread)
  thread:set("offset", threads * 7919)
  threads = threads + 1
end
function init(args)
  i = offset or 0
end
function request()
  i = i + 1
  local p = pairs_[(i % #pairs_) + 1]
  return wrk.format("GET", {}, {{["Authorization"] = "Bearer " .. p[1]}})
end
"#,
        table.join(", "),
        path
    )
}

fn main() {
    let tenants = knob("BENCH_TENANTS", 1000, 50);
    let connections = knob("BENCH_CONNECTIONS", 256, 16);
    let seconds = knob("BENCH_SECONDS", 10, 2) as u64;
    // The server and the load generator get separate runtimes (they still share the machine).
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("server runtime");
    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("load runtime");

    let (base, internal, api, platform, kube) = server_rt.block_on(async {
        let kube = kube_client().await;
        install_crds(&kube).await;
        let (db, _) = fresh_database().await;
        MIGRATOR.run(&db).await.expect("migrate");
        let platform = unique("bench");
        let tenant_api: Api<Tenant> = Api::all(kube.clone());
        let started = Instant::now();
        stream::iter(0..tenants)
            .for_each_concurrent(16, |i| {
                let tenant_api = tenant_api.clone();
                let platform = platform.clone();
                async move {
                    let name = format!("{platform}-{i:04}");
                    let mut t = Tenant::new(&name, TenantSpec::new(&platform, "starter"));
                    t.metadata.labels = Some([("stackplane.io/bench".to_owned(), platform.clone())].into());
                    tenant_api.create(&PostParams::default(), &t).await.expect("create tenant");
                    let status = json!({"status": {"phase": "Ready", "namespace": format!("tenant-{name}"),
                        "endpoint": format!("https://{name}.example.com"),
                        "components": [{"name": "api", "readyReplicas": 2, "replicas": 2}],
                        "conditions": [{"type": "Ready", "status": "True", "reason": "Available",
                            "message": "all components available", "lastTransitionTime": "2026-11-21T00:00:00Z"}]}});
                    tenant_api
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                        .await
                        .expect("status");
                }
            })
            .await;
        eprintln!("created {tenants} tenants in {:.1}s", started.elapsed().as_secs_f64());
        let (api, watches) = TenantApi::start(db.clone(), kube.clone(), MetricsSourceArgs::default());
        tokio::spawn(watches.run());
        assert!(api.ready().await);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state_db = db.clone();
        let state = AppState {
            db,
            metrics: Metrics::new(),
            billing: Arc::new(BillingState {
                secrets: Secrets::from_values(Some("whsec_bench"), Some("sk_test_bench"), Some(ADMIN))
                    .expect("secrets"),
                wake: Default::default(),
            }),
        };
        // Measured without limits: the benchmark is of the status path, not the limiter.
        let unlimited = std::num::NonZeroU32::MAX;
        let options = RouterOptions {
            hardening: HardeningArgs {
                rate_limit_per_second: unlimited,
                rate_limit_burst: unlimited,
                address_rate_limit_per_second: unlimited,
                address_rate_limit_burst: unlimited,
                ..HardeningArgs::default()
            },
            tenants: Some(api.clone()),
            ..RouterOptions::default()
        };
        let app = router_with(state, options)
            .into_make_service_with_connect_info::<std::net::SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, app).await });
        // The same process's internal listener: `/healthz` is the baseline.
        let internal = stackplane_api::health::router(stackplane_api::health::Internal {
            db: state_db,
            kube: Some(kube.clone()),
            metrics: Metrics::new(),
            health: Default::default(),
        });
        let internal_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let internal_addr = internal_listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(internal_listener, internal).await });
        (format!("http://{addr}"), format!("http://{internal_addr}"), api, platform, kube)
    });
    let names: Vec<String> = (0..tenants).map(|i| format!("{platform}-{i:04}")).collect();
    assert!(
        names
            .iter()
            .all(|n| api.tenants.get(&ObjectRef::new(n)).is_some()),
        "every tenant is cached"
    );

    let tokens = load_rt.block_on(async {
        let http = reqwest::Client::new();
        // One tenant token per connection (at most one per tenant), issued through the API.
        let mut tokens = Vec::new();
        for name in names.iter().take(connections) {
            let body: serde_json::Value = http
                .post(format!("{base}/api/v1/tenants/{name}/tokens"))
                .bearer_auth(ADMIN)
                .send()
                .await
                .expect("issue")
                .json()
                .await
                .expect("token");
            tokens.push((
                body["token"].as_str().expect("token").to_owned(),
                name.clone(),
            ));
        }
        tokens
    });
    let admin: Vec<(String, String)> = names
        .iter()
        .map(|n| (ADMIN.to_owned(), n.clone()))
        .collect();
    // Warm-up: connections, and each tenant token's one database lookup.
    bench::wrk(&base, connections, 2, &script(&tokens, false), &[]);
    let load_plain = bench::loadavg();
    let plain = bench::wrk(
        &format!("{internal}/healthz"),
        connections,
        seconds,
        "",
        &[],
    );
    let load_health = bench::loadavg();
    let health = bench::wrk(&internal, connections, seconds, &script(&admin, true), &[]);
    let load_admin = bench::loadavg();
    let admin = bench::wrk(&base, connections, seconds, &script(&admin, false), &[]);
    let load_tenant = bench::loadavg();
    let tenant = bench::wrk(&base, connections, seconds, &script(&tokens, false), &[]);
    for (what, w) in [
        ("healthz", &plain),
        ("healthz (scripted)", &health),
        ("admin", &admin),
        ("tenant", &tenant),
    ] {
        assert!(w.requests > 0, "{what}: no request answered");
        assert_eq!(
            w.status_errors + w.socket_errors,
            0,
            "{what}: errors: {w:?}"
        );
        assert!(w.p99_us > 0, "{what}: no latency measured");
    }
    let vs_plain = |w: &bench::Wrk| {
        format!(
            "{:.2} of the unscripted /healthz",
            w.per_second() / plain.per_second()
        )
    };
    let rows = [
        Row::new(
            format!("GET /healthz, {connections} connections, wrk's built-in request (no Lua per request)"),
            plain.describe(),
        )
        .load(load_plain),
        Row::new(
            format!("GET /healthz, {connections} connections, the rows' wrk script (baseline)"),
            health.describe(),
        )
        .load(load_health),
        Row::new(
            format!("GET /api/v1/tenants/{{name}}, admin token, {tenants} tenants cached, {connections} connections"),
            format!("{}; {}", admin.describe(), vs_plain(&admin)),
        )
        .load(load_admin)
        .baseline(format!("{:.0} req/s /healthz (same script)", health.per_second()), admin.per_second() / health.per_second())
        .target(">= 0.5, p99 < 10 ms"),
        Row::new(
            format!("GET /api/v1/tenants/{{name}}, {} tenant tokens, {connections} connections", tokens.len()),
            format!("{}; {}", tenant.describe(), vs_plain(&tenant)),
        )
        .load(load_tenant)
        .baseline(format!("{:.0} req/s /healthz (same script)", health.per_second()), tenant.per_second() / health.per_second())
        .target(">= 0.5, p99 < 10 ms"),
    ];
    bench::print_table("status_load", &rows);

    server_rt.block_on(async {
        let tenant_api: Api<Tenant> = Api::all(kube);
        tenant_api
            .delete_collection(
                &DeleteParams::default(),
                &ListParams::default().labels(&format!("stackplane.io/bench={platform}")),
            )
            .await
            .expect("clean up");
    });
}
