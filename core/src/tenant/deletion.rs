//! What the cleanup of a Tenant does next (pure): wait for it to be unpaused, request or wait
//! for its final backup, hold the destruction, destroy, or retain. The controller observes the
//! tenant and its final backup, asks [`decide`], and carries out the answer; the finalizer path
//! (Tenant deleted) and the retention path (cancelled, retention over) both go through it.
//!
//! The promise kept here: no customer data is destroyed unless its final backup of this
//! lifecycle completed, or a person released the hold (annotation
//! [`crate::contract::labels::RELEASE_DELETION`]), or the operator chose
//! [`OnBackupFailure::Delete`] knowingly. And mistakes delete nothing: a Tenant deleted because
//! its CRD is being deleted is released without destroying anything ([`Next::Orphan`]), and
//! more tenants entering deletion within an hour than `--max-deletions-per-hour` wait for a
//! person ([`beyond_budget`], [`HoldReason::MassDeletion`]).

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use stackplane_crds::naming::suffixed_name;
use stackplane_crds::{BackupPhase, DeletionPolicy, Tenant, TenantBackup};

use crate::contract::labels::{FINAL_BACKUP_OUTCOME, RELEASE_DELETION};

/// How many characters of the tenant's uid name its final backup.
const UID_CHARS: usize = 8;

/// Name of the final backup of this lifecycle of `tenant` (uid `uid`): `<tenant>-pre-delete-<first
/// 8 of uid>`, a DNS label (cut and hashed when long, the suffix kept readable). A tenant of the
/// same name deleted again has another uid, so an earlier lifecycle's backup never stands in.
pub fn final_backup_name(tenant: &str, uid: &str) -> String {
    let short: String = uid.chars().filter(|c| *c != '-').take(UID_CHARS).collect();
    suffixed_name(tenant, &format!("pre-delete-{short}"))
}

/// What the operator chose for a final backup that failed or timed out (`--on-backup-failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnBackupFailure {
    /// Hold the destruction until a person releases it (the default).
    #[default]
    Hold,
    /// Destroy anyway: the operator accepts losing the data without a backup.
    Delete,
}

impl std::str::FromStr for OnBackupFailure {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hold" => Ok(OnBackupFailure::Hold),
            "delete" => Ok(OnBackupFailure::Delete),
            other => Err(format!("{other}: expected hold or delete")),
        }
    }
}

/// Which path asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The Tenant was deleted: its finalizer applies the deletion policy.
    TenantDeleted,
    /// Cancelled and past its retention: the Tenant is to be deleted (after its final backup,
    /// whatever its deletion policy).
    RetentionOver,
}

/// How the wait for a final backup ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The backup reached this terminal phase.
    Finished(BackupPhase),
    /// The backup did not finish within the timeout.
    TimedOut,
}

impl Outcome {
    /// A short word for logs, Events and the outcome annotation.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Finished(BackupPhase::Completed) => "Completed",
            Outcome::Finished(BackupPhase::PartiallyFailed) => "PartiallyFailed",
            Outcome::Finished(BackupPhase::Failed) => "Failed",
            Outcome::Finished(BackupPhase::Pending | BackupPhase::InProgress) => "Unfinished",
            Outcome::TimedOut => "TimedOut",
        }
    }

    /// Whether the data is safe in the backup.
    pub fn succeeded(self) -> bool {
        self == Outcome::Finished(BackupPhase::Completed)
    }
}

/// Where this lifecycle's final backup stands, as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinalBackup {
    /// Not requested yet.
    Absent,
    /// Running (or not yet picked up): look again within `retry_in`.
    Unfinished {
        name: String,
        phase: Option<BackupPhase>,
        retry_in: Duration,
    },
    /// The wait is over. `recorded`: the outcome is already annotated on the backup (its Event
    /// was published).
    Over {
        name: String,
        outcome: Outcome,
        recorded: bool,
    },
}

/// Where an existing final backup stands (pure). The timeout runs from the backup's creation,
/// so it survives controller restarts.
pub fn assess(
    backup: &TenantBackup,
    now: Timestamp,
    timeout: Duration,
    poll: Duration,
) -> FinalBackup {
    let name = backup.name_any();
    let recorded = backup.annotations().contains_key(FINAL_BACKUP_OUTCOME);
    let phase = backup.status.as_ref().and_then(|s| s.phase);
    if let Some(p) = phase.filter(|p| p.is_finished()) {
        return FinalBackup::Over {
            name,
            outcome: Outcome::Finished(p),
            recorded,
        };
    }
    let created = backup
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(now);
    let waited = now.duration_since(created).unsigned_abs();
    match timeout.checked_sub(waited) {
        Some(left) if !left.is_zero() => FinalBackup::Unfinished {
            name,
            phase,
            retry_in: poll.min(left),
        },
        _ => FinalBackup::Over {
            name,
            outcome: Outcome::TimedOut,
            recorded,
        },
    }
}

/// Everything the decision reads. A new reason to hold is one more field here and one more arm
/// in [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    pub trigger: Trigger,
    /// The `tenants.stackplane.io` CRD has a deletionTimestamp: the API server deletes every
    /// Tenant because their kind is going, not because anyone meant to delete a customer.
    pub tenant_crd_deleting: bool,
    /// More tenants entered deletion within the hour before this one than the guard allows
    /// ([`beyond_budget`]).
    pub beyond_budget: bool,
    pub policy: DeletionPolicy,
    /// `spec.paused`: nothing is done until it is unpaused.
    pub paused: bool,
    /// A person released a hold (annotation [`RELEASE_DELETION`] is `"true"`).
    pub released: bool,
    /// Whether anything of the tenant is left to back up (its namespace not already
    /// terminating, or a dedicated instance).
    pub has_data: bool,
    pub final_backup: FinalBackup,
    pub on_backup_failure: OnBackupFailure,
}

impl Deletion {
    /// The tenant's own part of the input.
    pub fn of(tenant: &Tenant, trigger: Trigger) -> Self {
        Deletion {
            trigger,
            tenant_crd_deleting: false,
            beyond_budget: false,
            policy: tenant.spec.deletion_policy,
            paused: tenant.spec.paused,
            released: released(tenant),
            has_data: true,
            final_backup: FinalBackup::Absent,
            on_backup_failure: OnBackupFailure::Hold,
        }
    }
}

/// Whether a person released the tenant's deletion hold.
pub fn released(tenant: &Tenant) -> bool {
    tenant
        .annotations()
        .get(RELEASE_DELETION)
        .is_some_and(|v| v == "true")
}

/// Why a destruction is held (the `DeletionHeld` condition's reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldReason {
    FinalBackupFailed,
    FinalBackupTimedOut,
    /// Beyond `--max-deletions-per-hour` ([`beyond_budget`]).
    MassDeletion,
    /// The `pre-terminate` backup of a dedicated instance failed: the instance is not
    /// terminated ([`crate::cloud::terminate`]).
    PreTerminateBackupFailed,
    PreTerminateBackupTimedOut,
}

impl HoldReason {
    /// Every reason, for metrics that start each series at 0.
    pub const ALL: [HoldReason; 5] = [
        HoldReason::FinalBackupFailed,
        HoldReason::FinalBackupTimedOut,
        HoldReason::MassDeletion,
        HoldReason::PreTerminateBackupFailed,
        HoldReason::PreTerminateBackupTimedOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HoldReason::FinalBackupFailed => "FinalBackupFailed",
            HoldReason::FinalBackupTimedOut => "FinalBackupTimedOut",
            HoldReason::MassDeletion => "MassDeletion",
            HoldReason::PreTerminateBackupFailed => "PreTerminateBackupFailed",
            HoldReason::PreTerminateBackupTimedOut => "PreTerminateBackupTimedOut",
        }
    }

    /// Whether the backup timed out (rather than ended failed).
    pub fn timed_out(self) -> bool {
        matches!(
            self,
            HoldReason::FinalBackupTimedOut | HoldReason::PreTerminateBackupTimedOut
        )
    }
}

/// What follows once the wait for a backup that guards a destruction (a final or a
/// `pre-terminate` backup) is over: the one rule both share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterBackup {
    /// Go ahead. `overridden`: the backup did not complete; a person's release or the
    /// operator's `--on-backup-failure=delete` lets it go anyway.
    Proceed { overridden: bool },
    /// Destroy nothing until a person releases it. `timed_out`: the backup never finished.
    Hold { timed_out: bool },
}

/// See [`AfterBackup`] (pure).
pub fn after_backup(
    outcome: Outcome,
    released: bool,
    on_backup_failure: OnBackupFailure,
) -> AfterBackup {
    if outcome.succeeded() {
        return AfterBackup::Proceed { overridden: false };
    }
    if released || on_backup_failure == OnBackupFailure::Delete {
        return AfterBackup::Proceed { overridden: true };
    }
    AfterBackup::Hold {
        timed_out: outcome == Outcome::TimedOut,
    }
}

/// What cleanup does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// `spec.paused`: destroy nothing, look again when it changes.
    WaitForUnpause,
    /// `deletionPolicy: Retain` (finalizer path): keep everything, release the finalizer.
    Retain,
    /// The Tenant CRD is being deleted (finalizer path): keep everything as for [`Next::Retain`],
    /// write onto the namespace what re-adoption needs, release the finalizer.
    Orphan,
    /// Create the final backup of this lifecycle.
    RequestBackup,
    /// The final backup runs: look again within `retry_in`.
    WaitForBackup { backup: String, retry_in: Duration },
    /// Destroy nothing until a person releases the hold. `backup`: the final backup that
    /// failed (none for [`HoldReason::MassDeletion`], which holds before any backup).
    Hold {
        reason: HoldReason,
        backup: Option<String>,
    },
    /// Go ahead: delete the namespace and cloud resources (finalizer path) or the Tenant
    /// (retention path). `backup`: the final backup's name and how it ended, when there is one.
    Destroy {
        backup: Option<(String, Outcome, bool)>,
        /// A hold was lifted (released, or the operator's `delete` setting).
        overridden: bool,
    },
}

/// What cleanup does next (pure).
pub fn decide(d: &Deletion) -> Next {
    // Before the pause: releasing destroys nothing, and the CRD's deletion cannot finish
    // while a Tenant keeps its finalizer.
    if d.trigger == Trigger::TenantDeleted && d.tenant_crd_deleting {
        return Next::Orphan;
    }
    if d.paused {
        return Next::WaitForUnpause;
    }
    if d.trigger == Trigger::TenantDeleted && d.policy == DeletionPolicy::Retain {
        return Next::Retain;
    }
    if !d.has_data {
        return Next::Destroy {
            backup: None,
            overridden: false,
        };
    }
    // Before the final backup is requested: a mistaken mass deletion costs no backup Jobs
    // either. The retention path is counted once the Tenant it deletes is deleting.
    if d.trigger == Trigger::TenantDeleted && d.beyond_budget && !d.released {
        return Next::Hold {
            reason: HoldReason::MassDeletion,
            backup: None,
        };
    }
    match &d.final_backup {
        FinalBackup::Absent => Next::RequestBackup,
        FinalBackup::Unfinished { name, retry_in, .. } => Next::WaitForBackup {
            backup: name.clone(),
            retry_in: *retry_in,
        },
        FinalBackup::Over {
            name,
            outcome,
            recorded,
        } => match after_backup(*outcome, d.released, d.on_backup_failure) {
            AfterBackup::Proceed { overridden } => Next::Destroy {
                backup: Some((name.clone(), *outcome, *recorded)),
                overridden,
            },
            AfterBackup::Hold { timed_out } => Next::Hold {
                reason: if timed_out {
                    HoldReason::FinalBackupTimedOut
                } else {
                    HoldReason::FinalBackupFailed
                },
                backup: Some(name.clone()),
            },
        },
    }
}

/// The window of the mass-deletion guard.
pub const GUARD_WINDOW: SignedDuration = SignedDuration::from_hours(1);

/// A Tenant that entered deletion, as the mass-deletion guard counts it: when (its
/// `metadata.deletionTimestamp`, second resolution) and its name, which breaks ties.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entered {
    pub at: Timestamp,
    pub name: String,
}

/// Whether a deletion counts toward the guard: only one that may destroy something, i.e. under
/// `deletionPolicy: Delete` (a `Retain` tenant and every Tenant of a CRD being deleted keep
/// their stacks).
pub fn counts_toward_guard(policy: DeletionPolicy, tenant_crd_deleting: bool) -> bool {
    policy == DeletionPolicy::Delete && !tenant_crd_deleting
}

/// The mass-deletion guard (pure): whether `me` waits for a person because at least
/// `max_per_hour` other counted deletions entered within the hour up to it and before it, in
/// the order of `(deletionTimestamp, name)` — the same answer on every replica, and after a
/// leader change, since it is read from the Tenants themselves. The window is relative to `me`'s
/// own timestamp, so time passing never changes the answer; `others` may include `me` (ignored).
/// `already_held`: the tenant's status says it was held for this reason: it stays held even
/// when deletions counted before it have finished and gone from view, until a person releases
/// it.
pub fn beyond_budget(
    me: &Entered,
    others: &[Entered],
    max_per_hour: u32,
    already_held: bool,
) -> bool {
    if already_held {
        return true;
    }
    let since = me.at.checked_sub(GUARD_WINDOW).unwrap_or(me.at);
    let ahead = others.iter().filter(|o| o.at > since && *o < me).count();
    ahead >= max_per_hour as usize
}

/// Whether the retention step may delete `fresh` (a read of the Tenant from the API server
/// made just before the delete): it must still be cancelled, past its retention, and not
/// already being deleted. The delete then names its uid and resourceVersion as preconditions,
/// so a re-subscription that lands after this read makes the API server refuse it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetentionDelete {
    /// Delete with these preconditions.
    Delete {
        uid: String,
        resource_version: String,
    },
    /// Gone or already being deleted: nothing to do.
    AlreadyGoing,
    /// No longer cancelled (re-subscribed), or not yet due: keep it.
    Keep,
}

/// See [`RetentionDelete`] (pure).
pub fn retention_delete(
    fresh: Option<&Tenant>,
    retention_days: u32,
    now: Timestamp,
) -> RetentionDelete {
    let Some(t) = fresh else {
        return RetentionDelete::AlreadyGoing;
    };
    if t.metadata.deletion_timestamp.is_some() {
        return RetentionDelete::AlreadyGoing;
    }
    let Some(cancelled) = &t.spec.cancelled_at else {
        return RetentionDelete::Keep;
    };
    let retention = SignedDuration::from_hours(24 * i64::from(retention_days));
    let deadline = cancelled.0.checked_add(retention).unwrap_or(cancelled.0);
    match (&t.metadata.uid, &t.metadata.resource_version) {
        (Some(uid), Some(rv)) if now >= deadline => RetentionDelete::Delete {
            uid: uid.clone(),
            resource_version: rv.clone(),
        },
        _ => RetentionDelete::Keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use stackplane_crds::naming::is_dns_label;
    use stackplane_crds::{TenantBackupSpec, TenantBackupStatus, TenantSpec};

    const TIMEOUT: Duration = Duration::from_secs(600);
    const POLL: Duration = Duration::from_secs(10);

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn backup(created: i64, phase: Option<BackupPhase>) -> TenantBackup {
        TenantBackup {
            metadata: ObjectMeta {
                name: Some("acme-pre-delete-0123abcd".into()),
                creation_timestamp: Some(Time(at(created))),
                ..ObjectMeta::default()
            },
            spec: TenantBackupSpec {
                tenant: "acme".into(),
                reason: stackplane_crds::BackupReason::PreDelete,
                restore: None,
                instance: None,
            },
            status: phase.map(|p| TenantBackupStatus {
                phase: Some(p),
                ..TenantBackupStatus::default()
            }),
        }
    }

    #[test]
    fn the_final_backup_is_named_by_the_lifecycle() {
        let uid = "0123abcd-ef01-2345-6789-abcdef012345";
        assert_eq!(final_backup_name("acme", uid), "acme-pre-delete-0123abcd");
        assert_ne!(
            final_backup_name("acme", uid),
            final_backup_name("acme", "99999999-ef01-2345-6789-abcdef012345")
        );
        let long = final_backup_name(&"t".repeat(63), uid);
        assert!(is_dns_label(&long), "{long}");
        assert!(long.ends_with("-pre-delete-0123abcd"), "{long}");
        // Two long tenant names sharing a prefix stay apart.
        assert_ne!(
            long,
            final_backup_name(&format!("{}u", "t".repeat(62)), uid)
        );
    }

    #[test]
    fn every_terminal_phase_ends_the_wait_at_once() {
        for p in [
            BackupPhase::Completed,
            BackupPhase::PartiallyFailed,
            BackupPhase::Failed,
        ] {
            assert_eq!(
                assess(&backup(1_000, Some(p)), at(1_001), TIMEOUT, POLL),
                FinalBackup::Over {
                    name: "acme-pre-delete-0123abcd".into(),
                    outcome: Outcome::Finished(p),
                    recorded: false
                }
            );
        }
    }

    #[test]
    fn an_unfinished_backup_waits_until_the_timeout() {
        for p in [
            None,
            Some(BackupPhase::Pending),
            Some(BackupPhase::InProgress),
        ] {
            assert_eq!(
                assess(&backup(1_000, p), at(1_100), TIMEOUT, POLL),
                FinalBackup::Unfinished {
                    name: "acme-pre-delete-0123abcd".into(),
                    phase: p,
                    retry_in: POLL
                }
            );
            // Close to the deadline the retry lands on it rather than after it.
            assert!(matches!(
                assess(&backup(1_000, p), at(1_597), TIMEOUT, POLL),
                FinalBackup::Unfinished { retry_in, .. } if retry_in == Duration::from_secs(3)
            ));
            assert!(matches!(
                assess(&backup(1_000, p), at(1_600), TIMEOUT, POLL),
                FinalBackup::Over {
                    outcome: Outcome::TimedOut,
                    recorded: false,
                    ..
                }
            ));
        }
        assert!(matches!(
            assess(&backup(1_000, None), at(1_000), Duration::ZERO, POLL),
            FinalBackup::Over {
                outcome: Outcome::TimedOut,
                ..
            }
        ));
    }

    #[test]
    fn a_recorded_outcome_is_seen() {
        let mut b = backup(1_000, Some(BackupPhase::Completed));
        b.metadata.annotations =
            Some([(FINAL_BACKUP_OUTCOME.to_owned(), "Completed".to_owned())].into());
        assert!(matches!(
            assess(&b, at(1_001), TIMEOUT, POLL),
            FinalBackup::Over { recorded: true, .. }
        ));
    }

    fn over(outcome: Outcome) -> FinalBackup {
        FinalBackup::Over {
            name: "b".into(),
            outcome,
            recorded: false,
        }
    }

    /// Every combination of the inputs, against what the promise allows.
    #[test]
    fn the_decision_over_every_combination() {
        let backups = [
            FinalBackup::Absent,
            FinalBackup::Unfinished {
                name: "b".into(),
                phase: Some(BackupPhase::InProgress),
                retry_in: POLL,
            },
            over(Outcome::Finished(BackupPhase::Completed)),
            over(Outcome::Finished(BackupPhase::PartiallyFailed)),
            over(Outcome::Finished(BackupPhase::Failed)),
            over(Outcome::TimedOut),
        ];
        let mut seen = 0;
        let flags = [false, true];
        for trigger in [Trigger::TenantDeleted, Trigger::RetentionOver] {
            for policy in [DeletionPolicy::Delete, DeletionPolicy::Retain] {
                for (paused, released, has_data, tenant_crd_deleting, beyond_budget) in flags
                    .iter()
                    .flat_map(|a| flags.iter().map(move |b| (*a, *b)))
                    .flat_map(|(a, b)| flags.iter().map(move |c| (a, b, *c)))
                    .flat_map(|(a, b, c)| flags.iter().map(move |d| (a, b, c, *d)))
                    .flat_map(|(a, b, c, d)| flags.iter().map(move |e| (a, b, c, d, *e)))
                {
                    for on_backup_failure in [OnBackupFailure::Hold, OnBackupFailure::Delete] {
                        for final_backup in &backups {
                            let d = Deletion {
                                trigger,
                                tenant_crd_deleting,
                                beyond_budget,
                                policy,
                                paused,
                                released,
                                has_data,
                                final_backup: final_backup.clone(),
                                on_backup_failure,
                            };
                            check(&d, &decide(&d));
                            seen += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(seen, 2 * 2 * 32 * 2 * 6);
    }

    fn check(d: &Deletion, next: &Next) {
        let ctx = format!("{d:?} -> {next:?}");
        // A deletion of the CRD destroys nothing, whatever else holds (paused included).
        if d.trigger == Trigger::TenantDeleted && d.tenant_crd_deleting {
            assert_eq!(*next, Next::Orphan, "{ctx}");
            return;
        }
        assert_ne!(*next, Next::Orphan, "{ctx}");
        if d.paused {
            assert_eq!(*next, Next::WaitForUnpause, "{ctx}");
            return;
        }
        if d.trigger == Trigger::TenantDeleted && d.policy == DeletionPolicy::Retain {
            assert_eq!(*next, Next::Retain, "{ctx}");
            return;
        }
        if !d.has_data {
            assert!(matches!(next, Next::Destroy { backup: None, .. }), "{ctx}");
            return;
        }
        // The guard: beyond the budget nothing goes on (not even the backup) until released;
        // the retention path is counted when the Tenant it deletes is.
        if d.trigger == Trigger::TenantDeleted && d.beyond_budget && !d.released {
            assert_eq!(
                *next,
                Next::Hold {
                    reason: HoldReason::MassDeletion,
                    backup: None
                },
                "{ctx}"
            );
            return;
        }
        let expected = match &d.final_backup {
            FinalBackup::Absent => Next::RequestBackup,
            FinalBackup::Unfinished { .. } => Next::WaitForBackup {
                backup: "b".into(),
                retry_in: POLL,
            },
            FinalBackup::Over { outcome, .. } if outcome.succeeded() => Next::Destroy {
                backup: Some(("b".into(), *outcome, false)),
                overridden: false,
            },
            FinalBackup::Over { outcome, .. }
                if d.released || d.on_backup_failure == OnBackupFailure::Delete =>
            {
                Next::Destroy {
                    backup: Some(("b".into(), *outcome, false)),
                    overridden: true,
                }
            }
            FinalBackup::Over { outcome, .. } => Next::Hold {
                reason: if *outcome == Outcome::TimedOut {
                    HoldReason::FinalBackupTimedOut
                } else {
                    HoldReason::FinalBackupFailed
                },
                backup: Some("b".into()),
            },
        };
        assert_eq!(*next, expected, "{ctx}");
    }

    #[test]
    fn a_failed_backup_never_destroys_without_a_person_or_the_operator() {
        for outcome in [
            Outcome::Finished(BackupPhase::Failed),
            Outcome::Finished(BackupPhase::PartiallyFailed),
            Outcome::TimedOut,
        ] {
            let mut d = Deletion::of(
                &Tenant::new("acme", TenantSpec::new("crm", "starter")),
                Trigger::TenantDeleted,
            );
            d.final_backup = over(outcome);
            assert!(matches!(decide(&d), Next::Hold { .. }), "{outcome:?}");
        }
    }

    #[test]
    fn the_release_annotation_is_read_from_the_tenant() {
        let mut t = Tenant::new("acme", TenantSpec::new("crm", "starter"));
        assert!(!released(&t));
        t.metadata.annotations = Some([(RELEASE_DELETION.to_owned(), "false".to_owned())].into());
        assert!(!released(&t));
        t.metadata.annotations = Some([(RELEASE_DELETION.to_owned(), "true".to_owned())].into());
        assert!(released(&t));
        assert!(Deletion::of(&t, Trigger::TenantDeleted).released);
    }

    #[test]
    fn the_on_backup_failure_setting_parses() {
        assert_eq!("hold".parse(), Ok(OnBackupFailure::Hold));
        assert_eq!("delete".parse(), Ok(OnBackupFailure::Delete));
        assert!("yes".parse::<OnBackupFailure>().is_err());
        assert_eq!(OnBackupFailure::default(), OnBackupFailure::Hold);
    }

    fn entered(at_secs: i64, name: &str) -> Entered {
        Entered {
            at: at(at_secs),
            name: name.into(),
        }
    }

    #[test]
    fn twenty_deleted_at_once_the_first_ten_by_name_go_the_rest_wait() {
        // Twenty tenants deleted by one command: the same second, told apart by name.
        let all: Vec<Entered> = (0..20)
            .map(|i| entered(1_000, &format!("t{i:02}")))
            .collect();
        let going: Vec<&str> = all
            .iter()
            .filter(|e| !beyond_budget(e, &all, 10, false))
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(
            going,
            (0..10).map(|i| format!("t{i:02}")).collect::<Vec<_>>()
        );
        // Any order of the input (each replica's cache lists differently): the same answer.
        let mut reversed = all.clone();
        reversed.reverse();
        for e in &all {
            assert_eq!(
                beyond_budget(e, &all, 10, false),
                beyond_budget(e, &reversed, 10, false),
                "{e:?}"
            );
        }
    }

    #[test]
    fn the_window_is_the_hour_up_to_the_deletion_itself() {
        const HOUR: i64 = 3_600;
        let earlier: Vec<Entered> = (0..3).map(|i| entered(0, &format!("a{i}"))).collect();
        // Exactly an hour later the earlier ones are out of the window; a second less, in.
        assert!(!beyond_budget(&entered(HOUR, "b"), &earlier, 3, false));
        assert!(beyond_budget(&entered(HOUR - 1, "b"), &earlier, 3, false));
        // A later deletion never counts against an earlier one (time passing changes nothing).
        let later = vec![entered(10, "z0"), entered(10, "z1")];
        assert!(!beyond_budget(&entered(5, "b"), &later, 1, false));
        // Ties at the same second: the name decides, and a tenant never counts itself.
        let tie = vec![entered(7, "m"), entered(7, "n")];
        assert!(!beyond_budget(&entered(7, "m"), &tie, 1, false));
        assert!(beyond_budget(&entered(7, "n"), &tie, 1, false));
        // A budget of 0: every counted deletion waits for a person.
        assert!(beyond_budget(&entered(7, "m"), &[], 0, false));
    }

    #[test]
    fn a_held_tenant_stays_held_when_those_before_it_are_gone() {
        // Held once (its status says so): the ten that went before it finished and left the
        // cache, yet it waits for a person.
        assert!(beyond_budget(&entered(1_000, "t15"), &[], 10, true));
        let mut d = Deletion::of(
            &Tenant::new("t15", TenantSpec::new("crm", "starter")),
            Trigger::TenantDeleted,
        );
        d.beyond_budget = true;
        assert!(matches!(
            decide(&d),
            Next::Hold {
                reason: HoldReason::MassDeletion,
                backup: None
            }
        ));
        // Released by a person: the deletion goes on to its final backup.
        d.released = true;
        assert_eq!(decide(&d), Next::RequestBackup);
    }

    #[test]
    fn a_deletion_of_the_crd_is_never_counted_and_never_destroys() {
        assert!(counts_toward_guard(DeletionPolicy::Delete, false));
        assert!(!counts_toward_guard(DeletionPolicy::Delete, true));
        assert!(!counts_toward_guard(DeletionPolicy::Retain, false));
        let mut d = Deletion::of(
            &Tenant::new("acme", TenantSpec::new("crm", "starter")),
            Trigger::TenantDeleted,
        );
        d.tenant_crd_deleting = true;
        d.beyond_budget = true;
        d.paused = true;
        d.final_backup = over(Outcome::Finished(BackupPhase::Completed));
        assert_eq!(decide(&d), Next::Orphan);
        // The retention path never orphans: it only deletes the Tenant (whose finalizer then
        // sees the CRD's state).
        d.trigger = Trigger::RetentionOver;
        d.paused = false;
        assert!(matches!(decide(&d), Next::Destroy { .. }));
    }

    fn cancelled(at_secs: Option<i64>) -> Tenant {
        let mut t = Tenant::new("acme", TenantSpec::new("crm", "starter"));
        t.spec.cancelled_at = at_secs.map(|s| Time(at(s)));
        t.metadata.uid = Some("uid-1".into());
        t.metadata.resource_version = Some("42".into());
        t
    }

    #[test]
    fn retention_deletes_only_a_tenant_still_cancelled_and_due_with_preconditions() {
        const DAY: i64 = 86_400;
        let due = cancelled(Some(0));
        assert_eq!(
            retention_delete(Some(&due), 1, at(DAY)),
            RetentionDelete::Delete {
                uid: "uid-1".into(),
                resource_version: "42".into()
            }
        );
        // Not yet due.
        assert_eq!(
            retention_delete(Some(&due), 1, at(DAY - 1)),
            RetentionDelete::Keep
        );
        // Re-subscribed between the decision and the fresh read: cancelledAt cleared.
        assert_eq!(
            retention_delete(Some(&cancelled(None)), 1, at(DAY)),
            RetentionDelete::Keep
        );
        // Re-cancelled later: the new retention runs from the new date.
        assert_eq!(
            retention_delete(Some(&cancelled(Some(DAY))), 1, at(DAY + 10)),
            RetentionDelete::Keep
        );
        assert_eq!(
            retention_delete(None, 1, at(DAY)),
            RetentionDelete::AlreadyGoing
        );
        let mut going = due.clone();
        going.metadata.deletion_timestamp = Some(Time(at(DAY)));
        assert_eq!(
            retention_delete(Some(&going), 1, at(DAY)),
            RetentionDelete::AlreadyGoing
        );
        // Without a uid or resourceVersion there is no precondition: never delete blind.
        let mut blind = due.clone();
        blind.metadata.resource_version = None;
        assert_eq!(
            retention_delete(Some(&blind), 1, at(DAY)),
            RetentionDelete::Keep
        );
    }
}
