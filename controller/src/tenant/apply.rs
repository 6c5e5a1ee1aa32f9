//! Server-side apply of a plan, with the controller's field manager. The credentials Secret is
//! the one object whose content is not fully planned: existing values are kept, missing ones are
//! generated once.

use std::collections::BTreeMap;
use std::fmt::Debug;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Patch, PatchParams};
use kube::core::NamespaceResourceScope;
use kube::{Api, Client, Resource};
use rand::distributions::{Alphanumeric, DistString};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::plan::{Desired, Plan, CREDENTIAL_KEYS};
use crate::error::{Error, Result};

/// Field manager of everything the controller writes.
pub const FIELD_MANAGER: &str = "stackplane-controller";

/// Length of a generated credential.
const CREDENTIAL_LEN: usize = 32;

fn params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Applies the namespace, then every namespaced object of `plan`.
pub async fn apply(client: &Client, plan: &Plan) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = plan.namespace_name();
    namespaces
        .patch(ns, &params(), &Patch::Apply(&plan.namespace))
        .await
        .map_err(|source| Error::Apply {
            kind: "Namespace",
            name: ns.to_owned(),
            source,
        })?;
    for object in &plan.objects {
        match object {
            Desired::ResourceQuota(o) => ssa(client, ns, o).await,
            Desired::LimitRange(o) => ssa(client, ns, o).await,
            Desired::NetworkPolicy(o) => ssa(client, ns, o).await,
            Desired::ServiceAccount(o) => ssa(client, ns, o).await,
            Desired::Role(o) => ssa(client, ns, o).await,
            Desired::RoleBinding(o) => ssa(client, ns, o).await,
            Desired::CredentialsSecret { name, labels } => {
                apply_credentials(client, ns, name, labels).await
            }
            Desired::PersistentVolumeClaim(o) => ssa(client, ns, o).await,
            Desired::Deployment(o) => ssa(client, ns, o).await,
            Desired::Service(o) => ssa(client, ns, o).await,
            Desired::Ingress(o) => ssa(client, ns, o).await,
        }
        .map_err(|source| Error::Apply {
            kind: object.kind(),
            name: object.name().to_owned(),
            source,
        })?;
    }
    Ok(())
}

async fn ssa<K>(client: &Client, ns: &str, object: &K) -> Result<(), kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(&name, &params(), &Patch::Apply(object)).await?;
    Ok(())
}

/// Applies the credentials Secret, keeping every value it already has.
async fn apply_credentials(
    client: &Client,
    ns: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), kube::Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let existing = api.get_opt(name).await?;
    let data = credentials(existing.as_ref().and_then(|s| s.data.as_ref()));
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(ns.to_owned()),
            labels: Some(labels.clone()),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Secret::default()
    };
    api.patch(name, &params(), &Patch::Apply(&secret)).await?;
    Ok(())
}

/// The credentials: every existing key kept as it is, each missing key generated.
pub fn credentials(
    existing: Option<&BTreeMap<String, ByteString>>,
) -> BTreeMap<String, ByteString> {
    let mut data = existing.cloned().unwrap_or_default();
    for key in CREDENTIAL_KEYS {
        data.entry(key.to_owned()).or_insert_with(|| {
            ByteString(
                Alphanumeric
                    .sample_string(&mut rand::thread_rng(), CREDENTIAL_LEN)
                    .into_bytes(),
            )
        });
    }
    data
}
