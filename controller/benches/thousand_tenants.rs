//! Benchmark: many Tenants created at once, reconciled by the real `stackplane-controller`
//! binary (a child process) against the harness's kube-apiserver.
//!
//! Measures the time until every Tenant is `Synced` (and the controller's CPU time by then),
//! the time until every Tenant is `Ready` (this process plays the nodes once every tenant is
//! Synced, so neither the Synced phase nor the direct baseline pays for them: it marks each
//! Deployment's replicas available, as a kubelet would, at the pace the tenants became Synced),
//! reconciles per second, and the controller's peak RSS (`VmHWM`); then, in the same
//! run and against the same API server, the raw rate at which it accepts the same objects
//! created directly (POST) and server-side applied directly, with the controller's client
//! concurrency.
//!
//! Then, with every tenant Ready and nothing changing, one resync period: the controller's
//! requests to the API server (its `stackplane_controller_kube_requests_total`) per tenant; and
//! for each tenant the time from its last Deployment reported available to the tenant Ready.
//! Prints one table (`stackplane_tests::bench`).
//!
//! Run against a fresh harness (it leaves its objects behind):
//!   run=$(STACKPLANE_OWNER_PID=$$ tests/harness/up.sh) && source "$run/env.sh"
//!   cargo bench --workspace --bench thousand_tenants
//! `STACKPLANE_BENCH_TENANTS` (default 1000; 10000 for the 10,000-tenant run) sets the number
//! of Tenants, `STACKPLANE_BENCH_CONCURRENCY` (default 16, the controller's default) the
//! concurrency, `STACKPLANE_BENCH_RESYNC_SECONDS` (default 30) the controller's requeue period,
//! and `STACKPLANE_CONTROLLER_BIN` another controller binary. Under `cargo test --workspace
//! --bench thousand_tenants` (make test) it is a smoke run: 50 tenants, a 5 s resync.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::NamespaceResourceScope;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use stackplane_controller::tenant::apply;
use stackplane_core::tenant::plan::{self, Desired, Plan, PlanOptions};
use stackplane_crds::naming::namespace_name;
use stackplane_crds::{Platform, Tenant, TenantSpec};
use stackplane_tests::bench::{self, knob, Row};
use stackplane_tests::{install_crds, kube_client, required_env, unique};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

const BENCH_LABEL: &str = "stackplane.io/bench";
const TIER: &str = "starter";

#[tokio::main]
async fn main() {
    let tenants = knob("STACKPLANE_BENCH_TENANTS", 1000, 50);
    let concurrency = knob("STACKPLANE_BENCH_CONCURRENCY", 16, 16);
    let resync = knob("STACKPLANE_BENCH_RESYNC_SECONDS", 30, 5) as u64;
    let stalls = bench::Stalls::start();
    let kubeconfig = required_env("KUBECONFIG");
    let client = kube_client().await;
    install_crds(&client).await;
    let run = unique("bench");

    let platform = create_platform(&client, &format!("{run}-plat")).await;
    let tier = platform
        .spec
        .tiers
        .iter()
        .find(|t| t.name == TIER)
        .expect("starter tier")
        .clone();
    let sample = plan::plan(
        &Tenant::new("sample", TenantSpec::new(platform.name_any(), TIER)),
        &platform,
        &tier,
        &PlanOptions::default(),
    );
    let objects_per_tenant = 1 + sample.objects.len();
    println!(
        "thousand_tenants: {tenants} tenants of {} ({TIER}: {objects_per_tenant} objects each, {} deployments), concurrency {concurrency}",
        platform.name_any(),
        sample.components.len()
    );

    // --- the controller ----------------------------------------------------------------------
    let bin = std::env::var("STACKPLANE_CONTROLLER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_BIN_EXE_stackplane-controller")));
    let metrics_port = free_port();
    let log = std::env::temp_dir().join(format!("{run}-controller.log"));
    let mut child = tokio::process::Command::new(&bin)
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .args([
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
            "--concurrency",
            &concurrency.to_string(),
            "--tenant-selector",
            &format!("{BENCH_LABEL}={run}"),
            "--lease-name",
            &run,
            // The Kubernetes side is measured: no EC2/Route53 calls (moto has no hosted zone
            // for the example platform, and its latency is not AWS's).
            "--cloud-provider",
            "none",
            "--requeue-seconds",
            &resync.to_string(),
        ])
        .stdout(std::fs::File::create(&log).expect("controller log"))
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let pid = child.id().expect("controller pid");
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(metrics_port, "stackplane_controller_leader").await != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "controller did not lead within 60s (log: {})",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reconciles_before = metric(metrics_port, "stackplane_controller_reconciles_total")
        .await
        .unwrap_or(0.0);
    let requests_at_start = metric(metrics_port, "stackplane_controller_kube_requests_total")
        .await
        .unwrap_or(0.0);

    // --- create the Tenants at once and watch them --------------------------------------------
    let progress = Arc::new(Mutex::new(Progress::default()));
    let watch = tokio::spawn(watch_tenants(
        client.clone(),
        format!("{BENCH_LABEL}={run}"),
        tenants,
        progress.clone(),
    ));
    let started = Instant::now();
    let api: Api<Tenant> = Api::all(client.clone());
    futures::stream::iter(0..tenants)
        .map(|i| {
            let api = api.clone();
            let mut t = Tenant::new(
                &format!("{run}-{i:05}"),
                TenantSpec::new(platform.name_any(), TIER),
            );
            t.metadata.labels = Some(BTreeMap::from([(BENCH_LABEL.to_owned(), run.clone())]));
            async move {
                api.create(&PostParams::default(), &t)
                    .await
                    .expect("create tenant")
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    let created = started.elapsed();

    let timeout = Duration::from_secs(knob("STACKPLANE_BENCH_TIMEOUT_SECONDS", 3600, 600) as u64);
    let load_controller = bench::loadavg();
    let synced = wait_for(&progress, started, timeout, &log, |p| {
        p.all_synced_at.map(|at| at - started)
    })
    .await;
    let synced_cpu = cpu_seconds(pid);

    // --- the nodes: make every Deployment of the bench's platform available ---------------------
    // Only once every tenant is Synced, so the Synced phase pays for no kubelet, as the direct
    // baseline does not. The nodes then replay the Synced phase's pace: a tenant's Deployments
    // become available as long after the nodes start as the tenant became Synced after its
    // creation began, as if its pods had started at that pace (all at once, the Ready figures
    // would measure the queue of a 2 x N burst of reports, not the reaction to one).
    let schedule: Arc<HashMap<String, Duration>> = Arc::new(
        progress
            .lock()
            .await
            .synced
            .iter()
            .map(|(name, at)| (namespace_name(name), at.saturating_duration_since(started)))
            .collect(),
    );
    let available: Available = Arc::default();
    let nodes = tokio::spawn(play_nodes(
        client.clone(),
        platform.name_any(),
        concurrency,
        (Instant::now(), schedule),
        available.clone(),
    ));
    let ready = wait_for(&progress, started, timeout, &log, |p| {
        p.all_ready_at.map(|at| at - started)
    })
    .await;
    let reconciles = metric(metrics_port, "stackplane_controller_reconciles_total")
        .await
        .unwrap_or(0.0)
        - reconciles_before;
    let errors = metric_sum(metrics_port, "stackplane_controller_reconcile_errors_total").await;
    let vm_hwm = proc_status_kib(pid, "VmHWM:");
    let requests_to_ready = metric(metrics_port, "stackplane_controller_kube_requests_total")
        .await
        .unwrap_or(0.0)
        - requests_at_start;

    // --- steady state: every tenant Ready, nothing changes, one resync period -------------------
    // Settle first: the reconciles the last status writes and Deployment reports triggered.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let load_steady = bench::loadavg();
    let requests_before = metric(metrics_port, "stackplane_controller_kube_requests_total")
        .await
        .unwrap_or(0.0);
    let reconciles_steady_before = metric(metrics_port, "stackplane_controller_reconciles_total")
        .await
        .unwrap_or(0.0);
    tokio::time::sleep(Duration::from_secs(resync)).await;
    let steady_requests = metric(metrics_port, "stackplane_controller_kube_requests_total")
        .await
        .unwrap_or(0.0)
        - requests_before;
    let steady_reconciles = metric(metrics_port, "stackplane_controller_reconciles_total")
        .await
        .unwrap_or(0.0)
        - reconciles_steady_before;
    let vm_rss = proc_status_kib(pid, "VmRSS:");
    // The split of that RSS: the heap and stacks, against the pages of the binary's code.
    let rss_anon = proc_status_kib(pid, "RssAnon:");
    let rss_file = proc_status_kib(pid, "RssFile:");
    let vm_hwm_end = proc_status_kib(pid, "VmHWM:");
    watch.abort();
    nodes.abort();
    let _ = child.start_kill();
    let _ = child.wait().await;

    // Available -> Ready, per tenant: from the last of its Deployments marked available to the
    // tenant seen Ready.
    let mut to_ready: Vec<Duration> = {
        let p = progress.lock().await;
        let a = available.lock().await;
        p.ready_at
            .iter()
            .filter_map(|(name, ready)| {
                let avail = a.get(&format!("tenant-{name}"))?;
                Some(ready.saturating_duration_since(*avail))
            })
            .collect()
    };
    to_ready.sort();

    // --- the same objects, directly --------------------------------------------------------------
    let plans: Vec<Plan> = (0..tenants)
        .map(|i| {
            let t = Tenant::new(
                &format!("{run}-raw-{i:05}"),
                TenantSpec::new(platform.name_any(), TIER),
            );
            plan::plan(&t, &platform, &tier, &PlanOptions::default())
        })
        .collect();
    // `STACKPLANE_BENCH_DIRECT_POST=0` skips the POST baseline (at 10,000 tenants it adds
    // 150,000 objects to etcd; the target's baseline is the apply below).
    let with_post = knob("STACKPLANE_BENCH_DIRECT_POST", 1, 1) != 0;
    let load_raw = bench::loadavg();
    let raw_started = Instant::now();
    if with_post {
        futures::stream::iter(plans.iter())
            .map(|p| create_plan(&client, p))
            .buffer_unordered(concurrency)
            .try_collect::<Vec<_>>()
            .await
            .expect("create objects directly");
    }
    let raw_create = raw_started.elapsed();
    let plans: Vec<Plan> = (0..tenants)
        .map(|i| {
            let t = Tenant::new(
                &format!("{run}-ssa-{i:05}"),
                TenantSpec::new(platform.name_any(), TIER),
            );
            plan::plan(&t, &platform, &tier, &PlanOptions::default())
        })
        .collect();
    let load_ssa = bench::loadavg();
    let ssa_started = Instant::now();
    let ssa_cpu_before = cpu_seconds(std::process::id());
    futures::stream::iter(plans.iter())
        .map(|p| apply::apply(&client, p))
        .buffer_unordered(concurrency)
        .try_collect::<Vec<_>>()
        .await
        .expect("apply objects directly");
    let raw_apply = ssa_started.elapsed();
    let ssa_cpu = cpu_seconds(std::process::id()) - ssa_cpu_before;

    let stalled = |from: Instant, took: Duration| {
        let (time, count) = stalls.within(from, from + took);
        format!("{:.1} s in {count} stalls", time.as_secs_f64())
    };
    let stalled_synced = stalled(started, synced);
    let stalled_apply = stalled(ssa_started, raw_apply);
    let objects = (tenants * objects_per_tenant) as f64;
    let rate = |d: Duration| objects / d.as_secs_f64();
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    let (p50, p99) = (
        bench::quantile(&to_ready, 0.50),
        bench::quantile(&to_ready, 0.99),
    );
    assert!(reconciles > 0.0, "no reconcile counted");
    assert!(vm_hwm > 0.0, "no peak RSS read");
    assert!(
        to_ready.len() == tenants,
        "available -> Ready measured for {} of {tenants}",
        to_ready.len()
    );
    assert!(rate(synced) > 0.0 && rate(raw_apply) > 0.0);
    assert!(requests_to_ready > 0.0, "no request counted");
    let rows = [
        Row::new(
            format!("controller: {tenants} tenants created at once -> all Synced ({objects:.0} objects, concurrency {concurrency})"),
            format!("{:.2} s ({:.0} objects/s)", synced.as_secs_f64(), rate(synced)),
        )
        .baseline(
            format!("direct server-side apply: {:.2} s ({:.0} objects/s)", raw_apply.as_secs_f64(), rate(raw_apply)),
            rate(synced) / rate(raw_apply),
        )
        .target(">= 0.8")
        .load(load_controller.clone()),
        if with_post {
            Row::new(
                "same, against direct POST",
                format!("{:.0} objects/s", rate(synced)),
            )
            .baseline(
                format!("direct POST: {:.2} s ({:.0} objects/s)", raw_create.as_secs_f64(), rate(raw_create)),
                rate(synced) / rate(raw_create),
            )
            .load(load_raw)
        } else {
            Row::new("same, against direct POST", "not measured (STACKPLANE_BENCH_DIRECT_POST=0)")
        },
        Row::new(
            "controller: API requests per tenant until all Ready",
            format!("{:.1} ({requests_to_ready:.0} requests)", requests_to_ready / tenants as f64),
        )
        .baseline(
            format!("direct apply: {objects_per_tenant} objects + 1 credentials read per tenant"),
            (objects_per_tenant + 1) as f64 / (requests_to_ready / tenants as f64),
        ),
        Row::new(
            "CPU of the client: the controller until all Synced",
            format!("{synced_cpu:.1} cpu-s ({:.0}% of one core)", 100.0 * synced_cpu / synced.as_secs_f64()),
        )
        .baseline(
            format!("this process's direct apply: {ssa_cpu:.1} cpu-s ({:.0}% of one core)", 100.0 * ssa_cpu / raw_apply.as_secs_f64()),
            ssa_cpu / synced_cpu,
        ),
        Row::new(
            "controller: all Ready (this process plays the kubelets once all are Synced)",
            format!(
                "{:.2} s; {reconciles:.0} reconciles ({errors:.0} failed); the Tenants' POSTs took {:.2} s",
                ready.as_secs_f64(),
                created.as_secs_f64()
            ),
        )
        .load(load_controller.clone()),
        Row::new(
            format!("controller peak RSS (VmHWM), {tenants} tenants"),
            format!(
                "{:.1} MiB (RSS after the resync {:.1} MiB: anonymous {:.1}, file {:.1}; VmHWM then {:.1} MiB)",
                vm_hwm / 1024.0,
                vm_rss / 1024.0,
                rss_anon / 1024.0,
                rss_file / 1024.0,
                vm_hwm_end / 1024.0
            ),
        )
        .target("<= 64 MiB at 10,000")
        .load(load_controller),
        Row::new(
            format!("steady state: API requests in one resync period ({resync} s), per tenant"),
            format!(
                "{:.2} ({steady_requests:.0} requests, {steady_reconciles:.0} reconciles)",
                steady_requests / tenants as f64
            ),
        )
        .target("<= 1")
        .load(load_steady),
        Row::new(
            format!("last Deployment available -> tenant Ready ({} tenants)", to_ready.len()),
            format!("p50 {:.0} ms, p99 {:.0} ms", ms(p50), ms(p99)),
        )
        .target("p50 < 1 s, p99 < 5 s (at 1,000)"),
        Row::new(
            "direct server-side apply (baseline of row 1)",
            format!("{:.0} objects/s", rate(raw_apply)),
        )
        .load(load_ssa),
        Row::new(
            "machine stood still (a thread waking every 50 ms late by over 0.5 s), row 1's two phases",
            format!("controller until all Synced: {stalled_synced}; direct apply: {stalled_apply}"),
        ),
    ];
    bench::print_table(&format!("thousand_tenants ({tenants} tenants)"), &rows);
}

async fn create_platform(client: &Client, name: &str) -> Platform {
    let mut platform: Platform = stackplane_tests::example_platform("leadgen-pro.yaml");
    platform.metadata.name = Some(name.to_owned());
    Api::<Platform>::all(client.clone())
        .create(&PostParams::default(), &platform)
        .await
        .expect("create platform")
}

/// Waits until `done` says how long the phase it looks for took; fails the bench (naming how
/// far the tenants got) after `timeout`.
async fn wait_for(
    progress: &Mutex<Progress>,
    started: Instant,
    timeout: Duration,
    log: &std::path::Path,
    done: impl Fn(&Progress) -> Option<Duration>,
) -> Duration {
    loop {
        {
            let p = progress.lock().await;
            if let Some(took) = done(&p) {
                return took;
            }
            assert!(
                started.elapsed() < timeout,
                "after {:?}: {} Synced, {} Ready (log: {})",
                started.elapsed(),
                p.synced.len(),
                p.ready.len(),
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The CPU time (user + system) process `pid` used so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command (which may hold spaces) start after its closing parenthesis;
    // utime and stime are the 14th and 15th fields of the line.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // In clock ticks of USER_HZ, which Linux's ABI fixes at 100 per second.
    (ticks(11) + ticks(12)) / 100.0
}

/// When each tenant namespace's last Deployment was marked available.
type Available = Arc<Mutex<HashMap<String, Instant>>>;

#[derive(Default)]
struct Progress {
    /// When each tenant was first seen Synced.
    synced: HashMap<String, Instant>,
    ready: HashSet<String>,
    /// When each tenant was first seen Ready.
    ready_at: HashMap<String, Instant>,
    all_synced_at: Option<Instant>,
    all_ready_at: Option<Instant>,
}

/// Records when each Tenant is first seen Synced and Ready, and when the last one is.
async fn watch_tenants(
    client: Client,
    selector: String,
    expected: usize,
    progress: Arc<Mutex<Progress>>,
) {
    let stream = watcher(
        Api::<Tenant>::all(client),
        watcher::Config::default().labels(&selector),
    )
    .default_backoff()
    .applied_objects();
    futures::pin_mut!(stream);
    while let Some(t) = stream.next().await {
        let Ok(t) = t else { continue };
        let now = Instant::now();
        let has = |type_: &str| {
            t.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == type_ && c.status == "True")
            })
        };
        let mut p = progress.lock().await;
        if has("Synced") {
            p.synced.entry(t.name_any()).or_insert(now);
            if p.synced.len() >= expected && p.all_synced_at.is_none() {
                p.all_synced_at = Some(now);
            }
        }
        if has("Ready") {
            p.ready_at.entry(t.name_any()).or_insert(now);
            p.ready.insert(t.name_any());
            if p.ready.len() >= expected && p.all_ready_at.is_none() {
                p.all_ready_at = Some(now);
            }
        }
    }
}

/// Plays the kubelets: every Deployment of `platform` whose replicas are not all available is
/// marked available.
async fn play_nodes(
    client: Client,
    platform: String,
    concurrency: usize,
    (nodes_started, schedule): (Instant, Arc<HashMap<String, Duration>>),
    available: Available,
) {
    let api: Api<Deployment> = Api::all(client);
    let done: Arc<Mutex<HashMap<(String, String), i32>>> = Arc::default();
    // Waiting for its time holds no slot: only the status writes are `concurrency` at a time.
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
    watcher(
        api.clone(),
        watcher::Config::default().labels(&format!("stackplane.io/platform={platform}")),
    )
    .default_backoff()
    .applied_objects()
    .filter_map(|d| async move { d.ok() })
    .for_each_concurrent(None, |d| {
        let api = api.clone();
        let done = done.clone();
        let available = available.clone();
        let slots = slots.clone();
        let schedule = schedule.clone();
        async move {
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let have = d
                .status
                .as_ref()
                .and_then(|s| s.available_replicas)
                .unwrap_or(0);
            let key = (d.namespace().unwrap_or_default(), d.name_any());
            if have == want || done.lock().await.get(&key) == Some(&want) {
                return;
            }
            let due = schedule.get(&key.0).copied().unwrap_or_default();
            tokio::time::sleep_until((nodes_started + due).into()).await;
            let Ok(_slot) = slots.acquire().await else {
                return;
            };
            let status = json!({"status": {
                "observedGeneration": d.metadata.generation,
                "replicas": want, "readyReplicas": want,
                "availableReplicas": want, "updatedReplicas": want
            }});
            let ns_api: Api<Deployment> = Api::namespaced(api.into_client(), &key.0);
            if ns_api
                .patch_status(&key.1, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .is_ok()
            {
                available.lock().await.insert(key.0.clone(), Instant::now());
                done.lock().await.insert(key, want);
            }
        }
    })
    .await;
}

/// POSTs every object of `plan`: the namespace, then its objects in order.
async fn create_plan(client: &Client, plan: &Plan) -> Result<(), kube::Error> {
    let pp = PostParams::default();
    Api::<Namespace>::all(client.clone())
        .create(&pp, &plan.namespace)
        .await?;
    let ns = plan.namespace_name();
    for object in &plan.objects {
        match object {
            Desired::ResourceQuota(o) => post(client, ns, o).await?,
            Desired::LimitRange(o) => post(client, ns, o).await?,
            Desired::NetworkPolicy(o) => post(client, ns, o).await?,
            Desired::ServiceAccount(o) => post(client, ns, o).await?,
            Desired::Role(o) => post(client, ns, o).await?,
            Desired::RoleBinding(o) | Desired::ControllerBinding(o) => post(client, ns, o).await?,
            Desired::CredentialsSecret { name, labels } => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        labels: Some(labels.clone()),
                        ..ObjectMeta::default()
                    },
                    type_: Some("Opaque".into()),
                    data: Some(apply::credentials(None)),
                    ..Secret::default()
                };
                post(client, ns, &secret).await?
            }
            Desired::PersistentVolumeClaim(o) => post(client, ns, o).await?,
            Desired::Deployment(o) => post(client, ns, o).await?,
            Desired::Service(o) => post(client, ns, o).await?,
            Desired::Ingress(o) => post(client, ns, o).await?,
        }
    }
    Ok(())
}

async fn post<K>(client: &Client, ns: &str, object: &K) -> Result<(), kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), object)
        .await?;
    Ok(())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

async fn scrape(port: u16) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    Some(body)
}

/// The value of the unlabelled sample `name` on the controller's /metrics.
async fn metric(port: u16, name: &str) -> Option<f64> {
    let body = scrape(port).await?;
    body.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok())?
    })
}

/// The sum of every sample of `name`, whatever its labels.
async fn metric_sum(port: u16, name: &str) -> f64 {
    let Some(body) = scrape(port).await else {
        return 0.0;
    };
    body.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

/// A `kB` field of /proc/<pid>/status, in KiB.
fn proc_status_kib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{field} missing from /proc/{pid}/status"))
}
