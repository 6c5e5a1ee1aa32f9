//! `spec.backup.schedule` of Tenants: a loop that creates a `scheduled` TenantBackup for the
//! latest occurrence of each tenant's cron expression. The backup is named after the tenant and
//! the occurrence, so a restart, a retry or a second replica creates the same name and the API
//! server refuses the duplicate.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use k8s_openapi::jiff::{tz::TimeZone, Timestamp};
use kube::api::{Api, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};

use kube::Resource;
use kube::{Client, ResourceExt};
use stackplane_core::contract::labels::{MANAGED_BY, MANAGED_BY_VALUE, TENANT};
use stackplane_crds::{BackupReason, TenantBackup, TenantBackupSpec};

use crate::events::EventRecorder;
use stackplane_core::cache::CachedTenant;

/// Event reason of an unparsable schedule.
pub const INVALID_SCHEDULE: &str =
    stackplane_core::contract::conditions::REASON_INVALID_BACKUP_SCHEDULE;

/// How the scheduler runs.
#[derive(Debug, Clone)]
pub struct ScheduleConfig {
    /// How often the schedules are checked.
    pub tick: Duration,
    /// An occurrence missed by more than this (the controller was down) is skipped, not
    /// caught up; it also keeps an expired and deleted backup from being made again.
    pub starting_deadline: Duration,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            tick: Duration::from_secs(15),
            starting_deadline: Duration::from_secs(300),
        }
    }
}

/// Parses a schedule: five fields (minute granularity), or six with seconds first; UTC.
pub fn parse(schedule: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(schedule)
        .map_err(|e| e.to_string())
}

/// The occurrence a backup is due for at `now`: the latest one at or before `now`, unless it
/// is before the tenant existed or older than `deadline`.
pub fn due(
    cron: &Cron,
    now: Timestamp,
    created: Timestamp,
    deadline: Duration,
) -> Option<Timestamp> {
    let zoned = now.to_zoned(TimeZone::UTC);
    let last = cron
        .find_previous_occurrence(&zoned, true)
        .ok()?
        .timestamp();
    let late = now.duration_since(last);
    let deadline = k8s_openapi::jiff::SignedDuration::try_from(deadline).ok()?;
    (last >= created && late <= deadline).then_some(last)
}

/// Name of the scheduled backup of `tenant` for the occurrence `at`: `<tenant>-<UTC time>`.
pub fn backup_name(tenant: &str, at: Timestamp) -> String {
    format!("{tenant}-{}", at.strftime("%Y%m%d-%H%M%S"))
}

/// The scheduled TenantBackup of `tenant` for `at`. It carries the tenant's labels, so a
/// controller sharded by label selector handles a tenant's backups with the tenant.
pub fn scheduled_backup(tenant: &CachedTenant, at: Timestamp) -> TenantBackup {
    let name = tenant.name_any();
    let mut backup = TenantBackup::new(
        &backup_name(&name, at),
        TenantBackupSpec {
            tenant: name.clone(),
            reason: BackupReason::Scheduled,
            restore: None,
            instance: None,
        },
    );
    let mut labels = tenant.labels().to_map();
    labels.insert(MANAGED_BY.to_owned(), MANAGED_BY_VALUE.to_owned());
    labels.insert(TENANT.to_owned(), name);
    backup.metadata.labels = Some(labels);
    backup
}

/// Checks every schedule each `tick` until `stop` resolves. The Tenants come from the
/// controller's own cache (`tenants`, already restricted to its shard): at 10,000 tenants a
/// list per tick was 20 requests of 500 full Tenants, their managedFields included, and the
/// largest allocation of the controller's life (it set its peak RSS).
pub async fn run(
    client: Client,
    config: ScheduleConfig,
    tenants: Store<CachedTenant>,
    recorder: EventRecorder,
    stop: impl Future<Output = ()> + Send,
) {
    let backups: Api<TenantBackup> = Api::all(client);
    // Schedules already reported as invalid, so each gets one Event, not one per tick.
    let mut reported: HashMap<String, String> = HashMap::new();
    let mut ticks = tokio::time::interval(config.tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    // Until the cache holds its first list, an empty cache means "not known yet", not "no
    // tenant has a schedule".
    tokio::select! {
        _ = &mut stop => return,
        ready = tenants.wait_until_ready() => if ready.is_err() {
            tracing::warn!("the tenant cache closed before its first list: no backup schedules");
            return;
        },
    }
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticks.tick() => {},
        }
        let now = Timestamp::now();
        for tenant in tenants.state() {
            check(&tenant, &config, &backups, &recorder, &mut reported, now).await;
        }
        // A tenant gone from the cache has no schedule to report on any more.
        reported.retain(|name, _| tenants.get(&ObjectRef::new(name)).is_some());
    }
}

/// Creates the backup that `tenant`'s schedule makes due at `now`, if any.
async fn check(
    tenant: &CachedTenant,
    config: &ScheduleConfig,
    backups: &Api<TenantBackup>,
    recorder: &EventRecorder,
    reported: &mut HashMap<String, String>,
    now: Timestamp,
) {
    let name = tenant.name_any();
    let Some(schedule) = tenant
        .spec
        .backup
        .as_ref()
        .and_then(|b| b.schedule.as_ref())
    else {
        return;
    };
    if tenant.metadata.deletion_timestamp.is_some() || tenant.spec.cancelled_at.is_some() {
        return;
    }
    let cron = match parse(schedule) {
        Ok(c) => c,
        Err(reason) => {
            if reported.get(&name) != Some(schedule) {
                tracing::warn!(tenant = %name, %schedule, %reason, "invalid backup schedule");
                let event = Event {
                    type_: EventType::Warning,
                    reason: INVALID_SCHEDULE.to_owned(),
                    note: Some(format!(
                        "spec.backup.schedule {schedule:?} is not a valid cron expression: {reason}"
                    )),
                    action: "ScheduleBackup".to_owned(),
                    secondary: None,
                };
                if let Err(error) = recorder.publish(&event, &tenant.object_ref(&())).await {
                    tracing::warn!(tenant = %name, %error, "cannot publish event");
                }
                reported.insert(name, schedule.clone());
            }
            return;
        }
    };
    reported.remove(&name);
    let created = tenant
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(now);
    let Some(at) = due(
        &cron,
        now,
        created,
        config.starting_deadline.max(config.tick * 2),
    ) else {
        return;
    };
    let backup = scheduled_backup(tenant, at);
    match backups.create(&PostParams::default(), &backup).await {
        Ok(_) => {
            tracing::info!(tenant = %name, backup = %backup.name_any(), "scheduled backup created")
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(error) => {
            tracing::warn!(tenant = %name, %error, "creating scheduled backup failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn five_and_six_field_schedules_parse_and_garbage_does_not() {
        assert!(parse("0 3 * * *").is_ok());
        assert!(parse("*/5 * * * * *").is_ok());
        assert!(parse("not a cron").is_err());
        assert!(parse("61 * * * *").is_err());
    }

    #[test]
    fn due_is_the_latest_occurrence_within_the_deadline() {
        let cron = parse("0 3 * * *").expect("cron");
        let created = ts("2026-01-01T00:00:00Z");
        let deadline = Duration::from_secs(300);
        assert_eq!(
            due(&cron, ts("2026-01-02T03:04:00Z"), created, deadline),
            Some(ts("2026-01-02T03:00:00Z"))
        );
        // Missed by more than the deadline: skipped, not caught up.
        assert_eq!(
            due(&cron, ts("2026-01-02T04:00:00Z"), created, deadline),
            None
        );
        // Before the tenant existed.
        assert_eq!(
            due(
                &cron,
                ts("2026-01-02T03:01:00Z"),
                ts("2026-01-02T03:00:30Z"),
                deadline
            ),
            None
        );
    }

    #[test]
    fn backup_names_are_deterministic_per_occurrence() {
        let at = ts("2026-01-02T03:00:05Z");
        assert_eq!(backup_name("acme", at), "acme-20260102-030005");
        assert_eq!(backup_name("acme", at), backup_name("acme", at));
        assert_ne!(
            backup_name("acme", at),
            backup_name("acme", ts("2026-01-02T03:00:10Z"))
        );
        let mut t = stackplane_crds::Tenant::new(
            "acme",
            stackplane_crds::TenantSpec::new("crm", "starter"),
        );
        t.metadata.labels = Some([("shard".to_owned(), "a".to_owned())].into());
        let b = scheduled_backup(&CachedTenant::from(&t), at);
        assert_eq!(b.spec.reason, BackupReason::Scheduled);
        assert_eq!(b.labels()["shard"], "a");
        assert_eq!(b.labels()[TENANT], "acme");
    }
}
