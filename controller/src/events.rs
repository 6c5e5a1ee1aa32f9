//! Kubernetes Events about the controller's objects, stored where every supported API server
//! accepts them.
//!
//! kube's `Recorder` writes an `events.k8s.io/v1` Event about a cluster-scoped object (a Tenant,
//! a TenantBackup) into the `default` namespace. Kubernetes before 1.22 rejects that: an Event
//! with `eventTime` set (every `events.k8s.io/v1` Event) whose regarding object has no namespace
//! must live in `kube-system` ("involvedObject.namespace: Invalid value: \"\": does not match
//! event.namespace", `legacyValidateEvent` in pkg/apis/core/validation/events.go). Later
//! versions accept both `default` and `kube-system`, so `kube-system` works everywhere. The
//! regarding reference keeps its empty namespace, which is what `kubectl describe` searches by.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Client};

/// Namespace of the Events about cluster-scoped objects.
pub const CLUSTER_SCOPED_EVENT_NAMESPACE: &str = "kube-system";

/// Publishes Events as one reporting controller instance.
#[derive(Clone)]
pub struct EventRecorder {
    client: Client,
    controller: String,
    instance: String,
}

impl EventRecorder {
    /// A recorder reporting as `controller` (e.g. `stackplane-controller`) from `instance`
    /// (this replica's identity).
    pub fn new(client: Client, controller: impl Into<String>, instance: impl Into<String>) -> Self {
        EventRecorder {
            client,
            controller: controller.into(),
            instance: instance.into(),
        }
    }

    /// Stores one Event about `regarding`.
    pub async fn publish(&self, event: &Event, regarding: &ObjectReference) -> kube::Result<()> {
        let body = build(
            event,
            regarding,
            &self.controller,
            &self.instance,
            Timestamp::now(),
        );
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), event_namespace(regarding));
        api.create(&PostParams::default(), &body).await?;
        Ok(())
    }
}

/// The namespace an Event about `regarding` is stored in: the object's own namespace, or
/// [`CLUSTER_SCOPED_EVENT_NAMESPACE`] for a cluster-scoped object.
pub fn event_namespace(regarding: &ObjectReference) -> &str {
    regarding
        .namespace
        .as_deref()
        .filter(|ns| !ns.is_empty())
        .unwrap_or(CLUSTER_SCOPED_EVENT_NAMESPACE)
}

/// The `events.k8s.io/v1` Event for `event` about `regarding` at `now`.
pub fn build(
    event: &Event,
    regarding: &ObjectReference,
    controller: &str,
    instance: &str,
    now: Timestamp,
) -> K8sEvent {
    let subject = regarding.name.as_deref().unwrap_or(controller);
    // Names must be unique; the object's name and the time in nanoseconds make them so, as
    // client-go's recorder does.
    let name = format!("{subject}.{:x}", now.as_nanosecond());
    K8sEvent {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(event_namespace(regarding).to_owned()),
            ..ObjectMeta::default()
        },
        action: Some(event.action.clone()),
        reason: Some(event.reason.clone()),
        note: event.note.clone(),
        event_time: Some(MicroTime(now)),
        regarding: Some(regarding.clone()),
        related: event.secondary.clone(),
        reporting_controller: Some(controller.to_owned()),
        reporting_instance: Some(instance.to_owned()),
        type_: Some(
            match event.type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .to_owned(),
        ),
        ..K8sEvent::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        Event {
            type_: EventType::Warning,
            reason: "InvalidSpec".into(),
            note: Some("tier gold does not exist".into()),
            action: "Reconcile".into(),
            secondary: None,
        }
    }

    #[test]
    fn cluster_scoped_object_events_go_to_kube_system_and_keep_an_empty_namespace() {
        let regarding = ObjectReference {
            api_version: Some("stackplane.io/v1alpha1".into()),
            kind: Some("Tenant".into()),
            name: Some("acme".into()),
            uid: Some("u-1".into()),
            ..ObjectReference::default()
        };
        let now = Timestamp::from_second(1_700_000_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let e = build(&event(), &regarding, "stackplane-controller", "pod-1", now);
        assert_eq!(e.metadata.namespace.as_deref(), Some("kube-system"));
        assert_eq!(e.regarding.as_ref().and_then(|r| r.namespace.clone()), None);
        assert!(e
            .metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("acme.")));
        assert_eq!(e.event_time, Some(MicroTime(now)));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reason.as_deref(), Some("InvalidSpec"));
        assert_eq!(
            e.reporting_controller.as_deref(),
            Some("stackplane-controller")
        );
        assert_eq!(e.reporting_instance.as_deref(), Some("pod-1"));
    }

    #[test]
    fn namespaced_object_events_stay_in_its_namespace() {
        let regarding = ObjectReference {
            kind: Some("Deployment".into()),
            name: Some("api".into()),
            namespace: Some("tenant-acme".into()),
            ..ObjectReference::default()
        };
        assert_eq!(event_namespace(&regarding), "tenant-acme");
        let empty = ObjectReference {
            namespace: Some(String::new()),
            ..regarding
        };
        assert_eq!(event_namespace(&empty), "kube-system");
    }
}
