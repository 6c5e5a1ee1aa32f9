//! How a change to a Platform reaches its tenants: the rollout policy of `Platform.spec.rollout`
//! and the progress the controller reports in `Platform.status.rollout`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How a new revision of a Platform is rolled out to its tenants.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutPolicy {
    /// `Waves` (the default) moves tenants wave by wave, gated on their health; `Immediate`
    /// moves every tenant at once and only records progress.
    #[serde(default)]
    pub strategy: RolloutStrategy,

    /// The waves, in order. A tenant belongs to the first wave whose selector it matches and
    /// that still has room; tenants no wave takes move in a last, implicit wave. Empty: one
    /// wave of every tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<Wave>,

    /// Most tenants of the platform moving at once (moved, not yet healthy): a count or a
    /// percentage of the platform's tenants (rounded up). Default `100%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,

    /// Seconds a moved tenant must have been Ready on the new revision before it counts as
    /// healthy. Default 0.
    #[serde(default)]
    #[schemars(range(min = 0, max = 86400))]
    pub health_gate: u32,

    /// Seconds a moved tenant has to become healthy before it counts as failed. Default 600.
    #[serde(default = "default_progress_deadline")]
    #[schemars(range(min = 1, max = 86400))]
    pub progress_deadline: u32,

    /// Seconds between the end of one wave and the start of the next, or `manual`: the rollout
    /// pauses after each wave until the Platform is annotated `stackplane.io/rollout: resume`.
    /// Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_between_waves: Option<IntOrString>,

    /// Failed tenants a wave tolerates; one more halts the rollout (no further tenant moves).
    /// Unset: failures are counted but never halt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub max_failures: Option<u32>,

    /// When a wave halts the rollout, move its failed tenants back to the revision they ran.
    #[serde(default)]
    pub auto_rollback: bool,

    /// Revisions kept beyond those some tenant runs or is moving to. Default 10.
    #[serde(default = "default_revision_history_limit")]
    #[schemars(range(min = 0, max = 1000))]
    pub revision_history_limit: u32,
}

fn default_progress_deadline() -> u32 {
    600
}

fn default_revision_history_limit() -> u32 {
    10
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        RolloutPolicy {
            strategy: RolloutStrategy::default(),
            waves: Vec::new(),
            max_unavailable: None,
            health_gate: 0,
            progress_deadline: default_progress_deadline(),
            pause_between_waves: None,
            max_failures: None,
            auto_rollback: false,
            revision_history_limit: default_revision_history_limit(),
        }
    }
}

/// `Waves` or `Immediate`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RolloutStrategy {
    /// Wave by wave, gated on health.
    #[default]
    Waves,
    /// Every tenant at once.
    Immediate,
}

/// One wave of a rollout: which tenants it may take and how many.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Wave {
    /// Name shown in Events and status, e.g. `canary`. Default `wave-<n>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub name: Option<String>,
    /// Only tenants labelled `stackplane.io/canary=true`.
    #[serde(default)]
    pub canary: bool,
    /// Only tenants of these tiers. Empty: any tier.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<String>,
    /// Only tenants with these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// How many of the matching tenants not taken by an earlier wave: a count, or a percentage
    /// (rounded up). Default `100%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<IntOrString>,
}

/// Phase of a rollout.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RolloutPhase {
    /// Tenants are being moved to the update revision.
    #[default]
    Progressing,
    /// No tenant moves until `stackplane.io/rollout: resume`.
    Paused,
    /// A wave had more failures than `maxFailures`: no tenant moves until a rollback or a new
    /// revision.
    Halted,
    /// Every tenant runs the update revision and is healthy.
    Complete,
}

impl RolloutPhase {
    /// The phase as written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutPhase::Progressing => "Progressing",
            RolloutPhase::Paused => "Paused",
            RolloutPhase::Halted => "Halted",
            RolloutPhase::Complete => "Complete",
        }
    }
}

/// Progress of the rollout of the update revision.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The revision being rolled out.
    pub revision: String,
    /// The wave in progress (1-based); `waves` + 1 once every wave is done.
    pub wave: u32,
    /// Number of waves, the implicit last one included.
    pub waves: u32,
    /// Tenants of the platform that take part (not pinned, paused or deleting).
    pub total: u32,
    /// Tenants moved to the revision.
    pub updated: u32,
    /// Moved tenants that are healthy.
    pub healthy: u32,
    /// Moved tenants that failed.
    pub failed: u32,
    /// Tenants pinned to a revision by `spec.platformRevision`.
    #[serde(default)]
    pub pinned: u32,
    /// Progressing, Paused, Halted or Complete.
    pub phase: RolloutPhase,
    /// What the rollout is doing or waiting for.
    #[serde(default)]
    #[schemars(transform = crate::schema::no_default)]
    pub message: String,
    /// When the rollout of this revision started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the current wave may start moving tenants (after `pauseBetweenWaves`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave_starts_at: Option<Time>,
    /// When the rollout completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
}
