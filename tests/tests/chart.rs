//! The Helm chart, checked with real Helm (helm-python-sdk, through tests/harness/helm.py) and
//! the real kube-apiserver: it lints, picks the API versions the cluster serves, every rendered
//! object passes a server-side dry run, its CRDs are the crate's, and its RBAC is enough for
//! the real binaries to do their work while impersonating the chart's ServiceAccounts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope};
use kube::{Client, ResourceExt};
use serde_json::json;
use stackplane_crds::{Platform, Tenant, TenantPhase, TenantSpec};
use stackplane_tests::{
    fresh_database, impersonating_kubeconfig, install_crds, kube_client, required_env,
    stripe_signature, unique, workspace_binary, workspace_root,
};

const SHARD: &str = "stackplane.io/test-shard";
const WEBHOOK_SECRET: &str = "whsec_chart_rbac_test";
const ADMIN_TOKEN: &str = "chart-rbac-admin-token";

fn chart_dir() -> PathBuf {
    workspace_root().join("charts/stackplane")
}

fn ci_values() -> PathBuf {
    chart_dir().join("ci/test-values.yaml")
}

/// Runs tests/harness/helm.py with the harness's helm-python-sdk; (success, stdout, stderr).
fn helm(args: &[&str]) -> (bool, String, String) {
    let python = required_env("STACKPLANE_HELM_PYTHON");
    assert!(
        Path::new(&python).is_file(),
        "STACKPLANE_HELM_PYTHON={python} does not exist: run tests/harness/install.sh (it installs helm-python-sdk)"
    );
    let out = Command::new(&python)
        .arg(workspace_root().join("tests/harness/helm.py"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {python} helm.py: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr)
        .lines()
        // Helm reports every symlinked CRD file at INFO level; that is expected.
        .filter(|l| !l.contains("found symbolic link in path"))
        .collect::<Vec<_>>()
        .join("\n");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

fn helm_ok(args: &[&str]) -> String {
    let (ok, out, err) = helm(args);
    assert!(ok, "helm.py {args:?} failed:\n{out}\n{err}");
    out
}

fn parse_docs(yaml: &str) -> Vec<serde_json::Value> {
    let docs: Vec<Option<serde_json::Value>> =
        serde_saphyr::from_multiple(yaml).unwrap_or_else(|e| panic!("rendered YAML: {e}\n{yaml}"));
    docs.into_iter()
        .flatten()
        .filter(|d| d.is_object())
        .collect()
}

fn kind_of(doc: &serde_json::Value) -> (String, String) {
    (
        doc["apiVersion"].as_str().unwrap_or_default().to_owned(),
        doc["kind"].as_str().unwrap_or_default().to_owned(),
    )
}

/// The chart rendered against the test cluster for `release` in `namespace` (CI values, no
/// ServiceMonitor or PrometheusRule since the test cluster serves no monitoring.coreos.com),
/// hooks included.
fn render_for_cluster(release: &str, namespace: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let chart = chart_dir();
    let values = ci_values();
    let mut args = vec![
        "render",
        chart.to_str().unwrap_or_default(),
        "-f",
        values.to_str().unwrap_or_default(),
        "--set-json",
        "serviceMonitor.force=false",
        "--set-json",
        "monitoring.rules.force=false",
        "--name",
        release,
        "--namespace",
        namespace,
        "--cluster",
        "--hooks",
    ];
    args.extend_from_slice(extra);
    parse_docs(&helm_ok(&args))
}

async fn api_for(
    client: &Client,
    discovery: &Discovery,
    doc: &serde_json::Value,
    namespace: &str,
) -> Api<DynamicObject> {
    let (api_version, kind) = kind_of(doc);
    let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
    let gvk = kube::api::GroupVersionKind::gvk(group, version, &kind);
    let (ar, caps): (ApiResource, ApiCapabilities) = discovery
        .resolve_gvk(&gvk)
        .unwrap_or_else(|| panic!("the test cluster does not serve {api_version} {kind}"));
    match caps.scope {
        Scope::Cluster => Api::all_with(client.clone(), &ar),
        Scope::Namespaced => Api::namespaced_with(client.clone(), namespace, &ar),
    }
}

async fn create_namespace(client: &Client, name: &str) {
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}})).expect("namespace"),
        )
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
}

#[test]
fn chart_crds_are_the_crate_crds_byte_for_byte() {
    let out = helm_ok(&["crds", chart_dir().to_str().unwrap_or_default()]);
    let chart: Vec<serde_json::Value> = serde_json::from_str(&out).expect("crds JSON");
    let mut chart_files: Vec<(String, String)> = chart
        .iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap_or_default();
            let file = name.rsplit('/').next().unwrap_or(name).to_owned();
            (file, c["data"].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    chart_files.sort();
    let mut crate_files: Vec<(String, String)> = std::fs::read_dir(workspace_root().join("crds"))
        .expect("read crds/")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            (
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                std::fs::read_to_string(&p).expect("read CRD"),
            )
        })
        .collect();
    crate_files.sort();
    assert_eq!(
        chart_files.iter().map(|f| &f.0).collect::<Vec<_>>(),
        crate_files.iter().map(|f| &f.0).collect::<Vec<_>>(),
        "charts/stackplane/crds/ must hold one symlink per crds/*.yaml (add the missing link)"
    );
    for ((name, chart), (_, source)) in chart_files.iter().zip(&crate_files) {
        assert_eq!(chart, source, "chart CRD {name} differs from crds/{name}");
    }
    assert_eq!(chart_files.len(), stackplane_crds::all_crds().len());
}

#[test]
fn chart_lints_and_refuses_to_render_without_the_secret_names() {
    let chart = chart_dir();
    let chart = chart.to_str().unwrap_or_default();
    let values = ci_values();
    let out = helm_ok(&["lint", chart, "-f", values.to_str().unwrap_or_default()]);
    assert!(out.contains("0 warning(s)/error(s)"), "{out}");

    // The defaults name no Secret: the chart has no inline secrets and says what is missing.
    let (ok, out, err) = helm(&["lint", chart]);
    assert!(!ok, "lint with default values must fail:\n{out}");
    assert!(
        out.contains("/api/secrets/database/name")
            && out.contains("/api/secrets/stripe/name")
            && out.contains("/api/secrets/adminToken/name"),
        "the failure names every missing Secret:\n{out}\n{err}"
    );
    let (ok, _, err) = helm(&["render", chart]);
    assert!(!ok, "render with default values must fail");
    assert!(err.contains("api/secrets"), "{err}");
}

#[test]
fn chart_uses_the_api_versions_the_cluster_serves() {
    let chart = chart_dir();
    let values = ci_values();
    let offline = parse_docs(&helm_ok(&[
        "render",
        chart.to_str().unwrap_or_default(),
        "-f",
        values.to_str().unwrap_or_default(),
    ]));
    let kinds: Vec<(String, String)> = offline.iter().map(kind_of).collect();
    // Helm's offline capabilities are a current cluster's.
    assert!(kinds.contains(&("policy/v1".into(), "PodDisruptionBudget".into())));
    assert!(kinds.contains(&("autoscaling/v2".into(), "HorizontalPodAutoscaler".into())));
    assert!(kinds.contains(&("monitoring.coreos.com/v1".into(), "ServiceMonitor".into())));

    // The test cluster is Kubernetes 1.20: no policy/v1, no autoscaling/v2, no ServiceMonitor.
    let live = render_for_cluster(&unique("caps"), "stackplane", &[]);
    let kinds: Vec<(String, String)> = live.iter().map(kind_of).collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == &("policy/v1beta1".into(), "PodDisruptionBudget".into()))
            .count(),
        2,
        "{kinds:?}"
    );
    assert!(kinds.contains(&(
        "autoscaling/v2beta2".into(),
        "HorizontalPodAutoscaler".into()
    )));
    assert!(!kinds.iter().any(|(_, k)| k == "ServiceMonitor"));
    assert!(!kinds.iter().any(|(_, k)| k == "PrometheusRule"));
    // Without `force`, the ServiceMonitor and the PrometheusRule follow the cluster.
    let chart_s = chart.to_str().unwrap_or_default();
    let values_s = values.to_str().unwrap_or_default();
    let (ok, out, err) = helm(&[
        "render",
        chart_s,
        "-f",
        values_s,
        "--set-json",
        "serviceMonitor.force=false",
        "--set-json",
        "monitoring.rules.force=false",
        "--cluster",
    ]);
    assert!(ok, "{err}");
    assert!(!out.contains("kind: ServiceMonitor"));
    assert!(!out.contains("kind: PrometheusRule"));
}

/// The internal port (/healthz, /readyz, /metrics) is for probes and the ServiceMonitor only:
/// the Ingress routes to the public Service, which exposes the public port alone.
#[test]
fn the_controller_gets_network_flags_it_accepts_from_the_values() {
    let chart = chart_dir();
    let values = ci_values();
    let docs = parse_docs(&helm_ok(&[
        "render",
        chart.to_str().unwrap_or_default(),
        "-f",
        values.to_str().unwrap_or_default(),
    ]));
    let controller = docs
        .iter()
        .find(|d| {
            d["kind"] == "Deployment"
                && d["metadata"]["labels"]["app.kubernetes.io/component"] == "controller"
        })
        .expect("the controller Deployment");
    let env = |name: &str| {
        controller["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .expect("env")
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str().map(str::to_owned))
    };
    let flags = stackplane_core::tenant::plan::NetworkFlags {
        ingress_namespace: env("STACKPLANE_INGRESS_NAMESPACE").expect("ingress namespace"),
        ingress_namespace_selector: env("STACKPLANE_INGRESS_NAMESPACE_SELECTOR"),
        cluster_cidrs: env("STACKPLANE_CLUSTER_CIDRS").into_iter().collect(),
        backup_egress_cidrs: env("STACKPLANE_BACKUP_EGRESS_CIDRS").into_iter().collect(),
    };
    // What the controller does with them at start-up (it refuses what does not parse).
    let options = stackplane_core::tenant::plan::PlanOptions::from_flags(&flags)
        .unwrap_or_else(|e| panic!("the chart's flags are refused: {e}"));
    let cluster: Vec<String> = options
        .cluster_cidrs
        .iter()
        .map(ToString::to_string)
        .collect();
    let backup: Vec<String> = options
        .backup_egress_cidrs
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(cluster, ["10.244.0.0/16", "10.96.0.0/12"]);
    assert_eq!(backup, ["192.0.2.0/24"]);
    assert_eq!(
        flags.ingress_namespace_selector, None,
        "unset in the values"
    );
}

#[test]
fn internal_endpoints_are_off_the_public_service_and_ingress() {
    let chart = chart_dir();
    let values = ci_values();
    let docs = parse_docs(&helm_ok(&[
        "render",
        chart.to_str().unwrap_or_default(),
        "-f",
        values.to_str().unwrap_or_default(),
    ]));
    let find = |kind: &str, pred: &dyn Fn(&serde_json::Value) -> bool| -> Vec<serde_json::Value> {
        docs.iter()
            .filter(|d| d["kind"] == kind && pred(d))
            .cloned()
            .collect()
    };
    let api_component =
        |d: &serde_json::Value| d["metadata"]["labels"]["app.kubernetes.io/component"] == "api";
    let deployment = find("Deployment", &api_component);
    assert_eq!(deployment.len(), 1);
    let container = &deployment[0]["spec"]["template"]["spec"]["containers"][0];
    let ports: Vec<(String, i64)> = container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["containerPort"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [("http".to_owned(), 8080), ("internal".to_owned(), 9091)]
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "internal");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "internal");
    let env: Vec<(String, String)> = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["value"].as_str()?.to_owned(),
            ))
        })
        .collect();
    assert!(
        env.contains(&("STACKPLANE_INTERNAL_LISTEN".into(), "0.0.0.0:9091".into())),
        "{env:?}"
    );

    let services = find("Service", &api_component);
    let service_ports = |s: &serde_json::Value| -> Vec<String> {
        s["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p["targetPort"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let public: Vec<_> = services
        .iter()
        .filter(|s| service_ports(s) == ["http"])
        .collect();
    let internal: Vec<_> = services
        .iter()
        .filter(|s| service_ports(s) == ["internal"])
        .collect();
    assert_eq!((public.len(), internal.len()), (1, 1), "{services:?}");
    let ingress = find("Ingress", &api_component);
    assert_eq!(ingress.len(), 1);
    let backends: Vec<&serde_json::Value> = ingress[0]["spec"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["http"]["paths"].as_array().into_iter().flatten())
        .map(|p| &p["backend"]["service"])
        .collect();
    assert!(!backends.is_empty());
    for backend in backends {
        assert_eq!(
            backend["name"], public[0]["metadata"]["name"],
            "the Ingress routes to the public Service"
        );
        assert_eq!(backend["port"]["name"], "http");
    }
    let monitor = find("ServiceMonitor", &|_| true);
    assert_eq!(monitor.len(), 1);
    let endpoint_ports: Vec<&str> = monitor[0]["spec"]["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["port"].as_str())
        .collect();
    assert_eq!(endpoint_ports, ["internal", "metrics"]);
}

#[tokio::test]
async fn every_rendered_object_passes_a_server_side_dry_run() {
    let client = kube_client().await;
    install_crds(&client).await;
    let ns = unique("chart-dry");
    create_namespace(&client, &ns).await;
    let release = unique("dry");
    let docs = render_for_cluster(&release, &ns, &[]);
    let kinds: std::collections::BTreeSet<String> =
        docs.iter().map(|d| kind_of(d).1).collect::<_>();
    for expected in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "Ingress",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Job",
        "ConfigMap",
    ] {
        assert!(
            kinds.contains(expected),
            "no {expected} rendered: {kinds:?}"
        );
    }
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    let dry = PostParams {
        dry_run: true,
        field_manager: Some("stackplane-chart-test".into()),
    };
    for doc in &docs {
        let obj: DynamicObject = serde_json::from_value(doc.clone()).expect("object");
        let api = api_for(&client, &discovery, doc, &ns).await;
        let name = obj.name_any();
        api.create(&dry, &obj)
            .await
            .unwrap_or_else(|e| panic!("dry run of {:?} {name}: {e}", kind_of(doc)));
    }
    // Nothing was created.
    assert!(Api::<Deployment>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .is_empty());
    let _ = Api::<Namespace>::all(client)
        .delete(&ns, &Default::default())
        .await;
}

/// A running binary, stopped when dropped.
struct Proc(Child, PathBuf);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

/// Creates, for real, the ServiceAccounts and RBAC objects of the chart for `release` in
/// `namespace`, and returns the ServiceAccount names of (controller, api).
async fn install_chart_rbac(client: &Client, release: &str, namespace: &str) -> (String, String) {
    create_namespace(client, namespace).await;
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    let docs = render_for_cluster(release, namespace, &[]);
    let mut accounts = (String::new(), String::new());
    for doc in &docs {
        let (_, kind) = kind_of(doc);
        if !matches!(
            kind.as_str(),
            "ServiceAccount" | "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding"
        ) {
            continue;
        }
        let obj: DynamicObject = serde_json::from_value(doc.clone()).expect("object");
        if kind == "ServiceAccount" {
            let component = obj.labels().get("app.kubernetes.io/component").cloned();
            match component.as_deref() {
                Some("controller") => accounts.0 = obj.name_any(),
                Some("api") => accounts.1 = obj.name_any(),
                other => panic!("ServiceAccount of unknown component {other:?}"),
            }
        }
        api_for(client, &discovery, doc, namespace)
            .await
            .create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("create {kind} {}: {e}", obj.name_any()));
    }
    assert!(!accounts.0.is_empty() && !accounts.1.is_empty());
    accounts
}

async fn eventually<T, F, Fut>(what: &str, secs: u64, logs: &[&Proc], mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            let logs: Vec<String> = logs.iter().map(|p| p.log()).collect();
            panic!(
                "timed out after {secs}s waiting for {what}; logs:\n{}",
                logs.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A client with exactly the permissions of a ServiceAccount, through impersonation.
async fn client_as(kubeconfig: &Path) -> Client {
    let text = std::fs::read_to_string(kubeconfig).expect("kubeconfig");
    let config: kube::config::Kubeconfig = serde_json::from_str(&text).expect("kubeconfig JSON");
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

#[tokio::test]
async fn the_controller_reconciles_a_tenant_with_only_the_charts_permissions() {
    let admin = kube_client().await;
    install_crds(&admin).await;
    let release = unique("rbac");
    let ns = unique("chart-rbac");
    let (controller_sa, _) = install_chart_rbac(&admin, &release, &ns).await;
    let dir = std::env::temp_dir().join(unique("chart-rbac"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kubeconfig = dir.join("controller.kubeconfig");
    impersonating_kubeconfig(&ns, &controller_sa, &kubeconfig);

    // The impersonation is real: the ServiceAccount may not list CRDs (it may only get ours).
    let restricted = client_as(&kubeconfig).await;
    let err = Api::<CustomResourceDefinition>::all(restricted.clone())
        .list(&ListParams::default())
        .await
        .expect_err("the controller's ServiceAccount must not list CRDs");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "{err}"
    );

    // A Platform of its own, without cloud parts: this test is about Kubernetes permissions.
    let mut platform: Platform = stackplane_tests::example_platform("leadgen-pro.yaml");
    let pname = unique("plat");
    platform.metadata.name = Some(pname.clone());
    platform.spec.hosted_zone_id = None;
    for tier in &mut platform.spec.tiers {
        tier.dedicated_instance = None;
    }
    Api::<Platform>::all(admin.clone())
        .create(&PostParams::default(), &platform)
        .await
        .expect("create platform");

    let shard = unique("shard");
    let bin = workspace_binary("stackplane-controller", "stackplane-controller");
    let log = dir.join("controller.log");
    let out = std::fs::File::create(&log).expect("log");
    let child = Command::new(bin)
        .args([
            "--metrics-listen",
            "127.0.0.1:0",
            "--tenant-selector",
            &format!("{SHARD}={shard}"),
            "--lease-name",
            &shard,
            "--lease-duration",
            "4",
            "--lease-grace",
            "1",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", &ns)
        .env("POD_NAME", "controller-0")
        .env("RUST_LOG", "stackplane_controller=debug,kube=warn")
        .stdout(Stdio::from(out.try_clone().expect("clone")))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("spawn stackplane-controller");
    let controller = Proc(child, log);

    let name = unique("tn");
    let mut tenant = Tenant::new(&name, TenantSpec::new(&pname, "starter"));
    tenant.metadata.labels = Some([(SHARD.to_owned(), shard.clone())].into());
    Api::<Tenant>::all(admin.clone())
        .create(&PostParams::default(), &tenant)
        .await
        .expect("create tenant");

    let tenants = Api::<Tenant>::all(admin.clone());
    let status_ns = eventually(
        "the tenant's namespace in its status",
        90,
        &[&controller],
        || {
            let tenants = tenants.clone();
            let name = name.clone();
            async move { tenants.get(&name).await.ok()?.status?.namespace }
        },
    )
    .await;
    let deployments = Api::<Deployment>::namespaced(admin.clone(), &status_ns);
    let components = platform.spec.components.len();
    let list = eventually("the tenant's Deployments", 60, &[&controller], || {
        let deployments = deployments.clone();
        async move {
            let l = deployments.list(&ListParams::default()).await.ok()?.items;
            (l.len() == components).then_some(l)
        }
    })
    .await;
    // Readiness as a node would report it; the controller must then write Ready.
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
    let ready = eventually("phase Ready", 90, &[&controller], || {
        let tenants = tenants.clone();
        let name = name.clone();
        async move {
            let t = tenants.get(&name).await.ok()?;
            (t.status.as_ref()?.phase == Some(TenantPhase::Ready)).then_some(t)
        }
    })
    .await;
    let status = ready.status.expect("status");
    assert!(status
        .conditions
        .iter()
        .any(|c| c.type_ == "Synced" && c.status == "True"));
    // The leader Lease was taken in the release namespace through the chart's Role.
    let lease = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(admin.clone(), &ns)
        .get(&shard)
        .await
        .expect("lease in the release namespace");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("controller-0")
    );
    let log = controller.log();
    assert!(
        !log.to_ascii_lowercase().contains("forbidden"),
        "the controller hit a permission error:\n{log}"
    );
    drop(controller);
    let _ = tenants.delete(&name, &Default::default()).await;
}

/// Starts `stackplane-api` with the api ServiceAccount's permissions; (process, base URL).
async fn start_api(ns: &str, sa: &str, dir: &Path) -> (Proc, String) {
    let kubeconfig = dir.join("api.kubeconfig");
    impersonating_kubeconfig(ns, sa, &kubeconfig);
    let (_, db_url) = fresh_database().await;
    let free_port = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().expect("addr").port()
    };
    let (port, internal_port) = (free_port(), free_port());
    let bin = workspace_binary("stackplane-api", "stackplane-api");
    let log = dir.join("api.log");
    let out = std::fs::File::create(&log).expect("log");
    let child = Command::new(bin)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--internal-listen", &format!("127.0.0.1:{internal_port}")])
        .env("KUBECONFIG", &kubeconfig)
        .env("DATABASE_URL", db_url)
        .env("STRIPE_WEBHOOK_SECRETS", WEBHOOK_SECRET)
        .env("STRIPE_SECRET_KEY", "sk_test_chart_rbac")
        .env("STACKPLANE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "stackplane_api=debug,kube=warn")
        .stdout(Stdio::from(out.try_clone().expect("clone")))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("spawn stackplane-api");
    let api = Proc(child, log);
    let base = format!("http://127.0.0.1:{port}");
    let internal = format!("http://127.0.0.1:{internal_port}");
    let http = reqwest::Client::new();
    eventually("stackplane-api /readyz", 60, &[&api], || {
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
    // The internal endpoints are on the internal listener only.
    for path in ["/healthz", "/metrics"] {
        let resp = http
            .get(format!("{internal}{path}"))
            .send()
            .await
            .expect("internal");
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        let public = http
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("public");
        assert_eq!(public.status().as_u16(), 404, "{path} is not public");
    }
    (api, base)
}

async fn send_event(base: &str, event: &serde_json::Value) {
    let payload = event.to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let resp = reqwest::Client::new()
        .post(format!("{base}/webhooks/stripe"))
        .header("content-type", "application/json")
        .header(
            "Stripe-Signature",
            stripe_signature(&payload, WEBHOOK_SECRET, now),
        )
        .body(payload)
        .send()
        .await
        .expect("send webhook");
    assert!(
        resp.status().is_success(),
        "webhook answered {}",
        resp.status()
    );
}

fn paid_customer_events(cus: &str, sub: &str) -> [serde_json::Value; 2] {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    [
        json!({"id": unique("evt_c"), "object": "event", "type": "checkout.session.completed", "created": t,
            "livemode": false, "api_version": "2025-03-31.basil",
            "data": {"object": {"id": unique("cs_test"), "object": "checkout.session", "mode": "subscription",
                "customer": cus, "subscription": sub, "client_reference_id": "user-chart", "payment_status": "paid",
                "customer_details": {"email": "ops@example.com", "name": "Chart Test"},
                "metadata": {"platform": "leadsite-io", "tier": "starter"}}}}),
        json!({"id": unique("evt_s"), "object": "event", "type": "customer.subscription.created", "created": t,
            "livemode": false, "api_version": "2025-03-31.basil",
            "data": {"object": {"id": sub, "object": "subscription", "customer": cus, "status": "active", "metadata": {},
                "items": {"object": "list", "data": [{"id": "si_1", "object": "subscription_item", "current_period_end": t + 2_592_000,
                    "price": {"id": "price_1LeadsiteIoStarterMonthly", "object": "price"}}]}}}}),
    ]
}

#[tokio::test]
async fn the_api_applies_a_paying_customers_tenant_with_only_the_charts_permissions() {
    let admin = kube_client().await;
    install_crds(&admin).await;
    stackplane_tests::apply_example_platform(&admin, "leadsite-io.yaml").await;
    let release = unique("rbac");
    let ns = unique("chart-rbac");
    let (_, api_sa) = install_chart_rbac(&admin, &release, &ns).await;
    let dir = std::env::temp_dir().join(unique("chart-rbac-api"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (api, base) = start_api(&ns, &api_sa, &dir).await;

    let cus = format!("cus_{}", unique("Chart").replace('-', ""));
    let sub = format!("sub_{}", unique("chart").replace('-', ""));
    for event in paid_customer_events(&cus, &sub) {
        send_event(&base, &event).await;
    }
    // The billing worker, as the api's ServiceAccount, created the Tenant from the Platform's
    // prices (it watched Platforms and applied the Tenant).
    let name = stackplane_crds::naming::tenant_name("leadsite-io", &cus);
    let tenants = Api::<Tenant>::all(admin.clone());
    let tenant = eventually("the Tenant applied by billing", 60, &[&api], || {
        let tenants = tenants.clone();
        let name = name.clone();
        async move { tenants.get(&name).await.ok() }
    })
    .await;
    assert_eq!(tenant.spec.tier, "starter");
    assert_eq!(
        tenant.spec.customer.stripe_customer_id.as_deref(),
        Some(cus.as_str())
    );
    let log = api.log();
    assert!(
        !log.to_ascii_lowercase().contains("forbidden"),
        "the api hit a permission error:\n{log}"
    );
    drop(api);
    let _ = tenants.delete(&name, &Default::default()).await;
}

/// `GET /api/v1/tenants/{name}` served by an api with only the chart's permissions.
#[tokio::test]
async fn the_api_serves_a_tenants_status_with_only_the_charts_permissions() {
    let admin = kube_client().await;
    install_crds(&admin).await;
    stackplane_tests::apply_example_platform(&admin, "leadsite-io.yaml").await;
    let release = unique("rbac");
    let ns = unique("chart-rbac");
    let (_, api_sa) = install_chart_rbac(&admin, &release, &ns).await;
    let dir = std::env::temp_dir().join(unique("chart-rbac-status"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (api, base) = start_api(&ns, &api_sa, &dir).await;

    // A tenant with a status, as the controller writes it.
    let name = unique("tn");
    let tenants = Api::<Tenant>::all(admin.clone());
    tenants
        .create(
            &PostParams::default(),
            &Tenant::new(&name, TenantSpec::new("leadsite-io", "starter")),
        )
        .await
        .expect("create tenant");
    tenants
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"status": {"phase": "Ready", "namespace": format!("tenant-{name}")}}),
            ),
        )
        .await
        .expect("status");
    let http = reqwest::Client::new();
    let body: serde_json::Value = eventually("GET /api/v1/tenants/{name}", 30, &[&api], || {
        let http = http.clone();
        let url = format!("{base}/api/v1/tenants/{name}");
        async move {
            let resp = http.get(url).bearer_auth(ADMIN_TOKEN).send().await.ok()?;
            if !resp.status().is_success() {
                return None;
            }
            let v: serde_json::Value = resp.json().await.ok()?;
            (v["phase"] == "Ready").then_some(v)
        }
    })
    .await;
    assert_eq!(body["phase"], "Ready");
    drop(api);
    let _ = tenants.delete(&name, &Default::default()).await;
}
