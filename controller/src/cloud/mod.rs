//! The `cloud` step of the Tenant pipeline: the dedicated EC2 instance of tiers that have one,
//! and every tenant's Route53 record `<subdomain>.<domain>`.
//!
//! Each reconcile makes at most one state-changing call per resource and never waits for AWS:
//! an instance that is starting, stopping or being resized is looked at again after
//! [`CloudSettings::progress_requeue`]. Everything is found again from AWS (instances by tag,
//! records by name) on every reconcile, so a restarted controller resumes where the last one
//! stopped, drift from outside is corrected, and nothing is created twice.

pub mod aws;
pub mod dns;
pub mod error;
pub mod instance;
pub mod provider;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::runtime::events::EventType;
use stackplane_crds::{InstanceStatus, Platform, Tenant, TenantPhase, Tier};

pub use dns::IngressAddress;
pub use error::{CloudError, Retry};
pub use provider::CloudProvider;

use dns::{normalize_name, normalize_zone_id, record_name};
use instance::InstanceAction;
use provider::{LaunchSpec, ObservedInstance, Record};

/// Condition type of the cloud step.
pub const CLOUD_READY: &str = "CloudReady";

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

/// What the instance part left for the DNS part.
enum InstanceResult {
    /// The tier has no dedicated instance.
    Shared,
    /// The instance is running; its public IP (if it has one yet).
    Running(Option<String>),
    /// The instance is not running yet (or is being resized): said in the message.
    Progressing(String),
}

/// Runs the cloud step for a valid tenant on `tier` of `platform`.
pub async fn sync(
    settings: &CloudSettings,
    tenant: &Tenant,
    platform: &Platform,
    tier: &Tier,
) -> CloudOutcome {
    let name = tenant.metadata.name.clone().unwrap_or_default();
    let fp = fingerprint(settings, tenant, platform, tier);
    if let Some(outcome) = settings.remembered(&name, fp) {
        return outcome;
    }
    let outcome = sync_uncached(settings, tenant, platform, tier).await;
    settings.remember(&name, fp, &outcome);
    outcome
}

async fn sync_uncached(
    settings: &CloudSettings,
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
    };
    let instance = match sync_instance(settings, tenant, tier, &mut out).await {
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
    }
    match sync_record(settings, tenant, platform, &instance, &mut out).await {
        Ok(m) => messages.push(m),
        Err(e) => return failed(out, e),
    }
    out.message = messages.join("; ");
    if let InstanceResult::Progressing(_) = instance {
        out.state = CloudState::Progressing;
        out.ready = false;
        out.reason = "InstanceNotRunning";
    }
    out
}

fn failed(mut out: CloudOutcome, e: CloudError) -> CloudOutcome {
    out.ready = false;
    out.reason = match e.retry() {
        Retry::Terminal => "CloudError",
        Retry::Retryable => "CloudRetrying",
    };
    out.message = e.to_string();
    out.notes.push(Note {
        warning: true,
        reason: out.reason,
        message: e.to_string(),
    });
    out.state = CloudState::Failed(e);
    out
}

async fn sync_instance(
    settings: &CloudSettings,
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
    let found = p.find_instances(&name).await?;
    let plan = instance::decide(desired, &found);
    if !plan.terminate.is_empty() {
        p.terminate_instances(&plan.terminate).await?;
        tracing::info!(tenant = %name, instances = ?plan.terminate, "terminated instances the tenant should not have");
        out.notes.push(Note::normal(
            "InstanceTerminated",
            format!("terminated {}", plan.terminate.join(", ")),
        ));
    }
    let (Some(action), Some(desired)) = (plan.action, desired) else {
        out.instance = None;
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
            InstanceResult::Progressing(format!("instance {id} is starting"))
        }
    };
    Ok(result)
}

/// Brings the tenant's record up to date; returns the sentence for the condition.
async fn sync_record(
    settings: &CloudSettings,
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

    // A renamed record: the old one goes first, so a crash between the two steps leaves at most
    // a missing record (recreated next time), never an orphan.
    if let Some(old) = previous.as_deref().filter(|old| *old != name) {
        let existing = p.find_records(&zone, old).await?;
        let deletions = dns::deletions(&existing);
        if !deletions.is_empty() {
            p.change_records(&zone, &deletions).await?;
            out.notes.push(Note::normal(
                "DnsRecordDeleted",
                format!("deleted {}", display_name(old)),
            ));
        }
        out.dns_record = None;
    }

    let wanted: Option<Record> = match instance {
        InstanceResult::Running(Some(ip)) => Some(dns::a_record(&name, ip)),
        // EC2 assigns a public address at launch or never: waiting would not help.
        InstanceResult::Running(None) => {
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
        InstanceResult::Progressing(_) => {
            // The address is not known yet: whatever record exists stays until it is.
            return Ok(format!(
                "record {} waits for the instance's address",
                display_name(&name)
            ));
        }
        InstanceResult::Shared => settings
            .ingress_address
            .as_ref()
            .map(|a| dns::ingress_record(&name, a)),
    };
    let existing = p.find_records(&zone, &name).await?;
    let Some(wanted) = wanted else {
        // No address to point at: a record left from a dedicated tier would point at nothing.
        let deletions = dns::deletions(&existing);
        if !deletions.is_empty() && previous.as_deref() == Some(name.as_str()) {
            p.change_records(&zone, &deletions).await?;
        }
        out.dns_record = None;
        return Ok(format!(
            "no ingress address configured (--ingress-address): no DNS record for {}",
            display_name(&name)
        ));
    };
    let changes = dns::changes_for(&wanted, &existing);
    if !changes.is_empty() {
        p.change_records(&zone, &changes).await?;
        tracing::info!(tenant = %tenant.metadata.name.as_deref().unwrap_or_default(), record = %name, value = ?wanted.values, "DNS record updated");
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

/// Deletes the tenant's cloud resources (deletion policy `Delete`): terminates every instance
/// tagged with the tenant and deletes its record(s). Idempotent: safe to call on every poll of
/// the finalizer. Returns what it did, for an Event.
pub async fn delete(
    settings: &CloudSettings,
    tenant: &Tenant,
    platform: Option<&Platform>,
) -> Result<Vec<String>, CloudError> {
    let p = &settings.provider;
    let name = tenant.metadata.name.clone().unwrap_or_default();
    let mut done = Vec::new();
    let ids: Vec<String> = p
        .find_instances(&name)
        .await?
        .into_iter()
        .map(|i| i.id)
        .collect();
    if !ids.is_empty() {
        p.terminate_instances(&ids).await?;
        tracing::info!(tenant = %name, instances = ?ids, "terminated instances");
        done.push(format!("terminated {}", ids.join(", ")));
    }
    let Some(platform) = platform else {
        if let Some(record) = tenant.status.as_ref().and_then(|s| s.dns_record.as_ref()) {
            tracing::warn!(tenant = %name, %record, "platform is gone: its hosted zone is unknown, the record stays");
        }
        return Ok(done);
    };
    let Some(zone) = platform
        .spec
        .hosted_zone_id
        .as_deref()
        .map(normalize_zone_id)
    else {
        return Ok(done);
    };
    let mut names = vec![record_name(tenant.subdomain(), &platform.spec.domain)];
    if let Some(recorded) = tenant.status.as_ref().and_then(|s| s.dns_record.as_deref()) {
        let recorded = normalize_name(recorded);
        if !names.contains(&recorded) {
            names.push(recorded);
        }
    }
    for record in names {
        let existing = match p.find_records(&zone, &record).await {
            Ok(e) => e,
            // No zone, no record in it.
            Err(e) if e.code() == Some("NoSuchHostedZone") => return Ok(done),
            Err(e) => return Err(e),
        };
        let deletions = dns::deletions(&existing);
        if !deletions.is_empty() {
            p.change_records(&zone, &deletions).await?;
            tracing::info!(tenant = %name, %record, "deleted DNS record");
            done.push(format!("deleted record {}", display_name(&record)));
        }
    }
    Ok(done)
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
