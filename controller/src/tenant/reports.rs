//! What each tenant's Deployments report (replicas ready, rolled out, stalled), kept from the
//! Deployment watch, so that a reconcile with nothing to apply reads its tenant's status inputs
//! from memory instead of listing the Deployments: that list was the one API request a healthy
//! tenant cost per resync, and most of the requests of the reconciles that follow a Deployment
//! becoming available.
//!
//! Only a few numbers and the stall message of each Deployment are kept, never the object. A
//! pass that applies records the reports of the API server's answers to its applies (the watch
//! may not have delivered the echo of that apply yet). A report never goes back to an older
//! generation of the same Deployment: a late watch event cannot make a Deployment that has not
//! rolled out its new spec look rolled out. And an answer replaces what the watch said only
//! when it is of a newer generation (or another object): at the same generation the watch may
//! already hold a newer status (a node reported the replicas ready while the pass was still
//! applying), and the answer, older, would hide it until the next report.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use kube::core::{PartialObjectMeta, PartialObjectMetaExt};
use kube::runtime::watcher::{self, Event};
use kube::ResourceExt;
pub use stackplane_core::tenant::deployment::{DeploymentReport, Source};

use super::applied::written_by_others;

/// The reports of every watched Deployment, by namespace.
#[derive(Debug, Default)]
pub struct DeploymentReports {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Each report with the number of the watch's list it was last seen in or after.
    namespaces: HashMap<Box<str>, Vec<(DeploymentReport, u64)>>,
    /// Moves when the watch starts a (re-)list.
    list: u64,
}

/// What an update did to the reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Update {
    Changed,
    Unchanged,
}

impl DeploymentReports {
    /// The reports of the Deployments in namespace `ns`.
    pub fn of(&self, ns: &str) -> Vec<DeploymentReport> {
        self.inner
            .lock()
            .map(|i| {
                i.namespaces
                    .get(ns)
                    .map(|v| v.iter().map(|(r, _)| r.clone()).collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }

    /// Records what the answers to applies in namespace `ns` reported (each report unless the
    /// cache holds a newer generation of it).
    pub fn record(&self, ns: &str, reports: &[DeploymentReport]) {
        for r in reports {
            self.upsert(ns, r.clone(), Source::Answer);
        }
    }

    fn upsert(&self, ns: &str, report: DeploymentReport, source: Source) -> Update {
        let Ok(mut inner) = self.inner.lock() else {
            return Update::Changed;
        };
        let list = inner.list;
        let reports = inner.namespaces.entry(ns.into()).or_default();
        match reports.iter_mut().find(|(r, _)| r.name == report.name) {
            Some((old, seen)) => {
                *seen = list;
                if !report.supersedes(old, source) || *old == report {
                    return Update::Unchanged;
                }
                *old = report;
            }
            None => {
                // Kept at its length: a pushed list has room for 4, and most tenants have
                // fewer Deployments (10,000 tenants hold these for as long as they run).
                reports.push((report, list));
                reports.shrink_to_fit();
            }
        }
        Update::Changed
    }

    /// Removes the report of `deleted` (not that of a newer object of its name an answer
    /// already told of).
    fn remove(&self, ns: &str, deleted: &DeploymentReport) {
        if let Ok(mut inner) = self.inner.lock() {
            if let Some(reports) = inner.namespaces.get_mut(ns) {
                reports.retain(|(r, _)| r.name != deleted.name || r.uid != deleted.uid);
                if reports.is_empty() {
                    inner.namespaces.remove(ns);
                }
            }
        }
    }

    fn list_started(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.list += 1;
        }
    }

    /// The list is complete: a Deployment it did not hold is gone.
    fn list_done(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            let list = inner.list;
            inner.namespaces.retain(|_, reports| {
                reports.retain(|(_, seen)| *seen == list);
                !reports.is_empty()
            });
        }
    }

    /// Deployments known (for tests and the memory figures).
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .map(|i| i.namespaces.values().map(Vec::len).sum())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the reports from a Deployment watch (full objects) and passes its events on as
    /// metadata for the drift triggers (`super::applied::drift_triggers`), each report
    /// recorded before its event goes on. A status report that changes nothing the tenant's
    /// status reads (most of a rollout's) goes no further; drift, deletions and lists always do.
    pub fn track(
        self: std::sync::Arc<Self>,
        events: impl Stream<Item = watcher::Result<Event<Deployment>>> + Send + 'static,
    ) -> impl Stream<Item = watcher::Result<Event<PartialObjectMeta<Deployment>>>> + Send + 'static
    {
        events.filter_map(move |event| {
            let out = self.step(event);
            std::future::ready(out)
        })
    }

    fn step(
        &self,
        event: watcher::Result<Event<Deployment>>,
    ) -> Option<watcher::Result<Event<PartialObjectMeta<Deployment>>>> {
        let meta = |d: Deployment| d.metadata.into_request_partial::<Deployment>();
        let ns = |d: &Deployment| d.namespace().unwrap_or_default();
        Some(Ok(match event {
            Ok(Event::Apply(d)) => {
                let update = self.upsert(&ns(&d), DeploymentReport::of(&d), Source::Watch);
                let drift = d.metadata.deletion_timestamp.is_some()
                    || written_by_others(d.managed_fields());
                if update == Update::Unchanged && !drift {
                    return None;
                }
                Event::Apply(meta(d))
            }
            Ok(Event::InitApply(d)) => {
                self.upsert(&ns(&d), DeploymentReport::of(&d), Source::Watch);
                Event::InitApply(meta(d))
            }
            Ok(Event::Delete(d)) => {
                self.remove(&ns(&d), &DeploymentReport::of(&d));
                Event::Delete(meta(d))
            }
            Ok(Event::Init) => {
                self.list_started();
                Event::Init
            }
            Ok(Event::InitDone) => {
                self.list_done();
                Event::InitDone
            }
            Err(error) => return Some(Err(error)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(name: &str, uid: &str, generation: i64, observed: i64, ready: i32) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {
                "name": name, "namespace": "ns", "uid": uid, "generation": generation,
                // Last written by the controller itself: no drift.
                "managedFields": [{
                    "manager": crate::k8s::FIELD_MANAGER, "operation": "Apply",
                    "time": "2026-01-01T00:00:00Z", "fieldsV1": { "f:spec": {} },
                }],
            },
            "status": { "observedGeneration": observed, "readyReplicas": ready },
        }))
        .expect("a Deployment")
    }

    fn apply(r: &DeploymentReports, d: Deployment) -> bool {
        r.step(Ok(Event::Apply(d))).is_some()
    }

    #[test]
    fn a_report_is_read_back_and_an_unchanged_one_triggers_nothing() {
        let r = DeploymentReports::default();
        assert!(apply(&r, deployment("api", "u", 1, 1, 0)));
        assert_eq!(r.of("ns")[0].ready_replicas, 0);
        assert!(apply(&r, deployment("api", "u", 1, 1, 1)), "ready changed");
        assert_eq!(r.of("ns")[0].ready_replicas, 1);
        assert!(
            !apply(&r, deployment("api", "u", 1, 1, 1)),
            "nothing the status reads changed"
        );
        assert!(r.of("other").is_empty());
        // The same report after a hand edit: drift goes on.
        let mut edited = deployment("api", "u", 1, 1, 1);
        let mut theirs = edited.managed_fields()[0].clone();
        theirs.manager = Some("kubectl-edit".into());
        edited.managed_fields_mut().push(theirs);
        assert!(apply(&r, edited), "drift");
    }

    #[test]
    fn a_late_event_of_an_older_generation_is_not_taken() {
        let r = DeploymentReports::default();
        // What the answer to an apply said: the new spec, not yet observed.
        r.record(
            "ns",
            &[DeploymentReport::of(&deployment("api", "u", 2, 1, 1))],
        );
        // The watch delivers the state from before the apply afterwards.
        assert!(!apply(&r, deployment("api", "u", 1, 1, 1)));
        let now = &r.of("ns")[0];
        assert_eq!(
            (now.generation, now.observed_generation),
            (Some(2), Some(1))
        );
        // A Deployment made anew under the same name starts again at generation 1.
        assert!(apply(&r, deployment("api", "v", 1, 1, 0)));
        assert_eq!(r.of("ns")[0].generation, Some(1));
        // The late deletion of the old one leaves the new one's report.
        r.step(Ok(Event::Delete(deployment("api", "u", 2, 1, 1))));
        assert_eq!(r.len(), 1);
    }

    /// A node reported the replicas ready while the pass was still applying: the pass's answer,
    /// of the same generation and older, does not hide it.
    #[test]
    fn an_answer_of_the_same_generation_does_not_replace_the_watch() {
        let r = DeploymentReports::default();
        assert!(apply(&r, deployment("api", "u", 1, 1, 1)));
        r.record(
            "ns",
            &[DeploymentReport::of(&deployment("api", "u", 1, 0, 0))],
        );
        assert_eq!(r.of("ns")[0].ready_replicas, 1);
        // Of a newer generation it does.
        r.record(
            "ns",
            &[DeploymentReport::of(&deployment("api", "u", 2, 1, 1))],
        );
        assert_eq!(r.of("ns")[0].generation, Some(2));
    }

    #[test]
    fn a_list_replaces_what_was_known_and_a_deletion_removes() {
        let r = DeploymentReports::default();
        apply(&r, deployment("api", "u", 1, 1, 1));
        apply(&r, deployment("web", "w", 1, 1, 1));
        assert_eq!(r.len(), 2);
        r.step(Ok(Event::Delete(deployment("web", "w", 1, 1, 1))));
        assert_eq!(r.len(), 1);
        // A re-list that no longer holds "api" (deleted while the watch was down).
        r.step(Ok(Event::Init));
        r.step(Ok(Event::InitApply(deployment("db", "d", 1, 1, 1))));
        assert_eq!(
            r.len(),
            2,
            "the old reports stay until the list is complete"
        );
        r.step(Ok(Event::InitDone));
        let names: Vec<String> = r.of("ns").into_iter().map(|d| d.name.into()).collect();
        assert_eq!(names, ["db"]);
    }

    #[test]
    fn a_stall_is_reported_with_its_message() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": { "name": "api", "generation": 1 },
            "status": { "conditions": [{
                "type": "Progressing", "status": "False",
                "reason": "ProgressDeadlineExceeded", "message": "timed out",
            }]},
        }))
        .expect("a Deployment");
        assert_eq!(
            DeploymentReport::of(&d).deadline_exceeded.as_deref(),
            Some("timed out")
        );
    }
}
