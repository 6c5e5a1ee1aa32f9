//! Server-side apply field managers: one per writer, so each owns only the fields it sets and
//! never takes over another's (see `docs/architecture.md`, "Server-side apply").

/// The controller: a tenant's children, its status, its metadata (finalizer).
pub const CONTROLLER: &str = "stackplane-controller";
// Leader election writes its Lease under a manager per replica, derived from this one
// (`stackplane_controller::leader::lease_field_manager`).
/// The billing worker: a Tenant's spec fields of the subscription and its billing conditions.
pub const BILLING: &str = "stackplane-billing";
/// The fleet rollout: the target-revision annotations of Tenants, a Platform's rollout status.
pub const ROLLOUT: &str = "stackplane-rollout";
/// The api's `PUT`/`DELETE /api/v1/tenants/{name}/hold`: a Tenant's `spec.hold`, an
/// operator's. Its own manager so billing's apply (which never sends `spec.hold`) can neither
/// remove nor take it over.
pub const HOLDS: &str = "stackplane-holds";
/// Dispute handling (`STACKPLANE_HOLD_ON_DISPUTE=true`): the `spec.hold` a dispute sets.
pub const DISPUTES: &str = "stackplane-disputes";
/// `kubectl stackplane` (holds, releases, annotations a person asks for).
pub const PLUGIN: &str = "kubectl-stackplane";

/// How the controller applies a tenant's namespace and children: server-side apply as
/// [`CONTROLLER`], forcing, so a field someone else changed by hand is set back (and owned)
/// rather than refused as a conflict. `kubectl stackplane diff` sends the same, as a dry run.
pub fn controller_apply() -> kube::core::params::PatchParams {
    kube::core::params::PatchParams::apply(CONTROLLER).force()
}
/// `stackplane-controller crds apply` (the chart's pre-install/pre-upgrade hook): the CRDs.
pub const CRDS: &str = "stackplane-crds";
