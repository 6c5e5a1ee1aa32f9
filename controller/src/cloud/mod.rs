//! The `cloud` step of the Tenant pipeline: the dedicated EC2 instance of tiers that have one,
//! and every tenant's Route53 record `<subdomain>.<domain>`.
//!
//! No instance is terminated before its volumes are snapshotted ([`terminate`]: a `pre-terminate`
//! backup per instance, requested and waited for by requeueing; a failed one holds it).
//!
//! Each reconcile makes at most one state-changing call per resource and never waits for AWS:
//! an instance that is starting, stopping or being resized is looked at again after
//! [`CloudSettings::progress_requeue`]. Everything is found again from AWS (instances by tag,
//! records by name) on every reconcile, so a restarted controller resumes where the last one
//! stopped, drift from outside is corrected, and nothing is created twice.

pub mod aws;
pub mod error;
#[cfg(test)]
pub mod fake;
pub mod gc;
pub mod owner;
pub mod provider;
pub mod terminate;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::runtime::events::EventType;
use kube::Client;
use stackplane_crds::{DeletionPolicy, InstanceStatus, Platform, Tenant, TenantPhase, Tier};

pub use error::{CloudError, Retry};
pub use provider::CloudProvider;
pub use stackplane_core::cloud::dns::IngressAddress;
pub use terminate::{BeforeTerminate, Clearance};

use dns::{normalize_name, normalize_zone_id, record_name, Claim, Ownership, WantedRecord};
use instance::{InstanceAction, InstanceResult};
use owner::{Deleting, Owner};
use provider::{LaunchSpec, ObservedInstance, RecordChange, RecordType};
use stackplane_core::cloud::{dns, instance, tags};
use stackplane_core::tenant::serving::{idle_reason, IdleReason};

/// Condition type of the cloud step.
pub const CLOUD_READY: &str = stackplane_core::contract::conditions::CLOUD_READY;

/// Settings of the cloud step.
#[derive(Debug, Clone)]
pub struct CloudSettings {
    pub provider: Arc<dyn CloudProvider>,
    /// Where records of tenants without a dedicated instance point. `None`: such tenants get
    /// no record (and their condition says so).
    pub ingress_address: Option<IngressAddress>,
    /// How soon a tenant whose instance is changing state is reconciled again.
    pub progress_requeue: Duration,
    /// How soon a tenant whose cloud resources failed terminally is tried again (a change to
    /// the Tenant or its Platform retries at once): long, so a bad image id is not retried in
    /// a loop.
    pub terminal_requeue: Duration,
    /// Longest wait for the API server when the tenant is re-read before a create.
    pub kube_timeout: Duration,
    /// The garbage collector the leader runs with this provider.
    pub gc: gc::GcConfig,
    /// The last terminal failure per tenant, with a fingerprint of the inputs that produced it:
    /// reconciles triggered by anything else (status writes, child objects) reuse it instead of
    /// repeating a request that cannot succeed.
    terminal: Arc<Mutex<HashMap<String, Remembered>>>,
}

#[derive(Debug, Clone)]
struct Remembered {
    fingerprint: u64,
    at: Instant,
    outcome: CloudOutcome,
}

impl CloudSettings {
    pub fn new(provider: Arc<dyn CloudProvider>, ingress_address: Option<IngressAddress>) -> Self {
        CloudSettings {
            provider,
            ingress_address,
            progress_requeue: Duration::from_secs(3),
            terminal_requeue: Duration::from_secs(600),
            kube_timeout: Duration::from_secs(10),
            gc: gc::GcConfig::default(),
            terminal: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The remembered terminal outcome of `tenant`, if its inputs have not changed since and it
    /// is younger than `terminal_requeue`.
    fn remembered(&self, tenant: &str, fingerprint: u64) -> Option<CloudOutcome> {
        let mut map = self.terminal.lock().ok()?;
        match map.get(tenant) {
            Some(r) if r.fingerprint == fingerprint && r.at.elapsed() < self.terminal_requeue => {
                Some(r.outcome.clone())
            }
            Some(_) => {
                map.remove(tenant);
                None
            }
            None => None,
        }
    }

    fn remember(&self, tenant: &str, fingerprint: u64, outcome: &CloudOutcome) {
        let Ok(mut map) = self.terminal.lock() else {
            return;
        };
        match &outcome.state {
            CloudState::Failed(e) if e.retry() == Retry::Terminal => {
                map.insert(
                    tenant.to_owned(),
                    Remembered {
                        fingerprint,
                        at: Instant::now(),
                        outcome: CloudOutcome {
                            notes: Vec::new(),
                            ..outcome.clone()
                        },
                    },
                );
            }
            _ => {
                map.remove(tenant);
            }
        }
    }
}

/// What the cloud step's result depends on: a change to any of it retries a terminal failure
/// at once.
fn fingerprint(settings: &CloudSettings, tenant: &Tenant, platform: &Platform, tier: &Tier) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    tenant.metadata.uid.hash(&mut h);
    tenant.metadata.generation.hash(&mut h);
    platform.metadata.generation.hash(&mut h);
    platform.spec.domain.hash(&mut h);
    platform.spec.hosted_zone_id.hash(&mut h);
    tenant.subdomain().hash(&mut h);
    format!("{:?}", tier.dedicated_instance).hash(&mut h);
    format!("{:?}", settings.ingress_address).hash(&mut h);
    h.finish()
}

/// How the cloud resources of a tenant stand after the step.
#[derive(Debug, Clone, PartialEq)]
pub enum CloudState {
    /// Everything the tenant should have exists as it should.
    Ready,
    /// An instance is starting, stopping or being resized; reconcile again soon.
    Progressing,
    /// A call failed; [`CloudError::retry`] says whether retrying can help.
    Failed(CloudError),
}

/// An Event the step asks the reconciler to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Note {
    fn normal(reason: &'static str, message: String) -> Self {
        Note {
            warning: false,
            reason,
            message,
        }
    }

    pub fn event_type(&self) -> EventType {
        if self.warning {
            EventType::Warning
        } else {
            EventType::Normal
        }
    }
}

/// The result of the step: the status fields it owns, its condition and what to do next.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudOutcome {
    pub instance: Option<InstanceStatus>,
    /// The record the tenant owns now, without the trailing dot.
    pub dns_record: Option<String>,
    pub state: CloudState,
    /// `CloudReady` condition: status, reason, message.
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
    pub notes: Vec<Note>,
    /// What the gate said about the instances the step wanted terminated: those kept (waiting
    /// for their `pre-terminate` backup, or held) and whether a hold was overridden.
    pub termination: Clearance,
}

fn instance_status(i: &ObservedInstance) -> InstanceStatus {
    InstanceStatus {
        id: i.id.clone(),
        instance_type: i.instance_type.clone(),
        state: i.state.clone(),
        public_ip: i.public_ip.clone(),
    }
}

fn display_name(fqdn: &str) -> String {
    fqdn.trim_end_matches('.').to_owned()
}

/// Runs the cloud step for a valid tenant on `tier` of `platform`. `client` re-reads the
/// Tenant from the API server right before anything is created ([`owner::confirm_tenant`]);
/// `gate` clears each instance before it is terminated ([`terminate`]).
pub async fn sync<G: BeforeTerminate>(
    settings: &CloudSettings,
    client: &Client,
    gate: &G,
    tenant: &Tenant,
    platform: &Platform,
    tier: &Tier,
) -> CloudOutcome {
    let name = tenant.metadata.name.clone().unwrap_or_default();
    let fp = fingerprint(settings, tenant, platform, tier);
    if let Some(outcome) = settings.remembered(&name, fp) {
        return outcome;
    }
    let outcome = sync_uncached(settings, client, gate, tenant, platform, tier).await;
    settings.remember(&name, fp, &outcome);
    outcome
}

async fn sync_uncached<G: BeforeTerminate>(
    settings: &CloudSettings,
    client: &Client,
    gate: &G,
    tenant: &Tenant,
    platform: &Platform,
    tier: &Tier,
) -> CloudOutcome {
    let previous = tenant.status.clone().unwrap_or_default();
    let mut out = CloudOutcome {
        instance: previous.instance.clone(),
        dns_record: previous.dns_record.clone(),
        state: CloudState::Ready,
        ready: true,
        reason: "Provisioned",
        message: String::new(),
        notes: Vec::new(),
        termination: Clearance::default(),
    };
    let instance = match sync_instance(settings, client, gate, tenant, tier, &mut out).await {
        Ok(r) => r,
        Err(e) => return failed(out, e),
    };
    let mut messages = Vec::new();
    match &instance {
        InstanceResult::Shared => {}
        InstanceResult::Running(_) => {
            if let Some(i) = &out.instance {
                messages.push(format!(
                    "instance {} ({}) is running",
                    i.id, i.instance_type
                ));
            }
        }
        InstanceResult::Progressing(m) => messages.push(m.clone()),
        InstanceResult::Parked { message, .. } => messages.push(message.clone()),
    }
    match sync_record(settings, client, tenant, platform, &instance, &mut out).await {
        Ok(m) => messages.push(m),
        Err(e) => return failed(out, e),
    }
    let kept = &out.termination.kept;
    if !kept.is_empty() {
        messages.push(out.termination.describe_kept());
    }
    let waiting = kept.iter().any(|k| k.held.is_none());
    let held = kept.iter().any(|k| k.held.is_some());
    out.message = messages.join("; ");
    match instance {
        InstanceResult::Progressing(_) => {
            out.state = CloudState::Progressing;
            out.ready = false;
            out.reason = "InstanceNotRunning";
        }
        // Stopped as it should be while the tenant is idle: the cloud is in the wanted state.
        InstanceResult::Parked { settled: true, .. } => out.reason = "InstanceStopped",
        InstanceResult::Parked { settled: false, .. } => {
            out.state = CloudState::Progressing;
            out.ready = false;
            out.reason = "InstanceStopping";
        }
        InstanceResult::Shared | InstanceResult::Running(_) => {}
    }
    // An instance to be terminated that waits for its backup is progress (looked at again
    // soon); one held is not: it waits for a person, and the stack itself is as wanted.
    if waiting {
        out.state = CloudState::Progressing;
        out.ready = false;
        out.reason = "PreTerminateBackup";
    } else if held {
        out.ready = false;
        out.reason = "TerminationHeld";
    }
    out
}

fn failed(mut out: CloudOutcome, e: CloudError) -> CloudOutcome {
    out.ready = false;
    out.reason = e.reason();
    out.message = e.to_string();
    out.notes.push(Note {
        warning: true,
        reason: out.reason,
        message: e.to_string(),
    });
    out.state = CloudState::Failed(e);
    out
}

/// The instances tagged with the tenant's name that are this tenant's (same uid, or none).
async fn tenant_instances(
    settings: &CloudSettings,
    tenant: &Tenant,
) -> Result<Vec<ObservedInstance>, CloudError> {
    let name = tenant.metadata.name.clone().unwrap_or_default();
    let uid = tenant.metadata.uid.as_deref();
    let mut found = settings.provider.find_instances(&name).await?;
    found.retain(|i| instance::owned_by(i, uid));
    Ok(found)
}

async fn sync_instance<G: BeforeTerminate>(
    settings: &CloudSettings,
    client: &Client,
    gate: &G,
    tenant: &Tenant,
    tier: &Tier,
    out: &mut CloudOutcome,
) -> Result<InstanceResult, CloudError> {
    let p = &settings.provider;
    let name = tenant.metadata.name.clone().unwrap_or_default();
    let desired = tier.dedicated_instance.as_ref();
    // A tenant with neither a recorded instance nor a dedicated tier has nothing to look up.
    if desired.is_none() && out.instance.is_none() {
        return Ok(InstanceResult::Shared);
    }
    let found = tenant_instances(settings, tenant).await?;
    let idle = idle_reason(tenant);
    let plan = instance::decide(desired, idle.is_some(), &found);
    // Not one of them before its volumes are snapshotted (a `pre-terminate` backup each).
    let clearance = terminate::terminate(settings, gate, tenant, &plan.terminate).await?;
    if !clearance.cleared.is_empty() {
        tracing::info!(tenant = %name, instances = ?clearance.cleared, "terminated instances the tenant should not have");
        out.notes.push(Note::normal(
            "InstanceTerminated",
            format!("terminated {}", clearance.cleared.join(", ")),
        ));
    }
    out.termination = clearance;
    out.notes.append(&mut out.termination.notes);
    let (Some(action), Some(desired)) = (plan.action, desired) else {
        // No instance is wanted. One kept for its backup (or held) is still the tenant's: the
        // status keeps naming it, so the final backup and the deletion still find it.
        let kept = |id: &str| out.termination.kept.iter().any(|k| k.instance == id);
        let recorded = out.instance.as_ref().map(|i| i.id.clone());
        out.instance = found
            .iter()
            .filter(|i| kept(&i.id))
            .find(|i| recorded.as_deref().is_none_or(|r| r == i.id))
            .or_else(|| found.iter().find(|i| kept(&i.id)))
            .map(instance_status);
        return Ok(InstanceResult::Shared);
    };
    let observed = |id: &str| found.iter().find(|i| i.id == id).cloned();
    let result = match action {
        InstanceAction::Create => {
            // The instance we knew is gone (terminated from outside): its id goes into the
            // token, so AWS launches a replacement instead of answering with the old one.
            let replaces = out.instance.as_ref().map(|i| i.id.clone());
            if let Some(old) = &replaces {
                tracing::warn!(tenant = %name, instance = %old, "instance gone: launching a replacement");
            }
            // Checked first so an unknown image fails clearly, with AWS's own error code,
            // before anything is launched.
            let image = p.describe_image(&desired.image_id).await?;
            let spec = LaunchSpec {
                image_id: desired.image_id.clone(),
                instance_type: desired.instance_type.clone(),
                volume_size_gib: desired.volume_size_gib,
                root_device_name: image.root_device_name,
                tags: instance::tags(tenant),
                client_token: instance::client_token(
                    tenant.metadata.uid.as_deref().unwrap_or(&name),
                    desired,
                    replaces.as_deref(),
                ),
            };
            // The cache's Tenant may be seconds old: ask the API server last, so nothing is
            // launched for a tenant whose cleanup already ran.
            owner::confirm_tenant(
                client,
                Owner::of_tenant(tenant),
                Deleting::Refuse,
                settings.kube_timeout,
                "RunInstances",
            )
            .await?;
            let launched = p.run_instance(&spec).await?;
            tracing::info!(tenant = %name, instance = %launched.id, instance_type = %launched.instance_type, "launched instance");
            out.notes.push(Note::normal(
                "InstanceLaunched",
                format!("launched {} ({})", launched.id, launched.instance_type),
            ));
            let progressing = launched.state != "running";
            out.instance = Some(instance_status(&launched));
            if progressing {
                InstanceResult::Progressing(format!("instance {} is starting", launched.id))
            } else {
                InstanceResult::Running(launched.public_ip)
            }
        }
        InstanceAction::Ready { id } => {
            let i = observed(&id).ok_or(CloudError::Incomplete {
                operation: "DescribeInstances",
                what: "instance",
            })?;
            let stale = instance::stale_tags(&i, &instance::tags(tenant));
            if !stale.is_empty() {
                p.tag_instance(&id, &stale).await?;
            }
            out.instance = Some(instance_status(&i));
            InstanceResult::Running(i.public_ip.clone())
        }
        InstanceAction::Wait { id } => {
            let i = observed(&id);
            let state = i.as_ref().map(|i| i.state.clone()).unwrap_or_default();
            out.instance = i.as_ref().map(instance_status);
            InstanceResult::Progressing(format!("instance {id} is {state}"))
        }
        InstanceAction::Stop { id } => {
            p.stop_instance(&id).await?;
            tracing::info!(tenant = %name, instance = %id, to = %desired.instance_type, "resizing: stopping instance");
            out.notes.push(Note::normal(
                "InstanceResizing",
                format!(
                    "stopping {id} to change its type to {}",
                    desired.instance_type
                ),
            ));
            out.instance = observed(&id).map(|i| InstanceStatus {
                state: "stopping".into(),
                ..instance_status(&i)
            });
            InstanceResult::Progressing(format!(
                "instance {id} is stopping to change its type to {}",
                desired.instance_type
            ))
        }
        InstanceAction::ModifyType { id, instance_type } => {
            p.modify_instance_type(&id, &instance_type).await?;
            tracing::info!(tenant = %name, instance = %id, to = %instance_type, "resizing: type changed");
            out.notes.push(Note::normal(
                "InstanceResized",
                format!("changed the type of {id} to {instance_type}"),
            ));
            out.instance = observed(&id).map(|i| InstanceStatus {
                instance_type: instance_type.clone(),
                ..instance_status(&i)
            });
            InstanceResult::Progressing(format!("instance {id} is stopped, type {instance_type}"))
        }
        InstanceAction::Start { id } => {
            p.start_instance(&id).await?;
            tracing::info!(tenant = %name, instance = %id, "starting instance");
            out.instance = observed(&id).map(|i| InstanceStatus {
                state: "pending".into(),
                ..instance_status(&i)
            });
            out.notes
                .push(Note::normal("InstanceStarted", format!("started {id}")));
            InstanceResult::Progressing(format!("instance {id} is starting"))
        }
        InstanceAction::Park { id } => {
            let why = idle.map(IdleReason::as_str).unwrap_or_default();
            p.stop_instance(&id).await?;
            tracing::info!(tenant = %name, instance = %id, reason = why, "stopping the instance of an idle tenant");
            out.notes.push(Note::normal(
                "InstanceStopped",
                format!("stopping {id}, its disk kept, while the tenant is {why}"),
            ));
            out.instance = observed(&id).map(|i| InstanceStatus {
                state: "stopping".into(),
                public_ip: None,
                ..instance_status(&i)
            });
            InstanceResult::Parked {
                settled: false,
                message: format!("instance {id} is stopping while the tenant is {why}"),
            }
        }
        InstanceAction::Parked { id } => {
            let why = idle.map(IdleReason::as_str).unwrap_or_default();
            out.instance = observed(&id).as_ref().map(instance_status);
            InstanceResult::Parked {
                settled: true,
                message: format!("instance {id} is stopped while the tenant is {why}"),
            }
        }
        InstanceAction::NotLaunched => {
            let why = idle.map(IdleReason::as_str).unwrap_or_default();
            out.instance = None;
            InstanceResult::Parked {
                settled: true,
                message: format!("no instance is launched while the tenant is {why}"),
            }
        }
    };
    // An idle tenant's instance that is still changing state (pending, stopping, being
    // resized) is on its way to stopped: its record is withdrawn now, not once it stopped.
    let result = match (idle, result) {
        (Some(why), InstanceResult::Progressing(message)) => InstanceResult::Parked {
            settled: false,
            message: format!("{message} (the tenant is {})", why.as_str()),
        },
        (_, result) => result,
    };
    Ok(result)
}

/// Deletes the record `name` and its ownership record if this tenant (`uid`) holds it (or, with
/// no ownership record, if `recorded`: the tenant's status names it). Returns whether anything
/// was deleted. Another tenant's record is never touched.
async fn release(
    settings: &CloudSettings,
    zone: &str,
    name: &str,
    uid: &str,
    recorded: bool,
) -> Result<bool, CloudError> {
    let p = &settings.provider;
    let existing = p.find_records(zone, name).await?;
    let owner_sets = p.find_records(zone, &dns::owner_name(name)).await?;
    let ours = match Ownership::of(&owner_sets) {
        Some(o) => o.uid == uid,
        None => recorded,
    };
    if !ours {
        return Ok(false);
    }
    let mut changes = dns::deletions(&existing);
    changes.extend(dns::owner_deletions(&owner_sets));
    if changes.is_empty() {
        return Ok(false);
    }
    p.change_records(zone, &changes).await?;
    Ok(true)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Brings the tenant's record up to date; returns the sentence for the condition.
///
/// The record is the tenant's only while its ownership record (`dns::owner_record`) names the
/// tenant's uid: the tenant that claimed a name first keeps it, and another tenant whose
/// subdomain collides gets `SubdomainTaken` and makes no change.
async fn sync_record(
    settings: &CloudSettings,
    client: &Client,
    tenant: &Tenant,
    platform: &Platform,
    instance: &InstanceResult,
    out: &mut CloudOutcome,
) -> Result<String, CloudError> {
    let p = &settings.provider;
    let Some(zone) = platform
        .spec
        .hosted_zone_id
        .as_deref()
        .map(normalize_zone_id)
    else {
        out.dns_record = None;
        return Ok(format!(
            "platform {} has no hostedZoneId: no DNS record",
            tenant.spec.platform
        ));
    };
    let name = record_name(tenant.subdomain(), &platform.spec.domain);
    let previous = out.dns_record.as_deref().map(normalize_name);
    let uid = tenant.metadata.uid.clone().unwrap_or_default();

    // A renamed record: the old one goes first, so a crash between the two steps leaves at most
    // a missing record (recreated next time), never an orphan.
    if let Some(old) = previous.as_deref().filter(|old| *old != name) {
        if release(settings, &zone, old, &uid, true).await? {
            out.notes.push(Note::normal(
                "DnsRecordDeleted",
                format!("deleted {}", display_name(old)),
            ));
        }
        out.dns_record = None;
    }
    let recorded = previous.as_deref() == Some(name.as_str());

    let wanted = match dns::wanted_record(&name, instance, settings.ingress_address.as_ref()) {
        WantedRecord::Record(r) => r,
        WantedRecord::NoPublicIp => {
            let id = out
                .instance
                .as_ref()
                .map(|i| i.id.as_str())
                .unwrap_or_default();
            return Err(CloudError::Config(format!(
                "instance {id} is running without a public IP, so {} cannot point at it \
                 (launch in a subnet that assigns public addresses)",
                display_name(&name)
            )));
        }
        WantedRecord::WaitForAddress => {
            // Whatever record exists stays until the address is known.
            return Ok(format!(
                "record {} waits for the instance's address",
                display_name(&name)
            ));
        }
        WantedRecord::Withdrawn => {
            let existing = p.find_records(&zone, &name).await?;
            let owner_sets = p.find_records(&zone, &dns::owner_name(&name)).await?;
            let ours = Ownership::of(&owner_sets).map_or(recorded, |o| o.uid == uid);
            let changes = if ours {
                dns::deletions(&existing)
            } else {
                Vec::new()
            };
            if !changes.is_empty() {
                p.change_records(&zone, &changes).await?;
                tracing::info!(tenant = %tenant.metadata.name.as_deref().unwrap_or_default(), record = %name, "DNS record withdrawn while the instance is stopped");
                out.notes.push(Note::normal(
                    "DnsRecordWithdrawn",
                    format!(
                        "withdrew {} while the instance is stopped (the name stays the tenant's)",
                        display_name(&name)
                    ),
                ));
            }
            return Ok(format!(
                "record {} withdrawn while the instance is stopped",
                display_name(&name)
            ));
        }
        WantedRecord::NoAddress => {
            // A record left from a dedicated tier would point at nothing.
            if recorded {
                release(settings, &zone, &name, &uid, true).await?;
            }
            out.dns_record = None;
            return Ok(format!(
                "no ingress address configured (--ingress-address): no DNS record for {}",
                display_name(&name)
            ));
        }
    };
    let existing = p.find_records(&zone, &name).await?;
    let owner_sets = p.find_records(&zone, &dns::owner_name(&name)).await?;
    let claim = dns::claim(
        &uid,
        Ownership::of(&owner_sets).as_ref(),
        &existing,
        recorded,
    );
    let created = match &claim {
        Claim::Taken { owner } => {
            out.dns_record = None;
            return Err(CloudError::SubdomainTaken {
                record: display_name(&name),
                owner: owner.clone(),
            });
        }
        Claim::Ours { created } => *created,
        Claim::Free => unix_now(),
    };
    let ownership = dns::owner_record(
        &name,
        &Ownership {
            tenant: tenant.metadata.name.clone().unwrap_or_default(),
            uid: uid.clone(),
            retained: tenant.spec.deletion_policy == DeletionPolicy::Retain,
            created,
        },
    );
    let changes = dns::record_changes(&wanted, &existing, &claim, &owner_sets, ownership);
    if !changes.is_empty() {
        owner::confirm_tenant(
            client,
            Owner::of_tenant(tenant),
            Deleting::Refuse,
            settings.kube_timeout,
            "ChangeResourceRecordSets",
        )
        .await?;
        if let Err(e) = p.change_records(&zone, &changes).await {
            // Two tenants claiming a free name at once: one batch fails on the ownership
            // record's CREATE; that tenant sees the winner now.
            if claim == Claim::Free {
                let now = p.find_records(&zone, &dns::owner_name(&name)).await?;
                if let Some(o) = Ownership::of(&now).filter(|o| o.uid != uid) {
                    out.dns_record = None;
                    return Err(CloudError::SubdomainTaken {
                        record: display_name(&name),
                        owner: format!("tenant {} (uid {})", o.tenant, o.uid),
                    });
                }
            }
            return Err(e);
        }
        tracing::info!(tenant = %tenant.metadata.name.as_deref().unwrap_or_default(), record = %name, value = ?wanted.values, "DNS record updated");
        if changes
            .iter()
            .any(|c| matches!(c, RecordChange::Upsert(r) if r.record_type != RecordType::Txt))
        {
            out.notes.push(Note::normal(
                "DnsRecordUpdated",
                format!(
                    "{} {} {}",
                    display_name(&name),
                    wanted.record_type.as_str(),
                    wanted.values.join(",")
                ),
            ));
        }
    }
    out.dns_record = Some(display_name(&name));
    Ok(format!(
        "record {} {} {}",
        display_name(&name),
        wanted.record_type.as_str(),
        wanted.values.join(",")
    ))
}

/// The phase of a tenant once its cloud resources are taken into account. `was_ready`: the
/// stack has been Ready before (so a failure now degrades it rather than failing it).
pub fn phase(phase: TenantPhase, state: &CloudState, was_ready: bool) -> TenantPhase {
    if !matches!(
        phase,
        TenantPhase::Ready | TenantPhase::Provisioning | TenantPhase::Degraded
    ) {
        return phase;
    }
    match state {
        CloudState::Ready => phase,
        CloudState::Failed(e) if e.retry() == Retry::Terminal => {
            if was_ready || phase == TenantPhase::Degraded {
                TenantPhase::Degraded
            } else {
                TenantPhase::Failed
            }
        }
        CloudState::Failed(_) | CloudState::Progressing => match phase {
            TenantPhase::Ready if was_ready => TenantPhase::Degraded,
            TenantPhase::Ready => TenantPhase::Provisioning,
            other => other,
        },
    }
}

/// What [`delete`] did, and whether it is done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deleted {
    /// What it did, for an Event.
    pub done: Vec<String>,
    /// The gate's answer about the instances: those kept (waiting for their `pre-terminate`
    /// backup, or held) mean the deletion is not finished.
    pub termination: Clearance,
}

/// Deletes the tenant's cloud resources (deletion policy `Delete`): terminates every instance
/// tagged with the tenant, each once `gate` clears it (its `pre-terminate` backup), then deletes
/// its record(s). While an instance is kept the record stays too, and the caller waits.
/// Idempotent: safe to call on every poll of the finalizer.
pub async fn delete<G: BeforeTerminate>(
    settings: &CloudSettings,
    gate: &G,
    tenant: &Tenant,
    platform: Option<&Platform>,
) -> Result<Deleted, CloudError> {
    let name = tenant.metadata.name.clone().unwrap_or_default();
    let uid = tenant.metadata.uid.clone().unwrap_or_default();
    let mut out = Deleted::default();
    let ids: Vec<String> = tenant_instances(settings, tenant)
        .await?
        .into_iter()
        .map(|i| i.id)
        .collect();
    out.termination = terminate::terminate(settings, gate, tenant, &ids).await?;
    if !out.termination.cleared.is_empty() {
        out.done
            .push(format!("terminated {}", out.termination.cleared.join(", ")));
    }
    if !out.termination.kept.is_empty() {
        return Ok(out);
    }
    let Some(platform) = platform else {
        if let Some(record) = tenant.status.as_ref().and_then(|s| s.dns_record.as_ref()) {
            tracing::warn!(tenant = %name, %record, "platform is gone: its hosted zone is unknown, the record stays");
        }
        return Ok(out);
    };
    let Some(zone) = platform
        .spec
        .hosted_zone_id
        .as_deref()
        .map(normalize_zone_id)
    else {
        return Ok(out);
    };
    let recorded = tenant
        .status
        .as_ref()
        .and_then(|s| s.dns_record.as_deref())
        .map(normalize_name);
    let mut names = vec![record_name(tenant.subdomain(), &platform.spec.domain)];
    if let Some(recorded) = &recorded {
        if !names.contains(recorded) {
            names.push(recorded.clone());
        }
    }
    for record in names {
        let is_recorded = recorded.as_deref() == Some(record.as_str());
        // Only a record this tenant holds: a colliding tenant's deletion leaves the holder's.
        match release(settings, &zone, &record, &uid, is_recorded).await {
            Ok(true) => {
                tracing::info!(tenant = %name, %record, "deleted DNS record");
                out.done
                    .push(format!("deleted record {}", display_name(&record)));
            }
            Ok(false) => {}
            // No zone, no record in it.
            Err(e) if e.code() == Some("NoSuchHostedZone") => return Ok(out),
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Marks what a `Retain` tenant leaves behind as retained (the instance's tag, the record's
/// ownership record), so the garbage collector never takes it for an orphan once the Tenant
/// is gone. Idempotent.
pub async fn retain(
    settings: &CloudSettings,
    tenant: &Tenant,
    platform: Option<&Platform>,
) -> Result<(), CloudError> {
    let p = &settings.provider;
    let wanted = std::collections::BTreeMap::from([(tags::RETAINED.to_owned(), "true".to_owned())]);
    for i in tenant_instances(settings, tenant).await? {
        if !instance::stale_tags(&i, &wanted).is_empty() {
            p.tag_instance(&i.id, &wanted).await?;
        }
    }
    let (Some(platform), Some(record)) = (
        platform,
        tenant.status.as_ref().and_then(|s| s.dns_record.as_deref()),
    ) else {
        return Ok(());
    };
    let Some(zone) = platform
        .spec
        .hosted_zone_id
        .as_deref()
        .map(normalize_zone_id)
    else {
        return Ok(());
    };
    let owner_sets = match p.find_records(&zone, &dns::owner_name(record)).await {
        Ok(sets) => sets,
        Err(e) if e.code() == Some("NoSuchHostedZone") => return Ok(()),
        Err(e) => return Err(e),
    };
    let uid = tenant.metadata.uid.as_deref().unwrap_or_default();
    if let Some(mut o) = Ownership::of(&owner_sets).filter(|o| o.uid == uid && !o.retained) {
        o.retained = true;
        p.change_records(
            &zone,
            &[RecordChange::Upsert(dns::owner_record(record, &o))],
        )
        .await?;
    }
    Ok(())
}

/// Hands the cloud resources a released Tenant (uid `old_uid`) left retained to `tenant`, a
/// Tenant of the same name adopting its namespace: its instance (tagged with the tenant's name,
/// `old_uid` and retained) is tagged with the new uid and retained as the new tenant's policy
/// says, and the ownership record of `record` (naming `old_uid`, retained) names the new uid. Only resources left
/// retained by that uid are taken, so a live tenant's never are. Idempotent (a second call finds
/// nothing left with `old_uid`). Returns what was taken over, for the Event.
pub async fn take_over(
    settings: &CloudSettings,
    tenant: &Tenant,
    platform: Option<&Platform>,
    old_uid: &str,
    record: Option<&str>,
) -> Result<Vec<String>, CloudError> {
    let p = &settings.provider;
    let name = tenant.metadata.name.clone().unwrap_or_default();
    let uid = tenant.metadata.uid.clone().unwrap_or_default();
    let mut taken = Vec::new();
    let handed = std::collections::BTreeMap::from([
        (tags::TENANT_UID.to_owned(), uid.clone()),
        (
            tags::RETAINED.to_owned(),
            tags::retained_value(tenant.spec.deletion_policy).to_owned(),
        ),
    ]);
    for i in p.find_instances(&name).await? {
        let left_retained = i.tags.get(tags::TENANT_UID).map(String::as_str) == Some(old_uid)
            && i.tags.get(tags::RETAINED).is_some_and(|v| v == "true");
        if left_retained {
            p.tag_instance(&i.id, &handed).await?;
            taken.push(format!("instance {}", i.id));
        }
    }
    let zone = platform
        .and_then(|pl| pl.spec.hosted_zone_id.as_deref())
        .map(normalize_zone_id);
    if let (Some(zone), Some(record)) = (zone, record) {
        let record = normalize_name(record);
        let owner_sets = p.find_records(&zone, &dns::owner_name(&record)).await?;
        if let Some(mut o) = Ownership::of(&owner_sets).filter(|o| o.uid == old_uid && o.retained) {
            o.uid = uid;
            o.retained = false;
            p.change_records(
                &zone,
                &[RecordChange::Upsert(dns::owner_record(&record, &o))],
            )
            .await?;
            taken.push(format!("DNS record {record}"));
        }
    }
    Ok(taken)
}

/// What a `Retain` deletion leaves behind, for the Event that says so.
pub fn retained(tenant: &Tenant) -> Option<String> {
    let st = tenant.status.as_ref()?;
    let mut parts = Vec::new();
    if let Some(i) = &st.instance {
        parts.push(format!("instance {}", i.id));
    }
    if let Some(r) = &st.dns_record {
        parts.push(format!("DNS record {r}"));
    }
    (!parts.is_empty()).then(|| parts.join(" and "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terminal() -> CloudState {
        CloudState::Failed(CloudError::Terminal {
            operation: "RunInstances",
            code: "InvalidAMIID.NotFound".into(),
            message: "m".into(),
        })
    }

    fn retryable() -> CloudState {
        CloudState::Failed(CloudError::Retryable {
            operation: "RunInstances",
            code: "RequestLimitExceeded".into(),
            message: "m".into(),
        })
    }

    #[test]
    fn terminal_error_fails_a_new_stack_and_degrades_a_ready_one() {
        use TenantPhase::*;
        assert_eq!(phase(Provisioning, &terminal(), false), Failed);
        assert_eq!(phase(Ready, &terminal(), false), Failed);
        assert_eq!(phase(Ready, &terminal(), true), Degraded);
        assert_eq!(phase(Degraded, &terminal(), false), Degraded);
        // Suspended and cancelled tenants keep their phase.
        assert_eq!(phase(Suspended, &terminal(), true), Suspended);
        assert_eq!(phase(Cancelled, &terminal(), false), Cancelled);
    }

    #[test]
    fn progressing_or_retrying_is_not_ready() {
        use TenantPhase::*;
        assert_eq!(phase(Ready, &CloudState::Progressing, false), Provisioning);
        assert_eq!(phase(Ready, &CloudState::Progressing, true), Degraded);
        assert_eq!(phase(Ready, &retryable(), false), Provisioning);
        assert_eq!(phase(Provisioning, &retryable(), false), Provisioning);
        assert_eq!(phase(Ready, &CloudState::Ready, false), Ready);
    }
}
