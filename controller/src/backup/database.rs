//! The database part: a Job in the tenant's namespace that dumps the tenant's database into the
//! namespace's dump claim. The Job belongs to its TenantBackup (owner reference), so deleting
//! the backup removes the Job; the dumps stay on the claim.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde_json::json;
use stackplane_crds::naming::dns_label;
use stackplane_crds::{BackupPart, BackupPartKind, TenantBackup};

use super::error::Result;
use super::parts;

/// Field manager of what the backup reconciler applies.
const FIELD_MANAGER: &str = "stackplane-controller";

/// How the dump Job is built.
#[derive(Debug, Clone)]
pub struct DumpConfig {
    /// Image of the dump Job.
    pub image: String,
    /// Shell command of the dump Job (`sh -c`). It sees `STACKPLANE_TENANT`,
    /// `STACKPLANE_BACKUP`, `DUMP_DIR` and every key of the Secret `secret`.
    pub command: String,
    /// Secret of the tenant's namespace whose keys become the Job's environment (e.g.
    /// `DATABASE_URL`); optional, so a tenant without it fails in the Job, visibly.
    pub secret: String,
    /// Claim in the tenant's namespace the dumps are written to; made when missing.
    pub claim: String,
    /// Size of that claim when it is made.
    pub claim_size: String,
    /// Seconds the Job may run before Kubernetes fails it.
    pub deadline_secs: i64,
}

impl Default for DumpConfig {
    fn default() -> Self {
        DumpConfig {
            image: "postgres:15-alpine".to_owned(),
            command: r#"pg_dump --format=custom --file="$DUMP_DIR/$STACKPLANE_BACKUP.dump" "$DATABASE_URL""#.to_owned(),
            secret: "database".to_owned(),
            claim: "database-dumps".to_owned(),
            claim_size: "10Gi".to_owned(),
            deadline_secs: 3600,
        }
    }
}

/// Name of the dump Job of `backup`.
pub fn job_name(backup: &str) -> String {
    dns_label(&format!("{backup}-dump"))
}

/// Where the dump claim is mounted in the Job.
const DUMP_DIR: &str = "/dumps";

/// The dump Job of `backup` (pure: no network).
pub fn job(
    backup: &TenantBackup,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    config: &DumpConfig,
) -> Result<Job> {
    let name = backup.metadata.name.clone().unwrap_or_default();
    let owner = backup.controller_owner_ref(&());
    let body = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(&name),
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
        },
        "spec": {
            "backoffLimit": 2,
            "activeDeadlineSeconds": config.deadline_secs,
            "template": {
                "metadata": { "labels": labels },
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": false,
                    // The tenant namespaces enforce the `restricted` Pod Security level.
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": 65534,
                        "runAsGroup": 65534,
                        "fsGroup": 65534,
                        "seccompProfile": { "type": "RuntimeDefault" },
                    },
                    "containers": [{
                        "name": "dump",
                        "image": config.image,
                        "command": ["/bin/sh", "-c", config.command],
                        "env": [
                            { "name": "STACKPLANE_TENANT", "value": backup.spec.tenant },
                            { "name": "STACKPLANE_BACKUP", "value": name },
                            { "name": "DUMP_DIR", "value": DUMP_DIR },
                        ],
                        "envFrom": [{ "secretRef": { "name": config.secret, "optional": true } }],
                        "volumeMounts": [{ "name": "dumps", "mountPath": DUMP_DIR }],
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "capabilities": { "drop": ["ALL"] },
                        },
                    }],
                    "volumes": [{ "name": "dumps", "persistentVolumeClaim": { "claimName": config.claim } }],
                },
            },
        },
    });
    Ok(serde_json::from_value(body)?)
}

/// Makes the dump claim and the Job when missing, and returns the part from the Job's state.
pub async fn dump(
    client: &Client,
    backup: &TenantBackup,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    config: &DumpConfig,
) -> Result<BackupPart> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let desired = job(backup, namespace, labels, config)?;
    let name = desired.metadata.name.clone().unwrap_or_default();
    if let Some(existing) = jobs.get_opt(&name).await? {
        return Ok(parts::database_part(&existing));
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    if claims.get_opt(&config.claim).await?.is_none() {
        let claim = json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": { "name": config.claim, "namespace": namespace, "labels": labels },
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": { "requests": { "storage": config.claim_size } },
            },
        });
        let params = PatchParams::apply(FIELD_MANAGER);
        if let Err(e) = claims
            .patch(&config.claim, &params, &Patch::Apply(&claim))
            .await
        {
            return refused(e, format!("dump claim {}", config.claim));
        }
    }
    match jobs.create(&PostParams::default(), &desired).await {
        Ok(created) => {
            tracing::info!(tenant = %backup.spec.tenant, namespace, job = %name, "dump job created");
            Ok(parts::database_part(&created))
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            Ok(parts::database_part(&jobs.get(&name).await?))
        }
        Err(e) => refused(e, format!("dump Job {name}")),
    }
}

/// A refusal the API server will repeat (missing namespace, quota, invalid) fails the part;
/// anything else is retried.
fn refused(error: kube::Error, what: String) -> Result<BackupPart> {
    match error {
        kube::Error::Api(s) if matches!(s.code, 403 | 404 | 422) => Ok(parts::failed_part(
            BackupPartKind::Database,
            None,
            format!("{what} refused: {}", s.message),
        )),
        e => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stackplane_crds::TenantBackupSpec;

    #[test]
    fn job_is_labelled_owned_and_runs_the_configured_command() {
        let mut backup = TenantBackup::new(
            "acme-20260101-030000",
            TenantBackupSpec {
                tenant: "acme".into(),
                reason: stackplane_crds::BackupReason::Scheduled,
                restore: None,
            },
        );
        backup.metadata.uid = Some("uid-1".into());
        let labels = stackplane_crds::labels::tenant_labels("acme", "crm");
        let config = DumpConfig {
            image: "example/dump:1".into(),
            command: "echo dump".into(),
            ..DumpConfig::default()
        };
        let job = job(&backup, "tenant-acme", &labels, &config).expect("job");
        assert_eq!(
            job.metadata.name.as_deref(),
            Some("acme-20260101-030000-dump")
        );
        assert_eq!(job.metadata.labels.as_ref(), Some(&labels));
        let owner = &job.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(owner.kind, "TenantBackup");
        assert_eq!(owner.uid, "uid-1");
        let pod = job.spec.expect("spec").template.spec.expect("pod");
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("example/dump:1"));
        assert_eq!(c.command.as_ref().expect("cmd")[2], "echo dump");
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    }
}
