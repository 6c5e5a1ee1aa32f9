//! The controller against the harness's node cluster (`STACKPLANE_NODE_KUBECONFIG`): a real
//! kubelet, containerd and scheduler run the tenants' pods, readiness probes decide when a
//! component is available, and the dump Job really runs `pg_dump` against the harness's
//! Postgres. Nothing here writes a Deployment's or a Job's status: the node does.
//!
//! The images (`stackplane.local/...`) are built on the machine by tests/harness/node/images.py
//! and imported into the node's containerd; nothing is pulled.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{PersistentVolume, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use stackplane_controller::tenant::ReconcileConfig;
use stackplane_core::contract::labels::tenant_selector;
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
        },
    }))
    .expect("a Platform");
    Api::<Platform>::all(client.clone())
        .create(&PostParams::default(), &platform)
        .await
        .expect("create platform");
    let mut reconcile = ReconcileConfig::default();
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
