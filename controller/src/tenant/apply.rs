//! Server-side apply of a plan, with the controller's field manager. The credentials Secret is
//! the one object whose content is not fully planned: existing values are kept, missing ones are
//! generated once (`stackplane_core::tenant::credentials`).

use std::collections::BTreeMap;

use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::ByteString;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rand::distributions::{Alphanumeric, DistString};

use super::children::ops;
use super::reports::DeploymentReport;
use crate::error::{Error, Result};
use stackplane_core::tenant::credentials as creds;
use stackplane_core::tenant::plan::{Desired, Plan};

/// Longest wait for the controller's new RoleBinding in a tenant namespace to take effect.
/// The API server's authorizer reads RBAC objects from its cache, which follows a write within
/// milliseconds; the bound is for a server under load.
const ACCESS_WAIT: Duration = Duration::from_secs(10);
/// Pause between two looks at whether that binding took effect.
const ACCESS_POLL: Duration = Duration::from_millis(100);

/// What a real apply of a plan tells.
#[derive(Debug, Default)]
pub struct Outcome {
    /// When the namespace was created (by the API server's clock: the reconciler compares it
    /// with the Tenant's own creation).
    pub namespace_created: Option<Time>,
    /// What each Deployment reported in its answer.
    pub reports: Vec<DeploymentReport>,
    /// The namespace carries the marks of an orphaning (a Tenant of this name released it
    /// because the Tenant CRD was being deleted, or under `Retain`): this apply adopted it.
    pub namespace_orphaned: bool,
}

/// Applies the namespace, then every namespaced object of `plan` through the registry of
/// child kinds (`super::children`), with the controller's field manager, forcing
/// (`stackplane_core::contract::field_managers::controller_apply`). The controller's own
/// RoleBinding comes first; the apply goes on once the API server grants what it binds.
pub async fn apply(client: &Client, plan: &Plan) -> Result<Outcome> {
    let params = &stackplane_core::contract::field_managers::controller_apply();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = plan.namespace_name();
    let namespace = namespaces
        .patch(ns, params, &Patch::Apply(&plan.namespace))
        .await
        .map_err(|source| Error::Apply {
            kind: "Namespace",
            name: ns.to_owned(),
            source,
        })?;
    let mut outcome = Outcome {
        namespace_orphaned: stackplane_core::tenant::adoption::carries_orphan_marks(&namespace),
        namespace_created: namespace.metadata.creation_timestamp,
        reports: Vec::new(),
    };
    for object in &plan.objects {
        let name = object.name();
        let result = match object {
            Desired::CredentialsSecret { name, labels } => {
                apply_credentials(client, ns, name, labels, params).await
            }
            Desired::ControllerBinding(binding) => {
                let applied =
                    (ops(object.child_kind()).apply)(client, ns, name, &object.to_json()?, params)
                        .await;
                if applied.is_ok() {
                    await_access(client, ns, binding).await?;
                }
                applied
            }
            planned => {
                (ops(planned.child_kind()).apply)(client, ns, name, &planned.to_json()?, params)
                    .await
            }
        };
        let report = result.map_err(|source| Error::Apply {
            kind: object.kind(),
            name: name.to_owned(),
            source,
        })?;
        outcome.reports.extend(report);
    }
    Ok(outcome)
}

/// Waits until the API server grants the controller what its just-applied `binding` in `ns`
/// binds, asking as the controller itself (a SelfSubjectAccessReview: every authenticated
/// subject may). Without this wait the next write, the first through the binding, could be
/// refused while the authorizer's cache has not seen the binding yet. The probe is a write
/// of Secrets, what the binding exists for.
async fn await_access(client: &Client, ns: &str, binding: &RoleBinding) -> Result<()> {
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(ns.to_owned()),
                verb: Some("create".to_owned()),
                resource: Some("secrets".to_owned()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let started = tokio::time::Instant::now();
    loop {
        let answer = reviews.create(&PostParams::default(), &review).await?;
        if answer.status.is_some_and(|s| s.allowed) {
            return Ok(());
        }
        if started.elapsed() >= ACCESS_WAIT {
            return Err(Error::AccessNotGranted {
                namespace: ns.to_owned(),
                cluster_role: binding.role_ref.name.clone(),
                waited: started.elapsed(),
            });
        }
        tracing::debug!(namespace = %ns, cluster_role = %binding.role_ref.name, "binding not effective yet");
        tokio::time::sleep(ACCESS_POLL).await;
    }
}

/// The fingerprint of everything [`apply`] would send for `plan` (see `super::applied`).
pub fn fingerprint(plan: &Plan) -> Result<u64> {
    let mut objects = vec![serde_json::to_value(&plan.namespace)?];
    for object in &plan.objects {
        objects.push(match object {
            // Its values are the cluster's; what is planned is its name and labels.
            Desired::CredentialsSecret { name, labels } => {
                serde_json::json!({ "credentials": name, "labels": labels })
            }
            planned => planned.to_json()?,
        });
    }
    Ok(super::applied::fingerprint(&objects))
}

/// Applies the credentials Secret, keeping every value it already has.
async fn apply_credentials(
    client: &Client,
    ns: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
    params: &PatchParams,
) -> Result<Option<DeploymentReport>, kube::Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let existing = api.get_opt(name).await?;
    let data = credentials(existing.as_ref().and_then(|s| s.data.as_ref()));
    let secret = creds::secret(ns, name, labels, data);
    api.patch(name, params, &Patch::Apply(&secret)).await?;
    Ok(None)
}

/// The credentials: every existing key kept as it is, each missing key generated
/// (`stackplane_core::tenant::credentials`).
pub fn credentials(
    existing: Option<&BTreeMap<String, ByteString>>,
) -> BTreeMap<String, ByteString> {
    creds::fill(existing, || {
        Alphanumeric.sample_string(&mut rand::thread_rng(), creds::CREDENTIAL_LEN)
    })
}

/// The executor against a mocked API server: the exact requests an apply makes.
#[cfg(test)]
mod mocked_api {
    use http::StatusCode;
    use serde_json::{json, Value};
    use stackplane_core::children::ChildKind;
    use stackplane_core::contract::field_managers;
    use stackplane_core::tenant::plan::{plan, PlanOptions};
    use stackplane_crds::{Platform, Tenant, TenantSpec};

    use super::*;
    use crate::mock_api::{self, Call};

    fn tackle_plan() -> Plan {
        tackle_plan_with(&PlanOptions::default())
    }

    fn tackle_plan_with(options: &PlanOptions) -> Plan {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/platforms/tackle.yaml");
        let platform: Platform =
            serde_saphyr::from_str(&std::fs::read_to_string(path).expect("read")).expect("yaml");
        let tenant = Tenant::new("acme", TenantSpec::new("tackle", "starter"));
        let tier = platform.spec.tiers[0].clone();
        plan(&tenant, &platform, &tier, options)
    }

    /// Echoes an applied object (the namespace with a creation time); a Secret is not there.
    fn cluster(existing_secret: Option<Value>) -> impl Fn(&Call) -> (StatusCode, Value) {
        move |call| match call.method.as_str() {
            "GET" => match &existing_secret {
                Some(s) => (StatusCode::OK, s.clone()),
                None => mock_api::not_found(call),
            },
            _ => {
                let mut echo = call.body.clone();
                echo["metadata"]["creationTimestamp"] = json!("2026-12-07T00:00:00Z");
                (StatusCode::OK, echo)
            }
        }
    }

    fn path_of(kind: ChildKind, ns: &str, name: &str) -> String {
        let r = kind.api_resource();
        let base = if r.group.is_empty() {
            format!("/api/{}", r.version)
        } else {
            format!("/apis/{}/{}", r.group, r.version)
        };
        format!("{base}/namespaces/{ns}/{}/{name}", r.plural)
    }

    #[tokio::test]
    async fn applies_the_namespace_first_then_each_object_what_workloads_need_first() {
        let plan = tackle_plan();
        let (client, server) = mock_api::pair();
        let calls = server.serve(cluster(None));
        let outcome = apply(&client, &plan).await.expect("apply");
        drop(client);
        let calls = calls.await.expect("server");

        assert!(outcome.namespace_created.is_some());
        // The namespace, then each planned object (the credentials Secret read first, so its
        // values are kept), and nothing else.
        let mut expected = vec![(
            "PATCH".to_owned(),
            "/api/v1/namespaces/tenant-acme".to_owned(),
        )];
        for object in &plan.objects {
            let path = path_of(object.child_kind(), "tenant-acme", object.name());
            if object.child_kind() == ChildKind::Secret {
                expected.push(("GET".to_owned(), path.clone()));
            }
            expected.push(("PATCH".to_owned(), path));
        }
        let made: Vec<(String, String)> = calls
            .iter()
            .map(|c| (c.method.clone(), c.path.clone()))
            .collect();
        assert_eq!(made, expected);
        assert!(made.contains(&(
            "PATCH".to_owned(),
            "/apis/apps/v1/namespaces/tenant-acme/deployments/api".to_owned()
        )));
        // What the workloads refer to (quota, limits, policies, the ServiceAccount and its
        // binding, the credentials, the claims) is applied before the first workload.
        let first_deployment = plan
            .objects
            .iter()
            .position(|o| o.child_kind() == ChildKind::Deployment)
            .expect("a Deployment");
        for (i, o) in plan.objects.iter().enumerate() {
            let before = ChildKind::ALL.iter().position(|k| *k == o.child_kind())
                < ChildKind::ALL
                    .iter()
                    .position(|k| *k == ChildKind::Deployment);
            if before {
                assert!(i < first_deployment, "{} after a Deployment", o.kind());
            }
        }
        // Every write is a forced server-side apply under the controller's field manager.
        for c in calls.iter().filter(|c| c.method == "PATCH") {
            assert!(
                c.has_param("fieldManager", field_managers::CONTROLLER),
                "{c:?}"
            );
            assert!(c.has_param("force", "true"), "{c:?}");
            assert!(!c.query.contains("dryRun"), "{c:?}");
            assert_eq!(
                c.content_type.as_deref(),
                Some("application/apply-patch+yaml")
            );
        }
    }

    #[tokio::test]
    async fn the_controllers_binding_is_applied_first_and_waited_for_before_any_other_write() {
        let plan = tackle_plan_with(&PlanOptions {
            controller_access: Some(stackplane_core::tenant::plan::ControllerAccess {
                service_account: "stackplane-controller".into(),
                namespace: "stackplane-system".into(),
                cluster_role: "stackplane-controller-tenant".into(),
            }),
            ..PlanOptions::default()
        });
        let (client, server) = mock_api::pair();
        // The authorizer grants the binding on the third look.
        let looks = std::sync::atomic::AtomicUsize::new(0);
        let echo = cluster(None);
        let calls = server.serve(move |call| {
            if call.path.ends_with("/selfsubjectaccessreviews") {
                let n = looks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut answer = call.body.clone();
                answer["status"] = json!({"allowed": n >= 2});
                return (StatusCode::CREATED, answer);
            }
            echo(call)
        });
        apply(&client, &plan).await.expect("apply");
        drop(client);
        let calls = calls.await.expect("server");
        let made: Vec<(&str, &str)> = calls
            .iter()
            .map(|c| (c.method.as_str(), c.path.as_str()))
            .collect();
        let binding = path_of(
            ChildKind::RoleBinding,
            "tenant-acme",
            "stackplane-controller-tenant",
        );
        let review = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
        assert_eq!(
            &made[..5],
            &[
                ("PATCH", "/api/v1/namespaces/tenant-acme"),
                ("PATCH", binding.as_str()),
                ("POST", review),
                ("POST", review),
                ("POST", review),
            ],
            "{made:?}"
        );
        assert_eq!(made.iter().filter(|c| c.1 == review).count(), 3);
        let asked = &calls[2].body["spec"]["resourceAttributes"];
        assert_eq!(
            (&asked["namespace"], &asked["verb"], &asked["resource"]),
            (&json!("tenant-acme"), &json!("create"), &json!("secrets"))
        );
        assert_eq!(
            calls[1].body["roleRef"]["name"],
            "stackplane-controller-tenant"
        );
        assert_eq!(
            calls[1].body["subjects"][0]["namespace"],
            "stackplane-system"
        );
    }

    #[tokio::test]
    async fn existing_credentials_are_kept_and_only_missing_ones_generated() {
        let plan = tackle_plan();
        let kept = "a2VlcC1tZQ=="; // "keep-me"
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "credentials", "namespace": "tenant-acme"},
            "data": {"admin-password": kept},
        });
        let (client, server) = mock_api::pair();
        let calls = server.serve(cluster(Some(secret)));
        apply(&client, &plan).await.expect("apply");
        drop(client);
        let calls = calls.await.expect("server");
        let written = calls
            .iter()
            .find(|c| c.method == "PATCH" && c.path.ends_with("/secrets/credentials"))
            .expect("the credentials were applied");
        assert_eq!(written.body["data"]["admin-password"], kept);
        let generated = written.body["data"]["session-secret"]
            .as_str()
            .expect("a session secret was generated");
        assert!(!generated.is_empty());
    }
}
