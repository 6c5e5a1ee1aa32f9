//! Honest liveness (issue 12, item 4) against the real kube-apiserver: the controller runs
//! in-process as a ServiceAccount (through impersonation, as tests/tests/chart.rs does for the
//! chart's RBAC), its Lease permission is taken away and given back. While it cannot reach its
//! Lease it stops reconciling and `/healthz` says so; once the permission is back it leads
//! again, reports healthy and reconciles what was created meanwhile. Never healthy and idle.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use stackplane_controller::leader::LeaseConfig;
use stackplane_controller::metrics::{self, Metrics};
use stackplane_crds::{Platform, Tenant};
use stackplane_tests::{eventually_within, impersonating_kubeconfig, kube_client, unique};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

/// One HTTP/1.1 GET; (status code, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (code, body)
}

/// Whether the `stackplane_controller_leader` gauge reads `value`.
async fn leader_gauge(addr: SocketAddr, value: u8) -> bool {
    let (_, body) = get(addr, "/metrics").await;
    body.lines()
        .any(|l| l.trim() == format!("stackplane_controller_leader {value}"))
}

async fn client_as(kubeconfig: &Path) -> Client {
    let text = std::fs::read_to_string(kubeconfig).expect("kubeconfig");
    let config: kube::config::Kubeconfig = serde_json::from_str(&text).expect("kubeconfig JSON");
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

fn lease_rules(allowed: bool) -> serde_json::Value {
    if allowed {
        json!([{ "apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                 "verbs": ["get", "create", "patch", "update"] }])
    } else {
        json!([])
    }
}

async fn synced(c: &Client, name: &str) -> bool {
    Api::<Tenant>::all(c.clone())
        .get(name)
        .await
        .ok()
        .and_then(|t| t.status)
        .is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Synced" && c.status == "True")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_lease_permission_is_unhealthy_and_getting_it_back_recovers() {
    let (admin, shard) = common::cluster("stackplane_controller=debug", kube_client()).await;
    let id = unique("live");
    let ns = id.clone();
    let sa = "controller";
    let ok = PostParams::default();
    Api::<Namespace>::all(admin.clone())
        .create(
            &ok,
            &serde_json::from_value(json!({"metadata": {"name": ns}})).expect("ns"),
        )
        .await
        .expect("create namespace");
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .create(
            &ok,
            &serde_json::from_value(json!({"metadata": {"name": sa}})).expect("sa"),
        )
        .await
        .expect("create service account");
    // Everything the controller touches except Leases, cluster-wide.
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": { "name": id },
        "rules": [{
            "apiGroups": ["", "apps", "batch", "networking.k8s.io", "rbac.authorization.k8s.io",
                          "stackplane.io", "events.k8s.io", "snapshot.storage.k8s.io"],
            "resources": ["*"], "verbs": ["*"],
        }],
    }))
    .expect("cluster role");
    Api::<ClusterRole>::all(admin.clone())
        .create(&ok, &role)
        .await
        .expect("create cluster role");
    let subjects = json!([{ "kind": "ServiceAccount", "name": sa, "namespace": ns }]);
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": { "name": id },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": id },
        "subjects": subjects,
    }))
    .expect("cluster role binding");
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&ok, &binding)
        .await
        .expect("create cluster role binding");
    // The Lease rule, in the Lease's namespace, as the chart grants it.
    let roles: Api<Role> = Api::namespaced(admin.clone(), &ns);
    let lease_role: Role = serde_json::from_value(json!({
        "metadata": { "name": "lease" }, "rules": lease_rules(true),
    }))
    .expect("role");
    roles
        .create(&ok, &lease_role)
        .await
        .expect("create lease role");
    let lease_binding: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "lease" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "lease" },
        "subjects": subjects,
    }))
    .expect("role binding");
    Api::<RoleBinding>::namespaced(admin.clone(), &ns)
        .create(&ok, &lease_binding)
        .await
        .expect("create lease role binding");

    let dir = std::env::temp_dir().join(&id);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kubeconfig = dir.join("controller.kubeconfig");
    impersonating_kubeconfig(&ns, sa, &kubeconfig);
    let restricted = client_as(&kubeconfig).await;

    let mut platform: Platform = stackplane_tests::example_platform("leadgen-pro.yaml");
    let pname = unique("plat");
    platform.metadata.name = Some(pname.clone());
    Api::<Platform>::all(admin.clone())
        .create(&ok, &platform)
        .await
        .expect("create platform");

    let metrics = Arc::new(Metrics::new());
    let (server_stop, mut server_stopped) = tokio::sync::watch::channel(false);
    let (addr, _server) = metrics::serve(
        "127.0.0.1:0".parse().expect("addr"),
        metrics.clone(),
        async move {
            let _ = server_stopped.wait_for(|s| *s).await;
        },
    )
    .await
    .expect("serve");
    // Its Lease is in the namespace whose Role the test takes away and gives back.
    let controller = common::Controller::start(&restricted, &shard, |o| {
        o.concurrency = 2;
        o.lease = LeaseConfig {
            name: "stackplane-controller".into(),
            namespace: ns.clone(),
            identity: unique("live"),
            duration_secs: 4,
            grace_secs: 1,
        };
        o.metrics = metrics.clone();
    });

    // With the permission: it leads, is healthy and reconciles.
    let a = &admin;
    let first = stackplane_tests::create_sharded_tenant(a, &pname, &shard).await;
    let f = &first;
    eventually_within("first tenant Synced", 60, move || async move {
        synced(a, f).await.then_some(())
    })
    .await;
    assert_eq!(get(addr, "/healthz").await, (200, "ok".to_owned()));

    // Without it: the leader steps down and /healthz fails, naming the Lease.
    roles
        .patch(
            "lease",
            &PatchParams::default(),
            &Patch::Merge(&json!({ "rules": lease_rules(false) })),
        )
        .await
        .expect("remove the lease rule");
    let why = eventually_within("unhealthy and not leading", 60, move || async move {
        let (code, body) = get(addr, "/healthz").await;
        (code == 503 && leader_gauge(addr, 0).await).then_some(body)
    })
    .await;
    assert!(why.contains("Lease"), "{why}");
    assert!(why.to_lowercase().contains("forbidden"), "{why}");
    // A tenant created now is not reconciled by a replica that reports itself unhealthy.
    let second = stackplane_tests::create_sharded_tenant(a, &pname, &shard).await;
    let s2 = &second;

    // With it back: healthy, leading, and the tenant created meanwhile is reconciled.
    roles
        .patch(
            "lease",
            &PatchParams::default(),
            &Patch::Merge(&json!({ "rules": lease_rules(true) })),
        )
        .await
        .expect("restore the lease rule");
    eventually_within("healthy and leading again", 90, move || async move {
        let (code, _) = get(addr, "/healthz").await;
        (code == 200 && leader_gauge(addr, 1).await).then_some(())
    })
    .await;
    eventually_within(
        "second tenant Synced after recovery",
        60,
        move || async move { synced(a, s2).await.then_some(()) },
    )
    .await;
    assert!(!controller.is_finished(), "a lost permission is not fatal");

    let _ = server_stop.send(true);
    let ended = controller.stop().await.expect("controller task");
    assert!(
        ended.is_ok(),
        "a requested shutdown ends cleanly: {ended:?}"
    );
    let _ = Api::<ClusterRoleBinding>::all(admin.clone())
        .delete(&id, &Default::default())
        .await;
    let _ = Api::<ClusterRole>::all(admin.clone())
        .delete(&id, &Default::default())
        .await;
}
