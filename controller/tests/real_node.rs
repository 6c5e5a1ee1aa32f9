//! The controller against the harness's node cluster (`STACKPLANE_NODE_KUBECONFIG`): a real
//! kubelet, containerd and scheduler run the tenants' pods, readiness probes decide when a
//! component is available, and the dump Job really runs `pg_dump` against the harness's
//! Postgres. Nothing here writes a Deployment's or a Job's status: the node does.
//!
//! The images (`stackplane.local/...`) are built on the machine by tests/harness/node/images.py
//! and imported into the node's containerd; nothing is pulled.
//!
//! The node enforces NetworkPolicy (kube-router's firewall, started by tests/harness/node.sh) and
//! has a cloud-like metadata endpoint at 169.254.169.254:80, one routed hop away: the tenant
//! isolation test proves the policies the controller writes, packet by packet.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Endpoints, Namespace, PersistentVolume, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use stackplane_controller::tenant::ReconcileConfig;
use stackplane_core::contract::labels::{tenant_selector, COMPONENT};
use stackplane_core::tenant::network::{
    ALLOW_DNS, ALLOW_PLATFORM_EGRESS, ALLOW_SAME_NAMESPACE, DEFAULT_DENY_EGRESS, METADATA_ADDRESS,
};
use stackplane_core::tenant::plan::PlanOptions;
use stackplane_crds::naming::namespace_name;
use stackplane_crds::{
    BackupPartKind, BackupPartState, BackupPhase, BackupReason, Platform, Tenant, TenantBackup,
    TenantBackupSpec, TenantPhase, TenantSpec,
};
use stackplane_tests::{
    eventually_within, fresh_database, node_database_url, node_kube_client, unique,
};

mod common;

const SHARD: &str = "stackplane.io/test-shard";
/// busybox httpd answering on `$PORT` as nobody (tests/harness/node/images.py).
const HTTPD_IMAGE: &str = "stackplane.local/httpd:1";
/// pg_dump 15 and a shell (tests/harness/node/images.py).
const PGDUMP_IMAGE: &str = "stackplane.local/pgdump:15";
/// What the httpd image serves.
const PAGE: &str = "stackplane component: served by busybox httpd on a real node";

struct Env {
    client: Client,
    shard: String,
    platform: String,
    _controller: common::Controller,
}

/// A component of the test Platform: the httpd image on `port`, listening on `listen`.
fn component(name: &str, port: u16, listen: u16) -> serde_json::Value {
    json!({
        "name": name,
        "image": HTTPD_IMAGE,
        "port": port,
        "env": [{ "name": "PORT", "value": listen.to_string() }],
        "resources": {
            "requests": { "cpu": "10m", "memory": "16Mi" },
            "limits": { "cpu": "100m", "memory": "32Mi" },
        },
    })
}

/// The whole controller (Tenants, and backups while it leads) against the node cluster,
/// restricted to a shard, with a Platform of `components` whose Deployments may take
/// `progress_deadline` seconds.
async fn start(components: Vec<serde_json::Value>, progress_deadline: u32) -> Env {
    start_with(
        components,
        progress_deadline,
        json!([]),
        PlanOptions::default(),
    )
    .await
}

/// [`start`] with the Platform's `spec.egress` and the controller's plan options.
async fn start_with(
    components: Vec<serde_json::Value>,
    progress_deadline: u32,
    egress: serde_json::Value,
    plan: PlanOptions,
) -> Env {
    let (client, shard) = common::cluster("stackplane_controller=info", node_kube_client()).await;
    let pname = unique("node");
    let platform: Platform = serde_json::from_value(json!({
        "apiVersion": "stackplane.io/v1alpha1",
        "kind": "Platform",
        "metadata": { "name": pname },
        "spec": {
            "displayName": "Real node",
            "domain": "node.stackplane.test",
            "components": components,
            "tiers": [{
                "name": "starter",
                "stripePriceIds": [format!("price_{}", pname.replace('-', ""))],
                "quota": { "cpu": "2", "memory": "1Gi", "storage": "20Gi", "pods": 10 },
            }],
            "rollout": { "progressDeadline": progress_deadline },
            "egress": egress,
        },
    }))
    .expect("a Platform");
    Api::<Platform>::all(client.clone())
        .create(&PostParams::default(), &platform)
        .await
        .expect("create platform");
    let mut reconcile = ReconcileConfig {
        plan,
        ..ReconcileConfig::default()
    };
    reconcile.backup.poll = Duration::from_millis(500);
    reconcile.backup.dump.image = PGDUMP_IMAGE.to_owned();
    // No CSI snapshot controller runs on the node: volume parts are "unsupported".
    reconcile.backup.volume_snapshot_group = "snapshot.unserved.stackplane.test".into();
    let controller = common::Controller::start(&client, &shard, |o| {
        o.concurrency = 4;
        o.reconcile = reconcile;
    });
    Env {
        client,
        shard,
        platform: pname,
        _controller: controller,
    }
}

/// A tenant as the platform gives it in production, on the node: its own database (with
/// rows) on the harness's Postgres, its `DATABASE_URL` in the Secret the dump Job reads, and
/// storage for the dump claim: a directory of the node's disk, bound to the claim in advance
/// as a static provisioner would. Every backup, the final one on deletion included, really
/// dumps.
struct Stack {
    name: String,
    database: String,
    dumps: std::path::PathBuf,
    volume: String,
}

async fn create_stack(env: &Env) -> Stack {
    let (pool, url) = fresh_database().await;
    let database = url.rsplit_once('/').map(|(_, d)| d.to_owned()).expect("db");
    sqlx::query("CREATE TABLE leads (id serial PRIMARY KEY, email text NOT NULL)")
        .execute(&pool)
        .await
        .expect("create table");
    sqlx::query(
        "INSERT INTO leads (email) SELECT 'lead' || g || '@example.com' FROM generate_series(1, 5000) g",
    )
    .execute(&pool)
    .await
    .expect("insert rows");
    pool.close().await;

    let name = unique("tn");
    let ns = namespace_name(&name);
    let dumps = std::env::temp_dir().join(unique("dumps"));
    std::fs::create_dir_all(&dumps).expect("mkdir dumps");
    // The dump Job runs as nobody; a hostPath volume keeps the directory's own permissions.
    std::fs::set_permissions(&dumps, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod dumps");
    let volume = unique("dumps");
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": { "name": volume },
        "spec": {
            "capacity": { "storage": "10Gi" },
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": { "path": dumps.to_string_lossy(), "type": "Directory" },
            "claimRef": { "namespace": ns, "name": "database-dumps" },
        },
    }))
    .expect("a PersistentVolume");
    Api::<PersistentVolume>::all(env.client.clone())
        .create(&PostParams::default(), &pv)
        .await
        .expect("create volume");

    create_tenant_named(env, &name).await;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &ns);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": "database", "namespace": ns },
        "stringData": { "DATABASE_URL": node_database_url(&database) },
    }))
    .expect("a Secret");
    eventually_within(
        "the tenant's namespace, to hold its database Secret",
        60,
        || {
            let secrets = secrets.clone();
            let secret = secret.clone();
            async move {
                secrets
                    .create(&PostParams::default(), &secret)
                    .await
                    .ok()
                    .map(|_| ())
            }
        },
    )
    .await;
    Stack {
        name,
        database,
        dumps,
        volume,
    }
}

async fn create_tenant_named(env: &Env, name: &str) {
    let mut t = Tenant::new(name, TenantSpec::new(env.platform.clone(), "starter"));
    t.metadata.labels = Some([(SHARD.to_owned(), env.shard.clone())].into());
    Api::<Tenant>::all(env.client.clone())
        .create(&PostParams::default(), &t)
        .await
        .expect("create tenant");
}

async fn tenant(env: &Env, name: &str) -> Tenant {
    Api::<Tenant>::all(env.client.clone())
        .get(name)
        .await
        .expect("get tenant")
}

fn ready_condition(t: &Tenant) -> Option<(String, String, String)> {
    t.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn pods(env: &Env, tenant: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(env.client.clone(), &namespace_name(tenant))
        .list(&ListParams::default().labels(&tenant_selector(tenant)))
        .await
        .expect("list pods")
        .items
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_phase(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

/// One HTTP GET of `http://ip:port/` from this machine (the node's bridge routes pod IPs).
async fn http_get(ip: &str, port: i32) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((ip, u16::try_from(port).unwrap_or(80))),
    )
    .await??;
    s.write_all(format!("GET / HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())
        .await?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut body)).await??;
    Ok(body)
}

/// Deletes the tenant and waits until its namespace, and so its pods, are gone (the node's
/// kubelet really stops them); the final backup's dump must be on the tenant's volume by then.
/// Returns the final dump's size.
async fn delete_stack(env: &Env, stack: Stack) -> u64 {
    let tenant = Api::<Tenant>::all(env.client.clone())
        .get(&stack.name)
        .await
        .expect("get tenant");
    let final_backup = stackplane_core::tenant::deletion::final_backup_name(
        &stack.name,
        tenant.metadata.uid.as_deref().unwrap_or_default(),
    );
    Api::<Tenant>::all(env.client.clone())
        .delete(&stack.name, &DeleteParams::default())
        .await
        .expect("delete tenant");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(env.client.clone());
    let ns = namespace_name(&stack.name);
    eventually_within("the tenant's namespace and pods to be gone", 180, || {
        let namespaces = namespaces.clone();
        let ns = ns.clone();
        async move { namespaces.get_opt(&ns).await.ok()?.is_none().then_some(()) }
    })
    .await;
    let file = stack
        .dumps
        .join(&final_backup)
        .join(format!("{final_backup}.dump"));
    let size = std::fs::metadata(&file)
        .unwrap_or_else(|e| panic!("the final backup's dump {}: {e}", file.display()))
        .len();
    let _ = Api::<PersistentVolume>::all(env.client.clone())
        .delete(&stack.volume, &DeleteParams::default())
        .await;
    let _ = std::fs::remove_dir_all(&stack.dumps);
    size
}

#[tokio::test]
async fn pods_pass_their_readiness_probes_and_the_tenant_turns_ready() {
    let env = start(
        vec![component("web", 8080, 8080), component("api", 9090, 9090)],
        600,
    )
    .await;
    let created = Instant::now();
    let stack = create_stack(&env).await;
    let name = stack.name.clone();
    let ready = eventually_within("the tenant to be Ready on the real node", 120, || {
        let env = &env;
        let name = name.clone();
        async move {
            let t = tenant(env, &name).await;
            (t.status.as_ref()?.phase == Some(TenantPhase::Ready)).then_some(t)
        }
    })
    .await;
    println!(
        "creation to Ready with real pods: {:.1} s",
        created.elapsed().as_secs_f64()
    );
    let status = ready.status.clone().unwrap_or_default();
    assert!(
        status.components.iter().all(|c| c.ready_replicas == 1),
        "{:?}",
        status.components
    );

    // Every component's pod runs on the node and its probe passed; each answers on its port.
    let running = pods(&env, &name).await;
    assert_eq!(running.len(), 2, "one pod per component");
    for pod in &running {
        assert_eq!(pod_phase(pod), "Running", "{}", pod.name_any());
        assert!(pod_ready(pod), "{} is not ready", pod.name_any());
        let spec = pod.spec.as_ref().expect("pod spec");
        assert_eq!(spec.node_name.as_deref(), Some("stackplane-node"));
        let container = &spec.containers[0];
        let probe = container
            .readiness_probe
            .as_ref()
            .expect("a readiness probe");
        assert!(probe.tcp_socket.is_some(), "{probe:?}");
        let port = container.ports.as_ref().expect("ports")[0].container_port;
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .expect("a pod IP");
        let answer = http_get(&ip, port).await.expect("an HTTP answer");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains(PAGE), "{answer}");
    }
    assert!(delete_stack(&env, stack).await > 0);
}

#[tokio::test]
async fn a_component_whose_probe_fails_keeps_the_tenant_provisioning_then_degraded() {
    // "api" listens on 9091 while its port (and so its probe) is 9090: it never turns ready.
    let deadline_secs = 20;
    let env = start(
        vec![component("web", 8080, 8080), component("api", 9090, 9091)],
        deadline_secs,
    )
    .await;
    let stack = create_stack(&env).await;
    let name = stack.name.clone();

    // Before the deadline: both pods run, web is ready, api is not; the tenant provisions.
    let waiting = eventually_within("web ready and api running but not ready", 90, || {
        let env = &env;
        let name = name.clone();
        async move {
            let pods = pods(env, &name).await;
            let of = |c: &str| {
                pods.iter()
                    .find(|p| {
                        p.labels()
                            .get("stackplane.io/component")
                            .map(String::as_str)
                            == Some(c)
                    })
                    .cloned()
            };
            let (web, api) = (of("web")?, of("api")?);
            (pod_ready(&web) && pod_phase(&api) == "Running" && !pod_ready(&api)).then_some(())?;
            let t = tenant(env, &name).await;
            let ready = ready_condition(&t)?;
            // The tenant's status follows the Deployments' (web's turns available a moment
            // after its pod is ready).
            (ready.0 == "False" && ready.2.contains("api (0/1)") && !ready.2.contains("web"))
                .then_some(t)
        }
    })
    .await;
    let status = waiting.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Some(TenantPhase::Provisioning));
    let ready = ready_condition(&waiting).expect("Ready condition");
    assert_eq!(ready.1, "ComponentsUnavailable", "{ready:?}");

    // After the deadline: Kubernetes marks api's Deployment stalled and the tenant Degraded.
    let degraded = eventually_within(
        "the tenant Degraded after the progress deadline",
        u64::from(deadline_secs) + 90,
        || {
            let env = &env;
            let name = name.clone();
            async move {
                let t = tenant(env, &name).await;
                (t.status.as_ref()?.phase == Some(TenantPhase::Degraded)).then_some(t)
            }
        },
    )
    .await;
    let ready = ready_condition(&degraded).expect("Ready condition");
    assert_eq!(ready.0, "False");
    assert_eq!(ready.1, "ComponentsStalled", "{ready:?}");
    assert!(ready.2.contains("api (0/1)"), "{ready:?}");
    assert!(ready.2.contains("progress"), "{ready:?}");
    assert!(!ready.2.contains("web"), "{ready:?}");
    assert!(delete_stack(&env, stack).await > 0);
}

#[tokio::test]
async fn the_dump_job_runs_pg_dump_against_postgres_and_the_part_records_its_size() {
    let env = start(vec![component("web", 8080, 8080)], 600).await;
    let stack = create_stack(&env).await;
    let name = stack.name.clone();
    eventually_within("the tenant to be Ready", 120, || {
        let env = &env;
        let name = name.clone();
        async move {
            let t = tenant(env, &name).await;
            (t.status.as_ref()?.phase == Some(TenantPhase::Ready)).then_some(())
        }
    })
    .await;

    let backup_name = format!("{name}-manual");
    let mut backup = TenantBackup::new(
        &backup_name,
        TenantBackupSpec {
            tenant: name.clone(),
            reason: BackupReason::Manual,
            restore: None,
            instance: None,
        },
    );
    backup.metadata.labels = Some([(SHARD.to_owned(), env.shard.clone())].into());
    let backups: Api<TenantBackup> = Api::all(env.client.clone());
    backups
        .create(&PostParams::default(), &backup)
        .await
        .expect("create backup");
    let done = eventually_within("the backup to finish on the real node", 180, || {
        let backups = backups.clone();
        let backup_name = backup_name.clone();
        async move {
            let b = backups.get(&backup_name).await.ok()?;
            let phase = b.status.as_ref()?.phase?;
            matches!(
                phase,
                BackupPhase::Completed | BackupPhase::PartiallyFailed | BackupPhase::Failed
            )
            .then_some(b)
        }
    })
    .await;
    let status = done.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Some(BackupPhase::Completed), "{status:?}");
    let part = status
        .parts
        .iter()
        .find(|p| p.kind == BackupPartKind::Database)
        .expect("a database part");
    assert_eq!(part.state, BackupPartState::Completed, "{part:?}");
    let size = part.size_bytes.expect("the dump's size");

    // The dump is on the volume, a real custom-format dump of the rows, of the reported size.
    let file = stack
        .dumps
        .join(&backup_name)
        .join(format!("{backup_name}.dump"));
    let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert_eq!(i64::try_from(bytes.len()).expect("size"), size);
    assert!(
        bytes.starts_with(b"PGDMP"),
        "not a pg_dump custom-format file"
    );
    assert!(size > 10_000, "5,000 rows make more than {size} bytes");
    println!(
        "dump of {}: {size} bytes in {}",
        stack.database,
        file.display()
    );

    // Deleting the tenant dumps once more, before its data goes; the manual dump stays.
    let final_size = delete_stack(&env, stack).await;
    assert!(final_size > 10_000, "final dump: {final_size} bytes");
}

/// The node's pod network and the node cluster's service range (tests/harness/node.sh): what
/// `internet: true` must not open (`--cluster-cidrs`).
const NODE_CLUSTER_CIDRS: [&str; 2] = ["10.244.0.0/16", "10.1.0.0/16"];

/// What one TCP connection from inside a pod to `address:port` gave.
#[derive(Debug, PartialEq)]
enum Probe {
    /// An HTTP answer came back.
    Answered,
    /// The connection failed or nothing answered within 3 s (nc's words).
    NoAnswer(String),
}

/// One `GET /` from inside `pod` (its first container: busybox nc, 3 s) to `address:port`, by
/// `kubectl exec` against the node cluster. `None` when kubectl itself failed (the exec never
/// ran): that says nothing about the network, so callers retry.
async fn probe_from(ns: &str, pod: &str, address: &str, port: u16) -> Option<Probe> {
    let kubeconfig = std::env::var("STACKPLANE_NODE_KUBECONFIG").ok()?;
    let script = format!(
        "/bin/busybox printf 'GET / HTTP/1.0\\r\\nHost: {address}\\r\\n\\r\\n' \
         | /bin/busybox nc -w 3 {address} {port}"
    );
    let exec = tokio::process::Command::new("kubectl")
        .args(["--kubeconfig", &kubeconfig, "exec", "-n", ns, pod, "--"])
        .args(["/bin/busybox", "sh", "-c", &script])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), exec)
        .await
        .ok()?
        .ok()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stdout.starts_with("HTTP/1.") {
        return Some(Probe::Answered);
    }
    // kubectl's own failures (API server, kubelet, container not running) are not a verdict.
    if stderr.contains("Error from server") || stderr.starts_with("error:") {
        return None;
    }
    Some(Probe::NoAnswer(format!(
        "exit {:?}: {}{}",
        out.status.code(),
        stdout.trim(),
        stderr.trim()
    )))
}

/// Polls until a probe from `ns/pod` to `address:port` gives `want` (`Answered`, or any
/// `NoAnswer`), for as long as kube-router may take to apply a change (it syncs every 5 s).
async fn until_probe(what: &str, ns: &str, pod: &str, address: &str, port: u16, answered: bool) {
    eventually_within(what, 90, || async move {
        let probe = probe_from(ns, pod, address, port).await?;
        ((probe == Probe::Answered) == answered).then_some(())
    })
    .await;
}

fn pod_ip(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_else(|| panic!("{} has no IP", p.name_any()))
}

/// The address of the `component`'s pod as its Service's Endpoints list it. The node cluster
/// runs no kube-proxy, so a ClusterIP leads nowhere; NetworkPolicy applies to the endpoint a
/// proxy would have picked (the packet after DNAT), which is what is probed here.
async fn service_endpoint(env: &Env, tenant: &str, port: u16) -> String {
    let endpoints: Api<Endpoints> = Api::namespaced(env.client.clone(), &namespace_name(tenant));
    eventually_within("the component's Service to have an endpoint", 60, || {
        let endpoints = endpoints.clone();
        async move {
            let list = endpoints.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .flat_map(|e| e.subsets.iter().flatten())
                .filter(|s| s.ports.iter().flatten().any(|p| p.port == i32::from(port)))
                .flat_map(|s| s.addresses.iter().flatten())
                .map(|a| a.ip.clone())
                .next()
        }
    })
    .await
}

/// A pod in a namespace of its own without any NetworkPolicy: busybox httpd on 8080 (as nobody)
/// and on 53 (as root: a stand-in for a resolver's TCP port; the node cluster runs no cluster
/// DNS). Returns its namespace, name and IP once it runs.
async fn open_pod(env: &Env) -> (String, String, String) {
    let ns = unique("open");
    Api::<Namespace>::all(env.client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": ns } })).expect("a Namespace"),
        )
        .await
        .expect("create namespace");
    let container = |name: &str, port: u16, user: u32| {
        json!({
            "name": name, "image": HTTPD_IMAGE,
            "env": [{ "name": "PORT", "value": port.to_string() }],
            "securityContext": { "runAsUser": user },
            "resources": { "limits": { "cpu": "50m", "memory": "32Mi" } },
        })
    };
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "open", "namespace": ns },
        "spec": {
            "containers": [container("http", 8080, 65534), container("dns", 53, 0)],
            "terminationGracePeriodSeconds": 1,
        },
    }))
    .expect("a Pod");
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &ns);
    eventually_within("the default service account, to admit the pod", 60, || {
        let pods = pods.clone();
        let pod = pod.clone();
        async move {
            pods.create(&PostParams::default(), &pod)
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await;
    let running = eventually_within("the open pod to run", 120, || {
        let pods = pods.clone();
        async move {
            let p = pods.get("open").await.ok()?;
            (pod_phase(&p) == "Running" && p.status.as_ref()?.pod_ip.is_some()).then_some(p)
        }
    })
    .await;
    (ns, "open".to_owned(), pod_ip(&running))
}

#[tokio::test]
async fn a_tenant_pod_is_refused_the_metadata_endpoint_and_other_namespaces_but_reaches_its_own_and_dns(
) {
    // Without an enforcer every policy is paper and every refusal below would fail, so say why.
    let enforcer = std::env::var("STACKPLANE_NODE_NETWORK_POLICY").unwrap_or_default();
    assert_eq!(
        enforcer, "kube-router",
        "this run's node does not enforce NetworkPolicy: {enforcer}"
    );
    // A Platform that allows every IPv4 address: the widest egress a Platform can declare, and
    // still neither link-local nor the cluster's own ranges. Not `internet: true`: that adds an
    // IPv6 ipBlock, and kube-router 1.2 is IPv4-only: its ipset restore fails on `fe80::/10` and
    // it aborts every sync on the node (no policy at all applies) — see docs/testing.md.
    let plan = PlanOptions {
        cluster_cidrs: NODE_CLUSTER_CIDRS
            .iter()
            .map(|c| c.parse().expect("a CIDR"))
            .collect(),
        ..PlanOptions::default()
    };
    let env = start_with(
        vec![component("web", 8080, 8080), component("api", 9090, 9090)],
        600,
        json!([{ "cidrs": ["0.0.0.0/0"] }]),
        plan,
    )
    .await;
    let metadata = METADATA_ADDRESS.to_string();

    // The control: a pod no policy selects reaches the metadata endpoint. So the endpoint is
    // there, routed, and answering; a refusal later is the tenant's policies, not its absence.
    let (open_ns, open, open_ip) = open_pod(&env).await;
    until_probe(
        "a pod without policies to reach the metadata endpoint",
        &open_ns,
        &open,
        &metadata,
        80,
        true,
    )
    .await;

    let (a, b) = (unique("tn"), unique("tn"));
    create_tenant_named(&env, &a).await;
    create_tenant_named(&env, &b).await;
    for name in [&a, &b] {
        let env = &env;
        eventually_within(
            "the tenant to be Ready on the real node",
            180,
            || async move {
                let t = tenant(env, name).await;
                (t.status.as_ref()?.phase == Some(TenantPhase::Ready)).then_some(())
            },
        )
        .await;
    }
    // The policies probed are the controller's.
    let policies: Vec<String> =
        Api::<NetworkPolicy>::namespaced(env.client.clone(), &namespace_name(&a))
            .list(&ListParams::default())
            .await
            .expect("list policies")
            .items
            .iter()
            .map(ResourceExt::name_any)
            .collect();
    for expected in [
        DEFAULT_DENY_EGRESS,
        ALLOW_SAME_NAMESPACE,
        ALLOW_DNS,
        ALLOW_PLATFORM_EGRESS,
    ] {
        assert!(policies.iter().any(|p| p == expected), "{policies:?}");
    }

    let a_ns = namespace_name(&a);
    let a_pods = pods(&env, &a).await;
    let a_web = a_pods
        .iter()
        .find(|p| p.labels().get(COMPONENT).map(String::as_str) == Some("web"))
        .unwrap_or_else(|| panic!("no web pod in {a_pods:?}"))
        .name_any();
    let a_api = service_endpoint(&env, &a, 9090).await;
    let b_web = service_endpoint(&env, &b, 8080).await;
    // What is refused below is there: each answers this machine (the node may always reach its
    // pods).
    for (ip, port) in [(&b_web, 8080), (&open_ip, 8080)] {
        let answer = http_get(ip, port).await.expect("an HTTP answer");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    // (c) first: the tenant's pods reach their own namespace's service, and DNS's port in
    // another namespace, which also proves the web pod is up and probing works.
    until_probe(
        "the web pod to reach its own namespace's api service",
        &a_ns,
        &a_web,
        &a_api,
        9090,
        true,
    )
    .await;
    until_probe(
        "the web pod to reach port 53 in another namespace (allow-dns)",
        &a_ns,
        &a_web,
        &open_ip,
        53,
        true,
    )
    .await;
    // (a) the metadata endpoint, although the Platform allows every IPv4 address.
    until_probe(
        "the metadata endpoint to be refused to the tenant's pod",
        &a_ns,
        &a_web,
        &metadata,
        80,
        false,
    )
    .await;
    // (b) another tenant's service, and a namespace without policies on a port other than DNS.
    until_probe(
        "another tenant's service to be refused to the tenant's pod",
        &a_ns,
        &a_web,
        &b_web,
        8080,
        false,
    )
    .await;
    until_probe(
        "another namespace's pod to be refused to the tenant's pod",
        &a_ns,
        &a_web,
        &open_ip,
        8080,
        false,
    )
    .await;
    // Refused, not gone: the pod without policies still reaches the metadata endpoint.
    assert_eq!(
        probe_from(&open_ns, &open, &metadata, 80).await,
        Some(Probe::Answered),
        "from the pod without policies to the metadata endpoint"
    );
    // And the allowed ones still answer from the tenant's pod after the refusals.
    for (ip, port) in [(&a_api, 9090), (&open_ip, 53)] {
        let probe = probe_from(&a_ns, &a_web, ip, port).await;
        assert_eq!(probe, Some(Probe::Answered), "to {ip}:{port}");
    }

    for name in [&a, &b] {
        let _ = Api::<Tenant>::all(env.client.clone())
            .delete(name, &DeleteParams::default())
            .await;
    }
    let _ = Api::<Namespace>::all(env.client.clone())
        .delete(&open_ns, &DeleteParams::default())
        .await;
}
