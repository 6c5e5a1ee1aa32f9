//! Pure logic of a backup's parts: the state of one part from what was observed of the thing
//! it made, the summary of failed parts, and when a finished backup expires. No network, no
//! clock: the reconciler passes `now` in.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use stackplane_core::cloud::model::{ObservedSnapshot, ObservedVolume};
use stackplane_crds::{BackupPart, BackupPartKind, BackupPartState};

/// What was observed of an EBS snapshot (or of a volume restored from one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ec2Object {
    /// Snapshot id or volume id.
    pub id: String,
    /// EC2 state: `pending`/`completed`/`error` for snapshots,
    /// `creating`/`available`/`in-use`/`error` for volumes.
    pub state: String,
    /// EC2's explanation of an `error` state, when it gives one.
    pub message: Option<String>,
}

impl From<ObservedSnapshot> for Ec2Object {
    fn from(s: ObservedSnapshot) -> Self {
        Ec2Object {
            id: s.id,
            state: s.state,
            message: s.message,
        }
    }
}

impl From<ObservedVolume> for Ec2Object {
    fn from(v: ObservedVolume) -> Self {
        Ec2Object {
            id: v.id,
            state: v.state,
            message: None,
        }
    }
}

/// The part of an EBS snapshot of `volume`, given the snapshot found for it.
pub fn ebs_snapshot_part(volume: &str, snapshot: &Ec2Object) -> BackupPart {
    let (state, message) = match snapshot.state.as_str() {
        "completed" => (BackupPartState::Completed, None),
        "error" => (
            BackupPartState::Failed,
            Some(
                snapshot
                    .message
                    .clone()
                    .unwrap_or_else(|| "EC2 reports the snapshot in state error".to_owned()),
            ),
        ),
        // pending, recoverable, recovering: EC2 is still working on it.
        _ => (BackupPartState::InProgress, None),
    };
    BackupPart {
        kind: BackupPartKind::EbsSnapshot,
        id: Some(snapshot.id.clone()),
        source: Some(volume.to_owned()),
        state,
        message,
        size_bytes: None,
    }
}

/// The part of a volume restored from `snapshot`, given the volume found for it.
pub fn ebs_restore_part(snapshot: &str, volume: &Ec2Object) -> BackupPart {
    let (state, message) = match volume.state.as_str() {
        "available" | "in-use" => (BackupPartState::Completed, None),
        "error" | "deleting" | "deleted" => (
            BackupPartState::Failed,
            Some(volume.message.clone().unwrap_or_else(|| {
                format!("EC2 reports the restored volume in state {}", volume.state)
            })),
        ),
        _ => (BackupPartState::InProgress, None),
    };
    BackupPart {
        kind: BackupPartKind::EbsSnapshot,
        id: Some(volume.id.clone()),
        source: Some(snapshot.to_owned()),
        state,
        message,
        size_bytes: None,
    }
}

/// The part of a CSI VolumeSnapshot of `claim`, from the snapshot's `status`.
pub fn volume_snapshot_part(
    claim: &str,
    snapshot_name: &str,
    status: Option<&serde_json::Value>,
) -> BackupPart {
    let ready = status
        .and_then(|s| s.get("readyToUse"))
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let error = status
        .and_then(|s| s.get("error"))
        .and_then(|e| e.get("message"))
        .and_then(serde_json::Value::as_str);
    let (state, message) = match (ready, error) {
        (true, _) => (BackupPartState::Completed, None),
        (false, Some(message)) => (BackupPartState::Failed, Some(message.to_owned())),
        (false, None) => (BackupPartState::InProgress, None),
    };
    BackupPart {
        kind: BackupPartKind::VolumeSnapshot,
        id: Some(snapshot_name.to_owned()),
        source: Some(claim.to_owned()),
        state,
        message,
        size_bytes: None,
    }
}

/// The part of a volume claim when the cluster serves no snapshot API: recorded, never skipped.
pub fn volume_snapshot_unsupported(claim: &str, group: &str) -> BackupPart {
    BackupPart {
        kind: BackupPartKind::VolumeSnapshot,
        id: None,
        source: Some(claim.to_owned()),
        state: BackupPartState::Unsupported,
        message: Some(format!(
            "volume snapshots are unsupported on this cluster: the API server serves no {group} (v1 or v1beta1) VolumeSnapshot"
        )),
        size_bytes: None,
    }
}

/// The part of a restored volume claim, from the claim's `status.phase`.
pub fn restored_claim_part(snapshot: &str, claim: &str, phase: Option<&str>) -> BackupPart {
    let (state, message) = match phase {
        Some("Bound") => (BackupPartState::Completed, None),
        Some("Lost") => (
            BackupPartState::Failed,
            Some("the restored claim lost its volume".to_owned()),
        ),
        _ => (BackupPartState::InProgress, None),
    };
    BackupPart {
        kind: BackupPartKind::VolumeSnapshot,
        id: Some(claim.to_owned()),
        source: Some(snapshot.to_owned()),
        state,
        message,
        size_bytes: None,
    }
}

/// The part of the database dump, from its Job's conditions.
pub fn database_part(job: &Job) -> BackupPart {
    let name = job.metadata.name.clone();
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let holds = |type_: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == "True")
    };
    let (state, message) = if holds("Complete").is_some() {
        (BackupPartState::Completed, None)
    } else if let Some(failed) = holds("Failed") {
        let why = match (failed.reason.as_deref(), failed.message.as_deref()) {
            (Some(r), Some(m)) => format!("dump Job failed: {r}: {m}"),
            (Some(r), None) => format!("dump Job failed: {r}"),
            (None, Some(m)) => format!("dump Job failed: {m}"),
            (None, None) => "dump Job failed".to_owned(),
        };
        (BackupPartState::Failed, Some(why))
    } else {
        (BackupPartState::InProgress, None)
    };
    BackupPart {
        kind: BackupPartKind::Database,
        id: name,
        source: None,
        state,
        message,
        size_bytes: None,
    }
}

/// What the dump Job's script writes to its termination message after the dump: the bytes of
/// the backup's dump directory (see `database::SIZE_REPORT`).
pub const DUMP_BYTES_KEY: &str = "dumpBytes=";

/// The dump's size from the dump Job's pods: the termination message of a `dump` container
/// that exited 0 (`dumpBytes=<n>`). `None` when no pod reported one (pods removed, or a
/// configured command whose image cannot write the message).
pub fn dump_size(pods: &[Pod]) -> Option<i64> {
    pods.iter()
        .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
        .flatten()
        .filter(|c| c.name == "dump")
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
        .filter(|t| t.exit_code == 0)
        .filter_map(|t| t.message.as_deref())
        .find_map(|m| {
            m.lines()
                .find_map(|l| l.trim().strip_prefix(DUMP_BYTES_KEY))
                .and_then(|n| n.trim().parse::<i64>().ok())
                .filter(|n| *n >= 0)
        })
}

/// A part that failed before anything was made (the call to make it was refused).
pub fn failed_part(kind: BackupPartKind, source: Option<&str>, message: String) -> BackupPart {
    BackupPart {
        kind,
        id: None,
        source: source.map(str::to_owned),
        state: BackupPartState::Failed,
        message: Some(message),
        size_bytes: None,
    }
}

/// Whether a part will change no more.
pub fn is_finished(part: &BackupPart) -> bool {
    !matches!(
        part.state,
        BackupPartState::Pending | BackupPartState::InProgress
    )
}

/// One line naming every part that did not complete and why: the message of the backup's
/// `Ready` condition. `None` when every part completed.
pub fn failure_summary(parts: &[BackupPart]) -> Option<String> {
    let lines: Vec<String> = parts
        .iter()
        .filter(|p| {
            matches!(
                p.state,
                BackupPartState::Failed | BackupPartState::Unsupported
            )
        })
        .map(|p| {
            let what = p.source.as_deref().or(p.id.as_deref()).unwrap_or("-");
            let kind = serde_json::to_value(p.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            format!(
                "{kind} {what} {:?}: {}",
                p.state,
                p.message.as_deref().unwrap_or("no reason given")
            )
        })
        .collect();
    (!lines.is_empty()).then(|| lines.join("; "))
}

/// When a backup finished at `completed` expires, given the tenant's `retentionDays`; `None`
/// (kept until deleted by hand) when the tenant sets no retention.
pub fn expires_at(completed: Timestamp, retention_days: Option<i32>) -> Option<Timestamp> {
    let days = retention_days.filter(|d| *d > 0)?;
    completed
        .checked_add(SignedDuration::from_hours(24 * i64::from(days)))
        .ok()
}

/// Whether a backup that expires at `expires` is due for deletion at `now`.
pub fn is_expired(expires: Option<Timestamp>, now: Timestamp) -> bool {
    expires.is_some_and(|e| e <= now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use stackplane_crds::BackupPhase;

    fn ec2(id: &str, state: &str) -> Ec2Object {
        Ec2Object {
            id: id.into(),
            state: state.into(),
            message: None,
        }
    }

    #[test]
    fn ebs_snapshot_states() {
        let p = ebs_snapshot_part("vol-1", &ec2("snap-1", "completed"));
        assert_eq!(p.state, BackupPartState::Completed);
        assert_eq!(p.id.as_deref(), Some("snap-1"));
        assert_eq!(p.source.as_deref(), Some("vol-1"));
        assert_eq!(
            ebs_snapshot_part("vol-1", &ec2("snap-1", "pending")).state,
            BackupPartState::InProgress
        );
        let failed = ebs_snapshot_part("vol-1", &ec2("snap-1", "error"));
        assert_eq!(failed.state, BackupPartState::Failed);
        assert!(failed.message.is_some());
        assert_eq!(
            ebs_restore_part("snap-1", &ec2("vol-2", "available")).state,
            BackupPartState::Completed
        );
        assert_eq!(
            ebs_restore_part("snap-1", &ec2("vol-2", "creating")).state,
            BackupPartState::InProgress
        );
    }

    #[test]
    fn volume_snapshot_states() {
        let ready = serde_json::json!({"readyToUse": true});
        let broken = serde_json::json!({"readyToUse": false, "error": {"message": "no driver"}});
        assert_eq!(
            volume_snapshot_part("data", "b-data", Some(&ready)).state,
            BackupPartState::Completed
        );
        let p = volume_snapshot_part("data", "b-data", Some(&broken));
        assert_eq!(p.state, BackupPartState::Failed);
        assert_eq!(p.message.as_deref(), Some("no driver"));
        assert_eq!(
            volume_snapshot_part("data", "b-data", None).state,
            BackupPartState::InProgress
        );
        let u = volume_snapshot_unsupported("data", "snapshot.storage.k8s.io");
        assert_eq!(u.state, BackupPartState::Unsupported);
        assert!(u
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("unsupported"));
    }

    fn job(conditions: &[(&str, &str, Option<&str>)]) -> Job {
        Job {
            metadata: kube::api::ObjectMeta {
                name: Some("b-db".into()),
                ..Default::default()
            },
            status: Some(JobStatus {
                conditions: Some(
                    conditions
                        .iter()
                        .map(|(t, s, r)| JobCondition {
                            type_: (*t).into(),
                            status: (*s).into(),
                            reason: r.map(str::to_owned),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn database_part_follows_job_conditions() {
        assert_eq!(database_part(&job(&[])).state, BackupPartState::InProgress);
        assert_eq!(
            database_part(&job(&[("Complete", "True", None)])).state,
            BackupPartState::Completed
        );
        let failed = database_part(&job(&[("Failed", "True", Some("BackoffLimitExceeded"))]));
        assert_eq!(failed.state, BackupPartState::Failed);
        assert_eq!(
            failed.message.as_deref(),
            Some("dump Job failed: BackoffLimitExceeded")
        );
        assert_eq!(
            database_part(&job(&[("Failed", "False", None)])).state,
            BackupPartState::InProgress
        );
    }

    #[test]
    fn unsupported_volume_snapshots_make_a_backup_partial_not_failed() {
        let parts = vec![
            ebs_snapshot_part("vol-1", &ec2("snap-1", "completed")),
            volume_snapshot_unsupported("data", "snapshot.storage.k8s.io"),
        ];
        assert_eq!(
            BackupPhase::from_parts(&parts),
            BackupPhase::PartiallyFailed
        );
        let summary = failure_summary(&parts).expect("summary");
        assert!(
            summary.contains("volume-snapshot data Unsupported"),
            "{summary}"
        );
        assert_eq!(failure_summary(&parts[..1]), None);
    }

    #[test]
    fn expiry_follows_retention_days() {
        let done: Timestamp = "2026-01-01T00:00:00Z".parse().expect("ts");
        let exp = expires_at(done, Some(7)).expect("expiry");
        assert_eq!(exp.to_string(), "2026-01-08T00:00:00Z");
        assert_eq!(expires_at(done, None), None);
        assert_eq!(expires_at(done, Some(0)), None);
        assert!(!is_expired(Some(exp), done));
        assert!(is_expired(Some(exp), exp));
        assert!(!is_expired(None, exp));
    }

    fn pod(name: &str, exit_code: i32, message: Option<&str>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": "x" },
            "status": { "containerStatuses": [{
                "name": name, "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": { "terminated": { "exitCode": exit_code, "message": message } },
            }]},
        }))
        .expect("a Pod")
    }

    #[test]
    fn the_dump_size_comes_from_a_successful_dump_container_only() {
        assert_eq!(
            dump_size(&[pod("dump", 0, Some("dumpBytes=1083\n"))]),
            Some(1083)
        );
        assert_eq!(
            dump_size(&[
                pod("dump", 1, Some("dumpBytes=9")),
                pod("dump", 0, Some("dumpBytes=7"))
            ]),
            Some(7),
            "a failed attempt's pod does not count"
        );
        assert_eq!(dump_size(&[pod("other", 0, Some("dumpBytes=5"))]), None);
        assert_eq!(dump_size(&[pod("dump", 0, Some("dumpBytes=-1"))]), None);
        assert_eq!(dump_size(&[pod("dump", 0, Some("done"))]), None);
        assert_eq!(dump_size(&[pod("dump", 0, None)]), None);
        assert_eq!(dump_size(&[]), None);
    }
}
