//! Load benchmark of `GET /api/v1/tenants/{name}`: N tenants (default 1,000) in the reflector
//! cache, C concurrent keep-alive connections (default 256) for S seconds (default 10), once
//! with the admin token and once with tenant-scoped tokens (one per connection; each request
//! then also looks its token up in Postgres). Prints requests/s, p50, p99 and errors.
//!
//! Runs against the harness (KUBECONFIG, DATABASE_URL):
//!   run=$(tests/harness/up.sh) && source "$run/env.sh"
//!   cargo bench -p stackplane-api --bench status_load
//! Knobs: BENCH_TENANTS, BENCH_CONNECTIONS, BENCH_SECONDS.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
use stackplane_tests::{fresh_database, install_crds, kube_client, unique};

const ADMIN: &str = "bench-admin-token";

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Report {
    requests: usize,
    errors: usize,
    seconds: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

async fn load(
    base: &str,
    names: &[String],
    tokens: &[String],
    connections: usize,
    seconds: u64,
) -> Report {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..connections {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()
            .expect("client");
        let token = tokens[c % tokens.len()].clone();
        // Tenant tokens read their own tenant; the admin token reads tenants round-robin.
        let own: Option<String> = (tokens.len() > 1).then(|| names[c % names.len()].clone());
        let names = names.to_vec();
        let base = base.to_owned();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(4096);
            let mut errors = 0usize;
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let name = own.as_deref().unwrap_or(&names[i % names.len()]);
                i += connections;
                let started = Instant::now();
                let ok = match client
                    .get(format!("{base}/api/v1/tenants/{name}"))
                    .bearer_auth(&token)
                    .send()
                    .await
                {
                    Ok(resp) => resp.status().is_success() && resp.bytes().await.is_ok(),
                    Err(_) => false,
                };
                latencies.push(started.elapsed());
                if !ok {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("task");
        all.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    Report {
        requests: all.len(),
        errors,
        seconds: elapsed,
        p50: at(0.50),
        p99: at(0.99),
        max: *all.last().expect("some requests"),
    }
}

fn print(label: &str, r: &Report, connections: usize, tenants: usize) {
    println!(
        "{label}: {tenants} tenants cached, {connections} connections, {:.1}s: {} requests, {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, errors {}",
        r.seconds,
        r.requests,
        r.requests as f64 / r.seconds,
        r.p50.as_secs_f64() * 1e3,
        r.p99.as_secs_f64() * 1e3,
        r.max.as_secs_f64() * 1e3,
        r.errors
    );
}

fn main() {
    let tenants = knob("BENCH_TENANTS", 1000);
    let connections = knob("BENCH_CONNECTIONS", 256);
    let seconds = knob("BENCH_SECONDS", 10) as u64;
    // The server and the load generator get separate runtimes (they still share the machine).
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("server runtime");
    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("load runtime");

    let (base, api, platform, kube) = server_rt.block_on(async {
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
        (format!("http://{addr}"), api, platform, kube)
    });
    let names: Vec<String> = (0..tenants).map(|i| format!("{platform}-{i:04}")).collect();
    assert!(
        names
            .iter()
            .all(|n| api.tenants.get(&ObjectRef::new(n)).is_some()),
        "every tenant is cached"
    );

    load_rt.block_on(async {
        let http = reqwest::Client::new();
        // One tenant token per connection, issued through the API.
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
            tokens.push(body["token"].as_str().expect("token").to_owned());
        }
        // Warm-up: opens the connections.
        load(&base, &names, &[ADMIN.to_owned()], connections, 2).await;
        let admin = load(&base, &names, &[ADMIN.to_owned()], connections, seconds).await;
        print("admin token", &admin, connections, tenants);
        let tenant = load(&base, &names, &tokens, connections, seconds).await;
        print("tenant tokens", &tenant, connections, tenants);
    });

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
