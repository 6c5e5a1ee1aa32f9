//! Dashboards and alerts, checked with the real Prometheus tools (Debian's `prometheus` package,
//! installed by tests/harness/install.sh): promtool checks the chart's rules file and the
//! PrometheusRule real Helm renders from it, and runs the rules' unit tests, which must cover
//! every alert; the dashboard parses and its ConfigMap renders; and a real Prometheus scraping the
//! real `stackplane-controller` and `stackplane-api` has every metric that the alerts, the
//! dashboard and the runbooks name. A missing promtool or prometheus fails these tests; none skips.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::{json, Value};
use stackplane_crds::{
    BackupReason, Platform, Tenant, TenantBackup, TenantBackupSpec, TenantPhase, TenantSpec,
};
use stackplane_tests::{
    fresh_database, install_crds, kube_client, required_env, serve_on_free_port, stripe_signature,
    unique, workspace_binary, workspace_root,
};

const SHARD: &str = stackplane_tests::TEST_SHARD_LABEL;
const WEBHOOK_SECRET: &str = "whsec_monitoring_test";
/// The base of every runbook_url in files/alerts.yaml (the chart replaces it).
const SHIPPED_RUNBOOK_BASE: &str =
    "https://github.com/stackplane/stackplane/blob/main/docs/runbooks/";

fn chart_dir() -> PathBuf {
    workspace_root().join("charts/stackplane")
}

fn alerts_file() -> PathBuf {
    chart_dir().join("files/alerts.yaml")
}

fn alerts_test_file() -> PathBuf {
    chart_dir().join("ci/alerts-test.yaml")
}

fn dashboard_file() -> PathBuf {
    chart_dir().join("files/dashboard.json")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A tool of Debian's `prometheus` package, from the variable the harness exports.
fn prometheus_tool(var: &str) -> PathBuf {
    let path = PathBuf::from(required_env(var));
    assert!(
        path.is_file(),
        "{var}={} does not exist: run tests/harness/install.sh (it installs Debian's prometheus package)",
        path.display()
    );
    path
}

/// Runs promtool with `args` in `dir`; panics with its output unless it succeeds.
fn promtool_ok(args: &[&str], dir: &Path) -> String {
    let promtool = prometheus_tool("STACKPLANE_PROMTOOL");
    let out = Command::new(&promtool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", promtool.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

fn yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("YAML: {e}\n{text}"))
}

/// Every rule of a rules file's `groups` as (alert name, rule).
fn alerts_of(groups: &Value) -> Vec<(String, Value)> {
    groups
        .as_array()
        .unwrap_or_else(|| panic!("groups is not a list: {groups}"))
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| Some((r["alert"].as_str()?.to_owned(), r)))
        .collect()
}

/// Runs tests/harness/helm.py with the harness's helm-python-sdk; panics unless it succeeds.
fn helm_ok(args: &[&str]) -> String {
    let python = required_env("STACKPLANE_HELM_PYTHON");
    assert!(
        Path::new(&python).is_file(),
        "STACKPLANE_HELM_PYTHON={python} does not exist: run tests/harness/install.sh"
    );
    let out = Command::new(&python)
        .arg(workspace_root().join("tests/harness/helm.py"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {python} helm.py: {e}"));
    assert!(
        out.status.success(),
        "helm.py {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The chart rendered offline with the CI values and `sets` (`KEY=JSON`).
fn render(sets: &[&str]) -> Vec<Value> {
    let chart = chart_dir();
    let values = chart.join("ci/test-values.yaml");
    let mut args = vec![
        "render".to_owned(),
        chart.display().to_string(),
        "-f".to_owned(),
        values.display().to_string(),
    ];
    for s in sets {
        args.push("--set-json".to_owned());
        args.push((*s).to_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let text = helm_ok(&args);
    let docs: Vec<Option<Value>> =
        serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("rendered YAML: {e}\n{text}"));
    docs.into_iter()
        .flatten()
        .filter(Value::is_object)
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// A temporary directory, removed when dropped.
struct TempDir(PathBuf);
impl TempDir {
    fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        TempDir(dir)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_alert_rules_file_passes_promtool_check_rules() {
    let out = promtool_ok(
        &["check", "rules", &alerts_file().display().to_string()],
        &workspace_root(),
    );
    let n = alerts_of(&yaml(&read(&alerts_file()))["groups"]).len();
    assert!(out.contains(&format!("SUCCESS: {n} rules found")), "{out}");
}

#[test]
fn the_rendered_prometheus_rule_passes_promtool_check_rules() {
    let base = "https://runbooks.example.com/sre/stackplane";
    let docs = render(&[
        "monitoring.rules.enabled=true",
        "monitoring.rules.force=true",
        &format!("monitoring.rules.runbookBaseUrl=\"{base}\""),
        "monitoring.rules.labels={\"release\":\"kps\"}",
    ]);
    let rules = of_kind(&docs, "PrometheusRule");
    assert_eq!(rules.len(), 1, "one PrometheusRule");
    let rule = rules[0];
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["labels"]["release"], "kps");
    let groups = &rule["spec"]["groups"];
    // The groups exactly as promtool reads a rules file (JSON is YAML).
    let dir = TempDir::new("prometheusrule");
    let file = dir.0.join("rendered-rules.yaml");
    std::fs::write(&file, json!({ "groups": groups }).to_string()).expect("write rules");
    let out = promtool_ok(&["check", "rules", &file.display().to_string()], &dir.0);
    let shipped = alerts_of(&yaml(&read(&alerts_file()))["groups"]);
    let rendered = alerts_of(groups);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", shipped.len())),
        "{out}"
    );
    // The same alerts as the file, with the runbook base replaced and nothing else changed.
    assert_eq!(
        rendered.iter().map(|a| &a.0).collect::<Vec<_>>(),
        shipped.iter().map(|a| &a.0).collect::<Vec<_>>()
    );
    for ((name, got), (_, want)) in rendered.iter().zip(&shipped) {
        let url = got["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_default();
        let page = want["annotations"]["runbook_url"]
            .as_str()
            .and_then(|u| u.strip_prefix(SHIPPED_RUNBOOK_BASE))
            .unwrap_or_else(|| panic!("{name}: runbook_url outside {SHIPPED_RUNBOOK_BASE}"));
        assert_eq!(url, format!("{base}/{page}"), "{name}");
        let mut got = got.clone();
        got["annotations"]["runbook_url"] = want["annotations"]["runbook_url"].clone();
        assert_eq!(&got, want, "{name} differs from files/alerts.yaml");
    }

    // Off by default, and without `force` it follows the cluster (Helm's offline capabilities
    // carry no monitoring.coreos.com/v1 unless the values force it).
    let off = render(&["monitoring.rules.enabled=false"]);
    assert!(of_kind(&off, "PrometheusRule").is_empty());
}

#[test]
fn every_alert_has_a_runbook_page_that_exists() {
    let alerts = alerts_of(&yaml(&read(&alerts_file()))["groups"]);
    assert!(alerts.len() >= 7, "{alerts:?}");
    let index = read(&workspace_root().join("docs/runbooks/README.md"));
    for (name, rule) in &alerts {
        let url = rule["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_default();
        let page = url.strip_prefix(SHIPPED_RUNBOOK_BASE).unwrap_or_else(|| {
            panic!("{name}: runbook_url {url:?} is not under {SHIPPED_RUNBOOK_BASE}")
        });
        assert!(
            workspace_root().join("docs/runbooks").join(page).is_file(),
            "{name}: docs/runbooks/{page} does not exist"
        );
        assert!(
            index.contains(&format!("({page})")),
            "{page} is not in docs/runbooks/README.md"
        );
        assert!(
            index.contains(&format!("`{name}`")),
            "{name} is not in the alert table of docs/runbooks/README.md"
        );
        for key in ["summary", "description"] {
            assert!(
                rule["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{name} has no {key}"
            );
        }
        assert!(
            rule["labels"]["severity"].is_string(),
            "{name} has no severity"
        );
    }
}

#[test]
fn the_alert_unit_tests_pass_and_cover_every_alert() {
    let test_file = alerts_test_file();
    let dir = test_file.parent().expect("ci/").to_path_buf();
    let out = promtool_ok(&["test", "rules", &test_file.display().to_string()], &dir);
    assert!(out.contains("SUCCESS"), "{out}");

    // Every alert of the rules file has a case where it fires and one where it does not.
    let tests = yaml(&read(&test_file));
    let mut firing: BTreeSet<String> = BTreeSet::new();
    let mut silent: BTreeSet<String> = BTreeSet::new();
    for t in tests["tests"].as_array().expect("tests") {
        for case in t["alert_rule_test"].as_array().into_iter().flatten() {
            let name = case["alertname"].as_str().unwrap_or_default().to_owned();
            let fires = case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty());
            if fires {
                firing.insert(name);
            } else {
                silent.insert(name);
            }
        }
    }
    let alerts: BTreeSet<String> = alerts_of(&yaml(&read(&alerts_file()))["groups"])
        .into_iter()
        .map(|a| a.0)
        .collect();
    let no_firing: Vec<_> = alerts.difference(&firing).collect();
    let no_silent: Vec<_> = alerts.difference(&silent).collect();
    assert!(
        no_firing.is_empty(),
        "alerts without a firing case in ci/alerts-test.yaml: {no_firing:?}"
    );
    assert!(
        no_silent.is_empty(),
        "alerts without a case that does not fire in ci/alerts-test.yaml: {no_silent:?}"
    );
    let unknown: Vec<_> = firing
        .union(&silent)
        .filter(|a| !alerts.contains(*a))
        .collect();
    assert!(
        unknown.is_empty(),
        "cases of alerts that do not exist: {unknown:?}"
    );
}

#[test]
fn the_dashboard_parses_and_renders_in_its_configmap() {
    let text = read(&dashboard_file());
    let dashboard: Value = serde_json::from_str(&text).expect("files/dashboard.json is JSON");
    assert_eq!(dashboard["uid"], "stackplane-overview");
    let panels = dashboard["panels"].as_array().expect("panels");
    let exprs: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    assert!(exprs.len() >= 15, "{exprs:?}");
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert!(
            p["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "panel {} has no query",
            p["title"]
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
    }

    let docs = render(&[
        "monitoring.dashboard.enabled=true",
        "monitoring.dashboard.label=\"my_dashboards\"",
        "monitoring.dashboard.labelValue=\"yes\"",
        "monitoring.dashboard.namespace=\"grafana\"",
    ]);
    let maps: Vec<&Value> = of_kind(&docs, "ConfigMap")
        .into_iter()
        .filter(|c| c["metadata"]["name"] == "stackplane-dashboard")
        .collect();
    assert_eq!(maps.len(), 1, "one dashboard ConfigMap");
    let map = maps[0];
    assert_eq!(map["metadata"]["labels"]["my_dashboards"], "yes");
    assert_eq!(map["metadata"]["namespace"], "grafana");
    let data = map["data"]["stackplane.json"].as_str().expect("data");
    let rendered: Value = serde_json::from_str(data).expect("the ConfigMap holds JSON");
    assert_eq!(
        rendered, dashboard,
        "the ConfigMap holds files/dashboard.json"
    );

    // The default label is the Grafana sidecar's; off by default.
    let docs = render(&["monitoring.dashboard.enabled=true"]);
    let map = of_kind(&docs, "ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["name"] == "stackplane-dashboard")
        .expect("dashboard ConfigMap");
    assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
    let off = render(&["monitoring.dashboard.enabled=false"]);
    assert!(!of_kind(&off, "ConfigMap")
        .iter()
        .any(|c| c["metadata"]["name"] == "stackplane-dashboard"));
}

/// Every `stackplane_…` metric name in the alerts, the dashboard and the runbooks, with the file
/// that names it. The crates' names (which appear in RUST_LOG examples) are not metrics.
fn named_metrics() -> BTreeMap<String, String> {
    let mut files = vec![alerts_file(), dashboard_file()];
    let runbooks = workspace_root().join("docs/runbooks");
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&runbooks)
        .expect("docs/runbooks")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    pages.sort();
    files.extend(pages);
    let crates = [
        "stackplane_api",
        "stackplane_controller",
        "stackplane_crds",
        "stackplane_tests",
        "stackplane_telemetry",
    ];
    let mut names = BTreeMap::new();
    for file in files {
        let text = read(&file);
        let bytes = text.as_bytes();
        let mut i = 0;
        while let Some(at) = text[i..].find("stackplane_") {
            let start = i + at;
            let before_ok = start == 0 || {
                let b = bytes[start - 1];
                !(b.is_ascii_alphanumeric() || b == b'_')
            };
            let mut end = start;
            while end < bytes.len()
                && (bytes[end].is_ascii_lowercase()
                    || bytes[end].is_ascii_digit()
                    || bytes[end] == b'_')
            {
                end += 1;
            }
            let name = text[start..end].trim_end_matches('_');
            if before_ok && name.len() > "stackplane_".len() && !crates.contains(&name) {
                names
                    .entry(name.to_owned())
                    .or_insert_with(|| file.display().to_string());
            }
            i = end.max(start + 1);
        }
    }
    names
}

/// A child process, killed when dropped, with its log file.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, mut cmd: Command, dir: &Path) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        cmd.stdout(Stdio::from(out.try_clone().expect("clone log")))
            .stderr(Stdio::from(out));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc { name, child, log }
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(40);
        format!(
            "--- {} ({}):\n{}",
            self.name,
            self.log.display(),
            lines[from..].join("\n")
        )
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}):\n{}", self.name, self.tail());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("a free port: {e}"))
}

/// Polls `f` every 500 ms until it answers `Some`, checking that every process still runs;
/// after `secs`, fails with `what` and the processes' logs.
async fn until<T, F, Fut>(what: &str, secs: u64, procs: &mut [&mut Proc], mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        for p in procs.iter_mut() {
            p.assert_running();
        }
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            let logs: Vec<String> = procs.iter().map(|p| p.tail()).collect();
            panic!(
                "timed out after {secs}s waiting for {what}\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn post_webhook(http: &reqwest::Client, base: &str, payload: &str, signature: &str) -> u16 {
    http.post(format!("{base}/webhooks/stripe"))
        .header("content-type", "application/json")
        .header("Stripe-Signature", signature)
        .body(payload.to_owned())
        .send()
        .await
        .expect("POST /webhooks/stripe")
        .status()
        .as_u16()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// The real binaries, with real activity behind every metric family they export, scraped by a
/// real Prometheus; every metric name the alerts, the dashboard and the runbooks use is in its
/// TSDB, and Prometheus loads the alert rules. The api's bandwidth of a tenant
/// (`GET /api/v1/tenants/{name}/metrics`) is read from that Prometheus, which scraped it from a
/// test exporter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scraping_the_real_binaries_has_every_metric_the_alerts_dashboard_and_runbooks_name(
) {
    let names = named_metrics();
    assert!(
        names.len() >= 20,
        "suspiciously few metric names found: {names:?}"
    );
    let prometheus = prometheus_tool("STACKPLANE_PROMETHEUS");
    let client = kube_client().await;
    install_crds(&client).await;
    let dir = TempDir::new("monitoring");

    // Two Platforms of this test's own: one that provisions (no cloud parts), one whose hosted
    // zone does not exist in moto, so its tenant's DNS step fails (reconcile errors, by category).
    let shard = unique("shard");
    let mut ok_platform: Platform = stackplane_tests::example_platform("leadgen-pro.yaml");
    let ok_name = unique("plat");
    ok_platform.metadata.name = Some(ok_name.clone());
    ok_platform.spec.domain = format!("{ok_name}.stackplane.test");
    ok_platform.spec.hosted_zone_id = None;
    // In the shard, so that this test's controller rolls it out (rollout states, by platform).
    ok_platform.metadata.labels = Some([(SHARD.to_owned(), shard.clone())].into());
    for tier in &mut ok_platform.spec.tiers {
        tier.dedicated_instance = None;
        tier.stripe_price_ids.clear();
    }
    let mut bad_platform = ok_platform.clone();
    let bad_name = unique("plat");
    bad_platform.metadata.name = Some(bad_name.clone());
    bad_platform.spec.domain = format!("{bad_name}.stackplane.test");
    bad_platform.spec.hosted_zone_id = Some("/hostedzone/ZSTACKPLANENOSUCHZONE".into());
    let platforms = Api::<Platform>::all(client.clone());
    for p in [&ok_platform, &bad_platform] {
        platforms
            .create(&PostParams::default(), p)
            .await
            .expect("create platform");
    }

    // The controller, as it runs in production, for this test's shard.
    let controller_port = free_port();
    let mut cmd = Command::new(workspace_binary(
        "stackplane-controller",
        "stackplane-controller",
    ));
    cmd.args(["--metrics-listen", &format!("127.0.0.1:{controller_port}")])
        .args(["--tenant-selector", &format!("{SHARD}={shard}")])
        .args([
            "--lease-name",
            &shard,
            "--lease-duration",
            "4",
            "--lease-grace",
            "1",
        ])
        .args([
            "--identity",
            &format!("{shard}-0"),
            "--requeue-seconds",
            "2",
        ])
        .args(["--ingress-address", "lb-1.elb.example.net"])
        // Report only: this test's collector must not delete what other tests made.
        .args(["--cloud-gc", "report", "--cloud-gc-interval", "2"])
        .args([
            "--final-backup-timeout",
            "0",
            "--on-backup-failure",
            "delete",
        ])
        .env("RUST_LOG", "stackplane_controller=info,kube=warn");
    let mut controller = Proc::spawn("stackplane-controller", cmd, &dir.0);

    // A stand-in for Stripe's API: every subscription list is empty (the shared localstripe
    // holds other tests' subscriptions, which this test's sweep must not apply).
    let stripe = serve_on_free_port(axum::Router::new().fallback(|| async {
        axum::Json(
            json!({"object": "list", "url": "/v1/subscriptions", "has_more": false, "data": []}),
        )
    }))
    .await;
    // A test exporter of one tenant's network bytes, as a CNI or cAdvisor would export them:
    // the api's bandwidth of that tenant is read from the real Prometheus that scrapes it.
    let ok_tenant = unique("tn");
    let exporter = {
        let series = format!(
            "# TYPE test_tenant_network_bytes gauge\ntest_tenant_network_bytes{{tenant=\"{ok_tenant}\"}} 123456\n"
        );
        serve_on_free_port(axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let series = series.clone();
                async move { series }
            }),
        ))
        .await
    };
    let exporter_target = exporter
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let prom_port = free_port();
    let prom_url = format!("http://127.0.0.1:{prom_port}");
    let (_, db_url) = fresh_database().await;
    let (api_port, internal_port) = (free_port(), free_port());
    let mut cmd = Command::new(workspace_binary("stackplane-api", "stackplane-api"));
    cmd.args(["--listen", &format!("127.0.0.1:{api_port}")])
        .args(["--internal-listen", &format!("127.0.0.1:{internal_port}")])
        .env("DATABASE_URL", &db_url)
        .env("STRIPE_WEBHOOK_SECRETS", WEBHOOK_SECRET)
        .env("STRIPE_SECRET_KEY", "sk_test_monitoring")
        .env("STRIPE_API_BASE", &stripe)
        .env("STACKPLANE_ADMIN_TOKEN", "monitoring-admin-token")
        .env("STACKPLANE_PROMETHEUS_URL", &prom_url)
        .env(
            "STACKPLANE_BANDWIDTH_QUERY",
            "sum(max_over_time(test_tenant_network_bytes{tenant=\"{tenant}\"}[{window}]))",
        )
        .env("STACKPLANE_BILLING_SYNC_INTERVAL", "2")
        // Few bad deliveries before the webhook's invalid-signature bucket answers 429.
        .env("STACKPLANE_WEBHOOK_INVALID_BURST", "2")
        .env("STACKPLANE_WEBHOOK_INVALID_PER_MINUTE", "1")
        .env("RUST_LOG", "stackplane_api=info,kube=warn");
    let mut api = Proc::spawn("stackplane-api", cmd, &dir.0);

    // Prometheus, on a free loopback port, its TSDB in the temp dir, scraping both every second
    // and loading the chart's alert rules.
    let config = dir.0.join("prometheus.yml");
    std::fs::write(
        &config,
        json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [alerts_file().display().to_string()],
            "scrape_configs": [
                {"job_name": "stackplane-controller", "static_configs": [{"targets": [format!("127.0.0.1:{controller_port}")]}]},
                {"job_name": "stackplane-api", "static_configs": [{"targets": [format!("127.0.0.1:{internal_port}")]}]},
                {"job_name": "tenant-network", "static_configs": [{"targets": [exporter_target]}]}
            ]
        })
        .to_string(),
    )
    .expect("write prometheus.yml");
    let mut cmd = Command::new(&prometheus);
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.0.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .current_dir(&dir.0);
    let mut prom = Proc::spawn("prometheus", cmd, &dir.0);
    let http = reqwest::Client::new();

    let api_base = format!("http://127.0.0.1:{api_port}");
    let internal = format!("http://127.0.0.1:{internal_port}");
    until("stackplane-api /readyz", 90, &mut [&mut api], || {
        let http = http.clone();
        let url = format!("{internal}/readyz");
        async move {
            http.get(url)
                .send()
                .await
                .ok()?
                .status()
                .is_success()
                .then_some(())
        }
    })
    .await;

    // Activity behind every labelled family.
    // Tenants: one that becomes Ready (creation-to-ready, phases, rollout states) and one whose
    // DNS step fails (reconcile errors).
    let tenants = Api::<Tenant>::all(client.clone());
    let labelled = |name: &str, platform: &str| {
        let mut t = Tenant::new(name, TenantSpec::new(platform, "starter"));
        t.metadata.labels = Some([(SHARD.to_owned(), shard.clone())].into());
        t
    };
    let bad_tenant = unique("tn");
    tenants
        .create(&PostParams::default(), &labelled(&ok_tenant, &ok_name))
        .await
        .expect("create tenant");
    tenants
        .create(&PostParams::default(), &labelled(&bad_tenant, &bad_name))
        .await
        .expect("create tenant");
    // A backup of a tenant that does not exist ends Failed (backups finished, by phase).
    let backups = Api::<TenantBackup>::all(client.clone());
    let backup_name = unique("tb");
    let mut backup = TenantBackup::new(
        &backup_name,
        TenantBackupSpec {
            tenant: unique("tn-gone"),
            reason: BackupReason::Manual,
            restore: None,
            instance: None,
        },
    );
    backup.metadata.labels = Some([(SHARD.to_owned(), shard.clone())].into());
    backups
        .create(&PostParams::default(), &backup)
        .await
        .expect("create backup");

    // Stripe deliveries: one signed (stored, then processed by the worker, which reads the
    // customer's subscriptions from the stand-in), then bad signatures until one is rate limited.
    let payload = json!({"id": unique("evt_mon"), "object": "event", "type": "customer.subscription.created",
        "created": now(), "livemode": false, "api_version": "2025-03-31.basil",
        "data": {"object": {"id": unique("sub_mon"), "object": "subscription", "customer": unique("cus_mon"),
            "status": "active", "metadata": {},
            "items": {"object": "list", "data": [{"id": "si_1", "object": "subscription_item",
                "current_period_end": now() + 2_592_000,
                "price": {"id": "price_monitoring_unknown", "object": "price"}}]}}}})
    .to_string();
    let status = post_webhook(
        &http,
        &api_base,
        &payload,
        &stripe_signature(&payload, WEBHOOK_SECRET, now()),
    )
    .await;
    assert!(
        (200..300).contains(&status),
        "signed delivery answered {status}"
    );
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            post_webhook(
                &http,
                &api_base,
                &payload,
                &stripe_signature(&payload, "whsec_not_ours", now()),
            )
            .await,
        );
    }
    assert!(
        statuses.contains(&400),
        "bad signatures answered {statuses:?}"
    );
    assert!(
        statuses.contains(&429),
        "no bad delivery was rate limited: {statuses:?}"
    );

    // The ok tenant's workloads become available as a node would report them; it turns Ready.
    let ns = until("the tenant's namespace", 90, &mut [&mut controller], || {
        let tenants = tenants.clone();
        let name = ok_tenant.clone();
        async move { tenants.get(&name).await.ok()?.status?.namespace }
    })
    .await;
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    let components = ok_platform.spec.components.len();
    let list = until(
        "the tenant's Deployments",
        60,
        &mut [&mut controller],
        || {
            let deployments = deployments.clone();
            async move {
                let l = deployments.list(&ListParams::default()).await.ok()?.items;
                (l.len() == components).then_some(l)
            }
        },
    )
    .await;
    for d in &list {
        let status = json!({"status": {"replicas": 9, "readyReplicas": 9, "availableReplicas": 9, "updatedReplicas": 9}});
        deployments
            .patch_status(
                &d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&status),
            )
            .await
            .expect("patch deployment status");
    }
    until("the tenant Ready", 90, &mut [&mut controller], || {
        let tenants = tenants.clone();
        let name = ok_tenant.clone();
        async move {
            let t = tenants.get(&name).await.ok()?;
            (t.status?.phase == Some(TenantPhase::Ready)).then_some(())
        }
    })
    .await;

    // The tenant's bandwidth, as the api serves it, is what the real Prometheus scraped from the
    // exporter (not a stand-in answering the query).
    let bandwidth = until(
        "the tenant's bandwidth from Prometheus",
        90,
        &mut [&mut api, &mut prom],
        || {
            let http = http.clone();
            let url = format!("{api_base}/api/v1/tenants/{ok_tenant}/metrics?window=1h");
            async move {
                let body: Value = http
                    .get(url)
                    .bearer_auth("monitoring-admin-token")
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                (body["bandwidth"]["available"] == json!(true)).then(|| body["bandwidth"].clone())
            }
        },
    )
    .await;
    assert_eq!(bandwidth["bytes"], json!(123456.0), "{bandwidth}");

    // Every name is in Prometheus' TSDB (a histogram named by its base name: its _bucket series).
    let missing = |present: &BTreeSet<String>| -> Vec<String> {
        names
            .keys()
            .filter(|n| !present.contains(*n) && !present.contains(&format!("{n}_bucket")))
            .cloned()
            .collect()
    };
    let mut last_missing = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let present = loop {
        for p in [&mut controller, &mut api, &mut prom] {
            p.assert_running();
        }
        let present: Option<BTreeSet<String>> = async {
            let v: Value = http
                .get(format!("{prom_url}/api/v1/label/__name__/values"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            Some(
                v["data"]
                    .as_array()?
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect(),
            )
        }
        .await;
        if let Some(present) = present {
            last_missing = missing(&present);
            if last_missing.is_empty() {
                break present;
            }
        }
        if tokio::time::Instant::now() > deadline {
            let targets = match http.get(format!("{prom_url}/api/v1/targets")).send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(e) => e.to_string(),
            };
            let named: Vec<String> = last_missing
                .iter()
                .map(|n| format!("{n} (named in {})", names[n]))
                .collect();
            panic!(
                "after 120 s Prometheus' TSDB still lacks {named:#?}\ntargets: {targets}\n{}\n{}\n{}",
                controller.tail(),
                api.tail(),
                prom.tail()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    eprintln!(
        "{} metric names named by the alerts, dashboard and runbooks, all in the TSDB ({} names there)",
        names.len(),
        present.len()
    );

    // Every target (controller, api, the test exporter) is up, and Prometheus loaded every alert
    // rule and evaluates it cleanly.
    let up: Value = http
        .get(format!("{prom_url}/api/v1/query"))
        .query(&[("query", "up")])
        .send()
        .await
        .expect("query up")
        .json()
        .await
        .expect("up JSON");
    let ups: Vec<(String, String)> = up["data"]["result"]
        .as_array()
        .expect("result")
        .iter()
        .map(|r| {
            (
                r["metric"]["job"].as_str().unwrap_or_default().to_owned(),
                r["value"][1].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(ups.len(), 3, "{ups:?}");
    assert!(ups.iter().all(|(_, v)| v == "1"), "{ups:?}");
    let alerts: BTreeSet<String> = alerts_of(&yaml(&read(&alerts_file()))["groups"])
        .into_iter()
        .map(|a| a.0)
        .collect();
    let rules: Value = until("the alert rules evaluated", 30, &mut [&mut prom], || {
        let http = http.clone();
        let url = format!("{prom_url}/api/v1/rules");
        let alerts = alerts.clone();
        async move {
            let v: Value = http.get(url).send().await.ok()?.json().await.ok()?;
            let evaluated: BTreeSet<String> = v["data"]["groups"]
                .as_array()?
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .filter(|r| {
                    r["lastEvaluation"]
                        .as_str()
                        .is_some_and(|t| !t.starts_with("0001"))
                })
                .filter_map(|r| r["name"].as_str().map(str::to_owned))
                .collect();
            (evaluated == alerts).then_some(v)
        }
    })
    .await;
    for r in rules["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
    {
        assert_eq!(r["health"], "ok", "rule {} : {}", r["name"], r["lastError"]);
    }

    // Clean up what the cluster keeps (the processes and the TSDB go with their guards).
    for t in [&ok_tenant, &bad_tenant] {
        let _ = tenants.delete(t, &Default::default()).await;
    }
    let _ = backups.delete(&backup_name, &Default::default()).await;
    drop(prom);
    drop(api);
    drop(controller);
    for p in [&ok_name, &bad_name] {
        let _ = platforms.delete(p, &Default::default()).await;
    }
}
