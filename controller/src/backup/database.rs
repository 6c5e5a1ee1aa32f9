//! The database part: a Job in the tenant's namespace that dumps the tenant's database into the
//! namespace's dump claim. The Job belongs to its TenantBackup (owner reference), so deleting
//! the backup removes the Job.
//!
//! Dumps are pruned with their backups, so the claim never fills: each backup's dump goes into
//! a directory of its own on the claim (`/dumps/<backup>`), and every dump Job first removes
//! the directories of backups that no longer exist (the Job is given the list of those that
//! do). The controller cannot delete files itself (they live on the claim, reachable only from
//! a pod), and a separate prune Job per deleted backup would need a finalizer waiting on a pod;
//! sweeping at the next dump needs neither and also repairs what an earlier failed Job left.
//! A directory younger than [`SWEEP_MIN_AGE_MINUTES`] is never removed: it may be the dump of a
//! backup created after this Job's list was made.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use kube::{Client, Resource};
use serde_json::json;
use stackplane_crds::naming::{label_value, suffixed_name};
use stackplane_crds::{BackupPart, BackupPartKind, BackupPartState, TenantBackup};

use super::error::Result;
use super::parts;

/// Field manager of what the backup reconciler applies.
const FIELD_MANAGER: &str = stackplane_core::contract::field_managers::CONTROLLER;

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

/// Name of the dump Job of `backup` (at most 63 characters, ending in `-dump`).
pub fn job_name(backup: &str) -> String {
    suffixed_name(backup, "dump")
}

/// Where the dump claim is mounted in the Job.
const DUMPS_ROOT: &str = "/dumps";

/// Directory on the dump claim that holds the dump of `backup` (relative to the claim's root).
pub fn dump_dir(backup: &str) -> String {
    label_value(backup)
}

/// Minutes a dump directory must have existed before a sweep may remove it.
pub const SWEEP_MIN_AGE_MINUTES: u32 = 60;

/// The shell script every dump Job runs before the configured command: removes the dump
/// directories of backups not in `$STACKPLANE_KEEP_DUMPS` (space-separated directory names)
/// and older than [`SWEEP_MIN_AGE_MINUTES`], then makes `$DUMP_DIR`.
pub fn sweep_script() -> String {
    format!(
        r#"for d in "$DUMPS_ROOT"/*/; do
  [ -d "$d" ] || continue
  n=$(basename "$d")
  case " $STACKPLANE_KEEP_DUMPS " in *" $n "*) continue ;; esac
  if [ -n "$(find "$d" -maxdepth 0 -mmin +{SWEEP_MIN_AGE_MINUTES})" ]; then
    echo "pruning the dump of deleted backup $n"
    rm -rf "$d"
  fi
done
mkdir -p "$DUMP_DIR""#
    )
}

/// What the dump Job runs after the configured command: the bytes of the backup's dump
/// directory into the container's termination message, which the backup's part records
/// ([`parts::dump_size`]). A runtime that gives no termination log loses only the size.
pub fn size_report() -> String {
    format!(
        r#"dump_bytes=$(cat "$DUMP_DIR"/* 2>/dev/null | wc -c)
echo "{}$dump_bytes" >/dev/termination-log || true"#,
        parts::DUMP_BYTES_KEY
    )
}

/// The dump Job of `backup` (pure: no network). `keep`: the tenant's backups whose dumps stay
/// on the claim (this one included or not: it is kept either way).
pub fn job(
    backup: &TenantBackup,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    config: &DumpConfig,
    keep: &[String],
) -> Result<Job> {
    let name = backup.metadata.name.clone().unwrap_or_default();
    let mut kept: Vec<String> = keep.iter().map(|b| dump_dir(b)).collect();
    kept.push(dump_dir(&name));
    kept.sort();
    kept.dedup();
    let script = format!(
        "set -e\n{}\n{}\n{}",
        sweep_script(),
        config.command,
        size_report()
    );
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
                        "command": ["/bin/sh", "-c", script],
                        "env": [
                            { "name": "STACKPLANE_TENANT", "value": backup.spec.tenant },
                            { "name": "STACKPLANE_BACKUP", "value": name },
                            { "name": "DUMPS_ROOT", "value": DUMPS_ROOT },
                            { "name": "DUMP_DIR", "value": format!("{DUMPS_ROOT}/{}", dump_dir(&name)) },
                            { "name": "STACKPLANE_KEEP_DUMPS", "value": kept.join(" ") },
                        ],
                        "envFrom": [{ "secretRef": { "name": config.secret, "optional": true } }],
                        "volumeMounts": [{ "name": "dumps", "mountPath": DUMPS_ROOT }],
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
    let name = job_name(&backup.name_any());
    if let Some(existing) = jobs.get_opt(&name).await? {
        let mut part = parts::database_part(&existing);
        if part.state == BackupPartState::Completed {
            part.size_bytes = reported_size(client, namespace, &name).await?;
        }
        return Ok(part);
    }
    let keep = live_backups(client, &backup.spec.tenant).await?;
    let desired = job(backup, namespace, labels, config, &keep)?;
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

/// The size the dump Job's pod reported (the Job controller labels its pods `job-name`).
async fn reported_size(client: &Client, namespace: &str, job: &str) -> Result<Option<i64>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(&kube::api::ListParams::default().labels(&format!("job-name={job}")))
        .await?;
    Ok(parts::dump_size(&list.items))
}

/// Names of the tenant's backups that exist and are not being deleted (restores make no dump,
/// but keeping their names is harmless).
async fn live_backups(client: &Client, tenant: &str) -> Result<Vec<String>> {
    let api: Api<TenantBackup> = Api::all(client.clone());
    let list = api.list(&kube::api::ListParams::default()).await?;
    Ok(list
        .items
        .into_iter()
        .filter(|b| b.spec.tenant == tenant && b.metadata.deletion_timestamp.is_none())
        .map(|b| b.name_any())
        .collect())
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
                instance: None,
            },
        );
        backup.metadata.uid = Some("uid-1".into());
        let labels = stackplane_core::contract::labels::tenant_labels("acme", "crm");
        let config = DumpConfig {
            image: "example/dump:1".into(),
            command: "echo dump".into(),
            ..DumpConfig::default()
        };
        let job = job(
            &backup,
            "tenant-acme",
            &labels,
            &config,
            &["acme-old".into()],
        )
        .expect("job");
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
        let script = &c.command.as_ref().expect("cmd")[2];
        assert!(script.contains("\necho dump\n"), "{script}");
        assert!(script.ends_with(&size_report()), "{script}");
        let env = |k: &str| {
            c.env
                .iter()
                .flatten()
                .find(|e| e.name == k)
                .and_then(|e| e.value.clone())
                .unwrap_or_default()
        };
        assert_eq!(env("DUMP_DIR"), "/dumps/acme-20260101-030000");
        assert_eq!(
            env("STACKPLANE_KEEP_DUMPS"),
            "acme-20260101-030000 acme-old"
        );
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    }

    #[test]
    fn long_backup_names_give_fitting_job_names_and_dirs() {
        let backup = format!("{}-pre-delete", "t".repeat(63));
        let job = job_name(&backup);
        assert!(stackplane_crds::naming::is_dns_label(&job), "{job}");
        assert!(job.ends_with("-dump"), "{job}");
        let dir = dump_dir(&backup);
        assert!(stackplane_crds::naming::is_label_value(&dir), "{dir}");
    }

    /// Runs the sweep with the real /bin/sh on a directory standing in for the claim.
    #[test]
    fn the_sweep_removes_only_old_dumps_of_deleted_backups() {
        let root = std::env::temp_dir().join(format!("dump-sweep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["kept-old", "gone-old", "gone-new"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
            std::fs::write(root.join(d).join("x.dump"), b"x").expect("write");
        }
        for d in ["kept-old", "gone-old"] {
            let status = std::process::Command::new("touch")
                .args(["-d", "3 hours ago"])
                .arg(root.join(d))
                .status()
                .expect("touch");
            assert!(status.success());
        }
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", &format!("set -e\n{}", sweep_script())])
            .env("DUMPS_ROOT", &root)
            .env("DUMP_DIR", root.join("this-backup"))
            .env("STACKPLANE_KEEP_DUMPS", "kept-old this-backup")
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            root.join("kept-old/x.dump").exists(),
            "a live backup's dump is kept"
        );
        assert!(
            !root.join("gone-old").exists(),
            "an old dump of a deleted backup goes"
        );
        assert!(
            root.join("gone-new/x.dump").exists(),
            "a young directory is never swept"
        );
        assert!(
            root.join("this-backup").is_dir(),
            "the backup's own directory is made"
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
