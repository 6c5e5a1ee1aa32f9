//! `stackplane-controller crds apply`: server-side applies the CRDs built into this binary (the
//! chart runs it as a pre-install/pre-upgrade hook, because Helm never upgrades what is in a
//! chart's `crds/` folder). It creates missing CRDs and updates existing ones, as field manager
//! [`stackplane_core::contract::field_managers::CRDS`] with force (a CRD first created by Helm or
//! kubectl is taken over), and never deletes a CRD: deleting one deletes every object of its kind.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::runtime::wait::Condition;
use kube::{Api, Client, ResourceExt};
use stackplane_core::contract::field_managers;
use stackplane_core::crd_upgrade::removed_fields;

/// How often an applied CRD is read until it is Established.
const ESTABLISHED_POLL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum CrdApplyError {
    #[error(
        "applying CRD {name} would prune {fields:?} from every object written afterwards \
         (is this binary older than the installed CRDs?); refusing without --allow-field-removal"
    )]
    WouldRemoveFields { name: String, fields: Vec<String> },
    #[error("CRD {name} is not Established {seconds}s after it was applied")]
    NotEstablished { name: String, seconds: u64 },
    #[error("CRD {name}: {source}")]
    Kube {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("CRD {name}: {source}")]
    Serialise {
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

/// What [`apply_crds`] may do.
#[derive(Debug, Clone, Copy)]
pub struct CrdApplyOptions {
    /// Apply even when the new schema lacks a property the installed one declares.
    pub allow_field_removal: bool,
    /// How long each CRD may take to become Established once applied.
    pub establish_timeout: Duration,
}

/// Applies every CRD of [`stackplane_crds::all_crds`] and waits until each is Established;
/// returns their names. Checks all of them for removed fields before applying any, so a refused
/// downgrade changes nothing.
pub async fn apply_crds(
    client: &Client,
    options: CrdApplyOptions,
) -> Result<Vec<String>, CrdApplyError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crds = stackplane_crds::all_crds();
    if !options.allow_field_removal {
        for crd in &crds {
            let name = crd.name_any();
            let kube_err = |source| CrdApplyError::Kube {
                name: name.clone(),
                source,
            };
            let Some(installed) = api.get_opt(&name).await.map_err(kube_err)? else {
                continue;
            };
            let ser = |source| CrdApplyError::Serialise {
                name: name.clone(),
                source,
            };
            let fields = removed_fields(
                &serde_json::to_value(&installed).map_err(ser)?,
                &serde_json::to_value(crd).map_err(ser)?,
            );
            if !fields.is_empty() {
                return Err(CrdApplyError::WouldRemoveFields { name, fields });
            }
        }
    }
    let params = PatchParams::apply(field_managers::CRDS).force();
    let mut applied = Vec::with_capacity(crds.len());
    for crd in &crds {
        let name = crd.name_any();
        let before = api
            .patch(&name, &params, &Patch::Apply(crd))
            .await
            .map_err(|source| CrdApplyError::Kube {
                name: name.clone(),
                source,
            })?;
        tracing::info!(crd = %name, resource_version = ?before.metadata.resource_version, "applied CRD");
        applied.push(name);
    }
    for name in &applied {
        wait_established(&api, name, options.establish_timeout).await?;
    }
    Ok(applied)
}

/// Reads the CRD until its Established condition is True, for at most `timeout`.
async fn wait_established(
    api: &Api<CustomResourceDefinition>,
    name: &str,
    timeout: Duration,
) -> Result<(), CrdApplyError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let crd = api
            .get_opt(name)
            .await
            .map_err(|source| CrdApplyError::Kube {
                name: name.to_owned(),
                source,
            })?;
        if kube::runtime::conditions::is_crd_established().matches_object(crd.as_ref()) {
            tracing::info!(crd = %name, "CRD is Established");
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CrdApplyError::NotEstablished {
                name: name.to_owned(),
                seconds: timeout.as_secs(),
            });
        }
        tokio::time::sleep(ESTABLISHED_POLL).await;
    }
}
