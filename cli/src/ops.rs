//! The commands that act: backups and restores (TenantBackup objects the controller carries
//! out), the adoption of a stack a deletion of the Tenant CRD left, rollout control (the `stackplane.io/rollout` annotation the rollout controller reads),
//! and the lists of Events: a tenant's, and the cloud garbage collector's.

use k8s_openapi::api::core::v1::{Event, Namespace};
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde::Serialize;
use serde_json::json;
use stackplane_core::contract::labels::ROLLOUT_CONTROL;
use stackplane_core::tenant::adoption;
use stackplane_crds::naming::namespace_name;
use stackplane_crds::{BackupReason, Platform, Tenant, TenantBackup, TenantBackupSpec};

use crate::error::{not_found, CliError, Result};
use crate::status::{get_tenant, newest_first, EventLine};

/// The field manager of what the plugin writes.
pub const FIELD_MANAGER: &str = stackplane_core::contract::field_managers::PLUGIN;

/// Creates a manual backup of `tenant`; its name.
pub async fn backup(client: &Client, tenant: &str) -> Result<String> {
    get_tenant(client, tenant).await?;
    create_backup(client, tenant, None).await
}

/// Creates a restore of `tenant` from its backup `from`; its name.
pub async fn restore(client: &Client, tenant: &str, from: &str) -> Result<String> {
    get_tenant(client, tenant).await?;
    let source = Api::<TenantBackup>::all(client.clone())
        .get(from)
        .await
        .map_err(|e| not_found(e, from, || CliError::BackupNotFound(from.to_owned())))?;
    if source.spec.tenant != tenant {
        return Err(CliError::BackupOfAnotherTenant {
            backup: from.to_owned(),
            of: source.spec.tenant,
            tenant: tenant.to_owned(),
        });
    }
    create_backup(client, tenant, Some(from)).await
}

async fn create_backup(client: &Client, tenant: &str, restore: Option<&str>) -> Result<String> {
    // A generated suffix on at most 57 characters of the tenant's name: within the 63 of a name.
    let prefix: String = tenant.chars().take(50).collect();
    let what = if restore.is_some() {
        "restore"
    } else {
        "manual"
    };
    let object = TenantBackup {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-{what}-", prefix.trim_end_matches('-'))),
            ..ObjectMeta::default()
        },
        spec: TenantBackupSpec {
            tenant: tenant.to_owned(),
            reason: BackupReason::Manual,
            restore: restore.map(str::to_owned),
            instance: None,
        },
        status: None,
    };
    let created = Api::<TenantBackup>::all(client.clone())
        .create(&PostParams::default(), &object)
        .await?;
    Ok(created.name_any())
}

/// `adopt NAMESPACE|TENANT`: recreates the Tenant a deletion of the Tenant CRD released from
/// what the controller wrote onto its namespace (`stackplane_core::tenant::adoption`). The
/// controller then adopts the namespace as it is (same volumes, same credentials) and removes
/// the marks. Returns the Tenant's name.
pub async fn adopt(client: &Client, target: &str) -> Result<String> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut found = namespaces.get_opt(target).await?;
    if found.is_none() {
        found = namespaces.get_opt(&namespace_name(target)).await?;
    }
    let ns = found.ok_or_else(|| CliError::NamespaceNotFound(target.to_owned()))?;
    let tenants: Api<Tenant> = Api::all(client.clone());
    // Adopted already (the controller removed the marks): say so rather than "not orphaned".
    if let Some(owner) = ns.labels().get(stackplane_core::contract::labels::TENANT) {
        if tenants.get_metadata_opt(owner).await?.is_some() {
            return Err(CliError::TenantExists(owner.clone()));
        }
    }
    let tenant = adoption::tenant_from_namespace(&ns)?;
    let name = tenant.name_any();
    match tenants.create(&PostParams::default(), &tenant).await {
        Ok(_) => Ok(name),
        Err(kube::Error::Api(e)) if e.code == 409 => Err(CliError::TenantExists(name)),
        Err(e) => Err(not_found(e, &name, || CliError::CrdsMissing)),
    }
}

/// `rollout pause|resume|rollback`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutAction {
    Pause,
    Resume,
    Rollback,
}

impl RolloutAction {
    fn as_str(self) -> &'static str {
        match self {
            RolloutAction::Pause => "pause",
            RolloutAction::Resume => "resume",
            RolloutAction::Rollback => "rollback",
        }
    }
}

/// Asks the rollout controller to pause, resume or roll back the Platform's rollout.
pub async fn rollout_control(client: &Client, platform: &str, action: RolloutAction) -> Result<()> {
    get_platform(client, platform).await?;
    let patch = json!({"metadata": {"annotations": {ROLLOUT_CONTROL: action.as_str()}}});
    Api::<Platform>::all(client.clone())
        .patch(
            platform,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

/// Where the Platform's rollout stands.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutReport {
    pub platform: String,
    pub current_revision: Option<String>,
    pub update_revision: Option<String>,
    pub rollout: Option<stackplane_crds::RolloutStatus>,
}

pub async fn rollout_status(client: &Client, platform: &str) -> Result<RolloutReport> {
    let p = get_platform(client, platform).await?;
    let status = p.status.unwrap_or_default();
    Ok(RolloutReport {
        platform: platform.to_owned(),
        current_revision: status.current_revision,
        update_revision: status.update_revision,
        rollout: status.rollout,
    })
}

pub fn render_rollout(r: &RolloutReport) -> String {
    let mut out = format!(
        "Platform {}  current {}  update {}\n",
        r.platform,
        r.current_revision.as_deref().unwrap_or("-"),
        r.update_revision.as_deref().unwrap_or("-")
    );
    match &r.rollout {
        None => out.push_str("no rollout recorded\n"),
        Some(s) => out.push_str(&format!(
            "revision {}  phase {:?}  wave {}/{}  updated {}/{}  healthy {}  failed {}  pinned {}\n{}\n",
            s.revision, s.phase, s.wave, s.waves, s.updated, s.total, s.healthy, s.failed, s.pinned, s.message
        )),
    }
    out
}

async fn get_platform(client: &Client, name: &str) -> Result<Platform> {
    Api::<Platform>::all(client.clone())
        .get(name)
        .await
        .map_err(|e| not_found(e, name, || CliError::PlatformNotFound(name.to_owned())))
}

/// What the cloud garbage collector found, as its Events about the controller's Lease say
/// (`OrphanFound` in report mode, `OrphanDeleted`, `OrphanDeleteFailed`), newest first.
/// `namespace` is the controller's.
pub async fn orphans(client: &Client, namespace: &str) -> Result<Vec<EventLine>> {
    let params = ListParams::default().fields("involvedObject.kind=Lease");
    let events: Vec<Event> = Api::<Event>::namespaced(client.clone(), namespace)
        .list(&params)
        .await?
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref().is_some_and(|r| r.starts_with("Orphan")))
        .collect();
    Ok(newest_first(events))
}
