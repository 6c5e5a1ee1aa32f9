//! The tenant's dedicated instance: its tags, its idempotency token, and the pure decision of
//! what to do next from what EC2 reports. Resizing is a small state machine spread over
//! reconciles (running → stop → stopped → modify → start → running), driven only by the
//! observed state, so a restarted controller resumes wherever the instance is.
//!
//! An idle tenant (suspended, cancelled in retention, never paid: [`crate::tenant::serving`])
//! has its instance stopped, never started again while idle, and never launched: its disk is
//! kept (stopping preserves the EBS root volume), and resuming starts the same instance.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use stackplane_crds::{DedicatedInstance, Tenant};

use super::model::ObservedInstance;
use super::tags;

/// Instance states that still count as the tenant's instance. `shutting-down` and
/// `terminated` do not: such an instance is gone and gets replaced.
pub const ACTIVE_STATES: [&str; 4] = ["pending", "running", "stopping", "stopped"];

/// The tags of a tenant's instance (and its volumes).
pub fn tags(tenant: &Tenant) -> BTreeMap<String, String> {
    let name = tenant.metadata.name.clone().unwrap_or_default();
    let customer = tenant
        .spec
        .customer
        .stripe_customer_id
        .clone()
        .or_else(|| tenant.spec.customer.name.clone())
        .unwrap_or_default();
    BTreeMap::from([
        (tags::TENANT.to_owned(), name.clone()),
        (
            tags::TENANT_UID.to_owned(),
            tenant.metadata.uid.clone().unwrap_or_default(),
        ),
        (tags::PLATFORM.to_owned(), tenant.spec.platform.clone()),
        (
            tags::MANAGED_BY.to_owned(),
            tags::MANAGED_BY_VALUE.to_owned(),
        ),
        (
            tags::RETAINED.to_owned(),
            tags::retained_value(tenant.spec.deletion_policy).to_owned(),
        ),
        (tags::CUSTOMER.to_owned(), customer),
        (tags::PLAN.to_owned(), tenant.spec.tier.clone()),
        (tags::NAME.to_owned(), format!("stackplane-{name}")),
    ])
}

/// Whether `instance` belongs to the tenant with `uid`: it carries that uid, or no uid at all
/// (launched before instances carried one). An instance of an earlier tenant of the same name
/// is not this tenant's: the garbage collector decides about it.
pub fn owned_by(instance: &ObservedInstance, uid: Option<&str>) -> bool {
    match (instance.tags.get(tags::TENANT_UID), uid) {
        (Some(tagged), Some(uid)) => tagged == uid,
        _ => true,
    }
}

/// The RunInstances idempotency token (at most 64 ASCII characters).
///
/// Derived from the tenant's uid and the launch parameters, so a retried or restarted reconcile
/// repeats the same token and AWS returns the same instance. `replaces` is the id of the
/// tenant's previous instance (from `status.instance`) when that one is gone: once an instance
/// was terminated from outside, the token changes, and AWS launches a replacement instead of
/// returning the terminated one.
pub fn client_token(uid: &str, desired: &DedicatedInstance, replaces: Option<&str>) -> String {
    let mut h = Sha256::new();
    for part in [
        uid,
        &desired.instance_type,
        &desired.image_id,
        &desired.volume_size_gib.to_string(),
        replaces.unwrap_or(""),
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let digest = hex::encode(h.finalize());
    format!("stackplane-{}", &digest[..48])
}

/// The next step for the tenant's instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceAction {
    /// No instance: launch one.
    Create,
    /// The instance is as wanted and running.
    Ready { id: String },
    /// The instance is between states; look again later.
    Wait { id: String },
    /// Resize, step 1: the running instance has the wrong type.
    Stop { id: String },
    /// Resize, step 2: the stopped instance has the wrong type.
    ModifyType { id: String, instance_type: String },
    /// Resize, step 3 (or stopped from outside, or the tenant resumed): start it.
    Start { id: String },
    /// The tenant is idle and its instance runs (or is starting): stop it, keep its disk.
    Park { id: String },
    /// The tenant is idle and its instance is stopped, of the right type: nothing to do.
    Parked { id: String },
    /// The tenant is idle and has no instance: nothing is launched until it runs again.
    NotLaunched,
}

/// What the instance part of the cloud step left for the DNS part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceResult {
    /// The tier has no dedicated instance.
    Shared,
    /// The instance is running; its public IP (if it has one yet).
    Running(Option<String>),
    /// The instance is not running yet (or is being resized): said in the message.
    Progressing(String),
    /// The tenant is idle: its instance is stopped, stopping or absent (said in the message).
    /// `settled`: nothing is left to do until the tenant runs again.
    Parked { settled: bool, message: String },
}

/// What to do with the tenant's instances: the one to keep and act on, and the duplicates (or,
/// for a tier without a dedicated instance, every instance) to terminate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstancePlan {
    pub action: Option<InstanceAction>,
    pub terminate: Vec<String>,
}

/// Decides from the observed (non-terminated) instances of the tenant. `idle`: the tenant's
/// stack should not run ([`crate::tenant::serving::idle_reason`]). Pure.
pub fn decide(
    desired: Option<&DedicatedInstance>,
    idle: bool,
    found: &[ObservedInstance],
) -> InstancePlan {
    let mut active: Vec<&ObservedInstance> = found
        .iter()
        .filter(|i| ACTIVE_STATES.contains(&i.state.as_str()))
        .collect();
    let Some(desired) = desired else {
        return InstancePlan {
            action: None,
            terminate: active.iter().map(|i| i.id.clone()).collect(),
        };
    };
    // Keep the oldest; a duplicate (from a race with real AWS's eventual consistency) goes.
    active.sort_by(|a, b| {
        a.launch_time
            .cmp(&b.launch_time)
            .then_with(|| a.id.cmp(&b.id))
    });
    let Some((keep, rest)) = active.split_first() else {
        return InstancePlan {
            action: Some(if idle {
                InstanceAction::NotLaunched
            } else {
                InstanceAction::Create
            }),
            terminate: Vec::new(),
        };
    };
    let id = keep.id.clone();
    let right_type = keep.instance_type == desired.instance_type;
    let action = match (keep.state.as_str(), right_type) {
        // Idle: stopped as soon as it can be (a pending instance cannot be stopped yet), and a
        // stopped one is resized in place but never started.
        ("running", _) if idle => InstanceAction::Park { id },
        ("stopped", true) if idle => InstanceAction::Parked { id },
        ("running", true) => InstanceAction::Ready { id },
        ("running", false) => InstanceAction::Stop { id },
        ("stopped", false) => InstanceAction::ModifyType {
            id,
            instance_type: desired.instance_type.clone(),
        },
        ("stopped", true) => InstanceAction::Start { id },
        _ => InstanceAction::Wait { id },
    };
    InstancePlan {
        action: Some(action),
        terminate: rest.iter().map(|i| i.id.clone()).collect(),
    }
}

/// The tags of `instance` that differ from `wanted` (e.g. `Plan` after a tier change).
pub fn stale_tags(
    instance: &ObservedInstance,
    wanted: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    wanted
        .iter()
        .filter(|(k, v)| instance.tags.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(t: &str) -> DedicatedInstance {
        DedicatedInstance {
            instance_type: t.into(),
            image_id: "ami-0123".into(),
            volume_size_gib: 20,
        }
    }

    fn inst(id: &str, t: &str, state: &str, launched: &str) -> ObservedInstance {
        ObservedInstance {
            id: id.into(),
            instance_type: t.into(),
            state: state.into(),
            public_ip: None,
            launch_time: Some(launched.into()),
            tags: BTreeMap::new(),
        }
    }

    #[test]
    fn nothing_found_creates() {
        let p = decide(Some(&desired("t3.micro")), false, &[]);
        assert_eq!(p.action, Some(InstanceAction::Create));
        assert!(p.terminate.is_empty());
        let gone = [inst("i-1", "t3.micro", "terminated", "1")];
        assert_eq!(
            decide(Some(&desired("t3.micro")), false, &gone).action,
            Some(InstanceAction::Create)
        );
    }

    #[test]
    fn resize_walks_stop_modify_start() {
        let d = desired("t3.small");
        let step =
            |state: &str, t: &str| decide(Some(&d), false, &[inst("i-1", t, state, "1")]).action;
        assert_eq!(
            step("running", "t3.micro"),
            Some(InstanceAction::Stop { id: "i-1".into() })
        );
        assert_eq!(
            step("stopping", "t3.micro"),
            Some(InstanceAction::Wait { id: "i-1".into() })
        );
        assert_eq!(
            step("stopped", "t3.micro"),
            Some(InstanceAction::ModifyType {
                id: "i-1".into(),
                instance_type: "t3.small".into()
            })
        );
        assert_eq!(
            step("stopped", "t3.small"),
            Some(InstanceAction::Start { id: "i-1".into() })
        );
        assert_eq!(
            step("pending", "t3.small"),
            Some(InstanceAction::Wait { id: "i-1".into() })
        );
        assert_eq!(
            step("running", "t3.small"),
            Some(InstanceAction::Ready { id: "i-1".into() })
        );
    }

    #[test]
    fn duplicates_keep_the_oldest() {
        let found = [
            inst("i-b", "t3.micro", "running", "2026-01-02T00:00:00Z"),
            inst("i-a", "t3.micro", "pending", "2026-01-01T00:00:00Z"),
            inst("i-c", "t3.micro", "terminated", "2025-01-01T00:00:00Z"),
        ];
        let p = decide(Some(&desired("t3.micro")), false, &found);
        assert_eq!(p.action, Some(InstanceAction::Wait { id: "i-a".into() }));
        assert_eq!(p.terminate, vec!["i-b".to_owned()]);
    }

    #[test]
    fn shared_tier_terminates_every_instance() {
        let found = [
            inst("i-a", "t3.micro", "running", "1"),
            inst("i-b", "t3.micro", "stopped", "2"),
        ];
        let p = decide(None, false, &found);
        assert_eq!(p.action, None);
        assert_eq!(p.terminate, vec!["i-a".to_owned(), "i-b".to_owned()]);
    }

    #[test]
    fn token_is_stable_and_changes_after_a_replacement() {
        let d = desired("t3.micro");
        let a = client_token("uid-1", &d, None);
        assert_eq!(a, client_token("uid-1", &d, None));
        assert!(a.len() <= 64 && a.is_ascii());
        assert_ne!(a, client_token("uid-2", &d, None));
        assert_ne!(a, client_token("uid-1", &d, Some("i-gone")));
        assert_ne!(a, client_token("uid-1", &desired("t3.small"), None));
    }

    #[test]
    fn stale_tags_after_tier_change() {
        let mut i = inst("i-1", "t3.micro", "running", "1");
        i.tags = BTreeMap::from([("Plan".into(), "starter".into()), ("A".into(), "1".into())]);
        let wanted = BTreeMap::from([("Plan".into(), "business".into()), ("A".into(), "1".into())]);
        assert_eq!(
            stale_tags(&i, &wanted),
            BTreeMap::from([("Plan".into(), "business".into())])
        );
    }

    /// Every observed state × the right or a wrong type × a running or an idle tenant × a
    /// dedicated tier or none: the whole decision as one table, so a change to any cell is a
    /// visible change here.
    #[test]
    fn every_state_type_idleness_and_tier() {
        use InstanceAction as A;
        let wanted = desired("t3.small");
        let id = || "i-1".to_owned();
        let resize = || A::ModifyType {
            id: id(),
            instance_type: "t3.small".into(),
        };
        #[rustfmt::skip]
        let table: [(&str, bool, InstanceAction, InstanceAction); 12] = [
            // state           right type  the tenant runs       the tenant is idle
            ("pending",        true,  A::Wait { id: id() },  A::Wait { id: id() }),
            ("pending",        false, A::Wait { id: id() },  A::Wait { id: id() }),
            ("running",        true,  A::Ready { id: id() }, A::Park { id: id() }),
            ("running",        false, A::Stop { id: id() },  A::Park { id: id() }),
            ("stopping",       true,  A::Wait { id: id() },  A::Wait { id: id() }),
            ("stopping",       false, A::Wait { id: id() },  A::Wait { id: id() }),
            // Stopped by hand: started again only while the tenant runs.
            ("stopped",        true,  A::Start { id: id() }, A::Parked { id: id() }),
            ("stopped",        false, resize(),              resize()),
            // Gone (or going): not the tenant's instance any more; a new one is launched only
            // for a tenant that runs.
            ("shutting-down",  true,  A::Create,             A::NotLaunched),
            ("shutting-down",  false, A::Create,             A::NotLaunched),
            ("terminated",     true,  A::Create,             A::NotLaunched),
            ("terminated",     false, A::Create,             A::NotLaunched),
        ];
        for (state, right_type, runs, idles) in table {
            let t = if right_type { "t3.small" } else { "t3.micro" };
            let found = [inst("i-1", t, state, "1")];
            for (idle, action) in [(false, runs), (true, idles)] {
                let dedicated = decide(Some(&wanted), idle, &found);
                assert_eq!(
                    dedicated.action,
                    Some(action),
                    "{state}, right type: {right_type}, idle: {idle}"
                );
                assert!(
                    dedicated.terminate.is_empty(),
                    "{state}: nothing to terminate"
                );
                // A tier without a dedicated instance keeps none: every active one goes.
                let shared = decide(None, idle, &found);
                assert_eq!(shared.action, None, "{state}, shared tier");
                let active = ACTIVE_STATES.contains(&state);
                assert_eq!(
                    shared.terminate,
                    if active { vec![id()] } else { Vec::new() },
                    "{state}, shared tier"
                );
            }
        }
    }

    /// Suspended, then resumed: the same instance is stopped, stays stopped through any
    /// number of reconciles, and is started again; nothing is launched or terminated.
    #[test]
    fn suspension_then_resume_keeps_the_instance() {
        let d = desired("t3.small");
        let at = |state: &str, idle: bool| {
            decide(Some(&d), idle, &[inst("i-1", "t3.small", state, "1")])
        };
        assert_eq!(
            at("running", true).action,
            Some(InstanceAction::Park { id: "i-1".into() })
        );
        for _ in 0..3 {
            let p = at("stopped", true);
            assert_eq!(p.action, Some(InstanceAction::Parked { id: "i-1".into() }));
            assert!(p.terminate.is_empty());
        }
        assert_eq!(
            at("stopped", false).action,
            Some(InstanceAction::Start { id: "i-1".into() })
        );
        // An idle tenant that never had an instance gets none.
        assert_eq!(
            decide(Some(&d), true, &[]).action,
            Some(InstanceAction::NotLaunched)
        );
    }

    /// Whatever state the duplicates are in, only the oldest active instance is acted on and
    /// every other active one is terminated; gone ones are neither.
    #[test]
    fn duplicates_in_every_state() {
        let wanted = desired("t3.small");
        for state in [
            "pending",
            "running",
            "stopping",
            "stopped",
            "shutting-down",
            "terminated",
        ] {
            let found = [
                inst("i-new", "t3.small", state, "2026-02-01T00:00:00Z"),
                inst("i-old", "t3.small", "running", "2026-01-01T00:00:00Z"),
            ];
            let p = decide(Some(&wanted), false, &found);
            assert_eq!(
                p.action,
                Some(InstanceAction::Ready { id: "i-old".into() }),
                "{state}"
            );
            let expected: Vec<String> = if ACTIVE_STATES.contains(&state) {
                vec!["i-new".into()]
            } else {
                Vec::new()
            };
            assert_eq!(p.terminate, expected, "{state}");
        }
    }
}
