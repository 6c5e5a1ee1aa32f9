//! A tenant's plan applied as the controller applies it (server-side apply as its field manager,
//! forcing: `stackplane_core::contract::field_managers::controller_apply`), with `dryRun=All`:
//! the namespace first, then each object in the plan's order, each next to a read of the live
//! object. Nothing is written. The objects are read and applied generically, by the API
//! coordinates of the registry of child kinds (`stackplane_core::children`).
//!
//! The credentials Secret is sent as the controller sends it: its existing values kept, a
//! missing one generated (`stackplane_core::tenant::credentials`). What the diff prints of a
//! Secret's values is only their length (`crate::diff::comparable`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::ByteString;
use kube::api::{Patch, PatchParams};
use kube::core::DynamicObject;
use kube::{Api, Client};
use rand::distributions::{Alphanumeric, DistString};
use serde_json::Value;
use stackplane_core::contract::field_managers::controller_apply;
use stackplane_core::tenant::credentials;
use stackplane_core::tenant::plan::{Desired, Plan};

use crate::error::{CliError, Result};

/// One object of a plan: as it is in the cluster, and as the server says it would be once the
/// plan is applied.
#[derive(Debug, Clone, PartialEq)]
pub struct DryRun {
    pub kind: &'static str,
    pub name: String,
    /// `None`: the object does not exist yet.
    pub live: Option<Value>,
    pub applied: Value,
}

/// What applying `plan` would change, object by object (see the module's doc).
pub async fn dry_run(client: &Client, plan: &Plan) -> Result<Vec<DryRun>> {
    let params = params();
    let ns = plan.namespace_name();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let live_ns = namespaces
        .get_opt(ns)
        .await
        .map_err(failed("Namespace", ns))?
        .map(serde_json::to_value)
        .transpose()?;
    let applied_ns = namespaces
        .patch(ns, &params, &Patch::Apply(&plan.namespace))
        .await
        .map_err(failed("Namespace", ns))?;
    let mut out = vec![DryRun {
        kind: "Namespace",
        name: ns.to_owned(),
        live: live_ns,
        applied: serde_json::to_value(applied_ns)?,
    }];
    let mut objects = Vec::with_capacity(plan.objects.len());
    for object in &plan.objects {
        let api = children(client, ns, object);
        let name = object.name();
        let body = match object {
            Desired::CredentialsSecret { name, labels } => {
                credentials_secret(client, ns, name, labels).await?
            }
            planned => planned.to_json()?,
        };
        let applied = api
            .patch(name, &params, &Patch::Apply(&body))
            .await
            .map_err(failed(object.kind(), name))?;
        objects.push((object, serde_json::to_value(applied)?));
    }
    for (object, applied) in objects {
        let name = object.name();
        let live = children(client, ns, object)
            .get_opt(name)
            .await
            .map_err(failed(object.kind(), name))?
            .map(serde_json::to_value)
            .transpose()?;
        out.push(DryRun {
            kind: object.kind(),
            name: name.to_owned(),
            live,
            applied,
        });
    }
    Ok(out)
}

/// The objects of `object`'s kind in namespace `ns`.
fn children(client: &Client, ns: &str, object: &Desired) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &object.child_kind().api_resource())
}

/// The credentials Secret as the controller would apply it now: every value it has kept, each
/// missing one generated.
async fn credentials_secret(
    client: &Client,
    ns: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> Result<Value> {
    let existing = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(failed("Secret", name))?;
    let data = generated(existing.as_ref().and_then(|s| s.data.as_ref()));
    Ok(serde_json::to_value(credentials::secret(
        ns, name, labels, data,
    ))?)
}

/// The credentials: every existing key kept, each missing key a random alphanumeric string
/// (as the controller generates them).
fn generated(existing: Option<&BTreeMap<String, ByteString>>) -> BTreeMap<String, ByteString> {
    credentials::fill(existing, || {
        Alphanumeric.sample_string(&mut rand::thread_rng(), credentials::CREDENTIAL_LEN)
    })
}

/// The error of a request about object `kind` `name`.
fn failed(kind: &'static str, name: &str) -> impl FnOnce(kube::Error) -> CliError {
    let name = name.to_owned();
    move |source| CliError::DryRun { kind, name, source }
}

/// The parameters the dry run sends: the controller's, with `dryRun=All`.
pub fn params() -> PatchParams {
    controller_apply().dry_run()
}

/// The dry run against a mocked API server (`crate::mock_api`): the exact requests it makes.
#[cfg(test)]
mod mocked_api {
    use http::StatusCode;
    use serde_json::json;
    use stackplane_core::contract::field_managers;
    use stackplane_core::tenant::plan::{plan, PlanOptions};
    use stackplane_crds::{Platform, Tenant, TenantSpec};

    use super::*;
    use crate::mock_api::{self, Call};

    fn tackle_plan() -> Plan {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/platforms/tackle.yaml");
        let platform: Platform =
            serde_saphyr::from_str(&std::fs::read_to_string(path).expect("read")).expect("yaml");
        let tenant = Tenant::new("acme", TenantSpec::new("tackle", "starter"));
        let tier = platform.spec.tiers[0].clone();
        plan(&tenant, &platform, &tier, &PlanOptions::default())
    }

    /// Echoes an applied object (the namespace with a creation time); nothing exists yet.
    fn empty_cluster(call: &Call) -> (StatusCode, Value) {
        match call.method.as_str() {
            "GET" => mock_api::not_found(call),
            _ => {
                let mut echo = call.body.clone();
                echo["metadata"]["creationTimestamp"] = json!("2026-12-07T00:00:00Z");
                (StatusCode::OK, echo)
            }
        }
    }

    #[tokio::test]
    async fn a_dry_run_writes_nothing() {
        let plan = tackle_plan();
        let (client, server) = mock_api::pair();
        let calls = server.serve(empty_cluster);
        let answers = dry_run(&client, &plan).await.expect("dry run");
        drop(client);
        let calls = calls.await.expect("server");
        assert_eq!(answers.len(), plan.objects.len() + 1);
        for c in calls.iter().filter(|c| c.method != "GET") {
            assert_eq!(c.method, "PATCH", "{c:?}");
            assert!(
                c.has_param("dryRun", "All"),
                "a write without dryRun: {c:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_namespace_first_then_each_object_as_the_controller_applies_it() {
        let plan = tackle_plan();
        let (client, server) = mock_api::pair();
        let calls = server.serve(empty_cluster);
        let answers = dry_run(&client, &plan).await.expect("dry run");
        drop(client);
        let calls = calls.await.expect("server");
        // The live namespace is read, then the namespace applied, then each object (the
        // credentials Secret read first), and only then each live object.
        let ns = "/api/v1/namespaces/tenant-acme";
        assert_eq!(
            (calls[0].method.as_str(), calls[0].path.as_str()),
            ("GET", ns)
        );
        assert_eq!(
            (calls[1].method.as_str(), calls[1].path.as_str()),
            ("PATCH", ns)
        );
        let patched: Vec<&str> = calls
            .iter()
            .filter(|c| c.method == "PATCH")
            .skip(1)
            .map(|c| c.path.rsplit('/').next().unwrap_or_default())
            .collect();
        let planned: Vec<&str> = plan.objects.iter().map(Desired::name).collect();
        assert_eq!(patched, planned);
        let last_patch = calls.iter().rposition(|c| c.method == "PATCH");
        let first_live_read = calls.len() - plan.objects.len();
        assert_eq!(last_patch, Some(first_live_read - 1));
        // What is sent is what the controller applies: its field manager, forced, the planned
        // object itself.
        for c in calls.iter().filter(|c| c.method == "PATCH") {
            assert!(
                c.has_param("fieldManager", field_managers::CONTROLLER),
                "{c:?}"
            );
            assert!(c.has_param("force", "true"), "{c:?}");
        }
        let quota = plan
            .objects
            .iter()
            .find(|o| matches!(o, Desired::ResourceQuota(_)))
            .expect("a quota");
        let sent = calls
            .iter()
            .find(|c| c.method == "PATCH" && c.path.ends_with(&format!("/{}", quota.name())))
            .expect("the quota was sent");
        assert_eq!(sent.body, quota.to_json().expect("json"));
        // Nothing exists: every object is new, and the answer is the server's.
        assert!(answers.iter().all(|a| a.live.is_none()));
        assert_eq!(answers[0].kind, "Namespace");
        assert_eq!(
            answers[0].applied["metadata"]["creationTimestamp"],
            "2026-12-07T00:00:00Z"
        );
    }

    #[tokio::test]
    async fn existing_credentials_are_sent_as_they_are_and_missing_ones_generated() {
        let plan = tackle_plan();
        let kept = "a2VlcC1tZQ=="; // "keep-me"
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "credentials", "namespace": "tenant-acme"},
            "data": {"admin-password": kept},
        });
        let (client, server) = mock_api::pair();
        let calls = server.serve(move |call| {
            if call.method == "GET" && call.path.ends_with("/secrets/credentials") {
                (StatusCode::OK, secret.clone())
            } else {
                empty_cluster(call)
            }
        });
        dry_run(&client, &plan).await.expect("dry run");
        drop(client);
        let calls = calls.await.expect("server");
        let sent = calls
            .iter()
            .find(|c| c.method == "PATCH" && c.path.ends_with("/secrets/credentials"))
            .expect("the credentials were sent");
        assert_eq!(sent.body["data"]["admin-password"], kept);
        let generated = sent.body["data"]["session-secret"]
            .as_str()
            .expect("a session secret was generated");
        assert!(!generated.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_is_the_controllers_forced_apply_as_a_dry_run() {
        let p = params();
        assert!(p.dry_run);
        assert!(p.force);
        assert_eq!(
            p.field_manager.as_deref(),
            Some(stackplane_core::contract::field_managers::CONTROLLER)
        );
    }

    #[test]
    fn existing_credentials_are_sent_as_they_are_and_missing_ones_generated() {
        let keys = stackplane_core::tenant::plan::CREDENTIAL_KEYS;
        let existing: BTreeMap<String, ByteString> =
            [(keys[0].to_owned(), ByteString(b"kept".to_vec()))].into();
        let data = generated(Some(&existing));
        assert_eq!(data[keys[0]].0, b"kept");
        let new = &data[keys[1]].0;
        assert_eq!(new.len(), credentials::CREDENTIAL_LEN);
        assert!(new.iter().all(u8::is_ascii_alphanumeric));
        assert_ne!(generated(None)[keys[1]], generated(None)[keys[1]]);
    }
}
