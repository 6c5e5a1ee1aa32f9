//! Snapshot before terminate (pure): whatever asks for a dedicated instance to go (a downgrade
//! to a tier without `dedicatedInstance`, a tier or Platform change, a duplicate, the tenant's
//! deletion), the instance is terminated only after a `pre-terminate` backup of it — the EBS
//! snapshots of every volume attached to it — completed. Its root volume is
//! `DeleteOnTermination`: without the snapshots the disk is gone.
//!
//! The rule after the wait is the final backup's ([`crate::tenant::deletion::after_backup`]): a
//! backup that failed or timed out holds the termination (`DeletionHeld`) until a person
//! releases it (annotation [`crate::contract::labels::RELEASE_DELETION`]) or the operator chose
//! `--on-backup-failure=delete`. The controller observes each instance's backup
//! ([`crate::tenant::deletion::assess`]), asks [`decide`], and carries out the answer.

use std::time::Duration;

use stackplane_crds::naming::suffixed_name;

use crate::tenant::deletion::{
    after_backup, AfterBackup, FinalBackup, HoldReason, OnBackupFailure,
};

/// Name of the `pre-terminate` backup of `instance` of `tenant`: `<tenant>-pre-terminate-<instance
/// id>`, a DNS label (a long tenant name is cut and hashed, the suffix kept readable). One per
/// instance: instance ids are never reused, so a retried or restarted reconcile finds the same
/// backup, and every instance the tenant ever had gets its own.
pub fn backup_name(tenant: &str, instance: &str) -> String {
    suffixed_name(tenant, &format!("pre-terminate-{instance}"))
}

/// What to do next about one instance the plan wants terminated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No `pre-terminate` backup of it yet: request one, terminate nothing.
    RequestBackup,
    /// Its backup runs: look again within `retry_in`.
    WaitForBackup { retry_in: Duration },
    /// Its backup failed or timed out: terminate nothing until a person releases it.
    Hold { reason: HoldReason },
    /// Terminate it. `overridden`: its backup did not complete, and a release or the operator's
    /// `--on-backup-failure=delete` lets it go anyway.
    Terminate { overridden: bool },
}

/// What to do next about one instance, given where its `pre-terminate` backup stands, whether a
/// person released the tenant's hold, and what the operator chose for failed backups (pure).
pub fn decide(backup: &FinalBackup, released: bool, on_backup_failure: OnBackupFailure) -> Step {
    match backup {
        FinalBackup::Absent => Step::RequestBackup,
        FinalBackup::Unfinished { retry_in, .. } => Step::WaitForBackup {
            retry_in: *retry_in,
        },
        FinalBackup::Over { outcome, .. } => {
            match after_backup(*outcome, released, on_backup_failure) {
                AfterBackup::Proceed { overridden } => Step::Terminate { overridden },
                AfterBackup::Hold { timed_out } => Step::Hold {
                    reason: if timed_out {
                        HoldReason::PreTerminateBackupTimedOut
                    } else {
                        HoldReason::PreTerminateBackupFailed
                    },
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::deletion::Outcome;
    use stackplane_crds::naming::is_dns_label;
    use stackplane_crds::BackupPhase;

    const POLL: Duration = Duration::from_secs(5);

    fn over(outcome: Outcome) -> FinalBackup {
        FinalBackup::Over {
            name: "b".into(),
            outcome,
            recorded: false,
        }
    }

    #[test]
    fn one_backup_per_instance_and_the_name_fits() {
        assert_eq!(
            backup_name("acme", "i-0123456789abcdef0"),
            "acme-pre-terminate-i-0123456789abcdef0"
        );
        assert_ne!(
            backup_name("acme", "i-0123456789abcdef0"),
            backup_name("acme", "i-0123456789abcdef1")
        );
        let long = backup_name(&"t".repeat(63), "i-0123456789abcdef0");
        assert!(is_dns_label(&long), "{long}");
        assert!(
            long.ends_with("-pre-terminate-i-0123456789abcdef0"),
            "{long}"
        );
        // Two long tenant names sharing a prefix stay apart.
        assert_ne!(
            long,
            backup_name(&format!("{}u", "t".repeat(62)), "i-0123456789abcdef0")
        );
        // Whatever an instance id looks like, the name is a DNS label.
        assert!(is_dns_label(&backup_name("acme", "I-ABC_def")));
    }

    /// Every observed state of the backup × released or not × hold or delete on failure: the
    /// whole decision as one table.
    #[test]
    fn every_backup_state_release_and_policy() {
        use OnBackupFailure::{Delete, Hold};
        use Step as S;
        let unfinished = |phase| FinalBackup::Unfinished {
            name: "b".into(),
            phase,
            retry_in: POLL,
        };
        let wait = || S::WaitForBackup { retry_in: POLL };
        let failed = || S::Hold {
            reason: HoldReason::PreTerminateBackupFailed,
        };
        let timed_out = || S::Hold {
            reason: HoldReason::PreTerminateBackupTimedOut,
        };
        let go = |overridden| S::Terminate { overridden };
        #[rustfmt::skip]
        let table: Vec<(FinalBackup, [Step; 4])> = vec![
            //                                            kept, hold     released, hold  kept, delete  released, delete
            (FinalBackup::Absent,                           [S::RequestBackup, S::RequestBackup, S::RequestBackup, S::RequestBackup]),
            (unfinished(None),                              [wait(), wait(), wait(), wait()]),
            (unfinished(Some(BackupPhase::Pending)),        [wait(), wait(), wait(), wait()]),
            (unfinished(Some(BackupPhase::InProgress)),     [wait(), wait(), wait(), wait()]),
            (over(Outcome::Finished(BackupPhase::Completed)),       [go(false), go(false), go(false), go(false)]),
            (over(Outcome::Finished(BackupPhase::PartiallyFailed)), [failed(), go(true), go(true), go(true)]),
            (over(Outcome::Finished(BackupPhase::Failed)),          [failed(), go(true), go(true), go(true)]),
            (over(Outcome::TimedOut),                               [timed_out(), go(true), go(true), go(true)]),
        ];
        for (backup, expected) in table {
            let inputs = [(false, Hold), (true, Hold), (false, Delete), (true, Delete)];
            for ((released, policy), want) in inputs.into_iter().zip(expected) {
                assert_eq!(
                    decide(&backup, released, policy),
                    want,
                    "{backup:?}, released: {released}, on failure: {policy:?}"
                );
            }
        }
    }

    /// Nothing but a completed backup, a person or the operator's choice lets an instance go:
    /// an absent or unfinished backup never does, whatever the release and the policy say.
    #[test]
    fn no_backup_no_termination() {
        for released in [false, true] {
            for policy in [OnBackupFailure::Hold, OnBackupFailure::Delete] {
                for backup in [
                    FinalBackup::Absent,
                    FinalBackup::Unfinished {
                        name: "b".into(),
                        phase: Some(BackupPhase::InProgress),
                        retry_in: POLL,
                    },
                ] {
                    assert!(
                        !matches!(decide(&backup, released, policy), Step::Terminate { .. }),
                        "{backup:?} {released} {policy:?}"
                    );
                }
            }
        }
    }
}
