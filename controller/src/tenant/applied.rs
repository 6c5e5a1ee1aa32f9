//! What the controller last applied to each tenant, so that a reconcile with nothing new to do
//! (the periodic resync, a Deployment reporting its replicas, the Tenant's own status write)
//! applies and prunes nothing: one list of Deployments is then all it costs.
//!
//! A tenant is applied again when its plan's fingerprint changes (a spec, Platform or revision
//! change) or when one of its objects changed under it: the child watches (metadata only, see
//! [`drift_triggers`]) mark the tenant `changed` when an object was written by anyone but this
//! controller (a hand edit), deleted, or when a watch had to list again (what happened in the
//! gap is unknown). The state is in memory only: after a restart every tenant is applied and
//! pruned once, as before.
//!
//! A (re-)list has a window: an object made and deleted between the list's start and its
//! snapshot is in neither the list nor the watch that follows, so no event tells of its
//! deletion. An apply that overlaps any list window (one was in progress when it was
//! recorded, or one started or finished while it ran) is therefore recorded as `changed`,
//! and the tenant's next trigger (the list's own `InitApply`s among them) applies it again.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Resource, ResourceExt};
use stackplane_core::contract::labels::TENANT;

use crate::k8s::FIELD_MANAGER;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    uid: String,
    fingerprint: u64,
    /// An object of the tenant changed since the last apply began.
    changed: bool,
    /// The resourceVersion (as a number; 0: none or not numeric) of this controller's last
    /// status write to the Tenant, see [`Applied::behind_own_write`].
    written: u64,
}

/// The last plan applied to each tenant (by name: the child watches know tenants by label).
#[derive(Debug, Default)]
pub struct Applied {
    tenants: Mutex<HashMap<String, Entry>>,
    lists: Mutex<Lists>,
}

/// The child watches' (re-)lists.
#[derive(Debug, Default)]
struct Lists {
    /// Moves whenever a list starts or finishes.
    epoch: u64,
    /// The kinds whose list is in progress.
    listing: std::collections::HashSet<&'static str>,
}

/// When an apply began, as [`Applied::epoch`] tells; given back to [`Applied::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch(u64);

impl Applied {
    /// Whether `tenant` (with this uid) last had exactly this plan applied and nothing of it
    /// changed since; when not, any `changed` mark is taken (the apply that follows covers it;
    /// a change during that apply marks the tenant again).
    pub fn up_to_date(&self, tenant: &str, uid: &str, fingerprint: u64) -> bool {
        let Ok(mut tenants) = self.tenants.lock() else {
            return false;
        };
        match tenants.get_mut(tenant) {
            Some(e) if e.uid == uid && e.fingerprint == fingerprint && !e.changed => true,
            Some(e) => {
                e.changed = false;
                false
            }
            None => false,
        }
    }

    /// Taken before an apply begins, for [`Applied::record`].
    pub fn epoch(&self) -> Epoch {
        Epoch(self.lists.lock().map(|l| l.epoch).unwrap_or(u64::MAX))
    }

    /// A child watch of `kind` starts a (re-)list: what changed while it was down is unknown,
    /// so every tenant is applied again on its next reconcile.
    pub fn list_started(&self, kind: &'static str) {
        self.forget_all();
        if let Ok(mut lists) = self.lists.lock() {
            lists.epoch += 1;
            lists.listing.insert(kind);
        }
    }

    /// The list of `kind` is complete; its watch now reports every change.
    pub fn list_done(&self, kind: &'static str) {
        if let Ok(mut lists) = self.lists.lock() {
            lists.epoch += 1;
            lists.listing.remove(kind);
        }
    }

    /// Whether an apply that began at `since` overlapped a list window (see the module docs).
    fn overlapped_a_list(&self, since: Epoch) -> bool {
        self.lists
            .lock()
            .map(|l| l.epoch != since.0 || !l.listing.is_empty())
            .unwrap_or(true)
    }

    /// Records a successful apply and prune of the plan with `fingerprint`, begun at `since`
    /// (a `changed` mark set meanwhile is kept; an apply that overlapped a list is marked).
    pub fn record(&self, tenant: &str, uid: &str, fingerprint: u64, since: Epoch) {
        let overlapped = self.overlapped_a_list(since);
        if let Ok(mut tenants) = self.tenants.lock() {
            let same = tenants.get(tenant).filter(|e| e.uid == uid);
            let changed = overlapped || same.is_some_and(|e| e.changed);
            let written = same.map_or(0, |e| e.written);
            tenants.insert(
                tenant.to_owned(),
                Entry {
                    uid: uid.to_owned(),
                    fingerprint,
                    changed,
                    written,
                },
            );
        }
    }

    /// Whether anything was ever recorded for `tenant` by this process.
    pub fn knows(&self, tenant: &str) -> bool {
        self.tenants
            .lock()
            .map(|t| t.contains_key(tenant))
            .unwrap_or(false)
    }

    /// This controller wrote `tenant`'s status, which is now at `resource_version`.
    pub fn wrote(&self, tenant: &str, uid: &str, resource_version: Option<&str>) {
        if let Ok(mut tenants) = self.tenants.lock() {
            if let Some(e) = tenants.get_mut(tenant).filter(|e| e.uid == uid) {
                e.written = numeric(resource_version);
            }
        }
    }

    /// Whether a copy of `tenant` at `resource_version` predates this controller's last
    /// status write to it: the watch has not delivered that write's echo yet. Watch events
    /// come in resourceVersion order, so such a copy also misses nothing newer. Only
    /// numeric versions (etcd's revisions) are compared; any other answers `false`.
    pub fn behind_own_write(
        &self,
        tenant: &str,
        uid: &str,
        resource_version: Option<&str>,
    ) -> bool {
        let seen = numeric(resource_version);
        self.tenants
            .lock()
            .ok()
            .and_then(|t| t.get(tenant).filter(|e| e.uid == uid).map(|e| e.written))
            .is_some_and(|written| seen != 0 && written > seen)
    }

    /// One of `tenant`'s objects changed under it: the next reconcile applies again.
    pub fn changed(&self, tenant: &str) {
        if let Ok(mut tenants) = self.tenants.lock() {
            if let Some(e) = tenants.get_mut(tenant) {
                e.changed = true;
            }
        }
    }

    /// Forgets `tenant` (a failed apply, a deleted tenant).
    pub fn forget(&self, tenant: &str) {
        if let Ok(mut tenants) = self.tenants.lock() {
            tenants.remove(tenant);
        }
    }

    /// Forgets every tenant.
    fn forget_all(&self) {
        if let Ok(mut tenants) = self.tenants.lock() {
            tenants.clear();
        }
    }

    /// Tenants known (for tests and the memory figures).
    pub fn len(&self) -> usize {
        self.tenants.lock().map(|t| t.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A resourceVersion as a number; 0 when there is none or it is not one.
fn numeric(resource_version: Option<&str>) -> u64 {
    resource_version.and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// A fingerprint of what is applied, from each object's JSON in order.
pub fn fingerprint<'a>(objects: impl IntoIterator<Item = &'a serde_json::Value>) -> u64 {
    let mut h = DefaultHasher::new();
    for o in objects {
        // serde_json's `Value` keeps maps sorted (no `preserve_order`): the same object always
        // prints the same.
        o.to_string().hash(&mut h);
    }
    h.finish()
}

/// Whether the write that produced `fields` was someone else's: the newest entry not ours is
/// at least as new as our newest (timestamps have 1 s resolution: a tie counts as theirs) and
/// owns more than `status` (a kubelet or controller reporting status is not drift). No entry
/// of ours at all (the object was made or taken over by someone else) counts as theirs.
pub fn written_by_others(fields: &[ManagedFieldsEntry]) -> bool {
    let time = |e: &ManagedFieldsEntry| e.time.as_ref().map(|t| t.0);
    let ours = fields
        .iter()
        .filter(|e| e.manager.as_deref() == Some(FIELD_MANAGER))
        .filter_map(time)
        .max();
    let Some(ours) = ours else {
        return true;
    };
    fields
        .iter()
        .filter(|e| e.manager.as_deref() != Some(FIELD_MANAGER))
        .filter(|e| !status_only(e))
        .any(|e| time(e).is_none_or(|t| t >= ours))
}

/// Whether a managedFields entry owns nothing but `status` (or a status subresource write).
fn status_only(e: &ManagedFieldsEntry) -> bool {
    if e.subresource.as_deref() == Some("status") {
        return true;
    }
    match e.fields_v1.as_ref().map(|f| &f.0) {
        Some(serde_json::Value::Object(m)) => !m.is_empty() && m.keys().all(|k| k == "f:status"),
        _ => false,
    }
}

/// The metadata-only watch of one kind of tenant object as the trigger stream of the Tenant
/// controller. A tenant is marked [`Applied::changed`] when the event is drift (see the module
/// docs), and reconciled when it is drift, a deletion, a (re-)list, or any change of a kind
/// whose status the tenant's status reads (`status_matters`: Deployments). For the other kinds
/// the echo of the controller's own writes triggers nothing: the reconcile that wrote them
/// already read what it needs. managedFields are dropped once read: nothing of the event is kept.
pub fn drift_triggers<K>(
    kind: &'static str,
    events: impl Stream<Item = watcher::Result<Event<PartialObjectMeta<K>>>> + Send + 'static,
    applied: Arc<Applied>,
    status_matters: bool,
) -> impl Stream<Item = watcher::Result<PartialObjectMeta<K>>> + Send + 'static
where
    K: Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Clone + Send,
    PartialObjectMeta<K>: Resource,
{
    events.default_backoff().filter_map(move |event| {
        let applied = applied.clone();
        async move {
            let tenant = |o: &PartialObjectMeta<K>| o.labels().get(TENANT).cloned();
            match event {
                Ok(Event::Apply(mut o)) => {
                    let drift = o.metadata.deletion_timestamp.is_some()
                        || written_by_others(o.managed_fields());
                    // A status report cannot be told from the echo of our own write by
                    // managedFields: the API server moves an entry's time only when the set of
                    // fields it owns changes, not when a kubelet or the Deployment controller
                    // writes new values into the same fields (seen: a Deployment reported
                    // rolled out kept its status entry's older time, and the tenant never
                    // learned). So every event of such a kind reconciles; with nothing new to
                    // apply that costs one list of Deployments.
                    let report = status_matters;
                    if drift {
                        if let Some(t) = tenant(&o) {
                            applied.changed(&t);
                        }
                    }
                    o.managed_fields_mut().clear();
                    (drift || report).then_some(Ok(o))
                }
                Ok(Event::InitApply(mut o)) => {
                    if let Some(t) = tenant(&o) {
                        if o.metadata.deletion_timestamp.is_some()
                            || written_by_others(o.managed_fields())
                        {
                            applied.changed(&t);
                        }
                    }
                    o.managed_fields_mut().clear();
                    Some(Ok(o))
                }
                Ok(Event::Delete(mut o)) => {
                    if let Some(t) = tenant(&o) {
                        applied.changed(&t);
                    }
                    o.managed_fields_mut().clear();
                    Some(Ok(o))
                }
                Ok(Event::Init) => {
                    applied.list_started(kind);
                    None
                }
                Ok(Event::InitDone) => {
                    applied.list_done(kind);
                    None
                }
                Err(error) => Some(Err(error)),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, Time};
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    fn entry(manager: &str, at: i64, fields: serde_json::Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.to_owned()),
            operation: Some("Apply".to_owned()),
            time: Some(Time(Timestamp::from_second(at).expect("time"))),
            fields_v1: Some(FieldsV1(fields)),
            ..ManagedFieldsEntry::default()
        }
    }

    #[test]
    fn our_own_write_is_not_drift() {
        let spec = json!({"f:spec": {"f:replicas": {}}});
        assert!(!written_by_others(&[entry(
            FIELD_MANAGER,
            100,
            spec.clone()
        )]));
        // An older hand edit, since repaired by a newer apply of ours.
        assert!(!written_by_others(&[
            entry("kubectl-edit", 90, spec.clone()),
            entry(FIELD_MANAGER, 100, spec)
        ]));
    }

    #[test]
    fn a_newer_or_same_second_foreign_write_is_drift() {
        let spec = json!({"f:spec": {"f:replicas": {}}});
        for at in [100, 101] {
            assert!(written_by_others(&[
                entry(FIELD_MANAGER, 100, spec.clone()),
                entry("kubectl-edit", at, spec.clone())
            ]));
        }
        assert!(
            written_by_others(&[entry("someone", 1, spec)]),
            "no entry of ours"
        );
        assert!(written_by_others(&[]), "no managedFields at all");
    }

    #[test]
    fn a_status_report_is_not_drift() {
        let spec = json!({"f:spec": {"f:replicas": {}}});
        let status = json!({"f:status": {"f:availableReplicas": {}}});
        assert!(!written_by_others(&[
            entry(FIELD_MANAGER, 100, spec.clone()),
            entry("kubelet", 200, status)
        ]));
        let mut sub = entry("kube-controller-manager", 200, json!({"f:status": {}}));
        sub.subresource = Some("status".into());
        assert!(!written_by_others(&[entry(FIELD_MANAGER, 100, spec), sub]));
    }

    #[test]
    fn a_change_forces_the_next_apply_once() {
        let a = Applied::default();
        assert!(!a.up_to_date("t", "u1", 7), "never applied");
        a.record("t", "u1", 7, a.epoch());
        assert!(a.up_to_date("t", "u1", 7));
        assert!(!a.up_to_date("t", "u1", 8), "another plan");
        assert!(
            !a.up_to_date("t", "u2", 7),
            "another tenant of the same name"
        );
        a.changed("t");
        assert!(!a.up_to_date("t", "u1", 7), "changed: apply");
        // The apply's own success is recorded; a change during it is kept.
        a.changed("t");
        a.record("t", "u1", 7, a.epoch());
        assert!(!a.up_to_date("t", "u1", 7), "changed during the apply");
        a.record("t", "u1", 7, a.epoch());
        assert!(a.up_to_date("t", "u1", 7));
        a.list_started("Deployment");
        assert!(!a.up_to_date("t", "u1", 7), "a watch listed again");
        assert!(a.is_empty());
    }

    /// An object made and deleted inside a list window leaves no event: an apply that
    /// overlapped the window is applied again.
    #[test]
    fn an_apply_overlapping_a_list_is_applied_again() {
        let a = Applied::default();
        // The list is in progress while the apply runs and when it is recorded.
        a.list_started("Deployment");
        let since = a.epoch();
        a.record("t", "u", 7, since);
        assert!(!a.up_to_date("t", "u", 7), "recorded during a list");
        a.list_done("Deployment");
        // The list started and finished while the apply ran.
        let since = a.epoch();
        a.list_started("Service");
        a.list_done("Service");
        a.record("t", "u", 7, since);
        assert!(
            !a.up_to_date("t", "u", 7),
            "a list came and went during the apply"
        );
        // No list near it: the apply stands.
        let since = a.epoch();
        a.record("t", "u", 7, since);
        assert!(a.up_to_date("t", "u", 7));
    }

    #[test]
    fn a_copy_older_than_our_own_status_write_is_behind() {
        let a = Applied::default();
        assert!(
            !a.behind_own_write("t", "u1", Some("5")),
            "nothing written yet"
        );
        a.record("t", "u1", 1, a.epoch());
        a.wrote("t", "u1", Some("10"));
        assert!(a.behind_own_write("t", "u1", Some("9")));
        assert!(!a.behind_own_write("t", "u1", Some("10")));
        assert!(!a.behind_own_write("t", "u1", Some("11")));
        assert!(
            !a.behind_own_write("t", "u2", Some("9")),
            "another tenant of that name"
        );
        assert!(
            !a.behind_own_write("t", "u1", Some("x")),
            "only numbers compare"
        );
        a.record("t", "u1", 2, a.epoch());
        assert!(
            a.behind_own_write("t", "u1", Some("9")),
            "a new apply keeps it"
        );
        a.forget("t");
        assert!(!a.behind_own_write("t", "u1", Some("9")));
    }

    #[test]
    fn fingerprints_follow_content_and_order() {
        let (x, y) = (json!({"a": 1}), json!({"b": 2}));
        assert_eq!(fingerprint([&x, &y]), fingerprint([&x, &y]));
        assert_ne!(fingerprint([&x, &y]), fingerprint([&y, &x]));
        assert_ne!(fingerprint([&x]), fingerprint([&json!({"a": 2})]));
    }
}
