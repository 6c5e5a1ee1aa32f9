//! What a tenant's status reads of one of its Deployments, and which of two reports of the
//! same Deployment is newer (the controller keeps the newest per Deployment, from its watch and
//! from the answers to its own applies).

use k8s_openapi::api::apps::v1::Deployment;

/// What the tenant's status reads of one Deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeploymentReport {
    pub name: Box<str>,
    /// Tells a Deployment deleted and made again under the same name from the old one.
    pub uid: Box<str>,
    pub generation: Option<i64>,
    pub observed_generation: Option<i64>,
    pub ready_replicas: i32,
    pub available_replicas: i32,
    pub updated_replicas: i32,
    /// The message of a `Progressing=False ProgressDeadlineExceeded` condition.
    pub deadline_exceeded: Option<Box<str>>,
}

impl DeploymentReport {
    pub fn of(d: &Deployment) -> DeploymentReport {
        let status = d.status.as_ref();
        let deadline_exceeded = status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .find(|k| {
                k.type_ == "Progressing"
                    && k.status == "False"
                    && k.reason.as_deref() == Some("ProgressDeadlineExceeded")
            })
            .map(|k| {
                k.message
                    .as_deref()
                    .unwrap_or("progress deadline exceeded")
                    .into()
            });
        DeploymentReport {
            name: d.metadata.name.as_deref().unwrap_or_default().into(),
            uid: d.metadata.uid.as_deref().unwrap_or_default().into(),
            generation: d.metadata.generation,
            observed_generation: status.and_then(|s| s.observed_generation),
            ready_replicas: status.and_then(|s| s.ready_replicas).unwrap_or(0),
            available_replicas: status.and_then(|s| s.available_replicas).unwrap_or(0),
            updated_replicas: status.and_then(|s| s.updated_replicas).unwrap_or(0),
            deadline_exceeded,
        }
    }

    /// Whether `self`, from `source`, may replace `older`: another object of the same name, or
    /// the same one at a newer generation (or, from the watch, whose events come in order, at
    /// the same one).
    pub fn supersedes(&self, older: &DeploymentReport, source: Source) -> bool {
        self.uid != older.uid
            || self.generation > older.generation
            || (source == Source::Watch && self.generation == older.generation)
    }
}

/// Where a report comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The Deployment watch, in the order the API server wrote.
    Watch,
    /// The answer to one of the controller's own applies, as of that apply.
    Answer,
}
